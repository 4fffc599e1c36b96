"""Benchmark the audit log: append N batch events to a SQLite state file, then verify it.

    python benchmarks/audit.py [--entries N] [--chunk C]

Prints entries per second for appending and for verifying next to floors
measured in the same run on the same entry bytes:

- hash floor: hashlib alone, leaf hashes and the tree (the least any
  verifier of this log must do);
- insert floor (for appending): the same rows inserted with the sqlite3
  module's executemany, no SQLAlchemy, no JSON, no hashing (and, below it,
  the same in the state store's journal mode: WAL, synchronous=FULL).

Two more rows say what of the append is not the insert: the canonical JSON
of the same events and their leaf hashes, each timed alone.  The last lines
give each speed as a fraction of its floor's (1.0 = as fast as the floor),
and the rate of appends of one event per call, each its own commit (what a
run's sink does: one event per protocol step), on a log of --single entries.

Not a test: no timing is asserted.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from domicile.audit.entries import encode_events, leaf_hashes
from domicile.audit.log import AuditLog, canonical_json
from domicile.audit.note import Signer
from domicile.audit.verify import verify_log
from domicile.state import state_engine

DATASETS = ["users", "videos", "comments", "likes", "messages", "avatars"]
STORES = ["sg-main", "sg-replica", "media-sg"]
HOMES = ["us-tx", "ca-mtl", "au-syd", "nz-akl", "media-us"]


def batch_events(n: int, seed: int = 7) -> Iterator[dict[str, object]]:
    """Realistic batch events: ids, counts and digests, about 200 bytes of canonical JSON."""
    rng = random.Random(seed)
    for i in range(n):
        yield {
            "event": "batch.done",
            "run": "r-20261102-0001",
            "batch": i,
            "dataset": rng.choice(DATASETS),
            "source": rng.choice(STORES),
            "target": rng.choice(HOMES),
            "rows": rng.randint(1, 5000),
            "digest": rng.randbytes(16).hex(),
            "time": "2026-11-02T10:00:00.000000Z",
        }


def hash_floor(entries: list[bytes]) -> float:
    """Seconds to hash the entries and build the root with hashlib alone."""
    sha256 = hashlib.sha256
    start = time.perf_counter()
    stack: list[bytes] = []
    for count, entry in enumerate(entries, start=1):
        stack.append(sha256(b"\x00" + entry).digest())
        while not count & 1:
            right = stack.pop()
            stack[-1] = sha256(b"\x01" + stack[-1] + right).digest()
            count >>= 1
    root = stack[-1] if stack else sha256(b"").digest()
    for left in reversed(stack[:-1]):
        root = sha256(b"\x01" + left + root).digest()
    return time.perf_counter() - start


def insert_floor(entries: list[bytes], folder: Path, chunk: int, *, wal: bool = False) -> float:
    """Seconds to insert the same rows (index, bytes, a 32-byte hash) with sqlite3 alone.

    With *wal*, in the state store's journal mode (WAL, synchronous=FULL),
    which writes every page twice (to the WAL, then to the file).
    """
    conn = sqlite3.connect(folder / ("floor-wal.db" if wal else "floor.db"))
    if wal:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE t (idx INTEGER PRIMARY KEY, entry BLOB, leaf BLOB, at TEXT)")
    leaf = bytes(32)
    start = time.perf_counter()
    for base in range(0, len(entries), chunk):
        with conn:
            conn.executemany(
                "INSERT INTO t VALUES (?, ?, ?, ?)",
                [
                    (base + i, e, leaf, "2026-11-02")
                    for i, e in enumerate(entries[base : base + chunk])
                ],
            )
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed


def encode_and_hash(events: list[dict[str, object]]) -> tuple[float, float]:
    """Seconds for the canonical JSON of the events, and for their leaf hashes, alone."""
    start = time.perf_counter()
    entries = encode_events(events, "2026-11-02T10:00:00.000000Z")
    json_s = time.perf_counter() - start
    start = time.perf_counter()
    leaf_hashes(entries)
    return json_s, time.perf_counter() - start


def one_per_call(events: list[dict[str, object]], folder: Path) -> float:
    """Seconds to append the events one call (one transaction) each, to a fresh log."""
    engine = state_engine("sqlite:///single.db", folder)
    log = AuditLog(engine, "domicile/bench")
    start = time.perf_counter()
    for event in events:
        log.append(event)
    elapsed = time.perf_counter() - start
    engine.dispose()
    return elapsed


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=10_000, help="events per append_many")
    parser.add_argument("--single", type=int, default=1_000, help="appends of one event each")
    args = parser.parse_args(argv)
    n, chunk = args.entries, args.chunk

    events = list(batch_events(n))
    entries = [canonical_json(e) for e in events]
    size = sum(len(e) for e in entries) / max(n, 1)
    print(f"{n:,} entries, {size:.0f} bytes each on average, append_many chunks of {chunk:,}")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        engine = state_engine("sqlite:///state.db", folder)
        log = AuditLog(engine, "domicile/bench")
        signer = Signer("domicile-audit", Ed25519PrivateKey.generate())

        start = time.perf_counter()
        for base in range(0, n, chunk):
            log.append_many(events[base : base + chunk])
        append_s = time.perf_counter() - start

        start = time.perf_counter()
        note = log.checkpoint(signer)
        checkpoint_s = time.perf_counter() - start

        start = time.perf_counter()
        result = verify_log(engine, [signer.verifier_key()])
        verify_s = time.perf_counter() - start
        assert result.entries == n and result.uncovered == 0, result
        engine.dispose()
        db_mb = (folder / "state.db").stat().st_size / 1e6

        floor_hash_s = hash_floor(entries)
        floor_insert_s = insert_floor(entries, folder, chunk)
        floor_wal_s = insert_floor(entries, folder, chunk, wal=True)
        json_s, leaves_s = encode_and_hash(events)
        single_s = one_per_call(events[: args.single], folder)

    def rate(seconds: float) -> str:
        return f"{n / seconds:>12,.0f}/s" if seconds > 0 else "           -"

    print(f"state file {db_mb:,.0f} MB; first checkpoint (the whole tree) {checkpoint_s:.2f} s")
    print(f"signed root {note.splitlines()[2]}")
    print(f"{'':28}{'seconds':>9} {'entries':>14}  {'vs floor':>9}")
    rows = [
        ("append (AuditLog)", append_s, floor_insert_s),
        ("  floor: sqlite3 insert", floor_insert_s, None),
        ("  same in WAL mode", floor_wal_s, floor_insert_s),
        ("  in it: canonical JSON", json_s, floor_insert_s),
        ("  in it: leaf hashes", leaves_s, floor_insert_s),
        ("verify (verify_log)", verify_s, floor_hash_s),
        ("  floor: hashlib leaf+tree", floor_hash_s, None),
    ]
    for label, seconds, floor in rows:
        ratio = f"{seconds / floor:>8.1f}x" if floor else ""
        print(f"{label:28}{seconds:>9.2f} {rate(seconds)}  {ratio}")
    print(f"append vs hash floor: {append_s / floor_hash_s:.1f}x")
    print(
        f"speed as a fraction of the floor's: append {floor_insert_s / append_s:.2f}, "
        f"verify {floor_hash_s / verify_s:.2f}"
    )
    if single_s > 0:
        count = min(args.single, n)
        print(
            f"one event per call: {count:,} appends in {single_s:.2f} s, "
            f"{count / single_s:,.0f}/s (each its own commit)"
        )


if __name__ == "__main__":
    main()
