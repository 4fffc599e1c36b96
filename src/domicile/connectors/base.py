"""The connector seam: the small interface each kind of backend implements.

Callers depend on these Protocols, not on a backend; one conformance suite per
Protocol runs against every backend (``tests/test_objects_contract.py`` for
object stores).  Backends differ only where a :class:`Capabilities` record
says so.  Keep this module free of drivers and of runtime imports of the
backends: it is the bottom of the import graph.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Self, runtime_checkable

if TYPE_CHECKING:  # only for annotations: the backends import this module
    from domicile.connectors.objects.common import CopyResult, ObjectInfo, ObjectReader, Readable

# -- object stores ----------------------------------------------------------------------


@dataclass(frozen=True)
class Capabilities:
    """What an object-store backend can do, where backends differ.

    ``conditional_delete``: delete_if_unchanged compares and deletes in one
    step the server (or the file system) enforces, so no write in between is
    lost.  ``server_side_copy``: copy_from can have the server copy the bytes
    between two stores of this backend.  ``version_token``: what an
    :class:`ObjectInfo` ``version`` is made of, for humans reading a journal.
    """

    conditional_delete: bool
    server_side_copy: bool
    version_token: str


@runtime_checkable
class ObjectBackend(Protocol):
    """One object store: keys relative to a root, streamed atomic copies, compare-and-delete.

    ``domicile.connectors.objects.ObjectStore`` implements it for local folders
    and S3; see there for each operation's exact promises.
    """

    name: str  # the store's name in the data map
    root_url: str
    capabilities: Capabilities

    def check(self) -> None:
        """Reach the store; raise a ConnectorError saying why it cannot be used."""
        ...

    def url_for(self, key: str) -> str:
        """The full URL of *key* in this store."""
        ...

    def key_for(self, url: str) -> str | None:
        """The key of *url* here, or None when the URL lies outside this store."""
        ...

    def list(self, prefix: str = "", pattern: str | None = None) -> Iterator[ObjectInfo]:
        """Stream the objects whose key starts with *prefix* and matches the glob *pattern*."""
        ...

    def stat(self, key: str) -> ObjectInfo | None:
        """The object's size and version, or None if there is no such object."""
        ...

    def exists(self, key: str) -> bool:
        """True if the object exists."""
        ...

    def open_read(self, key: str) -> ObjectReader:
        """A streaming reader of one version of the object (``reader.info``)."""
        ...

    def sha256(self, key: str) -> str:
        """The hex SHA-256 of the object's bytes."""
        ...

    def put_stream(self, key: str, readable: Readable) -> CopyResult:
        """Write *readable*'s bytes atomically under *key*, replacing any object."""
        ...

    def copy_from(self, src: Self, src_key: str, dst_key: str) -> CopyResult:
        """Copy *src_key* of another store of this family to *dst_key* here, hashing it."""
        ...

    def delete_if_unchanged(self, key: str, version: str) -> bool:
        """Delete the object only if its version is still *version*; True if deleted."""
        ...
