"""Move benchmark: ``domicile run`` against the raw engine floor, same run, same data.

For each backend it builds a two-store fleet of one engine: a legacy store in
Singapore holding a ``users`` directory (every user in the US, so that every
row must move) and an ``events`` table of ``--rows`` small rows, and an empty
US home store with the same two tables.  Then it times

* the floor, on an identical separate copy of the data: the least work any
  move could do.  SQLite: ATTACH the home file, ``INSERT INTO home.t SELECT *
  FROM main.t`` and ``DELETE FROM main.t`` for both tables in one transaction.
  PostgreSQL: psycopg 3 ``COPY (SELECT ...) TO STDOUT`` streamed into ``COPY
  ... FROM STDIN`` at home, then ``DELETE`` at the source;
* domicile's move through the library (:func:`domicile.run.executor.execute`)
  in a child process of this script, whose peak resident memory is read from
  ``wait4`` (``ru_maxrss``) when it exits,

checks that the source is empty and the home holds every row afterwards, and
prints rows/s, the ratio of domicile's throughput to the floor's, and the
peak RSS.  The aims: at least half the floor's throughput, and under 300 MB
of memory whatever the row count (give several ``--rows`` to see it stay
flat).  Not a test: nothing here asserts on wall-clock time.

    python benchmarks/move.py [--rows 1000000 [100000 ...]] [--users 50000]
                              [--backend sqlite|postgresql|both]
                              [--batch-size 2000] [--workers 1]
                              [--profile cprofile|py-spy] [--py-spy PATH]

``--profile`` prints where the move's time went: each step of ``execute()``
(census, reading pages, journalling batch rows, copy, verify, delete) and the
helpers they share (digests, selects by key, journal reads and writes,
commits).  py-spy samples the child from outside with little overhead;
cProfile needs nothing installed but slows a Python-bound move several times
over.  PostgreSQL comes from ``DOMICILE_TEST_POSTGRES`` (default: the local
server); the benchmark makes its own databases there and drops them at the end.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml

POSTGRES = os.environ.get(
    "DOMICILE_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
TABLES = ("users", "events")  # parents first
MEMORY_AIM_MB = 300
RATIO_AIM = 0.5


def say(message: str) -> None:
    """A progress line, flushed at once."""
    print(message, flush=True)


# ---------------------------------------------------------------------------
# Schema and data.


def metadata() -> sa.MetaData:
    """The app's two tables (identical at the source and at home)."""
    md = sa.MetaData()
    # INTEGER PRIMARY KEY on SQLite: the rowid table an app would have there.
    big = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    sa.Table(
        "users",
        md,
        sa.Column("id", big, primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(60), nullable=False),
        sa.Column("country", sa.String(40), nullable=False),
    )
    sa.Table(
        "events",
        md,
        sa.Column("id", big, primary_key=True, autoincrement=False),
        sa.Column("user_id", sa.BigInteger, nullable=False, index=True),
        sa.Column("kind", sa.String(12), nullable=False),
        sa.Column("at", sa.DateTime, nullable=False),
        sa.Column("payload", sa.String(64), nullable=False),
    )
    return md


LOREM = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod"


def inserts(dialect: str, users: int, rows: int) -> list[tuple[str, str]]:
    """(table, INSERT ... SELECT over a series) generating the data inside the engine."""
    if dialect == "sqlite":

        def series(n: int) -> str:
            return (
                "(WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s "
                f"WHERE x < {n}) SELECT x FROM s) AS s"
            )

        # SQLAlchemy's SQLite DateTime text form (microseconds included)
        at = "datetime('2024-01-01', '+' || (x * 37 % 31536000) || ' seconds') || '.000000'"
    else:

        def series(n: int) -> str:
            return f"generate_series(1, {n}) AS s(x)"

        at = "timestamp '2024-01-01' + (x * 37 % 31536000) * interval '1 second'"
    owner = f"((x * 2654435761) % {users} + 1)"  # scattered: events are not grouped by user
    kind = "CASE x % 4 WHEN 0 THEN 'view' WHEN 1 THEN 'like' WHEN 2 THEN 'share' ELSE 'comment' END"
    payload = f"substr('{LOREM}', 1 + x % 25, 40)"  # 40 characters
    country = "CASE x % 3 WHEN 0 THEN 'US' WHEN 1 THEN 'usa' ELSE 'United States' END"
    return [
        (
            "users",
            f"INSERT INTO users (id, name, country) SELECT x, 'user ' || x, {country} "
            f"FROM {series(users)}",
        ),
        (
            "events",
            "INSERT INTO events (id, user_id, kind, at, payload) "
            f"SELECT x, {owner}, {kind}, {at}, {payload} FROM {series(rows)}",
        ),
    ]


def load(url: str, users: int, rows: int) -> None:
    """Create the tables at *url* and, with *rows*, fill them; analyze as an app would."""
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    sqlite = engine.dialect.name == "sqlite"
    try:
        metadata().create_all(engine)
        with engine.connect() as conn:
            if rows:
                if sqlite:
                    conn.exec_driver_sql("PRAGMA journal_mode=OFF")
                    conn.exec_driver_sql("PRAGMA synchronous=OFF")
                    conn.exec_driver_sql("BEGIN")
                for _table, sql in inserts(engine.dialect.name, users, rows):
                    conn.execute(sa.text(sql))
                if sqlite:
                    conn.exec_driver_sql("COMMIT")
            if sqlite:
                # what domicile sets on connect; persistent in the file, so the floor has it too
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")
                conn.exec_driver_sql("ANALYZE")
            else:
                conn.exec_driver_sql("VACUUM ANALYZE")
    finally:
        engine.dispose()


def counts(url: str) -> dict[str, int]:
    """Rows per table."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return {
                t: conn.exec_driver_sql(f"SELECT count(*) FROM {t}").scalar_one() for t in TABLES
            }
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------
# Databases: the fleet's two stores and the floor's identical copy.

STORES = ("legacy", "home", "floor_legacy", "floor_home")


@contextmanager
def databases(backend: str, workdir: Path, users: int, rows: int) -> Iterator[dict[str, str]]:
    """URLs of the four loaded databases (the floor's are copies); dropped afterwards."""
    if backend == "sqlite":
        urls = {s: f"sqlite:///{workdir / s}.db" for s in STORES}
        load(urls["legacy"], users, rows)
        load(urls["home"], users, 0)
        for s in ("legacy", "home"):
            shutil.copyfile(workdir / f"{s}.db", workdir / f"floor_{s}.db")
        yield urls
        return
    server = sa.make_url(POSTGRES)
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    tag = uuid.uuid4().hex[:10]
    names = {s: f"domicile_bench_{tag}_{s}" for s in STORES}
    urls = {
        s: server.set(database=db).render_as_string(hide_password=False) for s, db in names.items()
    }
    try:
        with admin.connect() as conn:
            for s in ("legacy", "home"):
                conn.exec_driver_sql(f'CREATE DATABASE "{names[s]}"')
        load(urls["legacy"], users, rows)
        load(urls["home"], users, 0)
        with admin.connect() as conn:  # byte-for-byte copies, with statistics
            for s in ("legacy", "home"):
                conn.exec_driver_sql(
                    f'CREATE DATABASE "{names["floor_" + s]}" TEMPLATE "{names[s]}"'
                )
        yield urls
    finally:
        with admin.connect() as conn:
            for db in names.values():
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin.dispose()
        say(f"  dropped databases domicile_bench_{tag}_*")


def data_map(urls: dict[str, str], workdir: Path) -> dict[str, Any]:
    """The domicile.yaml of the fleet (state: a SQLite file in the work folder)."""
    return {
        "version": 1,
        "state": f"sqlite:///{workdir / 'state.db'}",
        "stores": {
            "legacy": {
                "url": urls["legacy"],
                "labels": {"country": "SG", "region": "ap-southeast-1", "operator": "legacy"},
            },
            "home": {
                "url": urls["home"],
                "labels": {"country": "US", "region": "us-south-1", "operator": "custodian"},
            },
        },
        "subjects": {"dataset": "users", "id": "id", "country": "country"},
        "jurisdictions": {
            "US": {
                "countries": ["US"],
                "allowed": {"country": "US", "operator": "custodian"},
                "home": ["home"],
            },
        },
        "datasets": {
            "users": {"table": "users", "key": ["id"], "owner": "id"},
            "events": {"table": "events", "key": ["id"], "owner": "user_id"},
        },
    }


# ---------------------------------------------------------------------------
# The floor.


def sqlite_path(url: str) -> str:
    return url[len("sqlite:///") :]


def floor_sqlite(urls: dict[str, str]) -> None:
    """INSERT ... SELECT into the attached home file and DELETE, in one transaction."""
    con = sqlite3.connect(sqlite_path(urls["floor_legacy"]), isolation_level=None)
    try:
        con.execute("ATTACH DATABASE ? AS home", (sqlite_path(urls["floor_home"]),))
        con.execute("BEGIN IMMEDIATE")
        for t in TABLES:
            con.execute(f"INSERT INTO home.{t} SELECT * FROM main.{t}")
        for t in reversed(TABLES):
            con.execute(f"DELETE FROM main.{t}")
        con.execute("COMMIT")
    finally:
        con.close()


def floor_postgresql(urls: dict[str, str]) -> None:
    """COPY TO STDOUT streamed into COPY FROM STDIN at home, then DELETE at the source."""
    import psycopg

    def dsn(url: str) -> str:
        return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)

    with (
        psycopg.connect(dsn(urls["floor_legacy"])) as src,
        psycopg.connect(dsn(urls["floor_home"])) as dst,
    ):
        with src.cursor() as rc, dst.cursor() as wc:
            for t in TABLES:
                with (
                    rc.copy(f"COPY (SELECT * FROM {t}) TO STDOUT") as out,
                    wc.copy(f"COPY {t} FROM STDIN") as into,
                ):
                    for data in out:
                        into.write(data)
            dst.commit()
            for t in reversed(TABLES):
                rc.execute(f"DELETE FROM {t}")
        src.commit()


# ---------------------------------------------------------------------------
# domicile's move, in a child process.

# Where the time of a move goes.  STEPS split execute() into its parts; SPREAD are
# helpers the steps share, each split by the step (py-spy) or function (cProfile)
# that called it.  (label, file, qualified name)
EXECUTE = ("run/executor.py", "execute")
STEPS = [
    ("census scans (before, after each pass)", "domicile/scan.py", "scan"),
    ("read source pages (Mover.read)", "run/batch.py", "Mover.read"),
    ("journal the batch rows (Journal.add_batch)", "run/journal.py", "Journal.add_batch"),
    ("copy to home (Mover.copy_batch)", "run/batch.py", "Mover.copy_batch"),
    ("verify at home (Mover.verify_batch)", "run/batch.py", "Mover.verify_batch"),
    ("compare-and-delete (Mover.delete_batch)", "run/batch.py", "Mover.delete_batch"),
]
SPREAD = [
    ("row digests (digest_hex)", "run/rows.py", "digest_hex"),
    ("selects by key IN-lists (select_by_keys)", "run/rows.py", "select_by_keys"),
    ("journal rows read back (Journal.rows)", "run/journal.py", "Journal.rows"),
    ("journal state changes (Journal.transition)", "run/journal.py", "Journal.transition"),
    ("journal batch read back (Journal.batch)", "run/journal.py", "Journal.batch"),
    ("copied_before look-ups", "run/journal.py", "Journal.copied_before"),
    ("insert at home (Mover._write)", "run/batch.py", "Mover._write"),
    ("source DELETE (Mover._delete_rows)", "run/batch.py", "Mover._delete_rows"),
    ("placement verdict per row (classify)", "domicile/placement.py", "classify"),
    ("owner countries (Directory.resolve)", "domicile/scan.py", "Directory.resolve"),
    ("journal keys to column types (normalize_key)", "run/rows.py", "normalize_key"),
    (
        "transaction commits (any store, journal)",
        "sqlalchemy/engine/base.py",
        "Connection._commit_impl",
    ),
]


@dataclass
class Spent:
    """Time spent in one function: in all, and by who called it."""

    seconds: float = 0.0
    calls: int | None = None
    by: dict[str, float] = field(default_factory=dict)


def from_cprofile(path: Path, wanted: list[tuple[str, str]]) -> dict[tuple[str, str], Spent]:
    """Cumulative time of each wanted (file, qualified name), split by immediate caller."""
    raw: dict[tuple[str, int, str], Any] = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    out = {w: Spent(calls=0) for w in wanted}
    for (file, _line, name), (_cc, nc, _tt, ct, callers) in raw.items():
        for suffix, qualname in wanted:
            if name == qualname.rsplit(".", 1)[-1] and file.endswith(suffix):
                spent = out[(suffix, qualname)]
                spent.seconds += ct
                spent.calls = (spent.calls or 0) + nc
                for (cfile, cline, caller), (_c, _n, _t, cct) in callers.items():
                    by = f"{caller} ({Path(cfile).name}:{cline})"
                    spent.by[by] = spent.by.get(by, 0.0) + cct
    return out


SPY_RATE = 100  # samples per second
TOP = 15
_FRAME = re.compile(r"^(?P<name>.*) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def from_py_spy(
    path: Path, wanted: list[tuple[str, str]], rate: int
) -> dict[tuple[str, str], Spent]:
    """Seconds in each wanted function from py-spy's collapsed stacks, split by step."""
    out = {w: Spent() for w in wanted}
    steps = {(suffix, name): label.split(" (")[0] for label, suffix, name in STEPS}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        seconds = int(count) / rate
        frames = []
        for frame in stack.split(";"):
            m = _FRAME.match(frame)
            if m:
                frames.append((m["file"], m["name"]))
        hit = {w for w in wanted if any(f.endswith(w[0]) and n == w[1] for f, n in frames)}
        step = next((label for (sfx, name), label in steps.items() if (sfx, name) in hit), "other")
        for w in hit:
            out[w].seconds += seconds
            out[w].by[step] = out[w].by.get(step, 0.0) + seconds
    return out


def print_profile(spent: dict[tuple[str, str], Spent], how: str) -> None:
    """Where the time of execute() went: its steps, then the helpers they share."""
    whole = spent[EXECUTE].seconds
    say(f"  where the time goes ({how}; execute() = {whole:.1f}s = 100%):")

    def line(label: str, s: Spent) -> None:
        calls = f"{s.calls:>9,} calls" if s.calls is not None else ""
        say(f"    {label:<50} {s.seconds:8.1f}s {s.seconds / whole:6.1%} {calls}")

    accounted = 0.0
    for label, suffix, name in STEPS:
        line(label, spent[(suffix, name)])
        accounted += spent[(suffix, name)].seconds
    line("everything else", Spent(whole - accounted))
    say("  shared helpers, by caller:")
    for label, suffix, name in SPREAD:
        s = spent[(suffix, name)]
        line(label, s)
        for by, seconds in sorted(s.by.items(), key=lambda kv: -kv[1])[:5]:
            if seconds >= 0.05 * max(s.seconds, 1e-9):
                say(f"      {'from ' + by:<48} {seconds:8.1f}s")


def wanted() -> list[tuple[str, str]]:
    """Every function the profile report looks for."""
    return [EXECUTE, *[(f, n) for _l, f, n in STEPS], *[(f, n) for _l, f, n in SPREAD]]


def show_profile(path: Path, args: argparse.Namespace) -> None:
    """Print the report, then the functions with the most time of their own."""
    if args.profile == "cprofile":
        print_profile(from_cprofile(path, wanted()), f"cProfile, {args.profile_timer} clock")
        buf = io.StringIO()
        pstats.Stats(str(path), stream=buf).sort_stats("tottime").print_stats(TOP)
        lines = buf.getvalue().splitlines()
        start = next((i for i, line in enumerate(lines) if "ncalls" in line), len(lines))
        say("  functions by own time:")
        for line in lines[start:]:
            if line.strip():
                say("    " + line)
        return
    print_profile(from_py_spy(path, wanted(), SPY_RATE), f"py-spy, {SPY_RATE} samples/s")
    own: dict[str, float] = {}
    total = 0.0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        leaf = stack.rsplit(";", 1)[-1]
        m = _FRAME.match(leaf)
        key = f"{m['name']} ({m['file']})" if m else leaf
        own[key] = own.get(key, 0.0) + int(count) / SPY_RATE
        total += int(count) / SPY_RATE
    say(f"  functions by own time (of {total:.1f}s sampled):")
    for key, seconds in sorted(own.items(), key=lambda kv: -kv[1])[:TOP]:
        say(f"    {seconds:8.1f}s {seconds / total:6.1%}  {key}")


def child(args: argparse.Namespace) -> None:
    """Run the move and write what happened to ``--result`` as JSON."""
    from domicile.datamap import load_map
    from domicile.run.executor import RunOptions, execute
    from domicile.run.journal import Journal
    from domicile.state import state_engine

    m = load_map(args.child)
    journal = Journal(state_engine(m.state, m.base_dir))
    options = RunOptions(batch_size=args.batch_size, workers=args.workers)
    timer = time.process_time if args.profile_timer == "cpu" else time.perf_counter
    profiler = cProfile.Profile(timer) if args.profile_out else None
    runq_wait_0 = int(Path("/proc/self/schedstat").read_text().split()[1])
    started = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    result = execute(m, journal, options)
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(args.profile_out)
    seconds = time.perf_counter() - started
    journal.engine.dispose()
    # time this (single-threaded) process was runnable but waiting for a CPU:
    # what other work on the machine added to the wall time
    runq_wait_ns = int(Path("/proc/self/schedstat").read_text().split()[1]) - runq_wait_0
    hwm = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
    Path(args.result).write_text(
        json.dumps(
            {
                "seconds": seconds,
                "status": result.status,
                "counts": result.counts,
                "reasons": result.reasons,
                "vm_hwm_kib": hwm,
                "runq_wait_s": runq_wait_ns / 1e9,
            }
        )
    )


@dataclass
class Move:
    """What the child reported, and its peak resident memory."""

    seconds: float
    cpu_seconds: float
    runq_wait_s: float
    status: str
    counts: dict[str, int]
    reasons: list[str]
    peak_mb: float


def run_child(path: Path, workdir: Path, args: argparse.Namespace, profile: Path | None) -> Move:
    """Run the move in a child of this script; its rusage gives the peak RSS."""
    out = workdir / "result.json"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        str(path),
        "--result",
        str(out),
        "--batch-size",
        str(args.batch_size),
        "--workers",
        str(args.workers),
    ]
    spy: subprocess.Popen[bytes] | None = None
    if profile is not None and args.profile == "cprofile":
        cmd += ["--profile-out", str(profile), "--profile-timer", args.profile_timer]
    proc = subprocess.Popen(cmd)
    if profile is not None and args.profile == "py-spy":
        # sampling from outside: little overhead, and the child's own rusage stays its own
        spy = subprocess.Popen(
            [
                *(args.py_spy, "record", "--pid", str(proc.pid), "--rate", str(SPY_RATE)),
                *("--format", "raw", "--output", str(profile)),
            ],
            stdout=subprocess.DEVNULL,
        )
    # wait4: this child's own rusage (RUSAGE_CHILDREN would be the max over every child)
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if spy is not None:
        spy.wait()
    if proc.returncode != 0:
        raise SystemExit(f"the domicile move failed (exit {proc.returncode})")
    data = json.loads(out.read_text())
    return Move(
        seconds=data["seconds"],
        cpu_seconds=usage.ru_utime + usage.ru_stime,  # the whole child, imports included
        runq_wait_s=data["runq_wait_s"],
        status=data["status"],
        counts=data["counts"],
        reasons=data["reasons"],
        peak_mb=usage.ru_maxrss / 1024,
    )


# ---------------------------------------------------------------------------
# One backend, one size.


@dataclass
class Result:
    backend: str
    rows: int
    floor_s: float
    move: Move

    def rate(self, seconds: float) -> float:
        """Rows per second."""
        return self.rows / seconds


def bench(backend: str, rows: int, args: argparse.Namespace) -> Result:
    """Build, measure the floor, run domicile's move, check the counts."""
    total = rows + args.users
    with tempfile.TemporaryDirectory(prefix="domicile-move-") as tmp:
        workdir = Path(tmp)
        say(f"\n{backend}: {rows:,} events + {args.users:,} users")
        started = time.perf_counter()
        with databases(backend, workdir, args.users, rows) as urls:
            say(f"  loaded and copied in {time.perf_counter() - started:.1f}s")
            path = workdir / "domicile.yaml"
            path.write_text(yaml.safe_dump(data_map(urls, workdir), sort_keys=False))

            started = time.perf_counter()
            (floor_sqlite if backend == "sqlite" else floor_postgresql)(urls)
            floor_s = time.perf_counter() - started
            after = {s: counts(urls[s]) for s in ("floor_legacy", "floor_home")}
            expected = {"users": args.users, "events": rows}
            if after["floor_legacy"] != dict.fromkeys(TABLES, 0) or after["floor_home"] != expected:
                raise SystemExit(f"the floor did not move every row: {after}")
            say(
                f"  floor: {floor_s:.1f}s, {total / floor_s:,.0f} rows/s (load average {loadavg()})"
            )

            profile = workdir / "move.prof" if args.profile else None
            if profile is not None:
                say(f"  profiling the move with {args.profile}")
            move = run_child(path, workdir, args, profile)
            say(
                f"  domicile: {move.seconds:.1f}s, {total / move.seconds:,.0f} rows/s, "
                f"{move.cpu_seconds:.1f} CPU s, {move.runq_wait_s:.1f}s waiting for a CPU, "
                f"peak RSS {move.peak_mb:.0f} MB, {move.status} (load average {loadavg()})"
            )
            source, home = counts(urls["legacy"]), counts(urls["home"])
            if move.status != "done" or source != dict.fromkeys(TABLES, 0) or home != expected:
                raise SystemExit(
                    f"domicile did not move every row: {move.status} {move.reasons}; "
                    f"source {source}, home {home}"
                )
            say(f"  checked: source empty, home holds {home}")
            con = sqlite3.connect(workdir / "state.db")
            try:
                batches, passes = con.execute(
                    "SELECT count(*), max(pass_no) FROM domicile_batches"
                ).fetchone()
            finally:
                con.close()
            say(f"  journal: {batches} batches in {passes} pass(es); counts {move.counts}")
            if profile is not None:
                show_profile(profile, args)
                if args.keep_profile:
                    suffix = ".prof" if args.profile == "cprofile" else ".txt"
                    keep = Path(f"{args.keep_profile}.{backend}.{rows}{suffix}")
                    shutil.copyfile(profile, keep)
                    say(f"  profile saved as {keep}")
    return Result(backend, total, floor_s, move)


def revision() -> str:
    """The commit of the code measured (``-dirty`` when the work tree has changes)."""
    try:
        done = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "an unknown revision"
    return done.stdout.strip()


def loadavg() -> str:
    """The 1-minute load average: other work on the machine inflates wall times."""
    return f"{os.getloadavg()[0]:.1f}"


def table(results: list[Result]) -> None:
    """The summary: one line per (backend, size)."""
    head = (
        f"{'backend':<11}{'rows':>11}{'floor s':>9}{'floor rows/s':>14}{'domicile s':>12}"
        f"{'CPU s':>8}{'CPU wait s':>12}{'domicile rows/s':>17}{'ratio':>7}{'peak RSS MB':>13}"
    )
    say("\n" + head)
    say("-" * len(head))
    for r in results:
        m = r.move
        say(
            f"{r.backend:<11}{r.rows:>11,}{r.floor_s:>9.1f}{r.rate(r.floor_s):>14,.0f}"
            f"{m.seconds:>12.1f}{m.cpu_seconds:>8.1f}{m.runq_wait_s:>12.1f}"
            f"{r.rate(m.seconds):>17,.0f}{r.floor_s / m.seconds:>7.3f}{m.peak_mb:>13.0f}"
        )
    say(
        "\nrows = events + users.  CPU s: user + system time of the domicile process;"
        "\nCPU wait s: time it was runnable but waiting for a CPU (other work on the machine)."
        f"\nratio = domicile rows/s / floor rows/s (aim >= {RATIO_AIM}); peak RSS of the "
        f"domicile process (aim < {MEMORY_AIM_MB} MB)."
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--profile",
        choices=["cprofile", "py-spy"],
        help="profile the move and print where the time goes (cProfile slows it several "
        "times over; py-spy samples from outside and needs the py-spy program)",
    )
    parser.add_argument("--py-spy", default="py-spy", help="the py-spy program (default: on PATH)")
    parser.add_argument(
        "--profile-timer",
        choices=["wall", "cpu"],
        default="wall",
        help="cProfile clock: wall (includes waiting for the database server and for a CPU) "
        "or cpu (this process only: steady on a busy machine, blind to server time)",
    )
    parser.add_argument(
        "--keep-profile",
        metavar="PATH",
        help="also save the profile as PATH.<backend>.<rows>.prof|.txt",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    say(f"domicile at {revision()}, {os.cpu_count()} CPUs, load average {loadavg()}")
    results = [bench(b, rows, args) for b in backends for rows in args.rows]
    table(results)


if __name__ == "__main__":
    main()
