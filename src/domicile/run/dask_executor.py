"""The Dask executor: the parts of a pass as tasks on a cluster's workers.

The coordinator (this process) keeps the run lease and the audit log: the
workers send their audit events and progress through a Dask queue, which a
thread here drains into the audit log and the progress bars while the tasks
run.  A worker lost mid-part is replaced by Dask, which runs the task again
elsewhere; the new attempt claims the part (a new fencing token, so the lost
one can write nothing more) and resumes it from the journal like any resume.
A stop asked for here (SIGINT/SIGTERM) is passed to the workers through a
Dask event, honoured between batches.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from domicile.errors import ConfigError, DomicileError, Interrupted, Transient
from domicile.run.audit_events import deployment_key
from domicile.run.worker import PartTask, per_worker, run_part

if TYPE_CHECKING:
    from domicile.model import DataMap
    from domicile.run.context import RunContext
    from domicile.run.executors import PartFn, Work

log = logging.getLogger(__name__)

POLL = 0.2  # seconds between looks at the event queue and the stop flag

WORKER_CONFIG = {
    # the statistical profiler samples every thread's stack every 10 ms, taking
    # the GIL from the part's thread each time; the GIL monitor polls every 1 ms
    "distributed.worker.profile.enabled": False,
    "distributed.admin.system-monitor.gil.enabled": False,
}
"""Dask settings for the workers of a LocalCluster this executor starts (a cluster
you run yourself takes them from its own configuration: see the README)."""


class WorkerLost(DomicileError, Transient):
    """Dask gave up on a part after its workers died too often."""

    exit_code = 4


class DaskExecutor:
    """Parts run as Dask tasks, on a LocalCluster started here or an existing scheduler."""

    fenced = True

    def __init__(self, m: DataMap, address: str | None, workers: int, **cluster: Any):
        from distributed import Client, LocalCluster

        self.map = m
        self.address = address
        self._cluster = None
        if address is None:
            import dask.config

            with dask.config.set(WORKER_CONFIG):  # handed to the worker processes it starts
                self._cluster = LocalCluster(
                    n_workers=max(1, workers),
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                    silence_logs=logging.ERROR,
                    **cluster,
                )
            self.client = Client(self._cluster)
        else:
            refuse_local_state(m, address)
            try:
                self.client = Client(address, timeout="10s")
                self.client.wait_for_workers(1, timeout=30)
            except (OSError, TimeoutError) as exc:
                raise ConfigError(
                    f"cannot use the Dask scheduler at {address}: {exc}",
                    where="--executor",
                    hint="start the scheduler and at least one worker (dask scheduler; "
                    "dask worker ADDRESS), or use --executor local",
                ) from exc
        self.workers = max(1, len(self.client.scheduler_info()["workers"]))
        # the workers import the move's modules while this process plans and
        # counts, not in their first part (nothing of the map or its secrets)
        self.client.run(_warm_up, wait=False)
        self._map_sha = hashlib.sha256(m.path.read_bytes()).hexdigest()
        self._key_sha = hashlib.sha256(deployment_key(m)).hexdigest()
        self._stop = f"domicile-stop-{uuid.uuid4().hex}"
        self.worker_peaks_mb: dict[str, float] = {}
        log.info(
            "dask executor: %s, %d workers",
            address or "a LocalCluster on this machine",
            self.workers,
        )

    def run(self, ctx: RunContext, phase: str, fn: PartFn, work: Sequence[Work]) -> None:
        """Submit one task per part, relay events and progress, raise the first failure."""
        from distributed import Event, Queue

        if not work:
            return
        holder = ctx.lease.holder.holder_id if ctx.lease is not None else None  # type: ignore[attr-defined]
        queue_name = f"domicile-events-{uuid.uuid4().hex}"
        queue = Queue(queue_name, client=self.client)
        options = per_worker(ctx.options, self.workers)
        path = str(self.map.path.resolve())
        tasks = [
            PartTask(
                path,
                self._map_sha,
                self._key_sha,
                ctx.run_id,
                ctx.plan,
                options,
                phase,
                part,
                holder or "",
                queue_name,
                self._stop,
            )
            for _, _, part in work
        ]
        futures = self.client.map(run_part, tasks, pure=False)
        stop = Event(self._stop, client=self.client)
        stopping = False
        pending = list(futures)
        while pending:
            time.sleep(POLL)
            pending = [f for f in pending if not f.done()]
            self._relay(ctx, queue)
            if not stopping and (ctx.stop.is_set or _lease_lost(ctx)):
                stop.set()  # the workers finish their current step and stop
                stopping = True
        self._relay(ctx, queue)
        failures = [f for f in futures if f.status == "error"]
        if failures:
            raise _translate(failures[0].exception(), len(failures), len(futures))
        returned = [e for e in (f.result() for f in futures) if e is not None]
        ctx.stop.check()  # a stop asked for here: the workers' Interrupted is its echo
        if returned:
            raise returned[0]
        ctx.stop.check()
        ctx.check_lease()

    @staticmethod
    def _relay(ctx: RunContext, queue: Any) -> None:
        """Hand the workers' audit events and progress to the coordinator's sinks.

        The audit events of one look at the queue go to the log together, in
        one transaction where the sink can take several (``append_all``), in
        the order the workers queued them.
        """
        sink = ctx._events
        many = getattr(sink, "append_all", None)
        while True:
            items = queue.get(batch=True)
            if not items:
                return
            audit = [payload for kind, payload in items if kind == "audit"]
            if audit and sink is not None:
                if many is not None:
                    many(audit)
                else:
                    for event in audit:
                        sink(event)
            for kind, payload in items:
                if kind == "progress":
                    ctx.progress(*payload)

    def close(self) -> None:
        """Close the client (and the LocalCluster this executor started).

        First the workers' peak resident memory is read and logged (and kept
        in :attr:`worker_peaks_mb`): what each worker needed for this run.
        """
        try:
            self.worker_peaks_mb = {
                address: round(kib / 1024, 1)
                for address, kib in self.client.run(_peak_rss_kib).items()
            }
            log.info("dask workers' peak resident memory (MB): %s", self.worker_peaks_mb)
        except Exception as exc:  # a report only: closing goes on
            log.info("could not read the workers' peak memory: %s", exc)
        self.client.close()
        if self._cluster is not None:
            self._cluster.close()


async def _warm_up() -> None:
    """Import what a part runs (on each worker, once, while the coordinator plans).

    A coroutine, as Dask runs a function without waiting only on the worker's
    event loop; the import holds that loop for about a second, before any part.
    """
    import domicile.run.object_parts
    import domicile.run.passes
    import domicile.run.worker  # noqa: F401


def _peak_rss_kib() -> int:
    """This process's peak resident memory (runs on each worker)."""
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def refuse_local_state(m: DataMap, address: str) -> None:
    """Refuse a state store in a file with a remote scheduler: its workers cannot reach it.

    The delete step journals what it deletes inside a state-store transaction,
    so every worker must open the state store itself.
    """
    import sqlalchemy as sa

    from domicile.connectors.dialects import dialect_for

    url = sa.engine.make_url(m.state)
    if dialect_for(url.get_backend_name()).file_based:
        raise ConfigError(
            f"the state store {url.render_as_string(hide_password=True)} is a local file: "
            f"the workers of the Dask scheduler at {address} cannot write it",
            where="state: in the data map",
            hint="point state: at a PostgreSQL database every worker reaches "
            "(state: postgresql+psycopg://...), or use --executor dask on this machine",
        )


def _lease_lost(ctx: RunContext) -> bool:
    try:
        ctx.check_lease()
    except DomicileError:
        return True
    return False


def _translate(exc: BaseException | None, failed: int, total: int) -> BaseException:
    """A worker's failure as the coordinator raises it (a lost worker: resumable)."""
    from distributed import KilledWorker

    if isinstance(exc, KilledWorker):
        return WorkerLost(
            f"{failed} of {total} parts failed: Dask lost the workers running them too often "
            f"({exc})",
            hint="check the workers' memory and logs; the journal holds every step, resume the run",
        )
    if isinstance(exc, DomicileError):
        return exc
    if isinstance(exc, Interrupted):
        return exc
    return WorkerLost(
        f"{failed} of {total} parts failed on a worker: {type(exc).__name__}: {exc}",
        hint="the journal holds every step; fix the cause and resume the run",
    )
