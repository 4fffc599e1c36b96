"""Faults during a run: a home database that goes away mid-run."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import sqlalchemy as sa

import fleetkit
from conftest import POSTGRES
from crashrun import command
from domicile.datamap import load_map
from domicile.run.journal import Journal
from domicile.state import state_engine
from invariants import check_invariants, snapshot

pytestmark = pytest.mark.slow


def _admin() -> sa.Engine:
    return sa.create_engine(POSTGRES, isolation_level="AUTOCOMMIT")


def _set_connections(db: str, allowed: bool) -> None:
    engine = _admin()
    with engine.connect() as conn:
        conn.execute(
            sa.text(f'ALTER DATABASE "{db}" WITH ALLOW_CONNECTIONS {str(allowed).lower()}')
        )
        if not allowed:
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"
                ),
                {"d": db},
            )
    engine.dispose()


def test_home_database_going_away_fails_clearly_and_resumes(tmp_path, make_db):
    urls = {"sg": make_db("sqlite"), "us": make_db("postgresql"), "ca": make_db("sqlite")}
    us_db = sa.make_url(urls["us"]).database
    assert us_db
    path = fleetkit.build(tmp_path, urls)
    before = snapshot(path)
    proc = subprocess.Popen(
        command(
            "run", "--batch-size", "1", "--retries", "3", "-c", str(path), pause="verified:2:4"
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    state = tmp_path / ".domicile" / "state.db"
    try:
        # the run pauses 4 s after its second verified batch: take the home away then
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if state.exists():
                engine = sa.create_engine(f"sqlite:///{state}")
                with engine.connect() as conn:
                    n = (
                        conn.execute(
                            sa.text(
                                "SELECT count(*) FROM domicile_batches WHERE state != 'copying'"
                            )
                        ).scalar()
                        if sa.inspect(conn).has_table("domicile_batches")
                        else 0
                    )
                engine.dispose()
                if n and n >= 2:
                    break
            time.sleep(0.05)
        _set_connections(us_db, False)
        out, _ = proc.communicate(timeout=120)
    finally:
        _set_connections(us_db, True)
    assert proc.returncode == 4, out
    assert "store us" in out and "resume with: domicile run --resume" in out
    assert "Traceback" not in out
    m = load_map(path)
    runs = Journal(state_engine(m.state, m.base_dir)).unfinished()
    assert [r.status for r in runs] == ["failed"]  # stopped by an error: resumable
    # nothing was lost while the home was away
    mid = snapshot(path)
    for dataset, records in before.items():
        for key in records:
            assert mid[dataset].get(key), (dataset, key)
    done = subprocess.run(
        [sys.executable, "-m", "domicile", "run", "--resume", runs[0].id, "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    check_invariants(path, before, snapshot(path))
