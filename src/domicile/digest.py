"""Row digests that are equal for equal logical values on every engine.

A move is proved by hashing each row where it was read (the source) and again
where it was written (its home, often another engine), and comparing.  The
engines hand the same logical value back in different Python shapes: MariaDB
returns 0/1 for a boolean, PostgreSQL returns ``Decimal('1.500000')`` for a
``NUMERIC(18, 6)`` holding 1.5, JSONB reorders keys and writes ``1e100`` as an
integer, SQLite keeps a UUID as 32 hex characters, and neither SQLite nor
MariaDB keeps the zone of a timestamp.  :func:`normalize` maps every such shape
to one canonical, JSON-able value chosen by the *column type* (the reflected
type at the engine that returned the value), and :func:`row_digest` hashes the
canonical values of a row.

The rules, and why:

- **NULL** is JSON ``null``; every other value is encoded so that it cannot be
  ``null``, ``""`` or ``"null"`` (a text ``"null"`` is the JSON string).
- **Integers** (any width) are JSON integers.  A ``bool`` in an integer column
  counts as 0/1.
- **Booleans** are JSON ``true``/``false``.  In a boolean column 0 and 1 (what
  SQLite and MariaDB return) are ``false``/``true``: the type decides, not the
  Python value.  MySQL/MariaDB have no boolean type: ``BOOLEAN`` is a synonym
  of ``TINYINT(1)``, so a reflected ``TINYINT`` with display width 1 is a
  boolean column (that is what MySQL's ``BOOL``, SQLAlchemy's ``Boolean`` and
  every MySQL connector mean by it; MySQL 8 keeps the display width for that
  one case only).  A value other than 0/1 in such a column stays an integer,
  so nothing is lost and it never equals a boolean.
- **NUMERIC/DECIMAL** values are exact decimals without trailing-zero
  differences: ``1.50`` and ``1.5`` are equal, ``1.5`` and ``15`` are not.  An
  integral value is the JSON integer (so ``NUMERIC(20, 0)`` at one engine and
  ``BIGINT`` at another agree); any other is ``{"decimal": "1.5"}`` in
  fixed-point notation.  A float in a decimal column (``Numeric(asdecimal=
  False)``) means the shortest decimal that round-trips it (its ``repr``).
- **Floats** are IEEE doubles (``Float(53)``/``DOUBLE`` semantics; every engine
  hands back a Python float, which is a double): the JSON number written with
  ``repr`` (the shortest round-trip form).  ``-0.0`` is ``0.0`` because
  SQLite and MariaDB do not keep the sign of zero; NaN and infinities are
  ``{"float": "NaN"}``...  A single-precision ``FLOAT`` column read as a double
  is digested as that double, the same at every engine.  A ``Decimal`` in a
  float column (a MySQL ``DOUBLE`` reflected with ``asdecimal=True`` rounds to
  ten places) is digested as a decimal, so such a lossy read never passes as
  the float it approximates: see :func:`domicile.connectors.schema.refine_reflected`.
- **Text** is digested byte-exactly as UTF-8; Unicode is *not* normalised (NFC
  and NFD spellings are different data).  In a fixed-width ``CHAR(n)`` column
  trailing spaces are padding (SQL's own rule: PostgreSQL pads on output,
  MariaDB strips) and are removed.
- **UUIDs** are ``{"uuid": "<lowercase, dashed>"}``.  Engines without a UUID
  type keep SQLAlchemy's ``Uuid`` as ``CHAR(32)`` of lowercase hex, which is
  how it reflects there; so in a ``CHAR(32)`` column a value of exactly 32
  lowercase hex digits is that UUID.  This is one-to-one (those strings and
  UUIDs correspond exactly, every other text stays text), so it cannot make
  two different values equal.
- **Binary** values (``bytes``, ``bytearray``, ``memoryview``) are
  ``{"bytes": "<hex>"}``.
- **Dates** are ``{"date": "YYYY-MM-DD"}``; **times** ``{"time": ...}`` in ISO
  8601 with microseconds.
- **Timestamps** are ``{"datetime": "YYYY-MM-DDTHH:MM:SS.ffffff"}``: the UTC
  wall-clock time.  A zone-aware value is converted to UTC; a naive value is
  taken as it is, which in a timezone-aware column means *as UTC*: SQLite and
  MySQL/MariaDB store no zone, so domicile writes aware values there as UTC
  (:func:`storage_value`) and reads them back naive.  Aware and naive values
  share one encoding so that a PostgreSQL ``timestamptz`` and the
  ``DATETIME(6)`` it was copied to digest alike.
- **JSON** documents are ``{"json": "<canonical JSON text>"}``: keys sorted,
  no spaces, non-ASCII kept, and numbers in one canonical decimal form
  (JSON has a single number type, and JSONB turns ``1e100`` into a 101-digit
  integer and ``1.0`` may come back as ``1``).  Strings in a JSON column are
  *not* parsed: a JSON string that spells a document is not that document.
  MariaDB stores JSON as ``LONGTEXT``; the JSON type (and so the parsing)
  comes from :func:`domicile.connectors.schema.refine_reflected`, not from guessing.
  A ``None`` is NULL whether SQL NULL or JSON ``null`` (SQLAlchemy returns
  both as ``None``).
  One change is not undone: SQLite gives a ``JSON`` column NUMERIC affinity,
  so a document that is a bare number is stored as a SQLite number (an
  integer beyond 64 bits is rounded, an integral double of 2**53 or more
  comes back as the integer it equals).  Its digest then differs, and the
  move of that row stops at verification instead of passing unnoticed.
- Any other value is digested by its Python type (``timedelta`` as
  ``{"interval": microseconds}``, ``list``/``dict`` as JSON); a value digest
  cannot encode raises ``TypeError`` rather than being guessed at.

Column names order the encoding, not the order of ``columns``.  Only the
names and values are hashed, never the types, which differ by engine.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import math
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

DIGEST_SIZE = 32
"""Bytes in a row or batch digest (SHA-256)."""

# Domain separation: a row digest can never equal a batch digest, and a
# future encoding (v2) can never collide with this one.
_ROW_PREFIX = b"domicile.row.v1\n"
_BATCH_PREFIX = b"domicile.batch.v1\n"

# Column kinds: how a column's values are read, whatever the engine.
ANY = "any"
BOOL = "bool"
INT = "int"
FLOAT = "float"
DECIMAL = "decimal"
TEXT = "text"
CHAR = "char"
CHAR32 = "char32"
BYTES = "bytes"
UUID = "uuid"
JSON = "json"
DATETIME = "datetime"
DATE = "date"
TIME = "time"

_HEX32 = re.compile(r"[0-9a-f]{32}")


def _base_type(column_type: sa.types.TypeEngine[Any]) -> sa.types.TypeEngine[Any]:
    """The type that decides how values look: a TypeDecorator's implementation."""
    while isinstance(column_type, sa.types.TypeDecorator):
        column_type = column_type.impl_instance
    return column_type


def kind_of(column_type: sa.types.TypeEngine[Any]) -> str:
    """The kind of a column type (one of the module's kind constants).

    Subclass checks cover the dialect types reflection returns
    (``DOUBLE_PRECISION`` is a Float, ``JSONB`` a JSON, ``BYTEA`` a binary,
    MySQL ``LONGTEXT`` a string).  Order matters: ``Float`` is a ``Numeric``,
    ``TINYINT(1)`` an ``Integer``, ``CHAR`` and ``Text`` are ``String``.
    """
    t = _base_type(column_type)
    if isinstance(t, sa.Boolean):
        return BOOL
    if isinstance(t, mysql.TINYINT) and getattr(t, "display_width", None) == 1:
        return BOOL
    if isinstance(t, sa.Integer):
        return INT
    if isinstance(t, sa.Float):
        return FLOAT
    if isinstance(t, sa.Numeric):
        return DECIMAL
    if isinstance(t, sa.Uuid):
        return UUID
    if isinstance(t, sa.JSON):
        return JSON
    if isinstance(t, sa.types._Binary):
        return BYTES
    if isinstance(t, sa.CHAR):
        return CHAR32 if t.length == 32 else CHAR
    if isinstance(t, sa.String):
        return TEXT
    if isinstance(t, sa.DateTime):
        return DATETIME
    if isinstance(t, sa.Date):
        return DATE
    if isinstance(t, sa.Time):
        return TIME
    return ANY


# -- canonical forms of single values ----------------------------------------


def _canonical_decimal_text(d: Decimal) -> str:
    """Fixed-point text of a finite decimal without trailing zeros ("1.5", "0").

    Normalised in a context as precise as the value itself: the default
    context's 28 digits would round ``1000000000000000000.0000000001`` and
    ``...0002`` (a ``NUMERIC(30, 10)``) to one text, and a changed value would
    pass for unchanged.
    """
    if d.is_zero():
        return "0"  # -0 and 0E-10 are zero
    d = d.normalize(decimal.Context(prec=max(1, len(d.as_tuple().digits))))
    if d.is_zero():
        return "0"  # -0 and 0E-10 are zero
    return format(d, "f")


def _decimal(d: Decimal) -> Any:
    if not d.is_finite():
        return {"decimal": "NaN" if d.is_nan() else ("-Infinity" if d < 0 else "Infinity")}
    if d == d.to_integral_value():
        return int(d)
    return {"decimal": _canonical_decimal_text(d)}


def _float(f: float) -> Any:
    if math.isnan(f):
        return {"float": "NaN"}
    if math.isinf(f):
        return {"float": "-Infinity" if f < 0 else "Infinity"}
    return 0.0 if f == 0 else f  # folds -0.0: SQLite and MariaDB drop the sign


def _utc_wall_clock(value: dt.datetime) -> dt.datetime:
    """*value* as a naive UTC wall-clock time (naive values are taken as they are)."""
    if value.tzinfo is not None and value.utcoffset() is not None:
        return value.astimezone(dt.UTC).replace(tzinfo=None)
    return value.replace(tzinfo=None)


def _json_number(value: int | float | Decimal) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return json.dumps(value)  # NaN/Infinity, as Python's json writes them
        value = Decimal(repr(value))
    elif isinstance(value, int):
        return str(value)
    if not value.is_finite():
        return "NaN" if value.is_nan() else ("-Infinity" if value < 0 else "Infinity")
    return _canonical_decimal_text(value)


def canonical_json(value: Any) -> str:
    """Canonical JSON text: sorted keys, no spaces, UTF-8 kept, canonical numbers.

    Numbers are written in one decimal form, so ``1``, ``1.0`` and ``1E+0``
    agree and ``1e100`` equals the integer JSONB returns for it.
    """
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int | float | Decimal):
        return _json_number(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ",".join(canonical_json(v) for v in value) + "]"
    if isinstance(value, Mapping):
        items = []
        for key in sorted(value):
            if not isinstance(key, str):
                raise TypeError(f"JSON object keys must be strings, not {type(key).__name__}")
            items.append(json.dumps(key, ensure_ascii=False) + ":" + canonical_json(value[key]))
        return "{" + ",".join(items) + "}"
    raise TypeError(f"cannot write a {type(value).__name__} value as JSON")


def _by_value(value: Any) -> Any:
    """The canonical form chosen by the Python type alone (no column type helps)."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, Decimal):
        return _decimal(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return {"bytes": bytes(value).hex()}
    if isinstance(value, dt.datetime):
        return {"datetime": _utc_wall_clock(value).isoformat(timespec="microseconds")}
    if isinstance(value, dt.date):
        return {"date": value.isoformat()}
    if isinstance(value, dt.time):
        return {"time": value.isoformat(timespec="microseconds")}
    if isinstance(value, dt.timedelta):
        micros = (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
        return {"interval": micros}
    if isinstance(value, uuid.UUID):
        return {"uuid": str(value)}
    if isinstance(value, Mapping | list | tuple):
        return {"json": canonical_json(value)}
    raise TypeError(f"cannot digest a {type(value).__name__} value")


def _normalize_kind(value: Any, kind: str) -> Any:
    """The canonical form of *value* read from a column of *kind*."""
    if value is None:
        return None
    if kind == BOOL:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
    elif kind == INT:
        if isinstance(value, int):
            return int(value)  # bool counts as 0/1
    elif kind == FLOAT:
        if isinstance(value, float):
            return _float(value)
        if isinstance(value, int) and not isinstance(value, bool) and float(value) == value:
            return _float(float(value))  # only when exact: distinct ints stay distinct
    elif kind == DECIMAL:
        if isinstance(value, Decimal):
            return _decimal(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return _decimal(Decimal(value))
        if isinstance(value, float):
            return _decimal(Decimal(repr(value))) if math.isfinite(value) else _float(value)
    elif kind == UUID:
        if isinstance(value, uuid.UUID):
            return {"uuid": str(value)}
        if isinstance(value, str):
            try:
                return {"uuid": str(uuid.UUID(value))}
            except ValueError:
                pass
        if isinstance(value, bytes) and len(value) == 16:
            return {"uuid": str(uuid.UUID(bytes=value))}
    elif kind in (CHAR, CHAR32):
        if isinstance(value, str):
            text = value.rstrip(" ")
            if kind == CHAR32 and _HEX32.fullmatch(text):
                return {"uuid": str(uuid.UUID(hex=text))}
            return text
    elif kind == JSON:
        return {"json": canonical_json(value)}
    return _by_value(value)


def normalize(value: Any, column_type: sa.types.TypeEngine[Any]) -> Any:
    """The canonical, JSON-able form of *value* read from a column of *column_type*.

    Equal logical values give equal results whichever engine returned them;
    different values give different results (see the module docstring).
    """
    return _normalize_kind(value, kind_of(column_type))


# -- digests -------------------------------------------------------------------


def encode_value(value: Any, column_type: sa.types.TypeEngine[Any]) -> str:
    """The canonical JSON text of one value, as the row encoding holds it.

    Compare these rather than :func:`normalize` results: Python's ``==``
    takes ``True`` for ``1`` and ``1.0`` for ``1``, the encoding does not.
    """
    return json.dumps(
        normalize(value, column_type), ensure_ascii=False, separators=(",", ":"), allow_nan=False
    )


class RowEncoder:
    """The row encoding for one list of columns, with names and kinds worked out once.

    A run digests every row several times (read, verify at home, compare
    before delete).  The JSON text is built by hand from per-column pieces:
    each name's ``["name",`` is encoded once per table, and the common
    values (NULL, integers, text, booleans, finite floats, naive timestamps)
    are written by the C helpers :func:`json.dumps` itself uses, so the bytes
    are exactly those of ``json.dumps([[name, normalize(value)], ...])``
    (:meth:`encode_reference`, which the tests compare it with).  Anything
    else goes through :func:`normalize` and :func:`json.dumps`.
    """

    def __init__(self, columns: Sequence[sa.Column[Any]]):
        ordered = sorted(columns, key=lambda c: c.name)
        names = [c.name for c in ordered]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise ValueError(f"column {dup!r} is listed twice")
        self.names = names
        self.kinds = [kind_of(c.type) for c in ordered]
        self._heads = [
            ("[" if i == 0 else ",[") + _json_string(n) + "," for i, n in enumerate(names)
        ]

    def encode(self, row: Mapping[str, Any]) -> bytes:
        """See :func:`encode_row`."""
        parts = ["["]
        for head, name, kind in zip(self._heads, self.names, self.kinds, strict=True):
            parts.append(head)
            parts.append(_fast_value(row[name], kind))
            parts.append("]")
        parts.append("]")
        # surrogatepass: a lone surrogate (which no engine stores) still digests,
        # as bytes no valid character encodes to.
        return "".join(parts).encode("utf-8", "surrogatepass")

    def encode_reference(self, row: Mapping[str, Any]) -> bytes:
        """The encoding written the plain way (one :func:`json.dumps` of the pairs)."""
        pairs = [
            [n, _normalize_kind(row[n], k)] for n, k in zip(self.names, self.kinds, strict=True)
        ]
        text = json.dumps(pairs, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        return text.encode("utf-8", "surrogatepass")

    def digest(self, row: Mapping[str, Any]) -> bytes:
        """See :func:`row_digest`."""
        return hashlib.sha256(_ROW_PREFIX + self.encode(row)).digest()


_json_string = json.encoder.encode_basestring
_TEXT_KINDS = (TEXT, ANY)


def _fast_value(value: Any, kind: str) -> str:
    """The JSON text of one value as :meth:`RowEncoder.encode_reference` writes it."""
    if value is None:
        return "null"
    t = type(value)
    if t is int:
        if kind in (INT, ANY, DECIMAL):
            return int.__repr__(value)
        if kind == BOOL and value in (0, 1):
            return "true" if value else "false"
    elif t is str:
        if kind in _TEXT_KINDS:
            return _json_string(value)
    elif t is bool:
        if kind in (BOOL, ANY):
            return "true" if value else "false"
    elif t is float:
        if kind in (FLOAT, ANY) and math.isfinite(value):
            return "0.0" if value == 0 else float.__repr__(value)
    elif t is dt.datetime and value.tzinfo is None and kind in (DATETIME, ANY):
        return '{"datetime":"' + value.isoformat(timespec="microseconds") + '"}'
    return json.dumps(
        _normalize_kind(value, kind), ensure_ascii=False, separators=(",", ":"), allow_nan=False
    )


def encode_row(row: Mapping[str, Any], columns: Sequence[sa.Column[Any]]) -> bytes:
    """The canonical bytes a row digest hashes: ``[[name, value], ...]`` as JSON.

    Pairs are ordered by column name; a JSON array of strings and canonical
    values has one spelling, so the encoding is unambiguous.  Raises KeyError
    when *row* lacks a column (a missing value is never taken for NULL).
    """
    return RowEncoder(columns).encode(row)


def row_digest(row: Mapping[str, Any], columns: Sequence[sa.Column[Any]]) -> bytes:
    """SHA-256 (32 bytes) of the canonical encoding of *row*'s *columns*.

    Pass the columns of the table the row was read from (reflected at that
    engine): each value is normalised by its own column's type.
    """
    return RowEncoder(columns).digest(row)


def row_digest_hex(row: Mapping[str, Any], columns: Sequence[sa.Column[Any]]) -> str:
    """:func:`row_digest` as 64 lowercase hex characters."""
    return row_digest(row, columns).hex()


def batch_digest(row_digests: Iterable[bytes]) -> bytes:
    """Fingerprint of a batch: SHA-256 over the count and the sorted row digests.

    Sorted, because engines return a key range in different orders (their
    collations differ); the count is hashed so the encoding stays unambiguous.
    """
    digests = sorted(bytes(d) for d in row_digests)
    for d in digests:
        if len(d) != DIGEST_SIZE:
            raise ValueError(f"a row digest has {DIGEST_SIZE} bytes, not {len(d)}")
    h = hashlib.sha256(_BATCH_PREFIX)
    h.update(len(digests).to_bytes(8, "big"))
    for d in digests:
        h.update(d)
    return h.digest()


def batch_digest_hex(row_digests: Iterable[bytes]) -> str:
    """:func:`batch_digest` as 64 lowercase hex characters."""
    return batch_digest(row_digests).hex()


def to_hex(digest: bytes) -> str:
    """A 32-byte digest as 64 lowercase hex characters (for the journal and log)."""
    if len(digest) != DIGEST_SIZE:
        raise ValueError(f"a digest has {DIGEST_SIZE} bytes, not {len(digest)}")
    return bytes(digest).hex()


def from_hex(text: str) -> bytes:
    """The 32-byte digest spelled by *text* (64 hex characters); ValueError otherwise."""
    if len(text) != 2 * DIGEST_SIZE or not re.fullmatch(r"[0-9a-fA-F]+", text):
        raise ValueError(f"a digest is {2 * DIGEST_SIZE} hex characters, got {text!r}")
    return bytes.fromhex(text)


# -- writing values so that they read back with the same digest ----------------


def storage_value(value: Any, column_type: sa.types.TypeEngine[Any]) -> Any:
    """*value* as it should be written into a column of *column_type* at any engine.

    Timestamps: aware values are converted to UTC, and naive values bound for a
    timezone-aware column are taken as UTC.  The zone is then kept where the
    column has one (PostgreSQL) and dropped where it has not, so a naive
    column holds the UTC wall-clock time.  Without this, SQLAlchemy's SQLite
    type and PyMySQL drop an offset *without converting* (03:04+05:00 would be
    stored as 03:04), and PostgreSQL would read a naive value in the session's
    time zone.  UUIDs bound for a ``CHAR(32)`` column are written as the
    32 hex digits SQLAlchemy's ``Uuid`` uses there.  Other values pass as they
    are.
    """
    kind = kind_of(column_type)
    if kind == DATETIME and isinstance(value, dt.datetime):
        aware = bool(getattr(_base_type(column_type), "timezone", False))
        utc = _utc_wall_clock(value)
        return utc.replace(tzinfo=dt.UTC) if aware else utc
    if kind == CHAR32 and isinstance(value, uuid.UUID):
        return value.hex
    return value
