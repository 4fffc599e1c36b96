"""Running a plan: passes of copy → verify → delete, resumable, then a verification scan.

A pass copies and verifies every (dataset, source) in copy order — parents
before children — then deletes in the reverse order.  Another pass follows
while a quick census still finds violating records in scope (rows the
application changed or added meanwhile, rows deferred because their parent
was not home yet), up to ``max_passes``.  The run ends ``done`` only when the
final scan finds zero violating records for its jurisdictions.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import sqlalchemy as sa

from domicile.connectors.objects import ObjectStore
from domicile.errors import ConfigError, DomicileError, RunIncomplete
from domicile.fleet import Fleet, Location
from domicile.model import DataMap, Dataset
from domicile.plan import Plan, build_plan, order_datasets
from domicile.run.audit_events import RunAudit
from domicile.run.batch import Mover
from domicile.run.journal import BatchRecord, BatchRow, Journal
from domicile.run.objects_move import ObjectMover
from domicile.run.retry import Retry, Throttle
from domicile.scan import Census, Directory, scan
from domicile.schema import copy_tables, missing_columns

Progress = Callable[[str, str, int], None]  # (event, dataset, rows)
EventSink = Callable[[dict[str, Any]], None]


@dataclass
class RunOptions:
    """How a run behaves (the CLI's options)."""

    scope: Sequence[str] = ()
    workers: int = 1
    batch_size: int = 2000
    max_rows_per_second: float | None = None
    max_passes: int = 5
    retries: int = 5
    backoff: float = 0.5


@dataclass
class RunResult:
    """How a run ended."""

    run_id: str
    status: str  # done | incomplete
    plan: Plan
    before: Census
    after: Census
    counts: dict[str, int] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    seconds: float = 0.0

    checkpoint: str | None = None

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary stored in the journal (read by status and report)."""
        return {
            "status": self.status,
            "counts": self.counts,
            "reasons": self.reasons,
            "seconds": round(self.seconds, 2),
            "violations_before": self.before.violations_in(self.plan.scope),
            "violations_after": self.after.violations_in(self.plan.scope),
            "plan": self.plan.to_json(),
            "before": self.before.to_json(),
            "after": self.after.to_json(),
            "checkpoint": self.checkpoint,
        }


def map_digest(m: DataMap) -> str:
    """SHA-256 of the data map file as read (recorded with every run)."""
    return hashlib.sha256(m.path.read_bytes()).hexdigest()


class RunContext:
    """What the movers of one run share: map, fleet, journal, scope and helpers."""

    def __init__(
        self,
        m: DataMap,
        fleet: Fleet,
        journal: Journal,
        run_id: str,
        plan: Plan,
        options: RunOptions,
        events: EventSink | None,
        progress: Progress | None,
    ):
        self.map = m
        self.fleet = fleet
        self.journal = journal
        self.run_id = run_id
        self.plan = plan
        self.scope = plan.scope
        self.options = options
        self.today = dt.datetime.now(dt.UTC).date()
        self.directory = Directory(fleet)
        self.retry = Retry(options.retries, options.backoff)
        self.throttle = Throttle(options.max_rows_per_second)
        self._events = events
        self._progress = progress
        self._lock = threading.Lock()
        self._targets: dict[tuple[str, str], Location] = {}
        self._reference_tables = {
            d.table for d in m.datasets.values() if d.reference and d.table is not None
        }
        self.counts: dict[str, int] = {}
        personal = [d.name for d in m.datasets.values() if d.is_sql and not d.reference]
        edges: dict[str, set[str]] = {}
        table_to_dataset = {d.table: d.name for d in m.datasets.values() if d.table}
        for fk in fleet.foreign_keys():
            parent = table_to_dataset.get(fk.referred_table)
            if parent in personal:
                edges.setdefault(fk.dataset, set()).add(parent)
        # every personal dataset in foreign-key order: a resume may need one the
        # current plan no longer lists (its last batch was mid-delete)
        self.order = order_datasets(personal, edges)[0]

    def is_reference_table(self, table: str) -> bool:
        """True when *table* is a reference dataset's table."""
        return table in self._reference_tables

    def existing_target(self, ds: Dataset, store: str) -> Location | None:
        """The dataset's table at *store*, if it exists there."""
        assert ds.table is not None
        with self._lock:
            if (ds.name, store) in self._targets:
                return self._targets[(ds.name, store)]
        sql = self.fleet.sql[store]
        if not sql.has_table(ds.table):
            return None
        return self.target(ds, store, None)

    def target(self, ds: Dataset, store: str, source: Location | None) -> Location:
        """The dataset's table at home *store*, created from *source*'s definition if missing.

        A home table that lacks a column of the source is refused before any
        row is written: domicile never drops data to make rows fit.
        """
        assert ds.table is not None
        with self._lock:
            if (ds.name, store) in self._targets:
                return self._targets[(ds.name, store)]
            sql = self.fleet.sql[store]
            if source is None and not sql.has_table(ds.table):
                raise ConfigError(f"table {ds.table} is missing at {store}")
            if source is not None:
                # the dataset's table and the reference tables its rows point to
                refs = [
                    source.store.table(t)
                    for t in self._reference_closure(source.store, source.table)
                ]
                wanted = [*refs, source.table]
                if not all(sql.has_table(t.name) for t in wanted):
                    copy_tables(wanted, sql.engine)  # existing tables are left untouched
                    for t in wanted:
                        sql.forget(t.name)
                    for d in self.map.datasets.values():
                        if d.table in {t.name for t in wanted}:
                            self.fleet.refresh(d.name)
            table = sql.table(ds.table)
            if source is not None:
                missing = missing_columns(source.table, table)
                if missing:
                    raise ConfigError(
                        f"table {ds.table} at home store {store} lacks column(s) "
                        f"{', '.join(missing)} that {source.store.name} has",
                        where=f"dataset {ds.name}",
                        hint="add the columns at home (ALTER TABLE ... ADD COLUMN), then run "
                        "again; nothing was moved",
                    )
            loc = Location(sql, table, source.key if source else self._key(ds, table))
            self._targets[(ds.name, store)] = loc
            return loc

    def _key(self, ds: Dataset, table: sa.Table) -> tuple[str, ...]:
        return ds.key or tuple(c.name for c in table.primary_key.columns)

    def _reference_closure(self, store: Any, table: sa.Table) -> list[str]:
        out: list[str] = []
        todo = [table]
        while todo:
            t = todo.pop()
            for fk in t.foreign_key_constraints:
                name = fk.referred_table.name
                if self.is_reference_table(name) and name not in out:
                    out.append(name)
                    todo.append(store.table(name))
        return list(reversed(out))

    def emit(self, kind: str, batch: BatchRecord, **fields: Any) -> None:
        """An event for the audit log (digests and counts only, never personal data)."""
        if self._events is None:
            return
        event: dict[str, Any] = {
            "type": kind,
            "run": self.run_id,
            "batch": batch.id,
            "dataset": batch.dataset,
            "source": batch.source,
        }
        rows = fields.pop("rows", None)
        if rows is not None:
            event["row_digests"] = list(rows)  # the sink reduces them to a Merkle root
        event.update(fields)
        self._events(event)

    def progress(self, event: str, dataset: str, rows: int) -> None:
        """Report progress and add to the run's counts."""
        with self._lock:
            self.counts[event] = self.counts.get(event, 0) + rows
        if self._progress is not None:
            self._progress(event, dataset, rows)


def _preflight(ctx: RunContext) -> None:
    """Create or check every home table the plan needs before any row moves."""
    for dataset in ctx.plan.copy_order:
        ds = ctx.map.datasets[dataset]
        if not ds.is_sql:
            continue
        for move in ctx.plan.moves:
            if move.dataset == dataset:
                source = ctx.fleet.location(dataset, move.source)
                if source is not None:
                    ctx.target(ds, move.target, source)


def _copy_pair(ctx: RunContext, ds: Dataset, source: Location, pass_no: int) -> None:
    mover = Mover(ctx, ds, source)
    journal = ctx.journal
    batches = journal.batches(ctx.run_id, ds.name, source.store.name)
    current = [b for b in batches if b.pass_no == pass_no]
    for b in current:
        if b.state == "copying" or (b.state == "failed" and b.failed_in == "copy"):
            if b.state == "failed":
                journal.transition(b.id, "copying")
            _step(ctx, b, partial(mover.copy_batch, b.id, None), "copy")
            b = journal.batch(b.id)
        if b.state == "copied":
            _step(ctx, b, partial(mover.verify_batch, b.id), "copy")
    after = current[-1].hi if current else None
    seq = current[-1].seq + 1 if current else 1
    while True:
        page = ctx.retry.call(partial(mover.read, after, ctx.options.batch_size))
        if page.rows:
            rows = [
                BatchRow(c.key, c.digest, c.targets, None, c.home_digest, c.blob) for c in page.rows
            ]
            batch_id = journal.add_batch(
                ctx.run_id, ds.name, source.store.name, pass_no, seq, page.lo, page.hi or (), rows
            )
            seq += 1
            values = {c.key: c.values for c in page.rows}
            b = journal.batch(batch_id)
            _step(ctx, b, partial(mover.copy_batch, b.id, values), "copy")
            _step(ctx, b, partial(mover.verify_batch, b.id), "copy")
            ctx.progress("copied", ds.name, len(page.rows))
            ctx.throttle.wait(len(page.rows))
        if page.exhausted:
            break
        after = page.hi


def _delete_pair(ctx: RunContext, ds: Dataset, source: Location, pass_no: int) -> None:
    mover = Mover(ctx, ds, source)
    journal = ctx.journal
    for b in journal.batches(ctx.run_id, ds.name, source.store.name):
        if b.pass_no != pass_no:
            continue
        if b.state == "failed" and b.failed_in == "delete":
            journal.transition(b.id, "deleting")
            b = journal.batch(b.id)
        if b.state in ("verified", "deleting"):
            n = ctx.retry.call(partial(mover.delete_batch, b.id))
            ctx.progress("deleted", ds.name, n)


def _step(ctx: RunContext, batch: BatchRecord, fn: Callable[[], None], side: str) -> None:
    """Run a batch step with retries; on a final failure journal ``failed`` and re-raise."""
    try:
        ctx.retry.call(fn)
    except DomicileError as exc:
        current = ctx.journal.batch(batch.id)
        if current.state in ("copying", "copied", "deleting"):
            ctx.journal.transition(batch.id, "failed", error=str(exc), failed_in=side)
        raise


def _sources(ctx: RunContext, dataset: str) -> list[str]:
    """Sources to work on: the plan's, and any with unfinished batches in the journal."""
    stores = list(ctx.plan.sources(dataset))
    for b in ctx.journal.batches(ctx.run_id, dataset):
        if b.state != "done" and b.source not in stores:
            stores.append(b.source)
    return stores


def _pairs(ctx: RunContext, dataset: str) -> list[tuple[Dataset, Location]]:
    ds = ctx.map.datasets[dataset]
    out = []
    for store in _sources(ctx, dataset):
        loc = ctx.fleet.location(dataset, store)
        if loc is not None:
            out.append((ds, loc))
    return out


def _parallel(ctx: RunContext, fn: Callable[..., None], pairs: list[Any], pass_no: int) -> None:
    if ctx.options.workers <= 1 or len(pairs) <= 1:
        for ds, loc in pairs:
            fn(ctx, ds, loc, pass_no)
        return
    with ThreadPoolExecutor(max_workers=ctx.options.workers) as pool:
        futures = [pool.submit(fn, ctx, ds, loc, pass_no) for ds, loc in pairs]
        for f in futures:
            f.result()


def _object_pairs(ctx: RunContext) -> list[tuple[Dataset, ObjectStore]]:
    out = []
    for ds in ctx.map.datasets.values():
        if ds.objects is not None:
            for store in _sources(ctx, ds.name):
                if store in ctx.fleet.objects:
                    out.append((ds, ctx.fleet.objects[store]))
    return out


def _copy_objects(ctx: RunContext, ds: Dataset, source: ObjectStore, pass_no: int) -> None:
    mover = ObjectMover(ctx, ds, source)
    journal = ctx.journal
    current = [b for b in journal.batches(ctx.run_id, ds.name, source.name) if b.pass_no == pass_no]
    for b in current:
        if b.state == "failed" and b.failed_in == "copy":
            journal.transition(b.id, "copying")
            b = journal.batch(b.id)
        if b.state == "copying":
            _step(ctx, b, partial(mover.copy_batch, b.id), "copy")
            b = journal.batch(b.id)
        if b.state == "copied":
            _step(ctx, b, partial(mover.verify_batch, b.id), "copy")
    after = str(current[-1].hi[0]) if current else None
    seq = current[-1].seq + 1 if current else 1
    rows = ctx.retry.call(partial(mover.moving, after))
    size = ctx.options.batch_size
    for start in range(0, len(rows), size):
        chunk = rows[start : start + size]
        lo = (after,) if after is not None else None
        hi = chunk[-1].key
        batch_id = journal.add_batch(ctx.run_id, ds.name, source.name, pass_no, seq, lo, hi, chunk)
        seq += 1
        after = str(hi[0])
        b = journal.batch(batch_id)
        _step(ctx, b, partial(mover.copy_batch, b.id), "copy")
        _step(ctx, b, partial(mover.verify_batch, b.id), "copy")
        ctx.progress("copied", ds.name, len(chunk))


def _delete_objects(ctx: RunContext, ds: Dataset, source: ObjectStore, pass_no: int) -> None:
    mover = ObjectMover(ctx, ds, source)
    for b in ctx.journal.batches(ctx.run_id, ds.name, source.name):
        if b.pass_no == pass_no and b.state in ("verified", "deleting"):
            n = ctx.retry.call(partial(mover.delete_batch, b.id))
            ctx.progress("deleted", ds.name, n)


def run_pass(ctx: RunContext, pass_no: int) -> None:
    """One pass: copy and verify in copy order, then delete in delete order.

    Rows (and the objects they name) go first, parents before children; then
    the object datasets.  Deletes run the other way round.
    """
    for dataset in ctx.order:
        pairs = _pairs(ctx, dataset)
        if pairs:
            _parallel(ctx, _copy_pair, pairs, pass_no)
            ctx.journal.mark("dataset-done")
    objects = _object_pairs(ctx)
    _parallel(ctx, _copy_objects, objects, pass_no)
    _parallel(ctx, _delete_objects, objects, pass_no)
    for dataset in reversed(ctx.order):
        _parallel(ctx, _delete_pair, _pairs(ctx, dataset), pass_no)


def plan_for(fleet: Fleet, scope: Sequence[str] | None, batch_size: int) -> tuple[Census, Plan]:
    """A fresh census and the plan made from it."""
    census = scan(fleet)
    return census, build_plan(fleet.map, census, fleet.foreign_keys(), scope, batch_size)


def execute(
    m: DataMap,
    journal: Journal,
    options: RunOptions,
    resume: str | None = None,
    audit: RunAudit | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """Run (or resume) a move; returns how it ended (``done`` or ``incomplete``)."""
    started = time.monotonic()
    with Fleet(m, pool_size=max(5, options.workers + 2)) as fleet:
        if resume is not None:
            record = journal.run(resume)
            if record is None:
                known = ", ".join(r.id for r in journal.runs()) or "none"
                raise ConfigError(f"run '{resume}' is not in the journal (runs: {known})")
            if record.status == "done":
                raise ConfigError(f"run {resume} is already done", hint="start a new run")
            scope = list(record.scope)
        else:
            scope = list(options.scope)
        before, plan = plan_for(fleet, scope or None, options.batch_size)
        if plan.blockers:
            raise ConfigError(
                "the plan cannot run: " + "; ".join(plan.blockers),
                hint="nothing was moved; fix the map and run again",
            )
        ctx = RunContext(m, fleet, journal, "", plan, options, audit, progress)
        _preflight(ctx)  # refuse a missing column or create home tables before any run starts
        if resume is not None:
            run_id = resume
            journal.reopen(run_id)
        else:
            run_id = journal.new_run(plan.scope, map_digest(m), plan.to_json())
        ctx.run_id = run_id
        if audit is not None:
            audit(
                {
                    "type": "run.resumed" if resume else "run.started",
                    "run": run_id,
                    "map_digest": map_digest(m),
                    "scope": list(plan.scope),
                    "exceptions": [_exception_json(w) for w in m.exceptions],
                    "planned_records": plan.records,
                }
            )
        reasons: list[str] = []
        try:
            done_passes = [b.pass_no for b in journal.batches(run_id)]
            pass_no = max(done_passes) if done_passes else 1
            after = before
            while True:
                run_pass(ctx, pass_no)
                after = scan(fleet)
                left = after.violations_in(plan.scope)
                if left == 0 or pass_no >= options.max_passes:
                    break
                pass_no += 1
                # what is left (changed, added or deferred meanwhile) makes the next plan
                ctx.plan = build_plan(
                    m, after, fleet.foreign_keys(), plan.scope, options.batch_size
                )
        except DomicileError as exc:
            status = "incomplete"
            reasons.append(str(exc))
            after = _safe_scan(fleet, before)
            result = RunResult(
                run_id, status, plan, before, after, ctx.counts, reasons, time.monotonic() - started
            )
            _finish(journal, audit, result)
            raise RunIncomplete(
                f"run {run_id} stopped: {exc.message}",
                where=exc.where,
                hint=(exc.hint + "; " if exc.hint else "")
                + f"resume with: domicile run --resume {run_id}",
            ) from exc
        left = after.violations_in(plan.scope)
        if left:
            for c in after.cells.values():
                if c.jurisdiction in plan.scope and c.violating:
                    reasons.append(
                        f"{c.violating} {c.dataset} records of {c.jurisdiction} remain in {c.store}"
                    )
        pinned = sum(b.counts.get("pinned", 0) for b in journal.batches(run_id))
        if pinned:
            reasons.append(
                f"{pinned} records are home but could not be deleted at their source: rows that "
                "stay there (under an exception) reference them by foreign key"
            )
        status = "done" if left == 0 else "incomplete"
        result = RunResult(
            run_id, status, plan, before, after, ctx.counts, reasons, time.monotonic() - started
        )
        _finish(journal, audit, result)
        return result


def _safe_scan(fleet: Fleet, fallback: Census) -> Census:
    """A scan for the report of a failed run; the census before if a store is down."""
    try:
        return scan(fleet)
    except DomicileError:
        return fallback


def _exception_json(w: Any) -> dict[str, Any]:
    return {
        "dataset": w.dataset,
        "where": dict(w.where),
        "reason": w.reason,
        "approved_by": w.approved_by,
        "expires": w.expires.isoformat(),
    }


def _finish(journal: Journal, audit: RunAudit | None, result: RunResult) -> None:
    """Log the end, sign a checkpoint, and record the summary in the journal."""
    if audit is not None:
        audit(
            {
                "type": "run.finished",
                "run": result.run_id,
                "status": result.status,
                "violations_before": result.before.violations_in(result.plan.scope),
                "violations_after": result.after.violations_in(result.plan.scope),
                "counts": result.counts,
            }
        )
        result.checkpoint = audit.checkpoint()
    journal.finish_run(result.run_id, result.status, result.summary())
