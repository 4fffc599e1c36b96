"""Rows by key, per engine: ``IN`` lists, array parameters, row locks.

The one place that knows how each engine family looks rows up by key and
locks them; the move steps call these and never ask which engine they talk to.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from domicile.connectors.dialects import dialect_for

KEY_CHUNK = 500  # keys per IN-list: under every engine's parameter limit


def key_columns(table: sa.Table, key: Sequence[str]) -> list[sa.Column[Any]]:
    """The table's key columns, in key order."""
    return [table.c[k] for k in key]


def key_of(values: Mapping[str, Any], key: Sequence[str]) -> tuple[Any, ...]:
    """The key tuple of a row."""
    return tuple(values[k] for k in key)


def key_in(
    table: sa.Table, key: Sequence[str], keys: Sequence[Sequence[Any]]
) -> sa.ColumnElement[bool]:
    """``key IN (...)`` for single or composite keys."""
    cols = key_columns(table, key)
    if len(cols) == 1:
        return cols[0].in_([k[0] for k in keys])
    return sa.tuple_(*cols).in_([tuple(k) for k in keys])


def column_in(
    dialect: str, column: sa.ColumnElement[Any], values: Sequence[Any], name: str = "_dm_keys"
) -> sa.ColumnElement[bool]:
    """``column IN (...)`` in the engine's cheapest form (:mod:`~domicile.connectors.dialects`)."""
    return dialect_for(dialect).column_in(column, values, name)


def key_in_for(
    dialect: str, table: sa.Table, key: Sequence[str], keys: Sequence[Sequence[Any]]
) -> sa.ColumnElement[bool]:
    """:func:`key_in`, with :func:`column_in` for a one-column key."""
    cols = key_columns(table, key)
    if len(cols) == 1:
        return column_in(dialect, cols[0], [k[0] for k in keys])
    return key_in(table, key, keys)


def locks_rows(dialect: str) -> bool:
    """True when the engine locks rows with ``SELECT ... FOR UPDATE`` (not SQLite)."""
    return dialect_for(dialect).locks_rows


def chunks(items: Sequence[Any], size: int = KEY_CHUNK) -> Iterator[Sequence[Any]]:
    """Consecutive slices of at most *size* items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def key_chunk(dialect: str, key: Sequence[str]) -> int:
    """Keys per look-up statement on this engine, for a key of these columns."""
    return max(1, dialect_for(dialect).key_chunk // max(1, len(key)))


def select_by_keys(
    conn: sa.Connection,
    table: sa.Table,
    key: Sequence[str],
    keys: Sequence[Sequence[Any]],
    for_update: bool = False,
) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The rows with these keys, by key (chunked look-ups; optionally locked)."""
    found: dict[tuple[Any, ...], dict[str, Any]] = {}
    names = [c.name for c in table.columns]
    at = [names.index(k) for k in key]
    dialect = conn.dialect.name
    lock = for_update and locks_rows(dialect)
    for chunk in chunks(list(keys), key_chunk(dialect, key)):
        q = sa.select(table).where(key_in_for(dialect, table, key, chunk))
        if lock:
            q = q.with_for_update()
        for row in conn.execute(q):
            found[tuple(row[i] for i in at)] = dict(zip(names, row, strict=True))
    return found
