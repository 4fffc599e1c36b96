"""Logs an operator can read: global -v/-vv/-q and --log-format json, passwords masked.

Runs go through the real command line on a small SQLite fleet; what is
asserted is read from stderr (the log) and from the stores (our own SQL).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from domicile.cli import run_cli
from domicile.logs import MaskSecrets, configure, mask


def _fleet(tmp_path: Path, make_db: Callable[[str], str]) -> tuple[Path, str]:
    source, home = make_db("sqlite"), make_db("sqlite")
    md = sa.MetaData()
    users = sa.Table(
        "users",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("country", sa.String(8)),
    )
    for url in (source, home):
        engine = sa.create_engine(url)
        md.create_all(engine)
        if url == source:
            with engine.begin() as conn:
                conn.execute(users.insert(), [{"id": i, "country": "US"} for i in range(1, 31)])
        engine.dispose()
    m = {
        "version": 1,
        "state": "sqlite:///.domicile/state.db",
        "stores": {
            "sg": {"url": source, "labels": {"country": "SG"}},
            "us": {"url": home, "labels": {"country": "US"}},
        },
        "subjects": {"dataset": "users", "id": "id", "country": "country"},
        "jurisdictions": {
            "US": {"countries": ["US"], "allowed": {"country": "US"}, "home": ["us"]}
        },
        "datasets": {"users": {"table": "users", "key": ["id"], "owner": "id"}},
    }
    path = tmp_path / "domicile.yaml"
    path.write_text(yaml.safe_dump(m, sort_keys=False))
    return path, home


def _home_count(url: str) -> int:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        n = int(conn.execute(sa.text("SELECT count(*) FROM users")).scalar_one())
    engine.dispose()
    return n


@pytest.fixture(autouse=True)
def _reset_logging():  # type: ignore[no-untyped-def]
    yield
    configure()  # back to the default level for the next test in this worker


def test_debug_names_each_batch_transition(
    tmp_path: Path, make_db: Callable[[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    path, home = _fleet(tmp_path, make_db)
    assert run_cli(["-vv", "run", "-c", str(path), "--batch-size", "10"]) == 0
    err = capsys.readouterr().err
    assert _home_count(home) == 30
    for step in ("copying -> copied", "copied -> verified", "verified -> done"):
        assert f"batch 1 (users from sg): {step}" in err, err
    assert "batch 3 (users from sg): verified -> done" in err


def test_json_lines_are_json_and_quiet_is_quiet(
    tmp_path: Path, make_db: Callable[[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = _fleet(tmp_path, make_db)
    assert run_cli(["-vv", "--log-format", "json", "run", "-c", str(path)]) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    records = [json.loads(ln) for ln in lines]  # every stderr line is one JSON object
    assert any(r["message"].endswith("copying -> copied") for r in records)
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    assert run_cli(["-q", "scan", "-c", str(path)]) == 0
    assert capsys.readouterr().err == ""


def test_a_bad_log_format_is_bad_input(tmp_path: Path) -> None:
    assert run_cli(["--log-format", "xml", "scan", "-c", str(tmp_path / "none.yaml")]) == 2


def test_passwords_in_urls_are_masked() -> None:
    assert (
        mask("cannot reach postgresql+psycopg://app:s3cr%40t@db:5432/x")
        == "cannot reach postgresql+psycopg://app:***@db:5432/x"
    )
    assert mask("mysql://root@h/x and s3://bucket/key") == "mysql://root@h/x and s3://bucket/key"
    record = logging.LogRecord(
        "domicile.x", logging.WARNING, __file__, 1, "to %s", ("pg://u:p@h",), None
    )
    assert MaskSecrets().filter(record) and record.getMessage() == "to pg://u:***@h"
