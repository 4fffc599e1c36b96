"""``domicile serve --watch``: the drift watch beside the service, its rounds on /metrics.

A real ``domicile serve`` process on loopback.  After a first round, a US
user's row is written abroad with our own SQL; a later round must count
exactly one more violating record and one new cell, on ``/metrics``.
SIGTERM stops the service and the watch, exit 0.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

import servekit

pytestmark = pytest.mark.timeout(180)


def _metric(text: str, name: str) -> float | None:
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(found.group(1)) if found else None


def _wait_round(url: str, proc: subprocess.Popen[str], after: float) -> str:
    deadline = time.monotonic() + 90
    while True:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "no watch round reached /metrics"
        try:
            text = httpx.get(f"{url}/metrics", timeout=5).text
        except httpx.HTTPError:
            text = ""
        number = _metric(text, "domicile_watch_round")
        if number is not None and number > after:
            return text
        time.sleep(0.3)


def test_serve_runs_the_watch_and_shows_its_rounds(tmp_path: Path) -> None:
    path = servekit.build_fleet(tmp_path)
    sock = servekit._free_socket()
    port = sock.getsockname()[1]
    sock.close()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "domicile", "serve", "-c", str(path), "--port", str(port)]
    proc = subprocess.Popen(
        [*argv, "--watch", "1s"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        first = _wait_round(url, proc, 0)
        before = _metric(first, "domicile_watch_violating_records")
        assert before is not None
        number = _metric(first, "domicile_watch_round") or 0
        engine = sa.create_engine(f"sqlite:///{tmp_path / 'sg.db'}")
        with engine.begin() as conn:  # a new US sign-up written abroad
            conn.execute(sa.text("INSERT INTO users (id, name, country) VALUES (9001, 'x', 'US')"))
        engine.dispose()
        # the round running now may have read before the insert: wait for the one after
        later = _wait_round(url, proc, number + 1)
        assert _metric(later, "domicile_watch_violating_records") == before + 1
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err


def test_webhook_without_watch_is_bad_input(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "domicile", "serve", "-c", str(tmp_path / "x.yaml")]
    done = subprocess.run(
        [*argv, "--webhook", "http://127.0.0.1:9/"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "--webhook needs --watch" in done.stderr
