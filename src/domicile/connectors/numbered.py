"""Tables numbered 0, 1, 2, ... without a gap: each engine's fastest append and read-back.

The audit log's entries are such a table (its key is the entry's index).
Appending a million rows, or reading them back to rehash, is most of the
log's cost, and what is fastest differs by engine, so it lives here with the
other engine differences: SQLite runs in this process, where SQLAlchemy's
per-row work costs as much as the database's; on a server it is the round
trips that count, which SQLAlchemy's batched executemany already saves.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from functools import cache
from itertools import chain
from typing import Any

import sqlalchemy as sa

# Rows per INSERT statement on SQLite: many rows per statement cost the
# driver one bind-step-reset round instead of one per row; at a few
# parameters a row this stays below SQLite's oldest limit of 999 variables.
SQLITE_ROWS_PER_STATEMENT = 250


def _key(table: sa.Table) -> str:
    (key,) = table.primary_key.columns
    return key.name


@cache
def _sqlite_insert(table: str, columns: tuple[str, ...], rows: int) -> str:
    row = "(" + ",".join("?" * len(columns)) + ")"
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES " + ",".join([row] * rows)


def insert_numbered(
    conn: sa.Connection,
    table: sa.Table,
    start: int,
    columns: Sequence[str],
    rows: Sequence[tuple[Any, ...]],
) -> int:
    """Insert *rows* (values of *columns*) keyed ``start, start + 1, ...``; return the last key.

    In *conn*'s open transaction.  When *start* is taken, the insert fails on
    the primary key (an IntegrityError) before any row is stored.  The last
    key is the one the database gave the last row: ``start + len(rows) - 1``
    unless rows with larger keys were already there (see below).
    """
    if not rows:
        return start - 1
    if conn.dialect.name == "sqlite":
        return _insert_sqlite(conn, table, start, tuple(columns), rows)
    key = _key(table)
    conn.execute(
        table.insert(),
        [{key: start + i, **dict(zip(columns, r, strict=True))} for i, r in enumerate(rows)],
    )
    return start + len(rows) - 1


def _insert_sqlite(
    conn: sa.Connection,
    table: sa.Table,
    start: int,
    columns: tuple[str, ...],
    rows: Sequence[tuple[Any, ...]],
) -> int:
    """The first row keyed *start*, the others numbered by SQLite, in multi-row statements.

    The key is the table's rowid (an INTEGER PRIMARY KEY).  The first row
    takes *start* explicitly, so a taken key fails on the primary key; from
    then on the transaction holds SQLite's write lock, and a row inserted
    without a rowid gets the largest one plus one (SQLite's documented rule
    for a table without AUTOINCREMENT): ``start + 1``, ``start + 2``...  That
    spares the driver one parameter and SQLite one key check a row (about a
    seventh of the insert).  The statements go through the driver's
    executemany with their parameters untouched.  Rows already keyed past
    *start* would number the new ones after them: the returned last key
    then says so.
    """
    name = table.name
    conn.exec_driver_sql(_sqlite_insert(name, (_key(table), *columns), 1), (start, *rows[0]))
    if len(rows) == 1:
        return start
    per_row = len(columns)
    flat = list(chain.from_iterable(rows[1:]))
    per = per_row * SQLITE_ROWS_PER_STATEMENT
    full = len(flat) // per * per
    if full:
        conn.exec_driver_sql(
            _sqlite_insert(name, columns, SQLITE_ROWS_PER_STATEMENT),
            [tuple(flat[o : o + per]) for o in range(0, full, per)],
        )
    if full < len(flat):
        rest = (len(flat) - full) // per_row
        conn.exec_driver_sql(_sqlite_insert(name, columns, rest), tuple(flat[full:]))
    return int(conn.exec_driver_sql("SELECT last_insert_rowid()").scalar_one())


def read_pages(
    conn: sa.Connection, table: sa.Table, columns: Sequence[str], page: int
) -> Generator[Sequence[tuple[Any, ...]], None, None]:
    """*table*'s rows (values of *columns*) in key order, *page* rows at a time.

    Binary values come as ``bytes`` on every engine.  On SQLite from the
    driver's own cursor, which steps through the table as pages are fetched
    (SQLAlchemy's rows would cost half the time again); elsewhere through a
    server-side cursor, so that memory stays one page.  Close the generator
    (``contextlib.closing``) while *conn* is open when stopping early.
    """
    query = f"SELECT {', '.join(columns)} FROM {table.name} ORDER BY {_key(table)}"
    if conn.dialect.name == "sqlite":
        raw = conn.connection.dbapi_connection
        assert raw is not None  # an open Connection has its driver connection
        cursor = raw.cursor()
        try:
            cursor.execute(query)
            while rows := cursor.fetchmany(page):
                yield rows
        finally:
            cursor.close()
        return
    result = conn.execution_options(stream_results=True, yield_per=page).exec_driver_sql(query)
    for part in result.partitions():
        yield [tuple(_as_bytes(v) for v in row) for row in part]


def _as_bytes(value: Any) -> Any:
    """Bytes for a driver's binary value (psycopg2 gives memoryview); anything else as is."""
    return bytes(value) if isinstance(value, memoryview) else value
