"""Bad input: every case exits 2 with a message naming what, where and how to fix it."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

import fleetkit
from conftest import tally
from domicile.cli import run_cli


@pytest.fixture(autouse=True)
def _tally_input(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    tally(request, "hostile inputs refused without a traceback", 1)


def _fleet(tmp_path: Path) -> dict:
    urls = {}
    for s in ("sg", "us", "ca"):
        urls[s] = f"sqlite:///{tmp_path / (s + '.db')}"
    fleetkit.build(tmp_path, urls)
    return fleetkit.data_map(urls)


def _write(tmp_path: Path, data: dict | str) -> Path:
    path = tmp_path / "domicile.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = run_cli(list(args))
    out = capsys.readouterr()
    return code, out.out + out.err


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_yaml_syntax_error_names_the_line(tmp_path, capsys):
    path = _write(tmp_path, "version: 1\nstores:\n  a: {url: [unclosed\n  b: 2\n")
    code, out = _run(capsys, "check", "-c", str(path))
    assert code == 2
    assert "domicile.yaml:" in out and "YAML syntax error" in out
    assert "Traceback" not in out


def test_missing_map_file(tmp_path, capsys):
    code, out = _run(capsys, "scan", "-c", str(tmp_path / "nope.yaml"))
    assert code == 2 and "data map not found" in out and "discover" in out


def test_unknown_key_suggests_the_right_one(tmp_path, capsys):
    data = _fleet(tmp_path)
    data["datasets"]["likes"]["ownr"] = data["datasets"]["likes"].pop("owner")
    code, out = _run(capsys, "check", "-c", str(_write(tmp_path, data)))
    assert code == 2
    assert "datasets.likes.ownr: unknown key 'ownr'" in out
    assert "did you mean 'owner'?" in out


def test_unknown_store_in_home_lists_defined_stores(tmp_path, capsys):
    data = _fleet(tmp_path)
    data["jurisdictions"]["US"]["home"] = ["us-tx"]
    code, out = _run(capsys, "check", "-c", str(_write(tmp_path, data)))
    assert code == 2
    assert "jurisdictions.US.home: store 'us-tx' is not defined (defined: sg, us, ca)" in out
    # the line of the US jurisdiction's home key in the written YAML
    lines = (tmp_path / "domicile.yaml").read_text().splitlines()
    us = next(i for i, text in enumerate(lines) if text.strip() == "US:")
    home = next(i for i in range(us, len(lines)) if lines[i].strip().startswith("home:"))
    assert f"domicile.yaml:{home + 1} " in out


def test_unknown_dataset_in_exception(tmp_path, capsys):
    data = _fleet(tmp_path)
    data["exceptions"][0]["dataset"] = "post"
    code, out = _run(capsys, "scan", "-c", str(_write(tmp_path, data)))
    assert code == 2 and "dataset 'post' is not defined" in out and "did you mean 'posts'" in out


def test_unknown_key_column(tmp_path, capsys):
    data = _fleet(tmp_path)
    data["datasets"]["likes"]["key"] = ["user_id", "postid"]
    code, out = _run(capsys, "check", "-c", str(_write(tmp_path, data)))
    assert code == 2
    assert (
        "key 'postid' is not a column of table 'likes'" in out and "did you mean 'post_id'" in out
    )


def test_missing_environment_variable(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DOMICILE_TEST_NOPE", raising=False)
    data = _fleet(tmp_path)
    data["stores"]["us"]["url"] = "postgresql://app:${DOMICILE_TEST_NOPE}@127.0.0.1/app"
    code, out = _run(capsys, "check", "-c", str(_write(tmp_path, data)))
    assert code == 2
    assert "environment variable DOMICILE_TEST_NOPE is not set" in out
    assert "stores.us.url" in out


def test_unreachable_database_fails_fast_and_masks_the_password(tmp_path, capsys):
    data = _fleet(tmp_path)
    data["stores"]["us"]["url"] = f"postgresql://app:s3cret@127.0.0.1:{_closed_port()}/app"
    code, out = _run(capsys, "check", "-c", str(_write(tmp_path, data)))
    assert code == 2
    assert "FAIL  us" in out and "is the server running" in out
    assert "s3cret" not in out and "***" in out


def test_missing_table_in_a_named_store(tmp_path, capsys):
    data = _fleet(tmp_path)
    data["datasets"]["posts"]["stores"] = ["sg", "us"]
    code, out = _run(capsys, "scan", "-c", str(_write(tmp_path, data)))
    assert code == 2
    assert "table 'posts' does not exist in store us" in out


def test_table_in_no_store(tmp_path, capsys):
    data = _fleet(tmp_path)
    data["datasets"]["posts"] = {"table": "postz", "key": ["id"], "owner": "user_id"}
    code, out = _run(capsys, "scan", "-c", str(_write(tmp_path, data)))
    assert code == 2 and "table 'postz' is in no SQL store" in out


def test_owner_path_through_missing_column(tmp_path, capsys):
    data = _fleet(tmp_path)
    data["datasets"]["lines"]["owner"] = "invoice_id -> invoice.invoice_id -> custmer_id"
    code, out = _run(capsys, "scan", "-c", str(_write(tmp_path, data)))
    assert code == 2
    assert "owner path column 'custmer_id' is not a column of table 'invoice'" in out
    assert "did you mean 'customer_id'" in out


def test_owner_path_through_missing_table(tmp_path, capsys):
    data = _fleet(tmp_path)
    data["datasets"]["lines"]["owner"] = "invoice_id -> invoices.invoice_id -> customer_id"
    code, out = _run(capsys, "check", "-c", str(_write(tmp_path, data)))
    assert code == 2 and "goes through table 'invoices'" in out


def test_malformed_owner_path(tmp_path, capsys):
    data = _fleet(tmp_path)
    data["datasets"]["lines"]["owner"] = "invoice_id -> invoice -> customer_id"
    code, out = _run(capsys, "check", "-c", str(_write(tmp_path, data)))
    assert code == 2 and "must be table.column" in out


def test_home_outside_its_own_rule(tmp_path, capsys):
    data = _fleet(tmp_path)
    data["jurisdictions"]["US"]["home"] = ["sg"]
    code, out = _run(capsys, "check", "-c", str(_write(tmp_path, data)))
    assert code == 2 and "is not allowed by the jurisdiction's own rule" in out


def test_missing_sqlite_file(tmp_path, capsys):
    data = _fleet(tmp_path)
    data["stores"]["ca"]["url"] = "sqlite:///nowhere/ca.db"
    code, out = _run(capsys, "check", "-c", str(_write(tmp_path, data)))
    assert code == 2 and "SQLite file" in out and "does not exist" in out


def test_unknown_country_in_jurisdiction(tmp_path, capsys):
    data = _fleet(tmp_path)
    data["jurisdictions"]["US"]["countries"] = ["Atlantis"]
    code, out = _run(capsys, "check", "-c", str(_write(tmp_path, data)))
    assert code == 2 and "'Atlantis' is not a country" in out


def test_check_ok_prints_one_line_per_store(tmp_path, capsys):
    path = _write(tmp_path, _fleet(tmp_path))
    code, out = _run(capsys, "check", "-c", str(path))
    assert code == 0, out
    assert sum(1 for line in out.splitlines() if line.strip().startswith("ok")) == 3


def test_norway_stays_a_country_code(tmp_path, capsys):
    data = _fleet(tmp_path)
    text = yaml.safe_dump(data, sort_keys=False).replace("country: CA", "country: 'CA'")
    text = text.replace("countries:\n    - CA", "countries:\n    - NO")
    path = _write(tmp_path, text)
    code, out = _run(capsys, "check", "-c", str(path))
    assert code == 0, out


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"lock_timeout_seconds": "abc"}, "option lock_timeout_seconds must be a positive number"),
        ({"read_timeout_seconds": -1}, "option read_timeout_seconds must be a positive number"),
        ({"statement_timeout_seconds": 1.5}, "statement_timeout_seconds must be a positive"),
        ({"lock_timeout_seconds": True}, "lock_timeout_seconds must be a positive number"),
        ({"pool_size": 5}, "unknown option 'pool_size'"),
    ],
)
def test_bad_sql_store_options_are_refused_before_anything_runs(tmp_path, capsys, options, message):
    """Regression: a non-numeric timeout option was a raw ValueError traceback."""
    data = _fleet(tmp_path)
    data["stores"]["sg"]["options"] = options
    before = (tmp_path / "sg.db").read_bytes()
    for command in ("check", "run"):
        code, out = _run(capsys, command, "-c", str(_write(tmp_path, data)))
        assert code == 2 and message in out and "stores.sg.options" in out, out
        assert "Traceback" not in out
    assert (tmp_path / "sg.db").read_bytes() == before


def test_sql_store_options_from_the_environment_are_numbers(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LOCK_S", "12")
    data = _fleet(tmp_path)
    data["stores"]["sg"]["options"] = {"lock_timeout_seconds": "${LOCK_S}"}
    code, out = _run(capsys, "check", "-c", str(_write(tmp_path, data)))
    assert code == 0, out
