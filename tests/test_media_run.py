"""End to end with media: objects move home with their rows, in local folders and S3 buckets.

The media demo (SQLite stores and object stores beside them: videos named by
``videos.media_key`` and avatars as an object dataset ``avatars/{owner}/*``)
is run as it is (local -> local), with every object store turned into a
bucket on the session's SeaweedFS (S3 -> S3), with the legacy media local and
the homes in S3 (local -> S3), and with ``media_key`` holding full URLs (they
must be rewritten at home to the home store's URL).  Each time: the objects
end exactly where the rule puts them with their bytes unchanged (computed
independently in mediakit), the rows at home name them, nothing of a
jurisdiction's subjects is left abroad, and the rest is untouched.
"""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from domicile.cli import run_cli
from domicile.datamap import load_map
from domicile.demo import build_demo
from domicile.fleet import Fleet
from domicile.run.journal import BatchRecord, Journal
from domicile.state import state_engine
from invariants import check_invariants, snapshot
from mediakit import (
    TWIN,
    Objects,
    add_video,
    assert_objects,
    check_rows_point_home,
    expected_objects,
    hidden_leftovers,
    keys_to_urls,
    media_to_s3,
    object_snapshot,
    object_url,
    users_of,
    write_object,
)

HOME_MEDIA = ["media-us", "media-ca", "media-au", "media-nz"]


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = run_cli(list(args))
    out = capsys.readouterr()
    return code, out.out + out.err


def _scan_json(capsys: pytest.CaptureFixture[str], path: Path) -> tuple[int, dict[str, Any]]:
    code = run_cli(["scan", "--json", "-c", str(path)])
    out = capsys.readouterr()
    return code, json.loads(out.out)


def _videos(path: Path) -> dict[int, dict[str, dict[str, Any]]]:
    """Video id -> SQL store -> the row (plain values)."""
    out: dict[int, dict[str, dict[str, Any]]] = {}
    with Fleet(load_map(path)) as fleet:
        for loc in fleet.locations("videos"):
            with loc.store.engine.connect() as conn:
                for row in conn.execute(sa.select(loc.table)).mappings():
                    out.setdefault(row["id"], {})[loc.store.name] = dict(row)
    return out


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


VARIANTS = {
    # name: (object stores moved into S3: None = none, "all", or "homes"), URLs in media_key
    "local": (None, False),
    "s3": ("all", False),
    "local-to-s3": ("homes", False),
    "urls-local": (None, True),
    "urls-s3": ("all", True),
    "urls-local-to-s3": ("homes", True),
}


@pytest.mark.parametrize(
    "variant",
    [
        pytest.param(v, marks=pytest.mark.long) if v in ("s3", "urls-s3", "urls-local-to-s3") else v
        for v in VARIANTS
    ],
)
def test_media_moves_home_with_rows(tmp_path, capsys, request, variant):
    where, urls = VARIANTS[variant]
    path = build_demo(tmp_path / "demo", users=60, seed=5, media=True)
    if where is not None:
        server = request.getfixturevalue("s3_server")
        media_to_s3(path, server, None if where == "all" else HOME_MEDIA)
    if urls:
        assert keys_to_urls(path) > 0
    m = load_map(path)
    # a US user's video whose file was lost: an orphan blob; the row still moves
    lost_owner = users_of(path, "US", "sg-main")[0]
    lost_key = f"videos/{lost_owner}/lost.mp4"
    lost_value = object_url(m.stores["media-sg"], lost_key) if urls else lost_key
    lost_id = add_video(path, "sg-main", lost_owner, lost_value)

    assert _run(capsys, "check", "-c", str(path))[0] == 0
    code, census = _scan_json(capsys, path)
    assert code == 3 and census["violations"] > 0
    orphans = {(o["store"], o["dataset"]): o["records"] for o in census["orphans"]}
    assert orphans[("sg-main", "videos.media_key")] == 1

    rows_before, videos_before = snapshot(path), _videos(path)
    objects_before = object_snapshot(path)
    expected = expected_objects(path, objects_before)
    moving = {(s, k) for s, keys in objects_before.items() for k in keys if k not in expected[s]}
    # both shapes move, out of both legacy stores; public videos' objects stay
    assert {k.split("/")[0] for _, k in moving} == {"avatars", "videos"}
    assert {s for s, _ in moving} == {"media-sg", "media-us-va"}

    code, out = _run(capsys, "run", "--batch-size", "25", "-c", str(path))
    assert code == 0, out

    objects_after = object_snapshot(path)
    # every moved object is home with its bytes; unrestricted, unknown and public ones untouched
    assert_objects(expected, objects_after)
    assert not hidden_leftovers(objects_after)
    # the rows name their objects where they now are
    checked = check_rows_point_home(path, objects_after, orphan_keys=[lost_key])
    assert checked == sum(1 for v in _videos(path).values() for r in v.values() if r["media_key"])
    rows_after, videos_after = snapshot(path), _videos(path)
    moved_videos = {
        ("videos", (vid,))
        for vid, places in videos_after.items()
        if set(places) != set(videos_before[vid])
    }
    # a URL rewritten at home changes the row's digest: those rows are compared below
    check_invariants(path, rows_before, rows_after, changed_by_app=moved_videos if urls else set())
    for vid, places in videos_after.items():
        ((store, row),) = places.items()
        ((old_store, old),) = videos_before[vid].items()
        assert {k: v for k, v in row.items() if k != "media_key"} == {
            k: v for k, v in old.items() if k != "media_key"
        }
        if not urls or store == old_store or old["media_key"] is None or vid == lost_id:
            assert row["media_key"] == old["media_key"], vid
        else:
            key = old["media_key"].split("/videos/", 1)[1]
            assert row["media_key"] == object_url(m.stores[TWIN[store]], f"videos/{key}"), vid
    # the orphan's row went home and still names its (missing) object
    assert set(videos_after[lost_id]) == {"us-tx"}
    assert videos_after[lost_id]["us-tx"]["media_key"] == lost_value

    code, census = _scan_json(capsys, path)
    assert code == 0 and census["violations"] == 0, census
    orphans = {(o["store"], o["dataset"]): o["records"] for o in census["orphans"]}
    assert orphans.get(("us-tx", "videos.media_key")) == 1
    assert ("sg-main", "videos.media_key") not in orphans
    # a second run has nothing to do and changes nothing
    code, out = _run(capsys, "run", "-c", str(path))
    assert code == 0, out
    assert object_snapshot(path) == objects_after
    assert snapshot(path) == rows_after


def test_scope_moves_only_the_named_jurisdictions_objects(tmp_path, capsys):
    path = build_demo(tmp_path / "demo", users=60, seed=6, media=True)
    before = object_snapshot(path)
    expected = expected_objects(path, before, scope=["US"])
    assert expected != before
    code, out = _run(capsys, "run", "-j", "US", "-c", str(path))
    assert code == 0, out
    after = object_snapshot(path)
    assert_objects(expected, after)
    assert expected_objects(path, after, scope=["CA"]) != after  # CA's objects still abroad


# -- bad input: a store that cannot be reached -------------------------------------------


def _break(path: Path, store: str, problem: str, server: Any) -> None:
    data = yaml.safe_load(path.read_text())
    entry = data["stores"][store]
    if problem == "credentials":
        entry["options"]["secret"] = "not-the-secret"
    elif problem == "bucket":
        entry["url"] = "s3://no-such-bucket-for-domicile"
    else:
        entry["options"]["endpoint_url"] = f"http://127.0.0.1:{_closed_port()}"
    path.write_text(yaml.safe_dump(data, sort_keys=False))


MESSAGES = {
    "credentials": ("check the key and secret",),
    "bucket": ("bucket 'no-such-bucket-for-domicile' does not exist", "create the bucket"),
    "endpoint": ("cannot reach the S3 endpoint", "endpoint_url"),
}


@pytest.mark.parametrize("store", ["media-sg", "media-us"], ids=["legacy", "home"])
@pytest.mark.parametrize("problem", list(MESSAGES))
def test_unreachable_object_store_is_bad_input_and_nothing_moves(
    tmp_path, capsys, s3_server, problem, store
):
    path = build_demo(tmp_path / "demo", users=20, seed=7, media=True)
    media_to_s3(path, s3_server, [store])  # one bucket: each new bucket costs SeaweedFS ~1 s
    good = path.read_text()
    rows, objects = snapshot(path), object_snapshot(path)
    _break(path, store, problem, s3_server)
    for command in ("check", "scan", "run"):
        code, out = _run(capsys, command, "-c", str(path))
        assert code == 2, (command, out)
        assert store in out and "Traceback" not in out, (command, out)
        for words in MESSAGES[problem]:
            assert words in out, (command, out)
    path.write_text(good)
    assert snapshot(path) == rows
    assert object_snapshot(path) == objects


# -- an object already at home under the same key ---------------------------------------------


def _moving_key(expected: Objects, before: Objects, top: str) -> str:
    """A key of *top* (avatars, videos) that moves from media-sg to media-us."""
    keys = sorted(before["media-sg"])
    return next(k for k in keys if k.startswith(top) and k in expected["media-us"])


def _set_on_conflict(path: Path, strategy: str) -> None:
    data = yaml.safe_load(path.read_text())
    data["on_conflict"] = strategy
    path.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.mark.parametrize("strategy", ["fail", "keep-home", "overwrite"])
@pytest.mark.parametrize("top", ["avatars", "videos"])
def test_object_already_at_home_with_other_content_is_a_conflict(tmp_path, capsys, top, strategy):
    """The application wrote its own object home under the key: never overwritten silently."""
    path = build_demo(tmp_path / "demo", users=40, seed=8, media=True)
    if strategy != "fail":
        _set_on_conflict(path, strategy)
    m = load_map(path)
    before = object_snapshot(path)
    expected = expected_objects(path, before)
    key = _moving_key(expected, before, top)
    theirs = b"written at home by the application"
    write_object(m.stores["media-us"], key, theirs)
    theirs_digest = hashlib.sha256(theirs).hexdigest()
    code, out = _run(capsys, "run", "-c", str(path))
    after = object_snapshot(path)
    if strategy == "fail":
        assert code == 4, out
        assert key in out and "media-us" in out and "on_conflict" in out, out
        assert after["media-us"][key] == theirs_digest  # home's object untouched
        assert after["media-sg"][key] == before["media-sg"][key]  # and the source kept
        return
    assert code == 0, out
    # keep-home: the home version wins and the source copy goes; overwrite: the source's wins
    wins = theirs_digest if strategy == "keep-home" else before["media-sg"][key]
    expected["media-us"][key] = wins
    assert_objects(expected, after)


# -- objects abroad whose rows do not move --------------------------------------------------


def _last_batches(path: Path) -> list[BatchRecord]:
    """The batches of the journal's latest run (read straight from the state store)."""
    m = load_map(path)
    journal = Journal(state_engine(m.state, m.base_dir))
    return journal.batches(journal.runs()[-1].id)


def _blob_orphans(census: dict[str, Any]) -> list[dict[str, Any]]:
    """The census's orphans among the videos' objects (rows naming no object)."""
    return [o for o in census["orphans"] if o["dataset"] == "videos.media_key"]


def _media_key(path: Path, video: int) -> dict[str, Any]:
    """SQL store -> media_key of one video, read with plain SQL."""
    return {store: row["media_key"] for store, row in _videos(path)[video].items()}


ABROAD = {
    # name: (media_key holds URLs, object stores moved into S3)
    "key": (False, None),
    "url": (True, None),
    "url-local-to-s3": (True, HOME_MEDIA),
}


@pytest.mark.parametrize("variant", list(ABROAD))
def test_blob_abroad_of_a_row_already_home_moves(tmp_path, capsys, request, variant):
    """A row at home naming a new upload that went to the old bucket: the object goes home."""
    urls, s3_homes = ABROAD[variant]
    path = build_demo(tmp_path / "demo", users=40, seed=9, media=True)
    if s3_homes is not None:
        media_to_s3(path, request.getfixturevalue("s3_server"), s3_homes)
    if urls:
        keys_to_urls(path)
    m = load_map(path)
    owner = users_of(path, "US", "us-tx")[0]
    key = f"videos/{owner}/uploaded-abroad.mp4"
    data = b"new upload that still went to the old bucket"
    write_object(m.stores["media-sg"], key, data)
    value = object_url(m.stores["media-sg"], key) if urls else key
    video = add_video(path, "us-tx", owner, value)
    code, census = _scan_json(capsys, path)
    assert code == 3, census
    assert any(
        c["violating"]
        and (c["store"], c["dataset"], c["jurisdiction"]) == ("media-sg", "videos.media_key", "US")
        for c in census["cells"]
    ), census["cells"]
    rows_before, videos_before = snapshot(path), _videos(path)
    before = object_snapshot(path)
    expected = expected_objects(path, before)
    assert expected["media-us"][key] == hashlib.sha256(data).hexdigest()
    assert key not in expected["media-sg"]

    code, out = _run(capsys, "run", "-c", str(path))
    assert code == 0, out
    after = object_snapshot(path)
    assert_objects(expected, after)  # the upload is home with its bytes, gone from media-sg
    assert not hidden_leftovers(after)
    # the row stayed where it was and names the object where it now is
    home_value = object_url(m.stores["media-us"], key) if urls else key
    assert _media_key(path, video) == {"us-tx": home_value}
    check_rows_point_home(path, after)
    # nothing else changed: only this row's column, and only when it held a URL
    # rows' contents unchanged but where a URL was rewritten: the moved rows', and this one's
    rows_after, videos_after = snapshot(path), _videos(path)
    rewritten = {
        ("videos", (vid,))
        for vid, places in videos_after.items()
        if vid == video or set(places) != set(videos_before[vid])
    }
    check_invariants(path, rows_before, rows_after, changed_by_app=rewritten if urls else set())
    # journalled as one batch out of the object store, copied, verified and deleted
    (batch,) = [b for b in _last_batches(path) if b.source == "media-sg" and b.dataset == "videos"]
    assert batch.state == "done" and batch.counts["deleted"] == 1, batch
    assert batch.counts["urls_rewritten"] == (1 if urls else 0)
    code, census = _scan_json(capsys, path)
    assert code == 0 and census["violations"] == 0, census
    assert not _blob_orphans(census), census["orphans"]
    # a second run finds nothing to do and changes nothing
    code, out = _run(capsys, "run", "-c", str(path))
    assert code == 0, out
    assert object_snapshot(path) == after
    assert snapshot(path) == rows_after


def test_object_shared_by_a_row_that_stays_is_kept(tmp_path, capsys):
    """A private video moves home, a public one kept abroad names the same file: it stays."""
    path = build_demo(tmp_path / "demo", users=40, seed=9, media=True)
    keys_to_urls(path)
    m = load_map(path)
    before = object_snapshot(path)
    expected = expected_objects(path, before)
    # a private video of a US user (it moves) and a public one naming the same file (it stays)
    shared = _moving_key(expected, before, "videos")
    url = object_url(m.stores["media-sg"], shared)
    owner = int(shared.split("/")[1])
    private = next(
        vid
        for vid, places in _videos(path).items()
        if places.get("sg-main", {}).get("media_key") == url
    )
    public = add_video(path, "sg-main", owner, url, visibility="public")
    code, out = _run(capsys, "run", "-c", str(path))
    assert code == 0, out
    after = object_snapshot(path)
    # the private row's copy went home; the public row's object stayed beside it
    expected["media-sg"][shared] = before["media-sg"][shared]
    assert_objects(expected, after)
    assert _media_key(path, private) == {"us-tx": object_url(m.stores["media-us"], shared)}
    assert _media_key(path, public) == {"sg-main": url}
    check_rows_point_home(path, after)
    kept = sum(b.counts.get("blobs_shared", 0) for b in _last_batches(path))
    assert kept == 1
    # the public row is no orphan: its URL still names the object in media-sg
    code, census = _scan_json(capsys, path)
    assert code == 0 and census["violations"] == 0, census
    orphans = {(o["store"], o["dataset"]) for o in census["orphans"]}
    assert ("sg-main", "videos.media_key") not in orphans


def test_object_abroad_shared_by_a_row_at_home_and_a_moving_row(tmp_path, capsys):
    """A video at home and a moving one name one file abroad (a repost): both end home."""
    path = build_demo(tmp_path / "demo", users=40, seed=9, media=True)
    keys_to_urls(path)
    m = load_map(path)
    before = object_snapshot(path)
    expected = expected_objects(path, before)
    shared = _moving_key(expected, before, "videos")
    url = object_url(m.stores["media-sg"], shared)
    repost = add_video(path, "us-tx", int(shared.split("/")[1]), url)
    code, out = _run(capsys, "run", "-c", str(path))
    assert code == 0, out
    after = object_snapshot(path)
    assert_objects(expected, after)  # home with its bytes, and gone from media-sg
    # the row at home was pointed home before the moving row's batch deleted the file
    assert _media_key(path, repost) == {"us-tx": object_url(m.stores["media-us"], shared)}
    check_rows_point_home(path, after)
    code, census = _scan_json(capsys, path)
    assert code == 0 and census["violations"] == 0 and not _blob_orphans(census), census


def test_object_abroad_of_a_row_at_home_shared_with_a_row_that_stays(tmp_path, capsys):
    """A row at home and a public row abroad name one file there: home gets a copy, it stays."""
    path = build_demo(tmp_path / "demo", users=40, seed=9, media=True)
    keys_to_urls(path)
    m = load_map(path)
    owner = users_of(path, "US", "us-tx")[0]
    key = f"videos/{owner}/shared-abroad.mp4"
    write_object(m.stores["media-sg"], key, b"one file, two rows")
    url = object_url(m.stores["media-sg"], key)
    at_home = add_video(path, "us-tx", owner, url)
    public = add_video(path, "sg-main", owner, url, visibility="public")
    before = object_snapshot(path)
    code, out = _run(capsys, "run", "-c", str(path))
    assert code == 0, out
    after = object_snapshot(path)
    assert after["media-sg"][key] == before["media-sg"][key]  # kept for the public row
    assert after["media-us"][key] == before["media-sg"][key]  # the copy the home row names
    assert _media_key(path, at_home) == {"us-tx": object_url(m.stores["media-us"], key)}
    assert _media_key(path, public) == {"sg-main": url}
    (batch,) = [b for b in _last_batches(path) if b.source == "media-sg" and b.dataset == "videos"]
    assert batch.counts["blobs_shared"] == 1 and batch.counts["deleted"] == 0, batch
    code, census = _scan_json(capsys, path)
    assert code == 0 and census["violations"] == 0 and not _blob_orphans(census), census


def test_object_shared_by_bare_key_is_kept_and_the_run_says_so(tmp_path, capsys):
    """By bare key, one name cannot follow both rows: the object stays, the run ends incomplete.

    The public row abroad keeps its object beside it; the moving row's copy is
    home; but the moved row's key still finds the object abroad first, so the
    census (and the run) report it rather than pretend it moved.
    """
    path = build_demo(tmp_path / "demo", users=40, seed=9, media=True)
    before = object_snapshot(path)
    expected = expected_objects(path, before)
    shared = _moving_key(expected, before, "videos")
    public = add_video(path, "sg-main", int(shared.split("/")[1]), shared, visibility="public")
    code, out = _run(capsys, "run", "--max-passes", "3", "-c", str(path))
    assert code == 4, out
    assert "1 videos.media_key records of US remain in media-sg" in out, out
    after = object_snapshot(path)
    assert after["media-sg"][shared] == before["media-sg"][shared]  # beside the public row
    assert after["media-us"][shared] == before["media-sg"][shared]  # the moved row's copy
    expected["media-sg"][shared] = before["media-sg"][shared]
    assert_objects(expected, after)  # everything else moved as usual
    assert _media_key(path, public) == {"sg-main": shared}
    shared_counts = [b.counts.get("blobs_shared", 0) for b in _last_batches(path)]
    # kept once with the moving row, once more for the moved row at home; not again
    assert sum(shared_counts) == 2, shared_counts
