"""The audit log in a real state store: appending, proofs, checkpoints, tamper detection, export.

Tampering is done the way an intruder with write access to the state store
would do it: through SQL on the real database file, rewriting leaf hashes
and renumbering rows so that nothing but the signed checkpoints gives it away.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from domicile.audit import merkle
from domicile.audit.export import export_log
from domicile.audit.log import AuditLog, canonical_json, checkpoints_table, entries_table
from domicile.audit.note import Checkpoint, Signer, parse_note, sign_note
from domicile.audit.verify import LogTampered, verify_export, verify_log
from domicile.errors import AuditIntegrityError, ConfigError
from domicile.state import state_engine

ORIGIN = "domicile/test"
LOG_KEY = Signer("domicile-audit", Ed25519PrivateKey.generate())
WITNESS = Signer("witness.example", Ed25519PrivateKey.generate())
PUB = LOG_KEY.verifier_key()


def new_engine(folder: Path) -> sa.Engine:
    return state_engine("sqlite:///state.db", folder)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    eng = new_engine(tmp_path)
    yield eng
    eng.dispose()


def event(i: int) -> dict[str, object]:
    return {"event": "batch.done", "batch": i, "dataset": "videos", "time": f"t{i}"}


def rows(engine: sa.Engine) -> list[tuple[int, bytes]]:
    with engine.connect() as conn:
        result = conn.execute(
            sa.select(entries_table.c.idx, entries_table.c.entry).order_by(entries_table.c.idx)
        )
        return [(int(i), bytes(e)) for i, e in result]


def rewrite_entries(engine: sa.Engine, entries: list[bytes]) -> None:
    """Replace every entry, with correct leaf hashes and contiguous indices."""
    with engine.begin() as conn:
        conn.execute(entries_table.delete())
        if entries:
            conn.execute(
                entries_table.insert(),
                [
                    {
                        "idx": i,
                        "entry": e,
                        "leaf_hash": merkle.leaf_hash(e),
                        "recorded_at": datetime.now(UTC),
                    }
                    for i, e in enumerate(entries)
                ],
            )


# -- appending ----------------------------------------------------------------


def test_entries_are_canonical_json_with_a_utc_time(engine: sa.Engine) -> None:
    log = AuditLog(engine, ORIGIN)
    i = log.append({"b": 1, "a": "é", "nested": {"z": [1, 2], "y": None}})
    assert i == 0
    raw = log.entry(0)
    assert raw.startswith(b'{"a":"\xc3\xa9","b":1,"nested":{"y":null,"z":[1,2]},"time":"')
    stamp = json.loads(raw)["time"]
    assert stamp.endswith("Z") and stamp[10] == "T"
    # A given time is kept as is.
    assert log.entry(log.append({"time": "2026-01-01T00:00:00Z"})) == (
        b'{"time":"2026-01-01T00:00:00Z"}'
    )
    assert canonical_json({"x": "line\nbreak"}) == b'{"x":"line\\nbreak"}'


def test_events_that_are_not_plain_json_are_refused(engine: sa.Engine) -> None:
    log = AuditLog(engine, ORIGIN)
    for bad in [{"x": float("nan")}, {"x": object()}, {1: "x", "a": 2}]:
        with pytest.raises(ConfigError):
            log.append(bad)  # type: ignore[arg-type]
    assert log.size() == 0


def test_append_many_is_contiguous_and_hashes_match(engine: sa.Engine) -> None:
    log = AuditLog(engine, ORIGIN)
    assert log.append(event(0)) == 0
    assert log.append_many(event(i) for i in range(1, 6)) == range(1, 6)
    assert log.append_many([]) == range(0)
    assert log.size() == 6
    stored = [e for _, e in rows(engine)]
    assert stored == [canonical_json(event(i)) for i in range(6)]
    assert log.root() == merkle.root_of_entries(stored)
    assert log.root(3) == merkle.root_of_entries(stored[:3])
    assert log.event(4) == event(4)
    with pytest.raises(ConfigError):
        log.entry(6)


def test_proofs_from_the_log_verify_for_every_size(engine: sa.Engine) -> None:
    log = AuditLog(engine, ORIGIN)
    log.append_many(event(i) for i in range(33))
    leaves = [merkle.leaf_hash(e) for _, e in rows(engine)]
    for size in range(0, 34):
        root = log.root(size)
        for index in range(size):
            proof = log.inclusion_proof(index, size)
            assert merkle.verify_inclusion(index, size, leaves[index], proof, root)
        for old in range(0, size + 1):
            proof = log.consistency_proof(old, size)
            assert merkle.verify_consistency(old, size, log.root(old), root, proof)
    with pytest.raises(ConfigError):
        log.inclusion_proof(33, 33)
    with pytest.raises(ConfigError):
        log.consistency_proof(5, 34)


def _append_worker(path: str, worker: int, count: int) -> None:
    engine = sa.create_engine(path, connect_args={"timeout": 60} if "sqlite" in path else {})
    log = AuditLog(engine, ORIGIN)
    for i in range(count):
        if i % 3 == 0:
            log.append_many([{"w": worker, "i": i, "part": p} for p in range(3)])
        else:
            log.append({"w": worker, "i": i})
    engine.dispose()


def _check_concurrent_appends(url: str, engine: sa.Engine) -> None:
    AuditLog(engine, ORIGIN)  # create the tables before the race
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_worker, args=(url, w, 60)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    stored = rows(engine)
    assert [i for i, _ in stored] == list(range(len(stored)))  # no gap, no duplicate
    events = [json.loads(e) for _, e in stored]
    for w in range(2):
        mine = [(e["i"], e.get("part", 0)) for e in events if e["w"] == w]
        # Every append made it, in the order each writer made them, batches contiguous.
        assert mine == [(i, p) for i in range(60) for p in (range(3) if i % 3 == 0 else [0])]
    log = AuditLog(engine, ORIGIN)
    log.checkpoint(LOG_KEY)
    assert verify_log(engine, [PUB]).entries == len(stored) == 2 * (40 + 20 * 3)


def _check_lost_race_is_retried(engine: sa.Engine, rival: sa.Engine) -> None:
    """Another writer takes our index between our SELECT and our INSERT: we retry."""
    log = AuditLog(engine, ORIGIN)
    log.append(event(0))
    raced: list[bool] = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def race(conn: object, cursor: object, statement: str, *args: object) -> None:
        if statement.startswith("INSERT INTO audit_entries") and not raced:
            raced.append(True)
            AuditLog(rival, ORIGIN).append({"rival": True})

    try:
        assert log.append_many([event(1), event(2)]) == range(2, 4)
    finally:
        sa.event.remove(engine, "before_cursor_execute", race)
    assert raced
    assert [json.loads(e).get("batch", "rival") for _, e in rows(engine)] == [0, "rival", 1, 2]


def test_an_append_that_loses_the_race_for_an_index_retries(tmp_path: Path) -> None:
    engine, rival = new_engine(tmp_path), new_engine(tmp_path)
    try:
        _check_lost_race_is_retried(engine, rival)
    finally:
        engine.dispose()
        rival.dispose()


def test_two_processes_can_append_at_once_on_sqlite(tmp_path: Path, engine: sa.Engine) -> None:
    _check_concurrent_appends(f"sqlite:///{tmp_path / 'state.db'}", engine)


# -- checkpoints and verification ---------------------------------------------


def test_checkpoints_sign_the_tree_head_and_verify(engine: sa.Engine) -> None:
    log = AuditLog(engine, ORIGIN)
    assert log.latest_checkpoint() is None
    first = log.checkpoint(LOG_KEY)  # the empty tree can be signed too
    assert Checkpoint.parse(parse_note(first).text).root == merkle.EMPTY_ROOT
    log.append_many(event(i) for i in range(10))
    note = log.checkpoint(LOG_KEY)
    assert log.latest_checkpoint() == note
    head = Checkpoint.parse(parse_note(note).text)
    assert (head.origin, head.size, head.root) == (ORIGIN, 10, log.root())
    log.append(event(10))
    result = verify_log(engine, [PUB])
    assert (result.entries, result.checkpoints, result.checkpoint_size) == (11, 2, 10)
    assert result.uncovered == 1 and result.signers == ("domicile-audit",)
    assert result.root == log.root() and result.origin == ORIGIN


def test_one_log_keeps_one_origin(engine: sa.Engine) -> None:
    AuditLog(engine, ORIGIN).checkpoint(LOG_KEY)
    with pytest.raises(ConfigError, match="origin"):
        AuditLog(engine, "domicile/elsewhere").checkpoint(LOG_KEY)


def test_checkpoint_refuses_to_sign_a_changed_history(engine: sa.Engine) -> None:
    log = AuditLog(engine, ORIGIN)
    log.append_many(event(i) for i in range(4))
    log.checkpoint(LOG_KEY)
    entries = [e for _, e in rows(engine)]
    rewrite_entries(engine, [entries[1], entries[0], *entries[2:]])
    with pytest.raises(AuditIntegrityError, match="changed history"):
        AuditLog(engine, ORIGIN).checkpoint(LOG_KEY)


def test_witness_cosignatures(engine: sa.Engine) -> None:
    log = AuditLog(engine, ORIGIN)
    log.append_many(event(i) for i in range(5))
    note = log.checkpoint(LOG_KEY)
    cosigned = log.cosign(None, WITNESS, [LOG_KEY.verifier()])
    assert cosigned.startswith(note) and log.latest_checkpoint() == cosigned
    assert verify_log(engine, [PUB]).signers == ("domicile-audit",)
    both = verify_log(engine, [PUB, WITNESS.verifier_key()])
    assert both.signers == ("domicile-audit", "witness.example")
    # A witness refuses a checkpoint that is not this log's head at that size.
    forged = sign_note(Checkpoint(ORIGIN, 5, merkle.EMPTY_ROOT).text(), LOG_KEY)
    with pytest.raises(AuditIntegrityError):
        log.cosign(forged, WITNESS)
    # A broken witness line is noticed when the witness key is known.
    with engine.begin() as conn:
        last = conn.execute(sa.select(sa.func.max(checkpoints_table.c.id))).scalar_one()
        broken = cosigned[:-10] + ("A" if cosigned[-10] != "A" else "B") + cosigned[-9:]
        conn.execute(
            checkpoints_table.update().where(checkpoints_table.c.id == last).values(note=broken)
        )
    verify_log(engine, [PUB])  # the log key alone does not look at the witness line
    with pytest.raises(LogTampered) as err:
        verify_log(engine, [PUB, WITNESS.verifier_key()])
    assert err.value.checkpoint_id == last


def _build(engine: sa.Engine, n: int, sizes: list[int]) -> list[int]:
    """A log of n entries with checkpoints at the given sizes and at n; their ids."""
    log = AuditLog(engine, ORIGIN)
    ids = []
    for size in [*sorted(sizes), n]:
        log.append_many(event(i) for i in range(log.size(), size))
        log.checkpoint(LOG_KEY)
        with engine.connect() as conn:
            ids.append(conn.execute(sa.select(sa.func.max(checkpoints_table.c.id))).scalar_one())
    return ids


def _first_covering(engine: sa.Engine, index: int) -> int:
    """The id of the first checkpoint that covers entry *index*."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.min(checkpoints_table.c.id)).where(
                    checkpoints_table.c.tree_size > index
                )
            ).scalar_one()
        )


def test_a_changed_entry_with_its_old_leaf_hash_is_named(engine: sa.Engine) -> None:
    _build(engine, 8, [3])
    with engine.begin() as conn:
        conn.execute(
            entries_table.update().where(entries_table.c.idx == 5).values(entry=b'{"x":1}')
        )
    with pytest.raises(LogTampered, match="audit entry 5") as err:
        verify_log(engine, [PUB])
    assert err.value.entry_index == 5


def test_a_removed_entry_is_named(engine: sa.Engine) -> None:
    _build(engine, 8, [])
    with engine.begin() as conn:
        conn.execute(entries_table.delete().where(entries_table.c.idx == 2))
    with pytest.raises(LogTampered, match="entry 2 is missing") as err:
        verify_log(engine, [PUB])
    assert err.value.entry_index == 2


def test_truncation_below_a_checkpoint_is_detected(engine: sa.Engine) -> None:
    (cp,) = _build(engine, 8, [])
    with engine.begin() as conn:
        conn.execute(entries_table.delete().where(entries_table.c.idx >= 6))
    with pytest.raises(LogTampered, match="entries were removed") as err:
        verify_log(engine, [PUB])
    assert (err.value.checkpoint_id, err.value.tree_size) == (cp, 8)


def test_a_changed_tree_size_column_is_named(engine: sa.Engine) -> None:
    first, _ = _build(engine, 8, [4])
    with engine.begin() as conn:
        conn.execute(
            checkpoints_table.update().where(checkpoints_table.c.id == first).values(tree_size=5)
        )
    with pytest.raises(LogTampered, match=f"checkpoint {first}") as err:
        verify_log(engine, [PUB])
    assert err.value.checkpoint_id == first


def test_a_checkpoint_by_another_key_or_going_backwards_is_refused(engine: sa.Engine) -> None:
    _build(engine, 6, [])
    log = AuditLog(engine, ORIGIN)
    with engine.begin() as conn:
        forged = sign_note(Checkpoint(ORIGIN, 6, log.root()).text(), WITNESS)
        conn.execute(
            checkpoints_table.insert().values(
                tree_size=6, note=forged, created_at=datetime.now(UTC)
            )
        )
    with pytest.raises(LogTampered, match="no valid signature"):
        verify_log(engine, [PUB])
    with engine.begin() as conn:
        conn.execute(checkpoints_table.delete().where(checkpoints_table.c.note == forged))
        # Validly signed, but smaller than the one before: a rollback.
        old = sign_note(Checkpoint(ORIGIN, 3, log.root(3)).text(), LOG_KEY)
        conn.execute(
            checkpoints_table.insert().values(tree_size=3, note=old, created_at=datetime.now(UTC))
        )
    with pytest.raises(LogTampered, match="went backwards"):
        verify_log(engine, [PUB])


def test_a_checkpoint_of_another_log_is_refused(engine: sa.Engine) -> None:
    _build(engine, 4, [])
    log = AuditLog(engine, ORIGIN)
    with engine.begin() as conn:
        other = sign_note(Checkpoint("domicile/other", 4, log.root()).text(), LOG_KEY)
        conn.execute(
            checkpoints_table.insert().values(tree_size=4, note=other, created_at=datetime.now(UTC))
        )
    with pytest.raises(LogTampered, match="domicile/other"):
        verify_log(engine, [PUB])
    with pytest.raises(LogTampered):
        verify_log(engine, [PUB], origin="domicile/expected")


# -- property tests: any single change is detected ----------------------------

MUTATIONS = [
    "change",
    "remove",
    "swap",
    "insert",
    "flip_entry",
    "flip_entry_keep_hash",
    "flip_note",
]


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    n=st.integers(1, 24),
    cut_points=st.lists(st.integers(0, 24), max_size=3),
    mutation=st.sampled_from(MUTATIONS),
    data=st.data(),
)
def test_any_single_change_is_detected(
    n: int, cut_points: list[int], mutation: str, data: st.DataObject
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        engine = new_engine(Path(tmp))
        try:
            _build(engine, n, [c for c in cut_points if c <= n])
            verify_log(engine, [PUB])  # a valid log always verifies
            entries = [e for _, e in rows(engine)]
            i = data.draw(st.integers(0, n - 1), label="index")
            expect_entry: int | None = None
            expect_checkpoint: int | None = _first_covering(engine, i)
            if mutation == "change":
                entries[i] = canonical_json({"forged": True})
            elif mutation == "remove":
                del entries[i]
            elif mutation == "swap":
                assume(n >= 2)
                j = data.draw(st.integers(0, n - 1).filter(lambda j: j != i), label="other")
                i, j = min(i, j), max(i, j)
                expect_checkpoint = _first_covering(engine, i)
                entries[i], entries[j] = entries[j], entries[i]
            elif mutation == "insert":
                entries.insert(i, canonical_json({"inserted": True}))
            elif mutation in ("flip_entry", "flip_entry_keep_hash"):
                pos = data.draw(st.integers(0, len(entries[i]) - 1), label="byte")
                mask = data.draw(st.integers(1, 255), label="mask")
                flipped = bytearray(entries[i])
                flipped[pos] ^= mask
                entries[i] = bytes(flipped)
                if mutation == "flip_entry_keep_hash":
                    expect_entry, expect_checkpoint = i, None
                    with engine.begin() as conn:
                        conn.execute(
                            entries_table.update()
                            .where(entries_table.c.idx == i)
                            .values(entry=entries[i])
                        )
            if mutation == "flip_note":
                with engine.connect() as conn:
                    notes = conn.execute(
                        sa.select(checkpoints_table.c.id, checkpoints_table.c.note)
                    ).all()
                cp_id, note = data.draw(st.sampled_from(notes), label="checkpoint")
                raw = bytearray(note.encode())
                pos = data.draw(st.integers(0, len(raw) - 1), label="byte")
                raw[pos] ^= data.draw(st.integers(1, 255), label="mask")
                try:
                    value: str | bytes = raw.decode("utf-8")
                except UnicodeDecodeError:
                    value = bytes(raw)  # stored as a BLOB, as a raw disk edit could leave it
                with engine.begin() as conn:
                    conn.execute(
                        sa.text("UPDATE audit_checkpoints SET note = :v WHERE id = :i"),
                        {"v": value, "i": cp_id},
                    )
                expect_checkpoint = cp_id
            elif mutation != "flip_entry_keep_hash":
                rewrite_entries(engine, entries)
            with pytest.raises(AuditIntegrityError) as err:
                verify_log(engine, [PUB])
            assert isinstance(err.value, LogTampered)
            assert err.value.entry_index == expect_entry
            assert err.value.checkpoint_id == expect_checkpoint
        finally:
            engine.dispose()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batches=st.lists(
        st.lists(
            st.dictionaries(st.text(max_size=8), st.text(max_size=20), max_size=4), max_size=6
        ),
        min_size=1,
        max_size=5,
    ),
    sign_after=st.lists(st.booleans(), min_size=5, max_size=5),
)
def test_a_valid_log_always_verifies(
    batches: list[list[dict[str, str]]], sign_after: list[bool]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        engine = new_engine(Path(tmp))
        try:
            log = AuditLog(engine, ORIGIN)
            signed = 0
            for batch, sign in zip(batches, sign_after, strict=False):
                log.append_many(batch)
                if sign:
                    log.checkpoint(LOG_KEY)
                    signed = log.size()
            result = verify_log(engine, [PUB])
            assert result.entries == sum(len(b) for b in batches)
            assert result.checkpoint_size == signed
            exported = export_log(engine, Path(tmp) / "export", PUB).verified
            assert exported == result
        finally:
            engine.dispose()


# -- export ---------------------------------------------------------------------


def test_export_holds_the_exact_bytes_and_verifies_alone(tmp_path: Path, engine: sa.Engine) -> None:
    _build(engine, 12, [5])
    AuditLog(engine, ORIGIN).append(event(99))  # not yet signed
    out = tmp_path / "export"
    result = export_log(engine, out, PUB)
    assert result.verified.entries == 13 and result.verified.uncovered == 1
    lines = (out / "entries.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b"" and lines[:-1] == [e for _, e in rows(engine)]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["0001.txt", "0002.txt"]
    assert (out / "audit.pub").read_text().strip() == PUB
    assert "SHA-256(0x00 || line i without its newline)" in (out / "README.txt").read_text()
    engine.dispose()
    (tmp_path / "state.db").unlink()  # the export needs no state store
    assert verify_export(out, PUB) == result.verified
    with pytest.raises(ConfigError, match="not empty"):
        export_log(new_engine(tmp_path), out, PUB)


def test_the_readme_recipe_checks_the_roots(tmp_path: Path, engine: sa.Engine) -> None:
    _build(engine, 9, [4])
    out = tmp_path / "export"
    export_log(engine, out, PUB)
    readme = (out / "README.txt").read_text()
    script = textwrap.dedent(readme[readme.index("    import base64") :])
    (tmp_path / "check.py").write_text(script)
    run = subprocess.run(
        [sys.executable, str(tmp_path / "check.py"), str(out)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == "0001.txt 4 ok\n0002.txt 9 ok\n"


@pytest.mark.parametrize("damage", ["flip", "drop_line", "cut_newline", "edit_note", "swap"])
def test_a_damaged_export_is_detected(tmp_path: Path, engine: sa.Engine, damage: str) -> None:
    _build(engine, 10, [4])
    out = tmp_path / "export"
    export_log(engine, out, PUB)
    entries = out / "entries.jsonl"
    data = entries.read_bytes()
    lines = data.split(b"\n")[:-1]
    if damage == "flip":
        entries.write_bytes(data.replace(b'"batch":7', b'"batch":8'))
    elif damage == "drop_line":
        entries.write_bytes(b"".join(line + b"\n" for line in lines[:3] + lines[4:]))
    elif damage == "cut_newline":
        entries.write_bytes(data[:-1])
    elif damage == "swap":
        lines[1], lines[2] = lines[2], lines[1]
        entries.write_bytes(b"".join(line + b"\n" for line in lines))
    else:
        note = out / "checkpoints" / "0001.txt"
        note.write_text(note.read_text().replace("\n4\n", "\n5\n"))
    with pytest.raises(LogTampered) as err:
        verify_export(out, PUB)
    if damage == "cut_newline":
        assert err.value.entry_index == 9
    elif damage == "edit_note":
        assert err.value.checkpoint_id == 1
    else:
        # Entries 0-3 are under checkpoint 1, the rest only under checkpoint 2.
        assert err.value.checkpoint_id == (2 if damage == "flip" else 1)


def test_a_tampered_log_is_not_exported(tmp_path: Path, engine: sa.Engine) -> None:
    _build(engine, 5, [])
    entries = [e for _, e in rows(engine)]
    rewrite_entries(engine, entries[::-1])
    with pytest.raises(LogTampered):
        export_log(engine, tmp_path / "export", PUB)
    assert not (tmp_path / "export").exists()
    # no temporary folder left (the state store's WAL files may sit beside it)
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith("state.db")] == []


# -- PostgreSQL: the same Core code -------------------------------------------------

PG_URL = os.environ.get(
    "DOMICILE_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture
def pg_url() -> Iterator[str]:
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    name = f"domicile_audit_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"PostgreSQL is not reachable: {exc.orig}")
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.mark.postgres
def test_the_log_works_on_postgresql(pg_url: str) -> None:
    engine, rival = sa.create_engine(pg_url), sa.create_engine(pg_url)
    try:
        _check_lost_race_is_retried(engine, rival)
        with engine.begin() as conn:
            conn.execute(entries_table.delete())
        _check_concurrent_appends(pg_url, engine)
        log = AuditLog(engine, ORIGIN)
        assert log.root() == merkle.root_of_entries(e for _, e in rows(engine))
        rewrite_entries(engine, [e for _, e in rows(engine)][1:])
        with pytest.raises(LogTampered, match="entries were removed"):
            verify_log(engine, [PUB])
    finally:
        engine.dispose()
        rival.dispose()
