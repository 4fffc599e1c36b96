"""The ``domicile audit`` and ``domicile keys`` commands: thin shells over the library.

The main CLI mounts them with ``app.add_typer(audit_app, name="audit")`` and
``app.add_typer(keys_app, name="keys")``.  Exit codes: 0 ok, 2 bad input,
5 the audit log does not verify.  Errors are printed as one message on
stderr, never as a traceback.

Importing this module must stay cheap (``domicile --help`` does): SQLAlchemy,
YAML, cryptography and the audit log are imported by the commands that use
them.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from domicile.defaults import DEFAULT_KEY_NAME
from domicile.errors import (
    EXIT_BAD_INPUT,
    AuditIntegrityError,
    ConfigError,
    DomicileError,
    exit_code_for,
)

if TYPE_CHECKING:
    import sqlalchemy as sa

    from domicile.audit.log import AuditLog
    from domicile.audit.verify import VerifyResult

audit_app = typer.Typer(
    help="Check, prove and export the tamper-evident audit log.", no_args_is_help=True
)
keys_app = typer.Typer(
    help="Create and show the audit signing and HMAC keys.", no_args_is_help=True
)

CONFIG_OPTION = typer.Option(
    Path("domicile.yaml"), "-c", "--config", help="The data map.", show_default=True
)

_ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class _Settings:
    """What the audit commands need from the data map."""

    state_url: str
    base: Path  # the data map's folder: relative paths are resolved against it
    keys_dir: Path
    origin: str | None


def _expand(value: str, where: str) -> str:
    def sub(m: re.Match[str]) -> str:
        if m.group(1) not in os.environ:
            raise ConfigError(f"environment variable {m.group(1)} is not set", where=where)
        return os.environ[m.group(1)]

    return _ENV_VAR.sub(sub, value)


def _state_and_keys(config: Path, *, required: bool = True) -> _Settings:
    """Read just what the audit needs from the data map: ``state`` and ``audit``.

    Kept to this one function so that the full data-map loader can replace it.
    ``audit: {origin: ..., keys: ...}`` are optional; keys default to
    ``.domicile/keys`` beside the map.
    """
    import yaml

    from domicile import keys as keystore
    from domicile.state import DEFAULT_STATE

    base = config.parent
    data: Any = {}
    if config.exists():
        try:
            data = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{config}:{mark.line + 1}" if mark is not None else str(config)
            raise ConfigError(f"not valid YAML: {exc}", where=where) from exc
        if not isinstance(data, dict):
            raise ConfigError("the data map must be a mapping", where=str(config))
    elif required:
        raise ConfigError(
            f"no data map at {config}", hint="pass -c/--config PATH, or run in the map's folder"
        )
    state = data.get("state", DEFAULT_STATE)
    audit = data.get("audit") or {}
    if not isinstance(state, str) or not isinstance(audit, dict):
        raise ConfigError("`state` must be a URL and `audit` a mapping", where=str(config))
    keys = audit.get("keys")
    origin = audit.get("origin")
    if (keys is not None and not isinstance(keys, str)) or (
        origin is not None and not isinstance(origin, str)
    ):
        raise ConfigError("`audit.keys` and `audit.origin` must be strings", where=str(config))
    return _Settings(
        state_url=_expand(state, f"{config}: state"),
        base=base,
        keys_dir=base / keys if keys else keystore.default_keys_dir(config),
        origin=origin,
    )


@contextmanager
def _engine(settings: _Settings) -> Iterator[sa.Engine]:
    from domicile.state import state_engine

    engine = state_engine(settings.state_url, settings.base)
    try:
        yield engine
    finally:
        engine.dispose()


def _short(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    return str(orig if orig is not None else exc).strip().splitlines()[0]


@contextmanager
def _errors() -> Iterator[None]:
    """Turn errors into one message and the documented exit code."""
    try:
        yield
    except AuditIntegrityError as exc:
        typer.echo(f"audit log does not verify: {exc}", err=True)
        raise typer.Exit(exit_code_for(exc)) from None
    except DomicileError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exit_code_for(exc)) from None
    except OSError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except Exception as exc:
        if not _is_sqlalchemy_error(exc):
            raise
        typer.echo(f"error: the state store failed: {_short(exc)}", err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None


def _is_sqlalchemy_error(exc: BaseException) -> bool:
    """True for a SQLAlchemy error (none can be raised before SQLAlchemy is imported)."""
    sa_exc = sys.modules.get("sqlalchemy.exc")
    return sa_exc is not None and isinstance(exc, sa_exc.SQLAlchemyError)


def _key_texts(files: list[Path] | None, settings: _Settings | None) -> list[str]:
    """The verifier keys: from --public-key files, else the deployment's own public key."""
    from domicile import keys as keystore

    if not files:
        if settings is None or not (settings.keys_dir / keystore.PUBLIC_KEY_FILE).exists():
            raise ConfigError(
                "no public key to verify with",
                hint="pass --public-key FILE (the verifier key the log's operator published)",
            )
        files = [settings.keys_dir / keystore.PUBLIC_KEY_FILE]
    return [v.key_text() for f in files for v in keystore.read_verifier_keys(f)]


def _read_text(path: Path, what: str) -> str:
    """A small text file the user named; a clear error when it cannot be read."""
    try:
        if path.stat().st_size > 1 << 20:
            raise ConfigError(f"{what} file {path} is larger than 1 MiB: not a {what}")
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read the {what} file {path}: {exc}",
            hint="pass the file `domicile audit checkpoint` printed (or an export's checkpoint)",
        ) from None


def _log(engine: sa.Engine, settings: _Settings, origin: str | None = None) -> AuditLog:
    from domicile import keys as keystore
    from domicile.audit.log import AuditLog, stored_origin

    chosen = origin or settings.origin or stored_origin(engine) or keystore.default_origin()
    return AuditLog(engine, chosen)


def _print_result(result: VerifyResult, source: str) -> None:
    typer.echo(
        f"audit log verified ({source}): {result.entries} entries, {result.checkpoints} checkpoints"
    )
    if result.checkpoint_root is not None:
        typer.echo(f"  origin             {result.origin}")
        typer.echo(
            f"  latest checkpoint  tree size {result.checkpoint_size}, "
            f"root {result.checkpoint_root.hex()}"
        )
        typer.echo(f"  signed by          {', '.join(result.signers)}")
    typer.echo(f"  root of all        {result.root.hex()}")
    if result.uncovered:
        typer.echo(
            f"  warning: {result.uncovered} entries are not covered by a signed checkpoint yet "
            "(`domicile audit checkpoint` signs them)"
        )


@audit_app.command("verify")
def verify_command(
    public_key: list[Path] | None = typer.Option(
        None, "--public-key", help="Verifier key file(s); default: the deployment's audit.pub."
    ),
    from_dir: Path | None = typer.Option(
        None, "--from", help="Verify an exported folder instead of the state store."
    ),
    checkpoint: list[Path] | None = typer.Option(
        None,
        "--checkpoint",
        help="A checkpoint kept outside the state store (repeatable): the log must be at "
        "least that large and consistent with it.",
    ),
    config: Path = CONFIG_OPTION,
) -> None:
    """Rehash every entry and check every checkpoint: exit 0 ok, 5 tampered."""
    from domicile.audit.verify import verify_export, verify_log

    with _errors():
        kept = [(f"checkpoint file {p}", _read_text(p, "checkpoint")) for p in checkpoint or []]
        if kept and from_dir is not None:
            raise ConfigError(
                "--checkpoint checks the log in the state store, not an exported folder",
                hint="an exported folder holds its own checkpoints; verify it with --from alone",
            )
        if from_dir is not None:
            # An auditor may hold only the folder and the key: the map is optional.
            settings = None if public_key else _state_and_keys(config, required=False)
            result = verify_export(from_dir, _key_texts(public_key, settings))
            _print_result(result, str(from_dir))
            return
        settings = _state_and_keys(config)
        with _engine(settings) as engine:
            result = verify_log(engine, _key_texts(public_key, settings), kept=kept)
            journal_batches = _verify_journal(engine, settings)
        _print_result(result, "state store")
        for label, _note in kept:
            typer.echo(f"  {label}: the log holds it and is consistent with it")
        if journal_batches is not None:
            typer.echo(f"  journal            {journal_batches} batches, every MAC matches")


def _verify_journal(engine: sa.Engine, settings: _Settings) -> int | None:
    """Check every journalled batch's MAC; None when there is no journal or no key."""
    import sqlalchemy as sa

    from domicile import keys as keystore
    from domicile.run.journal import Journal, JournalTampered, batches

    if not sa.inspect(engine).has_table(batches.name):
        return None
    try:
        key = keystore.load_hmac_key(settings.keys_dir)
    except ConfigError:
        return None
    journal = Journal(engine, key)
    bad = journal.tampered()
    if bad:
        raise JournalTampered(
            f"{len(bad)} journal batches do not verify: " + "; ".join(bad[:5]),
            where="the journal",
            hint="nothing in the journal can be trusted past this point; compare it with the "
            "audit log's batch events",
        )
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(batches)).scalar_one())


@audit_app.command("prove")
def prove_command(
    entry: int = typer.Argument(..., help="The entry index."),
    size: int | None = typer.Option(None, "--size", help="Tree size; default: the whole log."),
    config: Path = CONFIG_OPTION,
) -> None:
    """Print the inclusion proof of ENTRY as JSON."""
    from domicile.audit.merkle import leaf_hash
    from domicile.audit.verify import LogTampered

    with _errors():
        settings = _state_and_keys(config)
        with _engine(settings) as engine:
            log = _log(engine, settings)
            # Fix the size first: entries appended meanwhile must not change it.
            tree_size = log.size() if size is None else size
            proof = log.inclusion_proof(entry, tree_size)
            data = log.entry(entry)
            leaf = log.leaf_hash(entry)
            if leaf_hash(data) != leaf:
                raise LogTampered(
                    "the stored leaf hash is not the hash of the entry's bytes",
                    where=f"audit entry {entry}",
                    entry_index=entry,
                )
            out = {
                "index": entry,
                "tree_size": tree_size,
                "entry": data.decode("utf-8", "replace"),
                "leaf_hash": leaf.hex(),
                "hashes": [h.hex() for h in proof],
                "root": log.root(tree_size).hex(),
            }
        typer.echo(json.dumps(out, indent=2))


@audit_app.command("consistency")
def consistency_command(
    old: int = typer.Argument(..., help="The older tree size."),
    new: int = typer.Argument(..., help="The newer tree size."),
    config: Path = CONFIG_OPTION,
) -> None:
    """Print the consistency proof between tree sizes OLD and NEW as JSON."""
    with _errors():
        settings = _state_and_keys(config)
        with _engine(settings) as engine:
            log = _log(engine, settings)
            proof = log.consistency_proof(old, new)
            out = {
                "old_size": old,
                "new_size": new,
                "old_root": log.root(old).hex(),
                "new_root": log.root(new).hex(),
                "hashes": [h.hex() for h in proof],
            }
        typer.echo(json.dumps(out, indent=2))


@audit_app.command("export")
def export_command(
    directory: Path = typer.Argument(..., help="The folder to write."),
    force: bool = typer.Option(False, "--force", help="Replace the folder if it exists."),
    public_key: Path | None = typer.Option(
        None, "--public-key", help="Verifier key to ship; default: the deployment's audit.pub."
    ),
    config: Path = CONFIG_OPTION,
) -> None:
    """Write the log, checkpoints, public key and a README to DIRECTORY, then verify it."""
    from domicile.audit.export import export_log

    with _errors():
        settings = _state_and_keys(config)
        key = _key_texts([public_key] if public_key else None, settings)[0]
        with _engine(settings) as engine:
            result = export_log(engine, directory, key, force=force)
        typer.echo(
            f"exported {result.verified.entries} entries and {result.verified.checkpoints} "
            f"checkpoints to {result.directory} (verified)"
        )


@audit_app.command("checkpoint")
def checkpoint_command(
    origin: str | None = typer.Option(None, "--origin", help="The log's name (first time only)."),
    config: Path = CONFIG_OPTION,
) -> None:
    """Sign the current tree head, store it and print the checkpoint."""
    from domicile import keys as keystore

    with _errors():
        settings = _state_and_keys(config)
        signer = keystore.load_signer(settings.keys_dir / keystore.PRIVATE_KEY_FILE)
        with _engine(settings) as engine:
            note = _log(engine, settings, origin).checkpoint(signer)
        typer.echo(note, nl=False)


@audit_app.command("cosign")
def cosign_command(
    key: Path = typer.Option(..., "--key", help="The witness's Ed25519 PEM private key."),
    name: str | None = typer.Option(
        None, "--name", help="The witness key name; default: from the .pub beside the key."
    ),
    config: Path = CONFIG_OPTION,
) -> None:
    """Add a witness signature to the latest checkpoint and print it."""
    from domicile import keys as keystore

    with _errors():
        settings = _state_and_keys(config)
        witness = keystore.load_signer(key, name)
        pub = settings.keys_dir / keystore.PUBLIC_KEY_FILE
        # A witness vouches for what the log key signed: check that first when we can.
        verifiers = keystore.read_verifier_keys(pub) if pub.exists() else []
        with _engine(settings) as engine:
            note = _log(engine, settings).cosign(None, witness, verifiers)
        typer.echo(note, nl=False)


@keys_app.command("init")
def keys_init_command(
    directory: Path | None = typer.Option(
        None, "--dir", help="Where to write the keys; default: .domicile/keys beside the map."
    ),
    force: bool = typer.Option(False, "--force", help="Replace existing keys."),
    name: str = typer.Option(DEFAULT_KEY_NAME, "--name", help="The signing key's name."),
    config: Path = CONFIG_OPTION,
) -> None:
    """Create the audit signing key pair and the HMAC key."""
    from domicile import keys as keystore

    with _errors():
        target = directory or _state_and_keys(config, required=False).keys_dir
        files = keystore.init_keys(target, name=name, force=force)
        typer.echo(f"wrote {files.private_key} (private, 0600)")
        typer.echo(f"wrote {files.hmac_key} (private, 0600)")
        typer.echo(f"wrote {files.public_key}; publish this verifier key:")
        typer.echo(files.verifier_key)


@keys_app.command("public")
def keys_public_command(
    directory: Path | None = typer.Option(None, "--dir", help="The keys folder."),
    config: Path = CONFIG_OPTION,
) -> None:
    """Print the audit verifier key (to publish, or to give to an auditor)."""
    from domicile import keys as keystore

    with _errors():
        target = directory or _state_and_keys(config, required=False).keys_dir
        typer.echo(keystore.public_key_text(target))
