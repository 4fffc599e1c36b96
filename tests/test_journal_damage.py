"""A damaged journal (garbled JSON in a key, counts or targets field) stops every command
that reads it with exit 5 and a message — never a traceback — and nothing is changed.

Regression: garbled JSON in a batch's key range made ``status RUN`` and ``run`` end in a
raw ``JSONDecodeError`` traceback (exit 1), and the failed ``run`` had already opened a
new run record.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import fleetkit
from domicile.cli import run_cli

# (column, garbled value): fields a batch record's readers parse; the first two are read
# by every command that lists batches, the rows' fields by those that read the rows
DAMAGE = {
    "hi": "{garbled",
    "counts": "{x",
    "row_keys": "[[1,",
    "row_targets": "not json",
}
LISTED = ("hi", "counts")


def _hashes(tmp: Path) -> dict[str, Any]:
    """Every store's file by hash (exit 5: nothing may have been written at all)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(tmp.glob("*.db"))}


def _records(tmp: Path) -> dict[str, Any]:
    """Every store's user tables, row by row (a run that moves nothing may still write
    its own bookkeeping: identity markers, sequences)."""
    out: dict[str, Any] = {}
    for db in sorted(tmp.glob("*.db")):
        engine = sa.create_engine(f"sqlite:///{db}")
        with engine.connect() as conn:
            for table in sa.inspect(conn).get_table_names():
                if not table.startswith("domicile"):
                    rows = conn.exec_driver_sql(f'SELECT * FROM "{table}"').all()
                    out[f"{db.name}:{table}"] = sorted(map(repr, rows))
        engine.dispose()
    return out


@pytest.mark.parametrize("column", list(DAMAGE))
def test_a_garbled_journal_field_is_a_clear_exit_5(tmp_path, capsys, column):
    urls = {s: f"sqlite:///{tmp_path / (s + '.db')}" for s in ("sg", "us", "ca")}
    path = fleetkit.build(tmp_path, urls)
    assert run_cli(["run", "-c", str(path)]) in (0, 4)
    state = sa.create_engine(f"sqlite:///{tmp_path / '.domicile' / 'state.db'}")
    with state.begin() as conn:
        run_id = conn.exec_driver_sql("SELECT id FROM domicile_runs").scalar_one()
        conn.exec_driver_sql(
            f"UPDATE domicile_batches SET {column} = ? WHERE id = (SELECT min(id) FROM "
            "domicile_batches)",
            (DAMAGE[column],),
        )
    state.dispose()
    before, records = _hashes(tmp_path), _records(tmp_path)
    capsys.readouterr()
    commands = [
        ["status", run_id],
        ["run"],
        ["report", run_id, "-o", str(tmp_path / "report.html")],
        ["audit", "verify"],
    ]
    for args in commands:
        code = run_cli([*args, "-c", str(path)])
        out = capsys.readouterr()
        text = out.out + out.err
        assert "Traceback" not in text, text
        must_refuse = args[0] == "audit" or column in LISTED
        assert code == 5 if must_refuse else code in (0, 4, 5), (args, code, text)
        if code == 5:
            assert "the journal is damaged" in text or "does not match its MAC" in text, text
        if code == 5:
            assert _hashes(tmp_path) == before, args  # refused: no store touched
        before = _hashes(tmp_path)
        assert _records(tmp_path) == records, args  # nothing moved, nothing lost
    with sa.create_engine(f"sqlite:///{tmp_path / '.domicile' / 'state.db'}").connect() as conn:
        runs = conn.exec_driver_sql("SELECT count(*) FROM domicile_runs").scalar_one()
    if column in LISTED:
        assert runs == 1  # no new run was opened on a journal that cannot be read
