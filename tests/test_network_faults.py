"""Network faults: connections dropped, reset and stalled mid-run, and a server that stays away.

Every store is reached through a :class:`faultproxy.FaultProxy` (the state
store, SQLite, is not: the journal is local).  Faults are timed to protocol
steps with an in-process hook (:func:`domicile.run.hooks.installed`) that arms
the proxy when the run reaches a batch state: the next bytes to the home
(mid-copy), the first statement of the compare-and-delete at the source, the
reply to its COMMIT (the server committed, the client cannot know), the home
read under lock of the delete step.  Each test then checks by its own reads,
through a second map that names the servers directly, that nothing was lost,
nothing deleted unverified and every invariant holds; a fault that lasts must
stop the run resumably (exit 4, a message and a hint, no traceback) and
``run --resume`` must finish it once the network heals.

The stores get ``read_timeout_seconds: 2`` (the client-side bound on waiting
for an answer), so that a stall longer than that is seen as a transient error
and retried within a test's time.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

import fleetkit
from conftest import tally
from domicile import api
from domicile.cli import run_cli
from domicile.datamap import load_map
from domicile.run import hooks
from domicile.run.context import RunOptions
from domicile.run.journal import Journal
from domicile.state import state_engine
from faultproxy import FaultProxy
from invariants import Snapshot, check_invariants, snapshot
from mediakit import (
    assert_objects,
    check_rows_point_home,
    expected_objects,
    hidden_leftovers,
    no_object_lost,
    object_snapshot,
)

pytestmark = pytest.mark.slow

BOUND_S = 2  # read_timeout_seconds of every store in these tests
SHORT_STALL_S = 0.5  # under the bound: the answer comes late, nothing fails
LONG_STALL_S = 2 * BOUND_S  # over it: the client gives up and tries again
SURVIVED: dict[str, int] = {}


class At:
    """A protocol hook: at the n-th time the run reaches a point, do something."""

    def __init__(self, plan: dict[tuple[str, int], Callable[[], object]]):
        self.plan = dict(plan)
        self.seen: dict[str, int] = {}
        self.done: list[tuple[str, int]] = []

    def __call__(self, name: str) -> None:
        self.seen[name] = n = self.seen.get(name, 0) + 1
        action = self.plan.pop((name, n), None)
        if action is not None:
            action()
            self.done.append((name, n))


def _run(capsys: pytest.CaptureFixture[str], hook: At | None, *args: str) -> tuple[int, str]:
    if hook is None:
        code = run_cli(list(args))
    else:
        with hooks.installed(hook):
            code = run_cli(list(args))
    out = capsys.readouterr()
    return code, out.out + out.err


def _move(hook: At, path: Path, batch_size: int) -> str:
    """Run in process with small backoff (the CLI's is 0.5 s); returns how it ended."""
    with hooks.installed(hook):
        result = api.run(path, RunOptions(batch_size=batch_size, backoff=0.05))
    return result.status


@pytest.fixture(autouse=True)
def _tally_faults(request: pytest.FixtureRequest) -> Iterator[None]:
    before = sum(SURVIVED.values())
    yield
    tally(
        request,
        "network faults (drops, resets, stalls, lost replies)",
        sum(SURVIVED.values()) - before,
    )


def _survived(test: str, *proxies: FaultProxy) -> int:
    n = sum(p.injected for p in proxies)
    SURVIVED[test] = n
    print(f"network faults survived: {n} ({test}; {sum(SURVIVED.values())} in this process)")
    return n


def _no_loss(truth: Path, before: Snapshot, now: Snapshot) -> None:
    """Mid-run (a run stopped): every record is somewhere with content it had, and a
    record gone from a store is at one of its homes (nothing deleted unverified)."""
    m = load_map(truth)
    homes = {h for j in m.jurisdictions.values() for h in j.home}
    for dataset, records in before.items():
        for key, places in records.items():
            here = now.get(dataset, {}).get(key, {})
            assert here, f"lost: {dataset} {key} was in {sorted(places)}, is nowhere now"
            assert set(here.values()) <= set(places.values()), (dataset, key, here)
            if set(places) - set(here):
                assert set(here) & homes, f"{dataset} {key} left {sorted(places)}, is not home"


def _unfinished(path: Path) -> list[Any]:
    m = load_map(path)
    return Journal(state_engine(m.state, m.base_dir)).unfinished()


# -- the proxy itself, against a real server --------------------------------------------


def _ssl_request(sock: socket.socket) -> None:
    """PostgreSQL's SSLRequest: the server answers one byte (``N`` or ``S``)."""
    sock.sendall(struct.pack("!ii", 8, 80877103))


def _only_one_open(proxy: FaultProxy) -> None:
    """Wait until the proxy has seen the previous client go (its close is asynchronous)."""
    deadline = time.monotonic() + 10
    while proxy.open_connections > 1 and time.monotonic() < deadline:
        time.sleep(0.01)


def test_proxy_forwards_drops_resets_stalls_and_refuses(make_db):
    url = make_db("postgresql")
    with FaultProxy.for_url(url, "postgresql") as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            _ssl_request(s)
            assert s.recv(1) in (b"N", b"S")
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            _ssl_request(s)
            assert s.recv(1) in (b"N", b"S")
            _only_one_open(proxy)
            assert proxy.drop() == 1
            assert s.recv(1) == b""  # a FIN: end of stream
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            _ssl_request(s)
            assert s.recv(1) in (b"N", b"S")
            _only_one_open(proxy)
            assert proxy.reset() == 1
            with pytest.raises(ConnectionResetError):
                s.recv(1)
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            proxy.stall(600)
            _ssl_request(s)
            s.settimeout(0.5)
            with pytest.raises(TimeoutError):  # held for the stall's 600 s
                s.recv(1)
            proxy.heal()
            s.settimeout(10)
            assert s.recv(1) in (b"N", b"S")  # and delivered when it ends
        proxy.refuse(True)
        # the RST can reach the client before its connect() returns, or at its first read
        with (
            pytest.raises(ConnectionResetError),
            socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s,
        ):
            s.recv(1)
        proxy.refuse(False)
        proxy.fault_on_connection(2, "reset")
        with (
            socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as first,
            socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as second,
        ):
            _ssl_request(first)
            assert first.recv(1) in (b"N", b"S")
            with pytest.raises(ConnectionResetError):
                second.recv(1)
        assert proxy.fired.is_set()
        proxy.fault_after(4, "drop", direction="up")
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            _ssl_request(s)  # 8 bytes: the count is crossed before the server sees them
            assert s.recv(1) == b""
        assert proxy.faults == {"drop": 2, "reset": 2, "stall": 1, "refused": 1}


# -- PostgreSQL and MariaDB -------------------------------------------------------------


@dataclass
class NetFleet:
    """The fleetkit fleet, sg (PostgreSQL) -> us (MariaDB) and ca (PostgreSQL), via proxies."""

    path: Path  # the map domicile runs with: every store through a proxy
    truth: Path  # the same stores named directly: the test's own reads
    pg: FaultProxy
    my: FaultProxy
    before: Snapshot = field(default_factory=dict)

    @property
    def proxies(self) -> tuple[FaultProxy, FaultProxy]:
        return self.pg, self.my


@pytest.fixture
def net_fleet(tmp_path: Path, make_db: Callable[[str], str]) -> Iterator[NetFleet]:
    urls = {"sg": make_db("postgresql"), "us": make_db("mysql"), "ca": make_db("postgresql")}
    fleetkit.build(tmp_path, urls)
    truth = tmp_path / "direct.yaml"
    (tmp_path / "domicile.yaml").rename(truth)
    pg = FaultProxy.for_url(urls["sg"], "postgresql")
    my = FaultProxy.for_url(urls["us"], "mariadb")
    data = fleetkit.data_map(
        {"sg": pg.url(urls["sg"]), "us": my.url(urls["us"]), "ca": pg.url(urls["ca"])}
    )
    for store in data["stores"].values():
        store["options"] = {"read_timeout_seconds": BOUND_S}
    path = tmp_path / "domicile.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    fleet = NetFleet(path, truth, pg, my)
    fleet.before = snapshot(truth)
    try:
        yield fleet
    finally:
        pg.close()
        my.close()


# A fault: (protocol point, n-th time), the proxy's name, where it lands, and its kind.
# Where: ("request", pattern) the request holding it never arrives, ("reply", pattern)
# its reply is lost (or held), ("down", n) the answer breaks after n bytes.
Fault = tuple[tuple[str, int], str, tuple[str, Any], str]
SHORT, LONG = "short-stall", "long-stall"

SQL_FAULTS: dict[str, list[Fault]] = {
    "drop-and-reset": [
        (("copying", 1), "pg", ("request", b"COPY "), "reset"),  # mid-copy, PostgreSQL home
        (("copying", 2), "my", ("request", b"INSERT"), "drop"),  # mid-copy, MariaDB home
        (("copied", 3), "my", ("down", 200), "reset"),  # the verify read's answer
        # mid-delete: the source's rows are locked and compared, its DELETE never arrives
        (("deleting", 2), "pg", ("request", b"DELETE"), "reset"),
        # the source committed the delete; the client cannot know
        (("deleting", 4), "pg", ("reply", b"COMMIT"), "drop"),
        # a later delete step's read under lock at MariaDB
        (("done", 5), "my", ("request", b"FOR UPDATE"), "reset"),
    ],
    "stalls": [  # over the bound at two (each costs its seconds), under it elsewhere
        (("copying", 2), "my", ("request", b"INSERT"), LONG),
        (("copied", 3), "my", ("down", 200), SHORT),
        (("deleting", 2), "pg", ("request", b"DELETE"), SHORT),
        # the client gives up on the COMMIT's reply; the COMMIT itself arrives late
        (("deleting", 4), "pg", ("reply", b"COMMIT"), LONG),
        (("done", 5), "my", ("request", b"FOR UPDATE"), SHORT),
    ],
}


def _arm(proxy: FaultProxy, where: tuple[str, Any], kind: str) -> Callable[[], None]:
    seconds = {SHORT: SHORT_STALL_S, LONG: LONG_STALL_S}.get(kind, 0.0)
    fault = "stall" if seconds else kind
    how, what = where

    def arm() -> None:
        if how == "request":
            proxy.fault_at_request(what, fault, seconds=seconds)
        elif how == "reply":
            proxy.lose_reply_to(what, fault, seconds=seconds)
        else:
            proxy.fault_after(what, fault, seconds=seconds, direction=how)

    return arm


def _plan(faults: list[Fault], proxies: dict[str, FaultProxy]) -> At:
    return At({point: _arm(proxies[name], where, kind) for point, name, where, kind in faults})


def _check_fired(hook: At, faults: list[Fault], proxies: dict[str, FaultProxy]) -> None:
    """Every planned point was reached and every armed fault fired."""
    assert not hook.plan, f"points not reached: {sorted(hook.plan)}"
    for name, proxy in proxies.items():
        wanted: dict[str, int] = {}
        for _point, n, _where, kind in faults:
            if n == name:
                k = "stall" if kind in (SHORT, LONG) else kind
                wanted[k] = wanted.get(k, 0) + 1
        got = {k: v for k, v in proxy.faults.items() if v}
        assert got == wanted, (name, got, wanted)
    if any(kind == LONG for *_rest, kind in faults):
        # the clients gave up on stalled connections (the bound works), then retried
        assert all(p.closed_while_stalled for p in proxies.values()), proxies


@pytest.mark.parametrize("variant", list(SQL_FAULTS))
def test_sql_faults_mid_copy_and_mid_delete_are_survived(net_fleet, variant):
    f = net_fleet
    proxies = {"pg": f.pg, "my": f.my}
    hook = _plan(SQL_FAULTS[variant], proxies)
    assert _move(hook, f.path, batch_size=1) == "done"
    _check_fired(hook, SQL_FAULTS[variant], proxies)
    check_invariants(f.truth, f.before, snapshot(f.truth))
    assert not _unfinished(f.path)
    _survived(f"sql-{variant}", *f.proxies)


def test_a_delete_lost_while_tidying_up_after_done_is_not_run_again(net_fleet):
    """Regression: the connection lost while a finished delete cleared its delete mark
    (after ``done`` was journalled) made the retry run the delete step again on a done
    batch: ``done -> deleting is not allowed``, and the run stopped."""
    f = net_fleet
    faults: list[Fault] = [
        (("done", 2), "pg", ("request", b"DELETE FROM domicile_delete_marks"), "reset")
    ]
    hook = _plan(faults, {"pg": f.pg, "my": f.my})
    assert _move(hook, f.path, batch_size=1) == "done"
    _check_fired(hook, faults, {"pg": f.pg, "my": f.my})
    check_invariants(f.truth, f.before, snapshot(f.truth))
    assert not _unfinished(f.path)
    _survived("sql-tidy-up-after-done", *f.proxies)


@pytest.mark.parametrize("side", ["home-mid-copy", "source-mid-delete"])
def test_sql_server_that_stays_away_stops_resumably_and_resume_completes(net_fleet, capsys, side):
    f = net_fleet
    proxy, point = (f.my, ("copying", 2)) if side == "home-mid-copy" else (f.pg, ("deleting", 2))

    def away() -> None:
        proxy.refuse(True)
        proxy.reset()

    hook = At({point: away})
    code, out = _run(capsys, hook, "run", "--batch-size", "1", "--retries", "3", "-c", str(f.path))
    assert hook.done == [point]
    assert code == 4, out
    assert "Traceback" not in out
    assert "gave up after 3 attempts" in out, out
    assert "resume with: domicile run --resume" in out, out
    assert proxy.faults["refused"] >= 2  # it was retried, then given up on
    runs = _unfinished(f.path)
    assert [r.status for r in runs] == ["failed"]
    _no_loss(f.truth, f.before, snapshot(f.truth))
    proxy.heal()
    code, out = _run(capsys, None, "run", "--resume", runs[0].id, "-c", str(f.path))
    assert code == 0, out
    check_invariants(f.truth, f.before, snapshot(f.truth))
    assert not _unfinished(f.path)
    _survived(f"sql-away-{side}", *f.proxies)


# -- S3 -----------------------------------------------------------------------------------


@dataclass
class MediaFleet:
    """Users in sg-main (SQLite) with videos (a blob each) and avatars (an object dataset)
    in a bucket media-sg; homes us-tx / media-us and ca-mtl / media-ca.  Every bucket is
    reached through one proxy in front of the session's S3 server."""

    path: Path
    truth: Path
    s3: FaultProxy


MEDIA_USERS = {1: "US", 2: "CA", 3: "US", 4: "SG", 5: "CA", 6: "US", 7: "SG", 8: "CA"}


def _media_map(tmp: Path, buckets: dict[str, str], options: dict[str, Any]) -> dict[str, Any]:
    def sql(name: str) -> str:
        return f"sqlite:///{tmp / f'{name}.db'}"

    labels = {
        "sg": {"country": "SG", "operator": "legacy"},
        "us": {"country": "US", "operator": "custodian"},
        "ca": {"country": "CA", "operator": "custodian"},
    }
    return {
        "version": 1,
        "state": "sqlite:///.domicile/state.db",
        "stores": {
            "sg-main": {"url": sql("sg-main"), "labels": labels["sg"]},
            "us-tx": {"url": sql("us-tx"), "labels": labels["us"]},
            "ca-mtl": {"url": sql("ca-mtl"), "labels": labels["ca"]},
            **{
                name: {"url": f"s3://{bucket}", "labels": labels[name[6:8]], "options": options}
                for name, bucket in buckets.items()
            },
        },
        "subjects": {"dataset": "users", "id": "id", "country": "country"},
        "jurisdictions": {
            code: {"countries": [code], "allowed": labels[code.lower()], "home": homes}
            for code, homes in (("US", ["us-tx", "media-us"]), ("CA", ["ca-mtl", "media-ca"]))
        },
        "datasets": {
            "users": {"table": "users", "key": ["id"], "owner": "id"},
            "videos": {
                "table": "videos",
                "key": ["id"],
                "owner": "user_id",
                "blobs": {"column": "media_key"},
            },
            "avatars": {"objects": "avatars/{owner}/*"},
        },
    }


@pytest.fixture
def media_fleet(tmp_path: Path, s3_server: Any) -> Iterator[MediaFleet]:
    md = sa.MetaData()
    users = sa.Table(
        "users",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("country", sa.String(8)),
    )
    videos = sa.Table(
        "videos",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("user_id", sa.Integer),
        sa.Column("visibility", sa.String(10)),
        sa.Column("media_key", sa.String(100)),
    )
    for name in ("sg-main", "us-tx", "ca-mtl"):
        engine = sa.create_engine(f"sqlite:///{tmp_path / f'{name}.db'}")
        if name == "sg-main":
            md.create_all(engine)
            with engine.begin() as conn:
                conn.execute(
                    users.insert(), [{"id": u, "country": c} for u, c in MEDIA_USERS.items()]
                )
                conn.execute(
                    videos.insert(),
                    [
                        {
                            "id": u,
                            "user_id": u,
                            "visibility": "private",
                            "media_key": f"videos/{u}.mp4",
                        }
                        for u in MEDIA_USERS
                    ],
                )
        engine.connect().close()
        engine.dispose()
    bucket = s3_server.make_bucket()  # one bucket, a prefix per store: buckets are slow to make
    buckets = {name: f"{bucket}/{name}" for name in ("media-sg", "media-us", "media-ca")}
    fs = s3_server.s3fs()
    blobs: dict[str, bytes] = {}
    for u in MEDIA_USERS:  # a few KB each, distinct bytes: every object is its own digest
        blobs[f"videos/{u}.mp4"] = bytes([u]) * 6000 + b"video"
        blobs[f"avatars/{u}/a.jpg"] = bytes([u]) * 3000 + b"avatar"
    fs.pipe({f"{buckets['media-sg']}/{k}": v for k, v in blobs.items()})
    truth = tmp_path / "direct.yaml"
    truth.write_text(yaml.safe_dump(_media_map(tmp_path, buckets, s3_server.options)))
    proxy = FaultProxy.for_url(s3_server.endpoint_url, "s3")
    proxied = {**s3_server.options, "endpoint_url": proxy.endpoint_url}
    path = tmp_path / "domicile.yaml"
    proxied["read_timeout_seconds"] = BOUND_S
    path.write_text(yaml.safe_dump(_media_map(tmp_path, buckets, proxied)))
    try:
        yield MediaFleet(path, truth, proxy)
    finally:
        proxy.close()


S3_FAULTS: dict[str, list[Fault]] = {
    "drop-and-reset": [
        (("copying", 2), "s3", ("request", b"PUT "), "drop"),  # an upload or a server copy
        (("copying", 5), "s3", ("down", 3000), "reset"),  # part-way through a download
        (("deleting", 2), "s3", ("request", b"DELETE "), "reset"),
        (("deleting", 4), "s3", ("reply", b"DELETE "), "drop"),  # deleted; the client can't know
    ],
    # Regression: a conditional DELETE stalled past the bound is sent again by botocore;
    # the first arrives late and deletes, the second is refused (412), and that refusal
    # was taken for the application's delete: the verified home copy was removed.
    "stalls": [
        (("copying", 2), "s3", ("request", b"PUT "), LONG),
        (("deleting", 2), "s3", ("request", b"DELETE "), LONG),
        (("copying", 5), "s3", ("down", 3000), SHORT),
        (("deleting", 4), "s3", ("reply", b"DELETE "), SHORT),
    ],
}


@pytest.mark.parametrize("variant", list(S3_FAULTS))
def test_s3_faults_mid_copy_and_mid_delete_are_survived(media_fleet, variant):
    f = media_fleet
    rows_before, objects_before = snapshot(f.truth), object_snapshot(f.truth)
    expected = expected_objects(f.truth, objects_before)
    hook = _plan(S3_FAULTS[variant], {"s3": f.s3})
    assert _move(hook, f.path, batch_size=2) == "done"
    _check_fired(hook, S3_FAULTS[variant], {"s3": f.s3})
    objects_after = object_snapshot(f.truth)
    no_object_lost(objects_before, objects_after)
    assert_objects(expected, objects_after)
    assert not hidden_leftovers(objects_after)
    assert check_rows_point_home(f.truth, objects_after) == len(MEDIA_USERS)
    check_invariants(f.truth, rows_before, snapshot(f.truth))
    _survived(f"s3-{variant}", f.s3)


def test_s3_endpoint_that_stays_away_stops_resumably_and_resume_completes(media_fleet, capsys):
    f = media_fleet
    rows_before, objects_before = snapshot(f.truth), object_snapshot(f.truth)
    expected = expected_objects(f.truth, objects_before)

    def away() -> None:
        f.s3.refuse(True)
        f.s3.reset()

    hook = At({("deleting", 2): away})
    code, out = _run(capsys, hook, "run", "--batch-size", "2", "--retries", "2", "-c", str(f.path))
    assert hook.done == [("deleting", 2)]
    assert code == 4, out
    assert "Traceback" not in out
    assert "gave up after 2 attempts" in out, out
    assert "resume with: domicile run --resume" in out, out
    runs = _unfinished(f.path)
    assert [r.status for r in runs] == ["failed"]
    no_object_lost(objects_before, object_snapshot(f.truth))
    _no_loss(f.truth, rows_before, snapshot(f.truth))
    f.s3.heal()
    code, out = _run(capsys, None, "run", "--resume", runs[0].id, "-c", str(f.path))
    assert code == 0, out
    objects_after = object_snapshot(f.truth)
    assert_objects(expected, objects_after)
    assert not hidden_leftovers(objects_after)
    check_invariants(f.truth, rows_before, snapshot(f.truth))
    _survived("s3-away", f.s3)
