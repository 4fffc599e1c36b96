"""The move benchmark's fleet: schema, in-engine data, the databases of each pair, checks.

Used by ``move.py`` (run that one).  A pair is (source engine, home engine):
the source is a legacy store in Singapore holding the ``users`` directory and
the ``events`` table; a third of the users live in Singapore (their rows may
stay), two thirds in the US (spelled ``US``, ``usa`` or ``United States``), so
about two thirds of the rows must move to the empty US home store.  Every pair
gets three identical copies of the fleet: one for domicile, one for each floor.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

POSTGRES = os.environ.get(
    "DOMICILE_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
MYSQL = os.environ.get("DOMICILE_TEST_MYSQL", "mysql+pymysql://root@127.0.0.1:3306/mysql")
SERVERS = {"postgresql": POSTGRES, "mariadb": MYSQL}

PAIRS = {  # name: (source engine, home engine)
    "sqlite-sqlite": ("sqlite", "sqlite"),
    "postgresql-postgresql": ("postgresql", "postgresql"),
    "sqlite-postgresql": ("sqlite", "postgresql"),
    "postgresql-mariadb": ("postgresql", "mariadb"),
}
TABLES = ("users", "events")  # parents first
COLUMNS = {
    "users": ("id", "name", "country"),
    "events": ("id", "user_id", "kind", "at", "payload"),
}
US = ("US", "usa", "United States")  # the spellings of the moving users' country
US_IN = "(" + ", ".join(f"'{c}'" for c in US) + ")"
COPIES = ("", "a_", "b_")  # domicile's fleet, floor (a)'s, floor (b)'s

Tally = tuple[int, int]  # (rows, sum of ids): a cheap checksum of a table's content


# ---------------------------------------------------------------------------
# Schema and data.


def metadata() -> sa.MetaData:
    """The app's two tables (the same metadata at the source and at home, any engine)."""
    md = sa.MetaData()
    # INTEGER PRIMARY KEY on SQLite: the rowid table an app would have there.
    big = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    # DATETIME keeps whole seconds on MariaDB; an app moving timestamps would ask for (6)
    at = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
    sa.Table(
        "users",
        md,
        sa.Column("id", big, primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(60), nullable=False),
        sa.Column("country", sa.String(40), nullable=False),
    )
    sa.Table(
        "events",
        md,
        sa.Column("id", big, primary_key=True, autoincrement=False),
        sa.Column("user_id", sa.BigInteger, nullable=False, index=True),
        sa.Column("kind", sa.String(12), nullable=False),
        sa.Column("at", at, nullable=False),
        sa.Column("payload", sa.String(64), nullable=False),
    )
    return md


LOREM = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod"


def inserts(dialect: str, users: int, rows: int) -> list[str]:
    """INSERT ... SELECT over a series, generating the data inside the engine (SQLite, PG)."""
    if dialect == "sqlite":

        def series(n: int) -> str:
            return (
                "(WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s "
                f"WHERE x < {n}) SELECT x FROM s) AS s"
            )

        # SQLAlchemy's SQLite DateTime text form (microseconds included)
        at = "datetime('2024-01-01', '+' || (x * 37 % 31536000) || ' seconds') || '.000000'"
    else:

        def series(n: int) -> str:
            return f"generate_series(1, {n}) AS s(x)"

        at = "timestamp '2024-01-01' + (x * 37 % 31536000) * interval '1 second'"
    owner = f"((x * 2654435761) % {users} + 1)"  # scattered: events are not grouped by user
    kind = "CASE x % 4 WHEN 0 THEN 'view' WHEN 1 THEN 'like' WHEN 2 THEN 'share' ELSE 'comment' END"
    payload = f"substr('{LOREM}', 1 + x % 25, 40)"  # 40 characters
    # a third in Singapore (staying), two thirds in the US in three spellings (moving)
    country = (
        "CASE x % 3 WHEN 0 THEN 'SG' ELSE "
        "CASE (x / 3) % 3 WHEN 0 THEN 'US' WHEN 1 THEN 'usa' ELSE 'United States' END END"
    )
    return [
        f"INSERT INTO users (id, name, country) SELECT x, 'user ' || x, {country} "
        f"FROM {series(users)}",
        "INSERT INTO events (id, user_id, kind, at, payload) "
        f"SELECT x, {owner}, {kind}, {at}, {payload} FROM {series(rows)}",
    ]


def load(url: str, users: int = 0, rows: int = 0) -> None:
    """Create the tables at *url* and, with *rows*, fill them; analyze as an app would."""
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    name = engine.dialect.name
    try:
        metadata().create_all(engine)
        with engine.connect() as conn:
            if rows:
                if name == "sqlite":
                    conn.exec_driver_sql("PRAGMA journal_mode=OFF")
                    conn.exec_driver_sql("PRAGMA synchronous=OFF")
                    conn.exec_driver_sql("BEGIN")
                for sql in inserts(name, users, rows):
                    conn.execute(sa.text(sql))
                if name == "sqlite":
                    conn.exec_driver_sql("COMMIT")
            if name == "sqlite":
                # what domicile sets on connect; persistent in the file, so the floors have it too
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")
                conn.exec_driver_sql("ANALYZE")
            elif name == "postgresql":
                conn.exec_driver_sql("VACUUM ANALYZE")
    finally:
        engine.dispose()


def tally(url: str, where: str = "") -> dict[str, Tally]:
    """(rows, sum of ids) per table; *where* ``moving``: of the rows that must move only."""
    moving = f" WHERE u.country IN {US_IN}" if where == "moving" else ""
    queries = {
        "users": f"SELECT count(*), sum(u.id) FROM users u{moving}",
        "events": (
            "SELECT count(*), sum(e.id) FROM events e"
            + (f" JOIN users u ON u.id = e.user_id{moving}" if moving else "")
        ),
    }
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            out = {}
            for t, sql in queries.items():
                n, s = conn.exec_driver_sql(sql).one()
                out[t] = (int(n), int(s or 0))
            return out
    finally:
        engine.dispose()


def minus(a: dict[str, Tally], b: dict[str, Tally]) -> dict[str, Tally]:
    """Per table, the tally of *a*'s rows that are not *b*'s (b a subset of a)."""
    return {t: (a[t][0] - b[t][0], a[t][1] - b[t][1]) for t in a}


def rows_of(t: dict[str, Tally]) -> int:
    """Rows over every table of a tally."""
    return sum(n for n, _ in t.values())


# ---------------------------------------------------------------------------
# Databases: the three copies of each pair's two stores.


@dataclass
class Fleet:
    """One pair's databases and what each holds now."""

    pair: str
    source: str  # engine: sqlite | postgresql
    home: str  # engine: sqlite | postgresql | mariadb
    urls: dict[str, str]  # legacy, home, a_legacy, a_home, b_legacy, b_home
    total: dict[str, Tally]  # the source's rows
    moving: dict[str, Tally]  # those of US users (must move)

    @property
    def staying(self) -> dict[str, Tally]:
        """Rows of Singapore users: they stay at the source."""
        return minus(self.total, self.moving)


class Server:
    """Fresh databases on one PostgreSQL or MariaDB server, dropped at the end."""

    def __init__(self, engine: str, tag: str):
        self.engine = engine
        self.url = sa.make_url(SERVERS[engine])
        self.admin = sa.create_engine(self.url, isolation_level="AUTOCOMMIT")
        self.tag = tag
        self.made: list[str] = []

    def create(self, store: str, template: str | None = None) -> str:
        """A new database's URL (on PostgreSQL optionally a copy of *template*'s database)."""
        name = f"domicile_bench_{self.tag}_{store}"
        with self.admin.connect() as conn:
            if self.engine == "postgresql":
                like = f' TEMPLATE "domicile_bench_{self.tag}_{template}"' if template else ""
                conn.exec_driver_sql(f'CREATE DATABASE "{name}"{like}')
            else:
                conn.exec_driver_sql(
                    f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
                )
        self.made.append(name)
        return self.url.set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        with self.admin.connect() as conn:
            for name in self.made:
                if self.engine == "postgresql":
                    conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                else:
                    conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")
        self.admin.dispose()


@contextmanager
def fleet(pair: str, workdir: Path, users: int, rows: int) -> Iterator[Fleet]:
    """The loaded source and empty home, three times over (byte copies of the source)."""
    source, home = PAIRS[pair]
    tag = uuid.uuid4().hex[:10]
    servers: dict[str, Server] = {}
    urls: dict[str, str] = {}
    try:
        for engine in {source, home} - {"sqlite"}:
            servers[engine] = Server(engine, tag)
        if source == "sqlite":
            urls["legacy"] = f"sqlite:///{workdir / 'legacy.db'}"
            load(urls["legacy"], users, rows)
            for copy in COPIES[1:]:
                shutil.copyfile(workdir / "legacy.db", workdir / f"{copy}legacy.db")
                urls[f"{copy}legacy"] = f"sqlite:///{workdir / f'{copy}legacy.db'}"
        else:
            urls["legacy"] = servers[source].create("legacy")
            load(urls["legacy"], users, rows)
            for copy in COPIES[1:]:  # byte-for-byte copies, with statistics
                urls[f"{copy}legacy"] = servers[source].create(f"{copy}legacy", "legacy")
        for copy in COPIES:
            if home == "sqlite":
                urls[f"{copy}home"] = f"sqlite:///{workdir / f'{copy}home.db'}"
            else:
                urls[f"{copy}home"] = servers[home].create(f"{copy}home")
            load(urls[f"{copy}home"])
        total = tally(urls["legacy"])
        yield Fleet(pair, source, home, urls, total, tally(urls["legacy"], "moving"))
    finally:
        for server in servers.values():
            server.drop_all()
        if servers:
            print(f"  dropped databases domicile_bench_{tag}_*", flush=True)


def data_map(urls: dict[str, str], workdir: Path) -> dict[str, Any]:
    """The domicile.yaml of domicile's copy (state: a SQLite file in the work folder).

    Singapore is a jurisdiction whose data may stay at the Singapore source, so
    its users' rows are allowed there; US users' rows violate until moved home.
    """
    return {
        "version": 1,
        "state": f"sqlite:///{workdir / 'state.db'}",
        "stores": {
            "legacy": {
                "url": urls["legacy"],
                "labels": {"country": "SG", "region": "ap-southeast-1", "operator": "legacy"},
            },
            "home": {
                "url": urls["home"],
                "labels": {"country": "US", "region": "us-south-1", "operator": "custodian"},
            },
        },
        "subjects": {"dataset": "users", "id": "id", "country": "country"},
        "jurisdictions": {
            "US": {
                "countries": ["US"],
                "allowed": {"country": "US", "operator": "custodian"},
                "home": ["home"],
            },
            "SG": {"countries": ["SG"], "allowed": {"country": "SG"}, "home": ["legacy"]},
        },
        "datasets": {
            "users": {"table": "users", "key": ["id"], "owner": "id"},
            "events": {"table": "events", "key": ["id"], "owner": "user_id"},
        },
    }
