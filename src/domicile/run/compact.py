"""``run --vacuum``: after a run, reclaim the space of the rows it deleted at the sources.

Deleting a row does not take its bytes off the disk: SQLite keeps free pages
(domicile's connections set ``secure_delete``, so deleted cells are zeroed
already), PostgreSQL keeps dead tuples until a vacuum, InnoDB keeps free
space in its pages.  This step asks each SQL source a run deleted from to
compact the tables it deleted from (SQLite ``VACUUM``, PostgreSQL ``VACUUM
FULL``, MySQL/MariaDB ``OPTIMIZE TABLE``).  What it cannot reach — WAL and
archives, binlogs and undo logs, backups, replicas not declared as stores —
is listed in the README.  A failure here never undoes the run: it is returned
as a note.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from domicile.fleet import Fleet
from domicile.plan import Move

log = logging.getLogger(__name__)


def compact_sources(fleet: Fleet, moves: Iterable[Move]) -> list[str]:
    """Compact every SQL source table the moves deleted from; returns notes of failures."""
    tables: dict[str, set[str]] = {}
    for mv in moves:
        if mv.source not in fleet.sql:
            continue
        loc = fleet.location(mv.dataset, mv.source)
        if loc is not None:
            tables.setdefault(mv.source, set()).add(loc.table.name)
    notes = []
    for name in sorted(tables):
        store = fleet.sql[name]
        try:
            done = store.behaviour.compact(store.engine, sorted(tables[name]))
        except Exception as exc:  # a raw driver error: the drivers share no base class
            note = f"compacting {name} failed (the run itself is complete): {exc}"
            log.warning(note)
            notes.append(note)
            continue
        for statement in done:
            log.info("%s: %s", name, statement)
    return notes
