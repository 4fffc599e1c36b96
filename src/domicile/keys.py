"""The deployment's keys: the audit signing key and the HMAC key for record keys.

``domicile keys init`` writes, in a folder (by default ``.domicile/keys/``
beside the data map):

- ``audit.key``: the Ed25519 private key that signs audit checkpoints (PEM,
  PKCS #8, mode 0600);
- ``audit.pub``: its C2SP verifier key ``<name>+<key id>+<base64 key>``, the
  one line an auditor needs to check the log offline;
- ``hmac.key``: 32 random bytes (hex, mode 0600) used to hash record keys
  before they enter the audit log, so that the log holds no personal data
  yet the same record always gets the same digest.  ``DOMICILE_HMAC_KEY``
  (hex) overrides the file, for deployments that keep secrets elsewhere.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from domicile.audit.note import Signer, Verifier, parse_verifier_keys
from domicile.defaults import DEFAULT_KEY_NAME
from domicile.errors import ConfigError

PRIVATE_KEY_FILE = "audit.key"
PUBLIC_KEY_FILE = "audit.pub"
HMAC_KEY_FILE = "hmac.key"
HMAC_ENV = "DOMICILE_HMAC_KEY"
HMAC_KEY_SIZE = 32
MIN_HMAC_KEY_SIZE = 16


def default_keys_dir(config_path: Path) -> Path:
    """Where keys live by default: ``.domicile/keys`` beside the data map."""
    return config_path.parent / ".domicile" / "keys"


def default_origin(name: str | None = None) -> str:
    """The default checkpoint origin ``domicile/<name>``, the host name if none is given."""
    return f"domicile/{name or socket.gethostname() or 'localhost'}"


@dataclass(frozen=True)
class KeyFiles:
    """What :func:`init_keys` wrote."""

    directory: Path
    private_key: Path
    public_key: Path
    hmac_key: Path
    verifier_key: str


def write_private(path: Path, data: bytes) -> None:
    """Write *data* readable by the owner only, replacing *path* atomically.

    mkstemp creates the file with mode 0600 before a byte is written, so the
    secret is never readable by others, and the rename means a crash leaves
    either the old key or the new one, never half of one.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def init_keys(directory: Path, *, name: str = DEFAULT_KEY_NAME, force: bool = False) -> KeyFiles:
    """Create the audit key pair and the HMAC key in *directory*.

    Refuses (ConfigError) to replace existing keys unless *force*: a new
    signing key orphans every checkpoint signed so far, and a new HMAC key
    changes the digest of every record key.
    """
    files = KeyFiles(
        directory=directory,
        private_key=directory / PRIVATE_KEY_FILE,
        public_key=directory / PUBLIC_KEY_FILE,
        hmac_key=directory / HMAC_KEY_FILE,
        verifier_key="",
    )
    existing = [p for p in (files.private_key, files.public_key, files.hmac_key) if p.exists()]
    if existing and not force:
        raise ConfigError(
            "keys already exist: " + ", ".join(str(p) for p in existing),
            hint="use --force to replace them; checkpoints signed with the old key will then "
            "only verify with the old public key, and record-key digests will change",
        )
    private = Ed25519PrivateKey.generate()
    try:
        signer = Signer(name, private)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_private(files.private_key, pem)
        write_private(files.hmac_key, secrets.token_bytes(HMAC_KEY_SIZE).hex().encode() + b"\n")
        verifier_key = signer.verifier_key()
        files.public_key.write_text(verifier_key + "\n", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write keys to {directory}: {exc.strerror or exc}") from exc
    return KeyFiles(
        directory=files.directory,
        private_key=files.private_key,
        public_key=files.public_key,
        hmac_key=files.hmac_key,
        verifier_key=verifier_key,
    )


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"no {what} at {path}", hint="create keys with `domicile keys init`"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc


def read_verifier_keys(path: Path) -> list[Verifier]:
    """The verifier keys in a public key file (one per line)."""
    try:
        text = _read(path, "public key").decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text file of verifier keys") from None
    try:
        return parse_verifier_keys(text)
    except ConfigError as exc:
        raise ConfigError(exc.message, where=str(path), hint=exc.hint) from exc


def public_key_text(directory: Path) -> str:
    """The verifier key of the audit key pair in *directory*."""
    return read_verifier_keys(directory / PUBLIC_KEY_FILE)[0].key_text()


def load_signer(private_key_file: Path, name: str | None = None) -> Signer:
    """The signer for an Ed25519 PEM private key.

    The key name is *name*, else the one in the ``.pub`` file beside the key
    (``audit.key`` → ``audit.pub``), which must then belong to the same key.
    """
    data = _read(private_key_file, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{private_key_file} is not an unencrypted PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{private_key_file} is not an Ed25519 key")
    pub_file = private_key_file.with_suffix(".pub")
    if name is None:
        if not pub_file.exists():
            raise ConfigError(
                f"no key name for {private_key_file}",
                hint=f"give --name, or put its verifier key in {pub_file}",
            )
        name = read_verifier_keys(pub_file)[0].name
    try:
        signer = Signer(name, key)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if pub_file.exists():
        published = read_verifier_keys(pub_file)[0]
        if published.name == name and published.key_id != signer.key_id:
            raise ConfigError(
                f"{private_key_file} does not match the public key in {pub_file}",
                hint="restore the matching pair, or create new keys with `domicile keys init`",
            )
    return signer


def load_hmac_key(directory: Path | None) -> bytes:
    """The HMAC key: ``$DOMICILE_HMAC_KEY`` (hex) if set, else ``hmac.key`` in *directory*."""
    env = os.environ.get(HMAC_ENV)
    if env is not None:
        text, where = env, f"${HMAC_ENV}"
    elif directory is None:
        raise ConfigError(f"no HMAC key: set ${HMAC_ENV} or run `domicile keys init`")
    else:
        path = directory / HMAC_KEY_FILE
        text, where = _read(path, "HMAC key").decode("ascii", "replace"), str(path)
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        raise ConfigError("the HMAC key is not hex", where=where) from None
    if len(key) < MIN_HMAC_KEY_SIZE:
        raise ConfigError(
            f"the HMAC key has {len(key)} bytes; at least {MIN_HMAC_KEY_SIZE} are needed",
            where=where,
        )
    return key


def keyed_hash(hmac_key: bytes, value: str | bytes) -> str:
    """The hex HMAC-SHA256 of *value*: a stable digest of a record key that hides it."""
    data = value.encode("utf-8") if isinstance(value, str) else value
    return hmac.new(hmac_key, data, hashlib.sha256).hexdigest()
