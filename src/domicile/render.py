"""Terminal rendering of domicile's results with Rich.

On a terminal Rich draws colour tables; piped into a file or CI log the same
tables come out as plain text.  Nothing here computes: it only shows.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.progress import ProgressColumn, Task
from rich.table import Table
from rich.text import Text

from domicile.model import UNRESTRICTED, DataMap
from domicile.placement import store_allowed
from domicile.plan import Plan
from domicile.scan import Census

if TYPE_CHECKING:
    from domicile.api import StatusResult


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def census_table(m: DataMap, census: Census, title: str = "Residency census") -> Table:
    """One row per (jurisdiction, store): records, bytes, violating, excepted, conflicts."""
    table = Table(title=title, title_justify="left")
    for col, justify in (
        ("jurisdiction", "left"),
        ("store", "left"),
        ("allowed", "center"),
        ("records", "right"),
        ("bytes", "right"),
        ("violating", "right"),
        ("excepted", "right"),
        ("conflicts", "right"),
        ("datasets violating", "left"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    rows: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    bad: dict[tuple[str, str], list[str]] = defaultdict(list)
    for c in census.cells.values():
        r = rows[(c.jurisdiction, c.store)]
        for i, v in enumerate((c.records, c.bytes, c.violating, c.excepted, c.conflicts)):
            r[i] += v
        if c.violating:
            bad[(c.jurisdiction, c.store)].append(f"{c.dataset} {c.violating:,}")
    order = [*m.jurisdictions, UNRESTRICTED]
    for (j, s), r in sorted(rows.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1])):
        if j == UNRESTRICTED:
            allowed = "any"
        else:
            allowed = (
                "yes" if store_allowed(m.jurisdictions[j], m.stores[s].labels) else "[red]no[/]"
            )
        table.add_row(
            j,
            s,
            allowed,
            f"{r[0]:,}",
            human_bytes(r[1]),
            f"[bold red]{r[2]:,}[/]" if r[2] else "0",
            f"{r[3]:,}",
            f"{r[4]:,}",
            ", ".join(bad[(j, s)]),
        )
    return table


def print_census(
    console: Console, m: DataMap, census: Census, title: str = "Residency census"
) -> None:
    """The census table and the lines about what needs attention."""
    console.print(census_table(m, census, title))
    verdict = "[green]compliant[/]" if census.compliant else "[bold red]NOT compliant[/]"
    console.print(
        f"{verdict}: {census.violations:,} violating records, {census.conflicts:,} conflicts, "
        f"{census.unresolved:,} unresolved"
    )
    for (store, ds), n in sorted(census.orphans.items()):
        console.print(f"  orphans: {n:,} {ds} records in {store} have no known owner")
    for (store, ds), n in sorted(census.unknown_records.items()):
        console.print(
            f"  unknown country: {n:,} {ds} records in {store} belong to subjects "
            "whose country cannot be read"
        )
    if census.unknown_countries:
        values = ", ".join(f"{v!r} ({n:,})" for v, n in sorted(census.unknown_countries.items()))
        console.print(f"  country values that map to no country (subjects): {values}")
    for use in census.waivers:
        w = use.waiver
        state = f"active until {w.expires}" if use.active else f"[yellow]EXPIRED on {w.expires}[/]"
        covers = "covers" if use.active else "no longer covers"
        console.print(
            f"  exception #{w.index} {w.dataset} {dict(w.where)}: {state}; {covers} "
            f"{use.records:,} records — {w.reason} (approved by {w.approved_by})"
        )


class _RateColumn(ProgressColumn):
    """Rows (or bytes) per second of a task."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if not speed:
            return Text("")
        if task.fields.get("unit") == "bytes":
            return Text(f"{human_bytes(speed):>10}/s")
        return Text(f"{speed:>9,.0f} rows/s")


class _CountColumn(ProgressColumn):
    """Done / total, in rows or bytes."""

    def render(self, task: Task) -> Text:
        if task.fields.get("unit") == "bytes":
            return Text(human_bytes(task.completed))
        total = f"/{task.total:,.0f}" if task.total else ""
        return Text(f"{task.completed:,.0f}{total}")


class RunProgress:
    """Progress of a run: Rich bars per dataset on a terminal, plain lines otherwise."""

    def __init__(self, console: Console, totals: dict[str, int], every: float = 2.0):
        import time

        from rich.progress import (
            BarColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeRemainingColumn,
        )

        self.console = console
        self.totals = totals
        self.done: dict[tuple[str, str], int] = {}
        self.every = every
        self._time = time.monotonic
        self._last = 0.0
        self._start = self._time()
        self.bars: Progress | None = None
        self.tasks: dict[tuple[str, str], Any] = {}
        if console.is_terminal:
            self.bars = Progress(
                TextColumn("{task.description:<28}"),
                BarColumn(),
                _CountColumn(),
                TaskProgressColumn(),
                _RateColumn(),
                TimeRemainingColumn(),
                console=console,
            )

    def __enter__(self) -> RunProgress:
        if self.bars is not None:
            self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bars is not None:
            self.bars.stop()
        else:
            self._plain(force=True)

    def __call__(self, event: str, dataset: str, rows: int) -> None:
        key = (event, dataset)
        self.done[key] = self.done.get(key, 0) + rows
        if self.bars is not None:
            if key not in self.tasks:
                unit = "bytes" if event == "bytes" else "rows"
                total = None if unit == "bytes" else (self.totals.get(dataset) or None)
                self.tasks[key] = self.bars.add_task(f"{event} {dataset}", total=total, unit=unit)
            self.bars.update(self.tasks[key], advance=rows)
        else:
            self._plain()

    def _plain(self, force: bool = False) -> None:
        now = self._time()
        if not force and now - self._last < self.every:
            return
        self._last = now
        elapsed = max(now - self._start, 1e-6)
        parts = []
        for (event, dataset), n in sorted(self.done.items()):
            if event == "bytes":
                parts.append(f"{dataset} {human_bytes(n)}")
                continue
            total = self.totals.get(dataset)
            of = f"/{total:,}" if total else ""
            parts.append(f"{event} {dataset} {n:,}{of}")
        rate = sum(n for (e, _), n in self.done.items() if e == "copied") / elapsed
        self.console.print(f"  [{elapsed:6.1f}s] " + "; ".join(parts) + f" ({rate:,.0f} rows/s)")


def print_plan(console: Console, m: DataMap, plan: Plan) -> None:
    """The moves, the order, blockers and the estimate."""
    table = Table(
        title=f"Plan for {', '.join(plan.scope) or 'no jurisdiction'}", title_justify="left"
    )
    for col, justify in (
        ("dataset", "left"),
        ("from", "left"),
        ("to", "left"),
        ("jurisdictions", "left"),
        ("records", "right"),
        ("bytes", "right"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for mv in plan.moves:
        table.add_row(
            mv.dataset,
            mv.source,
            mv.target,
            ", ".join(mv.jurisdictions),
            f"{mv.records:,}",
            human_bytes(mv.bytes),
        )
    console.print(table)
    console.print(
        f"{plan.records:,} records ({human_bytes(plan.bytes)}) in about {plan.batches:,} batches "
        f"of {plan.batch_size:,}; estimate {plan.estimate_seconds:,.0f}s "
        f"at {plan.rate:,.0f} rows/s"
    )
    if plan.copy_order:
        console.print(
            f"copy order: {' -> '.join(plan.copy_order)}; "
            f"delete order: {' -> '.join(plan.delete_order)}"
        )
    if plan.references:
        console.print(f"reference data copied where needed: {', '.join(plan.references)}")
    for note in plan.notes:
        console.print(f"note: {note}")
    for store, statements in plan.ddl:
        console.print(f"at home store {store}, before any row moves:")
        for statement in statements:
            console.print("  " + escape(" ".join(statement.split())) + ";", soft_wrap=True)
    for blocker in plan.blockers:
        console.print(f"[bold red]blocker:[/] {blocker}")


def print_status(console: Console, status: StatusResult) -> None:
    """Every run, or one run's batches by dataset, source and state; and the lease."""
    if status.lease is not None:
        console.print(f"run lease: held by {status.lease.describe()}")
    else:
        console.print("run lease: free")
    record = status.run
    if record is None:
        table = Table(title="Runs", title_justify="left")
        for col in ("run", "status", "scope", "started", "finished"):
            table.add_column(col)
        for r in status.runs:
            table.add_row(
                r.id,
                r.status,
                ", ".join(r.scope),
                f"{r.started_at:%Y-%m-%d %H:%M:%S}",
                f"{r.finished_at:%Y-%m-%d %H:%M:%S}" if r.finished_at else "",
            )
        console.print(table)
        return
    console.print(
        f"run {record.id}: {record.status}; scope {', '.join(record.scope)}; "
        f"started {record.started_at:%Y-%m-%d %H:%M:%S}"
    )
    table = Table(title="Batches", title_justify="left")
    cols = ("dataset", "source", "state", "batches", "rows", "deleted", "changed", "vanished")
    for col in cols:
        table.add_column(col)
    groups: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    errors = []
    for b in status.batches:
        g = groups[(b.dataset, b.source, b.state)]
        g[0] += 1
        g[1] += b.rows
        g[2] += b.counts.get("deleted", 0)
        g[3] += b.counts.get("changed", 0)
        g[4] += b.counts.get("vanished", 0)
        if b.error:
            errors.append(f"batch {b.id} ({b.dataset} from {b.source}): {b.error}")
    for (d, src, st), g in sorted(groups.items()):
        table.add_row(d, src, st, *[f"{v:,}" for v in g])
    console.print(table)
    for e in errors:
        console.print(f"  error: {escape(e)}")
    summary = record.summary
    if summary:
        counts = summary.get("counts") or {}
        console.print(
            f"ended {summary.get('status', record.status)} after {summary.get('seconds', 0)}s: "
            f"violations {summary.get('violations_before', '?')} before, "
            f"{summary.get('violations_after', '?')} after"
        )
        if counts:
            console.print("  " + ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items()) if v))
        for reason in summary.get("reasons") or []:
            console.print(f"  {escape(str(reason))}")
