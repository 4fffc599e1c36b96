"""A Hypothesis state machine over the move protocol: random writes, runs, crashes and resumes.

What is modelled: a fleet of two stores, ``sg`` (legacy, labelled SG) and
``us`` (home of the US jurisdiction), each with ``users(id, name, country)``
and ``posts(id, user_id, body)``; posts belong to their user.  The
application's view is kept in a model of its own: every record it created,
with the content it last wrote, where it lives (``sg`` until domicile deleted
it there, ``us`` afterwards), every content it ever wrote under a key, and the
keys it deleted.  The application writes a record where it lives: at ``sg``
while the record is there (domicile's compare-and-delete keeps a row the
application changed), at ``us`` once it moved.

Steps, interleaved at random:

- application writes at the source: new users (US or not) and posts, a post's
  body or a user's name or country changed, a post, a user's posts or a user
  (with its posts) deleted;
- application writes at home: a moved record updated or deleted, a post added
  at home for a user who moved; and a home that lost the copies of rows still
  at the source (a fail-over, not an application write: the model is unchanged);
- a run, in process through ``run_cli``, with a small ``--batch-size`` and
  ``--max-passes``, or the resume of the unfinished run, or its abandonment.
  A hook installed at the protocol's points (``copying`` ... ``dataset-done``)
  raises :class:`Crash` (a ``BaseException``, like a kill -9 in process) at
  the n-th time a point is reached, or performs one of the writes above at
  that moment and lets the run go on.  A run is drawn only when there is work
  (a record of a US user at ``sg``, or an unfinished run): idle runs test little.

Invariants, by this test's own ``SELECT *`` of both stores (never by
domicile's reports), after every step and at every protocol point the run
reaches (except ``deleting``, which holds the stores' write locks):

1. No record lost: every record the application did not delete is where it
   lives with the content the application last wrote (at ``sg`` while it is
   there; at ``us`` once it left ``sg``); a record that left ``sg`` never
   comes back there, and ``sg`` holds nothing the application did not write.
2. No foreign content: a key at both stores is a copy domicile made of a row
   still at the source, so the home copy holds a content the application once
   wrote under that key (possibly stale while a run is unfinished); a copy
   exists only of a record whose owner was in the US at some time.  Once a
   run has finished (no unfinished run left), no key is at both stores.
3. No resurrection: a key the application deleted never reappears once it
   was gone from both stores; a copy left at home of a row the application
   deleted at the source (a crash between copy and delete) may exist only
   while a run is unfinished, and is gone when a run finishes.
4. After a run that exits 0 (done): every record of a US user is at ``us``
   only; records of users who were never in the US were never moved.

Exit codes are checked for the situation: 0 or 4 for a run (0 for a fresh
run that nothing disturbed), 2 for a new run beside an unfinished one, never
5.  ``teardown`` resumes or runs until done with no crash and checks 1-4.

The plain tests at the end replay, step by step through the same machine,
examples the state machine shrank failures to.
"""

from __future__ import annotations

import io
import itertools
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from domicile.cli import run_cli
from domicile.datamap import load_map
from domicile.run import hooks
from domicile.run.journal import Journal, RunRecord
from domicile.state import state_engine

TABLES = ("users", "posts")
US = ("US", "usa")  # both spellings normalise to the US
COUNTRIES = ("US", "BR", "usa", "FR", "SG")
POINTS = ("copying", "copied", "verified", "deleting", "done", "dataset-done")
# app writes from the hook avoid "deleting": the source and home write locks are held there
WRITE_POINTS = tuple(p for p in POINTS if p != "deleting")
SOURCE_WRITES = (
    "update_post",
    "delete_post",
    "insert_post",
    "insert_user",
    "update_user",
    "delete_user_posts",
    "delete_user",
)
HOME_WRITES = ("update_post_home", "delete_post_home", "update_user_home", "insert_post_home")
HOME_FAILURES = ("home_lose",)


class Crash(BaseException):
    """The process dies here (raised by the hook; run_cli does not catch it)."""


class Violation(BaseException):
    """An invariant failed inside the hook; carried out of domicile untouched."""


# -- the fleet ------------------------------------------------------------------------


def _tables(md: sa.MetaData) -> None:
    sa.Table(
        "users",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(40)),
        sa.Column("country", sa.String(40)),
    )
    sa.Table(
        "posts",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("user_id", sa.Integer),
        sa.Column("body", sa.String(100)),
    )


def _build(directory: Path, urls: dict[str, str], rows: dict[str, list[dict[str, Any]]]) -> Path:
    """sg holds *rows*, us is empty; the map (as tests/test_safety.py builds it)."""
    for store in ("sg", "us"):
        md = sa.MetaData()
        _tables(md)
        engine = sa.create_engine(urls[store], poolclass=sa.pool.NullPool)
        md.create_all(engine)
        if store == "sg":
            with engine.begin() as conn:
                for name, data in rows.items():
                    if data:
                        conn.execute(md.tables[name].insert(), data)
        engine.dispose()
    data = {
        "version": 1,
        "stores": {
            name: {
                "url": urls[name],
                "labels": {"country": "US" if name == "us" else "SG", "operator": "x"},
            }
            for name in ("sg", "us")
        },
        "subjects": {"dataset": "users", "id": "id", "country": "country"},
        "jurisdictions": {
            "US": {"countries": ["US"], "allowed": {"country": "US"}, "home": ["us"]}
        },
        "datasets": {
            "users": {"table": "users", "key": ["id"], "owner": "id"},
            "posts": {"table": "posts", "key": ["id"], "owner": "user_id"},
        },
    }
    path = directory / "domicile.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _read(engine: sa.Engine, table: str) -> dict[int, tuple[Any, ...]]:
    with engine.connect() as conn:
        return {r[0]: tuple(r) for r in conn.execute(sa.text(f"SELECT * FROM {table}"))}


# -- the model ------------------------------------------------------------------------


@dataclass
class Rec:
    """A record as the application wrote it last, and where it lives."""

    content: tuple[Any, ...]
    loc: str  # "sg" until domicile deleted it there, then "us"


@dataclass
class Event:
    """At the *nth* time the run reaches *point*: crash, or perform *kind*."""

    point: str
    nth: int
    kind: str
    pick: int = 0
    value: int = 0
    done: bool = field(default=False, compare=False)

    def __repr__(self) -> str:
        return f"Event({self.point!r}, {self.nth}, {self.kind!r}, {self.pick}, {self.value})"


EVENTS = st.lists(
    st.one_of(
        st.builds(Event, st.sampled_from(POINTS), st.integers(1, 4), st.just("crash")),
        st.builds(
            Event,
            st.sampled_from(WRITE_POINTS),
            st.integers(1, 4),
            st.sampled_from(SOURCE_WRITES + HOME_WRITES + HOME_FAILURES),
            st.integers(0, 99),
            st.integers(0, 99),
        ),
    ),
    min_size=1,
    max_size=2,
)


class Hook:
    """Installed for one run: checks the invariants at every point, then crashes or writes."""

    def __init__(self, machine: ProtocolMachine, events: list[Event]):
        self.machine = machine
        self.events = events
        self.counts: dict[str, int] = {}
        self.fired: list[Event] = []
        self.violation: Exception | None = None

    def __call__(self, name: str) -> None:
        self.counts[name] = n = self.counts.get(name, 0) + 1
        try:
            if name != "deleting":
                self.machine.observe(settled=False, where=f"at {name} #{n} of a run")
            for ev in self.events:
                if ev.done or ev.point != name or ev.nth != n:
                    continue
                ev.done = True
                self.fired.append(ev)
                if ev.kind == "crash":
                    raise Crash(f"crash at {name} #{n}")
                self.machine.act(ev.kind, ev.pick, ev.value)
        except Exception as exc:  # an invariant or a write failed: not domicile's to handle
            self.violation = exc
            raise Violation(str(exc)) from exc


class ProtocolMachine(RuleBasedStateMachine):
    """Subclassed per test with the database factory, a folder and the home's backend."""

    make_db: Callable[[str], str]
    folder: Path
    home_backend: str
    examples: Iterator[int]

    def __init__(self) -> None:
        super().__init__()
        self.engines: dict[str, sa.Engine] = {}
        self.alive: dict[str, dict[int, Rec]] = {t: {} for t in TABLES}
        self.deleted: dict[str, set[int]] = {t: set() for t in TABLES}
        self.gone: dict[str, set[int]] = {t: set() for t in TABLES}
        self.history: dict[str, dict[int, set[tuple[Any, ...]]]] = {t: {} for t in TABLES}
        self.ever_us: set[int] = set()  # users whose country was the US at some time
        self.post_owner: dict[int, int] = {}  # a post's user_id (never changed by the app)
        self.next_id = {"users": 11, "posts": 121}
        self.seq = 0
        self.unfinished = False  # a run crashed or stopped and was neither resumed nor abandoned
        self.healthy = False  # set once the fleet exists and while every check passed

    # -- set-up ---------------------------------------------------------------------

    @initialize(
        countries=st.lists(st.sampled_from(COUNTRIES), min_size=10, max_size=10),
        owners=st.lists(st.integers(1, 10), min_size=20, max_size=20),
    )
    def fleet(self, countries: list[str], owners: list[int]) -> None:
        directory = self.folder / f"example{next(self.examples)}"
        directory.mkdir()
        urls = {"sg": self.make_db("sqlite"), "us": self.make_db(self.home_backend)}
        users = [{"id": i, "name": f"u{i}", "country": c} for i, c in enumerate(countries, 1)]
        posts = [
            {"id": 101 + i, "user_id": u, "body": f"post {101 + i}"} for i, u in enumerate(owners)
        ]
        self.path = _build(directory, urls, {"users": users, "posts": posts})
        self.engines = {s: sa.create_engine(u, poolclass=sa.pool.NullPool) for s, u in urls.items()}
        for table, rows in (("users", users), ("posts", posts)):
            for r in rows:
                self._wrote(table, tuple(r.values()), "sg")
        self.healthy = True

    def teardown(self) -> None:
        try:
            if self.healthy:
                self._finish()
        finally:
            for engine in self.engines.values():
                engine.dispose()

    # -- application writes ---------------------------------------------------------

    @rule(
        writes=st.lists(
            st.tuples(st.sampled_from(SOURCE_WRITES), st.integers(0, 99), st.integers(0, 99)),
            min_size=1,
            max_size=3,
        )
    )
    def write_at_source(self, writes: list[tuple[str, int, int]]) -> None:
        self.healthy = False
        for kind, pick, value in writes:
            self.act(kind, pick, value)
        self.healthy = True

    @rule(
        kind=st.sampled_from(HOME_WRITES + HOME_FAILURES),
        pick=st.integers(0, 99),
        value=st.integers(0, 99),
    )
    def write_at_home(self, kind: str, pick: int, value: int) -> None:
        self.healthy = False
        self.act(kind, pick, value)
        self.healthy = True

    def act(self, kind: str, pick: int, value: int) -> None:
        """One application write (or a home failure); a no-op when nothing fits."""
        self.seq += 1
        users, posts = self.alive["users"], self.alive["posts"]

        def choose(table: str, where: str | None) -> int | None:
            keys = sorted(k for k, r in self.alive[table].items() if where in (None, r.loc))
            return keys[pick % len(keys)] if keys else None

        if kind == "insert_user":
            key = self._new_id("users")
            self._insert("sg", "users", (key, f"u{key}", COUNTRIES[value % len(COUNTRIES)]))
            for _ in range(value % 3):  # and its first posts
                post = self._new_id("posts")
                self._insert("sg", "posts", (post, key, f"new {self.seq}"))
        elif kind in ("insert_post", "insert_post_home"):
            where = "sg" if kind == "insert_post" else "us"
            owner = choose("users", None if where == "sg" else "us")
            if owner is not None:
                key = self._new_id("posts")
                self._insert(where, "posts", (key, owner, f"new {self.seq}"))
        elif kind in ("update_post", "update_post_home"):
            key = choose("posts", "sg" if kind == "update_post" else "us")
            if key is not None:
                old = posts[key].content
                self._update("posts", (old[0], old[1], f"edit {self.seq}"))
        elif kind in ("update_user", "update_user_home"):
            key = choose("users", "sg" if kind == "update_user" else "us")
            if key is not None:
                old = users[key].content
                if value % 2:
                    new = (key, old[1], COUNTRIES[(value // 2) % len(COUNTRIES)])
                else:
                    new = (key, f"name {self.seq}", old[2])
                self._update("users", new)
        elif kind in ("delete_post", "delete_post_home"):
            key = choose("posts", "sg" if kind == "delete_post" else "us")
            if key is not None:
                self._delete("posts", key)
        elif kind in ("delete_user_posts", "delete_user"):
            owner = choose("users", None)
            if owner is not None:
                for key in sorted(k for k, r in posts.items() if r.content[1] == owner):
                    self._delete("posts", key)
                if kind == "delete_user":
                    self._delete("users", owner)
        elif kind == "home_lose":
            # a fail-over to a replica that never got some copies of rows still at the source
            homes = {t: _read(self.engines["us"], t) for t in TABLES}
            dups = sorted(
                (t, k) for t in TABLES for k, r in self.alive[t].items()
                if r.loc == "sg" and k in homes[t]
            )  # fmt: skip
            if not dups:
                return
            lost = dups if value % 2 else dups[pick % len(dups) : pick % len(dups) + 1]
            with self.engines["us"].begin() as conn:
                for t, k in lost:
                    conn.execute(sa.text(f"DELETE FROM {t} WHERE id = :k"), {"k": k})
        else:
            raise AssertionError(f"unknown write {kind}")

    def _new_id(self, table: str) -> int:
        key = self.next_id[table]
        self.next_id[table] += 1
        return key

    def _wrote(self, table: str, content: tuple[Any, ...], loc: str) -> None:
        self.alive[table][content[0]] = Rec(content, loc)
        self.history[table].setdefault(content[0], set()).add(content)
        if table == "users" and content[2] in US:
            self.ever_us.add(content[0])
        if table == "posts":
            self.post_owner[content[0]] = content[1]

    def _insert(self, where: str, table: str, content: tuple[Any, ...]) -> None:
        cols = ("id", "name", "country") if table == "users" else ("id", "user_id", "body")
        with self.engines[where].begin() as conn:
            conn.execute(
                sa.text(f"INSERT INTO {table} VALUES ({', '.join(':' + c for c in cols)})"),
                dict(zip(cols, content, strict=True)),
            )
        self._wrote(table, content, where)

    def _update(self, table: str, content: tuple[Any, ...]) -> None:
        where = self.alive[table][content[0]].loc
        sets = "name = :a, country = :b" if table == "users" else "user_id = :a, body = :b"
        with self.engines[where].begin() as conn:
            done = conn.execute(
                sa.text(f"UPDATE {table} SET {sets} WHERE id = :k"),
                {"k": content[0], "a": content[1], "b": content[2]},
            ).rowcount
        assert done == 1, f"{table} {content[0]} is not at {where}, where it lives"
        self._wrote(table, content, where)

    def _delete(self, table: str, key: int) -> None:
        where = self.alive[table][key].loc
        with self.engines[where].begin() as conn:
            done = conn.execute(sa.text(f"DELETE FROM {table} WHERE id = :k"), {"k": key}).rowcount
        assert done == 1, f"{table} {key} is not at {where}, where it lives"
        del self.alive[table][key]
        self.deleted[table].add(key)

    # -- runs -----------------------------------------------------------------------

    def _work_to_do(self) -> bool:
        """An unfinished run, or a record of a US user at sg (an idle run tests little)."""
        users = self.alive["users"]
        return self.unfinished or any(
            rec.loc == "sg" and users[k if t == "users" else rec.content[1]].content[2] in US
            for t in TABLES
            for k, rec in self.alive[t].items()
        )

    @precondition(lambda self: self._work_to_do())
    @rule(
        batch=st.integers(1, 5),
        passes=st.integers(1, 3),
        events=EVENTS,
        abandon=st.booleans(),
        try_new=st.booleans(),
    )
    def run(
        self, batch: int, passes: int, events: list[Event], abandon: bool, try_new: bool
    ) -> None:
        self.healthy = False  # teardown does not pile a second failure on this one
        self._run(batch, passes, events, abandon, try_new)
        self.healthy = True

    def _run(
        self, batch: int, passes: int, events: list[Event], abandon: bool, try_new: bool
    ) -> None:
        args = ["run", "--batch-size", str(batch), "--max-passes", str(passes)]
        unfinished = self._unfinished()
        assert bool(unfinished) == self.unfinished
        if unfinished:
            run_id = unfinished[-1].id
            if try_new:  # a new run beside an unfinished one is refused; nothing changes
                before = self._everything()
                code, out = self._cli(*args)
                assert code == 2, f"a new run beside unfinished {run_id} exited {code}:\n{out}"
                assert self._everything() == before
            if abandon:
                code, out = self._cli("run", "--abandon", run_id)
                assert code == 0, out
                assert not self._unfinished()
                self.unfinished = False
                return
            args += ["--resume", run_id]
        hook = Hook(self, events)
        code: int | None
        try:
            with hooks.installed(hook):
                code, out = self._cli(*args)
        except Crash:
            code, out = None, ""
        except Violation:
            assert hook.violation is not None
            raise hook.violation from None
        left = self._unfinished()
        self.unfinished = bool(left)
        if code is None:
            assert left, "a run that crashed is not unfinished"
            return
        assert code in (0, 4), f"{' '.join(args)} exited {code}:\n{out}"
        if not unfinished and not hook.fired:
            assert code == 0, f"an undisturbed run did not finish:\n{out}"
        if code == 0:
            assert not left, f"run exited 0 but {left[-1].id} is unfinished"
        self.observe(settled=not left, where=f"after {' '.join(args)} (exit {code})")
        if code == 0:
            self._check_done()

    def _finish(self) -> None:
        """Resume or run, undisturbed, until a run is done; then check everything."""
        for _ in range(3):
            unfinished = self._unfinished()
            args = ["run", "--batch-size", "3", "--max-passes", "5"]
            if unfinished:
                args += ["--resume", unfinished[-1].id]
            code, out = self._cli(*args)
            assert code in (0, 4), f"{' '.join(args)} exited {code}:\n{out}"
            if code == 0:
                break
        assert code == 0, f"three undisturbed runs did not finish:\n{out}"
        assert not self._unfinished()
        self.observe(settled=True, where="after the final run")
        self._check_done()

    def _cli(self, *args: str) -> tuple[int, str]:
        out = io.StringIO()
        with _no_terminal(), redirect_stdout(out), redirect_stderr(out):
            code = run_cli([*args, "-c", str(self.path)])
        assert code != 5, f"tampering reported:\n{out.getvalue()}"
        return code, out.getvalue()

    def _unfinished(self) -> list[RunRecord]:
        m = load_map(self.path)
        engine = state_engine(m.state, m.base_dir)
        try:
            return Journal(engine).unfinished()
        finally:
            engine.dispose()

    def _everything(self) -> dict[str, dict[str, dict[int, tuple[Any, ...]]]]:
        return {s: {t: _read(e, t) for t in TABLES} for s, e in self.engines.items()}

    # -- invariants -----------------------------------------------------------------

    @invariant()
    def consistent(self) -> None:
        if not self.engines:
            return
        self.healthy = False
        self.observe(settled=False, where="between steps")
        self.healthy = True

    def observe(self, *, settled: bool, where: str) -> None:
        """Check invariants 1-3 against both stores; learn which records domicile moved."""
        now = self._everything()
        for t in TABLES:
            source, home = now["sg"][t], now["us"][t]
            alive, deleted, gone, history = (
                self.alive[t], self.deleted[t], self.gone[t], self.history[t]
            )  # fmt: skip
            for k, c in source.items():
                assert k not in deleted, f"{where}: {t} {k}, deleted by the app, is at sg: {c}"
                assert k in alive, f"{where}: {t} {k} at sg was never written by the app: {c}"
                assert alive[k].loc == "sg", f"{where}: {t} {k} left sg but is back there: {c}"
                assert c == alive[k].content, (
                    f"{where}: {t} {k} at sg is {c}; the app wrote {alive[k].content}"
                )
            for k, rec in alive.items():
                if rec.loc == "sg" and k not in source:
                    rec.loc = "us"  # domicile deleted it at the source: it must be home
                if rec.loc == "us":
                    assert k in home, f"{where}: LOST {t} {k} {rec.content}: in no store"
                    assert home[k] == rec.content, (
                        f"{where}: LOST {t} {k}: us holds {home[k]}, the app wrote {rec.content}"
                    )
            for k, c in home.items():
                owner = k if t == "users" else self.post_owner.get(k)
                if k in alive and alive[k].loc == "sg":
                    state = f"{where}: {t} {k} is at sg as {alive[k].content} and at us as {c}"
                    assert c in history[k], f"{state}, content the app never wrote"
                    assert owner in self.ever_us, f"{state}: its owner was never in the US"
                    assert not settled, f"{state} after the run finished"
                elif k in deleted:
                    state = f"{where}: {t} {k}, deleted by the app, is at us as {c}"
                    assert k not in gone, f"{state}: RESURRECTED after it was gone everywhere"
                    assert c in history[k], f"{state}, content the app never wrote"
                    assert not settled, f"{state} after the run finished"
                else:
                    assert k in alive, f"{where}: {t} {k} at us was never written by the app: {c}"
            gone.update(k for k in deleted if k not in source and k not in home)

    def _check_done(self) -> None:
        """Invariant 4, after a run that exited 0."""
        users = self.alive["users"]
        for t in TABLES:
            for k, rec in self.alive[t].items():
                owner = k if t == "users" else rec.content[1]
                assert owner in users, f"{t} {k} belongs to user {owner}, who is not alive"
                if users[owner].content[2] in US:
                    assert rec.loc == "us", f"run done but {t} {k} of US user {owner} is at sg"
                if owner not in self.ever_us:
                    assert rec.loc == "sg", f"{t} {k} of never-US user {owner} was moved"


@contextmanager
def _no_terminal() -> Iterator[None]:
    """stdin is not a terminal: run_cli never prompts (it refuses instead)."""
    saved, sys.stdin = sys.stdin, io.StringIO("")
    try:
        yield
    finally:
        sys.stdin = saved


def _machine(
    make_db: Callable[[str], str], folder: Path, home_backend: str
) -> type[ProtocolMachine]:
    return type(
        "Protocol",
        (ProtocolMachine,),
        {
            "make_db": staticmethod(make_db),
            "folder": folder,
            "home_backend": home_backend,
            "examples": itertools.count(),
        },
    )


LONG = os.environ.get("DOMICILE_TEST_LONG", "") == "1"  # more examples (see conftest)
SETTINGS = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}


@pytest.mark.slow
def test_protocol_state_machine_sqlite(make_db, tmp_path):
    run_state_machine_as_test(
        _machine(make_db, tmp_path, "sqlite"),
        settings=settings(max_examples=60 if LONG else 20, stateful_step_count=12, **SETTINGS),
    )


@pytest.mark.slow
@pytest.mark.postgres
def test_protocol_state_machine_postgresql_home(make_db, tmp_path):
    run_state_machine_as_test(
        _machine(make_db, tmp_path, "postgresql"),
        settings=settings(max_examples=16 if LONG else 6, stateful_step_count=10, **SETTINGS),
    )


# -- examples the state machine shrank to, kept as plain tests ----------------------------


def _replay(
    make_db: Callable[[str], str], folder: Path, steps: Callable[[ProtocolMachine], None]
) -> None:
    machine = _machine(make_db, folder, "sqlite")()
    try:
        steps(machine)
    except BaseException:
        machine.healthy = False
        raise
    finally:
        machine.teardown()


def test_an_abandoned_runs_copy_of_a_row_the_app_deleted_does_not_come_back(make_db, tmp_path):
    # user 1 (US) and post 101 are copied home, the run dies before deleting them;
    # the app deletes post 101 where it lives (sg); the run is abandoned; a new run
    # moves user 1 and ends done -- and the copy of post 101 must not be at us.
    def steps(m: ProtocolMachine) -> None:
        m.fleet(countries=["US"], owners=[1])
        m.consistent()
        m.run(batch=5, passes=1, events=[Event("dataset-done", 2, "crash")], abandon=False,
              try_new=False)  # fmt: skip
        m.consistent()
        m.write_at_source(writes=[("delete_post", 0, 0)])
        m.consistent()
        m.run(batch=5, passes=1, events=[], abandon=True, try_new=False)
        m.consistent()

    _replay(make_db, tmp_path, steps)


def test_an_abandoned_runs_copy_of_a_user_who_left_the_us_is_removed(make_db, tmp_path):
    # user 1 (US) is copied home, the run dies before deleting it; the user moves to
    # BR (value 3) at sg, where the record lives; the run is abandoned; the next run
    # ends done -- and us must not keep the stale US copy (deleting the user at sg
    # would then leave that copy behind: a deleted record brought back).
    def steps(m: ProtocolMachine) -> None:
        m.fleet(countries=["US"], owners=[])
        m.consistent()
        m.run(batch=5, passes=1, events=[Event("verified", 1, "crash")], abandon=False,
              try_new=False)  # fmt: skip
        m.consistent()
        m.write_at_source(writes=[("update_user", 0, 3)])
        m.consistent()
        m.run(batch=5, passes=1, events=[], abandon=True, try_new=False)
        m.consistent()

    _replay(make_db, tmp_path, steps)


def test_a_row_the_app_deleted_after_a_crash_in_deleting_does_not_come_back(make_db, tmp_path):
    # the run journals "deleting" for post 101's batch and dies before the source
    # commits (the delete is rolled back); the app then deletes post 101 where it
    # lives (sg); the resume must remove domicile's copy at us, not take the missing
    # row for its own delete.
    def steps(m: ProtocolMachine) -> None:
        m.fleet(countries=["US"], owners=[1])
        m.consistent()
        m.run(batch=5, passes=1, events=[Event("deleting", 1, "crash")], abandon=False,
              try_new=False)  # fmt: skip
        m.consistent()
        m.write_at_source(writes=[("delete_post", 0, 0)])
        m.consistent()
        m.run(batch=5, passes=1, events=[], abandon=False, try_new=False)
        m.consistent()

    _replay(make_db, tmp_path, steps)
