"""End to end: `domicile run` brings every violating record home, on every engine and across."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

import fleetkit
from domicile.cli import run_cli
from domicile.datamap import load_map
from domicile.demo import build_demo
from invariants import check_invariants, snapshot, sqlite_foreign_keys_hold


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = run_cli(list(args))
    out = capsys.readouterr()
    return code, out.out + out.err


def _rows(url: str, sql: str) -> list[tuple]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(sql))]
    finally:
        engine.dispose()


def _where(urls: dict[str, str], table: str, cond: str) -> set[str]:
    """Stores whose *table* has a row matching *cond*."""
    found = set()
    for store, url in urls.items():
        engine = sa.create_engine(url)
        try:
            if sa.inspect(engine).has_table(table):
                with engine.connect() as conn:
                    if conn.execute(sa.text(f"SELECT 1 FROM {table} WHERE {cond}")).first():
                        found.add(store)
        finally:
            engine.dispose()
    return found


@pytest.mark.parametrize(
    "engines",
    [
        {"sg": "sqlite", "us": "sqlite", "ca": "sqlite"},
        {"sg": "postgresql", "us": "postgresql", "ca": "postgresql"},
        {"sg": "mysql", "us": "mysql", "ca": "mysql"},
        # across engines: SQLite -> PostgreSQL (US), SQLite and PostgreSQL -> MariaDB (CA)
        {"sg": "sqlite", "us": "postgresql", "ca": "mysql"},
    ],
    ids=["sqlite", "postgresql", "mysql", "sqlite-postgresql-mysql"],
)
def test_run_brings_every_violating_record_home(tmp_path, make_db, capsys, engines):
    urls = {s: make_db(e) for s, e in engines.items()}
    path = fleetkit.build(tmp_path, urls)
    before = snapshot(path)
    code, out = _run(capsys, "run", "-c", str(path))
    assert code == 0, out
    assert "done" in out
    after = snapshot(path)
    check_invariants(path, before, after)
    # US user 1 is home in us and gone from sg; CA user 7 moved from us (PG) to ca
    assert _where(urls, "users", "id = 1") == {"us"}
    assert _where(urls, "users", "id = 7") == {"ca"}
    # a three-hop record followed its owner; a CA line went to ca, where its table was created
    assert _where(urls, "shipment_item", "id = 1") == {"us"}
    assert _where(urls, "invoice_line", "line_id = 1002") == {"ca"}
    # the exception keeps public posts abroad; the private US post came home
    assert _where(urls, "posts", "id = 1") == {"sg"}
    assert _where(urls, "posts", "id = 2") == {"us"}
    # multi-owner: `all` US-CA conflict stays; `each` US-CA message got a copy at both homes
    assert _where(urls, "messages", "id = 2") == {"sg"}
    assert _where(urls, "dms", "id = 1") == {"us", "ca"}
    # orphans, unknown countries and unrestricted subjects are untouched
    assert _where(urls, "users", "id IN (4, 5)") == {"sg"}
    assert _where(urls, "invoice_line", "line_id = 1005") == {"sg"}
    # a second run has nothing left to do and changes nothing
    code, out = _run(capsys, "run", "-c", str(path))
    assert code == 0, out
    assert snapshot(path) == after


def test_scope_moves_only_the_named_jurisdiction(tmp_path, make_db, capsys):
    urls = {s: make_db("sqlite") for s in ("sg", "us", "ca")}
    path = fleetkit.build(tmp_path, urls)
    code, out = _run(capsys, "run", "-j", "US", "-c", str(path))
    assert code == 0, out
    assert _where(urls, "users", "id = 1") == {"us"}
    assert _where(urls, "users", "id = 3") == {"sg"}  # CA subject: out of scope
    code, out = _run(capsys, "verify", "-c", str(path))
    assert code == 3  # CA still violates
    code, out = _run(capsys, "scan", "-c", str(path))
    assert code == 3


def test_dry_run_changes_nothing(tmp_path, make_db, capsys):
    urls = {s: make_db("sqlite") for s in ("sg", "us", "ca")}
    path = fleetkit.build(tmp_path, urls)
    before = snapshot(path)
    code, out = _run(capsys, "run", "--dry-run", "-c", str(path))
    assert code == 0, out
    assert "dry run: nothing was changed" in out and "users" in out
    assert snapshot(path) == before
    assert not (tmp_path / ".domicile" / "state.db").exists()


def test_demo_fleet_foreign_keys_and_reference_rows_hold_at_home(tmp_path, capsys):
    path = build_demo(tmp_path / "demo", users=150, seed=3)
    m = load_map(path)
    us_tx = m.stores["us-tx"].url[len("sqlite:///") :]
    con = sqlite3.connect(us_tx)
    con.execute(
        "DELETE FROM sounds WHERE id NOT IN "
        "(SELECT sound_id FROM videos WHERE sound_id IS NOT NULL)"
    )
    con.commit()
    left = con.execute("SELECT count(*) FROM sounds").fetchone()[0]
    con.close()
    before = snapshot(path)
    code, out = _run(capsys, "run", "--workers", "2", "-c", str(path))
    assert code == 0, out
    after = snapshot(path)
    check_invariants(path, before, after)
    sqlite_foreign_keys_hold(m)
    con = sqlite3.connect(us_tx)
    now = con.execute("SELECT count(*) FROM sounds").fetchone()[0]
    con.close()
    assert now > left  # reference rows the moved videos point to were copied first
    # reference rows are never deleted at the source
    assert before["sounds"].keys() == after["sounds"].keys()
    for key, places in before["sounds"].items():
        assert set(places) <= set(after["sounds"][key])


def test_conflict_at_home_stops_the_batch_then_keep_home_resolves_it(tmp_path, make_db, capsys):
    urls = {s: make_db("sqlite") for s in ("sg", "us", "ca")}
    path = fleetkit.build(tmp_path, urls)
    _rows(urls["us"], "SELECT 1")
    engine = sa.create_engine(urls["us"])
    with engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO users (id, name, country) VALUES (1, 'Ann (home)', 'US')")
        )
    engine.dispose()
    code, out = _run(capsys, "run", "-c", str(path))
    assert code == 4, out
    assert "already at home in us with different content" in out
    assert "on_conflict" in out and "domicile run --resume" in out
    assert _where(urls, "users", "id = 1") == {"sg", "us"}  # nothing deleted
    run_id = out.split("domicile run --resume ")[1].split()[0]
    data = yaml.safe_load(path.read_text())
    data["on_conflict"] = "keep-home"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    code, out = _run(capsys, "run", "--resume", run_id, "-c", str(path))
    assert code == 0, out
    assert _rows(urls["us"], "SELECT name FROM users WHERE id = 1") == [("Ann (home)",)]
    assert _where(urls, "users", "id = 1") == {"us"}


def test_unfinished_run_must_be_resumed(tmp_path, make_db, capsys):
    urls = {s: make_db("sqlite") for s in ("sg", "us", "ca")}
    path = fleetkit.build(tmp_path, urls)
    engine = sa.create_engine(urls["us"])
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO users (id, name, country) VALUES (1, 'other', 'US')"))
    engine.dispose()
    code, out = _run(capsys, "run", "-c", str(path))
    assert code == 4
    code, out = _run(capsys, "run", "-c", str(path))
    assert code == 2 and "did not finish" in out and "--resume" in out
    code, out = _run(capsys, "status", "-c", str(path))
    assert code == 0 and "failed" in out  # stopped on a conflict: resumable


def test_missing_column_at_home_is_refused_before_anything_moves(tmp_path, make_db, capsys):
    urls = {s: make_db("sqlite") for s in ("sg", "us", "ca")}
    path = fleetkit.build(tmp_path, urls)
    engine = sa.create_engine(urls["ca"])
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE likes (user_id INTEGER, post_id INTEGER, "
                "PRIMARY KEY (user_id, post_id))"
            )
        )
    engine.dispose()
    before = snapshot(path)
    code, out = _run(capsys, "run", "-c", str(path))
    assert code == 2, out
    assert "lacks column(s) at" in out and "ALTER TABLE" in out
    assert snapshot(path) == before


def test_reference_row_missing_everywhere_stops_with_a_clear_error(tmp_path, capsys):
    path = build_demo(tmp_path / "demo", users=60, seed=5)
    m = load_map(path)
    sg = m.stores["sg-main"].url[len("sqlite:///") :]
    con = sqlite3.connect(sg)  # foreign keys are off in a plain connection
    vid = con.execute(
        "SELECT v.id FROM videos v JOIN users u ON u.id = v.user_id "
        "WHERE u.country IN ('US','us','USA','United States') LIMIT 1"
    ).fetchone()[0]
    con.execute("UPDATE videos SET sound_id = 99999 WHERE id = ?", (vid,))
    con.commit()
    con.close()
    code, out = _run(capsys, "run", "-c", str(path))
    assert code == 4, out
    assert "sounds rows that exist neither at home nor in the source: [99999]" in out
    con = sqlite3.connect(sg)
    assert con.execute("SELECT count(*) FROM videos WHERE id = ?", (vid,)).fetchone()[0] == 1
    con.close()


def test_plan_json(tmp_path, make_db, capsys):
    import json

    urls = {s: make_db("sqlite") for s in ("sg", "us", "ca")}
    path = fleetkit.build(tmp_path, urls)
    out_file = tmp_path / "plan.json"
    code, out = _run(capsys, "plan", "-o", str(out_file), "-c", str(path))
    assert code == 0, out
    plan = json.loads(out_file.read_text())
    assert plan["records"] == sum(m["records"] for m in plan["moves"])
    assert plan["copy_order"][0] == "users"
    assert Path(out_file).exists()


def test_missing_home_tables_are_created_with_their_reference_tables(tmp_path, capsys):
    path = build_demo(tmp_path / "demo", users=120, seed=8, media=False)
    m = load_map(path)
    au = m.stores["au-syd"].url[len("sqlite:///") :]
    con = sqlite3.connect(au)  # a plain connection: foreign keys are not enforced
    con.execute("DROP TABLE videos")
    con.execute("DROP TABLE sounds")
    con.commit()
    con.close()
    before = snapshot(path)
    code, out = _run(capsys, "run", "-c", str(path))
    assert code == 0, out
    check_invariants(path, before, snapshot(path))
    sqlite_foreign_keys_hold(m)
    con = sqlite3.connect(au)
    moved = con.execute("SELECT count(*) FROM videos").fetchone()[0]
    missing_refs = con.execute(
        "SELECT count(*) FROM videos v WHERE v.sound_id IS NOT NULL "
        "AND NOT EXISTS (SELECT 1 FROM sounds s WHERE s.id = v.sound_id)"
    ).fetchone()[0]
    fks = con.execute("PRAGMA foreign_key_list(videos)").fetchall()
    con.close()
    assert moved > 0 and missing_refs == 0
    assert any(fk[2] == "sounds" for fk in fks)  # the created table kept its foreign key
