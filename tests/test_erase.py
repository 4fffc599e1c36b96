"""Deleted means gone from the files where the engine allows it.

SQLite connections delete with ``secure_delete`` (the deleted cells are
overwritten), so a moved row's text is no longer in the source file even
without ``run --vacuum``; ``--vacuum`` then rebuilds the file smaller.  On
PostgreSQL ``--vacuum`` rewrites each table the run deleted from (``VACUUM
FULL``: a new file node) and MariaDB rebuilds it (``OPTIMIZE TABLE``).
Everything is checked with our own reads: file bytes, ``page_count``,
``pg_relation_filenode``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from sqlalchemy.engine import make_url

from domicile.cli import run_cli


def _fleet(tmp_path: Path, source: str, home: str, marker: str) -> Path:
    md = sa.MetaData()
    users = sa.Table(
        "users",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("country", sa.String(40)),
        sa.Column("note", sa.Text),
    )
    rows = [
        {"id": i, "country": "US" if i % 3 else "SG", "note": f"{marker}-{i}-" + "x" * 200}
        for i in range(1, 301)
    ]
    for url, with_rows in ((source, True), (home, False)):
        engine = sa.create_engine(url)
        md.create_all(engine)
        if with_rows:
            with engine.begin() as conn:
                conn.execute(users.insert(), rows)
        engine.dispose()
    m = {
        "version": 1,
        "state": "sqlite:///.domicile/state.db",
        "stores": {
            "sg": {"url": source, "labels": {"country": "SG", "operator": "legacy"}},
            "us": {"url": home, "labels": {"country": "US", "operator": "custodian"}},
        },
        "subjects": {"dataset": "users", "id": "id", "country": "country"},
        "jurisdictions": {
            "US": {"countries": ["US"], "allowed": {"country": "US"}, "home": ["us"]}
        },
        "datasets": {"users": {"table": "users", "key": ["id"], "owner": "id"}},
    }
    path = tmp_path / "domicile.yaml"
    path.write_text(yaml.safe_dump(m, sort_keys=False))
    return path


def _file(url: str) -> Path:
    return Path(make_url(url).database or "")


def _page_count(url: str) -> int:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        n = int(conn.exec_driver_sql("PRAGMA page_count").scalar_one())
    engine.dispose()
    return n


def _count(url: str, where: str) -> int:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        n = int(conn.execute(sa.text(f"SELECT count(*) FROM users WHERE {where}")).scalar_one())
    engine.dispose()
    return n


@pytest.mark.parametrize("vacuum", [False, True], ids=["delete", "vacuum"])
def test_sqlite_source_file_keeps_no_bytes_of_moved_rows(
    tmp_path: Path, make_db: Callable[[str], str], vacuum: bool
) -> None:
    marker = f"erase-{uuid.uuid4().hex}"
    source, home = make_db("sqlite"), make_db("sqlite")
    path = _fleet(tmp_path, source, home, marker)
    pages = _page_count(source)
    moving = [f"{marker}-{i}-".encode() for i in range(1, 301) if i % 3]
    staying = [f"{marker}-{i}-".encode() for i in range(1, 301) if not i % 3]
    assert all(m in _file(source).read_bytes() for m in moving[:5])
    args = ["run", "-c", str(path)] + (["--vacuum"] if vacuum else [])
    assert run_cli(args) == 0
    assert _count(source, "country = 'US'") == 0 and _count(home, "country = 'US'") == 200
    data = _file(source).read_bytes()
    assert not [m for m in moving if m in data], "a moved row's bytes are still in the file"
    assert all(m in data for m in staying), "the staying rows are intact"
    after = _page_count(source)
    if vacuum:
        assert after < pages, "VACUUM rebuilt the file without the free pages"
    else:
        # secure_delete zeroes the cells; their pages stay in the file (and domicile's
        # own small tables, the delete marks and the identity marker, are added)
        assert after >= pages
    assert all(m in _file(home).read_bytes() for m in moving[:5])


def _filenode(url: str) -> str:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        node = conn.exec_driver_sql("SELECT pg_relation_filenode('users')").scalar_one()
    engine.dispose()
    return str(node)


@pytest.mark.postgres
def test_postgresql_vacuum_rewrites_the_source_table(
    tmp_path: Path, make_db: Callable[[str], str]
) -> None:
    source, home = make_db("postgresql"), make_db("postgresql")
    path = _fleet(tmp_path, source, home, f"erase-{uuid.uuid4().hex}")
    before = _filenode(source)
    assert run_cli(["run", "-c", str(path), "--vacuum"]) == 0
    assert _count(source, "country = 'US'") == 0 and _count(source, "country = 'SG'") == 100
    assert _filenode(source) != before, "VACUUM FULL wrote the table to a new file"


@pytest.mark.mysql
def test_mariadb_vacuum_optimizes_the_source_table(
    tmp_path: Path, make_db: Callable[[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    source, home = make_db("mysql"), make_db("mysql")
    path = _fleet(tmp_path, source, home, f"erase-{uuid.uuid4().hex}")
    assert run_cli(["run", "-c", str(path), "--vacuum"]) == 0
    out = capsys.readouterr().out
    assert "note: compacting" not in out, out
    assert _count(source, "country = 'SG'") == 100 and _count(home, "country = 'US'") == 200
