"""Domicile's own home copies of rows that did not move after all: removed, never home's own.

A batch writes its rows home before it deletes them at their source, and some
rows do not go: the application changed or deleted them meanwhile, or a new
child at the source pins them there.  Their home copies are domicile's own
work, known by the digests the journal holds, and must not outlive the source
row: a record the application deletes where it lives would come back at home.
A copy the application wrote or changed at home is never touched.

- :func:`remove_own_copies` removes such copies at once, where home still
  holds exactly what domicile copied.  A copy that rows at home reference by
  foreign key (children that moved home already) cannot go: it stays as the
  parent they need, and its row refreshes it when it moves again.
- :func:`sweep_home_copies` looks again, after each pass, at the copies that
  finished batches left at home for rows they did not delete at the source
  (:data:`LEFT`): once the source row is gone (the application deleted it
  where it lived, perhaps runs later), its copy goes too, if still exactly
  domicile's.  Only the journal's latest batch holding a key speaks for it: a
  later batch moved the row again (its home copy is then the record) or is
  still moving it (its own steps finish the job).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from domicile.run.journal import BatchRecord, BatchRow, key_text
from domicile.run.reading import RowReader
from domicile.run.rows import (
    delete_by_keys,
    digest_hex,
    normalize_keys,
    select_by_keys,
    shared_columns,
)

if TYPE_CHECKING:
    from domicile.run.context import RunContext

# row statuses of a finished batch whose source row stayed while its home copy may remain
LEFT = frozenset({"pinned", "changed", "vanished", "dropped", "home-lost"})
# the batch counts that say a finished batch has such rows
LEFT_COUNTS = ("pinned", "changed", "vanished", "dropped", "home_lost")
SWEPT = "swept"  # the source row is gone and so is domicile's home copy


def remove_own_copies(reader: RowReader, rows: Sequence[BatchRow]) -> set[tuple[Any, ...]]:
    """Delete home rows (and objects) that still hold exactly what domicile copied there.

    Returns the keys (as journalled) of copies kept because rows at home
    reference them by foreign key; their objects stay at home with them.
    """
    kept: set[tuple[Any, ...]] = set()
    for target in sorted({t for r in rows for t in r.targets}):
        home = reader.existing_home(target)
        if home is None:
            continue
        part = [r for r in rows if target in r.targets]
        keys = normalize_keys(home.table, reader.key, [r.key for r in part])
        cols = shared_columns(reader.source.table, home.table)
        doing = f"removing {reader.ds.name} copies at {target}"
        with home.store.begin_write(doing) as conn:
            found = select_by_keys(conn, home.table, reader.key, keys, for_update=True)
            ours = {
                k: r
                for k, r in zip(keys, part, strict=True)
                if k in found and digest_hex(found[k], cols) == r.digest_at_home
            }
            # a foreign key at home refuses the delete of a parent whose children
            # moved home already: that copy stays (each refusal in its own savepoint)
            refused = delete_by_keys(conn, home.table, reader.key, list(ours)) if ours else set()
        kept.update(ours[k].key for k in refused)
    if reader.blobs is not None:
        for r in rows:
            if r.blob is not None and r.key not in kept:
                reader.blobs.remove_home_copy(r.blob)
    return kept


def sweep_home_copies(ctx: RunContext) -> int:
    """Remove the home copies finished batches left of rows since deleted at their source.

    Datasets are swept children first, as deletes go, so that a child's copy
    is gone before its parent's is tried.  Returns how many rows gone from their
    source were settled (their copy removed, or none of domicile's left at home).
    """
    journal = ctx.journal
    left: dict[tuple[str, str], list[BatchRecord]] = {}
    for run in journal.runs():
        for b in journal.batches(run.id, states=["done"]):
            if b.source in ctx.fleet.sql and any(b.counts.get(c) for c in LEFT_COUNTS):
                left.setdefault((b.dataset, b.source), []).append(b)
    swept = 0
    for dataset in reversed(ctx.order):
        for (name, source), found in sorted(left.items()):
            loc = ctx.fleet.location(dataset, source) if name == dataset else None
            if loc is not None:
                reader = RowReader(ctx, ctx.map.datasets[dataset], loc)
                swept += _sweep(ctx, reader, found)
    return swept


def _sweep(ctx: RunContext, reader: RowReader, found: list[BatchRecord]) -> int:
    """:func:`sweep_home_copies` for one dataset at one source."""
    journal = ctx.journal
    entries: list[tuple[int, BatchRow]] = []
    for b in found:
        journal.checked_batch(b.id)  # relied upon below: its MAC must hold
        entries += [(b.id, r) for r in journal.rows(b.id) if r.status in LEFT]
    if not entries:
        return 0
    # the latest batch holding each key, whatever its home: only it speaks for the key
    latest: dict[str, int] = {}
    wanted = [r.key for _, r in entries]
    for store in sorted(ctx.fleet.sql):
        for text, copies in journal.copies(reader.ds.name, store, wanted).items():
            latest[text] = max([latest.get(text, 0), *(c.batch_id for c in copies)])
    entries = [(b, r) for b, r in entries if latest.get(key_text(r.key), b) == b]
    if not entries:
        return 0
    table = reader.source.table
    keys = normalize_keys(table, reader.key, [r.key for _, r in entries])
    doing = f"looking for {reader.ds.name} rows left at {reader.source.store.name}"
    with reader.source.store.connect(doing) as conn:
        present = select_by_keys(conn, table, reader.key, keys)
    gone = [(b, r) for (b, r), k in zip(entries, keys, strict=True) if k not in present]
    if not gone:
        return 0
    kept = remove_own_copies(reader, [r for _, r in gone])
    for batch_id in sorted({b for b, _ in gone}):
        done = [r.key for b, r in gone if b == batch_id and r.key not in kept]
        journal.set_row_status(batch_id, done, SWEPT)
    return sum(1 for _, r in gone if r.key not in kept)
