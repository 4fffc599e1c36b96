"""Reading what must move: pages of a source table by key range, each row with its homes.

The owner paths and the local directory are joined in the source's own
engine (:func:`domicile.scan.annotate`); owners the local directory does not
know are resolved against the other stores' directories in chunks.  A row
whose placement is violating, in the run's scope, becomes a
:class:`Candidate` with the homes it goes to.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.sql.visitors import replacement_traverse

from domicile.connectors.sql_digest import row_digest_sql
from domicile.errors import ConfigError, PermanentConnectorError
from domicile.fleet import Location
from domicile.model import Dataset
from domicile.placement import classify, home_store, targets
from domicile.run.blob_copy import BlobMover
from domicile.run.rows import digest_hex, key_after, key_columns, key_of, key_within
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

    keeps_stored_form = True  # rows may move in their stored form (see RunContext.stored_form)

    def __init__(self, ctx: RunContext, dataset: Dataset, source: Location):
        self.ctx = ctx
        self.ds = dataset
        self.source = source
        self.key = source.key
        self.typed = source  # the table as reflected: joins, filters and key order use it
        self.stored = self.keeps_stored_form and ctx.stored_form(dataset, source.store)
        if self.stored:  # rows read, compared and written in their stored form
            self.source = Location(
                source.store, source.store.stored_table(source.table.name), source.key
            )
        m = ctx.map
        self.store = m.stores[source.store.name]
        local_dir = ctx.fleet.location(m.subjects.dataset, source.store.name)
        self.annotated = annotate(m, source, dataset, local_dir)
        self.blobs = BlobMover(ctx, dataset) if dataset.blobs is not None else None
        self._homes: dict[tuple[Any, ...], tuple[str, ...]] = {}
        self._read_digest: tuple[sa.ColumnElement[Any] | None] | None = None

    # -- reading ---------------------------------------------------------------

    def read(
        self, after: tuple[Any, ...] | None, want: int, until: tuple[Any, ...] | None = None
    ) -> Page:
        """Read pages after *after* until *want* moving rows or the end (or key *until*).

        An owner path whose target is not unique in the data (two customers
        sharing one address) joins one record to several owners: the joined
        rows of one key are merged into one record with every owner, and the
        ``multi_owner`` rule decides.  A page never ends inside a key's rows.
        """
        page = Page(lo=after)
        table = self.typed.table
        own: list[sa.ColumnElement[Any]] = list(table.columns)
        if self.stored:  # each column read with the type that keeps its stored form
            moved = self.source.table
            own = [sa.type_coerce(c, moved.c[c.name].type) for c in table.columns]
        cols = [*own, *self.annotated.columns]
        digest = self._digest_sql()
        if digest is not None:  # the engine digests each row; NULL: Python does
            cols.append(digest)
        names = [c.name for c in table.columns]
        # The row's own columns and domicile's annotations are split by
        # position, never by name: a user column may be called anything,
        # including the annotations' labels.
        labels = [c.name for c in self.annotated.columns]
        width = len(names)
        ann_end = width + len(labels)
        owner_at = [labels.index(f"_dm_u{k}") for k in range(self.annotated.owners)]
        key_at = [names.index(k) for k in self.key]
        page_size = max(want, 500)
        while len(page.rows) < want:
            q = sa.select(*cols).select_from(self.annotated.from_)
            if after is not None:
                q = q.where(key_after(table, self.key, after))
            if until is not None:  # the end of this worker's part of the key space
                q = q.where(key_within(table, self.key, until))
            q = q.order_by(*key_columns(table, self.key)).limit(page_size)
            with self.source.store.connect(f"reading {self.ds.name}") as conn:
                try:
                    raw = conn.execute(q).all()
                except (ValueError, TypeError, OverflowError) as exc:
                    raise self._unreadable(conn, q, exc) from exc
            if not raw:
                page.exhausted = True
                break
            more = len(raw) == page_size
            groups = _by_key(raw, key_at)
            if more:
                if len(groups) == 1:
                    page_size *= 2  # one key joined to a page of owners: read a wider page
                    continue
                groups.pop()  # its owners may go on in the next page: read it again there
            self.ctx.directory.resolve(
                {r[width + i] for _, g in groups for r in g for i in owner_at}
            )
            # a row's homes follow from its annotations alone (owners, their
            # countries, exceptions): worked out once per distinct annotation
            seen: dict[tuple[Any, ...], tuple[str, ...]] = {}
            for key, rows in groups:
                page.read += 1
                after = key
                page.hi = after
                homes = self._homes_of(rows, width, ann_end, labels, seen)
                if homes:
                    values = dict(zip(names, rows[0][:width], strict=True))
                    known = rows[0][ann_end] if digest is not None else None
                    page.rows.append(self._candidate(values, homes, known))
                    if len(page.rows) >= want:
                        break  # the batch is full: it ends at this key
            else:
                if not more:
                    page.exhausted = True
                    break
        return page

    def _homes_of(
        self,
        rows: list[Any],
        width: int,
        end: int,
        labels: list[str],
        seen: dict[tuple[Any, ...], tuple[str, ...]],
    ) -> tuple[str, ...]:
        """The homes of one record (its joined rows), cached by annotation in *seen*."""
        if len(rows) > 1:  # one record, several owners
            return self._targets([dict(zip(labels, r[width:end], strict=True)) for r in rows])
        ann = tuple(rows[0][width:end])
        try:
            homes = seen.get(ann)
        except TypeError:  # an unhashable annotation value: no cache
            return self._targets([dict(zip(labels, ann, strict=True))])
        if homes is None:
            homes = seen[ann] = self._targets([dict(zip(labels, ann, strict=True))])
        return homes

    def _unreadable(self, conn: sa.Connection, q: Any, exc: Exception) -> PermanentConnectorError:
        """The error for a value the column's type cannot read: which row, which column."""
        table = self.typed.table
        names = [c.name for c in table.columns]
        raw_cols = [sa.type_coerce(c, sa.types.NullType()) for c in table.columns]
        untyped = q.with_only_columns(*raw_cols)
        dialect = conn.dialect
        where = "a row"
        for row in conn.execute(untyped):
            for name, value in zip(names, row, strict=True):
                process = table.c[name].type.result_processor(dialect, None)
                try:
                    if process is not None and value is not None:
                        process(value)
                except (ValueError, TypeError, OverflowError):
                    key = [row[names.index(k)] for k in self.key]
                    where = f"the row with key {key}, column {name} (value {value!r:.60})"
                    break
            else:
                continue
            break
        return PermanentConnectorError(
            f"reading {self.ds.name} at {self.source.store.name}: {where} cannot be read as "
            f"its column's type {table.c[name].type if where != 'a row' else ''}: {exc}",
            where=f"table {table.name} in store {self.source.store.name}",
            hint="correct the value at the source (or the column's declared type), then "
            "resume the run; nothing was moved or deleted",
        )

    def home(self, target: str) -> Location:
        """The dataset's table at home *target* (created if missing), in this move's form."""
        return self._as_moved(self.ctx.target(self.ds, target, self.typed))

    def existing_home(self, target: str) -> Location | None:
        """The dataset's table at *target* if it exists there, in this move's form."""
        loc = self.ctx.existing_target(self.ds, target)
        return None if loc is None else self._as_moved(loc)

    def reads_ahead(self) -> bool:
        """True when a server answers some of this pair's statements (the source or a
        home is not a file in this process): reading the next page while a batch
        moves then overlaps that server's work with this process's."""
        stores = [self.source.store, *(self.ctx.fleet.sql[t] for t in self.possible_homes())]
        return any(not s.behaviour.file_based for s in stores)

    def possible_homes(self) -> set[str]:
        """Every store a row of this dataset can be moved to: a jurisdiction's home."""
        m = self.ctx.map
        out = set()
        for j in m.jurisdictions.values():
            try:
                out.add(home_store(m, j, self.ds))
            except ConfigError:  # no home of this kind there: no row goes to it
                continue
        return {s for s in out if s in self.ctx.fleet.sql}

    def _as_moved(self, loc: Location) -> Location:
        if not self.stored:
            return loc
        return Location(loc.store, loc.store.stored_table(loc.table.name), loc.key)

    def _digest_sql(self) -> sa.ColumnElement[Any] | None:
        """The row digest over the moved form's columns as SQL on the reflected table
        the read query selects from (None: no SQL form, Python digests every row)."""
        if self._read_digest is None:
            store = self.source.store
            expr: Any = None
            if store.behaviour.digests_on_read:
                expr = row_digest_sql(store.dialect, list(self.source.table.columns))
            if expr is not None and self.source.table is not self.typed.table:
                typed = self.typed.table
                moved = self.source.table

                def to_typed(element: Any, **_kw: Any) -> Any:
                    if isinstance(element, sa.Column) and element.table is moved:
                        return typed.c[element.name]
                    return None

                expr = replacement_traverse(expr, {}, to_typed)
            self._read_digest = (expr,)
        return self._read_digest[0]

    def _candidate(
        self, values: dict[str, Any], homes: tuple[str, ...], known: bytes | None = None
    ) -> Candidate:
        table = self.source.table
        digest = bytes(known).hex() if known is not None else digest_hex(values, table.columns)
        c = Candidate(key_of(values, self.key), values, digest, homes)
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

    def _targets(self, notes: list[dict[str, Any]]) -> tuple[str, ...]:
        countries: list[str] = []
        for note in notes:  # one joined row per owner combination
            countries += owner_countries(note, self.annotated.owners, self.ctx.directory)
        if len(notes) > 1:
            countries = list(dict.fromkeys(countries))
        flags = matched_waivers(notes[0], self.annotated.waivers)
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


def _by_key(raw: Sequence[Any], key_at: list[int]) -> list[tuple[tuple[Any, ...], list[Any]]]:
    """Consecutive rows of one key together (the query orders by key)."""
    groups: list[tuple[tuple[Any, ...], list[Any]]] = []
    at = key_at[0]
    key_of_row: Callable[[Any], tuple[Any, ...]] = (
        (lambda r: (r[at],)) if len(key_at) == 1 else itemgetter(*key_at)
    )
    for r in raw:
        key = key_of_row(r)
        if groups and groups[-1][0] == key:
            groups[-1][1].append(r)
        else:
            groups.append((key, [r]))
    return groups


def owner_notes(
    ctx: RunContext, ds: Dataset, loc: Location, keys: Sequence[tuple[Any, ...]]
) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    """The owner annotations of the records with *keys* in *loc* (one per joined owner row).

    Owners the local directory does not know are resolved in ``ctx.directory``.
    """
    from domicile.run.rows import chunks, key_in

    m = ctx.map
    local_dir = ctx.fleet.location(m.subjects.dataset, loc.store.name)
    a = annotate(m, loc, ds, local_dir)
    labels = [c.name for c in a.columns]
    width = len(loc.key)
    out: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    with loc.store.connect(f"reading the owners of {ds.name}") as conn:
        for chunk in chunks(list(keys)):
            q = (
                sa.select(*key_columns(loc.table, loc.key), *a.columns)
                .select_from(a.from_)
                .where(key_in(loc.table, loc.key, chunk))
            )
            for r in conn.execute(q):
                out.setdefault(tuple(r[:width]), []).append(
                    dict(zip(labels, r[width:], strict=True))
                )
    ctx.directory.resolve(
        n[f"_dm_u{k}"] for ns in out.values() for n in ns for k in range(a.owners)
    )
    return out
