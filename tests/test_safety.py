"""The protocol's assumptions, each broken on purpose: nothing may be lost, silently or not.

One test per situation that lost records in earlier versions (see the
protocol issue): a second process, two names for one database, a key that
is not unique, one key from two sources, two datasets on one table, a home
that lost rows after the verify, an edited journal, a stale home copy that
would come back, and user columns named like domicile's own aliases.  Each
checks by its own SQL that no record was lost, duplicated or brought back;
where a situation cannot be made safe, a refusal (exit 2, nothing changed)
is the pass.
"""

from __future__ import annotations

import hashlib
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from crashrun import command
from domicile.cli import run_cli
from domicile.run import hooks

US_USERS = [(1, "Ann", "US"), (2, "Bob", "usa"), (3, "Cy", "United States")]
OTHER_USERS = [(4, "Dora", "BR"), (5, "Eve", "FR")]


def _table_defs(md: sa.MetaData, *, unique_key: bool = True, extra: list[str] = ()) -> None:
    sa.Table(
        "users",
        md,
        sa.Column("id", sa.Integer, primary_key=unique_key, autoincrement=False),
        sa.Column("name", sa.String(40)),
        sa.Column("country", sa.String(40)),
        *[sa.Column(c, sa.String(40)) for c in extra],
    )
    sa.Table(
        "posts",
        md,
        sa.Column("id", sa.Integer, primary_key=unique_key, autoincrement=False),
        sa.Column("user_id", sa.Integer),
        sa.Column("body", sa.String(100)),
    )


def _build(
    tmp: Path,
    urls: dict[str, str],
    *,
    rows: dict[str, dict[str, list[dict[str, Any]]]] | None = None,
    unique_key: bool = True,
    extra: list[str] = (),
    edit: Callable[[dict[str, Any]], None] | None = None,
) -> Path:
    """Stores sg (legacy) [+ va (legacy)] and us (home); returns the map's path."""
    if rows is None:
        rows = {
            "sg": {
                "users": [{"id": i, "name": n, "country": c} for i, n, c in US_USERS + OTHER_USERS],
                "posts": [{"id": 10 + i, "user_id": i, "body": f"post {i}"} for i in range(1, 6)],
            },
            "us": {"users": [], "posts": []},
        }
    for store, tables in rows.items():
        md = sa.MetaData()
        _table_defs(md, unique_key=unique_key, extra=extra)
        engine = sa.create_engine(urls[store])
        md.create_all(engine)
        with engine.begin() as conn:
            for name, data in tables.items():
                if data:
                    conn.execute(md.tables[name].insert(), data)
        engine.dispose()
    stores = {
        name: {
            "url": urls[name],
            "labels": {"country": "US" if name == "us" else "SG", "operator": "x"},
        }
        for name in urls
    }
    data = {
        "version": 1,
        "stores": stores,
        "subjects": {"dataset": "users", "id": "id", "country": "country"},
        "jurisdictions": {
            "US": {"countries": ["US"], "allowed": {"country": "US"}, "home": ["us"]}
        },
        "datasets": {
            "users": {"table": "users", "key": ["id"], "owner": "id"},
            "posts": {"table": "posts", "key": ["id"], "owner": "user_id"},
        },
    }
    if edit is not None:
        edit(data)
    path = tmp / "domicile.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _rows(url: str, table: str) -> list[tuple[Any, ...]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(f"SELECT * FROM {table} ORDER BY 1"))]
    finally:
        engine.dispose()


def _everything(urls: dict[str, str]) -> dict[str, dict[str, list[tuple[Any, ...]]]]:
    out = {}
    for store, url in urls.items():
        out[store] = {}
        for t in ("users", "posts"):
            try:
                out[store][t] = _rows(url, t)
            except sa.exc.SQLAlchemyError:
                out[store][t] = []
    return out


def _cli(path: Path, *args: str) -> int:
    return run_cli([*args, "-c", str(path)])


def _sqlite(tmp: Path, name: str) -> str:
    return f"sqlite:///{tmp / name}.db"


def _urls(backend: str, make_db: Callable[[str], str], names: tuple[str, ...]) -> dict[str, str]:
    return {n: make_db(backend) for n in names}


def _wait_for_batches(tmp: Path, n: int) -> None:
    """Poll the journal until it holds *n* batches (the run is inside its pause)."""
    state = tmp / ".domicile" / "state.db"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if state.exists():
            try:
                if len(_rows(f"sqlite:///{state}", "domicile_batches")) >= n:
                    return
            except sa.exc.SQLAlchemyError:
                pass
        time.sleep(0.05)
    raise AssertionError(f"the run never journalled {n} batches")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _records(urls: dict[str, str]) -> dict[str, set[tuple[Any, ...]]]:
    """Every record of every store, by table (content included)."""
    out: dict[str, set[tuple[Any, ...]]] = {"users": set(), "posts": set()}
    for tables in _everything(urls).values():
        for t, rows in tables.items():
            out[t] |= set(rows)
    return out


# -- 1. a second process --------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_second_run_and_resume_of_a_held_run_are_refused(tmp_path, make_db, capsys, backend):
    urls = _urls(backend, make_db, ("sg", "us"))
    path = _build(tmp_path, urls)
    before = _records(urls)
    # paused long enough for the checks below on a loaded machine
    first = subprocess.Popen(
        command("run", "--batch-size", "1", "-c", str(path), pause="copied:1:20"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        state = tmp_path / ".domicile" / "state.db"
        deadline = time.monotonic() + 60
        run_id = None
        while time.monotonic() < deadline and run_id is None:
            if state.exists():
                try:
                    found = _rows(f"sqlite:///{state}", "domicile_runs")
                    run_id = found[0][0] if found else None
                except sa.exc.SQLAlchemyError:
                    pass
            time.sleep(0.1)
        assert run_id, "the first run never journalled itself"
        capsys.readouterr()
        assert _cli(path, "run") == 2
        err = capsys.readouterr().err
        assert "lease" in err and str(first.pid) in err, err
        assert _cli(path, "run", "--resume", run_id) == 2
        assert str(first.pid) in capsys.readouterr().err
    finally:
        out, _ = first.communicate(timeout=120)
    assert first.returncode == 0, out
    after = _records(urls)
    assert after == before  # the same records, none lost, none duplicated by content
    assert {r[0] for r in _rows(urls["us"], "users")} == {1, 2, 3}
    assert {r[0] for r in _rows(urls["sg"], "users")} == {4, 5}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_resume_right_after_kill_takes_the_lease_at_once(tmp_path, make_db, backend):
    urls = _urls(backend, make_db, ("sg", "us"))
    path = _build(tmp_path, urls)
    before = _records(urls)
    killed = subprocess.run(
        command("run", "--batch-size", "1", "-c", str(path), crash="verified:2"),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL
    runs = _rows(f"sqlite:///{tmp_path / '.domicile' / 'state.db'}", "domicile_runs")
    assert _cli(path, "run", "--resume", runs[0][0]) == 0
    assert _records(urls) == before
    assert _rows(urls["sg"], "posts") == [(14, 4, "post 4"), (15, 5, "post 5")]


# -- 2. two names for one database -----------------------------------------------------


def test_two_spellings_of_one_sqlite_file_are_refused(tmp_path, capsys):
    db = tmp_path / "sg.db"
    sa.create_engine(f"sqlite:///{db}").connect().close()
    urls = {"sg": "sqlite:///sg.db", "us": "sqlite:///./sg.db"}
    rows = {
        "sg": {
            "users": [{"id": i, "name": n, "country": c} for i, n, c in US_USERS],
            "posts": [],
        }
    }
    path = _build(tmp_path, {"sg": f"sqlite:///{db}"}, rows=rows)
    data = yaml.safe_load(path.read_text())
    data["stores"]["sg"]["url"] = urls["sg"]
    data["stores"]["us"] = {"url": urls["us"], "labels": {"country": "US", "operator": "x"}}
    path.write_text(yaml.safe_dump(data))
    digest = _sha(db)
    capsys.readouterr()
    for cmd in (["check"], ["run"], ["verify"]):
        assert _cli(path, *cmd) == 2, cmd
        err = capsys.readouterr().err
        assert "sg" in err and "us" in err, err
    assert _sha(db) == digest
    assert len(_rows(f"sqlite:///{db}", "users")) == 3


@pytest.mark.postgres
def test_localhost_and_127_0_0_1_for_one_postgres_database_are_refused(tmp_path, make_db, capsys):
    url = make_db("postgresql")
    other = sa.make_url(url).set(host="localhost").render_as_string(hide_password=False)
    rows = {"sg": {"users": [{"id": i, "name": n, "country": c} for i, n, c in US_USERS]}}
    path = _build(tmp_path, {"sg": url}, rows=rows)
    data = yaml.safe_load(path.read_text())
    data["stores"]["us"] = {"url": other, "labels": {"country": "US", "operator": "x"}}
    path.write_text(yaml.safe_dump(data))
    capsys.readouterr()
    assert _cli(path, "run") == 2
    assert "one" in capsys.readouterr().err.lower()
    assert len(_rows(url, "users")) == 3


@pytest.mark.mysql
def test_two_names_for_one_mariadb_schema_are_refused(tmp_path, make_db, capsys):
    url = make_db("mysql")
    other = sa.make_url(url).set(host="localhost").render_as_string(hide_password=False)
    rows = {"sg": {"users": [{"id": i, "name": n, "country": c} for i, n, c in US_USERS]}}
    path = _build(tmp_path, {"sg": url}, rows=rows)
    data = yaml.safe_load(path.read_text())
    data["stores"]["us"] = {"url": other, "labels": {"country": "US", "operator": "x"}}
    path.write_text(yaml.safe_dump(data))
    capsys.readouterr()
    assert _cli(path, "run") == 2
    assert len(_rows(url, "users")) == 3


# -- 3. a key that is not unique --------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mysql"])
def test_a_key_without_a_unique_index_is_refused(tmp_path, make_db, backend, capsys):
    urls = _urls(backend, make_db, ("sg", "us"))
    rows = {
        "sg": {
            # id 1 twice: a US user and a Brazilian user who must stay
            "users": [
                {"id": 1, "name": "Ann", "country": "US"},
                {"id": 1, "name": "Bruna", "country": "BR"},
            ],
            "posts": [],
        },
        "us": {"users": [], "posts": []},
    }
    path = _build(tmp_path, urls, rows=rows, unique_key=False)
    before = _everything(urls)
    capsys.readouterr()
    assert _cli(path, "run") == 2
    err = capsys.readouterr().err
    assert "unique" in err and "users" in err, err
    assert _everything(urls) == before


# -- 4. one key from two sources --------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_one_key_from_two_sources_is_a_conflict_never_an_overwrite(tmp_path, make_db, backend):
    urls = _urls(backend, make_db, ("sg", "va", "us"))
    rows = {
        "sg": {"users": [{"id": 1, "name": "Ann of SG", "country": "US"}], "posts": []},
        "va": {"users": [{"id": 1, "name": "Al of VA", "country": "US"}], "posts": []},
        "us": {"users": [], "posts": []},
    }
    path = _build(tmp_path, urls, rows=rows)
    for policy in ("fail", "overwrite", "keep-home"):
        data = yaml.safe_load(path.read_text())
        data["on_conflict"] = policy
        path.write_text(yaml.safe_dump(data))
        code = _cli(path, "run")
        assert code == 4, policy
        records = _records(urls)["users"]
        # both different records still exist somewhere
        assert {r[1] for r in records} >= {"Ann of SG", "Al of VA"}, (policy, records)
        runs = _rows(f"sqlite:///{tmp_path / '.domicile' / 'state.db'}", "domicile_runs")
        unfinished = [r[0] for r in runs if r[3] not in ("done", "abandoned")]
        for run_id in unfinished:
            assert _cli(path, "run", "--abandon", run_id) == 0


# -- 5. two datasets on one table -------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_datasets_on_one_table_are_refused(tmp_path, make_db, capsys, backend):
    urls = _urls(backend, make_db, ("sg", "us"))

    def twice(data: dict[str, Any]) -> None:
        data["datasets"]["posts_again"] = {"table": "posts", "key": ["id"], "owner": "user_id"}

    path = _build(tmp_path, urls, edit=twice)
    before = _everything(urls)
    capsys.readouterr()
    assert _cli(path, "run") == 2
    assert "posts" in capsys.readouterr().err
    assert _everything(urls) == before


def test_a_dataset_listed_twice_in_the_yaml_is_refused(tmp_path, make_db, capsys):
    urls = _urls("sqlite", make_db, ("sg", "us"))
    path = _build(tmp_path, urls)
    text = path.read_text().replace(
        "datasets:\n", "datasets:\n  posts: {table: users, key: [id], owner: id}\n", 1
    )
    path.write_text(text)
    before = _everything(urls)
    capsys.readouterr()
    assert _cli(path, "run") == 2
    assert "posts" in capsys.readouterr().err
    assert _everything(urls) == before


# -- 6. home loses rows after the verify ------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mysql"])
def test_rows_lost_at_home_after_verify_are_not_deleted_at_the_source(tmp_path, make_db, backend):
    urls = _urls(backend, make_db, ("sg", "us"))
    path = _build(tmp_path, urls)
    home = sa.create_engine(urls["us"])
    wiped: list[bool] = []
    seen: list[str] = []

    def lose_home_rows(point: str) -> None:
        # the first time a batch is verified, the home "fails over" to a replica
        # that never got the posts: every post at home is gone
        seen.append(point)
        if point == "verified" and seen.count("verified") == 2 and not wiped:
            with home.begin() as conn:
                conn.execute(sa.text("DELETE FROM posts"))
            wiped.append(True)

    with hooks.installed(lose_home_rows):
        code = _cli(path, "run", "--max-passes", "1")
    home.dispose()
    assert wiped
    assert code == 4  # incomplete: the lost rows were kept at the source
    records = _records(urls)
    for i in range(1, 6):
        assert (10 + i, i, f"post {i}") in records["posts"], f"post {10 + i} was lost"
    # and a second run brings them home for good
    assert _cli(path, "run") == 0
    assert {r[0] for r in _rows(urls["us"], "posts")} == {11, 12, 13}
    assert {r[0] for r in _rows(urls["sg"], "posts")} == {14, 15}


# -- 7. an edited journal ---------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_journal_edited_from_copying_to_verified_is_detected(tmp_path, make_db, capsys, backend):
    urls = _urls(backend, make_db, ("sg", "us"))
    # the state store on the same engine as the data: SQLite file, or a PostgreSQL database
    state_url = (
        f"sqlite:///{tmp_path / '.domicile' / 'state.db'}"
        if backend == "sqlite"
        else make_db("postgresql")
    )

    def state_at(data: dict[str, Any]) -> None:
        data["state"] = state_url

    path = _build(tmp_path, urls, edit=state_at)
    before = _records(urls)
    killed = subprocess.run(
        command("run", "--batch-size", "1", "-c", str(path), crash="copying:2"),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL
    state = sa.create_engine(state_url)
    with state.begin() as conn:
        edited = conn.execute(
            sa.text("UPDATE domicile_batches SET state = 'verified' WHERE state = 'copying'")
        ).rowcount
        run_id = conn.execute(sa.text("SELECT id FROM domicile_runs")).scalar_one()
    state.dispose()
    assert edited == 1
    capsys.readouterr()
    assert _cli(path, "run", "--resume", run_id) == 5
    err = capsys.readouterr().err
    assert "MAC" in err and "batch" in err, err
    for t in before:  # nothing lost
        assert before[t] <= _records(urls)[t]
    assert _cli(path, "audit", "verify") == 5


# -- 8. no resurrection -----------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_row_changed_after_its_copy_leaves_no_stale_copy_at_home(tmp_path, make_db, backend):
    urls = _urls(backend, make_db, ("sg", "us"))
    path = _build(tmp_path, urls)
    source = sa.create_engine(urls["sg"])
    changed: list[bool] = []
    seen: list[str] = []

    def app_edits(point: str) -> None:
        seen.append(point)
        if point == "verified" and seen.count("verified") == 2 and not changed:
            with source.begin() as conn:
                conn.execute(sa.text("UPDATE posts SET body = 'edited' WHERE id = 11"))
            changed.append(True)

    with hooks.installed(app_edits):
        assert _cli(path, "run", "--max-passes", "1", "--batch-size", "100") == 4
    assert changed
    # the edited row stayed where it lives; home holds no copy of the old version
    assert (11, 1, "edited") in _rows(urls["sg"], "posts")
    assert all(r[0] != 11 for r in _rows(urls["us"], "posts"))
    # the application deletes the row where it lives: it must not come back anywhere
    with source.begin() as conn:
        conn.execute(sa.text("DELETE FROM posts WHERE id = 11"))
    source.dispose()
    assert all(r[0] != 11 for t in _everything(urls).values() for r in t["posts"])
    assert _cli(path, "run") == 0
    assert all(r[0] != 11 for t in _everything(urls).values() for r in t["posts"])


# -- 9. user columns named like domicile's aliases ----------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mysql"])
def test_user_columns_named_like_internal_aliases(tmp_path, make_db, backend):
    urls = _urls(backend, make_db, ("sg", "us"))
    extra = ["_k_id", "_dm_u0", "_dm_c0", "_dm_f0", "_k_0"]
    rows = {
        "sg": {
            "users": [
                {"id": i, "name": n, "country": c, **{e: f"{e}-{i}" for e in extra}}
                for i, n, c in US_USERS + OTHER_USERS
            ],
            "posts": [],
        },
        "us": {"users": [], "posts": []},
    }
    path = _build(tmp_path, urls, rows=rows, extra=extra)
    before = _records(urls)
    assert _cli(path, "run") == 0
    assert _records(urls) == before
    home = _rows(urls["us"], "users")
    assert [r[0] for r in home] == [1, 2, 3]
    for r in home:
        assert list(r[3:]) == [f"{e}-{r[0]}" for e in extra]


def test_a_resume_under_a_changed_map_is_refused(tmp_path, make_db, capsys):
    urls = _urls("sqlite", make_db, ("sg", "us"))
    path = _build(tmp_path, urls)
    killed = subprocess.run(
        command("run", "--batch-size", "1", "-c", str(path), crash="copied:2"),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL
    original = path.read_text()
    data = yaml.safe_load(original)
    data["datasets"]["posts"]["key"] = ["user_id"]
    path.write_text(yaml.safe_dump(data))
    runs = _rows(f"sqlite:///{tmp_path / '.domicile' / 'state.db'}", "domicile_runs")
    before = _everything(urls)
    capsys.readouterr()
    assert _cli(path, "run", "--resume", runs[0][0]) == 2
    assert "datasets.posts (key)" in capsys.readouterr().err
    assert _everything(urls) == before
    path.write_text(original)
    assert _cli(path, "run", "--resume", runs[0][0]) == 0


def test_sigterm_stops_the_run_resumably(tmp_path, make_db):
    urls = _urls("sqlite", make_db, ("sg", "us"))
    path = _build(tmp_path, urls)
    before = _records(urls)
    proc = subprocess.Popen(
        command("run", "--batch-size", "1", "-c", str(path), pause="copied:2:5"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    _wait_for_batches(tmp_path, 2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 4, out
    assert "SIGTERM" in out
    runs = _rows(f"sqlite:///{tmp_path / '.domicile' / 'state.db'}", "domicile_runs")
    assert runs[0][2] is not None and runs[0][3] == "failed"  # finished_at, status
    for t in before:
        assert before[t] <= _records(urls)[t]
    assert _cli(path, "run", "--resume", runs[0][0]) == 0
    assert _records(urls) == before
