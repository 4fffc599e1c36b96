"""Row helpers shared by the move steps: keys, selections by key, digests."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

import sqlalchemy as sa

from domicile.connectors.keys import (
    KEY_CHUNK,
    chunks,
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
    "digest_hex",
    "key_after",
    "key_columns",
    "key_in",
    "key_in_for",
    "key_of",
    "normalize_key",
    "select_by_keys",
    "shared_columns",
    "unused_prefix",
]


def key_after(table: sa.Table, key: Sequence[str], after: Sequence[Any]) -> sa.ColumnElement[bool]:
    """``key > after`` (row-value comparison for composite keys) for keyset pagination."""
    cols = key_columns(table, key)
    if len(cols) == 1:
        return cols[0] > after[0]
    return sa.tuple_(*cols) > sa.tuple_(*[sa.literal(v) for v in after])


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
