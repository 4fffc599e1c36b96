"""What one ``serve`` process holds: the gateway, the journal, and cached reads of the state.

Reads that cost more than a query — verifying the audit log, the write
guard's status in every store — are cached (the log's verification until it
grows, then for :data:`VERIFY_SECONDS`; the guard's for :data:`GUARD_SECONDS`),
so a dashboard refresh never
rehashes the whole log each time.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from domicile.access.decisions import EVENT_TYPE
from domicile.access.gateway import Gateway
from domicile.audit.log import entries_table
from domicile.census_store import latest_census
from domicile.errors import DomicileError
from domicile.model import DataMap
from domicile.run.journal import Journal, batches
from domicile.service.metrics import Metrics, Snapshot

GUARD_SECONDS = 30.0
VERIFY_SECONDS = 30.0
"""A log that grew is verified again at most this often (a full verification rehashes it)."""
DENIALS_SCANNED = 2000


@dataclass(frozen=True)
class ServeOptions:
    """How ``serve`` was started (what the app needs to know of it)."""

    metrics_token: str | None = None


@dataclass(frozen=True)
class CheckpointStatus:
    """The latest checkpoint and whether the log verifies against the deployment's key."""

    note: str | None
    tree_size: int
    entries: int
    verified: bool | None  # None: could not be checked (no key, no log)
    message: str


class Service:
    """The objects of one ``serve`` process."""

    def __init__(self, gateway: Gateway, options: ServeOptions):
        self.gateway = gateway
        self.map: DataMap = gateway.map
        self.options = options
        self.journal = Journal(gateway.state)
        self.metrics = Metrics(self.snapshot)
        self._lock = threading.Lock()
        self._verified: tuple[tuple[int, int], float, CheckpointStatus] | None = None
        self._guard: tuple[float, dict[str, Any]] | None = None

    def close(self) -> None:
        """Close the gateway (flushing decisions) and the stores."""
        self.gateway.close()

    # -- state reads ---------------------------------------------------------

    def census(self) -> tuple[dict[str, Any], dt.datetime] | None:
        """The last stored census."""
        return latest_census(self.map, engine=self.gateway.state)

    def runs(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest runs, newest first, with batch counts by state."""
        out = []
        runs = list(reversed(self.journal.runs()[-limit:]))
        by_run: dict[str, dict[str, int]] = {r.id: {} for r in runs}
        if runs:  # one grouped count: the batches' rows and digests stay unread
            q = (
                sa.select(batches.c.run_id, batches.c.state, sa.func.count())
                .where(batches.c.run_id.in_(list(by_run)))
                .group_by(batches.c.run_id, batches.c.state)
            )
            with self.gateway.state.connect() as conn:
                for run_id, state, n in conn.execute(q):
                    by_run[run_id][state] = int(n)
        for r in runs:
            states = by_run[r.id]
            total = sum(states.values())
            out.append(
                {
                    "run": r.id,
                    "status": r.status,
                    "scope": list(r.scope),
                    "started": r.started_at.isoformat(timespec="seconds") if r.started_at else None,
                    "finished": r.finished_at.isoformat(timespec="seconds")
                    if r.finished_at
                    else None,
                    "batches": states,
                    "progress": round(states.get("done", 0) / total, 4) if total else None,
                }
            )
        return out

    def snapshot(self) -> Snapshot:
        """What ``/metrics`` reads from the state store."""
        runs = [(r["run"], r["status"], r["batches"]) for r in self.runs(limit=5)]
        return {"census": self.census(), "runs": runs}

    def checkpoint(self) -> CheckpointStatus:
        """The latest checkpoint, and whether the whole log verifies.

        Cached: verified again when the log has grown, at most every
        :data:`VERIFY_SECONDS`.
        """
        from domicile import keys as keystore
        from domicile.audit.verify import verify_log
        from domicile.run.audit_events import keys_dir

        log = self.gateway.audit
        size = log.size()
        checkpoints = log.checkpoints()
        key = (size, len(checkpoints))
        with self._lock:
            if self._verified is not None:
                seen, at, cached = self._verified
                if seen == key or time.monotonic() - at < VERIFY_SECONDS:
                    return cached
        note = checkpoints[-1].note if checkpoints else None
        note_text = note if isinstance(note, str) else None
        tree_size = checkpoints[-1].tree_size if checkpoints else 0
        pub = keys_dir(self.map) / keystore.PUBLIC_KEY_FILE
        if not checkpoints:
            status = CheckpointStatus(None, 0, size, None, "no signed checkpoint yet")
        elif not pub.exists():
            status = CheckpointStatus(note_text, tree_size, size, None, f"no public key at {pub}")
        else:
            try:
                keys = [v.key_text() for v in keystore.read_verifier_keys(pub)]
                result = verify_log(log.engine, keys)
                status = CheckpointStatus(
                    note_text,
                    tree_size,
                    size,
                    True,
                    f"{result.entries} entries and {result.checkpoints} signed checkpoints "
                    f"check out; {result.uncovered} entries came after the latest checkpoint",
                )
            except DomicileError as exc:
                status = CheckpointStatus(note_text, tree_size, size, False, exc.message)
        with self._lock:
            self._verified = (key, time.monotonic(), status)
        return status

    def recent_denials(self, limit: int = 10) -> list[dict[str, Any]]:
        """The newest access denials in the audit log (principal, status, reason; no ids)."""
        engine = self.gateway.state
        out: list[dict[str, Any]] = []
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(entries_table.c.idx, entries_table.c.entry)
                .order_by(entries_table.c.idx.desc())
                .limit(DENIALS_SCANNED)
            ).all()
        for idx, entry in rows:
            try:
                event = json.loads(bytes(entry))
            except ValueError:
                continue
            if event.get("type") == EVENT_TYPE and event.get("decision") == "deny":
                out.append({"index": int(idx), **event})
                if len(out) == limit:
                    break
        return out

    def guard(self) -> dict[str, Any]:
        """The write guard in every store, or why it cannot be shown (cached)."""
        with self._lock:
            if self._guard is not None and time.monotonic() - self._guard[0] < GUARD_SECONDS:
                return self._guard[1]
        try:
            from domicile import api

            stores = [g.to_json() for g in api.guard_status(self.map)]
            result: dict[str, Any] = {"available": True, "stores": stores, "message": ""}
        except ImportError:
            result = {"available": False, "stores": [], "message": "not installed"}
        except DomicileError as exc:
            result = {"available": False, "stores": [], "message": exc.message}
        with self._lock:
            self._guard = (time.monotonic(), result)
        return result
