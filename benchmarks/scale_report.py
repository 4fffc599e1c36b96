"""The scale benchmark's results: the tables and the extrapolation (run ``scale.py``).

``table`` prints what was measured: per executor the move's time and rates,
memory and client CPU, next to the raw floor's; with PostgreSQL the database
server's CPU, network and WAL per moved row.  ``extrapolate`` turns those
figures into an estimate for the target fleet (``--target-users`` x
``--target-rows-per-user`` rows plus media on ``--cluster-workers`` workers),
printing every assumption, measured or assumed, and whether the aim is reached.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from move import say

RATIO_AIM = 0.9  # Dask's throughput over the local executor's at the same worker count


@dataclass
class Census:
    seconds: float  # the first scan of a fresh process
    warm: float  # a second scan in the same process
    records: int
    violating: int
    peak_mb: float


@dataclass
class Move:
    """One measured move."""

    executor: str
    workers: int
    rows: int  # moved (checked afterwards)
    bytes: int  # the moved values' text form
    seconds: float  # the whole run
    passes_s: float  # copy -> verify -> delete
    census_s: float  # the run's own census scans (before, after each pass)
    start_s: float  # starting the executor (the LocalCluster)
    coordinator_mb: float
    worker_mb: dict[str, float]
    coordinator_cpu: float  # the coordinator process (the local executor's threads included)
    workers_cpu: float  # the Dask worker processes
    db_cpu: dict[str, float]  # per role: source, home, state, shared (+ other clients)
    db_net: dict[str, int]  # bytes per role
    wal: int  # bytes of WAL the server wrote meanwhile (every database's)
    load: str
    counts: dict[str, int]

    @property
    def label(self) -> str:
        return (
            f"{self.executor} {self.workers} {'thread' if self.executor == 'local' else 'worker'}"
        )

    @property
    def rate(self) -> float:
        """Moved rows per second of the passes."""
        return self.rows / self.passes_s

    @property
    def run_rate(self) -> float:
        """Moved rows per second of the whole run (census, start and final scan included)."""
        return self.rows / self.seconds

    @property
    def client_cpu(self) -> float:
        """CPU seconds of the coordinator and the workers."""
        return self.coordinator_cpu + self.workers_cpu

    def per_row_us(self, role: str) -> float:
        return self.db_cpu.get(role, 0.0) / self.rows * 1e6


@dataclass
class Floor:
    """The raw floor: the moving rows by the engine's bulk path (``scale_floor.py``)."""

    how: str
    rows: int
    bytes: int
    seconds: float
    client_cpu: float  # this process's main thread (psycopg's COPY, sqlite3's engine)
    db_cpu: dict[str, float]
    db_net: dict[str, int]
    wal: int

    label = "floor (bulk)"

    @property
    def rate(self) -> float:
        return self.rows / self.seconds

    def per_row_us(self, role: str) -> float:
        return self.db_cpu.get(role, 0.0) / self.rows * 1e6


def ratio_to_local(m: Move, moves: list[Move]) -> str:
    local = [x for x in moves if x.executor == "local" and x.workers == m.workers]
    if m.executor == "local" or not local:
        return "-"
    return f"{m.rate / local[0].rate:.2f}x"


def table(c: Census, moves: list[Move], fl: Floor | None, f: Any) -> None:
    """The measured table and the database side per moved row."""
    say(
        f"\nfleet: {f.users:,} users x {f.rows_per_user} rows = {f.rows:,} rows in "
        f"{'PostgreSQL' if f.server is not None else 'SQLite'}, {f.moving:,} moving "
        f"({f.bytes_moving / f.moving:.0f} bytes per moving row in text form); "
        f"census {c.seconds:.2f}s = {c.records / c.seconds:,.0f} records/s (again: {c.warm:.2f}s "
        f"= {c.records / c.warm:,.0f} records/s), peak RSS {c.peak_mb:.0f} MB"
    )
    head = (
        f"{'executor':<17}{'run s':>7}{'passes s':>9}{'rows/s':>8}{'MB/s':>6}{'/local':>7}"
        f"{'/floor':>7}{'run rows/s':>11}{'coord MB':>9}{'worker MB':>12}{'CPU us/row':>11}"
        f"{'coord+workers':>14}{'load':>6}"
    )
    say(head)
    say("-" * len(head))
    if fl is not None:
        say(
            f"{fl.label:<17}{fl.seconds:>7.1f}{fl.seconds:>9.1f}{fl.rate:>8,.0f}"
            f"{fl.bytes / fl.seconds / 1e6:>6.2f}{'-':>7}{'1':>7}{fl.rate:>11,.0f}{'-':>9}"
            f"{'-':>12}{fl.client_cpu / fl.rows * 1e6:>11.0f}"
        )
    for m in moves:
        workers = (
            "/".join(f"{v:.0f}" for v in m.worker_mb.values()) if m.executor == "dask" else "-"
        )
        vs_floor = f"{m.rate / fl.rate:.3f}" if fl is not None else "-"
        say(
            f"{m.label:<17}{m.seconds:>7.1f}{m.passes_s:>9.1f}{m.rate:>8,.0f}"
            f"{m.bytes / m.passes_s / 1e6:>6.2f}{ratio_to_local(m, moves):>7}{vs_floor:>7}"
            f"{m.run_rate:>11,.0f}{m.coordinator_mb:>9.0f}{workers:>12}"
            f"{m.client_cpu / m.rows * 1e6:>11.0f}"
            f"{m.coordinator_cpu / m.rows * 1e6:>8.0f}+{m.workers_cpu / m.rows * 1e6:<5.0f}"
            f"{m.load:>6}"
        )
    say(
        "rows/s, MB/s: moved rows (bytes: values in text form) per second of the passes (copy ->"
        "\nverify -> delete), not of the run: the census, plan and LocalCluster start are left out"
        f"\n(they are in run s and run rows/s); /local: Dask's rows/s over the local executor's at"
        f"\nthe same worker count (aim >= {RATIO_AIM}x); /floor: over the raw floor's (one bulk"
        "\nconnection per database, no journal, no digests; its CPU us/row: this process's COPY"
        "\nthread).  coord MB: the coordinator's peak RSS (the local executor's threads included);"
        "\nworker MB: each Dask worker's peak RSS.  CPU us/row: user + system CPU of the"
        "\ncoordinator and the workers per moved row (imports and census included), then split:"
        "\ncoordinator + workers."
    )
    if f.server is None:
        say("database side: SQLite runs in the client processes (no server CPU, no network)")
        return
    head = (
        f"{'executor':<17}{'source':>8}{'homes':>8}{'state':>8}{'shared':>8}{'other s':>9}"
        f"{'unattr. s':>10}{'source B':>10}{'homes B':>9}{'state B':>9}{'WAL B':>8}"
    )
    say("\nPostgreSQL server per moved row: CPU us (utime + stime), network bytes (its sockets)")
    say(head)
    say("-" * len(head))
    shown: list[Floor | Move] = [*([fl] if fl is not None else []), *moves]
    for x in shown:
        say(
            f"{x.label:<17}{x.per_row_us('source'):>8.0f}{x.per_row_us('home'):>8.0f}"
            f"{x.per_row_us('state'):>8.0f}{x.per_row_us('shared'):>8.0f}"
            f"{x.db_cpu.get('other', 0.0):>9.1f}{x.db_cpu.get('unattributed', 0.0):>10.1f}"
            f"{x.db_net.get('source', 0) / x.rows:>10.0f}{x.db_net.get('home', 0) / x.rows:>9.0f}"
            f"{x.db_net.get('state', 0) / x.rows:>9.0f}{x.wal / x.rows:>8.0f}"
        )
    say(
        "source, homes, state: the backends (and autovacuum) of the copy's databases; shared: "
        "server\nprocesses of no database (WAL writer, checkpointer, background writer); other s: "
        "CPU seconds of\nother databases' backends meanwhile (work on the machine that is not "
        "ours); unattr. s: what\nbackends did between their last sample and their end (anyone's);"
        " WAL B: WAL the server wrote\nper moved row (all databases together, anyone's)."
    )


# ---------------------------------------------------------------------------
# The extrapolation.


@dataclass
class Assumptions:
    """The target and the cluster the extrapolation is for (``--cluster-workers`` ...)."""

    users: int
    rows_per_user: int
    workers: int
    minutes: float
    db_servers: int
    db_cores: int
    gbps: float
    wal_mb_s: float
    media_mb_per_user: float
    media_mb_s: float

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("extrapolation (the defaults are assumptions)")
        g.add_argument("--cluster-workers", type=int, default=64)
        g.add_argument("--target-users", type=int, default=37_200_000)
        g.add_argument("--target-rows-per-user", type=int, default=100)
        g.add_argument("--target-minutes", type=float, default=15.0)
        g.add_argument("--db-servers", type=int, default=8, help="on each side: sources, homes")
        g.add_argument("--db-cores", type=int, default=16, help="cores per database server")
        g.add_argument("--network-gbps", type=float, default=10.0, help="per database server")
        g.add_argument(
            "--wal-mb-s", type=float, default=200.0, help="sustained WAL writes per server"
        )
        g.add_argument("--media-mb-per-user", type=float, default=20.0)
        g.add_argument("--media-mb-s-per-worker", type=float, default=100.0)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Assumptions:
        return cls(
            args.target_users, args.target_rows_per_user, args.cluster_workers,
            args.target_minutes, args.db_servers, args.db_cores, args.network_gbps,
            args.wal_mb_s, args.media_mb_per_user, args.media_mb_s_per_worker,
        )  # fmt: skip


def hours(seconds: float) -> str:
    return f"{seconds / 3600:,.2f} h"


def _db_side(moves: list[Move]) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """Means over the runs: CPU us per moved row by role, each side's share, bytes per row."""
    total = sum(m.rows for m in moves)
    roles = ("source", "home", "state")
    us = {r: sum(m.db_cpu.get(r, 0.0) for m in moves) / total * 1e6 for r in (*roles, "shared")}
    own = sum(us[r] for r in roles) or 1.0
    side = {r: us[r] * (1 + us["shared"] / own) for r in roles}  # shared: in proportion
    net = {r: sum(m.db_net.get(r, 0) for m in moves) / total for r in roles}
    return us, side, net


def extrapolate(a: Assumptions, c: Census, moves: list[Move], fl: Floor | None, f: Any) -> None:
    """3.7 billion rows plus media on a cluster of ``a.workers`` workers, assumptions stated."""
    if not moves:
        return
    rows = a.users * a.rows_per_user
    one = [m for m in moves if m.workers == 1]
    base = ([m for m in one if m.executor == "dask"] or one or moves)[0]
    per_worker = base.rate / base.workers
    ceiling = base.rows / base.client_cpu  # moved rows per CPU second (coordinator + workers)
    window = a.minutes * 60
    media_tb = a.users * a.media_mb_per_user / 1e6
    say(
        f"\nextrapolation: {a.users:,} users x {a.rows_per_user} rows = {rows:,} rows, every one "
        f"moving\n(one jurisdiction's users, all going home), plus {media_tb:,.0f} TB of media, "
        f"on {a.workers} workers\nassumptions (measured here unless marked assumed):"
    )
    others = [f"{m.label} {m.rate / m.workers:,.0f}" for m in moves if m.workers > 1]
    say(
        f"  rate per worker: {per_worker:,.0f} moved rows/s ({base.label}, its passes); "
        f"per worker at 2: {', '.join(others) or '-'}"
    )
    say(
        f"  client CPU per moved row: {1e6 / ceiling:.0f} us (coordinator + workers) -> at most "
        f"{ceiling:,.0f} rows/s per worker core\n  workers scale linearly, each with a core of "
        "its own (assumed; measured up to 2 workers here)\n  per-row costs at "
        f"{a.rows_per_user} rows per user as at {f.rows_per_user} (assumed)"
    )
    need: dict[str, float] = {"the workers": rows / (a.workers * per_worker)}
    side: dict[str, float] = {}
    net: dict[str, float] = {}
    wal = 0.0
    if f.server is not None:
        us, side, net = _db_side(moves)
        say(
            f"  database CPU per moved row (mean of {len(moves)} runs): source {us['source']:.0f} "
            f"us, homes {us['home']:.0f} us,\n    state store {us['state']:.0f} us, shared server "
            f"processes {us['shared']:.0f} us, added to each side in proportion:\n    source "
            f"{side['source']:.0f}, homes {side['home']:.0f}, state {side['state']:.0f} us"
        )
        say(
            f"  database servers (assumed): sources {a.db_servers} x {a.db_cores} cores, homes "
            f"{a.db_servers} x {a.db_cores} cores,\n    one state store of {a.db_cores} cores "
            "(every worker journals to the run's one state store)"
        )
        say(
            f"  network per moved row: source {net['source']:,.0f} B, homes {net['home']:,.0f} B, "
            f"state store {net['state']:,.0f} B;\n    {a.gbps:g} Gbit/s per database server "
            "(assumed)"
        )
        servers = {"source": a.db_servers, "home": a.db_servers, "state": 1}
        for r, n in servers.items():
            need[f"{r} CPU"] = rows * side[r] / 1e6 / (n * a.db_cores)
        for r, n in servers.items():
            need[f"{r} network"] = rows * net[r] * 8 / (a.gbps * 1e9 * n)
        wal = sum(m.wal for m in moves) / sum(m.rows for m in moves)
        say(
            f"  WAL per moved row: {wal:,.0f} B (mean of the runs; the whole server's, source "
            "deletes, home inserts\n    and the state store's journal together: PostgreSQL does "
            "not split it), assumed spread evenly over\n    the "
            f"{2 * a.db_servers} source and home servers at {a.wal_mb_s:g} MB/s each (assumed)"
        )
        need["WAL"] = rows * wal / (2 * a.db_servers * a.wal_mb_s * 1e6)
        if fl is not None:
            say(
                f"  the floor for comparison (one bulk COPY per table and home): source "
                f"{fl.per_row_us('source'):.0f} us, homes {fl.per_row_us('home'):.0f} us per "
                f"row,\n    WAL {fl.wal / fl.rows:,.0f} B per row, {fl.rate:,.0f} rows/s on "
                "one connection per database"
            )
    else:
        say("  database side: not measured (SQLite runs inside the workers; run without --sqlite)")
    census_rate = c.records / c.warm
    census_s = 2 * rows / census_rate
    media_s = a.users * a.media_mb_per_user / (a.workers * a.media_mb_s)
    say(
        f"  census: {census_rate:,.0f} records/s (measured, second scan); scan() sends one "
        "grouped query per\n    (dataset, store) at a time, so it is not spread over workers or "
        "servers; two per run (before, after)"
    )
    say(
        f"  media: {a.media_mb_per_user:g} MB per user (assumed) at {a.media_mb_s:g} MB/s per "
        "worker (assumed;\n    benchmarks/objects.py measures a worker's object rate), moved "
        "after the rows"
    )
    bound = max(need, key=lambda k: need[k])
    say(f"estimate for {a.workers} workers:")
    for k, v in need.items():
        say(f"  rows, bound by {k:<16}{hours(v):>11}{'  <- binds' if k == bound else ''}")
    say(f"  census (2 scans){hours(census_s):>26}")
    say(f"  media, by the workers{hours(media_s):>21}")
    say(
        f"  total: rows {hours(need[bound])} + census {hours(census_s)} + media "
        f"{hours(media_s)} = {hours(need[bound] + census_s + media_s)}"
    )
    verdict = "reached" if need[bound] <= window else "NOT reached"
    say(
        f"aim: the rows in {a.minutes:g} minutes on {a.workers} workers: {verdict} by these "
        f"figures ({need[bound] / 60:,.0f} min, {need[bound] / window:,.1f}x the aim; "
        f"bound by {bound})"
    )
    say(f"for the rows in {a.minutes:g} minutes ({rows / window:,.0f} rows/s) it would take:")
    say(
        f"  {rows / window / per_worker:,.0f} workers at {per_worker:,.0f} rows/s "
        f"(or {rows / window / ceiling:,.0f} at the CPU ceiling)"
    )
    for r, label in (
        ("source", "source databases"),
        ("home", "home databases"),
        ("state", "state store"),
    ):
        if r in side:
            want = rows * side[r] / 1e6 / window
            say(
                f"  {label}: {want:,.0f} cores ({want / a.db_cores:,.1f} servers of {a.db_cores}), "
                f"{rows * net[r] * 8 / window / 1e9:,.1f} Gbit/s"
            )
    if "WAL" in need:
        say(
            f"  WAL: {rows * wal / window / 1e9:,.1f} GB/s in all "
            f"({rows * wal / window / 1e6 / a.wal_mb_s:,.0f} servers at {a.wal_mb_s:g} MB/s)"
        )
    say(
        f"  a census {2 * rows / window / census_rate:,.0f}x faster than measured (over the stores "
        f"in parallel)\n  media in {a.minutes:g} min: "
        f"{a.users * a.media_mb_per_user * 8 / window / 1e3:,.0f} Gbit/s, "
        f"{a.users * a.media_mb_per_user / window / a.media_mb_s:,.0f} workers at "
        f"{a.media_mb_s:g} MB/s"
    )
