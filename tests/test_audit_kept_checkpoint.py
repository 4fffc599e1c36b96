"""``audit verify --checkpoint FILE``: a checkpoint kept outside the state store.

Whoever can write the state store can delete every entry and every checkpoint
together; the log then verifies as empty.  A checkpoint the operator keeps
elsewhere (printed by ``domicile audit checkpoint``) turns that into exit 5:
the log must be at least as large as the kept checkpoint and hold the entries
it signed.  The state store is changed here with our own SQL.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from domicile import keys
from domicile.audit.cli import audit_app, keys_app
from domicile.audit.log import AuditLog, checkpoints_table, entries_table
from domicile.state import state_engine

runner = CliRunner()
STATE = "sqlite:///.domicile/state.db"


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, Path]:
    """A map with keys, a log of 20 entries, and the checkpoint of its first 15 kept in a file."""
    config = tmp_path / "domicile.yaml"
    config.write_text(f"version: 1\nstate: {STATE}\n")
    assert runner.invoke(keys_app, ["init", "-c", str(config)]).exit_code == 0
    engine = state_engine(STATE, tmp_path)
    AuditLog(engine, "domicile/test").append_many({"event": "e", "n": i} for i in range(15))
    engine.dispose()
    result = runner.invoke(
        audit_app, ["checkpoint", "--origin", "domicile/test", "-c", str(config)]
    )
    assert result.exit_code == 0, result.output
    kept = tmp_path / "kept" / "checkpoint-15.txt"
    kept.parent.mkdir()
    kept.write_text(result.stdout)
    engine = state_engine(STATE, tmp_path)
    AuditLog(engine, "domicile/test").append_many({"event": "x", "n": i} for i in range(5))
    engine.dispose()
    return config, kept


def _verify(config: Path, *extra: str) -> object:
    return runner.invoke(audit_app, ["verify", "-c", str(config), *extra])


def _sql(config: Path, *statements: sa.Executable) -> None:
    engine = state_engine(STATE, config.parent)
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(statement)
    engine.dispose()


def test_an_intact_log_holds_the_kept_checkpoint(project: tuple[Path, Path]) -> None:
    config, kept = project
    result = _verify(config, "--checkpoint", str(kept))
    assert result.exit_code == 0, result.output
    assert "20 entries" in result.stdout
    assert f"checkpoint file {kept}: the log holds it" in result.stdout


def test_a_wiped_log_verifies_empty_alone_but_not_against_the_kept_checkpoint(
    project: tuple[Path, Path],
) -> None:
    config, kept = project
    _sql(config, sa.delete(entries_table), sa.delete(checkpoints_table))
    alone = _verify(config)
    assert alone.exit_code == 0  # nothing inside the store says anything is missing
    assert "0 entries" in alone.stdout
    result = _verify(config, "--checkpoint", str(kept))
    assert result.exit_code == 5
    assert "signs 15 entries but the log holds 0" in result.stderr
    assert "Traceback" not in result.output


def test_dropped_audit_tables_are_tampering_against_the_kept_checkpoint(
    project: tuple[Path, Path],
) -> None:
    config, kept = project
    engine = state_engine(STATE, config.parent)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE {entries_table.name}")
        conn.exec_driver_sql(f"DROP TABLE {checkpoints_table.name}")
    engine.dispose()
    assert _verify(config).exit_code == 2  # no audit log: bad input without a kept checkpoint
    result = _verify(config, "--checkpoint", str(kept))
    assert result.exit_code == 5
    assert "no audit log" in result.stderr and "15 entries" in result.stderr


def test_a_log_cut_back_and_regrown_does_not_match_the_kept_checkpoint(
    project: tuple[Path, Path],
) -> None:
    """Entries 10.. deleted with every checkpoint, then new entries appended: the log is
    larger than the kept checkpoint again, but not the log it signed."""
    config, kept = project
    _sql(
        config,
        sa.delete(entries_table).where(entries_table.c.idx >= 10),
        sa.delete(checkpoints_table),
    )
    engine = state_engine(STATE, config.parent)
    AuditLog(engine, "domicile/test").append_many({"event": "forged", "n": i} for i in range(12))
    engine.dispose()
    assert _verify(config).exit_code == 0
    result = _verify(config, "--checkpoint", str(kept))
    assert result.exit_code == 5
    assert "not the ones the checkpoint kept outside signed" in result.stderr


def test_a_kept_checkpoint_signed_by_another_key_forged_or_unreadable_is_refused(
    project: tuple[Path, Path], tmp_path: Path
) -> None:
    config, kept = project
    # the same log's head, signed by a key the verifier does not trust
    other = keys.init_keys(tmp_path / "other")
    engine = state_engine(STATE, config.parent)
    foreign = AuditLog(engine, "domicile/test").checkpoint(keys.load_signer(other.private_key))
    engine.dispose()
    _sql(config, sa.delete(checkpoints_table).where(checkpoints_table.c.tree_size == 20))
    signed_elsewhere = tmp_path / "foreign.txt"
    signed_elsewhere.write_text(foreign)
    result = _verify(config, "--checkpoint", str(signed_elsewhere))
    assert result.exit_code == 5
    assert f"checkpoint file {signed_elsewhere}" in result.stderr
    # a kept note whose signed size was edited
    lines = kept.read_text().split("\n")
    lines[1] = "20"
    edited = tmp_path / "edited.txt"
    edited.write_text("\n".join(lines))
    result = _verify(config, "--checkpoint", str(edited))
    assert result.exit_code == 5
    assert "does not verify" in result.stderr
    missing = _verify(config, "--checkpoint", str(tmp_path / "nope.txt"))
    assert missing.exit_code == 2
    assert "cannot read the checkpoint file" in missing.stderr
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    result = _verify(config, "--checkpoint", str(binary))
    assert result.exit_code == 2
    assert "Traceback" not in result.output
