"""What the steps of one run share: the map, the fleet, the journal, options and helpers.

Also :func:`preflight`, which creates or checks every home table a plan needs
before any row moves.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa

from domicile.connectors.schema import copy_tables, missing_columns
from domicile.connectors.sql import SqlStore
from domicile.directory import Directory
from domicile.errors import ConfigError
from domicile.fleet import Fleet, Location
from domicile.model import DataMap, Dataset
from domicile.placement import home_store
from domicile.plan import Plan, order_datasets
from domicile.run.executors import Executor, LocalExecutor
from domicile.run.journal import BatchRecord, Journal
from domicile.run.references import Catalog
from domicile.run.retry import Retry, Throttle
from domicile.run.stop import StopFlag

Progress = Callable[[str, str, int], None]  # (event, dataset, rows)


class LeaseCheck(Protocol):
    """The run's lease as a step sees it: :meth:`check` raises once it is lost."""

    def check(self) -> None:
        """Raise :class:`~domicile.run.lease.LeaseLost` if the lease is gone."""


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
    break_lease: bool = False
    vacuum: bool = False  # compact the sources' tables after a run that ends done
    executor: str = "local"  # local | dask | tcp://scheduler:8786


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
        self.stop = StopFlag()
        self.lease: LeaseCheck | None = None  # the run's lease: checked before every delete
        self.executor: Executor = LocalExecutor(options.workers)
        self._events = events
        self._progress = progress
        self._lock = threading.Lock()
        self._targets: dict[tuple[str, str], Location] = {}
        self.counts: dict[str, int] = {}
        self.catalog = Catalog(m)
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

    def check_lease(self) -> None:
        """Raise :class:`~domicile.run.lease.LeaseLost` if the run no longer holds its lease."""
        if self.lease is not None:
            self.lease.check()

    def stored_form(self, ds: Dataset, source: SqlStore) -> bool:
        """True when *ds*'s rows from *source* move in their stored form.

        So when the source's engine family keeps values as stored between two
        of its stores (SQLite) and every SQL home of the dataset is of that
        family: decided from the map alone, so a resumed run decides alike.
        """
        if not source.behaviour.moves_stored_form:
            return False
        homes = {home_store(self.map, j, ds) for j in self.map.jurisdictions.values()}
        return all(
            self.fleet.sql[h].behaviour.family == source.behaviour.family
            for h in homes
            if h in self.fleet.sql
        )

    def is_reference_table(self, table: str) -> bool:
        """True when *table* is a reference dataset's table."""
        return table in self.catalog.reference_tables

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
                self._create(store, self.home_tables(ds, source))
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

    def home_tables(self, ds: Dataset, source: Location) -> list[sa.Table]:
        """The source tables *ds*'s rows need at a home (:meth:`Catalog.home_tables`)."""
        return self.catalog.home_tables(ds, source)

    def _create(self, store: str, wanted: Sequence[sa.Table]) -> None:
        """Create at *store* every table of *wanted* it lacks (in one call), then re-resolve."""
        sql = self.fleet.sql[store]
        if all(sql.has_table(t.name) for t in wanted):
            return
        copy_tables(wanted, sql.engine)  # existing tables are left untouched
        for t in wanted:
            sql.forget(t.name)
        names = {t.name for t in wanted}
        for d in self.map.datasets.values():
            if d.table in names:
                self.fleet.refresh(d.name)

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


def preflight(ctx: RunContext) -> None:
    """Create or check every home table the plan needs before any row moves.

    Each home's missing tables are created in one call, so that tables that
    refer to each other, or that an owner path at home goes through, exist
    together before any of them is looked at there.
    """
    from domicile.run.home_schema import home_needs

    wanted = home_needs(ctx.fleet, ctx.catalog, ctx.plan.moves, ctx.plan.copy_order)
    with ctx._lock:
        for store, tables in wanted.items():
            ctx._create(store, list(tables.values()))
    for dataset in ctx.plan.copy_order:
        ds = ctx.map.datasets[dataset]
        if not ds.is_sql:
            continue
        for move in ctx.plan.moves:
            if move.dataset == dataset:
                source = ctx.fleet.location(dataset, move.source)
                if source is not None:
                    ctx.target(ds, move.target, source)
