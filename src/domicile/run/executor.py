"""Running a plan: passes of copy → verify → delete, resumable, then a verification scan.

A pass copies and verifies every (dataset, source) in copy order — parents
before children — then deletes in the reverse order.  Another pass follows
while a quick census still finds violating records in scope (rows the
application changed or added meanwhile, rows deferred because their parent
was not home yet), up to ``max_passes``.  The run ends ``done`` only when the
final scan finds zero violating records for its jurisdictions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from typing import Any

from domicile.errors import AuditIntegrityError, ConfigError, DomicileError, RunIncomplete
from domicile.fleet import Fleet, path_notes
from domicile.model import DataMap
from domicile.plan import Plan, build_plan
from domicile.run.audit_events import RunAudit, deployment_key
from domicile.run.batch import Mover
from domicile.run.context import Progress, RunContext, RunOptions, preflight
from domicile.run.depends import changed, depends_of
from domicile.run.executors import make_executor
from domicile.run.heap import tune_for_moves
from domicile.run.home_blobs import HomeBlobMover
from domicile.run.home_schema import advance_home, check_homes, home_needs
from domicile.run.journal import Journal, RunRecord
from domicile.run.lease import acquire as acquire_lease
from domicile.run.passes import run_pass
from domicile.run.stop import StopFlag
from domicile.scan import Census, scan

log = logging.getLogger(__name__)

__all__ = ["Progress", "RunOptions", "RunResult", "abandon", "execute", "map_digest", "plan_for"]


@dataclass
class RunResult:
    """How a run ended."""

    run_id: str
    status: str  # done | incomplete | failed
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


def plan_for(fleet: Fleet, scope: Sequence[str] | None, batch_size: int) -> tuple[Census, Plan]:
    """A fresh census and the plan made from it."""
    census = scan(fleet)
    plan = build_plan(fleet.map, census, fleet.foreign_keys(), scope, batch_size)
    homes = check_homes(fleet, plan.moves, plan.copy_order)
    notes = path_notes(fleet)
    plan = dataclasses.replace(
        plan,
        blockers=tuple(dict.fromkeys([*plan.blockers, *homes.blockers])),
        notes=(*plan.notes, *notes),
        ddl=tuple((store, tuple(stmts)) for store, stmts in homes.ddl.items()),
    )
    return census, plan


def execute(
    m: DataMap,
    journal: Journal,
    options: RunOptions,
    resume: str | None = None,
    audit: RunAudit | None = None,
    progress: Progress | None = None,
    confirm_resume: Callable[[RunRecord], bool] | None = None,
) -> RunResult:
    """Run (or resume) a move; returns how it ended (``done`` or ``incomplete``).

    Owns the rules around a run: the lease (one run per state store), the
    choice between a new run and an unfinished one (*confirm_resume* is asked,
    when given, whether to resume it; otherwise a new run is refused), the
    store identities, the keys' uniqueness, and the map's dependencies on a
    resume.  Each is checked before anything is written anywhere.
    """
    started = time.monotonic()
    tune_for_moves()
    journal.set_key(deployment_key(m))
    with (
        acquire_lease(journal.engine, run_id=resume, break_lease=options.break_lease) as lease,
        Fleet(m, pool_size=max(5, 2 * options.workers + 2)) as fleet,
        StopFlag() as stop,
        ExitStack() as stack,
    ):
        for earlier in journal.runs():  # a damaged journal refuses here (exit 5), not mid-run
            journal.batches(earlier.id)
        record = _run_to_resume(journal, resume, confirm_resume)
        if record is not None:
            resume = record.id
            lease.set_run(resume)
            _check_depends(m, record)
            scope = list(record.scope)
        else:
            scope = list(options.scope)
        fleet.validate()
        fleet.check_unique_keys()
        fleet.check_identities(write_markers=True)
        before, plan = plan_for(fleet, scope or None, options.batch_size)
        if plan.blockers:
            raise ConfigError(
                "the plan cannot run: " + "; ".join(plan.blockers),
                hint="nothing was moved; fix the map and run again",
            )
        ctx = RunContext(m, fleet, journal, "", plan, options, audit, progress)
        ctx.stop = stop
        ctx.lease = lease
        preflight(ctx)  # refuse a missing column or create home tables before any run starts
        ctx.executor = stack.enter_context(
            closing(make_executor(options.executor, options.workers, m))
        )
        if resume is not None:
            run_id = resume
            journal.reopen(run_id)
        else:
            run_id = journal.new_run(plan.scope, map_digest(m), plan.to_json(), depends_of(m))
            lease.set_run(run_id)
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
                stop.check()
                pass_no += 1
                # what is left (changed, added or deferred meanwhile) makes the next plan
                ctx.plan = build_plan(
                    m, after, fleet.foreign_keys(), plan.scope, options.batch_size
                )
            # the application can insert at home without giving an id: generated
            # keys there go past every moved row (and every source's largest)
            for store, tables in home_needs(
                fleet, ctx.catalog, plan.moves, plan.copy_order
            ).items():
                advance_home(fleet, store, tables, headroom=0)
        except DomicileError as exc:
            reasons.append(str(exc))
            after = _safe_scan(fleet, before)
            result = RunResult(
                run_id,
                "failed",
                plan,
                before,
                after,
                ctx.counts,
                reasons,
                time.monotonic() - started,
            )
            _finish_after_failure(journal, audit, result)
            if isinstance(exc, AuditIntegrityError):
                raise  # tampering: exit 5, never reported as a plain stop
            raise RunIncomplete(
                f"run {run_id} stopped: {exc.message}",
                where=exc.where,
                hint=(exc.hint + "; " if exc.hint else "")
                + f"resume with: domicile run --resume {run_id}",
            ) from exc
        except BaseException as exc:
            # a bug or an interrupt we did not expect: the run must not stay "running"
            result = RunResult(
                run_id, "failed", plan, before, before, ctx.counts, [repr(exc)],
                time.monotonic() - started,
            )  # fmt: skip
            try:
                journal.finish_run(run_id, "failed", result.summary())
            except Exception as end:  # the state store failing too: the first error counts
                log.warning("could not record the end of run %s: %s", run_id, end)
            raise
        left = after.violations_in(plan.scope)
        if left:
            for c in after.cells.values():
                if c.jurisdiction in plan.scope and c.violating:
                    reasons.append(
                        f"{c.violating} {c.dataset} records of {c.jurisdiction} remain in {c.store}"
                    )
        batches = journal.batches(run_id)
        # A pinned row stays at its source, where the census counts it as violating;
        # a row pinned in one pass and moved in a later one is not left (so pinned
        # counts of earlier passes say nothing once no violation is left).
        pinned = sum(b.counts.get("pinned", 0) for b in batches) if left else 0
        if pinned:
            reasons.append(
                f"{pinned} records are home but could not be deleted at their source: rows that "
                "stay there (under an exception, or as conflicts) reference them by foreign key"
            )
        lost = sum(
            b.counts.get("home_lost", 0) + b.counts.get("blobs_home_lost", 0) for b in batches
        )
        if lost:
            reasons.append(
                f"{lost} records were kept at their source because their home copy went missing "
                "or changed after it was verified (a fail-over, a restore?); run again to copy "
                "them home"
            )
        status = "done" if left == 0 and not pinned else "incomplete"
        if options.vacuum and status == "done":
            from domicile.run.compact import compact_sources

            reasons += compact_sources(fleet, plan.moves)
        result = RunResult(
            run_id, status, plan, before, after, ctx.counts, reasons, time.monotonic() - started
        )
        _finish(journal, audit, result)
        return result


def _run_to_resume(
    journal: Journal, resume: str | None, confirm: Callable[[RunRecord], bool] | None
) -> RunRecord | None:
    """The unfinished run to resume, or None for a new run (under the lease)."""
    if resume is not None:
        record = journal.run(resume)
        if record is None:
            known = ", ".join(r.id for r in journal.runs()) or "none"
            raise ConfigError(f"run '{resume}' is not in the journal (runs: {known})")
        if record.status in ("done", "abandoned"):
            raise ConfigError(f"run {resume} is already {record.status}", hint="start a new run")
        return record
    unfinished = journal.unfinished()
    if not unfinished:
        return None
    last = unfinished[-1]
    if confirm is not None and confirm(last):
        return last
    raise ConfigError(
        f"run {last.id} did not finish ({last.status})",
        hint=f"resume it: domicile run --resume {last.id} (or give it up: domicile run "
        f"--abandon {last.id})",
    )


def _check_depends(m: DataMap, record: RunRecord) -> None:
    """Refuse to resume *record* under a map that changed what its batches depend on."""
    if record.depends is None:
        raise ConfigError(
            f"run {record.id} was started by an older domicile that did not record what it "
            "depends on in the map",
            hint=f"give it up (domicile run --abandon {record.id}) and start a new run",
        )
    diff = changed(record.depends, depends_of(m))
    if diff:
        raise ConfigError(
            f"the data map changed since run {record.id} started: {', '.join(diff)}",
            where=str(m.path),
            hint="restore the map as it was to resume, or give the run up "
            f"(domicile run --abandon {record.id}) and start a new one; nothing was changed",
        )


def abandon(m: DataMap, journal: Journal, run_id: str, audit: RunAudit | None = None) -> None:
    """Give up an unfinished run (under the lease): it is never resumed; new runs may start.

    First its unfinished batches are undone where that loses nothing: every
    copy it made at home of a row that is still at its source (changed or not)
    is removed if home still holds exactly that copy, and so is the copy of a
    row the application deleted meanwhile.  Only rows the run's own committed
    delete removed keep their home copy — there it is the record.  Rows left
    at their sources move again in the next run.
    """
    journal.set_key(deployment_key(m))
    with acquire_lease(journal.engine, run_id=run_id, break_lease=False):
        record = journal.run(run_id)
        if record is None:
            raise ConfigError(f"run '{run_id}' is not in the journal")
        if record.status in ("done", "abandoned"):
            raise ConfigError(f"run {run_id} is already {record.status}")
        _check_depends(m, record)
        undone = 0
        with Fleet(m) as fleet:
            plan = Plan(record.scope, (), (), (), ())
            ctx = RunContext(m, fleet, journal, run_id, plan, RunOptions(), audit, None)
            for batch in journal.batches(run_id):
                ds = m.datasets[batch.dataset]
                if batch.state == "done" or not ds.is_sql:
                    continue
                checked = journal.checked_batch(batch.id, fresh=True)
                if batch.source in fleet.objects:
                    # objects abroad of rows already home (domicile.run.home_blobs)
                    blobs = HomeBlobMover(ctx, ds, fleet.objects[batch.source])
                    undone += blobs.undo(checked)
                    continue
                source = fleet.location(batch.dataset, batch.source)
                if source is not None:
                    undone += Mover(ctx, ds, source).undo(checked)
        journal.abandon(run_id)
        if audit is not None:
            audit({"type": "run.abandoned", "run": run_id, "home_copies_removed": undone})


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


def _finish_after_failure(journal: Journal, audit: RunAudit | None, result: RunResult) -> None:
    """:func:`_finish` for a run that failed: when the state store fails too (the
    failure may be the state store's), the run's own error and its resume hint are
    what the user sees; the journal still says ``running``, which a resume takes."""
    try:
        _finish(journal, audit, result)
    except DomicileError as end:
        log.warning("could not record the end of run %s: %s", result.run_id, end.message)


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
