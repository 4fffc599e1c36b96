"""Crash tests with media: SIGKILL the CLI inside an object dataset's or a blob's batch, resume.

The journal's crash switch counts transitions over the whole run (SQL and
object batches alike), so a probe run on an identical fleet (same seed, same
batch size) tells which occurrence of a state falls in the k-th batch of
``videos`` (rows with their blobs) or ``avatars`` (an object dataset).  At the
crash no row and no object may be lost; after ``run --resume`` every object
is where the rule puts it with its original bytes, and nothing is left
abroad.  Then the application overwrites an object after its copy was
verified (the run pauses there): the new content must end at home, the old
one must not have replaced it.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from crashrun import command
from domicile.datamap import load_map
from domicile.demo import build_demo
from domicile.fleet import Fleet
from domicile.plan import Plan
from domicile.run.audit_events import deployment_key
from domicile.run.context import RunContext, RunOptions
from domicile.run.home_blobs import HomeBlobMover
from domicile.run.journal import BatchRecord, Journal
from domicile.state import state_engine
from invariants import check_invariants, snapshot
from mediakit import (
    add_video,
    assert_objects,
    check_rows_point_home,
    delete_object,
    expected_objects,
    hidden_leftovers,
    keys_to_urls,
    media_to_s3,
    no_object_lost,
    object_snapshot,
    object_url,
    users_of,
    write_object,
)

pytestmark = pytest.mark.slow

USERS, SEED, BATCH = 60, 21, "8"


def _cli(path: Path, *args: str, crash: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(*args, "-c", str(path), crash=crash),
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def _videos_by_id(path: Path) -> dict[Any, dict[str, dict[str, Any]]]:
    out: dict[Any, dict[str, dict[str, Any]]] = {}
    with Fleet(load_map(path)) as fleet:
        for loc in fleet.locations("videos"):
            with loc.store.engine.connect() as conn:
                for row in conn.execute(sa.select(loc.table)).mappings():
                    out.setdefault(row["id"], {})[loc.store.name] = dict(row)
    return out


def _journal(path: Path) -> Journal:
    m = load_map(path)
    return Journal(state_engine(m.state, m.base_dir))


@pytest.fixture(scope="module")
def occurrence(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str, int], int]:
    """``occurrence(state, dataset, k)``: which journal write of *state* is the k-th batch's.

    Copy-side states (copying, copied, verified) are written batch by batch
    in batch-id order; deletes run in their own order, which the time each
    batch reached ``done`` gives.
    """
    path = build_demo(tmp_path_factory.mktemp("probe") / "demo", users=USERS, seed=SEED, media=True)
    done = _cli(path, "run", "--batch-size", BATCH)
    assert done.returncode == 0, done.stdout + done.stderr
    batches = [b for b in _journal(path).batches(_journal(path).runs()[0].id) if b.pass_no == 1]
    by_id = [b.dataset for b in sorted(batches, key=lambda b: b.id)]
    with _journal(path).engine.connect() as conn:
        t = sa.table("domicile_batches", sa.column("id"), sa.column("updated_at"))
        finished = dict(conn.execute(sa.select(t.c.id, t.c.updated_at)).all())
    by_done = [b.dataset for b in sorted(batches, key=lambda b: (finished[b.id], b.id))]

    def nth(state: str, dataset: str, k: int) -> int:
        order = by_done if state in ("deleting", "done") else by_id
        seen = [i for i, d in enumerate(order, 1) if d == dataset]
        assert len(seen) >= k, f"only {len(seen)} {dataset} batches"
        return seen[k - 1]

    return nth


def _fleet(tmp_path: Path, kind: str, request: pytest.FixtureRequest) -> Path:
    path = build_demo(tmp_path / "demo", users=USERS, seed=SEED, media=True)
    if kind == "s3":
        media_to_s3(path, request.getfixturevalue("s3_server"))
    return path


def _finish_and_check(
    path: Path, rows: Any, expected: dict[str, dict[str, str]], changed: Any = frozenset()
) -> None:
    objects = object_snapshot(path)
    assert_objects(expected, objects)
    assert not hidden_leftovers(objects)
    check_rows_point_home(path, objects)
    check_invariants(path, rows, snapshot(path), changed_by_app=changed)
    scan = _cli(path, "scan")
    assert scan.returncode == 0, scan.stdout + scan.stderr


CRASHES = [
    ("copying", "videos", 2, "file"),  # rows and blobs journalled, nothing copied yet
    ("copied", "videos", 2, "file"),  # rows and blobs home, not verified
    ("verified", "videos", 1, "file"),  # verified, nothing deleted
    ("deleting", "videos", 2, "file"),  # deleting journalled, rows and blobs still at the source
    pytest.param("copying", "avatars", 2, "file", marks=pytest.mark.long),
    ("copied", "avatars", 2, "file"),
    pytest.param("verified", "avatars", 1, "file", marks=pytest.mark.long),
    ("deleting", "avatars", 2, "file"),
    pytest.param("copied", "videos", 1, "s3", marks=[pytest.mark.s3, pytest.mark.long]),
    pytest.param("deleting", "avatars", 1, "s3", marks=pytest.mark.s3),
]


@pytest.mark.parametrize(("state", "dataset", "k", "kind"), CRASHES)
def test_kill_inside_a_media_batch_then_resume(
    tmp_path, request, occurrence, state, dataset, k, kind
):
    path = _fleet(tmp_path, kind, request)
    rows, objects = snapshot(path), object_snapshot(path)
    expected = expected_objects(path, objects)
    crash = f"{state}:{occurrence(state, dataset, k)}"
    killed = _cli(path, "run", "--batch-size", BATCH, crash=crash)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    # the kill fell inside a batch of the dataset aimed at
    journal = _journal(path)
    run_id = journal.unfinished()[0].id
    hit = max((b for b in journal.batches(run_id) if b.state == state), key=lambda b: b.id)
    assert hit.dataset == dataset, hit
    # nothing lost at the moment of the crash: every row somewhere, every object intact somewhere
    mid_rows = snapshot(path)
    for ds, records in rows.items():
        for key, places in records.items():
            assert mid_rows.get(ds, {}).get(key), f"lost {ds} {key} (was in {places})"
    no_object_lost(objects, object_snapshot(path))

    resumed = _cli(path, "run", "--resume", run_id, "--batch-size", BATCH)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    _finish_and_check(path, rows, expected)


def _paused_batch(path: Path, dataset: str, process: subprocess.Popen[str]) -> BatchRecord:
    """Wait until the run pauses with a verified batch of *dataset*; return that batch."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before pausing"
        try:
            journal = _journal(path)
            for run in journal.runs():
                for b in journal.batches(run.id, dataset, states=["verified"]):
                    return b
        except sa.exc.OperationalError:  # the state store is being created or written
            pass
        time.sleep(0.05)
    raise AssertionError(f"no verified {dataset} batch within 120 s")


def _run_with_pause(
    path: Path, dataset: str, occurrence: Callable[[str, str, int], int], crash: str | None = None
) -> tuple[subprocess.Popen[str], BatchRecord]:
    """Start a run that pauses 5 s after the first verified batch of *dataset*; return it paused."""
    pause = f"verified:{occurrence('verified', dataset, 1)}:5"
    process = subprocess.Popen(
        command("run", "--batch-size", BATCH, "-c", str(path), crash=crash, pause=pause),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        return process, _paused_batch(path, dataset, process)
    except BaseException:
        process.kill()
        process.wait()
        raise


def _update_row(path: Path, store: str, video_id: int, caption: str) -> None:
    with Fleet(load_map(path)) as fleet:
        loc = fleet.location("videos", store)
        assert loc is not None
        with loc.store.engine.begin() as conn:
            t = loc.table
            conn.execute(t.update().where(t.c.id == video_id).values(caption=caption))


@pytest.mark.parametrize(
    ("dataset", "kind", "row_too"),
    [
        ("videos", "file", False),
        ("videos", "file", True),  # the row changes too: both move again in the next pass
        ("avatars", "file", False),
        pytest.param("videos", "s3", False, marks=[pytest.mark.s3, pytest.mark.long]),
        pytest.param("videos", "s3", True, marks=pytest.mark.s3),
        pytest.param("avatars", "s3", False, marks=[pytest.mark.s3, pytest.mark.long]),
    ],
)
def test_object_overwritten_after_its_copy_moves_again(
    tmp_path, request, occurrence, dataset, kind, row_too
):
    path = _fleet(tmp_path, kind, request)
    m = load_map(path)
    rows, objects = snapshot(path), object_snapshot(path)
    expected = expected_objects(path, objects)
    process, batch = _run_with_pause(path, dataset, occurrence)
    try:
        row = _journal(path).rows(batch.id)[0]
        assert row.blob is not None
        store, key = row.blob["store"], row.blob["key"]
        # the application writes new bytes over the object whose copy was just verified
        new = os.urandom(5000)
        write_object(m.stores[store], key, new)
        if row_too:
            _update_row(path, batch.source, row.key[0], "edited during the move")
        output, _ = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output
    assert key in objects[store]  # it was abroad, with its old bytes
    homes = [s for s, keys in expected.items() if keys.get(key) == objects[store][key]]
    assert len(homes) == 1 and homes[0] != store
    expected[homes[0]][key] = hashlib.sha256(new).hexdigest()  # the NEW bytes home, none abroad
    changed = {("videos", row.key)} if row_too else set()
    _finish_and_check(path, rows, expected, changed)
    if row_too:
        ((where, video),) = _videos_by_id(path)[row.key[0]].items()
        assert where == "us-tx" and video["caption"] == "edited during the move"


@pytest.mark.parametrize("crash", [False, True], ids=["no-crash", "crash-in-delete"])
def test_object_deleted_after_its_copy_does_not_come_back(tmp_path, request, occurrence, crash):
    """The user deleted their avatar while it was moving: it must not reappear at home."""
    path = _fleet(tmp_path, "file", request)
    m = load_map(path)
    rows, objects = snapshot(path), object_snapshot(path)
    expected = expected_objects(path, objects)
    kill = f"deleting:{occurrence('deleting', 'avatars', 1)}" if crash else None
    process, batch = _run_with_pause(path, "avatars", occurrence, crash=kill)
    try:
        key = _journal(path).rows(batch.id)[0].key[0]
        delete_object(m.stores[batch.source], key)
        output, _ = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if crash:
        assert process.returncode == -signal.SIGKILL, output
        resumed = _cli(path, "run", "--resume", _journal(path).unfinished()[0].id)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    else:
        assert process.returncode == 0, output
    for keys in expected.values():
        keys.pop(key, None)  # gone everywhere: the application deleted it
    _finish_and_check(path, rows, expected)


# -- objects abroad of rows already at home --------------------------------------------------


def _upload_abroad(path: Path) -> tuple[str, int]:
    """A US user's row at home (us-tx) naming, by URL, a new upload in the old bucket."""
    keys_to_urls(path)
    m = load_map(path)
    owner = users_of(path, "US", "us-tx")[0]
    key = f"videos/{owner}/uploaded-abroad.mp4"
    write_object(m.stores["media-sg"], key, b"a new upload that went to the old bucket")
    return key, add_video(path, "us-tx", owner, object_url(m.stores["media-sg"], key))


def _moved_rows(before: dict[Any, Any], after: dict[Any, Any]) -> set[tuple[str, tuple[Any]]]:
    """Videos whose store changed (their URL was rewritten at home, so their digest too)."""
    return {("videos", (vid,)) for vid, places in after.items() if set(places) != set(before[vid])}


@pytest.mark.parametrize("state", ["copying", "copied", "verified", "deleting"])
def test_kill_inside_a_batch_of_objects_of_rows_at_home_then_resume(tmp_path, state):
    """SIGKILL in the batch that moves a home row's object from abroad, then resume."""
    path = build_demo(tmp_path / "demo", users=USERS, seed=SEED, media=True)
    key, video = _upload_abroad(path)
    m = load_map(path)
    rows, objects, videos = snapshot(path), object_snapshot(path), _videos_by_id(path)
    expected = expected_objects(path, objects)
    assert key in expected["media-us"]
    # the objects of rows that stay are copied first in a pass and deleted last
    if state == "deleting":
        probe = build_demo(tmp_path / "probe" / "demo", users=USERS, seed=SEED, media=True)
        _upload_abroad(probe)
        assert _cli(probe, "run", "--batch-size", BATCH).returncode == 0
        journal = _journal(probe)
        nth = len([b for b in journal.batches(journal.runs()[0].id) if b.pass_no == 1])
    else:
        nth = 1
    killed = _cli(path, "run", "--batch-size", BATCH, crash=f"{state}:{nth}")
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    journal = _journal(path)
    run_id = journal.unfinished()[0].id
    hit = max((b for b in journal.batches(run_id) if b.state == state), key=lambda b: b.id)
    assert (hit.dataset, hit.source) == ("videos", "media-sg"), hit
    # nothing lost at the crash, and the row names an object that exists with its bytes
    no_object_lost(objects, object_snapshot(path))
    ((where, row),) = _videos_by_id(path)[video].items()
    assert where == "us-tx"
    named = [
        s for s in ("media-sg", "media-us") if row["media_key"] == object_url(m.stores[s], key)
    ]
    assert named and object_snapshot(path)[named[0]][key] == objects["media-sg"][key], row

    resumed = _cli(path, "run", "--resume", run_id, "--batch-size", BATCH)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    after = _videos_by_id(path)
    assert after[video]["us-tx"]["media_key"] == object_url(m.stores["media-us"], key)
    _finish_and_check(path, rows, expected, _moved_rows(videos, after) | {("videos", (video,))})


def test_undo_puts_an_unfinished_batch_of_objects_of_rows_at_home_back(tmp_path):
    """An abandoned run's batch: the row names the object abroad again, home has no stray copy."""
    path = build_demo(tmp_path / "demo", users=USERS, seed=SEED, media=True)
    key, video = _upload_abroad(path)
    m = load_map(path)
    objects, before = object_snapshot(path), _videos_by_id(path)[video]["us-tx"]["media_key"]
    killed = _cli(path, "run", "--batch-size", BATCH, crash="copied:1")
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    journal = _journal(path)
    run = journal.unfinished()[0]
    (batch,) = [b for b in journal.batches(run.id) if b.source == "media-sg"]
    assert _videos_by_id(path)[video]["us-tx"]["media_key"] == object_url(m.stores["media-us"], key)
    journal.set_key(deployment_key(m))
    with Fleet(m) as fleet:
        plan = Plan(run.scope, (), (), (), ())
        ctx = RunContext(m, fleet, journal, run.id, plan, RunOptions(), None, None)
        mover = HomeBlobMover(ctx, m.datasets["videos"], fleet.objects["media-sg"])
        assert mover.undo(journal.checked_batch(batch.id, fresh=True)) == 1
    assert _videos_by_id(path)[video]["us-tx"]["media_key"] == before
    after = object_snapshot(path)
    assert after["media-sg"][key] == objects["media-sg"][key] and key not in after["media-us"]
    # given up, a new run moves the object again from the start
    assert _cli(path, "run", "--abandon", run.id).returncode == 0
    done = _cli(path, "run", "--batch-size", BATCH)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _videos_by_id(path)[video]["us-tx"]["media_key"] == object_url(m.stores["media-us"], key)
    assert key not in object_snapshot(path)["media-sg"]


def test_abandon_puts_an_unfinished_batch_of_objects_of_rows_at_home_back(tmp_path):
    """``run --abandon`` undoes that batch itself: the row names the object abroad again."""
    path = build_demo(tmp_path / "demo", users=USERS, seed=SEED, media=True)
    key, video = _upload_abroad(path)
    objects, before = object_snapshot(path), _videos_by_id(path)[video]["us-tx"]["media_key"]
    killed = _cli(path, "run", "--batch-size", BATCH, crash="copied:1")
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    run = _journal(path).unfinished()[0]
    assert _videos_by_id(path)[video]["us-tx"]["media_key"] != before
    abandoned = _cli(path, "run", "--abandon", run.id)
    assert abandoned.returncode == 0, abandoned.stdout + abandoned.stderr
    assert _videos_by_id(path)[video]["us-tx"]["media_key"] == before
    after = object_snapshot(path)
    assert after["media-sg"][key] == objects["media-sg"][key] and key not in after["media-us"]
