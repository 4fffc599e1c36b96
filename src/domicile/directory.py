"""Owners' countries from the subjects directory of another store, in bounded memory.

When a record's store holds the directory, its owners' countries are joined
in that store's own query and never reach this module.  Owners it does not
know (the directory lives elsewhere, or lacks them) are looked up here: the
ids of one page of records at a time, in chunks of :data:`CHUNK` ids, each
chunk one query per directory store (an array parameter on PostgreSQL).

Memory is bounded by the page, never by the number of subjects: the answers
are kept in a least-recently-resolved cache of at most :data:`CACHE_LIMIT`
ids (owners of neighbouring pages often repeat), and an id evicted before it
is read — another thread's pages pushed it out — is simply looked up again.
So a census or a move over 37 million subjects holds a few megabytes of
owners, whatever the directory's size.  (The alternatives were a temporary
table of the jurisdiction's ids pushed into every source, which a read-only
source or a hot standby refuses, and a NumPy array of every id, which costs
hundreds of MB at that size; a page-sized lookup costs one round trip per
chunk of a page's distinct owners.)
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from domicile.connectors.keys import column_in
from domicile.countries import normalize_country
from domicile.directory_sql import directory_rows
from domicile.fleet import Fleet
from domicile.placement import ORPHAN, UNKNOWN

CHUNK = 1000  # ids per lookup query when resolving owners across stores
CACHE_LIMIT = 50_000  # owners kept between pages (a few MB); a page may hold more

log = logging.getLogger(__name__)


class Directory:
    """Resolves subject ids to raw country values across every directory store."""

    def __init__(self, fleet: Fleet, limit: int = CACHE_LIMIT):
        self.fleet = fleet
        self.limit = max(1, limit)
        self._cache: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.locations = fleet.locations(fleet.map.subjects.dataset)
        self.lookups = 0  # lookup queries sent, over the directory's life
        self._told = False

    def __len__(self) -> int:
        return len(self._cache)

    def resolve(self, ids: Iterable[Any], searched: str | None = None) -> None:
        """Look up every id not yet cached, in chunks, store by store.

        *searched* names the store whose directory the census query already
        joined: the ids came back because it does not have them.  The ids
        asked for are kept (the most recently resolved) until the next pages
        push them out.
        """
        asked = {i for i in ids if i is not None}
        with self._lock:
            wanted = set()
            for i in asked:
                if i in self._cache:
                    self._cache.move_to_end(i)
                else:
                    wanted.add(i)
        if not wanted:
            return
        found = self._lookup(wanted, searched)
        with self._lock:
            for i in wanted:
                self._cache[i] = found.get(i, ORPHAN)  # ORPHAN: found in no directory
                self._cache.move_to_end(i)
            keep = max(self.limit, len(asked))  # never evict the page just asked for
            while len(self._cache) > keep:
                self._cache.popitem(last=False)

    def _lookup(self, wanted: set[Any], searched: str | None) -> dict[Any, Any]:
        """The raw country of each of *wanted* that some directory store holds."""
        sub = self.fleet.map.subjects
        found: dict[Any, Any] = {}
        pending = sorted(wanted, key=str)
        for loc in self.locations:
            if not pending:
                break
            if loc.store.name == searched:
                continue
            if not self._told:
                self._told = True
                log.info(
                    "owners not in their records' store are looked up page by page in the "
                    "subjects directory (%s), %d ids per query, at most %d kept between pages",
                    ", ".join(d.store.name for d in self.locations),
                    CHUNK,
                    self.limit,
                )
            rows = directory_rows(loc.store, loc.table, sub)
            for start in range(0, len(pending), CHUNK):
                chunk = pending[start : start + CHUNK]
                # one array parameter on PostgreSQL: a 1000-parameter IN list
                # costs ~5x more to bind, send and plan there
                match = column_in(loc.store.dialect, rows.id, chunk, name="ids")
                q = sa.select(rows.id, rows.country).select_from(rows.from_).where(match)
                with loc.store.connect("reading the subjects directory") as conn:
                    for sid, country in conn.execute(q):
                        found.setdefault(sid, country)
                self.lookups += 1
            pending = [i for i in pending if i not in found]
        return found

    def raw(self, sid: Any) -> Any:
        """The raw country value of *sid* (ORPHAN if no directory has it)."""
        try:
            return self._cache[sid]
        except KeyError:  # pushed out by other pages since it was resolved
            value = self._lookup({sid}, None).get(sid, ORPHAN)
            with self._lock:
                self._cache[sid] = value
            return value

    def country(self, sid: Any) -> str:
        """The alpha-2 country of subject *sid*, or ORPHAN / UNKNOWN."""
        raw = self.raw(sid)
        if raw == ORPHAN:
            return ORPHAN
        return normalize_country(raw) or UNKNOWN
