"""The bytes of audit entries and the batched insert that stores them.

An entry is one event as canonical JSON (sorted keys, no spaces, UTF-8, no
NaN): exactly the bytes that are hashed, ``SHA-256(0x00 || entry)`` being
its RFC 6962 leaf hash.  This module makes both once per entry and inserts
a call's entries with as few statements as the database allows; the
transaction around them belongs to :class:`~domicile.audit.log.AuditLog`.

The table comes in as an argument (this module does not import the log),
so that :mod:`domicile.audit.log` can import this module without a cycle.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from json import encoder as _json_encoder
from typing import Any

import sqlalchemy as sa

from domicile.connectors.numbered import insert_numbered
from domicile.errors import AuditIntegrityError, ConfigError

# One encoder for every entry: json.dumps with options builds a new one per call.
_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def _c_encoder() -> Callable[[Any, int], Sequence[str]] | None:
    """The C encoder that ``_CANONICAL.encode`` builds on every call, built once.

    ``JSONEncoder.encode`` makes a fresh ``c_make_encoder`` (and a dict for
    circular references) per call: a third of the cost of a 200-byte event.
    This is the same C encoder with the same arguments, so the bytes are the
    same; without a circular-reference dict (one shared between threads
    could report false cycles), a cycle is a RecursionError, caught below.
    None on a Python without the C accelerator.
    """
    make = getattr(_json_encoder, "c_make_encoder", None)
    if make is None:
        return None
    encoder: Callable[[Any, int], Sequence[str]] = make(
        None,  # markers: no circular-reference bookkeeping
        _CANONICAL.default,
        _json_encoder.encode_basestring,  # ensure_ascii=False
        None,  # indent
        ":",
        ",",
        True,  # sort_keys
        False,  # skipkeys
        False,  # allow_nan
    )
    return encoder


_C_ENCODER = _c_encoder()
_NOT_PLAIN = (TypeError, ValueError, RecursionError)


def _text(value: Any) -> str:
    """*value* as canonical JSON text."""
    if _C_ENCODER is None:
        return _CANONICAL.encode(value)
    return "".join(_C_ENCODER(value, 0))


def canonical_json(event: Mapping[str, Any]) -> bytes:
    """The canonical bytes of an event: sorted keys, no spaces, UTF-8, no NaN.

    The encoder escapes every control character, so an entry never holds a
    newline: the export can write one entry per line.  A value that is not
    plain JSON (NaN, an object, keys that do not sort, a cycle, a lone
    surrogate) is a ConfigError.
    """
    try:
        return _text(event).encode("utf-8")
    except _NOT_PLAIN as exc:
        raise ConfigError(f"audit event is not plain JSON: {exc}") from exc


def utc_now_iso() -> str:
    """The current time as ISO-8601 UTC with microseconds, e.g. ``2026-11-02T10:00:00.000001Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def entry_bytes(event: Mapping[str, Any], now: str) -> bytes:
    """The stored bytes of *event*, stamped with *now* unless it carries its own ``time``."""
    if not isinstance(event, Mapping):
        raise ConfigError(f"an audit event is a mapping, not {type(event).__name__}")
    if "time" not in event:
        event = {**event, "time": now}
    return canonical_json(event)


def encode_events(events: Iterable[Mapping[str, Any]], now: str) -> list[bytes]:
    """The entries of *events*, in order, each encoded once: ``entry_bytes`` for each.

    One loop with the C encoder called directly: on a million events the
    function calls of :func:`entry_bytes` cost as much as the encoding.
    Anything but a plain dict, and any event that fails, goes through
    :func:`entry_bytes` for its checks and its error.
    """
    encoder = _C_ENCODER
    if encoder is None:
        return [entry_bytes(e, now) for e in events]
    join = "".join
    out: list[bytes] = []
    append = out.append
    for event in events:
        if type(event) is not dict:
            append(entry_bytes(event, now))
            continue
        if "time" not in event:
            event = {**event, "time": now}
        try:
            append(join(encoder(event, 0)).encode("utf-8"))
        except _NOT_PLAIN:
            append(entry_bytes(event, now))  # raises the ConfigError
    return out


def leaf_hashes(entries: Sequence[bytes]) -> list[bytes]:
    """RFC 6962 leaf hashes ``SHA-256(0x00 || entry)``, hashlib in one comprehension."""
    sha256 = hashlib.sha256
    return [sha256(b"\x00" + e).digest() for e in entries]


def insert_entries(
    conn: sa.Connection,
    table: sa.Table,
    start: int,
    entries: Sequence[bytes],
    hashes: Sequence[bytes],
) -> None:
    """Insert *entries* at indices ``start, start + 1, ...`` in *conn*'s open transaction.

    Batched statements, each engine's fastest
    (:func:`~domicile.connectors.numbered.insert_numbered`); ``recorded_at``
    is left to the database's default.  When *start* is already taken the
    insert fails on the primary key (an IntegrityError) before anything is
    stored; when entries past *start* exist already (some below them were
    removed), it is refused: a new entry must never land between old ones.
    """
    if len(entries) != len(hashes):
        raise ValueError("one leaf hash per entry")
    if not entries:
        return
    rows = list(zip(entries, hashes, strict=True))
    last = insert_numbered(conn, table, start, ("entry", "leaf_hash"), rows)
    if last != start + len(entries) - 1:
        raise AuditIntegrityError(
            f"the audit log holds entries past index {start}, the end of its contiguous "
            "entries: entries below them were removed; nothing was appended",
            where=f"audit entry {start}",
            hint="run `domicile audit verify` to find what changed",
        )
