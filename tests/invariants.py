"""Snapshots of a fleet and the four invariants of DESIGN.md, checked against them."""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from domicile.datamap import load_map
from domicile.fleet import Fleet
from domicile.model import DataMap
from domicile.run.rows import digest_hex
from domicile.scan import scan

# dataset -> key -> store -> digest
Snapshot = dict[str, dict[tuple[Any, ...], dict[str, str]]]


def snapshot(path: Path) -> Snapshot:
    """Every record of every SQL dataset (personal and reference), where it is and its digest."""
    m = load_map(path)
    out: Snapshot = defaultdict(lambda: defaultdict(dict))
    with Fleet(m) as fleet:
        for ds in m.datasets.values():
            if not ds.is_sql:
                continue
            for loc in fleet.locations(ds.name):
                with loc.store.engine.connect() as conn:
                    for row in conn.execute(sa.select(loc.table)).mappings():
                        key = tuple(_plain(row[k]) for k in loc.key)
                        out[ds.name][key][loc.store.name] = digest_hex(row, loc.table.columns)
    return out


def _plain(v: Any) -> Any:
    return v if isinstance(v, int | str) else str(v)


def no_record_lost(before: Snapshot, now: Snapshot) -> None:
    """Every record of *before* is still somewhere in *now* (invariant 1, mid-run)."""
    for dataset, records in before.items():
        for key, places in records.items():
            assert now.get(dataset, {}).get(key), f"lost {dataset} {key} (was in {places})"


def check_invariants(
    path: Path,
    before: Snapshot,
    after: Snapshot,
    scope: list[str] | None = None,
    deleted_by_app: set[tuple[str, tuple[Any, ...]]] = frozenset(),  # type: ignore[assignment]
    changed_by_app: set[tuple[str, tuple[Any, ...]]] = frozenset(),  # type: ignore[assignment]
) -> None:
    """Assert no loss, nothing outside home gained, digests kept, zero violations in scope."""
    m = load_map(path)
    scope = scope or list(m.jurisdictions)
    homes = {h for j in scope for h in m.jurisdictions[j].home}
    for dataset, records in before.items():
        for key, places in records.items():
            if (dataset, key) in deleted_by_app:
                continue
            now = after.get(dataset, {}).get(key, {})
            assert now, f"lost: {dataset} {key} was in {sorted(places)}, is nowhere now"
            if (dataset, key) in changed_by_app:
                continue
            digests = set(places.values())
            for store, digest in now.items():
                assert digest in digests, f"{dataset} {key} at {store} has content never seen"
                if store not in places:
                    assert store in homes, f"{dataset} {key} appeared in {store}, not a home"
            for store in places:
                if store not in now:
                    assert set(now) & homes, f"{dataset} {key} left {store} but is not home"
    with Fleet(m) as fleet:
        census = scan(fleet)
    assert census.violations_in(scope) == 0, [
        c for c in census.cells.values() if c.violating and c.jurisdiction in scope
    ]


def sqlite_foreign_keys_hold(m: DataMap) -> None:
    """PRAGMA foreign_key_check is empty in every SQLite store."""
    for store in m.sql_stores():
        if store.url.startswith("sqlite:///"):
            con = sqlite3.connect(store.url[len("sqlite:///") :])
            try:
                problems = con.execute("PRAGMA foreign_key_check").fetchall()
            finally:
                con.close()
            assert problems == [], (store.name, problems[:5])
