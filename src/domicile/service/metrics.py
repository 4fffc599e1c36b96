"""``/metrics``: Prometheus text format, from prometheus_client, one registry per app.

- ``domicile_violating_records{jurisdiction,store}``, ``domicile_conflicting_records``,
  ``domicile_census_records`` and ``domicile_census_timestamp_seconds``: the
  last stored census (what ``scan`` or ``watch`` stored; never a live scan);
- ``domicile_run_batches{run,status,state}`` and ``domicile_run_progress_ratio{run}``:
  the newest runs of the journal (batches done / batches);
- ``domicile_access_decisions_total{decision,status}``: every access decision;
- ``domicile_http_request_duration_seconds{method,route,status}``: request
  latency by route template.

The census and run families are read from the state store at scrape time,
at most once every :data:`REFRESH_SECONDS`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

REFRESH_SECONDS = 5.0
RUNS_SHOWN = 5
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Snapshot = dict[str, Any]
"""``{"census": (json, taken_at) | None, "runs": [(run_id, status, {state: n})]}``."""


class _StateCollector(Collector):
    def __init__(self, read: Callable[[], Snapshot]):
        self.read = read
        self._lock = threading.Lock()
        self._at = 0.0
        self._snapshot: Snapshot = {"census": None, "runs": []}

    def _current(self) -> Snapshot:
        with self._lock:
            if time.monotonic() - self._at > REFRESH_SECONDS:
                self._snapshot = self.read()
                self._at = time.monotonic()
            return self._snapshot

    def collect(self) -> Iterable[Metric]:
        snap = self._current()
        violating = GaugeMetricFamily(
            "domicile_violating_records",
            "Records out of place in the last stored census, by jurisdiction and store.",
            labels=["jurisdiction", "store"],
        )
        conflicts = GaugeMetricFamily(
            "domicile_conflicting_records",
            "Multi-owner records no store may hold, in the last stored census.",
            labels=["jurisdiction", "store"],
        )
        records = GaugeMetricFamily(
            "domicile_census_records",
            "Records counted by the last stored census, by jurisdiction and store.",
            labels=["jurisdiction", "store"],
        )
        taken = GaugeMetricFamily(
            "domicile_census_timestamp_seconds", "When the last stored census was taken."
        )
        if snap["census"] is not None:
            census, when = snap["census"]
            sums: dict[tuple[str, str], list[int]] = {}
            for c in census.get("cells", []):
                total = sums.setdefault((c["jurisdiction"], c["store"]), [0, 0, 0])
                total[0] += int(c.get("violating", 0))
                total[1] += int(c.get("conflicts", 0))
                total[2] += int(c.get("records", 0))
            for (j, s), (v, k, n) in sorted(sums.items()):
                violating.add_metric([j, s], v)
                conflicts.add_metric([j, s], k)
                records.add_metric([j, s], n)
            taken.add_metric([], when.timestamp())
        batches = GaugeMetricFamily(
            "domicile_run_batches",
            "Batches of the newest runs by state.",
            labels=["run", "status", "state"],
        )
        progress = GaugeMetricFamily(
            "domicile_run_progress_ratio", "Batches done / batches, newest runs.", labels=["run"]
        )
        for run_id, status, states in snap["runs"]:
            for state, n in sorted(states.items()):
                batches.add_metric([run_id, status, state], n)
            total = sum(states.values())
            progress.add_metric([run_id], (states.get("done", 0) / total) if total else 0.0)
        yield from (violating, conflicts, records, taken, batches, progress)
        yield from _watch_families()


def _watch_families() -> Iterable[Metric]:
    """The last round of a drift watch running in this process (``serve --watch``)."""
    from domicile.watch import last_round

    last = last_round()
    if last is None:
        return
    families = {
        "domicile_watch_round": ("The number of the watch's last finished round.", last.round),
        "domicile_watch_round_timestamp_seconds": (
            "When the watch's last round started.",
            last.started_at.timestamp(),
        ),
        "domicile_watch_round_seconds": ("How long the last round's census took.", last.seconds),
        "domicile_watch_violating_records": (
            "Violating records the last watch round found.",
            last.violations,
        ),
        "domicile_watch_new_violation_cells": (
            "Cells (jurisdiction, store, dataset) whose violations grew in the last round.",
            len(last.new),
        ),
        "domicile_watch_round_failed": (
            "1 when the last round's census failed (a store down), else 0.",
            1 if last.error else 0,
        ),
    }
    for name, (text, value) in families.items():
        family = GaugeMetricFamily(name, text)
        family.add_metric([], float(value))
        yield family


class Metrics:
    """The service's registry: decisions, request latency, and the state store's families."""

    def __init__(self, read_state: Callable[[], Snapshot]):
        self.registry = CollectorRegistry(auto_describe=True)
        self.decisions = Counter(
            "domicile_access_decisions",
            "Access decisions by outcome.",
            ["decision", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "domicile_http_request_duration_seconds",
            "Request latency by route template.",
            ["method", "route", "status"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
        )
        self.registry.register(_StateCollector(read_state))

    def decision(self, allowed: bool, status: int) -> None:
        """Count one access decision."""
        self.decisions.labels("allow" if allowed else "deny", str(status)).inc()

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Record one answer's latency."""
        self.latency.labels(method, route, str(status)).observe(seconds)

    def render(self) -> bytes:
        """The text exposition."""
        return generate_latest(self.registry)
