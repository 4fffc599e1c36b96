"""Every common column type round-trips exactly through the SQL connector, on every engine.

One contract, run against real SQLite, PostgreSQL and MariaDB: values drawn by
Hypothesis are written with SQLAlchemy Core into a table created from a
portable MetaData, read back through ``SqlStore.table`` reflection (refined by
:func:`domicile.connectors.schema.refine_reflected`), and compared with what was
written.  Where an engine legitimately hands a value back in another shape
(0/1 for a boolean, a naive UTC timestamp, 32 hex digits for a UUID), the
comparison goes through :func:`domicile.digest.encode_value`, the same
normalisation the move's digests use, so this suite is also the proof that a
row digested at one engine digests alike at another (the last test checks
that directly).

What each engine cannot store is excluded, and only that: NUL characters in
PostgreSQL text and JSON; dates before year 1000 on MariaDB; decimals of more
than 15 significant digits on SQLite (it keeps NUMERIC as a double); UUIDs
MariaDB's UUID type refuses (see ``_uuids``); top-level JSON numbers that a
SQLite JSON column rewrites (see ``_sqlite_keeps``).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.dialects import mysql

from domicile.connectors.schema import refine_reflected, time_type, timestamp_type
from domicile.connectors.sql import SqlStore
from domicile.digest import encode_value, row_digest, storage_value
from domicile.model import Store

UTC = dt.UTC

CONTRACT_SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# -- strategies: every value the engine must store, per backend ------------------


def _text(backend: str, max_size: int = 40) -> st.SearchStrategy[str]:
    # codec="utf-8" leaves out surrogates, which no UTF-8 database can hold
    banned = "\x00" if backend in ("postgresql", "any") else ""
    return st.text(st.characters(codec="utf-8", exclude_characters=banned), max_size=max_size)


def _decimal(backend: str) -> st.SearchStrategy[Decimal]:
    digits = 15 if backend in ("sqlite", "any") else 18  # Numeric(18, 6)
    bound = 10**digits - 1
    return st.integers(-bound, bound).map(lambda n: Decimal(n).scaleb(-6))


def _min_year(backend: str) -> int:
    return 1000 if backend in ("mysql", "any") else 1  # MariaDB's DATE/DATETIME range


def _datetime(backend: str) -> st.SearchStrategy[dt.datetime]:
    return st.datetimes(min_value=dt.datetime(_min_year(backend), 1, 1))


def _aware(backend: str) -> st.SearchStrategy[dt.datetime]:
    """An instant in range at UTC, shown at any real-world offset (±14 h)."""
    instants = st.datetimes(
        min_value=dt.datetime(_min_year(backend), 1, 2), max_value=dt.datetime(9999, 12, 30)
    )
    offsets = st.integers(-14 * 60, 14 * 60).map(lambda m: dt.timezone(dt.timedelta(minutes=m)))
    return st.tuples(instants, offsets).map(lambda p: p[0].replace(tzinfo=UTC).astimezone(p[1]))


def _sqlite_keeps(document: Any) -> bool:
    """False for the top-level numbers a SQLite JSON column changes.

    SQLAlchemy names the column type JSON, which gives it NUMERIC affinity in
    SQLite: a document that is a bare number is stored as a SQLite number, so
    an integer beyond 64 bits is rounded to a double and an integral double of
    2**53 or more comes back as the integer it equals (5.225659861366485e16
    as 52256598613664848, a different decimal).  Numbers inside arrays and
    objects are untouched.
    """
    if isinstance(document, bool) or not isinstance(document, int | float):
        return True
    if isinstance(document, int):
        return -(2**63) <= document < 2**63
    return not (document.is_integer() and abs(document) >= 2**53)


def _json(backend: str) -> st.SearchStrategy[Any]:
    leaves = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | _text(backend, 10)
    )
    documents = st.recursive(
        leaves,
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(_text(backend, 6), inner, max_size=4)
        ),
        max_leaves=10,
    )
    return documents.filter(_sqlite_keeps) if backend in ("sqlite", "any") else documents


def _uuids(backend: str) -> st.SearchStrategy[uuid.UUID]:
    """Any UUID whose version nibble is 0-7, and the max UUID.

    MariaDB's UUID type refuses some values with a version nibble of 8 or more
    (``00000000-0000-8000-8000-000000000000`` is one): a PostgreSQL UUID column
    holding one cannot move to a MariaDB home, and the insert says so.
    """
    return st.just(uuid.UUID(int=2**128 - 1)) | st.builds(
        lambda n, version: uuid.UUID(int=(n & ~(0xF << 76)) | (version << 76)),
        st.integers(0, 2**128 - 1),
        st.integers(0, 7),
    )


def _equal(written: Any, read: Any) -> bool:
    return bool(read == written)


def _equal_aware(written: Any, read: Any) -> bool:
    # SQLite and MariaDB keep no zone: the value comes back as naive UTC
    return bool((read if read.tzinfo else read.replace(tzinfo=UTC)) == written)


@dataclass(frozen=True)
class Case:
    """A column type, its values on a backend, and the exact check beyond the digest."""

    type_: Callable[[], sa.types.TypeEngine[Any]]
    values: Callable[[str], st.SearchStrategy[Any]]
    exact: Callable[[Any, Any], bool] | None = _equal


CASES: dict[str, Case] = {
    "integer": Case(sa.Integer, lambda b: st.integers(-(2**31), 2**31 - 1)),
    "bigint": Case(
        sa.BigInteger,
        lambda b: (
            st.sampled_from([2**63 - 1, -(2**63 - 1), -(2**63)]) | st.integers(-(2**63), 2**63 - 1)
        ),
    ),
    "text": Case(sa.Text, _text),
    "varchar": Case(lambda: sa.String(60), lambda b: _text(b, 60)),
    "char": Case(lambda: sa.CHAR(8), lambda b: _text(b, 8), exact=None),  # padding differs
    "numeric": Case(lambda: sa.Numeric(18, 6), _decimal),
    "double": Case(sa.Double, lambda b: st.floats(allow_nan=False, allow_infinity=False)),
    "boolean": Case(sa.Boolean, lambda b: st.booleans()),
    "date": Case(sa.Date, lambda b: st.dates(min_value=dt.date(_min_year(b), 1, 1))),
    "timestamp": Case(timestamp_type, _datetime),
    "timestamptz": Case(lambda: timestamp_type(timezone=True), _aware, exact=_equal_aware),
    "time": Case(time_type, lambda b: st.times()),
    "binary": Case(
        sa.LargeBinary, lambda b: st.binary(max_size=80), exact=lambda w, r: bytes(r) == w
    ),
    "json": Case(sa.JSON, _json, exact=None),  # JSONB rewrites numbers: the digest decides
    "uuid": Case(sa.Uuid, _uuids, exact=lambda w, r: r in (w, w.hex)),
}


def _store(url: str, name: str) -> SqlStore:
    return SqlStore(Store(name=name, url=url, display_url=url, labels={}, kind="sql"))


def _reflect(store: SqlStore, name: str) -> sa.Table:
    # SqlStore.table reflects; refine_reflected corrects the types that would
    # read inexactly (MySQL DOUBLE, MariaDB JSON).  It is idempotent, so this
    # stays right if SqlStore applies it itself.
    return refine_reflected(store.table(name), store.engine)


def _replace_rows(store: SqlStore, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """Clear *table* and write *rows*, each value as domicile writes it."""
    with store.begin("writing test rows") as conn:
        conn.execute(sa.delete(table))
        if rows:
            prepared = [
                {k: storage_value(v, table.c[k].type) for k, v in row.items()} for row in rows
            ]
            conn.execute(sa.insert(table), prepared)


# -- one column type at a time -----------------------------------------------------


@dataclass
class Rig:
    store: SqlStore
    portable: sa.Table
    reflected: sa.Table
    case: Case


@pytest.fixture(params=sorted(CASES))
def rig(
    request: pytest.FixtureRequest, backend: str, make_db: Callable[[str], str]
) -> Iterator[Rig]:
    """A fresh database holding ``roundtrip(id, v)`` with ``v`` of the case's type."""
    case = CASES[request.param]
    store = _store(make_db(backend), backend)
    md = sa.MetaData()
    portable = sa.Table(
        "roundtrip",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("v", case.type_()),
    )
    md.create_all(store.engine)
    yield Rig(store, portable, _reflect(store, "roundtrip"), case)
    store.dispose()


@CONTRACT_SETTINGS
@given(data=st.data())
def test_value_round_trips(rig: Rig, backend: str, data: st.DataObject) -> None:
    """What is written reads back the same, or digests the same where the engine
    legitimately changes its shape."""
    values = data.draw(st.lists(st.none() | rig.case.values(backend), min_size=1, max_size=4))
    _replace_rows(rig.store, rig.portable, [{"id": i, "v": v} for i, v in enumerate(values)])
    with rig.store.connect("reading test rows") as conn:
        read = dict(conn.execute(sa.select(rig.reflected.c.id, rig.reflected.c.v)).all())
    assert sorted(read) == list(range(len(values)))
    for i, written in enumerate(values):
        got = read[i]
        assert encode_value(got, rig.reflected.c.v.type) == encode_value(
            written, rig.portable.c.v.type
        ), f"row {i}: wrote {written!r}, read {got!r}"
        if written is None:
            assert got is None
        elif rig.case.exact is not None:
            assert rig.case.exact(written, got), f"row {i}: wrote {written!r}, read {got!r}"


def test_portable_timestamp_keeps_microseconds_on_mysql() -> None:
    """SQLAlchemy's generic DateTime is whole seconds on MySQL/MariaDB; the portable one is not."""
    dialect = mysql.dialect()
    assert sa.DateTime().compile(dialect=dialect) == "DATETIME"
    assert timestamp_type().compile(dialect=dialect) == "DATETIME(6)"
    assert timestamp_type(timezone=True).compile(dialect=dialect) == "DATETIME(6)"
    assert time_type().compile(dialect=dialect) == "TIME(6)"


# -- the same rows on every engine digest alike ------------------------------------


def _all_columns_table(md: sa.MetaData) -> sa.Table:
    return sa.Table(
        "everything",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        *[sa.Column(name, case.type_()) for name, case in sorted(CASES.items())],
    )


@dataclass
class Fleet:
    portable: sa.Table
    stores: dict[str, SqlStore]
    reflected: dict[str, sa.Table]


@pytest.fixture
def fleet(make_db: Callable[[str], str]) -> Iterator[Fleet]:
    """The ``everything`` table on SQLite, PostgreSQL and MariaDB."""
    md = sa.MetaData()
    portable = _all_columns_table(md)
    stores = {b: _store(make_db(b), b) for b in ("sqlite", "postgresql", "mysql")}
    for store in stores.values():
        md.create_all(store.engine)
    yield Fleet(portable, stores, {b: _reflect(s, "everything") for b, s in stores.items()})
    for store in stores.values():
        store.dispose()


@CONTRACT_SETTINGS
@given(data=st.data())
def test_same_rows_digest_alike_on_every_engine(fleet: Fleet, data: st.DataObject) -> None:
    """The core promise: a digest at the source equals the digest at a home of another engine.

    Each engine's digest uses its own reflected column types (TINYINT(1),
    CHAR(32), DATETIME(6), LONGTEXT refined to JSON...), as a move does.
    """
    row = st.fixed_dictionaries(
        {name: st.none() | case.values("any") for name, case in CASES.items()}
    )
    rows = data.draw(st.lists(row, min_size=1, max_size=3))
    rows = [{"id": i, **r} for i, r in enumerate(rows)]
    expected = [row_digest(r, list(fleet.portable.columns)) for r in rows]
    for backend, store in fleet.stores.items():
        table = fleet.reflected[backend]
        _replace_rows(store, fleet.portable, rows)
        with store.connect("reading test rows") as conn:
            read = conn.execute(sa.select(table).order_by(table.c.id)).mappings().all()
        digests = [row_digest(r, list(table.columns)) for r in read]
        assert digests == expected, f"{backend} digests differ"
