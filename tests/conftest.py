"""Shared fixtures: real databases on the local servers, one fresh database per test.

PostgreSQL and MariaDB come from DOMICILE_TEST_POSTGRES / DOMICILE_TEST_MYSQL
(defaults: the local servers).  When a server cannot be reached the test is
skipped with a message naming it, except under CI=true, where that is a
failure: CI must exercise every backend.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa

from fixtures_s3 import *  # noqa: F403  (the SeaweedFS S3 server fixtures)

POSTGRES = os.environ.get(
    "DOMICILE_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
MYSQL = os.environ.get("DOMICILE_TEST_MYSQL", "mysql+pymysql://root@127.0.0.1:3306/mysql")
IN_CI = os.environ.get("CI", "").lower() == "true"

BACKENDS = ["sqlite", "postgresql", "mysql"]
LONG = os.environ.get("DOMICILE_TEST_LONG", "") == "1"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--campaign-rounds",
        type=int,
        default=None,
        help="tests/test_campaign.py: run the crash campaign for this many kills, no time budget",
    )


SURVIVED = "survived"  # user property: (kind, how many faults or inputs a test survived)


def tally(request: pytest.FixtureRequest, kind: str, n: int) -> None:
    """Count *n* faults (or hostile inputs) of *kind* that this test survived; the
    totals over the run are printed at the end of the pytest output."""
    request.node.user_properties.append((SURVIVED, (kind, int(n))))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the crash campaign's summary line (tests/test_campaign.py) and the faults and
    hostile inputs every test survived, in every run's output."""
    lines: set[str] = set()
    counted: dict[tuple[str, str], int] = {}  # (test, kind) -> n: one per test, every phase
    tests: dict[str, set[str]] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            for name, value in getattr(report, "user_properties", ()):
                if name == "campaign summary":
                    lines.add(str(value))
                elif name == SURVIVED and getattr(report, "passed", False):
                    kind, n = value
                    node = str(getattr(report, "nodeid", ""))
                    counted[(node, kind)] = max(counted.get((node, kind), 0), int(n))
                    tests.setdefault(kind, set()).add(node)
    for line in sorted(lines):
        terminalreporter.write_line(line)
    if counted:
        totals: dict[str, int] = {}
        for (_node, kind), n in counted.items():
            totals[kind] = totals.get(kind, 0) + n
        parts = [f"{kind} {totals[kind]:,} ({len(tests[kind])} tests)" for kind in sorted(totals)]
        terminalreporter.write_line("survived, in tests that passed: " + "; ".join(parts))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Variants marked ``long`` repeat a case another variant covers on a slower
    path (S3 round trips): they run with DOMICILE_TEST_LONG=1, so CI stays short."""
    if LONG:
        return
    skip = pytest.mark.skip(
        reason="a longer variant of a case another variant covers: DOMICILE_TEST_LONG=1 runs it"
    )
    for item in items:
        if "long" in item.keywords:
            item.add_marker(skip)


def _unavailable(what: str, exc: BaseException) -> None:
    message = f"{what} is not reachable ({exc.__class__.__name__}: {str(exc).splitlines()[0]})"
    if IN_CI:
        pytest.fail(f"{message}; CI must run every backend")
    pytest.skip(f"{message}; start it or set DOMICILE_TEST_POSTGRES / DOMICILE_TEST_MYSQL")


class DatabaseFactory:
    """Makes fresh databases on one server and drops them at the end."""

    def __init__(self, server_url: str, backend: str):
        self.server = sa.make_url(server_url)
        self.backend = backend
        self.admin = sa.create_engine(
            self.server, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5}
        )
        self.made: list[str] = []

    def ping(self) -> None:
        with self.admin.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def new(self, prefix: str = "dt") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with self.admin.connect() as conn:
            if self.backend == "postgresql":
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
            else:
                conn.execute(
                    sa.text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
                )
        self.made.append(name)
        return self.server.set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        with self.admin.connect() as conn:
            for name in self.made:
                if self.backend == "postgresql":
                    conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                else:
                    conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
        self.admin.dispose()


@pytest.fixture(scope="session")
def _pg_factory() -> Iterator[DatabaseFactory | BaseException]:
    factory = DatabaseFactory(POSTGRES, "postgresql")
    try:
        factory.ping()
    except Exception as exc:  # reported per test by _unavailable
        yield exc
        return
    yield factory
    factory.drop_all()


@pytest.fixture(scope="session")
def _mysql_factory() -> Iterator[DatabaseFactory | BaseException]:
    factory = DatabaseFactory(MYSQL, "mysql")
    try:
        factory.ping()
    except Exception as exc:
        yield exc
        return
    yield factory
    factory.drop_all()


@pytest.fixture
def make_db(request: pytest.FixtureRequest, tmp_path) -> Callable[[str], str]:  # type: ignore[no-untyped-def]
    """``make_db(backend)`` -> URL of a fresh, empty database on that backend."""

    def make(backend: str) -> str:
        if backend == "sqlite":
            path = tmp_path / f"db_{uuid.uuid4().hex[:8]}.db"
            sa.create_engine(f"sqlite:///{path}").connect().close()
            return f"sqlite:///{path}"
        fixture = "_pg_factory" if backend == "postgresql" else "_mysql_factory"
        factory = request.getfixturevalue(fixture)
        if isinstance(factory, BaseException):
            _unavailable("PostgreSQL" if backend == "postgresql" else "MariaDB/MySQL", factory)
        assert isinstance(factory, DatabaseFactory)
        return factory.new()

    return make


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Parametrises a test over SQLite, PostgreSQL and MariaDB."""
    return str(request.param)
