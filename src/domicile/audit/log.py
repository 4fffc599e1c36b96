"""The audit log: an append-only RFC 6962 Merkle log in the state store.

Every entry is one event as canonical JSON (sorted keys, no spaces, UTF-8),
stored as the exact bytes that are hashed, so that anyone holding the bytes
can recompute the tree.  Signed checkpoints (C2SP tlog-checkpoint notes) pin
the tree head from time to time; after that, changing, removing, reordering
or inserting an entry is detectable by :func:`domicile.audit.verify.verify_log`.

Events must hold digests, never personal data: hash record keys with
:func:`domicile.keys.keyed_hash` first.

The same code runs on SQLite and PostgreSQL.  One call to
:meth:`AuditLog.append_many` is one transaction: all of its entries are
stored, or (on any failure, a killed process included) none.  Appends are
safe from several processes at once (a run and the access service share the
log): an :class:`AuditLog` remembers the next index it expects, so an
append costs no read; when another writer took that index first, the
primary key makes the insert fail instead of silently forking the log, and
the append reads the index again and retries.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.types import UserDefinedType

from domicile.audit import merkle
from domicile.audit.entries import (
    canonical_json,
    encode_events,
    insert_entries,
    leaf_hashes,
    utc_now_iso,
)
from domicile.audit.note import (
    Checkpoint,
    NoteError,
    Signer,
    Verifier,
    open_note,
    parse_note,
    sign_note,
)
from domicile.audit.note import cosign as cosign_note
from domicile.errors import AuditIntegrityError, ConfigError

__all__ = [
    "AuditLog",
    "StoredCheckpoint",
    "canonical_json",
    "checkpoints_table",
    "create_tables",
    "entries_table",
    "read_checkpoints",
    "stored_origin",
    "utc_now_iso",
]

log = logging.getLogger(__name__)

metadata = sa.MetaData()

# BIGINT on PostgreSQL; on SQLite exactly INTEGER, so that the index is the rowid.
_Index = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class _SqliteBlob(UserDefinedType[bytes]):
    """A BLOB whose bytes go to and come from sqlite3 untouched.

    LargeBinary wraps every value in ``sqlite3.Binary`` on the way in; on
    the audit log's million-row appends that wrapping nearly doubled the time
    of the insert.  sqlite3 takes and returns ``bytes`` natively.
    """

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "BLOB"

    def bind_processor(self, dialect: sa.Dialect) -> None:
        return None

    def result_processor(self, dialect: sa.Dialect, coltype: object) -> None:
        return None


_Blob = sa.LargeBinary().with_variant(_SqliteBlob(), "sqlite")

entries_table = sa.Table(
    "audit_entries",
    metadata,
    sa.Column("idx", _Index, primary_key=True, autoincrement=False),
    sa.Column("entry", _Blob, nullable=False),
    sa.Column("leaf_hash", _Blob, nullable=False),
    # Set by the database: no per-row conversion on the hot path, and the
    # database's clock rather than each writer's.
    sa.Column(
        "recorded_at",
        sa.DateTime(timezone=True),
        nullable=False,
        server_default=sa.func.current_timestamp(),
    ),
)

checkpoints_table = sa.Table(
    "audit_checkpoints",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("tree_size", sa.BigInteger, nullable=False),
    sa.Column("note", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

_NEXT_INDEX = sa.select(sa.func.coalesce(sa.func.max(entries_table.c.idx), -1) + 1)
MAX_APPEND_ATTEMPTS = 100
_READ_CHUNK = 50_000
# Leaf hashes an AuditLog keeps of its own appends until a root is asked for
# (32 bytes each); past this many the store is read instead.
MAX_KEPT_LEAVES = 1 << 20


@dataclass(frozen=True)
class StoredCheckpoint:
    """One row of ``audit_checkpoints``."""

    id: int
    tree_size: int
    note: str | bytes
    created_at: datetime | None


def create_tables(engine: sa.Engine) -> None:
    """Create the audit tables if missing (safe when another process does it too)."""
    try:
        metadata.create_all(engine, checkfirst=True)
    except sa.exc.DBAPIError:
        # Two processes may both see the tables missing; the loser's CREATE
        # fails.  Fine when the tables now exist, otherwise a real error.
        names = set(sa.inspect(engine).get_table_names())
        if not {entries_table.name, checkpoints_table.name} <= names:
            raise


def _retryable(exc: sa.exc.DBAPIError) -> bool:
    """A conflict another attempt can cure: the index was taken, or SQLite was busy."""
    if isinstance(exc, sa.exc.IntegrityError):
        return True
    text = str(exc.orig).lower()
    return "database is locked" in text or "could not serialize" in text or "deadlock" in text


def _read_next(conn: sa.Connection) -> int:
    """The store's next index (one lookup of the largest one, not a count)."""
    return int(conn.execute(_NEXT_INDEX).scalar_one())


class _KeptLeaves:
    """The leaf hashes of this process's own appends, packed, not yet in the tree.

    They cover the indices ``[start, start + count)``.  Handing them to the
    tree spares reading back what was just written; what they do not cover
    (another writer's entries, or appends past :data:`MAX_KEPT_LEAVES`) is
    read from the store as before.
    """

    def __init__(self) -> None:
        self.start = 0
        self.packed = bytearray()

    @property
    def count(self) -> int:
        return len(self.packed) // merkle.HASH_SIZE

    def add(self, start: int, hashes: Sequence[bytes]) -> None:
        """Keep *hashes*, appended at *start*, when they continue the run already kept."""
        if self.count and start != self.start + self.count:
            return  # another writer's entries lie between: the store has both
        if self.count + len(hashes) > MAX_KEPT_LEAVES:
            return
        if not self.count:
            self.start = start
        self.packed += b"".join(hashes)

    def clear(self) -> None:
        self.packed = bytearray()


class AuditLog:
    """The tamper-evident audit log kept in a state store.

    *origin* names the log in its checkpoints (``domicile/<name>``); every
    checkpoint of one log carries the same origin.  One object may be shared
    by threads: appends and the in-memory tree take a lock.
    """

    def __init__(self, engine: sa.Engine, origin: str) -> None:
        if not origin or "\n" in origin:
            raise ConfigError(f"invalid audit log origin {origin!r}")
        self.engine = engine
        self.origin = origin
        create_tables(engine)
        self._lock = threading.RLock()
        # Leaf hashes read so far; the log is append-only, so a cached prefix
        # stays valid and only newer rows need reading.
        self._tree = merkle.MerkleTree()
        self._kept = _KeptLeaves()
        # The index the next append takes: read from the store by the first
        # append (inside its transaction), then counted here, so that an
        # append reads nothing.  A wrong guess (another writer appended
        # meanwhile) fails on the primary key and is read again: None.
        self._next: int | None = None

    # -- appending -------------------------------------------------------

    def append(self, event: Mapping[str, Any]) -> int:
        """Append one event; return its index."""
        return self.append_many([event])[0]

    def append_many(self, events: Iterable[Mapping[str, Any]]) -> range:
        """Append events in one transaction, contiguously; return their indices.

        Each entry is encoded and hashed once, before the transaction; the
        insert is one batched statement (see :func:`insert_entries`).  When
        the call returns, its entries are committed; when it raises, none is.
        """
        entries = encode_events(events, utc_now_iso())
        if not entries:
            return range(0)
        hashes = leaf_hashes(entries)
        with self._lock:
            start = self._insert(entries, hashes)
            self._next = start + len(entries)
            self._kept.add(start, hashes)
        return range(start, start + len(entries))

    def _insert(self, entries: Sequence[bytes], hashes: Sequence[bytes]) -> int:
        """Insert at the next free index in one transaction; return that index."""
        for attempt in range(MAX_APPEND_ATTEMPTS):
            guess, self._next = self._next, None  # unknown until this commit succeeds
            try:
                with self.engine.begin() as conn:
                    start = guess if guess is not None else _read_next(conn)
                    insert_entries(conn, entries_table, start, entries, hashes)
                return start
            except sa.exc.DBAPIError as exc:
                if not _retryable(exc) or attempt == MAX_APPEND_ATTEMPTS - 1:
                    raise
                if guess is not None:
                    # Another writer appended since this object last did: read
                    # the index inside the next attempt's transaction.
                    log.debug("audit index %d was taken by another writer; reading it again", guess)
                    continue
                # The index just read was taken; back off a little, at random,
                # so that two writers do not collide again in lockstep.
                time.sleep(random.uniform(0, 0.005 * (attempt + 1)))
        raise AssertionError("unreachable")

    # -- reading ---------------------------------------------------------

    def size(self) -> int:
        """The number of entries in the store (other writers' included), read now."""
        with self.engine.connect() as conn:
            return _read_next(conn)

    def entry(self, index: int) -> bytes:
        """The stored bytes of entry *index*."""
        with self.engine.connect() as conn:
            value = conn.execute(
                sa.select(entries_table.c.entry).where(entries_table.c.idx == index)
            ).scalar_one_or_none()
        if value is None:
            raise ConfigError(f"the audit log has no entry {index}")
        return bytes(value)

    def event(self, index: int) -> dict[str, Any]:
        """Entry *index* decoded from JSON."""
        value: dict[str, Any] = json.loads(self.entry(index))
        return value

    def _sync(self) -> merkle.MerkleTree:
        """The tree of the log's leaf hashes, reading only rows not seen before.

        The leaves of this object's own appends come from memory (the hashes
        it wrote), everything else from the store's ``leaf_hash`` column.
        """
        with self._lock:
            tree, kept = self._tree, self._kept
            if kept.count:
                if tree.size <= kept.start:
                    self._read_leaves(tree, until=kept.start)
                if tree.size == kept.start:
                    tree.extend_packed(kept.packed)
                kept.clear()  # otherwise a hole or an overlap: the store decides
            self._read_leaves(tree)
            return tree

    def _read_leaves(self, tree: merkle.MerkleTree, until: int | None = None) -> None:
        """Extend *tree* with the stored leaf hashes from its size on (up to *until*).

        Only the contiguous prefix: a hole is a deleted row (which verify
        reports); nothing after it can be proved.
        """
        with self.engine.connect() as conn:
            while until is None or tree.size < until:
                query = sa.select(entries_table.c.idx, entries_table.c.leaf_hash).where(
                    entries_table.c.idx >= tree.size
                )
                if until is not None:
                    query = query.where(entries_table.c.idx < until)
                rows = conn.execute(query.order_by(entries_table.c.idx).limit(_READ_CHUNK)).all()
                base = tree.size
                contiguous = [bytes(leaf) for i, (idx, leaf) in enumerate(rows) if idx == base + i]
                tree.extend(contiguous)
                if len(contiguous) < len(rows) or len(rows) < _READ_CHUNK:
                    return

    def _tree_of(self, size: int | None) -> tuple[merkle.MerkleTree, int]:
        tree = self._sync()
        size = tree.size if size is None else size
        if not 0 <= size <= tree.size:
            raise ConfigError(f"the audit log has {tree.size} entries, not {size}")
        return tree, size

    def root(self, size: int | None = None) -> bytes:
        """The root hash of the first *size* entries (default: all)."""
        tree, size = self._tree_of(size)
        return tree.root(size)

    def leaf_hash(self, index: int) -> bytes:
        """The stored leaf hash of entry *index*."""
        tree, _ = self._tree_of(None)
        if not 0 <= index < tree.size:
            raise ConfigError(f"the audit log has no entry {index}")
        return tree.leaf(index)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """The inclusion proof of entry *index* in the tree of the first *size* entries."""
        tree, size = self._tree_of(size)
        if not 0 <= index < size:
            raise ConfigError(f"entry {index} is not in the first {size} entries of the audit log")
        return tree.inclusion_proof(index, size)

    def consistency_proof(self, old: int, new: int | None = None) -> list[bytes]:
        """The proof that the tree of *old* entries is a prefix of the tree of *new*."""
        tree, new = self._tree_of(new)
        if not 0 <= old <= new:
            raise ConfigError(f"no consistency proof from size {old} to size {new}")
        return tree.consistency_proof(old, new)

    # -- checkpoints -----------------------------------------------------

    def checkpoints(self) -> list[StoredCheckpoint]:
        """Every stored checkpoint, oldest first."""
        with self.engine.connect() as conn:
            return read_checkpoints(conn)

    def latest_checkpoint(self) -> str | None:
        """The newest stored checkpoint note, or None."""
        with self.engine.connect() as conn:
            note = conn.execute(
                sa.select(checkpoints_table.c.note).order_by(checkpoints_table.c.id.desc()).limit(1)
            ).scalar_one_or_none()
        if isinstance(note, bytes):
            raise AuditIntegrityError("the latest checkpoint is not text: it was changed")
        return note

    def _store(self, tree_size: int, note: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                checkpoints_table.insert().values(
                    tree_size=tree_size, note=note, created_at=datetime.now(UTC)
                )
            )

    def checkpoint(self, signer: Signer, extensions: Sequence[str] = ()) -> str:
        """Sign the current tree head, store the note and return it.

        Refuses to sign a head whose prefix no longer has the root of the
        previous checkpoint (a changed history must not get a fresh signature),
        or whose origin differs from the log's earlier checkpoints.  This checks
        the stored leaf hashes (for this object's own appends, the hashes it
        stored); :func:`~domicile.audit.verify.verify_log` also rehashes every
        entry.
        """
        tree = self._sync()
        previous = self.latest_checkpoint()
        if previous is not None:
            try:
                before = Checkpoint.parse(parse_note(previous).text)
            except NoteError as exc:
                raise AuditIntegrityError(f"the latest checkpoint is malformed: {exc}") from exc
            if before.origin != self.origin:
                raise ConfigError(
                    f"this audit log's origin is {before.origin!r}, not {self.origin!r}",
                    hint="configure the log's origin; one log keeps one origin",
                )
            if before.size > tree.size or tree.root(before.size) != before.root:
                raise AuditIntegrityError(
                    f"the first {before.size} entries no longer have the root of the latest "
                    "checkpoint; refusing to sign a changed history",
                    hint="run `domicile audit verify` to find what changed",
                )
        size = tree.size
        head = Checkpoint(self.origin, size, tree.root(size), tuple(extensions))
        try:
            # Round-trip through the parser: it rejects what text() lets by
            # (an extension line that would not parse back, say).
            text = Checkpoint.parse(head.text()).text()
            signed = sign_note(text, signer)
        except NoteError as exc:
            raise ConfigError(f"cannot make a checkpoint: {exc}") from exc
        self._store(size, signed)
        return signed

    def cosign(
        self,
        note: str | None,
        witness: Signer,
        verifiers: Sequence[Verifier] = (),
    ) -> str:
        """Add *witness*'s signature to *note* (default: the latest checkpoint), store, return it.

        The witness first checks that the checkpoint belongs to this log and
        that its root is this log's root at that size; with *verifiers*, also
        that the note carries a valid signature by one of them.
        """
        if note is None:
            note = self.latest_checkpoint()
            if note is None:
                raise ConfigError(
                    "the audit log has no checkpoint to cosign",
                    hint="write one with `domicile audit checkpoint`",
                )
        try:
            parsed = open_note(note, verifiers)[0] if verifiers else parse_note(note)
            head = Checkpoint.parse(parsed.text)
        except NoteError as exc:
            raise ConfigError(f"not a valid checkpoint: {exc}") from exc
        if head.origin != self.origin:
            raise ConfigError(f"the checkpoint is of log {head.origin!r}, not {self.origin!r}")
        tree = self._sync()
        if head.size > tree.size or tree.root(head.size) != head.root:
            raise AuditIntegrityError(
                f"the checkpoint's root for {head.size} entries is not this log's root: "
                "refusing to cosign",
                where=f"checkpoint of tree size {head.size}",
            )
        signed = cosign_note(parsed, witness)
        self._store(head.size, signed)
        return signed


def stored_origin(engine: sa.Engine) -> str | None:
    """The origin named by the log's latest checkpoint, or None if it has none yet."""
    names = set(sa.inspect(engine).get_table_names())
    if checkpoints_table.name not in names:
        return None
    with engine.connect() as conn:
        note = conn.execute(
            sa.select(checkpoints_table.c.note).order_by(checkpoints_table.c.id.desc()).limit(1)
        ).scalar_one_or_none()
    if note is None:
        return None
    try:
        return Checkpoint.parse(parse_note(note).text).origin
    except NoteError as exc:
        raise AuditIntegrityError(f"the latest checkpoint is malformed: {exc}") from exc


def read_checkpoints(conn: sa.Connection) -> list[StoredCheckpoint]:
    """Every checkpoint row, in id order."""
    rows = conn.execute(
        sa.select(
            checkpoints_table.c.id,
            checkpoints_table.c.tree_size,
            checkpoints_table.c.note,
            checkpoints_table.c.created_at,
        ).order_by(checkpoints_table.c.id)
    ).all()
    return [StoredCheckpoint(int(r[0]), int(r[1]), r[2], r[3]) for r in rows]
