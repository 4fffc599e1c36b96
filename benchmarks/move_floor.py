"""The move benchmark's floors and its server CPU accounting (run ``move.py``).

Two floors per pair, each on its own copy of the fleet:

* (a) the selected bulk move: read at the source exactly the rows that must
  move (users WHERE country IN the US spellings; events JOIN users on
  user_id with the same WHERE), load them at home with the engine's bulk
  path, then DELETE them at the source (events first), committed;
* (b) the whole-table bulk move: the same with every row.

Bulk paths: SQLite -> SQLite ATTACH + ``INSERT ... SELECT`` (one
transaction); PostgreSQL -> PostgreSQL psycopg 3 ``COPY (SELECT ...) TO
STDOUT`` streamed into ``COPY ... FROM STDIN``; SQLite -> PostgreSQL rows
from sqlite3 into ``COPY ... FROM STDIN`` (``write_row``); PostgreSQL ->
MariaDB ``COPY ... TO STDOUT`` (text format) into a temporary file loaded
with ``LOAD DATA LOCAL INFILE``, or multi-row INSERTs (PyMySQL
``executemany``, statements under 1 MB, below ``max_allowed_packet``) when the
server refuses local infile.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from move_data import COLUMNS, TABLES, US_IN

# ---------------------------------------------------------------------------
# CPU time of the database servers.

SERVER_PROCESSES = {"postgresql": ("postgres",), "mariadb": ("mariadbd", "mysqld")}
TICK = os.sysconf("SC_CLK_TCK")


def server_cpu(engines: list[str]) -> dict[str, float]:
    """CPU seconds used so far by each engine's server processes (none for SQLite).

    Sums utime + stime from ``/proc/<pid>/stat`` over every process of that
    name, plus cutime + cstime: a PostgreSQL backend that exits is reaped by
    the postmaster, whose children's times then hold its CPU, so a connection
    closed between two samples still counts.  MariaDB is one process; its
    times include threads that have ended.  The whole server is counted,
    other clients' work included.
    """
    names = {n: e for e in engines for n in SERVER_PROCESSES.get(e, ())}
    out = dict.fromkeys((e for e in engines if e in SERVER_PROCESSES), 0.0)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        if comm in names:
            fields = stat[stat.rindex(")") + 2 :].split()
            # fields[0] is field 3 (state): utime, stime, cutime, cstime are fields 14-17
            out[names[comm]] += sum(int(f) for f in fields[11:15]) / TICK
    return out


@contextmanager
def measured(engines: list[str]) -> Iterator[dict[str, Any]]:
    """Wall time, this process's CPU time and the servers' CPU time of a section."""
    got: dict[str, Any] = {}
    servers = server_cpu(engines)
    cpu, started = time.process_time(), time.perf_counter()
    yield got
    got["seconds"] = time.perf_counter() - started
    got["client_cpu"] = time.process_time() - cpu
    time.sleep(0.3)  # let the postmaster reap the backends that just ended
    after = server_cpu(engines)
    got["server_cpu"] = {e: after[e] - servers[e] for e in servers}


# ---------------------------------------------------------------------------
# The statements.


def selects(selected: bool, schema: str = "") -> dict[str, str]:
    """Per table, the SELECT of the rows to move (*selected*: US users' rows only)."""
    p = f"{schema}." if schema else ""
    where = f" WHERE u.country IN {US_IN}" if selected else ""
    users = ", ".join(f"u.{c}" for c in COLUMNS["users"])
    events = ", ".join(f"e.{c}" for c in COLUMNS["events"])
    return {
        "users": f"SELECT {users} FROM {p}users u{where}",
        "events": (
            f"SELECT {events} FROM {p}events e JOIN {p}users u ON u.id = e.user_id{where}"
            if selected
            else f"SELECT {events} FROM {p}events e"
        ),
    }


def deletes(selected: bool, schema: str = "") -> list[str]:
    """The source's DELETEs, children first."""
    p = f"{schema}." if schema else ""
    if not selected:
        return [f"DELETE FROM {p}{t}" for t in reversed(TABLES)]
    return [
        f"DELETE FROM {p}events WHERE user_id IN "
        f"(SELECT id FROM {p}users WHERE country IN {US_IN})",
        f"DELETE FROM {p}users WHERE country IN {US_IN}",
    ]


def columns(table: str) -> str:
    return ", ".join(COLUMNS[table])


def sqlite_path(url: str) -> str:
    return url[len("sqlite:///") :]


def pg_dsn(url: str) -> str:
    """A libpq connection string for psycopg from a SQLAlchemy URL."""
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


# ---------------------------------------------------------------------------
# The floors: each returns how it loaded the rows at home.


def floor_sqlite_sqlite(source: str, home: str, selected: bool) -> str:
    """INSERT ... SELECT into the attached home file and DELETE, in one transaction."""
    con = sqlite3.connect(sqlite_path(source), isolation_level=None)
    try:
        con.execute("ATTACH DATABASE ? AS home", (sqlite_path(home),))
        con.execute("BEGIN IMMEDIATE")
        for t, sql in selects(selected, "main").items():
            con.execute(f"INSERT INTO home.{t} ({columns(t)}) {sql}")
        for sql in deletes(selected, "main"):
            con.execute(sql)
        con.execute("COMMIT")
    finally:
        con.close()
    return "ATTACH + INSERT ... SELECT"


def floor_postgresql_postgresql(source: str, home: str, selected: bool) -> str:
    """COPY (SELECT ...) TO STDOUT streamed into COPY FROM STDIN at home, then DELETE."""
    import psycopg

    with psycopg.connect(pg_dsn(source)) as src, psycopg.connect(pg_dsn(home)) as dst:
        with src.cursor() as rc, dst.cursor() as wc:
            for t, sql in selects(selected).items():
                with (
                    rc.copy(f"COPY ({sql}) TO STDOUT") as out,
                    wc.copy(f"COPY {t} ({columns(t)}) FROM STDIN") as into,
                ):
                    for data in out:
                        into.write(data)
            dst.commit()
            for sql in deletes(selected):
                rc.execute(sql)
        src.commit()
    return "COPY TO STDOUT -> COPY FROM STDIN"


def floor_sqlite_postgresql(source: str, home: str, selected: bool) -> str:
    """Rows read with sqlite3 written into COPY FROM STDIN at home, then DELETE at the source."""
    import psycopg

    con = sqlite3.connect(sqlite_path(source), isolation_level=None)
    try:
        with psycopg.connect(pg_dsn(home)) as dst:
            with dst.cursor() as wc:
                for t, sql in selects(selected).items():
                    with wc.copy(f"COPY {t} ({columns(t)}) FROM STDIN") as into:
                        for row in con.execute(sql):
                            into.write_row(row)
            dst.commit()
        con.execute("BEGIN IMMEDIATE")
        for sql in deletes(selected):
            con.execute(sql)
        con.execute("COMMIT")
    finally:
        con.close()
    return "sqlite3 rows -> COPY FROM STDIN (write_row)"


def _mysql(url: str) -> Any:
    import pymysql

    u = sa.make_url(url)
    return pymysql.connect(
        host=u.host or "127.0.0.1",
        port=u.port or 3306,
        user=u.username or "root",
        password=u.password or "",
        database=u.database,
        charset="utf8mb4",
        local_infile=True,
        autocommit=False,
    )


def local_infile_refused(exc: Exception) -> bool:
    """Does this error say the server (or client) does not allow LOAD DATA LOCAL?"""
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    return code in (1148, 2068, 3948, 4166) or "not allowed" in str(exc).lower()


INSERT_CHUNK = 10_000  # rows per executemany; PyMySQL joins them into statements < 1 MB


def floor_postgresql_mariadb(source: str, home: str, selected: bool, how: str = "auto") -> str:
    """COPY TO STDOUT into a file for LOAD DATA LOCAL INFILE (or multi-row INSERTs), DELETE.

    *how*: ``infile``, ``insert`` or ``auto`` (infile unless the server refuses it).
    """
    import psycopg

    used = "insert" if how == "insert" else "infile"
    refused = False
    with (
        psycopg.connect(pg_dsn(source)) as src,
        tempfile.TemporaryDirectory(prefix="domicile-floor-") as tmp,
    ):
        my = _mysql(home)
        try:
            with src.cursor() as rc, my.cursor() as wc:
                for t, sql in selects(selected).items():
                    if used == "infile":
                        path = Path(tmp) / f"{t}.tsv"
                        # PostgreSQL's text format is LOAD DATA's default: tabs, \N, backslashes
                        with path.open("wb") as f, rc.copy(f"COPY ({sql}) TO STDOUT") as out:
                            for data in out:
                                f.write(data)
                        try:
                            wc.execute(
                                f"LOAD DATA LOCAL INFILE %s INTO TABLE {t} CHARACTER SET utf8mb4 "
                                f"({columns(t)})",
                                (str(path),),
                            )
                        except Exception as exc:
                            if how != "auto" or not local_infile_refused(exc):
                                raise
                            my.rollback()
                            used, refused = "insert", True
                        path.unlink()
                    if used == "insert":
                        marks = ", ".join(["%s"] * len(COLUMNS[t]))
                        insert = f"INSERT INTO {t} ({columns(t)}) VALUES ({marks})"
                        with src.cursor(name=f"read_{t}") as named:
                            named.execute(sql)
                            while chunk := named.fetchmany(INSERT_CHUNK):
                                wc.executemany(insert, chunk)
                my.commit()
        finally:
            my.close()
        with src.cursor() as rc:
            for sql in deletes(selected):
                rc.execute(sql)
        src.commit()
    if used == "infile":
        return "COPY TO STDOUT (text) -> temporary file -> LOAD DATA LOCAL INFILE"
    why = " (the server refused LOAD DATA LOCAL INFILE)" if refused else ""
    return f"named cursor -> multi-row INSERTs (executemany, < 1 MB each){why}"


def run_floor(pair: str, source: str, home: str, selected: bool, mariadb_load: str) -> str:
    """Move the rows with the pair's bulk path; returns the path's description."""
    if pair == "sqlite-sqlite":
        return floor_sqlite_sqlite(source, home, selected)
    if pair == "postgresql-postgresql":
        return floor_postgresql_postgresql(source, home, selected)
    if pair == "sqlite-postgresql":
        return floor_sqlite_postgresql(source, home, selected)
    if pair == "postgresql-mariadb":
        return floor_postgresql_mariadb(source, home, selected, mariadb_load)
    raise ValueError(pair)
