"""``prepare``, the plan's DDL, reference rows verified at home, ``status --json``.

On the rental shop of tests/rentalkit.py (empty homes), checked by the test's
own SQL: tables exist at each home before anything moves, generated ids there
start past every source's largest plus the headroom and never go backwards,
and a home that changes the reference rows it is given stops the run before
anything is deleted.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import rentalkit as rk
from domicile.cli import run_cli

PAIRS = [("sqlite", "sqlite"), ("postgresql", "postgresql"), ("sqlite", "mysql")]


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = run_cli(list(args))
    out = capsys.readouterr()
    return code, out.out, out.out + out.err


def _shop(tmp_path: Path, make_db: Any, pair: tuple[str, str]) -> tuple[Path, str, dict[str, str]]:
    legacy = make_db(pair[0])
    rk.build_legacy(legacy)
    homes = {home: make_db(pair[1]) for _, home in rk.JURISDICTIONS.values()}
    path = rk.write_map(tmp_path, rk.data_map(legacy, homes, f"sqlite:///{tmp_path / 'st.db'}"))
    return path, legacy, homes


def _insert_customer(url: str) -> int:
    """Insert (then delete) a customer at *url* without an id; the id the store generated."""
    engine = sa.create_engine(url)
    try:
        md = sa.MetaData()
        customer = sa.Table("customer", md, autoload_with=engine)
        row = {
            "store_id": 1,
            "first_name": "NEW",
            "last_name": "SIGNUP",
            "address_id": 1,
            "active": True,
            "create_date": dt.date(2026, 12, 1),
        }
        if "last_update" in customer.c and customer.c.last_update.server_default is None:
            row["last_update"] = dt.datetime(2026, 12, 1)
        with engine.begin() as conn:
            if engine.dialect.name == "mysql":
                conn.exec_driver_sql("SET SESSION foreign_key_checks = 0")
            elif engine.dialect.name == "postgresql":
                conn.exec_driver_sql("SET session_replication_role = replica")  # no FK check
            result = conn.execute(customer.insert().values(**row))
            new_id = int(result.inserted_primary_key[0])
            # gone again (the generator stays past it): the test's row must not move
            conn.execute(customer.delete().where(customer.c.customer_id == new_id))
            return new_id
    finally:
        engine.dispose()


@pytest.mark.parametrize("pair", PAIRS, ids=[f"{a}-{b}" for a, b in PAIRS])
def test_prepare_creates_home_schemas_with_ids_past_the_sources(tmp_path, make_db, capsys, pair):
    path, legacy, homes = _shop(tmp_path, make_db, pair)
    code, out, _ = _cli(capsys, "plan", "-c", str(path), "-o", str(tmp_path / "plan.json"))
    assert code == 0, out
    planned = json.loads((tmp_path / "plan.json").read_text())
    assert set(planned["ddl"]) == set(homes), planned.get("ddl")
    assert any("CREATE TABLE" in s and "customer" in s for s in planned["ddl"]["us"])
    before = {h: rk.relations(u)[0] for h, u in homes.items()}
    assert all(not tables for tables in before.values()), before  # plan created nothing

    code, out, err = _cli(capsys, "prepare", "-c", str(path), "--headroom", "1000")
    assert code == 0, err
    top = max(rk.keys(legacy, "customer"))
    for home, url in homes.items():
        tables = rk.relations(url)[0]
        assert {"customer", "address", "rental", "payment", "city", "country"} <= tables, home
        assert rk.count(url, "customer") == 0  # the schema only: nothing moved
        assert _insert_customer(url) > top + 1000, home
    # a second prepare never moves a sequence backwards
    us_next = _insert_customer(homes["us"])
    code, out, err = _cli(capsys, "prepare", "-c", str(path), "--headroom", "0")
    assert code == 0, err
    assert _insert_customer(homes["us"]) > us_next

    # the plan has nothing left to create; the run moves into the prepared tables
    code, out, _ = _cli(capsys, "plan", "-c", str(path), "-o", str(tmp_path / "plan2.json"))
    assert code == 0, out
    assert "ddl" not in json.loads((tmp_path / "plan2.json").read_text())
    code, out, err = _cli(capsys, "run", "-c", str(path))
    assert code == 0, err[-2000:]
    assert not rk.dangling(homes["us"])


def test_prepare_refuses_an_untranslatable_type_and_creates_nothing(tmp_path, make_db, capsys):
    path, legacy, homes = _shop(tmp_path, make_db, ("postgresql", "mysql"))
    with sa.create_engine(legacy).begin() as conn:
        conn.exec_driver_sql("ALTER TABLE customer ADD COLUMN membership interval")
    code, out, err = _cli(capsys, "prepare", "-c", str(path))
    assert code == 2, err
    assert "membership" in err and "nothing was created" in err
    assert all(not rk.relations(u)[0] for u in homes.values())
    code, out, err = _cli(capsys, "plan", "-c", str(path))
    assert code == 2 and "membership" in out, out
    assert all(not rk.relations(u)[0] for u in homes.values())


def test_reference_rows_changed_at_home_stop_the_run_before_any_delete(tmp_path, make_db, capsys):
    path, legacy, homes = _shop(tmp_path, make_db, ("sqlite", "sqlite"))
    code, _, err = _cli(capsys, "prepare", "-c", str(path))
    assert code == 0, err
    for url in homes.values():  # a home rule that rewrites the catalogue it is given
        with sa.create_engine(url).begin() as conn:
            conn.exec_driver_sql(
                "CREATE TRIGGER shout AFTER INSERT ON country BEGIN "
                "UPDATE country SET country = upper(country) WHERE country_id = NEW.country_id; "
                "END"
            )
    before = {t: rk.count(legacy, t) for t in rk.TABLES}
    code, out, err = _cli(capsys, "run", "-c", str(path))
    assert code == 4, err[-2000:]
    assert "country reference rows read back" in out + err
    assert {t: rk.count(legacy, t) for t in rk.TABLES} == before  # nothing deleted
    for url in homes.values():
        assert rk.count(url, "customer") == 0 and rk.count(url, "country") == 0
    code, stdout, err = _cli(capsys, "status", "-c", str(path), "--json")
    assert code == 0, err
    runs = json.loads(stdout)["runs"]
    assert [r["status"] for r in runs] == ["failed"], runs
    code, stdout, err = _cli(capsys, "status", runs[0]["run"], "-c", str(path), "--json")
    status = json.loads(stdout)
    assert status["run"]["status"] == "failed"
    assert any(b["error"] and "reference rows" in b["error"] for b in status["batches"])


def test_plan_refuses_a_home_cycle_whose_keys_cannot_be_deferred(tmp_path, make_db, capsys):
    path, legacy, homes = _shop(tmp_path, make_db, ("postgresql", "postgresql"))
    code, _, err = _cli(capsys, "prepare", "-c", str(path))
    assert code == 0, err
    engine = sa.create_engine(homes["us"])
    with engine.begin() as conn:  # the staff <-> store keys made by hand, not deferrable
        names = conn.exec_driver_sql(
            "SELECT conrelid::regclass::text, conname FROM pg_constraint "
            "WHERE contype = 'f' AND conrelid::regclass::text IN ('staff', 'store')"
        ).all()
        for table, name in names:
            conn.exec_driver_sql(f'ALTER TABLE {table} ALTER CONSTRAINT "{name}" NOT DEFERRABLE')
    engine.dispose()
    before = {t: rk.count(legacy, t) for t in rk.TABLES}
    code, out, _ = _cli(capsys, "plan", "-c", str(path))
    assert code == 2, out
    assert "DEFERRABLE" in out and "store" in out and "staff" in out
    code, out, err = _cli(capsys, "run", "-c", str(path))
    assert code == 2, err
    assert {t: rk.count(legacy, t) for t in rk.TABLES} == before
    assert rk.count(homes["us"], "customer") == 0


def _fingerprint(urls: list[str], domicile_tables: bool = True) -> list[dict[str, Any]]:
    return [rk.fingerprint(u, domicile_tables=domicile_tables) for u in urls]


def test_a_directory_path_through_an_undeclared_table_is_refused(tmp_path, make_db, capsys):
    path, legacy, homes = _shop(tmp_path, make_db, ("sqlite", "sqlite"))
    data = rk.data_map(legacy, homes, f"sqlite:///{tmp_path / 'st.db'}")
    del data["datasets"]["city"]  # the path goes through city, which no dataset declares
    path = rk.write_map(tmp_path, data)
    before = _fingerprint([legacy, *homes.values()])
    code, out, err = _cli(capsys, "plan", "-c", str(path))
    assert code == 2, out + err
    assert "city" in err and "no dataset declares" in err and "reference: true" in err
    assert "Traceback" not in out + err
    assert _fingerprint([legacy, *homes.values()]) == before


def test_a_view_directory_missing_at_a_home_is_refused_by_plan(tmp_path, make_db, capsys):
    path, legacy, homes = _shop(tmp_path, make_db, ("sqlite", "sqlite"))
    with sa.create_engine(legacy).begin() as conn:  # the directory as a view of the base table
        conn.exec_driver_sql(
            "CREATE VIEW customer_country AS SELECT c.customer_id AS id, co.country AS country"
            " FROM customer c JOIN address a ON a.address_id = c.address_id"
            " JOIN city ci ON ci.city_id = a.city_id"
            " JOIN country co ON co.country_id = ci.country_id"
        )
    data = rk.data_map(legacy, homes, f"sqlite:///{tmp_path / 'st.db'}")
    data["datasets"]["directory"] = {"table": "customer_country", "key": ["id"], "reference": True}
    data["subjects"] = {"dataset": "directory", "id": "id", "country": "country"}
    path = rk.write_map(tmp_path, data)
    before = _fingerprint([legacy, *homes.values()])
    code, out, err = _cli(capsys, "plan", "-c", str(path))
    assert code == 2, out + err
    assert "customer_country" in out and "is a view" in out, out
    assert _fingerprint([legacy, *homes.values()]) == before
    plain = _fingerprint([legacy, *homes.values()], domicile_tables=False)
    code, out, err = _cli(capsys, "run", "-c", str(path))
    assert code == 2, out + err
    # run writes its store identity markers (domicile_* tables) first; nothing else changed
    assert _fingerprint([legacy, *homes.values()], domicile_tables=False) == plain
