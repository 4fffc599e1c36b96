"""Verify an audit log, in the state store or exported to a folder.

Verification trusts nothing stored: it rehashes every entry, rebuilds the
tree, and for every checkpoint, in the order they were written, checks

1. the note is well formed, signed by a known key, and every signature by a
   known key is valid;
2. it names the same log (origin) as the others, and its stored tree size is
   the one it signs;
3. its root is the root of the first N entries;
4. it is consistent with the checkpoint before it (an RFC 6962 consistency
   proof between the two verifies).

The first failure raises :class:`LogTampered` (an AuditIntegrityError) that
names the entry index or the checkpoint (id and tree size) and says why.
"""

from __future__ import annotations

import hashlib
from collections.abc import Generator, Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from domicile.audit import merkle
from domicile.audit.log import checkpoints_table, entries_table, read_checkpoints
from domicile.audit.note import (
    Checkpoint,
    NoteError,
    Verifier,
    open_checkpoint,
    parse_verifier_keys,
)
from domicile.connectors.numbered import read_pages
from domicile.errors import AuditIntegrityError, ConfigError

ENTRIES_FILE = "entries.jsonl"
CHECKPOINTS_DIR = "checkpoints"
# Entries read, hashed and checked at a time: large pages keep the
# interpreter's work per entry to one hash in a list comprehension.
_PAGE = 50_000

# One page of stored entries: (index, entry bytes, stored leaf hash or None).
Row = tuple[int, bytes, bytes | None]


class LogTampered(AuditIntegrityError):
    """The audit log does not verify; says which entry or checkpoint and why."""

    def __init__(
        self,
        message: str,
        *,
        where: str,
        entry_index: int | None = None,
        checkpoint_id: int | None = None,
        tree_size: int | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, where=where, hint=hint)
        self.entry_index = entry_index
        self.checkpoint_id = checkpoint_id
        self.tree_size = tree_size


@dataclass(frozen=True)
class VerifyResult:
    """What a successful verification established."""

    entries: int
    checkpoints: int
    root: bytes  # of all entries
    origin: str | None = None
    checkpoint_size: int = 0  # tree size of the latest checkpoint
    checkpoint_root: bytes | None = None
    signers: tuple[str, ...] = field(default=())  # key names whose signatures verified

    @property
    def uncovered(self) -> int:
        """Entries after the latest checkpoint: hashed, but not yet signed by anyone."""
        return self.entries - self.checkpoint_size


@dataclass(frozen=True)
class _StoredNote:
    id: int
    note: str | bytes
    tree_size: int | None  # the stored size column, when there is one
    label: str  # how to name it to a person


def _verifiers(keys: Sequence[str] | str) -> list[Verifier]:
    texts = [keys] if isinstance(keys, str) else list(keys)
    verifiers = [v for text in texts for v in parse_verifier_keys(text)]
    if not verifiers:
        raise ConfigError("verifying the audit log needs at least one public key")
    return verifiers


def _where(cp: _StoredNote, size: int | None) -> str:
    return f"{cp.label} (tree size {size if size is not None else '?'})"


def _bad_checkpoint(cp: _StoredNote, size: int | None, why: str) -> LogTampered:
    return LogTampered(why, where=_where(cp, size), checkpoint_id=cp.id, tree_size=size)


def _open_all(
    stored: Sequence[_StoredNote], verifiers: Sequence[Verifier], origin: str | None
) -> list[tuple[_StoredNote, Checkpoint, tuple[str, ...]]]:
    """Parse and check the signature of every checkpoint; raise on the first bad one."""
    opened: list[tuple[_StoredNote, Checkpoint, tuple[str, ...]]] = []
    for cp in stored:
        try:
            head, _note, verified = open_checkpoint(cp.note, verifiers)
        except NoteError as exc:
            why = f"the checkpoint note does not verify: {exc}"
            raise _bad_checkpoint(cp, cp.tree_size, why) from exc
        if cp.tree_size is not None and cp.tree_size != head.size:
            why = f"the stored tree size {cp.tree_size} differs from the signed size {head.size}"
            raise _bad_checkpoint(cp, cp.tree_size, why)
        # One log, one origin: the given one, else the first checkpoint's.
        expected = origin if origin is not None else (opened[0][1].origin if opened else None)
        if expected is not None and head.origin != expected:
            why = f"the checkpoint is of log {head.origin!r}, not {expected!r}"
            raise _bad_checkpoint(cp, head.size, why)
        if opened and head.size < opened[-1][1].size:
            before, before_head, _ = opened[-1]
            why = (
                f"the log went backwards: {before.label} signed {before_head.size} entries, "
                f"this later checkpoint only {head.size}"
            )
            raise _bad_checkpoint(cp, head.size, why)
        opened.append((cp, head, tuple(s.name for s in verified)))
    return opened


def _first_fault(
    rows: Sequence[Row], expected: int, entry_label: str, *, with_leaves: bool
) -> LogTampered:
    """The error for the first row of a page, in index order, that does not check out."""
    sha256 = hashlib.sha256
    for offset, (index, entry, stored) in enumerate(rows):
        if index != expected + offset:
            missing = expected + offset
            return LogTampered(
                f"entry {missing} is missing (the next stored entry is {index})",
                where=entry_label.format(missing),
                entry_index=missing,
            )
        if not isinstance(entry, bytes | bytearray | memoryview):
            return LogTampered(
                f"the entry is stored as {type(entry).__name__}, not bytes: it was changed",
                where=entry_label.format(index),
                entry_index=index,
            )
        if with_leaves and sha256(b"\x00" + entry).digest() != stored:
            return LogTampered(
                "the stored leaf hash is not the hash of the entry's bytes: the entry or its "
                "hash was changed",
                where=entry_label.format(index),
                entry_index=index,
            )
    raise AssertionError("a page that failed has no fault")


def _page_leaves(
    rows: Sequence[Row], expected: int, entry_label: str, *, with_leaves: bool
) -> bytes:
    """The packed leaf hashes of one page, after checking its indices and stored hashes.

    Indices come from a unique key in order (or are counted), so the first
    and the last being right means all are; the stored hashes are compared
    all at once (*with_leaves*: the rows carry them).  Only a page that
    fails is looked at row by row, to name its first fault.
    """
    try:
        if rows[0][0] == expected and rows[-1][0] == expected + len(rows) - 1:
            sha256 = hashlib.sha256
            packed = b"".join([sha256(b"\x00" + entry).digest() for _, entry, _ in rows])
            stored: list[Any] = [leaf for _, _, leaf in rows] if with_leaves else []
            if not with_leaves or packed == b"".join(stored):
                return packed
    except TypeError:  # an entry or a leaf hash that is not bytes
        pass
    raise _first_fault(rows, expected, entry_label, with_leaves=with_leaves)


def _verify(
    pages: Iterable[Sequence[Row]],
    stored: Sequence[_StoredNote],
    verifiers: Sequence[Verifier],
    *,
    origin: str | None,
    entry_label: str,
    with_leaves: bool,
    kept: Sequence[_StoredNote] = (),
) -> VerifyResult:
    """The checks shared by a log in a database and an exported folder.

    *pages* are the entries in order; *with_leaves* says that each row
    carries a stored leaf hash (the database's) that must be the entry's.

    *kept* are checkpoints held outside the log (exported, published, held
    by a witness): each must verify, name this log, and sign a prefix of it,
    so that entries and checkpoints deleted together cannot pass unseen.
    """
    opened = _open_all(stored, verifiers, origin)
    outside = [_open_all([cp], verifiers, origin)[0] for cp in kept]

    tree = merkle.MerkleTree()
    for rows in pages:
        if rows:
            tree.extend_packed(_page_leaves(rows, tree.size, entry_label, with_leaves=with_leaves))

    previous: tuple[_StoredNote, Checkpoint] | None = None
    signers: set[str] = set()
    for cp, head, names in opened:
        where = _where(cp, head.size)
        if head.size > tree.size:
            raise LogTampered(
                f"the checkpoint signs {head.size} entries but the log holds {tree.size}: "
                "entries were removed",
                where=where,
                checkpoint_id=cp.id,
                tree_size=head.size,
            )
        root = tree.root(head.size)
        if root != head.root:
            low = previous[1].size if previous else 0
            raise LogTampered(
                f"the root of the first {head.size} entries is {root.hex()}, the signed root is "
                f"{head.root.hex()}: an entry among indices {low}..{head.size - 1} was changed, "
                "removed, reordered or inserted",
                where=where,
                checkpoint_id=cp.id,
                tree_size=head.size,
            )
        if previous is not None:
            old = previous[1]
            proof = tree.consistency_proof(old.size, head.size)
            if not merkle.verify_consistency(old.size, head.size, old.root, head.root, proof):
                raise LogTampered(
                    f"not consistent with {_where(previous[0], old.size)}",
                    where=where,
                    checkpoint_id=cp.id,
                    tree_size=head.size,
                )
        signers.update(names)
        previous = (cp, head)

    for cp, head, _names in outside:
        where = _where(cp, head.size)
        log_origin = previous[1].origin if previous else origin
        if log_origin is not None and head.origin != log_origin:
            why = f"it is of log {head.origin!r}, not {log_origin!r}"
            raise _bad_checkpoint(cp, head.size, why)
        if head.size > tree.size:
            raise LogTampered(
                f"the checkpoint kept outside signs {head.size} entries but the log holds "
                f"{tree.size}: entries (and the checkpoints after them) were removed",
                where=where,
                checkpoint_id=cp.id,
                tree_size=head.size,
            )
        if tree.root(head.size) != head.root:
            raise LogTampered(
                f"the first {head.size} entries of the log are not the ones the checkpoint kept "
                "outside signed: the log was rewritten",
                where=where,
                checkpoint_id=cp.id,
                tree_size=head.size,
            )

    return VerifyResult(
        entries=tree.size,
        checkpoints=len(opened),
        root=tree.root(),
        origin=previous[1].origin if previous else origin,
        checkpoint_size=previous[1].size if previous else 0,
        checkpoint_root=previous[1].root if previous else None,
        signers=tuple(sorted(signers)),
    )


def _db_pages(conn: sa.Connection) -> Generator[Sequence[Row], None, None]:
    """The stored entries in index order, a page at a time, as the driver returns them."""
    yield from read_pages(conn, entries_table, ("idx", "entry", "leaf_hash"), _PAGE)


def verify_log(
    engine: sa.Engine,
    verifier_keys: Sequence[str] | str,
    *,
    origin: str | None = None,
    kept: Sequence[tuple[str, str]] = (),
) -> VerifyResult:
    """Verify the audit log in a state store against the given verifier keys.

    *verifier_keys* are C2SP verifier key texts (the log's key, and any
    witness keys whose signatures should be checked too).  With *origin*,
    every checkpoint must name that log.  *kept* are ``(label, note)``
    checkpoints held outside the state store: the log must be at least as
    large as each and consistent with it.
    """
    verifiers = _verifiers(verifier_keys)
    outside = [_StoredNote(-1 - i, note, None, label) for i, (label, note) in enumerate(kept)]
    names = set(sa.inspect(engine).get_table_names())
    if entries_table.name not in names or checkpoints_table.name not in names:
        if outside:
            cp, head, _ = _open_all(outside[:1], verifiers, origin)[0]
            raise LogTampered(
                f"the state store has no audit log, but the checkpoint kept outside signs "
                f"{head.size} entries: the log was removed",
                where=_where(cp, head.size),
                tree_size=head.size,
            )
        raise ConfigError(
            "the state store has no audit log",
            hint="the audit tables are created by the first run or `domicile audit checkpoint`",
        )
    # One read transaction, so that entries and checkpoints are one snapshot
    # where the database offers it.
    with engine.connect() as conn:
        stored = [
            _StoredNote(cp.id, cp.note, cp.tree_size, f"checkpoint {cp.id}")
            for cp in read_checkpoints(conn)
        ]
        # closing: a verification that stops early closes the cursor while
        # the connection is still open
        with closing(_db_pages(conn)) as pages:
            return _verify(
                pages,
                stored,
                verifiers,
                origin=origin,
                entry_label="audit entry {}",
                with_leaves=True,
                kept=outside,
            )


def _file_pages(path: Path) -> Generator[Sequence[Row], None, None]:
    """The lines of an exported entries file, a page at a time, without their newlines."""
    with path.open("rb") as f:
        base = 0
        while lines := list(islice(f, _PAGE)):
            # Only a file's last line can lack its newline.
            if not lines[-1].endswith(b"\n"):
                index = base + len(lines) - 1
                raise LogTampered(
                    "the last line has no newline: the file was cut or changed",
                    where=f"{path.name} line {index + 1} (entry {index})",
                    entry_index=index,
                )
            yield [(base + i, line[:-1], None) for i, line in enumerate(lines)]
            base += len(lines)


def read_export_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """The checkpoint files of an export, by checkpoint id."""
    folder = directory / CHECKPOINTS_DIR
    if not folder.is_dir():
        return []
    found: list[tuple[int, Path]] = []
    for path in folder.iterdir():
        if path.suffix != ".txt" or not path.stem.isdigit():
            raise AuditIntegrityError(
                "unexpected file among the checkpoints", where=str(path.relative_to(directory))
            )
        found.append((int(path.stem), path))
    return sorted(found)


def verify_export(
    directory: Path, public_key_text: Sequence[str] | str, *, origin: str | None = None
) -> VerifyResult:
    """Verify an exported audit log from its files alone (no state store needed)."""
    directory = Path(directory)
    verifiers = _verifiers(public_key_text)
    entries_path = directory / ENTRIES_FILE
    if not entries_path.is_file():
        raise ConfigError(f"no {ENTRIES_FILE} in {directory}", hint="is this an audit export?")
    stored = [
        _StoredNote(cp_id, path.read_bytes(), None, f"{CHECKPOINTS_DIR}/{path.name}")
        for cp_id, path in read_export_checkpoints(directory)
    ]
    return _verify(
        _file_pages(entries_path),
        stored,
        verifiers,
        origin=origin,
        entry_label=ENTRIES_FILE + " entry {}",
        with_leaves=False,
    )
