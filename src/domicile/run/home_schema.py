"""What each home needs before any row moves: the tables to create, their DDL, the refusals.

``plan`` and ``run`` share it, so that whatever ``run`` would refuse for a
home's schema — a type, default or check with no counterpart at the home's
engine, a home table that lacks a source column — ``plan`` refuses first,
from the schemas alone (nothing is created, nothing is scanned), and shows
the statements it would run at each home.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa

from domicile.connectors.schema import ddl_preview, missing_columns, schema_problems
from domicile.connectors.sql import SqlStore
from domicile.errors import DomicileError
from domicile.fleet import Fleet
from domicile.plan import Move
from domicile.run.references import Catalog


@dataclass
class HomeSchema:
    """Per home store: the source tables its moves need, what to create, and what stops it."""

    needs: dict[str, dict[str, sa.Table]] = field(default_factory=dict)
    ddl: dict[str, list[str]] = field(default_factory=dict)
    blockers: list[str] = field(default_factory=list)


def home_needs(
    fleet: Fleet, catalog: Catalog, moves: Iterable[Move], copy_order: Iterable[str]
) -> dict[str, dict[str, sa.Table]]:
    """Home store -> table name -> the source table it is made from, in copy order."""
    moves = list(moves)
    wanted: dict[str, dict[str, sa.Table]] = {}
    for dataset in copy_order:
        ds = fleet.map.datasets[dataset]
        if not ds.is_sql:
            continue
        for move in moves:
            if move.dataset != dataset:
                continue
            source = fleet.location(dataset, move.source)
            if source is None or move.target not in fleet.sql:
                continue
            tables = wanted.setdefault(move.target, {})
            for t in catalog.home_tables(ds, source):
                tables.setdefault(t.name, t)
    return wanted


def check_homes(fleet: Fleet, moves: Iterable[Move], copy_order: Iterable[str]) -> HomeSchema:
    """The schema side of a plan: every home's missing tables, their DDL and the blockers."""
    out = HomeSchema(home_needs(fleet, Catalog(fleet.map), moves, copy_order))
    out.blockers += _directory_views(fleet, list(out.needs))
    for store, tables in out.needs.items():
        sql = fleet.sql[store]
        try:
            existing = {n for n in tables if sql.has_table(n)}
            create = [t for n, t in tables.items() if n not in existing]
            for name in sorted(existing):
                lacking = missing_columns(tables[name], sql.table(name))
                if lacking:
                    out.blockers.append(
                        f"table {name} at home store {store} lacks column(s) "
                        f"{', '.join(lacking)} that the source has: add them at home "
                        "(ALTER TABLE ... ADD COLUMN); domicile never drops data to make rows fit"
                    )
            blocker = _cycle_blocker(sql, [sql.table(n) for n in sorted(existing)])
            if blocker:
                out.blockers.append(f"home store {store}: {blocker}")
            if not create:
                continue
            dialect = sql.engine.dialect
            problems = schema_problems(create, dialect, existing)
            out.blockers += [f"home store {store}: {p.message} ({p.hint})" for p in problems]
            if not problems:
                out.ddl[store] = ddl_preview(create, dialect)
        except DomicileError as exc:
            out.blockers.append(f"home store {store}: {exc.message}")
    return out


def _directory_views(fleet: Fleet, homes: list[str]) -> list[str]:
    """A directory that is a view must already exist at every home records move to.

    domicile does not translate a view's SQL; without it at home, the census
    there could not resolve the moved records' subjects (they would read as
    orphans).
    """
    sub = fleet.map.subjects
    table = fleet.map.datasets[sub.dataset].table
    if table is None:
        return []
    views = [loc.store.name for loc in fleet.locations(sub.dataset) if loc.store.is_view(table)]
    if not views:
        return []
    return [
        f"the directory '{table}' is a view in {', '.join(views)}, and home store {home} has "
        f"no '{table}': after the move its records' subjects could not be resolved there; "
        f"create the view at {home} first, or read the country through a path "
        "(subjects.country: 'column -> table.column -> ...') from a base table"
        for home in homes
        if not fleet.sql[home].has_table(table)
    ]


@dataclass
class Prepared:
    """What :func:`prepare_homes` did at each home store."""

    created: dict[str, list[str]] = field(default_factory=dict)  # store -> tables made
    sequences: dict[str, dict[str, int]] = field(default_factory=dict)  # store -> next values
    blockers: list[str] = field(default_factory=list)


def prepared_moves(fleet: Fleet, scope: Sequence[str]) -> tuple[list[Move], list[str]]:
    """Every (personal dataset, source, home) of *scope*, whether or not rows move yet.

    The source of a table is the first store, in map order, that has it and
    is not the home; the copy order is the datasets' foreign-key order.
    """
    from domicile.placement import home_store
    from domicile.plan import order_datasets

    m = fleet.map
    moves: list[Move] = []
    personal = [d for d in m.datasets.values() if d.is_sql and not d.reference]
    for name in scope:
        j = m.jurisdictions[name]
        for ds in personal:
            home = home_store(m, j, ds)
            sources = [loc for loc in fleet.locations(ds.name) if loc.store.name != home]
            if sources and home in fleet.sql:
                moves.append(Move(ds.name, sources[0].store.name, home, (name,), 0, 0, 0.0))
    table_to_dataset = {d.table: d.name for d in personal}
    edges: dict[str, set[str]] = {}
    for fk in fleet.foreign_keys():
        parent = table_to_dataset.get(fk.referred_table)
        if parent is not None:
            edges.setdefault(fk.dataset, set()).add(parent)
    return moves, list(order_datasets([d.name for d in personal], edges)[0])


def prepare_homes(fleet: Fleet, scope: Sequence[str], headroom: int) -> Prepared:
    """Create every home table of *scope* that is missing, and set generated keys past the sources.

    Tables come from the first source that has them (with the reference and
    path tables they need); a sequence, identity or auto-increment column at
    home is set past the largest value in every store that holds the table,
    plus *headroom*, and never moved backwards.  Nothing is created when any
    home has a blocker.
    """
    from domicile.connectors.schema import copy_tables

    moves, order = prepared_moves(fleet, scope)
    homes = check_homes(fleet, moves, order)
    out = Prepared(blockers=list(homes.blockers))
    if out.blockers:
        return out
    for store, tables in homes.needs.items():
        sql = fleet.sql[store]
        missing = [n for n in tables if not sql.has_table(n)]
        if missing:
            copy_tables(list(tables.values()), sql.engine)
            for n in tables:
                sql.forget(n)
            out.created[store] = missing
        out.sequences[store] = advance_home(fleet, store, list(tables), headroom)
    for d in fleet.map.datasets.values():
        fleet.refresh(d.name)
    return out


def advance_home(fleet: Fleet, store: str, tables: Iterable[str], headroom: int) -> dict[str, int]:
    """Set the generated keys of *tables* at *store* past every other store's largest.

    Never backwards: a sequence already further along stays where it is.
    Returns the next value of each generated column it looked at.
    """
    from domicile.connectors.schema import advance_sequences, generated_max

    sql = fleet.sql[store]
    names = [n for n in tables if sql.has_table(n)]
    at_least: dict[str, int] = {}
    for name in names:
        for other in fleet.sql.values():
            if other.name != store and other.has_table(name):
                top = generated_max(other.engine, other.table(name))
                if top is not None:
                    at_least[name] = max(at_least.get(name, top), top)
    return advance_sequences(sql.engine, [sql.table(n) for n in names], at_least, headroom)


def _cycle_blocker(sql: SqlStore, tables: list[sa.Table]) -> str | None:
    """Why existing home tables that refer to each other could not take their rows, if so.

    Rows of tables in a foreign-key cycle are inserted with the keys deferred;
    an engine that cannot defer them there (a PostgreSQL key that is not
    DEFERRABLE) is found now, in a transaction that is rolled back.
    """
    from domicile.connectors.fk_cycles import defer_foreign_keys, foreign_key_cycles

    cycles = [c for c in foreign_key_cycles(tables) if len(c) > 1]
    if not cycles:
        return None
    in_cycle = [t for t in tables if any(t.name in c for c in cycles)]
    with sql.engine.connect() as conn, conn.begin() as tx:
        deferrable = defer_foreign_keys(conn, in_cycle)
        tx.rollback()
    if deferrable:
        return None
    names = ", ".join(sorted(t.name for t in in_cycle))
    return (
        f"tables {names} refer to each other and their foreign keys there are not "
        "DEFERRABLE, so their rows cannot be inserted one table at a time: make them "
        "DEFERRABLE (ALTER TABLE ... ALTER CONSTRAINT ... DEFERRABLE INITIALLY IMMEDIATE), "
        "or drop the tables there and let domicile create them"
    )
