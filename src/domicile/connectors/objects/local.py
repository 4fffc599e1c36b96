"""The local folder backend (``file:///abs/folder``).

Writes are atomic for readers: a file is written under a hidden name
(``.domicile-tmp-…``), fsync'ed, renamed over the key and its folder fsync'ed,
so the bytes are on disk before the source may be deleted.  The version token
is ``mtime_ns-size-inode``; compare-and-delete parks the file under a hidden
name first, so no writer can change what is compared.  Neither hidden name
outlives a crash for good: a write sweeps the files dead writes of the same
name left (see :func:`_sweep`), a delete finishes or undoes the park a killed
delete of the same name left (see :func:`_parked`).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import os
import secrets
import stat as st_mode
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any, BinaryIO

from domicile.connectors.base import Capabilities
from domicile.connectors.objects.common import (
    TMP_MARK,
    Failure,
    ObjectInfo,
    ObjectReader,
    is_missing,
)
from domicile.connectors.objects.store import ObjectStore
from domicile.errors import ConnectorError, TransientConnectorError

# Local errors that may pass on their own (disk full, busy, interrupted).
_TRANSIENT_ERRNOS = {errno.ENOSPC, errno.EIO, errno.EAGAIN, errno.EBUSY, errno.EINTR, errno.EDQUOT}


class LocalObjects(ObjectStore, scheme="file"):
    """A local folder as an object store: keys are paths below the folder."""

    display_name = "local folder"
    remnants = (
        "A deleted file's blocks stay on the disk until the file system reuses them; "
        "copy-on-write file systems and their snapshots (ZFS, btrfs, LVM) and SSD wear "
        "levelling keep them longer.",
        "Trash folders, sync clients and file-level backups of the folder keep their copies.",
    )

    capabilities = Capabilities(
        conditional_delete=True,  # rename-then-compare: exact, see _delete_if
        server_side_copy=False,
        version_token="mtime_ns-size-inode of the file",
    )

    def __init__(self, name: str, url: str, options: Mapping[str, Any] | None = None):
        super().__init__(name, url)
        if options:
            raise self._bad(f"local folders take no options, got {sorted(options)}", "remove them")
        self.root_url = f"file://{self.root}"
        self._prefix = self.root.rstrip("/") + "/"  # file:/// (the root folder) gives "/"
        self._url_head = "file://"

    def _check(self) -> None:
        if not os.path.isdir(self.root):
            raise FileNotFoundError(errno.ENOENT, "no such folder", self.root)
        if not os.access(self.root, os.R_OK | os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "cannot read and write", self.root)

    def _walk(self, start: str) -> Iterator[ObjectInfo]:
        if not os.path.isdir(self.root):
            raise FileNotFoundError(errno.ENOENT, "no such folder", self.root)
        folder = start.rpartition("/")[0]
        try:  # no valid key lies below an invalid folder name (nor outside the root)
            base = self._full(folder) if folder else self.root
        except ConnectorError:
            return
        yield from _scan(base, f"{folder}/" if folder else "")

    def _stat(self, key: str, full: str) -> ObjectInfo:
        return _local_info(key, os.lstat(full))

    def _open(self, key: str, full: str) -> tuple[io.RawIOBase, ObjectInfo]:
        # O_NOFOLLOW: a symbolic link is no object (list and stat skip them too).
        raw = io.FileIO(os.open(full, os.O_RDONLY | os.O_NOFOLLOW), "rb")
        try:
            return raw, _local_info(key, os.fstat(raw.fileno()))
        except OSError:
            raw.close()
            raise

    def _confirm_read(self, reader: ObjectReader) -> None:
        # An open file survives renames over it, but not a writer in place.
        key = reader.info.key
        if _local_info(key, os.fstat(reader.fileno())) != reader.info:
            raise TransientConnectorError(
                f"{key!r} changed while it was read (written in place)",
                where=self.name,
                hint="retry; the application is writing this object",
            )

    @contextmanager
    def _writer(self, key: str, full: str) -> Iterator[BinaryIO]:
        stem = _temp_stem(full)
        tmp = os.path.join(os.path.dirname(full), stem + secrets.token_hex(8))
        with self._guard("writing", key):
            fd = _create(tmp)
            fcntl.flock(fd, fcntl.LOCK_EX)  # held while written: a dead writer's temp has none
            _sweep(os.path.dirname(full), stem, tmp)
        try:
            with os.fdopen(fd, "wb") as out:
                yield out
                with self._guard("writing", key):
                    out.flush()
                    os.fsync(out.fileno())  # on disk before the source may be deleted
            with self._guard("writing", key):
                os.replace(tmp, full)
                _fsync_dir(os.path.dirname(full))
        except BaseException:
            with suppress(OSError):
                os.unlink(tmp)
            raise

    def _delete_if(self, key: str, full: str, version: str) -> bool:
        deleted = _local_delete_if(full, version)
        if deleted:
            _prune(os.path.dirname(full), self.root)
        return deleted

    def _translate(self, exc: BaseException, failure: Failure) -> ConnectorError | None:
        if not isinstance(exc, OSError):
            return None
        missing = is_missing(exc)
        if missing and not os.path.isdir(self.root):
            hint = "create the folder or fix the store url in the map"
            return failure.permanent(f"folder {self.root} does not exist", hint)
        if missing:
            return failure.permanent("no such object")
        if isinstance(exc, PermissionError):
            hint = f"let the user running domicile read and write {self.root}"
            return failure.permanent(str(exc), hint)
        if exc.errno in _TRANSIENT_ERRNOS:
            return failure.transient(str(exc), "retry once the cause is fixed")
        return failure.permanent(str(exc))


def _version(found: os.stat_result) -> str | None:
    """The version token of a regular file; None for anything else (not an object)."""
    if not st_mode.S_ISREG(found.st_mode):
        return None
    return f"{found.st_mtime_ns}-{found.st_size}-{found.st_ino}"


def _local_info(key: str, found: os.stat_result) -> ObjectInfo:
    version = _version(found)
    if version is None:
        raise FileNotFoundError(errno.ENOENT, "not an object", key)
    return ObjectInfo(key, found.st_size, version)


def _create(tmp: str) -> int:
    """Create *tmp* and its folders, exclusively; mode 0o666 so the umask applies."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    for _ in range(2):
        os.makedirs(os.path.dirname(tmp), exist_ok=True)
        with suppress(FileNotFoundError):  # a delete pruned the empty folder just now
            return os.open(tmp, flags, 0o666)
    os.makedirs(os.path.dirname(tmp), exist_ok=True)
    return os.open(tmp, flags, 0o666)


def _prune(folder: str, root: str) -> None:
    """Remove the folders a delete left empty, up to the root."""
    while len(folder) > len(root.rstrip("/")):
        try:
            os.rmdir(folder)
        except OSError:  # not empty, or gone
            return
        folder = os.path.dirname(folder)


def _fsync_dir(folder: str) -> None:
    """Make a rename in *folder* durable: the source may be deleted right after."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _scan(folder: str, key_prefix: str) -> Iterator[ObjectInfo]:
    """Files below *folder*, depth first, in key order (siblings sort as ``name`` or ``name/``)."""
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return
    named = []
    for entry in entries:
        if entry.name.startswith(TMP_MARK) or entry.is_symlink():
            continue
        if entry.is_dir(follow_symlinks=False):
            named.append((entry.name + "/", entry))
        elif entry.is_file(follow_symlinks=False):
            named.append((entry.name, entry))
    for name, entry in sorted(named, key=lambda item: item[0]):
        if name.endswith("/"):
            yield from _scan(entry.path, key_prefix + name)
        else:
            with suppress(FileNotFoundError):  # deleted since the scan
                yield _local_info(key_prefix + name, entry.stat(follow_symlinks=False))


def _temp_stem(full: str) -> str:
    """How the hidden names of writes of *full* begin (a random suffix makes each unique)."""
    digest = hashlib.sha256(os.path.basename(full).encode("utf-8", "surrogateescape"))
    return f"{TMP_MARK}put-{digest.hexdigest()[:24]}-"


def _sweep(folder: str, stem: str, mine: str) -> None:
    """Remove the hidden files that killed writes of the same name left in *folder*.

    A live writer holds an exclusive ``flock`` on its file until it is renamed
    into place; the kernel drops it when the writer dies, so a file whose lock
    can be taken is a dead writer's (its bytes were never published).
    """
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if not name.startswith(stem) or path == mine:
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:  # renamed or removed meanwhile
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a live writer's
            continue
        else:
            with suppress(FileNotFoundError):
                os.unlink(path)
        finally:
            os.close(fd)


def _parked(full: str) -> str:
    """The hidden name *full* is parked under while it is compared and deleted.

    Fixed per name (not random), so that a delete killed between parking and
    unlinking is finished by the next attempt instead of leaving the bytes
    behind under a name no scan ever shows.
    """
    digest = hashlib.sha256(os.path.basename(full).encode("utf-8", "surrogateescape"))
    return os.path.join(os.path.dirname(full), f"{TMP_MARK}park-{digest.hexdigest()[:24]}")


def _local_delete_if(full: str, version: str) -> bool:
    """Delete *full* if its version is *version*: park it, compare, then unlink or restore."""
    parked = _parked(full)
    with suppress(FileNotFoundError, NotADirectoryError):
        if _version(os.lstat(parked)) == version:  # a delete of it was killed after parking
            if not os.path.lexists(full):
                os.unlink(parked)
                return True
        else:  # a version an older delete parked but did not compare: back, if the name is free
            _restore(parked, full)
        with suppress(FileNotFoundError):
            os.unlink(parked)
    try:
        if _version(os.lstat(full)) != version:  # also keeps folders and links out
            return False
        os.rename(full, parked)  # from here on no writer can change what we compare
    except (FileNotFoundError, NotADirectoryError):
        return False
    if _version(os.lstat(parked)) == version:
        os.unlink(parked)
        return True
    # changed since the copy: put it back, unless a newer write took the name
    if not _restore(parked, full):
        with suppress(FileNotFoundError):
            os.unlink(parked)
    return False


def _restore(parked: str, full: str) -> bool:
    """Put *parked* back at *full* unless a write took the name.

    True if *parked* was renamed there (no name left to unlink); False if it was
    hard-linked there or the name was taken: the caller unlinks *parked*.
    """
    try:
        os.link(parked, full)
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links
        if not os.path.lexists(full):
            os.rename(parked, full)
            return True
        return False
    return False  # linked: the caller unlinks the parked name
