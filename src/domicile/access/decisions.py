"""Every access decision in the audit log, committed before the answer goes out.

An entry (``type: access.decision``) holds the principal's name and role, the
decision (``allow`` / ``deny``) with the HTTP status, the policy set's
SHA-256, the subject as a keyed hash (HMAC under the deployment key, as for
record keys elsewhere), the dataset, the ticket named (if any) and the
reason.  No subject id, country or record ever enters the log.

:meth:`DecisionLog.record` returns only once the entry is committed.
Concurrent requests share commits: one writer thread takes every entry
queued while the previous commit ran and appends them in one transaction
(:meth:`~domicile.audit.log.AuditLog.append_many`), so a burst of requests
costs a few commits, not one each, and the log stays one verifiable chain.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from domicile.errors import StateStoreError

EVENT_TYPE = "access.decision"
MAX_GROUP = 500
COMMIT_TIMEOUT = 30.0


@dataclass
class _Pending:
    event: Mapping[str, Any]
    done: threading.Event = field(default_factory=threading.Event)
    index: int | None = None
    error: BaseException | None = None


def decision_event(
    *,
    principal: str | None,
    role: str | None,
    allowed: bool,
    status: int,
    policy_set: str,
    subject_hash: str | None,
    dataset: str | None,
    reason: str,
    endpoint: str,
    ticket: str | None = None,
    policies: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The audit entry of one decision (digests and names only)."""
    return {
        "type": EVENT_TYPE,
        "principal": principal,
        "role": role,
        "decision": "allow" if allowed else "deny",
        "status": status,
        "policy_set": policy_set,
        "subject": subject_hash,
        "dataset": dataset,
        "ticket": ticket,
        "policies": list(policies),
        "reason": reason,
        "endpoint": endpoint,
    }


class DecisionLog:
    """Appends decisions to an :class:`~domicile.audit.log.AuditLog`, grouping commits."""

    def __init__(self, log: Any):
        self.log = log
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._writer, name="domicile-decisions", daemon=True)
        self._thread.start()

    def record(self, event: Mapping[str, Any]) -> int:
        """Append *event*; return its index once committed (StateStoreError if it was not)."""
        pending = _Pending(event)
        self._queue.put(pending)
        if not pending.done.wait(COMMIT_TIMEOUT):
            raise StateStoreError("the audit log did not commit the decision in time")
        if pending.error is not None:
            raise StateStoreError(
                f"the decision could not be written to the audit log: {pending.error}",
                where="the state store",
            ) from pending.error
        assert pending.index is not None
        return pending.index

    def close(self) -> None:
        """Stop the writer after the entries already queued."""
        self._queue.put(None)
        self._thread.join(timeout=COMMIT_TIMEOUT)

    def _writer(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            stop = False
            while len(group) < MAX_GROUP:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                group.append(more)
            try:
                indices = self.log.append_many([p.event for p in group])
                for p, i in zip(group, indices, strict=True):
                    p.index = i
            except Exception as exc:  # every waiter learns it; none is left hanging
                for p in group:
                    p.error = exc
            for p in group:
                p.done.set()
            if stop:
                return
