"""Foreign-key cycles: tables that refer to each other, created and loaded in either order.

``store.manager_staff_id -> staff`` and ``staff.store_id -> store`` (both NOT
NULL) can be neither created nor filled one table after the other.
:func:`~domicile.connectors.schema.copy_tables` creates the tables of a
cycle first and their foreign keys after (``ALTER TABLE … ADD CONSTRAINT``;
inline on SQLite, which checks references only when rows are written), and
on PostgreSQL makes them (and every other key it creates) ``DEFERRABLE
INITIALLY IMMEDIATE``: checked at each statement as usual, unless a
transaction says ``SET CONSTRAINTS … DEFERRED``.
:func:`defer_foreign_keys` says it for a loader.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import sqlalchemy as sa

from domicile.connectors.ddl_common import family


def _edges(tables: Iterable[sa.Table]) -> dict[str, set[str]]:
    """Table name -> names of the other given tables its foreign keys refer to."""
    tables = list(tables)
    names = {t.name for t in tables}
    graph: dict[str, set[str]] = {t.name: set() for t in tables}
    for table in tables:
        for fk in table.foreign_key_constraints:
            referred = fk.elements[0].target_fullname.rsplit(".", 1)[0].rsplit(".", 1)[-1]
            if referred in names and referred != table.name:
                graph[table.name].add(referred)
    return graph


def foreign_key_cycles(tables: Iterable[sa.Table]) -> list[set[str]]:
    """The sets of *tables* (by name) whose foreign keys form a cycle, in a stable order.

    Strongly connected sets of two or more tables; a table that refers only
    to itself forms no cycle here (one CREATE TABLE holds such a key, and one
    statement can insert a parent and its child).
    """
    graph = _edges(tables)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm; schemas are small enough to recurse
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found, key=lambda g: sorted(g))


def creation_order(tables: Sequence[sa.Table]) -> list[sa.Table]:
    """*tables* with each after the tables it refers to, a cycle's tables in their given order.

    Foreign keys inside a cycle are left out of the ordering (they are added
    after every table exists), so no cycle is ever handed to SQLAlchemy's sort.
    """
    graph = _edges(tables)
    group_of: dict[str, int] = {}
    for i, group in enumerate(foreign_key_cycles(tables)):
        for name in group:
            group_of[name] = i
    position = {t.name: i for i, t in enumerate(tables)}
    done: set[str] = set()
    out: list[sa.Table] = []
    by_name = {t.name: t for t in tables}

    def place(name: str, path: frozenset[str]) -> None:
        if name in done or name in path:
            return
        for parent in sorted(graph[name], key=position.__getitem__):
            same = name in group_of and group_of.get(parent) == group_of[name]
            if not same:
                place(parent, path | {name})
        done.add(name)
        out.append(by_name[name])

    for table in tables:
        place(table.name, frozenset())
    return out


def cyclic_constraints(tables: Sequence[sa.Table]) -> set[tuple[str, str]]:
    """``(table, referred table)`` pairs of foreign keys that lie on a cycle."""
    out: set[tuple[str, str]] = set()
    graph = _edges(tables)
    for group in foreign_key_cycles(tables):
        for name in group:
            out.update((name, parent) for parent in graph[name] if parent in group)
    return out


_PG_NOT_DEFERRABLE = """
SELECT count(*) FROM pg_catalog.pg_constraint
WHERE contype = 'f' AND NOT condeferrable
  AND (conrelid = ANY(:oids) OR confrelid = ANY(:oids))
"""
_PG_ALL_NOT_DEFERRABLE = """
SELECT count(*) FROM pg_catalog.pg_constraint c JOIN pg_catalog.pg_namespace n
  ON n.oid = c.connamespace
WHERE c.contype = 'f' AND NOT c.condeferrable AND n.nspname = current_schema()
"""


def defer_foreign_keys(conn: sa.Connection, tables: Sequence[sa.Table] | None = None) -> bool:
    """Inside the caller's open transaction, check foreign keys at commit where the engine can.

    - PostgreSQL: ``SET CONSTRAINTS ALL DEFERRED`` (for this transaction; it
      moves only DEFERRABLE constraints, which domicile makes for cycles).
    - SQLite: ``PRAGMA defer_foreign_keys = ON`` (reset by SQLite at commit
      or rollback).
    - MySQL/MariaDB: ``SET SESSION foreign_key_checks = 0``.  That is a
      **session** setting that turns checks off rather than deferring them:
      the caller must call :func:`restore_foreign_keys` before committing,
      with the tables written, which turns checks on again and looks for rows
      whose parent is missing (MySQL checks nothing written meanwhile).

    Returns True only when every foreign key of *tables* (None: of every
    table of the connection's schema) is deferred: False on PostgreSQL when
    one of them is NOT DEFERRABLE (an existing home table's, say), and on
    engines domicile does not know.
    """
    kind = family(conn.dialect)
    if kind == "sqlite":
        conn.exec_driver_sql("PRAGMA defer_foreign_keys = ON")
        return True
    if kind == "mysql":
        conn.exec_driver_sql("SET SESSION foreign_key_checks = 0")
        return True
    if kind != "postgresql":
        return False
    conn.exec_driver_sql("SET CONSTRAINTS ALL DEFERRED")
    if tables is None:
        return not conn.execute(sa.text(_PG_ALL_NOT_DEFERRABLE)).scalar()
    quote = conn.dialect.identifier_preparer.quote
    oids = [
        conn.execute(sa.text("SELECT to_regclass(:t)::oid"), {"t": quote(t.name)}).scalar()
        for t in tables
    ]
    return not conn.execute(
        sa.text(_PG_NOT_DEFERRABLE), {"oids": [o for o in oids if o is not None]}
    ).scalar()


def restore_foreign_keys(conn: sa.Connection, tables: Sequence[sa.Table] | None = None) -> None:
    """End :func:`defer_foreign_keys` inside the transaction: later statements check at once.

    PostgreSQL: ``SET CONSTRAINTS ALL IMMEDIATE`` (which checks what is
    pending now and raises if a row's parent is missing).  SQLite: ``PRAGMA
    defer_foreign_keys = OFF`` (what is pending is still checked at commit).
    MySQL/MariaDB: ``foreign_key_checks = 1`` again; then, for each foreign
    key of *tables*, a row whose parent is missing raises
    :class:`sqlalchemy.exc.IntegrityError` naming the constraint (the caller
    rolls back).  A caller that deferred only to insert rows that refer to
    each other ends the deferral right after, so that its later inserts are
    refused statement by statement as before.
    """
    kind = family(conn.dialect)
    if kind == "postgresql":
        conn.exec_driver_sql("SET CONSTRAINTS ALL IMMEDIATE")
        return
    if kind == "sqlite":
        conn.exec_driver_sql("PRAGMA defer_foreign_keys = OFF")
        return
    if kind != "mysql":
        return
    conn.exec_driver_sql("SET SESSION foreign_key_checks = 1")
    for table in tables or ():
        for fk in table.foreign_key_constraints:
            parent = fk.referred_table
            alias = parent.alias()
            child_cols = [e.parent for e in fk.elements]
            parent_cols = [alias.c[e.column.name] for e in fk.elements]
            match = sa.and_(*[p == c for p, c in zip(parent_cols, child_cols, strict=True)])
            orphan = (
                sa.select(sa.literal(1))
                .select_from(table)
                .where(*[c.is_not(None) for c in child_cols])
                .where(~sa.exists().where(match))
                .limit(1)
            )
            if conn.execute(orphan).first() is not None:
                raise sa.exc.IntegrityError(
                    f"foreign key {fk.name or ''} of {table.name}: a row refers to a missing"
                    f" {parent.name} row",
                    None,
                    Exception("orphan row"),
                )
