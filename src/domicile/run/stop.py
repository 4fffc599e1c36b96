"""Stopping a run cleanly: SIGINT or SIGTERM finish the current step, then the run stops.

The handler only sets a flag; the pass loop calls :meth:`StopFlag.check`
between steps, which raises :class:`~domicile.errors.Interrupted` (exit 4,
resumable).  No step is cut in half by a signal: a step is the unit the
journal records, and it either completes or was never journalled as done.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

from domicile.errors import Interrupted


class StopFlag:
    """A flag set by a signal (or by code) and checked between protocol steps."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def set(self, name: str = "stop requested") -> None:
        """Ask the run to stop after its current step."""
        self.signal_name = self.signal_name or name
        self._event.set()

    @property
    def is_set(self) -> bool:
        """True once a stop was asked for."""
        return self._event.is_set()

    def check(self) -> None:
        """Raise :class:`Interrupted` when a stop was asked for."""
        if self._event.is_set():
            raise Interrupted(
                f"stopped by {self.signal_name} after finishing the current step",
                hint="nothing is half-done; resume when ready",
            )

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.set(signal.Signals(signum).name)

    def __enter__(self) -> StopFlag:
        # signal handlers can only be installed from the main thread (a run
        # started from a worker thread, e.g. by the service, stops by set())
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
