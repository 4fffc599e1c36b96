"""A batch's rows packed into one journal record (journal schema 3).

A batch of 20,000 rows is one record, not 20,000: its keys as one JSON
array, its row digests as 32 bytes each, its homes as a short list of sets
and one index per row, and the few rows that did not simply move (a status,
a digest at home that differs, an object) as a sparse JSON object by row
position.  Writing, reading and fingerprinting a batch then costs a few
C-speed calls (one ``json.dumps``, one ``bytes.join``, one SHA-256) instead
of a database row, a JSON document and a hash per record.

The encoding is unambiguous and stored exactly as :func:`pack` writes it, so
the fingerprint a MAC covers is recomputed from the stored bytes on every
state-store engine.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import threading
from array import array
from collections.abc import Sequence
from typing import Any, NamedTuple

from domicile.run.journal_records import BatchRow, key_values

_BINARY = b"B"  # digests: 32 raw bytes each
_TEXTS = b"J"  # digests: a JSON list of strings (object versions, ETags)


class Packed(NamedTuple):
    """A batch's rows as the journal stores them (see the module docstring)."""

    keys: str
    digests: bytes
    targets: str
    target_of: bytes
    notes: str | None


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str, separators=(",", ":"), ensure_ascii=False)


def pack(rows: Sequence[BatchRow]) -> Packed:
    """The packed form of *rows* (their order is kept)."""
    keys = _dumps([r.key for r in rows])  # tuples: JSON arrays
    digests = [r.digest for r in rows]
    packed_digests = _binary_digests(digests)
    if packed_digests is None:
        packed_digests = _TEXTS + _dumps(digests).encode()
    sets: dict[tuple[str, ...], int] = {}
    index = array("H", [sets.setdefault(tuple(r.targets), len(sets)) for r in rows])
    notes: dict[str, dict[str, Any]] = {}
    for i, (_key, _digest, _targets, status, home_digest, blob) in enumerate(rows):
        if status is None and home_digest is None and blob is None:
            continue
        note: dict[str, Any] = {}
        if status is not None:
            note["s"] = status
        if home_digest is not None:
            note["h"] = home_digest
        if blob is not None:
            note["b"] = blob
        notes[str(i)] = note
    return Packed(
        keys=keys,
        digests=packed_digests,
        targets=_dumps([list(t) for t in sets]),
        target_of=index.tobytes(),
        notes=_dumps(notes) if notes else None,
    )


def _binary_digests(digests: list[str]) -> bytes | None:
    """The digests as 32 raw bytes each when every one is 64 lower-case hex digits, else None.

    ``bytes.fromhex`` also takes upper case and spaces: the round trip back to
    the joined text rules both out, so unpacking gives back the same strings.
    """
    if digests and set(map(len, digests)) != {64}:
        return None
    joined = "".join(digests)
    try:
        raw = bytes.fromhex(joined)
    except ValueError:
        return None
    return _BINARY + raw if raw.hex() == joined else None


def unpack(p: Packed) -> list[BatchRow]:
    """The rows back from their packed form, in their order."""
    keys = json.loads(p.keys)
    digests = _digests(p.digests, len(keys))
    sets = [tuple(t) for t in json.loads(p.targets)]
    index = array("H")
    index.frombytes(p.target_of)
    if len(index) != len(keys):
        raise ValueError(f"{len(keys)} keys but {len(index)} home indexes")
    homes = [sets[t] for t in index]
    new = tuple.__new__  # a BatchRow without its Python-level __new__ for each row
    out: list[BatchRow] = [
        new(BatchRow, (k, d, t, None, None, None))
        for k, d, t in zip(map(tuple, keys), digests, homes, strict=True)
    ]
    notes: dict[str, dict[str, Any]] = json.loads(p.notes) if p.notes else {}
    for pos, note in notes.items():
        i = int(pos)
        r = out[i]
        out[i] = BatchRow(r.key, r.digest, r.targets, note.get("s"), note.get("h"), note.get("b"))
    return out


def _digests(data: bytes, n: int) -> list[str]:
    tag, body = data[:1], data[1:]
    if tag == _BINARY:
        if len(body) != 32 * n:
            raise ValueError(f"{len(body)} digest bytes for {n} rows")
        text = body.hex()
        return [text[i : i + 64] for i in range(0, len(text), 64)]
    if tag == _TEXTS:
        out = json.loads(body.decode())
        if len(out) != n:
            raise ValueError(f"{len(out)} digests for {n} rows")
        return [str(d) for d in out]
    raise ValueError(f"unknown digest packing {tag!r}")


def fingerprint(p: Packed) -> bytes:
    """SHA-256 over the packed fields exactly as stored, each with its length."""
    h = hashlib.sha256(b"domicile.batch-rows.v3\n")
    for part in (p.keys.encode(), bytes(p.digests), p.targets.encode(), bytes(p.target_of)):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    if p.notes is None:
        h.update(b"\xff" * 8)
    else:
        notes = p.notes.encode()
        h.update(len(notes).to_bytes(8, "big"))
        h.update(notes)
    return h.digest()


# -- the journal's use of the packed form ------------------------------------


def int_keys(texts: set[str] | None) -> list[int] | None:
    """The wanted keys as sorted integers when every one is a one-integer key, else None."""
    if texts is None:
        return None
    out = []
    for text in texts:
        value = key_values(text)
        if value is None or len(value) != 1 or type(value[0]) is not int:
            return None
        out.append(value[0])
    return sorted(out)


def range_holds(ints: list[int], lo: str | None, hi: str | None) -> bool:
    """True unless the batch range ``(lo, hi]`` is of one-integer keys and holds none of *ints*."""
    low, high = key_values(lo), key_values(hi)
    if high is None or len(high) != 1 or type(high[0]) is not int:
        return True
    if low is not None and (len(low) != 1 or type(low[0]) is not int):
        return True
    start = 0 if low is None else bisect.bisect_right(ints, low[0])
    return start < len(ints) and ints[start] <= high[0]


def packed_values(p: Packed) -> dict[str, Any]:
    return {
        "row_keys": p.keys,
        "row_digests": p.digests,
        "row_targets": p.targets,
        "row_homes": p.target_of,
        "row_notes": p.notes,
    }


def packed_of(row: Any) -> Packed | None:
    """The packed rows of a batch record, or None for a batch of schema 2."""
    if row.row_keys is None:
        return None
    return Packed(
        row.row_keys,
        bytes(row.row_digests or b""),
        row.row_targets or "[]",
        bytes(row.row_homes or b""),
        row.row_notes,
    )


class Unpacked:
    """Rows of the batches in flight, unpacked once per stored form of each batch.

    The journal reads a batch's record at every step; the same packed record
    gives the same rows, so a record equal to the one last unpacked for that
    batch is not unpacked again.  Thread-safe; keeps the last *size* batches.
    """

    def __init__(self, size: int = 4) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._by_id: dict[int, tuple[Packed, list[BatchRow]]] = {}

    def rows(self, batch_id: int, packed: Packed) -> list[BatchRow]:
        """``unpack(packed)`` (a new list each time)."""
        with self._lock:
            hit = self._by_id.get(batch_id)
        if hit is not None and hit[0] == packed:
            return list(hit[1])
        rows = unpack(packed)
        with self._lock:
            self._by_id[batch_id] = (packed, rows)
            while len(self._by_id) > self._size:
                self._by_id.pop(next(iter(self._by_id)))
        return list(rows)


class Checked:
    """The batch records whose MAC this process checked last, by batch.

    A step checks a batch's MAC over its packed rows, then reads the rows: if
    the stored MAC is still the one checked, the record is the one checked
    (every change of a batch's rows reseals it with a new MAC), and its packed
    rows need not cross the network again.  Thread-safe; keeps *size* records.
    """

    def __init__(self, size: int = 8) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._by_id: dict[int, Any] = {}

    def put(self, row: Any) -> None:
        """Remember *row* (a full batch record whose MAC was just checked)."""
        with self._lock:
            self._by_id.pop(row.id, None)
            self._by_id[row.id] = row
            while len(self._by_id) > self._size:
                self._by_id.pop(next(iter(self._by_id)))

    def get(self, batch_id: int, mac: str | None) -> Any | None:
        """The record checked for *batch_id* if its MAC is still *mac*, else None."""
        with self._lock:
            row = self._by_id.get(batch_id)
        if row is None or mac is None or row.mac != mac:
            return None
        return row
