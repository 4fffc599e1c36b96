"""Crash tests: SIGKILL the CLI at each kind of journal transition, resume, check the invariants."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from crashrun import command
from domicile.datamap import load_map
from domicile.demo import build_demo
from domicile.run.journal import Journal
from domicile.state import state_engine
from invariants import check_invariants, no_record_lost, snapshot, sqlite_foreign_keys_hold

pytestmark = pytest.mark.slow


def _cli(path: Path, *args: str, crash: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(*args, "-c", str(path), crash=crash),
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    "crash",
    [
        "copying:3",  # batch journalled, copy maybe not committed
        "copied:2",  # copied but not verified
        "verified:4",  # verified but not deleted
        "deleting:3",  # in the middle of deleting (journalled, delete not committed)
        "done:5",  # between batches of the delete phase
        "dataset-done:2",  # between datasets
    ],
)
def test_kill_at_transition_then_resume_keeps_every_invariant(tmp_path, crash):
    path = build_demo(tmp_path / "demo", users=80, seed=11)
    before = snapshot(path)
    killed = _cli(path, "run", "--batch-size", "40", crash=crash)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    mid = snapshot(path)
    no_record_lost(before, mid)  # invariant 1 holds at the moment of the crash
    m = load_map(path)
    runs = Journal(state_engine(m.state, m.base_dir)).unfinished()
    assert len(runs) == 1
    # a plain `run` refuses to start a second run over an unfinished one
    refused = _cli(path, "run")
    assert refused.returncode == 2 and "--resume" in refused.stderr
    resumed = _cli(path, "run", "--resume", runs[0].id, "--batch-size", "40")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    after = snapshot(path)
    check_invariants(path, before, after)
    sqlite_foreign_keys_hold(m)
    # resuming again is refused (done) and a new run finds nothing to move
    again = _cli(path, "run")
    assert again.returncode == 0, again.stdout + again.stderr
    assert snapshot(path) == after


def test_two_crashes_in_a_row(tmp_path):
    path = build_demo(tmp_path / "demo", users=60, seed=12)
    before = snapshot(path)
    first = _cli(path, "run", "--batch-size", "30", crash="verified:2")
    assert first.returncode == -signal.SIGKILL
    m = load_map(path)
    run_id = Journal(state_engine(m.state, m.base_dir)).unfinished()[0].id
    second = _cli(path, "run", "--resume", run_id, "--batch-size", "30", crash="deleting:2")
    assert second.returncode == -signal.SIGKILL
    no_record_lost(before, snapshot(path))
    third = _cli(path, "run", "--resume", run_id, "--batch-size", "30")
    assert third.returncode == 0, third.stdout + third.stderr
    check_invariants(path, before, snapshot(path))
