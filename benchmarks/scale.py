"""Scale benchmark: the census and the move of a demo-like fleet, local threads against Dask.

Builds the fleet of ``scale_data.py`` at ``--users`` users and
``--rows-per-user`` rows each (PostgreSQL stores by default, SQLite files with
``--sqlite``): a legacy Singapore store holding the ``users`` directory and
three personal tables, four empty custodian homes (US, CA, AU, NZ); 80% of
the rows must move.  Then:

* the raw floor (``scale_floor.py``), in this process: the moving rows by the
  engine's bulk path (PostgreSQL ``COPY`` streamed, SQLite ``ATTACH`` +
  ``INSERT ... SELECT``) and a ``DELETE`` at the source, on its own copy;
* in a child process of this script, the census (:func:`domicile.scan.scan`)
  of the loaded fleet: time, records/s, peak resident memory;
* in a child process each, the move (:func:`domicile.run.executor.execute`)
  on a fresh identical copy of the fleet per executor: ``local`` with 1 worker
  and with 2 threads, ``dask`` (a LocalCluster started by the run) with 1 and
  with 2 worker processes; the state store is a PostgreSQL database of the
  copy (SQLite: a file).  Each copy (the floor's too) is checked afterwards
  with the script's own SQL: the source must hold exactly the Singapore users'
  rows and every home exactly its own users' rows (rows and sum of ids per
  table).

For each move: the run's wall time and the time spent in its passes
(copy -> verify -> delete, without the census, the plan, the cluster's start
and the final scan), moved rows/s and bytes/s (each moved value in its text
form), the ratios Dask/local at the same worker count and domicile/floor,
peak resident memory of the coordinator and of each Dask worker (the
executor's own report), the client CPU (coordinator and workers), and — with
PostgreSQL — the database server's CPU seconds per moved row split by
database (source, homes, state store; shared server processes such as the
WAL writer apart), the network bytes between domicile and each database (TCP
byte counters of the server's sockets) and the WAL the server wrote.  Then
the extrapolation to ``--target-users`` (37.2 million) at
``--target-rows-per-user`` (100) rows plus media for ``--cluster-workers``
workers, every assumption printed (``scale_report.py``).  Not a test:
nothing asserts on time.

    python benchmarks/scale.py [--users 20000] [--rows-per-user 20] [--sqlite]
                               [--batch-size 10000] [--runs floor local1 dask1 local2 dask2]
                               [--repeat 1] [--cluster-workers 64] [--db-servers 8] ...
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import yaml

from domicile.defaults import DEFAULT_BATCH_SIZE
from move import loadavg, revision, say
from scale_data import data_map as scale_map
from scale_data import fleet
from scale_floor import Probe
from scale_floor import floor as bulk_floor
from scale_report import Assumptions, Census, Floor, Move, extrapolate, table

RUNS = (("local", 1), ("dask", 1), ("local", 2), ("dask", 2))  # pairs side by side in time


# ---------------------------------------------------------------------------
# In the child processes.


def _hwm_mb() -> float:
    """This process's peak resident memory (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def census_child(args: argparse.Namespace) -> None:
    """Time the census of the map *args.census*; write what it found to ``--result``."""
    from domicile.datamap import load_map
    from domicile.fleet import Fleet
    from domicile.scan import scan

    m = load_map(args.census)
    with Fleet(m) as f:
        started = time.perf_counter()
        census = scan(f)
        seconds = time.perf_counter() - started
        started = time.perf_counter()
        scan(f)  # again: connections open, tables reflected -- the databases' part
        warm = time.perf_counter() - started
    result = {
        "seconds": seconds,
        "warm": warm,
        "records": sum(c.records for c in census.cells.values()),
        "violating": census.violations,
        "peak_mb": _hwm_mb(),
    }
    Path(args.result).write_text(json.dumps(result))


def move_child(args: argparse.Namespace) -> None:
    """Run the move of the map *args.child*; write what happened to ``--result``."""
    import domicile.run.executor as ex
    from domicile.datamap import load_map
    from domicile.run.executor import RunOptions, execute
    from domicile.run.journal import Journal
    from domicile.state import state_engine

    peaks: dict[str, float] = {}

    class Peaks(logging.Handler):
        """The Dask executor's report of its workers' peak resident memory."""

        def emit(self, record: logging.LogRecord) -> None:
            if str(record.msg).startswith("dask workers' peak") and isinstance(record.args, dict):
                peaks.update(record.args)

    dask_log = logging.getLogger("domicile.run.dask_executor")
    dask_log.setLevel(logging.INFO)
    dask_log.addHandler(Peaks())
    spent: dict[str, float] = {"passes": 0.0, "census": 0.0, "start": 0.0}

    def timed(name: str, fn: Any) -> Any:
        def wrapper(*a: Any, **kw: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                spent[name] += time.perf_counter() - started

        return wrapper

    # where the run's time goes: the passes, the census scans, the executor's start
    ex.run_pass = timed("passes", ex.run_pass)
    ex.scan = timed("census", ex.scan)
    ex.make_executor = timed("start", ex.make_executor)

    # another cluster on this machine holds Dask's default HTTP port: not this benchmark's concern
    warnings.filterwarnings("ignore", message="Port 8787 is already in use")
    m = load_map(args.child)
    journal = Journal(state_engine(m.state, m.base_dir))
    options = RunOptions(batch_size=args.batch_size, workers=args.workers, executor=args.executor)
    started = time.perf_counter()
    result = execute(m, journal, options)
    seconds = time.perf_counter() - started
    journal.engine.dispose()
    me = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # the LocalCluster's workers
    out = {
        "seconds": seconds,
        "spent": spent,
        "status": result.status,
        "counts": result.counts,
        "reasons": result.reasons,
        "coordinator_mb": _hwm_mb(),
        "coordinator_cpu": me.ru_utime + me.ru_stime,
        "workers_cpu": children.ru_utime + children.ru_stime,
        "worker_peaks_mb": peaks,
    }
    Path(args.result).write_text(json.dumps(out))


# ---------------------------------------------------------------------------
# In this process.


def run_child(
    mode: str, path: Path, workdir: Path, extra: list[str]
) -> tuple[dict[str, Any], float]:
    """Run a child of this script; its result and its whole CPU time (wait4)."""
    out = workdir / f"{path.parent.name}-{mode}.json"
    me = str(Path(__file__).resolve())
    proc = subprocess.Popen(
        [sys.executable, me, f"--{mode}", str(path), "--result", str(out), *extra]
    )
    _pid, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"the {mode} child failed (exit {os.waitstatus_to_exitcode(status)})")
    return json.loads(out.read_text()), usage.ru_utime + usage.ru_stime


def write_map(urls: dict[str, str], folder: Path) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / "domicile.yaml"
    path.write_text(yaml.safe_dump(scale_map(urls), sort_keys=False))
    return path


def census(f: Any, workdir: Path) -> Census:
    """The census of the loaded fleet, in a child."""
    path = write_map(f.base, workdir / "census")
    got, _cpu = run_child("census", path, workdir, [])
    c = Census(got["seconds"], got["warm"], got["records"], got["violating"], got["peak_mb"])
    say(
        f"census: {c.records:,} records in {c.seconds:.2f}s ({c.records / c.seconds:,.0f} "
        f"records/s; again in the same process {c.warm:.2f}s, {c.records / c.warm:,.0f} "
        f"records/s), {c.violating:,} violating, "
        f"peak RSS {c.peak_mb:.0f} MB (load average {loadavg()})"
    )
    if c.records != f.rows or c.violating != f.moving:
        raise SystemExit(
            f"the census counted {c.records} records, {c.violating} violating; "
            f"the fleet holds {f.rows}, {f.moving} must move"
        )
    return c


def move(
    f: Any, workdir: Path, executor: str, workers: int, args: argparse.Namespace, rnd: int
) -> Move:
    """One move on a fresh copy, in a child; checked, with its database-side costs."""
    name = f"{executor}{workers}r{rnd}"
    urls = f.copy(name)
    path = write_map(urls, workdir / name)
    extra = f"--executor {executor} --workers {workers} --batch-size {args.batch_size}".split()
    probe = Probe(f.prefix(name) if f.server is not None else None)
    with probe:
        got, _cpu = run_child("child", path, workdir, extra)
    if got["status"] != "done":
        raise SystemExit(f"{name}: the move ended {got['status']}: {got['reasons']}")
    f.check(name)
    f.drop(name)
    spent = got["spent"]
    coordinator = got["coordinator_mb"]
    workers_mb = got["worker_peaks_mb"] or {"(threads of the coordinator)": coordinator}
    m = Move(
        executor, workers, f.moving, f.bytes_moving, got["seconds"], spent["passes"],
        spent["census"], spent["start"], coordinator, workers_mb,
        got["coordinator_cpu"], got["workers_cpu"], probe.cpu, probe.net, probe.wal, loadavg(),
        got["counts"],
    )  # fmt: skip
    say(
        f"{m.label}: run {m.seconds:.1f}s (passes {m.passes_s:.1f}s, census {m.census_s:.1f}s, "
        f"start {m.start_s:.1f}s), {m.rate:,.0f} moved rows/s, coordinator {coordinator:.0f} MB, "
        f"workers {', '.join(f'{v:.0f}' for v in workers_mb.values())} MB, "
        f"checked (load average {m.load})"
    )
    return m


def measure_floor(f: Any, rnd: int) -> Floor:
    """The floor on a fresh copy, in this process; checked like a move."""
    name = f"floorr{rnd}"
    urls = f.copy(name)
    probe = Probe(f.prefix(name) if f.server is not None else None)
    with probe:
        cpu, started = time.thread_time(), time.perf_counter()
        how = bulk_floor(urls)
        seconds, cpu = time.perf_counter() - started, time.thread_time() - cpu
    f.check(name)
    f.drop(name)
    got = Floor(how, f.moving, f.bytes_moving, seconds, cpu, probe.cpu, probe.net, probe.wal)
    say(
        f"floor ({how}): {seconds:.1f}s, {got.rate:,.0f} moved rows/s, checked "
        f"(load average {loadavg()})"
    )
    return got


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--rows-per-user", type=int, default=20, help="rows per user, all tables")
    parser.add_argument("--sqlite", action="store_true", help="SQLite stores instead of PostgreSQL")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument(
        "--runs", nargs="+", default=["floor", *(f"{e}{w}" for e, w in RUNS)],
        help="which measurements (default: floor local1 dask1 local2 dask2)",
    )  # fmt: skip
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds of moves; the fastest of each is kept"
    )
    Assumptions.add_arguments(parser)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--census", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--executor", default="local", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        move_child(args)
        return
    if args.census:
        census_child(args)
        return
    runs = [(e, w) for e, w in RUNS if f"{e}{w}" in args.runs]
    engine = "sqlite" if args.sqlite else "postgresql"
    say(f"domicile at {revision()}, {os.cpu_count()} CPUs, load average {loadavg()}")
    with tempfile.TemporaryDirectory(prefix="domicile-scale-") as tmp:
        workdir = Path(tmp)
        started = time.perf_counter()
        with fleet(engine, workdir, args.users, args.rows_per_user) as f:
            say(
                f"{engine}: {f.users:,} users, {f.rows:,} rows ({f.moving:,} moving) loaded in "
                f"{time.perf_counter() - started:.1f}s"
            )
            c = census(f, workdir)
            best: dict[tuple[str, int], Move] = {}
            fl: Floor | None = None
            for rnd in range(args.repeat):  # rounds: every executor once, side by side in time
                if "floor" in args.runs:
                    got = measure_floor(f, rnd)
                    fl = got if fl is None or got.rate > fl.rate else fl
                for e, w in runs:
                    m = move(f, workdir, e, w, args, rnd)
                    if (e, w) not in best or m.rate > best[(e, w)].rate:
                        best[(e, w)] = m
            moves = [best[run] for run in runs]
            if args.repeat > 1:
                say(f"(the table keeps each executor's fastest of {args.repeat} rounds)")
            table(c, moves, fl, f)
            extrapolate(Assumptions.from_args(args), c, moves, fl, f)


if __name__ == "__main__":
    main()
