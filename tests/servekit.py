"""A served fleet for the service tests: the hand-built fleet, moved home, behind a real uvicorn.

:func:`served_fleet` builds :mod:`fleetkit`'s three SQLite stores, brings
everything home with a run (so the audit log has a signed checkpoint),
stores a census, adds one principal per case and starts ``domicile serve``'s
app under uvicorn on a free loopback port, in a thread of the test process.

Subjects after the run: 1 and 6 are US (home ``us``), 3, 7 and 8 CA (home
``ca``), 4 is Brazilian (unrestricted), 5's country is unknown (unresolved).
Both homes' operator is ``custodian``.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import fleetkit
from domicile import api
from domicile.access.tickets import tickets_path
from domicile.service.server import build

AUDIENCE = "domicile-gateway"

PRINCIPALS = {
    # name: (role, employer, country)
    "app": ("router", None, None),
    "us-staff": ("reader", "custodian", "US"),
    "ca-staff": ("reader", "custodian", "CA"),
    "outsider": ("reader", "legacy", "SG"),
    "support": ("reader", "legacy", "SG"),
    "auditor": ("auditor", None, None),
}


@dataclass
class Served:
    """A running server over a moved fleet."""

    url: str
    path: Path
    tokens: dict[str, str]
    jwt_private: Ed25519PrivateKey
    hs_secret: bytes
    tickets: dict[str, str] = field(default_factory=dict)
    service: Any = None

    def client(self, who: str | None = None, **kwargs: Any) -> httpx.Client:
        """A client with *who*'s token (None: no credentials)."""
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kwargs)


def build_fleet(tmp: Path) -> Path:
    """fleetkit's fleet on SQLite, everything moved home, a census stored."""
    urls = {s: f"sqlite:///{tmp / (s + '.db')}" for s in ("sg", "us", "ca")}
    path = fleetkit.build(tmp, urls)
    result = api.run(path)
    assert result.status in ("done", "incomplete"), result.status
    api.scan(path)
    return path


def add_principals(path: Path) -> dict[str, str]:
    """One principal per case; their tokens."""
    return {
        name: api.add_principal(path, name, role, employer=employer, country=country)[1]
        for name, (role, employer, country) in PRINCIPALS.items()
    }


def add_tickets(path: Path) -> dict[str, str]:
    """A valid ticket and an expired one for `support`; their ids."""
    future = dt.datetime.now(dt.UTC) + dt.timedelta(hours=8)
    valid = api.add_ticket(
        path,
        principal="support",
        approver="Chief Privacy Officer",
        reason="incident 42",
        expires=future,
        datasets=["users"],
        subjects=["1"],
    )
    expired = api.add_ticket(
        path,
        principal="support",
        approver="Chief Privacy Officer",
        reason="incident 41",
        expires=future,
        datasets=["users"],
    )
    # An administrator's ticket that has run out: edited in the server's file.
    file = tickets_path(path)
    data = json.loads(file.read_text())
    for t in data["tickets"]:
        if t["id"] == expired.id:
            t["expires"] = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat()
    file.write_text(json.dumps(data))
    return {"valid": valid.id, "expired": expired.id}


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextmanager
def running(app: Any) -> Iterator[str]:
    """Serve *app* with uvicorn on a free loopback port in a thread; yield its URL."""
    sock = _free_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()


def jwt_keys(tmp: Path) -> tuple[Ed25519PrivateKey, Path, bytes, Path]:
    """An Ed25519 key pair (public PEM written) and an HS256 secret file."""
    private = Ed25519PrivateKey.generate()
    pub = tmp / "jwt.pub"
    pub.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    secret = b"s" * 24 + b"0123456789abcdef"
    hs = tmp / "jwt.secret"
    hs.write_bytes(secret)
    return private, pub, secret, hs


@contextmanager
def served_fleet(tmp: Path, *, jwt: str = "eddsa", **options: Any) -> Iterator[Served]:
    """The whole setup; the server stops (and flushes its decisions) on exit."""
    path = build_fleet(tmp)
    tokens = add_principals(path)
    ticket_ids = add_tickets(path)
    private, pub, secret, hs = jwt_keys(tmp)
    key = pub if jwt == "eddsa" else hs
    app, service = build(path, jwt_key=key, jwt_audience=AUDIENCE, **options)
    try:
        with running(app) as url:
            yield Served(url, path, tokens, private, secret, ticket_ids, service)
    finally:
        service.close()


@contextmanager
def serving(path: Path, **options: Any) -> Iterator[tuple[str, Any]]:
    """Serve the map at *path* as it is; yield the URL and the service."""
    app, service = build(path, **options)
    try:
        with running(app) as url:
            yield url, service
    finally:
        service.close()


def audit_events(path: Path) -> list[dict[str, Any]]:
    """Every audit entry, read independently of the server (a fresh engine on the state store)."""
    import sqlalchemy as sa

    from domicile.audit.log import entries_table

    engine = sa.create_engine(f"sqlite:///{path.parent / '.domicile' / 'state.db'}")
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(entries_table.c.idx, entries_table.c.entry).order_by(entries_table.c.idx)
            ).all()
    finally:
        engine.dispose()
    return [{"index": int(i), **json.loads(bytes(e))} for i, e in rows]


def decisions(path: Path) -> list[dict[str, Any]]:
    """The access decisions in the audit log."""
    return [e for e in audit_events(path) if e.get("type") == "access.decision"]
