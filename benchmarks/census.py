"""Census benchmark: ``domicile scan`` against the raw engine floor, same run, same data.

Builds a two-store fleet of one engine (a big ``legacy`` store in Singapore and
a small ``home`` store at the US custodian) with about 100k users and at least
``--rows`` rows in the big tables (videos, likes, order lines), then times

* the census: :func:`domicile.scan.scan` over the whole fleet, and
* the floor: one hand-written grouped SQL query per (store, table) that gives
  the same per-country counts (the least work any census could do),

each as the best of 3 runs after one warm-up, checks that both count the same
records per (store, dataset), and prints the ratio.  Not a test: nothing here
asserts on wall-clock time.

    python benchmarks/census.py [--rows 1000000] [--backend sqlite|postgresql|both]
                                [--profile]

PostgreSQL comes from ``DOMICILE_TEST_POSTGRES`` (default: the local server);
the benchmark makes its own databases there and drops them at the end.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import io
import os
import pstats
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml

from domicile.datamap import load_map
from domicile.fleet import Fleet
from domicile.scan import Census, census_query, scan

TODAY = dt.date(2025, 6, 1)
USERS = 100_000
HOME_EVERY = 50  # users whose id is a multiple of this live only in the home directory (2%)
ORPHAN_PER_MILLE = 1  # owner ids past the last user: deleted accounts (0.1%)
HOME_SHARE = 0.05  # share of every big table that already sits in the home store
# Split of --rows over the big tables; orders add another tenth of --rows.
SPLIT = {"videos": 0.25, "likes": 0.45, "lines": 0.30}
RUNS = 3
POSTGRES = os.environ.get(
    "DOMICILE_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)

# Countries as a grown app stores them: one slot per 1/40 of the users.
COUNTRIES: list[str | None] = [
    *["US"] * 5,
    *["usa"] * 3,
    *["United States"] * 3,
    *["us"] * 2,
    "U.S.A.",
    *["CA"] * 2,
    *["Canada"] * 2,
    "canada",
    *["BR"] * 2,
    "Brazil",
    "brasil",  # not a name pycountry knows: an unknown country
    *["SG"] * 3,
    "Singapore",
    "Germany",
    "DE",
    "UK",
    "GB",
    "India",
    "IN",
    "MX",
    "Mexico",
    "Atlantis",
    "",
    "n/a",
    None,
    None,
]
assert len(COUNTRIES) == 40


def say(message: str) -> None:
    """A progress line, flushed at once."""
    print(message, flush=True)


# ---------------------------------------------------------------------------
# The schema, as an app would have it: tables first, indexes after the load.

# Portable DDL (SQLite and PostgreSQL); keys as the app declared them.
SCHEMA = [
    "CREATE TABLE users (id BIGINT PRIMARY KEY, name VARCHAR(60), email VARCHAR(80), "
    "country VARCHAR(40), signup_day INTEGER)",
    "CREATE TABLE videos (id BIGINT PRIMARY KEY, user_id BIGINT, title VARCHAR(120), "
    "media_key VARCHAR(120), visibility VARCHAR(10), duration_s INTEGER)",
    "CREATE TABLE likes (user_id BIGINT NOT NULL, video_id BIGINT NOT NULL, at_day INTEGER, "
    "PRIMARY KEY (user_id, video_id))",
    "CREATE TABLE orders (order_id BIGINT PRIMARY KEY, user_id BIGINT, total_cents INTEGER, "
    "currency VARCHAR(3))",
    "CREATE TABLE lines (line_id BIGINT PRIMARY KEY, order_id BIGINT, sku VARCHAR(20), "
    "qty INTEGER, amount_cents INTEGER)",
]

# likes(user_id) is served by its primary key (user_id, video_id).
INDEXES = [
    "CREATE INDEX ix_videos_user_id ON videos (user_id)",
    "CREATE INDEX ix_likes_video_id ON likes (video_id)",
    "CREATE INDEX ix_orders_user_id ON orders (user_id)",
    "CREATE INDEX ix_lines_order_id ON lines (order_id)",
]


# ---------------------------------------------------------------------------
# Data, generated inside the engine: INSERT ... SELECT over a series 1..n.


def series(dialect: str, n: int) -> str:
    """A FROM item with one bigint column ``x`` running 1..n."""
    if dialect == "sqlite":
        return (
            "(WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s "
            f"WHERE x < {n}) SELECT x FROM s) AS s"
        )
    return f"(SELECT generate_series(1, {n})::bigint AS x) AS s"


def mix(salt: int) -> str:
    """A cheap deterministic scramble of x (Knuth's multiplicative hash), non-negative."""
    return f"((x * 2654435761 + {salt}) % 4294967296)"


def sql_literal(value: str | None) -> str:
    return "NULL" if value is None else "'" + value.replace("'", "''") + "'"


def country_case(slot: str) -> str:
    whens = " ".join(f"WHEN {i} THEN {sql_literal(c)}" for i, c in enumerate(COUNTRIES))
    return f"CASE {slot} {whens} END"


def legacy_owner(salt: int) -> str:
    """Any user, home-only ones (2%) and deleted ones (0.1%) included."""
    span = USERS + USERS * ORPHAN_PER_MILLE // 1000
    return f"({mix(salt)} % {span} + 1)"


def home_owner(k: str, cross: str) -> str:
    """A home user (id a multiple of HOME_EVERY); when *cross*, a legacy-only neighbour."""
    return f"(({k}) + 1) * {HOME_EVERY} - CASE WHEN {cross} THEN 1 ELSE 0 END"


@dataclass
class Sizes:
    """Row counts per store and table."""

    legacy: dict[str, int] = field(default_factory=dict)
    home: dict[str, int] = field(default_factory=dict)

    def big_rows(self) -> int:
        return sum(self.legacy[t] + self.home[t] for t in SPLIT)


def sizes(rows: int) -> Sizes:
    s = Sizes()
    wanted = {**{t: round(rows * f) for t, f in SPLIT.items()}, "orders": rows // 10}
    for table, n in wanted.items():
        s.home[table] = round(n * HOME_SHARE)
        s.legacy[table] = n - s.home[table]
    s.legacy["users"] = USERS - USERS // HOME_EVERY
    s.home["users"] = USERS // HOME_EVERY
    return s


def legacy_inserts(dialect: str, n: dict[str, int]) -> list[tuple[str, str]]:
    """(table, INSERT ... SELECT) for the legacy store."""
    span = USERS + USERS * ORPHAN_PER_MILLE // 1000
    orders_span = n["orders"] + n["orders"] * ORPHAN_PER_MILLE // 1000
    # Users 1..USERS except the multiples of HOME_EVERY, which live at home.
    user_id = f"(x + (x - 1) / {HOME_EVERY - 1})"
    return [
        (
            "users",
            "INSERT INTO users (id, name, email, country, signup_day) "
            f"SELECT {user_id}, 'user ' || x, 'u' || x || '@example.com', "
            f"{country_case(f'{mix(7)} % 40')}, x % 3650 "
            f"FROM {series(dialect, n['users'])}",
        ),
        (
            "videos",
            "INSERT INTO videos (id, user_id, title, media_key, visibility, duration_s) "
            f"SELECT x, {legacy_owner(11)}, 'Video number ' || x, "
            "'media/' || (x % 997) || '/' || x || '.mp4', "
            "CASE WHEN x % 10 < 3 THEN 'public' WHEN x % 10 = 3 THEN 'unlisted' "
            "ELSE 'private' END, x % 600 "
            f"FROM {series(dialect, n['videos'])}",
        ),
        (
            # (x mod span, x div span) is unique per x: the composite key holds.
            "likes",
            "INSERT INTO likes (user_id, video_id, at_day) "
            f"SELECT x % {span} + 1, x / {span} + 1, x % 3650 "
            f"FROM {series(dialect, n['likes'])}",
        ),
        (
            "orders",
            "INSERT INTO orders (order_id, user_id, total_cents, currency) "
            f"SELECT x, {legacy_owner(13)}, x % 50000, 'SGD' "
            f"FROM {series(dialect, n['orders'])}",
        ),
        (
            # 0.1% of the lines point past the last order: orphans.
            "lines",
            "INSERT INTO lines (line_id, order_id, sku, qty, amount_cents) "
            f"SELECT x, {mix(17)} % {orders_span} + 1, 'SKU-' || (x % 5000), "
            "x % 5 + 1, x % 20000 "
            f"FROM {series(dialect, n['lines'])}",
        ),
    ]


HOME_BASE = 50_000_000  # ids of rows created in the home store


def home_inserts(dialect: str, n: dict[str, int]) -> list[tuple[str, str]]:
    """(table, INSERT ... SELECT) for the home store: home users, 2% legacy-only owners."""
    homes = USERS // HOME_EVERY
    # US spellings, every tenth home user Canadian.
    home_country = (
        "CASE WHEN x % 10 = 0 THEN 'Canada' ELSE CASE x % 4 WHEN 0 THEN 'US' "
        "WHEN 1 THEN 'usa' WHEN 2 THEN 'United States' ELSE 'us' END END"
    )
    cross = f"{mix(19)} % 50 = 0"
    return [
        (
            "users",
            "INSERT INTO users (id, name, email, country, signup_day) "
            f"SELECT x * {HOME_EVERY}, 'user ' || (x * {HOME_EVERY}), "
            f"'u' || (x * {HOME_EVERY}) || '@example.com', {home_country}, x % 3650 "
            f"FROM {series(dialect, n['users'])}",
        ),
        (
            "videos",
            "INSERT INTO videos (id, user_id, title, media_key, visibility, duration_s) "
            f"SELECT {HOME_BASE} + x, {home_owner(f'{mix(23)} % {homes}', cross)}, "
            "'Video number ' || x, 'media/' || (x % 997) || '/' || x || '.mp4', "
            "CASE WHEN x % 10 < 3 THEN 'public' ELSE 'private' END, x % 600 "
            f"FROM {series(dialect, n['videos'])}",
        ),
        (
            # k = x mod homes picks the user (and whether it crosses), x div homes the
            # video: unique pairs.
            "likes",
            "INSERT INTO likes (user_id, video_id, at_day) "
            f"SELECT {home_owner(f'x % {homes}', f'x % {homes} % 50 = 7')}, "
            f"{HOME_BASE} + x / {homes} + 1, x % 3650 "
            f"FROM {series(dialect, n['likes'])}",
        ),
        (
            "orders",
            "INSERT INTO orders (order_id, user_id, total_cents, currency) "
            f"SELECT {HOME_BASE} + x, {home_owner(f'{mix(29)} % {homes}', cross)}, "
            "x % 50000, 'USD' "
            f"FROM {series(dialect, n['orders'])}",
        ),
        (
            "lines",
            "INSERT INTO lines (line_id, order_id, sku, qty, amount_cents) "
            f"SELECT {HOME_BASE} + x, {HOME_BASE} + {mix(31)} % {n['orders']} + 1, "
            "'SKU-' || (x % 5000), x % 5 + 1, x % 20000 "
            f"FROM {series(dialect, n['lines'])}",
        ),
    ]


def load_store(url: str, inserts: list[tuple[str, str]], label: str) -> None:
    """Create the schema, load the rows, then index and analyze as an app would."""
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            for ddl in SCHEMA:
                conn.exec_driver_sql(ddl)
        for table, sql in inserts:
            started = time.perf_counter()
            with engine.begin() as conn:
                if engine.dialect.name == "sqlite":
                    conn.exec_driver_sql("PRAGMA journal_mode=WAL")
                    conn.exec_driver_sql("PRAGMA synchronous=OFF")
                    conn.exec_driver_sql("BEGIN")
                    conn.execute(sa.text(sql))
                    conn.exec_driver_sql("COMMIT")
                else:
                    conn.execute(sa.text(sql))
                count = conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one()
            say(f"  {label}: {table:<7} {count:>9,} rows  {time.perf_counter() - started:5.1f}s")
        started = time.perf_counter()
        with engine.connect() as conn:
            for index in INDEXES:
                conn.exec_driver_sql(index)
            conn.exec_driver_sql("VACUUM ANALYZE" if engine.dialect.name != "sqlite" else "ANALYZE")
        say(f"  {label}: indexes + analyze         {time.perf_counter() - started:5.1f}s")
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------
# The fleet: databases, data map.


@contextmanager
def databases(backend: str, workdir: Path) -> Iterator[dict[str, str]]:
    """URLs of two fresh, empty databases (legacy, home); dropped afterwards."""
    if backend == "sqlite":
        urls = {}
        for name in ("legacy", "home"):
            path = workdir / f"{name}.db"
            sa.create_engine(f"sqlite:///{path}").connect().close()
            urls[name] = f"sqlite:///{path}"
        yield urls
        return
    server = sa.make_url(POSTGRES)
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    tag = uuid.uuid4().hex[:10]
    names = {s: f"domicile_bench_{tag}_{s}" for s in ("legacy", "home")}
    try:
        with admin.connect() as conn:
            for db in names.values():
                conn.exec_driver_sql(f'CREATE DATABASE "{db}"')
        yield {
            s: server.set(database=db).render_as_string(hide_password=False)
            for s, db in names.items()
        }
    finally:
        with admin.connect() as conn:
            for db in names.values():
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin.dispose()
        say(f"  dropped databases {', '.join(names.values())}")


def data_map(urls: dict[str, str], workdir: Path) -> dict[str, Any]:
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
            # Canada lets the US custodian hold its users' data too.
            "CA": {
                "countries": ["CA"],
                "allowed": [{"country": "CA"}, {"country": "US", "operator": "custodian"}],
                "home": ["home"],
            },
        },
        "datasets": {
            "users": {"table": "users", "key": ["id"], "owner": "id"},
            "videos": {"table": "videos", "key": ["id"], "owner": "user_id"},
            "likes": {"table": "likes", "key": ["user_id", "video_id"], "owner": "user_id"},
            "orders": {"table": "orders", "key": ["order_id"], "owner": "user_id"},
            "lines": {
                "table": "lines",
                "key": ["line_id"],
                "owner": "order_id -> orders.order_id -> user_id",
            },
        },
        "exceptions": [
            {
                "dataset": "videos",
                "where": {"visibility": "public"},
                "allowed": "any",
                "reason": "Public videos are served worldwide by the CDN",
                "approved_by": "Chief Privacy Officer",
                "expires": dt.date(2099, 6, 30),
            }
        ],
    }


# ---------------------------------------------------------------------------
# The floor: hand-written grouped SQL, one query per (store, table).

FLOOR: dict[str, str] = {
    "users": "SELECT country, count(*) FROM users GROUP BY country",
    "videos": (
        "SELECT d.country, CASE WHEN t.visibility = 'public' THEN 1 ELSE 0 END, count(*) "
        "FROM videos t LEFT JOIN users d ON d.id = t.user_id GROUP BY 1, 2"
    ),
    "likes": (
        "SELECT d.country, count(*) FROM likes t LEFT JOIN users d ON d.id = t.user_id "
        "GROUP BY d.country"
    ),
    "orders": (
        "SELECT d.country, count(*) FROM orders t LEFT JOIN users d ON d.id = t.user_id "
        "GROUP BY d.country"
    ),
    "lines": (
        "SELECT d.country, count(*) FROM lines t "
        "LEFT JOIN orders o ON o.order_id = t.order_id "
        "LEFT JOIN users d ON d.id = o.user_id GROUP BY d.country"
    ),
}

Counts = dict[tuple[str, str], int]


def floor(fleet: Fleet) -> Counts:
    """Run every floor query on the fleet's own engines; records per (store, dataset)."""
    out: Counts = {}
    for store_name, store in fleet.sql.items():
        with store.engine.connect() as conn:
            for dataset, sql in FLOOR.items():
                rows = conn.exec_driver_sql(sql).all()
                out[(store_name, dataset)] = sum(int(r[-1]) for r in rows)
    return out


def census_totals(census: Census) -> Counts:
    """Records per (store, dataset): placed in a cell, orphaned, or of unknown country."""
    out: Counts = defaultdict(int)
    for (_j, store, dataset), cell in census.cells.items():
        out[(store, dataset)] += cell.records  # one owner per record: no double counting
    for key, n in census.orphans.items():
        out[key] += n
    for key, n in census.unknown_records.items():
        out[key] += n
    return dict(out)


def census_queries_only(fleet: Fleet) -> None:
    """Only the grouped census queries, fetched; no sampling, resolution or rules."""
    m = fleet.map
    for name in m.datasets:
        ds = m.datasets[name]
        for loc in fleet.locations(name):
            gq = census_query(m, loc, ds, fleet.location(m.subjects.dataset, loc.store.name))
            # census_query gives the grouped query as a FROM clause (older: .select).
            query = gq.select if hasattr(gq, "select") else sa.select(gq.from_)
            with loc.store.connect("bench") as conn:
                conn.execute(query).all()


@dataclass
class Timing:
    """Best wall and CPU seconds of one measured function, and its last result."""

    wall: float = float("inf")
    cpu: float = float("inf")
    result: Any = None


def measure(fns: dict[str, Callable[[], Any]], runs: int) -> dict[str, Timing]:
    """One warm-up each, then *runs* rounds, the functions interleaved in each round.

    Interleaving gives every contender the same share of whatever else the
    machine is doing; the best of the rounds is the least disturbed one.
    """
    out = {name: Timing(result=fn()) for name, fn in fns.items()}
    for _ in range(runs):
        for name, fn in fns.items():
            wall, cpu = time.perf_counter(), time.process_time()
            out[name].result = fn()
            out[name].wall = min(out[name].wall, time.perf_counter() - wall)
            out[name].cpu = min(out[name].cpu, time.process_time() - cpu)
    return out


# Where a census spends its time, by the scan module's own steps (looked up by
# name so that a refactored scan.py only loses a line here, never breaks the run).
PHASES = {
    "average_record_bytes": "byte-size sampling",
    "Directory.resolve": "cross-store owner resolution",
    "_Directory.resolve": "cross-store owner resolution",
    "_count_unknown_countries": "unknown-country count (directory rescan)",
}


@contextmanager
def phase_timers(acc: dict[str, float]) -> Iterator[None]:
    import domicile.scan as scan_module

    patched: list[tuple[Any, str, Any]] = []
    for dotted, label in PHASES.items():
        owner: Any = scan_module
        *path, attr = dotted.split(".")
        for part in path:
            owner = getattr(owner, part, None)
        original = getattr(owner, attr, None) if owner is not None else None
        if original is None:
            continue

        def timed(*a: Any, _f: Any = original, _label: str = label, **kw: Any) -> Any:
            started = time.perf_counter()
            try:
                return _f(*a, **kw)
            finally:
                acc[_label] += time.perf_counter() - started

        setattr(owner, attr, timed)
        patched.append((owner, attr, original))
    try:
        yield
    finally:
        for owner, attr, original in patched:
            setattr(owner, attr, original)


def profile_census(backend: str, fleet: Fleet) -> None:
    """Phase split of one census, then cProfile's view of another."""
    acc: dict[str, float] = defaultdict(float)
    with phase_timers(acc):
        started = time.perf_counter()
        scan(fleet, today=TODAY)
        total = time.perf_counter() - started
    say(f"[{backend}] one census, {total:.3f}s wall:")
    for label, seconds in acc.items():
        say(f"    {label:<44}{seconds:7.3f}s  {seconds / total:6.1%}")
    rest = total - sum(acc.values())
    say(f"    {'grouped census queries + rules (the rest)':<44}{rest:7.3f}s  {rest / total:6.1%}")
    profiled = cProfile.Profile()
    profiled.runcall(scan, fleet, today=TODAY)
    text = io.StringIO()
    stats = pstats.Stats(profiled, stream=text).sort_stats("cumulative")
    stats.print_stats(r"domicile|execute|fetch", 20)
    say(f"[{backend}] cProfile of one census (cumulative, domicile and driver calls):")
    say(text.getvalue().strip())


@dataclass
class Result:
    engine: str
    rows: int
    big_rows: int
    census: Timing
    floor: Timing
    queries: Timing
    cold_s: float
    load: str
    mismatches: list[str]
    summary: str


def bench(backend: str, rows: int, runs: int, profile: bool) -> Result:
    n = sizes(rows)
    with tempfile.TemporaryDirectory(prefix="domicile_bench_") as tmp:
        workdir = Path(tmp)
        with databases(backend, workdir) as urls:
            dialect = "sqlite" if backend == "sqlite" else "postgresql"
            say(f"[{backend}] building the fleet in {workdir}")
            load_store(urls["legacy"], legacy_inserts(dialect, n.legacy), "legacy")
            load_store(urls["home"], home_inserts(dialect, n.home), "home")
            path = workdir / "domicile.yaml"
            path.write_text(yaml.safe_dump(data_map(urls, workdir), sort_keys=False))
            fleet = Fleet(load_map(path))
            try:
                started = time.perf_counter()
                scan(fleet, today=TODAY)
                cold = time.perf_counter() - started
                say(f"[{backend}] cold census (reflection included): {cold:.2f}s")
                say(f"[{backend}] census, floor, census queries: warm-up + best of {runs}")
                t = measure(
                    {
                        "census": lambda: scan(fleet, today=TODAY),
                        "floor": lambda: floor(fleet),
                        "queries": lambda: census_queries_only(fleet),
                    },
                    runs,
                )
                load = " ".join(f"{x:.1f}" for x in os.getloadavg())
                if profile:
                    profile_census(backend, fleet)
            finally:
                fleet.close()
    census: Census = t["census"].result
    floor_counts: Counts = t["floor"].result
    got = census_totals(census)
    mismatches = [
        f"MISMATCH {backend} {store}/{dataset}: census {got.get((store, dataset), 0):,} "
        f"!= floor {want:,}"
        for (store, dataset), want in sorted(floor_counts.items())
        if got.get((store, dataset), 0) != want
    ]
    mismatches += [
        f"MISMATCH {backend} {store}/{dataset}: census {have:,}, not in the floor"
        for (store, dataset), have in sorted(got.items())
        if (store, dataset) not in floor_counts
    ]
    summary = (
        f"violations {census.violations:,}, unresolved {census.unresolved:,} "
        f"(orphans {sum(census.orphans.values()):,}), excepted "
        f"{sum(c.excepted for c in census.cells.values()):,}"
    )
    return Result(
        backend,
        sum(floor_counts.values()),
        n.big_rows(),
        t["census"],
        t["floor"],
        t["queries"],
        cold,
        load,
        mismatches,
        summary,
    )


def report(results: list[Result]) -> None:
    head = (
        f"{'engine':<11}{'rows':>11}{'census s':>10}{'floor s':>9}{'ratio':>8}{'rows/s':>12}"
        f"   {'queries s':>9}{'cpu ratio':>10}{'cold s':>8}  load"
    )
    say("")
    say(head)
    say("-" * len(head))
    for r in results:
        cpu = f"{r.census.cpu / r.floor.cpu:.2f}x" if r.engine == "sqlite" else "-"
        say(
            f"{r.engine:<11}{r.rows:>11,}{r.census.wall:>10.2f}{r.floor.wall:>9.2f}"
            f"{r.census.wall / r.floor.wall:>7.2f}x{r.rows / r.census.wall:>12,.0f}"
            f"   {r.queries.wall:>9.2f}{cpu:>10}{r.cold_s:>8.2f}  {r.load}"
        )
    say("")
    for r in results:
        say(f"  {r.engine}: {r.big_rows:,} rows in videos + likes + lines; {r.summary}")
    say(
        "rows: every record counted, all datasets and both stores.  census / floor: best "
        "wall time\nof the rounds after a warm-up.  ratio: census / floor; the aim is <= 1.3x.  "
        "queries s: the\ncensus's own grouped queries run bare (no sampling, resolution or "
        "rules).  cpu ratio:\nthe same ratio in process CPU time, which SQLite (in-process) "
        "makes immune to other\nload on the machine.  cold s: the first census, reflection "
        "included.  load: 1/5/15-min\nload average when the measurements ended."
    )
    problems = [m for r in results for m in r.mismatches]
    for m in problems:
        say(m)
    if not problems:
        say("counts: census and floor agree for every (store, dataset).")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in the big tables")
    parser.add_argument(
        "--backend", choices=["sqlite", "postgresql", "both"], default="both", help="engines"
    )
    parser.add_argument(
        "--runs", type=int, default=RUNS, help="measured rounds after the warm-up (best counts)"
    )
    parser.add_argument(
        "--profile", action="store_true", help="split one census into phases, and cProfile it"
    )
    args = parser.parse_args(argv)
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    results = [bench(b, args.rows, args.runs, args.profile) for b in backends]
    report(results)
    return 1 if any(r.mismatches for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
