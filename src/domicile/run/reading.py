"""Reading what must move: pages of a source table by key range, each row with its homes.

The owner paths and the local directory are joined in the source's own
engine (:func:`domicile.scan.annotate`); owners the local directory does not
know are resolved against the other stores' directories in chunks.  A row
whose placement is violating, in the run's scope, becomes a
:class:`Candidate` with the homes it goes to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from domicile.errors import ConfigError
from domicile.fleet import Location
from domicile.model import Dataset
from domicile.placement import classify, home_store, targets
from domicile.run.blob_copy import BlobMover
from domicile.run.rows import digest_hex, key_after, key_columns, key_of
from domicile.scan import annotate, matched_waivers, owner_countries

if TYPE_CHECKING:
    from domicile.run.context import RunContext


@dataclass
class Candidate:
    """A source row that must move, with the homes it goes to."""

    key: tuple[Any, ...]
    values: dict[str, Any]
    digest: str
    targets: tuple[str, ...]
    home_digest: str | None = None
    blob: dict[str, Any] | None = None


@dataclass
class Page:
    """Moving rows read from one key range of the source."""

    rows: list[Candidate] = field(default_factory=list)
    lo: tuple[Any, ...] | None = None
    hi: tuple[Any, ...] | None = None
    read: int = 0
    exhausted: bool = False


class RowReader:
    """Reads the rows of one dataset at one source that must move, with their homes."""

    def __init__(self, ctx: RunContext, dataset: Dataset, source: Location):
        self.ctx = ctx
        self.ds = dataset
        self.source = source
        self.key = source.key
        m = ctx.map
        self.store = m.stores[source.store.name]
        local_dir = ctx.fleet.location(m.subjects.dataset, source.store.name)
        self.annotated = annotate(m, source, dataset, local_dir)
        self.blobs = BlobMover(ctx, dataset) if dataset.blobs is not None else None
        self._homes: dict[tuple[Any, ...], tuple[str, ...]] = {}

    # -- reading ---------------------------------------------------------------

    def read(self, after: tuple[Any, ...] | None, want: int) -> Page:
        """Read pages after *after* until *want* moving rows or the end."""
        page = Page(lo=after)
        table = self.source.table
        cols = [*table.columns, *self.annotated.columns]
        names = [c.name for c in table.columns]
        # The row's own columns and domicile's annotations are split by
        # position, never by name: a user column may be called anything,
        # including the annotations' labels.
        labels = [c.name for c in self.annotated.columns]
        width = len(names)
        key_at = [names.index(k) for k in self.key]
        page_size = max(want, 500)
        while len(page.rows) < want:
            q = sa.select(*cols).select_from(self.annotated.from_)
            if after is not None:
                q = q.where(key_after(table, self.key, after))
            q = q.order_by(*key_columns(table, self.key)).limit(page_size)
            with self.source.store.connect(f"reading {self.ds.name}") as conn:
                raw = conn.execute(q).all()
            page.read += len(raw)
            if not raw:
                page.exhausted = True
                break
            notes = [dict(zip(labels, r[width:], strict=True)) for r in raw]
            self.ctx.directory.resolve(
                n[f"_dm_u{k}"] for n in notes for k in range(self.annotated.owners)
            )
            for r, note in zip(raw, notes, strict=True):
                after = tuple(r[i] for i in key_at)
                page.hi = after
                homes = self._targets(note)
                if homes:
                    values = dict(zip(names, r[:width], strict=True))
                    page.rows.append(self._candidate(values, homes))
                    if len(page.rows) >= want:
                        break  # the batch is full: it ends at this key
            else:
                if len(raw) < page_size:
                    page.exhausted = True
                    break
        return page

    def _candidate(self, values: dict[str, Any], homes: tuple[str, ...]) -> Candidate:
        table = self.source.table
        c = Candidate(key_of(values, self.key), values, digest_hex(values, table.columns), homes)
        if self.blobs is not None:
            c.blob = self.blobs.describe(values[self.blobs.column])
            if c.blob is not None and c.blob["url"]:
                if len(homes) > 1:
                    raise ConfigError(
                        f"dataset {self.ds.name}: a blob URL cannot point to two homes",
                        hint="store object keys (not URLs) in the column, or use multi_owner: all",
                    )
                at_home = dict(
                    values, **{self.blobs.column: self.blobs.home_value(c.blob, homes[0])}
                )
                c.home_digest = digest_hex(at_home, table.columns)
        return c

    def _targets(self, row: Any) -> tuple[str, ...]:
        countries = owner_countries(row, self.annotated.owners, self.ctx.directory)
        flags = matched_waivers(row, self.annotated.waivers)
        key = (*countries, flags)
        if key not in self._homes:  # few distinct (countries, exceptions) per table
            self._homes[key] = self._homes_for(countries, flags)
        return self._homes[key]

    def _homes_for(self, countries: list[str], flags: frozenset[int]) -> tuple[str, ...]:
        m = self.ctx.map
        verdict = classify(m, self.store, self.ds, countries, flags, self.ctx.today)
        if verdict.status != "violating":
            return ()
        if not set(verdict.jurisdictions) & set(self.ctx.scope):
            return ()
        if self.ds.multi_owner == "each":
            # one copy at the home of each owner whose jurisdiction this run covers
            homes = [
                home_store(m, m.jurisdictions[j], self.ds)
                for j in verdict.jurisdictions
                if j in self.ctx.scope
            ]
            return tuple(dict.fromkeys(homes))
        return tuple(targets(m, self.ds, verdict))
