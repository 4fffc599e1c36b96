"""The run lease, with real processes: a child holds it, the parent is refused,
``kill -9`` frees it at once, and ``--break-lease`` takes it over on PostgreSQL.

Every wait is a bounded poll; nothing asserts how long something took.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from domicile.errors import ConfigError
from domicile.run import lease
from domicile.state import state_engine

# The holder: takes the lease, says so, and waits to be killed or to lose it.
CHILD = r"""
import os, signal, sys, time
from pathlib import Path
from domicile.errors import ConfigError
from domicile.run import lease
from domicile.state import state_engine

url, run_id, fork = sys.argv[1], sys.argv[2], sys.argv[3] == "fork"
engine = state_engine(url, Path.cwd())
try:
    held = lease.acquire(engine, run_id=run_id, heartbeat_every=0.1)
except lease.LeaseHeld as exc:
    print("refused", exc.holder.pid, flush=True)
    sys.exit(2)

def stop(*_):
    held.release()
    held.release()  # twice, from a signal handler: must not deadlock
    print("released", flush=True)
    os._exit(0)

signal.signal(signal.SIGTERM, stop)
if fork:
    kid = os.fork()
    if kid == 0:  # a forked worker must not keep the lock alive
        time.sleep(120)
        os._exit(0)
    print("forked", kid, flush=True)
print("held", os.getpid(), flush=True)
while not held.lost:
    time.sleep(0.05)
print("lost", held.lost, flush=True)
sys.exit(3)
"""

DEADLINE = 60.0


class Child:
    """A holder process whose stdout lines can be awaited with a deadline."""

    def __init__(self, url: str, run_id: str, *, fork: bool = False):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, url, run_id, "fork" if fork else "-"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._buf = ""
        self.pid = self.proc.pid
        self.extra_pids: list[int] = []

    def lines(self) -> Iterator[str]:
        """The child's stdout lines as they come, ending at EOF or the deadline."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            while "\n" in self._buf:
                line, self._buf = self._buf.split("\n", 1)
                yield line
            if select.select([fd], [], [], 0.5)[0]:
                chunk = os.read(fd, 4096)
                if not chunk:
                    return
                self._buf += chunk.decode()

    def expect(self, word: str) -> list[str]:
        """The words of the next line starting with *word* (bounded wait)."""
        for line in self.lines():
            if line.split()[:1] == [word]:
                return line.split()
        err = self.proc.stderr.read() if self.proc.poll() is not None and self.proc.stderr else ""
        raise AssertionError(f"child never said {word!r}; stderr: {err!r}")

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=DEADLINE)

    def close(self) -> None:
        for pid in [self.pid, *self.extra_pids]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=DEADLINE)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()


def poll(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not check():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, make_db: Callable[[str], str]) -> Iterator[str]:
    """The URL of a fresh state store of each kind."""
    yield make_db(request.param)


@pytest.fixture
def engine(store: str) -> Iterator[sa.Engine]:
    eng = state_engine(store, Path.cwd())
    yield eng
    eng.dispose()


@pytest.fixture
def child(store: str) -> Iterator[Callable[..., Child]]:
    made: list[Child] = []

    def start(run_id: str = "r-child", *, fork: bool = False) -> Child:
        made.append(Child(store, run_id, fork=fork))
        return made[-1]

    yield start
    for c in made:
        c.close()


def test_a_live_holder_refuses_a_second_run_and_is_named(engine: sa.Engine, child) -> None:
    c = child("r-first")
    c.expect("held")
    with pytest.raises(lease.LeaseHeld) as caught:
        lease.acquire(engine, run_id="r-second")
    exc = caught.value
    assert exc.exit_code == 2
    assert exc.holder.pid == c.pid and exc.holder.run_id == "r-first"
    assert f"pid {c.pid}" in str(exc) and "r-first" in str(exc) and "--break-lease" in str(exc)


def test_current_holder_reports_the_child_and_its_heartbeat_advances(
    engine: sa.Engine, child
) -> None:
    c = child("r-beat")
    c.expect("held")
    first = lease.current_holder(engine)
    assert first is not None and first.pid == c.pid and first.run_id == "r-beat"
    assert first.acquired_at is not None and first.heartbeat_at is not None

    def advanced() -> bool:
        now = lease.current_holder(engine)
        assert now is not None and now.holder_id == first.holder_id
        return now.heartbeat_at is not None and now.heartbeat_at > first.heartbeat_at  # type: ignore[operator]

    poll(advanced, "the heartbeat to advance")


def test_kill_9_frees_the_lease_at_once(engine: sa.Engine, child) -> None:
    c = child("r-killed")
    c.expect("held")
    c.kill9()
    # no expiry to wait out: the row still looks fresh, yet the lock is gone
    with lease.acquire(engine, run_id="r-resume") as mine:
        holder = lease.current_holder(engine)
        assert holder is not None and holder.holder_id == mine.holder.holder_id
        assert holder.pid == os.getpid() and holder.run_id == "r-resume"


def test_a_dead_holders_row_is_not_a_holder(engine: sa.Engine, child) -> None:
    c = child("r-dead")
    c.expect("held")
    c.kill9()
    poll(lambda: lease.current_holder(engine) is None, "the dead holder's lock to go")
    with engine.connect() as conn:  # the row stays behind, and means nothing
        assert conn.execute(sa.select(lease.lease_table.c.pid)).scalar_one() == c.pid


def test_release_is_idempotent_and_the_lease_can_be_taken_again(engine: sa.Engine) -> None:
    first = lease.acquire(engine, run_id=None)
    first.set_run("r-named")
    holder = lease.current_holder(engine)
    assert holder is not None and holder.run_id == "r-named" and holder.pid == os.getpid()
    first.release()
    first.release()
    assert lease.current_holder(engine) is None
    with lease.acquire(engine, run_id="r-again") as again:
        with pytest.raises(lease.LeaseHeld):  # one holder even within one process
            lease.acquire(engine, run_id="r-third", wait=0)
        again.check()
    assert lease.current_holder(engine) is None


def test_release_from_a_signal_handler(engine: sa.Engine) -> None:
    held = lease.acquire(engine, run_id="r-signal")
    called: list[int] = []

    def handler(signum: int, _frame: object) -> None:
        held.release()
        held.release()
        called.append(signum)

    previous = signal.signal(signal.SIGUSR1, handler)
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        poll(lambda: bool(called), "the signal handler")
    finally:
        signal.signal(signal.SIGUSR1, previous)
    held.release()
    lease.acquire(engine, run_id="r-after").release()


def test_sigterm_release_in_the_holder_frees_it(engine: sa.Engine, child) -> None:
    c = child("r-term")
    c.expect("held")
    c.proc.send_signal(signal.SIGTERM)
    c.expect("released")
    lease.acquire(engine, run_id="r-next").release()


def test_two_runs_started_together_one_wins(store: str, child) -> None:
    a, b = child("r-a"), child("r-b")
    said = {}
    for c in (a, b):
        # each says either "held PID" or "refused PID-OF-THE-WINNER"
        said[c.pid] = next(c.lines()).split()
    verdicts = sorted(words[0] for words in said.values())
    assert verdicts == ["held", "refused"], said
    winner = next(pid for pid, words in said.items() if words[0] == "held")
    loser = next(words for words in said.values() if words[0] == "refused")
    assert loser[1] == str(winner)


def test_a_forked_worker_does_not_keep_the_lease_alive(engine: sa.Engine, child) -> None:
    c = child("r-fork", fork=True)
    c.extra_pids.append(int(c.expect("forked")[1]))
    c.expect("held")
    c.kill9()  # the forked grandchild lives on, with copies of the descriptors
    os.kill(c.extra_pids[0], 0)
    lease.acquire(engine, run_id="r-after-fork").release()


@pytest.mark.postgres
def test_break_lease_on_postgresql_takes_over_from_a_live_holder(make_db) -> None:
    url = make_db("postgresql")
    eng = state_engine(url, Path.cwd())
    c = Child(url, "r-stuck")
    try:
        c.expect("held")
        with lease.acquire(eng, run_id="r-breaker", break_lease=True) as mine:
            c.expect("lost")  # its session was terminated, and it noticed
            assert c.proc.wait(timeout=DEADLINE) == 3
            holder = lease.current_holder(eng)
            assert holder is not None and holder.backend_pid == mine.holder.backend_pid
            assert holder.run_id == "r-breaker"
    finally:
        c.close()
        eng.dispose()


def test_break_lease_cannot_break_a_file_lock(make_db, tmp_path: Path) -> None:
    url = make_db("sqlite")
    eng = state_engine(url, tmp_path)
    c = Child(url, "r-file")
    try:
        c.expect("held")
        with pytest.raises(lease.LeaseHeld) as caught:
            lease.acquire(eng, run_id="r-breaker", break_lease=True)
        assert "cannot break a file lock" in str(caught.value)
        assert f"pid {c.pid}" in str(caught.value)
        assert Path(url.removeprefix("sqlite:///") + ".lease").exists()
    finally:
        c.close()
        eng.dispose()


@pytest.mark.postgres
def test_a_lease_whose_session_dies_is_lost(make_db) -> None:
    eng = state_engine(make_db("postgresql"), Path.cwd())
    try:
        held = lease.acquire(eng, run_id="r-doomed", heartbeat_every=0.1)
        with eng.connect() as conn:
            pid = held.holder.backend_pid
            conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        poll(lambda: held.lost is not None, "the heartbeat to notice")
        with pytest.raises(lease.LeaseLost):
            held.check()
        held.release()
        lease.acquire(eng, run_id="r-resumed").release()
    finally:
        eng.dispose()


def test_a_removed_lock_file_loses_the_lease(make_db, tmp_path: Path) -> None:
    url = make_db("sqlite")
    eng = state_engine(url, tmp_path)
    try:
        held = lease.acquire(eng, run_id="r-unlinked", heartbeat_every=0.1)
        held.check()
        os.remove(url.removeprefix("sqlite:///") + ".lease")  # now it excludes nobody
        poll(lambda: held.lost is not None, "the heartbeat to notice")
        with pytest.raises(lease.LeaseLost):
            held.check()
        held.release()
    finally:
        eng.dispose()


def test_a_state_store_without_a_lock_is_refused() -> None:
    eng = sa.create_engine("mysql+pymysql://nobody@127.0.0.1:1/none")  # never connected
    with pytest.raises(ConfigError, match="SQLite or PostgreSQL"):
        lease.acquire(eng, run_id="r-x")
    with pytest.raises(ConfigError):
        lease.current_holder(eng)
