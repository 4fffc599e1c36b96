"""What a Dask worker runs: one part of a pass, against its own connections.

A part is a key range of a table (its rows and the objects they name), or an
object pair: an object dataset at one object store, or the objects abroad
of one dataset's rows already home at one object store
(:mod:`domicile.run.object_parts`).

A task carries no secret: the map's path and digest, the run, the plan, the
part and the names of the run's event queue and stop flag.  The worker opens
the map itself (``${VAR}`` secrets expand from *its* environment), checks
that it is the coordinator's map and deployment key (by digest), claims the
part — raising its fencing token, :mod:`domicile.run.fence` — and drives the
part's batches through the same protocol as a local run.  Audit events and
progress go back to the coordinator through a Dask queue; the coordinator
appends them to the audit log.  Before any delete the worker checks that the
coordinator still holds the run lease.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from domicile import keys as keystore
from domicile.errors import ConfigError, DomicileError, Interrupted
from domicile.fleet import Fleet
from domicile.model import DataMap
from domicile.plan import Plan
from domicile.run.audit_events import keys_dir
from domicile.run.context import RunContext, RunOptions
from domicile.run.fence import claim
from domicile.run.heap import tune_for_moves
from domicile.run.journal import Journal
from domicile.run.lease import LeaseLost, lease_table
from domicile.run.parts import Part
from domicile.run.stop import StopFlag


@dataclass(frozen=True)
class PartTask:
    """One part to copy or delete on a worker (picklable; no secrets)."""

    map_path: str
    map_sha256: str
    key_sha256: str  # the deployment key's digest: the worker must hold the same key
    run_id: str
    plan: Plan
    options: RunOptions
    phase: str  # copy | delete (rows), or an object phase (domicile.run.object_parts.STEPS)
    part: Part
    holder_id: str  # the coordinator's lease
    queue: str  # Dask queue of (kind, payload) for the coordinator
    stop: str  # Dask event: set when the coordinator asks the run to stop


@dataclass
class _Env:
    map: DataMap
    fleet: Fleet
    state: sa.Engine
    key: bytes

    def close(self) -> None:
        self.fleet.close()
        self.state.dispose()


_lock = threading.Lock()
_envs: dict[tuple[str, str, str], _Env] = {}


def _env(task: PartTask) -> _Env:
    """This process's map, fleet and state store for the task's run (opened once per run)."""
    from domicile.datamap import load_map
    from domicile.state import state_engine

    wanted = (task.map_path, task.map_sha256, task.run_id)
    with _lock:
        env = _envs.get(wanted)
        if env is not None:
            return env
        for old in _envs.values():  # another run's: its tables may have changed since
            old.close()
        _envs.clear()
        path = Path(task.map_path)
        where = f"worker pid {os.getpid()}"
        if not path.is_file():
            raise ConfigError(
                f"the data map {path} is not on this worker",
                where=where,
                hint="give every worker the map at the same path (a shared folder or a copy)",
            )
        if hashlib.sha256(path.read_bytes()).hexdigest() != task.map_sha256:
            raise ConfigError(
                f"the data map {path} on this worker differs from the coordinator's",
                where=where,
                hint="copy the coordinator's map to every worker",
            )
        m = load_map(path)
        key = keystore.load_hmac_key(keys_dir(m))
        if hashlib.sha256(key).hexdigest() != task.key_sha256:
            raise ConfigError(
                "this worker's deployment key differs from the coordinator's",
                where=where,
                hint=f"give the workers the coordinator's key (${keystore.HMAC_ENV} or "
                f"{keystore.HMAC_KEY_FILE} beside the map)",
            )
        env = _Env(m, Fleet(m), state_engine(m.state, m.base_dir), key)
        _envs[wanted] = env
    tune_for_moves()  # once per worker process, as the coordinator does for itself
    return env


class _LeaseView:
    """The coordinator's lease as the state store's lease row shows it."""

    def __init__(self, engine: sa.Engine, holder_id: str):
        self.engine = engine
        self.holder_id = holder_id

    def check(self) -> None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(lease_table.c.holder).where(lease_table.c.name == "run")
            ).first()
        if row is None or row.holder != self.holder_id:
            raise LeaseLost(
                "the run's coordinator no longer holds the run lease",
                hint="nothing more is deleted by this worker; resume the run",
            )


class _StopView(StopFlag):
    """The coordinator's stop flag (a Dask event), checked between steps."""

    def __init__(self, name: str):
        super().__init__()
        from distributed import Event

        self._remote = Event(name)

    @property
    def is_set(self) -> bool:
        return bool(self._remote.is_set())

    def check(self) -> None:
        if self._remote.is_set():
            raise Interrupted(
                "stopped by the coordinator after finishing the current step",
                hint="nothing is half-done; resume when ready",
            )


def run_part(task: PartTask) -> DomicileError | None:
    """Copy or delete one part (a Dask task); a domicile error is returned, not raised.

    Returned, so that Dask does not log a stop or a user's error as a crashed
    task with a traceback on the worker: the coordinator raises it.
    """
    try:
        _run_part(task)
    except DomicileError as exc:
        return exc
    return None


def _run_part(task: PartTask) -> None:
    from distributed import Queue, get_worker

    from domicile.run.audit_events import rows_root

    env = _env(task)
    try:
        me = f"{get_worker().address} pid {os.getpid()}"
    except ValueError:  # not on a worker (called directly)
        me = f"pid {os.getpid()}"
    assert task.part.id is not None  # parts run on workers are journalled
    fence = claim(env.state, task.part.id, me)
    journal = Journal(env.state, env.key, fence=fence, prepare=False)
    queue = Queue(task.queue)

    def events(event: dict[str, Any]) -> None:
        # reduced here as the coordinator's sink would: the root, not every row's
        # digest, goes through the scheduler
        rows = event.pop("row_digests", None)
        if rows is not None:
            event["rows_root"] = rows_root(rows)
        queue.put(("audit", event))

    def progress(event: str, dataset: str, rows: int) -> None:
        queue.put(("progress", (event, dataset, rows)))

    options = task.options
    ctx = RunContext(env.map, env.fleet, journal, task.run_id, task.plan, options, events, progress)
    ctx.stop = _StopView(task.stop)
    ctx.lease = _LeaseView(env.state, task.holder_id)
    _run_step(ctx, env, task)


def _run_step(ctx: RunContext, env: _Env, task: PartTask) -> None:
    """The step the task's phase names, on the part's own place: a table or an object store."""
    from domicile.run.object_parts import STEPS
    from domicile.run.passes import copy_part, delete_part

    part = task.part
    ds = env.map.datasets[part.dataset]
    if task.phase in STEPS:
        store = env.fleet.objects.get(part.source)
        if store is None:
            raise ConfigError(f"object store {part.source} is not in the map this worker reads")
        STEPS[task.phase](ctx, ds, store, part)
        return
    if task.phase not in ("copy", "delete"):
        raise ConfigError(f"unknown phase {task.phase!r} of part {part.describe()}")
    loc = env.fleet.location(ds.name, part.source)
    if loc is None:
        raise ConfigError(f"dataset {ds.name} is not in store {part.source} as this worker sees it")
    (copy_part if task.phase == "copy" else delete_part)(ctx, ds, loc, part)


def per_worker(options: RunOptions, workers: int) -> RunOptions:
    """*options* for one of *workers* workers: the rate cap shared among them."""
    rate = options.max_rows_per_second
    return replace(options, max_rows_per_second=rate / workers if rate else None)
