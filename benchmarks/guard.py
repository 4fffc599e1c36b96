"""What the write guard costs: one INSERT with and without domicile's trigger, per engine.

    python benchmarks/guard.py [--rows 5000] [--subjects 10000] [--runs 3]
                               [--backend sqlite postgresql mysql]

Per engine, a legacy store ``sg`` (forbidden for the US) and a home ``us``
holding the directory with ``--subjects`` US subjects, all home, so all
guarded at ``sg``.  At ``sg`` two pairs of identical tables: ``events``
(owner a column) and ``items`` (owner through one hop, ``event_id ->
events.id -> user_id``) are datasets and get the guard's triggers;
``plain_events`` and ``plain_items`` are not datasets and get none.  Each run
inserts ``--rows`` rows of subjects that are not guarded (the rows the
trigger looks up and lets in: the cost every write pays) into a plain table
and into its guarded twin, one single-row INSERT per row in one transaction
(``--commit-each``: each committed on its own, as most applications write),
alternating which goes first; best of ``--runs``.  The floor is
the same INSERT into the plain table, measured in the same run.

PostgreSQL and MariaDB come from DOMICILE_TEST_POSTGRES / DOMICILE_TEST_MYSQL
(defaults: the local servers); a database is created per store and dropped.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml

from domicile import api

SERVERS = {
    "postgresql": os.environ.get(
        "DOMICILE_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    ),
    "mysql": os.environ.get("DOMICILE_TEST_MYSQL", "mysql+pymysql://root@127.0.0.1:3306/mysql"),
}


def make_db(backend: str, tmp: Path, made: list[tuple[str, str]]) -> str:
    name = f"bg_{uuid.uuid4().hex[:10]}"
    if backend == "sqlite":
        return f"sqlite:///{tmp / (name + '.db')}"
    admin = sa.create_engine(SERVERS[backend], isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if backend == "postgresql":
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        else:
            conn.exec_driver_sql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    admin.dispose()
    made.append((backend, name))
    return sa.make_url(SERVERS[backend]).set(database=name).render_as_string(hide_password=False)


def drop_dbs(made: list[tuple[str, str]]) -> None:
    for backend, name in made:
        admin = sa.create_engine(SERVERS[backend], isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            if backend == "postgresql":
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            else:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")
        admin.dispose()


def build(backend: str, tmp: Path, subjects: int, made: list[tuple[str, str]]) -> tuple[Path, str]:
    urls = {s: make_db(backend, tmp, made) for s in ("sg", "us")}
    md = sa.MetaData()
    users = sa.Table(
        "users",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("country", sa.String(2)),
    )
    for prefix in ("", "plain_"):
        sa.Table(
            f"{prefix}events",
            md,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("user_id", sa.Integer, index=True),
            sa.Column("body", sa.String(40)),
        )
        sa.Table(
            f"{prefix}items",
            md,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("event_id", sa.Integer, index=True),
            sa.Column("sku", sa.String(20)),
        )
    sg = sa.create_engine(urls["sg"])
    md.create_all(sg, tables=[t for t in md.sorted_tables if t.name != "users"])
    with sg.begin() as conn:  # parents of the items: unguarded owners (not in any directory)
        for name in ("events", "plain_events"):
            conn.execute(
                md.tables[name].insert(),
                [{"id": i, "user_id": 10_000_000 + i, "body": "x"} for i in range(1, 1001)],
            )
    sg.dispose()
    us = sa.create_engine(urls["us"])
    md.create_all(us, tables=[users])
    with us.begin() as conn:
        conn.execute(users.insert(), [{"id": i, "country": "US"} for i in range(1, subjects + 1)])
    us.dispose()
    data_map = {
        "version": 1,
        "state": "sqlite:///.domicile/state.db",
        "stores": {
            "sg": {"url": urls["sg"], "labels": {"country": "SG"}},
            "us": {"url": urls["us"], "labels": {"country": "US"}},
        },
        "subjects": {"dataset": "users", "id": "id", "country": "country"},
        "jurisdictions": {
            "US": {"countries": ["US"], "allowed": {"country": "US"}, "home": ["us"]}
        },
        "datasets": {
            "users": {"table": "users", "key": ["id"], "owner": "id"},
            "events": {"table": "events", "key": ["id"], "owner": "user_id"},
            "items": {"table": "items", "key": ["id"], "owner": "event_id -> events.id -> user_id"},
        },
    }
    path = tmp / backend / "domicile.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(data_map, sort_keys=False))
    return path, urls["sg"]


def insert_rows(url: str, table: str, start: int, rows: int, commit_each: bool) -> float:
    """Seconds to insert *rows* rows, one single-row INSERT each, in one transaction
    (or each in its own, *commit_each*)."""
    engine = sa.create_engine(url)
    raw: Any = engine.raw_connection()
    try:
        mark = "?" if engine.dialect.name == "sqlite" else "%s"
        cur = raw.cursor()
        if table.endswith("events"):
            sql = f"INSERT INTO {table} (id, user_id, body) VALUES ({mark}, {mark}, {mark})"
            values = [(start + i, 20_000_000 + i, "b") for i in range(rows)]
        else:  # an item of one of the 1,000 events, whose owners are not guarded
            sql = f"INSERT INTO {table} (id, event_id, sku) VALUES ({mark}, {mark}, {mark})"
            values = [(start + i, 1 + i % 1000, "s") for i in range(rows)]
        t0 = time.perf_counter()
        for v in values:
            cur.execute(sql, v)
            if commit_each:
                raw.commit()
        raw.commit()
        return time.perf_counter() - t0
    finally:
        raw.close()
        engine.dispose()


def bench(backend: str, args: argparse.Namespace, tmp: Path) -> list[tuple[str, str, float, float]]:
    made: list[tuple[str, str]] = []
    try:
        path, sg = build(backend, tmp, args.subjects, made)
        (guard,) = [s for s in api.guard_install(path) if s.store == "sg"]
        assert guard.refused == args.subjects and set(guard.tables) == {"events", "items"}
        out = []
        for kind, table in (("column", "events"), ("path (1 hop)", "items")):
            best = {"plain": float("inf"), "guarded": float("inf")}
            start = 100_000
            for run in range(args.runs):
                order = [f"plain_{table}", table] if run % 2 == 0 else [table, f"plain_{table}"]
                for name in order:
                    seconds = insert_rows(sg, name, start, args.rows, args.commit_each)
                    key = "plain" if name.startswith("plain_") else "guarded"
                    best[key] = min(best[key], seconds)
                start += args.rows
            out.append((backend, kind, best["plain"], best["guarded"]))
        api.guard_remove(path)
        return out
    finally:
        drop_dbs(made)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--subjects", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--commit-each", action="store_true", help="Commit after every INSERT (as most apps do)."
    )
    parser.add_argument(
        "--backend",
        nargs="+",
        default=["sqlite", "postgresql", "mysql"],
        choices=["sqlite", "postgresql", "mysql"],
    )
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backend:
            print(f"{backend}: {args.rows:,} inserts x {args.runs} runs ...", file=sys.stderr)
            results += bench(backend, args, Path(tmp))
    how = "each committed" if args.commit_each else "in one transaction"
    print(f"\n{args.rows:,} single-row INSERTs {how}, {args.subjects:,} guarded subjects")
    print(f"{'engine':<11} {'owner':<13} {'plain µs/row':>13} {'guarded µs/row':>15} {'ratio':>7}")
    for backend, kind, plain, guarded in results:
        p, g = plain / args.rows * 1e6, guarded / args.rows * 1e6
        print(f"{backend:<11} {kind:<13} {p:>13.1f} {g:>15.1f} {g / p:>6.2f}x")


if __name__ == "__main__":
    main()
