"""The planner: a census and the map in, the ordered moves out.

Pure: no I/O.  The foreign-key graph between datasets is reflected by the
caller (:func:`domicile.fleet.Fleet.dependencies`) and passed in, so that a
golden test can give a map, a census and a graph and compare the plan.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter
from typing import Any

import sqlalchemy as sa

from domicile.connectors.dialects import dialect_for
from domicile.defaults import DEFAULT_BATCH_SIZE
from domicile.errors import ConfigError
from domicile.model import DataMap, ForeignKey
from domicile.placement import home_store
from domicile.scan import Census
from domicile.scan_objects import blob_cell_name

# Rows per second assumed for the time estimate, per (source engine, home engine):
# what benchmarks/move.py measured on 2 cores with two thirds of the rows moving
# (see benchmarks/README.md); a run prints its real rate.
RATES: dict[tuple[str, str], float] = {
    ("sqlite", "sqlite"): 9_100.0,
    ("postgresql", "postgresql"): 7_700.0,
    ("sqlite", "postgresql"): 6_900.0,
    ("postgresql", "mysql"): 5_800.0,
}
DEFAULT_RATE = 5_000.0
"""For a pair of engines the benchmark does not measure, and for objects."""


def pair_rate(m: DataMap, source: str, target: str) -> float:
    """The assumed rate of a move from store *source* to store *target*."""
    a, b = m.stores.get(source), m.stores.get(target)
    if a is None or b is None or a.kind != "sql" or b.kind != "sql":
        return DEFAULT_RATE
    return RATES.get((_family(a.url), _family(b.url)), DEFAULT_RATE)


def _family(url: str) -> str:
    try:
        backend = sa.make_url(url).get_backend_name()
    except sa.exc.ArgumentError:
        return "generic"
    return dialect_for(backend).family


@dataclass(frozen=True)
class Move:
    """Records of one dataset going from one store to one home store."""

    dataset: str
    source: str
    target: str
    jurisdictions: tuple[str, ...]
    records: int
    bytes: int
    rate: float = DEFAULT_RATE  # rows/s assumed for this pair of engines

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "dataset": self.dataset,
            "source": self.source,
            "target": self.target,
            "jurisdictions": list(self.jurisdictions),
            "records": self.records,
            "bytes": self.bytes,
            "rate": self.rate,
        }


@dataclass(frozen=True)
class Plan:
    """What a run will do, in order."""

    scope: tuple[str, ...]
    moves: tuple[Move, ...]
    copy_order: tuple[str, ...]  # datasets, parents before children
    delete_order: tuple[str, ...]  # children before parents
    references: tuple[str, ...]  # reference datasets copied to homes where needed
    blockers: tuple[str, ...] = ()  # problems that stop the run before anything moves
    batch_size: int = DEFAULT_BATCH_SIZE
    conflicts: int = 0
    excepted: int = 0
    notes: tuple[str, ...] = field(default=())
    # (dataset, object store) holding objects that rows name and that are
    # violating: where the run looks for objects of rows that do not move
    # themselves (:mod:`domicile.run.home_blobs`)
    blob_sources: tuple[tuple[str, str], ...] = ()
    # (home store, statements): what the run would create there before any row moves
    ddl: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def records(self) -> int:
        """Records to move (a record going to two homes counts twice)."""
        return sum(m.records for m in self.moves)

    @property
    def bytes(self) -> int:
        """Approximate bytes to move."""
        return sum(m.bytes for m in self.moves)

    @property
    def batches(self) -> int:
        """Estimated number of batches (per source key range)."""
        return sum(math.ceil(m.records / self.batch_size) for m in self.moves)

    @property
    def estimate_seconds(self) -> float:
        """Time estimate: each move at the rate assumed for its pair of engines."""
        return sum(m.records / m.rate for m in self.moves if m.rate > 0)

    @property
    def rate(self) -> float:
        """The plan's overall assumed rate (records over the estimate)."""
        seconds = self.estimate_seconds
        return self.records / seconds if seconds > 0 else DEFAULT_RATE

    def sources(self, dataset: str) -> list[str]:
        """Stores the dataset moves out of, in plan order."""
        out: list[str] = []
        for m in self.moves:
            if m.dataset == dataset and m.source not in out:
                out.append(m.source)
        return out

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (``plan -o plan.json``)."""
        return {
            "scope": list(self.scope),
            "moves": [m.as_dict() for m in self.moves],
            "copy_order": list(self.copy_order),
            "delete_order": list(self.delete_order),
            "references": list(self.references),
            "blockers": list(self.blockers),
            "records": self.records,
            "bytes": self.bytes,
            "batch_size": self.batch_size,
            "batches": self.batches,
            "estimate_seconds": round(self.estimate_seconds, 1),
            "conflicts_left_in_place": self.conflicts,
            "excepted_left_in_place": self.excepted,
            "notes": list(self.notes),
            **({"ddl": {store: list(stmts) for store, stmts in self.ddl}} if self.ddl else {}),
        }


def resolve_scope(m: DataMap, scope: Sequence[str] | None) -> tuple[str, ...]:
    """The jurisdictions a plan covers (all by default); unknown names are an error."""
    if not scope:
        return tuple(m.jurisdictions)
    for name in scope:
        if name not in m.jurisdictions:
            raise ConfigError(
                f"jurisdiction '{name}' is not in the map "
                f"(defined: {', '.join(m.jurisdictions) or 'none'})",
                where="-j/--jurisdiction",
            )
    return tuple(dict.fromkeys(scope))


def order_datasets(
    datasets: Iterable[str], edges: Mapping[str, Iterable[str]]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(copy order, delete order): parents before children, then the reverse.

    *edges* maps a dataset to the datasets it references.  Ties keep the map's
    order so that plans are stable.
    """
    names = list(datasets)
    sorter: TopologicalSorter[str] = TopologicalSorter()
    for name in names:
        sorter.add(name, *[p for p in edges.get(name, ()) if p in names and p != name])
    try:
        sorter.prepare()
    except CycleError as exc:
        cycle = " -> ".join(exc.args[1])
        raise ConfigError(
            f"foreign keys between datasets form a cycle: {cycle}",
            hint="domicile copies parents before children; break the cycle or move the "
            "datasets in separate runs with one foreign key dropped",
        ) from None
    order: list[str] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=names.index)
        order += ready
        sorter.done(*ready)
    return tuple(order), tuple(reversed(order))


def build_plan(
    m: DataMap,
    census: Census,
    foreign_keys: Iterable[ForeignKey] = (),
    scope: Sequence[str] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    rate: float | None = None,
) -> Plan:
    """The moves that bring the scope's violating records home, in dependency order."""
    juris = resolve_scope(m, scope)
    totals: dict[tuple[str, str, str], list[Any]] = {}
    blob_cells = {blob_cell_name(d): d.name for d in m.datasets.values() if d.blobs is not None}
    blob_sources: list[tuple[str, str]] = []
    conflicts = excepted = 0
    for cell in sorted(census.cells.values(), key=lambda c: (c.dataset, c.store, c.jurisdiction)):
        if cell.jurisdiction not in juris:
            continue
        conflicts += cell.conflicts
        excepted += cell.excepted
        if cell.violating and cell.dataset in blob_cells:
            # blob cells ("videos.media_key") move with their rows, or on their
            # own when the row naming them stays (it is already home)
            where = (blob_cells[cell.dataset], cell.store)
            if where not in blob_sources:
                blob_sources.append(where)
        if not cell.violating or cell.dataset not in m.datasets:
            continue
        ds = m.datasets[cell.dataset]
        target = home_store(m, m.jurisdictions[cell.jurisdiction], ds)
        key = (cell.dataset, cell.store, target)
        entry = totals.setdefault(key, [[], 0, 0])
        entry[0].append(cell.jurisdiction)
        entry[1] += cell.violating
        share = cell.bytes * cell.violating // cell.records if cell.records else 0
        entry[2] += share
    datasets_order = [d for d in m.datasets if any(k[0] == d for k in totals)]
    edges: dict[str, set[str]] = {}
    table_to_dataset = {d.table: d.name for d in m.datasets.values() if d.table}
    references: list[str] = []
    blockers: list[str] = []
    for fk in foreign_keys:
        if fk.dataset not in datasets_order:
            continue
        parent = table_to_dataset.get(fk.referred_table)
        cols = ", ".join(fk.columns)
        if parent is None:
            blockers.append(
                f"{fk.dataset}.{cols} in store {fk.store} references table '{fk.referred_table}', "
                "which is neither a dataset nor a reference dataset: declare it in the map "
                f"(e.g. {fk.referred_table}: {{table: {fk.referred_table}, reference: true}})"
            )
        elif m.datasets[parent].reference:
            if parent not in references:
                references.append(parent)
        else:
            edges.setdefault(fk.dataset, set()).add(parent)
    copy_order, delete_order = order_datasets(datasets_order, edges)
    position = {d: i for i, d in enumerate(copy_order)}
    moves = tuple(
        Move(d, s, t, tuple(v[0]), v[1], v[2], rate or pair_rate(m, s, t))
        for (d, s, t), v in sorted(totals.items(), key=lambda kv: (position[kv[0][0]], kv[0][1:]))
    )
    notes = []
    if conflicts:
        notes.append(
            f"{conflicts} records have owners whose rules share no store: left in place "
            "as conflicts until an exception covers them"
        )
    return Plan(
        scope=juris,
        moves=moves,
        copy_order=copy_order,
        delete_order=delete_order,
        references=tuple(references),
        blockers=tuple(dict.fromkeys(blockers)),
        batch_size=batch_size,
        conflicts=conflicts,
        excepted=excepted,
        notes=tuple(notes),
        blob_sources=tuple(blob_sources),
    )
