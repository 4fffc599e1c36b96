"""Object stores: a local folder (``file:///abs/folder``) or an S3 bucket (``s3://bucket/prefix``).

One small interface over both (fsspec/s3fs underneath) with what moving data needs:
streamed copies in chunks of :data:`CHUNK` (S3 uploads go in parts of the
block size, about three parts in memory at once), the SHA-256 of every copy
computed as the bytes pass, writes that are atomic for readers (a local file
is written under a hidden name, fsync'ed and renamed; an S3 object appears
when its upload completes), and compare-and-delete on a version token.

Keys are relative to the store root (see :func:`check_key`).  URLs are raw
``file:///abs/path`` and ``s3://bucket/key`` (not percent-encoded, as fsspec
and the AWS CLI write them), so they round-trip exactly.  Driver exceptions
become ConnectorErrors in one place, :func:`_translate`.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import secrets
import stat as st_mode
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, Protocol

from fsspec.asyn import sync

from domicile.errors import ConnectorError, PermanentConnectorError, TransientConnectorError

CHUNK = 1 << 20  # read and hash granularity
BLOCK_SIZE = 8 << 20  # S3 multipart part size
MAX_COPY_OBJECT = 5 << 30  # the most S3 copies in one CopyObject; larger objects stream
TMP_MARK = ".domicile-tmp-"  # hidden names of local files being written or deleted
S3_OPTIONS = frozenset({"endpoint_url", "region", "key", "secret", "token", "anon", "block_size"})
# Local errors that may pass on their own (disk full, busy, interrupted).
_TRANSIENT_ERRNOS = {errno.ENOSPC, errno.EIO, errno.EAGAIN, errno.EBUSY, errno.EINTR, errno.EDQUOT}


@dataclass(frozen=True)
class ObjectInfo:
    """One object: key (relative to the store root), size, and version token.

    ``version`` changes whenever the content may have: the ETag on S3;
    ``mtime_ns-size-inode`` for a local file (the inode catches a file
    replaced by rename with the same size within one timestamp tick).
    """

    key: str
    size: int
    version: str


@dataclass(frozen=True)
class CopyResult:
    """Size and SHA-256 of the bytes a copy wrote, and the source version they came from.

    Pass ``source_version`` (None after :meth:`ObjectStore.put_stream`) to the
    source's :meth:`ObjectStore.delete_if_unchanged`.  ``server_side``: S3
    copied the bytes itself and the hash comes from reading the target once.
    """

    size: int
    sha256: str
    source_version: str | None = None
    server_side: bool = False


class Readable(Protocol):
    """Anything with ``read(n) -> bytes`` that returns b"" at the end, e.g. a binary file."""

    def read(self, size: int, /) -> bytes: ...


class ObjectReader(io.BufferedReader):
    """A streaming reader of one object; ``info`` is the version being read."""

    info: ObjectInfo


def check_key(key: str) -> str:
    """Return *key* if it is a portable object key (valid in folders and buckets alike).

    Non-empty ``/``-separated names, none ``.`` or ``..`` or starting with
    ``.domicile-tmp-``; no ``\\`` or control characters; at most 1024 UTF-8
    bytes.  Raises ValueError otherwise.
    """
    if not isinstance(key, str) or not key:
        raise ValueError("an object key must be a non-empty string")
    if len(key.encode("utf-8", "surrogatepass")) > 1024:
        raise ValueError("an object key may have at most 1024 bytes (UTF-8)")
    # SeaweedFS turns "\" into "/" (and Windows folders cannot hold it).
    if any(ch == "\\" or unicodedata.category(ch) in ("Cc", "Cs") for ch in key):
        raise ValueError("an object key may not contain '\\', control characters or surrogates")
    for name in key.split("/"):
        if name in ("", ".", "..") or name.startswith(TMP_MARK):
            raise ValueError(f"{name!r} cannot be part of an object key")
    return key


def split_url(url: str) -> tuple[str, str, str]:
    """Split an object or store URL into ``(scheme, bucket, path)``.

    ``s3://b/a/k`` gives ``("s3", "b", "a/k")``, ``file:///srv/k`` gives
    ``("file", "", "/srv/k")``.  A store owns a URL when scheme and bucket are
    its own and its root is a ``/``-prefix of the path (:meth:`ObjectStore.key_for`,
    :func:`find_store`).  ValueError for other schemes and ``file://host/...``.
    """
    scheme, sep, rest = url.partition("://")
    if scheme == "file" and sep:
        if not rest.startswith("/"):
            raise ValueError(f"file URLs need an absolute path (file:///abs/folder): {url!r}")
        return "file", "", "/" + rest.strip("/")
    if scheme == "s3" and sep and not rest.startswith("/"):
        bucket, _, path = rest.partition("/")
        return "s3", bucket, path.strip("/")
    raise ValueError(f"unsupported object store URL {url!r}: use file:///abs/folder or s3://bucket")


def find_store(url: str, stores: Iterable[ObjectStore]) -> tuple[ObjectStore, str] | None:
    """The store owning *url* (the one with the longest matching root) and its key there."""
    owners = [(store, key) for store in stores if (key := store.key_for(url)) is not None]
    return max(owners, key=lambda owner: len(owner[0].root_url), default=None)


class ObjectStore:
    """One object store of the data map: a local folder, or an S3 bucket plus prefix.

    *options* are for S3 only: ``endpoint_url``, ``region``, ``key``,
    ``secret``, ``token``, ``anon``, ``block_size`` (bytes, >= 5 MiB); unset
    ones come from AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN.  Construction does no I/O.
    """

    def __init__(self, name: str, url: str, options: Mapping[str, Any] | None = None):
        self.name = name
        try:
            self.scheme, self.bucket, self.root = split_url(url)
        except ValueError as exc:
            raise self._bad(str(exc), "set the url to file:///abs/folder or s3://bucket") from None
        self.root_url = f"file://{self.root}" if self.scheme == "file" else self._s3_url(self.root)
        self._clients: dict[bool, Any] = {}
        opts, env = dict(options or {}), os.environ
        if self.scheme == "file" and opts:
            raise self._bad(f"local folders take no options, got {sorted(opts)}", "remove them")
        if unknown := sorted(set(opts) - S3_OPTIONS):
            raise self._bad(f"unknown S3 options {unknown}", f"use {', '.join(sorted(S3_OPTIONS))}")
        self.endpoint_url: str | None = opts.get("endpoint_url") or env.get("AWS_ENDPOINT_URL")
        self.region: str = opts.get("region") or env.get("AWS_REGION") or "us-east-1"
        self.anon = bool(opts.get("anon", False))
        self._key = opts.get("key") or env.get("AWS_ACCESS_KEY_ID")
        self._secret = opts.get("secret") or env.get("AWS_SECRET_ACCESS_KEY")
        self._token = opts.get("token") or env.get("AWS_SESSION_TOKEN")
        self.block_size = int(opts.get("block_size", BLOCK_SIZE))
        if self.block_size < 5 << 20:
            raise self._bad("block_size must be at least 5 MiB (the S3 minimum part size)")

    def __repr__(self) -> str:
        return f"ObjectStore({self.name!r}, {self.root_url!r})"

    def __getstate__(self) -> dict[str, Any]:
        # Clients hold an event loop and sockets: a worker process makes its own.
        return {**self.__dict__, "_clients": {}}

    def _bad(self, message: str, hint: str | None = None) -> PermanentConnectorError:
        return PermanentConnectorError(message, where=self.name, hint=hint)

    # -- keys and URLs ---------------------------------------------------------------

    def _s3_url(self, path: str) -> str:
        return f"s3://{self.bucket}/{path}" if path else f"s3://{self.bucket}"

    def _full(self, key: str) -> str:
        """The key's absolute path (file) or its path in the bucket (S3)."""
        try:
            check_key(key)
        except ValueError as exc:
            raise self._bad(f"bad object key {key!r}: {exc}", "fix the key") from None
        if self.scheme == "file":
            return f"{self.root.rstrip('/')}/{key}"
        return f"{self.root}/{key}" if self.root else key

    def url_for(self, key: str) -> str:
        """The full URL of *key*: ``file:///abs/folder/key`` or ``s3://bucket/prefix/key``."""
        full = self._full(key)
        return f"file://{full}" if self.scheme == "file" else self._s3_url(full)

    def key_for(self, url: str) -> str | None:
        """The key of *url* in this store, or None when the URL lies outside its root."""
        root = self.root.rstrip("/")
        root += "/" if root or self.scheme == "file" else ""
        try:
            scheme, bucket, path = split_url(url)
            if (scheme, bucket) != (self.scheme, self.bucket) or not path.startswith(root):
                return None
            return check_key(path[len(root) :])
        except ValueError:
            return None

    # -- reaching the store ----------------------------------------------------------

    def _fs(self, probe: bool = False) -> Any:
        """The s3fs filesystem, made on first use; *probe* gives check()'s fail-fast one."""
        if probe not in self._clients:
            try:
                import s3fs
            except ImportError:
                raise self._bad("s3fs is not installed", "pip install 'domicile[s3]'") from None
            # check() must fail within seconds on a dead endpoint; real work
            # gets a few retries for the blips that a long move meets.
            attempts, connect, read = (1, 3, 15) if probe else (3, 10, 60)
            config: dict[str, Any] = {"connect_timeout": connect, "read_timeout": read}
            config["retries"] = {"max_attempts": attempts, "mode": "standard"}
            creds = {"anon": self.anon, "key": self._key, "secret": self._secret}
            fs = s3fs.S3FileSystem(
                **creds,
                token=self._token,
                endpoint_url=self.endpoint_url,
                client_kwargs={"region_name": self.region},
                config_kwargs=config,
                skip_instance_cache=True,  # fsspec's instance cache would share the settings
            )
            fs.retries = attempts  # s3fs's own retry loop, on top of botocore's
            self._clients[probe] = fs
        return self._clients[probe]

    def _identity(self) -> tuple[Any, ...]:
        return (self.scheme, self.endpoint_url, self.region, self._key, self._secret, self.anon)

    @contextmanager
    def _guard(self, action: str, key: str | None = None) -> Iterator[None]:
        """Turn driver exceptions raised in the block into ConnectorErrors (see _translate)."""
        try:
            yield
        except ConnectorError:
            raise
        except Exception as exc:
            translated = _translate(exc, self, action, key)
            if translated is None:
                raise
            raise translated from exc

    def check(self) -> None:
        """Reach the store; confirm its folder or bucket exists and may be listed.

        PermanentConnectorError for a missing folder or bucket, wrong
        credentials or permissions; TransientConnectorError for an endpoint
        that does not answer (one attempt, 3 s connect timeout).
        """
        with self._guard("check"):
            if self.scheme == "file":
                if not os.path.isdir(self.root):
                    raise FileNotFoundError(errno.ENOENT, "no such folder", self.root)
                if not os.access(self.root, os.R_OK | os.W_OK | os.X_OK):
                    raise PermissionError(errno.EACCES, "cannot read and write", self.root)
                return
            # ListObjectsV2, not HeadBucket: its errors say *why* (unknown
            # key, bad signature, no bucket) where HeadBucket only says 403.
            prefix = f"{self.root}/" if self.root else ""
            self._fs(True).call_s3("list_objects_v2", Bucket=self.bucket, Prefix=prefix, MaxKeys=1)

    # -- listing and metadata --------------------------------------------------------

    def list(self, prefix: str = "", pattern: str | None = None) -> Iterator[ObjectInfo]:
        """Stream the objects whose key starts with *prefix* and matches *pattern*.

        *pattern* is a glob on the whole key: ``*`` and ``?`` stay within a
        folder, ``**`` crosses folders (``avatars/*/**.jpg``).  The order is
        the backend's (UTF-8 byte order locally and on AWS, folder by folder
        on SeaweedFS: ``a/1`` before ``a-b``); sort when it matters.  S3
        folder markers (keys ending in ``/``), domicile's temporary files and
        local symbolic links are not objects (stat and open_read agree).
        """
        regex = _glob_regex(pattern) if pattern else None
        start = prefix
        if pattern:  # list from the pattern's literal head when it narrows the prefix
            head = re.split(r"[*?]", pattern, maxsplit=1)[0]
            if head.startswith(prefix):
                start = head
            elif not prefix.startswith(head):
                return
        walk = self._walk_local(start) if self.scheme == "file" else self._walk_s3(start)
        with self._guard("listing", prefix or None):
            for info in walk:
                if info.key.startswith(prefix) and (regex is None or regex.fullmatch(info.key)):
                    yield info

    def _walk_local(self, start: str) -> Iterator[ObjectInfo]:
        if not os.path.isdir(self.root):
            raise FileNotFoundError(errno.ENOENT, "no such folder", self.root)
        folder = start.rpartition("/")[0]
        try:  # no valid key lies below an invalid folder name (nor outside the root)
            base = self._full(folder) if folder else self.root
        except ConnectorError:
            return
        yield from _scan(base, f"{folder}/" if folder else "")

    def _walk_s3(self, start: str) -> Iterator[ObjectInfo]:
        fs, root = self._fs(), f"{self.root}/" if self.root else ""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": root + start}
        while True:  # one page (up to 1000 keys) in memory at a time
            page = fs.call_s3("list_objects_v2", **kwargs)
            for item in page.get("Contents", []):
                key = item["Key"][len(root) :]
                if key and not key.endswith("/"):
                    yield ObjectInfo(key, int(item["Size"]), item["ETag"].strip('"'))
            if not page.get("IsTruncated"):
                return
            kwargs["ContinuationToken"] = page["NextContinuationToken"]

    def stat(self, key: str) -> ObjectInfo | None:
        """The object's size and version, or None if there is no such object."""
        full = self._full(key)
        with self._guard("stat", key):
            try:
                if self.scheme == "file":
                    return _local_info(key, os.lstat(full))
                head = self._fs().call_s3("head_object", Bucket=self.bucket, Key=full)
            except (FileNotFoundError, NotADirectoryError):
                return None
            return ObjectInfo(key, int(head["ContentLength"]), head["ETag"].strip('"'))

    def exists(self, key: str) -> bool:
        """True if the object exists."""
        return self.stat(key) is not None

    # -- reading ---------------------------------------------------------------------

    def open_read(self, key: str) -> ObjectReader:
        """Open the object for streaming reads (a context manager).

        The reader sees one version, ``reader.info``, from start to end: on S3
        it is a single GET; locally, the open file survives renames over it.
        """
        full = self._full(key)
        with self._guard("reading", key):
            if self.scheme == "file":
                # O_NOFOLLOW: a symbolic link is no object (list and stat skip them too).
                raw: io.RawIOBase = io.FileIO(os.open(full, os.O_RDONLY | os.O_NOFOLLOW), "rb")
                try:
                    info = _local_info(key, os.fstat(raw.fileno()))
                except OSError:
                    raw.close()
                    raise
            else:
                got = self._fs().call_s3("get_object", Bucket=self.bucket, Key=full)
                info = ObjectInfo(key, int(got["ContentLength"]), got["ETag"].strip('"'))
                raw = _S3Body(self, key, got["Body"], info.size)
        reader = ObjectReader(raw, CHUNK)
        reader.info = info
        return reader

    def _read_chunks(self, reader: ObjectReader) -> Iterator[bytes]:
        """The reader's bytes in chunks; then make sure a local file was not written meanwhile."""
        key = reader.info.key
        with self._guard("reading", key):
            while chunk := reader.read(CHUNK):
                yield chunk
            if self.scheme == "file" and _local_info(key, os.fstat(reader.fileno())) != reader.info:
                raise TransientConnectorError(
                    f"{key!r} changed while it was read (written in place)",
                    where=self.name,
                    hint="retry; the application is writing this object",
                )

    def sha256(self, key: str) -> str:
        """The hex SHA-256 of the object's bytes, read in chunks."""
        digest = hashlib.sha256()
        with self.open_read(key) as reader:
            for chunk in self._read_chunks(reader):
                digest.update(chunk)
        return digest.hexdigest()

    # -- writing ---------------------------------------------------------------------

    @contextmanager
    def _writer(self, key: str) -> Iterator[Any]:
        """A file for the object's bytes, published under *key* only if the block ends normally."""
        full = self._full(key)
        if self.scheme == "file":
            tmp = os.path.join(os.path.dirname(full), TMP_MARK + secrets.token_hex(8))
            with self._guard("writing", key):
                fd = _create(tmp)
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
            return
        with self._guard("writing", key):
            out = self._fs().open(f"{self.bucket}/{full}", "wb", block_size=self.block_size)
        try:
            yield out
            with self._guard("writing", key):
                out.close()  # completes the upload: the object appears whole
        except BaseException:
            # fsspec's close() would *commit* the bytes written so far: abort
            # the multipart upload and mark the file flushed, so close() is inert.
            with suppress(Exception):
                out.discard()
            out.forced = True
            with suppress(Exception):
                out.close()
            raise

    def _pump(self, key: str, chunks: Iterable[bytes]) -> tuple[int, str]:
        """Write *chunks* atomically under *key*; return their size and SHA-256."""
        digest, size = hashlib.sha256(), 0
        with self._writer(key) as out:
            for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                with self._guard("writing", key):  # our writes only: a source reports its own
                    out.write(chunk)
        return size, digest.hexdigest()

    def put_stream(self, key: str, readable: Readable) -> CopyResult:
        """Write *readable*'s bytes (to its end) atomically under *key*, replacing any object."""
        return CopyResult(*self._pump(key, iter(lambda: readable.read(CHUNK), b"")))

    def copy_from(self, src: ObjectStore, src_key: str, dst_key: str) -> CopyResult:
        """Copy *src_key* of *src* to *dst_key* here, atomically, hashing the bytes.

        The bytes stream through this process in chunks, except between
        buckets of one S3 endpoint with the same credentials: there S3 copies
        them itself, on condition that the source still has the version just
        read, and the target is read once for its SHA-256.  Objects over 5 GiB
        (too large for one CopyObject) always stream.  Replaces the target.
        """
        if self.scheme == "s3" and self._identity() == src._identity():
            info = src.stat(src_key)
            if info is None:
                raise src._bad(f"copying {src_key!r}: no such object")
            if info.size <= MAX_COPY_OBJECT:
                source = {"Bucket": src.bucket, "Key": src._full(src_key)}
                with self._guard("copying", dst_key):
                    # If-Match: an overwrite of the source since the stat fails
                    # the copy (to be retried) rather than copy another version.
                    self._fs().call_s3(
                        "copy_object",
                        Bucket=self.bucket,
                        Key=self._full(dst_key),
                        CopySource=source,
                        CopySourceIfMatch=f'"{info.version}"',
                    )
                return CopyResult(info.size, self.sha256(dst_key), info.version, server_side=True)
        with src.open_read(src_key) as reader:
            size, digest = self._pump(dst_key, src._read_chunks(reader))
        return CopyResult(size, digest, reader.info.version)

    # -- deleting --------------------------------------------------------------------

    def delete_if_unchanged(self, key: str, version: str) -> bool:
        """Delete the object only if its current version is *version*; True if it was deleted.

        Locally this is exact: the file is renamed to a hidden name (atomic),
        its version compared, and a changed file linked back (unless a newer
        one took the name meanwhile).  Folders left empty are removed, as on
        S3.  On S3 the version is read right before a DELETE with If-Match,
        which SeaweedFS and AWS refuse once the ETag changed; a server without
        conditional deletes gets a plain DELETE after a second check, and a
        write landing within that round trip would be lost.
        """
        full = self._full(key)
        with self._guard("deleting", key):
            if self.scheme == "file":
                deleted = _local_delete_if(full, version)
                if deleted:
                    _prune(os.path.dirname(full), self.root)
                return deleted
            condition = {"IfMatch": f'"{version}"'}
            while True:
                current = self.stat(key)
                if current is None or current.version != version:
                    return False
                try:
                    self._fs().call_s3("delete_object", Bucket=self.bucket, Key=full, **condition)
                    return True
                except OSError as exc:
                    code = _s3_code(exc)
                    if code in ("PreconditionFailed", "412"):
                        return False
                    if code not in ("NotImplemented", "501") or not condition:
                        raise
                    condition = {}  # no conditional delete here: check again, then plain


class _S3Body(io.RawIOBase):
    """The body of one GET as a blocking raw stream (the response lives on s3fs's event loop)."""

    def __init__(self, store: ObjectStore, key: str, body: Any, size: int):
        super().__init__()
        self._store, self._key, self._body, self._left = store, key, body, size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._left <= 0:  # all bytes are in: spare a round trip to the event loop
            return 0
        with self._store._guard("reading", self._key):
            data = sync(self._store._fs().loop, _read_up_to, self._body, len(buffer))
        buffer[: len(data)] = data
        self._left -= len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


async def _read_up_to(body: Any, size: int) -> bytes:
    """Up to *size* bytes (fewer only at the end) in one trip from the caller's thread."""
    parts, got = [], 0
    while got < size:
        # At the end, aiobotocore raises if fewer bytes came than announced.
        part = await body.read(size - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


# -- local helpers --------------------------------------------------------------------


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


def _local_delete_if(full: str, version: str) -> bool:
    parked = os.path.join(os.path.dirname(full), TMP_MARK + secrets.token_hex(8))
    try:
        if _version(os.lstat(full)) != version:  # also keeps folders and links out
            return False
        os.rename(full, parked)  # from here on no writer can change what we compare
    except (FileNotFoundError, NotADirectoryError):
        return False
    if _version(os.lstat(parked)) == version:
        os.unlink(parked)
        return True
    try:  # changed since the copy: put it back, unless a newer write took the name
        os.link(parked, full)
    except FileExistsError:
        pass
    except OSError:  # a file system without hard links
        if not os.path.lexists(full):
            os.rename(parked, full)
            return False
    with suppress(FileNotFoundError):
        os.unlink(parked)
    return False


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Compile a key glob: ``**`` any text, ``*`` any text without ``/``, ``?`` one such char."""
    wild = {"**": ".*", "*": "[^/]*", "?": "[^/]"}
    parts = re.split(r"(\*\*|\*|\?)", pattern)
    return re.compile("".join(wild.get(p) or re.escape(p) for p in parts), re.DOTALL)


# -- the one place where driver errors become domicile errors -------------------------


def _s3_code(exc: BaseException) -> str | None:
    """The S3 error code (or HTTP status) behind an s3fs OSError, if any."""
    seen: BaseException | None = exc
    while seen is not None:
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            code = response.get("Error", {}).get("Code")
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return str(code or status) if (code or status) else None
        seen = seen.__cause__
    return None


def _has_class(exc: BaseException, *names: str) -> bool:
    """True if *exc*, or one it came from, has a class named in *names*.

    By name, because botocore and aiohttp only come with the s3 extra.
    """
    seen: BaseException | None = exc
    while seen is not None:
        if any(cls.__name__ in names for cls in type(seen).__mro__):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


_NETWORK = "TimeoutError ConnectionError ClientConnectionError ClientPayloadError HTTPClientError"
_NETWORK += " ResponseStreamingError IncompleteRead IncompleteReadError"
_RETRYABLE_CODES = {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable"}


def _translate(
    exc: BaseException, store: ObjectStore, action: str, key: str | None
) -> ConnectorError | None:
    """A ConnectorError saying what failed, where and what to do; None: re-raise *exc* as is."""
    what = f"{action} {key!r}" if key else action

    def permanent(message: str, hint: str | None = None) -> ConnectorError:
        return PermanentConnectorError(f"{what}: {message}", where=store.name, hint=hint)

    def transient(message: str, hint: str) -> ConnectorError:
        return TransientConnectorError(f"{what}: {message}", where=store.name, hint=hint)

    missing = isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError))
    missing = missing or getattr(exc, "errno", None) == errno.ELOOP  # a symbolic link
    if store.scheme == "file":
        if not isinstance(exc, OSError):
            return None
        if missing and not os.path.isdir(store.root):
            hint = "create the folder or fix the store url in the map"
            return permanent(f"folder {store.root} does not exist", hint)
        if missing:
            return permanent("no such object")
        if isinstance(exc, PermissionError):
            return permanent(str(exc), f"let the user running domicile read and write {store.root}")
        if exc.errno in _TRANSIENT_ERRNOS:
            return transient(str(exc), "retry once the cause is fixed")
        return permanent(str(exc))

    endpoint, code = store.endpoint_url or "the default AWS endpoint", _s3_code(exc)
    creds = (
        "check the key and secret (store options key/secret, or AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY) and that they may list, read and write this bucket"
    )
    if _has_class(exc, "NoCredentialsError", "PartialCredentialsError"):
        return permanent("no S3 credentials", creds)
    if _has_class(exc, "EndpointConnectionError", "ConnectTimeoutError"):
        hint = "check endpoint_url (or AWS_ENDPOINT_URL) and that the server is up"
        return transient(f"cannot reach the S3 endpoint {endpoint}", hint)
    if code == "PreconditionFailed" or _has_class(exc, "FileExpired"):
        hint = "retry; the application is writing this object"
        return transient("the object changed while it was read or copied", hint)
    if isinstance(exc, PermissionError):
        return permanent(f"access denied: {exc}", creds)
    if isinstance(exc, FileNotFoundError) and (
        action == "check" or code == "NoSuchBucket" or "bucket" in str(exc).lower()
    ):
        hint = "create the bucket or fix the store url in the map"
        return permanent(f"bucket {store.bucket!r} does not exist at {endpoint}", hint)
    if missing:
        return permanent("no such object")
    if (
        code in _RETRYABLE_CODES
        or (code or "").startswith("5")
        or _has_class(exc, *_NETWORK.split())
    ):
        return transient(str(exc), "retry later")
    if isinstance(exc, OSError) or code:
        return permanent(f"S3 refused: {exc}")
    return None
