"""The write guard on SQLite, PostgreSQL and MariaDB, after a real move.

One fleet per engine (tests/fleetkit.py: sg legacy, us and ca custodians):
the US subjects are moved home, the guard is installed, and rows are written
with the driver's own SQL — a guarded subject's new row abroad is refused
naming its home store, an unrestricted or not-yet-moved subject's row and a
write at home pass, an exception still lets its rows in, an owner found
through a path is refused too, ``remove`` leaves the catalog exactly as it
was, and a run of the CA subjects refreshes the guarded set.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.schema import CreateTable

import fleetkit
from domicile import api
from domicile.cli import run_cli


def _engine(url: str) -> sa.Engine:
    return sa.create_engine(url)


def _write(url: str, sql: str) -> str | None:
    """Run *sql* in its own transaction; the error's text, or None when it passed."""
    engine = _engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(sql)
        return None
    except sa.exc.DBAPIError as exc:
        return str(exc.orig)
    finally:
        engine.dispose()


def _catalog(url: str) -> dict[str, Any]:
    """The store's schema from its own catalog, plus SQLAlchemy's reflected DDL."""
    engine = _engine(url)
    out: dict[str, Any] = {}
    try:
        with engine.connect() as conn:
            name = engine.dialect.name
            if name == "sqlite":
                out["master"] = conn.exec_driver_sql(
                    "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
                ).all()
            elif name == "postgresql":
                out["classes"] = conn.exec_driver_sql(
                    "SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n "
                    "ON n.oid = c.relnamespace WHERE n.nspname = 'public' ORDER BY 1"
                ).all()
                out["triggers"] = conn.exec_driver_sql(
                    "SELECT pg_get_triggerdef(oid) FROM pg_trigger "
                    "WHERE NOT tgisinternal ORDER BY 1"
                ).all()
                out["functions"] = conn.exec_driver_sql(
                    "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                    "WHERE n.nspname = 'public' ORDER BY 1"
                ).all()
                out["indexes"] = conn.exec_driver_sql(
                    "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1"
                ).all()
                out["types"] = conn.exec_driver_sql(
                    "SELECT t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
                    "WHERE n.nspname = 'public' ORDER BY 1"
                ).all()
            else:
                tables = conn.exec_driver_sql(
                    "SELECT TABLE_NAME FROM information_schema.TABLES "
                    "WHERE TABLE_SCHEMA = DATABASE() ORDER BY 1"
                ).all()
                out["tables"] = [
                    conn.exec_driver_sql(f"SHOW CREATE TABLE `{t}`").one()[1] for (t,) in tables
                ]
                out["triggers"] = conn.exec_driver_sql(
                    "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS "
                    "WHERE TRIGGER_SCHEMA = DATABASE() ORDER BY 1"
                ).all()
                out["routines"] = conn.exec_driver_sql(
                    "SELECT ROUTINE_NAME FROM information_schema.ROUTINES "
                    "WHERE ROUTINE_SCHEMA = DATABASE() ORDER BY 1"
                ).all()
        md = sa.MetaData()
        md.reflect(engine)
        out["ddl"] = sorted(str(CreateTable(t).compile(engine)) for t in md.sorted_tables)
    finally:
        engine.dispose()
    return out


def _status(path: Path) -> dict[str, Any]:
    return {s.store: s for s in api.guard_status(path)}


@pytest.mark.parametrize("engine", ["sqlite", "postgresql", "mysql"])
def test_guard_refuses_rows_of_subjects_moved_home(tmp_path, make_db, capsys, engine):
    urls = {s: make_db(engine) for s in ("sg", "us", "ca")}
    path = fleetkit.build(tmp_path, urls)
    assert api.run(path, api.RunOptions(scope=["US"])).status == "done"
    # a violating invoice of US subject 1 written abroad before the guard exists:
    # the path tests below find their owner through it
    assert _write(urls["sg"], "INSERT INTO invoice VALUES (600, 1, 3.00)") is None
    before = {s: _catalog(u) for s, u in urls.items()}

    assert run_cli(["guard", "install", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "sg: guarded for US, CA" in out
    status = _status(path)
    assert status["sg"].jurisdictions == ("US", "CA") and "likes" in status["sg"].tables
    # US 1, 2 (moved) and 6 (created at home); CA 8 (at home); CA 3 and 7 not moved yet
    assert status["sg"].refused == 4
    assert status["us"].jurisdictions == ("CA",) and status["us"].refused == 1
    assert status["sg"].hashed == (engine != "sqlite")

    refused = _write(urls["sg"], "INSERT INTO likes (user_id, post_id) VALUES (1, 99)")
    assert refused is not None and "domicile guard" in refused and "store 'us'" in refused
    # an unrestricted subject (BR), a CA subject not yet moved, and a write at home pass
    assert _write(urls["sg"], "INSERT INTO likes (user_id, post_id) VALUES (4, 99)") is None
    assert _write(urls["sg"], "INSERT INTO likes (user_id, post_id) VALUES (3, 99)") is None
    assert _write(urls["us"], "INSERT INTO likes (user_id, post_id) VALUES (1, 99)") is None
    # handing a row abroad to a guarded subject is an UPDATE the guard refuses
    refused = _write(urls["sg"], "UPDATE likes SET user_id = 2 WHERE user_id = 4")
    assert refused is not None and "store 'us'" in refused
    # the exception for public posts still lets them in; a private one is refused
    assert _write(urls["sg"], "INSERT INTO posts VALUES (20, 1, 'public')") is None
    assert _write(urls["sg"], "INSERT INTO posts VALUES (21, 1, 'private')") is not None
    assert _write(urls["sg"], "UPDATE posts SET visibility = 'private' WHERE id = 20") is not None
    # owners through paths: a line of invoice 600 (customer 1), an item of that line
    refused = _write(urls["sg"], "INSERT INTO invoice_line VALUES (7000, 600, 1.00)")
    assert refused is not None and "store 'us'" in refused
    assert _write(urls["sg"], "INSERT INTO invoice_line VALUES (7001, 101, 1.00)") is None
    # two owners: a message from an unrestricted subject to guarded subject 1
    assert _write(urls["sg"], "INSERT INTO messages VALUES (50, 4, 1, 'x')") is not None
    # the CA guard at us: CA subject 8 (home in ca) may not write there
    refused = _write(urls["us"], "INSERT INTO likes (user_id, post_id) VALUES (8, 99)")
    assert refused is not None and "store 'ca'" in refused
    # multi_owner each: a US-CA record may sit at us (its US owner's home), a BR-CA one may not
    assert _write(urls["us"], "INSERT INTO dms VALUES (60, 1, 8, 'each')") is None
    refused = _write(urls["us"], "INSERT INTO dms VALUES (61, 4, 8, 'each')")
    assert refused is not None and "store 'ca'" in refused
    assert _write(urls["us"], "DELETE FROM dms WHERE id = 60") is None

    assert run_cli(["guard", "remove", "-c", str(path)]) == 0
    assert {s: _catalog(u) for s, u in urls.items()} == before
    assert _write(urls["sg"], "INSERT INTO likes (user_id, post_id) VALUES (1, 98)") is None
    assert _write(urls["sg"], "DELETE FROM likes WHERE post_id = 98") is None

    # a run of the CA subjects, with a guard installed, refreshes it: 3 and 7 are home now
    # (through the command line on SQLite, the library elsewhere: both refresh)
    api.guard_install(path)
    if engine == "sqlite":
        assert run_cli(["run", "-j", "CA", "-c", str(path)]) == 0
        assert "write guard refreshed at sg" in capsys.readouterr().out
    else:
        assert api.run(path, api.RunOptions(scope=["CA"])).status == "done"
    status = _status(path)
    assert status["sg"].refused == 6
    assert "likes" in status["ca"].tables  # created at ca by the run, guarded for US
    refused = _write(urls["sg"], "INSERT INTO likes (user_id, post_id) VALUES (3, 77)")
    assert refused is not None and "store 'ca'" in refused
    api.guard_remove(path)
    assert not any(s.installed for s in api.guard_status(path))


def test_guard_scope_and_bad_input(tmp_path, make_db, capsys):
    urls = {s: make_db("sqlite") for s in ("sg", "us", "ca")}
    path = fleetkit.build(tmp_path, urls)
    assert run_cli(["guard", "install", "-j", "XX", "-c", str(path)]) == 2
    assert "jurisdiction 'XX' is not in the map" in capsys.readouterr().err
    # nothing moved yet: the guard installs, but no subject is guarded abroad
    assert run_cli(["guard", "install", "-j", "US", "-c", str(path)]) == 0
    status = _status(path)
    assert status["sg"].jurisdictions == ("US",) and status["sg"].refused == 1  # 6, born home
    assert status["us"].installed is False  # no US rule forbids us
    assert _write(urls["sg"], "INSERT INTO likes (user_id, post_id) VALUES (1, 99)") is None
    # adding CA keeps US; removing US keeps CA
    api.guard_install(path, ["CA"])
    assert _status(path)["sg"].jurisdictions == ("US", "CA")
    api.guard_remove(path, ["US"])
    assert _status(path)["sg"].jurisdictions == ("CA",)
    assert run_cli(["guard", "status", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "sg: guarded for CA" in out and "us: guarded for CA" in out
    assert run_cli(["guard", "status", "--json", "-c", str(path)]) == 0
    stores = {s["store"]: s for s in json.loads(capsys.readouterr().out)}
    assert stores["sg"]["jurisdictions"] == ["CA"] and stores["sg"]["hashed"] is False
    assert run_cli(["guard", "remove", "-c", str(path)]) == 0
    assert run_cli(["guard", "status", "-c", str(path)]) == 0
    assert "sg: not guarded (forbidden for US, CA)" in capsys.readouterr().out
