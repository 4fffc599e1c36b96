"""Resource faults (issue 13, item 3): a full or read-only state store, a store turning read-only.

Each fault must end the command with a clear message and exit code (4: a
resumable stop), never a traceback; nothing may be lost (read by the test's
own snapshots of every store); and once the fault is gone, ``run --resume``
completes with the invariants of DESIGN.md.

Mechanisms (tests run as root, so file modes do not stop a write):
- a full disk: RLIMIT_FSIZE (``ulimit -f`` at start, ``prlimit`` on the paused
  process mid-run): the state file cannot grow, writes fail with EFBIG
  (CPython ignores SIGXFSZ) and SQLite reports a disk I/O error;
- a read-only SQLite state store: ``chattr +i`` (immutable even for root);
- read-only PostgreSQL: ``ALTER DATABASE ... SET default_transaction_read_only``
  and the database's sessions ended, so the reconnecting pool gets read-only ones;
- read-only MariaDB: a non-admin user (root ignores ``read_only``) whose write
  privileges on its own database are revoked mid-run and whose sessions are
  killed — per test, unlike ``SET GLOBAL read_only`` on the shared server.

Each mid-run fault is timed to a protocol step with ``tests/crashrun.py
--pause-at STATE:N:SECONDS``: the test waits until the journal shows the
pause, then flips the store.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

import fleetkit
from conftest import MYSQL, POSTGRES
from crashrun import command
from domicile.datamap import load_map
from invariants import Snapshot, check_invariants, snapshot

pytestmark = pytest.mark.slow

PAUSE_S = 5  # the window in which the test flips the store; the run sleeps there
TIMEOUT_S = 180


# -- running the CLI ------------------------------------------------------------


def _domicile(*args: str, fsize_kib: int | None = None) -> list[str]:
    """``python -m domicile ARGS``, under ``ulimit -f`` when *fsize_kib* is given."""
    argv = [sys.executable, "-m", "domicile", *args]
    if fsize_kib is None:
        return argv
    return ["bash", "-c", f'ulimit -f {fsize_kib} && exec "$@"', "domicile", *argv]


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL
    )


def _paused(path: Path, pause: str) -> subprocess.Popen[str]:
    """A run that sleeps PAUSE_S at *pause* (``STATE:N``), output piped."""
    return subprocess.Popen(
        command("run", "--batch-size", "4", "--retries", "2", "-c", str(path),
                pause=f"{pause}:{PAUSE_S}"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def _wait_for(state: Callable[[], sa.Engine], reached: str, proc: subprocess.Popen[str]) -> None:
    """Poll the journal until *reached* (SQL over domicile_batches) is true: the pause."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before its pause: {proc.communicate()[0]}")
        engine = state()
        try:
            with engine.connect() as conn:
                if (
                    sa.inspect(conn).has_table("domicile_batches")
                    and conn.execute(sa.text(reached)).scalar()
                ):
                    return
        except sa.exc.OperationalError:
            pass  # the journal is being created
        finally:
            engine.dispose()
        time.sleep(0.05)
    raise AssertionError(f"the run never reached {reached}")


# the third batch is journalled `deleting` (two are done): its delete comes next
AT_THIRD_DELETE = (
    "SELECT (SELECT count(*) FROM domicile_batches WHERE state = 'done') >= 2 "
    "AND (SELECT count(*) FROM domicile_batches WHERE state = 'deleting') >= 1"
)
# the third batch is journalled `copying`: its write at home comes next
AT_THIRD_COPY = "SELECT count(*) >= 3 FROM domicile_batches"


_STORE_ERROR = re.compile(r"error: store (\w+) \(")
"""The store an error of the run names (``error: store sg (url): ...``)."""


def _text(out: str) -> str:
    assert "Traceback" not in out, out
    return " ".join(out.split())  # rich wraps long lines


# -- what the stores hold -------------------------------------------------------------


def _nothing_lost(path: Path, before: Snapshot, now: Snapshot) -> None:
    """Every record is somewhere; one that left a store is at a home, as it was copied."""
    m = load_map(path)
    homes = {h for j in m.jurisdictions.values() for h in j.home}
    for dataset, records in before.items():
        for key, places in records.items():
            here = now.get(dataset, {}).get(key, {})
            assert here, f"lost: {dataset} {key} was in {sorted(places)}"
            assert set(here.values()) <= set(places.values()), (dataset, key, here)
            if set(places) - set(here):
                assert set(here) & homes, f"{dataset} {key} left {sorted(places)}, not home"


def _runs(state: Callable[[], sa.Engine]) -> list[tuple[str, str]]:
    """(id, status) of every run in the journal, read with the test's own SQL."""
    engine = state()
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("domicile_runs"):
                return []
            rows = conn.execute(sa.text("SELECT id, status FROM domicile_runs ORDER BY started_at"))
            return [(r[0], r[1]) for r in rows]
    finally:
        engine.dispose()


def _sqlite_state(path: Path) -> Callable[[], sa.Engine]:
    file = path.parent / ".domicile" / "state.db"
    return lambda: sa.create_engine(f"sqlite:///{file}")


def _resume_completes(path: Path, state: Callable[[], sa.Engine], before: Snapshot) -> None:
    runs = _runs(state)
    assert len(runs) == 1 and runs[0][1] in ("running", "failed"), runs
    done = _run(_domicile("run", "--resume", runs[0][0], "-c", str(path)))
    assert done.returncode == 0, done.stdout + done.stderr
    check_invariants(path, before, snapshot(path))


# -- PostgreSQL and MariaDB switches ------------------------------------------------------


def _pg_admin() -> sa.Engine:
    return sa.create_engine(POSTGRES, isolation_level="AUTOCOMMIT")


def _pg_read_only(db: str, on: bool, *, spare_lease: bool = False) -> None:
    """New sessions of *db* read-only (or not again); end the ones open now.

    *spare_lease* keeps the run lease's session (it holds an advisory lock):
    a lost lease would stop the run for another reason than the one tested.
    """
    admin = _pg_admin()
    with admin.connect() as conn:
        value = "on" if on else "off"
        conn.execute(sa.text(f'ALTER DATABASE "{db}" SET default_transaction_read_only = {value}'))
        spare = "AND pid NOT IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory')"
        conn.execute(
            sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d "
                f"AND pid <> pg_backend_pid() {spare if spare_lease else ''}"
            ),
            {"d": db},
        )
    admin.dispose()


class MariaUsers:
    """Non-admin MariaDB users, one per database, dropped at the end."""

    def __init__(self) -> None:
        self.admin = sa.create_engine(MYSQL, isolation_level="AUTOCOMMIT")
        self.users: list[str] = []

    def owner_of(self, url: str) -> str:
        """A user with every privilege on *url*'s database only; its URL."""
        db = sa.make_url(url).database
        user = f"rf_{uuid.uuid4().hex[:10]}"
        with self.admin.connect() as conn:
            conn.execute(sa.text(f"CREATE USER '{user}'@'%' IDENTIFIED BY 'pw'"))
            conn.execute(sa.text(f"GRANT ALL ON `{db}`.* TO '{user}'@'%'"))
        self.users.append(user)
        return sa.make_url(url).set(username=user, password="pw").render_as_string(False)

    def writable(self, url: str, on: bool) -> None:
        """Revoke (or grant again) the user's writes on its database; end its sessions
        (a database-level grant is read by a session when it starts)."""
        u = sa.make_url(url)
        with self.admin.connect() as conn:
            if on:
                conn.execute(sa.text(f"GRANT ALL ON `{u.database}`.* TO '{u.username}'@'%'"))
            else:
                conn.execute(
                    sa.text(
                        f"REVOKE INSERT, UPDATE, DELETE, CREATE, DROP, ALTER "
                        f"ON `{u.database}`.* FROM '{u.username}'@'%'"
                    )
                )
            sessions = conn.execute(
                sa.text("SELECT id FROM information_schema.processlist WHERE user = :u"),
                {"u": u.username},
            ).all()
            for (pid,) in sessions:
                with contextlib.suppress(sa.exc.DBAPIError):  # it may have ended meanwhile
                    conn.execute(sa.text(f"KILL {int(pid)}"))

    def drop(self) -> None:
        with self.admin.connect() as conn:
            for user in self.users:
                conn.execute(sa.text(f"DROP USER IF EXISTS '{user}'@'%'"))
        self.admin.dispose()


@pytest.fixture
def maria_users() -> Iterator[MariaUsers]:
    users = MariaUsers()
    yield users
    users.drop()


def _fleet(
    tmp_path: Path, make_db: Callable[[str], str], backend: str
) -> tuple[Path, dict[str, str]]:
    urls = {name: make_db(backend) for name in ("sg", "us", "ca")}
    return fleetkit.build(tmp_path, urls), urls


def _set_state(path: Path, url: str) -> None:
    raw = yaml.safe_load(path.read_text())
    raw["state"] = url
    path.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))


# -- the state store's disk full ------------------------------------------------------------


def test_state_store_disk_full_at_start_stops_before_anything_moves(tmp_path: Path) -> None:
    urls = {name: f"sqlite:///{tmp_path / name}.db" for name in ("sg", "us", "ca")}
    for url in urls.values():
        sa.create_engine(url).connect().close()
    path = fleetkit.build(tmp_path, urls)
    before = snapshot(path)
    full = _run(_domicile("run", "-c", str(path), fsize_kib=4))
    text = _text(full.stdout + full.stderr)
    assert full.returncode == 4, text
    assert "state store sqlite:///" in text and "opening the journal" in text
    assert "disk is full" in text
    assert snapshot(path) == before  # nothing moved, nothing created
    assert _runs(_sqlite_state(path)) == []
    done = _run(_domicile("run", "-c", str(path)))
    assert done.returncode == 0, done.stdout + done.stderr
    check_invariants(path, before, snapshot(path))


def test_state_store_disk_full_mid_delete_stops_resumably_and_resume_completes(
    tmp_path: Path, make_db: Callable[[str], str]
) -> None:
    """Regression: the audit log's write on a full state store was a raw traceback (exit 1)."""
    path, _ = _fleet(tmp_path, make_db, "postgresql")
    before = snapshot(path)
    state = _sqlite_state(path)
    proc = _paused(path, "deleting:3")
    _wait_for(state, AT_THIRD_DELETE, proc)
    # from now on no file of the process may grow past 4 KiB: the journal's WAL cannot
    resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (4096, 4096))
    out, _ = proc.communicate(timeout=TIMEOUT_S)
    text = _text(out)
    assert proc.returncode == 4, text
    assert "error: state store sqlite:///" in text and "disk is full or failing" in text
    # the run's own error and its resume hint, though recording the end failed too
    assert "resume with: domicile run --resume" in text, text
    mid = snapshot(path)
    _nothing_lost(path, before, mid)
    # a resume while the disk is still full stops the same way and changes nothing
    (run_id, _status), = _runs(state)  # fmt: skip
    again = _run(_domicile("run", "--resume", run_id, "-c", str(path), fsize_kib=4))
    assert again.returncode == 4, _text(again.stdout + again.stderr)
    assert "disk is full" in _text(again.stdout + again.stderr)
    assert snapshot(path) == mid
    _resume_completes(path, state, before)


# -- a read-only state store ------------------------------------------------------------------


@contextlib.contextmanager
def _immutable(file: Path) -> Iterator[None]:
    """``chattr +i``: not even root can open the file for writing."""
    # a user's machine may lack chattr (e2fsprogs) or the privilege: the test says so
    # and skips; CI (CI=true) has both, and a missing one fails it there
    missing = pytest.fail if os.environ.get("CI") == "true" else pytest.skip
    chattr = shutil.which("chattr")
    if chattr is None:
        missing("chattr (e2fsprogs) is not installed: the read-only state store is not tested")
    assert chattr is not None
    made = subprocess.run([chattr, "+i", str(file)], capture_output=True, text=True)
    if made.returncode != 0:
        missing(f"cannot make a file immutable here (root needed): {made.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(file)], check=True)


def test_sqlite_state_store_read_only_at_start(tmp_path: Path) -> None:
    """Regression: the run lease's first write on a read-only state store was a traceback."""
    urls = {name: f"sqlite:///{tmp_path / name}.db" for name in ("sg", "us", "ca")}
    for url in urls.values():
        sa.create_engine(url).connect().close()
    path = fleetkit.build(tmp_path, urls)
    before = snapshot(path)
    # a first run (CA only) makes the journal and the audit log; US is left to move
    first = _run(_domicile("run", "-j", "CA", "-c", str(path)))
    assert first.returncode == 0, first.stdout + first.stderr
    mid = snapshot(path)
    with _immutable(path.parent / ".domicile" / "state.db"):
        refused = _run(_domicile("run", "-j", "US", "-c", str(path)))
    text = _text(refused.stdout + refused.stderr)
    assert refused.returncode == 4, text
    assert "taking the run lease" in text and "attempt to write a readonly database" in text
    assert "the state store is read-only: make it writable" in text
    assert snapshot(path) == mid
    assert [s for _, s in _runs(_sqlite_state(path))] == ["done"]
    done = _run(_domicile("run", "-j", "US", "-c", str(path)))
    assert done.returncode == 0, done.stdout + done.stderr
    check_invariants(path, before, snapshot(path))


@pytest.mark.parametrize(
    "state",
    ["sqlite:///file:{dir}/.domicile/state.db?mode=ro&uri=true", "sqlite:///file:state.db"],
    ids=["mode-ro", "uri-filename"],
)
def test_a_sqlite_uri_state_store_is_refused(tmp_path: Path, state: str) -> None:
    """Regression: a ``file:`` URI was taken for a path beside the map — a new, empty
    journal in a folder named ``file:`` — so ``mode=ro`` opened a writable store."""
    urls = {name: f"sqlite:///{tmp_path / name}.db" for name in ("sg", "us", "ca")}
    for url in urls.values():
        sa.create_engine(url).connect().close()
    path = fleetkit.build(tmp_path, urls)
    before = snapshot(path)
    _set_state(path, state.format(dir=tmp_path))
    for args in (["check"], ["run"]):
        refused = _run(_domicile(*args, "-c", str(path)))
        text = _text(refused.stdout + refused.stderr)
        assert refused.returncode == 2, text
        assert "state store: a SQLite URI filename" in text and "domicile.yaml:2" in text
    _set_state(path, "sqlite:///.domicile/state.db")
    assert snapshot(path) == before
    assert not (tmp_path / "file:").exists() and not (tmp_path / ".domicile").exists()


@pytest.fixture
def pg_state(make_db: Callable[[str], str]) -> Iterator[tuple[str, str]]:
    """A PostgreSQL state store: its URL and database name (made writable again at the end)."""
    url = make_db("postgresql")
    db = sa.make_url(url).database
    assert db
    yield url, db
    _pg_read_only(db, False)


def test_postgresql_state_store_read_only_at_start(
    tmp_path: Path, make_db: Callable[[str], str], pg_state: tuple[str, str]
) -> None:
    url, db = pg_state
    path, _ = _fleet(tmp_path, make_db, "sqlite")
    _set_state(path, url)
    before = snapshot(path)
    _pg_read_only(db, True)
    refused = _run(_domicile("run", "-c", str(path)))
    text = _text(refused.stdout + refused.stderr)
    assert refused.returncode == 4, text
    assert "state store postgresql" in text and "read-only transaction" in text
    assert "the state store is read-only: make it writable" in text
    assert snapshot(path) == before
    _pg_read_only(db, False)
    done = _run(_domicile("run", "-c", str(path)))
    assert done.returncode == 0, done.stdout + done.stderr
    check_invariants(path, before, snapshot(path))


def test_postgresql_state_store_turns_read_only_mid_delete(
    tmp_path: Path, make_db: Callable[[str], str], pg_state: tuple[str, str]
) -> None:
    url, db = pg_state
    path, _ = _fleet(tmp_path, make_db, "postgresql")
    _set_state(path, url)
    before = snapshot(path)

    def state() -> sa.Engine:
        return sa.create_engine(url)

    proc = _paused(path, "deleting:3")
    try:
        _wait_for(state, AT_THIRD_DELETE, proc)
        _pg_read_only(db, True, spare_lease=True)
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    finally:
        _pg_read_only(db, False)
    text = _text(out)
    assert proc.returncode == 4, text
    assert "error: state store postgresql" in text and "read-only transaction" in text
    assert "the state store is read-only: make it writable" in text
    assert "resume with: domicile run --resume" in text, text
    _nothing_lost(path, before, snapshot(path))
    _resume_completes(path, state, before)


# -- a source or a home turning read-only ---------------------------------------------------------


@pytest.mark.parametrize("backend", ["postgresql", "mysql"])
@pytest.mark.parametrize(
    ("side", "pause", "reached"),
    [("source", "deleting:3", AT_THIRD_DELETE), ("home", "copying:3", AT_THIRD_COPY)],
    ids=["source-mid-delete", "home-mid-copy"],
)
def test_a_store_turning_read_only_mid_run_stops_resumably(
    tmp_path: Path,
    make_db: Callable[[str], str],
    maria_users: MariaUsers,
    backend: str,
    side: str,
    pause: str,
    reached: str,
) -> None:
    """Regression (source): a source's failed delete was reported under the name of the
    home whose transaction was open around it ("store us"), with the hint "is the server
    running?"; a MariaDB privilege refusal was retried as transient."""
    path, urls = _fleet(tmp_path, make_db, backend)
    if backend == "mysql":  # root ignores read_only and every grant: run as the owner
        urls = {name: maria_users.owner_of(url) for name, url in urls.items()}
        raw = yaml.safe_load(path.read_text())
        for name, url in urls.items():
            raw["stores"][name]["url"] = url
        path.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    before = snapshot(path)
    flipped = ["sg"] if side == "source" else ["us", "ca"]

    def writable(on: bool) -> None:
        for name in flipped:
            if backend == "mysql":
                maria_users.writable(urls[name], on)
            else:
                db = sa.make_url(urls[name]).database
                assert db
                _pg_read_only(db, not on)

    proc = _paused(path, pause)
    try:
        _wait_for(_sqlite_state(path), reached, proc)
        writable(False)
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    finally:
        writable(True)
    text = _text(out)
    assert proc.returncode == 4, text
    named = {m.group(1) for m in _STORE_ERROR.finditer(text)}
    assert named and named <= set(flipped), (named, text)
    assert "refused by the store" in text and "make it writable" in text
    assert "is the server running" not in text
    assert "resume with: domicile run --resume" in text
    _nothing_lost(path, before, snapshot(path))
    _resume_completes(path, _sqlite_state(path), before)
