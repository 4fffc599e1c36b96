"""What both object-store backends share: records, key rules, URLs, globs, error wording.

Nothing here touches a folder or a bucket, and nothing here imports a driver:
this module is loaded by every ``import domicile.connectors.objects``.
"""

from __future__ import annotations

import errno
import io
import re
import unicodedata
from dataclasses import dataclass
from typing import Protocol

from domicile.errors import ConnectorError, PermanentConnectorError, TransientConnectorError

CHUNK = 1 << 20  # read and hash granularity
TMP_MARK = ".domicile-tmp-"  # hidden names of local files being written or deleted


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


def glob_regex(pattern: str) -> re.Pattern[str]:
    """Compile a key glob: ``**`` any text, ``*`` any text without ``/``, ``?`` one such char."""
    wild = {"**": ".*", "*": "[^/]*", "?": "[^/]"}
    parts = re.split(r"(\*\*|\*|\?)", pattern)
    return re.compile("".join(wild.get(p) or re.escape(p) for p in parts), re.DOTALL)


def glob_head(pattern: str) -> str:
    """The literal text a glob starts with: every key it matches starts with it."""
    return re.split(r"[*?]", pattern, maxsplit=1)[0]


# -- error wording, shared so both backends say "what failed, where, what to do" alike ------


def is_missing(exc: BaseException) -> bool:
    """True if *exc* says the object (or a folder on its path) is not there.

    A symbolic link counts as missing (ELOOP from O_NOFOLLOW): it is no object.
    """
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
        return True
    return getattr(exc, "errno", None) == errno.ELOOP


@dataclass(frozen=True)
class Failure:
    """Makes the ConnectorErrors of one failed action: ``"<action> '<key>': <message>"``."""

    where: str  # the store's name in the map
    action: str
    key: str | None = None

    @property
    def what(self) -> str:
        """The action and, if any, the key it was about."""
        return f"{self.action} {self.key!r}" if self.key else self.action

    def permanent(self, message: str, hint: str | None = None) -> ConnectorError:
        """A failure that retrying will not fix (a missing bucket, a refused key)."""
        return PermanentConnectorError(f"{self.what}: {message}", where=self.where, hint=hint)

    def transient(self, message: str, hint: str) -> ConnectorError:
        """A failure that may pass on its own (a timeout, a full disk, a busy server)."""
        return TransientConnectorError(f"{self.what}: {message}", where=self.where, hint=hint)
