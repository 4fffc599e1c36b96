"""``domicile audit`` and ``domicile keys`` through Typer's CliRunner, and the key store."""

from __future__ import annotations

import hashlib
import hmac
import json
import stat
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from domicile import keys
from domicile.audit import merkle
from domicile.audit.cli import audit_app, keys_app
from domicile.audit.log import AuditLog, entries_table
from domicile.audit.note import Checkpoint, parse_note
from domicile.errors import ConfigError
from domicile.state import state_engine

runner = CliRunner()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A data map with keys and an audit log of 20 entries, 15 of them checkpointed."""
    config = tmp_path / "domicile.yaml"
    config.write_text("version: 1\nstate: sqlite:///.domicile/state.db\n")
    assert runner.invoke(keys_app, ["init", "-c", str(config)]).exit_code == 0
    engine = state_engine("sqlite:///.domicile/state.db", tmp_path)
    log = AuditLog(engine, "domicile/test")
    log.append_many({"event": "batch.done", "batch": i} for i in range(15))
    engine.dispose()
    first = ["checkpoint", "--origin", "domicile/test", "-c", str(config)]
    assert runner.invoke(audit_app, first).exit_code == 0
    engine = state_engine("sqlite:///.domicile/state.db", tmp_path)
    AuditLog(engine, "domicile/test").append_many({"event": "x", "n": i} for i in range(5))
    engine.dispose()
    return config


def state(config: Path) -> sa.Engine:
    return state_engine("sqlite:///.domicile/state.db", config.parent)


def test_verify_passes_on_an_intact_log(project: Path) -> None:
    result = runner.invoke(audit_app, ["verify", "-c", str(project)])
    assert result.exit_code == 0, result.output
    assert "20 entries, 1 checkpoints" in result.stdout
    assert "tree size 15" in result.stdout
    assert "5 entries are not covered" in result.stdout


def test_verify_exits_5_and_names_the_entry_when_tampered(project: Path) -> None:
    engine = state(project)
    with engine.begin() as conn:
        conn.execute(
            entries_table.update().where(entries_table.c.idx == 7).values(entry=b'{"batch":70}')
        )
    engine.dispose()
    result = runner.invoke(audit_app, ["verify", "-c", str(project)])
    assert result.exit_code == 5
    assert "audit entry 7" in result.stderr
    assert "Traceback" not in result.output


def test_verify_exits_5_with_a_key_that_did_not_sign(project: Path, tmp_path: Path) -> None:
    other = keys.init_keys(tmp_path / "other")
    result = runner.invoke(
        audit_app, ["verify", "-c", str(project), "--public-key", str(other.public_key)]
    )
    assert result.exit_code == 5
    assert "checkpoint 1 (tree size 15)" in result.stderr


def test_prove_prints_an_inclusion_proof_that_verifies(project: Path) -> None:
    result = runner.invoke(audit_app, ["prove", "3", "--size", "15", "-c", str(project)])
    assert result.exit_code == 0, result.output
    proof = json.loads(result.stdout)
    assert (proof["index"], proof["tree_size"]) == (3, 15)
    entry = proof["entry"].encode()
    assert json.loads(entry)["batch"] == 3
    assert proof["leaf_hash"] == hashlib.sha256(b"\x00" + entry).hexdigest()
    # The root is the signed one.
    engine = state(project)
    note = AuditLog(engine, "domicile/test").latest_checkpoint()
    engine.dispose()
    assert note is not None
    assert Checkpoint.parse(parse_note(note).text).root.hex() == proof["root"]
    hashes = [bytes.fromhex(h) for h in proof["hashes"]]
    root, leaf = bytes.fromhex(proof["root"]), bytes.fromhex(proof["leaf_hash"])
    assert merkle.verify_inclusion(3, 15, leaf, hashes, root)
    assert not merkle.verify_inclusion(4, 15, leaf, hashes, root)
    # Default size: the whole log.
    whole = json.loads(runner.invoke(audit_app, ["prove", "3", "-c", str(project)]).stdout)
    assert whole["tree_size"] == 20


def test_prove_out_of_range_is_bad_input(project: Path) -> None:
    result = runner.invoke(audit_app, ["prove", "20", "-c", str(project)])
    assert result.exit_code == 2
    assert "entry 20" in result.stderr and "Traceback" not in result.output


def test_consistency_prints_a_proof_that_verifies(project: Path) -> None:
    result = runner.invoke(audit_app, ["consistency", "15", "20", "-c", str(project)])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert (out["old_size"], out["new_size"]) == (15, 20)
    hashes = [bytes.fromhex(h) for h in out["hashes"]]
    old, new = bytes.fromhex(out["old_root"]), bytes.fromhex(out["new_root"])
    assert merkle.verify_consistency(15, 20, old, new, hashes)
    assert runner.invoke(audit_app, ["consistency", "20", "15", "-c", str(project)]).exit_code == 2


def test_export_then_verify_from_the_folder_with_only_the_public_key(
    project: Path, tmp_path: Path
) -> None:
    out = tmp_path / "handed-out"
    result = runner.invoke(audit_app, ["export", str(out), "-c", str(project)])
    assert result.exit_code == 0, result.output
    assert "exported 20 entries and 1 checkpoints" in result.stdout
    # An auditor's machine: no data map, no state store, only the folder and the key.
    pub = tmp_path / "trusted.pub"
    pub.write_text((project.parent / ".domicile" / "keys" / "audit.pub").read_text())
    (project.parent / ".domicile" / "state.db").unlink()
    nowhere = tmp_path / "nowhere" / "domicile.yaml"
    args = ["verify", "--from", str(out), "--public-key", str(pub), "-c", str(nowhere)]
    result = runner.invoke(audit_app, args)
    assert result.exit_code == 0, result.output
    assert "20 entries" in result.stdout
    entries = out / "entries.jsonl"
    entries.write_bytes(entries.read_bytes().replace(b'"batch":2,', b'"batch":3,'))
    result = runner.invoke(audit_app, args)
    assert result.exit_code == 5
    assert "checkpoints/0001.txt (tree size 15)" in result.stderr


def test_verify_from_a_folder_never_trusts_the_key_inside_it(tmp_path: Path, project: Path) -> None:
    out = tmp_path / "export"
    assert runner.invoke(audit_app, ["export", str(out), "-c", str(project)]).exit_code == 0
    nowhere = tmp_path / "nowhere" / "domicile.yaml"
    result = runner.invoke(audit_app, ["verify", "--from", str(out), "-c", str(nowhere)])
    assert result.exit_code == 2
    assert "--public-key" in result.stderr


def test_cosign_adds_a_witness_line(project: Path, tmp_path: Path) -> None:
    witness_dir = tmp_path / "witness"
    init = ["init", "--dir", str(witness_dir), "--name", "witness.example"]
    assert runner.invoke(keys_app, init).exit_code == 0
    key = witness_dir / "audit.key"
    result = runner.invoke(audit_app, ["cosign", "--key", str(key), "-c", str(project)])
    assert result.exit_code == 0, result.output
    names = [s.name for s in parse_note(result.stdout).signatures]
    assert names == ["domicile-audit", "witness.example"]
    own = project.parent / ".domicile" / "keys" / "audit.pub"
    args = ["verify", "-c", str(project), "--public-key", str(own)]
    result = runner.invoke(audit_app, [*args, "--public-key", str(witness_dir / "audit.pub")])
    assert result.exit_code == 0, result.output
    assert "domicile-audit, witness.example" in result.stdout


def test_checkpoint_prints_a_signed_note(project: Path) -> None:
    result = runner.invoke(audit_app, ["checkpoint", "-c", str(project)])
    assert result.exit_code == 0, result.output
    head = Checkpoint.parse(parse_note(result.stdout).text)
    assert (head.origin, head.size) == ("domicile/test", 20)  # the log's origin is kept
    # A data map naming another origin for the same log is refused.
    project.write_text(project.read_text() + "audit: {origin: domicile/other}\n")
    result = runner.invoke(audit_app, ["checkpoint", "-c", str(project)])
    assert result.exit_code == 2
    assert "'domicile/test', not 'domicile/other'" in result.stderr


def test_the_data_map_can_name_the_keys_folder_and_the_origin(tmp_path: Path) -> None:
    config = tmp_path / "domicile.yaml"
    config.write_text("state: sqlite:///audit.db\naudit: {keys: secrets/k, origin: domicile/x}\n")
    assert runner.invoke(keys_app, ["init", "-c", str(config)]).exit_code == 0
    assert (tmp_path / "secrets" / "k" / "audit.key").exists()
    result = runner.invoke(audit_app, ["checkpoint", "-c", str(config)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("domicile/x\n0\n")
    assert (tmp_path / "audit.db").exists()


def test_commands_without_a_data_map_are_bad_input(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    for args in (["verify"], ["prove", "0"], ["checkpoint"], ["export", str(tmp_path / "x")]):
        result = runner.invoke(audit_app, [*args, "-c", str(missing)])
        assert result.exit_code == 2, args
        assert "no data map" in result.stderr


def test_a_broken_data_map_is_reported_with_its_line(tmp_path: Path) -> None:
    config = tmp_path / "domicile.yaml"
    config.write_text("version: 1\nstate: [unclosed\n")
    result = runner.invoke(audit_app, ["verify", "-c", str(config)])
    assert result.exit_code == 2
    assert f"{config}:" in result.stderr and "Traceback" not in result.output


# -- keys -------------------------------------------------------------------------


def test_keys_init_writes_private_files_readable_by_the_owner_only(tmp_path: Path) -> None:
    config = tmp_path / "domicile.yaml"
    result = runner.invoke(keys_app, ["init", "-c", str(config)])
    assert result.exit_code == 0, result.output
    folder = tmp_path / ".domicile" / "keys"
    for name in ("audit.key", "hmac.key"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600
    assert (folder / "audit.key").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    pub = (folder / "audit.pub").read_text().strip()
    assert pub.startswith("domicile-audit+") and pub in result.stdout
    assert len(bytes.fromhex((folder / "hmac.key").read_text().strip())) == 32
    shown = runner.invoke(keys_app, ["public", "-c", str(config)])
    assert shown.exit_code == 0 and shown.stdout.strip() == pub
    signer = keys.load_signer(folder / "audit.key")
    assert signer.verifier_key() == pub


def test_keys_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    folder = tmp_path / "k"
    assert runner.invoke(keys_app, ["init", "--dir", str(folder)]).exit_code == 0
    before = (folder / "audit.key").read_bytes(), (folder / "hmac.key").read_bytes()
    result = runner.invoke(keys_app, ["init", "--dir", str(folder)])
    assert result.exit_code == 2
    assert "already exist" in result.stderr and "--force" in result.stderr
    assert ((folder / "audit.key").read_bytes(), (folder / "hmac.key").read_bytes()) == before
    result = runner.invoke(keys_app, ["init", "--dir", str(folder), "--force"])
    assert result.exit_code == 0
    assert (folder / "audit.key").read_bytes() != before[0]


def test_load_signer_needs_a_name_and_a_matching_public_key(tmp_path: Path) -> None:
    a = keys.init_keys(tmp_path / "a", name="log-a")
    b = keys.init_keys(tmp_path / "b", name="log-a")
    lone = tmp_path / "lone.key"
    lone.write_bytes(a.private_key.read_bytes())
    with pytest.raises(ConfigError, match="--name"):
        keys.load_signer(lone)
    assert keys.load_signer(lone, name="log-a").verifier_key() == a.verifier_key
    b.public_key.write_text(a.verifier_key + "\n")  # b's private key, a's public key
    with pytest.raises(ConfigError, match="does not match"):
        keys.load_signer(b.private_key)
    with pytest.raises(ConfigError):
        keys.init_keys(tmp_path / "c", name="bad name")


def test_keyed_hash_is_hmac_sha256() -> None:
    # RFC 4231 test case 2.
    assert keys.keyed_hash(b"Jefe", "what do ya want for nothing?") == (
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    )
    key = bytes(range(32))
    assert keys.keyed_hash(key, "user-42") == hmac.new(key, b"user-42", "sha256").hexdigest()
    assert keys.keyed_hash(key, b"user-42") == keys.keyed_hash(key, "user-42")
    assert keys.keyed_hash(key, "user-42") != keys.keyed_hash(key, "user-43")


def test_hmac_key_from_file_or_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = keys.init_keys(tmp_path)
    monkeypatch.delenv(keys.HMAC_ENV, raising=False)
    from_file = keys.load_hmac_key(tmp_path)
    assert from_file == bytes.fromhex(files.hmac_key.read_text())
    monkeypatch.setenv(keys.HMAC_ENV, "ab" * 32)
    assert keys.load_hmac_key(tmp_path) == b"\xab" * 32
    monkeypatch.setenv(keys.HMAC_ENV, "not hex")
    with pytest.raises(ConfigError, match="not hex"):
        keys.load_hmac_key(tmp_path)
    monkeypatch.setenv(keys.HMAC_ENV, "abcd")
    with pytest.raises(ConfigError, match="at least 16"):
        keys.load_hmac_key(tmp_path)
    monkeypatch.delenv(keys.HMAC_ENV)
    with pytest.raises(ConfigError, match="keys init"):
        keys.load_hmac_key(tmp_path / "nowhere")
