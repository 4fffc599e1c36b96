"""Reference rows (shared catalogues) that moved records point to.

Before rows are written at home, every row of a reference dataset they point
to — by foreign key, or by a hop of an owner path or of the directory's
country path (a legacy schema may declare no foreign keys) — and,
transitively, what those rows point to, is copied there first, in the same
transaction: inserted if missing, never overwritten, parents before children.
Reference tables that point at each other (a staff ↔ store cycle) are
inserted with their foreign keys deferred to the end of the insert where the
engine allows it.  Each inserted row is read back and compared by digest with
the source's: a home that changes what it was given (a trigger, a default)
stops the batch before anything is deleted.  Reference rows are never deleted
from the source.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.schema import sort_tables

from domicile.errors import PermanentConnectorError, TransientConnectorError
from domicile.fleet import Location
from domicile.model import DataMap, Dataset, Owner
from domicile.run.rows import chunks, digest_hex, key_in, shared_columns

if TYPE_CHECKING:
    from domicile.connectors.sql import SqlStore
    from domicile.run.context import RunContext


@dataclass(frozen=True)
class Edge:
    """Rows of one table point at rows of a reference table: ``columns`` = ``remote``."""

    table: str  # the table that points
    columns: tuple[str, ...]
    referred: str  # the reference table pointed at
    remote: tuple[str, ...]
    foreign_key: bool  # declared in the schema (a missing parent is an error)
    personal: bool = False  # from reference rows into a personal dataset's rows


def path_edges(m: DataMap) -> list[Edge]:
    """The hops of every owner path and of the directory's paths, as edges."""
    out: list[Edge] = []

    def walk(table: str, owner: Owner) -> None:
        column = owner.column
        for hop in owner.hops:
            out.append(Edge(table, (column,), hop.table, (hop.match,), False))
            table, column = hop.table, hop.read

    for ds in m.datasets.values():
        if ds.table is not None:
            for owner in ds.owners:
                walk(ds.table, owner)
    directory = m.datasets[m.subjects.dataset].table
    if directory is not None:
        walk(directory, m.subjects.id_owner)
        walk(directory, m.subjects.country_owner)
    return list(dict.fromkeys(out))


class Catalog:
    """Which tables are reference data, and every way rows point into them (map + schema)."""

    def __init__(self, m: DataMap):
        self.map = m
        self.reference_tables = {
            d.table for d in m.datasets.values() if d.reference and d.table is not None
        }
        self.personal_tables = {
            d.table: d.name for d in m.datasets.values() if d.table is not None and not d.reference
        }
        self.path_edges: dict[str, list[Edge]] = {}
        for edge in path_edges(m):
            self.path_edges.setdefault(edge.table, []).append(edge)

    def edges_of(self, table: sa.Table) -> list[Edge]:
        """Where rows of *table* point to rows a home needs with them.

        Into reference tables: by foreign key, then by path hops.  From a
        reference table also into personal datasets by foreign key (a store's
        own address in the customers' address table): those rows are copied
        like reference rows where their rule allows them at home.
        """
        out = [
            Edge(
                table.name,
                tuple(e.parent.name for e in fk.elements),
                fk.referred_table.name,
                tuple(e.column.name for e in fk.elements),
                True,
                personal=fk.referred_table.name in self.personal_tables,
            )
            for fk in table.foreign_key_constraints
        ]
        out += self.path_edges.get(table.name, [])
        from_reference = table.name in self.reference_tables
        return [
            e for e in out if e.referred in self.reference_tables or (from_reference and e.personal)
        ]

    def closure(self, store: SqlStore, table: sa.Table) -> list[str]:
        """The tables rows of *table* may need at home (:meth:`edges_of`), parents first."""
        out: list[str] = []
        todo = [table]
        while todo:
            t = todo.pop()
            for edge in self.edges_of(t):
                if edge.referred not in out and store.has_table(edge.referred):
                    out.append(edge.referred)
                    todo.append(store.table(edge.referred))
        return list(reversed(out))

    def home_tables(self, ds: Dataset, source: Location) -> list[sa.Table]:
        """The source tables *ds*'s rows need at a home: references, path tables, its own.

        Path tables are the declared datasets an owner path (or, for the
        directory, the subjects' paths) goes through: the census at home
        joins them, so they must exist there even before their rows arrive.
        """
        m = self.map
        store = source.store
        names = self.closure(store, source.table)
        owners = list(ds.owners)
        if ds.name == m.subjects.dataset:
            owners += [m.subjects.id_owner, m.subjects.country_owner]
        declared = {d.table for d in m.datasets.values() if d.table}
        for owner in owners:
            for hop in owner.hops:
                if hop.table in declared and hop.table not in names and store.has_table(hop.table):
                    refs = self.closure(store, store.table(hop.table))
                    names += [n for n in refs if n not in names]
                    names.append(hop.table)
        return [store.table(n) for n in names if n != source.table.name] + [source.table]


def copy_references(
    ctx: RunContext,
    source: Location,
    home: Location,
    conn: sa.Connection,
    rows: Iterable[Mapping[str, Any]],
    stored: bool = False,
) -> int:
    """Copy the reference rows *rows* point to into *home*'s store, in *conn*'s transaction.

    *stored*: the rows move in their stored form, and so do the reference rows.
    """
    return _References(ctx, source.store, home.store, conn, stored).copy(source.table, list(rows))


def _row_id(table: sa.Table, row: Mapping[str, Any]) -> tuple[Any, ...]:
    """A reference row's identity: its primary key, or every value without one."""
    cols = [c.name for c in table.primary_key.columns] or [c.name for c in table.columns]
    return tuple(row[c] for c in cols)


class _References:
    """One batch's reference copy: gather the closure, insert parents first, verify."""

    def __init__(
        self, ctx: RunContext, src: SqlStore, dst: SqlStore, conn: sa.Connection, stored: bool
    ):
        self.ctx = ctx
        self.src = _Tables(src, stored)
        self.dst = _Tables(dst, stored)
        self.conn = conn
        self.pending: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = {}

    def copy(self, table: sa.Table, rows: list[Mapping[str, Any]]) -> int:
        todo: list[tuple[sa.Table, Sequence[Mapping[str, Any]]]] = [(table, rows)]
        while todo:
            t, batch = todo.pop()
            for edge in self.ctx.catalog.edges_of(t):
                fetched = self._missing(t, edge, batch)
                if fetched:
                    todo.append((self.src.table(edge.referred), fetched))
        if not self.pending:
            return 0
        return self._insert()

    def _missing(
        self, table: sa.Table, edge: Edge, rows: Sequence[Mapping[str, Any]]
    ) -> list[dict[str, Any]]:
        """Rows of ``edge.referred`` that *rows* point to, at neither home nor in this copy."""
        wanted = {
            tuple(r[c] for c in edge.columns)
            for r in rows
            if all(r.get(c) is not None for c in edge.columns)
        }
        mine = self.pending.get(edge.referred, {})
        wanted -= {tuple(r[c] for c in edge.remote) for r in mine.values()}
        if not wanted:
            return []
        dst_ref = self.dst.table(edge.referred)
        present: set[tuple[Any, ...]] = set()
        for chunk in chunks(sorted(wanted, key=str)):
            q = sa.select(*[dst_ref.c[c] for c in edge.remote]).where(
                key_in(dst_ref, list(edge.remote), chunk)
            )
            present |= {tuple(r) for r in self.conn.execute(q)}
        missing = sorted(wanted - present, key=str)
        if not missing:
            return []
        src_ref = self.src.table(edge.referred)
        fetched: list[dict[str, Any]] = []
        with self.src.connect(f"reading reference rows of {edge.referred}") as src_conn:
            for chunk in chunks(missing):
                q2 = sa.select(src_ref).where(key_in(src_ref, list(edge.remote), chunk))
                fetched += [dict(r) for r in src_conn.execute(q2).mappings()]
        found = {tuple(r[c] for c in edge.remote) for r in fetched}
        absent = [v for v in missing if v not in found]
        if absent and edge.foreign_key:
            shown = ", ".join(str(list(a)) for a in absent[:5])
            raise PermanentConnectorError(
                f"{table.name}.{', '.join(edge.columns)} points to {edge.referred} rows that "
                f"exist neither at home nor in the source: {shown}",
                where=f"store {self.src.name} -> {self.dst.name}",
                hint=f"add the missing {edge.referred} rows (or clear the references), "
                "then resume the run; nothing was deleted",
            )
        if edge.personal:
            self._allowed_home(edge, fetched)
        into = self.pending.setdefault(edge.referred, {})
        new = []
        for r in fetched:
            ident = _row_id(src_ref, r)
            if ident not in into:
                into[ident] = r
                new.append(r)
        return new

    def _allowed_home(self, edge: Edge, rows: list[dict[str, Any]]) -> None:
        """Personal rows reference rows point to may go home only where their rule allows.

        They are copied, never deleted at the source: rows of no subject (a
        store's own address) or of unrestricted subjects; a row of a
        restricted subject that may not sit at this home stops the batch.
        """
        from domicile.placement import classify
        from domicile.run.reading import owner_notes
        from domicile.scan import matched_waivers, owner_countries

        ctx = self.ctx
        m = ctx.map
        ds = m.datasets[self.ctx.catalog.personal_tables[edge.referred]]
        loc = ctx.fleet.location(ds.name, self.src.name)
        if loc is None:
            return
        home = m.stores[self.dst.name]
        by_key = owner_notes(ctx, ds, loc, [tuple(r[k] for k in loc.key) for r in rows])
        refused = []
        for key, notes in by_key.items():
            countries: list[str] = []
            for note in notes:
                countries += owner_countries(note, len(ds.owners), ctx.directory)
            flags = matched_waivers(
                notes[0], [w.index for w in m.exceptions if w.dataset == ds.name]
            )
            verdict = classify(m, home, ds, countries, flags, ctx.today)
            if verdict.status not in ("ok", "excepted", "orphan"):
                refused.append((key, verdict.status))
        if refused:
            shown = ", ".join(f"{list(k)} ({why})" for k, why in refused[:5])
            raise PermanentConnectorError(
                f"reference rows of {edge.table} point ({', '.join(edge.columns)}) to "
                f"{len(refused)} {ds.name} records whose rule does not allow them at "
                f"{self.dst.name}: {shown}",
                where=f"store {self.src.name} -> {self.dst.name}",
                hint=f"the foreign key from {edge.table} cannot hold at home without them: "
                f"point those {edge.table} rows at records that may go there, or give "
                f"{edge.table} rows of this home their own; nothing was deleted",
            )

    def _insert(self) -> int:
        """Insert every gathered row, parents first, then read each back and compare."""
        tables = [self.dst.table(name) for name in self.pending]
        from domicile.connectors.fk_cycles import defer_foreign_keys, restore_foreign_keys

        cyclic = _has_cycle(tables)
        if cyclic and not defer_foreign_keys(self.conn, self.dst.typed(tables)):
            restore_foreign_keys(self.conn)
            listed = ", ".join(sorted(t.name for t in tables))
            raise PermanentConnectorError(
                f"reference tables at {self.dst.name} refer to each other ({listed}) and "
                "their foreign keys there cannot be deferred, so their rows cannot be "
                "inserted one table at a time",
                where=f"store {self.dst.name}",
                hint="make those foreign keys DEFERRABLE at home (ALTER TABLE ... ALTER "
                "CONSTRAINT ... DEFERRABLE), or copy the reference rows home yourself; "
                "nothing was written or deleted",
            )
        try:
            for dst_ref in _parents_first(tables):
                src_ref = self.src.table(dst_ref.name)
                names = [c.name for c in src_ref.columns if c.name in dst_ref.c]
                rows = list(self.pending[dst_ref.name].values())
                try:
                    self.conn.execute(dst_ref.insert(), [{n: r[n] for n in names} for r in rows])
                except sa.exc.IntegrityError as exc:
                    # parts copying at once may both find a catalogue row missing at
                    # home; the one that commits second meets the first's row: the
                    # step is retried and finds the row there (never overwritten)
                    raise TransientConnectorError(
                        f"copying reference rows of {dst_ref.name} to {self.dst.name}: "
                        f"{str(exc.orig).strip().splitlines()[0]}",
                        where=f"store {self.dst.name}",
                        hint="another part may have copied the same reference rows at the "
                        "same moment: retried; if it persists, compare the table at home",
                    ) from exc
        except BaseException:
            if cyclic:
                # a session setting (MySQL) must not outlive the failure; the
                # transaction is already failing and its error is the one to see
                with contextlib.suppress(sa.exc.SQLAlchemyError):
                    restore_foreign_keys(self.conn)
            raise
        if cyclic:  # from here on, each statement is checked again
            restore_foreign_keys(self.conn, self.dst.typed(tables))
        copied = 0
        for name, by_id in self.pending.items():
            self._verify(self.src.table(name), self.dst.table(name), list(by_id.values()))
            copied += len(by_id)
        return copied

    def _verify(self, src_ref: sa.Table, dst_ref: sa.Table, rows: list[dict[str, Any]]) -> None:
        """Each inserted row reads back at home with the source row's digest."""
        key = [c.name for c in src_ref.primary_key.columns]
        if not key or any(k not in dst_ref.c for k in key):
            return  # no identity to read it back by (a keyless catalogue)
        cols = shared_columns(src_ref, dst_ref)
        src_cols = [src_ref.c[c.name] for c in cols]
        back: dict[tuple[Any, ...], dict[str, Any]] = {}
        ids = [tuple(r[k] for k in key) for r in rows]
        for chunk in chunks(ids):
            q = sa.select(dst_ref).where(key_in(dst_ref, key, chunk))
            for r in self.conn.execute(q).mappings():
                back[tuple(r[k] for k in key)] = dict(r)
        changed = [
            ident
            for ident, r in zip(ids, rows, strict=True)
            if ident not in back or digest_hex(back[ident], cols) != digest_hex(r, src_cols)
        ]
        if changed:
            shown = ", ".join(str(list(k)) for k in changed[:5])
            raise PermanentConnectorError(
                f"{len(changed)} {src_ref.name} reference rows read back at {self.dst.name} "
                f"differ from {self.src.name} (keys {shown}): something at home (a trigger, a "
                "rule) changed them; nothing was written or deleted",
                where=f"store {self.src.name} -> {self.dst.name}",
                hint=f"look at the triggers and rules on {dst_ref.name} at {self.dst.name}, "
                "then resume the run",
            )


def _has_cycle(tables: list[sa.Table]) -> bool:
    """True when foreign keys among *tables* form a cycle (a table to itself aside)."""
    names = {t.name for t in tables}
    refers = {
        t.name: {fk.referred_table.name for fk in t.foreign_key_constraints} & names - {t.name}
        for t in tables
    }
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str) -> bool:
        state[name] = 1
        for parent in refers[name]:
            if state.get(parent) == 1 or (parent not in state and visit(parent)):
                return True
        state[name] = 2
        return False

    return any(name not in state and visit(name) for name in refers)


def _parents_first(tables: list[sa.Table]) -> list[sa.Table]:
    """*tables* with each after the tables it refers to (cycles broken arbitrarily)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sa.exc.SAWarning)  # a cycle is handled by deferral
        order = sort_tables(tables)
    wanted = {t.name for t in tables}
    return [t for t in order if t.name in wanted]


class _Tables:
    """A store's tables, typed or in their stored form."""

    def __init__(self, store: SqlStore, stored: bool):
        self.store = store
        self.name = store.name
        self.stored = stored

    def table(self, name: str) -> sa.Table:
        return self.store.stored_table(name) if self.stored else self.store.table(name)

    def typed(self, tables: list[sa.Table]) -> list[sa.Table]:
        """The reflected (typed) tables of these names, for catalogue checks."""
        return [self.store.table(t.name) for t in tables]

    def connect(self, doing: str) -> Any:
        return self.store.connect(doing)
