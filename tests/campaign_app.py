"""The campaign's fleet and its application: stores, schema, map, what the test knows, a writer.

Used by tests/campaign.py (see its docstring for the whole campaign).  The fleet: legacy SQL
stores ``sg`` (SQLite), ``eu`` (MariaDB) and ``jp`` (PostgreSQL) and custodian homes ``us``
(PostgreSQL) and ``ca`` (SQLite), each with ``users``, ``posts`` (a foreign-key child with a
blob named by ``media_key``) and ``comments`` (a grandchild, owned through ``post_id ->
posts.id -> user_id``); object stores ``media-sg`` (S3, legacy), ``media-eu`` (a local folder,
legacy), ``media-us`` (S3) and ``media-ca`` (a folder) holding the posts' blobs and
``avatars/{owner}/*``.  Every key is unique across the fleet.

The application (:class:`Writer`) inserts, updates and deletes through the test's own SQL and
object clients (:class:`World`, no domicile code), where each record lives *now*: at its
origin store while the row is there, else at its home; a post's blob beside its row.  It
writes every committed change down in :class:`Truth`, which the checks judge the stores by.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml

from mediakit import delete_object, s3fs_for, store_objects, write_object

# name, engine, country, operator, the object store beside it
SQL_STORES = (
    ("sg", "sqlite", "SG", "legacy", "media-sg"),
    ("eu", "mysql", "DE", "legacy", "media-eu"),
    ("jp", "postgresql", "JP", "legacy", "media-sg"),
    ("us", "postgresql", "US", "custodian", "media-us"),
    ("ca", "sqlite", "CA", "custodian", "media-ca"),
)
# name, country, operator: one of them is an S3 bucket (the campaign's seed picks which, a
# legacy source or a home), the others local folders.  One bucket, not more: every S3 round
# trip costs a launch of domicile ~0.1 s here (identity markers, listings), and kills per
# minute are what the campaign is about.
OBJECT_STORES = (
    ("media-sg", "SG", "legacy"),
    ("media-eu", "DE", "legacy"),
    ("media-us", "US", "custodian"),
    ("media-ca", "CA", "custodian"),
)
S3_CHOICES = ("media-sg", "media-us")
HOMES = {"US": ("us", "media-us"), "CA": ("ca", "media-ca")}
BESIDE = {s[0]: s[4] for s in SQL_STORES}
LEGACY = {s[0]: s[2] for s in SQL_STORES if s[3] == "legacy"}
COLUMNS = {
    "users": ("id", "name", "country"),
    "posts": ("id", "user_id", "caption", "media_key"),
    "comments": ("id", "post_id", "body"),
}
PARENT = {"posts": ("user_id", "users"), "comments": ("post_id", "posts")}
EDITED = {"users": "name", "posts": "caption", "comments": "body"}


def metadata() -> sa.MetaData:
    """The schema of every SQL store: only integers and strings, equal in every engine."""
    md = sa.MetaData()

    def key() -> sa.Column[Any]:
        return sa.Column("id", sa.Integer, primary_key=True, autoincrement=False)

    def text(name: str, null: bool = False) -> sa.Column[Any]:
        return sa.Column(name, sa.String(120), nullable=null)

    fk = sa.ForeignKey
    sa.Table("users", md, key(), text("name"), text("country"))
    sa.Table("posts", md, key(), sa.Column("user_id", sa.Integer, fk("users.id"), nullable=False),
             text("caption"), text("media_key", null=True))  # fmt: skip
    post_id = sa.Column("post_id", sa.Integer, fk("posts.id"), nullable=False)
    sa.Table("comments", md, key(), post_id, text("body"))
    return md


MD = metadata()


def row_digest(values: Any) -> str:
    """The test's own digest of a row (its values, in COLUMNS order)."""
    return hashlib.sha256(repr(tuple(values)).encode()).hexdigest()[:24]


def data_map(urls: dict[str, str], s3: Any) -> dict[str, Any]:
    """The data map of the campaign fleet (*urls*: store -> URL, *s3*: a WeedServer)."""
    stores: dict[str, Any] = {}
    for name, *_, country, operator in [s[:4] for s in SQL_STORES] + list(OBJECT_STORES):
        stores[name] = {"url": urls[name], "labels": {"country": country, "operator": operator}}
        if urls[name].startswith("s3://"):
            stores[name]["options"] = dict(s3.options)
    return {
        "version": 1,
        "state": "sqlite:///.domicile/state.db",
        "stores": stores,
        "subjects": {"dataset": "users", "id": "id", "country": "country"},
        "jurisdictions": {
            j: {
                "countries": [j],
                "allowed": {"country": j, "operator": "custodian"},
                "home": list(h),
            }
            for j, h in HOMES.items()
        },
        "datasets": {
            "users": {"table": "users", "key": ["id"], "owner": "id"},
            "posts": {
                "table": "posts",
                "key": ["id"],
                "owner": "user_id",
                "blobs": {"column": "media_key"},
            },
            "comments": {
                "table": "comments",
                "key": ["id"],
                "owner": "post_id -> posts.id -> user_id",
            },
            "avatars": {"objects": "avatars/{owner}/*"},
        },
    }


def build(
    workdir: Path, sql_urls: dict[str, str], s3: Any, bucket: str
) -> tuple[Path, dict[str, str]]:
    """Create the schema in every SQL store, the object stores and the map; (map, urls).

    *bucket* names the object store that is an S3 bucket on *s3*.
    """
    urls = dict(sql_urls)
    for name, *_ in OBJECT_STORES:
        if name == bucket:
            urls[name] = f"s3://{s3.make_bucket()}"
        else:
            root = workdir / "media" / name
            root.mkdir(parents=True)
            urls[name] = root.as_uri()
    for name, *_ in SQL_STORES:
        engine = sa.create_engine(urls[name])
        MD.create_all(engine)
        engine.dispose()
    path = workdir / "domicile.yaml"
    path.write_text(yaml.safe_dump(data_map(urls, s3), sort_keys=False))
    return path, urls


@dataclass
class Rec:
    """What the test knows of one record (a row, or an object by key)."""

    subject: int
    origin: str  # the store it was created in
    versions: list[str]  # every digest it has had; the last is current
    values: tuple[Any, ...] = ()  # a row's current values
    deleted: bool = False


@dataclass
class Truth:
    """Every record the application made, where it made it, every version, what it deleted."""

    rows: dict[tuple[str, int], Rec] = field(default_factory=dict)
    objects: dict[str, Rec] = field(default_factory=dict)
    country: dict[int, str] = field(default_factory=dict)

    def home(self, rec: Rec, objects: bool = False) -> str | None:
        """The store the rule sends *rec* to, or None (an unrestricted subject's: stays)."""
        j = HOMES.get(self.country[rec.subject])
        return j[1 if objects else 0] if j else None

    def places(self, rec: Rec, objects: bool = False) -> list[str]:
        """Where the record may live now, in the order the application looks."""
        home = self.home(rec, objects)
        return [rec.origin] + ([home] if home and home != rec.origin else [])

    def live(self, table: str) -> list[tuple[int, Rec]]:
        return [(k, r) for (t, k), r in self.rows.items() if t == table and not r.deleted]


class World:
    """The fleet as the test sees it: its own engines and object clients, no domicile code."""

    def __init__(self, path: Path, urls: dict[str, str]):
        from domicile.datamap import load_map

        self.path = path
        self.objects = {s.name: s for s in load_map(path).object_stores()}
        self.engines: dict[str, sa.Engine] = {}
        for name, *_ in SQL_STORES:
            if urls[name].startswith("sqlite:"):
                engine = sa.create_engine(urls[name], connect_args={"timeout": 60})
                sa.event.listen(engine, "connect", _sqlite_pragmas)
            else:
                engine = sa.create_engine(urls[name], pool_pre_ping=True)
            self.engines[name] = engine

    def read_rows(self) -> dict[str, dict[int, dict[str, tuple[Any, ...]]]]:
        """table -> key -> store -> values, read with the test's own SELECTs."""
        out: dict[str, dict[int, dict[str, tuple[Any, ...]]]] = {t: {} for t in COLUMNS}
        for store, engine in self.engines.items():
            with engine.connect() as conn:
                for table, cols in COLUMNS.items():
                    t = MD.tables[table]
                    for row in conn.execute(sa.select(*[t.c[c] for c in cols])):
                        out[table].setdefault(row[0], {})[store] = tuple(row)
        return out

    def read_objects(self) -> dict[str, dict[str, str]]:
        """store -> key -> SHA-256 of every object (plain files, or s3fs straight)."""
        return {n: store_objects(s) for n, s in self.objects.items()}

    def has_object(self, store: str, key: str) -> bool:
        s = self.objects[store]
        if s.url.startswith("file://"):
            return Path(s.url.removeprefix("file://"), key).is_file()
        return bool(s3fs_for(s.options).exists(f"{s.url.removeprefix('s3://')}/{key}"))

    def close(self) -> None:
        for engine in self.engines.values():
            engine.dispose()


def _sqlite_pragmas(dbapi: Any, _record: Any) -> None:
    cur = dbapi.cursor()
    cur.execute("PRAGMA foreign_keys=ON")  # the application keeps its foreign keys
    cur.close()


OPS = {"add_family": 2, "add_comment": 2, "update_user": 1, "update_post": 1.5,
       "update_comment": 1.5, "overwrite": 1, "delete_comment": 2, "delete_post": 1,
       "delete_user": 0.3, "erase_moved": 0.5}  # fmt: skip
"""The application's mix: operation -> weight (a method of :class:`Writer` each)."""


class Writer(threading.Thread):
    """The application: writes where each record lives now, and records what it committed."""

    def __init__(
        self, world: World, truth: Truth, seed: int, ops_per_second: float,
        mix: dict[str, float] | None = None,
    ):  # fmt: skip
        super().__init__(daemon=True, name="application")
        self.world, self.truth, self.rng = world, truth, random.Random(seed)
        self.period = 1.0 / ops_per_second
        self.cap = 60  # live users at most: new families wait while the fleet is this big
        self.mix = {**OPS, **(mix or {})}
        self.lock = threading.Lock()  # held for each write, and by the checks
        self.stopped = threading.Event()
        self.counts: Counter[str] = Counter()
        self.error: BaseException | None = None
        self._ids = iter(range(1_000_000, 10**9))

    def run(self) -> None:
        try:
            while not self.stopped.wait(self.rng.uniform(0, 2 * self.period)):
                with self.lock:
                    op = self.rng.choices(list(self.mix), list(self.mix.values()))[0]
                    try:
                        getattr(self, op)()
                    except (sa.exc.DBAPIError, OSError):
                        # a lock timeout, a deadlock, a foreign key; a folder domicile just
                        # pruned: the application gives up this write and goes on
                        self.counts["refused"] += 1
        except BaseException as exc:  # reported by the campaign as a violation
            self.error = exc

    # -- inserts ---------------------------------------------------------------------

    def add_family(self, store: str | None = None, country: str | None = None) -> None:
        """A new user with a post (and its blob), a comment and an avatar, all at *store*."""
        if store is None and len(self.truth.live("users")) >= self.cap:
            return  # the fleet stays small: every launch of domicile reads all of it
        store = store or self.rng.choice(list(LEGACY))
        country = country or self.rng.choice(["US", "US", "CA", LEGACY.get(store, "US")])
        uid, pid, cid = next(self._ids), next(self._ids), next(self._ids)
        media = BESIDE[store]
        blobs = {f"avatars/{uid}/a.png": os.urandom(200), f"posts/{uid}/{pid}.bin": os.urandom(300)}
        try:
            for key, data in blobs.items():  # the files first, as an application uploads them
                write_object(self.world.objects[media], key, data)
        except OSError:
            for key in blobs:
                with contextlib.suppress(OSError):
                    delete_object(self.world.objects[media], key)
            raise
        rows = {
            "users": (uid, f"user {uid}", country),
            "posts": (pid, uid, f"post {pid}", f"posts/{uid}/{pid}.bin"),
            "comments": (cid, pid, f"comment {cid}"),
        }
        try:
            with self.world.engines[store].begin() as conn:
                for table, values in rows.items():
                    conn.execute(
                        MD.tables[table]
                        .insert()
                        .values(dict(zip(COLUMNS[table], values, strict=True)))
                    )
        except sa.exc.DBAPIError:
            for key in blobs:
                delete_object(self.world.objects[media], key)
            raise
        self.truth.country[uid] = country
        for table, values in rows.items():
            self.truth.rows[(table, values[0])] = Rec(uid, store, [row_digest(values)], values)
        for key, data in blobs.items():
            self.truth.objects[key] = Rec(uid, media, [hashlib.sha256(data).hexdigest()])
        self.counts["insert"] += 3

    def add_comment(self) -> None:
        """A comment on a post, in the store that holds the post now (its foreign key)."""
        posts = self.truth.live("posts")
        if not posts:
            return
        pid, post = self.rng.choice(posts)
        cid = next(self._ids)
        c, p = MD.tables["comments"], MD.tables["posts"]
        body = f"comment {cid}"
        for store in self.truth.places(post):
            with self.world.engines[store].begin() as conn:
                if conn.execute(sa.select(p.c.id).where(p.c.id == pid)).first() is None:
                    continue
                # the foreign key refuses it if domicile deleted the post meanwhile
                conn.execute(c.insert().values(id=cid, post_id=pid, body=body))
            values = (cid, pid, body)
            self.truth.rows[("comments", cid)] = Rec(
                post.subject, store, [row_digest(values)], values
            )
            self.counts["insert"] += 1
            return

    # -- updates ---------------------------------------------------------------------

    def update_user(self) -> None:
        self.update("users")

    def update_post(self) -> None:
        self.update("posts")

    def update_comment(self) -> None:
        self.update("comments")

    def update(self, table: str) -> None:
        """A new value in one column of a live record of *table*, where it lives now."""
        live = self.truth.live(table)
        if not live:
            return
        key, rec = self.rng.choice(live)
        column = EDITED[table]
        value = f"edited {next(self._ids)}"
        t = MD.tables[table]
        for store in self.truth.places(rec):
            with self.world.engines[store].begin() as conn:
                stmt = t.update().where(t.c.id == key).values({column: value})
                if conn.execute(stmt).rowcount != 1:
                    continue
            values = list(rec.values)
            values[COLUMNS[table].index(column)] = value
            rec.values = tuple(values)
            rec.versions.append(row_digest(rec.values))
            self.counts["update"] += 1
            return

    def _row_store(self, table: str, key: int) -> str | None:
        """Where the row is now (origin first), read by the application."""
        rec = self.truth.rows[(table, key)]
        t = MD.tables[table]
        for store in self.truth.places(rec):
            with self.world.engines[store].connect() as conn:
                if conn.execute(sa.select(t.c.id).where(t.c.id == key)).first():
                    return store
        return None

    def _object_store(self, key: str, rec: Rec) -> str | None:
        """Where an object is now: a post's blob beside its row, an avatar origin first."""
        stores = self.truth.places(rec, objects=True)
        if key.startswith("posts/"):
            row = self._row_store("posts", int(key.rsplit("/", 1)[1].split(".")[0]))
            stores = [BESIDE[row], *stores] if row else stores
        return next((s for s in stores if self.world.has_object(s, key)), None)

    def overwrite(self) -> None:
        """New bytes for a live object, where it is now."""
        live = [(k, r) for k, r in self.truth.objects.items() if not r.deleted]
        if not live:
            return
        key, rec = self.rng.choice(live)
        store = self._object_store(key, rec)
        if store is None:
            return  # nowhere: the check after the next launch reports it
        data = os.urandom(250)
        write_object(self.world.objects[store], key, data)
        rec.versions.append(hashlib.sha256(data).hexdigest())
        self.counts["update"] += 1

    # -- deletes ---------------------------------------------------------------------

    def _delete_row(self, table: str, key: int) -> str | None:
        """Delete one row where it lives now; the store it was deleted in, or None."""
        t = MD.tables[table]
        for store in self.truth.places(self.truth.rows[(table, key)]):
            with self.world.engines[store].begin() as conn:
                if conn.execute(t.delete().where(t.c.id == key)).rowcount != 1:
                    continue
            self.truth.rows[(table, key)].deleted = True
            self.counts["delete"] += 1
            return store
        return None

    def _delete_object(self, key: str) -> None:
        """Erase an object everywhere it may be (origin and home) once its row is gone.

        An S3 DELETE answers alike whether or not the object was there, so an
        application cannot tell that it just moved: it erases both places.
        """
        rec = self.truth.objects[key]
        for store in self.truth.places(rec, objects=True):
            if self.world.has_object(store, key):
                delete_object(self.world.objects[store], key)
        rec.deleted = True
        self.counts["delete"] += 1

    def delete_comment(self) -> None:
        live = self.truth.live("comments")
        if live:
            self._delete_row("comments", self.rng.choice(live)[0])

    def delete_post(self, pid: int | None = None) -> bool:
        """A post with its comments and its blob (children first, as the foreign keys want)."""
        if pid is None:
            posts = self.truth.live("posts")
            if not posts:
                return False
            pid = self.rng.choice(posts)[0]
        for cid, c in self.truth.live("comments"):
            if c.values[1] == pid:
                self._delete_row("comments", cid)
        store = self._delete_row("posts", pid)
        if store is not None:
            self._delete_object(self.truth.rows[("posts", pid)].values[3])
        return store is not None

    def delete_user(self, uid: int | None = None) -> None:
        """An account erased: its posts (with comments and blobs), its avatar, then the user."""
        if uid is None:
            users = self.truth.live("users")
            if not users:
                return
            uid = self.rng.choice(users)[0]
        for pid, p in self.truth.live("posts"):
            if p.values[1] == uid and not self.delete_post(pid):
                return
        if self._delete_row("users", uid) is not None:
            self._delete_object(f"avatars/{uid}/a.png")

    def erase_moved(self) -> None:
        """An account erased after it moved: only when each of its rows is at home alone."""
        moved = [(k, r) for k, r in self.truth.live("users") if self.truth.home(r)]
        if not moved:
            return
        uid, user = self.rng.choice(moved)
        posts = [k for k, p in self.truth.live("posts") if p.values[1] == uid]
        rows = [("users", uid)] + [("posts", k) for k in posts]
        rows += [("comments", k) for k, c in self.truth.live("comments") if c.values[1] in posts]
        if all(self._row_store(t, k) == self.truth.home(user) for t, k in rows):
            self.delete_user(uid)
