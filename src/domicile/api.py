"""domicile as a library: one function per command, each returning a typed result.

The command line (:mod:`domicile.cli`) and the service are thin shells over
these functions: they parse, call, and render.  Every function takes the
data map's path (or a loaded :class:`~domicile.model.DataMap`) and raises a
:class:`~domicile.errors.DomicileError` for anything a user did or met; the
shells map those to exit codes or HTTP statuses in one place each.

>>> from domicile import api
>>> census = api.scan("domicile.yaml")          # doctest: +SKIP
>>> result = api.run("domicile.yaml", api.RunOptions(scope=["US"]))  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from domicile.datamap import load_map
from domicile.defaults import DEFAULT_BATCH_SIZE
from domicile.errors import ConfigError, DomicileError
from domicile.fleet import Fleet, path_notes
from domicile.model import DataMap
from domicile.state import state_engine

# The run package, the planner and the scanner are imported by the functions
# that use them: ``domicile check`` needs none of them.
if TYPE_CHECKING:
    from datetime import datetime

    from domicile.access.gateway import Decision, Gateway
    from domicile.access.principals import Principal
    from domicile.access.subjects import HomeAnswer
    from domicile.access.tickets import Ticket
    from domicile.access.tokens import JwtSettings
    from domicile.guard import StoreGuard
    from domicile.plan import Plan
    from domicile.run.executor import Progress, RunOptions, RunResult
    from domicile.run.home_schema import Prepared
    from domicile.run.journal import BatchRecord, Journal, RunRecord
    from domicile.run.lease import Holder
    from domicile.scan import Census
    from domicile.watch import RoundResult, WatchOptions

__all__ = [
    "CheckResult",
    "RunOptions",
    "RunResult",
    "StatusResult",
    "StoreCheck",
    "VerifyResult",
    "abandon",
    "access_check",
    "add_principal",
    "add_ticket",
    "check",
    "gateway",
    "guard_install",
    "guard_remove",
    "guard_status",
    "journal",
    "latest_census",
    "load",
    "plan",
    "prepare",
    "principals",
    "remove_principal",
    "revoke_ticket",
    "route",
    "run",
    "scan",
    "status",
    "subject_home",
    "tickets",
    "verify",
    "watch",
]

MapLike = DataMap | Path | str

_LAZY = {"RunOptions": "domicile.run.executor", "RunResult": "domicile.run.executor"}


def __getattr__(name: str) -> Any:
    # api.RunOptions and api.RunResult, without importing the run package up front
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def load(config: MapLike) -> DataMap:
    """The data map, loaded and validated (a loaded map is returned as is)."""
    return config if isinstance(config, DataMap) else load_map(Path(config))


def journal(m: DataMap) -> Journal:
    """The map's journal (read-only until a run opens it with the deployment key)."""
    from domicile.run.journal import Journal

    return Journal(state_engine(m.state, m.base_dir))


@dataclass(frozen=True)
class StoreCheck:
    """One store reached (or not) by :func:`check`."""

    name: str
    display_url: str
    version: str | None
    error: DomicileError | None


@dataclass(frozen=True)
class CheckResult:
    """What :func:`check` found: every store, and notes (missing identity markers)."""

    map: DataMap
    stores: list[StoreCheck]
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every store was reached and every check passed."""
        return all(s.error is None for s in self.stores)


def check(config: MapLike, on_store: Callable[[StoreCheck], None] | None = None) -> CheckResult:
    """Validate the map and reach every store; then check datasets, keys and identities.

    Changes nothing anywhere.  Raises the first store's error after every
    store was tried (*on_store* sees each as it is reached), then any problem
    with a dataset, a key or two names for one place.
    """
    m = load(config)
    stores: list[StoreCheck] = []
    with Fleet(m) as fleet:
        for name, version, error in fleet.check_stores():
            s = StoreCheck(name, m.stores[name].display_url, version, error)
            stores.append(s)
            if on_store is not None:
                on_store(s)
        failed = next((s.error for s in stores if s.error is not None), None)
        if failed is not None:
            raise failed
        fleet.validate()
        fleet.check_unique_keys()
        notes = fleet.check_identities(write_markers=False)
        notes += path_notes(fleet)
    return CheckResult(m, stores, notes)


def scan(config: MapLike) -> Census:
    """The census: where each jurisdiction's records sit, and which break the rule.

    The census is stored in the state store (:func:`domicile.census_store.save_census`),
    where ``serve`` reads the latest.
    """
    from domicile.census_store import save_census
    from domicile.scan import scan as _scan

    m = load(config)
    with Fleet(m) as fleet:
        census = _scan(fleet)
    save_census(m, census)
    return census


def plan(
    config: MapLike, scope: Sequence[str] | None = None, batch_size: int = DEFAULT_BATCH_SIZE
) -> tuple[Census, Plan]:
    """The census and the moves that would bring every violating record of *scope* home."""
    from domicile.run.executor import plan_for

    m = load(config)
    with Fleet(m) as fleet:
        return plan_for(fleet, list(scope) if scope else None, batch_size)


DEFAULT_HEADROOM = 100_000
"""Ids kept free above the sources' largest when ``prepare`` sets a home's sequences."""


def prepare(
    config: MapLike, scope: Sequence[str] | None = None, headroom: int = DEFAULT_HEADROOM
) -> Prepared:
    """Create each home's schema before anything moves (see :func:`prepare_homes`).

    Nothing is created when any home would refuse a table: the result's
    ``blockers`` say why (``plan`` shows the same).
    """
    from domicile.plan import resolve_scope
    from domicile.run.home_schema import prepare_homes

    m = load(config)
    with Fleet(m) as fleet:
        fleet.validate()
        return prepare_homes(fleet, resolve_scope(m, scope), headroom)


def run(
    config: MapLike,
    options: RunOptions | None = None,
    *,
    resume: str | None = None,
    progress: Progress | None = None,
    confirm_resume: Callable[[RunRecord], bool] | None = None,
) -> RunResult:
    """Bring it home (or resume *resume*); see :func:`domicile.run.executor.execute`.

    Owns the resume and lock rules: one run per state store (a lease), and a
    new run is refused while another is unfinished unless *confirm_resume*
    agrees to resume it.
    """
    from domicile.run.audit_events import RunAudit
    from domicile.run.executor import RunOptions, execute

    m = load(config)
    j = journal(m)
    audit = RunAudit(m, j.engine)
    result = execute(
        m,
        j,
        options or RunOptions(),
        resume=resume,
        audit=audit,
        progress=progress,
        confirm_resume=confirm_resume,
    )
    if result.status == "done":  # subjects came home: an installed write guard learns them
        from domicile.guard import refresh_after_run

        refresh_after_run(m)
    return result


def abandon(config: MapLike, run_id: str) -> None:
    """Give up an unfinished run: never resumed; new runs may start."""
    from domicile.run.audit_events import RunAudit
    from domicile.run.executor import abandon as _abandon

    m = load(config)
    j = journal(m)
    _abandon(m, j, run_id, RunAudit(m, j.engine))


@dataclass(frozen=True)
class StatusResult:
    """Every run (``run`` None) or one run with its batches; and who holds the lease."""

    runs: list[RunRecord]
    run: RunRecord | None
    batches: list[BatchRecord]
    lease: Holder | None

    def to_json(self) -> dict[str, Any]:
        """``status --json``: the runs (or the run with its batches) and the lease."""

        def when(value: Any) -> str | None:
            return value.isoformat(timespec="seconds") if value is not None else None

        def run(r: RunRecord) -> dict[str, Any]:
            return {
                "run": r.id,
                "status": r.status,
                "scope": list(r.scope),
                "started": when(r.started_at),
                "finished": when(r.finished_at),
                "summary": r.summary,
            }

        out: dict[str, Any] = {
            "lease": None
            if self.lease is None
            else {
                "host": self.lease.host,
                "pid": self.lease.pid,
                "run": self.lease.run_id,
                "since": when(self.lease.acquired_at),
                "heartbeat": when(self.lease.heartbeat_at),
            }
        }
        if self.run is None:
            out["runs"] = [run(r) for r in self.runs]
            return out
        out["run"] = run(self.run)
        out["batches"] = [
            {
                "batch": b.id,
                "dataset": b.dataset,
                "source": b.source,
                "pass": b.pass_no,
                "state": b.state,
                "rows": b.rows,
                "counts": dict(b.counts),
                "error": b.error,
            }
            for b in self.batches
        ]
        return out


def status(config: MapLike, run_id: str | None = None) -> StatusResult:
    """Where runs stand."""
    from domicile.run.lease import current_holder

    m = load(config)
    j = journal(m)
    holder = current_holder(j.engine)
    if run_id is None:
        return StatusResult(j.runs(), None, [], holder)
    record = j.run(run_id)
    if record is None:
        raise ConfigError(
            f"run '{run_id}' is not in the journal", hint="domicile status lists the runs"
        )
    return StatusResult([record], record, j.batches(run_id), holder)


@dataclass(frozen=True)
class VerifyResult:
    """A fresh scan's verdict for a scope of jurisdictions."""

    scope: list[str]
    census: Census
    left: int

    @property
    def verified(self) -> bool:
        """True when no record of the scope is out of place."""
        return self.left == 0


def verify(config: MapLike, run_id: str | None = None) -> VerifyResult:
    """A fresh scan: are the run's (or every) jurisdictions' records all where they may be?"""
    from domicile.scan import scan as _scan

    m = load(config)
    scope: list[str] = list(m.jurisdictions)
    if run_id is not None:
        record = journal(m).run(run_id)
        if record is None:
            raise ConfigError(f"run '{run_id}' is not in the journal")
        scope = list(record.scope)
    with Fleet(m) as fleet:
        fleet.check_identities(write_markers=False)  # two names for one place prove nothing
        census = _scan(fleet)
    return VerifyResult(scope, census, census.violations_in(scope))


def report_data(config: MapLike, run_id: str | None = None) -> dict[str, Any]:
    """The residency report's data (JSON-ready) for a run (default: the latest)."""
    from domicile.report import report_data as _report_data

    m = load(config)
    j = journal(m)
    return _report_data(m, j, j.engine, run_id)


def guard_install(config: MapLike, scope: Sequence[str] | None = None) -> list[StoreGuard]:
    """Install (or refresh) the write guard in every store *scope*'s rules forbid."""
    from domicile import guard
    from domicile.plan import resolve_scope

    m = load(config)
    with Fleet(m) as fleet:
        return guard.install(fleet, resolve_scope(m, scope))


def guard_status(config: MapLike) -> list[StoreGuard]:
    """The write guard in every SQL store: installed or not, for which jurisdictions."""
    from domicile import guard

    with Fleet(load(config)) as fleet:
        return guard.status(fleet)


def guard_remove(config: MapLike, scope: Sequence[str] | None = None) -> list[str]:
    """Remove the write guard of *scope* (default: all); the stores changed."""
    from domicile import guard
    from domicile.plan import resolve_scope

    m = load(config)
    with Fleet(m) as fleet:
        return guard.remove(fleet, list(resolve_scope(m, scope)) if scope else None)


def watch(
    config: MapLike,
    options: WatchOptions | None = None,
    on_round: Callable[[RoundResult], None] | None = None,
) -> list[RoundResult]:
    """The drift watch: a census every interval, alerts on new violations (see domicile.watch)."""
    from domicile.watch import WatchOptions
    from domicile.watch import watch as _watch

    return _watch(load(config), options or WatchOptions(), on_round=on_round)


# -- serving and access: `domicile serve`, `principals`, `access` ------------------


def latest_census(config: MapLike) -> tuple[dict[str, Any], datetime] | None:
    """The newest stored census (from ``scan`` or ``watch``) and when it was taken."""
    from domicile.census_store import latest_census as _latest

    return _latest(load(config))


def route(config: MapLike, country: str) -> HomeAnswer:
    """Where a new subject of *country* must write: status, jurisdiction, home per dataset."""
    from domicile.access.subjects import route as _route

    return _route(load(config), country)


def subject_home(config: MapLike, subject_id: str) -> HomeAnswer:
    """Where subject *subject_id*'s data goes, from the directory (NotFound if it has none)."""
    from domicile.access.subjects import subject_home as _home

    with Fleet(load(config)) as fleet:
        return _home(fleet, subject_id)[1]


def add_principal(
    config: MapLike,
    name: str,
    role: str,
    *,
    employer: str | None = None,
    country: str | None = None,
) -> tuple[Principal, str]:
    """Add a principal to the principals file; its token is returned once and never stored."""
    from domicile.access.principals import add_principal as _add

    return _add(load(config).path, name, role, employer=employer, country=country)


def remove_principal(config: MapLike, name: str) -> None:
    """Remove a principal: its token stops working at once."""
    from domicile.access.principals import remove_principal as _remove

    _remove(load(config).path, name)


def principals(config: MapLike) -> list[Principal]:
    """The principals of the principals file."""
    from domicile.access.principals import list_principals

    return list_principals(load(config).path)


def add_ticket(
    config: MapLike,
    *,
    principal: str,
    approver: str,
    reason: str,
    expires: datetime,
    datasets: Sequence[str] = (),
    jurisdictions: Sequence[str] = (),
    subjects: Sequence[str] = (),
) -> Ticket:
    """Issue an exception ticket held server-side (subjects stored as keyed hashes)."""
    from domicile.access.principals import check_name
    from domicile.access.subjects import parse_subject_id, record_dataset
    from domicile.access.tickets import add_ticket as _add
    from domicile.keys import keyed_hash
    from domicile.run.audit_events import deployment_key

    m = load(config)
    for d in datasets:
        record_dataset(m, d)
    for j in jurisdictions:
        if j not in m.jurisdictions:
            raise ConfigError(f"unknown jurisdiction {j!r}", hint=", ".join(m.jurisdictions))
    hashes: list[str] = []
    if subjects:
        key = deployment_key(m)
        with Fleet(m) as fleet:
            hashes = [keyed_hash(key, f"subject:{parse_subject_id(fleet, s)}") for s in subjects]
    return _add(
        m.path,
        principal=check_name(principal),
        approver=approver,
        reason=reason,
        expires=expires,
        datasets=datasets,
        jurisdictions=jurisdictions,
        subject_hashes=hashes,
    )


def tickets(config: MapLike) -> list[Ticket]:
    """Every exception ticket, oldest first."""
    from domicile.access.tickets import list_tickets

    return list_tickets(load(config).path)


def revoke_ticket(config: MapLike, ticket_id: str) -> Ticket:
    """Revoke a ticket: it stops counting at once."""
    from domicile.access.tickets import revoke_ticket as _revoke

    return _revoke(load(config).path, ticket_id)


def gateway(config: MapLike, *, jwt: JwtSettings | None = None, pool_size: int = 5) -> Gateway:
    """The custodian gateway (policies validated, stores and audit log opened); close() it."""
    from domicile.access.gateway import Gateway

    return Gateway(load(config), jwt=jwt, pool_size=pool_size)


def access_check(
    config: MapLike, principal: str, subject: str, dataset: str, ticket: str | None = None
) -> Decision:
    """The policy's decision for a named principal of the principals file, logged like a request."""
    from domicile.access.gateway import Gateway

    m = load(config)
    g = Gateway(m)
    try:
        who = g.principals.by_name(principal)
        if who is None:
            raise ConfigError(
                f"no principal named {principal!r}", hint="`domicile principals list` shows them"
            )
        return g.decide_records(who, subject, dataset, ticket, endpoint="domicile access check")
    finally:
        g.close()
