"""How close ObjectStore gets to the raw floor when moving objects.

Moves about ``--gb`` GiB of mixed-size objects (a third of the bytes each in
64 KiB, 4 MiB and 64 MiB objects) and prints bytes/s and the ratio to the
floor measured in the same run:

* local -> local: ``shutil.copyfile`` per file (the floor) against
  ``ObjectStore.copy_from`` + ``sha256`` of the target + ``delete_if_unchanged``
  of the source;
* S3 -> S3 on one SeaweedFS: a bare ``CopyObject`` per object (the floor)
  against the same ObjectStore steps (a server-side copy, then the target is
  read once for the hash and once more to verify).

Between them, a hand-written version of the same steps (copy with fsync,
hash, re-read and hash, delete; with boto3 on S3) shows what is the work
itself and what is ObjectStore's overhead.

Not a test: nothing is asserted about time.  Run it as
``python benchmarks/objects_floor.py [--gb 1]``; it starts its own SeaweedFS
with the same code as the test fixture (tests/fixtures_s3.py).
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from domicile.connectors.objects import ObjectStore
from fixtures_s3 import WeedServer, start_weed

KiB, MiB = 1 << 10, 1 << 20
SIZES = (64 * KiB, 4 * MiB, 64 * MiB)  # each class gets a third of the bytes


@dataclass
class Result:
    """One measured move."""

    label: str
    objects: int
    nbytes: int
    seconds: float

    @property
    def rate(self) -> float:
        """Bytes per second."""
        return self.nbytes / self.seconds


def workload(total: int) -> list[tuple[str, int]]:
    """(key, size) for about *total* bytes of mixed sizes, spread over a few folders."""
    keys = []
    for size in SIZES:
        for i in range(max(1, round(total / len(SIZES) / size))):
            keys.append((f"u{i % 97:02d}/{size // KiB}k/{i:05d}.bin", size))
    return keys


def payload(size: int, seed: int) -> bytes:
    """Incompressible bytes, distinct per object."""
    return random.Random(seed).randbytes(size)


def timed(label: str, keys: list[tuple[str, int]], move: Callable[[str], None]) -> Result:
    """Run *move* for every key and time the lot."""
    os.sync()  # start clean: fsyncs must not pay for the previous step's dirty pages
    started = time.perf_counter()
    for key, _ in keys:
        move(key)
    seconds = time.perf_counter() - started
    return Result(label, len(keys), sum(size for _, size in keys), seconds)


def through_objectstore(src: ObjectStore, dst: ObjectStore) -> Callable[[str], None]:
    """copy -> verify -> compare-and-delete, as a batch of the move protocol does it."""

    def move(key: str) -> None:
        result = dst.copy_from(src, key, key)
        if dst.sha256(key) != result.sha256:
            raise RuntimeError(f"{key}: target does not match what was copied")
        if result.source_version is None or not src.delete_if_unchanged(key, result.source_version):
            raise RuntimeError(f"{key}: source changed during the benchmark")

    return move


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


def local_moves(root: Path, keys: list[tuple[str, int]]) -> list[Result]:
    """local -> local: the copyfile floor, the same steps by hand, and ObjectStore."""
    src, floor, hand = root / "src", root / "floor", root / "by-hand"
    for n, (key, size) in enumerate(keys):
        (src / key).parent.mkdir(parents=True, exist_ok=True)
        (src / key).write_bytes(payload(size, n))
    shutil.copytree(src, root / "src-2")

    def copyfile(key: str) -> None:
        (floor / key).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / key, floor / key)

    def by_hand(key: str) -> None:
        source, target = root / "src-2" / key, hand / key
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with open(source, "rb") as fin, open(target, "wb") as fout:
            while chunk := fin.read(MiB):
                digest.update(chunk)
                fout.write(chunk)
            fout.flush()
            os.fsync(fout.fileno())
        if file_sha256(target) != digest.hexdigest():
            raise RuntimeError(f"{key}: target does not match")
        source.unlink()

    results = [
        timed("local copyfile (floor)", keys, copyfile),
        timed("local same steps by hand", keys, by_hand),
    ]
    (root / "dst").mkdir()
    stores = [ObjectStore(name, f"file://{root / name}") for name in ("src", "dst")]
    results.append(timed("local ObjectStore move", keys, through_objectstore(*stores)))
    return results


def s3_moves(server: WeedServer, keys: list[tuple[str, int]]) -> list[Result]:
    """S3 -> S3 on one server: bare CopyObject (floor) and ObjectStore's server-side move."""
    import boto3

    client: Any = boto3.client(
        "s3",
        endpoint_url=server.endpoint_url,
        aws_access_key_id=server.key,
        aws_secret_access_key=server.secret,
        region_name="us-east-1",
    )
    src, src2, floor, hand, dst = (server.make_bucket() for _ in range(5))
    for n, (key, size) in enumerate(keys):
        for bucket in (src, src2):
            client.put_object(Bucket=bucket, Key=key, Body=payload(size, n))

    def copy_object(key: str) -> None:
        client.copy_object(Bucket=floor, Key=key, CopySource={"Bucket": src, "Key": key})

    def body_sha256(bucket: str, key: str) -> str:
        digest = hashlib.sha256()
        for chunk in client.get_object(Bucket=bucket, Key=key)["Body"].iter_chunks(MiB):
            digest.update(chunk)
        return digest.hexdigest()

    def by_hand(key: str) -> None:
        etag = client.head_object(Bucket=src2, Key=key)["ETag"]
        source = {"Bucket": src2, "Key": key}
        client.copy_object(Bucket=hand, Key=key, CopySource=source, CopySourceIfMatch=etag)
        if body_sha256(hand, key) != body_sha256(hand, key):
            raise RuntimeError(f"{key}: target does not match")
        if client.head_object(Bucket=src2, Key=key)["ETag"] == etag:
            client.delete_object(Bucket=src2, Key=key, IfMatch=etag)

    stores = [ObjectStore(b, f"s3://{b}", server.options) for b in (src, dst)]
    return [
        timed("S3 CopyObject (floor)", keys, copy_object),
        timed("S3 same steps by hand", keys, by_hand),
        timed("S3 ObjectStore move", keys, through_objectstore(*stores)),
    ]


def report(results: list[Result]) -> None:
    """Print each result with its rate and its ratio to the first (the floor)."""
    floor = results[0]
    for r in results:
        print(
            f"  {r.label:<26} {r.objects:>6} objects {r.nbytes / MiB:>8.0f} MiB"
            f" {r.seconds:>7.2f} s {r.rate / MiB:>8.1f} MiB/s"
            f"   {floor.rate / r.rate:>5.2f}x the floor's time"
        )


def main(argv: list[str] | None = None) -> None:
    """Command line: ``objects_floor.py [--gb GiB] [--tmp DIR]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0, help="GiB to move per backend")
    parser.add_argument("--tmp", default=None, help="folder for data (default: system temp)")
    args = parser.parse_args(argv)
    keys = workload(int(args.gb * (1 << 30)))
    counts = {size: sum(1 for _, s in keys if s == size) for size in SIZES}
    mix = ", ".join(f"{n} x {size // KiB} KiB" for size, n in counts.items())
    print(f"workload: {mix} = {sum(s for _, s in keys) / MiB:.0f} MiB")
    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="objects-floor-") as tmp:
        print("local folder -> local folder")
        report(local_moves(Path(tmp, "local"), keys))
        server = start_weed(tmp)
        try:
            print(f"S3 -> S3 on one SeaweedFS ({server.endpoint_url})")
            report(s3_moves(server, keys))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
