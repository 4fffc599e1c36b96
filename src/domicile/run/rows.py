"""Row helpers shared by the move steps: keys, selections by key, digests."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from functools import lru_cache
from typing import Any

import sqlalchemy as sa

from domicile.connectors.keys import (
    KEY_CHUNK,
    chunks,
    key_chunk,
    key_columns,
    key_in,
    key_in_for,
    key_of,
    select_by_keys,
)
from domicile.digest import RowEncoder

__all__ = [
    "KEY_CHUNK",
    "chunks",
    "delete_by_keys",
    "digest_hex",
    "key_after",
    "key_chunk",
    "key_columns",
    "key_in",
    "key_in_for",
    "key_of",
    "key_within",
    "normalize_key",
    "normalize_keys",
    "same_kinds",
    "same_values",
    "select_by_keys",
    "shared_columns",
    "storage_columns",
    "unused_prefix",
]


def key_after(table: sa.Table, key: Sequence[str], after: Sequence[Any]) -> sa.ColumnElement[bool]:
    """``key > after`` (row-value comparison for composite keys) for keyset pagination."""
    cols = key_columns(table, key)
    if len(cols) == 1:
        return cols[0] > after[0]
    return sa.tuple_(*cols) > sa.tuple_(*[sa.literal(v) for v in after])


def key_within(table: sa.Table, key: Sequence[str], hi: Sequence[Any]) -> sa.ColumnElement[bool]:
    """``key <= hi``: a part's upper bound (row-value comparison for composite keys)."""
    return sa.not_(key_after(table, key, hi))


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


def normalize_keys(
    table: sa.Table, key: Sequence[str], keys: Iterable[Sequence[Any]]
) -> list[tuple[Any, ...]]:
    """:func:`normalize_key` for many keys, with each column's type looked up once."""
    types: list[type | None] = []
    for name in key:
        try:
            py = table.c[name].type.python_type
        except NotImplementedError:
            py = object
        types.append(py if py in (int, str, float) else None)
    if len(key) == 1:
        one = types[0]
        if one is None:
            return [(k[0],) for k in keys]
        return [(k[0],) if k[0] is None or isinstance(k[0], one) else (one(k[0]),) for k in keys]
    return [
        tuple(
            v if p is None or v is None or isinstance(v, p) else p(v)
            for v, p in zip(k, types, strict=True)
        )
        for k in keys
    ]


_SCALARS = frozenset(
    {int, str, float, bool, bytes, Decimal, dt.datetime, dt.date, dt.time, uuid.UUID, type(None)}
)


def same_values(a: Mapping[str, Any], b: Mapping[str, Any], names: Iterable[str]) -> bool:
    """True when *a* and *b* hold, for each name, equal scalars of one Python type.

    Used to skip a digest where two rows read from columns of the same kinds
    are equal: then their digests are equal too.  Strict on purpose: ``1 ==
    True == 1.0`` in Python, but in an untyped or JSON column their digests
    differ; containers and unknown types always go to the digest.
    """
    for n in names:
        x, y = a[n], b[n]
        t = type(x)
        if t is not type(y) or t not in _SCALARS or x != y:
            return False
    return True


def same_kinds(source: sa.Table, target: sa.Table) -> bool:
    """True when every column the two tables share has one digest kind at both ends."""
    shared = [c for c in source.columns if c.name in target.c]
    return _encoder(tuple(shared)).kinds == _encoder(tuple(target.c[c.name] for c in shared)).kinds


STORAGE_KINDS = frozenset({"datetime", "char32"})
"""Column kinds whose values :func:`domicile.digest.storage_value` may change."""


def storage_columns(columns: Iterable[sa.Column[Any]]) -> list[sa.Column[Any]]:
    """The columns whose values must pass :func:`domicile.digest.storage_value` at home."""
    return [c for c in columns if _encoder((c,)).kinds[0] in STORAGE_KINDS]


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


def unused_prefix(base: str, names: Iterable[str]) -> str:
    """*base*, lengthened until no name in *names* starts with it.

    Names domicile makes up (bind parameters, labels) beside a user's columns
    must never equal one of them, whatever the user called their columns.
    """
    taken = list(names)
    prefix = base
    while any(n.startswith(prefix) for n in taken):
        prefix = "_" + prefix
    return prefix


def delete_by_keys(
    conn: sa.Connection, table: sa.Table, key: Sequence[str], keys: Sequence[tuple[Any, ...]]
) -> set[tuple[Any, ...]]:
    """Delete rows by key; returns the keys that foreign keys of other rows pin.

    A parent row that rows staying in the source still reference (a public
    video kept abroad by an exception points to its owner) cannot be
    deleted there; it stays, is reported, and the run ends incomplete.
    """
    try:
        with conn.begin_nested():
            dialect = conn.dialect.name
            for chunk in chunks(keys, key_chunk(dialect, key)):
                conn.execute(table.delete().where(key_in_for(dialect, table, key, chunk)))
        return set()
    except sa.exc.IntegrityError:
        pass
    pinned: set[tuple[Any, ...]] = set()
    for k in keys:
        try:
            with conn.begin_nested():
                conn.execute(table.delete().where(key_in(table, key, [k])))
        except sa.exc.IntegrityError:
            pinned.add(k)
    return pinned
