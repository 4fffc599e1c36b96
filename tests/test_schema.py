"""Creating a dataset's table at a home of another engine from the source's definition.

A small schema (composite text/varchar primary key, index, unique
constraint, composite foreign key, JSON, boolean, timestamps, defaults) is
created at a source engine, reflected there, copied to every other engine,
and then checked at the target by reflection and by use: the same rows fit
and digest alike, the foreign key holds, keys and indexes exist.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite

from domicile.connectors.schema import (
    copy_table_definition,
    copy_tables,
    missing_columns,
    portable_default,
    refine_reflected,
    target_type,
    timestamp_type,
)
from domicile.connectors.sql import SqlStore
from domicile.digest import kind_of, row_digest, storage_value
from domicile.errors import PermanentConnectorError
from domicile.model import Store

PAIRS = [
    ("sqlite", "postgresql"),
    ("sqlite", "mysql"),
    ("postgresql", "mysql"),
    ("postgresql", "sqlite"),
    ("mysql", "sqlite"),
    ("mysql", "postgresql"),
]


def portable_schema() -> sa.MetaData:
    md = sa.MetaData()
    sa.Table(
        "accounts",
        md,
        sa.Column("region", sa.String(8), primary_key=True),
        sa.Column("handle", sa.Text, primary_key=True),  # a TEXT key: VARCHAR on MySQL
        sa.Column("email", sa.String(200), nullable=False),
        sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("status", sa.String(20), server_default="new"),
        sa.Column("score", sa.Integer, server_default=sa.text("0")),
        sa.Column("tag", sa.String(20), server_default=sa.text("'x'")),
        sa.Column("created", timestamp_type(timezone=True)),
        sa.Column("profile", sa.JSON),
        sa.Column("uid", sa.Uuid),
        sa.UniqueConstraint("email", name="uq_accounts_email"),
        sa.Index("ix_accounts_created", "created"),
    )
    sa.Table(
        "posts",
        md,
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("region", sa.String(8), nullable=False),
        sa.Column("handle", sa.Text, nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("body", sa.Text),
        sa.Column("price", sa.Numeric(10, 2)),
        sa.Column("rating", sa.Double),
        sa.Column("posted", timestamp_type()),
        sa.ForeignKeyConstraint(
            ["region", "handle"], ["accounts.region", "accounts.handle"], name="fk_posts_account"
        ),
        sa.Index("ix_posts_title", "title"),
    )
    return md


ACCOUNTS = [
    {
        "region": "eu",
        "handle": "Zoë",
        "email": "zoe@example.org",
        "active": True,
        "status": "new",
        "score": 3,
        "tag": "x",
        "created": dt.datetime(
            2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2))
        ),
        "profile": {"b": [1, 2.5], "a": {"ü": None}},
        "uid": uuid.UUID("6f1c3b5e-8a2d-4c1e-9b7f-0d2e4a6c8b1f"),
    },
    {
        "region": "eu",
        "handle": "zoë",  # differs by case only: a distinct key on every engine
        "email": "zoe2@example.org",
        "active": False,
        "status": None,
        "score": None,
        "tag": None,
        "created": None,
        "profile": None,
        "uid": None,
    },
]
POSTS = [
    {
        "id": 2**62,
        "region": "eu",
        "handle": "Zoë",
        "title": "Hello 🌍",
        "body": "x" * 70_000,  # beyond MySQL's 64 KiB TEXT
        "price": Decimal("12.50"),
        "rating": 0.1,
        "posted": dt.datetime(1999, 12, 31, 23, 59, 59, 999999),
    },
    {
        "id": 1,
        "region": "eu",
        "handle": "zoë",
        "title": "",
        "body": None,
        "price": None,
        "rating": -1e300,
        "posted": None,
    },
]


def _store(url: str, name: str) -> SqlStore:
    return SqlStore(Store(name=name, url=url, display_url=url, labels={}, kind="sql"))


def _write(store: SqlStore, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    with store.begin("writing test rows") as conn:
        conn.execute(
            sa.insert(table),
            [{k: storage_value(v, table.c[k].type) for k, v in row.items()} for row in rows],
        )


def _digests(store: SqlStore, table: sa.Table) -> dict[tuple[Any, ...], bytes]:
    key = list(table.primary_key.columns)
    with store.connect("reading test rows") as conn:
        rows = conn.execute(sa.select(table)).mappings().all()
    return {tuple(r[c.name] for c in key): row_digest(r, list(table.columns)) for r in rows}


def _source(make_db: Callable[[str], str], backend: str) -> tuple[SqlStore, list[sa.Table]]:
    """The portable schema created at *backend* (by copy_tables), reflected there."""
    store = _store(make_db(backend), f"src-{backend}")
    copy_tables(list(portable_schema().sorted_tables), store.engine)
    # refined as SqlStore.table should: MariaDB's JSON reflects as LONGTEXT
    return store, [refine_reflected(store.table(n), store.engine) for n in ("accounts", "posts")]


@pytest.mark.parametrize(("source", "target"), PAIRS, ids=[f"{s}-to-{t}" for s, t in PAIRS])
def test_copy_tables_across_engines(
    make_db: Callable[[str], str], source: str, target: str
) -> None:
    src, (accounts, posts) = _source(make_db, source)
    dst = _store(make_db(target), f"dst-{target}")

    created = copy_tables([posts, accounts], dst.engine)  # child first: order is worked out
    assert [t.name for t in created] == ["accounts", "posts"]
    home_accounts, home_posts = created
    assert missing_columns(accounts, home_accounts) == []
    assert missing_columns(posts, home_posts) == []

    # the same rows fit, and digest alike at both engines
    for store, (a, p) in ((src, (accounts, posts)), (dst, (home_accounts, home_posts))):
        _write(store, a, ACCOUNTS)
        _write(store, p, POSTS)
    assert _digests(src, accounts) == _digests(dst, home_accounts)
    assert _digests(src, posts) == _digests(dst, home_posts)

    # the foreign key holds
    orphan = {**POSTS[1], "id": 99, "handle": "nobody"}
    with pytest.raises(sa.exc.IntegrityError), dst.engine.begin() as conn:
        conn.execute(sa.insert(home_posts), orphan)
    # ... and so do the primary key and the unique constraint
    with pytest.raises(sa.exc.IntegrityError), dst.engine.begin() as conn:
        conn.execute(sa.insert(home_posts), {**POSTS[1], "title": "again"})
    with pytest.raises(sa.exc.IntegrityError), dst.engine.begin() as conn:
        conn.execute(
            sa.insert(home_accounts), {"region": "us", "handle": "z", "email": "zoe@example.org"}
        )

    inspector = sa.inspect(dst.engine)
    assert inspector.get_pk_constraint("accounts")["constrained_columns"] == ["region", "handle"]
    assert inspector.get_pk_constraint("posts")["constrained_columns"] == ["id"]
    indexes = {tuple(i["column_names"]): i for i in inspector.get_indexes("accounts")}
    assert ("created",) in indexes
    assert ("title",) in {tuple(i["column_names"]) for i in inspector.get_indexes("posts")}
    uniques = {tuple(u["column_names"]) for u in inspector.get_unique_constraints("accounts")}
    assert ("email",) in uniques or indexes[("email",)]["unique"]
    (fk,) = inspector.get_foreign_keys("posts")
    assert fk["referred_table"] == "accounts"
    assert fk["constrained_columns"] == ["region", "handle"]
    assert fk["referred_columns"] == ["region", "handle"]

    columns = {c["name"]: c for c in inspector.get_columns("accounts")}
    assert "new" in str(columns["status"]["default"])  # a literal default is kept
    assert "0" in str(columns["score"]["default"])
    assert columns["active"]["default"] is not None
    # a literal is kept (a function default is refused: see test_schema_fidelity.py)
    assert "x" in str(columns["tag"]["default"])
    assert columns["email"]["nullable"] is False
    assert columns["status"]["nullable"] is True
    post_id = {c["name"]: c for c in inspector.get_columns("posts")}["id"]
    assert post_id["default"] is None and not post_id.get("identity")  # values are copied
    assert kind_of(home_accounts.c.profile.type) == "json"
    assert kind_of(home_accounts.c.active.type) == "bool"
    if target == "mysql":
        assert isinstance(home_accounts.c.handle.type, mysql.VARCHAR)  # TEXT cannot be a key
        assert home_accounts.c.handle.type.length == 255
        assert isinstance(home_posts.c.posted.type, mysql.DATETIME)
        assert home_posts.c.posted.type.fsp == 6
        assert post_id["autoincrement"] is False


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mysql"])
def test_existing_table_is_left_untouched(make_db: Callable[[str], str], backend: str) -> None:
    _src, (accounts, _posts) = _source(make_db, "sqlite")
    dst = _store(make_db(backend), f"dst-{backend}")
    md = sa.MetaData()
    existing = sa.Table(
        "accounts",
        md,
        sa.Column("region", sa.String(8), primary_key=True),
        sa.Column("handle", sa.String(100), primary_key=True),
        sa.Column("email", sa.String(50)),
    )
    md.create_all(dst.engine)
    with dst.engine.begin() as conn:
        conn.execute(sa.insert(existing), {"region": "eu", "handle": "a", "email": "a@b"})

    table = copy_table_definition(accounts, dst.engine)

    assert [c.name for c in table.columns] == ["region", "handle", "email"]
    assert table.c.handle.type.length == 100
    with dst.engine.connect() as conn:
        assert conn.execute(sa.select(table.c.email)).scalars().all() == ["a@b"]
    assert missing_columns(accounts, table) == [
        "active",
        "status",
        "score",
        "tag",
        "created",
        "profile",
        "uid",
    ]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mysql"])
def test_missing_columns_finds_a_dropped_column(
    make_db: Callable[[str], str], backend: str
) -> None:
    _src, (accounts, _posts) = _source(make_db, backend)
    dst = _store(make_db(backend), f"dst-{backend}")
    home = copy_table_definition(accounts, dst.engine)
    assert missing_columns(accounts, home) == []
    with dst.engine.begin() as conn:
        conn.execute(sa.text(f"ALTER TABLE accounts DROP COLUMN {'status'}"))
    dst.forget("accounts")
    assert missing_columns(accounts, dst.table("accounts")) == ["status"]
    assert missing_columns(dst.table("accounts"), accounts) == []


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mysql"])
def test_foreign_keys_only_to_tables_at_the_target(
    make_db: Callable[[str], str], backend: str
) -> None:
    _src, (accounts, posts) = _source(make_db, "postgresql")
    dst = _store(make_db(backend), f"dst-{backend}")
    home = copy_table_definition(posts, dst.engine)  # accounts is not at the target
    assert sa.inspect(dst.engine).get_foreign_keys("posts") == []
    assert sorted(sa.inspect(dst.engine).get_table_names()) == ["posts"]
    # calling again changes nothing
    again = copy_table_definition(posts, dst.engine)
    assert [c.name for c in again.columns] == [c.name for c in home.columns]
    # without foreign keys on request
    plain = _store(make_db(backend), f"plain-{backend}")
    copy_tables([accounts, posts], plain.engine, include_foreign_keys=False)
    assert sa.inspect(plain.engine).get_foreign_keys("posts") == []


def test_foreign_key_to_an_existing_parent_without_the_column_is_refused(
    make_db: Callable[[str], str],
) -> None:
    _src, (_accounts, posts) = _source(make_db, "sqlite")
    dst = _store(make_db("sqlite"), "dst")
    md = sa.MetaData()
    sa.Table("accounts", md, sa.Column("region", sa.String(8), primary_key=True))
    md.create_all(dst.engine)
    with pytest.raises(PermanentConnectorError, match="no such column"):
        copy_table_definition(posts, dst.engine)
    assert not sa.inspect(dst.engine).has_table("posts")


# -- the translation rules, without a server -------------------------------------


def _col(type_: sa.types.TypeEngine[Any], **kw: Any) -> sa.Column[Any]:
    table = sa.Table("t", sa.MetaData(), sa.Column("c", type_, **kw))
    return table.c.c


def _compiled(
    type_: sa.types.TypeEngine[Any], dialect: sa.engine.Dialect, keyed: bool = False
) -> str:
    return str(target_type(_col(type_), dialect, keyed).compile(dialect=dialect))


def test_type_translation_rules() -> None:
    my, pg, lite = mysql.dialect(), postgresql.dialect(), sqlite.dialect()
    assert _compiled(sa.Text(), my, keyed=True) == "VARCHAR(255) COLLATE utf8mb4_bin"
    assert _compiled(sa.String(2000), my, keyed=True) == "VARCHAR(768) COLLATE utf8mb4_bin"
    assert _compiled(sa.String(40), my, keyed=True) == "VARCHAR(40) COLLATE utf8mb4_bin"
    assert _compiled(sa.Text(), my) == "LONGTEXT COLLATE utf8mb4_bin"
    assert _compiled(sa.String(1000), my) == "LONGTEXT COLLATE utf8mb4_bin"
    assert _compiled(postgresql.BYTEA(), my) == "LONGBLOB"
    assert _compiled(postgresql.BYTEA(), my, keyed=True) == "VARBINARY(255)"
    assert _compiled(postgresql.TIMESTAMP(timezone=True), my) == "DATETIME(6)"
    assert _compiled(postgresql.TIME(), my) == "TIME(6)"
    assert _compiled(postgresql.JSONB(), my) == "JSON"
    assert _compiled(postgresql.JSONB(), pg) == "JSONB"  # same family: kept
    assert _compiled(postgresql.NUMERIC(), my) == "DECIMAL(65, 30)"
    assert _compiled(postgresql.ARRAY(sa.Integer), lite) == "JSON"
    assert _compiled(postgresql.ENUM("a", "bcd", name="e"), lite) == "VARCHAR(3)"
    assert _compiled(mysql.TINYINT(display_width=1), pg) == "BOOLEAN"
    assert _compiled(mysql.TINYINT(display_width=4), pg) == "SMALLINT"
    assert _compiled(mysql.DOUBLE(asdecimal=True), pg) == "DOUBLE PRECISION"
    assert _compiled(mysql.FLOAT(), lite) == "DOUBLE"
    assert _compiled(mysql.BIGINT(unsigned=True), pg) == "NUMERIC(20, 0)"
    assert _compiled(mysql.INTEGER(unsigned=True), pg) == "BIGINT"
    assert _compiled(mysql.LONGTEXT(), pg) == "TEXT"
    assert _compiled(mysql.TIMESTAMP(), pg) == "TIMESTAMP WITHOUT TIME ZONE"
    assert _compiled(sa.types.NullType(), pg) == "TEXT"
    for untranslatable in (postgresql.INTERVAL(), mysql.SET("a", "b")):
        with pytest.raises(PermanentConnectorError):
            target_type(_col(untranslatable), lite)


@pytest.mark.parametrize(
    ("text", "type_", "kept"),
    [
        ("'new'::character varying", sa.String(10), "'new'"),
        ("'it''s'", sa.String(10), "'it''s'"),
        ("0", sa.Integer(), "0"),
        ("(0)::numeric", sa.Numeric(), "0"),
        ("-1.5", sa.Numeric(), "-1.5"),
        ("now()", sa.DateTime(), None),
        ("CURRENT_TIMESTAMP", sa.DateTime(), None),
        ("nextval('posts_id_seq'::regclass)", sa.Integer(), None),
        ("'a'::text || 'b'::text", sa.Text(), None),
        ("(lower('X'))", sa.String(10), None),
    ],
)
def test_portable_defaults(text: str, type_: sa.types.TypeEngine[Any], kept: str | None) -> None:
    column = _col(type_, server_default=sa.text(text))
    default = portable_default(column, type_, "postgresql")
    assert (None if default is None else default.text) == kept


def test_boolean_defaults() -> None:
    for text, expected in [("true", "true"), ("1", "true"), ("'0'", "false"), ("b'1'", None)]:
        column = _col(sa.Boolean(), server_default=sa.text(text))
        default = portable_default(column, sa.Boolean(), "postgresql")
        assert (None if default is None else str(default)) == expected
