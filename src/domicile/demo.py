"""The embedded demo fleet: a short-video app that grew up in Singapore.

:func:`build_demo` writes six SQLite stores (and, on request, six local-folder
object stores) holding the data of a few thousand fake users, spread the way a
grown app spreads them: most records in the legacy store ``sg-main`` where the
app started, many North-American users on a later legacy shard ``us-va``, and
only a few already at their custodian home.  Beside the fleet it writes the
``domicile.yaml`` that maps it, so ``domicile scan`` works out of the box.

Everything is embedded (files only, no server) and deterministic for a seed:
Faker and :class:`random.Random` are both seeded, timestamps are drawn from a
fixed window rather than from the clock, and Faker is called only to fill
small pools that rows then sample from (which also keeps the default build to
a few seconds).
"""

from __future__ import annotations

import datetime as dt
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from faker import Faker

from domicile.demo_map import HEADER, HOMES, STORES, DemoStore, demo_data_map, dump_map
from domicile.errors import ConfigError

__all__ = ["HOMES", "MARKER", "STORES", "TABLES", "UNKNOWN_COUNTRIES", "DemoStore", "build_demo"]

MARKER = ".domicile-demo"
"""The file that marks a folder as holding a demo, so a rebuild may wipe it."""

MIN_USERS = 10
_CHUNK = 5000  # rows per executemany: big enough to be fast, small enough for memory


# Share of users per country (before the few unknown values are carved out).
_COUNTRY_SHARES: tuple[tuple[str, float], ...] = (
    ("US", 0.45), ("CA", 0.10), ("AU", 0.08), ("NZ", 0.03),
    ("GB", 0.04), ("DE", 0.03), ("FR", 0.03), ("BR", 0.03), ("MX", 0.04), ("IN", 0.04),
    ("JP", 0.02), ("KR", 0.02), ("ID", 0.02), ("PH", 0.02), ("SG", 0.02), ("NG", 0.01),
)  # fmt: skip

# How a grown app spells countries: mostly alpha-2, sometimes a name, an
# alpha-3 or lower case.  Every form here maps with pycountry's lookup, except
# "UK", the one common alias the directory must know on its own.
_SPELLINGS: dict[str, tuple[tuple[str, int], ...]] = {
    "US": (("US", 66), ("USA", 12), ("United States", 9), ("us", 8),
           ("United States of America", 5)),
    "CA": (("CA", 80), ("Canada", 12), ("CAN", 4), ("ca", 4)),
    "AU": (("AU", 78), ("Australia", 12), ("AUS", 6), ("au", 4)),
    "NZ": (("NZ", 80), ("New Zealand", 14), ("NZL", 6)),
    "GB": (("GB", 60), ("UK", 25), ("United Kingdom", 15)),
    "BR": (("BR", 80), ("Brazil", 15), ("BRA", 5)),
}  # fmt: skip
# The other countries: alpha-2, or now and then the English name.
_NAMES = {
    "DE": "Germany", "FR": "France", "MX": "Mexico", "IN": "India", "JP": "Japan",
    "KR": "South Korea", "ID": "Indonesia", "PH": "Philippines", "SG": "Singapore",
    "NG": "Nigeria",
}  # fmt: skip

# Values nobody can map: domicile must report them as unknown, never guess.
UNKNOWN_COUNTRIES: tuple[str | None, ...] = ("Atlantis", "", "N/A", "Earth", "-", None)

_LOCALES = {
    "US": "en_US", "CA": "en_CA", "AU": "en_AU", "NZ": "en_NZ", "GB": "en_GB", "DE": "de_DE",
    "FR": "fr_FR", "BR": "pt_BR", "MX": "es_MX", "IN": "en_IN", "JP": "ja_JP", "KR": "ko_KR",
    "ID": "id_ID", "PH": "en_PH", "SG": "zh_CN", "NG": "en_NG",
}  # fmt: skip

_SOUNDS = 200
_DELETED_ACCOUNTS = 5  # holes in the user id sequence: accounts deleted long ago
_ORPHAN_COMMENTS = 20  # comments those deleted accounts left behind
_SCATTER = 0.04  # share of a user's FK-free rows left in the old sg-main replica
_START = dt.datetime(2016, 1, 1)
_END = dt.datetime(2019, 12, 31, 23, 59, 59)
_SPAN = int((_END - _START).total_seconds())


def demo_metadata() -> sa.MetaData:
    """The demo schema, portable across backends.

    Foreign keys point only to ``users`` and ``sounds``: a sharded app cannot
    keep a comment and the video it is about in one database, so there are
    none between subjects' records (and none on ``comments.author_id``, whose
    authors may be deleted accounts).
    """
    md = sa.MetaData()
    integer, text, when = sa.Integer, sa.Text, sa.DateTime

    def col(name: str, kind: Any, *args: Any, null: bool = False, **kw: Any) -> sa.Column[Any]:
        return sa.Column(name, kind, *args, nullable=null, **kw)

    def key(name: str, *args: Any) -> sa.Column[Any]:
        return sa.Column(name, integer, *args, primary_key=True, autoincrement=False)

    def user_fk() -> sa.ForeignKey:
        return sa.ForeignKey("users.id")

    sa.Table(
        "users", md, key("id"), col("handle", sa.String(64)), col("display_name", sa.String(128)),
        col("email", sa.String(255)), col("country", sa.String(64), null=True),
        col("created_at", when), col("birth_date", sa.Date, null=True),
        col("is_creator", sa.Boolean),
    )  # fmt: skip
    sa.Table(
        "sounds", md, key("id"), col("title", sa.String(200)), col("artist", sa.String(200)),
        col("duration_ms", integer),
    )  # fmt: skip
    # videos.user_id has no foreign key: public videos stay abroad under an
    # exception (served by the CDN) while their owners' rows move home.
    sa.Table(
        "videos", md, key("id"), col("user_id", integer, index=True),
        col("sound_id", integer, sa.ForeignKey("sounds.id"), null=True), col("caption", text),
        col("visibility", sa.String(16)), col("duration_ms", integer), col("created_at", when),
        col("media_key", sa.String(255), null=True),
    )  # fmt: skip
    sa.Table(
        "comments", md, key("id"), col("video_id", integer),
        col("author_id", integer, index=True), col("body", text), col("created_at", when),
    )  # fmt: skip
    sa.Table(
        "likes", md, key("user_id", user_fk()), key("video_id"), col("created_at", when),
    )  # fmt: skip
    sa.Table(
        "follows", md, key("follower_id", user_fk()), key("followee_id"),
        col("created_at", when),
    )  # fmt: skip
    sa.Table(
        "messages", md, key("id"), col("sender_id", integer, index=True),
        col("recipient_id", integer, index=True), col("body", text), col("sent_at", when),
    )  # fmt: skip
    sa.Table(
        "login_events", md, key("id"), col("user_id", integer, user_fk(), index=True),
        col("ip", sa.String(64)), col("user_agent", text), col("at", when),
        col("kind", sa.String(16)),
    )  # fmt: skip
    return md


TABLES: tuple[str, ...] = (
    "users", "sounds", "videos", "comments", "likes", "follows", "messages", "login_events",
)  # fmt: skip
# Parents first, so the rows satisfy their foreign keys at every step.
_INSERT_ORDER = ("sounds", "users", "videos", "comments", "likes", "follows", "messages",
                 "login_events")  # fmt: skip


@dataclass
class _Pools:
    """Small pools of Faker output that the rows sample from."""

    names: dict[str, list[str]]
    handles: list[str]
    domains: list[str]
    captions: list[str]
    hashtags: list[str]
    comments: list[str]
    messages: list[str]
    ips: list[str]
    agents: list[str]


@dataclass
class _User:
    id: int
    store: str
    created: int  # seconds after _START
    creator: bool


@dataclass
class _Fleet:
    """Rows per store and table, and the fleet-wide id sequences."""

    rows: dict[str, dict[str, list[dict[str, Any]]]] = field(
        default_factory=lambda: {s.name: {t: [] for t in TABLES} for s in STORES}
    )
    blobs: dict[str, list[str]] = field(
        default_factory=lambda: {s.name: [] for s in STORES}
    )  # SQL store -> object keys for its media twin
    next_id: dict[str, int] = field(default_factory=dict)

    def new_id(self, table: str) -> int:
        """The next id of *table*: one sequence for the whole fleet, so moves never clash."""
        value = self.next_id.get(table, 0) + 1
        self.next_id[table] = value
        return value

    def add(self, store: str, table: str, row: dict[str, Any]) -> None:
        self.rows[store][table].append(row)


def build_demo(
    directory: Path,
    users: int = 3000,
    seed: int = 2019,
    media: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Build the demo fleet under *directory*; return the path of the domicile.yaml written there.

    *directory* must be empty, missing, or hold a previous demo (marked by a
    ``.domicile-demo`` file), whose ``fleet/``, ``media/`` and ``.domicile/``
    folders are removed first.  The same *seed* and *users* give the same rows.
    """
    say = progress or (lambda _msg: None)
    if users < MIN_USERS:
        raise ConfigError(
            f"a demo needs at least {MIN_USERS} users, got {users}", hint="pass a larger --users"
        )
    directory = Path(directory)
    _prepare(directory)
    (directory / MARKER).write_text(
        f"domicile demo fleet (users={users}, seed={seed}, media={media}); "
        "'domicile demo' may delete and rebuild this folder.\n",
        encoding="utf-8",
    )

    rng = random.Random(seed)
    say("generating Faker pools")
    pools = _make_pools(seed, users)
    say(f"generating {users} users and their records")
    fleet = _generate(rng, pools, users, media)

    fleet_dir = directory / "fleet"
    fleet_dir.mkdir(parents=True, exist_ok=True)
    for store in STORES:
        tables = fleet.rows[store.name]
        _write_store(fleet_dir / f"{store.name}.db", tables)
        say(f"{store.name}: {sum(len(r) for r in tables.values())} rows")
    if media:
        for store in STORES:
            root = directory / "media" / store.media
            # Its own generator: the rows are the same whether media is built or not.
            _write_blobs(root, fleet.blobs[store.name], random.Random(f"{seed}:{store.media}"))
            say(f"{store.media}: {len(fleet.blobs[store.name])} objects")

    path = directory / "domicile.yaml"
    path.write_text(HEADER + dump_map(demo_data_map(directory, media)), encoding="utf-8")
    say(f"wrote {path}")
    return path


def _prepare(directory: Path) -> None:
    """Make *directory* ready: create it, wipe a previous demo, or refuse."""
    if directory.exists() and not directory.is_dir():
        raise ConfigError(
            "the demo folder is a file", where=str(directory), hint="choose a folder with --dir"
        )
    if not directory.exists():
        directory.mkdir(parents=True)
        return
    if not any(directory.iterdir()):
        return
    if not (directory / MARKER).is_file():
        raise ConfigError(
            "the folder is not empty and holds no domicile demo; refusing to write into it",
            where=str(directory),
            hint="choose an empty folder, or pass --dir with a new one",
        )
    for name in ("fleet", "media", ".domicile"):
        shutil.rmtree(directory / name, ignore_errors=True)


def _make_pools(seed: int, users: int) -> _Pools:
    """Call Faker a few thousand times at most, whatever the fleet size."""
    fake = Faker("en_US")
    fake.seed_instance(seed)
    names: dict[str, list[str]] = {}
    for i, (code, locale) in enumerate(sorted(_LOCALES.items())):
        local = Faker(locale)
        local.seed_instance(seed + 1 + i)
        names[code] = [local.name() for _ in range(40)]
    return _Pools(
        names=names,
        handles=sorted({fake.user_name() for _ in range(min(users, 800))}),
        domains=sorted({fake.free_email_domain() for _ in range(30)}),
        captions=[fake.sentence(nb_words=8) for _ in range(300)],
        hashtags=["#" + w for w in sorted({fake.word() for _ in range(150)})],
        comments=[fake.sentence(nb_words=10) for _ in range(400)],
        messages=[fake.paragraph(nb_sentences=2) for _ in range(200)],
        ips=[fake.ipv4_public() for _ in range(600)] + [fake.ipv6() for _ in range(200)],
        agents=[fake.user_agent() for _ in range(60)],
    )


def _countries(rng: random.Random, users: int) -> list[str | None]:
    """Exact per-country counts (largest remainder), a few unknowns, shuffled."""
    unknown = max(3, round(users * 0.003))
    known = users - unknown
    total = sum(share for _, share in _COUNTRY_SHARES)
    quotas = [(code, known * share / total) for code, share in _COUNTRY_SHARES]
    counts = {code: int(q) for code, q in quotas}
    rest = known - sum(counts.values())
    for code, _ in sorted(quotas, key=lambda cq: cq[1] - int(cq[1]), reverse=True)[:rest]:
        counts[code] += 1
    codes: list[str | None] = [c for c, n in counts.items() for _ in range(n)]
    codes += [UNKNOWN_COUNTRIES[i % len(UNKNOWN_COUNTRIES)] for i in range(unknown)]
    rng.shuffle(codes)
    return codes


def _spell(rng: random.Random, code: str) -> str:
    forms = _SPELLINGS.get(code) or ((code, 85), (_NAMES[code], 15))
    return rng.choices([f for f, _ in forms], weights=[w for _, w in forms])[0]


def _place(rng: random.Random, code: str | None) -> str:
    """The store holding a user's row: where a grown app happens to have put it."""
    r = rng.random()
    if code in ("US", "CA"):
        return HOMES[code] if r < 0.05 else ("us-va" if r < 0.40 else "sg-main")
    if code in ("AU", "NZ"):
        return HOMES[code] if r < 0.10 else "sg-main"
    if code is None or code not in _LOCALES:  # unknown country
        return "us-va" if r < 0.20 else "sg-main"
    return "us-va" if r < 0.25 else "sg-main"


def _at(rng: random.Random, after: int) -> dt.datetime:
    """A moment between *after* (seconds past the window start) and the window end."""
    return _START + dt.timedelta(seconds=rng.randint(after, _SPAN))


def _generate(rng: random.Random, pools: _Pools, n_users: int, media: bool) -> _Fleet:
    fleet = _Fleet()
    _sounds(fleet, rng, pools)
    # Ids of accounts deleted long ago: holes in the users sequence, below its end.
    deleted = sorted(rng.sample(range(2, n_users), _DELETED_ACCOUNTS))
    users = _users(fleet, rng, pools, n_users, set(deleted), media)
    video_times = _videos(fleet, rng, pools, users, media)
    _interactions(fleet, rng, pools, users, deleted, video_times)
    return fleet


def _sounds(fleet: _Fleet, rng: random.Random, pools: _Pools) -> None:
    # The same catalogue in every store, as a reference dataset is.
    artists = pools.names["US"] + pools.names["GB"] + pools.names["KR"]
    for _ in range(_SOUNDS):
        row = {
            "id": fleet.new_id("sounds"),
            "title": " ".join(rng.sample(pools.hashtags, 2)).replace("#", "").title(),
            "artist": rng.choice(artists),
            "duration_ms": rng.randint(8_000, 240_000),
        }
        for store in STORES:
            fleet.add(store.name, "sounds", row)


def _users(
    fleet: _Fleet,
    rng: random.Random,
    pools: _Pools,
    n_users: int,
    deleted: set[int],
    media: bool,
) -> list[_User]:
    codes = _countries(rng, n_users)
    stores = [_place(rng, code) for code in codes]
    # Each jurisdiction starts with at least one user already home, however small the fleet.
    for juris, home in HOMES.items():
        mine = [i for i, c in enumerate(codes) if c == juris]
        if mine and all(stores[i] != home for i in mine):
            stores[mine[0]] = home
    seen_handles: set[str] = set()
    users: list[_User] = []
    for code, store in zip(codes, stores, strict=True):
        uid = fleet.new_id("users")
        while uid in deleted:
            uid = fleet.new_id("users")
        handle = rng.choice(pools.handles)
        while handle in seen_handles:  # handles are unique, as the app enforces
            handle = f"{rng.choice(pools.handles)}{rng.randint(1, 9999)}"
        seen_handles.add(handle)
        created = rng.randint(0, _SPAN - 86_400 * 30)
        user = _User(uid, store, created, rng.random() < 0.15)
        users.append(user)
        birth = dt.date(1955, 1, 1) + dt.timedelta(days=rng.randint(0, 52 * 365))
        known = code if code is not None and code in _LOCALES else None
        fleet.add(store, "users", {
            "id": uid,
            "handle": handle,
            "display_name": rng.choice(pools.names[known or "US"]),
            "email": f"{handle}@{rng.choice(pools.domains)}",
            "country": _spell(rng, known) if known else code,
            "created_at": _START + dt.timedelta(seconds=created),
            "birth_date": birth if rng.random() < 0.9 else None,
            "is_creator": user.creator,
        })  # fmt: skip
        if media:
            fleet.blobs[store].append(f"avatars/{uid}/avatar.jpg")
    return users


def _videos(
    fleet: _Fleet, rng: random.Random, pools: _Pools, users: list[_User], media: bool
) -> list[int]:
    """Videos stay with their author's row (a foreign key binds them); returns their times."""
    times = [0]  # index = video id
    for user in users:
        count = rng.randint(4, 12) if user.creator else rng.randint(0, 4)
        for _ in range(count):
            vid = fleet.new_id("videos")
            created = rng.randint(user.created, _SPAN)
            times.append(created)
            r = rng.random()
            key = f"videos/{user.id}/{vid}.mp4" if media else None
            fleet.add(user.store, "videos", {
                "id": vid,
                "user_id": user.id,
                "sound_id": rng.randint(1, _SOUNDS) if rng.random() < 0.7 else None,
                "caption": " ".join([rng.choice(pools.captions), *rng.sample(pools.hashtags, 2)]),
                "visibility": "public" if r < 0.3 else ("friends" if r < 0.65 else "private"),
                "duration_ms": rng.randint(5_000, 180_000),
                "created_at": _START + dt.timedelta(seconds=created),
                "media_key": key,
            })  # fmt: skip
            if key is not None:
                fleet.blobs[user.store].append(key)
    return times


def _interactions(
    fleet: _Fleet,
    rng: random.Random,
    pools: _Pools,
    users: list[_User],
    deleted: list[int],
    video_times: list[int],
) -> None:
    """Comments, likes, follows, messages and login events of every user."""
    n_videos = len(video_times) - 1
    user_ids = [u.id for u in users]
    pending_deleted = list(deleted)
    orphan_stores = ("sg-main", "sg-main", "sg-main", "us-va")
    per_deleted = _ORPHAN_COMMENTS // _DELETED_ACCOUNTS

    def comment(store: str, author: int, after: int) -> None:
        video = rng.randint(1, n_videos)
        fleet.add(store, "comments", {
            "id": fleet.new_id("comments"),
            "video_id": video,
            "author_id": author,
            "body": rng.choice(pools.comments),
            "created_at": _at(rng, max(after, video_times[video])),
        })  # fmt: skip

    def scatter(store: str) -> str:
        # FK-free records of a few users linger in the old sg-main replica.
        return "sg-main" if rng.random() < _SCATTER else store

    for user in users:
        # A deleted account's comments were written in its id's era; keep them in id order.
        while pending_deleted and pending_deleted[0] < user.id:
            gone = pending_deleted.pop(0)
            for k in range(per_deleted):
                comment(orphan_stores[k % len(orphan_stores)], gone, 0)
        uid, store, after = user.id, user.store, user.created
        for _ in range(rng.randint(2, 10)):
            comment(scatter(store), uid, after)
        liked = rng.sample(range(1, n_videos + 1), min(rng.randint(3, 17), n_videos))
        for video in sorted(liked):
            at = _at(rng, max(after, video_times[video]))
            fleet.add(store, "likes", {"user_id": uid, "video_id": video, "created_at": at})
        wanted = rng.randint(1, 7)
        others = rng.sample(user_ids, min(wanted + 1, len(user_ids)))  # +1: may draw oneself
        for followee in sorted([o for o in others if o != uid][:wanted]):
            fleet.add(store, "follows", {
                "follower_id": uid, "followee_id": followee, "created_at": _at(rng, after),
            })  # fmt: skip
        for _ in range(rng.randint(1, 7)):
            recipient = rng.choice(user_ids)
            while recipient == uid:
                recipient = rng.choice(user_ids)
            fleet.add(scatter(store), "messages", {
                "id": fleet.new_id("messages"),
                "sender_id": uid,
                "recipient_id": recipient,
                "body": rng.choice(pools.messages),
                "sent_at": _at(rng, after),
            })  # fmt: skip
        for _ in range(rng.randint(2, 14)):
            r = rng.random()
            fleet.add(store, "login_events", {
                "id": fleet.new_id("login_events"),
                "user_id": uid,
                "ip": rng.choice(pools.ips),
                "user_agent": rng.choice(pools.agents),
                "at": _at(rng, after),
                "kind": "login" if r < 0.6 else ("refresh" if r < 0.98 else "fraud_review"),
            })  # fmt: skip


def _write_store(path: Path, tables: dict[str, list[dict[str, Any]]]) -> None:
    """Create every table in one SQLite file and bulk-insert its rows in one transaction."""
    md = demo_metadata()
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        md.create_all(engine)
        with engine.begin() as conn:
            for name in _INSERT_ORDER:
                rows = tables[name]
                for start in range(0, len(rows), _CHUNK):
                    conn.execute(md.tables[name].insert(), rows[start : start + _CHUNK])
    finally:
        engine.dispose()


def _write_blobs(root: Path, keys: list[str], rng: random.Random) -> None:
    """Write each object as a few KB of random bytes under *root*."""
    root.mkdir(parents=True, exist_ok=True)
    made: set[Path] = set()
    for key in keys:
        target = root / key
        if target.parent not in made:
            target.parent.mkdir(parents=True, exist_ok=True)
            made.add(target.parent)
        target.write_bytes(rng.randbytes(rng.randint(2048, 8192)))
