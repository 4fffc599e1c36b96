"""The report names what may remain on disk of what a run deleted, per engine (issue 13, item 9).

A run over a fleet whose sources are a SQLite file and a PostgreSQL database
deletes from both; the report (JSON and HTML) must then list, for each of
those stores, what its engine may keep that domicile cannot erase — dead
tuples and WAL for PostgreSQL, free pages and secure_delete for SQLite — and
for every engine backups and replicas not declared as stores.  Which stores
were deleted from, and how many records, is read independently from the
stores themselves (snapshots before and after), not from the report.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import fleetkit
from conftest import _unavailable
from domicile.cli import run_cli
from domicile.connectors.dialects import MySQLDialect, PostgreSQLDialect, SQLiteDialect
from domicile.connectors.objects import LocalObjects, S3Objects
from domicile.report_html import render_html
from invariants import Snapshot, snapshot


def _gone(before: Snapshot, after: Snapshot) -> dict[str, int]:
    """Records per store that were there before and are not now (by the stores' own reads)."""
    out: dict[str, int] = {}
    for dataset, records in before.items():
        for key, places in records.items():
            now = after.get(dataset, {}).get(key, {})
            for store in places:
                if store not in now:
                    out[store] = out.get(store, 0) + 1
    return out


class Moved:
    """A finished run over sg (SQLite) and us (PostgreSQL) sources, and its reports."""

    def __init__(self, path: Path, gone: dict[str, int], data: dict[str, Any], page: str):
        self.path, self.gone, self.data, self.page = path, gone, data, page


def _report(path: Path) -> tuple[dict[str, Any], str]:
    """The latest run's report as ``domicile report --json`` prints it, and its HTML page."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert run_cli(["report", "--json", "-c", str(path)]) == 0
    data = json.loads(out.getvalue())
    html = path.parent / "report.html"
    assert run_cli(["report", "-c", str(path), "-o", str(html)]) == 0
    return data, html.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def moved(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Moved:
    """One run for the module (the reports are read, never changed, by the tests)."""
    factory = request.getfixturevalue("_pg_factory")
    if isinstance(factory, BaseException):
        _unavailable("PostgreSQL", factory)
    tmp = tmp_path_factory.mktemp("remnants")
    for name in ("sg", "ca"):
        sa.create_engine(f"sqlite:///{tmp / name}.db").connect().close()
    urls = {"sg": f"sqlite:///{tmp}/sg.db", "us": factory.new(), "ca": f"sqlite:///{tmp}/ca.db"}
    path = fleetkit.build(tmp, urls)
    before = snapshot(path)
    assert run_cli(["run", "--batch-size", "4", "-c", str(path)]) == 0
    gone = _gone(before, snapshot(path))
    data, page = _report(path)
    return Moved(path, gone, data, page)


def test_the_json_report_lists_each_deleted_from_store_with_its_engines_remnants(
    moved: Moved,
) -> None:
    # the fleet moves US and CA records out of sg, and Éloi (CA) out of us
    assert set(moved.gone) == {"sg", "us"}, moved.gone
    rem = moved.data["remnants"]
    by_store = {s["store"]: s for s in rem["stores"]}
    assert set(by_store) == set(moved.gone)
    assert {s: e["deleted"] for s, e in by_store.items()} == moved.gone
    assert by_store["sg"]["engine"] == "SQLite" and by_store["us"]["engine"] == "PostgreSQL"
    pg = " ".join(by_store["us"]["remnants"])
    for words in ("dead tuples", "VACUUM", "run --vacuum", "WAL", "archive", "replica"):
        assert words in pg, words
    lite = " ".join(by_store["sg"]["remnants"])
    for words in ("secure_delete", "free pages", "VACUUM", "run --vacuum"):
        assert words in lite, words
    every = " ".join(rem["every_store"]).lower()
    assert "backups" in every and "replicas" in every and "not declared as stores" in every
    assert "cannot erase" in rem["statement"]


def test_the_html_report_shows_the_remnants_per_store(moved: Moved) -> None:
    page = moved.page
    section = page[page.index('<section id="remnants">') :]
    section = section[: section.index("</section>")]
    assert "What may remain on disk" in section
    assert f"<h3>sg: SQLite ({moved.gone['sg']:,} deleted)</h3>" in section
    assert f"<h3>us: PostgreSQL ({moved.gone['us']:,} deleted)</h3>" in section
    assert "dead tuples" in section and "secure_delete" in section
    assert "<h3>Every store</h3>" in section and "Backups" in section
    # ca is only a home: nothing was deleted there, so it is not listed
    assert "<h3>ca:" not in section
    # the section sits before "what this report does not cover"
    assert page.index('id="remnants"') < page.index('id="not-covered"')


def test_a_run_that_deleted_nothing_lists_no_remnants(moved: Moved) -> None:
    assert run_cli(["run", "-c", str(moved.path)]) == 0  # nothing is left to move
    data, page = _report(moved.path)
    assert data["run"]["id"] != moved.data["run"]["id"]
    assert data["remnants"]["stores"] == [] and data["remnants"]["every_store"] == []
    assert "deleted nothing" in data["remnants"]["statement"]
    assert (
        'id="remnants"' in page
        and "<h3>" not in page.split('id="remnants"')[1].split("</section>")[0]
    )


def test_a_report_saved_before_remnants_were_listed_still_renders(moved: Moved) -> None:
    data = dict(moved.data)
    del data["remnants"]
    page = render_html(data)
    assert 'id="remnants"' not in page and 'id="not-covered"' in page


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        (PostgreSQLDialect, ("dead tuples", "pg_wal", "WAL archive", "replication slots")),
        (MySQLDialect, ("undo logs", "binary log", "PURGE BINARY LOGS", "redo log")),
        (SQLiteDialect, ("secure_delete", "free pages", "-wal")),
        (LocalObjects, ("file system", "snapshots")),
        (S3Objects, ("versioning", "noncurrent version", "lifecycle", "replicated")),
    ],
)
def test_every_engine_states_its_remnants(kind: Any, words: tuple[str, ...]) -> None:
    text = " ".join(kind.remnants)
    assert kind.display_name
    for w in words:
        assert w in text, (kind.__name__, w)
