"""The planner is pure: golden fixtures (a map, a census, foreign keys in; the plan out)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from domicile.datamap import Located, build_map
from domicile.errors import ConfigError
from domicile.model import ForeignKey
from domicile.plan import RATES, build_plan, order_datasets
from domicile.scan import Cell, Census

GOLDEN = Path(__file__).parent / "golden"

MAP = """
version: 1
stores:
  sg: {url: "sqlite:///sg.db", labels: {country: SG}}
  us: {url: "sqlite:///us.db", labels: {country: US, operator: custodian}}
  ca: {url: "sqlite:///ca.db", labels: {country: CA}}
subjects: {dataset: users}
jurisdictions:
  US: {countries: [US], allowed: {country: US}, home: [us]}
  CA: {countries: [CA], allowed: {country: CA}, home: [ca]}
datasets:
  users:    {table: users, key: [id], owner: id}
  videos:   {table: videos, key: [id], owner: user_id}
  comments: {table: comments, key: [id], owner: author_id}
  sounds:   {table: sounds, reference: true}
"""


def _map():  # type: ignore[no-untyped-def]
    return build_map(yaml.safe_load(MAP), Located(Path("/fleet/domicile.yaml"), {}), env={})


def _census() -> Census:
    c = Census()
    for j, store, ds, records, violating, conflicts in [
        ("US", "sg", "users", 100, 100, 0),
        ("US", "sg", "videos", 300, 250, 0),
        ("US", "sg", "comments", 40, 40, 0),
        ("US", "us", "users", 10, 0, 0),
        ("CA", "sg", "users", 20, 20, 0),
        ("CA", "us", "videos", 8, 8, 0),
        ("CA", "sg", "comments", 5, 0, 5),
    ]:
        c.cells[(j, store, ds)] = Cell(
            j, store, ds, records, records * 100, violating, 0, conflicts
        )
    return c


FKS = [
    ForeignKey("videos", "sg", ("user_id",), "users"),
    ForeignKey("videos", "sg", ("sound_id",), "sounds"),
    ForeignKey("comments", "sg", ("video_id",), "videos"),
]


@pytest.mark.parametrize(("name", "scope"), [("plan_all", None), ("plan_us", ["US"])])
def test_plan_matches_golden(name, scope):
    plan = build_plan(_map(), _census(), FKS, scope, batch_size=100).to_json()
    golden = GOLDEN / f"{name}.json"
    assert plan == json.loads(golden.read_text())


def test_foreign_key_to_an_undeclared_table_blocks_the_plan():
    fks = [*FKS, ForeignKey("videos", "sg", ("studio_id",), "studios")]
    plan = build_plan(_map(), _census(), fks)
    assert len(plan.blockers) == 1
    assert "references table 'studios'" in plan.blockers[0]
    assert "reference: true" in plan.blockers[0]


def test_cycle_between_datasets_is_a_clear_error():
    with pytest.raises(ConfigError, match="cycle"):
        order_datasets(["a", "b"], {"a": {"b"}, "b": {"a"}})


def test_unknown_jurisdiction_in_scope():
    with pytest.raises(ConfigError, match="jurisdiction 'MX' is not in the map"):
        build_plan(_map(), _census(), FKS, ["MX"])


def test_each_move_is_estimated_at_its_engine_pair_rate():
    text = MAP.replace('"sqlite:///us.db"', '"postgresql://db.example/us"')
    m = build_map(yaml.safe_load(text), Located(Path("/fleet/domicile.yaml"), {}), env={})
    plan = build_plan(m, _census(), FKS, ["US", "CA"], batch_size=100)
    rates = {(mv.source, mv.target): mv.rate for mv in plan.moves}
    assert rates[("sg", "us")] == RATES[("sqlite", "postgresql")]
    assert rates[("sg", "ca")] == RATES[("sqlite", "sqlite")]
    expected = sum(mv.records / mv.rate for mv in plan.moves)
    assert plan.estimate_seconds == pytest.approx(expected)
    # an explicit rate applies to every move
    flat = build_plan(m, _census(), FKS, ["US", "CA"], batch_size=100, rate=100.0)
    assert flat.estimate_seconds == pytest.approx(flat.records / 100.0)
