"""Reflection that reads values exactly and knows what the catalogue says beyond SQLAlchemy.

:func:`refine_reflected` corrects reflected types that would read values
inexactly, and records in ``Table.info`` what creating the table elsewhere
needs and SQLAlchemy's reflection leaves out: the engine family, the
generated column, every CHECK of a PostgreSQL domain, a PostgreSQL
sequence's options, MariaDB's column-level checks and expression defaults.
"""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql

from domicile.connectors.ddl_common import (
    INFO_DOMAINS,
    INFO_FAMILY,
    INFO_GENERATED,
    INFO_SEQUENCES,
    family,
    sql_text,
)
from domicile.connectors.ddl_types import _walk, read_named_types
from domicile.connectors.sequences import generated_of, read_pg_sequences, read_sqlite_generated


def _rows(bind: sa.Engine | sa.Connection, query: str, params: dict[str, Any]) -> list[Any]:
    if isinstance(bind, sa.Connection):
        return list(bind.execute(sa.text(query), params).all())
    with bind.connect() as conn:
        return list(conn.execute(sa.text(query), params).all())


def _with_conn(bind: sa.Engine | sa.Connection, fn: Any) -> Any:
    if isinstance(bind, sa.Connection):
        return fn(bind)
    with bind.connect() as conn:
        return fn(conn)


_MARIADB_CHECKS = (
    "SELECT CONSTRAINT_NAME, CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS"
    " WHERE CONSTRAINT_SCHEMA = COALESCE(:schema, DATABASE()) AND TABLE_NAME = :table"
)
_MARIADB_DEFAULTS = (
    "SELECT COLUMN_NAME, COLUMN_DEFAULT FROM information_schema.COLUMNS"
    " WHERE TABLE_SCHEMA = COALESCE(:schema, DATABASE()) AND TABLE_NAME = :table"
)


def _json_check(name: str, clause: str | None) -> bool:
    match = re.fullmatch(r"\s*json_valid\(`((?:[^`]|``)+)`\)\s*", clause or "")
    return bool(match and match.group(1).replace("``", "`") == name)


def _refine_mariadb(table: sa.Table, bind: sa.Engine | sa.Connection) -> set[str]:
    """MariaDB: JSON columns (returned), column-level checks and expression defaults.

    MariaDB has no JSON type: a JSON column is LONGTEXT with a ``json_valid``
    check, and SQLAlchemy reflects neither column-level checks nor a default
    that is an expression (``DEFAULT concat('a','b')``); information_schema has both.
    """
    params = {"schema": table.schema, "table": table.name}
    json_columns = set()
    have = {c.name for c in table.constraints if isinstance(c, sa.CheckConstraint)}
    for name, clause in _rows(bind, _MARIADB_CHECKS, params):
        if _json_check(name, clause):
            json_columns.add(name)
        elif name not in have and clause:
            table.append_constraint(sa.CheckConstraint(sql_text(clause), name=name))
    for name, default in _rows(bind, _MARIADB_DEFAULTS, params):
        column = table.c.get(name)
        if column is None or column.server_default is not None or default is None:
            continue
        if str(default).upper() != "NULL":
            sa.DefaultClause(sql_text(str(default)), _reflected=True)._set_parent(column)
    return json_columns


_PG_BASE = re.compile(r"^([a-z ]+)\((\d+)(?:,\s*(\d+))?\)$")


def _refine_postgresql(table: sa.Table, bind: sa.Engine | sa.Connection) -> None:
    """PostgreSQL: every check of the domains used, and the options of serial sequences.

    SQLAlchemy keeps only a domain's first check and drops its base type's
    length (``character varying(30)`` becomes ``VARCHAR``): the length is put back.
    """
    names = {
        str(t.name)
        for c in table.columns
        for t in _walk(c.type)
        if isinstance(t, postgresql.DOMAIN | postgresql.ENUM)
    }
    if names:
        found = _with_conn(bind, lambda conn: read_named_types(conn, names))
        table.info[INFO_DOMAINS] = found
        for column in table.columns:
            for t in _walk(column.type):
                named = found.get(str(getattr(t, "name", "")))
                if not isinstance(t, postgresql.DOMAIN) or named is None:
                    continue
                match = _PG_BASE.match(named.base)
                base = (
                    getattr(bind.dialect, "ischema_names", {}).get(match.group(1))
                    if match
                    else None
                )
                if match and base is not None:
                    args = [int(a) for a in match.groups()[1:] if a is not None]
                    t.data_type = base(*args)
    if any(c.server_default is not None for c in table.columns):
        table.info[INFO_SEQUENCES] = _with_conn(bind, lambda conn: read_pg_sequences(conn, table))


def refine_reflected(table: sa.Table, bind: sa.Engine | sa.Connection) -> sa.Table:
    """Correct, in place, reflected column types that would read values inexactly.

    - MySQL/MariaDB ``DOUBLE``/``REAL`` reflect with ``asdecimal=True`` and are
      read as a ``Decimal`` rounded to ten places: they become floats again.
    - MariaDB ``JSON`` columns reflect as ``LONGTEXT``: they get the JSON type,
      so documents are parsed like on the other engines.

    Also records what :func:`~domicile.connectors.schema.copy_tables` needs
    from the catalogue (see this module's docstring).  Idempotent; call it
    right after reflection, before building statements.  Returns *table*.
    """
    kind = family(bind.dialect)
    if table.info.get(INFO_FAMILY) == kind:
        return table
    if kind == "sqlite":
        table.info[INFO_GENERATED] = _with_conn(
            bind, lambda conn: read_sqlite_generated(conn, table.name)
        )
    elif kind == "postgresql":
        _refine_postgresql(table, bind)
    if kind != "mysql":
        table.info[INFO_FAMILY] = kind
        if INFO_GENERATED not in table.info:
            table.info[INFO_GENERATED] = generated_of(table)
        return table
    is_mariadb = bool(getattr(bind.dialect, "is_mariadb", False))
    json_columns = _refine_mariadb(table, bind) if is_mariadb else set()
    for column in table.columns:
        t = column.type
        new: sa.types.TypeEngine[Any] | None = None
        if isinstance(t, mysql.DOUBLE | mysql.REAL) and t.asdecimal:
            new = type(t)(
                precision=t.precision,
                scale=t.scale,
                asdecimal=False,
                unsigned=getattr(t, "unsigned", False),
            )
        elif column.name in json_columns and not isinstance(t, sa.JSON):
            new = mysql.JSON()
        if new is not None:
            column.type = new
            # a Column memoizes its comparator, which carries the type
            column._reset_memoizations()
    table.info[INFO_FAMILY] = kind
    if INFO_GENERATED not in table.info:
        table.info[INFO_GENERATED] = generated_of(table)
    return table
