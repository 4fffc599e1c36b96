"""The access files beside the map: read whole, written atomically under a lock.

The principals and tickets files are small JSON documents edited by the
command line while ``serve`` reads them.  A writer takes an exclusive
``flock`` on ``FILE.lock`` for its read-modify-write, writes a temporary
file readable by the owner only and renames it over the old one, so a reader
sees the old document or the new one, never half of one; ``serve`` notices
the new file by its modification time and reloads it.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from domicile.errors import ConfigError
from domicile.keys import write_private

ACCESS_DIR = ".domicile"
"""The folder beside the map that holds the principals and tickets files."""


def beside(map_path: Path, name: str) -> Path:
    """``.domicile/NAME`` in the map's folder."""
    return map_path.parent / ACCESS_DIR / name


def read_json(path: Path, what: str, empty: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The JSON document at *path* (``empty()`` when the file does not exist)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return empty()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the {what} file: {exc.strerror or exc}", where=str(path)
        ) from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"the {what} file is not valid JSON: {exc}", where=str(path)) from None
    if not isinstance(data, dict):
        raise ConfigError(f"the {what} file must hold a JSON object", where=str(path))
    return data


def version(path: Path) -> tuple[int, int, int] | None:
    """What changes when the file is replaced: (inode, mtime ns, size); None if absent."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    # a rename gives a new inode even when two writes fall in one clock tick
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _write(path: Path, data: dict[str, Any]) -> None:
    """The document as JSON, owner-readable only, replaced atomically (fsynced)."""
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    write_private(path, text.encode("utf-8"))


@contextmanager
def editing(path: Path, what: str, empty: Callable[[], dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Read the document under an exclusive lock; write it back if the block succeeds."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = open(path.with_name(path.name + ".lock"), "a")  # noqa: SIM115 (held below)
    except OSError as exc:
        raise ConfigError(
            f"cannot write the {what} file: {exc.strerror or exc}", where=str(path)
        ) from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = read_json(path, what, empty)
        yield data
        try:
            _write(path, data)
        except OSError as exc:
            raise ConfigError(
                f"cannot write the {what} file: {exc.strerror or exc}", where=str(path)
            ) from exc
