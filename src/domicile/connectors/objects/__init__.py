"""Object stores: a local folder (``file:///abs/folder``) or an S3 bucket (``s3://bucket/prefix``).

One small interface over both (:class:`~domicile.connectors.base.ObjectBackend`)
with what moving data needs: streamed copies in chunks of :data:`CHUNK` (S3
uploads go in parts of the block size, about three parts in memory at once),
the SHA-256 of every copy computed as the bytes pass, writes that are atomic
for readers (a local file is written under a hidden name, fsync'ed and
renamed; an S3 object appears when its upload completes), and
compare-and-delete on a version token.

``ObjectStore(name, url, options)`` returns the backend for the URL's scheme:
:class:`LocalObjects` (``local.py``) or :class:`S3Objects` (``s3.py``); what
they share is written once in ``store.py`` and ``common.py``.

Keys are relative to the store root (see :func:`check_key`).  URLs are raw
``file:///abs/path`` and ``s3://bucket/key`` (not percent-encoded, as fsspec
and the AWS CLI write them), so they round-trip exactly.  Driver exceptions
become ConnectorErrors in one place per backend, its ``_translate``.
"""

from __future__ import annotations

from domicile.connectors.objects.common import (
    CHUNK,
    TMP_MARK,
    CopyResult,
    ObjectInfo,
    ObjectReader,
    Readable,
    check_key,
    split_url,
)
from domicile.connectors.objects.local import LocalObjects
from domicile.connectors.objects.s3 import BLOCK_SIZE, MAX_COPY_OBJECT, S3_OPTIONS, S3Objects
from domicile.connectors.objects.store import ObjectStore, find_store

__all__ = [
    "BLOCK_SIZE",
    "CHUNK",
    "MAX_COPY_OBJECT",
    "S3_OPTIONS",
    "TMP_MARK",
    "CopyResult",
    "LocalObjects",
    "ObjectInfo",
    "ObjectReader",
    "ObjectStore",
    "Readable",
    "S3Objects",
    "check_key",
    "find_store",
    "split_url",
]
