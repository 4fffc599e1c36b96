"""Helpers for the media tests: objects per store with their SHA-256, and media fleets.

The objects are read here without domicile's ObjectStore (plain files, or
s3fs straight), so a bug in the connector cannot hide itself.  The expected
placement of every object is worked out from the rows and the map before a
run, independently of domicile's census: an object whose owner belongs to a
jurisdiction and sits in a store that jurisdiction does not allow goes to
the jurisdiction's home object store under the same key; everything else
(unrestricted and unknown owners, objects of public videos kept abroad by the
demo's exception, objects no row or key names) stays exactly where it is.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml

from domicile.connectors.identity import MARKER_PREFIX
from domicile.connectors.objects import TMP_MARK
from domicile.countries import normalize_country
from domicile.datamap import load_map
from domicile.demo import STORES
from domicile.fleet import Fleet
from domicile.model import DataMap, Store

# store -> key -> SHA-256 (hex)
Objects = dict[str, dict[str, str]]

AVATAR = re.compile(r"avatars/(?P<owner>[^/]+)/[^/]+")
TWIN = {s.name: s.media for s in STORES}  # demo SQL store -> the object store beside it


# -- reading objects, independently of domicile ------------------------------------------


_FILESYSTEMS: dict[tuple[Any, ...], Any] = {}


def s3fs_for(options: Mapping[str, Any]) -> Any:
    """An s3fs filesystem for a map store's S3 options (one per endpoint and credentials).

    Its listings are never cached: every call sees the bucket as it is now.
    """
    import s3fs

    ident = tuple(options.get(k) for k in ("endpoint_url", "key", "secret", "region"))
    if ident not in _FILESYSTEMS:
        _FILESYSTEMS[ident] = s3fs.S3FileSystem(
            key=options.get("key"),
            secret=options.get("secret"),
            endpoint_url=options.get("endpoint_url"),
            client_kwargs={"region_name": options.get("region", "us-east-1")},
            skip_instance_cache=True,
            use_listings_cache=False,
        )
    return _FILESYSTEMS[ident]


def _bucket_path(url: str) -> str:
    return url.removeprefix("s3://").strip("/")


def store_objects(store: Store) -> dict[str, str]:
    """Every object of one store (hidden temporary files included) with its SHA-256."""
    out: dict[str, str] = {}
    if store.url.startswith("file://"):
        root = Path(store.url.removeprefix("file://"))
        if not root.is_dir():
            return out
        for folder, _dirs, files in os.walk(root):
            for name in files:
                full = Path(folder, name)
                out[full.relative_to(root).as_posix()] = hashlib.sha256(
                    full.read_bytes()
                ).hexdigest()
        return out
    fs = s3fs_for(store.options)
    base = _bucket_path(store.url)
    paths = fs.find(base)
    for start in range(0, len(paths), 200):  # fetched concurrently, a few MB at a time
        for full, data in fs.cat(paths[start : start + 200]).items():
            out[full[len(base) + 1 :]] = hashlib.sha256(data).hexdigest()
    return out


def object_snapshot(path: Path) -> Objects:
    """Every object of every object store of the map at *path* (but domicile's identity markers).

    The markers under ``.domicile/`` are domicile's own, written by every run to
    tell two names of one bucket apart (see domicile.connectors.identity).
    """
    m = load_map(path)
    return {
        s.name: {k: v for k, v in store_objects(s).items() if not k.startswith(MARKER_PREFIX)}
        for s in m.object_stores()
    }


def hidden_leftovers(objects: Objects) -> list[tuple[str, str]]:
    """(store, key) of domicile's temporary files (half-written or parked objects)."""
    return [
        (store, key)
        for store, keys in objects.items()
        for key in keys
        if any(part.startswith(TMP_MARK) for part in key.split("/"))
    ]


def write_object(store: Store, key: str, data: bytes) -> None:
    """Write (or overwrite) an object as the application would: in place, or a plain PUT."""
    if store.url.startswith("file://"):
        target = Path(store.url.removeprefix("file://"), key)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as f:  # in place: same inode, new bytes
            f.write(data)
        return
    s3fs_for(store.options).pipe_file(f"{_bucket_path(store.url)}/{key}", data)


def delete_object(store: Store, key: str) -> None:
    """Delete an object as the application would."""
    if store.url.startswith("file://"):
        Path(store.url.removeprefix("file://"), key).unlink()
        return
    s3fs_for(store.options).rm_file(f"{_bucket_path(store.url)}/{key}")


def object_url(store: Store, key: str) -> str:
    """The full URL of *key* in *store*, as domicile writes them (raw, not percent-encoded)."""
    return f"{store.url.rstrip('/')}/{key}"


# -- building media fleets ------------------------------------------------------------------


def _rewrite_map(path: Path, stores: Mapping[str, dict[str, Any]]) -> None:
    data = yaml.safe_load(path.read_text())
    for name, entry in stores.items():
        data["stores"][name] = {**entry, "labels": data["stores"][name]["labels"]}
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def media_to_s3(path: Path, server: Any, names: Iterable[str] | None = None) -> dict[str, str]:
    """Move the media demo's local object stores (all, or *names*) into fresh buckets.

    Each folder is uploaded into its own bucket on *server* (a WeedServer) and
    removed; the map's store then reads ``url: s3://bucket`` with the server's
    endpoint and credentials as ``options``.  Returns store -> bucket.
    """
    m = load_map(path)
    fs = s3fs_for(server.options)
    buckets: dict[str, str] = {}
    for store in m.object_stores():
        if names is not None and store.name not in names:
            continue
        bucket = server.make_bucket()
        root = Path(store.url.removeprefix("file://"))
        if root.is_dir():
            files = [Path(f, n) for f, _dirs, names in os.walk(root) for n in names]
            for start in range(0, len(files), 200):  # uploaded concurrently
                part = {
                    f"{bucket}/{f.relative_to(root).as_posix()}": f
                    for f in files[start : start + 200]
                }
                fs.pipe({remote: f.read_bytes() for remote, f in part.items()})
            for folder, dirs, files in os.walk(root, topdown=False):
                for name in files:
                    Path(folder, name).unlink()
                for name in dirs:
                    Path(folder, name).rmdir()
            root.rmdir()
        buckets[store.name] = bucket
    _rewrite_map(
        path, {n: {"url": f"s3://{b}", "options": dict(server.options)} for n, b in buckets.items()}
    )
    return buckets


def keys_to_urls(path: Path) -> int:
    """Turn every ``videos.media_key`` into the full URL of its object; returns how many.

    The object is found by key in the object store beside the row's SQL store
    (``sg-main`` -> ``media-sg``); a key no object answers to keeps the URL of
    where it would be (a dangling URL stays an orphan).
    """
    m = load_map(path)
    changed = 0
    with Fleet(m) as fleet:
        for loc in fleet.locations("videos"):
            media = m.stores[TWIN[loc.store.name]]
            t = loc.table
            with loc.store.engine.begin() as conn:
                rows = conn.execute(sa.select(t.c.id, t.c.media_key)).all()
                for vid, key in rows:
                    if key is None or "://" in key:
                        continue
                    url = object_url(media, key)
                    conn.execute(t.update().where(t.c.id == vid).values(media_key=url))
                    changed += 1
    return changed


def add_video(path: Path, store: str, user_id: int, media_key: str, **values: Any) -> int:
    """Insert a video row (e.g. one naming a missing object) into *store*; returns its id."""
    m = load_map(path)
    with Fleet(m) as fleet:
        top = 0
        for loc in fleet.locations("videos"):
            with loc.store.engine.connect() as conn:
                top = max(top, conn.execute(sa.select(sa.func.max(loc.table.c.id))).scalar() or 0)
        loc = fleet.location("videos", store)
        assert loc is not None
        row = {
            "id": top + 1,
            "user_id": user_id,
            "sound_id": None,
            "caption": "a video whose file was lost",
            "visibility": "private",
            "duration_ms": 1000,
            "created_at": sa.func.current_timestamp(),
            "media_key": media_key,
            **values,
        }
        with loc.store.engine.begin() as conn:
            conn.execute(loc.table.insert().values(**row))
    return top + 1


def users_of(path: Path, country: str, store: str) -> list[int]:
    """Ids of the users of *country* (normalised) whose row is in SQL store *store*."""
    m = load_map(path)
    with Fleet(m) as fleet:
        loc = fleet.location("users", store)
        assert loc is not None
        with loc.store.engine.connect() as conn:
            rows = conn.execute(sa.select(loc.table.c.id, loc.table.c.country)).all()
    return sorted(uid for uid, c in rows if normalize_country(c) == country)


# -- what must happen, and checking that it did ------------------------------------------


def _countries(fleet: Fleet) -> dict[Any, str | None]:
    out: dict[Any, str | None] = {}
    for loc in fleet.locations("users"):
        with loc.store.engine.connect() as conn:
            for uid, country in conn.execute(sa.select(loc.table.c.id, loc.table.c.country)):
                out[uid] = normalize_country(country)
    return out


def _video_owners(fleet: Fleet, m: DataMap) -> dict[tuple[str, str], tuple[Any, bool]]:
    """(object store, key) -> (owner, public) for every video row's object."""
    out: dict[tuple[str, str], tuple[Any, bool]] = {}
    for loc in fleet.locations("videos"):
        t = loc.table
        with loc.store.engine.connect() as conn:
            q = sa.select(t.c.media_key, t.c.user_id, t.c.visibility)
            for value, owner, visibility in conn.execute(q):
                if value is None:
                    continue
                public = visibility == "public"
                if "://" in value:
                    for store in m.object_stores():
                        root = store.url.rstrip("/") + "/"
                        if value.startswith(root):
                            out[(store.name, value[len(root) :])] = (owner, public)
                else:  # a key: wherever an object has it
                    for store in m.object_stores():
                        out.setdefault((store.name, value), (owner, public))
    return out


def expected_objects(path: Path, now: Objects, scope: Iterable[str] | None = None) -> Objects:
    """Where every object of *now* must be after a run over *scope* (default: all jurisdictions)."""
    m = load_map(path)
    wanted = set(scope) if scope is not None else set(m.jurisdictions)
    with Fleet(m) as fleet:
        countries = _countries(fleet)
        videos = _video_owners(fleet, m)
    out: Objects = {name: {} for name in now}
    for store, keys in now.items():
        labels = m.stores[store].labels
        for key, digest in keys.items():
            owner, public = videos.get((store, key), (None, False))
            match = AVATAR.fullmatch(key)
            if owner is None and match is not None:
                owner = int(match.group("owner"))
            country = countries.get(owner)
            j = m.jurisdiction_of_country(country) if country else None
            allowed = j is not None and any(
                all(labels.get(k) == v for k, v in sel.items()) for sel in j.allowed
            )
            if j is None or j.name not in wanted or public or allowed:
                out[store][key] = digest
                continue
            home = next(h for h in j.home if m.stores[h].kind == "objects")
            assert key not in out[home] or out[home][key] == digest, (store, key)
            out[home][key] = digest
    return out


def diff(expected: Objects, actual: Objects, limit: int = 12) -> list[str]:
    """Human-readable differences between two object snapshots."""
    lines: list[str] = []
    for store in sorted(set(expected) | set(actual)):
        want, have = expected.get(store, {}), actual.get(store, {})
        for key in sorted(set(want) | set(have)):
            if key not in have:
                lines.append(f"missing {store}/{key}")
            elif key not in want:
                lines.append(f"unexpected {store}/{key}")
            elif want[key] != have[key]:
                lines.append(f"different {store}/{key}")
    return lines[:limit] + ([f"... {len(lines) - limit} more"] if len(lines) > limit else [])


def assert_objects(expected: Objects, actual: Objects) -> None:
    """The snapshots are equal; otherwise fail listing what differs."""
    problems = diff(expected, actual)
    assert not problems, "\n".join(problems)


def no_object_lost(before: Objects, now: Objects) -> None:
    """Every object of *before* is still somewhere, with its original bytes."""
    places: dict[str, set[str]] = {}
    for keys in now.values():
        for key, digest in keys.items():
            places.setdefault(key, set()).add(digest)
    for store, keys in before.items():
        for key, digest in keys.items():
            assert digest in places.get(key, set()), f"lost: {store}/{key} is nowhere intact"


def check_rows_point_home(path: Path, objects: Objects, orphan_keys: Iterable[str] = ()) -> int:
    """Every video row's media_key names an existing object beside the row; returns rows checked.

    A key must be in the object store beside the row's SQL store; a URL must
    be that store's URL of the key.  *orphan_keys* name no object anywhere.
    """
    m = load_map(path)
    orphans = set(orphan_keys)
    checked = 0
    with Fleet(m) as fleet:
        for loc in fleet.locations("videos"):
            media = m.stores[TWIN[loc.store.name]]
            with loc.store.engine.connect() as conn:
                values = conn.execute(sa.select(loc.table.c.id, loc.table.c.media_key)).all()
            for vid, value in values:
                if value is None:
                    continue
                checked += 1
                key = value.rsplit("/videos/", 1)[-1] if "://" in value else value
                if key in orphans or f"videos/{key}" in orphans:
                    continue  # names no object anywhere: a dangling URL is left as it was
                if "://" in value:
                    root = media.url.rstrip("/") + "/"
                    assert value.startswith(root), (
                        f"video {vid} in {loc.store.name} names {value}, not in {media.name}"
                    )
                    key = value[len(root) :]
                assert key in objects[media.name], (
                    f"video {vid} in {loc.store.name}: {key} is not in {media.name}"
                )
    return checked
