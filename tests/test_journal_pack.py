"""A batch's rows packed into one journal record: round trips, tampering, schema 2.

Checked by reading the state store with our own SQL, not through the journal's
own report of itself.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from domicile.run.journal import BatchRow, Journal, JournalTampered
from domicile.run.journal_pack import pack, unpack
from domicile.run.journal_records import SCHEMA_VERSION, batch_mac, batch_rows, rows_fingerprint

KEY = b"k" * 32

_KEYS = st.tuples(st.integers(min_value=-(2**62), max_value=2**62)) | st.tuples(
    st.text(max_size=8), st.integers(min_value=0, max_value=99)
)
_DIGESTS = st.binary(min_size=32, max_size=32).map(bytes.hex) | st.text(
    alphabet='0123456789abcdef-"v', min_size=1, max_size=20
)


@st.composite
def _rows(draw: st.DrawFn) -> list[BatchRow]:
    keys = draw(st.lists(_KEYS, max_size=30, unique=True))
    hex_only = draw(st.booleans())
    out = []
    for k in keys:
        digest = draw(st.binary(min_size=32, max_size=32)).hex() if hex_only else draw(_DIGESTS)
        targets = tuple(
            draw(st.lists(st.sampled_from(["us", "ca", "au"]), min_size=1, max_size=2, unique=True))
        )
        status = draw(st.none() | st.sampled_from(["kept-home", "vanished", "changed"]))
        home = draw(st.none() | st.binary(min_size=32, max_size=32).map(bytes.hex))
        blob = draw(st.none() | st.fixed_dictionaries({"key": st.text(max_size=5)}))
        out.append(BatchRow(k, digest, targets, status, home, blob))
    return out


@settings(max_examples=200)
@given(rows=_rows())
def test_pack_round_trips(rows: list[BatchRow]) -> None:
    back = unpack(pack(rows))
    assert back == [r._replace(key=tuple(r.key)) for r in rows]


def _journal(tmp_path: Path) -> tuple[Journal, sa.Engine]:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'state.db'}")
    return Journal(engine, KEY), engine


def _batch(journal: Journal, n: int = 50) -> int:
    run_id = journal.new_run(["US"], "0" * 64, {})
    rows = [BatchRow((i,), hashlib.sha256(str(i).encode()).hexdigest(), ("us",)) for i in range(n)]
    return journal.add_batch(run_id, "events", "sg", 1, 1, None, (n - 1,), rows)


def test_one_record_per_batch_and_no_row_per_record(tmp_path: Path) -> None:
    journal, engine = _journal(tmp_path)
    batch_id = _batch(journal, 1000)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM domicile_batches")).scalar() == 1
        assert conn.execute(sa.text("SELECT count(*) FROM domicile_batch_rows")).scalar() == 0
        digests = conn.execute(
            sa.text("SELECT row_digests FROM domicile_batches WHERE id = :i"), {"i": batch_id}
        ).scalar_one()
    assert len(digests) == 1 + 32 * 1000  # a tag byte, then 32 bytes a row
    journal.set_row_status(batch_id, [(7,)], "vanished")
    by_key = {r.key: r for r in journal.rows(batch_id)}
    assert by_key[(7,)].status == "vanished" and by_key[(8,)].status is None


@pytest.mark.parametrize("column", ["row_keys", "row_digests", "row_homes", "row_notes"])
def test_an_edited_packed_field_is_found(tmp_path: Path, column: str) -> None:
    journal, engine = _journal(tmp_path)
    batch_id = _batch(journal)
    journal.set_row_status(batch_id, [(3,)], "changed")  # so that row_notes is set
    with engine.begin() as conn:
        value = conn.execute(
            sa.text(f"SELECT {column} FROM domicile_batches WHERE id = :i"), {"i": batch_id}
        ).scalar_one()
        if isinstance(value, str):
            edited: str | bytes = value.replace("3", "4", 1) if "3" in value else value + " "
        else:
            edited = bytes([value[0]]) + bytes([value[1] ^ 1]) + bytes(value[2:])
        conn.execute(
            sa.text(f"UPDATE domicile_batches SET {column} = :v WHERE id = :i"),
            {"v": edited, "i": batch_id},
        )
    with pytest.raises(JournalTampered):
        journal.checked_batch(batch_id)


def test_a_schema_2_batch_is_read_checked_and_packed_on_its_next_write(tmp_path: Path) -> None:
    """A batch journalled by the previous schema (a row per record) keeps working."""
    journal, engine = _journal(tmp_path)
    batch_id = _batch(journal, 5)
    rows = journal.rows(batch_id)
    # turn the batch into what schema 2 wrote: rows in domicile_batch_rows, old MAC
    with engine.begin() as conn:
        conn.execute(
            batch_rows.insert(),
            [
                {
                    "batch_id": batch_id,
                    "key": json.dumps(list(r.key)),
                    "digest": r.digest,
                    "targets": json.dumps(list(r.targets)),
                    "dataset": "events",
                }
                for r in rows
            ],
        )
        conn.execute(
            sa.text(
                "UPDATE domicile_batches SET row_keys = NULL, row_digests = NULL, "
                "row_targets = NULL, row_homes = NULL, row_notes = NULL WHERE id = :i"
            ),
            {"i": batch_id},
        )
        legacy = conn.execute(sa.select(batch_rows).where(batch_rows.c.batch_id == batch_id)).all()
        row = conn.execute(
            sa.text("SELECT * FROM domicile_batches WHERE id = :i"), {"i": batch_id}
        ).one()
        mac = batch_mac(KEY, row, rows_fingerprint(legacy))
        conn.execute(
            sa.text("UPDATE domicile_batches SET mac = :m WHERE id = :i"),
            {"m": mac, "i": batch_id},
        )
        # and the tables as schema 2 had them: no packed columns, version 2
        for column in ("row_keys", "row_digests", "row_targets", "row_homes", "row_notes"):
            conn.execute(sa.text(f"ALTER TABLE domicile_batches DROP COLUMN {column}"))
        conn.execute(sa.text("UPDATE domicile_meta SET value = '2' WHERE name = 'schema_version'"))
    journal = Journal(engine, KEY)  # migrates 2 -> the current schema
    with engine.connect() as conn:
        assert conn.execute(
            sa.text("SELECT value FROM domicile_meta WHERE name = 'schema_version'")
        ).scalar() == str(SCHEMA_VERSION)
    journal.checked_batch(batch_id)  # the old MAC holds
    assert journal.rows(batch_id) == rows
    assert set(journal.copies("events", "us", [(2,)])) == {"[2]"}
    journal.set_row_status(batch_id, [(2,)], "vanished")  # the write packs it
    with engine.connect() as conn:
        left = conn.execute(
            sa.text("SELECT count(*) FROM domicile_batch_rows WHERE batch_id = :i"),
            {"i": batch_id},
        ).scalar()
    assert left == 0
    journal.checked_batch(batch_id)
    assert {r.key: r.status for r in journal.rows(batch_id)}[(2,)] == "vanished"
