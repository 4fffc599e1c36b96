"""Launching domicile for the crash campaign (tests/campaign.py): a fork server and its hook.

A plain start of ``python -m domicile`` costs ~2 s of imports on this machine, more than
a kill.  So the campaign starts one *fork server* (this file as a script) that imports
domicile once and forks a fresh process per launch; the child installs :class:`Trigger`
(built on tests/crashrun.py's ``CrashAt``), runs the CLI and exits.  SIGKILL hits it as it
would hit ``python -m domicile``.  ``Launcher(spawn=True)`` starts tests/crashrun.py instead.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import pkgutil
import queue
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import crashrun

HANG = 300.0  # a launch that takes longer than this is killed and reported as hung (-999)


class Trigger:
    """The hook a launched domicile installs: SIGKILL at the N-th protocol point, or MS later.

    Every point reached is counted into *points* (a JSON file) before anything else, so the
    campaign knows how far a killed launch got.
    """

    def __init__(self, at: str | None, points: Path):
        state, nth, ms = ((at or "") + "::").split(":")[:3]
        self.crash = crashrun.CrashAt(f"{state}:{nth}" if at and not ms else None, None)
        self.state, self.nth, self.ms = state, int(nth or 0), ms
        self.points, self.counts = points, Counter[str]()
        self.first: float | None = None  # when the first point was reached (time.monotonic)
        self.lock = threading.Lock()  # points are reached on several threads (read-ahead, deletes)

    def __call__(self, name: str) -> None:
        with self.lock:
            self.counts[name] += 1
            self.first = self.first or time.monotonic()
            self.points.write_text(json.dumps({**self.counts, "_first": self.first}))
        self.crash(name)  # kills at STATE:N when no delay is asked
        if self.ms and name == self.state and self.counts[name] == self.nth:
            timer = threading.Timer(int(self.ms) / 1000, os.kill, (os.getpid(), signal.SIGKILL))
            timer.daemon = True
            timer.start()


def serve() -> None:
    """The fork server (this file as a script): one forked domicile per request line."""
    import psycopg  # noqa: F401
    import pymysql  # noqa: F401
    import s3fs  # noqa: F401

    import domicile
    from domicile.cli import run_cli
    from domicile.run import hooks

    # everything a run imports lazily, imported once here rather than in every child
    for module in pkgutil.walk_packages(domicile.__path__, "domicile."):
        if not module.name.startswith(("domicile.__main__", "domicile.service")):
            importlib.import_module(module.name)
    for name in ("graphlib", "rich._emoji_codes", "sqlalchemy.ext.compiler",
                 "typer._click.decorators", "pydantic.type_adapter"):  # fmt: skip
        importlib.import_module(name)

    assert threading.active_count() == 1, "a fork server must not run threads"
    for line in sys.stdin:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 70
            try:
                out = os.open(req["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(out, 1)
                os.dup2(out, 2)
                os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
                os.chdir(req["cwd"])
                hooks.install(Trigger(req["at"], Path(req["out"] + ".points")))
                code = run_cli(req["args"])
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)


class Launcher:
    """Starts one domicile command at a time (forked, or spawned with crashrun.py) and kills it."""

    def __init__(self, workdir: Path, spawn: bool = False):
        self.workdir, self.spawn, self.n = workdir, spawn, 0
        self.server: subprocess.Popen[str] | None = None
        self.lines: queue.Queue[str] = queue.Queue()
        if not spawn:
            self.server = subprocess.Popen(
                [sys.executable, __file__],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=workdir,
            )  # fmt: skip
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.server is not None and self.server.stdout is not None
        for line in self.server.stdout:
            self.lines.put(line)

    def launch(self, args: list[str], at: str | None, delay: float | None) -> tuple[int, str]:
        """Run ``domicile ARGS``; SIGKILL it per *at* or after *delay* s. (exit code, output)."""
        out = self.workdir / f"launch-{self.n % 3}.out"
        self.n += 1
        Path(f"{out}.points").unlink(missing_ok=True)
        limit = delay if delay is not None else HANG
        if self.spawn:
            crash = ":".join(at.split(":")[:2]) if at else None
            with open(out, "w") as f:
                proc = subprocess.Popen(crashrun.command(*args, crash=crash), stdout=f,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        cwd=self.workdir)  # fmt: skip
                try:
                    rc = proc.wait(limit)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    rc = proc.wait() if delay is not None else -999
        else:
            assert self.server is not None and self.server.stdin is not None
            req = {"args": args, "at": at, "out": str(out), "cwd": str(self.workdir)}
            self.server.stdin.write(json.dumps(req) + "\n")
            self.server.stdin.flush()
            if self.server.poll() is not None:
                raise RuntimeError(f"the fork server exited with {self.server.returncode}")
            pid = json.loads(self.lines.get(timeout=60))["pid"]
            try:
                rc = json.loads(self.lines.get(timeout=limit))["rc"]
            except queue.Empty:
                with contextlib.suppress(ProcessLookupError):  # it ended just now
                    os.kill(pid, signal.SIGKILL)
                rc = json.loads(self.lines.get(timeout=60))["rc"]
                rc = rc if delay is not None else -999
        return rc, out.read_text(errors="replace")

    def points(self) -> dict[str, Any]:
        """How often the last launch reached each protocol point, and ``_first``: when it
        reached its first (time.monotonic); {} if unknown."""
        last = Path(f"{self.workdir / f'launch-{(self.n - 1) % 3}.out'}.points")
        try:
            return dict(json.loads(last.read_text()))
        except (OSError, ValueError):  # no point reached, or killed while writing the count
            return {}

    def close(self) -> None:
        if self.server is not None:
            assert self.server.stdin is not None
            self.server.stdin.close()
            self.server.wait(30)


if __name__ == "__main__":
    serve()
