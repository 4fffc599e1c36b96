"""The drift watch: a row written abroad after a run is reported and POSTed to a webhook.

The webhook is a tiny HTTP receiver on a free loopback port in a thread; the
stop test runs ``domicile watch`` in a subprocess and sends it SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import fleetkit
from domicile import api, watch
from domicile.cli import run_cli
from domicile.errors import ConfigError


class Receiver:
    """Collects JSON POSTs; answers 500 to the first *fail* of them."""

    def __init__(self, fail: int = 0):
        self.bodies: list[dict[str, Any]] = []
        self.fail = fail
        self.calls = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.calls += 1
                if receiver.calls <= receiver.fail:
                    self.send_response(500)
                    self.end_headers()
                    return
                receiver.bodies.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(fail=1)  # the first POST fails: the watch retries it
    yield r
    r.close()


def _fleet(tmp_path: Path, make_db: Any) -> tuple[Path, dict[str, str]]:
    urls = {s: make_db("sqlite") for s in ("sg", "us", "ca")}
    path = fleetkit.build(tmp_path, urls)
    assert api.run(path).status == "done"
    return path, urls


def _write(url: str, sql: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(sql)
    engine.dispose()


def test_new_drift_is_logged_and_posted(tmp_path, make_db, receiver, caplog):
    path, urls = _fleet(tmp_path, make_db)

    def after(r: watch.RoundResult) -> None:
        if r.round == 1:  # the application writes a US subject's row abroad
            _write(urls["sg"], "INSERT INTO likes (user_id, post_id) VALUES (1, 99)")

    options = watch.WatchOptions(every=0.05, webhook=receiver.url, rounds=2)
    with caplog.at_level("WARNING", logger="domicile.watch"):
        rounds = api.watch(path, options, on_round=after)
    assert [r.round for r in rounds] == [1, 2]
    # round 1 has nothing to compare with: what it finds (the kept conflicts) is new
    assert rounds[0].new and all(d.dataset == "messages" for d in rounds[0].new)
    assert [(d.jurisdiction, d.store, d.dataset) for d in rounds[1].new] == [("US", "sg", "likes")]
    assert rounds[1].alerted is True and rounds[1].violations == 1
    alert = receiver.bodies[-1]
    assert alert["event"] == "domicile.drift" and alert["round"] == 2
    assert alert["new"] == [
        {
            "jurisdiction": "US",
            "store": "sg",
            "dataset": "likes",
            "violating": 1,
            "previous_violating": 0,
            "conflicts": 0,
            "previous_conflicts": 0,
        }
    ]
    assert receiver.calls == 3  # round 1 retried once after a 500
    assert "drift: new violating records in US/sg/likes 0->1" in caplog.text
    last = watch.last_round()
    assert last is not None and last.round == 2 and last.new == rounds[1].new


def test_a_webhook_that_stays_down_does_not_stop_the_watch(tmp_path, make_db, caplog):
    path, urls = _fleet(tmp_path, make_db)
    _write(urls["sg"], "INSERT INTO likes (user_id, post_id) VALUES (1, 99)")
    dead = Receiver()
    url = dead.url
    dead.close()  # nothing listens there now
    options = watch.WatchOptions(every=0.01, webhook=url, rounds=1, webhook_attempts=2)
    (r,) = api.watch(path, options)
    assert r.alerted is False and r.alert_error
    assert "could not be delivered" in caplog.text


def test_intervals_and_bad_input(tmp_path, capsys):
    assert watch.parse_every("10m") == 600
    assert watch.parse_every("1h30m") == 5400
    assert watch.parse_every("45") == 45
    for bad in ("ten", "0s", "5x", ""):
        with pytest.raises(ConfigError):
            watch.parse_every(bad)
    path = tmp_path / "domicile.yaml"
    assert run_cli(["watch", "--every", "soon", "-c", str(path)]) == 2
    assert "'soon' is not an interval" in capsys.readouterr().err


def test_sigterm_during_a_round_ends_it(tmp_path, make_db, monkeypatch):
    path, _ = _fleet(tmp_path, make_db)

    def slow_scan(*args: Any, **kwargs: Any) -> Any:
        time.sleep(30)  # a census still running when the signal comes
        raise AssertionError("the census was not stopped")

    monkeypatch.setattr("domicile.scan.scan", slow_scan)
    before = signal.getsignal(signal.SIGTERM)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    t0 = time.monotonic()
    try:
        rounds = api.watch(path, watch.WatchOptions(every=3600))
    finally:
        timer.cancel()
    assert rounds == [] and time.monotonic() - t0 < 10
    assert signal.getsignal(signal.SIGTERM) is before  # the watch's handler is gone


def test_sigterm_stops_the_watch_cleanly(tmp_path, make_db):
    path, _ = _fleet(tmp_path, make_db)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "domicile", "watch", "--every", "1h", "-c", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        seen = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            seen.append(line)
            if line.startswith("round 1") or not line:
                break
        assert any(s.startswith("round 1") for s in seen), "".join(seen)
        proc.send_signal(signal.SIGTERM)  # between rounds: the watch sleeps for an hour
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, "".join(seen) + out
    assert "watch stopped after 1 rounds" in out
