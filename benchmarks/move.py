"""Move benchmark: ``domicile run`` against two raw bulk-move floors, same run, same data.

For each pair of engines (``--pair``, repeatable; default all four:
sqlite-sqlite, postgresql-postgresql, sqlite-postgresql, postgresql-mariadb)
and each ``--rows``, it builds a two-store fleet: a legacy source store in
Singapore (SQLite or PostgreSQL) holding a ``users`` directory of ``--users``
users and an ``events`` table of ``--rows`` small rows generated inside the
engine, and an empty US home store (of the pair's home engine) with the same
two tables, created from the same SQLAlchemy metadata.  A third of the users
live in Singapore, whose jurisdiction allows their rows at the source; two
thirds in the US (spelled ``US``, ``usa`` or ``United States``), whose rows
violate until they are home: about two thirds of the rows move.  Each of the
three measurements runs on its own identical fresh copy of the data:

* floor (a), the selected bulk move: read exactly the moving rows at the
  source (a WHERE on the owners' country, events joined to users), load them
  with the engine pair's bulk path at home, DELETE them at the source (see
  ``move_floor.py`` for each pair's path);
* floor (b), the whole-table bulk move: the same with every row;
* domicile's move through the library (:func:`domicile.run.executor.execute`)
  in a child process of this script, whose peak resident memory and CPU time
  are read from ``wait4`` when it exits.

Each is checked afterwards by SQL: the source must hold exactly the
Singapore users' rows and the home exactly the moving ones (rows and sum of
ids per table).  The CPU seconds of each side are the client's (this process
for the floors, the child for domicile; SQLite's engine runs in-process) and
the database servers' (utime + stime of every ``postgres`` / ``mariadbd``
process from ``/proc``, sampled before and after).  The aims: domicile's
moving-rows rate at least 0.5x floor (a)'s same-engine and 0.3x cross-engine;
peak RSS under 300 MB and flat from 100k to 2M rows (give several
``--rows``).  Not a test: nothing here asserts on wall-clock time.

    python benchmarks/move.py [--rows 1000000 [100000 ...]] [--users 50000]
                              [--pair sqlite-sqlite ...] [--batch-size 2000] [--workers 1]
                              [--mariadb-load auto|infile|insert]
                              [--profile cprofile|py-spy] [--py-spy PATH]

``--backend sqlite|postgresql|both`` is the previous version's spelling of
``--pair sqlite-sqlite`` / ``postgresql-postgresql`` / both.  ``--profile``
prints where the move's time went (any pair): each step of ``execute()`` and
the helpers they share.  py-spy samples the child from outside with little
overhead; cProfile needs nothing installed but slows a Python-bound move
several times over.  PostgreSQL and MariaDB come from
``DOMICILE_TEST_POSTGRES`` / ``DOMICILE_TEST_MYSQL`` (default: the local
servers); the benchmark makes its own ``domicile_bench_*`` databases there and
drops them at the end.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from domicile.defaults import DEFAULT_BATCH_SIZE
from move_data import PAIRS, TABLES, Fleet, data_map, fleet, rows_of, tally
from move_floor import measured, run_floor
from move_profile import SPY_RATE, show_profile

MEMORY_AIM_MB = 300
RATIO_AIM = {"same": 0.5, "cross": 0.3}  # domicile's moving rows/s over floor (a)'s


def say(message: str) -> None:
    """A progress line, flushed at once."""
    print(message, flush=True)


# ---------------------------------------------------------------------------
# domicile's move, in a child process.


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
# One pair, one size.


@dataclass
class Section:
    """One timed move: wall seconds and the CPU seconds of each side."""

    seconds: float
    client_cpu: float
    server_cpu: dict[str, float]  # per server engine; empty when the engines are in-process
    how: str = ""

    @property
    def server_total(self) -> float | None:
        return sum(self.server_cpu.values()) if self.server_cpu else None


@dataclass
class Result:
    pair: str
    rows: int  # every row of the source
    moving: int  # rows that must move
    floor_a: Section
    floor_b: Section
    domicile: Section
    move: Move

    @property
    def cross(self) -> bool:
        source, home = PAIRS[self.pair]
        return source != home

    @property
    def aim(self) -> float:
        return RATIO_AIM["cross" if self.cross else "same"]

    @property
    def ratio_a(self) -> float:
        """domicile's moving rows/s over floor (a)'s moving rows/s."""
        return self.floor_a.seconds / self.domicile.seconds

    @property
    def ratio_b(self) -> float:
        """domicile's moving rows/s over floor (b)'s all-rows rate."""
        return (self.moving / self.domicile.seconds) / (self.rows / self.floor_b.seconds)


def check(what: str, f: Fleet, source: str, home: str) -> str:
    """The source holds exactly the staying rows and the home exactly the moving ones."""
    at_source, at_home = tally(f.urls[source]), tally(f.urls[home])
    if at_source != f.staying or at_home != f.moving:
        raise SystemExit(
            f"{what} left the wrong rows: source {at_source} (want {f.staying}), "
            f"home {at_home} (want {f.moving})"
        )
    return ", ".join(f"{t} {n:,}" for t, (n, _s) in at_home.items())


def check_all(what: str, f: Fleet, source: str, home: str) -> None:
    """Floor (b): the source is empty and the home holds every row."""
    at_source, at_home = tally(f.urls[source]), tally(f.urls[home])
    if at_source != dict.fromkeys(TABLES, (0, 0)) or at_home != f.total:
        raise SystemExit(
            f"{what} did not move every row: source {at_source}, home {at_home} (want {f.total})"
        )


def servers_of(f: Fleet) -> list[str]:
    """The server engines the pair runs on (SQLite's engine is in-process)."""
    return sorted({f.source, f.home} - {"sqlite"})


def cpu_text(s: Section) -> str:
    servers = ", ".join(f"{e} {v:.1f}" for e, v in s.server_cpu.items()) or "in-process"
    return f"{s.client_cpu:.1f} client CPU s, server CPU s: {servers}"


def bench(pair: str, rows: int, args: argparse.Namespace) -> Result:
    """Build, measure both floors and domicile's move, check what each left where."""
    with tempfile.TemporaryDirectory(prefix="domicile-move-") as tmp:
        workdir = Path(tmp)
        say(f"\n{pair}: {rows:,} events + {args.users:,} users")
        started = time.perf_counter()
        with fleet(pair, workdir, args.users, rows) as f:
            total, moving = rows_of(f.total), rows_of(f.moving)
            say(
                f"  loaded and copied in {time.perf_counter() - started:.1f}s: {total:,} rows, "
                f"{moving:,} moving ({moving / total:.0%}): "
                + ", ".join(f"{t} {f.moving[t][0]:,} of {f.total[t][0]:,}" for t in TABLES)
            )
            engines = servers_of(f)
            floors = {}
            for name, selected in (("a", True), ("b", False)):
                with measured(engines) as got:
                    how = run_floor(
                        pair,
                        f.urls[f"{name}_legacy"],
                        f.urls[f"{name}_home"],
                        selected,
                        args.mariadb_load,
                    )
                floors[name] = Section(**got, how=how)
                if selected:
                    check(f"floor ({name})", f, f"{name}_legacy", f"{name}_home")
                else:
                    check_all(f"floor ({name})", f, f"{name}_legacy", f"{name}_home")
                n = moving if selected else total
                s = floors[name]
                say(
                    f"  floor ({name}) {'selected' if selected else 'whole-table'}, {how}: "
                    f"{s.seconds:.2f}s, {n / s.seconds:,.0f} rows/s, {cpu_text(s)} "
                    f"(load average {loadavg()})"
                )

            path = workdir / "domicile.yaml"
            path.write_text(yaml.safe_dump(data_map(f.urls, workdir), sort_keys=False))
            profile = workdir / "move.prof" if args.profile else None
            if profile is not None:
                say(f"  profiling the move with {args.profile}")
            with measured(engines) as got:
                move = run_child(path, workdir, args, profile)
            dom = Section(move.seconds, move.cpu_seconds, got["server_cpu"])
            say(
                f"  domicile: {move.seconds:.1f}s, {moving / move.seconds:,.0f} moving rows/s, "
                f"{cpu_text(dom)}, {move.runq_wait_s:.1f}s waiting for a CPU, "
                f"peak RSS {move.peak_mb:.0f} MB, {move.status} (load average {loadavg()})"
            )
            if move.status != "done":
                raise SystemExit(f"domicile's move ended {move.status}: {move.reasons}")
            held = check("domicile", f, "legacy", "home")
            say(f"  checked: the source holds the Singapore rows only, home holds {held}")
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
                    keep = Path(f"{args.keep_profile}.{pair}.{rows}{suffix}")
                    shutil.copyfile(profile, keep)
                    say(f"  profile saved as {keep}")
    return Result(pair, total, moving, floors["a"], floors["b"], dom, move)


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


def server_text(s: Section) -> str:
    total = s.server_total
    return "in-process" if total is None else f"{total:.1f}"


def table(results: list[Result]) -> None:
    """The summary: one line per (pair, size), then the CPU seconds of each side."""
    head = (
        f"{'pair':<22}{'rows':>11}{'moving':>11}{'(a) s':>8}{'(a) rows/s':>12}{'(b) s':>8}"
        f"{'domicile s':>11}{'dom rows/s':>11}{'/(a)':>7}{'/(b)':>7}{'aim':>5}"
        f"{'client CPU s':>13}{'server CPU s':>13}{'peak RSS MB':>12}"
    )
    say("\n" + head)
    say("-" * len(head))
    for r in results:
        a, d = r.floor_a, r.domicile
        say(
            f"{r.pair:<22}{r.rows:>11,}{r.moving:>11,}{a.seconds:>8.2f}"
            f"{r.moving / a.seconds:>12,.0f}{r.floor_b.seconds:>8.2f}{d.seconds:>11.1f}"
            f"{r.moving / d.seconds:>11,.0f}{r.ratio_a:>7.3f}{r.ratio_b:>7.3f}{r.aim:>5}"
            f"{d.client_cpu:>13.1f}{server_text(d):>13}{r.move.peak_mb:>12.0f}"
        )
    head = (
        f"{'pair':<22}{'rows':>11}{'domicile client':>16}{'domicile server':>16}"
        f"{'(a) client':>11}{'(a) server':>11}{'(b) client':>11}{'(b) server':>11}  servers"
    )
    say("\nCPU seconds of each side\n" + head)
    say("-" * len(head))
    for r in results:
        servers = "+".join(r.domicile.server_cpu) or "none (SQLite in-process)"
        say(
            f"{r.pair:<22}{r.rows:>11,}{r.domicile.client_cpu:>16.1f}"
            f"{server_text(r.domicile):>16}{r.floor_a.client_cpu:>11.1f}"
            f"{server_text(r.floor_a):>11}{r.floor_b.client_cpu:>11.1f}"
            f"{server_text(r.floor_b):>11}  {servers}"
        )
    hows = {r.pair: r.floor_a.how for r in results}
    say(
        "\nrows = events + users at the source; moving = the US users' rows (the rest stay)."
        "\n(a) = floor (a), the selected bulk move of exactly the moving rows; (b) = floor (b),"
        "\nthe whole-table bulk move of every row.  dom rows/s = moving rows / domicile s."
        "\n/(a) = domicile's moving rows/s over floor (a)'s; /(b) = domicile's moving rows/s"
        "\nover floor (b)'s all-rows rate.  aim: for /(a), same-engine "
        f"{RATIO_AIM['same']}, cross-engine {RATIO_AIM['cross']}."
        "\nclient CPU s: user + system time of the domicile process (wait4; imports and census"
        "\nincluded) or of this process for the floors; SQLite's engine is in the client."
        "\nserver CPU s: utime + stime of every postgres / mariadbd process (/proc), the whole"
        "\nserver (other clients' work included; see the load averages above)."
        f"\npeak RSS of the domicile process (aim < {MEMORY_AIM_MB} MB, flat in rows)."
        "\nbulk paths of the floors:"
    )
    for pair, how in hows.items():
        say(f"  {pair}: {how}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000], help="events rows")
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument(
        "--pair",
        action="append",
        choices=list(PAIRS),
        help="source-home engines (repeatable; default: all four)",
    )
    parser.add_argument(
        "--backend",
        choices=["sqlite", "postgresql", "both"],
        help="the previous version's option: sqlite-sqlite, postgresql-postgresql or both",
    )
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--mariadb-load",
        choices=["auto", "infile", "insert"],
        default="auto",
        help="floor bulk load at a MariaDB home: LOAD DATA LOCAL INFILE, multi-row INSERTs, "
        "or auto (infile unless the server refuses it)",
    )
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
        help="also save the profile as PATH.<pair>.<rows>.prof|.txt",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return
    pairs: list[str] = list(args.pair or [])
    if args.backend:
        pairs += {
            "sqlite": ["sqlite-sqlite"],
            "postgresql": ["postgresql-postgresql"],
            "both": ["sqlite-sqlite", "postgresql-postgresql"],
        }[args.backend]
    pairs = list(dict.fromkeys(pairs)) or list(PAIRS)
    say(f"domicile at {revision()}, {os.cpu_count()} CPUs, load average {loadavg()}")
    results = [bench(p, rows, args) for p in pairs for rows in args.rows]
    table(results)


if __name__ == "__main__":
    main()
