"""What the gateway costs: `domicile serve` next to a bare FastAPI app, under concurrent load.

    python benchmarks/gateway.py [--users 20000] [--requests 3000] [--concurrency 16] [--runs 3]

Builds a two-store SQLite fleet (``sg`` legacy in Singapore with Singaporean
users, ``us`` the custodian's US home with ``--users`` US users), adds a
router and a reader principal, stores a census, and starts two servers, each
``uvicorn`` in its own process on loopback:

- ``domicile serve`` itself (the real command);
- a bare FastAPI app with the same endpoints and none of domicile: ``/v1/route``
  returns a constant answer, ``/v1/subjects/{id}/records`` runs the same
  SELECT on the home store (``SELECT * FROM users WHERE id = ? ORDER BY id
  LIMIT 101``) and returns the rows — no credentials, no directory lookup, no
  policy, no audit log.

Then, per endpoint, ``--requests`` requests from ``--concurrency`` concurrent
httpx clients (after a warm-up), against one server and then the other
(taking turns, so both meet the same machine), ``--runs`` times, best run
kept; it prints requests/s, median and p99 latency and the ratio domicile /
bare (the aim: ≥ 0.5x).  The load generator runs on the same machine: on two
cores its own CPU caps both servers' figures, so compare the ratio.  Each records request on
domicile authenticates the bearer token, reads the subject's country from
the directory, asks Cedar, and commits its decision to the audit log (a
SQLite state store with ``synchronous=FULL``) before answering.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
import yaml

HERE = Path(__file__).resolve()


# -- the fleet ----------------------------------------------------------------------


def build_fleet(tmp: Path, users: int) -> Path:
    md = sa.MetaData()
    table = sa.Table(
        "users",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(50)),
        sa.Column("email", sa.String(80)),
        sa.Column("country", sa.String(2)),
    )
    for store, country, ids in (
        ("sg", "SG", range(1, 1001)),
        ("us", "US", range(1001, 1001 + users)),
    ):
        engine = sa.create_engine(f"sqlite:///{tmp / (store + '.db')}")
        md.create_all(engine)
        with engine.begin() as conn:
            conn.execute(
                table.insert(),
                [
                    {"id": i, "name": f"user {i}", "email": f"u{i}@example.com", "country": country}
                    for i in ids
                ],
            )
        engine.dispose()
    path = tmp / "domicile.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "version": 1,
                "stores": {
                    "sg": {
                        "url": "sqlite:///sg.db",
                        "labels": {"country": "SG", "operator": "legacy"},
                    },
                    "us": {
                        "url": "sqlite:///us.db",
                        "labels": {"country": "US", "operator": "custodian"},
                    },
                },
                "subjects": {"dataset": "users", "id": "id", "country": "country"},
                "jurisdictions": {
                    "US": {"countries": ["US"], "allowed": {"country": "US"}, "home": ["us"]}
                },
                "datasets": {"users": {"table": "users", "key": ["id"], "owner": "id"}},
            },
            sort_keys=False,
        )
    )
    return path


# -- the bare app (run with --bare-app) ------------------------------------------------


def bare_app(home_db: str) -> Any:
    from fastapi import FastAPI

    engine = sa.create_engine(
        f"sqlite:///{home_db}", connect_args={"check_same_thread": False}, pool_size=16
    )
    users = sa.Table("users", sa.MetaData(), autoload_with=engine)
    query = (
        sa.select(users).where(users.c.id == sa.bindparam("sid")).order_by(users.c.id).limit(101)
    )
    answer = {
        "subject": None,
        "status": "restricted",
        "jurisdiction": "US",
        "homes": {"users": "us"},
    }
    app = FastAPI()

    @app.get("/v1/route")
    def route(country: str) -> dict[str, Any]:
        return answer

    @app.get("/v1/subjects/{subject_id}/records")
    def records(subject_id: int, dataset: str) -> dict[str, Any]:
        with engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(query, {"sid": subject_id}).mappings()]
        return {"subject": str(subject_id), "dataset": dataset, "records": rows}

    return app


# -- servers and load ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(argv: list[str], port: int, cwd: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=1)
            return proc
        except httpx.HTTPError:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise SystemExit(f"server failed: {err}") from None
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("server did not start")


async def load(
    url: str, paths: list[str], headers: dict[str, str], concurrency: int
) -> tuple[float, list[float], int]:
    """Send every path once, *concurrency* at a time; (seconds, latencies, non-200 answers)."""
    latencies: list[float] = []
    failures = 0
    queue = iter(paths)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as c:

        async def worker() -> None:
            nonlocal failures
            for path in queue:
                t = time.perf_counter()
                r = await c.get(path)
                latencies.append(time.perf_counter() - t)
                failures += r.status_code != 200

        start_t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - start_t, latencies, failures


def _once(
    url: str, paths: list[str], headers: dict[str, str], concurrency: int
) -> dict[str, float]:
    seconds, lat, failures = asyncio.run(load(url, paths, headers, concurrency))
    if failures:
        raise SystemExit(f"{failures} answers were not 200 from {url}")
    lat.sort()
    return {
        "rps": len(paths) / seconds,
        "p50": statistics.median(lat) * 1000,
        "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000,
    }


def measure_pair(
    targets: list[tuple[str, dict[str, str]]], paths: list[str], concurrency: int, runs: int
) -> list[dict[str, float]]:
    """Best run (by requests/s) of each target; the targets take turns, so both meet one machine."""
    warm = paths[: max(200, len(paths) // 10)]
    for url, headers in targets:
        asyncio.run(load(url, warm, headers, concurrency))
    best: list[dict[str, float] | None] = [None] * len(targets)
    for run in range(runs):
        order = list(range(len(targets)))
        if run % 2:
            order.reverse()
        for i in order:
            result = _once(targets[i][0], paths, targets[i][1], concurrency)
            current = best[i]
            if current is None or result["rps"] > current["rps"]:
                best[i] = result
    return [b for b in best if b is not None]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--bare-app", help=argparse.SUPPRESS)  # the child: serve the bare app
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_app:
        import uvicorn

        uvicorn.run(bare_app(args.bare_app), host="127.0.0.1", port=args.port, log_level="warning")
        return 0

    from domicile import api

    with tempfile.TemporaryDirectory(prefix="domicile-gateway-") as d:
        tmp = Path(d)
        path = build_fleet(tmp, args.users)
        api.scan(path)
        router = api.add_principal(path, "bench-router", "router")[1]
        reader = api.add_principal(
            path, "bench-reader", "reader", employer="custodian", country="US"
        )[1]
        p_dom, p_bare = free_port(), free_port()
        env_python = sys.executable
        dom = start(
            [env_python, "-m", "domicile", "serve", "-c", str(path), "--port", str(p_dom)],
            p_dom,
            tmp,
        )
        bare = start(
            [env_python, str(HERE), "--bare-app", str(tmp / "us.db"), "--port", str(p_bare)],
            p_bare,
            tmp,
        )
        try:
            rng = random.Random(5)
            ids = [rng.randrange(1001, 1001 + args.users) for _ in range(args.requests)]
            cases = {
                "/v1/route": (
                    ["/v1/route?country=US"] * args.requests,
                    {"Authorization": f"Bearer {router}"},
                ),
                "/v1/subjects/{id}/records": (
                    [f"/v1/subjects/{i}/records?dataset=users" for i in ids],
                    {"Authorization": f"Bearer {reader}"},
                ),
            }
            print(
                f"{args.requests} requests per run, {args.concurrency} concurrent, best of "
                f"{args.runs}; {os.cpu_count()} CPUs\n"
            )
            header = (
                f"{'endpoint':<28} {'domicile r/s':>12} {'p50 ms':>7} {'p99 ms':>7}   "
                f"{'bare r/s':>9} {'p50 ms':>7} {'p99 ms':>7}   {'ratio':>6}"
            )
            print(header)
            print("-" * len(header))
            for name, (paths, headers) in cases.items():
                d_res, b_res = measure_pair(
                    [(f"http://127.0.0.1:{p_dom}", headers), (f"http://127.0.0.1:{p_bare}", {})],
                    paths,
                    args.concurrency,
                    args.runs,
                )
                d = d_res
                print(
                    f"{name:<28} {d['rps']:>12,.0f} {d['p50']:>7.1f} {d['p99']:>7.1f}   "
                    f"{b_res['rps']:>9,.0f} {b_res['p50']:>7.1f} {b_res['p99']:>7.1f}   "
                    f"{d_res['rps'] / b_res['rps']:>5.2f}x"
                )
            metrics = httpx.get(f"http://127.0.0.1:{p_dom}/metrics").text
            allowed = next(
                (
                    line.split()[-1]
                    for line in metrics.splitlines()
                    if line.startswith('domicile_access_decisions_total{decision="allow"')
                ),
                "0",
            )
            print(f"\n(allowed decisions committed to the audit log: {float(allowed):,.0f})")
        finally:
            for proc in (dom, bare):
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
