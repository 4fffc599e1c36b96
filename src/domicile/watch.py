"""The drift watch: a census every interval, and an alert when violations appear.

After a run the data is home; the watch notices when it drifts abroad again
(an application writing to the old store, a restore, a new replica declared
in the map).  Each round is a full census (:func:`domicile.scan.scan`): the
data map has no ``updated_at`` declaration a census could use to read only
what changed, so no round is incremental.  A round's census is stored with
:func:`domicile.census_store.save_census`, where ``serve`` reads the last one.

A round compares its cells with the previous round's.  A cell — (jurisdiction,
store, dataset) — whose violating or conflicting records grew is *new drift*:
the watch logs one line and, with a webhook, POSTs a JSON alert (retried with
backoff; a webhook that stays down is logged and the watch goes on).  The
first round has nothing to compare with, so every violation it finds is new.

SIGTERM and SIGINT stop the watch cleanly, between rounds or during one (a
census is read-only: stopping it midway leaves nothing behind); it then
returns the rounds it finished and the command line exits 0.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from domicile.errors import ConfigError, DomicileError
from domicile.fleet import Fleet
from domicile.model import DataMap

log = logging.getLogger("domicile.watch")

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_every(text: str) -> float:
    """Seconds in an interval like ``10m``, ``30s``, ``1h30m`` or ``90`` (seconds)."""
    value = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        seconds = float(value)
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)([smhd])", value)
        if not parts or "".join(n + u for n, u in parts) != value:
            raise ConfigError(
                f"'{text}' is not an interval", where="--every", hint="for example 30s, 10m, 1h"
            )
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise ConfigError(f"'{text}' is not a positive interval", where="--every")
    return seconds


@dataclass(frozen=True)
class WatchOptions:
    """How often to look, where to send alerts, when to stop."""

    every: float = 600.0  # seconds between round starts
    webhook: str | None = None
    rounds: int | None = None  # None: until SIGTERM/SIGINT (or *stop* is set)
    webhook_timeout: float = 10.0
    webhook_attempts: int = 4
    stop: threading.Event | None = None  # set by an embedding service to end the watch


@dataclass(frozen=True)
class Drift:
    """One cell whose violating (or conflicting) records grew since the previous round."""

    jurisdiction: str
    store: str
    dataset: str
    violating: int
    previous_violating: int
    conflicts: int
    previous_conflicts: int

    def to_json(self) -> dict[str, Any]:
        """The cell as the alert carries it."""
        return {
            "jurisdiction": self.jurisdiction,
            "store": self.store,
            "dataset": self.dataset,
            "violating": self.violating,
            "previous_violating": self.previous_violating,
            "conflicts": self.conflicts,
            "previous_conflicts": self.previous_conflicts,
        }


@dataclass(frozen=True)
class RoundResult:
    """What one round found (the last one is :func:`last_round`)."""

    round: int
    started_at: dt.datetime
    seconds: float
    violations: int
    conflicts: int
    new: tuple[Drift, ...] = ()
    alerted: bool | None = None  # None: nothing sent; True delivered; False failed
    alert_error: str | None = None
    stored: bool = False  # the census was saved for ``serve``
    error: str | None = None  # the census failed (a store down): the watch went on
    cells: dict[tuple[str, str, str], tuple[int, int]] = field(default_factory=dict, repr=False)

    def alert(self, m: DataMap) -> dict[str, Any]:
        """The JSON body POSTed to the webhook."""
        return {
            "event": "domicile.drift",
            "map": str(m.path),
            "round": self.round,
            "at": self.started_at.isoformat(timespec="seconds"),
            "violations": self.violations,
            "conflicts": self.conflicts,
            "new": [d.to_json() for d in self.new],
        }


_last_lock = threading.Lock()
_last: dict[str, RoundResult] = {}


def last_round(m: DataMap | None = None) -> RoundResult | None:
    """The last finished round of a watch in this process (of map *m*; any map when None)."""
    with _last_lock:
        if m is not None:
            return _last.get(str(m.path))
        return _last.get("")


def _record(m: DataMap, result: RoundResult) -> None:
    with _last_lock:
        _last[str(m.path)] = result
        _last[""] = result


class _Stopped(BaseException):
    """Raised by the signal handler to end a census in progress."""


def _store_census(m: DataMap, census: Any) -> bool:
    """Store the round's census (``domicile serve`` shows the latest)."""
    from domicile.census_store import save_census

    save_census(m, census)
    return True


def post_alert(url: str, body: dict[str, Any], timeout: float, attempts: int) -> None:
    """POST *body* as JSON to *url*, retrying connection failures and 5xx answers."""
    from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

    data = json.dumps(body).encode()

    def worth_retrying(exc: BaseException) -> bool:
        if isinstance(exc, urllib.error.HTTPError):
            return exc.code >= 500
        return isinstance(exc, urllib.error.URLError | OSError)

    @retry(
        retry=retry_if_exception(worth_retrying),
        stop=stop_after_attempt(max(1, attempts)),
        wait=wait_exponential(multiplier=0.5, max=8),
        reraise=True,
    )
    def send() -> None:
        request = urllib.request.Request(
            url,
            data=data,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "domicile-watch"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()

    send()


def _drift(
    cells: dict[tuple[str, str, str], tuple[int, int]],
    previous: dict[tuple[str, str, str], tuple[int, int]],
) -> tuple[Drift, ...]:
    out = []
    for key, (violating, conflicts) in sorted(cells.items()):
        pv, pc = previous.get(key, (0, 0))
        if violating > pv or conflicts > pc:
            out.append(Drift(*key, violating, pv, conflicts, pc))
    return tuple(out)


def _check_webhook(url: str | None) -> None:
    if url is not None and not re.match(r"https?://[^/\s]+", url):
        raise ConfigError(
            f"'{url}' is not an http:// or https:// URL", where="--webhook", hint="http://host/path"
        )


class _Signals:
    """SIGTERM/SIGINT set the stop event; during a census they also end it."""

    def __init__(self, stop: threading.Event):
        self.stop = stop
        self.in_census = False
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.stop.set()
        log.info("watch: %s received, stopping", signal.Signals(signum).name)
        if self.in_census:
            self.in_census = False
            raise _Stopped()


def _one_round(
    m: DataMap, number: int, previous: dict[tuple[str, str, str], tuple[int, int]], sig: _Signals
) -> RoundResult:
    from domicile.scan import scan

    started = dt.datetime.now(dt.UTC)
    t0 = time.monotonic()
    try:
        sig.in_census = True
        try:
            with Fleet(m) as fleet:
                census = scan(fleet)
        finally:
            sig.in_census = False
    except ConfigError:
        raise
    except DomicileError as exc:  # a store down: report the round, keep watching
        log.error("watch round %d failed: %s", number, str(exc).splitlines()[0])
        return RoundResult(number, started, time.monotonic() - t0, 0, 0, error=str(exc))
    stored = _store_census(m, census)
    cells = {k: (c.violating, c.conflicts) for k, c in census.cells.items()}
    return RoundResult(
        number,
        started,
        time.monotonic() - t0,
        census.violations,
        census.conflicts,
        new=_drift(cells, previous),
        stored=stored,
        cells=cells,
    )


def watch(
    m: DataMap,
    options: WatchOptions,
    on_round: Callable[[RoundResult], None] | None = None,
) -> list[RoundResult]:
    """Census every ``options.every`` seconds until stopped or ``options.rounds`` are done.

    Returns the finished rounds.  Each is also passed to *on_round* and kept
    for :func:`last_round`.
    """
    _check_webhook(options.webhook)
    stop = options.stop or threading.Event()
    done: list[RoundResult] = []
    previous: dict[tuple[str, str, str], tuple[int, int]] = {}
    next_start = time.monotonic()
    with _Signals(stop) as sig:
        while not stop.is_set():
            try:
                result = _one_round(m, len(done) + 1, previous, sig)
            except _Stopped:
                break
            if result.error is None:
                previous = result.cells
            if result.new:
                cells = ", ".join(
                    f"{d.jurisdiction}/{d.store}/{d.dataset} {d.previous_violating}->{d.violating}"
                    for d in result.new
                )
                log.warning("drift: new violating records in %s", cells)
                if options.webhook is not None:
                    result = _send(m, options, result)
            done.append(result)
            _record(m, result)
            if on_round is not None:
                on_round(result)
            if options.rounds is not None and len(done) >= options.rounds:
                break
            next_start += options.every
            stop.wait(max(0.0, next_start - time.monotonic()))
    return done


def _send(m: DataMap, options: WatchOptions, result: RoundResult) -> RoundResult:
    from dataclasses import replace

    assert options.webhook is not None
    try:
        post_alert(
            options.webhook, result.alert(m), options.webhook_timeout, options.webhook_attempts
        )
    except (urllib.error.URLError, OSError, ValueError) as exc:
        log.error("watch: the alert could not be delivered to the webhook: %s", exc)
        return replace(result, alerted=False, alert_error=str(exc))
    return replace(result, alerted=True)


__all__ = [
    "Drift",
    "RoundResult",
    "WatchOptions",
    "last_round",
    "parse_every",
    "post_alert",
    "watch",
]
