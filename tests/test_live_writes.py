"""The application keeps writing while a run moves its users' data home.

A writer thread inserts, updates and deletes rows of moving subjects the way
an application that routes by "where does this record live now" does: at the
source while the record is there, at home once it has moved.  Afterwards
every write it made is at home, no row it deleted comes back, nothing is lost.
"""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from domicile.datamap import load_map
from domicile.demo import build_demo
from invariants import check_invariants, snapshot, sqlite_foreign_keys_hold

pytestmark = pytest.mark.slow

US = ("US", "us", "USA", "United States", "usa")


def _path(url: str) -> str:
    return url[len("sqlite:///") :]


class Writer(threading.Thread):
    """Writes to comments of US users in sg-main / us-tx while the run goes on."""

    def __init__(self, sg: str, home: str, stop: threading.Event):
        super().__init__(daemon=True)
        self.sg, self.home, self.stop_event = sg, home, stop
        self.inserted: dict[int, str] = {}
        self.updated: dict[int, str] = {}
        self.deleted: set[int] = set()
        self.error: BaseException | None = None

    def _conn(self, path: str) -> sqlite3.Connection:
        con = sqlite3.connect(path, timeout=30, isolation_level=None)
        con.execute("PRAGMA busy_timeout=30000")
        return con

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _loop(self) -> None:
        rng = random.Random(7)
        sg, home = self._conn(self.sg), self._conn(self.home)
        marks = ",".join("?" * len(US))
        authors = [r[0] for r in sg.execute(f"SELECT id FROM users WHERE country IN ({marks})", US)]
        ids = [
            r[0]
            for r in sg.execute(
                f"SELECT c.id FROM comments c JOIN users u ON u.id = c.author_id "
                f"WHERE u.country IN ({marks})",
                US,
            )
        ]
        next_id = 10_000_000
        n = 0
        while not self.stop_event.is_set():
            op = rng.choice(["insert", "update", "update", "delete"])
            if op == "insert":
                body = f"live insert {n}"
                sg.execute(
                    "INSERT INTO comments (id, video_id, author_id, body, created_at) "
                    "VALUES (?, 1, ?, ?, '2020-01-01 00:00:00')",
                    (next_id, rng.choice(authors), body),
                )
                self.inserted[next_id] = body
                next_id += 1
            else:
                cid = rng.choice(ids)
                if cid in self.deleted:
                    continue
                for con in (sg, home):  # where the record lives now
                    if op == "update":
                        body = f"live update {n}"
                        cur = con.execute("UPDATE comments SET body = ? WHERE id = ?", (body, cid))
                        if cur.rowcount:
                            self.updated[cid] = body
                            break
                    else:
                        cur = con.execute("DELETE FROM comments WHERE id = ?", (cid,))
                        if cur.rowcount:
                            self.deleted.add(cid)
                            self.updated.pop(cid, None)
                            break
            n += 1
            time.sleep(0.002)
        sg.close()
        home.close()


def test_writes_during_a_run_all_end_up_at_home(tmp_path):
    path = build_demo(tmp_path / "demo", users=200, seed=21)
    m = load_map(path)
    sg, home = _path(m.stores["sg-main"].url), _path(m.stores["us-tx"].url)
    before = snapshot(path)
    stop = threading.Event()
    writer = Writer(sg, home, stop)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "domicile",
            "run",
            "-j",
            "US",
            "--batch-size",
            "100",
            "--max-rows-per-second",
            "3000",
            "-c",
            str(path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ},
        stdin=subprocess.DEVNULL,
    )
    writer.start()
    time.sleep(2.5)  # write while the first pass copies and deletes
    stop.set()
    writer.join(timeout=60)
    out, _ = proc.communicate(timeout=300)
    assert writer.error is None, writer.error
    assert proc.returncode == 0, out
    assert writer.inserted and writer.updated and writer.deleted, "the writer did not write"
    con = sqlite3.connect(home)
    at_home = dict(con.execute("SELECT id, body FROM comments"))
    con.close()
    con = sqlite3.connect(sg)
    at_source = {r[0] for r in con.execute("SELECT id FROM comments")}
    con.close()
    for cid, body in {**writer.inserted, **writer.updated}.items():
        if cid in writer.deleted:
            continue
        assert at_home.get(cid) == body, f"comment {cid}: write {body!r} not at home"
        assert cid not in at_source
    for cid in writer.deleted:
        assert cid not in at_home and cid not in at_source, f"deleted comment {cid} came back"
    changed = {("comments", (c,)) for c in writer.updated} | {
        ("comments", (c,)) for c in writer.inserted
    }
    deleted = {("comments", (c,)) for c in writer.deleted}
    check_invariants(
        path, before, snapshot(path), scope=["US"], deleted_by_app=deleted, changed_by_app=changed
    )
    sqlite_foreign_keys_hold(m)
