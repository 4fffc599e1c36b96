"""Row digests: equal for equal logical values, different for anything else.

Unit tests pin each normalisation rule of :mod:`domicile.digest` (and the
engine quirk it exists for); Hypothesis checks the property a move relies
on: two rows digest alike exactly when every column holds the same logical
value, so a changed value is never taken for the copied one.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.dialects import mysql, postgresql

from domicile.digest import (
    DIGEST_SIZE,
    RowEncoder,
    batch_digest,
    batch_digest_hex,
    canonical_json,
    encode_row,
    encode_value,
    from_hex,
    kind_of,
    normalize,
    row_digest,
    row_digest_hex,
    storage_value,
    to_hex,
)

UTC = dt.UTC
PLUS5 = dt.timezone(dt.timedelta(hours=5))
U = uuid.UUID("6f1c3b5e-8a2d-4c1e-9b7f-0d2e4a6c8b1f")


def col(name: str, type_: sa.types.TypeEngine[Any]) -> sa.Column[Any]:
    return sa.Column(name, type_)


def same(a: Any, b: Any, type_: sa.types.TypeEngine[Any]) -> bool:
    """True when *a* and *b* digest alike as the only value of a column of *type_*."""
    c = [col("v", type_)]
    return row_digest({"v": a}, c) == row_digest({"v": b}, c)


# -- equal logical values ------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "type_"),
    [
        (Decimal("1.50"), Decimal("1.5"), sa.Numeric(10, 2)),
        (Decimal("1.500000"), Decimal("1.5"), sa.Numeric(18, 6)),
        (Decimal("0E-10"), Decimal("-0"), sa.Numeric()),
        (Decimal("5.00"), 5, sa.Numeric(10, 2)),  # NUMERIC(20, 0) at one engine, BIGINT at another
        (0.1, Decimal("0.1"), sa.Numeric(asdecimal=False)),
        (True, 1, sa.Boolean()),  # SQLite and MariaDB return 0/1
        (False, 0, sa.Boolean()),
        (True, 1, mysql.TINYINT(display_width=1)),  # reflected MariaDB BOOLEAN
        (True, 1, sa.Integer()),
        (-0.0, 0.0, sa.Double()),  # SQLite and MariaDB drop the sign of zero
        (1.0, 1, sa.Float()),
        (b"\x00\xff", memoryview(b"\x00\xff"), sa.LargeBinary()),
        (b"\x00\xff", bytearray(b"\x00\xff"), postgresql.BYTEA()),
        ({"a": 1, "b": [1, {"y": 2, "x": 3}]}, {"b": [1, {"x": 3, "y": 2}], "a": 1}, sa.JSON()),
        ({"x": 10**100}, {"x": 1e100}, postgresql.JSONB()),  # JSONB writes 1e100 as an integer
        ({"x": 1}, {"x": 1.0}, sa.JSON()),  # JSON has one number type
        (
            dt.datetime(2020, 1, 2, 3, 4, 5, 6, tzinfo=PLUS5),
            dt.datetime(2020, 1, 1, 22, 4, 5, 6),  # naive UTC, as SQLite and MariaDB return it
            sa.DateTime(timezone=True),
        ),
        (
            dt.datetime(2020, 1, 2, 3, 4, 5, 6, tzinfo=PLUS5),
            dt.datetime(2020, 1, 1, 22, 4, 5, 6, tzinfo=UTC),
            postgresql.TIMESTAMP(timezone=True),
        ),
        (
            dt.datetime(2020, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
            dt.datetime(2020, 1, 2, 3, 4, 5, 6),  # the zone dropped by a naive home column
            mysql.DATETIME(fsp=6),
        ),
        (U, str(U), sa.Uuid()),
        (U, U.hex, sa.Uuid()),
        (U, U.hex, sa.CHAR(32)),  # sa.Uuid on SQLite
        ("abc  ", "abc", sa.CHAR(5)),  # PostgreSQL pads CHAR(n), MariaDB strips
    ],
)
def test_equal_logical_values_digest_alike(a: Any, b: Any, type_: sa.types.TypeEngine[Any]) -> None:
    assert encode_value(a, type_) == encode_value(b, type_)
    assert same(a, b, type_)


# -- different values ----------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "type_"),
    [
        ("", None, sa.Text()),
        ("null", None, sa.Text()),
        ("", "null", sa.Text()),
        ("null", None, sa.JSON()),
        ("", None, sa.JSON()),
        ({}, None, sa.JSON()),
        (1, "1", sa.Text()),
        (1, "1", sa.String(10)),
        (1, True, sa.JSON()),
        (Decimal("1.5"), Decimal("15"), sa.Numeric(10, 2)),
        (Decimal("1.5"), "1.5", sa.Numeric(10, 2)),
        (0.1, Decimal("0.1000000000"), sa.Double()),  # a lossy MySQL DOUBLE read stays visible
        (1.0, 1, sa.Integer()),
        (2, True, mysql.TINYINT(display_width=1)),  # a non-0/1 TINYINT(1) stays an integer
        (5, "5", sa.JSON()),
        ("caf\u00e9", "cafe\u0301", sa.Text()),  # NFC vs NFD: text is not normalised
        ("a", "a ", sa.Text()),  # trailing spaces matter outside CHAR(n)
        ("A", "a", sa.Text()),
        (b"ab", "6162", sa.LargeBinary()),
        (b"", None, sa.LargeBinary()),
        (dt.date(2020, 1, 2), dt.datetime(2020, 1, 2), sa.Date()),
        (dt.datetime(2020, 1, 2), dt.datetime(2020, 1, 2, 0, 0, 0, 1), sa.DateTime()),
        (dt.datetime(2020, 1, 2, tzinfo=PLUS5), dt.datetime(2020, 1, 2), sa.DateTime(True)),
        (U, str(U), sa.Text()),
        (U.hex.upper(), U.hex, sa.CHAR(32)),  # stays one-to-one
        ("x" * 32, U.hex, sa.CHAR(32)),
        (float("nan"), None, sa.Double()),
        (float("inf"), float("-inf"), sa.Double()),
        (dt.timedelta(seconds=1), dt.timedelta(microseconds=1), postgresql.INTERVAL()),
    ],
)
def test_different_values_digest_differently(
    a: Any, b: Any, type_: sa.types.TypeEngine[Any]
) -> None:
    assert encode_value(a, type_) != encode_value(b, type_)
    assert not same(a, b, type_)


def test_json_strings_are_not_parsed() -> None:
    """A JSON string that spells a document is not that document."""
    assert not same('{"a":1}', {"a": 1}, sa.JSON())


def test_kinds_of_reflected_types() -> None:
    assert kind_of(mysql.TINYINT(display_width=1)) == "bool"
    assert kind_of(mysql.TINYINT(display_width=4)) == "int"
    assert kind_of(mysql.DOUBLE(asdecimal=True)) == "float"
    assert kind_of(mysql.DECIMAL(18, 6)) == "decimal"
    assert kind_of(mysql.LONGTEXT()) == "text"
    assert kind_of(mysql.LONGBLOB()) == "bytes"
    assert kind_of(postgresql.JSONB()) == "json"
    assert kind_of(postgresql.UUID()) == "uuid"
    assert kind_of(sa.CHAR(32)) == "char32"
    assert kind_of(sa.CHAR(5)) == "char"
    assert kind_of(postgresql.TIMESTAMP(timezone=True)) == "datetime"
    assert kind_of(sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql")) == "datetime"
    assert kind_of(sa.types.NullType()) == "any"


def test_values_no_rule_covers_raise() -> None:
    with pytest.raises(TypeError):
        normalize(object(), sa.Text())
    with pytest.raises(TypeError):
        normalize({1: "a"}, sa.JSON())


# -- the row encoding ------------------------------------------------------------

COLUMNS = [col("id", sa.Integer()), col("name", sa.Text()), col("price", sa.Numeric(10, 2))]
ROW = {"id": 1, "name": "Zoë", "price": Decimal("9.90")}


def test_digest_is_sha256_sized_and_hex_round_trips() -> None:
    digest = row_digest(ROW, COLUMNS)
    assert len(digest) == DIGEST_SIZE
    assert row_digest_hex(ROW, COLUMNS) == digest.hex() == to_hex(digest)
    assert from_hex(to_hex(digest)) == digest
    assert from_hex(digest.hex().upper()) == digest
    for bad in ["", "00", "zz" * 32, digest.hex() + "00"]:
        with pytest.raises(ValueError):
            from_hex(bad)
    with pytest.raises(ValueError):
        to_hex(b"short")


def test_golden_vector() -> None:
    """Pins the encoding: a change here changes every digest already recorded."""
    assert (
        encode_row(ROW, COLUMNS) == '[["id",1],["name","Zoë"],["price",{"decimal":"9.9"}]]'.encode()
    )
    assert row_digest_hex(ROW, COLUMNS) == (
        "d7db2afda3b287e48b28a7ac8389beff991ac3794e475ee4f3f002ad18dec5d8"
    )


def test_column_order_does_not_matter_but_names_do() -> None:
    assert row_digest(ROW, COLUMNS) == row_digest(ROW, list(reversed(COLUMNS)))
    renamed = [col("id", sa.Integer()), col("title", sa.Text()), col("price", sa.Numeric(10, 2))]
    row = {"id": 1, "title": "Zoë", "price": Decimal("9.90")}
    assert row_digest(ROW, COLUMNS) != row_digest(row, renamed)


def test_only_listed_columns_count_and_none_may_be_missing() -> None:
    assert row_digest({**ROW, "extra": 5}, COLUMNS) == row_digest(ROW, COLUMNS)
    with pytest.raises(KeyError):
        row_digest({"id": 1, "name": "Zoë"}, COLUMNS)  # a missing value is never NULL
    with pytest.raises(ValueError):
        row_digest(ROW, [*COLUMNS, col("id", sa.Integer())])


def test_values_cannot_shift_between_columns() -> None:
    columns = [col("a", sa.Text()), col("b", sa.Text())]
    assert row_digest({"a": "x,y", "b": ""}, columns) != row_digest({"a": "x", "b": "y"}, columns)
    assert row_digest({"a": '"', "b": ""}, columns) != row_digest({"a": "", "b": '"'}, columns)


def test_canonical_json() -> None:
    assert (
        canonical_json({"b": [1.0, 2.5, None, True], "a": "é"}) == '{"a":"é","b":[1,2.5,null,true]}'
    )
    assert canonical_json(1e-7) == "0.0000001"
    assert canonical_json(-0.0) == "0"


def test_batch_digest_is_order_free_and_counts() -> None:
    digests = [row_digest({"id": i, "name": str(i), "price": i}, COLUMNS) for i in range(5)]
    assert batch_digest(digests) == batch_digest(reversed(digests))
    assert batch_digest(digests) != batch_digest(digests[:-1])
    assert batch_digest([]) != batch_digest(digests[:1])
    assert batch_digest_hex(digests) == batch_digest(digests).hex()
    assert batch_digest(digests) not in digests
    with pytest.raises(ValueError):
        batch_digest([b"short"])


# -- storage_value: what to write so a value reads back with the same digest ---


def test_storage_value_converts_timestamps_to_utc() -> None:
    local = dt.datetime(2020, 1, 2, 3, 4, 5, 6, tzinfo=PLUS5)
    utc = dt.datetime(2020, 1, 1, 22, 4, 5, 6)
    assert storage_value(local, mysql.DATETIME(fsp=6)) == utc  # naive column: UTC wall clock
    assert storage_value(local, sa.DateTime(timezone=True)) == utc.replace(tzinfo=UTC)
    assert storage_value(local, sa.DateTime(timezone=True)).tzinfo is UTC
    assert storage_value(utc, sa.DateTime(timezone=True)) == utc.replace(tzinfo=UTC)
    assert storage_value(utc, sa.DateTime()) == utc
    assert storage_value(U, sa.CHAR(32)) == U.hex
    assert storage_value("x", sa.Text()) == "x"


# -- the property: digests differ exactly when a value differs -------------------


def _strict(value: Any) -> Any:
    """A structure whose equality tells booleans from integers (Python's does not)."""
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strict(v) for v in value]
    return (type(value).__name__, value)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=6,
)
aware = st.datetimes(
    min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30), timezones=st.just(UTC)
).flatmap(
    lambda t: st.integers(-14 * 60, 14 * 60).map(
        lambda m: t.astimezone(dt.timezone(dt.timedelta(minutes=m)))
    )
)

# (column type, strategy of values, logical equality)
CASES: dict[str, tuple[sa.types.TypeEngine[Any], st.SearchStrategy[Any], Any]] = {
    "int": (sa.BigInteger(), st.integers(-(2**63), 2**63 - 1), None),
    "bool": (sa.Boolean(), st.booleans(), None),
    "tinyint1": (mysql.TINYINT(display_width=1), st.integers(-128, 127), None),
    "decimal": (
        sa.Numeric(18, 6),
        st.decimals(places=6, min_value=Decimal(-(10**6)), max_value=Decimal(10**6)),
        None,
    ),
    "float": (sa.Double(), st.floats(allow_nan=False), None),
    "text": (sa.Text(), st.text(), None),
    "bytes": (sa.LargeBinary(), st.binary(), None),
    "date": (sa.Date(), st.dates(), None),
    "datetime": (sa.DateTime(), st.datetimes(), None),
    "aware": (sa.DateTime(timezone=True), aware, None),
    "uuid": (sa.Uuid(), st.uuids(), None),
    "char32": (
        sa.CHAR(32),
        st.uuids().map(lambda u: u.hex) | st.text(max_size=3).map(lambda s: s.rstrip(" ")),
        None,
    ),
    "json": (sa.JSON(), json_values, lambda a, b: _strict(a) == _strict(b)),
}


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_digest_changes_exactly_when_a_value_changes(data: st.DataObject) -> None:
    """Changing any column's value (NULL included) changes the row digest, and only then."""
    names = sorted(CASES)
    columns = [col(name, CASES[name][0]) for name in names]
    values = st.one_of
    row = {n: data.draw(values(st.none(), CASES[n][1]), label=n) for n in names}
    changed = data.draw(st.sampled_from(names), label="changed")
    new = data.draw(values(st.none(), CASES[changed][1]), label="new value")
    equal = CASES[changed][2] or (lambda a, b: a == b)
    logically_same = (row[changed] is None) == (new is None) and (
        row[changed] is None or equal(row[changed], new)
    )
    assert (row_digest(row, columns) == row_digest({**row, changed: new}, columns)) == (
        logically_same
    )


# -- the hand-built encoding equals the plain json.dumps one ------------------

_ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(alphabet=st.characters(codec=None, exclude_categories=())),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.datetimes(),
    st.datetimes(timezones=st.timezones()),
    st.dates(),
    st.times(),
    st.uuids(),
    st.binary(max_size=20),
    st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3),
    st.timedeltas(),
)
_TYPES = [
    sa.Integer(),
    sa.BigInteger(),
    sa.Boolean(),
    mysql.TINYINT(display_width=1),
    sa.Float(),
    sa.Numeric(18, 6),
    sa.String(40),
    sa.Text(),
    sa.CHAR(5),
    sa.CHAR(32),
    sa.Uuid(),
    sa.JSON(),
    sa.LargeBinary(),
    sa.DateTime(),
    sa.DateTime(timezone=True),
    sa.Date(),
    sa.Time(),
    sa.types.NullType(),
    postgresql.INTERVAL(),
]


@settings(max_examples=400)
@given(data=st.data())
def test_fast_encoding_is_byte_equal_to_the_reference(data: st.DataObject) -> None:
    """RowEncoder.encode builds the JSON by hand; it must equal json.dumps of the pairs
    for every column type and every value (or both must refuse the value alike)."""
    types = data.draw(st.lists(st.sampled_from(_TYPES), min_size=1, max_size=4))
    names = data.draw(
        st.lists(
            st.text(min_size=1, max_size=6), min_size=len(types), max_size=len(types), unique=True
        )
    )
    enc = RowEncoder([col(n, t) for n, t in zip(names, types, strict=True)])
    row = {n: data.draw(_ANY_VALUE) for n in names}
    try:
        reference = enc.encode_reference(row)
    except (TypeError, ValueError) as exc:
        with pytest.raises(type(exc)):
            enc.encode(row)
        return
    assert enc.encode(row) == reference


def test_decimals_beyond_28_digits_keep_every_digit() -> None:
    """The default decimal context rounds to 28 digits; the digest must not."""
    t = sa.Numeric(30, 10)
    a = Decimal("1000000000000000000.0000000001")
    b = Decimal("1000000000000000000.0000000002")
    assert encode_value(a, t) != encode_value(b, t)
    assert encode_value(a, t) == '{"decimal":"1000000000000000000.0000000001"}'
    assert encode_value(Decimal("12345678901234567890123456789012.500"), sa.Numeric(40, 3)) == (
        '{"decimal":"12345678901234567890123456789012.5"}'
    )
    assert encode_value(Decimal("1E+40"), t) == str(10**40)
