"""The census on a hand-built fleet with known counts, on every SQL backend."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from typer.testing import CliRunner

import fleetkit
from domicile.cli import app
from domicile.datamap import load_map
from domicile.fleet import Fleet
from domicile.scan import scan

TODAY = dt.date(2026, 11, 28)


@pytest.fixture
def fleet_path(tmp_path, make_db, backend):
    urls = {s: make_db(backend) for s in ("sg", "us", "ca")}
    return fleetkit.build(tmp_path, urls)


def test_census_counts_match_the_hand_built_fleet(fleet_path):
    m = load_map(fleet_path)
    with Fleet(m) as fleet:
        census = scan(fleet, today=TODAY)
    got = {k: (c.records, c.violating, c.excepted, c.conflicts) for k, c in census.cells.items()}
    assert got == fleetkit.EXPECTED_CELLS
    assert census.violations == fleetkit.EXPECTED_VIOLATIONS
    assert census.conflicts == fleetkit.EXPECTED_CONFLICTS
    assert dict(census.orphans) == fleetkit.EXPECTED_ORPHANS
    assert dict(census.unknown_records) == fleetkit.EXPECTED_UNKNOWN
    assert dict(census.unknown_countries) == {"Atlantis": 1}
    assert census.unresolved == 5 + 2  # orphans + records of a subject with an unknown country
    uses = {u.waiver.index: (u.active, u.records) for u in census.waivers}
    # the active exception covers the 3 public posts of US and CA subjects; the expired
    # one would have covered the 2 likes of post 10 in sg and now counts them as violating
    assert uses == {0: (True, 3), 1: (False, 2)}
    assert all(c.bytes > 0 for c in census.cells.values())


def test_expired_exception_stops_counting(fleet_path):
    m = load_map(fleet_path)
    with Fleet(m) as fleet:
        before = scan(fleet, today=dt.date(2019, 12, 31))
        after = scan(fleet, today=TODAY)
    # while the likes exception was active it covered two violating likes
    assert before.violations == after.violations - 2
    assert before.cells[("US", "sg", "likes")].excepted == 1


def test_scan_json_shape_and_exit_code(fleet_path):
    result = CliRunner().invoke(app, ["scan", "--json", "-c", str(fleet_path)])
    assert result.exit_code == 3, result.output
    data = json.loads(result.stdout)
    assert data["violations"] == fleetkit.EXPECTED_VIOLATIONS
    assert data["conflicts"] == fleetkit.EXPECTED_CONFLICTS
    assert data["unresolved"] == 7
    cell = next(
        c
        for c in data["cells"]
        if (c["jurisdiction"], c["store"], c["dataset"]) == ("US", "sg", "users")
    )
    assert {k: cell[k] for k in ("records", "violating")} == {"records": 2, "violating": 2}
    assert set(cell) >= {"jurisdiction", "store", "dataset", "records", "violating"}
