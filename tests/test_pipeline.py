"""The pipeline: the next page read while a batch moves, two batches deleted at once.

The read-ahead is checked on its own (order, one page ahead at most, errors
and early stops), then in whole moves killed while a page was being read
ahead, and while another batch's compare-and-delete was in flight on
PostgreSQL — each resumed and checked with the test's own reads of every
store (``invariants.snapshot``) and of the journal.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import fleetkit
from crashrun import command
from domicile.datamap import load_map
from domicile.run.journal import Journal
from domicile.run.pipeline import read_ahead
from domicile.state import state_engine
from invariants import check_invariants, no_record_lost, snapshot


def _cli(path: Path, *args: str, crash: str | None = None, pause: str | None = None):  # type: ignore[no-untyped-def]
    return subprocess.run(
        command(*args, "-c", str(path), crash=crash, pause=pause),
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def _unfinished(path: Path) -> list[str]:
    m = load_map(path)
    engine = state_engine(m.state, m.base_dir)
    try:
        return [r.id for r in Journal(engine).unfinished()]
    finally:
        engine.dispose()


# -- read_ahead on its own -----------------------------------------------------------


def test_read_ahead_hands_out_pages_in_order_reading_one_ahead():
    started: list[int] = []
    in_flight = 0
    most = 0
    lock = threading.Lock()

    def read(n: int) -> int:
        nonlocal in_flight, most
        with lock:
            started.append(n)
            in_flight += 1
            most = max(most, in_flight)
        time.sleep(0.01)
        with lock:
            in_flight -= 1
        return n

    got = []
    for page in read_ahead(read, 0, lambda n: n + 1 if n < 9 else None):
        got.append(page)
        time.sleep(0.05)  # working on the page: the next one is read meanwhile
        with lock:
            assert started[-1] == min(page + 1, 9)
    assert got == list(range(10))
    assert started == list(range(10))
    assert most == 1  # never more than one read at a time: one page ahead, no more


def test_without_ahead_each_page_is_read_when_asked_for():
    started: list[int] = []

    def read(n: int) -> int:
        started.append(n)
        return n

    got = []
    for page in read_ahead(read, 0, lambda n: n + 1 if n < 4 else None, ahead=False):
        assert started == list(range(page + 1))  # nothing read beyond this page
        got.append(page)
    assert got == list(range(5))


def test_read_ahead_raises_a_failed_read_where_its_page_would_be():
    def read(n: int) -> int:
        if n == 3:
            raise ValueError("page 3 unreadable")
        return n

    got = []
    with pytest.raises(ValueError, match="page 3"):
        for page in read_ahead(read, 0, lambda n: n + 1):
            got.append(page)
    assert got == [0, 1, 2]


def test_read_ahead_closed_early_waits_for_the_read_in_flight():
    started, finished = threading.Event(), threading.Event()

    def read(n: int) -> int:
        if n == 1:
            started.set()
            time.sleep(0.2)
            finished.set()
        return n

    pages = read_ahead(read, 0, lambda n: n + 1)
    assert next(pages) == 0
    assert started.wait(5)  # page 1 is being read now
    pages.close()  # the caller stops (a failed step, a stop signal)
    assert finished.is_set()  # no read is left running behind the caller's back


# -- whole moves, killed inside the pipeline ----------------------------------------------


def _kill_then_resume(path: Path, crash: str) -> None:
    """``run --batch-size 1`` killed at *crash*; nothing lost then; resumed to the end."""
    before = snapshot(path)
    killed = _cli(path, "run", "--batch-size", "1", crash=crash)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    no_record_lost(before, snapshot(path))
    runs = _unfinished(path)
    assert len(runs) == 1
    resumed = _cli(path, "run", "--resume", runs[0], "--batch-size", "1")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    check_invariants(path, before, snapshot(path))


def _state_rows(path: Path, sql: str) -> list[Any]:
    """Rows of the test's own query on the fleet's SQLite state store."""
    engine = sa.create_engine(f"sqlite:///{path.parent / '.domicile' / 'state.db'}")
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(sql)).all())
    finally:
        engine.dispose()


def _postgresql_fleet(tmp_path: Path, make_db) -> Path:  # type: ignore[no-untyped-def]
    """fleetkit's fleet with every store on PostgreSQL: every home locks rows."""
    urls = {"sg": make_db("postgresql"), "us": make_db("postgresql"), "ca": make_db("postgresql")}
    return fleetkit.build(tmp_path, urls)


@pytest.mark.slow
@pytest.mark.parametrize("nth", [1, 4, 9])
def test_killed_while_a_page_is_read_ahead_then_resumed(tmp_path, make_db, nth):
    """SIGKILL on the read-ahead thread, while the batch before it is being copied
    (PostgreSQL stores: a server works meanwhile, so pages are read ahead)."""
    _kill_then_resume(_postgresql_fleet(tmp_path, make_db), f"read-ahead:{nth}")


@pytest.mark.slow
def test_postgresql_batches_delete_two_at_a_time(tmp_path, make_db):
    """With a pause inside the first batch's delete (its locks held), the other delete
    thread goes on: a later batch of the same dataset finishes its delete first.
    Deleting one batch at a time, batches finish in their order."""
    path = _postgresql_fleet(tmp_path, make_db)
    before = snapshot(path)
    done = _cli(path, "run", "--batch-size", "1", pause="deleting:1:4")
    assert done.returncode == 0, done.stdout + done.stderr
    check_invariants(path, before, snapshot(path))
    rows = _state_rows(path, "SELECT dataset, source, seq, updated_at FROM domicile_batches")
    finished = {(d, src, seq): str(at) for d, src, seq, at in rows}
    overtaken = [
        (d, s1, s2)
        for (d, src, s1), at1 in finished.items()
        for (d2, src2, s2), at2 in finished.items()
        if (d, src) == (d2, src2) and s2 > s1 and at2 < at1
    ]
    assert overtaken, "every batch finished its delete in order: no two deletes overlapped"


@pytest.mark.slow
@pytest.mark.parametrize("crash", ["deleting:2", "deleting:5", "done:3"])
def test_postgresql_killed_with_two_deletes_in_flight_then_resumed(tmp_path, make_db, crash):
    """SIGKILL at one batch's delete transitions while the other delete thread is
    inside its own transaction; the resume settles both."""
    path = _postgresql_fleet(tmp_path, make_db)
    _kill_then_resume(path, crash)
    assert _state_rows(path, "SELECT id FROM domicile_batches WHERE state != 'done'") == []
    ok = subprocess.run(
        [sys.executable, "-m", "domicile", "audit", "verify", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
