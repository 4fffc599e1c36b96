"""Home schema fidelity: named types, generated keys, defaults, checks, cycles, refusals.

Sources are made with each engine's own SQL, reflected the way domicile does
(``SqlStore.table``), copied with :func:`copy_tables`, and the homes are then
checked with independent reads (information_schema, pg_catalog,
sqlite_master, PRAGMA) and by inserting rows, never with the functions under test.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite

from domicile.connectors.ddl_exprs import Untranslatable, translate_check, translate_default
from domicile.connectors.schema import (
    SchemaProblem,
    advance_sequences,
    copy_tables,
    ddl_preview,
    defer_foreign_keys,
    foreign_key_cycles,
    generated_max,
    restore_foreign_keys,
    schema_problems,
)
from domicile.connectors.sql import SqlStore
from domicile.errors import PermanentConnectorError
from domicile.model import Store

MakeDb = Callable[[str], str]


def _store(url: str, name: str = "s") -> SqlStore:
    return SqlStore(Store(name=name, url=url, display_url=url, labels={}, kind="sql"))


def _run(store: SqlStore, *statements: str) -> None:
    with store.engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)


def _one(store: SqlStore, sql: str, **params: Any) -> Any:
    with store.engine.connect() as conn:
        return conn.execute(sa.text(sql), params).scalar()


def _all(store: SqlStore, sql: str, **params: Any) -> list[Any]:
    with store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(sql), params).all()]


def _refused(store: SqlStore, sql: str) -> None:
    with pytest.raises(sa.exc.DBAPIError), store.engine.begin() as conn:
        conn.exec_driver_sql(sql)


def _tables(store: SqlStore) -> set[str]:
    return set(sa.inspect(store.engine).get_table_names())


PG_FILM = [
    "CREATE DOMAIN year AS integer CHECK (VALUE >= 1901 AND VALUE <= 2155)",
    "CREATE DOMAIN code AS varchar(8) NOT NULL DEFAULT 'none'"
    " CONSTRAINT code_lower CHECK (VALUE = lower(VALUE))"
    " CONSTRAINT code_len CHECK (length(VALUE) > 1)",
    "CREATE TYPE mpaa_rating AS ENUM ('G', 'PG', 'PG-13', 'R', 'NC-17')",
    "CREATE TABLE film (film_id serial PRIMARY KEY, title text NOT NULL,"
    " release_year year, code code, rating mpaa_rating DEFAULT 'G'::mpaa_rating,"
    " ratings mpaa_rating[], note text DEFAULT 'x'::text,"
    " last_update timestamp DEFAULT now() NOT NULL,"
    " price numeric(4,2) DEFAULT 4.99 CONSTRAINT film_price CHECK (price BETWEEN 0 AND 99))",
]


def _pg_film(make_db: MakeDb) -> tuple[SqlStore, sa.Table]:
    src = _store(make_db("postgresql"), "src")
    _run(src, *PG_FILM)
    return src, src.table("film")


# -- 1. PostgreSQL named types ---------------------------------------------------------


def test_pg_domains_enums_and_serial_are_recreated(make_db: MakeDb) -> None:
    _src, film = _pg_film(make_db)
    home = _store(make_db("postgresql"), "home")
    copy_tables([film], home.engine)

    labels = _all(
        home,
        "SELECT enumlabel FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid"
        " WHERE t.typname = 'mpaa_rating' ORDER BY enumsortorder",
    )
    assert [x for (x,) in labels] == ["G", "PG", "PG-13", "R", "NC-17"]
    (base, notnull, default) = _all(
        home,
        "SELECT format_type(typbasetype, typtypmod), typnotnull, typdefault FROM pg_type"
        " WHERE typname = 'code'",
    )[0]
    assert (base, notnull, default) == ("character varying(8)", True, "'none'::character varying")
    checks = _all(
        home,
        "SELECT c.conname FROM pg_constraint c JOIN pg_type t ON t.oid = c.contypid"
        " WHERE t.typname IN ('code', 'year') ORDER BY 1",
    )
    assert [x for (x,) in checks] == ["code_len", "code_lower", "year_check"]
    assert _one(home, "SELECT pg_get_serial_sequence('film', 'film_id')") == (
        "public.film_film_id_seq"
    )
    assert "film_price" in {
        x for (x,) in _all(home, "SELECT conname FROM pg_constraint WHERE contype = 'c'")
    }
    _run(
        home,
        "INSERT INTO film (title, release_year, code, rating, ratings)"
        " VALUES ('a', 2001, 'ab', 'PG-13', ARRAY['G', 'R']::mpaa_rating[])",
    )
    assert _all(home, "SELECT film_id, code, rating::text, note FROM film") == [
        (1, "ab", "PG-13", "x")
    ]
    for bad in (
        "INSERT INTO film (title, release_year, code) VALUES ('b', 1800, 'ab')",
        "INSERT INTO film (title, code) VALUES ('b', 'AB')",
        "INSERT INTO film (title, code, rating) VALUES ('b', 'ab', 'X')",
        "INSERT INTO film (title, code, price) VALUES ('b', 'ab', 100)",
    ):
        _refused(home, bad)


def test_pg_type_of_another_definition_at_home_is_refused(make_db: MakeDb) -> None:
    _src, film = _pg_film(make_db)
    home = _store(make_db("postgresql"), "home")
    _run(home, "CREATE TYPE mpaa_rating AS ENUM ('G', 'PG')")
    with pytest.raises(PermanentConnectorError, match=r"mpaa_rating.*labels"):
        copy_tables([film], home.engine)
    assert _tables(home) == set()
    assert _one(home, "SELECT count(*) FROM pg_type WHERE typname IN ('year', 'code')") == 0
    # the same definition is used as it is
    home2 = _store(make_db("postgresql"), "home2")
    _run(home2, "CREATE TYPE mpaa_rating AS ENUM ('G', 'PG', 'PG-13', 'R', 'NC-17')")
    copy_tables([film], home2.engine)
    assert _tables(home2) == {"film"}


@pytest.mark.parametrize("target", ["sqlite", "mysql"])
def test_pg_domain_and_enum_across_families(make_db: MakeDb, target: str) -> None:
    _src, film = _pg_film(make_db)
    home = _store(make_db(target), "home")
    (table,) = copy_tables([film], home.engine)
    assert isinstance(table.c.rating.type, sa.String) and table.c.rating.type.length == 5
    assert table.c.code.nullable is False  # the domain's NOT NULL
    _run(home, "INSERT INTO film (title, release_year, code, rating) VALUES ('a', 2001, 'ab', 'R')")
    for bad in (
        "INSERT INTO film (title, release_year, code) VALUES ('b', 1800, 'ab')",
        "INSERT INTO film (title, code) VALUES ('b', 'AB')",
        "INSERT INTO film (title, code) VALUES ('b', 'a')",
        "INSERT INTO film (title, code, rating) VALUES ('b', 'ab', 'X')",
        "INSERT INTO film (title, code, price) VALUES ('b', 'ab', 100)",
    ):
        _refused(home, bad)
    assert _all(home, "SELECT film_id, rating FROM film") == [(1, "R")]  # generated at home


def test_untranslatable_domain_check_is_refused_before_anything(make_db: MakeDb) -> None:
    src = _store(make_db("postgresql"), "src")
    _run(
        src,
        "CREATE DOMAIN slug AS text CHECK (VALUE ~ '^[a-z]+$')",
        "CREATE TABLE a (id int PRIMARY KEY)",
        "CREATE TABLE b (id int PRIMARY KEY, s slug)",
    )
    tables = [src.table("a"), src.table("b")]
    problems = schema_problems(tables, sqlite.dialect())
    assert [(p.table, p.column) for p in problems] == [("b", "s")]
    assert "VALUE ~ '^[a-z]+$'" in problems[0].message
    assert "create the table at the home store yourself" in problems[0].hint
    home = _store(make_db("sqlite"), "home")
    with pytest.raises(PermanentConnectorError, match=r"b\.s.*slug"):
        copy_tables(tables, home.engine)
    assert _tables(home) == set()
    assert schema_problems(tables, postgresql.dialect()) == []  # same family: copied


def test_mysql_enum_kept_and_set_refused(make_db: MakeDb) -> None:
    src = _store(make_db("mysql"), "src")
    _run(src, "CREATE TABLE t (id int PRIMARY KEY, r enum('a','bb') DEFAULT 'a', s set('x','y'))")
    table = src.table("t")
    home = _store(make_db("mysql"), "home")
    copy_tables([table], home.engine)
    assert "enum('a','bb')" in _one(
        home,
        "SELECT COLUMN_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()"
        " AND TABLE_NAME = 't' AND COLUMN_NAME = 'r'",
    )
    (problem,) = schema_problems([table], postgresql.dialect())
    assert problem.column == "s" and "SET" in problem.message


# -- 2. generated keys -------------------------------------------------------------------

SOURCES = {
    "sqlite": "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)",
    "postgresql": "CREATE TABLE t (id bigserial PRIMARY KEY, v text)",
    "mysql": "CREATE TABLE t (id bigint unsigned NOT NULL AUTO_INCREMENT PRIMARY KEY, v text)",
}
PAIRS = [(s, t) for s in SOURCES for t in SOURCES]


def _is_generated(home: SqlStore, backend: str) -> str:
    if backend == "postgresql":
        return str(
            _one(
                home,
                "SELECT attidentity::text || coalesce(pg_get_serial_sequence('t', 'id'), '')"
                " FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = 'id'",
            )
        )
    if backend == "mysql":
        return str(
            _one(
                home,
                "SELECT EXTRA FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()"
                " AND TABLE_NAME = 't' AND COLUMN_NAME = 'id'",
            )
        )
    return str(_one(home, "SELECT sql FROM sqlite_master WHERE name = 't'"))


@pytest.mark.parametrize(("source", "target"), PAIRS, ids=[f"{s}-to-{t}" for s, t in PAIRS])
def test_generated_key_is_generated_at_home(make_db: MakeDb, source: str, target: str) -> None:
    src = _store(make_db(source), "src")
    _run(src, SOURCES[source], "INSERT INTO t (v) VALUES ('a')", "INSERT INTO t (v) VALUES ('b')")
    home = _store(make_db(target), "home")
    (table,) = copy_tables([src.table("t")], home.engine)
    generated = _is_generated(home, target)
    if target == "postgresql":
        assert generated.startswith("d") or generated.endswith("t_id_seq")
    elif target == "mysql":
        assert "auto_increment" in generated
    else:
        assert "INTEGER" in generated and "PRIMARY KEY" in generated
        assert "AUTOINCREMENT" in generated  # even from a plain rowid table
    with home.engine.begin() as conn:  # copied rows carry their keys
        conn.execute(sa.insert(table), [{"id": 1, "v": "a"}, {"id": 7, "v": "b"}])
    assert generated_max(src.engine, src.table("t")) == 2
    advanced = advance_sequences(home.engine, [table], at_least={"t": 40}, headroom=2)
    assert advanced == {"t": 43}
    _run(home, "INSERT INTO t (v) VALUES ('new')")
    assert _one(home, "SELECT id FROM t WHERE v = 'new'") == 43
    # never backwards
    assert advance_sequences(home.engine, [table], at_least={"t": 3}) == {"t": 44}


def test_pg_identity_always_is_created_by_default_and_takes_copied_keys(make_db: MakeDb) -> None:
    src = _store(make_db("postgresql"), "src")
    _run(
        src,
        "CREATE TABLE t (id int GENERATED ALWAYS AS IDENTITY (START WITH 10 INCREMENT BY 5)"
        " PRIMARY KEY, v text)",
    )
    home = _store(make_db("postgresql"), "home")
    (table,) = copy_tables([src.table("t")], home.engine)
    assert _all(
        home,
        "SELECT a.attidentity, s.seqstart, s.seqincrement FROM pg_attribute a, pg_sequence s"
        " WHERE a.attrelid = 't'::regclass AND a.attname = 'id'"
        " AND s.seqrelid = pg_get_serial_sequence('t', 'id')::regclass",
    ) == [("d", 10, 5)]
    _run(home, "INSERT INTO t (id, v) VALUES (1, 'insert')")
    raw = home.engine.raw_connection()
    try:
        with raw.cursor() as cur, cur.copy("COPY t (id, v) FROM STDIN") as copy:  # type: ignore[attr-defined]
            copy.write_row((2, "copy"))
        raw.commit()
    finally:
        raw.close()
    # the identity starts at 10: past the copied keys already, and never moved back
    assert advance_sequences(home.engine, [table]) == {"t": 10}
    assert advance_sequences(home.engine, [table], at_least={"t": 20}) == {"t": 21}
    _run(home, "INSERT INTO t (v) VALUES ('new')")
    assert _all(home, "SELECT id, v FROM t ORDER BY id") == [
        (1, "insert"),
        (2, "copy"),
        (21, "new"),
    ]


def test_generated_non_key_column_is_refused_across_families(make_db: MakeDb) -> None:
    src = _store(make_db("postgresql"), "src")
    _run(src, "CREATE TABLE t (id int PRIMARY KEY, n serial)")
    (problem,) = schema_problems([src.table("t")], mysql.dialect())
    assert problem.column == "n" and "generated" in problem.what
    home = _store(make_db("postgresql"), "home")
    copy_tables([src.table("t")], home.engine)  # same family: its sequence is recreated
    _run(home, "INSERT INTO t (id) VALUES (5)")
    assert _one(home, "SELECT n FROM t") == 1


# -- 3. server defaults ---------------------------------------------------------------


def _default(home: SqlStore, backend: str, column: str) -> str:
    if backend == "sqlite":
        with home.engine.connect() as conn:
            rows = conn.exec_driver_sql("PRAGMA table_info(t)").all()
        return str({r[1]: r[4] for r in rows}[column])
    sql = (
        "SELECT column_default FROM information_schema.columns WHERE table_name = 't'"
        " AND column_name = :c" + (" AND table_schema = DATABASE()" if backend == "mysql" else "")
    )
    return str(_one(home, sql, c=column))


def test_same_family_defaults_are_copied_verbatim(make_db: MakeDb) -> None:
    cases = {
        "postgresql": "CREATE TABLE t (id int PRIMARY KEY, a timestamptz DEFAULT now(),"
        " b text DEFAULT 'x'::text, c int DEFAULT (1 + 2), d date DEFAULT CURRENT_DATE)",
        "mysql": "CREATE TABLE t (id int PRIMARY KEY, a timestamp NOT NULL DEFAULT"
        " current_timestamp() ON UPDATE current_timestamp(), b varchar(9) DEFAULT 'x',"
        " c varchar(9) DEFAULT (concat('a', 'b')), d datetime(6) DEFAULT current_timestamp(6))",
        "sqlite": "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT DEFAULT CURRENT_TIMESTAMP,"
        " b TEXT DEFAULT 'x', c TEXT DEFAULT (datetime('now')), d INT DEFAULT (1 + 2))",
    }
    for backend, ddl in cases.items():
        src = _store(make_db(backend), "src")
        _run(src, ddl)
        home = _store(make_db(backend), "home")
        copy_tables([src.table("t")], home.engine)
        _run(home, "INSERT INTO t (id) VALUES (5)")
        row = _all(home, "SELECT a, b, c, d FROM t")[0]
        assert row[0] is not None and row[1] == "x" and row[3] is not None, backend
        if backend == "mysql":
            assert row[2] == "ab"
            assert (
                "on update"
                in str(
                    _one(
                        home,
                        "SELECT EXTRA FROM information_schema.COLUMNS"
                        " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 't'"
                        " AND COLUMN_NAME = 'a'",
                    )
                ).lower()
            )
        if backend == "postgresql":
            assert _default(home, backend, "a") == "now()"


@pytest.mark.parametrize("target", ["mysql", "sqlite", "postgresql"])
def test_current_time_defaults_across_families(make_db: MakeDb, target: str) -> None:
    source = "sqlite" if target == "postgresql" else "postgresql"
    ddl = {
        "postgresql": "CREATE TABLE t (id int PRIMARY KEY, a timestamp DEFAULT now(),"
        " b timestamptz DEFAULT CURRENT_TIMESTAMP, c date DEFAULT CURRENT_DATE,"
        " d text DEFAULT 'it''s'::text, e boolean DEFAULT true, f numeric DEFAULT (-1.5))",
        "sqlite": "CREATE TABLE t (id INTEGER PRIMARY KEY, a DATETIME DEFAULT (datetime('now')),"
        " b TIMESTAMP DEFAULT CURRENT_TIMESTAMP, c DATE DEFAULT CURRENT_DATE,"
        " d TEXT DEFAULT 'it''s', e BOOLEAN DEFAULT 1, f NUMERIC DEFAULT -1.5)",
    }[source]
    src = _store(make_db(source), "src")
    _run(src, ddl)
    home = _store(make_db(target), "home")
    copy_tables([src.table("t")], home.engine)
    if target == "mysql":
        assert _default(home, target, "a").lower() == "current_timestamp(6)"
    if target == "sqlite":
        assert _default(home, target, "a") == "CURRENT_TIMESTAMP"
    _run(home, "INSERT INTO t (id) VALUES (5)")
    a, b, c, d, e, f = _all(home, "SELECT a, b, c, d, e, f FROM t")[0]
    assert a is not None and b is not None and c is not None
    assert d == "it's" and bool(e) is True and float(f) == -1.5


def test_untranslatable_defaults_are_refused_by_name() -> None:
    md = sa.MetaData()
    info = {"domicile.family": "postgresql"}
    t = sa.Table(
        "t",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("tag", sa.String(9), server_default=sa.text("lower('X')")),
        sa.Column("at", sa.DateTime, server_default=sa.text("(now() AT TIME ZONE 'utc')")),
        info=info,
    )
    problems = schema_problems([t], sqlite.dialect())
    assert [(p.column, p.what) for p in problems] == [
        ("tag", "default lower('X')"),
        ("at", "default (now() AT TIME ZONE 'utc')"),
    ]
    assert all(isinstance(p, SchemaProblem) and p.table == "t" for p in problems)
    col = sa.Table(
        "u",
        sa.MetaData(),
        sa.Column(
            "a",
            mysql.TIMESTAMP(),
            server_default=sa.text("current_timestamp() ON UPDATE current_timestamp()"),
        ),
    ).c.a
    default, why = translate_default(col, sa.DateTime(), "postgresql")
    assert default is None and why is not None and "ON UPDATE" in why


# -- 4. check constraints -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "source", "expected"),
    [
        ("price >= 0::numeric", "postgresql", "price >= 0"),
        ("((a > 0) AND (b IS NOT NULL))", "postgresql", "(a > 0 AND b IS NOT NULL)"),
        (
            "((rating)::text = ANY ((ARRAY['G'::character varying,"
            " 'PG'::character varying])::text[]))",
            "postgresql",
            "rating IN ('G', 'PG')",
        ),
        ("`a` between 0 and 100 or `a` is null", "mysql", "(a BETWEEN 0 AND 100 OR a IS NULL)"),
        ("length(name) > 0", "sqlite", "CHAR_LENGTH(name) > 0"),
        ("flag IN (0, 1)", "sqlite", "flag IN (FALSE, TRUE)"),
        ("NOT (a <> 'x''y')", "sqlite", "NOT (a <> 'x''y')"),
        ("a != -1", "sqlite", "a <> -1"),
    ],
)
def test_portable_checks_are_translated(text: str, source: str, expected: str) -> None:
    types = {
        "price": sa.Numeric(),
        "a": sa.Integer(),
        "b": sa.Integer(),
        "rating": sa.String(5),
        "name": sa.String(9),
        "flag": sa.Boolean(),
    }
    assert translate_check(text, source, mysql.dialect(), types) == expected


@pytest.mark.parametrize(
    "text",
    ["typeof(a) = 'integer'", "a ~ '^x'", "a + b > 0", "nope > 1", "length(a) > 0"],
)
def test_unportable_checks_are_refused(text: str) -> None:
    with pytest.raises(Untranslatable):
        translate_check(text, "mysql", sqlite.dialect(), {"a": sa.Integer(), "b": sa.Integer()})


@pytest.mark.parametrize("target", ["postgresql", "mysql"])
def test_checks_across_families_hold_at_home(make_db: MakeDb, target: str) -> None:
    src = _store(make_db("sqlite"), "src")
    _run(
        src,
        "CREATE TABLE t (id INTEGER PRIMARY KEY, n INT CHECK (n BETWEEN 1 AND 9),"
        " s TEXT CHECK (s IN ('a', 'b')), name TEXT, CONSTRAINT named CHECK (length(name) > 1))",
    )
    home = _store(make_db(target), "home")
    copy_tables([src.table("t")], home.engine)
    _run(home, "INSERT INTO t (id, n, s, name) VALUES (1, 5, 'a', 'ok')")
    for bad in ("(2, 10, 'a', 'ok')", "(3, 5, 'c', 'ok')", "(4, 5, 'a', 'x')"):
        _refused(home, f"INSERT INTO t (id, n, s, name) VALUES {bad}")
    bad_src = _store(make_db("sqlite"), "bad")
    _run(bad_src, "CREATE TABLE t (id INTEGER PRIMARY KEY, n INT CHECK (typeof(n) = 'integer'))")
    (problem,) = schema_problems([bad_src.table("t")], home.engine.dialect)
    assert "typeof(n) = 'integer'" in problem.message


def test_mariadb_column_checks_are_copied(make_db: MakeDb) -> None:
    src = _store(make_db("mysql"), "src")
    _run(src, "CREATE TABLE t (id int PRIMARY KEY, n int CHECK (n > 0), j json)")
    home = _store(make_db("mysql"), "home")
    copy_tables([src.table("t")], home.engine)
    _refused(home, "INSERT INTO t (id, n) VALUES (1, 0)")
    _refused(home, "INSERT INTO t (id, j) VALUES (2, 'not json')")
    pg = _store(make_db("postgresql"), "pg")
    copy_tables([src.table("t")], pg.engine)
    _refused(pg, "INSERT INTO t (id, n) VALUES (1, 0)")


# -- 5. all or nothing ----------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mysql"])
def test_a_failing_statement_leaves_nothing(make_db: MakeDb, backend: str) -> None:
    md = sa.MetaData()
    first = sa.Table("first", md, sa.Column("id", sa.Integer, primary_key=True))
    broken = sa.Table(
        "second",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("first_id", sa.Integer, sa.ForeignKey("first.id")),
        sa.CheckConstraint("id >>>> (", name="broken"),  # the author's SQL, copied as it is
    )
    home = _store(make_db(backend), "home")
    with pytest.raises(sa.exc.DBAPIError):
        copy_tables([first, broken], home.engine)
    assert _tables(home) == set()


# -- 6. foreign-key cycles --------------------------------------------------------------------


def _cycle() -> list[sa.Table]:
    md = sa.MetaData()
    store = sa.Table(
        "store",
        md,
        sa.Column("store_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("manager_staff_id", sa.Integer, nullable=False),
        sa.ForeignKeyConstraint(["manager_staff_id"], ["staff.staff_id"], name="store_manager"),
    )
    staff = sa.Table(
        "staff",
        md,
        sa.Column("staff_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("store_id", sa.Integer, nullable=False),
        sa.Column("boss_id", sa.Integer, sa.ForeignKey("staff.staff_id")),
        sa.ForeignKeyConstraint(["store_id"], ["store.store_id"], name="staff_store"),
    )
    return [store, staff]


def test_foreign_key_cycles() -> None:
    tables = _cycle()
    assert foreign_key_cycles(tables) == [{"staff", "store"}]
    assert foreign_key_cycles(tables[:1]) == []


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mysql"])
def test_cycle_is_created_and_loaded_in_one_transaction(make_db: MakeDb, backend: str) -> None:
    home = _store(make_db(backend), "home")
    with warnings.catch_warnings():
        warnings.simplefilter("error", sa.exc.SAWarning)
        tables = copy_tables(_cycle(), home.engine)
    by_name = {t.name: t for t in tables}
    with home.engine.begin() as conn:
        assert defer_foreign_keys(conn, tables) is True
        conn.execute(sa.insert(by_name["store"]), {"store_id": 1, "manager_staff_id": 1})
        conn.execute(sa.insert(by_name["staff"]), {"staff_id": 1, "store_id": 1})
        restore_foreign_keys(conn, tables)
    if backend == "sqlite":
        with home.engine.connect() as conn:
            fks = {
                r[2]
                for t in ("store", "staff")
                for r in conn.exec_driver_sql(f"PRAGMA foreign_key_list({t})").all()
            }
        assert fks == {"staff", "store"}
    else:
        schema = "DATABASE()" if backend == "mysql" else "current_schema()"
        names = _all(
            home,
            "SELECT constraint_name FROM information_schema.table_constraints"
            f" WHERE constraint_type = 'FOREIGN KEY' AND table_schema = {schema} ORDER BY 1",
        )
        assert {"staff_store", "store_manager"} <= {n for (n,) in names}
    if backend == "postgresql":
        assert _all(
            home,
            "SELECT conname, condeferrable, condeferred FROM pg_constraint"
            " WHERE conname IN ('staff_store', 'store_manager') ORDER BY 1",
        ) == [("staff_store", True, False), ("store_manager", True, False)]
        # every key domicile creates there may be deferred, the self-reference too
        assert _one(home, "SELECT bool_and(condeferrable) FROM pg_constraint WHERE contype = 'f'")
    with pytest.raises(sa.exc.IntegrityError), home.engine.begin() as conn:
        conn.execute(sa.insert(by_name["staff"]), {"staff_id": 2, "store_id": 99})
    if backend == "mysql":  # checks off, an orphan written, found before commit
        with pytest.raises(sa.exc.IntegrityError), home.engine.begin() as conn:
            defer_foreign_keys(conn, tables)
            conn.execute(sa.insert(by_name["staff"]), {"staff_id": 3, "store_id": 99})
            restore_foreign_keys(conn, tables)
        assert _one(home, "SELECT count(*) FROM staff") == 1


def test_defer_is_false_for_a_home_cycle_not_deferrable(make_db: MakeDb) -> None:
    home = _store(make_db("postgresql"), "home")
    _run(
        home,
        "CREATE TABLE store (store_id int PRIMARY KEY, manager_staff_id int NOT NULL)",
        "CREATE TABLE staff (staff_id int PRIMARY KEY, store_id int NOT NULL REFERENCES store)",
        "ALTER TABLE store ADD FOREIGN KEY (manager_staff_id) REFERENCES staff",
    )
    tables = [home.table("store"), home.table("staff")]
    with home.engine.begin() as conn:
        assert defer_foreign_keys(conn, tables) is False


# -- 7. DDL preview -------------------------------------------------------------------------


def test_ddl_preview_runs_nothing(make_db: MakeDb) -> None:
    _src, film = _pg_film(make_db)
    home = _store(make_db("postgresql"), "home")
    statements = ddl_preview([film], home.engine)
    heads = [" ".join(s.split()[:2]) for s in statements]
    assert heads[:4] == ["CREATE DOMAIN", "CREATE DOMAIN", "CREATE TYPE", "CREATE SEQUENCE"]
    assert "CREATE TABLE" in heads and heads[-1] == "ALTER SEQUENCE"
    assert _tables(home) == set()
    assert _one(home, "SELECT count(*) FROM pg_type WHERE typname = 'mpaa_rating'") == 0
    cyc = ddl_preview(_cycle(), mysql.dialect())
    assert sum(s.startswith("ALTER TABLE") and "ADD CONSTRAINT" in s for s in cyc) == 2
    assert not any("ALTER" in s for s in ddl_preview(_cycle(), sqlite.dialect()))
    with pytest.raises(PermanentConnectorError, match="INTERVAL"):
        ddl_preview(
            [sa.Table("i", sa.MetaData(), sa.Column("d", postgresql.INTERVAL()))], sqlite.dialect()
        )
