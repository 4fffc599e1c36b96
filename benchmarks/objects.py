"""Object move benchmark: ``domicile run`` on an object dataset against the floor, same run.

Builds a fleet of two SQLite stores and two object stores: the US home
database holds the ``users`` directory (every user in the US), a legacy
object store (country SG) holds about ``--gb`` GiB of objects of mixed sizes
(a third of the bytes each in 64 KiB, 4 MiB and 64 MiB objects) under
``media/{owner}/...`` — the object dataset ``media: {objects: "media/{owner}/*"}``
— and an empty US home object store.  Every object must move.  Then, for
local folder -> local folder and for S3 bucket -> S3 bucket on a SeaweedFS
it starts itself (the test fixture's ``start_weed``), it times

* the floor, on the same source objects, before domicile moves them: a plain
  ``shutil.copyfile`` per file (local), or a server-side ``CopyObject`` per
  object into another bucket of the same server (S3) — the least work any
  copy could do, with no hashing, no verification and no delete;
* domicile's whole run through the library (:func:`domicile.run.executor.execute`):
  census, plan, journalled copy -> verify (SHA-256 read back at home) ->
  compare-and-delete, and the verification scan;

checks that the source is empty and home holds every object with its size
(and a sample with its SHA-256), and prints bytes/s and the ratio of
domicile's throughput to the floor's.  Not a test: nothing here asserts on
wall-clock time.

    python benchmarks/objects.py [--gb 1] [--backend local|s3|both] [--batch-size 2000]
                                 [--tmp DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from domicile.connectors.objects import ObjectStore
from domicile.datamap import load_map
from domicile.run.executor import RunOptions, execute
from domicile.run.journal import Journal
from domicile.state import state_engine
from fixtures_s3 import WeedServer, start_weed

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
SIZES = (64 * KiB, 4 * MiB, 64 * MiB)  # each class gets a third of the bytes
USERS = 500


def say(message: str) -> None:
    """A progress line, flushed at once."""
    print(message, flush=True)


@dataclass
class Result:
    """One backend's floor and domicile's move of the same objects."""

    backend: str
    objects: int
    nbytes: int
    floor_s: float
    move_s: float

    @property
    def ratio(self) -> float:
        """domicile's throughput over the floor's (1.0 = as fast as the floor)."""
        return self.floor_s / self.move_s


def workload(total: int) -> list[tuple[str, int]]:
    """(key, size) for about *total* bytes of mixed sizes, owned by users 1..USERS."""
    keys = []
    n = 0
    for size in SIZES:
        for i in range(max(1, round(total / len(SIZES) / size))):
            n += 1
            keys.append((f"media/{n % USERS + 1}/{size // KiB}k-{i:05d}.bin", size))
    return keys


def payload(size: int, seed: int) -> bytes:
    """Incompressible bytes, distinct per object."""
    return random.Random(seed).randbytes(size)


def write_fleet(root: Path, media: dict[str, dict[str, Any]]) -> Path:
    """SQLite home with the users directory, the data map; returns the map's path."""
    (root / "fleet").mkdir(parents=True)
    md = sa.MetaData()
    users = sa.Table(
        "users",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("country", sa.String(8)),
    )
    for name, rows in (
        ("legacy", []),
        ("us-home", [{"id": i, "country": "US"} for i in range(1, USERS + 1)]),
    ):
        engine = sa.create_engine(f"sqlite:///{root / 'fleet' / name}.db")
        md.create_all(engine)
        if rows:
            with engine.begin() as conn:
                conn.execute(users.insert(), rows)
        engine.dispose()
    legacy = {"country": "SG", "operator": "legacy"}
    custodian = {"country": "US", "operator": "custodian"}
    data = {
        "version": 1,
        "state": "sqlite:///.domicile/state.db",
        "stores": {
            "legacy": {"url": "sqlite:///fleet/legacy.db", "labels": legacy},
            "us-home": {"url": "sqlite:///fleet/us-home.db", "labels": custodian},
            "media-legacy": {**media["media-legacy"], "labels": legacy},
            "media-us": {**media["media-us"], "labels": custodian},
        },
        "subjects": {"dataset": "users", "id": "id", "country": "country"},
        "jurisdictions": {
            "US": {"countries": ["US"], "allowed": custodian, "home": ["us-home", "media-us"]}
        },
        "datasets": {
            "users": {"table": "users", "key": ["id"], "owner": "id"},
            "media": {"objects": "media/{owner}/*"},
        },
    }
    path = root / "domicile.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def move(path: Path, batch_size: int) -> tuple[float, dict[str, int]]:
    """Run domicile over the fleet; (seconds, counts)."""
    m = load_map(path)
    journal = Journal(state_engine(m.state, m.base_dir))
    os.sync()
    started = time.perf_counter()
    result = execute(m, journal, RunOptions(batch_size=batch_size))
    seconds = time.perf_counter() - started
    if result.status != "done":
        raise RuntimeError(f"the run ended {result.status}: {result.reasons}")
    return seconds, result.counts


def check(src: ObjectStore, home: ObjectStore, keys: list[tuple[str, int]]) -> None:
    """The source is empty; home holds every object, its size, and (sampled) its SHA-256."""
    left = sum(1 for _ in src.list())
    if left:
        raise RuntimeError(f"{left} objects left at the source")
    sizes = {i.key: i.size for i in home.list()}
    if sizes != dict(keys):
        raise RuntimeError("home does not hold exactly the objects moved")
    for n, (key, size) in enumerate(keys):
        if n % 97 == 0 and home.sha256(key) != hashlib.sha256(payload(size, n)).hexdigest():
            raise RuntimeError(f"{key}: different bytes at home")


def timed(keys: list[tuple[str, int]], copy: Callable[[str], None]) -> float:
    """Seconds to run *copy* over every key."""
    os.sync()  # the floor must not pay for the writes before it
    started = time.perf_counter()
    for key, _ in keys:
        copy(key)
    return time.perf_counter() - started


def local(root: Path, keys: list[tuple[str, int]], batch_size: int) -> Result:
    """local folder -> local folder."""
    src, dst, floor = root / "media-legacy", root / "media-us", root / "floor"
    for n, (key, size) in enumerate(keys):
        (src / key).parent.mkdir(parents=True, exist_ok=True)
        (src / key).write_bytes(payload(size, n))
    dst.mkdir()
    media = {"media-legacy": {"url": src.as_uri()}, "media-us": {"url": dst.as_uri()}}
    path = write_fleet(root, media)

    def copyfile(key: str) -> None:
        (floor / key).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / key, floor / key)

    floor_s = timed(keys, copyfile)
    shutil.rmtree(floor)  # not to crowd the page cache and the disk
    move_s, _ = move(path, batch_size)
    check(ObjectStore("src", src.as_uri()), ObjectStore("home", dst.as_uri()), keys)
    return Result("local -> local", len(keys), sum(s for _, s in keys), floor_s, move_s)


def s3(root: Path, server: WeedServer, keys: list[tuple[str, int]], batch_size: int) -> Result:
    """S3 bucket -> S3 bucket on one SeaweedFS."""
    import boto3

    client: Any = boto3.client(
        "s3",
        endpoint_url=server.endpoint_url,
        aws_access_key_id=server.key,
        aws_secret_access_key=server.secret,
        region_name="us-east-1",
    )
    src, dst, floor = (server.make_bucket() for _ in range(3))
    for n, (key, size) in enumerate(keys):
        client.put_object(Bucket=src, Key=key, Body=payload(size, n))
    options = dict(server.options)
    media = {
        "media-legacy": {"url": f"s3://{src}", "options": options},
        "media-us": {"url": f"s3://{dst}", "options": options},
    }
    path = write_fleet(root, media)

    def copy_object(key: str) -> None:
        client.copy_object(Bucket=floor, Key=key, CopySource={"Bucket": src, "Key": key})

    floor_s = timed(keys, copy_object)
    move_s, _ = move(path, batch_size)
    stores = [ObjectStore(n, f"s3://{b}", options) for n, b in (("src", src), ("home", dst))]
    check(*stores, keys)
    return Result("S3 -> S3", len(keys), sum(s for _, s in keys), floor_s, move_s)


def table(results: list[Result]) -> None:
    """One line per backend: objects, MiB, floor and domicile seconds and MiB/s, ratio."""
    say("")
    say(
        f"{'backend':<16} {'objects':>7} {'MiB':>7} {'floor s':>8} {'floor MiB/s':>11} "
        f"{'domicile s':>10} {'domicile MiB/s':>14} {'ratio':>6}"
    )
    for r in results:
        mib = r.nbytes / MiB
        say(
            f"{r.backend:<16} {r.objects:>7} {mib:>7.0f} {r.floor_s:>8.2f} "
            f"{mib / r.floor_s:>11.1f} {r.move_s:>10.2f} {mib / r.move_s:>14.1f} {r.ratio:>6.2f}"
        )
    say("ratio = domicile's bytes/s over the floor's (floor: copyfile; S3: server-side CopyObject)")


def main(argv: list[str] | None = None) -> None:
    """Command line: ``objects.py [--gb GiB] [--backend local|s3|both] [--batch-size N]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0, help="GiB of objects per backend")
    parser.add_argument("--backend", choices=["local", "s3", "both"], default="both")
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--tmp", default=None, help="folder for the data (default: system temp)")
    args = parser.parse_args(argv)
    keys = workload(int(args.gb * GiB))
    counts = {size: sum(1 for _, s in keys if s == size) for size in SIZES}
    mix = ", ".join(f"{n} x {size // KiB} KiB" for size, n in counts.items())
    say(
        f"workload: {mix} = {sum(s for _, s in keys) / MiB:.0f} MiB; {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    results = []
    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="objects-bench-") as tmp:
        if args.backend in ("local", "both"):
            say("local folder -> local folder ...")
            results.append(local(Path(tmp, "local"), keys, args.batch_size))
        if args.backend in ("s3", "both"):
            server = start_weed(tmp)
            try:
                say(f"S3 -> S3 on one SeaweedFS ({server.endpoint_url}) ...")
                results.append(s3(Path(tmp, "s3"), server, keys, args.batch_size))
            finally:
                server.stop()
    table(results)


if __name__ == "__main__":
    main()
