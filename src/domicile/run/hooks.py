"""Named points in the move protocol where a test can stop or pause the process.

Production code calls :func:`point` at each journal transition, and as a page
is read ahead (``read-ahead``); nothing happens unless a hook object was
installed with :func:`install`, which only test-owned entry scripts do
(``tests/crashrun.py`` kills the process with SIGKILL at the n-th time a
point is reached, or sleeps there).  No
environment variable is read: a production process cannot be made to crash
by its environment.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol


class Hook(Protocol):
    """Called with the name of every protocol point the process reaches."""

    def __call__(self, name: str) -> None: ...


_installed: list[Hook] = []


def install(hook: Hook) -> None:
    """Install *hook* for this process (test entry scripts only)."""
    _installed.append(hook)


def point(name: str) -> None:
    """Mark that the protocol reached *name* (a batch state, or ``dataset-done``)."""
    for hook in _installed:
        hook(name)


@contextmanager
def installed(hook: Hook) -> Iterator[None]:
    """*hook* installed for the duration of a ``with`` block (tests running in process)."""
    install(hook)
    try:
        yield
    finally:
        _installed.remove(hook)
