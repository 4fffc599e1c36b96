"""Store identity: two names for one place, and a store inside another, are refused.

Real servers throughout (SQLite files, the local PostgreSQL and MariaDB, the
session's SeaweedFS); the comparison rule itself is tested pure, without I/O.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

import fleetkit
from domicile.connectors.identity import (
    MARKER_PREFIX,
    MARKER_TABLE,
    Identity,
    IdentityReport,
    Probe,
    Sighting,
    compare,
    marker_token,
    read_identities,
)
from domicile.connectors.objects import ObjectStore
from domicile.connectors.sql import SqlStore
from domicile.datamap import load_map
from domicile.errors import ConfigError, exit_code_for
from domicile.fleet import Fleet
from domicile.model import Store
from fixtures_s3 import WeedServer

MakeDb = Callable[[str], str]


def sql(name: str, url: str) -> SqlStore:
    masked = sa.make_url(url).render_as_string(hide_password=True)
    return SqlStore(Store(name, url, masked, {}, "sql"))


def check(*stores: SqlStore | ObjectStore) -> IdentityReport:
    return _read(stores, write=False)


def run(*stores: SqlStore | ObjectStore) -> IdentityReport:
    return _read(stores, write=True)


def _read(stores: tuple[SqlStore | ObjectStore, ...], write: bool) -> IdentityReport:
    sqls = [s for s in stores if isinstance(s, SqlStore)]
    objs = [s for s in stores if isinstance(s, ObjectStore)]
    try:
        return read_identities(sqls, objs, write_markers=write)
    finally:
        for s in sqls:
            s.dispose()


def pairs(report: IdentityReport) -> set[tuple[frozenset[str], str]]:
    return {(frozenset((c.first, c.second)), c.reason) for c in report.clashes}


def has_marker_table(url: str) -> bool:
    engine = sa.create_engine(url)
    try:
        return sa.inspect(engine).has_table(MARKER_TABLE)
    finally:
        engine.dispose()


def other_host(url: str, host: str) -> str:
    return sa.make_url(url).set(host=host).render_as_string(hide_password=False)


# -- the rule, pure -------------------------------------------------------------------


def probe(name: str, ident: str | None = None, **kw: object) -> Probe:
    kind = "sqlite" if ident else "mariadb"
    place = kw.pop("place", ident)
    return Probe(Identity(name, kind, ident, "test"), marker_token(name), place=place, **kw)  # type: ignore[arg-type]


def test_equal_identities_clash_distinct_do_not() -> None:
    clashes, warnings = compare([probe("a", "x:1"), probe("b", "x:1"), probe("c", "x:2")])
    assert [(c.first, c.second, c.reason) for c in clashes] == [("a", "b", "identity")]
    assert warnings == []


def test_a_fresh_nonce_read_through_another_name_clashes() -> None:
    a = probe("a", own="n1", fresh=True, seen=(Sighting(marker_token("a"), "n1"),))
    b = probe("b", own="n2", fresh=True, seen=(Sighting(marker_token("a"), "n1"),))
    (clash,), _ = compare([a, b])
    assert (clash.first, clash.second, clash.reason) == ("a", "b", "marker")


def test_a_stale_nonce_is_no_clash() -> None:
    # b still holds the marker a wrote in an earlier run, before a was re-pointed
    a = probe("a", own="new", fresh=True, seen=(Sighting(marker_token("a"), "new"),))
    b = probe("b", own="n2", fresh=True, seen=(Sighting(marker_token("a"), "old"),))
    assert compare([a, b])[0] == []


def test_found_marker_against_distinct_engine_identities_is_only_a_warning() -> None:
    token = marker_token("a")
    a = probe("a", "sqlite:1:1", own="n1", seen=(Sighting(token, "n1"),))
    b = probe("b", "sqlite:1:2", own=None, seen=(Sighting(token, "n1"),))
    clashes, warnings = compare([a, b])
    assert clashes == [] and "a copied database?" in warnings[0]


def test_nesting_by_ancestors_and_by_nested_marker() -> None:
    outer = probe("outer", "folder:1:1")
    inner = probe("inner", "folder:1:2", ancestors=frozenset({"folder:1:1"}))
    (clash,), _ = compare([inner, outer])
    assert (clash.first, clash.second, clash.reason) == ("outer", "inner", "contains")
    sg = probe("sg", own="n", fresh=True, seen=(Sighting(marker_token("sg"), "n"),))
    media = probe("media", own="m", fresh=True, seen=(Sighting(marker_token("sg"), "n", "sg"),))
    (clash,), _ = compare([sg, media])
    assert (clash.first, clash.second, clash.reason) == ("media", "sg", "contains")


def test_missing_marker_warns_only_where_it_is_the_only_evidence() -> None:
    _, warnings = compare([probe("maria"), probe("lite", "sqlite:1:1")])
    assert len(warnings) == 1 and "maria" in warnings[0] and "run will write one" in warnings[0]


# -- SQLite ---------------------------------------------------------------------------


def _sqlite_file(path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{path}")
    engine.connect().close()
    engine.dispose()


def test_sqlite_spellings_of_one_file_clash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _sqlite_file(tmp_path / "sg.db")
    (tmp_path / "link.db").symlink_to(tmp_path / "sg.db")
    monkeypatch.chdir(tmp_path)
    stores = [
        sql("dot", "sqlite:///./sg.db"),
        sql("bare", "sqlite:///sg.db"),
        sql("absolute", f"sqlite:///{tmp_path}/sg.db"),
        sql("link", f"sqlite:///{tmp_path}/link.db"),
    ]
    report = run(*stores)
    # one clash per pair with the first: the engine identity (the markers agree)
    names = {frozenset(c) for c, _ in pairs(report)}
    assert names >= {frozenset(("dot", other)) for other in ("bare", "absolute", "link")}
    assert all(reason == "identity" for _, reason in pairs(report))
    with pytest.raises(ConfigError) as raised:
        report.raise_for_clashes()
    assert exit_code_for(raised.value) == 2
    text = str(raised.value)
    assert "dot (sqlite:///./sg.db)" in text and "bare (sqlite:///sg.db)" in text
    assert "two names for one database" in text and "nothing was changed" in text


def test_distinct_sqlite_files_do_not_clash_and_a_copy_is_no_false_clash(tmp_path: Path) -> None:
    for name in ("sg", "us"):
        _sqlite_file(tmp_path / f"{name}.db")
    report = run(sql("sg", f"sqlite:///{tmp_path}/sg.db"), sql("us", f"sqlite:///{tmp_path}/us.db"))
    assert report.clashes == () and report.warnings == ()
    report.raise_for_clashes()
    assert has_marker_table(f"sqlite:///{tmp_path}/sg.db")
    # a copy of sg.db carries sg's marker along; the engines say two files
    shutil.copy(tmp_path / "sg.db", tmp_path / "sg-copy.db")
    stores = (
        sql("sg", f"sqlite:///{tmp_path}/sg.db"),
        sql("copy", f"sqlite:///{tmp_path}/sg-copy.db"),
    )
    checked = check(*stores)
    assert checked.clashes == () and any("a copied database?" in w for w in checked.warnings)
    assert run(*stores).clashes == ()  # fresh nonces settle it


def test_in_memory_sqlite_never_clashes() -> None:
    report = run(sql("m1", "sqlite://"), sql("m2", "sqlite:///:memory:"))
    assert report.clashes == () and report.warnings == ()
    assert {i.kind for i in report.identities} == {"memory"}


def test_a_data_map_with_a_hard_link_to_one_file(tmp_path: Path) -> None:
    urls = {s: f"sqlite:///{tmp_path / (s + '.db')}" for s in ("sg", "us", "ca")}
    fleetkit.build(tmp_path, urls)
    data = fleetkit.data_map(urls)
    # a hard link: a path of its own (the map's URL check cannot see it), one inode
    os.link(tmp_path / "sg.db", tmp_path / "sg-alias.db")
    data["stores"]["sg-alias"] = {"url": "sqlite:///./sg-alias.db", "labels": {"country": "SG"}}
    (tmp_path / "domicile.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    with Fleet(load_map(tmp_path / "domicile.yaml")) as fleet:
        report = read_identities(fleet.sql.values(), fleet.objects.values(), write_markers=False)
    assert pairs(report) == {(frozenset(("sg", "sg-alias")), "identity")}
    assert not has_marker_table(urls["sg"])  # check mode wrote nothing


# -- PostgreSQL -----------------------------------------------------------------------


@pytest.mark.postgres
def test_postgres_one_database_through_two_host_names(make_db: MakeDb) -> None:
    url = make_db("postgresql")
    with_password = sa.make_url(other_host(url, "localhost")).set(password="s3cret-pw")
    a = sql("pg-ip", url)
    b = sql("pg-name", with_password.render_as_string(hide_password=False))
    report = check(a, b)
    assert pairs(report) == {(frozenset(("pg-ip", "pg-name")), "identity")}
    assert not has_marker_table(url)  # check mode wrote nothing
    with pytest.raises(ConfigError) as raised:
        report.raise_for_clashes()
    assert "s3cret-pw" not in str(raised.value) and "***" in str(raised.value)
    assert pairs(run(sql("pg-ip", url), sql("pg-name", other_host(url, "localhost"))))


@pytest.mark.postgres
def test_postgres_two_databases_on_one_server(make_db: MakeDb) -> None:
    first, second = make_db("postgresql"), make_db("postgresql")
    report = run(sql("one", first), sql("two", second))
    assert report.clashes == () and report.warnings == ()
    assert report.identities[0].identity != report.identities[1].identity
    assert has_marker_table(first)  # the second line of defence


# -- MariaDB --------------------------------------------------------------------------


@pytest.mark.mysql
def test_mariadb_one_schema_through_two_host_names(make_db: MakeDb) -> None:
    url = make_db("mysql")
    a, b = sql("maria-ip", url), sql("maria-name", other_host(url, "localhost"))
    checked = check(a, b)
    assert checked.clashes == ()  # nothing to tell them apart yet...
    assert sum("run will write one" in w for w in checked.warnings) == 2
    assert not has_marker_table(url)  # ...and check wrote nothing
    report = run(sql("maria-ip", url), sql("maria-name", other_host(url, "localhost")))
    if {i.kind for i in report.identities} == {"mysql"}:
        assert pairs(report) == {(frozenset(("maria-ip", "maria-name")), "identity")}
    else:
        assert pairs(report) == {(frozenset(("maria-ip", "maria-name")), "marker")}
    # once written, check sees the markers too
    assert pairs(check(sql("maria-ip", url), sql("maria-name", other_host(url, "localhost"))))


@pytest.mark.mysql
def test_mariadb_two_schemas_on_one_server(make_db: MakeDb) -> None:
    first, second = make_db("mysql"), make_db("mysql")
    report = run(sql("one", first), sql("two", second))
    assert report.clashes == () and report.warnings == ()


# -- local folders --------------------------------------------------------------------


def test_two_spellings_of_one_folder_clash(tmp_path: Path) -> None:
    (tmp_path / "media").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "media")
    stores = (
        ObjectStore("media", f"file://{tmp_path}/media"),
        ObjectStore("dotted", f"file://{tmp_path}/other/../media"),
        ObjectStore("alias", f"file://{tmp_path}/alias"),
    )
    (tmp_path / "other").mkdir()
    report = check(*stores)
    assert {c for c, _ in pairs(report)} == {
        frozenset(p) for p in (("media", "dotted"), ("media", "alias"), ("dotted", "alias"))
    }
    assert list(stores[0].list(MARKER_PREFIX)) == []  # check mode wrote nothing
    assert run(*stores).clashes
    assert next(i.key for i in stores[0].list(MARKER_PREFIX)).startswith(MARKER_PREFIX)
    assert list(stores[0].list()) == []  # markers are not listed as user objects


def test_nested_folders_are_containment(tmp_path: Path) -> None:
    (tmp_path / "media" / "sg").mkdir(parents=True)
    (tmp_path / "sg-link").symlink_to(tmp_path / "media" / "sg")
    outer = ObjectStore("media", f"file://{tmp_path}/media")
    report = check(outer, ObjectStore("sg", f"file://{tmp_path}/sg-link"))
    (clash,) = report.clashes
    assert (clash.first, clash.second, clash.reason) == ("media", "sg", "contains")
    with pytest.raises(ConfigError, match="contains store sg") as raised:
        report.raise_for_clashes()
    assert "own folder or prefix" in str(raised.value)


def test_side_by_side_folders_do_not_clash(tmp_path: Path) -> None:
    for name in ("us", "sg"):
        (tmp_path / name).mkdir()
    stores = [ObjectStore(n, f"file://{tmp_path}/{n}") for n in ("us", "sg")]
    assert run(*stores).clashes == () and check(*stores).warnings == ()


def test_check_warns_about_a_missing_folder_and_creates_nothing(tmp_path: Path) -> None:
    report = check(ObjectStore("gone", f"file://{tmp_path}/gone"))
    assert report.clashes == () and "gone: identity not read" in report.warnings[0]
    assert not os.path.exists(tmp_path / "gone")


# -- S3 -------------------------------------------------------------------------------


def _s3(server: WeedServer, name: str, url: str, host: str = "127.0.0.1") -> ObjectStore:
    endpoint = server.endpoint_url.replace("127.0.0.1", host)
    return ObjectStore(name, url, {**server.options, "endpoint_url": endpoint})


@pytest.mark.s3
def test_one_bucket_through_two_host_names_clashes_by_marker(s3_server: WeedServer) -> None:
    bucket = s3_server.make_bucket()
    stores = (
        _s3(s3_server, "by-ip", f"s3://{bucket}/media"),
        _s3(s3_server, "by-name", f"s3://{bucket}/media", host="localhost"),
    )
    checked = check(*stores)
    assert checked.clashes == () and sum("run will write one" in w for w in checked.warnings) == 2
    assert s3_server.s3fs().find(bucket) == []  # check mode wrote nothing
    report = run(*stores)
    assert pairs(report) == {(frozenset(("by-ip", "by-name")), "marker")}
    assert all(MARKER_PREFIX in key for key in s3_server.s3fs().find(bucket))
    assert pairs(check(*stores))  # the markers now exist: check sees the clash too


@pytest.mark.s3
def test_two_buckets_do_not_clash(s3_server: WeedServer) -> None:
    stores = [_s3(s3_server, n, f"s3://{s3_server.make_bucket()}") for n in ("us", "sg")]
    report = run(*stores)
    assert report.clashes == () and report.warnings == ()


@pytest.mark.s3
def test_nested_prefixes_are_containment_by_name_and_across_host_names(
    s3_server: WeedServer,
) -> None:
    bucket = s3_server.make_bucket()
    outer = _s3(s3_server, "media", f"s3://{bucket}/media")
    report = check(outer, _s3(s3_server, "sg", f"s3://{bucket}/media/sg"))
    assert pairs(report) == {(frozenset(("media", "sg")), "contains")}
    # through another host name the names do not nest: the inner marker shows it
    inner = _s3(s3_server, "sg", f"s3://{bucket}/media/sg", host="localhost")
    report = run(outer, inner)
    (clash,) = report.clashes
    assert (clash.first, clash.second, clash.reason) == ("media", "sg", "contains")
    with pytest.raises(ConfigError, match="contains store sg"):
        report.raise_for_clashes()
    side = _s3(s3_server, "us", f"s3://{bucket}/media-us", host="localhost")
    assert run(outer, side).clashes == ()
