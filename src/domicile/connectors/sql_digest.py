"""Row digests computed inside the database, byte-for-byte equal to :mod:`domicile.digest`.

:func:`row_digest_sql` builds an SQLAlchemy expression that evaluates, per
row, to the same 32 bytes as ``RowEncoder(columns).digest(row)`` would for
that row read through SQLAlchemy, so a verification can compare digests
without shipping the rows to Python::

    expr = row_digest_sql(engine.dialect.name, list(table.columns))
    if expr is not None:
        rows = conn.execute(sa.select(table.c.id, expr.label("d")).where(...))

It is ``sha256(convert_to(json, 'UTF8'))`` on PostgreSQL (11+),
``UNHEX(SHA2(CONVERT(json USING utf8mb4), 256))`` on MySQL/MariaDB and
``domicile_sha256(json)`` on SQLite, where :func:`register_sqlite_sha256`
(or :func:`install_sqlite_sha256`) must have registered that function on the
connection (SQLite has no SHA-256).  ``json`` is :func:`row_json_sql`: the
canonical text ``[["name",value],...]`` (pairs sorted by name) with the
``domicile.row.v1`` prefix prepended for the digest.

**The contract: a NULL digest means "compute this row in Python".**  The SQL
form returns NULL, never a wrong digest, whenever it cannot be sure it
matches what Python reads: a SQLite value whose storage class (``typeof``)
is not the column's usual one (text in an INTEGER column, a real in a
NUMERIC one), a stored text SQLAlchemy would parse otherwise than the SQL
does, fractions longer than the 28 digits Python keeps [9], dates and times
Python cannot hold (PostgreSQL infinities, BC years, years past 9999 and
``24:00:00``; MariaDB zero or invalid dates, and TIMEs beyond a day, which
SQLAlchemy wraps), and a MariaDB row longer than ``max_allowed_packet``.
The functions return None instead of an expression when some column has no
SQL form on that engine: digest the whole table in Python then.

Coverage per column kind (:func:`domicile.digest.kind_of`):

=========  ============  ==============  ===================================
kind       PostgreSQL    MySQL/MariaDB   SQLite
=========  ============  ==============  ===================================
int        yes           yes [1]         integer storage class
bool       yes           yes [2]         integer 0/1
decimal    yes [1] [9]   yes [1] [9]     integer storage within +-2**53 [3]
text       yes [10]      yes [4]         text storage class
char       yes           yes [4]         text storage class
uuid       yes           yes (MariaDB)   None [5]
bytes      yes           yes             blob storage class
date       yes           yes             text ``YYYY-MM-DD``
time       yes [6]       yes             text ``HH:MM:SS[.ffffff]``
datetime   yes [7]       yes [8]         text ``YYYY-MM-DD HH:MM:SS[.ffffff]``
float      None          None            None
char32     None          None            None
json       None          None            None
any        None          None            None [11]
=========  ============  ==============  ===================================

Stored forms (``SqlStore.stored_table``, how rows move between two SQLite or
two PostgreSQL stores) are covered too: a SQLite ``NullType`` column (kind
any) by its storage class [11], and a PostgreSQL ``AsText`` column (an
interval, a ``json`` document, a non-key date or timestamp) as the JSON
string of ``CAST(col AS TEXT)``, the text the same session reads.

- [1] Not ``ZEROFILL`` columns (None): their text form is zero-padded.  On
  PostgreSQL and MySQL not a ``Numeric(asdecimal=False)`` either (None):
  Python digests the float it reads, not the exact decimal.
- [2] ``TINYINT(1)`` values other than 0/1 are integers, as in Python; a
  ``Boolean`` type (read with ``bool()``) gives NULL for them.
- [3] SQLAlchemy stores a Decimal in SQLite as a double and reads it back as
  ``Decimal('%.{scale}f' % value)``; Python's formatting is correctly
  rounded, SQLite's ``printf`` keeps 16 significant digits and rounds ties
  away from zero, so a real gives NULL (an integral value is stored as an
  integer, and those up to 2**53 are exact).
- [4] Escaped with a REPLACE chain, not ``JSON_QUOTE``: MariaDB writes
  ``\\u001A`` where Python writes ``\\u001a``.  Not ``SET`` (None): SQLAlchemy
  reads a set.  The connection's character set must be utf8mb4 (SQLAlchemy's
  PyMySQL default), or Python reads other text than the SQL hashes.
- [5] SQLite has no UUID type; ``Uuid`` is ``CHAR(32)`` there (kind char32).
- [6] Not ``TIME WITH TIME ZONE`` (None): Python writes its offset.
- [7] ``timestamptz`` is converted with ``timezone('UTC', ...)``, so the
  session's TimeZone (and DateStyle: ``to_char`` is used) does not matter.
- [8] MySQL ``TIMESTAMP`` is read in the session time zone, by the SQL and
  by Python alike; domicile's sessions are UTC.
- [9] A fraction of more than 28 significant digits gives NULL:
  :mod:`domicile.digest` writes fractions with ``Decimal.normalize()``,
  which rounds to the decimal context's precision (28 by default), and the
  SQL must not disagree with it.
- [10] ``to_json`` escapes as ``json.dumps(ensure_ascii=False)`` does (only
  ``"``, ``\\`` and characters below U+0020, in lowercase hex).  Any server
  encoding but SQL_ASCII (``convert_to`` needs to know the bytes' encoding).
- [11] SQLite ``NullType`` only (the driver's own value): an integer as its
  digits, a text as a JSON string, a blob as ``{"bytes": hex}``; a real
  gives NULL (see float).
- An ``Enum`` with a Python ``enum_class`` is None everywhere: Python reads
  members, which :mod:`domicile.digest` does not encode.

Why the None kinds: **float** is Python's ``repr`` of a double, which no
engine's number-to-text conversion reproduces (exponent thresholds, ``.0``
suffixes, SQLite's 15-digit ``printf``); **char32** text may be a UUID read
as ``{"uuid": ...}`` by a rule SQL would have to re-implement per value;
**json** is canonical JSON (sorted keys, canonical numbers), which no engine
writes; **any** is whatever Python value the driver returns.  A column whose
type is a TypeDecorator (its Python value is processed) has no SQL form
either.  Pass the columns of a table reflected at the engine (and refined
with :func:`domicile.connectors.schema.refine_reflected`), as the Python
digest they must equal uses.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.visitors import InternalTraversal

from domicile import digest as d
from domicile.connectors.schema import family
from domicile.connectors.sql_types import AsText, register_sqlite_sha256

__all__ = [
    "COVERED",
    "NOT_COVERED",
    "install_sqlite_sha256",
    "register_sqlite_sha256",
    "row_digest_sql",
    "row_json_sql",
    "uncovered_reason",
]

_COMMON = frozenset({d.INT, d.BOOL, d.DECIMAL, d.TEXT, d.CHAR, d.BYTES, d.DATE, d.TIME, d.DATETIME})
COVERED: dict[str, frozenset[str]] = {
    "postgresql": _COMMON | {d.UUID},
    "mysql": _COMMON | {d.UUID},
    "sqlite": _COMMON,
}
"""Column kinds with an SQL form, per engine family (see the module docstring)."""

NOT_COVERED: dict[str, str] = {
    d.FLOAT: "a float is digested as Python's repr of the double, which SQL does not write",
    d.CHAR32: "CHAR(32) text may be a UUID (the char32 rule), not reproduced in SQL",
    d.JSON: "canonical JSON (sorted keys, canonical numbers) is not reproducible in SQL",
    d.ANY: "the value's Python type decides its digest, unknown to SQL",
    d.UUID: "SQLite has no UUID type (Uuid is CHAR(32) there)",
}
"""Why a kind has no SQL form (UUID: on SQLite only)."""

_PREFIX = d._ROW_PREFIX.decode("ascii")
_json_string = json.encoder.encode_basestring  # what RowEncoder writes names with
_SAFE_LITERAL = re.compile(r"[ -~]*")  # printable ASCII; quotes, backslash, % checked below


# -- SQL text around compiled sub-expressions ------------------------------------


class _Sql(sa.sql.expression.ColumnElement[str]):
    """``template.format(*compiled clauses)``: SQL the constructs of SQLAlchemy do not
    spell (``CONVERT(... USING ...)``, a flat ``a || b || c`` of any length)."""

    __visit_name__ = "domicile_sql"
    inherit_cache = True
    _traverse_internals = [  # noqa: RUF012  (SQLAlchemy declares it a list)
        ("template", InternalTraversal.dp_string),
        ("clauses", InternalTraversal.dp_clauseelement_tuple),
    ]
    type = sa.Text()

    def __init__(self, template: str, *clauses: sa.ColumnElement[Any]) -> None:
        self.template = template
        self.clauses = clauses

    @property
    def _from_objects(self) -> list[Any]:
        return [f for c in self.clauses for f in c._from_objects]


@compiles(_Sql)
def _compile_sql(element: _Sql, compiler: Any, **kw: Any) -> str:
    return element.template.format(*(compiler.process(c, **kw) for c in element.clauses))


Piece = str | sa.ColumnElement[Any]


def _const(fam: str, text: str) -> sa.ColumnElement[Any]:
    """*text* as an SQL string constant of *fam*."""
    if fam == "mysql":  # bytes, then utf8mb4: whatever the connection's character set
        return sa.literal_column(
            f"CONVERT(X'{text.encode().hex()}' USING utf8mb4) COLLATE utf8mb4_bin", sa.Text()
        )
    if _SAFE_LITERAL.fullmatch(text) and not any(ch in text for ch in "'\\%"):
        return sa.literal_column(f"'{text}'", sa.Text())
    return sa.literal(text, sa.Text())


def _my(expr: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    """A MySQL string in utf8mb4 with one explicit collation, so that CONCAT never
    meets two collations of one coercibility ("Illegal mix of collations")."""
    return _Sql("CONVERT({0} USING utf8mb4) COLLATE utf8mb4_bin", expr)


def _concat(fam: str, pieces: Sequence[Piece]) -> sa.ColumnElement[Any]:
    """The NULL-propagating concatenation of *pieces* (adjacent strings merged)."""
    merged: list[Piece] = []
    for p in pieces:
        if isinstance(p, str) and merged and isinstance(merged[-1], str):
            merged[-1] += p
        elif not (isinstance(p, str) and not p):
            merged.append(p)
    exprs = [
        _const(fam, p) if isinstance(p, str) else (_my(p) if fam == "mysql" else p) for p in merged
    ] or [_const(fam, "")]
    if len(exprs) == 1:
        return exprs[0]
    if fam == "mysql":  # CONCAT is NULL when an argument is
        return _Sql("CONCAT(" + ", ".join(f"{{{i}}}" for i in range(len(exprs))) + ")", *exprs)
    return _Sql("(" + " || ".join(f"{{{i}}}" for i in range(len(exprs))) + ")", *exprs)


def _lit(sql: str) -> sa.ColumnElement[Any]:
    return sa.literal_column(sql, sa.Text())


# domicile.digest writes a fraction with Decimal.normalize(), which rounds to the
# decimal context's precision (28 digits by default): a longer one is left to Python
_DECIMAL_DIGITS = 28


# -- PostgreSQL ------------------------------------------------------------------

_PG_DATETIME = "'YYYY-MM-DD\"T\"HH24:MI:SS.US'"


def _pg_value(c: sa.ColumnElement[Any], kind: str, t: Any) -> sa.ColumnElement[Any] | None:
    """The JSON text of a non-NULL value of *c* on PostgreSQL (NULL when unsure)."""
    fam = "postgresql"
    if kind == d.INT:
        return _Sql("CAST({0} AS TEXT)", c)
    if kind == d.BOOL:
        return _Sql("CASE WHEN {0} THEN 'true' ELSE 'false' END", c)
    if kind == d.DECIMAL:  # numeric text is fixed-point; NaN and infinities first
        special = _concat(fam, ['{"decimal":"', _Sql("CAST({0} AS TEXT)", c), '"}'])
        frac = _concat(fam, ['{"decimal":"', _Sql("rtrim(CAST({0} AS TEXT), '0')", c), '"}'])
        digits = "length(ltrim(translate(rtrim(CAST({0} AS TEXT), '0'), '-.', ''), '0'))"
        return _Sql(
            "CASE WHEN CAST({0} AS TEXT) IN ('NaN', 'Infinity', '-Infinity') THEN {1}"
            " WHEN {0} = trunc({0}) THEN CAST(trunc({0}) AS TEXT)"
            f" WHEN {digits} <= {_DECIMAL_DIGITS} THEN {{2}} END",
            c,
            special,
            frac,
        )
    if kind == d.TEXT:  # to_json escapes exactly as json.dumps(ensure_ascii=False)
        return _Sql("CAST(to_json(CAST({0} AS TEXT)) AS TEXT)", c)
    if kind == d.CHAR:
        return _Sql("CAST(to_json(rtrim(CAST({0} AS TEXT), ' ')) AS TEXT)", c)
    if kind == d.UUID:
        return _concat(fam, ['{"uuid":"', _Sql("CAST({0} AS TEXT)", c), '"}'])
    if kind == d.BYTES:
        return _concat(fam, ['{"bytes":"', _Sql("encode({0}, 'hex')", c), '"}'])
    if kind == d.DATE:
        text = _concat(fam, ['{"date":"', _Sql("to_char({0}, 'YYYY-MM-DD')", c), '"}'])
        return _Sql(
            "CASE WHEN {0} BETWEEN DATE '0001-01-01' AND DATE '9999-12-31' THEN {1} END", c, text
        )
    if kind == d.TIME:
        if getattr(t, "timezone", False):
            return None
        text = _concat(fam, ['{"time":"', _Sql("to_char({0}, 'HH24:MI:SS.US')", c), '"}'])
        return _Sql("CASE WHEN {0} < TIME '24:00:00' THEN {1} END", c, text)
    if kind == d.DATETIME:
        utc = _Sql("timezone('UTC', {0})", c) if getattr(t, "timezone", False) else c
        text = _concat(
            fam, ['{"datetime":"', _Sql("to_char({0}, " + _PG_DATETIME + ")", utc), '"}']
        )
        return _Sql(
            "CASE WHEN {0} >= TIMESTAMP '0001-01-01 00:00:00'"
            " AND {0} < TIMESTAMP '10000-01-01 00:00:00' THEN {1} END",
            utc,
            text,
        )
    return None


# -- MySQL / MariaDB -----------------------------------------------------------------


def _my_chars(text: str) -> str:
    return "CHAR(" + ",".join(str(ord(ch)) for ch in text) + " USING utf8mb4)"


def _my_escape_template() -> str:
    """``"{0}"`` inside REPLACEs that escape as json.dumps(ensure_ascii=False) does.

    The backslash goes first, so the backslashes the later replacements write
    are never doubled; every escape is taken from :func:`json.dumps` itself.
    """
    template = "{0}"
    for ch in ["\\", '"', *map(chr, range(32))]:
        escaped = json.dumps(ch, ensure_ascii=False)[1:-1]
        template = f"REPLACE({template}, {_my_chars(ch)}, {_my_chars(escaped)})"
    return template


_MY_ESCAPE = _my_escape_template()
_MY_VALID_DATE = "YEAR({0}) >= 1 AND DATE({0}) = FROM_DAYS(TO_DAYS({0}))"


def _my_value(c: sa.ColumnElement[Any], kind: str, t: Any) -> sa.ColumnElement[Any] | None:
    """The JSON text of a non-NULL value of *c* on MySQL/MariaDB (NULL when unsure)."""
    fam = "mysql"
    if getattr(t, "zerofill", False):
        return None
    if kind == d.INT:
        return _Sql("CAST({0} AS CHAR)", c)
    if kind == d.BOOL:
        if isinstance(t, mysql.TINYINT):  # TINYINT(1): 0/1 are booleans, others integers
            return _Sql(
                "CASE {0} WHEN 0 THEN 'false' WHEN 1 THEN 'true' ELSE CAST({0} AS CHAR) END", c
            )
        return _Sql("CASE {0} WHEN 0 THEN 'false' WHEN 1 THEN 'true' END", c)  # bool(value)
    if kind == d.DECIMAL:  # DECIMAL text is fixed-point; MariaDB has no -0
        trimmed = "TRIM(TRAILING '0' FROM CAST({0} AS CHAR))"
        frac = _concat(fam, ['{"decimal":"', _Sql(trimmed, c), '"}'])
        digits = f"LENGTH(TRIM(LEADING '0' FROM REPLACE(REPLACE({trimmed}, '-', ''), '.', '')))"
        return _Sql(
            "CASE WHEN {0} = TRUNCATE({0}, 0) THEN CAST(TRUNCATE({0}, 0) AS CHAR)"
            f" WHEN {digits} <= {_DECIMAL_DIGITS} THEN {{1}} END",
            c,
            _my(frac),
        )
    if kind in (d.TEXT, d.CHAR):
        if isinstance(t, mysql.SET):
            return None
        text = _Sql("TRIM(TRAILING ' ' FROM {0})", c) if kind == d.CHAR else c
        return _concat(fam, ['"', _Sql(_MY_ESCAPE, _my(text)), '"'])
    if kind == d.UUID:
        return _concat(fam, ['{"uuid":"', _Sql("LOWER(CAST({0} AS CHAR))", c), '"}'])
    if kind == d.BYTES:
        return _concat(fam, ['{"bytes":"', _Sql("LOWER(HEX({0}))", c), '"}'])
    if kind == d.DATE:
        text = _concat(
            fam, ['{"date":"', _Sql("DATE_FORMAT({0}, {1})", c, _lit("'%Y-%m-%d'")), '"}']
        )
        return _Sql("CASE WHEN " + _MY_VALID_DATE + " THEN {1} END", c, _my(text))
    if kind == d.TIME:  # SQLAlchemy wraps a TIME beyond a day into one: leave it to Python
        text = _concat(
            fam, ['{"time":"', _Sql("TIME_FORMAT({0}, {1})", c, _lit("'%H:%i:%s.%f'")), '"}']
        )
        return _Sql(
            "CASE WHEN {0} >= TIME'00:00:00' AND {0} < TIME'24:00:00' THEN {1} END", c, _my(text)
        )
    if kind == d.DATETIME:
        fmt = _lit("'%Y-%m-%dT%H:%i:%s.%f'")
        text = _concat(fam, ['{"datetime":"', _Sql("DATE_FORMAT({0}, {1})", c, fmt), '"}'])
        return _Sql("CASE WHEN " + _MY_VALID_DATE + " THEN {1} END", c, _my(text))
    return None


# -- SQLite ------------------------------------------------------------------------

_D4, _D2 = "[0-9]" * 4, "[0-9]" * 2
_GLOB_DATE = f"{_D4}-{_D2}-{_D2}"
_GLOB_TIME = f"{_D2}:{_D2}:{_D2}"
_GLOB_MICRO = "." + "[0-9]" * 6


def _sq_valid_time(start: int) -> str:
    """Hour, minute and second of the time at *start* in range (digits already checked)."""
    h, m, s = start, start + 3, start + 6
    return (
        f"substr({{0}}, {h}, 2) < '24' AND substr({{0}}, {m}, 2) < '60'"
        f" AND substr({{0}}, {s}, 2) < '60'"
    )


# the date exists (julianday normalises 02-30 to 03-02) and is not year 0
_SQ_VALID_DATE = (
    "substr({0}, 1, 4) <> '0000' AND date(julianday(substr({0}, 1, 10))) = substr({0}, 1, 10)"
)


def _sq_text_value(c: sa.ColumnElement[Any], kind: str) -> sa.ColumnElement[Any] | None:
    """The JSON text of a text-stored SQLite value of *c*, for the kinds stored as text."""
    fam = "sqlite"
    if kind == d.TEXT:
        return _Sql("json_quote({0})", c)
    if kind == d.CHAR:
        return _Sql("json_quote(rtrim({0}, ' '))", c)
    # SQLAlchemy parses these with fromisoformat, which takes many spellings:
    # only the ones written by SQLAlchemy (and CURRENT_TIMESTAMP) are read here
    if kind == d.DATE:
        text = _concat(fam, ['{"date":"', c, '"}'])
        return _Sql(
            f"CASE WHEN {{0}} GLOB '{_GLOB_DATE}' AND {_SQ_VALID_DATE} THEN {{1}} END", c, text
        )
    if kind == d.TIME:
        full = _concat(fam, ['{"time":"', c, '"}'])
        short = _concat(fam, ['{"time":"', c, '.000000"}'])
        return _Sql(
            f"CASE WHEN {{0}} GLOB '{_GLOB_TIME}{_GLOB_MICRO}' AND {_sq_valid_time(1)} THEN {{1}}"
            f" WHEN {{0}} GLOB '{_GLOB_TIME}' AND {_sq_valid_time(1)} THEN {{2}} END",
            c,
            full,
            short,
        )
    if kind == d.DATETIME:
        day = _Sql("substr({0}, 1, 10)", c)
        full = _concat(fam, ['{"datetime":"', day, "T", _Sql("substr({0}, 12, 15)", c), '"}'])
        short = _concat(
            fam, ['{"datetime":"', day, "T", _Sql("substr({0}, 12, 8)", c), '.000000"}']
        )
        valid = f"{_SQ_VALID_DATE} AND {_sq_valid_time(12)}"
        return _Sql(
            f"CASE WHEN {{0}} GLOB '{_GLOB_DATE} {_GLOB_TIME}{_GLOB_MICRO}' AND {valid} THEN {{1}}"
            f" WHEN {{0}} GLOB '{_GLOB_DATE} {_GLOB_TIME}' AND {valid} THEN {{2}} END",
            c,
            full,
            short,
        )
    return None


def _sq_value(c: sa.ColumnElement[Any], kind: str, t: Any) -> sa.ColumnElement[Any] | None:
    """The JSON text of a value of *c* on SQLite, NULL included (NULL when unsure).

    SQLite keeps any storage class in any column: each kind reads only the
    class it expects (``typeof``), and anything else is left to Python.
    """
    fam = "sqlite"
    cls: str
    value: sa.ColumnElement[Any] | None
    if kind == d.INT:
        cls, value = "integer", _Sql("CAST({0} AS TEXT)", c)
    elif kind == d.BOOL:  # SQLAlchemy reads bool(value): only 0/1 are proved
        cls, value = "integer", _Sql("CASE {0} WHEN 0 THEN 'false' WHEN 1 THEN 'true' END", c)
    elif kind == d.DECIMAL:
        cls = "integer"
        value = _Sql(
            "CASE WHEN {0} BETWEEN -9007199254740992 AND 9007199254740992"
            " THEN CAST({0} AS TEXT) END",
            c,
        )
    elif kind == d.BYTES:
        cls, value = "blob", _concat(fam, ['{"bytes":"', _Sql("lower(hex({0}))", c), '"}'])
    else:
        cls, value = "text", _sq_text_value(c, kind)
    if value is None:
        return None
    return _Sql(f"CASE typeof({{0}}) WHEN 'null' THEN 'null' WHEN '{cls}' THEN {{1}} END", c, value)


# -- the row -------------------------------------------------------------------------


def _dialect_type(column: sa.Column[Any], dialect_name: str) -> sa.types.TypeEngine[Any]:
    t = column.type
    return t._variant_mapping.get(dialect_name, t) if t._variant_mapping else t


def _column_sql(
    dialect_name: str, column: sa.Column[Any]
) -> tuple[sa.ColumnElement[Any] | None, str]:
    """(the JSON text of *column*'s value, "") or (None, why it has no SQL form)."""
    fam = family(dialect_name)
    if fam not in COVERED:
        return None, f"no SQL digest for the {dialect_name} dialect"
    t = _dialect_type(column, dialect_name)
    kind = d.kind_of(column.type)
    stored = _stored_form_sql(fam, column, t)
    if stored is not None:
        return stored, ""
    if isinstance(t, sa.types.TypeDecorator):
        return None, f"{type(t).__name__} is a TypeDecorator: its Python value is processed"
    if d.kind_of(t) != kind:
        return None, f"its {dialect_name} variant is of another kind than {kind}"
    if kind not in COVERED[fam]:
        return None, NOT_COVERED.get(kind, f"kind {kind} has no SQL form on {fam}")
    if isinstance(t, sa.Enum) and t.enum_class is not None:
        return None, "an Enum with a Python enum class is read as enum members"
    if kind == d.DECIMAL and fam != "sqlite" and not getattr(t, "asdecimal", True):
        return None, "Numeric(asdecimal=False) is read (and digested) as a float"
    if fam == "sqlite":
        value = _sq_value(column, kind, t)
    else:
        value = _pg_value(column, kind, t) if fam == "postgresql" else _my_value(column, kind, t)
        if value is not None:
            value = _Sql(
                "CASE WHEN {0} IS NULL THEN 'null' ELSE {1} END",
                column,
                _my(value) if fam == "mysql" else value,
            )
    if value is None:
        return None, f"{t!r} has no SQL form on {fam} (see domicile.connectors.sql_digest)"
    return value, ""


def _stored_form_sql(
    fam: str, column: sa.Column[Any], t: sa.types.TypeEngine[Any]
) -> sa.ColumnElement[Any] | None:
    """The JSON text of a column read in its stored form (see ``Dialect.stored_type``).

    - SQLite ``NullType`` (kind any): the value as the driver returns it,
      decided by its storage class: an integer as its digits, a text as a
      JSON string, a blob as ``{"bytes": hex}``, NULL as null; a real gives
      NULL (Python's ``repr`` of the double is not written by SQL).
    - :class:`~domicile.connectors.dialects.AsText` (PostgreSQL): the
      value's text form, ``CAST(col AS TEXT)`` in the same session that
      reads it, as a JSON string.
    """
    if fam == "sqlite" and isinstance(t, sa.types.NullType) and d.kind_of(t) == d.ANY:
        blob = _concat(fam, ['{"bytes":"', _Sql("lower(hex({0}))", column), '"}'])
        return _Sql(
            "CASE typeof({0}) WHEN 'null' THEN 'null' WHEN 'integer' THEN CAST({0} AS TEXT)"
            " WHEN 'text' THEN json_quote({0}) WHEN 'blob' THEN {1} END",
            column,
            blob,
        )
    if fam == "postgresql" and isinstance(t, AsText):
        text = _pg_value(sa.cast(column, sa.Text), d.TEXT, sa.Text())
        if text is None:
            return None
        return _Sql("CASE WHEN {0} IS NULL THEN 'null' ELSE {1} END", column, text)
    return None


def uncovered_reason(dialect_name: str, column: sa.Column[Any]) -> str | None:
    """Why *column* has no SQL form on *dialect_name*; None when it has one."""
    value, why = _column_sql(dialect_name, column)
    return None if value is not None else why


def _pieces(dialect_name: str, columns: Sequence[sa.Column[Any]]) -> list[Piece] | None:
    ordered = sorted(columns, key=lambda c: c.name)
    names = [c.name for c in ordered]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"column {dup!r} is listed twice")
    pieces: list[Piece] = ["["]
    for i, column in enumerate(ordered):
        value, _why = _column_sql(dialect_name, column)
        if value is None:
            return None
        pieces += [("[" if i == 0 else ",[") + _json_string(column.name) + ",", value, "]"]
    pieces.append("]")
    return pieces


def row_json_sql(
    dialect_name: str, columns: Sequence[sa.Column[Any]]
) -> sa.ColumnElement[Any] | None:
    """The canonical row text ``[["name",value],...]`` as an SQL text expression.

    Per row it equals ``RowEncoder(columns).encode(row).decode()`` for the
    row as SQLAlchemy reads it, or is NULL where the SQL cannot be sure
    (compute that row in Python).  None when a column has no SQL form on
    *dialect_name* (see :func:`uncovered_reason`).  ValueError when a name
    is listed twice.
    """
    pieces = _pieces(dialect_name, columns)
    return None if pieces is None else _concat(family(dialect_name), pieces)


def row_digest_sql(
    dialect_name: str, columns: Sequence[sa.Column[Any]]
) -> sa.ColumnElement[bytes] | None:
    """The row digest (32 bytes, or NULL: compute that row in Python) as an SQL expression.

    Equal to ``RowEncoder(columns).digest(row)`` for every row it is not NULL
    for.  None when a column has no SQL form on *dialect_name*.  On SQLite
    the connection needs :func:`register_sqlite_sha256`.
    """
    pieces = _pieces(dialect_name, columns)
    if pieces is None:
        return None
    fam = family(dialect_name)
    text = _concat(fam, [_PREFIX, *pieces])
    if fam == "postgresql":
        return sa.func.sha256(_Sql("convert_to({0}, 'UTF8')", text), type_=sa.LargeBinary())
    if fam == "mysql":
        return sa.func.unhex(_Sql("SHA2({0}, 256)", text), type_=sa.LargeBinary())
    return sa.func.domicile_sha256(text, type_=sa.LargeBinary())


# -- SQLite's SHA-256 -----------------------------------------------------------------


def install_sqlite_sha256(engine: sa.Engine) -> None:
    """Register ``domicile_sha256`` on every new connection of a SQLite *engine*.

    Call it before the engine's first connection: pooled connections made
    earlier do not get the function.
    """

    @sa.event.listens_for(engine, "connect")
    def _register(dbapi_connection: Any, _record: Any) -> None:
        register_sqlite_sha256(dbapi_connection)
