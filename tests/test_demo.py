"""The demo fleet: real properties of what build_demo writes, read back with SQLAlchemy."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pycountry
import pytest
import sqlalchemy as sa
import yaml

from domicile.demo import HOMES, MARKER, STORES, TABLES, UNKNOWN_COUNTRIES, build_demo
from domicile.errors import ConfigError

USERS = 300
# The one alias in the demo that pycountry's lookup does not know by itself.
ALIASES = {"UK": "GB"}
# Primary key of every table, to compare rows across stores and builds.
KEYS = {
    "users": ("id",),
    "sounds": ("id",),
    "videos": ("id",),
    "comments": ("id",),
    "likes": ("user_id", "video_id"),
    "follows": ("follower_id", "followee_id"),
    "messages": ("id",),
    "login_events": ("id",),
}


def normalise(value: str | None) -> str | None:
    """ISO alpha-2 for a country spelling, None when nobody can map it."""
    if value is None or not value.strip():
        return None
    if value in ALIASES:
        return ALIASES[value]
    try:
        return str(pycountry.countries.lookup(value.strip()).alpha_2)
    except LookupError:
        return None


@contextmanager
def connect(root: Path, store: str) -> Iterator[sa.Connection]:
    engine = sa.create_engine(f"sqlite:///{root / 'fleet' / f'{store}.db'}")
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def read_fleet(root: Path) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Every row of every table of every store, ordered by primary key."""
    fleet: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for store in STORES:
        with connect(root, store.name) as conn:
            md = sa.MetaData()
            md.reflect(conn)
            fleet[store.name] = {
                name: [
                    dict(row._mapping)
                    for row in conn.execute(
                        sa.select(md.tables[name]).order_by(
                            *(md.tables[name].c[k] for k in KEYS[name])
                        )
                    )
                ]
                for name in md.tables
            }
    return fleet


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo(tmp_path_factory.mktemp("demo"), users=USERS, seed=7).parent


@pytest.fixture(scope="module")
def fleet(demo: Path) -> dict[str, dict[str, list[dict[str, Any]]]]:
    return read_fleet(demo)


def all_rows(fleet: dict[str, dict[str, list[dict[str, Any]]]], table: str) -> list[dict[str, Any]]:
    return [row for store in fleet.values() for row in store[table]]


def test_every_store_has_every_table(fleet: dict[str, dict[str, list[dict[str, Any]]]]) -> None:
    assert set(fleet) == {s.name for s in STORES}
    for tables in fleet.values():
        assert set(tables) == set(TABLES)


def test_row_counts_are_plausible(fleet: dict[str, dict[str, list[dict[str, Any]]]]) -> None:
    counts = {t: len(all_rows(fleet, t)) for t in TABLES}
    assert counts["users"] == USERS
    assert counts["sounds"] == 200 * len(STORES)  # the same catalogue everywhere
    per_user = {"videos": 3, "comments": 6, "likes": 10, "follows": 4, "messages": 4,
                "login_events": 8}  # fmt: skip
    for table, mean in per_user.items():
        assert 0.75 * mean * USERS <= counts[table] <= 1.25 * mean * USERS, (table, counts)
    # sg-main, where the app grew up, holds the majority of every subject table.
    for table in per_user:
        assert len(fleet["sg-main"][table]) > counts[table] / 2, table
    public = Counter(v["visibility"] for v in all_rows(fleet, "videos"))
    assert 0.2 < public["public"] / counts["videos"] < 0.4
    assert set(public) == {"public", "friends", "private"}
    kinds = Counter(e["kind"] for e in all_rows(fleet, "login_events"))
    assert set(kinds) == {"login", "refresh", "fraud_review"}


def test_sounds_are_identical_in_every_store(
    fleet: dict[str, dict[str, list[dict[str, Any]]]],
) -> None:
    reference = fleet["sg-main"]["sounds"]
    assert all(tables["sounds"] == reference for tables in fleet.values())


def test_ids_are_unique_across_stores(fleet: dict[str, dict[str, list[dict[str, Any]]]]) -> None:
    for table, key in KEYS.items():
        if table == "sounds":
            continue  # a reference dataset: replicated on purpose
        keys = [tuple(row[k] for k in key) for row in all_rows(fleet, table)]
        assert len(keys) == len(set(keys)), table


def test_most_us_users_live_abroad_and_a_few_are_home(
    fleet: dict[str, dict[str, list[dict[str, Any]]]],
) -> None:
    where: dict[str, Counter[str]] = {code: Counter() for code in HOMES}
    for store, tables in fleet.items():
        for user in tables["users"]:
            code = normalise(user["country"])
            if code in where:
                where[code][store] += 1
    us = where["US"]
    assert 0.40 * USERS < sum(us.values()) < 0.50 * USERS
    assert (sum(us.values()) - us["us-tx"]) / sum(us.values()) > 0.8
    assert us["sg-main"] > us["us-va"] > us["us-tx"]
    for code, home in HOMES.items():
        assert where[code][home] >= 1, code  # every jurisdiction starts partly home
        assert sum(where[code].values()) - where[code][home] > where[code][home], code


def test_countries_are_messy_and_some_unknown(
    fleet: dict[str, dict[str, list[dict[str, Any]]]],
) -> None:
    values = [u["country"] for u in all_rows(fleet, "users")]
    unknown = [v for v in values if normalise(v) is None]
    assert 1 <= len(unknown) <= 0.01 * USERS
    assert all(v in UNKNOWN_COUNTRIES for v in unknown)
    us_forms = {v for v in values if normalise(v) == "US"}
    assert "US" in us_forms and len(us_forms) >= 3  # "USA", "United States", "us", ...


def test_orphan_comments_have_authors_nowhere(
    fleet: dict[str, dict[str, list[dict[str, Any]]]],
) -> None:
    user_ids = {u["id"] for u in all_rows(fleet, "users")}
    orphans = [c for c in all_rows(fleet, "comments") if c["author_id"] not in user_ids]
    assert len(orphans) == 20
    gone = {c["author_id"] for c in orphans}
    assert gone and max(gone) < max(user_ids)  # holes in the id sequence, not ids from nowhere


def test_some_records_sit_away_from_their_user(
    fleet: dict[str, dict[str, list[dict[str, Any]]]],
) -> None:
    home_of = {u["id"]: store for store, t in fleet.items() for u in t["users"]}
    stray = [
        c
        for store, t in fleet.items()
        for c in t["comments"]
        if c["author_id"] in home_of and home_of[c["author_id"]] != store
    ]
    assert stray and all(home_of[c["author_id"]] != "sg-main" for c in stray)


def test_foreign_keys_hold(demo: Path) -> None:
    for store in STORES:
        with connect(demo, store.name) as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall() == [], store.name
            fks = {
                (t, fk["referred_table"])
                for t in TABLES
                for fk in sa.inspect(conn).get_foreign_keys(t)
            }
            assert {ref for _, ref in fks} == {"users", "sounds"}
            assert ("comments", "users") not in fks  # authors may be deleted accounts


def test_data_map_shape(demo: Path) -> None:
    text = (demo / "domicile.yaml").read_text(encoding="utf-8")
    assert text.startswith("#")
    data = yaml.safe_load(text)
    assert list(data) == ["version", "state", "stores", "subjects", "jurisdictions", "datasets",
                          "exceptions"]  # fmt: skip
    assert data["version"] == 1 and data["state"] == "sqlite:///.domicile/state.db"
    for store in STORES:
        entry = data["stores"][store.name]
        assert entry["url"] == f"sqlite:///fleet/{store.name}.db"
        assert (demo / "fleet" / f"{store.name}.db").is_file()
        assert entry["labels"] == store.labels
    assert data["jurisdictions"]["US"] == {
        "countries": ["US"],
        "allowed": {"country": "US", "operator": "custodian"},
        "home": ["us-tx"],
    }
    assert data["datasets"]["messages"]["multi_owner"] == "each"
    assert data["datasets"]["sounds"]["reference"] is True
    assert "avatars" not in data["datasets"]
    expiries = [e["expires"] for e in data["exceptions"]]
    assert expiries == [dt.date(2027, 6, 30), dt.date(2025, 12, 31)]


def test_same_seed_same_rows(tmp_path: Path, fleet: dict[str, Any]) -> None:
    build_demo(tmp_path / "again", users=USERS, seed=7)
    assert read_fleet(tmp_path / "again") == fleet
    build_demo(tmp_path / "other", users=USERS, seed=8)
    assert read_fleet(tmp_path / "other") != fleet


def test_rebuild_over_a_previous_demo(tmp_path: Path) -> None:
    build_demo(tmp_path, users=50, seed=1)
    assert (tmp_path / MARKER).is_file()
    (tmp_path / "fleet" / "stale.db").write_text("left over")
    (tmp_path / ".domicile").mkdir()
    (tmp_path / ".domicile" / "state.db").write_text("old journal")
    path = build_demo(tmp_path, users=60, seed=1)
    assert path == tmp_path / "domicile.yaml"
    assert not (tmp_path / "fleet" / "stale.db").exists()
    assert not (tmp_path / ".domicile").exists()
    assert sum(len(t["users"]) for t in read_fleet(tmp_path).values()) == 60


def test_refuses_a_folder_that_is_not_a_demo(tmp_path: Path) -> None:
    (tmp_path / "thesis.tex").write_text("precious")
    with pytest.raises(ConfigError) as info:
        build_demo(tmp_path, users=50)
    assert "empty folder" in (info.value.hint or "")
    assert (tmp_path / "thesis.tex").read_text() == "precious"
    assert not (tmp_path / "fleet").exists()


def test_progress_is_reported(tmp_path: Path) -> None:
    messages: list[str] = []
    build_demo(tmp_path, users=30, progress=messages.append)
    assert any("sg-main" in m for m in messages) and "domicile.yaml" in messages[-1]


def test_media_files_named_by_media_key_exist(tmp_path: Path) -> None:
    path = build_demo(tmp_path / "with-media", users=60, seed=3, media=True)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert data["datasets"]["videos"]["blobs"] == {"column": "media_key"}
    assert data["datasets"]["avatars"] == {"objects": "avatars/{owner}/*"}
    assert data["jurisdictions"]["US"]["home"] == ["us-tx", "media-us"]
    fleet = read_fleet(path.parent)
    for store in STORES:
        entry = data["stores"][store.media]
        assert entry["labels"] == store.labels
        root = Path(entry["url"].removeprefix("file://"))
        assert root == (path.parent / "media" / store.media).resolve()
        for video in fleet[store.name]["videos"]:
            key = video["media_key"]
            assert key == f"videos/{video['user_id']}/{video['id']}.mp4"
            assert 1024 < (root / key).stat().st_size < 16384
        for user in fleet[store.name]["users"]:
            assert (root / "avatars" / str(user["id"]) / "avatar.jpg").is_file()
    # The rows do not depend on whether media was built.
    plain = tmp_path / "plain"
    build_demo(plain, users=60, seed=3)
    for name, tables in read_fleet(plain).items():
        for video in fleet[name]["videos"]:
            video["media_key"] = None
        assert tables == fleet[name]
