"""Column types and SQL functions the dialects install: a column moved as its text
form, and SHA-256 for SQLite (which has none of its own)."""

from __future__ import annotations

import hashlib
from typing import Any

import sqlalchemy as sa

__all__ = ["ArrayText", "AsText", "register_sqlite_sha256"]


class AsText(sa.types.TypeDecorator[str]):
    """A column read as its text form (``CAST(col AS TEXT)``) and written from it
    (``CAST(:value AS <its type>)``; COPY parses the text itself)."""

    impl = sa.Text
    cache_ok = True

    def __init__(self, original: sa.types.TypeEngine[Any]):
        super().__init__()
        self.original = original

    def column_expression(self, colexpr: Any) -> Any:
        return sa.cast(sa.type_coerce(colexpr, self.original), sa.Text)

    def bind_expression(self, bindvalue: Any) -> Any:
        return sa.cast(bindvalue, self.original)


def _sha256(value: object) -> bytes | None:
    """SHA-256 of a text's UTF-8 bytes (or of a blob); NULL for anything else."""
    if isinstance(value, str):
        return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()
    if isinstance(value, bytes):
        return hashlib.sha256(value).digest()
    return None


def register_sqlite_sha256(dbapi_connection: Any) -> None:
    """Register ``domicile_sha256(text) -> blob`` on a sqlite3 connection (deterministic);
    SQLite has no SHA-256 of its own (see :mod:`domicile.connectors.sql_digest`)."""
    dbapi_connection.create_function("domicile_sha256", 1, _sha256, deterministic=True)


class ArrayText(sa.types.UserDefinedType[str]):
    """A PostgreSQL array parameter sent as its text form (``'{1,2,3}'``) and typed at
    the parameter itself (``$1::BIGINT[]``): the server parses it once, when it binds."""

    cache_ok = True
    render_bind_cast = True

    def __init__(self, element: str) -> None:
        self.element = element

    def get_col_spec(self, **_kw: Any) -> str:
        return f"{self.element}[]"

    def bind_processor(self, dialect: Any) -> None:
        return None
