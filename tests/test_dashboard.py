"""The dashboard at `/` of a served demo fleet, in headless Chromium (Debian's package).

The demo fleet is built small (60 users, no media), brought home, scanned;
one principal is refused once.  The page must show the residency matrix
(the report's heatmap), the run, the latest checkpoint as verified, and the
denial; the screenshot is saved as artifacts/dashboard.png.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import servekit
from browserkit import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, require_chromium
from domicile import api
from domicile.demo import build_demo

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    path = build_demo(tmp_path_factory.mktemp("dashboard"), users=60, seed=7, media=False)
    assert api.run(path).status == "done"
    api.scan(path)
    _, token = api.add_principal(path, "abroad", "reader", employer="legacy", country="SG")
    with servekit.serving(path) as (url, _service):
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as c:
            refused = c.get("/v1/subjects/1/records", params={"dataset": "users"})
            assert refused.status_code == 403
        yield url, path


def test_the_page_has_every_section(dashboard):
    url, _ = dashboard
    with httpx.Client(base_url=url) as c:
        r = c.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    for ident in ('id="matrix"', 'class="heatmap"', 'id="runs"', 'id="checkpoint-status"'):
        assert ident in html, ident
    assert 'id="denials"' in html and "abroad" in html and "no policy permits" in html
    assert 'id="guard-status"' in html
    assert "<script" not in html  # server-rendered, nothing to run


@pytest.mark.browser
def test_the_dashboard_in_a_browser(dashboard):
    require_chromium()
    from playwright.sync_api import sync_playwright

    url, _ = dashboard
    ARTIFACTS.mkdir(exist_ok=True)
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            page.on("request", lambda r: requests.append(r.url))
            page.goto(url + "/")
            matrix = page.locator("#matrix svg.heatmap")
            assert matrix.is_visible()
            assert page.locator("#matrix .cell").count() > 0
            assert page.locator("#matrix .cell-violating").count() == 0  # all home
            assert page.locator("#runs tr.run").count() == 1
            assert "done" in page.locator("#runs").inner_text()
            status = page.locator("#checkpoint-status").inner_text()
            assert status.startswith("Verifies"), status
            denial = page.locator("#denials tr.denial").first
            assert denial.is_visible() and "abroad" in denial.inner_text()
            assert "403" in denial.inner_text()
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        finally:
            browser.close()
    assert all(u.startswith(url) for u in requests), requests  # nothing from elsewhere
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
