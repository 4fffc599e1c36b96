"""A DVD rental shop on the model of Sakila (MySQL) / Pagila (PostgreSQL), for end-to-end tests.

``build_legacy(url)`` creates the shop's schema in one store (SQLite,
PostgreSQL or MariaDB, each with its own engine's features) and fills it
deterministically; ``data_map`` is the YAML map that moves the US, Canadian
and Australian customers to their homes.  The readers at the bottom look at
stores with plain SQL of their own, never through domicile, so that a test
can compare what domicile did with what it was asked to do.

What the schema exercises, and why it is here:

- the subject's country is three hops away (customer -> address -> city ->
  country), and ``address`` is owned the other way round (an address belongs
  to the customer whose ``address_id`` names it);
- ``staff`` and ``store`` point at each other (a foreign-key cycle, NOT NULL
  on both sides), created with ALTER TABLE after both tables and loaded the
  way each engine allows;
- the shop's own addresses (of its stores and staff) are rows of the personal
  ``address`` table that no customer owns, yet the reference rows ``store``
  and ``staff`` need them;
- PostgreSQL: a domain (``year``), an enum type (``mpaa_rating``), ``serial``
  keys and one identity key (``payment``), ``DEFAULT now()``, a
  ``timestamptz`` column, ``bytea``; MariaDB: AUTO_INCREMENT, ``ENUM``,
  ``YEAR``, ``TIMESTAMP DEFAULT CURRENT_TIMESTAMP ON UPDATE ...``; SQLite:
  ``INTEGER`` keys, timestamps kept as text in several formats in columns
  declared TIMESTAMP / DATETIME / DATE, amounts stored as REAL or INTEGER by
  NUMERIC affinity (``'10.00'`` is stored as the integer 10);
- a view (``customer_list``) that is not a table;
- names with accents and apostrophes, NULLs and empty strings, binary data.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

import sqlalchemy as sa
import yaml
from sqlalchemy.dialects import mysql, postgresql

# ---------------------------------------------------------------------------
# What the shop looks like, written down once.

COUNTRIES: list[tuple[int, str]] = [
    (1, "United States"),
    (2, "Canada"),
    (3, "Australia"),
    (4, "Singapore"),
    (5, "Japan"),
    (6, "Atlantis"),
]
"""country_id, English name (as Sakila writes them; 'Atlantis' is no country)."""

ISO: dict[str, str | None] = {
    "United States": "US",
    "Canada": "CA",
    "Australia": "AU",
    "Singapore": "SG",
    "Japan": "JP",
    "Atlantis": None,
}
"""The tests' own country table (independent of domicile's normalisation)."""

JURISDICTIONS: dict[str, tuple[str, str]] = {
    "US": ("United States", "us"),
    "CA": ("Canada", "ca"),
    "AU": ("Australia", "au"),
}
"""jurisdiction -> (country name, home store).  SG, JP and Atlantis are unrestricted."""

CITIES: dict[int, list[str]] = {
    1: ["Aurora", "Dallas", "Sioux Falls"],
    2: ["Lethbridge", "Montréal"],
    3: ["Woodridge", "Perth"],
    4: ["Singapore"],
    5: ["Tōkyō", "Ōsaka"],
    6: ["Poseidonis"],
}

TABLES: tuple[str, ...] = (
    "country",
    "city",
    "address",
    "staff",
    "store",
    "film",
    "inventory",
    "customer",
    "rental",
    "payment",
)
"""Every table, parents first (staff and store point at each other)."""

PERSONAL: tuple[str, ...] = ("customer", "address", "rental", "payment")
REFERENCE: tuple[str, ...] = ("country", "city", "staff", "store", "film", "inventory")
VIEWS: tuple[str, ...] = ("customer_list",)

PK: dict[str, str] = {t: f"{t}_id" for t in TABLES}

FOREIGN_KEYS: tuple[tuple[str, str, str, str], ...] = (
    ("city", "country_id", "country", "country_id"),
    ("address", "city_id", "city", "city_id"),
    ("staff", "address_id", "address", "address_id"),
    ("staff", "store_id", "store", "store_id"),
    ("store", "manager_staff_id", "staff", "staff_id"),
    ("store", "address_id", "address", "address_id"),
    ("inventory", "film_id", "film", "film_id"),
    ("inventory", "store_id", "store", "store_id"),
    ("customer", "store_id", "store", "store_id"),
    ("customer", "address_id", "address", "address_id"),
    ("rental", "inventory_id", "inventory", "inventory_id"),
    ("rental", "customer_id", "customer", "customer_id"),
    ("rental", "staff_id", "staff", "staff_id"),
    ("payment", "customer_id", "customer", "customer_id"),
    ("payment", "staff_id", "staff", "staff_id"),
    ("payment", "rental_id", "rental", "rental_id"),
)
"""(child table, column, parent table, parent column): every foreign key of the schema."""

CYCLE = {("staff", "store_id"), ("store", "manager_staff_id")}

# Logical kind of every column: how values are compared across engines.
COLUMNS: dict[str, dict[str, str]] = {
    "country": {"country_id": "int", "country": "text", "last_update": "datetime"},
    "city": {"city_id": "int", "city": "text", "country_id": "int", "last_update": "datetime"},
    "address": {
        "address_id": "int",
        "address": "text",
        "address2": "text",
        "district": "text",
        "city_id": "int",
        "postal_code": "text",
        "phone": "text",
        "last_update": "datetime",
    },
    "staff": {
        "staff_id": "int",
        "first_name": "text",
        "last_name": "text",
        "address_id": "int",
        "email": "text",
        "store_id": "int",
        "active": "bool",
        "username": "text",
        "password": "text",
        "picture": "bytes",
        "last_update": "datetime",
    },
    "store": {
        "store_id": "int",
        "manager_staff_id": "int",
        "address_id": "int",
        "last_update": "datetime",
    },
    "film": {
        "film_id": "int",
        "title": "text",
        "description": "text",
        "release_year": "year",
        "rental_duration": "int",
        "rental_rate": "decimal",
        "length": "int",
        "replacement_cost": "decimal",
        "rating": "text",
        "last_update": "datetime",
    },
    "inventory": {
        "inventory_id": "int",
        "film_id": "int",
        "store_id": "int",
        "last_update": "datetime",
    },
    "customer": {
        "customer_id": "int",
        "store_id": "int",
        "first_name": "text",
        "last_name": "text",
        "email": "text",
        "address_id": "int",
        "active": "bool",
        "create_date": "date",
        "last_update": "datetime",
    },
    "rental": {
        "rental_id": "int",
        "rental_date": "datetime",
        "inventory_id": "int",
        "customer_id": "int",
        "return_date": "datetime",
        "staff_id": "int",
        "last_update": "datetime",
    },
    "payment": {
        "payment_id": "int",
        "customer_id": "int",
        "staff_id": "int",
        "rental_id": "int",
        "amount": "decimal",
        "payment_date": "datetime",
    },
}

RATINGS = ("G", "PG", "PG-13", "R", "NC-17")

# SQLite keeps timestamps as the text the application wrote; these are the
# forms a grown application writes (Sakila's own SQLite port uses the second).
SQLITE_STAMP_FORMATS = (
    "%Y-%m-%d %H:%M:%S",  # 2006-02-15 04:45:30
    "%Y-%m-%d %H:%M:%S.ms",  # 2006-02-15 04:45:30.123
    "%Y-%m-%dT%H:%M:%S",  # 2006-02-15T04:45:30
)


# ---------------------------------------------------------------------------
# The schema, per engine.


def _dialect(url: str) -> str:
    return sa.make_url(url).get_backend_name()


def dialect_of(url: str) -> str:
    """'sqlite', 'postgresql' or 'mysql' (MariaDB) for a store URL."""
    return _dialect(url)


def metadata(dialect: str, *, cycle: bool = True) -> sa.MetaData:
    """The shop's tables as the engine *dialect* writes them (*cycle*: with staff <-> store)."""
    pg, my, lite = dialect == "postgresql", dialect == "mysql", dialect == "sqlite"
    md = sa.MetaData()

    def pk(name: str, identity: bool = False) -> sa.Column[Any]:
        if pg and identity:  # GENERATED BY DEFAULT AS IDENTITY
            return sa.Column(name, sa.Integer, sa.Identity(), primary_key=True)
        # serial on PostgreSQL, AUTO_INCREMENT on MariaDB, a rowid alias on SQLite
        return sa.Column(name, sa.Integer, primary_key=True, autoincrement=True)

    def stamp(name: str = "last_update") -> sa.Column[Any]:
        if pg:
            return sa.Column(
                name, postgresql.TIMESTAMP(), nullable=False, server_default=sa.text("now()")
            )
        if my:
            return sa.Column(
                name,
                mysql.TIMESTAMP(),
                nullable=False,
                server_default=sa.text("CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP"),
            )
        return sa.Column(name, sa.TIMESTAMP(), nullable=False)

    def when(name: str, nullable: bool = False) -> sa.Column[Any]:
        kind: Any = mysql.DATETIME(fsp=3) if my else sa.DateTime()  # SQLite: DATETIME
        return sa.Column(name, kind, nullable=nullable)

    def fk(target: str, **kw: Any) -> sa.ForeignKey:
        return sa.ForeignKey(target, onupdate="CASCADE", **kw)

    sa.Table(
        "country",
        md,
        pk("country_id"),
        sa.Column("country", sa.String(50), nullable=False),
        stamp(),
    )
    sa.Table(
        "city",
        md,
        pk("city_id"),
        sa.Column("city", sa.String(50), nullable=False),
        sa.Column(
            "country_id", sa.Integer, fk("country.country_id", ondelete="RESTRICT"), nullable=False
        ),
        stamp(),
        sa.Index("idx_fk_country_id", "country_id"),
    )
    sa.Table(
        "address",
        md,
        pk("address_id"),
        sa.Column("address", sa.String(50), nullable=False),
        sa.Column("address2", sa.String(50)),
        sa.Column("district", sa.String(20), nullable=False),
        sa.Column("city_id", sa.Integer, fk("city.city_id", ondelete="RESTRICT"), nullable=False),
        sa.Column("postal_code", sa.String(10)),
        sa.Column("phone", sa.String(20), nullable=False),
        stamp(),
        sa.Index("idx_fk_city_id", "city_id"),
    )
    cycle_fk: list[Any] = []
    if cycle:
        cycle_fk = [fk("store.store_id", ondelete="RESTRICT", use_alter=True)]
    sa.Table(
        "staff",
        md,
        pk("staff_id"),
        sa.Column("first_name", sa.String(45), nullable=False),
        sa.Column("last_name", sa.String(45), nullable=False),
        sa.Column(
            "address_id", sa.Integer, fk("address.address_id", ondelete="RESTRICT"), nullable=False
        ),
        sa.Column("email", sa.String(50)),
        sa.Column("store_id", sa.Integer, *cycle_fk, nullable=False),
        sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("username", sa.String(16), nullable=False),
        sa.Column("password", sa.String(40)),
        sa.Column("picture", sa.LargeBinary),
        stamp(),
    )
    if cycle:
        cycle_fk = [fk("staff.staff_id", ondelete="RESTRICT", use_alter=True)]
    sa.Table(
        "store",
        md,
        pk("store_id"),
        sa.Column("manager_staff_id", sa.Integer, *cycle_fk, nullable=False),
        sa.Column(
            "address_id", sa.Integer, fk("address.address_id", ondelete="RESTRICT"), nullable=False
        ),
        stamp(),
        sa.UniqueConstraint("manager_staff_id", name="idx_unique_manager"),
    )
    if pg:
        year: Any = postgresql.DOMAIN(
            "year", sa.Integer, check="VALUE >= 1901 AND VALUE <= 2155", create_type=True
        )
        rating: Any = postgresql.ENUM(*RATINGS, name="mpaa_rating", create_type=True)
        rating_default = sa.text("'G'::mpaa_rating")
    elif my:
        year = mysql.YEAR()
        rating = mysql.ENUM(*RATINGS)
        rating_default = sa.text("'G'")
    else:  # Sakila's SQLite port: VARCHAR(4) and VARCHAR(10) with a CHECK
        year = sa.String(4)
        rating = sa.String(10)
        rating_default = sa.text("'G'")
    film_checks = (
        [sa.CheckConstraint("rating IN ('G','PG','PG-13','R','NC-17')", name="check_rating")]
        if lite
        else []
    )
    sa.Table(
        "film",
        md,
        pk("film_id"),
        sa.Column("title", sa.String(255), nullable=False),
        sa.Column("description", sa.Text),
        sa.Column("release_year", year),
        sa.Column("rental_duration", sa.SmallInteger, nullable=False, server_default=sa.text("3")),
        sa.Column("rental_rate", sa.Numeric(4, 2), nullable=False, server_default=sa.text("4.99")),
        sa.Column("length", sa.SmallInteger),
        sa.Column(
            "replacement_cost", sa.Numeric(5, 2), nullable=False, server_default=sa.text("19.99")
        ),
        sa.Column("rating", rating, server_default=rating_default),
        stamp(),
        *film_checks,
        sa.Index("idx_title", "title"),
    )
    sa.Table(
        "inventory",
        md,
        pk("inventory_id"),
        sa.Column("film_id", sa.Integer, fk("film.film_id", ondelete="RESTRICT"), nullable=False),
        sa.Column(
            "store_id", sa.Integer, fk("store.store_id", ondelete="RESTRICT"), nullable=False
        ),
        stamp(),
        sa.Index("idx_store_id_film_id", "store_id", "film_id"),
    )
    sa.Table(
        "customer",
        md,
        pk("customer_id"),
        sa.Column(
            "store_id", sa.Integer, fk("store.store_id", ondelete="RESTRICT"), nullable=False
        ),
        sa.Column("first_name", sa.String(45), nullable=False),
        sa.Column("last_name", sa.String(45), nullable=False),
        sa.Column("email", sa.String(50)),
        sa.Column(
            "address_id", sa.Integer, fk("address.address_id", ondelete="RESTRICT"), nullable=False
        ),
        sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column(
            "create_date",
            sa.Date,
            nullable=False,
            **({"server_default": sa.text("CURRENT_DATE")} if pg else {}),
        ),
        stamp(),
        sa.Index("idx_last_name", "last_name"),
        sa.Index("idx_fk_address_id", "address_id"),
    )
    sa.Table(
        "rental",
        md,
        pk("rental_id"),
        when("rental_date"),
        sa.Column(
            "inventory_id",
            sa.Integer,
            fk("inventory.inventory_id", ondelete="RESTRICT"),
            nullable=False,
        ),
        sa.Column(
            "customer_id",
            sa.Integer,
            fk("customer.customer_id", ondelete="RESTRICT"),
            nullable=False,
        ),
        when("return_date", nullable=True),
        sa.Column(
            "staff_id", sa.Integer, fk("staff.staff_id", ondelete="RESTRICT"), nullable=False
        ),
        stamp(),
        sa.UniqueConstraint("rental_date", "inventory_id", "customer_id", name="idx_rental"),
        sa.Index("idx_fk_inventory_id", "inventory_id"),
    )
    if pg:
        paid: Any = postgresql.TIMESTAMP(timezone=True)  # Pagila: timestamptz
    elif my:
        paid = mysql.DATETIME(fsp=6)
    else:
        paid = sa.TIMESTAMP()
    sa.Table(
        "payment",
        md,
        pk("payment_id", identity=True),
        sa.Column(
            "customer_id",
            sa.Integer,
            fk("customer.customer_id", ondelete="RESTRICT"),
            nullable=False,
        ),
        sa.Column(
            "staff_id", sa.Integer, fk("staff.staff_id", ondelete="RESTRICT"), nullable=False
        ),
        # Pagila: ON DELETE SET NULL (deleting a rental rewrites its payments)
        sa.Column("rental_id", sa.Integer, fk("rental.rental_id", ondelete="SET NULL")),
        sa.Column("amount", sa.Numeric(5, 2), nullable=False),
        sa.Column("payment_date", paid, nullable=False),
        sa.Index("idx_fk_payment_customer_id", "customer_id"),
    )
    return md


def _view_sql(dialect: str) -> str:
    name = (
        "CONCAT(cu.first_name, ' ', cu.last_name)"
        if dialect == "mysql"
        else "cu.first_name || ' ' || cu.last_name"
    )
    return (
        "CREATE VIEW customer_list AS SELECT cu.customer_id AS id, "
        f"{name} AS name, a.address AS address, a.postal_code AS zip_code, "
        "a.phone AS phone, ci.city AS city, co.country AS country, "
        "CASE WHEN cu.active THEN 'active' ELSE '' END AS notes, cu.store_id AS sid "
        "FROM customer cu JOIN address a ON cu.address_id = a.address_id "
        "JOIN city ci ON a.city_id = ci.city_id "
        "JOIN country co ON ci.country_id = co.country_id"
    )


# ---------------------------------------------------------------------------
# The data: logical values, written per engine at insert time.


class Stamp(NamedTuple):
    """A timestamp and the text form SQLite keeps it in."""

    at: dt.datetime
    fmt: str

    def sqlite(self) -> str:
        if self.fmt.endswith(".ms"):
            return self.at.strftime(self.fmt[:-3]) + f".{self.at.microsecond // 1000:03d}"
        return self.at.strftime(self.fmt)


@dataclass(frozen=True)
class Expected:
    """What the kit wrote, for tests to compute expected placements from."""

    customers: dict[str, list[int]]
    """country name -> customer ids living there (through their address's city)."""
    rows: dict[str, int]
    """table -> number of rows written."""
    shop_addresses: tuple[int, ...]
    """addresses of the shop's stores and staff: rows of ``address`` no customer owns."""
    shared_address: tuple[int, tuple[int, int]] | None
    """with ``shared_address=True``: (address_id, (customer, customer)) that share it."""

    def customer_ids(self, *countries: str) -> list[int]:
        """Customers of the given countries (names), sorted."""
        return sorted(c for name in countries for c in self.customers.get(name, []))

    def jurisdiction_customers(self, jurisdiction: str) -> list[int]:
        """Customers of a jurisdiction of the map (US, CA, AU)."""
        return self.customer_ids(JURISDICTIONS[jurisdiction][0])

    @property
    def unrestricted_customers(self) -> list[int]:
        """Customers whose country no jurisdiction names (SG, JP, Atlantis)."""
        return self.customer_ids("Singapore", "Japan", "Atlantis")


FIRST = ["MARY", "PATRICIA", "LINDA", "BARBARA", "ZOË", "JOSÉ", "SEAN", "YUKI", "MEI", "LIAM"]
LAST = ["SMITH", "JOHNSON", "O'BRIEN", "TREMBLAY", "NGUYEN", "SATŌ", "TAN", "WILLIAMS", "BROWN"]
TITLES = [
    "ACADEMY DINOSAUR",
    "ACE GOLDFINGER",
    "ADAPTATION HOLES",
    "AFFAIR PREJUDICE",
    "AFRICAN EGG",
    "AGENT TRUMAN",
    "AIRPLANE SIERRA",
    "AIRPORT POLLOCK",
    "ALABAMA DEVIL",
    "ALADDIN CALENDAR",
    "ALAMO VIDEOTAPE",
    "ALASKA PHANTOM",
]
AMOUNTS = [Decimal(s) for s in ("0.99", "2.99", "4.99", "5.98", "10.00", "0.00", "11.99")]
EPOCH = dt.datetime(2006, 2, 15, 4, 44, 0)


class _Data(NamedTuple):
    rows: dict[str, list[dict[str, Any]]]
    living: dict[str, list[int]]
    shop: tuple[int, ...]
    shared: tuple[int, tuple[int, int]] | None


def _generate(rng: random.Random, customers: int, shared_address: bool) -> _Data:
    def stamp(base: dt.datetime = EPOCH, spread: int = 3600) -> Stamp:
        fmt = rng.choice(SQLITE_STAMP_FORMATS)
        at = base + dt.timedelta(seconds=rng.randrange(spread))
        if fmt.endswith(".ms"):
            at = at.replace(microsecond=rng.randrange(1, 1000) * 1000)
        return Stamp(at, fmt)

    rows: dict[str, list[dict[str, Any]]] = {t: [] for t in TABLES}
    for cid, name in COUNTRIES:
        rows["country"].append({"country_id": cid, "country": name, "last_update": stamp()})
    city_of: dict[int, list[int]] = {}
    for cid, names in CITIES.items():
        for name in names:
            city_id = len(rows["city"]) + 1
            city_of.setdefault(cid, []).append(city_id)
            rows["city"].append(
                {"city_id": city_id, "city": name, "country_id": cid, "last_update": stamp()}
            )

    def address(city_id: int, street: str) -> int:
        address_id = len(rows["address"]) + 1
        rows["address"].append(
            {
                "address_id": address_id,
                "address": street,
                "address2": rng.choice([None, None, ""]),
                "district": rng.choice(["Alberta", "QLD", "Texas", "Kantō", "Central"]),
                "city_id": city_id,
                "postal_code": rng.choice([None, f"{rng.randrange(10000, 99999)}", ""]),
                "phone": f"{rng.randrange(10**9, 10**10)}",
                "last_update": stamp(),
            }
        )
        return address_id

    # the shop: store 1 in Lethbridge (CA), store 2 in Woodridge (AU), as in Sakila
    lethbridge, woodridge = city_of[2][0], city_of[3][0]
    shop = (
        address(lethbridge, "47 MySakila Drive"),
        address(woodridge, "28 MySQL Boulevard"),
        address(lethbridge, "23 Workhaven Lane"),
        address(woodridge, "1411 Lillydale Drive"),
    )
    for staff_id, (first, last, addr) in enumerate(
        [("Mike", "Hillyer", shop[2]), ("Jon", "Stephens", shop[3])], start=1
    ):
        rows["staff"].append(
            {
                "staff_id": staff_id,
                "first_name": first,
                "last_name": last,
                "address_id": addr,
                "email": f"{first}.{last}@sakilastaff.com",
                "store_id": staff_id,
                "active": True,
                "username": first,
                "password": "8cb2237d0679ca88db6464eac60da96345513964" if staff_id == 1 else None,
                "picture": bytes([0x89, 0x50, 0x4E, 0x47, 0, 0, 0x0D, 0x0A, 0xFF]) * 3
                if staff_id == 1
                else None,
                "last_update": stamp(),
            }
        )
        rows["store"].append(
            {
                "store_id": staff_id,
                "manager_staff_id": staff_id,
                "address_id": shop[staff_id - 1],
                "last_update": stamp(),
            }
        )
    for film_id, title in enumerate(TITLES, start=1):
        rows["film"].append(
            {
                "film_id": film_id,
                "title": title,
                "description": rng.choice(
                    [None, "A Epic Drama of a Feminist And a Mad Scientist", "Ein Film — über"]
                ),
                "release_year": {1: 1901, 2: 2155}.get(film_id, 2006),  # YEAR's edges
                "rental_duration": rng.randrange(3, 8),
                "rental_rate": rng.choice([Decimal("0.99"), Decimal("2.99"), Decimal("4.99")]),
                "length": rng.choice([None, 46, 86, 185]),
                "replacement_cost": rng.choice([Decimal("9.99"), Decimal("20.00")]),
                "rating": RATINGS[film_id % len(RATINGS)],
                "last_update": stamp(),
            }
        )
    for inventory_id in range(1, 31):
        rows["inventory"].append(
            {
                "inventory_id": inventory_id,
                "film_id": rng.randrange(1, len(TITLES) + 1),
                "store_id": rng.choice([1, 2]),
                "last_update": stamp(),
            }
        )

    # customers: one in Atlantis, at least three in each real country, the rest at random
    if customers < 16:
        raise ValueError("customers must be at least 16 (three per country and one Atlantean)")
    real = [name for _, name in COUNTRIES if name != "Atlantis"]
    homes = ["Atlantis"] + real * 3
    homes += [rng.choice(real) for _ in range(customers - len(homes))]
    rng.shuffle(homes)
    by_name = {name: cid for cid, name in COUNTRIES}
    living: dict[str, list[int]] = {}
    rental_id = 0
    for customer_id, country in enumerate(homes, start=1):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        addr = address(rng.choice(city_of[by_name[country]]), f"{rng.randrange(1, 2000)} Main St")
        living.setdefault(country, []).append(customer_id)
        rows["customer"].append(
            {
                "customer_id": customer_id,
                "store_id": rng.choice([1, 2]),
                "first_name": first,
                "last_name": last,
                "email": f"{first}.{last}@sakilacustomer.org".lower(),
                "address_id": addr,
                "active": rng.random() > 0.1,
                "create_date": dt.date(2006, 2, 14) + dt.timedelta(days=rng.randrange(3)),
                "last_update": stamp(),
            }
        )
        for _ in range(rng.randrange(0, 5)):  # some customers never rented
            rental_id += 1
            rented = stamp(dt.datetime(2005, 5, 24, 22, 53, 30), 90 * 86400)
            returned = (
                None
                if rng.random() < 0.15
                else Stamp(rented.at + dt.timedelta(days=rng.randrange(1, 9)), rented.fmt)
            )
            staff_id = rng.choice([1, 2])
            rows["rental"].append(
                {
                    "rental_id": rental_id,
                    "rental_date": rented,
                    "inventory_id": rng.randrange(1, 31),
                    "customer_id": customer_id,
                    "return_date": returned,
                    "staff_id": staff_id,
                    "last_update": stamp(),
                }
            )
            if rng.random() < 0.85:
                paid = Stamp(rented.at + dt.timedelta(minutes=rng.randrange(1, 600)), rented.fmt)
                rows["payment"].append(
                    {
                        "payment_id": len(rows["payment"]) + 1,
                        "customer_id": customer_id,
                        "staff_id": staff_id,
                        "rental_id": rental_id,
                        "amount": rng.choice(AMOUNTS),
                        "payment_date": paid,
                    }
                )
        if rng.random() < 0.1:  # a payment with no rental (a late fee, say)
            rows["payment"].append(
                {
                    "payment_id": len(rows["payment"]) + 1,
                    "customer_id": customer_id,
                    "staff_id": 1,
                    "rental_id": None,
                    "amount": Decimal("1.00"),
                    "payment_date": stamp(dt.datetime(2005, 8, 30, 12, 0, 0), 86400),
                }
            )

    shared = None
    if shared_address:
        # the first Canadian customer moves in with the first American one: their
        # own address row is gone; the directory now reads the US address for both
        us_id, ca_id = living["United States"][0], living["Canada"][0]
        us_row = next(c for c in rows["customer"] if c["customer_id"] == us_id)
        ca_row = next(c for c in rows["customer"] if c["customer_id"] == ca_id)
        own = ca_row["address_id"]
        rows["address"] = [a for a in rows["address"] if a["address_id"] != own]
        ca_row["address_id"] = us_row["address_id"]
        living["Canada"].remove(ca_id)
        living["United States"] = sorted([*living["United States"], ca_id])
        shared = (us_row["address_id"], (us_id, ca_id))
    return _Data(rows, living, shop, shared)


def _engine_value(value: Any, kind: str, dialect: str) -> Any:
    """A logical value in the form the engine's driver writes it."""
    if value is None:
        return None
    if isinstance(value, Stamp):
        if dialect == "sqlite":
            return value.sqlite()
        return value.at
    if dialect == "sqlite":
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, Decimal):
            return str(value)  # NUMERIC affinity: '2.99' -> REAL, '10.00' -> INTEGER 10
        if isinstance(value, dt.date):
            return value.isoformat()
        if kind == "year":
            return str(value)  # VARCHAR(4), as in Sakila's SQLite port
    return value


def build_legacy(
    url: str, *, customers: int = 60, seed: int = 7, shared_address: bool = False
) -> Expected:
    """Create the shop's schema at *url* and fill it; return what was written.

    Every customer owns its address unless *shared_address*: then one
    Canadian customer shares a US customer's address (and, since the
    directory reads the country through the address, is an American subject).
    """
    dialect = _dialect(url)
    data = _generate(random.Random(seed), customers, shared_address)
    rows = data.rows
    # PostgreSQL: the cycle's two keys are added after the load (as pg_dump does);
    # MariaDB: created by ALTER TABLE and loaded with foreign_key_checks=0; SQLite:
    # declared in CREATE TABLE and loaded with foreign_keys off.
    md = metadata(dialect, cycle=dialect != "postgresql")
    engine = sa.create_engine(url)
    try:
        md.create_all(engine)
        with engine.begin() as conn:
            if dialect == "mysql":
                conn.exec_driver_sql("SET foreign_key_checks = 0")
            elif dialect == "sqlite":
                conn.exec_driver_sql("PRAGMA foreign_keys = OFF")
            q = conn.dialect.identifier_preparer.quote
            for table in TABLES:
                if not rows[table]:
                    continue
                cols = list(COLUMNS[table])
                sql = (
                    f"INSERT INTO {q(table)} ({', '.join(q(c) for c in cols)}) "
                    f"VALUES ({', '.join(':' + c for c in cols)})"
                )
                kinds = COLUMNS[table]
                conn.execute(
                    sa.text(sql),
                    [
                        {c: _engine_value(r[c], kinds[c], dialect) for c in cols}
                        for r in rows[table]
                    ],
                )
            if dialect == "mysql":
                conn.exec_driver_sql("SET foreign_key_checks = 1")
            if dialect == "postgresql":
                conn.exec_driver_sql(
                    "ALTER TABLE staff ADD CONSTRAINT staff_store_id_fkey FOREIGN KEY (store_id) "
                    "REFERENCES store (store_id) ON UPDATE CASCADE ON DELETE RESTRICT"
                )
                conn.exec_driver_sql(
                    "ALTER TABLE store ADD CONSTRAINT store_manager_staff_id_fkey "
                    "FOREIGN KEY (manager_staff_id) REFERENCES staff (staff_id) "
                    "ON UPDATE CASCADE ON DELETE RESTRICT"
                )
                # the application's next ids follow the loaded ones
                for table in TABLES:
                    conn.exec_driver_sql(
                        f"SELECT setval(pg_get_serial_sequence('{table}', '{PK[table]}'), "
                        f"(SELECT max({PK[table]}) FROM {table}))"
                    )
            conn.exec_driver_sql(_view_sql(dialect))
    finally:
        engine.dispose()
    return Expected(
        customers={k: sorted(v) for k, v in data.living.items()},
        rows={t: len(rows[t]) for t in TABLES},
        shop_addresses=data.shop,
        shared_address=data.shared,
    )


# ---------------------------------------------------------------------------
# The data map.

COUNTRY_PATH = (
    "address_id -> address.address_id -> city_id -> city.city_id -> country_id"
    " -> country.country_id -> country"
)


def data_map(
    legacy_url: str,
    homes: dict[str, str],
    state_url: str,
    *,
    payment_owners: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The map: legacy (SG) holds everything; US, CA and AU customers go home.

    *homes* maps ``us``, ``ca``, ``au`` to store URLs.  *payment_owners*, when
    given, makes ``payment`` a multi-owner dataset (``owners:``) instead of
    ``owner: customer_id``.
    """
    payment: dict[str, Any] = {"table": "payment", "key": ["payment_id"]}
    if payment_owners:
        payment["owners"] = list(payment_owners)
    else:
        payment["owner"] = "customer_id"
    datasets: dict[str, Any] = {
        "customer": {"table": "customer", "key": ["customer_id"], "owner": "customer_id"},
        "address": {
            "table": "address",
            "key": ["address_id"],
            # reverse-owned: the customer whose address_id names this row
            "owner": "address_id -> customer.address_id -> customer_id",
        },
        "rental": {"table": "rental", "key": ["rental_id"], "owner": "customer_id"},
        "payment": payment,
    }
    for table in REFERENCE:
        datasets[table] = {"table": table, "key": [PK[table]], "reference": True}
    return {
        "version": 1,
        "state": state_url,
        "stores": {
            "legacy": {"url": legacy_url, "labels": {"country": "SG"}},
            **{
                home: {"url": homes[home], "labels": {"country": code}}
                for code, (_, home) in JURISDICTIONS.items()
            },
        },
        "subjects": {"dataset": "customer", "id": "customer_id", "country": COUNTRY_PATH},
        "jurisdictions": {
            code: {"countries": [code], "allowed": {"country": code}, "home": [home]}
            for code, (_, home) in JURISDICTIONS.items()
        },
        "datasets": datasets,
    }


def write_map(tmp: Path, data: dict[str, Any], name: str = "domicile.yaml") -> Path:
    """Write *data* as YAML into *tmp*; return the file's path."""
    path = tmp / name
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path


# ---------------------------------------------------------------------------
# Readers: plain SQL of the tests' own, never domicile's.


_ENGINES: dict[str, sa.Engine] = {}


def _engine(url: str) -> sa.Engine:
    # one engine per URL: its dialect is initialised once and its connections
    # reused (a MariaDB connect costs ~50 ms here); dispose_engines() closes them
    if url not in _ENGINES:
        _ENGINES[url] = sa.create_engine(url, pool_size=1, max_overflow=2)
    return _ENGINES[url]


def dispose_engines() -> None:
    """Close every connection the readers hold (call after each test)."""
    while _ENGINES:
        _ENGINES.popitem()[1].dispose()


def query(url: str, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    """Rows of one statement, as tuples of the driver's raw values (no type processing)."""
    with _engine(url).connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(sql), params or {})]


_CATALOG = {
    "sqlite": "SELECT name, type FROM sqlite_master WHERE type IN ('table', 'view') "
    "AND name NOT LIKE 'sqlite_%'",
    "postgresql": "SELECT table_name, table_type FROM information_schema.tables "
    "WHERE table_schema = current_schema()",
    "mysql": "SELECT table_name, table_type FROM information_schema.tables "
    "WHERE table_schema = database()",
}


def relations(url: str) -> tuple[set[str], set[str]]:
    """(tables, views) at the store, read from the engine's catalogue."""
    tables, views = set(), set()
    for name, kind in query(url, _CATALOG[_dialect(url)]):
        (views if "view" in str(kind).lower() else tables).add(str(name))
    return tables, views


def columns(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """table -> its columns as (name, declared type, nullable, default), in order."""
    dialect = _dialect(url)
    out: dict[str, list[tuple[Any, ...]]] = {}
    if dialect == "sqlite":
        for table in sorted(relations(url)[0]):
            out[table] = [tuple(r[1:5]) for r in query(url, f"PRAGMA table_info({_q(url)(table)})")]
        return out
    schema = "current_schema()" if dialect == "postgresql" else "database()"
    type_col = "udt_name" if dialect == "postgresql" else "column_type"
    rows = query(
        url,
        f"SELECT table_name, column_name, {type_col}, is_nullable, column_default "
        f"FROM information_schema.columns WHERE table_schema = {schema} "
        "ORDER BY table_name, ordinal_position",
    )
    for table, *col in rows:
        out.setdefault(str(table), []).append(tuple(col))
    return out


def _q(url: str) -> Any:
    return _engine(url).dialect.identifier_preparer.quote


def keys(url: str, table: str, where: str = "") -> set[int]:
    """Primary keys of *table* at *url* (empty when the table is not there)."""
    if table not in relations(url)[0]:
        return set()
    q = _q(url)
    sql = f"SELECT {q(PK[table])} FROM {q(table)}" + (f" WHERE {where}" if where else "")
    return {int(r[0]) for r in query(url, sql)}


def count(url: str, table: str) -> int:
    """Rows of *table* at *url* (0 when the table is not there)."""
    if table not in relations(url)[0]:
        return 0
    return int(query(url, f"SELECT count(*) FROM {_q(url)(table)}")[0][0])


def storage_rows(url: str, table: str) -> dict[int, tuple[Any, ...]]:
    """Each row in the engine's storage form: what byte-for-byte equality compares.

    SQLite: ``quote(col)`` and ``typeof(col)`` (the stored text, integer, real or
    blob exactly, with its storage class).  PostgreSQL: ``col::text`` and
    ``pg_typeof(col)`` (the value's text form and its type, a domain or an enum
    included).
    """
    dialect = _dialect(url)
    q = _q(url)
    parts = []
    for col in COLUMNS[table]:
        if dialect == "sqlite":
            parts += [f"quote({q(col)})", f"typeof({q(col)})"]
        elif dialect == "postgresql":
            parts += [f"{q(col)}::text", f"pg_typeof({q(col)})::text"]
        else:
            raise ValueError(f"no storage form for {dialect}: compare logical_rows")
    rows = query(url, f"SELECT {q(PK[table])}, {', '.join(parts)} FROM {q(table)}")
    return {int(r[0]): tuple(r[1:]) for r in rows}


def normalise(value: Any, kind: str) -> Any:
    """A value read from any engine, in one logical form per column kind.

    What is normalised, and nothing more: SQLite's timestamp and date text is
    parsed (``' '`` or ``'T'``, fractions of a second kept); an aware
    timestamp (``timestamptz``) becomes naive UTC, a naive one is taken as
    UTC; booleans become 0/1 (MariaDB and SQLite have no boolean); decimals
    are compared as Decimal at two places (SQLite keeps them as REAL or
    INTEGER); a year is an int (SQLite keeps it as text); text stays text and
    bytes stay bytes (memoryview read as bytes).  A DATE stays a date: a date
    turned into a timestamp is a difference.
    """
    if value is None:
        return None
    if kind == "datetime":
        if isinstance(value, str):
            return dt.datetime.fromisoformat(value)
        if isinstance(value, dt.datetime):
            if value.tzinfo is not None:
                return value.astimezone(dt.UTC).replace(tzinfo=None)
            return value
        return ("not a timestamp", value)
    if kind == "date":
        if isinstance(value, str):
            return dt.date.fromisoformat(value)
        if isinstance(value, dt.datetime):
            return ("a timestamp, not a date", value)
        return value
    if kind == "bool":
        return int(value)
    if kind == "decimal":
        return Decimal(str(value)).quantize(Decimal("0.01"))
    if kind in ("int", "year"):
        return int(value)
    if kind == "bytes":
        return bytes(value)
    return value


def logical_rows(url: str, table: str) -> dict[int, dict[str, Any]]:
    """Each row of *table* as {column: normalised value} (see :func:`normalise`)."""
    q = _q(url)
    kinds = COLUMNS[table]
    cols = list(kinds)
    rows = query(url, f"SELECT {', '.join(q(c) for c in cols)} FROM {q(table)}")
    out = {}
    for r in rows:
        values = {c: normalise(v, kinds[c]) for c, v in zip(cols, r, strict=True)}
        out[int(values[PK[table]])] = values
    return out


def fingerprint(url: str, *, domicile_tables: bool = True) -> dict[str, Any]:
    """Every table's columns and rows (raw driver values, hashed) and every view's name.

    Without *domicile_tables*, tables named ``domicile_*`` (domicile's own
    bookkeeping, such as the identity markers every run rewrites) are left out.
    """
    tables, views = relations(url)
    cols = columns(url)
    q = _q(url)
    out: dict[str, Any] = {"views": sorted(views)}
    for table in sorted(tables):
        if not domicile_tables and table.startswith("domicile_"):
            continue
        rows = sorted(repr(r) for r in query(url, f"SELECT * FROM {q(table)}"))
        digest = hashlib.sha256("\n".join(rows).encode()).hexdigest()
        out[table] = (cols.get(table), len(rows), digest)
    return out


def dangling(url: str, tables: Iterable[str] = TABLES) -> list[str]:
    """Foreign-key values at *url* that name no row (a parent table missing counts).

    Checks the schema's foreign keys by data, whatever constraints the store
    declares; on SQLite also ``PRAGMA foreign_key_check``.
    """
    present = relations(url)[0]
    q = _q(url)
    wanted = set(tables)
    problems = []
    for child, col, parent, pcol in FOREIGN_KEYS:
        if child not in present or child not in wanted:
            continue
        if parent in present:
            sql = (
                f"SELECT c.{q(col)} FROM {q(child)} c WHERE c.{q(col)} IS NOT NULL AND NOT EXISTS "
                f"(SELECT 1 FROM {q(parent)} p WHERE p.{q(pcol)} = c.{q(col)})"
            )
        else:
            sql = f"SELECT c.{q(col)} FROM {q(child)} c WHERE c.{q(col)} IS NOT NULL"
        missing = sorted({r[0] for r in query(url, sql)})
        if missing:
            problems.append(f"{child}.{col} -> {parent}.{pcol}: {missing[:10]}")
    if _dialect(url) == "sqlite":
        for row in query(url, "PRAGMA foreign_key_check"):
            problems.append(f"PRAGMA foreign_key_check: {row}")
    return problems


def census_by_sql(url: str) -> dict[tuple[str, str | None], int]:
    """(table, ISO country or None) -> records at the legacy store, by the tests' own joins.

    The country is reached customer -> address -> city -> country; ``address``
    through the customer that names it.  Addresses no customer names are
    counted under ``(address, 'orphan')``.
    """
    join = (
        "JOIN address a ON a.address_id = cu.address_id "
        "JOIN city ci ON ci.city_id = a.city_id "
        "JOIN country co ON co.country_id = ci.country_id"
    )
    out: dict[tuple[str, str | None], int] = {}

    def add(table: str, sql: str) -> None:
        for name, n in query(url, sql):
            key = (table, ISO[name])
            out[key] = out.get(key, 0) + int(n)

    add("customer", f"SELECT co.country, count(*) FROM customer cu {join} GROUP BY co.country")
    add(
        "rental",
        "SELECT co.country, count(*) FROM rental r "
        f"JOIN customer cu ON cu.customer_id = r.customer_id {join} GROUP BY co.country",
    )
    add(
        "payment",
        "SELECT co.country, count(*) FROM payment p "
        f"JOIN customer cu ON cu.customer_id = p.customer_id {join} GROUP BY co.country",
    )
    add(
        "address",
        "SELECT co.country, count(DISTINCT a.address_id) FROM address a "
        "JOIN customer cu ON cu.address_id = a.address_id "
        "JOIN city ci ON ci.city_id = a.city_id "
        "JOIN country co ON co.country_id = ci.country_id GROUP BY co.country",
    )
    orphans = query(
        url,
        "SELECT count(*) FROM address a WHERE NOT EXISTS "
        "(SELECT 1 FROM customer cu WHERE cu.address_id = a.address_id)",
    )[0][0]
    out[("address", "orphan")] = int(orphans)
    return out
