"""Export the audit log to a folder that anyone can verify offline.

The folder holds the exact bytes that were hashed (one entry per line), the
signed checkpoints and the public key, plus a README saying how to check
them with domicile or with any RFC 6962 implementation.  The export is
written to a temporary sibling folder, verified from its files, and only
then moved into place: a log that does not verify is never exported.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from domicile.audit.log import entries_table, read_checkpoints
from domicile.audit.note import parse_verifier_keys
from domicile.audit.verify import (
    CHECKPOINTS_DIR,
    ENTRIES_FILE,
    LogTampered,
    VerifyResult,
    verify_export,
)
from domicile.errors import ConfigError

PUBLIC_KEY_FILE = "audit.pub"
README_FILE = "README.txt"

README = """\
domicile audit log export
=========================

This folder is a copy of a domicile audit log: an append-only Merkle log
(RFC 6962 hashing) whose tree heads are signed checkpoints (C2SP
tlog-checkpoint notes).  The entries hold digests, never personal data.

  entries.jsonl       one entry per line: exactly the bytes that were hashed
                      (canonical JSON, UTF-8), each followed by one newline
  checkpoints/N.txt   the signed checkpoints, N = the order they were written
  audit.pub           the log's public key (C2SP verifier key format)

Check that audit.pub is the key you trust (the one the operator published)
before relying on a result: whoever can rewrite this folder can replace it.

Verify with domicile
--------------------

  domicile audit verify --from DIR --public-key DIR/audit.pub

Exit status 0: every checkpoint's signature is valid, each checkpoint's root
hash is the root of the first N entries, and each checkpoint is consistent
with the one before it.  Entries after the last checkpoint are listed as not
yet covered: nothing signed vouches for them.  Exit status 5 and a message
naming the entry or checkpoint: the log was changed.

Verify with any RFC 6962 implementation
---------------------------------------

- leaf hash of entry i = SHA-256(0x00 || line i without its newline)
- node hash            = SHA-256(0x01 || left || right)
- the tree over n leaves splits at k, the largest power of two below n;
  the empty tree's hash is SHA-256 of the empty string
- a checkpoint's text is three lines: origin, tree size N (decimal), base64
  root hash of the first N entries; then a blank line and signature lines
  "<em dash> <key name> <base64(4-byte key id || Ed25519 signature)>"
- the signature covers the text up to and including the root line's newline;
  the key id is SHA-256(key name || 0x0A || 0x01 || 32-byte public key)[:4];
  audit.pub is "<key name>+<hex key id>+<base64(0x01 || public key)>"
- lines by other keys (witness cosignatures) can be ignored or checked with
  the witness's own public key

A self-contained check of the roots, in Python with only the standard
library (signatures still need an Ed25519 library, such as "cryptography"):

    import base64, hashlib, pathlib, sys
    d = pathlib.Path(sys.argv[1])
    H = lambda b: hashlib.sha256(b).digest()
    leaves = [H(b"\\x00" + l) for l in d.joinpath("entries.jsonl").read_bytes().split(b"\\n")[:-1]]
    def mth(hs):
        if len(hs) == 0: return H(b"")
        if len(hs) == 1: return hs[0]
        k = 1 << ((len(hs) - 1).bit_length() - 1)
        return H(b"\\x01" + mth(hs[:k]) + mth(hs[k:]))
    for cp in sorted(d.joinpath("checkpoints").glob("*.txt")):
        origin, size, root = cp.read_text(encoding="utf-8").split("\\n")[:3]
        ok = mth(leaves[: int(size)]) == base64.b64decode(root)
        print(cp.name, size, "ok" if ok else "ROOT MISMATCH")
"""


@dataclass(frozen=True)
class ExportResult:
    """Where the export went and what its verification established."""

    directory: Path
    verified: VerifyResult


def _write_export(conn: sa.Connection, tmp: Path, public_key_text: str) -> None:
    (tmp / CHECKPOINTS_DIR).mkdir()
    # The checkpoints first: entries appended meanwhile are then simply
    # uncovered, never missing from a checkpoint that claims them.
    for cp in read_checkpoints(conn):
        note = cp.note if isinstance(cp.note, bytes) else cp.note.encode("utf-8")
        (tmp / CHECKPOINTS_DIR / f"{cp.id:04d}.txt").write_bytes(note)
    rows = conn.execution_options(stream_results=True, yield_per=10_000).execute(
        sa.select(entries_table.c.idx, entries_table.c.entry).order_by(entries_table.c.idx)
    )
    with (tmp / ENTRIES_FILE).open("wb") as f:
        for idx, entry in rows:
            data = bytes(entry)
            if b"\n" in data:
                # Canonical JSON never holds a raw newline; this entry was altered.
                raise LogTampered(
                    "the entry holds a newline, which no appended entry can: it was changed",
                    where=f"audit entry {idx}",
                    entry_index=int(idx),
                )
            f.write(data + b"\n")
    (tmp / PUBLIC_KEY_FILE).write_text(public_key_text.strip() + "\n", encoding="utf-8")
    (tmp / README_FILE).write_text(README, encoding="utf-8")


def export_log(
    engine: sa.Engine, directory: Path, public_key_text: str, *, force: bool = False
) -> ExportResult:
    """Export the audit log to *directory* and verify the export with *public_key_text*.

    Raises ConfigError when *directory* exists and is not empty (unless
    *force*, which replaces it), and AuditIntegrityError when the exported
    log does not verify (nothing is then written).
    """
    directory = Path(directory)
    parse_verifier_keys(public_key_text)  # a bad key is bad input, before any work
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())) and not force:
        raise ConfigError(
            f"{directory} exists and is not empty", hint="choose a new folder, or use --force"
        )
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        # mkdtemp makes it owner-only; an export is meant to be handed out.
        tmp.chmod(0o755)
        with engine.connect() as conn:
            _write_export(conn, tmp, public_key_text)
        result = verify_export(tmp, public_key_text)
        if directory.is_dir():
            shutil.rmtree(directory)
        elif directory.exists():
            directory.unlink()
        tmp.rename(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(directory, result)
