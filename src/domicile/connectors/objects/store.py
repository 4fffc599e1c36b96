"""ObjectStore: what every object-store backend shares, and the factory that picks one.

``ObjectStore(name, url, options)`` returns the backend the URL's scheme names
(:class:`~domicile.connectors.objects.local.LocalObjects` for ``file://``,
:class:`~domicile.connectors.objects.s3.S3Objects` for ``s3://``), so callers
keep constructing and annotating ``ObjectStore`` as before.  This class writes
once what does not depend on the backend: key checks and URLs, glob filtering
of listings, streamed reads and hashing, atomic writes fed in chunks, the
copy orchestration, and the one place where driver exceptions become
ConnectorErrors (:meth:`ObjectStore._guard`).  A backend supplies the small
hooks below that raise NotImplementedError here.
(Not an ``abc.ABC``: type checkers would then refuse ``ObjectStore(...)``,
which is how every caller makes a store.)
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any, ClassVar

from domicile.connectors.base import Capabilities
from domicile.connectors.objects.common import (
    CHUNK,
    CopyResult,
    Failure,
    ObjectInfo,
    ObjectReader,
    Readable,
    check_key,
    glob_head,
    glob_regex,
    split_url,
)
from domicile.errors import ConnectorError, PermanentConnectorError

URL_HINT = "set the url to file:///abs/folder or s3://bucket"
_BACKENDS: dict[str, type[ObjectStore]] = {}  # scheme -> backend, filled by __init_subclass__

DOMICILE_PREFIX = ".domicile/"
"""Keys domicile writes for itself (identity markers); not user data."""


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

    scheme: ClassVar[str]  # the URL scheme the backend serves
    display_name: ClassVar[str] = "object store"
    remnants: ClassVar[tuple[str, ...]] = ()
    """What may remain of objects deleted here that domicile cannot erase (see the report)."""
    capabilities: Capabilities
    endpoint_url: str | None = None  # S3 only; here so callers may read it on any store
    root_url: str  # the store's own URL, as written back into rows
    _prefix: str  # what goes before a key to make its path (absolute, or in the bucket)
    _url_head: str  # what goes before that path to make its URL

    def __init_subclass__(cls, scheme: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if scheme is not None:
            cls.scheme = scheme
            _BACKENDS[scheme] = cls

    def __new__(
        cls, name: str = "", url: str = "", options: Mapping[str, Any] | None = None
    ) -> ObjectStore:
        # Defaults, because unpickling calls Backend.__new__(Backend) without arguments.
        backend = _BACKENDS[_parse(name, url)[0]] if cls is ObjectStore else cls
        return super().__new__(backend)

    def __init__(self, name: str, url: str, options: Mapping[str, Any] | None = None):
        self.name = name
        scheme, self.bucket, self.root = _parse(name, url)
        if scheme != self.scheme:
            raise self._bad(f"{type(self).__name__} serves {self.scheme}:// URLs, not {url!r}")

    def __repr__(self) -> str:
        return f"ObjectStore({self.name!r}, {self.root_url!r})"

    def _bad(self, message: str, hint: str | None = None) -> PermanentConnectorError:
        return PermanentConnectorError(message, where=self.name, hint=hint)

    # -- keys and URLs ---------------------------------------------------------------

    def _full(self, key: str) -> str:
        """The key's absolute path (file) or its path in the bucket (S3)."""
        try:
            check_key(key)
        except ValueError as exc:
            raise self._bad(f"bad object key {key!r}: {exc}", "fix the key") from None
        return self._prefix + key

    def url_for(self, key: str) -> str:
        """The full URL of *key*: ``file:///abs/folder/key`` or ``s3://bucket/prefix/key``."""
        return self._url_head + self._full(key)

    def key_for(self, url: str) -> str | None:
        """The key of *url* in this store, or None when the URL lies outside its root."""
        try:
            scheme, bucket, path = split_url(url)
            if (scheme, bucket) != (self.scheme, self.bucket) or not path.startswith(self._prefix):
                return None
            return check_key(path[len(self._prefix) :])
        except ValueError:
            return None

    # -- the one place where driver errors become domicile errors ---------------------

    @contextmanager
    def _guard(self, action: str, key: str | None = None) -> Iterator[None]:
        """Turn driver exceptions raised in the block into ConnectorErrors (see _translate)."""
        try:
            yield
        except ConnectorError:
            raise
        except Exception as exc:
            translated = self._translate(exc, Failure(self.name, action, key))
            if translated is None:
                raise
            raise translated from exc

    def _translate(self, exc: BaseException, failure: Failure) -> ConnectorError | None:
        """A ConnectorError saying what failed, where and what to do; None: re-raise *exc*."""
        raise NotImplementedError

    # -- reaching the store ----------------------------------------------------------

    def check(self) -> None:
        """Reach the store; confirm its folder or bucket exists and may be listed.

        PermanentConnectorError for a missing folder or bucket, wrong
        credentials or permissions; TransientConnectorError for an endpoint
        that does not answer (one attempt, 3 s connect timeout).
        """
        with self._guard("check"):
            self._check()

    def _check(self) -> None:
        """Reach the store, raising the driver's exceptions (translated by check())."""
        raise NotImplementedError

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
        regex = glob_regex(pattern) if pattern else None
        start = prefix
        if pattern:  # list from the pattern's literal head when it narrows the prefix
            head = glob_head(pattern)
            if head.startswith(prefix):
                start = head
            elif not prefix.startswith(head):
                return
        # domicile's own objects (identity markers) are not the user's, unless asked for
        hide = () if prefix.startswith(DOMICILE_PREFIX) else (DOMICILE_PREFIX,)
        walk = self._walk(start)
        with self._guard("listing", prefix or None):
            for info in walk:
                if hide and info.key.startswith(hide):
                    continue
                if info.key.startswith(prefix) and (regex is None or regex.fullmatch(info.key)):
                    yield info

    def _walk(self, start: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with *start* (and maybe more: list() filters)."""
        raise NotImplementedError

    def stat(self, key: str) -> ObjectInfo | None:
        """The object's size and version, or None if there is no such object."""
        full = self._full(key)
        with self._guard("stat", key):
            try:
                return self._stat(key, full)
            except (FileNotFoundError, NotADirectoryError):
                return None

    def _stat(self, key: str, full: str) -> ObjectInfo:
        """The object at path *full*; FileNotFoundError when it is not an object."""
        raise NotImplementedError

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
            raw, info = self._open(key, full)
        reader = ObjectReader(raw, CHUNK)
        reader.info = info
        return reader

    def _open(self, key: str, full: str) -> tuple[io.RawIOBase, ObjectInfo]:
        """A raw stream of one version of the object, and that version."""
        raise NotImplementedError

    def _read_chunks(self, reader: ObjectReader) -> Iterator[bytes]:
        """The reader's bytes in chunks; then make sure they are still the version opened."""
        with self._guard("reading", reader.info.key):
            while chunk := reader.read(CHUNK):
                yield chunk
            self._confirm_read(reader)

    def _confirm_read(self, reader: ObjectReader) -> None:
        """Raise if the bytes just read may mix versions (S3: one GET is one version)."""

    def sha256(self, key: str) -> str:
        """The hex SHA-256 of the object's bytes, read in chunks."""
        digest = hashlib.sha256()
        with self.open_read(key) as reader:
            for chunk in self._read_chunks(reader):
                digest.update(chunk)
        return digest.hexdigest()

    # -- writing ---------------------------------------------------------------------

    def _writer(self, key: str, full: str) -> AbstractContextManager[Any]:
        """A file for the object's bytes, published under *key* only if the block ends normally."""
        raise NotImplementedError

    def _pump(self, key: str, chunks: Iterable[bytes]) -> tuple[int, str]:
        """Write *chunks* atomically under *key*; return their size and SHA-256."""
        digest, size = hashlib.sha256(), 0
        with self._writer(key, self._full(key)) as out:
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
        if self.capabilities.server_side_copy:
            copied = self._copy_server_side(src, src_key, dst_key)
            if copied is not None:
                return copied
        with src.open_read(src_key) as reader:
            size, digest = self._pump(dst_key, src._read_chunks(reader))
        return CopyResult(size, digest, reader.info.version)

    def _copy_server_side(self, src: ObjectStore, src_key: str, dst_key: str) -> CopyResult | None:
        """Have the server copy the bytes; None when it cannot here (then they stream)."""
        return None

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
            return self._delete_if(key, full, version)

    def _delete_if(self, key: str, full: str, version: str) -> bool:
        """Delete the object at *full* if its version is still *version*."""
        raise NotImplementedError


def _parse(name: str, url: str) -> tuple[str, str, str]:
    """split_url(url) for a store named *name*: bad input becomes a PermanentConnectorError."""
    try:
        parsed = split_url(url)
    except ValueError as exc:
        raise PermanentConnectorError(str(exc), where=name, hint=URL_HINT) from None
    if parsed[0] not in _BACKENDS:  # split_url knows a scheme no backend was loaded for
        raise PermanentConnectorError(f"no backend for {url!r}", where=name, hint=URL_HINT)
    return parsed
