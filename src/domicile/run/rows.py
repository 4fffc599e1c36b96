"""Row helpers shared by the move steps: keys, selections by key, digests."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from domicile.digest import RowEncoder

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


def key_in_for(
    dialect: str, table: sa.Table, key: Sequence[str], keys: Sequence[Sequence[Any]]
) -> sa.ColumnElement[bool]:
    """:func:`key_in`, as ``= ANY(array)`` on PostgreSQL for a one-column key.

    One array parameter keeps the statement text the same for every batch, so
    neither SQLAlchemy nor the server compiles it again (an IN-list of 500
    placeholders was half the cost of these look-ups there).
    """
    cols = key_columns(table, key)
    if dialect == "postgresql" and len(cols) == 1:
        values = [k[0] for k in keys]
        param = sa.bindparam("_dm_keys", values, type_=postgresql.ARRAY(cols[0].type))
        return cols[0] == sa.any_(param)
    return key_in(table, key, keys)


def key_after(table: sa.Table, key: Sequence[str], after: Sequence[Any]) -> sa.ColumnElement[bool]:
    """``key > after`` (row-value comparison for composite keys) for keyset pagination."""
    cols = key_columns(table, key)
    if len(cols) == 1:
        return cols[0] > after[0]
    return sa.tuple_(*cols) > sa.tuple_(*[sa.literal(v) for v in after])


def chunks(items: Sequence[Any], size: int = KEY_CHUNK) -> Iterator[Sequence[Any]]:
    """Consecutive slices of at most *size* items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def normalize_key(table: sa.Table, key: Sequence[str], values: Sequence[Any]) -> tuple[Any, ...]:
    """A key read back from the journal (JSON) in the Python type of its column.

    JSON keeps ints and strings; anything else is passed as text, which every
    engine compares to the column after its own cast.
    """
    out = []
    for name, value in zip(key, values, strict=True):
        col = table.c[name]
        try:
            py = col.type.python_type
        except NotImplementedError:
            py = object
        if value is not None and py in (int, str, float) and not isinstance(value, py):
            value = py(value)
        out.append(value)
    return tuple(out)


def select_by_keys(
    conn: sa.Connection,
    table: sa.Table,
    key: Sequence[str],
    keys: Sequence[Sequence[Any]],
    for_update: bool = False,
) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The rows with these keys, by key (chunked IN-lists; optionally locked)."""
    found: dict[tuple[Any, ...], dict[str, Any]] = {}
    for chunk in chunks(list(keys)):
        q = sa.select(table).where(key_in_for(conn.dialect.name, table, key, chunk))
        if for_update and conn.dialect.name != "sqlite":
            q = q.with_for_update()
        for row in conn.execute(q).mappings():
            values = dict(row)
            found[key_of(values, key)] = values
    return found


@lru_cache(maxsize=256)
def _encoder(columns: tuple[sa.Column[Any], ...]) -> RowEncoder:
    return RowEncoder(columns)


def digest_hex(values: Mapping[str, Any], columns: Iterable[sa.Column[Any]]) -> str:
    """Hex content digest of a row over the given columns (engine independent)."""
    return _encoder(tuple(columns)).digest(values).hex()


def shared_columns(source: sa.Table, target: sa.Table) -> list[sa.Column[Any]]:
    """The target's columns that the source also has, in source order.

    Digests at both ends cover exactly these, so an extra column at home (with
    a default) does not make every row look different.
    """
    return [target.c[c.name] for c in source.columns if c.name in target.c]
