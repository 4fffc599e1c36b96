"""The run lease: one active run per state store.

Two runs on one state store (or a ``--resume`` of a run that is still alive)
would each believe the journal is theirs and delete each other's last copies.
The lease is a lock the operating system or the database server drops the
moment its holder dies, so a resume right after ``kill -9`` needs no expiry:

* SQLite: ``flock`` on ``<state.db>.lease`` beside the database, the
  descriptor held open for the run.  The holder writes who it is into the file.
* PostgreSQL: ``pg_try_advisory_lock(KEY)`` on a dedicated connection,
  detached from the pool so nobody else ever gets it.

A heartbeat row (:data:`lease_table`) says who holds it and since when, for
``status``.  It is informational only: the lock is the truth, and a row whose
lock is free is a dead holder's, not a holder.  The heartbeat also watches the
lock: if its PostgreSQL session dies (or is ended by ``--break-lease``) or the
lock file is replaced, :attr:`Lease.lost` is set and :meth:`Lease.check`
raises, so a run can stop before deleting anything.  A forked child closes its
copies of the lock's descriptors, so a worker cannot keep a dead run's lease.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import shlex
import socket
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace

import sqlalchemy as sa

from domicile.errors import ConfigError, StateStoreError
from domicile.run.journal_records import state_errors

LOCK_NAME = "domicile.run-lease"
KEY = int.from_bytes(hashlib.sha256(LOCK_NAME.encode()).digest()[:8], "big", signed=True)
"""The advisory-lock key: fixed, so every domicile agrees on it."""

md = sa.MetaData()
lease_table = sa.Table(
    "domicile_lease",
    md,
    sa.Column("name", sa.String(20), primary_key=True),  # always "run": one row
    sa.Column("holder", sa.String(40), nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("backend_pid", sa.Integer),  # PostgreSQL: the session holding the lock
    sa.Column("run_id", sa.String(40)),
    sa.Column("command", sa.String(200)),
    sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
)

# pg_locks shows a bigint advisory key as two oids (high, low) with objsubid 1
_PG_HOLDERS = sa.text(
    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    " AND classid::bigint = :hi AND objid::bigint = :lo"
).bindparams(hi=(KEY >> 32) & 0xFFFFFFFF, lo=KEY & 0xFFFFFFFF)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    # SQLite hands back naive datetimes; everything here is written in UTC
    return value.replace(tzinfo=dt.UTC) if value and value.tzinfo is None else value


def _iso(value: dt.datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else "?"


@dataclass(frozen=True)
class Holder:
    """Who holds the lease, as far as can be told (``None`` fields are unknown)."""

    holder_id: str | None
    host: str | None
    pid: int | None
    run_id: str | None = None
    command: str | None = None
    acquired_at: dt.datetime | None = None
    heartbeat_at: dt.datetime | None = None
    backend_pid: int | None = None

    def describe(self) -> str:
        """One line for a person: host, pid, run, since, last heartbeat."""
        beat = _iso(self.heartbeat_at)
        if self.heartbeat_at:
            beat += f" ({(_now() - self.heartbeat_at).total_seconds():.0f}s ago)"
        pid = "?" if self.pid is None else self.pid
        text = f"host {self.host or '?'}, pid {pid}, run {self.run_id or '-'}, "
        text += f"since {_iso(self.acquired_at)}, last heartbeat {beat}"
        if self.backend_pid is not None:
            text += f", PostgreSQL backend {self.backend_pid}"
        return text


UNKNOWN = Holder(None, None, None)


class LeaseHeld(ConfigError):
    """Another run holds the state store's lease (exit code 2)."""

    def __init__(self, holder: Holder, *, where: str, hint: str | None = None):
        hint = hint or (
            "wait for it to finish, or stop it; if you know it is gone (say its machine "
            "is down, so its lock cannot be seen dying) pass --break-lease"
        )
        message = f"another domicile run holds this state store's lease: {holder.describe()}"
        super().__init__(message, where=where, hint=hint)
        self.holder = holder


class LeaseLost(StateStoreError):
    """The lease's lock went away under a running run (its session dropped, or broken)."""


def _lock_path(engine: sa.Engine) -> str | None:
    db = engine.url.database
    return None if not db or db == ":memory:" or db.startswith("file:") else db + ".lease"


def _read_row(conn: sa.Connection) -> Holder | None:
    if not sa.inspect(conn).has_table(lease_table.name):
        return None
    r = conn.execute(sa.select(lease_table).where(lease_table.c.name == "run")).first()
    if r is None:
        return None
    at, beat = _utc(r.acquired_at), _utc(r.heartbeat_at)
    return Holder(r.holder, r.host, r.pid, r.run_id, r.command, at, beat, r.backend_pid)


def _read_lockfile(fd: int) -> Holder | None:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"null")
        return Holder(data["holder"], data["host"], data["pid"]) if data else None
    except (ValueError, KeyError, TypeError):  # being rewritten, or not ours: unknown
        return None


def current_holder(engine: sa.Engine) -> Holder | None:
    """Who holds the lease now, or ``None``; never takes it (beyond an instant on SQLite)."""
    return _strategy(engine)[1](engine)


def _pg_holder(engine: sa.Engine) -> Holder | None:
    with engine.connect() as conn:
        pids = [p for (p,) in conn.execute(_PG_HOLDERS)]
        row = _read_row(conn) if pids else None
    # the row is the holder's only if it names the session that has the lock
    if not pids or (row and row.backend_pid == pids[0]):
        return row
    return replace(UNKNOWN, backend_pid=pids[0])


def _file_holder(engine: sa.Engine) -> Holder | None:
    with engine.connect() as conn:
        row = _read_row(conn)
    path = _lock_path(engine)
    if path is None or not os.path.exists(path):
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            found = _read_lockfile(fd) or UNKNOWN
            return row if row and row.holder_id == found.holder_id else found
        fcntl.flock(fd, fcntl.LOCK_UN)  # it was free: let go at once
        return None
    finally:
        os.close(fd)


class Lease:
    """A held lease; release it with :meth:`release` or by leaving the ``with`` block."""

    def __init__(self, engine: sa.Engine, me: Holder, fd: int | None, conn: sa.Connection | None):
        self.engine = engine
        self._holder = me
        self._fd = fd  # SQLite: the flocked lock file
        self._conn = conn  # PostgreSQL: the session owning the advisory lock
        self._pg = conn is not None
        self._conn_lock = threading.Lock()  # the heartbeat thread and release share _conn
        self._guard = threading.Lock()  # taken once, never waited for: see release()
        self._stop = threading.Event()
        self.lost: str | None = None
        self.heartbeat_error: str | None = None
        _LIVE.add(self)

    @property
    def holder(self) -> Holder:
        """This process, as its row describes it."""
        return self._holder

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def check(self) -> None:
        """Raise :class:`LeaseLost` if the lock is gone; call before anything destructive."""
        if self.lost:
            raise LeaseLost(f"the run lease was lost: {self.lost}", hint="resume the run")

    def set_run(self, run_id: str) -> None:
        """Name the run that holds the lease (known only once the journal made it)."""
        self._holder = replace(self._holder, run_id=run_id)
        with state_errors(self.engine, "naming the run in the lease"):
            self._write(full=True)

    def _write(self, *, full: bool) -> int:
        """Write the whole row (``full``) or refresh its heartbeat; returns rows touched."""
        if not self._pg:
            with self.engine.begin() as conn:
                return self._write_on(conn, full)
        with self._conn_lock:
            # on the lock's own session, so a dead session shows at the next beat
            return self._write_on(self._conn, full) if self._conn is not None else 0

    def _write_on(self, conn: sa.Connection, full: bool) -> int:
        h, t = self._holder, lease_table
        if not full:  # the tiny write: one timestamp, only while the row is ours
            stmt = t.update().where(t.c.name == "run", t.c.holder == h.holder_id)
            return conn.execute(stmt.values(heartbeat_at=_now())).rowcount
        # only the lock holder writes the whole row; update-else-insert keeps one row
        # visible throughout (the PostgreSQL lock session autocommits each statement)
        md.create_all(conn, tables=[lease_table], checkfirst=True)
        values = {
            "holder": h.holder_id, "host": h.host, "pid": h.pid, "backend_pid": h.backend_pid,
            "run_id": h.run_id, "command": h.command, "acquired_at": h.acquired_at,
            "heartbeat_at": _now(),
        }  # fmt: skip
        if conn.execute(t.update().where(t.c.name == "run").values(**values)).rowcount == 0:
            conn.execute(t.insert().values(name="run", **values))
        return 1

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                fd, path = self._fd, _lock_path(self.engine)
                # a lock file deleted under us no longer excludes anyone
                if fd is not None and path and os.stat(path).st_ino != os.fstat(fd).st_ino:
                    raise FileNotFoundError("the lock file was replaced")
                # after a failed beat write the whole row: its table may have gone
                if self._write(full=bool(self.heartbeat_error)) == 0 and not self._stop.is_set():
                    self._write(full=True)  # row deleted by hand: put it back
                self.heartbeat_error = None
            except Exception as exc:
                if self._stop.is_set():
                    return
                if isinstance(exc, OSError) or (self._pg and not self._session_alive()):
                    self.lost = f"{exc.__class__.__name__}: {exc}".splitlines()[0]
                    return
                # the row is only informational: a busy SQLite file is no reason to stop
                self.heartbeat_error = f"{exc.__class__.__name__}: {exc}".splitlines()[0]

    def _session_alive(self) -> bool:
        # a failed write on the lock's session is a lost lock only if the session died
        with self._conn_lock:
            try:
                return self._conn is not None and bool(self._conn.execute(sa.text("SELECT 1")))
            except Exception:
                return False

    def release(self) -> None:
        """Let go of the lease; idempotent, and safe from a signal handler."""
        # non-blocking: a second call (a signal handler interrupting the first, or
        # another thread) returns at once instead of deadlocking on this lock
        if not self._guard.acquire(blocking=False):
            return
        self._stop.set()
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # the last descriptor closed drops the flock; the file stays
        if self._pg:
            # let a heartbeat in flight finish, briefly; then unlock explicitly, because
            # the server ends a closed session asynchronously and the lease must be free
            # when release() returns; closing alone would drop it a moment later
            got = self._conn_lock.acquire(timeout=5)
            conn, self._conn = self._conn, None
            if conn is not None:
                if got:
                    with contextlib.suppress(Exception):
                        conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": KEY})
                with contextlib.suppress(Exception):  # even if the unlock failed
                    conn.close()
            if got:
                self._conn_lock.release()
        _LIVE.discard(self)

    def _forget_in_child(self) -> None:
        # a forked child must neither keep the lock alive after the parent dies nor
        # unlock it for the parent: close only the child's copies of the descriptors
        for fd in (self._fd, _socket_fd(self._conn)):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        _ORPHANED.append(self._conn)  # never collected here, so nothing says goodbye
        self._fd = self._conn = None
        self._guard.acquire(blocking=False)  # the child's release() does nothing


def _socket_fd(conn: sa.Connection | None) -> int | None:
    try:
        return int(conn.connection.dbapi_connection.pgconn.socket) if conn else None  # type: ignore[union-attr]
    except Exception:
        return None


def _after_fork() -> None:
    for lease in list(_LIVE):
        lease._forget_in_child()


_LIVE: weakref.WeakSet[Lease] = weakref.WeakSet()
_ORPHANED: list[sa.Connection | None] = []
os.register_at_fork(after_in_child=_after_fork)


def acquire(
    engine: sa.Engine,
    *,
    run_id: str | None,
    break_lease: bool = False,
    heartbeat_every: float = 5.0,
    wait: float = 1.0,
    command: str | None = None,
) -> Lease:
    """Take the state store's lease or raise :class:`LeaseHeld` naming the holder.

    *wait* bounds a short retry: a holder dying this instant (its server session
    still closing) or a ``status`` probing the SQLite lock is not a holder.
    """
    cmd = (command or shlex.join(sys.argv))[:200]
    me = Holder(uuid.uuid4().hex, socket.gethostname(), os.getpid(), run_id, cmd, _now())
    lease = _strategy(engine)[0](engine, me, _where(engine), break_lease, wait)
    try:
        # a full or read-only state store: a clear stop, not a traceback
        with state_errors(engine, "taking the run lease"):
            lease._write(full=True)
    except BaseException:
        lease.release()
        raise
    every = max(heartbeat_every, 0.05)  # zero would spin
    beat = threading.Thread(target=lease._beat, args=(every,), daemon=True)
    beat.name = "domicile-lease-heartbeat"
    beat.start()
    return lease


def _where(engine: sa.Engine) -> str:
    return f"state store {engine.url.render_as_string(hide_password=True)}"


def _poll(try_once: Callable[[], bool], wait: float) -> bool:
    deadline = time.monotonic() + wait
    while not try_once():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _acquire_sqlite(
    engine: sa.Engine, me: Holder, where: str, break_lease: bool, wait: float
) -> Lease:
    path = _lock_path(engine)
    if path is None:  # an in-memory store lives in this process only: nothing to share
        return Lease(engine, me, None, None)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)

        def once(fd: int = fd) -> bool:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False

        if not _poll(once, wait):
            holder = current_holder(engine) or _read_lockfile(fd) or UNKNOWN
            os.close(fd)
            hint = None
            if break_lease:
                hint = (
                    f"--break-lease cannot break a file lock, and this one is held by a live "
                    f"process (pid {holder.pid or '?'} on {holder.host or '?'}): stop it, then "
                    "run again (a dead holder's lock is free already)"
                )
            raise LeaseHeld(holder, where=where, hint=hint)
        # a file removed and recreated between open and flock is not the one others lock
        if os.stat(path).st_ino == os.fstat(fd).st_ino:
            break
        os.close(fd)
    data = json.dumps({"holder": me.holder_id, "host": me.host, "pid": me.pid}).encode()
    os.pwrite(fd, data, 0)  # who holds it, readable without the state database
    os.ftruncate(fd, len(data))
    return Lease(engine, me, fd, None)


def _acquire_pg(engine: sa.Engine, me: Holder, where: str, break_lease: bool, wait: float) -> Lease:
    conn = engine.connect()
    conn.execution_options(isolation_level="AUTOCOMMIT")  # no transaction left open idle
    conn.detach()  # never back into the pool: closing it must really end the session
    sql = sa.text
    try:
        # keepalives: the server notices a vanished holder machine in ~25 s, not hours
        conn.execute(
            sql(
                "SELECT set_config('tcp_keepalives_idle', '10', false),"
                " set_config('tcp_keepalives_interval', '5', false),"
                " set_config('tcp_keepalives_count', '3', false),"
                " set_config('application_name', :app, false)"
            ),
            {"app": f"domicile lease {me.host}:{me.pid}"[:63]},
        )

        def once() -> bool:
            return bool(conn.execute(sql("SELECT pg_try_advisory_lock(:k)"), {"k": KEY}).scalar())

        if not _poll(once, wait):
            holder = current_holder(engine) or UNKNOWN
            if not break_lease:
                raise LeaseHeld(holder, where=where)
            for (pid,) in conn.execute(_PG_HOLDERS).all():
                try:
                    conn.execute(sql("SELECT pg_terminate_backend(:p)"), {"p": pid})
                except sa.exc.DBAPIError as exc:
                    why = str(exc.orig).splitlines()[0]
                    hint = f"--break-lease could not end the holder's session ({why}): "
                    hint += "it takes a superuser or the pg_signal_backend role"
                    raise LeaseHeld(holder, where=where, hint=hint) from exc
            # termination is asynchronous: the lock frees once that backend has exited
            if not _poll(once, max(wait, 10.0)):
                hint = "--break-lease ended the holder's session but the lock did not free"
                raise LeaseHeld(holder, where=where, hint=hint)
        backend = conn.execute(sql("SELECT pg_backend_pid()")).scalar_one()
    except BaseException:
        conn.close()
        raise
    return Lease(engine, replace(me, backend_pid=int(backend)), None, conn)


_Acquire = Callable[[sa.Engine, Holder, str, bool, float], Lease]
_STRATEGIES: dict[str, tuple[_Acquire, Callable[[sa.Engine], Holder | None]]] = {
    "sqlite": (_acquire_sqlite, _file_holder),
    "postgresql": (_acquire_pg, _pg_holder),
}
"""The lock each kind of state store offers, by SQLAlchemy backend name."""


def _strategy(engine: sa.Engine) -> tuple[_Acquire, Callable[[sa.Engine], Holder | None]]:
    try:
        return _STRATEGIES[engine.dialect.name]
    except KeyError:
        what = f"a run lease needs a SQLite or PostgreSQL state store, not {engine.dialect.name}"
        raise ConfigError(what, where=_where(engine)) from None
