"""Retries with backoff for transient failures, and a rate limit for production stores."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from domicile.errors import is_transient

T = TypeVar("T")


class Retry:
    """Call a step again after a transient failure, waiting longer each time.

    Only errors marked :class:`~domicile.errors.Transient` (a dropped
    connection, a lock timeout) are retried; anything else is raised at once.
    """

    def __init__(self, attempts: int = 5, backoff: float = 0.5, cap: float = 8.0):
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self.cap = cap

    def call(self, fn: Callable[[], T]) -> T:
        """Run *fn*, retrying transient failures; the last failure is raised."""
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except Exception as exc:
                if not is_transient(exc) or attempt == self.attempts:
                    raise
                time.sleep(min(self.cap, self.backoff * 2 ** (attempt - 1)))
        raise AssertionError("unreachable")  # the loop returns or raises


class Throttle:
    """Keeps the rows moved per second under a limit, across every worker."""

    def __init__(self, rows_per_second: float | None):
        self.rate = rows_per_second
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._rows = 0

    def wait(self, rows: int) -> None:
        """Account for *rows* and sleep as long as the limit needs."""
        if not self.rate:
            return
        with self._lock:
            self._rows += rows
            due = self._start + self._rows / self.rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
