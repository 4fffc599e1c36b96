"""End to end on a real-looking schema: the DVD rental shop of Sakila / Pagila (tests/rentalkit.py).

A legacy store in Singapore holds the whole shop; the US, Canadian and
Australian customers (their addresses, rentals and payments) must go to
empty homes, with the shop's catalogues (country, city, staff, store, film,
inventory) copied where their foreign keys need them.  The subject's country
is three hops away (customer -> address -> city -> country) and ``address``
is owned the other way round.

Every test checks results by its own SQL over the stores (rentalkit's
readers), never by domicile's report; domicile's figures (census, plan) are
compared with counts the test computed itself.  Parametrised over engine
pairs legacy -> homes.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import rentalkit as rk
from domicile.cli import run_cli

PAIRS = [
    ("sqlite", "sqlite"),
    ("postgresql", "postgresql"),
    ("sqlite", "postgresql"),
    ("postgresql", "mysql"),
]
PAIR_IDS = [f"{a}-{b}" for a, b in PAIRS]


@pytest.fixture(autouse=True)
def _close_readers() -> Iterator[None]:
    yield
    rk.dispose_engines()


@pytest.fixture(params=PAIRS, ids=PAIR_IDS)
def pair(request: pytest.FixtureRequest) -> tuple[str, str]:
    return request.param  # type: ignore[no-any-return]


@dataclass
class Shop:
    """One legacy store, three empty homes, a state store and the map."""

    legacy: str
    homes: dict[str, str]
    state: str
    path: Path
    expected: rk.Expected
    engines: tuple[str, str]
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def stores(self) -> dict[str, str]:
        return {"legacy": self.legacy, **self.homes}

    @property
    def same_engine(self) -> bool:
        return self.engines[0] == self.engines[1]

    def rewrite(self, data: dict[str, Any]) -> None:
        self.data = data
        rk.write_map(self.path.parent, data, self.path.name)


def _shop(tmp_path: Path, make_db: Any, pair: tuple[str, str], **build: Any) -> Shop:
    legacy_engine, home_engine = pair
    legacy = make_db(legacy_engine)
    expected = rk.build_legacy(legacy, **build)
    homes = {home: make_db(home_engine) for _, home in rk.JURISDICTIONS.values()}
    state = f"sqlite:///{tmp_path / 'state.db'}"
    data = rk.data_map(legacy, homes, state)
    path = rk.write_map(tmp_path, data)
    return Shop(legacy, homes, state, path, expected, pair, data)


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = run_cli(list(args))
    out = capsys.readouterr()
    return code, out.out, out.out + out.err


def _tail(output: str, lines: int = 12) -> str:
    """The lines of a long command output that say what happened (errors, hints, the end)."""
    text = output.splitlines()
    said = [t for t in text if re.search(r"error|hint:|incomplete:|^run \S+:|conflict", t)]
    return "\n".join([*said[:20], "...", *text[-lines:]])


def _run_status(output: str) -> str | None:
    """The status word of ``run ID: STATUS in ...``, the run's last line of record."""
    found = re.findall(r"^run \S+: (\w+) in ", output, flags=re.M)
    return found[-1] if found else None


def _assert_run_done(capsys: pytest.CaptureFixture[str], shop: Shop) -> str:
    code, _, out = _cli(capsys, "run", "-c", str(shop.path))
    assert code == 0, _tail(out)
    assert _run_status(out) in ("done", "complete"), _tail(out)
    return out


class Checks:
    """Named checks that all run; the test fails once, listing every failed one."""

    def __init__(self) -> None:
        self.failed: list[str] = []

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        try:
            yield
        except AssertionError as exc:
            self.failed.append(f"[{name}] {str(exc)[:1500]}")

    def assert_all(self) -> None:
        assert not self.failed, "\n".join(self.failed)


# ---------------------------------------------------------------------------
# What must move, computed from the legacy store before anything happens.


@dataclass(frozen=True)
class Placement:
    """Keys per (table, jurisdiction): what must end at that jurisdiction's home."""

    moving: dict[tuple[str, str], set[int]]
    staying: dict[str, set[int]]  # table -> keys of unrestricted/unknown customers

    def home_of(self, table: str, key: int) -> str | None:
        for (t, j), ks in self.moving.items():
            if t == table and key in ks:
                return rk.JURISDICTIONS[j][1]
        return None


def _placement(legacy_rows: dict[str, dict[int, dict[str, Any]]], exp: rk.Expected) -> Placement:
    moving: dict[tuple[str, str], set[int]] = {}
    staying: dict[str, set[int]] = {t: set() for t in rk.PERSONAL}
    customer_of = {}
    for j in rk.JURISDICTIONS:
        for cid in exp.jurisdiction_customers(j):
            customer_of[cid] = j
    for cid, row in legacy_rows["customer"].items():
        j = customer_of.get(cid)
        target = moving.setdefault(("customer", j), set()) if j else staying["customer"]
        target.add(cid)
        target = moving.setdefault(("address", j), set()) if j else staying["address"]
        target.add(row["address_id"])
    for table in ("rental", "payment"):
        for key, row in legacy_rows[table].items():
            j = customer_of.get(row["customer_id"])
            target = moving.setdefault((table, j), set()) if j else staying[table]
            target.add(key)
    return Placement(moving, staying)


def _where(shop: Shop, table: str) -> dict[int, set[str]]:
    """key -> stores holding it."""
    out: dict[int, set[str]] = {}
    for store, url in shop.stores.items():
        for key in rk.keys(url, table):
            out.setdefault(key, set()).add(store)
    return out


def _every_row(shop: Shop) -> dict[str, dict[int, list[dict[str, Any]]]]:
    """table -> key -> the logical rows of that key in every store."""
    out: dict[str, dict[int, list[dict[str, Any]]]] = {t: {} for t in rk.TABLES}
    for url in shop.stores.values():
        present = rk.relations(url)[0]
        for table in rk.TABLES:
            if table in present:
                for key, row in rk.logical_rows(url, table).items():
                    out[table].setdefault(key, []).append(row)
    return out


def _fingerprints(shop: Shop, domicile_tables: bool = True) -> dict[str, dict[str, Any]]:
    return {
        store: rk.fingerprint(url, domicile_tables=domicile_tables)
        for store, url in shop.stores.items()
    }


def _assert_nothing_lost(
    before: dict[str, dict[int, list[dict[str, Any]]]],
    after: dict[str, dict[int, list[dict[str, Any]]]],
) -> None:
    """Every row of every table is, after, somewhere, with the content it had."""
    lost = []
    for table, rows in before.items():
        assert len(after[table]) >= len(rows), (table, len(rows), len(after[table]))
        for key, versions in rows.items():
            if not any(v in after[table].get(key, []) for v in versions):
                lost.append((table, key, after[table].get(key)))
    assert not lost, f"{len(lost)} rows lost or changed: {lost[:5]}"


def _runs_by_sql(shop: Shop) -> list[tuple[str, str]]:
    return [
        (str(r[0]), str(r[1])) for r in rk.query(shop.state, "SELECT id, status FROM domicile_runs")
    ]


# ---------------------------------------------------------------------------
# 0. The kit itself (passes today: it guards the fixtures, not domicile).


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mysql"])
def test_kit_builds_the_shop_on_every_engine(make_db, backend):
    url = make_db(backend)
    exp = rk.build_legacy(url)
    assert {t: rk.count(url, t) for t in rk.TABLES} == exp.rows
    tables, views = rk.relations(url)
    assert tables == set(rk.TABLES) and views == set(rk.VIEWS)
    assert rk.dangling(url) == []
    by_sql = rk.census_by_sql(url)
    for name, code in rk.ISO.items():
        assert by_sql[("customer", code)] == len(exp.customers[name]), name
    assert by_sql[("address", "orphan")] == len(exp.shop_addresses) == 4
    assert rk.query(url, "SELECT count(*) FROM customer_list")[0][0] == exp.rows["customer"]
    if backend == "sqlite":
        stamps = {r[0] for r in rk.query(url, "SELECT rental_date FROM rental")}
        assert any(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", s) for s in stamps)
        assert any(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}", s) for s in stamps)
        assert any(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", s) for s in stamps)
        assert rk.query(url, "SELECT DISTINCT typeof(create_date) FROM customer") == [("text",)]
        assert ("integer",) in rk.query(url, "SELECT DISTINCT typeof(amount) FROM payment")
    if backend == "postgresql":
        types = dict(
            rk.query(
                url,
                "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = 'film'::regclass AND attnum > 0",
            )
        )
        assert types["release_year"] == "year" and types["rating"] == "mpaa_rating"
        assert rk.query(url, "SELECT count(*) FROM customer_list")[0][0] == exp.rows["customer"]
    shared = make_db(backend)
    exp2 = rk.build_legacy(shared, shared_address=True)
    assert exp2.shared_address is not None
    address_id, (a, b) = exp2.shared_address
    rows = rk.query(shared, f"SELECT customer_id FROM customer WHERE address_id = {address_id}")
    assert sorted(r[0] for r in rows) == sorted([a, b])
    assert exp2.rows["address"] == exp.rows["address"] - 1
    assert rk.dangling(shared) == []


# ---------------------------------------------------------------------------
# 1. Census.


def test_census_counts_match_the_three_hop_join(tmp_path, make_db, capsys, pair):
    shop = _shop(tmp_path, make_db, pair)
    by_sql = rk.census_by_sql(shop.legacy)
    code, stdout, out = _cli(capsys, "scan", "--json", "-c", str(shop.path))
    assert code == 3, out  # violations
    census = json.loads(stdout)
    cells = {(c["jurisdiction"], c["store"], c["dataset"]): c for c in census["cells"]}
    checks = Checks()
    for table in rk.PERSONAL:
        for j in rk.JURISDICTIONS:
            with checks(f"{j} {table}"):
                cell = cells.get((j, "legacy", table))
                assert cell is not None, f"no cell for {j} legacy {table}: {sorted(cells)}"
                assert cell["records"] == by_sql[(table, j)], (cell, by_sql[(table, j)])
                assert cell["violating"] == by_sql[(table, j)], cell
        with checks(f"unrestricted {table}"):
            cell = cells.get(("unrestricted", "legacy", table))
            want = by_sql[(table, "SG")] + by_sql[(table, "JP")]
            assert cell is not None and cell["records"] == want, (cell, want)
            assert cell["violating"] == 0, cell
    with checks("no cells at the empty homes"):
        assert {s for _, s, _ in cells} == {"legacy"}, sorted(cells)
    with checks("violations"):
        want = sum(by_sql[(t, j)] for t in rk.PERSONAL for j in rk.JURISDICTIONS)
        assert census["violations"] == want, (census["violations"], want)
        assert census["conflicts"] == 0, census["conflicts"]
    with checks("unknown country Atlantis"):
        unknown = {u["value"]: u["subjects"] for u in census["unknown_countries"]}
        assert unknown == {"Atlantis": len(shop.expected.customers["Atlantis"])}, unknown
        records = {
            (u["store"], u["dataset"]): u["records"] for u in census["unknown_country_records"]
        }
        want_records = {
            ("legacy", t): by_sql[(t, None)] for t in rk.PERSONAL if by_sql.get((t, None))
        }
        assert records == want_records, (records, want_records)
    with checks("orphans: the shop's own addresses"):
        orphans = {(o["store"], o["dataset"]): o["records"] for o in census["orphans"]}
        assert orphans == {("legacy", "address"): by_sql[("address", "orphan")]}, orphans
    checks.assert_all()


# ---------------------------------------------------------------------------
# 2. Plan and run.


def _insert_at_home(url: str, home_pg_default: bool, address_id: int) -> tuple[int, int, bool]:
    """The application's next customer and payment at a home, ids left to the store.

    Returns (customer_id, payment_id, last_update took now()).  On a
    PostgreSQL home fed from PostgreSQL, last_update is left to its default
    and compared with now() in the same transaction.
    """
    dialect = rk.dialect_of(url)
    stamp: Any = "2026-01-02 03:04:05" if dialect == "sqlite" else dt.datetime(2026, 1, 2, 3, 4, 5)
    today: Any = "2026-01-02" if dialect == "sqlite" else dt.date(2026, 1, 2)
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            cols = "store_id, first_name, last_name, email, address_id, active, create_date"
            vals = ":store, 'NEW', 'CUSTOMER', 'new@rental.example', :addr, :active, :today"
            if not home_pg_default:
                cols += ", last_update"
                vals += ", :stamp"
            params = {
                "store": 1,
                "addr": address_id,
                "active": True if dialect == "postgresql" else 1,
                "today": today,
                "stamp": stamp,
            }
            conn.execute(sa.text(f"INSERT INTO customer ({cols}) VALUES ({vals})"), params)
            cid = conn.execute(
                sa.text("SELECT customer_id FROM customer WHERE email = 'new@rental.example'")
            ).scalar_one()
            conn.execute(
                sa.text(
                    "INSERT INTO payment (customer_id, staff_id, rental_id, amount, payment_date) "
                    "VALUES (:cid, 1, NULL, :amount, :stamp)"
                ),
                {
                    "cid": cid,
                    "amount": "1.99" if dialect == "sqlite" else Decimal("1.99"),
                    "stamp": stamp,
                },
            )
            pid = conn.execute(
                sa.text("SELECT payment_id FROM payment WHERE customer_id = :cid"), {"cid": cid}
            ).scalar_one()
            fresh = True
            if home_pg_default:
                fresh = bool(
                    conn.execute(
                        sa.text(
                            "SELECT last_update = now()::timestamp FROM customer "
                            "WHERE customer_id = :cid"
                        ),
                        {"cid": cid},
                    ).scalar_one()
                )
        return int(cid), int(pid), fresh
    finally:
        engine.dispose()


def test_plan_then_run_brings_each_customer_home(tmp_path, make_db, capsys, pair):
    shop = _shop(tmp_path, make_db, pair)
    legacy_logical = {t: rk.logical_rows(shop.legacy, t) for t in rk.TABLES}
    legacy_storage = (
        {t: rk.storage_rows(shop.legacy, t) for t in rk.TABLES} if shop.same_engine else {}
    )
    where_to = _placement(legacy_logical, shop.expected)

    # plan: exit 0, the moves shown, and its figures equal the test's own counts
    plan_file = tmp_path / "plan.json"
    code, stdout, out = _cli(capsys, "plan", "-o", str(plan_file), "-c", str(shop.path))
    assert code == 0, out
    plan = json.loads(plan_file.read_text())
    assert plan["blockers"] == [], plan["blockers"]
    planned: dict[tuple[str, str], int] = {}
    for move in plan["moves"]:
        assert move["source"] == "legacy", move
        key = (move["dataset"], move["target"])
        planned[key] = planned.get(key, 0) + move["records"]
    want = {(t, rk.JURISDICTIONS[j][1]): len(ks) for (t, j), ks in where_to.moving.items() if ks}
    assert planned == want, (planned, want)
    for (table, home), n in want.items():  # each move is shown: dataset, from, to, records
        row = rf"\b{table}\b.*\blegacy\b.*\b{home}\b.*\b{n}\b"
        assert re.search(row, stdout), (
            f"plan does not show {table} legacy -> {home} ({n}):\n{stdout}"
        )
    order = plan["copy_order"]
    # parents before children: an address before its customer, a rental before its payment
    assert order.index("address") < order.index("customer") < order.index("rental")
    assert order.index("rental") < order.index("payment")

    _assert_run_done(capsys, shop)

    checks = Checks()
    with checks("placement of personal rows"):
        wrong = []
        for table in rk.PERSONAL:
            where = _where(shop, table)
            for (t, j), ks in where_to.moving.items():
                if t != table:
                    continue
                home = rk.JURISDICTIONS[j][1]
                wrong += [(table, k, where.get(k)) for k in ks if where.get(k) != {home}]
            for k in where_to.staying[table]:
                if where.get(k) != {"legacy"}:
                    wrong.append((table, k, where.get(k)))
        assert not wrong, f"{len(wrong)} rows misplaced (table, key, stores): {wrong[:8]}"
    with checks("the shop's own addresses stay at legacy"):
        where = _where(shop, "address")
        assert all("legacy" in where.get(a, set()) for a in shop.expected.shop_addresses), {
            a: where.get(a) for a in shop.expected.shop_addresses
        }
    with checks("unrestricted rows untouched at legacy"):
        changed = []
        for table in rk.PERSONAL:
            now = rk.logical_rows(shop.legacy, table)
            changed += [
                (table, k)
                for k in where_to.staying[table]
                if now.get(k) != legacy_logical[table][k]
            ]
        assert not changed, changed[:8]
    with checks("reference rows never leave legacy"):
        for table in rk.REFERENCE:
            assert rk.logical_rows(shop.legacy, table) == legacy_logical[table], table
    with checks("foreign keys hold at every home"):
        problems = {home: rk.dangling(url) for home, url in shop.homes.items()}
        assert all(not p for p in problems.values()), problems
    with checks("foreign keys hold at legacy"):
        assert rk.dangling(shop.legacy) == []
    with checks("reference tables at home"):
        missing = {
            home: sorted(set(rk.REFERENCE) - rk.relations(url)[0])
            for home, url in shop.homes.items()
        }
        assert all(not m for m in missing.values()), missing
    with checks("no view copied home"):
        assert all(not rk.relations(url)[1] for url in shop.homes.values())
    kind = "byte-for-byte" if shop.same_engine else "logically"
    with checks(f"rows at home equal legacy's {kind}"):
        diffs = []
        for home, url in shop.homes.items():
            present = rk.relations(url)[0]
            for table in rk.TABLES:
                if table not in present:
                    continue
                if shop.same_engine:
                    now, was = rk.storage_rows(url, table), legacy_storage[table]
                else:
                    now, was = rk.logical_rows(url, table), legacy_logical[table]
                for key, row in now.items():
                    if was.get(key) != row:
                        diffs.append((home, table, key, "home", row, "legacy", was.get(key)))
        assert not diffs, f"{len(diffs)} rows differ; first: {diffs[:3]}"
    inserted = {}
    with checks("the application inserts a customer and a payment at home without ids"):
        pg_default = shop.engines == ("postgresql", "postgresql")
        for j, (_, home) in rk.JURISDICTIONS.items():
            address_id = min(where_to.moving[("address", j)])
            try:
                inserted[home] = _insert_at_home(shop.homes[home], pg_default, address_id)
            except sa.exc.DBAPIError as exc:
                raise AssertionError(f"{home}: {str(exc).splitlines()[0]}") from exc
            assert inserted[home][2], f"{home}: last_update did not default to now()"
    with checks("new ids at home are past every id the sources used"):
        # subject ids are one space across the fleet: a new customer 59 at home
        # would be a second subject 59 beside the one still at legacy
        assert inserted, "nothing inserted"
        top = (max(legacy_logical["customer"]), max(legacy_logical["payment"]))
        assert all(cid > top[0] and pid > top[1] for cid, pid, _ in inserted.values()), (
            f"legacy max ids (customer, payment) {top}; new at home {inserted}"
        )
    checks.assert_all()


# ---------------------------------------------------------------------------
# 3 and 4. After the run: the scan, then a second run that changes nothing.


SOME_PAIRS = [
    pytest.param(
        p, id=i, marks=[] if i in ("sqlite-sqlite", "postgresql-mysql") else pytest.mark.long
    )
    for p, i in zip(PAIRS, PAIR_IDS, strict=True)
]


@pytest.mark.parametrize("pair", SOME_PAIRS)
def test_after_the_run_scan_is_compliant_and_a_second_run_changes_nothing(
    tmp_path, make_db, capsys, pair
):
    """One run, then: the scan resolves every moved customer; a second run is a no-op."""
    shop = _shop(tmp_path, make_db, pair)
    where_to = _placement({t: rk.logical_rows(shop.legacy, t) for t in rk.PERSONAL}, shop.expected)
    _assert_run_done(capsys, shop)
    code, stdout, out = _cli(capsys, "scan", "--json", "-c", str(shop.path))
    assert code == 0, out
    census = json.loads(stdout)
    assert census["violations"] == 0 and census["conflicts"] == 0, census
    homes = set(shop.homes)
    # the only orphans at a home may be the shop's own addresses, copied there for
    # the store and staff rows that name them; no moved record is an orphan
    orphans = {(o["store"], o["dataset"]): o["records"] for o in census["orphans"]}
    for home, url in shop.homes.items():
        shop_rows = len(rk.keys(url, "address") & set(shop.expected.shop_addresses))
        assert orphans.get((home, "address"), 0) == shop_rows, (home, orphans)
    assert not [k for k in orphans if k[0] in homes and k[1] != "address"], orphans
    assert [u for u in census["unknown_country_records"] if u["store"] in homes] == []
    cells = {(c["jurisdiction"], c["store"], c["dataset"]): c["records"] for c in census["cells"]}
    for (table, j), ks in where_to.moving.items():
        home = rk.JURISDICTIONS[j][1]
        assert cells.get((j, home, table)) == len(ks), (j, home, table, cells.get((j, home, table)))
    assert not [
        c
        for c in census["cells"]
        if c["store"] in homes and c["jurisdiction"] not in rk.JURISDICTIONS
    ], census["cells"]
    # domicile's own tables are left out: every run writes a fresh identity marker
    before = _fingerprints(shop, domicile_tables=False)
    code, _, out = _cli(capsys, "run", "-c", str(shop.path))
    assert code == 0, _tail(out)
    assert _run_status(out) in ("done", "complete"), _tail(out)
    after = _fingerprints(shop, domicile_tables=False)
    changed = [
        (store, table)
        for store in before
        for table in set(before[store]) | set(after[store])
        if before[store].get(table) != after[store].get(table)
    ]
    assert not changed, changed


# ---------------------------------------------------------------------------
# 5. Records with several owners.


@pytest.mark.parametrize("pair", SOME_PAIRS)
def test_shared_address_moves_once_with_both_customers(tmp_path, make_db, capsys, pair):
    """An address two customers name: a non-unique reverse-path target (two owners).

    The directory reads a customer's country through their address, so two
    customers sharing one address are necessarily subjects of one country:
    here both are American, the record's owners agree, and it moves to ``us``
    once, with both customers.
    """
    shop = _shop(tmp_path, make_db, pair, shared_address=True)
    assert shop.expected.shared_address is not None
    address_id, owners = shop.expected.shared_address
    before = _every_row(shop)
    code, _, out = _cli(capsys, "run", "-c", str(shop.path))
    checks = Checks()
    with checks("run ends"):
        assert code == 0, _tail(out)
        assert _run_status(out) in ("done", "complete"), _tail(out)
    with checks("no run left running"):
        assert all(status != "running" for _, status in _runs_by_sql(shop)), _runs_by_sql(shop)
    with checks("the shared address and both customers at us only"):
        assert _where(shop, "address").get(address_id) == {"us"}, _where(shop, "address")[
            address_id
        ]
        where = _where(shop, "customer")
        assert {c: where.get(c) for c in owners} == {c: {"us"} for c in owners}
        was = before["address"][address_id][0]
        assert rk.logical_rows(shop.homes["us"], "address")[address_id] == was
    with checks("foreign keys hold everywhere"):
        problems = {s: rk.dangling(url) for s, url in shop.stores.items()}
        assert all(not p for p in problems.values()), problems
    with checks("nothing lost"):
        _assert_nothing_lost(before, _every_row(shop))
    checks.assert_all()


def _add_friend_payment(shop: Shop) -> tuple[int, int]:
    """A Canadian customer pays for an American customer's rental; returns (payment, rental)."""
    ca = shop.expected.jurisdiction_customers("CA")[0]
    us = shop.expected.jurisdiction_customers("US")
    rental = min(rk.keys(shop.legacy, "rental", f"customer_id IN ({', '.join(map(str, us))})"))
    payment = max(rk.keys(shop.legacy, "payment")) + 1
    sqlite = rk.dialect_of(shop.legacy) == "sqlite"
    engine = sa.create_engine(shop.legacy)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO payment (payment_id, customer_id, staff_id, rental_id, amount, "
                    "payment_date) VALUES (:p, :c, 2, :r, :a, :d)"
                ),
                {
                    "p": payment,
                    "c": ca,
                    "r": rental,
                    "a": "3.99" if sqlite else Decimal("3.99"),
                    "d": "2005-07-01 10:00:00.5"
                    if sqlite
                    else dt.datetime(2005, 7, 1, 10, 0, 0, 500000, tzinfo=dt.UTC),
                },
            )
    finally:
        engine.dispose()
    return payment, rental


@pytest.mark.parametrize(
    "pair", [PAIRS[0], PAIRS[1], PAIRS[3]], ids=[PAIR_IDS[0], PAIR_IDS[1], PAIR_IDS[3]]
)
def test_multi_owner_conflict_stays_reported_and_loses_nothing(tmp_path, make_db, capsys, pair):
    """A payment owned by its payer (CA) and by the renter of its rental (US), multi_owner all.

    No store is allowed for both: it is a conflict, stays at legacy unchanged
    and is reported; the rental it names must not be deleted from under it
    (Pagila's ON DELETE SET NULL would rewrite it; SQLite would leave it
    dangling); the run ends (done or incomplete), never stays 'running'.
    """
    shop = _shop(tmp_path, make_db, pair)
    payment, rental = _add_friend_payment(shop)
    data = rk.data_map(
        shop.legacy,
        shop.homes,
        shop.state,
        payment_owners=["customer_id", "rental_id -> rental.rental_id -> customer_id"],
    )
    shop.rewrite(data)
    was = rk.logical_rows(shop.legacy, "payment")[payment]
    before = _every_row(shop)
    checks = Checks()
    with checks("reported as a conflict before the run"):
        _assert_payment_conflict(capsys, shop)
    code, _, out = _cli(capsys, "run", "-c", str(shop.path))
    with checks("run ends: done or incomplete"):
        assert code in (0, 4), _tail(out)
        assert _run_status(out) in ("done", "complete", "incomplete"), _tail(out)
    with checks("no run left running"):
        runs = _runs_by_sql(shop)
        assert runs and all(status != "running" for _, status in runs), runs
        code_s, _, out_s = _cli(capsys, "status", "-c", str(shop.path))
        assert code_s == 0, out_s
    with checks("the conflict payment stays at legacy, unchanged"):
        assert _where(shop, "payment").get(payment) == {"legacy"}
        assert rk.logical_rows(shop.legacy, "payment").get(payment) == was
    with checks("the rental it names is still at legacy"):
        assert "legacy" in _where(shop, "rental").get(rental, set())
    with checks("foreign keys hold everywhere"):
        problems = {s: rk.dangling(url) for s, url in shop.stores.items()}
        assert all(not p for p in problems.values()), problems
    with checks("nothing lost"):
        _assert_nothing_lost(before, _every_row(shop))
    with checks("reported as a conflict after the run"):
        _assert_payment_conflict(capsys, shop)
    checks.assert_all()


def _assert_payment_conflict(capsys: pytest.CaptureFixture[str], shop: Shop) -> None:
    code, stdout, out = _cli(capsys, "scan", "--json", "-c", str(shop.path))
    assert code in (0, 3), _tail(out)
    census = json.loads(stdout)
    cells = [c for c in census["cells"] if c["dataset"] == "payment" and c["conflicts"]]
    assert census["conflicts"] >= 1, {k: census[k] for k in ("violations", "conflicts")}
    assert [c["store"] for c in cells] and {c["store"] for c in cells} == {"legacy"}, cells


# ---------------------------------------------------------------------------
# 6. Bad input: plan refuses with exit 2, names the problem, changes nothing.


def _bad_country_table(data: dict[str, Any]) -> None:
    data["subjects"]["country"] = rk.COUNTRY_PATH.replace("city.city_id", "town.city_id")


def _bad_country_column(data: dict[str, Any]) -> None:
    data["subjects"]["country"] = rk.COUNTRY_PATH.replace(
        "-> country_id -> country.", "-> nation_id -> country."
    )


def _view_as_dataset(data: dict[str, Any]) -> None:
    data["datasets"]["customer_list"] = {"table": "customer_list", "key": ["id"], "owner": "id"}


@pytest.mark.parametrize(
    ("mistake", "named"),
    [
        (_bad_country_table, ["town"]),
        (_bad_country_column, ["nation_id"]),
        (_view_as_dataset, ["customer_list", "view"]),
    ],
    ids=["path-table-missing", "path-column-missing", "view-as-moved-dataset"],
)
@pytest.mark.parametrize("pair", [PAIRS[0], PAIRS[3]], ids=[PAIR_IDS[0], PAIR_IDS[3]])
def test_plan_refuses_bad_input_and_changes_nothing(
    tmp_path, make_db, capsys, pair, mistake, named
):
    shop = _shop(tmp_path, make_db, pair)
    data = rk.data_map(shop.legacy, shop.homes, shop.state)
    mistake(data)
    shop.rewrite(data)
    before = _fingerprints(shop)
    code, _, out = _cli(capsys, "plan", "-c", str(shop.path))
    assert code == 2, out
    # the problem must be named, not only the whole path quoted back
    rest = out.replace(str(data["subjects"]["country"]), "<path>").lower()
    for word in named:
        assert word in rest, f"the message does not name {word!r}:\n{out}"
    assert "Traceback" not in out
    assert _fingerprints(shop) == before
