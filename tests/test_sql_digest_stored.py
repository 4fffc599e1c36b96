"""The SQL row digest of a table read in its stored form equals the Python digest.

Moves between two SQLite or two PostgreSQL stores read, compare and write
rows in their stored form (``SqlStore.stored_table``): every SQLite column
untyped (``NullType``, the value as the driver returns it), and on PostgreSQL
intervals, ``json`` and non-key dates and timestamps as their text
(``AsText``).  The move computes those rows' digests in SQL: here Hypothesis
writes raw values of every storage class into columns of many declared
types and checks, row by row, that a non-NULL SQL digest is byte-for-byte
the Python digest of the row read through the stored table, and that the
SQL leaves exactly the rows it cannot write (a SQLite real) to Python.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domicile.connectors.sql import SqlStore
from domicile.connectors.sql_digest import row_digest_sql
from domicile.digest import RowEncoder
from domicile.model import Store

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

_SPECIAL = ['"', "\\", "\x00", "\x01", "\x1f", "\x7f", "\n", "é", "\u2028", "中", "😀", "'", "%"]


def _text(max_size: int = 12, nul: bool = True) -> st.SearchStrategy[str]:
    banned = "" if nul else "\x00"
    chars = st.characters(codec="utf-8", exclude_characters=banned) | st.sampled_from(
        [c for c in _SPECIAL if c not in banned]
    )
    return st.lists(chars, max_size=max_size).map("".join)


def _store(url: str, name: str) -> SqlStore:
    return SqlStore(Store(name=name, url=url, display_url=url, labels={}, kind="sql"))


# -- SQLite: every column untyped --------------------------------------------------------

_SQLITE_DECLARED = {
    "i": "INTEGER",
    "t": "TEXT",
    "r": "REAL",
    "n": "NUMERIC(10, 2)",
    "bl": "BLOB",
    "ts": "DATETIME",
    "b": "BOOLEAN",
    "u": "",  # no declared type at all
}


@pytest.fixture
def sqlite_loose(make_db: Callable[[str], str]) -> Any:
    store = _store(make_db("sqlite"), "loose")
    cols = ", ".join(f'"{n}" {t}' for n, t in _SQLITE_DECLARED.items())
    with store.begin("creating") as conn:
        conn.exec_driver_sql(f"CREATE TABLE loose (id INTEGER PRIMARY KEY, {cols})")
    store.forget("loose")
    yield store
    store.dispose()


_RAW = (
    st.none()
    | st.integers(-(2**63), 2**63 - 1)
    | _text()
    | st.binary(max_size=8)
    | st.sampled_from(["2021-02-28 12:34:56", "1", "1.50", "", "true"])
)


@SETTINGS
@given(data=st.data())
def test_sqlite_stored_form_digest_equals_python(sqlite_loose: SqlStore, data: Any) -> None:
    """Integers, texts, blobs and NULLs in any declared column: the SQL digest of the
    untyped row is the Python digest, for every row; a real leaves the row to Python."""
    store = sqlite_loose
    names = list(_SQLITE_DECLARED)
    rows = data.draw(
        st.lists(st.fixed_dictionaries({n: _RAW for n in names}), min_size=1, max_size=6)
    )
    real_at = data.draw(st.sampled_from([None, *names]))
    with store.begin("writing raw values") as conn:
        conn.exec_driver_sql("DELETE FROM loose")
        for i, row in enumerate(rows):
            values = dict(row)
            if real_at is not None and i == 0:
                values[real_at] = 0.1  # a real in any column: the SQL leaves it to Python
            marks = ", ".join("?" for _ in names)
            quoted = ", ".join(f'"{n}"' for n in names)
            conn.exec_driver_sql(
                f"INSERT INTO loose (id, {quoted}) VALUES (?, {marks})",
                (i, *[values[n] for n in names]),
            )
    table = store.stored_table("loose")
    assert all(isinstance(c.type, sa.types.NullType) for c in table.columns)
    expr = row_digest_sql("sqlite", list(table.columns))
    assert expr is not None, "the untyped stored form has an SQL digest on SQLite"
    encoder = RowEncoder(list(table.columns))
    reals = " OR ".join(f"typeof(\"{n}\") = 'real'" for n in names)
    with store.connect("reading") as conn:
        got = conn.execute(sa.select(table, expr.label("_d")).order_by(table.c.id)).all()
        # a column's affinity may turn the real into text or keep it: ask SQLite
        has_real = dict(conn.exec_driver_sql(f"SELECT id, {reals} FROM loose").all())
    for i, r in enumerate(got):
        row = dict(zip([c.name for c in table.columns], r[:-1], strict=True))
        python = encoder.digest(row)
        if has_real[i]:
            assert r[-1] is None, "a real is never digested in SQL"
        else:
            assert r[-1] is not None, f"row {row!r} should be digested in SQL"
            assert bytes(r[-1]) == python, f"row {row!r}"


# -- PostgreSQL: text forms ---------------------------------------------------------------

_PG_SESSION = ("SET TimeZone = 'America/St_Johns'", "SET IntervalStyle = 'postgres'")


@pytest.fixture
def pg_texts(make_db: Callable[[str], str]) -> Any:
    store = _pg_store(make_db)
    yield store
    store.dispose()


@pytest.mark.postgres
@SETTINGS
@given(data=st.data())
def test_postgresql_stored_form_digest_equals_python(pg_texts: SqlStore, data: Any) -> None:
    """Intervals, json documents (spacing, key order) and non-key dates, timestamps
    (infinities included) read as their text: the SQL digest is the Python digest."""
    store = pg_texts
    if True:
        table = store.stored_table("texts")
        assert {c.name for c in table.columns if type(c.type).__name__ == "AsText"} == {
            "iv",
            "js",
            "d",
            "ts",
            "tz",
        }
        rows = data.draw(
            st.lists(
                st.fixed_dictionaries(
                    {
                        "iv": st.none() | st.sampled_from(["1 mon", "2 days 03:04:05", "-1 year"]),
                        "js": st.none()
                        | st.sampled_from(['{"b": 1,  "a": [1, 2.50]}', '"x"', "null", "[]"])
                        | _text(8, nul=False).map(lambda s: '{"k": ' + _json(s) + "}"),
                        "d": st.none()
                        | st.dates().map(str)
                        | st.sampled_from(["infinity", "-infinity"]),
                        "ts": st.none()
                        | st.datetimes(min_value=dt.datetime(1, 1, 2)).map(str)
                        | st.sampled_from(["infinity"]),
                        "tz": st.none()
                        | st.datetimes(min_value=dt.datetime(1900, 1, 2)).map(str)
                        | st.sampled_from(["-infinity"]),
                        "t": st.none() | _text(8, nul=False),
                    }
                ),
                min_size=1,
                max_size=5,
            )
        )
        with store.begin("writing") as conn:
            conn.exec_driver_sql("DELETE FROM texts")
            for i, row in enumerate(rows):
                conn.exec_driver_sql(
                    "INSERT INTO texts (id, iv, js, d, ts, tz, t) VALUES "
                    "(%(id)s, %(iv)s, %(js)s, %(d)s, %(ts)s, %(tz)s, %(t)s)",
                    {"id": i, **row},
                )
        expr = row_digest_sql("postgresql", list(table.columns))
        assert expr is not None, "the text stored forms have an SQL digest on PostgreSQL"
        encoder = RowEncoder(list(table.columns))
        with store.connect("reading") as conn:
            got = conn.execute(sa.select(table, expr.label("_d")).order_by(table.c.id)).all()
        assert len(got) == len(rows)
        for r in got:
            row = dict(zip([c.name for c in table.columns], r[:-1], strict=True))
            assert r[-1] is not None, f"row {row!r} should be digested in SQL"
            assert bytes(r[-1]) == encoder.digest(row), f"row {row!r}"


def _json(s: str) -> str:
    import json

    return json.dumps(s)


def _pg_store(make_db: Callable[[str], str]) -> SqlStore:
    store = _store(make_db("postgresql"), "texts")

    @sa.event.listens_for(store.engine, "connect")
    def _awkward(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        for statement in _PG_SESSION:
            cur.execute(statement)
        cur.close()

    with store.begin("creating") as conn:
        conn.exec_driver_sql(
            "CREATE TABLE IF NOT EXISTS texts (id int PRIMARY KEY, iv interval, js json, d date,"
            " ts timestamp, tz timestamptz, t text)"
        )
    store.forget("texts")
    return store
