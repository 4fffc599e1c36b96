"""The census: for every (jurisdiction, store, dataset), records, bytes and violations.

The work is pushed into each database.  For one dataset in one store domicile
sends a single grouped query: the table, outer-joined along each owner path,
outer-joined to the directory when that store has it, grouped by the owners'
raw country values and by one flag per exception filter.  Records whose
owner the local directory does not know come back grouped by owner id and
are resolved against the other stores' directories in chunks of ids, never
one round trip per row, and streamed page by page (see
:mod:`domicile.directory`: memory bounded by the page, not the subjects).
Country normalisation and the placement rule then run over the groups in
Python.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from domicile.countries import normalize_country
from domicile.directory import Directory
from domicile.directory_sql import directory_rows, join_directory, own_country
from domicile.fleet import Fleet, Location, paths_unique
from domicile.model import UNRESTRICTED, DataMap, Dataset, Waiver
from domicile.placement import ORPHAN, UNKNOWN, Verdict, classify

_ZERO = sa.literal_column("0", sa.Integer)
_ONE = sa.literal_column("1", sa.Integer)

PAGE = 5000  # joined rows per fetch when counting record by record
SAMPLE_ROWS = 200  # rows read to estimate the average record size


@dataclass
class Cell:
    """Records of one jurisdiction's subjects in one store and dataset."""

    jurisdiction: str
    store: str
    dataset: str
    records: int = 0
    bytes: int = 0
    violating: int = 0
    excepted: int = 0
    conflicts: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The cell as JSON-ready dict."""
        return {
            "jurisdiction": self.jurisdiction,
            "store": self.store,
            "dataset": self.dataset,
            "records": self.records,
            "bytes": self.bytes,
            "violating": self.violating,
            "excepted": self.excepted,
            "conflicts": self.conflicts,
        }


@dataclass
class WaiverUse:
    """How many records an exception covers (or would cover, once expired)."""

    waiver: Waiver
    active: bool
    records: int = 0


@dataclass
class Census:
    """The result of a scan."""

    cells: dict[tuple[str, str, str], Cell] = field(default_factory=dict)
    violations: int = 0
    conflicts: int = 0
    orphans: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    unknown_records: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    unknown_countries: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    waivers: list[WaiverUse] = field(default_factory=list)
    today: dt.date = field(default_factory=dt.date.today)

    @property
    def unresolved(self) -> int:
        """Records whose owner is unknown, or whose subject's country is."""
        return sum(self.orphans.values()) + sum(self.unknown_records.values())

    @property
    def compliant(self) -> bool:
        """No record sits where its rule forbids it."""
        return self.violations == 0 and self.conflicts == 0

    def cell(self, jurisdiction: str, store: str, dataset: str) -> Cell:
        """The cell, created empty on first use."""
        key = (jurisdiction, store, dataset)
        if key not in self.cells:
            self.cells[key] = Cell(jurisdiction, store, dataset)
        return self.cells[key]

    def violations_in(self, jurisdictions: Iterable[str]) -> int:
        """Violating records of the given jurisdictions (a record may count in two)."""
        wanted = set(jurisdictions)
        return sum(c.violating for c in self.cells.values() if c.jurisdiction in wanted)

    def to_json(self) -> dict[str, Any]:
        """The shape DESIGN.md gives for ``scan --json``, plus details."""
        return {
            "violations": self.violations,
            "unresolved": self.unresolved,
            "conflicts": self.conflicts,
            "cells": [c.as_dict() for c in sorted(self.cells.values(), key=_cell_order)],
            "orphans": [
                {"store": s, "dataset": d, "records": n}
                for (s, d), n in sorted(self.orphans.items())
            ],
            "unknown_country_records": [
                {"store": s, "dataset": d, "records": n}
                for (s, d), n in sorted(self.unknown_records.items())
            ],
            "unknown_countries": [
                {"value": v, "subjects": n} for v, n in sorted(self.unknown_countries.items())
            ],
            "exceptions": [
                {
                    "index": u.waiver.index,
                    "dataset": u.waiver.dataset,
                    "where": dict(u.waiver.where),
                    "reason": u.waiver.reason,
                    "approved_by": u.waiver.approved_by,
                    "expires": u.waiver.expires.isoformat(),
                    "active": u.active,
                    "records": u.records,
                }
                for u in self.waivers
            ],
            "date": self.today.isoformat(),
        }


def _cell_order(c: Cell) -> tuple[str, str, str]:
    return (c.jurisdiction, c.store, c.dataset)


# ---------------------------------------------------------------------------
# Query building.


def _where_clause(table: sa.Table, where: Mapping[str, Any]) -> sa.ColumnElement[bool]:
    """An exception's structured filter: scalar → =, list → IN, null → IS NULL."""
    parts: list[sa.ColumnElement[bool]] = []
    for col, value in where.items():
        column = table.c[col]
        if value is None:
            parts.append(column.is_(None))
        elif isinstance(value, list | tuple):
            parts.append(column.in_(list(value)))
        else:
            parts.append(column == value)
    return sa.and_(sa.true(), *parts)


def owner_expressions(
    loc: Location, ds: Dataset, base: sa.FromClause | None = None
) -> tuple[sa.FromClause, list[sa.ColumnElement[Any]]]:
    """The FROM clause with each owner path outer-joined, and one expression per owner.

    *base* stands in for the table: a per-owner pre-aggregate with columns _dm_o{k}.
    """
    from_: sa.FromClause = loc.table if base is None else base
    exprs: list[sa.ColumnElement[Any]] = []
    for k, owner in enumerate(ds.owners):
        current: sa.ColumnElement[Any] = (
            loc.table.c[owner.column] if base is None else base.c[f"_dm_o{k}"]
        )
        for hop in owner.hops:
            hop_table = loc.store.table(hop.table).alias()
            from_ = from_.outerjoin(hop_table, hop_table.c[hop.match] == current)
            current = hop_table.c[hop.read]
        exprs.append(current)
    return from_, exprs


@dataclass(frozen=True)
class Annotated:
    """The FROM clause and the owner/exception columns shared by census and run.

    For owner k: ``_dm_c{k}`` the raw country from the local directory,
    ``_dm_u{k}`` the owner id when the local directory does not know it,
    ``_dm_f{k}`` 1 when it does.  For exception i: ``_dm_x{i}`` 1 when the
    record matches its filter.
    """

    from_: sa.FromClause
    columns: tuple[sa.ColumnElement[Any], ...]
    owners: int
    waivers: tuple[int, ...]


def _is_self_directory(m: DataMap, ds: Dataset, directory: Location | None) -> bool:
    sub = m.subjects
    return (
        directory is not None
        and ds.name == sub.dataset
        and len(ds.owners) == 1
        and not ds.owners[0].hops
        and sub.id_column is not None
        and ds.owners[0].column == sub.id_column
    )


def annotate(
    m: DataMap,
    loc: Location,
    ds: Dataset,
    directory: Location | None,
    base: sa.FromClause | None = None,
) -> Annotated:
    """Join each owner path (and the local directory) to *ds* in *loc*'s store."""
    from_, exprs = owner_expressions(loc, ds, base)
    cols: list[sa.ColumnElement[Any]] = []
    sub = m.subjects
    self_directory = _is_self_directory(m, ds, directory)
    for k, expr in enumerate(exprs):
        if self_directory:
            from_, country = own_country(loc.store, loc.table, sub, from_)
            cols += [
                country.label(f"_dm_c{k}"),
                sa.null().label(f"_dm_u{k}"),
                _ONE.label(f"_dm_f{k}"),
            ]
        elif directory is not None:
            joined = join_directory(loc.store, directory.table, sub, from_, expr)
            from_ = joined.from_
            missing = joined.id.is_(None)
            cols += [
                joined.country.label(f"_dm_c{k}"),
                sa.case((missing, expr), else_=sa.null()).label(f"_dm_u{k}"),
                sa.case((missing, _ZERO), else_=_ONE).label(f"_dm_f{k}"),
            ]
        else:
            cols += [
                sa.null().label(f"_dm_c{k}"),
                expr.label(f"_dm_u{k}"),
                _ZERO.label(f"_dm_f{k}"),
            ]
    waivers = tuple(w.index for w in m.exceptions if w.dataset == ds.name)
    for w in m.exceptions:
        if w.dataset == ds.name:
            cond = _where_clause(loc.table, w.where)
            cols.append(sa.case((cond, _ONE), else_=_ZERO).label(f"_dm_x{w.index}"))
    return Annotated(from_, tuple(cols), len(exprs), waivers)


def census_query(m: DataMap, loc: Location, ds: Dataset, directory: Location | None) -> Annotated:
    """One grouped query for *ds* in *loc*'s store (see the module docstring).

    Returned as an :class:`Annotated` whose ``from_`` is the grouped select.
    """
    # Group in an outer query over a derived table: expressions with bound
    # parameters (exception filters) cannot be repeated in GROUP BY on
    # PostgreSQL, and every engine flattens this shape into one scan.
    if _is_self_directory(m, ds, directory) or any(w.dataset == ds.name for w in m.exceptions):
        a = annotate(m, loc, ds, directory)
        inner = sa.select(*a.columns).select_from(a.from_).subquery("g")
        grouped = sa.select(*inner.c, sa.func.count().label("n")).group_by(*inner.c)
        return Annotated(grouped.subquery("census"), a.columns, a.owners, a.waivers)
    # Count the records per owner value first, then walk the owner paths and
    # join the directory once per distinct owner instead of once per record.
    # The pre-aggregate reads the owner column alone, which an app indexes:
    # PostgreSQL streams it (Index Only Scan -> GroupAggregate), SQLite groups
    # in index order with no temporary B-tree, and the per-row directory
    # lookups (SQLite's costliest step) become one per owner.  Not with
    # exception filters: grouping by (owner, flags) barely shrinks a table with
    # few rows per owner, and on PostgreSQL it spills past work_mem.
    raw = sa.select(
        *(loc.table.c[o.column].label(f"_dm_o{k}") for k, o in enumerate(ds.owners))
    ).subquery("b")
    pre = sa.select(*raw.c, sa.func.count().label("_dm_n")).group_by(*raw.c).subquery("p")
    a = annotate(m, loc, ds, directory, base=pre)
    inner = sa.select(*a.columns, pre.c._dm_n).select_from(a.from_).subquery("g")
    keys = [c for c in inner.c if c.name != "_dm_n"]
    grouped = sa.select(*keys, sa.func.sum(inner.c._dm_n).label("n")).group_by(*keys)
    return Annotated(grouped.subquery("census"), a.columns, a.owners, a.waivers)


def owner_countries(row: Mapping[Any, Any], owners: int, directory: Directory) -> list[str]:
    """Each owner's alpha-2 country (or ORPHAN / UNKNOWN) from an annotated row."""
    countries = []
    for k in range(owners):
        if row[f"_dm_f{k}"]:
            countries.append(normalize_country(row[f"_dm_c{k}"]) or UNKNOWN)
        elif row[f"_dm_u{k}"] is not None:
            countries.append(directory.country(row[f"_dm_u{k}"]))
        else:
            countries.append(ORPHAN)
    return countries


def matched_waivers(row: Mapping[Any, Any], waivers: Iterable[int]) -> frozenset[int]:
    """Indexes of the exceptions whose filter an annotated row matches."""
    return frozenset(i for i in waivers if row[f"_dm_x{i}"])


def _row_bytes(row: Sequence[Any]) -> int:
    total = 0
    for v in row:
        if v is None:
            total += 1
        elif isinstance(v, bytes | bytearray | memoryview):
            total += len(v)
        elif isinstance(v, str):
            total += len(v.encode("utf-8"))
        elif isinstance(v, bool | int | float):
            total += 8
        else:
            total += len(str(v))
    return total


def average_record_bytes(loc: Location) -> float:
    """Average size of a record, estimated from a small sample of rows."""
    table = loc.store.stored_table(loc.table.name)  # as stored: nothing to parse
    with loc.store.connect(f"sampling {loc.table.name}") as conn:
        rows = conn.execute(sa.select(table).limit(SAMPLE_ROWS)).all()
    if not rows:
        return 0.0
    return sum(_row_bytes(r) for r in rows) / len(rows)


# ---------------------------------------------------------------------------
# Running the census.


def _count_unknown_countries(fleet: Fleet, census: Census) -> None:
    sub = fleet.map.subjects
    for loc in fleet.locations(sub.dataset):
        rows = directory_rows(loc.store, loc.table, sub)
        col = rows.country.label("_dm_country")
        inner = sa.select(col).select_from(rows.from_).subquery("d")
        q = sa.select(inner.c._dm_country, sa.func.count()).group_by(inner.c._dm_country)
        with loc.store.connect("counting directory countries") as conn:
            for raw, n in conn.execute(q):
                if normalize_country(raw) is None:
                    census.unknown_countries[str(raw) if raw is not None else "(null)"] += n


Progress = Callable[[str], None]


def scan(
    fleet: Fleet,
    today: dt.date | None = None,
    datasets: Iterable[str] | None = None,
    progress: Progress | None = None,
) -> Census:
    """Run the census over the whole fleet (or the named datasets)."""
    m = fleet.map
    today = today or dt.datetime.now(dt.UTC).date()
    census = Census(today=today)
    uses = {w.index: WaiverUse(w, w.active(today)) for w in m.exceptions}
    census.waivers = list(uses.values())
    directory = Directory(fleet)
    names = list(datasets) if datasets is not None else list(m.datasets)
    counted = False  # unknown directory countries counted on the way
    from domicile.blobs import BlobLocator
    from domicile.scan_objects import scan_blobs, scan_object_dataset

    for name in names:
        ds = m.datasets[name]
        if ds.reference:
            continue
        if not ds.is_sql:
            scan_object_dataset(fleet, census, directory, uses, ds, today)
            continue
        # one listing of each object store per dataset, shared by its SQL stores
        locator = BlobLocator(fleet, ds, listing=True) if ds.blobs is not None else None
        for loc in fleet.locations(name):
            if progress:
                progress(f"{name} in {loc.store.name}")
            counted |= _scan_location(fleet, census, directory, uses, ds, loc, today)
            if locator is not None:
                scan_blobs(fleet, census, directory, ds, loc, today, locator=locator)
    if not counted:  # the directory was not counted by its own census query
        _count_unknown_countries(fleet, census)
    return census


def _scan_location(
    fleet: Fleet,
    census: Census,
    directory: Directory,
    uses: dict[int, WaiverUse],
    ds: Dataset,
    loc: Location,
    today: dt.date,
) -> bool:
    """Count *ds* in *loc*; True when this counted the directory's unknown countries."""
    m = fleet.map
    store = m.stores[loc.store.name]
    local_dir = fleet.location(m.subjects.dataset, loc.store.name)
    if not paths_unique(loc, ds):
        _scan_by_record(fleet, census, directory, uses, ds, loc, local_dir, today)
        return False
    gq = census_query(m, loc, ds, local_dir)
    avg: float | None = None
    verdicts: dict[tuple[Any, ...], Verdict] = {}
    self_directory = _is_self_directory(m, ds, local_dir)
    with loc.store.connect(f"counting {ds.name}") as conn:
        # Owners the local directory lacks come back one group per owner id: read
        # page by page, so memory follows the page, not the number of subjects.
        result = conn.execution_options(yield_per=PAGE).execute(sa.select(gq.from_))
        for groups in result.mappings().partitions(PAGE):
            directory.resolve(
                (g[f"_dm_u{k}"] for g in groups for k in range(gq.owners)),
                searched=loc.store.name if local_dir is not None else None,
            )
            if avg is None:
                avg = average_record_bytes(loc)
            for g in groups:
                if self_directory and normalize_country(g["_dm_c0"]) is None:
                    # The directory's own groups are its subjects per raw country value:
                    # no second scan of the directory for the unknown-country list.
                    raw = g["_dm_c0"]
                    unknown = str(raw) if raw is not None else "(null)"
                    census.unknown_countries[unknown] += int(g["n"])
                countries = owner_countries(g, gq.owners, directory)
                flags = matched_waivers(g, gq.waivers)
                key = (*countries, flags)
                if key not in verdicts:
                    verdicts[key] = classify(m, store, ds, countries, flags, today)
                n = int(g["n"])
                add(census, uses, verdicts[key], loc.store.name, ds.name, n, round(n * avg))
    return self_directory


def _scan_by_record(
    fleet: Fleet,
    census: Census,
    directory: Directory,
    uses: dict[int, WaiverUse],
    ds: Dataset,
    loc: Location,
    local_dir: Location | None,
    today: dt.date,
) -> None:
    """The census of a dataset whose owner paths may join one record to several owners.

    The joined rows are streamed in key order and each record's owners
    gathered before its verdict: a record counts once, with every owner.
    """
    m = fleet.map
    store = m.stores[loc.store.name]
    a = annotate(m, loc, ds, local_dir)
    keys = [loc.table.c[k] for k in loc.key]
    q = (
        sa.select(*(c.label(f"_dm_k{i}") for i, c in enumerate(keys)), *a.columns)
        .select_from(a.from_)
        .order_by(*keys)
    )
    avg = average_record_bytes(loc)
    verdicts: dict[tuple[Any, ...], Verdict] = {}
    width = len(keys)

    def count(rows: list[Any]) -> None:
        countries: list[str] = []
        for r in rows:
            countries += owner_countries(r, a.owners, directory)
        countries = list(dict.fromkeys(countries))
        flags = matched_waivers(rows[0], a.waivers)
        vkey = (*countries, flags)
        if vkey not in verdicts:
            verdicts[vkey] = classify(m, store, ds, countries, flags, today)
        add(census, uses, verdicts[vkey], loc.store.name, ds.name, 1, round(avg))

    pending: list[Any] = []
    with loc.store.connect(f"counting {ds.name} by record") as conn:
        result = conn.execution_options(yield_per=PAGE).execute(q).mappings()
        for part in result.partitions(PAGE):
            directory.resolve(r[f"_dm_u{k}"] for r in part for k in range(a.owners))
            for r in part:
                key = tuple(r[f"_dm_k{i}"] for i in range(width))
                if pending and tuple(pending[0][f"_dm_k{i}"] for i in range(width)) != key:
                    count(pending)
                    pending = []
                pending.append(r)
    if pending:
        count(pending)


def add(
    census: Census,
    uses: dict[int, WaiverUse] | None,
    v: Verdict,
    store: str,
    dataset: str,
    n: int,
    nbytes: int,
) -> None:
    """Count *n* records (*nbytes* bytes) with verdict *v* into the census."""
    if v.status == "orphan":
        census.orphans[(store, dataset)] += n
        return
    if v.status == "unknown":
        census.unknown_records[(store, dataset)] += n
        return
    if v.status == "violating":
        census.violations += n
    elif v.status == "conflict":
        census.conflicts += n
    if uses is not None and v.waiver is not None:
        uses[v.waiver.index].records += n
    if uses is not None and v.expired is not None:
        uses[v.expired.index].records += n
    for j in v.jurisdictions or (UNRESTRICTED,):
        cell = census.cell(j, store, dataset)
        cell.records += n
        cell.bytes += nbytes
        if v.status == "violating":
            cell.violating += n
        elif v.status == "excepted":
            cell.excepted += n
        elif v.status == "conflict":
            cell.conflicts += n
