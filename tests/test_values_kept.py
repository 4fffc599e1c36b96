"""Values reach a home of the same engine exactly as they were stored.

PostgreSQL: an ``interval`` of ``1 mon 2 days`` is not 32 days, and a
``json`` document keeps its spacing and key order; SQLite: text timestamps in
any format, decimals stored as integers, JSON text, all unchanged.  Checked by
the test's own SQL over each row's stored form (``col::text`` on PostgreSQL,
``quote(col)`` on SQLite) before and after a move.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from domicile.cli import run_cli

PG_SCHEMA = [
    "CREATE TABLE users (id integer PRIMARY KEY, country text NOT NULL)",
    "CREATE TABLE plans (id integer PRIMARY KEY, user_id integer NOT NULL REFERENCES users(id),"
    " every interval, doc json, stamp timestamptz, amount numeric(10, 3), tags text[])",
]
PG_ROWS = [
    "INSERT INTO users VALUES (1, 'US'), (2, 'SG')",
    "INSERT INTO plans VALUES"
    " (10, 1, '1 mon 2 days', '{\"b\": 1,   \"a\": [2, 3]}', '2026-01-02 03:04:05.123456+05',"
    " 1.500, '{x,\"y z\"}'),"
    " (11, 1, '-1 year 3 mons 04:05:06.5', '[1,2]', 'infinity', 0, NULL),"
    " (12, 2, '1 day', '{}', now(), 2, '{}')",
]
SQLITE_SCHEMA = [
    "CREATE TABLE users (id INTEGER PRIMARY KEY, country TEXT NOT NULL)",
    "CREATE TABLE plans (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL REFERENCES users(id),"
    " stamp DATETIME, day DATE, amount NUMERIC(10, 2), doc JSON, flag BOOLEAN)",
]
SQLITE_ROWS = [
    "INSERT INTO users VALUES (1, 'US'), (2, 'SG')",
    "INSERT INTO plans VALUES"
    " (10, 1, '2006-02-15 04:45:30', '2006-02-15', 10, '{\"b\":1,  \"a\":2}', 1),"
    " (11, 1, '2006-02-15T04:45:30.5Z', '2006-2-15', '10.50', '[ 1 ]', 2),"
    " (12, 2, 1139978730, NULL, 3.25, NULL, 0)",
]


def _stored(url: str) -> dict[int, tuple[object, ...]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            cols = [c["name"] for c in sa.inspect(conn).get_columns("plans")]
            if engine.dialect.name == "postgresql":
                exprs = ", ".join(f"{c}::text" for c in cols)
            else:
                exprs = ", ".join(f"quote({c}), typeof({c})" for c in cols)
            rows = conn.exec_driver_sql(f"SELECT id, {exprs} FROM plans").all()
        return {int(r[0]): tuple(r[1:]) for r in rows}
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_move_between_two_stores_of_one_engine_keeps_every_stored_value(
    tmp_path: Path, make_db, capsys, backend
):
    legacy, home = make_db(backend), make_db(backend)
    engine = sa.create_engine(legacy)
    with engine.begin() as conn:
        for statement in (
            (PG_SCHEMA + PG_ROWS) if backend == "postgresql" else (SQLITE_SCHEMA + SQLITE_ROWS)
        ):
            conn.exec_driver_sql(statement)
    engine.dispose()
    before = _stored(legacy)
    data = {
        "version": 1,
        "state": f"sqlite:///{tmp_path / 'state.db'}",
        "stores": {
            "legacy": {"url": legacy, "labels": {"country": "SG"}},
            "us": {"url": home, "labels": {"country": "US"}},
        },
        "subjects": {"dataset": "users", "id": "id", "country": "country"},
        "jurisdictions": {"US": {"countries": ["US"], "allowed": {"country": "US"}, "home": "us"}},
        "datasets": {
            "users": {"table": "users", "owner": "id"},
            "plans": {"table": "plans", "owner": "user_id"},
        },
    }
    path = tmp_path / "domicile.yaml"
    path.write_text(yaml.safe_dump(data))
    code = run_cli(["run", "-c", str(path)])
    out = capsys.readouterr()
    assert code == 0, out.out[-3000:] + out.err[-3000:]
    after_home, after_legacy = _stored(home), _stored(legacy)
    assert after_home == {k: v for k, v in before.items() if k in (10, 11)}
    assert after_legacy == {12: before[12]}
