"""The scale benchmark's fleet: schema, in-engine data, identical copies, checks, data map.

Used by ``scale.py`` (run that one).  A demo-like fleet: a short-video app
that grew up in Singapore keeps every user's data in one legacy store,
``sg-main``: a ``users`` directory (countries spelled the way a grown app
spells them) and three personal tables, ``videos``, ``comments`` and
``login_events``, each owned through a foreign key to ``users``.  Four
custodian homes, ``us-tx``, ``ca-mtl``, ``au-syd`` and ``nz-akl``, start with
empty tables of the same schema.  Half the users live in the US, 15% in
Canada, 10% in Australia, 5% in New Zealand (their rows must move home) and
20% in Singapore (their rows may stay): 80% of the rows move.

Each user owns ``rows_per_user`` rows in all, its ``users`` row included; the
rest are split 20/30/50 between videos, comments and login events, spread
over the users by a multiplicative hash (rows are not grouped by user).
Everything is generated inside the engine (``INSERT ... SELECT`` over a
series), loaded once, then copied byte for byte per measured run (PostgreSQL:
``CREATE DATABASE ... TEMPLATE``; SQLite: file copies).  Which country a user
is in follows from the id alone (``id * 7919 % 100``), so the checks compute
from the ids — not from domicile's census — which rows must end where.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from move_data import Server

# (store, country, region, operator); the first is the legacy source
STORES = (
    ("sg-main", "SG", "ap-southeast-1", "legacy"),
    ("us-tx", "US", "us-south-1", "custodian"),
    ("ca-mtl", "CA", "ca-central-1", "custodian"),
    ("au-syd", "AU", "ap-southeast-2", "custodian"),
    ("nz-akl", "NZ", "ap-southeast-6", "custodian"),
)
SOURCE = "sg-main"
HOMES = {"US": "us-tx", "CA": "ca-mtl", "AU": "au-syd", "NZ": "nz-akl"}
STAYING = "SG"
# cumulative share (percent) of the users per country, decided by id * 7919 % 100
BUCKETS = (("US", 50), ("CA", 65), ("AU", 75), ("NZ", 80), ("SG", 100))
SPELLINGS = {
    "US": ("US", "USA", "United States", "us"),
    "CA": ("CA", "Canada", "CAN"),
    "AU": ("AU", "Australia"),
    "NZ": ("NZ", "New Zealand"),
    "SG": ("SG", "Singapore"),
}
TABLES = ("users", "videos", "comments", "login_events")  # parents first
OWNER = {"users": "id", "videos": "user_id", "comments": "author_id", "login_events": "user_id"}
SHARES = {"videos": 0.2, "comments": 0.3}  # login_events: the rest
LOREM = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
    "incididunt ut labore et dolore magna aliqua ut enim ad minim veniam quis nostrud"
)

Tally = tuple[int, int]  # (rows, sum of ids)


def db_name(store: str) -> str:
    """A store's name as part of a database name (``sg-main`` -> ``sg_main``)."""
    return store.replace("-", "_")


def per_user(rows_per_user: int) -> dict[str, int]:
    """Rows per user in each table (the ``users`` row included in the total)."""
    if rows_per_user < 4:
        raise SystemExit("--rows-per-user must be at least 4 (a user row and one per table)")
    rest = rows_per_user - 1
    videos = max(1, round(rest * SHARES["videos"]))
    comments = max(1, round(rest * SHARES["comments"]))
    return {
        "users": 1,
        "videos": videos,
        "comments": comments,
        "login_events": rest - videos - comments,
    }


# ---------------------------------------------------------------------------
# Schema and data.


def metadata() -> sa.MetaData:
    """The app's tables (the same metadata at the source and at every home)."""
    md = sa.MetaData()
    big = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # rowid tables on SQLite
    sa.Table(
        "users",
        md,
        sa.Column("id", big, primary_key=True, autoincrement=False),
        sa.Column("handle", sa.String(40), nullable=False),
        sa.Column("country", sa.String(40)),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    sa.Table(
        "videos",
        md,
        sa.Column("id", big, primary_key=True, autoincrement=False),
        sa.Column("user_id", sa.BigInteger, sa.ForeignKey("users.id"), nullable=False, index=True),
        sa.Column("title", sa.String(80), nullable=False),
        sa.Column("duration_s", sa.Integer, nullable=False),
        sa.Column("visibility", sa.String(10), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    sa.Table(
        "comments",
        md,
        sa.Column("id", big, primary_key=True, autoincrement=False),
        sa.Column(
            "author_id", sa.BigInteger, sa.ForeignKey("users.id"), nullable=False, index=True
        ),
        sa.Column("video_id", sa.BigInteger, nullable=False),  # anyone's video: no FK
        sa.Column("body", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    sa.Table(
        "login_events",
        md,
        sa.Column("id", big, primary_key=True, autoincrement=False),
        sa.Column("user_id", sa.BigInteger, sa.ForeignKey("users.id"), nullable=False, index=True),
        sa.Column("at", sa.DateTime, nullable=False),
        sa.Column("ip", sa.String(45), nullable=False),
        sa.Column("kind", sa.String(12), nullable=False),
    )
    return md


def bucket(ident: str) -> str:
    """SQL: the country code of the user with id *ident* (from the id alone)."""
    whens = " ".join(f"WHEN ({ident} * 7919) % 100 < {upto} THEN '{c}'" for c, upto in BUCKETS)
    return f"(CASE {whens} END)"


def _spelled(ident: str) -> str:
    """SQL: the user's country as the app stored it (one of several spellings)."""
    whens = []
    for code, upto in BUCKETS:
        forms = SPELLINGS[code]
        pick = " ".join(f"WHEN {i} THEN '{f}'" for i, f in enumerate(forms))
        whens.append(
            f"WHEN ({ident} * 7919) % 100 < {upto} THEN CASE {ident} % {len(forms)} {pick} END"
        )
    return f"(CASE {' '.join(whens)} END)"


def inserts(dialect: str, users: int, rows_per_user: int) -> list[str]:
    """INSERT ... SELECT over a series: the whole source generated inside the engine."""
    if dialect == "sqlite":

        def series(n: int) -> str:
            return (
                "(WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s "
                f"WHERE x < {n}) SELECT x FROM s) AS s"
            )

        def at(expr: str) -> str:  # SQLAlchemy's SQLite DateTime text form
            return f"datetime('2024-01-01', '+' || ({expr}) || ' seconds') || '.000000'"

    else:

        def series(n: int) -> str:
            return f"generate_series(1, {n}) AS s(x)"

        def at(expr: str) -> str:
            return f"timestamp '2024-01-01' + ({expr}) * interval '1 second'"

    counts = per_user(rows_per_user)
    # 2654435761 is prime: x -> x * 2654435761 % users visits every user once per users rows
    owner = f"((x * 2654435761) % {users} + 1)"
    videos = users * counts["videos"]

    def text(n: int) -> str:
        return f"substr('{LOREM}', 1 + x % 50, {n})"

    return [
        "INSERT INTO users (id, handle, country, created_at) "
        f"SELECT x, 'user' || x, {_spelled('x')}, {at('x * 613 % 31536000')} FROM {series(users)}",
        "INSERT INTO videos (id, user_id, title, duration_s, visibility, created_at) "
        f"SELECT x, {owner}, {text(48)}, 5 + x * 13 % 300, "
        "CASE x % 3 WHEN 0 THEN 'public' WHEN 1 THEN 'friends' ELSE 'private' END, "
        f"{at('x * 37 % 31536000')} FROM {series(videos)}",
        "INSERT INTO comments (id, author_id, video_id, body, created_at) "
        f"SELECT x, {owner}, 1 + x * 7 % {videos}, {text(90)}, {at('x * 53 % 31536000')} "
        f"FROM {series(users * counts['comments'])}",
        "INSERT INTO login_events (id, user_id, at, ip, kind) "
        f"SELECT x, {owner}, {at('x * 17 % 31536000')}, "
        "'10.' || (x % 256) || '.' || (x / 256 % 256) || '.' || (x / 65536 % 256), "
        "CASE x % 5 WHEN 0 THEN 'password' WHEN 1 THEN 'refresh' ELSE 'token' END "
        f"FROM {series(users * counts['login_events'])}",
    ]


def load(url: str, users: int = 0, rows_per_user: int = 0) -> None:
    """Create the tables at *url* and, with *users*, fill them; analyze as an app would."""
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    name = engine.dialect.name
    try:
        metadata().create_all(engine)
        with engine.connect() as conn:
            if users:
                if name == "sqlite":
                    conn.exec_driver_sql("PRAGMA journal_mode=OFF")
                    conn.exec_driver_sql("PRAGMA synchronous=OFF")
                    conn.exec_driver_sql("BEGIN")
                for sql in inserts(name, users, rows_per_user):
                    conn.execute(sa.text(sql))
                if name == "sqlite":
                    conn.exec_driver_sql("COMMIT")
            if name == "sqlite":
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")  # what domicile sets on connect
                conn.exec_driver_sql("ANALYZE")
            else:
                conn.exec_driver_sql("VACUUM ANALYZE")
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------
# What must end where, computed from the ids; and what is there.


def expected(url: str) -> dict[str, dict[str, Tally]]:
    """Per table and country code, (rows, sum of ids) of the users' rows there."""
    engine = sa.create_engine(url)
    out: dict[str, dict[str, Tally]] = {}
    try:
        with engine.connect() as conn:
            for t in TABLES:
                sql = (
                    f"SELECT {bucket('t.' + OWNER[t])} AS c, count(*), sum(t.id) FROM {t} t "
                    f"GROUP BY {bucket('t.' + OWNER[t])}"
                )
                out[t] = {c: (int(n), int(s)) for c, n, s in conn.execute(sa.text(sql))}
    finally:
        engine.dispose()
    return out


def moving_bytes(url: str) -> int:
    """Bytes of the rows that must move, each value counted in its text form."""
    md = metadata()
    engine = sa.create_engine(url)
    total = 0
    try:
        with engine.connect() as conn:
            for t in TABLES:
                width = " + ".join(
                    f"coalesce(length(CAST(t.{c.name} AS TEXT)), 0)" for c in md.tables[t].columns
                )
                sql = (
                    f"SELECT sum({width}) FROM {t} t WHERE {bucket('t.' + OWNER[t])} <> '{STAYING}'"
                )
                total += int(conn.execute(sa.text(sql)).scalar_one() or 0)
    finally:
        engine.dispose()
    return total


def tally(url: str) -> dict[str, Tally]:
    """(rows, sum of ids) per table of one store."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            out = {}
            for t in TABLES:
                n, s = conn.exec_driver_sql(f"SELECT count(*), sum(id) FROM {t}").one()
                out[t] = (int(n), int(s or 0))
            return out
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------
# The fleet and its copies.


@dataclass
class Fleet:
    """The base copy (loaded once) and one identical copy per measured run."""

    engine: str  # sqlite | postgresql
    workdir: Path
    tag: str
    users: int
    rows_per_user: int
    server: Server | None
    base: dict[str, str]  # store -> URL of the loaded original (the census runs on it)
    want: dict[str, dict[str, Tally]]  # table -> country code -> tally
    bytes_moving: int
    copies: dict[str, dict[str, str]] = field(default_factory=dict)  # copy -> store -> URL

    @property
    def rows(self) -> int:
        return sum(n for per in self.want.values() for n, _ in per.values())

    @property
    def moving(self) -> int:
        return sum(n for per in self.want.values() for c, (n, _) in per.items() if c != STAYING)

    def prefix(self, copy: str) -> str:
        """The start of every database name of *copy* (PostgreSQL)."""
        return f"domicile_bench_{self.tag}_{copy}_"

    def copy(self, name: str) -> dict[str, str]:
        """A fresh identical copy of the loaded fleet: store -> URL (and ``state``)."""
        urls: dict[str, str] = {}
        if self.server is not None:
            for store, _c, _r, _o in STORES:
                urls[store] = self.server.create(
                    f"{name}_{db_name(store)}", f"base_{db_name(store)}"
                )
            urls["state"] = self.server.create(f"{name}_state")
        else:
            folder = self.workdir / name
            folder.mkdir()
            for store, _c, _r, _o in STORES:
                shutil.copyfile(self.workdir / "base" / f"{store}.db", folder / f"{store}.db")
                urls[store] = f"sqlite:///{folder / f'{store}.db'}"
            urls["state"] = f"sqlite:///{folder / 'state.db'}"
        self.copies[name] = urls
        return urls

    def drop(self, name: str) -> None:
        """Drop a copy once measured and checked (disk: a copy per run adds up)."""
        urls = self.copies.pop(name)
        if self.server is None:
            shutil.rmtree(self.workdir / name, ignore_errors=True)
            return
        with self.server.admin.connect() as conn:
            for store in (*(s for s, _c, _r, _o in STORES), "state"):
                db = sa.make_url(urls[store]).database
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')

    def check(self, name: str) -> None:
        """The source holds exactly the Singapore users' rows, each home exactly its own."""
        urls = self.copies[name]
        where = {STAYING: SOURCE, **HOMES}
        for code, store in where.items():
            got = tally(urls[store])
            want = {t: self.want[t].get(code, (0, 0)) for t in TABLES}
            if got != want:
                raise SystemExit(
                    f"{name}: {store} holds {got}, want {want} (the {code} users' rows)"
                )


@contextmanager
def fleet(engine: str, workdir: Path, users: int, rows_per_user: int) -> Iterator[Fleet]:
    """Load the fleet once; its copies are made per run and dropped at the end."""
    tag = uuid.uuid4().hex[:10]
    server = Server("postgresql", tag) if engine == "postgresql" else None
    base: dict[str, str] = {}
    try:
        for store, _c, _r, _o in STORES:
            if server is not None:
                base[store] = server.create(f"base_{db_name(store)}")
            else:
                (workdir / "base").mkdir(exist_ok=True)
                base[store] = f"sqlite:///{workdir / 'base' / f'{store}.db'}"
            if store == SOURCE:
                load(base[store], users, rows_per_user)
            else:
                load(base[store])
        base["state"] = f"sqlite:///{workdir / 'census-state.db'}"  # the census writes none
        yield Fleet(
            engine, workdir, tag, users, rows_per_user, server, base,
            expected(base[SOURCE]), moving_bytes(base[SOURCE]),
        )  # fmt: skip
    finally:
        if server is not None:
            server.drop_all()
            print(f"dropped databases domicile_bench_{tag}_*", flush=True)


def data_map(urls: dict[str, str]) -> dict[str, Any]:
    """The domicile.yaml of one copy: Singapore rows may stay, the others go home."""
    jurisdictions: dict[str, Any] = {
        code: {
            "countries": [code],
            "allowed": {"country": code, "operator": "custodian"},
            "home": [home],
        }
        for code, home in HOMES.items()
    }
    jurisdictions[STAYING] = {
        "countries": [STAYING],
        "allowed": {"country": STAYING},
        "home": [SOURCE],
    }
    return {
        "version": 1,
        "state": urls["state"],
        "stores": {
            store: {
                "url": urls[store],
                "labels": {"country": country, "region": region, "operator": operator},
            }
            for store, country, region, operator in STORES
        },
        "subjects": {"dataset": "users", "id": "id", "country": "country"},
        "jurisdictions": jurisdictions,
        "datasets": {t: {"table": t, "key": ["id"], "owner": OWNER[t]} for t in TABLES},
    }
