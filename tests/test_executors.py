"""Executors: parts of a large table on threads, on a Dask LocalCluster, on a Dask scheduler.

Every check is an independent read: the stores' rows and digests
(``invariants.snapshot``), the media files' hashes, the journal's own tables
read with the test's SQL.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

import fleetkit
from crashrun import command
from domicile.datamap import load_map
from domicile.demo import build_demo
from domicile.run.fence import Fenced, claim
from domicile.run.journal import BatchRow, Journal
from domicile.run.journal_records import now, parts
from invariants import check_invariants, snapshot
from mediakit import (
    add_video,
    assert_objects,
    expected_objects,
    hidden_leftovers,
    no_object_lost,
    object_snapshot,
    users_of,
    write_object,
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def _domicile(*args: str, timeout: int = 300, env: dict[str, str] | None = None) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "domicile", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    return proc.returncode, proc.stdout + proc.stderr


def _files(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
        and p.suffix not in (".db", ".yaml")
        and not p.name.startswith(".domicile")
        and ".domicile" not in p.parts
    }


def _state_rows(path: Path, sql: str) -> list[tuple]:
    engine = sa.create_engine(f"sqlite:///{path.parent / '.domicile' / 'state.db'}")
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(sql))]
    finally:
        engine.dispose()


def _move_both(maps: dict[str, Path], batch_size: int, local_workers: int) -> None:
    """Run the move of ``maps["local"]`` on local threads and of ``maps["dask"]`` on a
    2-worker LocalCluster; both must end done."""
    size = str(batch_size)
    code, out = _domicile(
        "run", "--workers", str(local_workers), "--batch-size", size, "-c", str(maps["local"])
    )
    assert code == 0, out
    code, out = _domicile(
        "run", "--executor", "dask", "--workers", "2", "--batch-size", size,
        "-c", str(maps["dask"]),
    )  # fmt: skip
    assert code == 0, out


def _plain(snap: dict) -> dict:
    return {d: {k: dict(v) for k, v in recs.items()} for d, recs in snap.items()}


def test_dask_local_cluster_moves_exactly_what_the_local_executor_moves(tmp_path):
    """The demo fleet (rows and media) moved twice: one thread, then a 2-worker LocalCluster."""
    maps = {}
    for name in ("local", "dask"):
        maps[name] = build_demo(tmp_path / name, users=400, seed=7, media=True)
    before = snapshot(maps["local"])
    assert _plain(before) == _plain(snapshot(maps["dask"]))  # the same fleet twice
    _move_both(maps, batch_size=150, local_workers=1)
    local, dask = snapshot(maps["local"]), snapshot(maps["dask"])
    assert _plain(local) == _plain(dask)  # every record in the same stores, equal by digest
    check_invariants(maps["dask"], before, dask)
    assert _files(tmp_path / "local") == _files(tmp_path / "dask")
    # the large tables were split, every part ran on a worker that claimed it
    rows = _state_rows(maps["dask"], "SELECT dataset, source, count(*), min(token), max(holder) "
                       "FROM domicile_parts GROUP BY dataset, source")  # fmt: skip
    assert rows and any(n > 1 for _, _, n, _, _ in rows), rows
    assert all(token >= 1 and holder and "tcp://" in holder for *_, token, holder in rows)
    # every batch lies in its part's key range, numbered from the part
    for ds, source, lo, hi, part_no in _state_rows(
        maps["dask"],
        "SELECT b.dataset, b.source, b.lo, b.hi, p.part_no FROM domicile_batches b "
        "JOIN domicile_parts p ON p.run_id = b.run_id AND p.dataset = b.dataset "
        "AND p.source = b.source AND p.pass_no = b.pass_no "
        "AND b.seq >= p.part_no * 1000000 AND b.seq < (p.part_no + 1) * 1000000",
    ):
        assert hi is not None and part_no >= 1, (ds, source, lo, hi)
    unparted = _state_rows(
        maps["dask"],
        "SELECT count(*) FROM domicile_batches b WHERE b.dataset IN "
        "(SELECT dataset FROM domicile_parts) AND NOT EXISTS (SELECT 1 FROM domicile_parts p "
        "WHERE p.run_id = b.run_id AND p.dataset = b.dataset AND p.source = b.source AND "
        "p.pass_no = b.pass_no AND b.seq >= p.part_no * 1000000 "
        "AND b.seq < (p.part_no + 1) * 1000000)",
    )
    assert unparted == [(0,)]
    code, out = _domicile("audit", "verify", "-c", str(maps["dask"]))
    assert code == 0, out


def test_local_workers_split_one_large_table_into_key_ranges(tmp_path):
    """--workers 3 on threads: one table's key space in parts, each batch inside its range."""
    path = build_demo(tmp_path / "fleet", users=300, seed=11, media=False)
    before = snapshot(path)
    code, out = _domicile("run", "--workers", "3", "--batch-size", "100", "-c", str(path))
    assert code == 0, out
    check_invariants(path, before, snapshot(path))
    split = _state_rows(
        path, "SELECT dataset, source, part_no, lo, hi FROM domicile_parts ORDER BY 1, 2, 3"
    )
    assert split, "no table was split"
    by_pair: dict[tuple[str, str], list[tuple]] = {}
    for ds, source, part_no, lo, hi in split:
        by_pair.setdefault((ds, source), []).append((part_no, lo, hi))
    for pair, ranges in by_pair.items():
        assert ranges[0][1] is None and ranges[-1][2] is None, pair  # start to end
        for (_, _, hi), (_, lo, _) in itertools.pairwise(ranges):
            assert hi == lo, pair  # contiguous: no key between two parts is skipped
    # batch ranges stay inside their part (single-column integer keys here)
    for ds, source, _b_lo, b_hi, p_lo, p_hi in _state_rows(
        path,
        "SELECT b.dataset, b.source, b.lo, b.hi, p.lo, p.hi FROM domicile_batches b "
        "JOIN domicile_parts p ON p.run_id = b.run_id AND p.dataset = b.dataset "
        "AND p.source = b.source AND p.pass_no = b.pass_no "
        "AND b.seq >= p.part_no * 1000000 AND b.seq < (p.part_no + 1) * 1000000",
    ):
        hi = json.loads(b_hi)
        if p_lo is not None:
            assert hi > json.loads(p_lo), (ds, source)
        if p_hi is not None:
            assert hi <= json.loads(p_hi), (ds, source)


def test_a_stale_attempt_is_fenced_off(tmp_path):
    """Two claims of one part: the first attempt's journal writes are refused, the second's pass."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'state.db'}")
    journal = Journal(engine, b"k" * 32)
    run_id = journal.new_run(["US"], "0" * 64, {}, {})
    with engine.begin() as conn:
        part_id = conn.execute(
            parts.insert().values(
                run_id=run_id, dataset="users", source="sg", pass_no=1, part_no=1,
                token=0, updated_at=now(),
            )
        ).inserted_primary_key[0]  # fmt: skip
    first = claim(engine, part_id, "worker a")
    second = claim(engine, part_id, "worker b")
    assert second.token == first.token + 1
    row = BatchRow(("1",), "0" * 64, ("us",), None, None, None)
    stale = Journal(engine, b"k" * 32, fence=first, prepare=False)
    with pytest.raises(Fenced):
        stale.add_batch(run_id, "users", "sg", 1, 1_000_000, None, (1,), [row])
    fresh = Journal(engine, b"k" * 32, fence=second, prepare=False)
    batch_id = fresh.add_batch(run_id, "users", "sg", 1, 1_000_000, None, (1,), [row])
    with pytest.raises(Fenced):
        stale.transition(batch_id, "copied")
    assert journal.batch(batch_id).state == "copying"  # the stale write left no trace
    engine.dispose()


def test_unknown_executor_and_a_remote_scheduler_with_a_file_state_store_are_refused(tmp_path):
    path = build_demo(tmp_path / "fleet", users=50, seed=3, media=False)
    before = snapshot(path)
    code, out = _domicile("run", "--executor", "yarn", "-c", str(path))
    assert code == 2 and "unknown executor" in out and "Traceback" not in out, out
    code, out = _domicile("run", "--executor", "tcp://127.0.0.1:9", "-c", str(path))
    assert code == 2 and "local file" in out and "Traceback" not in out, out
    assert _plain(snapshot(path)) == _plain(before)  # nothing moved


def _start_cluster(tmp_path: Path, env: dict[str, str]) -> tuple[str, list[subprocess.Popen]]:
    sched_file = tmp_path / "scheduler.json"
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    procs = [
        subprocess.Popen(
            [*dask, "--scheduler-file", str(sched_file), "--port", "0", "--no-dashboard"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
    ]  # fmt: skip
    deadline = time.monotonic() + 60
    while not sched_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    address = json.loads(sched_file.read_text())["address"]
    worker = [sys.executable, "-m", "distributed.cli.dask_worker", address]
    procs.append(
        subprocess.Popen(
            [*worker, "--nworkers", "2", "--nthreads", "1", "--no-dashboard",
             "--preload", str(ROOT / "tests" / "dask_pause.py")],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT / "tests",
        )
    )  # fmt: skip
    return address, procs


def test_a_worker_killed_while_it_holds_a_batch_is_replaced_and_the_run_completes(
    tmp_path, make_db
):
    """SIGKILL the Dask worker process that holds a copied batch; the part runs elsewhere."""
    urls = {"sg": make_db("sqlite"), "us": make_db("sqlite"), "ca": make_db("sqlite")}
    state = make_db("postgresql")
    path = fleetkit.build(tmp_path, urls)
    doc = yaml.safe_load(path.read_text())
    doc["state"] = state
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    before = snapshot(path)
    pause = tmp_path / "pause"
    pause.mkdir()
    env = {**os.environ, "DOMICILE_TEST_PAUSE_DIR": str(pause)}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    address, procs = _start_cluster(tmp_path, env)
    try:
        run = subprocess.Popen(
            [sys.executable, "-m", "domicile", "run", "--executor", address, "--batch-size", "1",
             "-c", str(path)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        mark = pause / "paused"
        deadline = time.monotonic() + 120
        while not (mark.exists() and mark.read_text()) and time.monotonic() < deadline:
            assert run.poll() is None, run.communicate()[0]
            time.sleep(0.05)
        victim = int(mark.read_text())
        os.kill(victim, signal.SIGKILL)  # the worker dies holding a copied, unverified batch
        out, _ = run.communicate(timeout=240)
        assert run.returncode == 0, out
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
    after = snapshot(path)
    check_invariants(path, before, after)  # nothing lost, nothing outside home, digests kept
    engine = sa.create_engine(state)
    try:
        with engine.connect() as conn:
            holders = conn.execute(sa.text("SELECT holder, token FROM domicile_parts")).all()
            stuck = conn.execute(
                sa.text("SELECT count(*) FROM domicile_batches WHERE state != 'done'")
            ).scalar_one()
    finally:
        engine.dispose()
    assert stuck == 0
    assert all(f"pid {victim}" not in (h or "") for h, _ in holders)  # taken over, then finished
    assert max(t for _, t in holders) >= 3  # copy claim, the replacement's claim, delete claim
    code, out = _domicile("audit", "verify", "-c", str(path))
    assert code == 0, out


def test_sigterm_stops_the_workers_between_steps_and_a_resume_completes(tmp_path):
    """SIGTERM to the coordinator of a Dask run: exit 4, resumable; the resume finishes it."""
    path = build_demo(tmp_path / "fleet", users=300, seed=5, media=False)
    before = snapshot(path)
    run = subprocess.Popen(
        [sys.executable, "-m", "domicile", "run", "--executor", "dask", "--workers", "2",
         "--batch-size", "20", "-c", str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    state = path.parent / ".domicile" / "state.db"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert run.poll() is None, run.communicate()[0]
        if state.exists():
            try:
                n = _state_rows(path, "SELECT count(*) FROM domicile_batches")[0][0]
            except sa.exc.OperationalError:
                n = 0  # the tables are not made yet
            if n >= 5:
                break
        time.sleep(0.05)
    run.send_signal(signal.SIGTERM)
    out, _ = run.communicate(timeout=120)
    assert run.returncode == 4, out
    assert "Traceback" not in out, out
    mid = snapshot(path)
    lost = [(d, k) for d, recs in before.items() for k in recs if not mid.get(d, {}).get(k)]
    assert not lost  # stopped between steps: every record is somewhere
    run_id = _state_rows(path, "SELECT id FROM domicile_runs")[0][0]
    code, out = _domicile(
        "run", "--resume", run_id, "--executor", "dask", "--workers", "2", "-c", str(path)
    )
    assert code == 0, out
    check_invariants(path, before, snapshot(path))


def test_killed_mid_part_then_resumed_on_another_executor(tmp_path):
    """SIGKILL a threaded run inside a part, resume it on Dask; kill that coordinator, resume."""
    path = build_demo(tmp_path / "fleet", users=300, seed=9, media=False)
    before = snapshot(path)
    crashed = subprocess.run(
        command("run", "--workers", "3", "--batch-size", "30", "-c", str(path), crash="copied:6"),
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert crashed.returncode == -signal.SIGKILL, crashed.stdout + crashed.stderr
    mid = snapshot(path)
    assert not [(d, k) for d, recs in before.items() for k in recs if not mid.get(d, {}).get(k)]
    run_id = _state_rows(path, "SELECT id FROM domicile_runs")[0][0]
    parts_then = _state_rows(path, "SELECT id, lo, hi FROM domicile_parts ORDER BY id")
    assert parts_then  # the parts were journalled before any started
    # the coordinator of the resumed run dies after its first dataset: its workers go too
    crashed = subprocess.run(
        command(
            "run", "--resume", run_id, "--executor", "dask", "--workers", "2", "-c", str(path),
            crash="dataset-done:1",
        ),
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert crashed.returncode == -signal.SIGKILL, crashed.stdout + crashed.stderr
    code, out = _domicile("run", "--resume", run_id, "--workers", "2", "-c", str(path))
    assert code == 0, out
    check_invariants(path, before, snapshot(path))
    # the parts of the first pass were reused by both resumes, not cut again
    first = _state_rows(path, "SELECT id, lo, hi FROM domicile_parts WHERE pass_no = 1 ORDER BY id")
    assert first == parts_then
    code, out = _domicile("audit", "verify", "-c", str(path))
    assert code == 0, out


def test_parts_of_one_postgresql_source_delete_in_parallel(tmp_path, make_db):
    """Regression: parts deleting at one PostgreSQL source at once raced to create the
    delete-marks table ("duplicate key value violates pg_type_typname_nsp_index")."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    from domicile.datamap import load_map
    from domicile.fleet import Fleet
    from domicile.run import delete_marks

    urls = {"sg": make_db("postgresql"), "us": make_db("postgresql"), "ca": make_db("sqlite")}
    path = fleetkit.build(tmp_path, urls)
    with Fleet(load_map(path)) as fleet:
        store = fleet.sql["sg"]
        start = Barrier(6)

        def first_delete(_: int) -> None:
            start.wait()
            delete_marks.ensure(store)

        with ThreadPoolExecutor(6) as pool:
            list(pool.map(first_delete, range(6)))  # no worker fails
    before = snapshot(path)
    code, out = _domicile("run", "--workers", "3", "--batch-size", "1", "-c", str(path))
    assert code == 0, out
    check_invariants(path, before, snapshot(path))
    split = _state_rows(path, "SELECT count(*) FROM domicile_parts")[0][0]
    assert split > 1  # the tables were cut into parts that ran together


# -- objects on the workers: object datasets, and objects abroad of rows already home ------


def _upload_abroad(path: Path) -> str:
    """A US user's row at home naming a new upload that still went to media-sg; its key."""
    m = load_map(path)
    owner = users_of(path, "US", "us-tx")[0]
    key = f"videos/{owner}/uploaded-abroad.mp4"
    write_object(m.stores["media-sg"], key, b"a new upload that still went to the old bucket")
    add_video(path, "us-tx", owner, key, created_at=dt.datetime(2024, 5, 1, 12, 0))
    return key


OBJECT_BATCHES = (
    "SELECT b.dataset, b.source, b.seq, b.state, p.part_no, p.token, p.holder "
    "FROM domicile_batches b LEFT JOIN domicile_parts p ON p.run_id = b.run_id "
    "AND p.dataset = b.dataset AND p.source = b.source AND p.pass_no = b.pass_no "
    "AND b.seq >= p.part_no * 1000000 AND b.seq < (p.part_no + 1) * 1000000 "
    "WHERE b.source LIKE 'media-%' AND b.pass_no = 1 ORDER BY b.id"
)  # media-*: the demo's object stores; a batch from one is of objects, never of rows


def test_objects_move_on_the_dask_workers_as_the_local_executor_moves_them(tmp_path):
    """An object dataset (avatars) and the objects abroad of a row already home, on 2 workers.

    Each (dataset, object store) pair is a part of its own, claimed by a Dask
    worker; the result equals a threaded run's on an identical fleet.
    """
    maps = {}
    for name in ("local", "dask"):
        maps[name] = build_demo(tmp_path / name, users=120, seed=13, media=True)
        upload = _upload_abroad(maps[name])
    before = snapshot(maps["dask"])
    assert _plain(snapshot(maps["local"])) == _plain(before)  # the same fleet twice
    assert _files(tmp_path / "local") == _files(tmp_path / "dask")
    objects_before = object_snapshot(maps["dask"])
    expected = expected_objects(maps["dask"], objects_before)
    assert upload in expected["media-us"] and upload not in expected["media-sg"]
    _move_both(maps, batch_size=20, local_workers=2)
    after = snapshot(maps["dask"])
    assert _plain(snapshot(maps["local"])) == _plain(after)
    check_invariants(maps["dask"], before, after)
    assert _files(tmp_path / "local") == _files(tmp_path / "dask")
    objects = object_snapshot(maps["dask"])
    assert_objects(expected, objects)  # as worked out from the rows and the map, independently
    assert not hidden_leftovers(objects)
    # every batch of objects lies in a part that a Dask worker claimed, numbered from it
    batches = _state_rows(maps["dask"], OBJECT_BATCHES)
    assert "avatars" in {d for d, *_ in batches}, batches
    assert ("videos", "media-sg") in {(d, s) for d, s, *_ in batches}, batches  # the upload
    for ds, source, seq, state, part_no, token, holder in batches:
        assert state == "done", (ds, source, seq)
        assert part_no == 1 and seq >= 1_000_000, (ds, source, seq)
        assert token >= 1 and holder and "tcp://" in holder, (ds, source, holder)
    # the threaded run journalled them as always: no part rows, batches numbered from 1
    local = _state_rows(maps["local"], OBJECT_BATCHES)
    assert local and all(part_no is None and seq < 1_000_000 for _, _, seq, _, part_no, *_ in local)
    code, out = _domicile("audit", "verify", "-c", str(maps["dask"]))
    assert code == 0, out


def _copied_in(tmp_path: Path, dataset: str, k: int, users: int, seed: int) -> int:
    """Which time a threaded run reaches ``copied`` in its k-th batch of *dataset* (a probe run).

    One thread: copy-side states are journalled batch by batch, in batch id
    order, so the journal of a run on an identical fleet tells.
    """
    path = build_demo(tmp_path / "probe", users=users, seed=seed, media=True)
    code, out = _domicile("run", "--batch-size", "8", "-c", str(path))
    assert code == 0, out
    order = [d for (d,) in _state_rows(path, "SELECT dataset FROM domicile_batches ORDER BY id")]
    seen = [i for i, d in enumerate(order, 1) if d == dataset]
    assert len(seen) >= k, f"only {len(seen)} {dataset} batches"
    return seen[k - 1]


def test_killed_inside_an_object_dataset_then_resumed_on_dask(tmp_path):
    """SIGKILL a threaded run inside an object dataset's batch; resume it with --executor dask.

    The pair the threaded run had begun has batches but no part: the
    coordinator finishes it; a pair it had not begun is a part a worker claims.
    """
    nth = _copied_in(tmp_path, "avatars", 2, users=60, seed=21)
    path = build_demo(tmp_path / "fleet", users=60, seed=21, media=True)
    before, objects_before = snapshot(path), object_snapshot(path)
    expected = expected_objects(path, objects_before)
    crashed = subprocess.run(
        command("run", "--batch-size", "8", "-c", str(path), crash=f"copied:{nth}"),
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert crashed.returncode == -signal.SIGKILL, crashed.stdout + crashed.stderr
    no_object_lost(objects_before, object_snapshot(path))
    begun = _state_rows(path, OBJECT_BATCHES)
    assert [d for d, *_ in begun].count("avatars") == 2, begun  # killed in the second
    assert all(part_no is None for *_, part_no, _, _ in begun)  # journalled without a part
    run_id = _state_rows(path, "SELECT id FROM domicile_runs")[0][0]
    code, out = _domicile(
        "run", "--resume", run_id, "--executor", "dask", "--workers", "2", "-c", str(path)
    )
    assert code == 0, out
    check_invariants(path, before, snapshot(path))
    objects = object_snapshot(path)
    assert_objects(expected, objects)
    assert not hidden_leftovers(objects)
    batches = _state_rows(path, OBJECT_BATCHES)
    assert all(state == "done" for _, _, _, state, *_ in batches), batches
    implicit = {(d, s) for d, s, seq, _, part_no, _, _ in batches if part_no is None}
    parted = {(d, s) for d, s, seq, _, part_no, _, _ in batches if part_no is not None}
    assert ("avatars", begun[-1][1]) in implicit  # finished by the coordinator, as begun
    assert parted, batches  # the demo's other avatars store was not begun: a worker's part
    assert not implicit & parted  # a pair is one part or the other, never both
    for d, s, seq, _, part_no, token, holder in batches:
        if part_no is None:
            assert seq < 1_000_000 and not _state_rows(
                path, f"SELECT 1 FROM domicile_parts WHERE dataset = '{d}' AND source = '{s}' "
                "AND pass_no = 1"
            ), (d, s)  # fmt: skip
        else:
            assert token >= 1 and "tcp://" in holder, (d, s, holder)
    code, out = _domicile("audit", "verify", "-c", str(path))
    assert code == 0, out
