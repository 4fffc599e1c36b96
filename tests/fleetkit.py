"""A hand-built fleet with known counts, used by the census, plan and run tests.

Three stores: ``sg`` (legacy, Singapore), ``us`` (custodian, US) and ``ca``
(custodian, Canada).  Two jurisdictions: US (home ``us``) and CA (home
``ca``).  Every count the census must find is written down in EXPECTED.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml


def metadata() -> sa.MetaData:
    md = sa.MetaData()
    sa.Table(
        "users",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(50)),
        sa.Column("country", sa.String(40)),
    )
    sa.Table(
        "invoice",
        md,
        sa.Column("invoice_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("customer_id", sa.Integer),
        sa.Column("total", sa.Numeric(10, 2)),
    )
    sa.Table(
        "invoice_line",
        md,
        sa.Column("line_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("invoice_id", sa.Integer),
        sa.Column("amount", sa.Numeric(10, 2)),
    )
    sa.Table(
        "shipment_item",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("line_id", sa.Integer),
        sa.Column("sku", sa.String(20)),
    )
    sa.Table(
        "likes",
        md,
        sa.Column("user_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("post_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("at", sa.DateTime),
    )
    sa.Table(
        "messages",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("sender_id", sa.Integer),
        sa.Column("recipient_id", sa.Integer),
        sa.Column("body", sa.Text),
    )
    sa.Table(
        "dms",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("sender_id", sa.Integer),
        sa.Column("recipient_id", sa.Integer),
        sa.Column("body", sa.Text),
    )
    sa.Table(
        "posts",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("user_id", sa.Integer),
        sa.Column("visibility", sa.String(10)),
    )
    return md


T0 = dt.datetime(2024, 5, 1, 12, 0, 0)

ROWS: dict[str, dict[str, list[dict[str, Any]]]] = {
    "sg": {
        "users": [
            {"id": 1, "name": "Ann", "country": "usa"},
            {"id": 2, "name": "Bob", "country": "United States"},
            {"id": 3, "name": "Céline", "country": "Canada"},
            {"id": 4, "name": "Bruna", "country": "BR"},
            {"id": 5, "name": "Zed", "country": "Atlantis"},
        ],
        "invoice": [
            {"invoice_id": 100, "customer_id": 1, "total": "10.00"},
            {"invoice_id": 101, "customer_id": 3, "total": "20.50"},
            {"invoice_id": 102, "customer_id": 6, "total": "5.25"},
            {"invoice_id": 103, "customer_id": 999, "total": "1.00"},
        ],
        "invoice_line": [
            {"line_id": 1000, "invoice_id": 100, "amount": "4.00"},
            {"line_id": 1001, "invoice_id": 100, "amount": "6.00"},
            {"line_id": 1002, "invoice_id": 101, "amount": "20.50"},
            {"line_id": 1003, "invoice_id": 102, "amount": "5.25"},
            {"line_id": 1004, "invoice_id": 103, "amount": "1.00"},
            {"line_id": 1005, "invoice_id": 555, "amount": "9.99"},
        ],
        "shipment_item": [
            {"id": 1, "line_id": 1000, "sku": "A"},
            {"id": 2, "line_id": 1002, "sku": "B"},
            {"id": 3, "line_id": 1004, "sku": "C"},
        ],
        "likes": [
            {"user_id": 1, "post_id": 10, "at": T0},
            {"user_id": 1, "post_id": 11, "at": T0},
            {"user_id": 4, "post_id": 10, "at": T0},
            {"user_id": 3, "post_id": 10, "at": T0},
            {"user_id": 5, "post_id": 10, "at": T0},
        ],
        "messages": [
            {"id": 1, "sender_id": 1, "recipient_id": 2, "body": "hi"},
            {"id": 2, "sender_id": 1, "recipient_id": 3, "body": "hello CA"},
            {"id": 3, "sender_id": 1, "recipient_id": 4, "body": "olá"},
            {"id": 4, "sender_id": 4, "recipient_id": 4, "body": "note to self"},
            {"id": 5, "sender_id": 1, "recipient_id": 999, "body": "gone"},
            {"id": 6, "sender_id": 998, "recipient_id": 999, "body": "ghosts"},
        ],
        "dms": [{"id": 1, "sender_id": 1, "recipient_id": 3, "body": "each"}],
        "posts": [
            {"id": 1, "user_id": 1, "visibility": "public"},
            {"id": 2, "user_id": 1, "visibility": "private"},
            {"id": 3, "user_id": 2, "visibility": "public"},
            {"id": 4, "user_id": 3, "visibility": "public"},
            {"id": 5, "user_id": 4, "visibility": "private"},
        ],
    },
    "us": {
        "users": [
            {"id": 6, "name": "Dee", "country": "us"},
            {"id": 7, "name": "Éloi", "country": "CA"},
        ],
        "invoice": [],
        "invoice_line": [],
        "shipment_item": [],
        "likes": [{"user_id": 6, "post_id": 10, "at": T0}],
        "messages": [
            {"id": 7, "sender_id": 6, "recipient_id": 1, "body": "home"},
            {"id": 8, "sender_id": 6, "recipient_id": 7, "body": "US-CA"},
        ],
        "dms": [{"id": 2, "sender_id": 6, "recipient_id": 7, "body": "each, at home"}],
    },
    "ca": {"users": [{"id": 8, "name": "Flo", "country": "CA"}]},
}

# (jurisdiction, store, dataset) -> (records, violating, excepted, conflicts)
EXPECTED_CELLS = {
    ("US", "sg", "users"): (2, 2, 0, 0),
    ("CA", "sg", "users"): (1, 1, 0, 0),
    ("unrestricted", "sg", "users"): (1, 0, 0, 0),
    ("US", "us", "users"): (1, 0, 0, 0),
    ("CA", "us", "users"): (1, 1, 0, 0),
    ("CA", "ca", "users"): (1, 0, 0, 0),
    ("US", "sg", "invoices"): (2, 2, 0, 0),
    ("CA", "sg", "invoices"): (1, 1, 0, 0),
    ("US", "sg", "lines"): (3, 3, 0, 0),
    ("CA", "sg", "lines"): (1, 1, 0, 0),
    ("US", "sg", "items"): (1, 1, 0, 0),
    ("CA", "sg", "items"): (1, 1, 0, 0),
    ("US", "sg", "likes"): (2, 2, 0, 0),
    ("CA", "sg", "likes"): (1, 1, 0, 0),
    ("unrestricted", "sg", "likes"): (1, 0, 0, 0),
    ("US", "us", "likes"): (1, 0, 0, 0),
    ("US", "sg", "posts"): (3, 1, 2, 0),
    ("CA", "sg", "posts"): (1, 0, 1, 0),
    ("unrestricted", "sg", "posts"): (1, 0, 0, 0),
    ("US", "sg", "messages"): (4, 3, 0, 1),
    ("CA", "sg", "messages"): (1, 0, 0, 1),
    ("unrestricted", "sg", "messages"): (1, 0, 0, 0),
    ("US", "us", "messages"): (2, 0, 0, 1),
    ("CA", "us", "messages"): (1, 0, 0, 1),
    ("US", "sg", "dms"): (1, 1, 0, 0),
    ("CA", "sg", "dms"): (1, 1, 0, 0),
    ("US", "us", "dms"): (1, 0, 0, 0),
    ("CA", "us", "dms"): (1, 0, 0, 0),
}
EXPECTED_VIOLATIONS = (
    4 + 3 + 4 + 2 + 3 + 1 + 3 + 1
)  # users invoices lines items likes posts messages dms
EXPECTED_CONFLICTS = 2
EXPECTED_ORPHANS = {
    ("sg", "invoices"): 1,
    ("sg", "lines"): 2,
    ("sg", "items"): 1,
    ("sg", "messages"): 1,
}
EXPECTED_UNKNOWN = {("sg", "users"): 1, ("sg", "likes"): 1}


def data_map(urls: dict[str, str]) -> dict[str, Any]:
    return {
        "version": 1,
        "state": "sqlite:///.domicile/state.db",
        "stores": {
            "sg": {"url": urls["sg"], "labels": {"country": "SG", "operator": "legacy"}},
            "us": {"url": urls["us"], "labels": {"country": "US", "operator": "custodian"}},
            "ca": {"url": urls["ca"], "labels": {"country": "CA", "operator": "custodian"}},
        },
        "subjects": {"dataset": "users", "id": "id", "country": "country"},
        "jurisdictions": {
            "US": {"countries": ["US"], "allowed": {"country": "US"}, "home": ["us"]},
            "CA": {"countries": ["CA"], "allowed": {"country": "CA"}, "home": ["ca"]},
        },
        "datasets": {
            "users": {"table": "users", "key": ["id"], "owner": "id"},
            "invoices": {"table": "invoice", "key": ["invoice_id"], "owner": "customer_id"},
            "lines": {
                "table": "invoice_line",
                "key": ["line_id"],
                "owner": "invoice_id -> invoice.invoice_id -> customer_id",
            },
            "items": {
                "table": "shipment_item",
                "owner": "line_id -> invoice_line.line_id -> invoice_id"
                " -> invoice.invoice_id -> customer_id",
            },
            "likes": {"table": "likes", "key": ["user_id", "post_id"], "owner": "user_id"},
            "messages": {
                "table": "messages",
                "key": ["id"],
                "owners": ["sender_id", "recipient_id"],
            },
            "dms": {
                "table": "dms",
                "key": ["id"],
                "owners": ["sender_id", "recipient_id"],
                "multi_owner": "each",
            },
            "posts": {"table": "posts", "key": ["id"], "owner": "user_id", "stores": ["sg"]},
        },
        "exceptions": [
            {
                "dataset": "posts",
                "where": {"visibility": "public"},
                "allowed": "any",
                "reason": "Public posts are served worldwide",
                "approved_by": "CPO",
                "expires": dt.date(2099, 1, 1),
            },
            {
                "dataset": "likes",
                "where": {"post_id": 10},
                "allowed": {"country": "SG"},
                "reason": "Analytics hold",
                "approved_by": "CTO",
                "expires": dt.date(2020, 1, 1),
            },
        ],
    }


def build(tmp: Path, urls: dict[str, str]) -> Path:
    """Create the tables and rows in the three stores; write domicile.yaml; return its path."""
    md = metadata()
    for store, tables in ROWS.items():
        engine = sa.create_engine(urls[store])
        wanted = [
            md.tables[t] for t in md.tables if t in tables or (store == "sg" and t == "posts")
        ]
        if store == "ca":
            wanted = [md.tables["users"]]
        md.create_all(engine, tables=wanted)
        with engine.begin() as conn:
            for name, rows in tables.items():
                if rows:
                    conn.execute(md.tables[name].insert(), rows)
        engine.dispose()
    path = tmp / "domicile.yaml"
    path.write_text(yaml.safe_dump(data_map(urls), sort_keys=False, allow_unicode=True))
    return path
