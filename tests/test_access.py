"""Principals, policies, tickets and decisions from the command line, and the census store.

`domicile principals add` prints the token once (the file keeps its hash);
`domicile access check` exits 0 allow, 6 deny, 2 bad input, and logs every
decision; a broken `policies.cedar` stops `access check` and `serve` with
exit 2 and the file's line.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import servekit
from domicile import api
from domicile.access.decisions import DecisionLog
from domicile.access.policy import parse_policies
from domicile.access.principals import principals_path
from domicile.audit.log import AuditLog
from domicile.census_store import KEEP, latest_census, save_census
from domicile.cli import run_cli
from domicile.datamap import load_map
from domicile.errors import ConfigError
from domicile.keys import keyed_hash, load_hmac_key
from domicile.state import state_engine

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = servekit.build_fleet(tmp_path_factory.mktemp("access"))
    servekit.add_principals(path)
    yield path


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = run_cli(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_principals_add_prints_the_token_once_and_keeps_its_hash(fleet, capsys):
    code, out, _ = _cli(
        capsys, "principals", "add", "eve", "--role", "reader", "--employer", "custodian",
        "--country", "usa", "-c", str(fleet),
    )  # fmt: skip
    assert code == 0
    token = out.strip().splitlines()[-1]
    assert token.startswith("dmc_") and len(token) > 40
    stored = principals_path(fleet).read_text()
    assert token not in stored
    entry = next(p for p in json.loads(stored)["principals"] if p["name"] == "eve")
    assert entry["country"] == "US" and len(entry["token_sha256"]) == 64
    assert principals_path(fleet).stat().st_mode & 0o077 == 0
    code, out, _ = _cli(capsys, "principals", "list", "--json", "-c", str(fleet))
    assert code == 0 and "token" not in out and "eve" in out
    # the same name twice, or a role that does not exist: bad input
    assert _cli(capsys, "principals", "add", "eve", "--role", "reader", "-c", str(fleet))[0] == 2
    code, _, err = _cli(capsys, "principals", "add", "x", "--role", "admin", "-c", str(fleet))
    assert code == 2 and "unknown role" in err
    assert _cli(capsys, "principals", "remove", "eve", "-c", str(fleet))[0] == 0
    assert "eve" not in principals_path(fleet).read_text()


@pytest.mark.parametrize(
    ("principal", "subject", "dataset", "code", "text"),
    [
        ("us-staff", "1", "users", 0, "allow"),
        ("us-staff", "6", "likes", 0, "allow"),
        ("ca-staff", "8", "users", 0, "allow"),
        ("ca-staff", "1", "users", 6, "deny"),  # the custodian's, in the wrong country
        ("outsider", "1", "users", 6, "deny"),
        ("app", "1", "users", 6, "role router"),
        ("us-staff", "abc", "users", 2, "malformed subject id"),
        ("us-staff", "1", "nope", 2, "unknown dataset"),
        ("nobody", "1", "users", 2, "no principal named"),
    ],
)
def test_access_check_exit_codes(fleet, capsys, principal, subject, dataset, code, text):
    before = len(servekit.decisions(fleet))
    got, out, err = _cli(
        capsys, "access", "check", "--principal", principal, "--subject", subject,
        "--dataset", dataset, "-c", str(fleet),
    )  # fmt: skip
    assert got == code, out + err
    assert text in out + err
    logged = servekit.decisions(fleet)[before:]
    if principal == "nobody":
        assert logged == []  # no principal, no decision
    else:
        assert len(logged) == 1 and logged[0]["endpoint"] == "domicile access check"
        assert logged[0]["decision"] == ("allow" if code == 0 else "deny")


def test_tickets_from_the_command_line(fleet, capsys):
    check = ("access", "check", "--principal", "support", "--subject", "6", "--dataset", "users")
    assert _cli(capsys, *check, "-c", str(fleet))[0] == 6
    code, out, err = _cli(
        capsys, "access", "ticket", "add", "--principal", "support", "--approver", "CPO",
        "--reason", "incident 7", "--expires", "2h", "--subject", "6", "-j", "US",
        "-c", str(fleet),
    )  # fmt: skip
    assert code == 0, err
    ticket = out.strip().splitlines()[-1]
    assert ticket.startswith("tkt_")
    stored = json.loads((fleet.parent / ".domicile" / "tickets.json").read_text())["tickets"][-1]
    key = load_hmac_key(fleet.parent / ".domicile" / "keys")
    assert stored["subjects"] == [keyed_hash(key, "subject:6")]  # a keyed hash, not the id
    code, out, _ = _cli(capsys, *check, "--ticket", ticket, "-c", str(fleet))
    assert code == 0 and "exception-ticket" in out
    # the ticket is for subject 6 only
    other = ("access", "check", "--principal", "support", "--subject", "1", "--dataset", "users")
    assert _cli(capsys, *other, "--ticket", ticket, "-c", str(fleet))[0] == 6
    code, out, _ = _cli(capsys, "access", "ticket", "list", "-c", str(fleet))
    assert ticket in out and "active" in out
    assert _cli(capsys, "access", "ticket", "revoke", ticket, "-c", str(fleet))[0] == 0
    assert _cli(capsys, *check, "--ticket", ticket, "-c", str(fleet))[0] == 6
    code, out, _ = _cli(capsys, "access", "ticket", "list", "--json", "-c", str(fleet))
    assert next(t for t in json.loads(out) if t["id"] == ticket)["revoked"] is True
    # bad input: an expiry in the past, an unknown jurisdiction
    bad = ("access", "ticket", "add", "--principal", "support", "--approver", "a", "--reason", "r")
    assert _cli(capsys, *bad, "--expires", "2001-01-01", "-c", str(fleet))[0] == 2
    assert _cli(capsys, *bad, "--expires", "1d", "-j", "XX", "-c", str(fleet))[0] == 2


def test_a_broken_policy_file_is_exit_2_with_its_line(fleet, capsys):
    policy = fleet.parent / "policies.cedar"
    policy.write_text(
        "// ours\n"
        "permit (principal, action, resource)\n"
        'when { principal.role == "reader" };\n'
        "\n"
        "forbid (principal, action, resource)\n"
        "when { principal.country == };\n"
    )
    try:
        args = ("--principal", "us-staff", "--subject", "1", "--dataset", "users")
        code, _, err = _cli(capsys, "access", "check", *args, "-c", str(fleet))
        assert code == 2 and f"{policy}:6" in err and "syntax error" in err
        code, _, err = _cli(capsys, "serve", "--port", "0", "-c", str(fleet))
        assert code == 2 and f"{policy}:6" in err
        # an attribute the gateway does not provide: the policy's line
        policy.write_text(
            'permit (principal, action, resource)\nwhen { principal.employr == "x" };\n'
        )
        code, _, err = _cli(capsys, "access", "check", *args, "-c", str(fleet))
        assert code == 2 and f"{policy}:1" in err and "employr" in err
        # a forbid overrides every permit
        policy.write_text(
            "permit (principal, action, resource);\n"
            '@id("no-likes")\n'
            'forbid (principal, action, resource) when { resource.dataset == "likes" };\n'
        )
        assert _cli(capsys, "access", "check", *args, "-c", str(fleet))[0] == 0
        like = ("--principal", "us-staff", "--subject", "1", "--dataset", "likes")
        code, out, _ = _cli(capsys, "access", "check", *like, "-c", str(fleet))
        assert code == 6 and "forbidden by no-likes" in out
        entry = servekit.decisions(fleet)[-1]
        assert (
            entry["policy_set"]
            != parse_policies("permit (principal, action, resource);", "x").digest
        )
    finally:
        policy.unlink()


def test_decisions_share_commits_and_the_log_verifies(tmp_path):
    engine = state_engine(f"sqlite:///{tmp_path / 'state.db'}", tmp_path)
    log = AuditLog(engine, "domicile/test")
    decisions = DecisionLog(log)
    indices: list[int] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        for i in range(10):
            index = decisions.record({"type": "access.decision", "n": k * 100 + i})
            with lock:
                indices.append(index)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    decisions.close()
    assert sorted(indices) == list(range(160))  # one chain, nothing lost or doubled
    assert log.size() == 160
    assert {log.event(i)["n"] for i in range(160)} == {
        k * 100 + i for k in range(16) for i in range(10)
    }
    engine.dispose()


def test_census_store(fleet):
    m = load_map(fleet)
    found = latest_census(m)  # api.scan stored one
    assert found is not None and found[0]["violations"] == 0
    for n in range(KEEP + 3):
        save_census(m, {"violations": n, "cells": []})
    data, taken = latest_census(m) or ({}, None)
    assert data["violations"] == KEEP + 2 and taken is not None and taken.tzinfo is not None
    engine = state_engine(m.state, m.base_dir)
    with engine.connect() as conn:
        import sqlalchemy as sa

        assert conn.execute(sa.text("SELECT count(*) FROM domicile_censuses")).scalar() == KEEP
    engine.dispose()
    api.scan(fleet)
    assert (latest_census(m) or ({}, None))[0]["violations"] == 0


def test_policy_statements_split_outside_strings_and_comments():
    text = (
        "// a comment; with a semicolon\n"
        "permit (principal, action, resource)\n"
        'when { principal.name == "a;b" };\n'
    )
    assert parse_policies(text, "inline").names == {}
    with pytest.raises(ConfigError) as err:
        parse_policies(text + "permit (principal,\n  action resource);\n", "inline")
    assert err.value.where == "inline:5"


def test_hs256_jwts(tmp_path):
    import datetime as dt

    import jwt as pyjwt

    from domicile.access.errors import Unauthenticated
    from domicile.access.principals import PrincipalDirectory
    from domicile.access.tokens import Authenticator, load_jwt_settings

    secret = tmp_path / "hs.secret"
    secret.write_bytes(b"k" * 64)
    settings = load_jwt_settings(secret, "gw")
    assert settings.algorithm == "HS256"
    auth = Authenticator(PrincipalDirectory(tmp_path / "domicile.yaml"), settings)
    exp = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
    claims = {"sub": "ops", "role": "auditor", "aud": "gw", "exp": exp, "country": "canada"}
    principal = auth.authenticate("Bearer " + pyjwt.encode(claims, b"k" * 64, algorithm="HS256"))
    assert (principal.name, principal.role, principal.country, principal.via) == (
        "ops", "auditor", "CA", "jwt"
    )  # fmt: skip
    for bad in (
        pyjwt.encode(claims, b"x" * 64, algorithm="HS256"),  # another secret
        pyjwt.encode({**claims, "role": "root"}, b"k" * 64, algorithm="HS256"),
        pyjwt.encode(claims, b"k" * 64, algorithm="HS512"),  # not the one algorithm
    ):
        with pytest.raises(Unauthenticated):
            auth.authenticate(f"Bearer {bad}")
    short = tmp_path / "short.secret"
    short.write_bytes(b"too short")
    with pytest.raises(ConfigError, match="at least 32"):
        load_jwt_settings(short, "gw")
