"""Terminal rendering of domicile's results with Rich.

On a terminal Rich draws colour tables; piped into a file or CI log the same
tables come out as plain text.  Nothing here computes: it only shows.
"""

from __future__ import annotations

from collections import defaultdict

from rich.console import Console
from rich.table import Table

from domicile.model import UNRESTRICTED, DataMap
from domicile.placement import store_allowed
from domicile.scan import Census


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
