"""The S3 backend (``s3://bucket/prefix``), over s3fs and aiobotocore.

Uploads go in multipart parts of the block size (about three parts in memory
at once) and an object appears only when its upload completes.  The version
token is the ETag; compare-and-delete is a DELETE with If-Match, and a copy
within one endpoint and one set of credentials is a CopyObject with
CopySourceIfMatch.  s3fs, botocore and fsspec are imported on the first
request, never by ``import domicile.connectors.objects``: a map without S3
stores neither needs the ``s3`` extra nor pays for loading it.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any

from domicile.connectors.base import Capabilities
from domicile.connectors.objects.common import CopyResult, Failure, ObjectInfo, is_missing
from domicile.connectors.objects.store import ObjectStore
from domicile.errors import ConnectorError

BLOCK_SIZE = 8 << 20  # S3 multipart part size
MAX_COPY_OBJECT = 5 << 30  # the most S3 copies in one CopyObject; larger objects stream
S3_OPTIONS = frozenset(
    {
        "endpoint_url",
        "region",
        "key",
        "secret",
        "token",
        "anon",
        "block_size",
        "read_timeout_seconds",
    }
)
READ_TIMEOUT_S = 60  # a server silent this long on an open connection: the request is retried


class S3Objects(ObjectStore, scheme="s3"):
    """An S3 bucket, or a prefix in one, as an object store (AWS, SeaweedFS, MinIO, ...)."""

    display_name = "S3"
    remnants = (
        "A bucket with versioning keeps every deleted object as a noncurrent version behind "
        "a delete marker until a lifecycle rule or a delete of that version removes it; "
        "object lock or retention can forbid removing it.",
        "Soft delete or trash features of the provider, and buckets the objects were "
        "replicated to (cross-region replication), keep copies that this delete does not "
        "reach.",
    )

    capabilities = Capabilities(
        # If-Match on DELETE; a server without it gets check-then-delete (see _delete_if).
        conditional_delete=True,
        server_side_copy=True,
        version_token="ETag",
    )

    def __init__(self, name: str, url: str, options: Mapping[str, Any] | None = None):
        super().__init__(name, url)
        opts, env = dict(options or {}), os.environ
        if unknown := sorted(set(opts) - S3_OPTIONS):
            raise self._bad(f"unknown S3 options {unknown}", f"use {', '.join(sorted(S3_OPTIONS))}")
        self.root_url = f"s3://{self.bucket}/{self.root}" if self.root else f"s3://{self.bucket}"
        self._prefix = f"{self.root}/" if self.root else ""
        self._url_head = f"s3://{self.bucket}/"
        self._clients: dict[bool, Any] = {}
        self.endpoint_url = opts.get("endpoint_url") or env.get("AWS_ENDPOINT_URL")
        self.region: str = opts.get("region") or env.get("AWS_REGION") or "us-east-1"
        self.anon = bool(opts.get("anon", False))
        self._key = opts.get("key") or env.get("AWS_ACCESS_KEY_ID")
        self._secret = opts.get("secret") or env.get("AWS_SECRET_ACCESS_KEY")
        self._token = opts.get("token") or env.get("AWS_SESSION_TOKEN")
        self.block_size = int(opts.get("block_size", BLOCK_SIZE))
        self.read_timeout = float(opts.get("read_timeout_seconds", READ_TIMEOUT_S))
        if self.block_size < 5 << 20:
            raise self._bad("block_size must be at least 5 MiB (the S3 minimum part size)")

    def __getstate__(self) -> dict[str, Any]:
        # Clients hold an event loop and sockets: a worker process makes its own.
        return {**self.__dict__, "_clients": {}}

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
            attempts, connect, read = (1, 3, 15) if probe else (3, 10, self.read_timeout)
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
            # no second loop of s3fs's on top of botocore's: a failure that outlasts
            # botocore's attempts goes to the run's retries (backoff, jitter, a bound)
            fs.retries = 1
            self._clients[probe] = fs
        return self._clients[probe]

    def _identity(self) -> tuple[Any, ...]:
        """Who talks to which server: equal identities may copy server side."""
        return (self.scheme, self.endpoint_url, self.region, self._key, self._secret, self.anon)

    def _check(self) -> None:
        # ListObjectsV2, not HeadBucket: its errors say *why* (unknown
        # key, bad signature, no bucket) where HeadBucket only says 403.
        self._fs(True).call_s3(
            "list_objects_v2", Bucket=self.bucket, Prefix=self._prefix, MaxKeys=1
        )

    # -- listing, metadata, reading --------------------------------------------------

    def _walk(self, start: str) -> Iterator[ObjectInfo]:
        fs, root = self._fs(), self._prefix
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

    def _stat(self, key: str, full: str) -> ObjectInfo:
        head = self._fs().call_s3("head_object", Bucket=self.bucket, Key=full)
        return ObjectInfo(key, int(head["ContentLength"]), head["ETag"].strip('"'))

    def _open(self, key: str, full: str) -> tuple[io.RawIOBase, ObjectInfo]:
        got = self._fs().call_s3("get_object", Bucket=self.bucket, Key=full)
        info = ObjectInfo(key, int(got["ContentLength"]), got["ETag"].strip('"'))
        return _S3Body(self, key, got["Body"], info.size), info

    # -- writing and copying ---------------------------------------------------------

    @contextmanager
    def _writer(self, key: str, full: str) -> Iterator[Any]:
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

    def _copy_server_side(self, src: ObjectStore, src_key: str, dst_key: str) -> CopyResult | None:
        # Only where one client could do both: same endpoint, same credentials.
        if not isinstance(src, S3Objects) or self._identity() != src._identity():
            return None
        info = src.stat(src_key)
        if info is None:
            raise src._bad(f"copying {src_key!r}: no such object")
        # Read where the package exports it, so that lowering
        # domicile.connectors.objects.MAX_COPY_OBJECT (as the tests do) takes effect.
        from domicile.connectors import objects as package

        if info.size > package.MAX_COPY_OBJECT:
            return None
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

    # -- deleting --------------------------------------------------------------------

    def _delete_if(self, key: str, full: str, version: str) -> bool:
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
                if code in ("PreconditionFailed", "412", "NoSuchKey", "404"):
                    # Refused: the object changed since the stat (False), or it is gone.
                    # Gone right after a stat showed our version means a DELETE of it
                    # took effect: this very request, sent again by botocore or s3fs
                    # after its reply was lost or late.  Deleted, as asked: the caller
                    # must not take it for the application's delete (and remove the
                    # verified home copy); an application delete landing within this
                    # round trip is taken for ours, its home copy kept.
                    return self.stat(key) is None
                if code not in ("NotImplemented", "501") or not condition:
                    raise
                condition = {}  # no conditional delete here: check again, then plain

    # -- errors ------------------------------------------------------------------------

    def _translate(self, exc: BaseException, failure: Failure) -> ConnectorError | None:
        endpoint, code = self.endpoint_url or "the default AWS endpoint", _s3_code(exc)
        creds = (
            "check the key and secret (store options key/secret, or AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY) and that they may list, read and write this bucket"
        )
        if _has_class(exc, "NoCredentialsError", "PartialCredentialsError"):
            return failure.permanent("no S3 credentials", creds)
        if _has_class(exc, "EndpointConnectionError", "ConnectTimeoutError"):
            hint = "check endpoint_url (or AWS_ENDPOINT_URL) and that the server is up"
            return failure.transient(f"cannot reach the S3 endpoint {endpoint}", hint)
        if code == "PreconditionFailed" or _has_class(exc, "FileExpired"):
            hint = "retry; the application is writing this object"
            return failure.transient("the object changed while it was read or copied", hint)
        if isinstance(exc, PermissionError):
            return failure.permanent(f"access denied: {exc}", creds)
        if isinstance(exc, FileNotFoundError) and (
            failure.action == "check" or code == "NoSuchBucket" or "bucket" in str(exc).lower()
        ):
            hint = "create the bucket or fix the store url in the map"
            return failure.permanent(f"bucket {self.bucket!r} does not exist at {endpoint}", hint)
        if is_missing(exc):
            return failure.permanent("no such object")
        if (
            code in _RETRYABLE_CODES
            or (code or "").startswith("5")
            or _has_class(exc, *_NETWORK.split())
        ):
            return failure.transient(str(exc), "retry later")
        if isinstance(exc, OSError) or code:
            return failure.permanent(f"S3 refused: {exc}")
        return None


class _S3Body(io.RawIOBase):
    """The body of one GET as a blocking raw stream (the response lives on s3fs's event loop)."""

    def __init__(self, store: S3Objects, key: str, body: Any, size: int):
        super().__init__()
        from fsspec.asyn import sync  # loaded with s3fs already; kept off the import path

        self._sync = sync
        self._store, self._key, self._body, self._left = store, key, body, size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._left <= 0:  # all bytes are in: spare a round trip to the event loop
            return 0
        with self._store._guard("reading", self._key):
            data = self._sync(self._store._fs().loop, _read_up_to, self._body, len(buffer))
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
