"""The gateway under attack, on a real uvicorn: every case answers with the right status,
shows nothing of any subject, and is in the audit log.

Subjects' names in the fleet (Ann, Bob, Céline, …) must never appear in a
refused answer; each refusal must be one `access.decision` entry.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import fleetkit
import servekit
from domicile import api

pytestmark = pytest.mark.timeout(120)

NAMES = [u["name"] for rows in fleetkit.ROWS.values() for u in rows.get("users", [])]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servekit.Served]:
    with servekit.served_fleet(tmp_path_factory.mktemp("serve_security")) as s:
        yield s


def _claims(**over: Any) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC)
    claims: dict[str, Any] = {
        "sub": "jwt-reader",
        "role": "reader",
        "employer": "custodian",
        "country": "US",
        "aud": servekit.AUDIENCE,
        "iat": now,
        "exp": now + dt.timedelta(minutes=5),
    }
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


def _eddsa(served: servekit.Served, **over: Any) -> str:
    return pyjwt.encode(_claims(**over), served.jwt_private, algorithm="EdDSA")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(**over: Any) -> str:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    claims = {
        k: int(v.timestamp()) if isinstance(v, dt.datetime) else v
        for k, v in _claims(**over).items()
    }
    return f"{header}.{_b64(json.dumps(claims).encode())}."


def _records(served: servekit.Served, auth: str | None, subject: str = "1", **params: Any) -> Any:
    headers = {"Authorization": auth} if auth is not None else {}
    with httpx.Client(base_url=served.url, headers=headers, timeout=30) as c:
        return c.get(f"/v1/subjects/{subject}/records", params={"dataset": "users", **params})


def _assert_refused(served: servekit.Served, response: Any, status: int, before: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"status", "error", "message"} and body["status"] == status
    for name in NAMES:
        assert name not in response.text
    logged = servekit.decisions(served.path)[before:]
    assert len(logged) == 1, logged
    assert logged[0]["decision"] == "deny" and logged[0]["status"] == status
    return logged[0]


def _count(served: servekit.Served) -> int:
    return len(servekit.decisions(served.path))


# -- authentication: 401 ------------------------------------------------------------


def test_the_valid_jwt_reads(served):
    r = _records(served, f"Bearer {_eddsa(served)}")
    assert r.status_code == 200, r.text
    assert r.json()["records"][0]["name"] == "Ann"


@pytest.mark.parametrize(
    ("case", "why"),
    [
        ("none", "no credentials"),
        ("basic", "malformed credentials"),
        ("wrong-token", "unknown token"),
        ("expired", "expired"),
        ("other-key", "signature"),
        ("alg-none", "not signed with EdDSA"),
        ("hs256-with-public-key", "not signed with EdDSA"),
        ("wrong-audience", "aud"),
        ("no-exp", "'exp'"),
        ("garbage-jwt", "invalid JWT"),
    ],
)
def test_bad_credentials_are_401(served, case, why):
    tokens = {
        "none": None,
        "basic": "Basic dXNlcjpwYXNz",
        "wrong-token": "Bearer dmc_" + "A" * 43,
        "expired": f"Bearer {_eddsa(served, exp=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))}",
        "other-key": "Bearer "
        + pyjwt.encode(_claims(), Ed25519PrivateKey.generate(), algorithm="EdDSA"),
        "alg-none": f"Bearer {_unsigned()}",
        "hs256-with-public-key": f"Bearer {_hs256_with_public_key(served)}",
        "wrong-audience": f"Bearer {_eddsa(served, aud='someone-else')}",
        "no-exp": f"Bearer {_eddsa(served, exp=None)}",
        "garbage-jwt": "Bearer aaa.bbb.ccc",
    }
    before = _count(served)
    r = _records(served, tokens[case])
    entry = _assert_refused(served, r, 401, before)
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert why in r.json()["message"] and why in entry["reason"]
    assert entry["principal"] is None


def _hs256_with_public_key(served: servekit.Served) -> str:
    # the classic confusion: the verifier's public key used as an HMAC secret
    from cryptography.hazmat.primitives import serialization

    pem = served.jwt_private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = {
        k: int(v.timestamp()) if isinstance(v, dt.datetime) else v for k, v in _claims().items()
    }
    body = _b64(json.dumps(claims).encode())
    sig = hmac.new(pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{_b64(sig)}"


# -- authorisation: 403 -----------------------------------------------------------------


def test_right_employer_wrong_country_is_403(served):
    before = _count(served)
    entry = _assert_refused(
        served, _records(served, f"Bearer {served.tokens['ca-staff']}"), 403, before
    )
    assert entry["principal"] == "ca-staff" and "no policy permits" in entry["reason"]
    before = _count(served)
    r = _records(served, f"Bearer {_eddsa(served, sub='jwt-abroad', country='SG')}")
    entry = _assert_refused(served, r, 403, before)
    assert entry["principal"] == "jwt-abroad"


def test_tickets(served):
    support = f"Bearer {served.tokens['support']}"
    # the valid ticket: subject 1's users only
    ok = _records(served, support, ticket=served.tickets["valid"])
    assert ok.status_code == 200 and ok.json()["records"][0]["id"] == 1
    entry = servekit.decisions(served.path)[-1]
    assert entry["ticket"] == served.tickets["valid"] and "exception-ticket" in entry["reason"]
    # outside its scope (another subject), or without it
    before = _count(served)
    _assert_refused(
        served, _records(served, support, "6", ticket=served.tickets["valid"]), 403, before
    )
    before = _count(served)
    _assert_refused(served, _records(served, support), 403, before)
    # expired
    before = _count(served)
    entry = _assert_refused(
        served, _records(served, support, ticket=served.tickets["expired"]), 403, before
    )
    assert "expired" in entry["reason"]
    # asserted by the caller but not held by the server
    before = _count(served)
    entry = _assert_refused(served, _records(served, support, ticket="tkt_made-up"), 403, before)
    assert "not held by the server" in entry["reason"]
    # someone else's ticket
    before = _count(served)
    outsider = f"Bearer {served.tokens['outsider']}"
    entry = _assert_refused(
        served, _records(served, outsider, ticket=served.tickets["valid"]), 403, before
    )
    assert "another principal" in entry["reason"]


def test_a_revoked_ticket_stops_at_once(served):
    t = api.add_ticket(
        served.path,
        principal="support",
        approver="CPO",
        reason="short",
        expires=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1),
    )
    support = f"Bearer {served.tokens['support']}"
    assert _records(served, support, "6", ticket=t.id).status_code == 200
    api.revoke_ticket(served.path, t.id)
    before = _count(served)
    entry = _assert_refused(served, _records(served, support, "6", ticket=t.id), 403, before)
    assert "revoked" in entry["reason"]


def test_a_removed_principal_is_unknown_at_once(served):
    _, token = api.add_principal(served.path, "temp", "reader", employer="custodian", country="US")
    assert _records(served, f"Bearer {token}").status_code == 200
    api.remove_principal(served.path, "temp")
    before = _count(served)
    _assert_refused(served, _records(served, f"Bearer {token}"), 401, before)


# -- hostile ids and sizes ----------------------------------------------------------------


@pytest.mark.parametrize(
    "subject",
    [
        "1' OR '1'='1",
        "1 OR 1=1",
        "1;DROP TABLE users",
        "1--",
        "1) OR (1=1",
        "1 UNION SELECT name FROM users",
        "%27%20OR%201=1--",
        "1e3",
        "99999999999999999999999",
    ],
)
def test_sql_injection_shaped_ids(served, subject):
    before = _count(served)
    r = _records(served, f"Bearer {served.tokens['us-staff']}", subject)
    entry = _assert_refused(served, r, 422, before)
    assert entry["principal"] == "us-staff" and "malformed" in entry["reason"]


def _raw(
    served: servekit.Served, target: str, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """Send a request line as is (no client normalises the path)."""
    host, port = served.url.removeprefix("http://").split(":")
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data


@pytest.mark.parametrize(
    "target",
    [
        "/v1/subjects/../../etc/passwd/records?dataset=users",
        "/v1/subjects/..%2F..%2Fetc%2Fpasswd/records?dataset=users",
        "/v1/subjects/%2e%2e/records?dataset=users",
        "/v1/subjects/1/../6/records?dataset=users",
        "/v1/subjects/..\\..\\windows/records?dataset=users",
        "/v1/subjects/1)/**/OR/**/(1=1/records?dataset=users",
    ],
)
def test_path_traversal_shaped_ids(served, target):
    status, data = _raw(served, target, {"Authorization": f"Bearer {served.tokens['outsider']}"})
    assert status in (403, 404, 422), data
    assert b"application/json" in data
    for name in NAMES:
        assert name.encode() not in data


def test_oversized_requests(served):
    auth = {"Authorization": f"Bearer {served.tokens['us-staff']}"}
    before = _count(served)
    status, data = _raw(served, "/v1/subjects/" + "1" * 5000 + "/records?dataset=users", auth)
    assert status == 414 and b"application/json" in data
    logged = servekit.decisions(served.path)[before:]
    assert [e["status"] for e in logged] == [414]
    status, data = _raw(served, "/v1/route?country=US", {**auth, "X-Pad": "p" * 9000})
    assert status == 431 and b"application/json" in data
    with httpx.Client(base_url=served.url, headers=auth) as c:
        big = c.request("GET", "/v1/subjects/1/records?dataset=users", content=b"x" * 100_000)
        long_id = c.get("/v1/subjects/" + "1" * 200 + "/records", params={"dataset": "users"})
    assert big.status_code == 413 and big.json()["status"] == 413
    assert long_id.status_code == 422
    for r in (big, long_id):
        for name in NAMES:
            assert name not in r.text


def test_every_refusal_is_logged_and_the_log_verifies(served, capsys):
    from domicile.cli import run_cli

    decisions = servekit.decisions(served.path)
    assert decisions and all(e["policy_set"] and e["reason"] for e in decisions)
    for e in decisions:  # digests and names only
        for name in NAMES:
            assert name not in json.dumps(e)
    code = run_cli(["audit", "verify", "-c", str(served.path)])
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
