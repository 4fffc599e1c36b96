"""The audit log's batched append: the bytes and roots it stores, crash safety, other writers.

Expected values come from the format as documented, computed here with json
and hashlib (``SHA-256(0x00 || entry)`` leaves, ``SHA-256(0x01 || l || r)``
nodes, RFC 6962's split at the largest power of two below n), and what is
stored is read with this test's own SQL, not through domicile.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from domicile.audit import verify as verify_module
from domicile.audit.cli import audit_app, keys_app
from domicile.audit.entries import canonical_json, encode_events
from domicile.audit.export import export_log
from domicile.audit.log import AuditLog
from domicile.audit.note import Checkpoint, Signer, parse_note, sign_note
from domicile.audit.verify import LogTampered, verify_export, verify_log
from domicile.connectors.numbered import SQLITE_ROWS_PER_STATEMENT
from domicile.errors import AuditIntegrityError, ConfigError
from domicile.state import state_engine

ORIGIN = "domicile/test"
KEY = Signer("domicile-audit", Ed25519PrivateKey.generate())
PUB = KEY.verifier_key()
runner = CliRunner()


# -- the format, computed here -------------------------------------------------


def documented_bytes(event: dict[str, Any]) -> bytes:
    """Canonical JSON as the log documents it: sorted keys, no spaces, UTF-8, no NaN."""
    return json.dumps(
        event, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def leaf(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def mth(leaves: Sequence[bytes]) -> bytes:
    """RFC 6962 Merkle tree hash, by the recursive definition."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:])).digest()


def stored(path: Path) -> list[tuple[int, bytes, bytes, str, str, str | None]]:
    """Every entry row with the test's own SQL: idx, entry, leaf hash, their types, recorded_at."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            "SELECT idx, entry, leaf_hash, typeof(entry), typeof(leaf_hash), recorded_at "
            "FROM audit_entries ORDER BY idx"
        ).fetchall()
    finally:
        conn.close()


def events(n: int, start: int = 0) -> list[dict[str, Any]]:
    """Events with every kind of JSON value, each with its own time (so bytes are comparable)."""
    return [
        {
            "type": "batch.copied",
            "batch": i,
            "dataset": ["users", "vidéos", "コメント"][i % 3],
            "count": i * 7919 % 5000,
            "ratio": i / 7,
            "big": 2**70 + i,
            "flags": [True, False, None],
            "nested": {"z": [i, {"b": 1, "a": 'tab\tquote"back\\slash\x01'}], "y": None},
            "time": f"2026-11-02T10:00:{i % 60:02d}.000000Z",
        }
        for i in range(start, start + n)
    ]


@pytest.fixture
def db(tmp_path: Path) -> Iterator[tuple[sa.Engine, Path]]:
    engine = state_engine("sqlite:///state.db", tmp_path)
    yield engine, tmp_path / "state.db"
    engine.dispose()


# -- the same bytes and roots on every path ------------------------------------


def _check_store(path: Path, expected: list[bytes]) -> None:
    rows = stored(path)
    assert [r[0] for r in rows] == list(range(len(expected)))  # contiguous from 0
    assert [r[1] for r in rows] == expected
    assert all(r[2] == leaf(r[1]) for r in rows)
    assert {(r[3], r[4]) for r in rows} == {("blob", "blob")}
    assert all(r[5] for r in rows)  # the database stamped every row


def test_batched_and_one_by_one_appends_store_the_documented_bytes(tmp_path: Path) -> None:
    evs = events(3 * SQLITE_ROWS_PER_STATEMENT + 7)
    expected = [documented_bytes(e) for e in evs]
    sizes = [1, SQLITE_ROWS_PER_STATEMENT - 1, SQLITE_ROWS_PER_STATEMENT, 2]
    sizes.append(len(evs) - sum(sizes))  # statement boundaries land everywhere
    roots = []
    for how in ("one by one", "one call", "calls of several sizes"):
        folder = tmp_path / how.replace(" ", "_")
        engine = state_engine("sqlite:///state.db", folder)
        log = AuditLog(engine, ORIGIN)
        if how == "one by one":
            assert [log.append(e) for e in evs] == list(range(len(evs)))
        elif how == "one call":
            assert log.append_many(evs) == range(len(evs))
        else:
            at = 0
            for size in sizes:
                assert log.append_many(evs[at : at + size]) == range(at, at + size)
                at += size
        _check_store(folder / "state.db", expected)
        leaves = [leaf(e) for e in expected]
        for size in (0, 1, 2, 3, 250, 251, 511, 512, 513, len(evs)):
            assert log.root(size) == mth(leaves[:size]), (how, size)
        note = log.checkpoint(KEY)
        head = Checkpoint.parse(parse_note(note).text)
        assert head.size == len(evs) and head.root == mth(leaves)
        assert base64.b64decode(note.splitlines()[2]) == mth(leaves)
        assert verify_log(engine, [PUB]).entries == len(evs)
        roots.append(head.root)
        engine.dispose()
    assert len(set(roots)) == 1


def test_an_event_without_a_time_is_stamped_once_per_call(db: tuple[sa.Engine, Path]) -> None:
    engine, path = db
    AuditLog(engine, ORIGIN).append_many([{"n": i} for i in range(300)])
    times = {json.loads(r[1])["time"] for r in stored(path)}
    assert len(times) == 1
    (stamp,) = times
    assert stamp.endswith("Z") and stamp[10] == "T"
    assert [r[1] for r in stored(path)] == [
        documented_bytes({"n": i, "time": stamp}) for i in range(300)
    ]


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=("Cs",))),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.dictionaries(st.text(max_size=6), JSON_VALUES, max_size=6), max_size=4))
def test_the_fast_encoder_gives_the_json_modules_bytes(evs: list[dict[str, Any]]) -> None:
    for e in evs:
        e.setdefault("time", "t")
    assert encode_events(evs, "now") == [documented_bytes(e) for e in evs]
    assert [canonical_json(e) for e in evs] == [documented_bytes(e) for e in evs]


def test_what_is_not_plain_json_is_refused_and_nothing_is_stored(
    db: tuple[sa.Engine, Path],
) -> None:
    engine, path = db
    log = AuditLog(engine, ORIGIN)
    circular: dict[str, Any] = {}
    circular["self"] = circular
    for bad in (
        {"x": float("nan")},
        {"x": object()},
        {1: "x", "a": 2},
        {"x": "\ud800"},  # a lone surrogate has no UTF-8
        circular,
    ):
        with pytest.raises(ConfigError):
            log.append_many([{"fine": 1}, bad])  # type: ignore[list-item]
    with pytest.raises(ConfigError):
        log.append("not a mapping")  # type: ignore[arg-type]
    assert stored(path) == []
    assert log.append({"fine": 1, "time": "t"}) == 0


# -- one call, one transaction ------------------------------------------------


CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import sqlalchemy as sa
    from domicile.audit.log import AuditLog
    from domicile.state import state_engine

    folder = Path(sys.argv[1])
    wal = folder / ".domicile" / "state.db-wal"
    engine = state_engine("sqlite:///.domicile/state.db", folder)
    log = AuditLog(engine, "domicile/test")

    def kill_once_spilled():
        # inside sqlite3_step of the batched INSERT, once the uncommitted
        # transaction has spilled pages to the WAL file
        if wal.exists() and wal.stat().st_size > 8_000_000:
            os.kill(os.getpid(), signal.SIGKILL)
        return 0

    @sa.event.listens_for(engine, "before_cursor_execute")
    def arm(conn, cursor, statement, *args):
        if statement.startswith("INSERT INTO audit_entries (entry, leaf_hash)"):
            conn.connection.dbapi_connection.set_progress_handler(kill_once_spilled, 2000)

    log.append_many({"type": "big", "n": i, "pad": "x" * 900} for i in range(40_000))
    sys.exit(3)  # not killed: the test cannot show anything
    """
)


def test_an_append_killed_inside_its_insert_leaves_none_of_its_entries(tmp_path: Path) -> None:
    config = tmp_path / "domicile.yaml"
    config.write_text("version: 1\nstate: sqlite:///.domicile/state.db\n")
    assert runner.invoke(keys_app, ["init", "-c", str(config)]).exit_code == 0
    engine = state_engine("sqlite:///.domicile/state.db", tmp_path)
    AuditLog(engine, ORIGIN).append_many({"type": "before", "n": i} for i in range(100))
    engine.dispose()
    first = runner.invoke(audit_app, ["checkpoint", "--origin", ORIGIN, "-c", str(config)])
    assert first.exit_code == 0, first.output
    db_file = tmp_path / ".domicile" / "state.db"
    before = stored(db_file)

    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == -9, (child.returncode, child.stderr)
    wal = tmp_path / ".domicile" / "state.db-wal"
    assert wal.stat().st_size > 8_000_000  # the killed transaction had written pages

    # The test's own SQL: exactly the 100 entries from before, unchanged.
    assert stored(db_file) == before and len(before) == 100
    conn = sqlite3.connect(db_file)
    try:
        assert conn.execute("SELECT count(*), max(idx) FROM audit_entries").fetchone() == (100, 99)
        assert conn.execute("SELECT count(*) FROM audit_checkpoints").fetchone() == (1,)
    finally:
        conn.close()
    result = subprocess.run(
        [sys.executable, "-m", "domicile", "audit", "verify", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "100 entries" in result.stdout

    # The log goes on from where the last committed append left it.
    engine = state_engine("sqlite:///.domicile/state.db", tmp_path)
    assert AuditLog(engine, ORIGIN).append_many([{"type": "after"}] * 3) == range(100, 103)
    engine.dispose()
    assert runner.invoke(audit_app, ["verify", "-c", str(config)]).exit_code == 0


def test_a_failed_append_stores_nothing_and_the_next_one_takes_its_place(
    db: tuple[sa.Engine, Path],
) -> None:
    engine, path = db
    log = AuditLog(engine, ORIGIN)
    first = events(5)
    log.append_many(first)
    seen: list[str] = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def fail_second_statement(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("INSERT INTO audit_entries"):
            seen.append(statement)
            if len(seen) == 2:
                raise RuntimeError("the disk went away")

    try:
        with pytest.raises(RuntimeError):
            log.append_many(events(600, start=5))  # the first statement went in
    finally:
        sa.event.remove(engine, "before_cursor_execute", fail_second_statement)
    assert [r[1] for r in stored(path)] == [documented_bytes(e) for e in first]
    then = events(3, start=100)
    assert log.append_many(then) == range(5, 8)
    expected = [documented_bytes(e) for e in first + then]
    _check_store(path, expected)
    assert log.root() == mth([leaf(e) for e in expected])


# -- other writers --------------------------------------------------------------


def test_two_writers_in_turn_stay_one_contiguous_log(tmp_path: Path) -> None:
    a_engine = state_engine("sqlite:///state.db", tmp_path)
    b_engine = state_engine("sqlite:///state.db", tmp_path)
    a, b = AuditLog(a_engine, ORIGIN), AuditLog(b_engine, ORIGIN)
    order: list[dict[str, Any]] = []
    try:
        for step, (writer, n) in enumerate([(a, 3), (b, 2), (a, 1), (a, 300), (b, 1), (a, 2)]):
            batch = events(n, start=100 * step)
            start = len(order)
            assert writer.append_many(batch) == range(start, start + n)
            order += batch
            if step == 2:  # a's root mixes its own kept leaves with b's read from the store
                assert a.root() == mth([leaf(documented_bytes(e)) for e in order])
        expected = [documented_bytes(e) for e in order]
        _check_store(tmp_path / "state.db", expected)
        root = mth([leaf(e) for e in expected])
        assert a.root() == b.root() == root
        a.checkpoint(KEY)
        assert verify_log(a_engine, [PUB]).root == root
    finally:
        a_engine.dispose()
        b_engine.dispose()


def test_an_entry_forged_past_the_end_is_never_interleaved(db: tuple[sa.Engine, Path]) -> None:
    engine, path = db
    log = AuditLog(engine, ORIGIN)
    log.append_many(events(3))
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(
            "INSERT INTO audit_entries (idx, entry, leaf_hash) VALUES (7, ?, ?)",
            (b'{"forged":1}', leaf(b'{"forged":1}')),
        )
    conn.close()
    with pytest.raises(AuditIntegrityError, match="entries below them were removed"):
        log.append_many(events(2, start=3))
    assert [r[0] for r in stored(path)] == [0, 1, 2, 7]  # nothing appended


# -- logs written before, and verification in pages ------------------------------


def _old_style_log(path: Path, evs: list[dict[str, Any]]) -> bytes:
    """A log as the per-entry code wrote it, with this test's SQL; a signed checkpoint."""
    entries = [documented_bytes(e) for e in evs]
    conn = sqlite3.connect(path)
    with conn:
        conn.executemany(
            "INSERT INTO audit_entries (idx, entry, leaf_hash) VALUES (?, ?, ?)",
            [(i, e, leaf(e)) for i, e in enumerate(entries)],
        )
        root = mth([leaf(e) for e in entries])
        note = sign_note(Checkpoint(ORIGIN, len(entries), root).text(), KEY)
        conn.execute(
            "INSERT INTO audit_checkpoints (tree_size, note, created_at) VALUES (?, ?, ?)",
            (len(entries), note, "2026-01-01 00:00:00.000000"),
        )
    conn.close()
    return root


def test_a_log_written_before_verifies_and_grows(db: tuple[sa.Engine, Path]) -> None:
    engine, path = db
    AuditLog(engine, ORIGIN)  # the tables, as every version created them
    old = events(40)
    root = _old_style_log(path, old)
    assert verify_log(engine, [PUB]).checkpoint_root == root
    log = AuditLog(engine, ORIGIN)
    new = events(300, start=40)
    assert log.append_many(new) == range(40, 340)
    log.checkpoint(KEY)
    expected = [documented_bytes(e) for e in old + new]
    _check_store(path, expected)
    result = verify_log(engine, [PUB])
    assert (result.entries, result.checkpoints) == (340, 2)
    assert result.root == mth([leaf(e) for e in expected])


@pytest.fixture
def small_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify_module, "_PAGE", 7)


DAMAGE = {
    "changed": ["UPDATE audit_entries SET entry = x'7b7d' WHERE idx = 23"],
    "removed": ["DELETE FROM audit_entries WHERE idx = 23"],
    "text entry": ["UPDATE audit_entries SET entry = CAST(entry AS TEXT) WHERE idx = 23"],
    "text leaf hash": ["UPDATE audit_entries SET leaf_hash = hex(leaf_hash) WHERE idx = 23"],
    # two faults in one page (21..27): the first in index order is named
    "changed, and one removed later": [
        "UPDATE audit_entries SET entry = x'7b7d' WHERE idx = 23",
        "DELETE FROM audit_entries WHERE idx = 26",
    ],
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damage_is_named_in_any_page(
    db: tuple[sa.Engine, Path], small_pages: None, damage: str
) -> None:
    engine, path = db
    log = AuditLog(engine, ORIGIN)
    log.append_many(events(40))
    log.checkpoint(KEY)
    assert verify_log(engine, [PUB]).entries == 40
    conn = sqlite3.connect(path)
    with conn:
        for statement in DAMAGE[damage]:
            conn.execute(statement)
    conn.close()
    with pytest.raises(LogTampered, match="audit entry 23") as err:
        verify_log(engine, [PUB])
    assert err.value.entry_index == 23


def test_an_export_verifies_across_pages(
    tmp_path: Path, db: tuple[sa.Engine, Path], small_pages: None
) -> None:
    engine, _ = db
    log = AuditLog(engine, ORIGIN)
    log.append_many(events(30))
    log.checkpoint(KEY)
    out = tmp_path / "export"
    assert export_log(engine, out, PUB).verified.entries == 30
    lines = (out / "entries.jsonl").read_bytes().split(b"\n")
    (out / "entries.jsonl").write_bytes(b"\n".join(lines[:16] + lines[17:]))
    with pytest.raises(LogTampered):
        verify_export(out, PUB)
    (out / "entries.jsonl").write_bytes(b"\n".join(lines)[:-1])  # the last newline cut
    with pytest.raises(LogTampered, match="entry 29"):
        verify_export(out, PUB)


# -- PostgreSQL: the Core path ---------------------------------------------------


@pytest.mark.postgres
def test_the_batched_append_stores_the_documented_bytes_on_postgresql(make_db: Any) -> None:
    engine = sa.create_engine(make_db("postgresql"))  # conftest: a fresh database, dropped after
    try:
        log = AuditLog(engine, ORIGIN)
        evs = events(SQLITE_ROWS_PER_STATEMENT + 3)
        assert log.append(evs[0]) == 0
        assert log.append_many(evs[1:]) == range(1, len(evs))
        expected = [documented_bytes(e) for e in evs]
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT idx, entry, leaf_hash FROM audit_entries ORDER BY idx")
            ).all()
        assert [r[0] for r in rows] == list(range(len(evs)))
        assert [bytes(r[1]) for r in rows] == expected
        assert [bytes(r[2]) for r in rows] == [leaf(e) for e in expected]
        assert log.root() == mth([leaf(e) for e in expected])
        log.checkpoint(KEY)
        assert verify_log(engine, [PUB]).entries == len(evs)
    finally:
        engine.dispose()


# -- the run's sink ---------------------------------------------------------------


def test_the_runs_sink_appends_several_events_in_one_transaction(tmp_path: Path) -> None:
    from domicile.run.audit_events import RunAudit

    # what the sink reads of a data map
    the_map = SimpleNamespace(
        audit_origin=ORIGIN, audit_keys=None, base_dir=tmp_path, path=tmp_path / "domicile.yaml"
    )
    engine = state_engine("sqlite:///.domicile/state.db", tmp_path)
    commits: list[object] = []
    try:
        sink = RunAudit(the_map, engine)  # type: ignore[arg-type]
        sa.event.listen(engine, "commit", commits.append)
        digests = [hashlib.sha256(bytes([i])).hexdigest() for i in range(5)]
        batch = [
            {"type": "batch.copied", "batch": 1, "row_digests": list(digests), "time": "t"},
            {"type": "batch.verified", "batch": 1, "count": 5, "time": "t"},
        ]
        sink.append_all(batch)
        assert len(commits) == 1
        sink({"type": "batch.deleted", "batch": 1, "count": 5, "time": "t"})
        assert len(commits) == 2
    finally:
        engine.dispose()
    rows = stored(tmp_path / ".domicile" / "state.db")
    first = json.loads(rows[0][1])
    # the digests became their Merkle root (over the sorted digests' leaf hashes)
    leaves = [leaf(bytes.fromhex(d)) for d in sorted(digests)]
    assert "row_digests" not in first and first["rows_root"] == mth(leaves).hex()
    assert [json.loads(r[1])["type"] for r in rows] == [
        "batch.copied",
        "batch.verified",
        "batch.deleted",
    ]
