"""The scale benchmark's floor and its database-side accounting (run ``scale.py``).

The floor moves exactly the rows domicile must move, by the engine's own bulk
path, on its own copy of the fleet: per table (parents first) and per home,
the moving rows are selected at the source through the ``users`` directory
(``JOIN users ON`` the owner column, ``WHERE users.country IN`` the home
country's spellings) and loaded at home, then deleted at the source (children
first, ``WHERE owner IN (SELECT id FROM users WHERE country IN ...)``),
committed:

* PostgreSQL: psycopg 3 ``COPY (SELECT ...) TO STDOUT`` streamed into
  ``COPY ... FROM STDIN`` at the home (one connection per home), the homes
  committed before the source's ``DELETE``;
* SQLite: the four home files ``ATTACH``-ed, ``INSERT ... SELECT`` and
  ``DELETE`` in one transaction.

No journal, no digests, no verify, one connection per database: what the
engine costs, not what the protocol costs.  The copy is checked afterwards
like domicile's (``Fleet.check``).
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import sqlalchemy as sa

from move_data import POSTGRES
from move_floor import pg_dsn, server_cpu, sqlite_path
from scale_data import HOMES, OWNER, SOURCE, SPELLINGS, TABLES, db_name, metadata


def _spelled(codes: list[str]) -> str:
    """SQL: the list of the countries' spellings in the directory."""
    return "(" + ", ".join(f"'{s}'" for c in codes for s in SPELLINGS[c]) + ")"


def selects(code: str, schema: str = "") -> dict[str, str]:
    """Per table, the SELECT of the rows of the users of country *code*."""
    p = f"{schema}." if schema else ""
    out = {}
    for t in TABLES:
        cols = ", ".join(f"t.{c.name}" for c in metadata().tables[t].columns)
        if t == "users":
            out[t] = f"SELECT {cols} FROM {p}users t WHERE t.country IN {_spelled([code])}"
        else:
            out[t] = (
                f"SELECT {cols} FROM {p}{t} t JOIN {p}users u ON u.id = t.{OWNER[t]} "
                f"WHERE u.country IN {_spelled([code])}"
            )
    return out


def deletes(schema: str = "") -> list[str]:
    """The source's DELETEs of every moving row, children first."""
    p = f"{schema}." if schema else ""
    moving = _spelled(list(HOMES))
    out = [
        f"DELETE FROM {p}{t} WHERE {OWNER[t]} IN (SELECT id FROM {p}users WHERE country IN "
        f"{moving})"
        for t in reversed(TABLES[1:])
    ]
    return [*out, f"DELETE FROM {p}users WHERE country IN {moving}"]


def columns(t: str) -> str:
    return ", ".join(c.name for c in metadata().tables[t].columns)


def floor(urls: dict[str, str]) -> str:
    """Move every moving row of the copy *urls* by the bulk path; returns which path."""
    if urls[SOURCE].startswith("sqlite"):
        con = sqlite3.connect(sqlite_path(urls[SOURCE]), isolation_level=None)
        try:
            for code, home in HOMES.items():
                con.execute(f"ATTACH DATABASE ? AS h_{code}", (sqlite_path(urls[home]),))
            con.execute("BEGIN IMMEDIATE")
            for t in TABLES:
                for code in HOMES:
                    con.execute(f"INSERT INTO h_{code}.{t} ({columns(t)}) {selects(code)[t]}")
            for sql in deletes("main"):
                con.execute(sql)
            con.execute("COMMIT")
        finally:
            con.close()
        return "ATTACH + INSERT ... SELECT, DELETE"
    import psycopg

    with psycopg.connect(pg_dsn(urls[SOURCE])) as src:
        homes = {code: psycopg.connect(pg_dsn(urls[home])) for code, home in HOMES.items()}
        try:
            with src.cursor() as rc:
                for t in TABLES:
                    for code, dst in homes.items():
                        with (
                            dst.cursor() as wc,
                            rc.copy(f"COPY ({selects(code)[t]}) TO STDOUT") as out,
                            wc.copy(f"COPY {t} ({columns(t)}) FROM STDIN") as into,
                        ):
                            for data in out:
                                into.write(data)
                for dst in homes.values():
                    dst.commit()
                for sql in deletes():
                    rc.execute(sql)
            src.commit()
        finally:
            for dst in homes.values():
                dst.close()
    return "COPY TO STDOUT -> COPY FROM STDIN, DELETE"


def wal_lsn() -> int:
    """The server's WAL insert position in bytes (every database's writes, anyone's)."""
    engine = sa.create_engine(POSTGRES)
    try:
        with engine.connect() as conn:
            return int(
                conn.exec_driver_sql(
                    "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')"
                ).scalar_one()
            )
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------
# The PostgreSQL server's CPU and network per database, while a run goes.

SAMPLE_EVERY = 0.25  # seconds between two looks at /proc and at the server's sockets
_SOCKET = re.compile(r"127\.0\.0\.1:5432\s+(\S+)\s+users:\(\(\"postgres\",pid=(\d+)")
_BYTES = re.compile(r"bytes_(sent|received):(\d+)")
BACKGROUND = (  # PostgreSQL's server processes of no database
    "walwriter", "checkpointer", "background writer", "autovacuum launcher", "archiver",
    "logical replication launcher", "stats collector", "walsender", "walreceiver", "startup",
)  # fmt: skip


class Probe:
    """CPU seconds and socket bytes of the PostgreSQL server, per role of database.

    Every ``SAMPLE_EVERY`` seconds it reads utime + stime of each ``postgres``
    process (``/proc/<pid>/stat``) and the database it serves (its command
    line), and the TCP byte counters of the server's sockets (``ss -tinp``).
    Roles: ``source``, ``home``, ``state`` (the databases of the measured
    copy, by name *prefix*), ``other`` (other databases' backends: work on the
    machine that is not ours), ``shared`` (server processes of no database:
    WAL writer, checkpointer, background writer) and ``unattributed`` (what
    backends did after their last sample before they ended — anyone's, from
    the postmaster's children's times; our runs' pooled connections live for
    the whole run).  And the WAL the server wrote meanwhile (``wal``, bytes:
    every database's, ours and anyone's: PostgreSQL does not split it per
    database).  *prefix* None (SQLite): nothing measured.
    """

    def __init__(self, prefix: str | None):
        self.prefix = prefix
        self.cpu: dict[str, float] = {}
        self.net: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        # keyed by (pid, start time): a pid reused meanwhile is another process
        self._cpu0: dict[tuple[int, str], float] = {}
        self._cpu: dict[tuple[int, str], tuple[str, float]] = {}
        self._net0: dict[tuple[str, int], int] = {}  # (peer, backend pid)
        self._net: dict[tuple[str, int], tuple[str, int]] = {}
        self._total0 = 0.0
        self.wal = 0
        self._wal0 = 0

    def __enter__(self) -> Probe:
        if self.prefix is None:
            return self
        self._total0 = server_cpu(["postgresql"])["postgresql"]
        self._wal0 = wal_lsn()
        self._take()
        self._cpu0 = {k: v for k, (_r, v) in self._cpu.items()}
        self._net0 = {k: b for k, (_r, b) in self._net.items()}
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.prefix is None:
            return
        self._stop.set()
        self._thread.join()
        time.sleep(0.3)  # let the postmaster reap the backends that just ended
        self._take()
        total = server_cpu(["postgresql"])["postgresql"] - self._total0
        self.wal = wal_lsn() - self._wal0
        cpu: dict[str, float] = {}
        for k, (role, v) in self._cpu.items():
            cpu[role] = cpu.get(role, 0.0) + v - self._cpu0.get(k, 0.0)
        cpu["shared"] = cpu.pop("server", 0.0)
        cpu["unattributed"] = max(0.0, total - sum(cpu.values()))
        self.cpu = cpu
        for sock, (role, b) in self._net.items():
            if role != "other":
                self.net[role] = self.net.get(role, 0) + b - self._net0.get(sock, 0)

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY):
            self._take()

    def _role(self, pid: int, cmdline: str, roles: dict[int, str]) -> str:
        words = cmdline.split()
        if not words or words[0] != "postgres:":
            return "server"  # the postmaster
        words = words[2:] if len(words) > 1 and words[1].endswith(":") else words[1:]
        if words[:3] == ["parallel", "worker", "for"] and len(words) > 4 and words[4].isdigit():
            return roles.get(int(words[4]), "other")  # its leader's
        assert self.prefix is not None
        for w in words:
            if w.startswith(self.prefix):
                store = w[len(self.prefix) :]
                return (
                    "source" if store == db_name(SOURCE) else store if store == "state" else "home"
                )
        return "server" if " ".join(words).startswith(BACKGROUND) else "other"

    def _take(self) -> None:
        """One sample of every postgres process and socket (the last one per pid wins)."""
        tick = os.sysconf("SC_CLK_TCK")
        found: dict[tuple[int, str], tuple[str, float]] = {}
        roles: dict[int, str] = {}
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                stat = (proc / "stat").read_text()
                if stat[stat.index("(") + 1 : stat.rindex(")")] != "postgres":
                    continue
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (OSError, ValueError):  # gone meanwhile
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            pid = int(proc.name)
            key = (pid, fields[19])  # field 22: the process's start time
            known = self._cpu.get(key, ("other", 0.0))[0]
            if not cmdline.strip():
                role = known  # exiting: its title is gone (a zombie's is empty), its times final
            else:
                role = self._role(pid, cmdline, roles)
                if role == "other" and known != "other":
                    role = known  # a backend keeps its database (its title caught mid-rewrite)
            roles[pid] = role
            found[key] = (role, (int(fields[11]) + int(fields[12])) / tick)  # utime + stime
        self._cpu.update(found)
        listing = subprocess.run(
            ["ss", "-tinpH", "( sport = :5432 )"], capture_output=True, text=True, check=False
        ).stdout
        sock: tuple[str, int] | None = None
        for line in listing.splitlines():
            m = _SOCKET.search(line)
            if m is not None:
                sock = (m.group(1), int(m.group(2)))
            elif sock is not None and line[:1].isspace():
                role = roles.get(sock[1], "other")
                self._net[sock] = (role, sum(int(n) for _k, n in _BYTES.findall(line)))
                sock = None
