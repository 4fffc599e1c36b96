"""C2SP signed notes and tlog checkpoints (Ed25519 only).

A signed note (https://c2sp.org/signed-note, the format of
``golang.org/x/mod/sumdb/note``) is a UTF-8 text ending in a newline, a blank
line, then one line per signature::

    — <key name> <base64(4-byte key id || signature)>

The Ed25519 key id is the first four bytes of
``SHA-256(key name || 0x0A || 0x01 || public key)`` and the signature covers
the text including its final newline.  A verifier key is written
``<name>+<8 hex key id>+<base64(0x01 || public key)>``.

A checkpoint (https://c2sp.org/tlog-checkpoint) is a note whose text is the
log's origin, the tree size in decimal and the base64 root hash, one per
line, optionally followed by extension lines.

Parsing is strict (canonical base64, no stray bytes) so that any change to a
stored note is noticed; signatures by unknown keys are kept but not checked,
which is what lets a witness add its own line.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from domicile.audit.merkle import HASH_SIZE
from domicile.errors import ConfigError

ALG_ED25519 = 0x01
SIG_PREFIX = "\u2014 "  # an em dash and a space
MAX_SIGNATURES = 100  # as golang.org/x/mod/sumdb/note: bounds the work an input can cause

_DECIMAL = re.compile(r"0|[1-9][0-9]*")


class NoteError(ValueError):
    """A note, checkpoint or signature is malformed or does not verify."""


def b64encode(data: bytes) -> str:
    """Standard padded base64, as the C2SP formats use."""
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str) -> bytes:
    """Decode canonical standard base64; anything else raises :class:`NoteError`.

    Canonical means it re-encodes to the same text: Python's decoder would
    otherwise accept non-zero padding bits, letting a changed character go
    unnoticed.
    """
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise NoteError(f"invalid base64 {text!r}") from exc
    if b64encode(data) != text:
        raise NoteError(f"non-canonical base64 {text!r}")
    return data


def _check_key_name(name: str) -> None:
    if not name or any(c.isspace() for c in name) or "+" in name:
        raise NoteError(f"invalid key name {name!r}: it must be non-empty, with no spaces or '+'")


def key_id(name: str, public_key: bytes) -> bytes:
    """The 4-byte C2SP key id of an Ed25519 key: SHA-256(name || 0x0A || 0x01 || key)[:4]."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([ALG_ED25519]) + public_key).digest()[:4]


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True)
class Signature:
    """One signature line of a note."""

    name: str
    key_id: bytes
    signature: bytes

    def line(self) -> str:
        """The signature line, with its final newline."""
        return f"{SIG_PREFIX}{self.name} {b64encode(self.key_id + self.signature)}\n"


@dataclass(frozen=True)
class Note:
    """A note's text (ending in a newline) and its signatures, in order."""

    text: str
    signatures: tuple[Signature, ...] = ()

    def format(self) -> str:
        """The note as text: the body, a blank line, the signature lines."""
        return self.text + "\n" + "".join(s.line() for s in self.signatures)


class Signer:
    """Signs note texts with an Ed25519 private key under a key name."""

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        _check_key_name(name)
        self.name = name
        self.private_key = private_key
        self.public_key = _raw_public(private_key.public_key())
        self.key_id = key_id(name, self.public_key)

    def sign(self, text: str) -> Signature:
        """The signature of *text* (the note body including its final newline)."""
        _check_text(text)
        return Signature(self.name, self.key_id, self.private_key.sign(text.encode()))

    def verifier(self) -> Verifier:
        """The matching verifier."""
        return Verifier(self.name, Ed25519PublicKey.from_public_bytes(self.public_key))

    def verifier_key(self) -> str:
        """The verifier key text ``name+hexid+base64`` to publish."""
        return self.verifier().key_text()


class Verifier:
    """Checks signatures by one Ed25519 key known by its name and key id."""

    def __init__(self, name: str, public_key: Ed25519PublicKey) -> None:
        _check_key_name(name)
        self.name = name
        self.public_key = public_key
        self.raw = _raw_public(public_key)
        self.key_id = key_id(name, self.raw)

    @classmethod
    def from_key_text(cls, text: str) -> Verifier:
        """Parse ``<name>+<8 hex key id>+<base64(0x01 || public key)>``; ConfigError if bad."""
        text = text.strip()
        # The base64 part may itself hold '+', the name may not: split twice only.
        parts = text.split("+", 2)
        if len(parts) != 3:
            raise ConfigError(
                f"not a verifier key: {text!r}",
                hint="expected <name>+<8 hex digits>+<base64 key>, "
                "as `domicile keys public` prints it",
            )
        name, hex_id, b64 = parts
        try:
            _check_key_name(name)
            if not re.fullmatch(r"[0-9a-f]{8}", hex_id):
                raise NoteError(f"key id {hex_id!r} is not 8 lowercase hex digits")
            material = b64decode(b64)
            if len(material) != 1 + 32 or material[0] != ALG_ED25519:
                raise NoteError("only Ed25519 keys (type 0x01, 32 bytes) are supported")
            verifier = cls(name, Ed25519PublicKey.from_public_bytes(material[1:]))
        except (NoteError, ValueError) as exc:
            raise ConfigError(f"invalid verifier key {text!r}: {exc}") from exc
        if verifier.key_id.hex() != hex_id:
            raise ConfigError(
                f"invalid verifier key {text!r}: its key id does not match its name and key"
            )
        return verifier

    def key_text(self) -> str:
        """The verifier key text ``name+hexid+base64(0x01 || key)``."""
        material = b64encode(bytes([ALG_ED25519]) + self.raw)
        return f"{self.name}+{self.key_id.hex()}+{material}"

    def matches(self, sig: Signature) -> bool:
        """True when *sig* claims to be by this key (same name and key id)."""
        return sig.name == self.name and sig.key_id == self.key_id

    def verify(self, text: str, sig: Signature) -> bool:
        """True when *sig* is this key's valid signature over *text*."""
        if not self.matches(sig):
            return False
        try:
            self.public_key.verify(sig.signature, text.encode())
        except InvalidSignature:
            return False
        return True


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise NoteError("a note's text must end with a newline")
    if any(ord(c) < 0x20 and c != "\n" for c in text):
        raise NoteError("a note's text must not contain control characters")


def parse_verifier_keys(text: str) -> list[Verifier]:
    """Verifier keys, one per non-empty line (``#`` starts a comment line)."""
    keys = [
        Verifier.from_key_text(line)
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not keys:
        raise ConfigError("no verifier key found", hint="a key looks like name+1a2b3c4d+AXk...")
    return keys


def _parse_signature_line(line: str) -> Signature:
    if not line.startswith(SIG_PREFIX):
        raise NoteError(f"malformed signature line {line!r}: it must start with an em dash")
    name, sep, b64 = line[len(SIG_PREFIX) :].partition(" ")
    if not sep or " " in b64:
        raise NoteError(f"malformed signature line {line!r}")
    _check_key_name(name)
    blob = b64decode(b64)
    if len(blob) < 5:
        raise NoteError(f"malformed signature line {line!r}: the signature is too short")
    return Signature(name, blob[:4], blob[4:])


def parse_note(data: str | bytes) -> Note:
    """Split a signed note into its text and signatures; NoteError when malformed."""
    if isinstance(data, bytes | bytearray | memoryview):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise NoteError("the note is not valid UTF-8") from exc
    # Signature lines never hold a blank line, so they start after the last one.
    split = data.rfind("\n\n")
    if split < 0:
        raise NoteError("the note has no blank line before its signatures")
    text, block = data[: split + 1], data[split + 2 :]
    _check_text(text)
    if not block:
        raise NoteError("the note has no signatures")
    if not block.endswith("\n"):
        raise NoteError("the note's signature block must end with a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"the note has more than {MAX_SIGNATURES} signatures")
    return Note(text, tuple(_parse_signature_line(line) for line in lines))


def sign_note(text: str, *signers: Signer) -> str:
    """A new signed note over *text* with one signature per signer."""
    if not signers:
        raise ValueError("a signed note needs at least one signer")
    return Note(text, tuple(s.sign(text) for s in signers)).format()


def cosign(note: str | Note, signer: Signer) -> str:
    """Append *signer*'s signature to an existing note.

    A signature already there by the same key is replaced (as
    ``golang.org/x/mod/sumdb/note.Sign`` does), every other line is kept.
    """
    parsed = parse_note(note) if isinstance(note, str) else note
    kept = tuple(
        s for s in parsed.signatures if not (s.name == signer.name and s.key_id == signer.key_id)
    )
    return Note(parsed.text, (*kept, signer.sign(parsed.text))).format()


def open_note(data: str | bytes, verifiers: Iterable[Verifier]) -> tuple[Note, list[Signature]]:
    """Parse a note and check it; return it with the signatures that verified.

    Signatures by keys not in *verifiers* are ignored (a witness may have
    added its own); a signature by a known key that does not verify, or no
    signature by any known key, raises :class:`NoteError`.
    """
    note = parse_note(data)
    known = list(verifiers)
    verified: list[Signature] = []
    for sig in note.signatures:
        for v in known:
            if v.matches(sig):
                if not v.verify(note.text, sig):
                    raise NoteError(f"the signature by key {sig.name!r} does not verify")
                verified.append(sig)
                break
    if not verified:
        names = ", ".join(sorted({v.name for v in known})) or "none"
        raise NoteError(f"no valid signature by a known key (known: {names})")
    return note, verified


@dataclass(frozen=True)
class Checkpoint:
    """A tlog checkpoint body: origin, tree size, root hash and extension lines."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def text(self) -> str:
        """The checkpoint body as note text (every line ending in a newline)."""
        if not self.origin or "\n" in self.origin:
            raise NoteError(f"invalid checkpoint origin {self.origin!r}")
        if self.size < 0 or len(self.root) != HASH_SIZE:
            raise NoteError("invalid checkpoint size or root hash")
        for ext in self.extensions:
            if not ext or "\n" in ext:
                raise NoteError(f"invalid checkpoint extension line {ext!r}")
        lines = [self.origin, str(self.size), b64encode(self.root), *self.extensions]
        return "".join(line + "\n" for line in lines)

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """Parse a checkpoint body (a note's text); NoteError when malformed."""
        _check_text(text)
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise NoteError("a checkpoint has at least three lines: origin, size, root hash")
        origin, size, root_b64, *extensions = lines
        if not origin:
            raise NoteError("the checkpoint's origin line is empty")
        if not _DECIMAL.fullmatch(size):
            raise NoteError(f"the checkpoint's tree size {size!r} is not a decimal number")
        root = b64decode(root_b64)
        if len(root) != HASH_SIZE:
            raise NoteError(f"the checkpoint's root hash has {len(root)} bytes, not {HASH_SIZE}")
        if any(not ext for ext in extensions):
            raise NoteError("the checkpoint has an empty extension line")
        return cls(origin, int(size), root, tuple(extensions))


def sign_checkpoint(checkpoint: Checkpoint, signers: Sequence[Signer]) -> str:
    """The signed note of a checkpoint."""
    return sign_note(checkpoint.text(), *signers)


def open_checkpoint(
    data: str | bytes, verifiers: Iterable[Verifier]
) -> tuple[Checkpoint, Note, list[Signature]]:
    """Parse and verify a signed checkpoint (see :func:`open_note`)."""
    note, verified = open_note(data, verifiers)
    return Checkpoint.parse(note.text), note, verified
