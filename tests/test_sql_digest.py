"""The row digest computed in SQL equals the Python digest, byte for byte, on every engine.

For each engine a table holds one column of every type whose kind
:mod:`domicile.connectors.sql_digest` covers there.  Hypothesis writes rows
(NULLs, empty strings, control characters, quotes, backslashes, non-ASCII and
astral characters, extreme decimals, dates and times at the ends of each
engine's range), reads them back through a reflected (and refined) table,
and compares ``RowEncoder(table.columns).digest(row)`` with the digest the
database computed in the same SELECT.  A NULL SQL digest means "compute this
row in Python": it is allowed only where the module documents it, and the
tests that store values SQLAlchemy would read differently (SQLite storage
classes, MariaDB zero dates, PostgreSQL infinities) check that the SQL then
says NULL rather than a wrong digest.

Sessions are made awkward on purpose: PostgreSQL runs in a non-UTC TimeZone
with a non-ISO DateStyle and escape bytea output; MariaDB runs with a
connection collation unlike the columns' and NO_BACKSLASH_ESCAPES,
PIPES_AS_CONCAT in its SQL mode.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Context, Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.dialects import mysql, postgresql

from domicile import digest as d
from domicile.connectors.schema import family, refine_reflected
from domicile.connectors.sql import SqlStore
from domicile.connectors.sql_digest import (
    COVERED,
    install_sqlite_sha256,
    register_sqlite_sha256,
    row_digest_sql,
    row_json_sql,
    uncovered_reason,
)
from domicile.digest import RowEncoder
from domicile.model import Store

SETTINGS = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
BACKENDS = [
    "sqlite",
    pytest.param("postgresql", marks=pytest.mark.postgres),
    pytest.param("mysql", marks=pytest.mark.mysql),
]
UTC = dt.UTC

# -- values ----------------------------------------------------------------------------

_SPECIAL = [
    '"', "\\", "/", "\x00", "\x01", "\x08", "\x0b", "\x1a", "\x1f", "\x7f", "\n", "\r", "\t",
    "\f", " ", "é", "ß", "\u2028", "\ufeff", "中", "😀", "𝄞", "\\u0041", "'", "%",
]  # fmt: skip


def _text(backend: str, max_size: int = 30) -> st.SearchStrategy[str]:
    banned = "\x00" if backend == "postgresql" else ""  # PostgreSQL text cannot hold NUL
    chars = st.characters(codec="utf-8", exclude_characters=banned) | st.sampled_from(
        [c for c in _SPECIAL if c not in banned]
    )
    return st.lists(chars, max_size=max_size).map("".join).filter(lambda s: len(s) <= max_size)


def _latin1_text(max_size: int) -> st.SearchStrategy[str]:
    """Text a MariaDB latin1 (cp1252) column holds exactly."""
    return st.text(
        st.characters(max_codepoint=0xFF, exclude_categories=["Cs"]).filter(
            lambda c: not 0x80 <= ord(c) <= 0x9F
        ),
        max_size=max_size,
    )


def _scaled(digits: int, scale: int) -> st.SearchStrategy[Decimal]:
    bound = 10**digits - 1
    return st.integers(-bound, bound).map(lambda n: Decimal(f"{n}E-{scale}"))  # exact


def _uuids() -> st.SearchStrategy[uuid.UUID]:
    # MariaDB's UUID type refuses some values with a version nibble of 8 or more
    return st.builds(
        lambda n, v: uuid.UUID(int=(n & ~(0xF << 76)) | (v << 76)),
        st.integers(0, 2**128 - 1),
        st.integers(0, 7),
    )


def _aware() -> st.SearchStrategy[dt.datetime]:
    """An instant at any real-world offset, far enough from years 1 and 9999 that
    psycopg can show it in the session's zone."""
    instants = st.datetimes(min_value=dt.datetime(2, 1, 1), max_value=dt.datetime(9998, 12, 31))
    offsets = st.integers(-14 * 60, 14 * 60).map(lambda m: dt.timezone(dt.timedelta(minutes=m)))
    return st.tuples(instants, offsets).map(lambda p: p[0].replace(tzinfo=UTC).astimezone(p[1]))


@dataclass(frozen=True)
class Col:
    """A column: its SQL type, the values to write, and when the SQL must not say NULL."""

    sql: str
    values: st.SearchStrategy[Any]
    sure: Callable[[Any], bool] = lambda v: True


def _decimal_sure(v: Decimal) -> bool:
    """False for a fraction of more than 28 significant digits: domicile.digest rounds
    those (Decimal.normalize() keeps the context's 28), so the SQL leaves them to Python."""
    if not v.is_finite() or v == v.to_integral_value():
        return True
    return len(v.normalize(Context(prec=1000)).as_tuple().digits) <= 28


def _sqlite_decimal_sure(v: Decimal) -> bool:
    # stored as a double: integral ones become integers, the only class SQL digests
    return v == v.to_integral_value() and abs(v) < 2**53


COLUMNS: dict[str, dict[str, Col]] = {
    "sqlite": {
        "i": Col("INTEGER", st.integers(-(2**63), 2**63 - 1)),
        "b": Col("BOOLEAN", st.booleans()),
        "n": Col(
            "NUMERIC(18, 6)",
            _scaled(15, 6) | st.integers(-(2**60), 2**60).map(Decimal),
            _sqlite_decimal_sure,
        ),
        "t": Col("TEXT", _text("sqlite")),
        "v": Col("VARCHAR(20)", _text("sqlite", 20)),
        "c": Col("CHAR(10)", _text("sqlite", 10)),
        "bl": Col("BLOB", st.binary(max_size=40)),
        "d": Col("DATE", st.dates()),
        "tm": Col("TIME", st.times()),
        "ts": Col("DATETIME", st.datetimes()),
    },
    "postgresql": {
        "i2": Col("smallint", st.integers(-(2**15), 2**15 - 1)),
        "i4": Col("integer", st.integers(-(2**31), 2**31 - 1)),
        "i8": Col("bigint", st.integers(-(2**63), 2**63 - 1)),
        "b": Col("boolean", st.booleans()),
        "n": Col("numeric(30, 10)", _scaled(30, 10), _decimal_sure),
        "nu": Col(
            "numeric",
            st.builds(
                lambda n, e: Decimal(f"{n}E{e}"),
                st.integers(-(10**40), 10**40),
                st.integers(-60, 60),
            )
            | st.sampled_from(
                [Decimal(x) for x in ("NaN", "Infinity", "-Infinity", "-0.000", "0E-20", "1E+50")]
            ),
            _decimal_sure,
        ),
        "t": Col("text", _text("postgresql")),
        "v": Col("varchar(20)", _text("postgresql", 20)),
        "c": Col("char(10)", _text("postgresql", 10)),
        "u": Col("uuid", st.uuids()),
        "by": Col("bytea", st.binary(max_size=40)),
        "d": Col("date", st.dates()),
        "tm": Col("time", st.times()),
        "tm3": Col("time(3)", st.times()),
        "ts": Col("timestamp", st.datetimes()),
        "tz": Col("timestamptz", _aware()),
    },
    "mysql": {
        "i1": Col("TINYINT", st.integers(-128, 127)),
        "i4": Col("INT", st.integers(-(2**31), 2**31 - 1)),
        "i8": Col("BIGINT", st.integers(-(2**63), 2**63 - 1)),
        "u8": Col("BIGINT UNSIGNED", st.integers(0, 2**64 - 1)),
        "b": Col("TINYINT(1)", st.sampled_from([0, 1]) | st.integers(-128, 127)),
        "n": Col("DECIMAL(30, 10)", _scaled(30, 10), _decimal_sure),
        "nw": Col("DECIMAL(65, 30)", _scaled(65, 30), _decimal_sure),
        "t": Col("TEXT", _text("mysql")),
        "lt": Col("LONGTEXT", _text("mysql")),
        "v": Col("VARCHAR(40)", _text("mysql", 40)),
        "vci": Col("VARCHAR(40) COLLATE utf8mb4_general_ci", _text("mysql", 40)),
        "l1": Col("VARCHAR(20) CHARACTER SET latin1", _latin1_text(20)),
        "c": Col("CHAR(10)", _text("mysql", 10)),
        "cci": Col("CHAR(10) COLLATE utf8mb4_unicode_ci", _text("mysql", 10)),
        "e": Col("ENUM('a', 'b\"q', 'é x', '中')", st.sampled_from(["a", 'b"q', "é x", "中"])),
        "u": Col("UUID", _uuids()),
        "bl": Col("BLOB", st.binary(max_size=40)),
        "vb": Col("VARBINARY(40)", st.binary(max_size=40)),
        "bn": Col("BINARY(4)", st.binary(max_size=4)),
        "d": Col("DATE", st.dates()),
        "tm": Col("TIME(6)", st.times()),
        "dt6": Col("DATETIME(6)", st.datetimes()),
        "dt0": Col("DATETIME", st.datetimes()),
        "ts": Col(
            "TIMESTAMP(6) NULL",
            st.datetimes(min_value=dt.datetime(1970, 1, 2), max_value=dt.datetime(2038, 1, 18)),
        ),
    },
}

# -- stores and tables -------------------------------------------------------------------

_PG_SESSION = (
    "SET TimeZone = 'America/St_Johns'",  # -03:30, and -03:30:52 before 1884
    "SET bytea_output = 'escape'",
)
_MYSQL_SESSION = (
    "SET collation_connection = utf8mb4_unicode_ci",
    "SET SESSION sql_mode = CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES,PIPES_AS_CONCAT')",
)


def _store(url: str, backend: str) -> SqlStore:
    store = SqlStore(Store(name=backend, url=url, display_url=url, labels={}, kind="sql"))
    engine = store.engine  # created, not yet connected: the hooks below see every connection
    session = {"postgresql": _PG_SESSION, "mysql": _MYSQL_SESSION}.get(backend, ())
    if backend == "sqlite":
        install_sqlite_sha256(engine)

    @sa.event.listens_for(engine, "connect")
    def _awkward(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        for statement in session:
            cur.execute(statement)
        cur.close()

    return store


def _quote(backend: str, name: str) -> str:
    if backend == "mysql":
        return "`" + name.replace("`", "``") + "`"
    return '"' + name.replace('"', '""') + '"'


def _create(store: SqlStore, backend: str, name: str, columns: dict[str, str]) -> sa.Table:
    """Create *name* (an integer ``id`` key and *columns*) and return it reflected as
    domicile reflects tables (:meth:`SqlStore.table`, refined)."""
    cols = ", ".join(f"{_quote(backend, n)} {t}" for n, t in columns.items())
    with store.begin("creating a test table") as conn:
        # text(), not the driver: it doubles the % a name may hold for the driver
        conn.execute(
            sa.text(f"CREATE TABLE {_quote(backend, name)} (id INTEGER PRIMARY KEY, {cols})")
        )
    return refine_reflected(store.table(name), store.engine)


@dataclass
class Rig:
    backend: str
    store: SqlStore
    table: sa.Table


@pytest.fixture(params=BACKENDS)
def rig(request: pytest.FixtureRequest, make_db: Callable[[str], str]) -> Iterator[Rig]:
    backend = str(request.param)
    store = _store(make_db(backend), backend)
    table = _create(store, backend, "everything", {n: c.sql for n, c in COLUMNS[backend].items()})
    yield Rig(backend, store, table)
    store.dispose()


def _sql_and_python(
    store: SqlStore, table: sa.Table, where: Any = None
) -> list[tuple[int, bytes | None, bytes, str | None, bytes]]:
    """Per row: (id, SQL digest, Python digest, SQL JSON text, Python encoding)."""
    columns = list(table.columns)
    digest_sql = row_digest_sql(store.dialect, columns)
    json_sql = row_json_sql(store.dialect, columns)
    assert digest_sql is not None and json_sql is not None
    query = sa.select(table, digest_sql.label("sql_digest_"), json_sql.label("sql_json_"))
    if where is not None:
        query = query.where(where)
    encoder = RowEncoder(columns)
    out = []
    with store.connect("reading digests") as conn:
        for row in conn.execute(query.order_by(table.c.id)):
            values = dict(row._mapping)
            sql_digest, sql_json = values.pop("sql_digest_"), values.pop("sql_json_")
            out.append(
                (values["id"], sql_digest, encoder.digest(values), sql_json, encoder.encode(values))
            )
    return out


def _replace_rows(store: SqlStore, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    with store.begin("writing test rows") as conn:
        conn.execute(sa.delete(table))
        conn.execute(sa.insert(table), rows)


# -- the property ----------------------------------------------------------------------------


@SETTINGS
@given(data=st.data())
def test_sql_digest_equals_python_digest(rig: Rig, data: st.DataObject) -> None:
    """Every row's SQL digest is the Python digest of the row as read back, and is
    NULL only where the module says (SQLite decimals that are stored as reals)."""
    cols = COLUMNS[rig.backend]
    row = st.fixed_dictionaries({n: st.none() | c.values for n, c in cols.items()})
    rows = [{"id": i, **r} for i, r in enumerate(data.draw(st.lists(row, min_size=1, max_size=4)))]
    _replace_rows(rig.store, rig.table, rows)
    got = _sql_and_python(rig.store, rig.table)
    assert [g[0] for g in got] == [r["id"] for r in rows]
    for written, (_id, sql, python, sql_json, encoding) in zip(rows, got, strict=True):
        sure = all(v is None or cols[n].sure(v) for n, v in written.items() if n != "id")
        if sql is None:
            assert not sure, f"NULL SQL digest for {written!r}"
            continue
        assert sql_json == encoding.decode("utf-8"), f"row {written!r}"
        assert bytes(sql) == python, f"row {written!r}"


def test_every_covered_kind_is_exercised() -> None:
    """The tables above hold every kind the module says it covers, on every engine."""
    dialects = {"sqlite": "sqlite", "postgresql": "postgresql", "mysql": "mysql"}
    reflected: dict[str, list[sa.types.TypeEngine[Any]]] = {
        "sqlite": [sa.INTEGER(), sa.BOOLEAN(), sa.NUMERIC(18, 6), sa.TEXT(), sa.CHAR(10)],
        "postgresql": [sa.INTEGER(), sa.BOOLEAN(), sa.NUMERIC(), sa.TEXT(), sa.CHAR(10)],
        "mysql": [mysql.INTEGER(), mysql.TINYINT(display_width=1), mysql.DECIMAL(30, 10)],
    }
    reflected["sqlite"] += [sa.BLOB(), sa.DATE(), sa.TIME(), sa.DATETIME()]
    reflected["postgresql"] += [postgresql.UUID(), postgresql.BYTEA(), sa.DATE()]
    reflected["postgresql"] += [postgresql.TIME(), postgresql.TIMESTAMP(timezone=True)]
    reflected["mysql"] += [mysql.TEXT(), mysql.CHAR(10), sa.UUID(), mysql.BLOB(), sa.DATE()]
    reflected["mysql"] += [mysql.TIME(fsp=6), mysql.DATETIME(fsp=6)]
    for backend, types in reflected.items():
        kinds = {d.kind_of(t) for t in types}
        assert kinds == COVERED[family(dialects[backend])], backend
        for t in types:
            assert uncovered_reason(backend, sa.Column("x", t)) is None, (backend, t)


# -- NULL where the SQL cannot be sure ---------------------------------------------------------

_SQLITE_KINDS = {
    "i": "INTEGER", "b": "BOOLEAN", "n": "NUMERIC(18, 6)", "t": "TEXT", "c": "CHAR(10)",
    "bl": "BLOB", "d": "DATE", "tm": "TIME", "ts": "DATETIME",
}  # fmt: skip
_NEAR_DATES = [
    "2021-02-28", "2021-02-29", "2020-02-29", "0000-01-01", "0001-01-01", "9999-12-31",
    "2021-13-01", "2021-1-01", "20210101", "12:34:56", "12:34:56.123456", "23:59:60.000000",
    "24:00:00", "12:34:56.5", "12:34", "2021-02-28 12:34:56", "2021-02-28 12:34:56.000001",
    "2021-02-29 12:34:56.000001", "2021-02-28T12:34:56.000001", "2021-02-28 24:00:00.000000",
    "2021-02-28 12:34:56+00:00", "2021-02-28 12:34:56.000001Z", "1", "1.5", "",
]  # fmt: skip


@pytest.fixture
def sqlite_rig(make_db: Callable[[str], str]) -> Iterator[Rig]:
    store = _store(make_db("sqlite"), "sqlite")
    table = _create(store, "sqlite", "loose", _SQLITE_KINDS)
    yield Rig("sqlite", store, table)
    store.dispose()


@SETTINGS
@given(data=st.data())
def test_sqlite_storage_classes_give_null_not_a_wrong_digest(
    sqlite_rig: Rig, data: st.DataObject
) -> None:
    """SQLite keeps any value in any column.  Values written raw (no SQLAlchemy type
    in between) in any storage class either digest as Python digests them, or give
    NULL; and where SQLAlchemy cannot read the value at all, NULL."""
    any_value = (
        st.none()
        | st.integers(-(2**63), 2**63 - 1)
        | st.floats(allow_nan=False)
        | _text("sqlite", 12)
        | st.sampled_from(_NEAR_DATES)
        | st.binary(max_size=8)
    )
    name = data.draw(st.sampled_from(sorted(_SQLITE_KINDS)))
    values = data.draw(st.lists(any_value, min_size=1, max_size=5))
    table, store = sqlite_rig.table, sqlite_rig.store
    columns = [table.c.id, table.c[name]]
    expr = row_digest_sql("sqlite", columns)
    assert expr is not None
    with store.begin("writing raw values") as conn:
        conn.execute(sa.delete(table))
        for i, v in enumerate(values):
            conn.exec_driver_sql(f'INSERT INTO loose (id, "{name}") VALUES (?, ?)', (i, v))
    with store.connect("reading") as conn:
        sql: dict[int, bytes | None] = {i: v for i, v in conn.execute(sa.select(table.c.id, expr))}
        for i in range(len(values)):
            try:
                row = conn.execute(sa.select(*columns).where(table.c.id == i)).one()
                python = RowEncoder(columns).digest(dict(row._mapping))
            except (ValueError, TypeError):  # SQLAlchemy or the digest cannot read it
                assert sql[i] is None, f"{name}: {values[i]!r}"
                continue
            got = sql[i]
            assert got is None or bytes(got) == python, f"{name}: {values[i]!r}"


def test_sqlite_null_exactly_where_documented(sqlite_rig: Rig) -> None:
    """Spot checks of which stored values the SQL reads and which it leaves to Python."""
    table, store = sqlite_rig.table, sqlite_rig.store
    cases: list[tuple[str, Any, bool]] = [
        ("i", 7, True), ("i", "seven", False), ("i", 7.5, False), ("i", b"\x07", False),
        ("b", 1, True), ("b", 0, True), ("b", 2, False), ("n", 12, True), ("n", 1.5, False),
        ("n", 2**53 + 2, False), ("t", "x\x00y", True), ("t", b"x", False),
        ("bl", b"\x00", True), ("bl", "text", False), ("d", "2020-02-29", True),
        ("d", "2021-02-29", False), ("d", "0000-01-01", False), ("tm", "23:59:59", True),
        ("tm", "24:00:00", False), ("ts", "2021-01-01 00:00:00", True),
        ("ts", "2021-01-01T00:00:00", False), ("ts", "2021-01-01 00:00:00+00:00", False),
    ]  # fmt: skip
    for name, value, digested in cases:
        columns = [table.c.id, table.c[name]]
        expr = row_digest_sql("sqlite", columns)
        assert expr is not None
        with store.begin("writing") as conn:
            conn.execute(sa.delete(table))
            conn.exec_driver_sql(f'INSERT INTO loose (id, "{name}") VALUES (1, ?)', (value,))
            sql = conn.execute(sa.select(expr)).scalar_one()
            if digested:
                row = conn.execute(sa.select(*columns)).one()
                assert bytes(sql) == RowEncoder(columns).digest(dict(row._mapping)), (name, value)
            else:
                assert sql is None, (name, value)


def _edge_rows(store: SqlStore, table: sa.Table, raw: list[tuple[str, str]]) -> None:
    """One row per (column, SQL literal), written as SQL text."""
    with store.begin("writing edge values") as conn:
        conn.execute(sa.delete(table))
        for i, (name, literal) in enumerate(raw):
            column = _quote(store.dialect, name)
            table_name = _quote(store.dialect, table.name)
            conn.exec_driver_sql(f"INSERT INTO {table_name} (id, {column}) VALUES ({i}, {literal})")


def _edge_digests(conn: sa.Connection, table: sa.Table, raw: list[tuple[str, str]]) -> list[Any]:
    out = []
    for i, (name, _literal) in enumerate(raw):
        expr = row_digest_sql(conn.dialect.name, [table.c.id, table.c[name]])
        assert expr is not None
        out.append(conn.execute(sa.select(expr).where(table.c.id == i)).scalar_one())
    return out


@pytest.mark.postgres
def test_postgresql_values_python_cannot_hold_give_null(make_db: Callable[[str], str]) -> None:
    """psycopg refuses infinities, BC dates, years past 9999 and 24:00: the SQL says NULL."""
    store = _store(make_db("postgresql"), "postgresql")
    types = {"d": "date", "tm": "time", "ts": "timestamp", "tz": "timestamptz"}
    table = _create(store, "postgresql", "edges", types)
    raw = [
        ("d", "'infinity'"), ("d", "'-infinity'"), ("d", "'0001-12-31 BC'"), ("d", "'10000-01-01'"),
        ("tm", "'24:00:00'"), ("ts", "'infinity'"), ("ts", "'0001-12-31 23:59:59 BC'"),
        ("ts", "'10000-01-01'"), ("tz", "'-infinity'"), ("tz", "'10000-01-01 00:00:00+00'"),
        ("tz", "'0001-12-31 23:59:59+00 BC'"),
    ]  # fmt: skip
    _edge_rows(store, table, raw)
    with store.connect("reading") as conn:
        assert _edge_digests(conn, table, raw) == [None] * len(raw)
    store.dispose()


@pytest.mark.postgres
def test_postgresql_digest_ignores_session_settings(make_db: Callable[[str], str]) -> None:
    """The SQL digest is the same in sessions whose DateStyle, TimeZone, bytea output
    and IntervalStyle differ (psycopg cannot read a non-ISO DateStyle, so this
    compares SQL with SQL; the property test compares it with Python)."""
    store = _store(make_db("postgresql"), "postgresql")
    cols = COLUMNS["postgresql"]
    table = _create(store, "postgresql", "everything", {n: c.sql for n, c in cols.items()})
    row = {
        "id": 1, "i2": -5, "i4": 7, "i8": 2**62, "b": True, "n": Decimal("-1.5"),
        "nu": Decimal("NaN"), "t": 'a"\\\n\x01é😀', "v": "", "c": "ab", "u": uuid.uuid4(),
        "by": b"\x00\xff", "d": dt.date(1, 1, 1), "tm": dt.time(23, 59, 59, 999999),
        "tm3": dt.time(0, 0, 0, 1000), "ts": dt.datetime(9999, 12, 31, 23, 59, 59, 999999),
        "tz": dt.datetime(1884, 1, 1, 12, 0, tzinfo=UTC),
    }  # fmt: skip
    _replace_rows(store, table, [row])
    expr = row_digest_sql("postgresql", list(table.columns))
    assert expr is not None
    sessions = [
        (),
        ("SET DateStyle = 'SQL, DMY'", "SET TimeZone = 'Pacific/Chatham'"),
        ("SET DateStyle = 'German'", "SET IntervalStyle = 'sql_standard'", "SET TimeZone = 'UTC'"),
        ("SET DateStyle = 'Postgres, MDY'", "SET bytea_output = 'hex'", "SET TimeZone = '-14'"),
    ]
    got = set()
    with store.connect("reading") as conn:
        for statements in sessions:
            for statement in statements:
                conn.exec_driver_sql(statement)
            got.add(bytes(conn.execute(sa.select(expr)).scalar_one()))
        conn.invalidate()
    python = _sql_and_python(store, table)[0][2]
    assert got == {python}
    store.dispose()


@pytest.mark.mysql
def test_mariadb_invalid_dates_and_long_times_give_null(make_db: Callable[[str], str]) -> None:
    """Zero and invalid dates (PyMySQL returns them as text) and TIMEs beyond a day
    (SQLAlchemy wraps them into one) are left to Python; valid neighbours are not."""
    store = _store(make_db("mysql"), "mysql")
    types = {"d": "DATE", "dt": "DATETIME(6)", "ts": "TIMESTAMP(6) NULL", "tm": "TIME(6)"}
    table = _create(store, "mysql", "edges", types)
    raw = [
        ("d", "'0000-00-00'"), ("d", "'2021-02-31'"), ("d", "'2021-00-10'"), ("d", "'0000-01-01'"),
        ("dt", "'0000-00-00 00:00:00'"), ("dt", "'2021-02-30 10:00:00'"),
        ("ts", "'0000-00-00 00:00:00'"), ("tm", "'24:00:00'"), ("tm", "'-00:00:01'"),
        ("tm", "'838:59:59'"), ("tm", "'-838:59:59'"),
    ]  # fmt: skip
    valid = [("d", "'0001-01-01'"), ("dt", "'2021-02-28 10:00:00.5'"), ("tm", "'23:59:59.999999'")]
    with store.connect("session") as conn:  # the session that writes allows invalid dates
        conn.exec_driver_sql("SET SESSION sql_mode = 'ALLOW_INVALID_DATES'")
        conn.commit()
        conn.execute(sa.delete(table))
        for i, (name, literal) in enumerate(raw + valid):
            conn.exec_driver_sql(f"INSERT INTO edges (id, `{name}`) VALUES ({i}, {literal})")
        conn.commit()
        assert _edge_digests(conn, table, raw) == [None] * len(raw)
        conn.invalidate()  # do not hand the permissive session back to the pool
    got = _sql_and_python(store, table, table.c.id >= len(raw))
    assert len(got) == len(valid)
    assert all(sql is not None and bytes(sql) == python for _i, sql, python, _j, _e in got)
    store.dispose()


@pytest.mark.mysql
def test_mariadb_timestamp_digest_follows_the_session_zone(make_db: Callable[[str], str]) -> None:
    """TIMESTAMP is read in the session's zone by the SQL and by Python alike (domicile's
    sessions are UTC), so the two digests agree in any session."""
    store = _store(make_db("mysql"), "mysql")
    table = _create(store, "mysql", "stamps", {"ts": "TIMESTAMP(6) NULL"})
    _replace_rows(store, table, [{"id": 1, "ts": dt.datetime(2024, 3, 31, 1, 30, 0, 5)}])
    columns = list(table.columns)
    expr = row_digest_sql("mysql", columns)
    assert expr is not None
    digests = set()
    with store.connect("reading") as conn:
        for zone in ("+00:00", "+05:30", "-11:00"):
            conn.exec_driver_sql(f"SET time_zone = '{zone}'")
            row = conn.execute(sa.select(table, expr.label("sql_digest_"))).one()
            values = dict(row._mapping)
            sql = values.pop("sql_digest_")
            assert bytes(sql) == RowEncoder(columns).digest(values), zone
            digests.add(bytes(sql))
        conn.invalidate()
    assert len(digests) == 3  # the wall clock differs, so does the digest
    store.dispose()


# -- names and order ---------------------------------------------------------------------------

_NAMES = {
    "sqlite": ["B", "a", "é", 'say "hi"', "it's", "back\\slash", "100%", "名前", "😀", "Z z"],
    "postgresql": ["B", "a", "é", 'say "hi"', "it's", "back\\slash", "100%", "名前", "😀", "Z z"],
    # MariaDB identifiers are BMP characters, without trailing spaces
    "mysql": [
        "B",
        "a",
        "é",
        'say "hi"',
        "it's",
        "back\\slash",
        "100%",
        "名前",
        "semi;colon",
        "Z z",
    ],
}


@pytest.mark.parametrize("backend", BACKENDS)
def test_names_are_sorted_and_escaped_as_in_python(
    backend: str, make_db: Callable[[str], str]
) -> None:
    """Pairs are ordered by name (code points, as Python sorts) whatever the order of the
    columns passed, and names with quotes, backslashes, % and non-ASCII are written as
    Python's json writes them."""
    store = _store(make_db(backend), backend)
    names = _NAMES[backend]
    table = _create(store, backend, "names", {n: "TEXT" for n in names})
    _replace_rows(store, table, [{"id": 1, **{n: f"{n}!" for n in names}}])
    forward = list(table.columns)
    backward = forward[::-1]
    exprs = [row_digest_sql(backend, cols) for cols in (forward, backward)]
    assert exprs[0] is not None and exprs[1] is not None
    labelled = [e.label(f"d{i}") for i, e in enumerate(exprs) if e is not None]
    with store.connect("reading") as conn:
        row = conn.execute(sa.select(table, *labelled)).one()
    values = dict(row._mapping)
    sql = [bytes(values.pop("d0")), bytes(values.pop("d1"))]
    assert sql == [RowEncoder(forward).digest(values)] * 2
    assert RowEncoder(backward).digest(values) == sql[0]
    store.dispose()


def test_a_name_listed_twice_is_refused() -> None:
    column = sa.Column("x", sa.Integer)
    with pytest.raises(ValueError, match="listed twice"):
        row_digest_sql("sqlite", [column, sa.Column("x", sa.Integer)])


def test_no_columns_digests_the_empty_row() -> None:
    engine = sa.create_engine("sqlite://")
    install_sqlite_sha256(engine)
    expr = row_digest_sql("sqlite", [])
    assert expr is not None
    with engine.connect() as conn:
        assert conn.execute(sa.select(expr)).scalar_one() == RowEncoder([]).digest({})
    engine.dispose()


# -- what has no SQL form ----------------------------------------------------------------------

_UNCOVERED = {
    # an untyped column (NullType) is covered: tests/test_sql_digest_stored.py
    "sqlite": {"f": "REAL", "db": "DOUBLE", "j": "JSON", "u32": "CHAR(32)"},
    "postgresql": {
        "f": "double precision", "r": "real", "j": "jsonb", "js": "json", "u32": "char(32)",
        "iv": "interval", "tt": "time with time zone", "ar": "integer[]", "ip": "inet",
    },
    "mysql": {
        "f": "DOUBLE", "fl": "FLOAT", "j": "JSON", "u32": "CHAR(32)", "s": "SET('a', 'b')",
        "z": "INT ZEROFILL", "zd": "DECIMAL(5, 2) ZEROFILL", "y": "YEAR", "bit": "BIT(3)",
    },
}  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
def test_uncovered_kinds_give_none(backend: str, make_db: Callable[[str], str]) -> None:
    """A reflected column the SQL cannot digest makes the whole expression None, and
    :func:`uncovered_reason` says why; the covered columns alone still get one."""
    store = _store(make_db(backend), backend)
    table = _create(store, backend, "uncovered", _UNCOVERED[backend])
    for name in _UNCOVERED[backend]:
        columns = [table.c.id, table.c[name]]
        assert row_digest_sql(backend, columns) is None, name
        assert row_json_sql(backend, columns) is None, name
        assert uncovered_reason(backend, table.c[name]), name
    assert row_digest_sql(backend, [table.c.id]) is not None
    store.dispose()


class _Upper(sa.types.TypeDecorator[str]):
    impl = sa.Text
    cache_ok = True

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        return None if value is None else value.upper()


def test_other_columns_and_dialects_give_none() -> None:
    """A TypeDecorator (its Python value is processed), a variant of another kind, an
    Interval (an emulated TypeDecorator), a Numeric read as floats, an Enum of Python
    members and an unknown dialect have no SQL form."""
    text = sa.Column("t", sa.Text)
    assert row_digest_sql("oracle", [text]) is None
    assert uncovered_reason("oracle", text)
    assert row_digest_sql("sqlite", [sa.Column("u", _Upper())]) is None
    assert row_digest_sql("postgresql", [sa.Column("i", sa.Interval())]) is None
    variant = sa.Column("v", sa.Integer().with_variant(sa.Text(), "postgresql"))
    assert row_digest_sql("postgresql", [variant]) is None
    assert row_digest_sql("sqlite", [variant]) is not None
    assert row_digest_sql("mariadb", [text]) is not None  # MariaDB's own dialect name
    assert row_digest_sql("sqlite", [sa.Column("u", sa.Uuid())]) is None
    floating = sa.Column("n", sa.Numeric(10, 2, asdecimal=False))
    assert row_digest_sql("postgresql", [floating]) is None
    assert row_digest_sql("mysql", [floating]) is None
    assert row_digest_sql("sqlite", [floating]) is not None  # integers only: exact either way

    class Colour(enum.Enum):
        RED = "red"

    assert row_digest_sql("postgresql", [sa.Column("e", sa.Enum(Colour))]) is None
    assert row_digest_sql("postgresql", [sa.Column("e", sa.Enum("red", name="c"))]) is not None


def test_register_sqlite_sha256_hashes_utf8() -> None:
    import hashlib
    import sqlite3

    conn = sqlite3.connect(":memory:")
    register_sqlite_sha256(conn)
    text = 'é😀"\\x\x00'
    got = conn.execute("SELECT domicile_sha256(?), domicile_sha256(NULL)", (text,)).fetchone()
    assert got == (hashlib.sha256(text.encode()).digest(), None)
    conn.close()
