"""Key-range parts: one large table's key space split so that several workers move it.

A (dataset, source) pair of one pass is moved as one or more *parts*, each a
key range ``(lo, hi]`` read as one indexed range scan, page after page —
never by OFFSET.  The boundaries come from the data, so each part holds about
as many rows as the next whatever the keys look like: for a large table the
quantiles of a random sample of its keys that the engine reads without a scan
(PostgreSQL), otherwise every n-th key in key order (one pass over the key's
index, in the database).  They are
journalled before any part starts, and a resume reuses them: a part's
batches are numbered from ``part_no * PART_SEQ``, so a part finds its own
batches again however the data changed since.

A pair with no parts in the journal is one implicit part over the whole key
space (part 0, batches numbered from 1): what a single worker does, and what
runs journalled before parts existed hold.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from domicile.fleet import Location
from domicile.run.journal import BatchRecord, Journal
from domicile.run.journal_records import key_text, key_values, now, parts
from domicile.run.rows import key_columns, normalize_key

log = logging.getLogger(__name__)

PART_SEQ = 1_000_000
"""Batch numbers of part p start at ``p * PART_SEQ`` (part 0: at 1)."""

PARTS_PER_WORKER = 4
"""Parts per worker when a table is split: uneven parts still keep every worker busy."""

SAMPLE_ABOVE = 2_000_000
"""Rows (as the engine's statistics estimate them) from which a table is cut at the
quantiles of a sample of its keys rather than by one pass over its key index."""

SAMPLE_PAGES_PER_PART = 64
"""Pages sampled per part: a page's rows are often neighbours in key order, so the
spread of a part's size is about one over the square root of its sampled pages."""


@dataclass(frozen=True)
class Part:
    """One key range of one (dataset, source) in one pass."""

    dataset: str
    source: str
    pass_no: int
    part_no: int = 0
    lo: tuple[Any, ...] | None = None  # exclusive; None: from the start
    hi: tuple[Any, ...] | None = None  # inclusive; None: to the end
    id: int | None = None  # the journal row (None: the implicit whole-range part)

    @property
    def first_seq(self) -> int:
        """The number of this part's first batch."""
        return self.part_no * PART_SEQ if self.part_no else 1

    def holds(self, batch: BatchRecord) -> bool:
        """True when *batch* is one of this part's."""
        return (
            batch.dataset == self.dataset
            and batch.source == self.source
            and batch.pass_no == self.pass_no
            and self.first_seq <= batch.seq < (self.part_no + 1) * PART_SEQ
        )

    def describe(self) -> str:
        """For logs: ``users@sg part 2 (1000, 2000]``."""
        lo = key_text(self.lo) if self.lo is not None else "start"
        hi = key_text(self.hi) if self.hi is not None else "end"
        return f"{self.dataset}@{self.source} part {self.part_no} ({lo}, {hi}]"


def journalled(
    journal: Journal, run_id: str, dataset: str, source: str, pass_no: int
) -> list[Part]:
    """The parts journalled for a pair in a pass (empty: one implicit part)."""
    q = (
        sa.select(parts)
        .where(
            parts.c.run_id == run_id,
            parts.c.dataset == dataset,
            parts.c.source == source,
            parts.c.pass_no == pass_no,
        )
        .order_by(parts.c.part_no)
    )
    with journal.engine.connect() as conn:
        rows = conn.execute(q).all()
    return [
        Part(dataset, source, pass_no, r.part_no, key_values(r.lo), key_values(r.hi), r.id)
        for r in rows
    ]


def parts_for(
    journal: Journal,
    run_id: str,
    loc: Location,
    dataset: str,
    pass_no: int,
    *,
    wanted: int,
    batch_size: int,
    fenced: bool,
) -> list[Part]:
    """The parts of a pair in a pass: those journalled, else split now and journalled.

    *wanted* parts at most (each at least one batch).  A pair that already has
    batches in this pass but no parts keeps the implicit whole-range part.
    *fenced*: the parts must be rows of their own (workers in other processes
    claim them), even a single one.
    """
    found = journalled(journal, run_id, dataset, loc.store.name, pass_no)
    if found:
        return [_typed(p, loc) for p in found]
    source = loc.store.name
    if any(b.pass_no == pass_no for b in journal.batches(run_id, dataset, source)):
        return [Part(dataset, source, pass_no)]
    bounds: list[tuple[Any, ...]] = []
    if wanted > 1:
        bounds = split_points(loc, wanted, batch_size)
    if not bounds and not fenced:
        return [Part(dataset, source, pass_no)]
    edges: list[tuple[Any, ...] | None] = [None, *bounds, None]
    made = []
    with journal.engine.begin() as conn:
        for i in range(len(edges) - 1):
            lo, hi = edges[i], edges[i + 1]
            part_id = conn.execute(
                parts.insert().values(
                    run_id=run_id,
                    dataset=dataset,
                    source=source,
                    pass_no=pass_no,
                    part_no=i + 1,
                    lo=key_text(lo) if lo is not None else None,
                    hi=key_text(hi) if hi is not None else None,
                    token=0,
                    updated_at=now(),
                )
            ).inserted_primary_key
            assert part_id is not None  # an INSERT of one row always has one
            made.append(part_id)
    log.info("%s@%s pass %d: %d parts", dataset, source, pass_no, len(made))
    # read back: a first run and a resume see the bounds alike (as the journal keeps them)
    return [_typed(p, loc) for p in journalled(journal, run_id, dataset, source, pass_no)]


def split_points(loc: Location, wanted: int, batch_size: int) -> list[tuple[Any, ...]]:
    """Up to ``wanted - 1`` keys that cut the table into parts of about equal rows.

    A table the engine's statistics put at :data:`SAMPLE_ABOVE` rows or more
    is cut at the quantiles of a random sample of its keys, where the engine
    samples without a scan (PostgreSQL ``TABLESAMPLE SYSTEM``): the cost is the
    sample's, not the table's.  Otherwise every ``step``-th key in key order,
    numbered by the database (``row_number()`` over the key's index: one pass,
    in the database), counted exactly unless the statistics already say the
    table is large.  No part is smaller than a batch.
    """
    table, key = loc.table, loc.key
    cols = key_columns(table, key)
    behaviour = loc.store.behaviour
    with loc.store.connect(f"splitting {table.name} into parts") as conn:
        estimate = behaviour.estimated_rows(conn, table)
        large = estimate is not None and estimate >= SAMPLE_ABOVE
        if large:
            assert estimate is not None
            found = _sampled(conn, loc, cols, estimate, wanted, batch_size)
            if found is not None:
                return found
        count = estimate if large and estimate is not None else _count(conn, table)
        n = min(wanted, max(1, math.floor(count / max(1, batch_size))))
        if n <= 1:
            return []
        step = math.ceil(count / n)
        rn = sa.func.row_number().over(order_by=cols).label("_dm_rn")
        numbered = sa.select(*cols, rn).subquery()
        q = (
            sa.select(*[numbered.c[c.name] for c in cols])
            .where(numbered.c["_dm_rn"] % step == 0)
            .order_by(*[numbered.c[c.name] for c in cols])
        )
        found = [tuple(r) for r in conn.execute(q)]
    log.info(
        "%s@%s: %d part bounds from one pass over %s keys",
        table.name, loc.store.name, len(found[: n - 1]),
        f"~{count:,}" if large else f"{count:,}",
    )  # fmt: skip
    # the last key ends the last part anyway: an upper bound there is no cut
    return found[: n - 1]


def _count(conn: sa.Connection, table: sa.Table) -> int:
    return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def _sampled(
    conn: sa.Connection,
    loc: Location,
    cols: list[sa.Column[Any]],
    estimate: int,
    wanted: int,
    batch_size: int,
) -> list[tuple[Any, ...]] | None:
    """Part bounds at the quantiles of a sample of the table's pages; None where the
    engine cannot sample or the sample is too small to cut the parts from.

    The quantiles are worked out by the database (``ntile`` over the sampled
    keys, the last key of each tile): only the bounds come back.
    """
    n = min(wanted, max(1, math.floor(estimate / max(1, batch_size))))
    if n <= 1:
        return []
    sample = loc.store.behaviour.sampled(conn, loc.table, SAMPLE_PAGES_PER_PART * n)
    if sample is None:
        return None
    scols = [sample.c[c.name] for c in cols]
    tiled = sa.select(*scols, sa.func.ntile(n).over(order_by=scols).label("_dm_tile")).subquery()
    tcols = [tiled.c[c.name] for c in cols]
    last = sa.func.row_number().over(
        partition_by=tiled.c["_dm_tile"], order_by=[c.desc() for c in tcols]
    )
    ranked = sa.select(*tcols, tiled.c["_dm_tile"], last.label("_dm_last")).subquery()
    q = (
        sa.select(*[ranked.c[c.name] for c in cols])
        .where(ranked.c["_dm_last"] == 1)
        .order_by(ranked.c["_dm_tile"])
    )
    found = [tuple(r) for r in conn.execute(q)]
    if len(found) < n:
        log.info(
            "%s@%s: a sample of %d pages held too few keys for %d parts: one pass instead",
            loc.table.name, loc.store.name, SAMPLE_PAGES_PER_PART * n, n,
        )  # fmt: skip
        return None
    log.info(
        "%s@%s: %d part bounds from a sample of about %d pages of ~%s rows",
        loc.table.name, loc.store.name, n - 1, SAMPLE_PAGES_PER_PART * n, f"{estimate:,}",
    )  # fmt: skip
    # the last tile's last key ends the last part anyway: no cut there
    return found[: n - 1]


def _typed(part: Part, loc: Location) -> Part:
    """A part read from the journal, its bounds in the key columns' Python types."""

    def typed(key: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
        return normalize_key(loc.table, loc.key, key) if key is not None else None

    return Part(
        part.dataset, part.source, part.pass_no, part.part_no, typed(part.lo), typed(part.hi),
        part.id,
    )  # fmt: skip
