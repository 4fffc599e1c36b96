"""Test-owned entry point: the domicile CLI with a crash or pause hook installed.

``python tests/crashrun.py [--crash-at STATE[:N]] [--pause-at STATE:N:SECONDS] -- ARGS``
runs ``domicile ARGS`` and, at the N-th time the protocol reaches STATE (a
batch state such as ``copying`` or ``deleting``, or ``dataset-done``), kills
itself with SIGKILL or sleeps.  Production code never reads these options.
"""

from __future__ import annotations

import os
import signal
import sys
import time


class CrashAt:
    def __init__(self, crash: str | None, pause: str | None):
        self.crash = crash
        self.pause = pause
        self.counts: dict[str, int] = {}

    def __call__(self, name: str) -> None:
        self.counts[name] = count = self.counts.get(name, 0) + 1
        if self.crash:
            state, _, nth = self.crash.partition(":")
            if state == name and count >= int(nth or 1):
                os.kill(os.getpid(), signal.SIGKILL)
        if self.pause:
            state, nth, seconds = [*self.pause.split(":"), "1", "1"][:3]
            if state == name and count == int(nth):
                time.sleep(float(seconds))


def main(argv: list[str]) -> int:
    crash = pause = None
    while argv and argv[0] != "--":
        flag, value, argv = argv[0], argv[1], argv[2:]
        if flag == "--crash-at":
            crash = value
        elif flag == "--pause-at":
            pause = value
        else:
            raise SystemExit(f"unknown option {flag}")
    args = argv[1:] if argv and argv[0] == "--" else argv
    from domicile.cli import run_cli
    from domicile.run import hooks

    hooks.install(CrashAt(crash, pause))
    return run_cli(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


def command(*args: str, crash: str | None = None, pause: str | None = None) -> list[str]:
    """The argv that runs ``domicile ARGS`` under this script with the given hook."""
    hook: list[str] = []
    if crash:
        hook += ["--crash-at", crash]
    if pause:
        hook += ["--pause-at", pause]
    return [sys.executable, __file__, *hook, "--", *args]
