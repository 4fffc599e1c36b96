"""Generated key columns: serial, identity, AUTO_INCREMENT and SQLite rowids, at home too.

A column the source generates (PostgreSQL ``serial``/``nextval`` or identity,
MySQL ``AUTO_INCREMENT``, SQLite ``INTEGER PRIMARY KEY``) is generated at
home as well, so the application can insert a row there without giving its
key; see :mod:`domicile.connectors.schema` for the form it takes on each
engine.  Copied rows carry their keys, which PostgreSQL's sequences do not
see: :func:`advance_sequences` moves each counter past them afterwards,
never backwards.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from domicile.connectors.ddl_common import (
    INFO_FAMILY,
    INFO_GENERATED,
    INFO_SEQUENCES,
    family,
    source_family,
)

_NEXTVAL = re.compile(r"\s*nextval\('((?:[^']|'')+)'(?:::regclass)?\)\s*", re.I)


@dataclass(frozen=True)
class Generated:
    """How a table's column is generated at its engine.

    *kind*: ``identity`` or ``sequence`` (PostgreSQL), ``auto_increment``
    (MySQL), ``rowid`` (SQLite), ``auto`` (a table defined in Python whose
    integer key SQLAlchemy would generate).  *options* are a PostgreSQL
    sequence's or identity's (start, increment, minvalue, maxvalue, cache,
    cycle, and ``owned`` for a sequence the column owns).
    """

    column: str
    kind: str
    always: bool = False
    sequence: str | None = None
    autoincrement: bool = False  # SQLite's AUTOINCREMENT keyword
    options: dict[str, Any] = field(default_factory=dict)


def sequence_name(default: Any) -> str | None:
    """The sequence a ``nextval('…'::regclass)`` server default draws from (unquoted)."""
    arg = getattr(default, "arg", None)
    text = arg.text if isinstance(arg, sa.TextClause) else arg if isinstance(arg, str) else ""
    match = _NEXTVAL.fullmatch(text or "")
    if not match:
        return None
    regclass = match.group(1).replace("''", "'")
    parts = re.findall(r'"((?:[^"]|"")*)"|([^."]+)', regclass)
    last = parts[-1] if parts else ("", regclass)
    return last[0].replace('""', '"') if last[0] else last[1]


def _identity_options(identity: sa.Identity) -> dict[str, Any]:
    names = ("start", "increment", "minvalue", "maxvalue", "cache", "cycle")
    return {n: getattr(identity, n) for n in names if getattr(identity, n, None) is not None}


def generated_of(table: sa.Table) -> Generated | None:
    """The generated column of *table*, or None.

    Read from what :func:`~domicile.connectors.schema.refine_reflected` found
    in the catalogue when it saw the table; otherwise from the reflected
    definition (an identity, a ``nextval`` default, MySQL's auto-increment
    flag) or, for a table defined in Python, SQLAlchemy's own rule.
    """
    if INFO_GENERATED in table.info:
        found = table.info[INFO_GENERATED]
        return found if isinstance(found, Generated) else None
    for column in table.columns:
        if column.identity is not None:
            return Generated(
                column.name,
                "identity",
                always=bool(column.identity.always),
                options=_identity_options(column.identity),
            )
        name = sequence_name(column.server_default)
        if name is not None:
            options = (table.info.get(INFO_SEQUENCES) or {}).get(name, {})
            return Generated(column.name, "sequence", sequence=name, options=dict(options))
    kind = source_family(table)
    auto = table.autoincrement_column
    if auto is None:
        return None
    if kind == "mysql":
        return Generated(auto.name, "auto_increment") if auto.autoincrement is True else None
    if kind == "sqlite":
        return Generated(auto.name, "rowid") if type(auto.type) is sa.INTEGER else None
    if kind == "postgresql" and INFO_FAMILY in table.info:
        return None  # reflected from PostgreSQL without a sequence or identity
    return Generated(auto.name, "auto")


# -- reading the catalogue (refine_reflected) ----------------------------------------------

_PG_SEQUENCE = """
SELECT format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement, s.seqmin, s.seqmax,
       s.seqcache, s.seqcycle,
       EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
               WHERE d.objid = s.seqrelid AND d.deptype = 'a' AND d.refobjid = to_regclass(:t))
FROM pg_catalog.pg_sequence s WHERE s.seqrelid = to_regclass(:s)
"""


def read_pg_sequences(conn: sa.Connection, table: sa.Table) -> dict[str, dict[str, Any]]:
    """The options of the sequences *table*'s ``nextval`` defaults draw from."""
    out: dict[str, dict[str, Any]] = {}
    quote = conn.dialect.identifier_preparer.quote
    for column in table.columns:
        name = sequence_name(column.server_default)
        if name is None:
            continue
        row = conn.execute(
            sa.text(_PG_SEQUENCE), {"t": quote(table.name), "s": quote(name)}
        ).first()
        if row is not None:
            keys = ("data_type", "start", "increment", "minvalue", "maxvalue", "cache", "cycle")
            out[name] = {**dict(zip(keys, row[:7], strict=True)), "owned": bool(row[7])}
    return out


def read_sqlite_generated(conn: sa.Connection, name: str) -> Generated | None:
    """The rowid alias of SQLite table *name* (``INTEGER PRIMARY KEY``), or None."""
    sql = conn.execute(
        sa.text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = :n"), {"n": name}
    ).scalar()
    if not sql or re.search(r"\)\s*WITHOUT\s+ROWID\s*[,;]?\s*$", sql, re.I):
        return None
    quoted = conn.dialect.identifier_preparer.quote(name)
    info = conn.exec_driver_sql(f"PRAGMA table_info({quoted})").all()
    keys = [row for row in info if row[5]]
    if len(keys) != 1 or str(keys[0][2]).upper() != "INTEGER":
        return None
    autoincrement = bool(re.search(r"\bAUTOINCREMENT\b", sql, re.I))
    return Generated(str(keys[0][1]), "rowid", autoincrement=autoincrement)


# -- counters at home ------------------------------------------------------------------------


def generated_max(bind: sa.Engine | sa.Connection, table: sa.Table) -> int | None:
    """``max()`` of *table*'s generated column (an index look-up), or None if none or empty.

    For callers computing ``at_least`` for :func:`advance_sequences` from a
    source whose rows are not all at home yet.
    """
    generated = generated_of(table)
    if generated is None:
        return None
    query = sa.select(sa.func.max(table.c[generated.column]))
    if isinstance(bind, sa.Connection):
        value = bind.execute(query).scalar()
    else:
        with bind.connect() as conn:
            value = conn.execute(query).scalar()
    return None if value is None else int(value)


_PG_ADVANCE = """
SELECT CASE WHEN :want > n.next THEN setval(:seq, :want, false) ELSE n.next END
FROM (SELECT CASE WHEN s.is_called THEN s.last_value + p.seqincrement ELSE s.last_value END
      AS next FROM {seq} s, pg_catalog.pg_sequence p
      WHERE p.seqrelid = to_regclass(:seq) AND p.seqincrement > 0) n
"""


def _pg_sequence(conn: sa.Connection, table: sa.Table, generated: Generated) -> str | None:
    quote = conn.dialect.identifier_preparer.quote
    owned = conn.execute(
        sa.text("SELECT pg_get_serial_sequence(:t, :c)"),
        {"t": quote(table.name), "c": generated.column},
    ).scalar()
    if owned:
        return str(owned)
    return quote(generated.sequence) if generated.sequence else None


def _advance_one(conn: sa.Connection, table: sa.Table, want: int) -> int | None:
    kind = family(conn.dialect)
    quote = conn.dialect.identifier_preparer.quote
    if kind == "sqlite":
        generated = read_sqlite_generated(conn, table.name)
        if generated is None or not generated.autoincrement:
            return None  # a rowid table takes max(rowid) + 1 itself
        seq = conn.execute(
            sa.text("SELECT seq FROM sqlite_sequence WHERE name = :n"), {"n": table.name}
        ).first()
        current = (int(seq[0]) if seq and seq[0] is not None else 0) + 1
        if want > current:
            if seq is None:
                conn.execute(
                    sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES (:n, :v)"),
                    {"n": table.name, "v": want - 1},
                )
            else:
                conn.execute(
                    sa.text("UPDATE sqlite_sequence SET seq = :v WHERE name = :n"),
                    {"n": table.name, "v": want - 1},
                )
        return max(want, current)
    generated = generated_of(table)
    if generated is None:
        return None
    if kind == "postgresql":
        name = _pg_sequence(conn, table, generated)
        if name is None:
            return None
        value = conn.execute(
            sa.text(_PG_ADVANCE.format(seq=name)), {"want": want, "seq": name}
        ).scalar()
        return None if value is None else int(value)
    if kind == "mysql":
        if not getattr(conn.dialect, "is_mariadb", False):
            conn.exec_driver_sql("SET SESSION information_schema_stats_expiry = 0")
        counter = conn.execute(
            sa.text(
                "SELECT AUTO_INCREMENT FROM information_schema.TABLES"
                " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = :t"
            ),
            {"t": table.name},
        ).scalar()
        if counter is None:
            return None
        if want > int(counter):
            conn.exec_driver_sql(f"ALTER TABLE {quote(table.name)} AUTO_INCREMENT = {int(want)}")
        return max(want, int(counter))
    return None


def advance_sequences(
    target_engine: sa.Engine,
    tables: Sequence[sa.Table],
    at_least: Mapping[str, int] | None = None,
    headroom: int = 0,
) -> dict[str, int]:
    """Move each home table's key counter past its rows; never backwards.

    For every table of *tables* (as reflected at *target_engine*) with a
    generated column, the next value handed out becomes at least
    ``max(the table's max key, at_least[table name]) + headroom + 1``:
    PostgreSQL ``setval`` (only when that is ahead of the sequence), MySQL
    ``ALTER TABLE … AUTO_INCREMENT`` (only when ahead), SQLite
    ``sqlite_sequence`` for AUTOINCREMENT tables (a plain rowid table always
    takes its max key + 1 and needs nothing).  Returns, by table name, the
    next value each counter it handled will hand out.  A concurrent insert
    between reading and setting a counter cannot make it go back: the new
    value is only ever set when it is greater.
    """
    wanted = dict(at_least or {})
    out: dict[str, int] = {}
    for table in tables:
        generated = generated_of(table)
        if generated is None and family(target_engine.dialect) != "sqlite":
            continue
        with target_engine.begin() as conn:
            if generated is None:
                generated = read_sqlite_generated(conn, table.name)
                if generated is None:
                    continue
            top = conn.execute(sa.select(sa.func.max(table.c[generated.column]))).scalar()
            base = max(int(top or 0), int(wanted.get(table.name, 0)))
            value = _advance_one(conn, table, base + int(headroom) + 1)
        if value is not None:
            out[table.name] = value
    return out
