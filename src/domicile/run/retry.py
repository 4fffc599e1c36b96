"""Retries with backoff and jitter for transient failures, and a rate limit for production stores.

A step that fails :class:`~domicile.errors.Transient` (a dropped or reset
connection, a server that stopped answering within its bound, a lock
timeout) is tried again, up to a bound, after an exponentially growing wait
with random jitter (so that the workers of a run, or two runs, do not retry
in step).  The waits are tenacity's; the policy is here.  When the bound is
reached, the last failure is raised with what was tried added to its
message: the run stops ``failed``, resumable (exit 4), and since every step
journals its state before its side effect, nothing that was not verified is
ever deleted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from domicile.errors import DomicileError, is_transient

T = TypeVar("T")
log = logging.getLogger(__name__)


class Retry:
    """Call a step again after a transient failure, waiting longer each time.

    Only errors marked :class:`~domicile.errors.Transient` are retried;
    anything else is raised at once.  The wait before attempt *n* + 1 is
    ``min(cap, backoff * 2 ** (n - 1))`` plus up to *backoff* seconds of
    jitter; after *attempts* attempts the last failure is raised.
    """

    def __init__(
        self,
        attempts: int = 5,
        backoff: float = 0.5,
        cap: float = 8.0,
        jitter: float | None = None,
    ):
        self.attempts = max(1, attempts)
        self.backoff = max(0.0, backoff)
        self.cap = cap
        self.jitter = self.backoff if jitter is None else jitter
        self.retried = 0  # transient failures retried so far, over every call
        self.gave_up = 0  # calls that ended on a transient failure after every attempt
        self._lock = threading.Lock()

    def call(self, fn: Callable[[], T]) -> T:
        """Run *fn*, retrying transient failures; the last failure is raised."""
        started = time.monotonic()
        retrying = Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=self.backoff, max=self.cap)
            + wait_random(0, self.jitter),
            retry=retry_if_exception(is_transient),
            before_sleep=self._before_sleep,
            reraise=True,
        )
        try:
            return retrying(fn)
        except Exception as exc:
            if is_transient(exc) and isinstance(exc, DomicileError) and self.attempts > 1:
                self._gave_up(exc, time.monotonic() - started)
            raise

    def _before_sleep(self, state: RetryCallState) -> None:
        with self._lock:
            self.retried += 1
        error = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning(
            "transient failure (attempt %d of %d), retrying in %.2f s: %s",
            state.attempt_number,
            self.attempts,
            wait,
            getattr(error, "message", error),
        )

    def _gave_up(self, exc: DomicileError, seconds: float) -> None:
        """Say in *exc*'s message that it is the last of the attempts (the class, where
        and hint stay, so that callers and the exit code see the same failure)."""
        with self._lock:
            self.gave_up += 1
        note = f" (gave up after {self.attempts} attempts in {seconds:.1f} s)"
        if not exc.message.endswith(note):
            exc.message += note
            exc.args = (exc.message, *exc.args[1:])
        log.error("giving up after %d attempts: %s", self.attempts, exc.message)


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
