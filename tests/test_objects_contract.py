"""The object-store contract: one suite, run against a local folder and a real S3 server.

Every test taking ``object_store_factory`` runs twice: on fresh folders
(``file``) and on fresh buckets of the session's SeaweedFS (``s3``).  The
cross-store tests move bytes between the two kinds.  Nothing is mocked.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import random
import socket
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domicile.connectors import objects
from domicile.connectors.base import Capabilities, ObjectBackend
from domicile.connectors.objects import (
    TMP_MARK,
    LocalObjects,
    ObjectStore,
    S3Objects,
    check_key,
    find_store,
    split_url,
)
from domicile.errors import PermanentConnectorError, TransientConnectorError
from fixtures_s3 import StoreFactory, WeedServer

MiB = 1 << 20


def blob(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def put(store: ObjectStore, key: str, data: bytes) -> None:
    store.put_stream(key, io.BytesIO(data))


def read(store: ObjectStore, key: str) -> bytes:
    with store.open_read(key) as reader:
        return reader.read()


def keys(store: ObjectStore, prefix: str = "", pattern: str | None = None) -> list[str]:
    return [info.key for info in store.list(prefix, pattern)]


def make_store(kind: str, tmp_path: Path, server: WeedServer | None) -> ObjectStore:
    if kind == "file":
        folder = tmp_path / f"folder-{random.randrange(1 << 30)}"
        folder.mkdir()
        return ObjectStore(f"local-{folder.name}", f"file://{folder}")
    assert server is not None
    bucket = server.make_bucket()
    return ObjectStore(f"s3-{bucket}", f"s3://{bucket}", server.options)


class Exploding:
    """A readable that yields *good* bytes and then fails, like a dropped source."""

    def __init__(self, good: int):
        self.left = good

    def read(self, size: int) -> bytes:
        if self.left <= 0:
            raise RuntimeError("source connection lost")
        chunk = min(size, self.left)
        self.left -= chunk
        return b"x" * chunk


# -- listing and metadata ------------------------------------------------------------


def test_check_passes_on_a_fresh_store(object_store_factory: StoreFactory) -> None:
    object_store_factory().check()
    object_store_factory(prefix="nested/prefix").check()


def test_list_with_prefix_and_pattern(object_store_factory: StoreFactory) -> None:
    store = object_store_factory()
    names = ["a/1.txt", "a/2.bin", "a/b/3.txt", "a-b", "ab/4.txt", "z.txt", "é/5.txt"]
    for number, key in enumerate(names):
        put(store, key, blob(number * 10, seed=number))

    # Local folders list in UTF-8 byte order; SeaweedFS lists folder by folder.
    assert sorted(keys(store)) == sorted(names)
    if object_store_factory.kind == "file":
        assert keys(store) == sorted(names)
    assert {i.key: i.size for i in store.list()} == {k: n * 10 for n, k in enumerate(names)}
    assert keys(store, "a/") == ["a/1.txt", "a/2.bin", "a/b/3.txt"]
    assert sorted(keys(store, "a")) == ["a-b", "a/1.txt", "a/2.bin", "a/b/3.txt", "ab/4.txt"]
    assert keys(store, "a/b/3") == ["a/b/3.txt"]
    assert keys(store, "nothing/") == []
    assert keys(store, "../") == []
    assert keys(store, pattern="a/*.txt") == ["a/1.txt"]
    assert keys(store, pattern="a/**.txt") == ["a/1.txt", "a/b/3.txt"]
    assert keys(store, pattern="*/?.txt") == ["a/1.txt", "ab/4.txt", "é/5.txt"]
    assert sorted(keys(store, pattern="**.txt")) == [k for k in sorted(names) if k.endswith(".txt")]
    assert keys(store, "a/", "a/b/*") == ["a/b/3.txt"]
    assert keys(store, "z", "a/*") == []


def test_keys_are_relative_to_the_prefix(object_store_factory: StoreFactory) -> None:
    store = object_store_factory(prefix="tenant/media")
    put(store, "x/y.bin", b"123")
    assert keys(store) == ["x/y.bin"]
    assert store.stat("x/y.bin") == objects.ObjectInfo("x/y.bin", 3, store.stat("x/y.bin").version)  # type: ignore[union-attr]
    assert store.url_for("x/y.bin").endswith("/tenant/media/x/y.bin")


def test_stat_exists_and_version_tokens(object_store_factory: StoreFactory) -> None:
    store = object_store_factory()
    assert store.stat("missing.bin") is None
    assert not store.exists("missing.bin")
    assert not store.exists("missing/deeper.bin")
    put(store, "d/one.bin", b"aaaa")
    first = store.stat("d/one.bin")
    assert first is not None and first.size == 4 and first.key == "d/one.bin"
    assert store.exists("d/one.bin")
    assert store.stat("d") is None  # a folder is not an object
    put(store, "d/one.bin", b"bbbb")  # same size, written right away
    second = store.stat("d/one.bin")
    assert second is not None and second.version != first.version
    assert [i.version for i in store.list("d/")] == [second.version]


# -- copying -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size", [0, 1, 100_000, 20 * MiB + 3], ids=["empty", "1B", "100kB", "20MiB"]
)
def test_copy_preserves_bytes_and_sha256(object_store_factory: StoreFactory, size: int) -> None:
    src, dst = object_store_factory("src"), object_store_factory("dst")
    data = blob(size, seed=size)
    put(src, "in/obj.bin", data)
    result = dst.copy_from(src, "in/obj.bin", "out/obj.bin")
    expected = hashlib.sha256(data).hexdigest()
    assert (result.size, result.sha256) == (size, expected)
    assert result.source_version == src.stat("in/obj.bin").version  # type: ignore[union-attr]
    assert result.server_side == (object_store_factory.kind == "s3")
    assert dst.sha256("out/obj.bin") == expected
    assert read(dst, "out/obj.bin") == data
    assert dst.stat("out/obj.bin").size == size  # type: ignore[union-attr]


@pytest.mark.s3
@pytest.mark.parametrize("pair", ["file-s3", "s3-file", "s3-s3", "file-file"])
def test_copy_between_kinds(pair: str, tmp_path: Path, s3_server: WeedServer) -> None:
    src_kind, dst_kind = pair.split("-")
    src = make_store(src_kind, tmp_path, s3_server)
    dst = make_store(dst_kind, tmp_path, s3_server)
    data = blob(20 * MiB + 7, seed=7)  # more than one multipart block on S3
    put(src, "v/big.mp4", data)
    put(src, "v/empty", b"")
    for key in ("v/big.mp4", "v/empty"):
        result = dst.copy_from(src, key, f"copied/{key}")
        assert result.server_side == (pair == "s3-s3")
        assert result.sha256 == src.sha256(key) == dst.sha256(f"copied/{key}")
    assert read(dst, "copied/v/big.mp4") == data
    assert keys(dst) == ["copied/v/big.mp4", "copied/v/empty"]


@pytest.mark.s3
def test_objects_too_large_for_copy_object_stream(
    s3_server: WeedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # S3 copies at most 5 GiB in one CopyObject; pretend the limit is 6 MiB.
    monkeypatch.setattr(objects, "MAX_COPY_OBJECT", 6 * MiB)
    src = make_store("s3", Path(), s3_server)
    dst = make_store("s3", Path(), s3_server)
    data = blob(17 * MiB, seed=17)
    put(src, "k", data)
    result = dst.copy_from(src, "k", "k")
    assert not result.server_side and result.sha256 == hashlib.sha256(data).hexdigest()
    assert read(dst, "k") == data


def test_memory_is_bounded_whatever_the_object_size(
    object_store_factory: StoreFactory, tmp_path: Path
) -> None:
    size = 40 * MiB
    local = make_store("file", tmp_path, None)
    put(local, "big", blob(size, seed=1))
    options = object_store_factory.options
    if object_store_factory.kind == "s3":  # 5 MiB parts: about 3 parts in flight at most
        options = {**options, "block_size": 5 * MiB}
    store = ObjectStore("bounded", object_store_factory.url(), options)
    store.exists("warm-up")  # the client loads botocore's model (~10 MiB, once) before measuring
    steps = {
        "upload": lambda: store.copy_from(local, "big", "big"),
        "hash": lambda: store.sha256("big"),
        "download": lambda: local.copy_from(store, "big", "back"),
    }
    for label, step in steps.items():
        tracemalloc.start()
        try:
            step()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 20 * MiB, f"{label} peaked at {peak / MiB:.1f} MiB for a 40 MiB object"
    assert local.sha256("back") == local.sha256("big")


@pytest.mark.parametrize("good", [100, 12 * MiB], ids=["small", "multipart"])
def test_interrupted_write_leaves_no_partial_object(
    object_store_factory: StoreFactory, good: int
) -> None:
    store = object_store_factory()
    put(store, "keep/old.bin", b"old version")
    for key in ("fresh/new.bin", "keep/old.bin"):
        with pytest.raises(RuntimeError, match="source connection lost"):
            store.put_stream(key, Exploding(good))
    assert store.stat("fresh/new.bin") is None
    assert read(store, "keep/old.bin") == b"old version"
    assert keys(store) == ["keep/old.bin"]
    if object_store_factory.kind == "file":
        leftovers = [p.name for p in Path(store.root).rglob("*") if p.is_file()]
        assert leftovers == ["old.bin"]
    else:
        uploads = store._fs().call_s3("list_multipart_uploads", Bucket=store.bucket)
        assert uploads.get("Uploads", []) == []


def test_local_file_changed_during_read_is_refused(tmp_path: Path) -> None:
    store = make_store("file", tmp_path, None)
    put(store, "f.bin", blob(3 * MiB))
    with store.open_read("f.bin") as reader:
        chunks = store._read_chunks(reader)
        next(chunks)
        with open(Path(store.root, "f.bin"), "r+b") as f:  # an in-place writer
            f.seek(2 * MiB)
            f.write(b"changed")
        with pytest.raises(TransientConnectorError, match="changed while it was read"):
            list(chunks)


# -- compare-and-delete --------------------------------------------------------------


def test_delete_if_unchanged(object_store_factory: StoreFactory) -> None:
    store = object_store_factory()
    put(store, "u/1/avatar.png", b"v1")
    v1 = store.stat("u/1/avatar.png").version  # type: ignore[union-attr]
    put(store, "u/1/avatar.png", b"v2")  # the application wrote again after our copy
    assert store.delete_if_unchanged("u/1/avatar.png", v1) is False
    assert read(store, "u/1/avatar.png") == b"v2"
    v2 = store.stat("u/1/avatar.png").version  # type: ignore[union-attr]
    assert store.delete_if_unchanged("u/1/avatar.png", v2) is True
    assert store.stat("u/1/avatar.png") is None
    assert store.delete_if_unchanged("u/1/avatar.png", v2) is False
    assert keys(store) == []
    if object_store_factory.kind == "file":  # like S3, no empty folders stay behind
        assert list(Path(store.root).iterdir()) == []
    put(store, "u/1", b"a key where a folder was")
    assert read(store, "u/1") == b"a key where a folder was"


def test_delete_uses_the_version_from_the_copy(object_store_factory: StoreFactory) -> None:
    src, dst = object_store_factory("src"), object_store_factory("dst")
    put(src, "m.bin", b"copied bytes")
    result = dst.copy_from(src, "m.bin", "m.bin")
    assert result.source_version is not None
    assert src.delete_if_unchanged("m.bin", result.source_version)
    assert not src.exists("m.bin") and dst.exists("m.bin")


# -- URLs ------------------------------------------------------------------------------


def test_url_for_and_split_url_round_trip(object_store_factory: StoreFactory) -> None:
    outer = object_store_factory("outer")
    scheme, bucket, root = split_url(outer.root_url)
    inner_url = f"{outer.root_url}/inner"
    if scheme == "file":
        Path(root, "inner").mkdir()
    inner = ObjectStore("inner", inner_url, object_store_factory.options)
    for key in ("a.txt", "deep/er/b c.txt", "inner/x.bin"):
        url = outer.url_for(key)
        assert url.startswith(outer.root_url + "/")
        assert split_url(url)[:2] == (scheme, bucket)
        assert outer.key_for(url) == key
    url = inner.url_for("x.bin")
    assert url == outer.url_for("inner/x.bin")
    assert find_store(url, [outer, inner]) == (inner, "x.bin")  # the longest root wins
    assert find_store(outer.url_for("a.txt"), [outer, inner]) == (outer, "a.txt")
    assert outer.key_for(outer.root_url + "-sibling/a.txt") is None
    assert outer.key_for("s3://other-bucket/a.txt") is None
    assert find_store("file:///elsewhere/a.txt", [outer, inner]) is None


def test_split_url() -> None:
    assert split_url("s3://bucket/a/b c/d") == ("s3", "bucket", "a/b c/d")
    assert split_url("s3://bucket") == ("s3", "bucket", "")
    assert split_url("file:///srv/media/x.jpg") == ("file", "", "/srv/media/x.jpg")
    for bad in ("http://host/x", "file://relative/path", "s3:///no-bucket", "no-scheme"):
        with pytest.raises(ValueError):
            split_url(bad)


_segment = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cc", "Cs"), exclude_characters="/\\"),
    min_size=1,
    max_size=12,
).filter(lambda s: s not in (".", "..") and not s.startswith(TMP_MARK))
_key = st.lists(_segment, min_size=1, max_size=4).map("/".join)


@settings(
    max_examples=int(os.environ.get("DOMICILE_KEY_EXAMPLES", "30")),
    deadline=None,
    # One store serves every example on purpose; each example removes its object.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(key=_key, data=st.binary(max_size=64))
def test_any_key_round_trips(object_store_factory: StoreFactory, key: str, data: bytes) -> None:
    store = object_store_factory.shared()
    assert check_key(key) == key
    put(store, key, data)
    [info] = store.list()
    assert (info.key, info.size) == (key, len(data))
    assert read(store, key) == data
    assert store.key_for(store.url_for(key)) == key
    assert store.delete_if_unchanged(key, info.version)
    assert keys(store) == []


# -- bad input -----------------------------------------------------------------------


@pytest.mark.s3
@pytest.mark.parametrize("wrong", ["secret", "key"])
def test_wrong_credentials(s3_server: WeedServer, wrong: str) -> None:
    bucket = s3_server.make_bucket()
    options = {**s3_server.options, wrong: "not-the-right-one"}
    store = ObjectStore("media-us", f"s3://{bucket}", options)
    with pytest.raises(PermanentConnectorError) as caught:
        store.check()
    error = caught.value
    assert error.where == "media-us"
    assert "access denied" in error.message
    assert error.hint and "key" in error.hint and "secret" in error.hint
    with pytest.raises(PermanentConnectorError, match="access denied"):
        store.stat("any.bin")


@pytest.mark.s3
def test_missing_bucket(s3_server: WeedServer) -> None:
    store = ObjectStore("media-ca", "s3://no-such-bucket-here", s3_server.options)
    with pytest.raises(PermanentConnectorError, match="'no-such-bucket-here' does not exist") as e:
        store.check()
    assert e.value.where == "media-ca" and e.value.hint and "create the bucket" in e.value.hint
    with pytest.raises(PermanentConnectorError, match="does not exist"):
        list(store.list())


def test_unreachable_endpoint_fails_fast() -> None:
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    options = {"endpoint_url": f"http://127.0.0.1:{port}", "key": "k", "secret": "s"}
    store = ObjectStore("media-nz", "s3://bucket", options)
    started = time.monotonic()
    with pytest.raises(TransientConnectorError, match="cannot reach") as e:
        store.check()
    assert time.monotonic() - started < 10
    assert e.value.where == "media-nz" and e.value.hint and "endpoint_url" in e.value.hint


def test_missing_local_folder(tmp_path: Path) -> None:
    store = ObjectStore("media-au", f"file://{tmp_path}/gone")
    with pytest.raises(PermanentConnectorError, match="does not exist") as e:
        store.check()
    assert e.value.where == "media-au" and e.value.hint and "create the folder" in e.value.hint
    with pytest.raises(PermanentConnectorError, match="does not exist"):
        list(store.list())


def test_reading_a_missing_object(object_store_factory: StoreFactory) -> None:
    store = object_store_factory()
    with pytest.raises(PermanentConnectorError, match="no such object"):
        store.sha256("nope.bin")
    with pytest.raises(PermanentConnectorError, match="no such object"):
        object_store_factory().copy_from(store, "nope.bin", "x.bin")


@pytest.mark.parametrize(
    ("url", "options", "message"),
    [
        ("ftp://host/x", None, "unsupported"),
        ("file://relative/folder", None, "absolute path"),
        ("file:///srv/x", {"endpoint_url": "http://x"}, "take no options"),
        ("s3://bucket", {"endpoint": "http://x"}, "unknown S3 options"),
        ("s3://bucket", {"block_size": 1024}, "at least 5 MiB"),
    ],
)
def test_bad_store_definitions(url: str, options: dict[str, str] | None, message: str) -> None:
    with pytest.raises(PermanentConnectorError, match=message) as e:
        ObjectStore("bad", url, options)
    assert e.value.where == "bad"


@pytest.mark.parametrize(
    "key", ["", "/abs", "a//b", "a/../b", "./a", "dir/", "a\nb", TMP_MARK + "x"]
)
def test_bad_keys_are_refused(tmp_path: Path, key: str) -> None:
    store = make_store("file", tmp_path, None)
    with pytest.raises(PermanentConnectorError, match="bad object key"):
        store.stat(key)
    with pytest.raises(ValueError):
        check_key(key)


def test_temporary_files_and_links_are_not_objects(tmp_path: Path) -> None:
    store = make_store("file", tmp_path, None)
    Path(store.root, TMP_MARK + "left-by-a-crash").write_bytes(b"half")
    put(store, "real.bin", b"1")
    os.symlink(Path(store.root, "real.bin"), Path(store.root, "link"))
    assert keys(store) == ["real.bin"]
    assert store.stat("link") is None
    with pytest.raises(PermanentConnectorError, match="no such object"):
        store.open_read("link")
    assert not store.delete_if_unchanged("link", store.stat("real.bin").version)  # type: ignore[union-attr]
    assert Path(store.root, "link").is_symlink()


def test_a_store_pickles_without_its_clients(object_store_factory: StoreFactory) -> None:
    store = object_store_factory()
    put(store, "k", b"v")
    clone = pickle.loads(pickle.dumps(store))  # as a process pool ships it to a worker
    assert read(clone, "k") == b"v" and clone.root_url == store.root_url


def test_listing_spans_pages(object_store_factory: StoreFactory) -> None:
    store = object_store_factory()
    names = [f"p/{i:04d}" for i in range(1005)]  # S3 pages hold 1000 keys
    for name in names:
        put(store, name, b"")
    assert sorted(keys(store, "p/")) == names


# -- the backend seam ------------------------------------------------------------------


def test_object_store_picks_the_backend_and_conforms(object_store_factory: StoreFactory) -> None:
    store = object_store_factory()
    backend = LocalObjects if object_store_factory.kind == "file" else S3Objects
    assert type(store) is backend and isinstance(store, ObjectStore)
    assert isinstance(store, ObjectBackend)
    assert isinstance(store.capabilities, Capabilities) and store.capabilities.version_token
    assert repr(store) == f"ObjectStore({store.name!r}, {store.root_url!r})"
    clone = pickle.loads(pickle.dumps(store))
    assert type(clone) is backend and clone.capabilities == store.capabilities
    other = object_store_factory()
    put(store, "k", b"bytes")
    assert other.copy_from(store, "k", "k").server_side == store.capabilities.server_side_copy


def test_a_backend_serves_only_its_own_scheme(tmp_path: Path) -> None:
    assert LocalObjects("here", f"file://{tmp_path}").root == str(tmp_path)
    assert S3Objects("there", "s3://bucket/p", {"key": "k"}).root_url == "s3://bucket/p"
    for backend, url in ((LocalObjects, "s3://bucket"), (S3Objects, f"file://{tmp_path}")):
        with pytest.raises(PermanentConnectorError, match="serves") as e:
            backend("mixed", url)
        assert e.value.where == "mixed"


def test_importing_the_connector_loads_no_s3_driver() -> None:
    # A map without S3 stores must not need (nor pay for) the s3 extra.
    code = (
        "import sys, domicile.connectors.objects as o; o.ObjectStore('b', 's3://b');"
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'s3fs', 'boto3', 'botocore', 'aiobotocore', 'aiohttp', 'fsspec'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_put_stream_reports_what_it_wrote(object_store_factory: StoreFactory) -> None:
    store = object_store_factory()
    data = blob(3 * MiB + 5, seed=3)
    result = store.put_stream("w/obj.bin", io.BytesIO(data))
    assert (result.size, result.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert result.source_version is None and not result.server_side
    assert store.stat("w/obj.bin") == objects.ObjectInfo(
        "w/obj.bin", len(data), store.stat("w/obj.bin").version
    )  # type: ignore[union-attr]


def test_open_read_sees_the_version_it_opened(object_store_factory: StoreFactory) -> None:
    store = object_store_factory()
    put(store, "r.bin", b"first version")
    before = store.stat("r.bin")
    with store.open_read("r.bin") as reader:
        assert reader.info == before
        put(store, "r.bin", b"the second one")  # replaced while the reader is open
        assert reader.read() == b"first version"
    assert store.stat("r.bin") != before and read(store, "r.bin") == b"the second one"


@pytest.mark.parametrize(
    ("url", "full", "key"),
    [("file:///", "file:///srv/k", "srv/k"), ("s3://bucket", "s3://bucket/srv/k", "srv/k")],
    ids=["file", "s3"],
)
def test_urls_at_the_top_of_a_file_system_or_bucket(url: str, full: str, key: str) -> None:
    store = ObjectStore("top", url)
    assert store.url_for(key) == full and store.key_for(full) == key
    assert store.key_for(url) is None  # the root itself is no object
