"""The residency report: its data against the run's own records, its page, in a browser."""

from __future__ import annotations

import copy
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from browserkit import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, require_chromium
from domicile.audit.log import AuditLog, stored_origin
from domicile.cli import run_cli
from domicile.datamap import load_map
from domicile.demo import build_demo
from domicile.errors import ConfigError
from domicile.model import DataMap
from domicile.report import render_html, report_data, write_report
from domicile.run.journal import Journal
from domicile.state import state_engine

FIELDS = ("records", "bytes", "violating", "excepted", "conflicts")


class FinishedRun:
    """A demo fleet after one finished run, with what the tests read from it."""

    def __init__(self, m: DataMap, engine: sa.Engine):
        self.map = m
        self.engine = engine
        self.journal = Journal(engine)
        self.run = self.journal.runs()[-1]
        self.data = report_data(m, self.journal, engine, None)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = build_demo(tmp_path_factory.mktemp("report") / "demo", users=150)
    code = run_cli(["run", "-c", str(path)])
    assert code == 0, "the demo run did not finish"
    m = load_map(path)
    engine = state_engine(m.state, m.base_dir)
    yield FinishedRun(m, engine)
    engine.dispose()


def _by_pair(census: dict[str, Any]) -> dict[tuple[str, str], dict[str, int]]:
    """The census cells summed over datasets, per (jurisdiction, store)."""
    out: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: dict.fromkeys(FIELDS, 0))
    for c in census["cells"]:
        for f in FIELDS:
            out[(c["jurisdiction"], c["store"])][f] += c[f]
    return dict(out)


# -- the data -----------------------------------------------------------------


def test_report_data_describes_the_run(fleet: FinishedRun) -> None:
    data, run = fleet.data, fleet.run
    json.dumps(data)  # JSON-ready: what `domicile report --json` prints
    assert data["run"]["id"] == run.id
    assert data["run"]["status"] == "done"
    assert data["run"]["scope"] == ["US", "CA", "AU", "NZ"]
    assert data["run"]["map_digest"] == run.map_digest
    assert data["run"]["map_changed"] is False
    residual = data["residual"]
    assert residual["violations_before"] > 0
    assert residual["violations_after"] == 0
    assert residual["verified"] is True
    assert (
        residual["statement"] == "0 records of US, CA, AU, NZ remain outside their allowed stores."
    )
    # what moved is what the batches say
    batches = fleet.journal.batches(run.id)
    assert data["moves"]["totals"]["moved"] == sum(b.counts.get("deleted", 0) for b in batches)
    assert data["moves"]["totals"]["moved"] > 0


def test_matrices_are_the_runs_census(fleet: FinishedRun) -> None:
    summary = fleet.run.summary
    assert summary is not None
    for side in ("before", "after"):
        expected = _by_pair(summary[side])
        matrix = fleet.data["matrix"][side]
        cells = {(c["jurisdiction"], c["store"]): c for c in matrix["cells"]}
        assert set(expected) <= set(cells)
        for key, cell in cells.items():
            want = expected.get(key, dict.fromkeys(FIELDS, 0))
            assert {f: cell[f] for f in FIELDS} == want, (side, key)
        # every row's shares add up to the whole row
        for row in matrix["rows"]:
            shares = [
                c["share"] for c in matrix["cells"] if c["jurisdiction"] == row["jurisdiction"]
            ]
            assert sum(shares) == pytest.approx(1.0, abs=0.01)
    before = {(c["jurisdiction"], c["store"]): c for c in fleet.data["matrix"]["before"]["cells"]}
    assert before[("US", "sg-main")]["violating"] > 0
    assert before[("US", "sg-main")]["allowed"] is False
    assert before[("US", "us-tx")]["allowed"] is True
    after = fleet.data["matrix"]["after"]["cells"]
    assert sum(c["violating"] for c in after) == 0


def test_the_exceptions_register_marks_the_expired_one(fleet: FinishedRun) -> None:
    register = {x["dataset"]: x for x in fleet.data["exceptions"]}
    assert register["videos"]["active"] is True
    assert register["videos"]["approved_by"] == "Chief Privacy Officer"
    assert register["videos"]["records"] > 0  # public videos stay abroad under it
    expired = register["login_events"]
    assert expired["active"] is False and expired["status"] == "expired"
    assert expired["expires"] == "2025-12-31"
    assert expired["records_before"] > 0 and expired["records"] == 0  # moved home regardless


def test_the_checkpoint_is_the_audit_logs_latest(fleet: FinishedRun) -> None:
    origin = stored_origin(fleet.engine)
    assert origin is not None
    latest = AuditLog(fleet.engine, origin).latest_checkpoint()
    assert latest is not None
    proof = fleet.data["proof"]
    assert proof["checkpoint"] == latest
    assert proof["origin"] == origin == latest.split("\n")[0]
    assert proof["signature"] == "valid"
    assert proof["log_matches"] is True
    commands = [c["command"] for c in proof["commands"]]
    assert f"domicile audit verify -c {fleet.map.path}" in commands
    assert any(c.startswith("domicile audit export ") for c in commands)
    assert any(c.startswith("domicile audit verify --from ") and "audit.pub" in c for c in commands)


def test_unresolved_and_not_covered(fleet: FinishedRun) -> None:
    after = fleet.data["unresolved"]["after"]
    # the demo has subjects with unusable countries and records without an owner
    assert after["unknown_countries"] and after["orphan_records"] > 0
    text = " ".join(fleet.data["not_covered"]["items"]) + fleet.data["not_covered"]["statement"]
    for word in ("backups", "logs", "caches", "analytics", "replicas", "not declared"):
        assert word in text.lower()


def test_a_missing_run_or_no_run_is_a_config_error(fleet: FinishedRun, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        report_data(fleet.map, fleet.journal, fleet.engine, "r-no-such-run")
    assert "not in the journal" in err.value.message and err.value.hint
    empty = sa.create_engine(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        with pytest.raises(ConfigError) as err:
            report_data(fleet.map, Journal(empty), empty, None)
        assert "no runs" in err.value.message and "domicile run" in (err.value.hint or "")
    finally:
        empty.dispose()


# -- the page -----------------------------------------------------------------


def test_the_page_is_self_contained(fleet: FinishedRun) -> None:
    page = render_html(fleet.data)
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page.lower()
    assert "<link" not in page.lower()
    assert "@import" not in page and "url(http" not in page
    for img in re.findall(r"<img\b[^>]*>", page, flags=re.I):
        assert re.search(r'src="data:', img), img
    for ident in ("matrix-before", "matrix-after", "checkpoint", "residual", "exceptions"):
        assert f'id="{ident}"' in page
    assert 'id="not-covered"' in page
    assert page.count("cell-violating") > 0
    assert "0 records of US, CA, AU, NZ remain outside their allowed stores." in page


def test_every_value_is_escaped(fleet: FinishedRun) -> None:
    data = copy.deepcopy(fleet.data)
    evil = '<script>alert("x")</script>&'
    data["exceptions"][0]["reason"] = evil
    data["exceptions"][0]["approved_by"] = evil
    data["matrix"]["before"]["columns"][0]["store"] = evil
    for cell in data["matrix"]["before"]["cells"]:
        if cell["store"] == fleet.data["matrix"]["before"]["columns"][0]["store"]:
            cell["store"] = evil
    data["proof"]["checkpoint"] = evil
    page = render_html(data)
    assert "<script" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;" in page


def test_write_report(fleet: FinishedRun, tmp_path: Path) -> None:
    out = write_report(tmp_path / "sub" / "report.html", fleet.data)
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


# -- in a browser ---------------------------------------------------------------


@pytest.mark.browser
def test_the_report_in_a_browser(fleet: FinishedRun, tmp_path: Path) -> None:
    require_chromium()
    from playwright.sync_api import sync_playwright

    report = write_report(tmp_path / "report.html", fleet.data)
    origin = fleet.data["proof"]["checkpoint"].split("\n")[0]
    ARTIFACTS.mkdir(exist_ok=True)
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("request", lambda r: requests.append(r.url))
            page.goto(report.resolve().as_uri())
            for ident in ("#matrix-before", "#matrix-after", "#checkpoint", "#residual"):
                assert page.locator(ident).is_visible(), ident
            assert page.locator("#matrix-before .cell-violating").count() > 0
            assert page.locator("#matrix-after .cell-violating").count() == 0
            assert page.locator("#matrix-after .cell").count() > 0
            assert origin in page.locator("#checkpoint").inner_text()
            assert "0 records of" in page.locator("#residual").inner_text()
            assert page.locator("#exceptions tr.expired").count() == 1
            # nothing overflows the page sideways (a picture too wide, a long line)
            overflow = page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 0
            page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        finally:
            browser.close()
    # the page asked for nothing but itself
    assert all(url.startswith(("file:", "data:")) for url in requests), requests
