"""`domicile serve` against a real uvicorn on loopback: routing, records, audit, metrics, schema.

One server for the module (servekit): the hand-built fleet moved home, a
census stored, one principal per role.  Every decision a request causes is
looked up afterwards in the audit log read from the state store directly,
and the log is verified with `domicile audit verify`.
"""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

import servekit
from domicile.access.policy import EXAMPLE_POLICY
from domicile.cli import run_cli
from domicile.keys import keyed_hash, load_hmac_key
from domicile.service.server import build

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servekit.Served]:
    with servekit.served_fleet(tmp_path_factory.mktemp("serve_api")) as s:
        yield s


def _subject_hash(path: Path, subject: str) -> str:
    key = load_hmac_key(path.parent / ".domicile" / "keys")
    return keyed_hash(key, f"subject:{subject}")


# -- routing -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "status", "jurisdiction", "home"),
    [
        ("1", "restricted", "US", "us"),  # moved home from sg by the run
        ("6", "restricted", "US", "us"),
        ("3", "restricted", "CA", "ca"),
        ("8", "restricted", "CA", "ca"),
        ("4", "unrestricted", None, None),  # Brazil: no jurisdiction names it
        ("5", "unresolved", None, None),  # "Atlantis": no country
    ],
)
def test_home_of_each_kind_of_subject(served, subject, status, jurisdiction, home):
    with served.client("app") as c:
        r = c.get(f"/v1/subjects/{subject}/home")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["subject"] == subject
    assert body["status"] == status
    assert body["jurisdiction"] == jurisdiction
    if home is None:
        assert body["homes"] == {}
    else:
        # every personal dataset goes to the jurisdiction's one SQL home
        assert set(body["homes"]) == {
            "users", "invoices", "lines", "items", "likes", "messages", "dms", "posts"
        }  # fmt: skip
        assert set(body["homes"].values()) == {home}


def test_unknown_and_malformed_subjects(served):
    with served.client("app") as c:
        unknown = c.get("/v1/subjects/424242/home")
        malformed = c.get("/v1/subjects/abc/home")  # the directory's ids are integers
        shaped = c.get("/v1/subjects/1%20OR%201=1/home")
    assert unknown.status_code == 404 and "no such subject" in unknown.json()["message"]
    assert malformed.status_code == 422 and "integers" in malformed.json()["message"]
    assert shaped.status_code == 422


@pytest.mark.parametrize(
    ("country", "status", "jurisdiction"),
    [
        ("US", "restricted", "US"),
        ("usa", "restricted", "US"),
        ("United States", "restricted", "US"),
        ("ca", "restricted", "CA"),
        ("BR", "unrestricted", None),
    ],
)
def test_route_for_a_new_signup(served, country, status, jurisdiction):
    with served.client("app") as c:
        r = c.get("/v1/route", params={"country": country})
    assert r.status_code == 200, r.text
    assert r.json()["subject"] is None
    assert (r.json()["status"], r.json()["jurisdiction"]) == (status, jurisdiction)


def test_route_refuses_what_is_no_country(served):
    with served.client("app") as c:
        assert c.get("/v1/route", params={"country": "Narnia"}).status_code == 422
        missing = c.get("/v1/route")
    assert missing.status_code == 422 and "country" in missing.json()["message"]


# -- records -----------------------------------------------------------------------


def test_records_to_the_custodians_staff_in_the_jurisdiction(served):
    with served.client("us-staff") as c:
        users = c.get("/v1/subjects/1/records", params={"dataset": "users"})
        page1 = c.get("/v1/subjects/1/records", params={"dataset": "likes", "limit": 1})
        page2 = c.get(
            "/v1/subjects/1/records", params={"dataset": "likes", "limit": 1, "offset": 1}
        )
    assert users.status_code == 200, users.text
    body = users.json()
    assert body["stores"] == ["us"]  # read at home
    assert body["records"] == [{"id": 1, "name": "Ann", "country": "usa"}]
    assert page1.json()["next_offset"] == 1 and len(page1.json()["records"]) == 1
    assert page2.json()["next_offset"] is None
    posts = {page1.json()["records"][0]["post_id"], page2.json()["records"][0]["post_id"]}
    assert posts == {10, 11}
    with served.client("ca-staff") as c:
        ca = c.get("/v1/subjects/8/records", params={"dataset": "users"})
    assert ca.status_code == 200 and ca.json()["records"][0]["name"] == "Flo"

    entry = next(e for e in servekit.decisions(served.path) if e["index"] == body["audit_entry"])
    assert entry["principal"] == "us-staff" and entry["role"] == "reader"
    assert entry["decision"] == "allow" and entry["status"] == 200
    assert entry["subject"] == _subject_hash(served.path, "1")
    assert entry["policy_set"] == hashlib.sha256(EXAMPLE_POLICY.encode()).hexdigest()
    assert entry["policies"] == ["custodian-staff-in-jurisdiction"]
    assert entry["dataset"] == "users"


@pytest.mark.parametrize(
    ("who", "subject", "why"),
    [
        ("outsider", "1", "no policy permits"),  # another employer
        ("ca-staff", "1", "no policy permits"),  # the custodian's, but not in the US
        ("app", "1", "role router may not read records"),
        ("auditor", "8", "role auditor may not read records"),
        ("us-staff", "4", "no policy permits"),  # an unrestricted subject has no custodian
    ],
)
def test_records_refused_to_others_and_logged(served, who, subject, why):
    before = len(servekit.decisions(served.path))
    with served.client(who) as c:
        r = c.get(f"/v1/subjects/{subject}/records", params={"dataset": "users"})
    assert r.status_code == 403, r.text
    assert set(r.json()) == {"status", "error", "message"}
    logged = servekit.decisions(served.path)[before:]
    assert len(logged) == 1
    assert logged[0]["principal"] == who and logged[0]["decision"] == "deny"
    assert logged[0]["status"] == 403 and why in logged[0]["reason"]
    assert logged[0]["subject"] == _subject_hash(served.path, subject)


def test_unknown_subject_is_refused_like_a_known_one(served):
    # a principal the policy refuses cannot tell a missing subject from a protected one
    with served.client("outsider") as c:
        r = c.get("/v1/subjects/424242/records", params={"dataset": "users"})
    assert r.status_code == 403


def test_bad_dataset_and_bounds(served):
    with served.client("us-staff") as c:
        assert c.get("/v1/subjects/1/records", params={"dataset": "nope"}).status_code == 422
        assert c.get("/v1/subjects/1/records", params={"dataset": "sounds"}).status_code == 422
        assert (
            c.get("/v1/subjects/1/records", params={"dataset": "users", "limit": 5000}).status_code
            == 422
        )


# -- census, runs, audit ------------------------------------------------------------


def test_auditor_reads_census_runs_and_audit(served):
    with served.client("auditor") as c:
        census = c.get("/v1/census").json()
        runs = c.get("/v1/runs").json()["runs"]
        run = c.get(f"/v1/runs/{runs[0]['run']}").json()
        missing = c.get("/v1/runs/r-nope")
        checkpoint = c.get("/v1/audit/checkpoint").json()
        proof = c.get("/v1/audit/proof/0").json()
        beyond = c.get("/v1/audit/proof/999999")
    assert census["violations"] == 0 and census["cells"] and "taken_at" in census
    assert runs[0]["status"] == "done" and runs[0]["progress"] == 1.0
    assert run["run"]["run"] == runs[0]["run"] and run["batches"]
    assert missing.status_code == 404
    assert checkpoint["verified"] is True and checkpoint["checkpoint"].startswith("domicile/")
    assert proof["index"] == 0 and proof["hashes"] and len(proof["root"]) == 64
    assert beyond.status_code == 404


def test_roles_gate_every_endpoint(served):
    with served.client("app") as c:
        assert c.get("/v1/census").status_code == 403
        assert c.get("/v1/audit/checkpoint").status_code == 403
    with served.client("auditor") as c:
        assert c.get("/v1/subjects/1/home").status_code == 403
        assert c.get("/v1/route", params={"country": "US"}).status_code == 403
    with served.client("us-staff") as c:
        assert c.get("/v1/runs").status_code == 403


def test_every_error_is_json_and_the_schema_is_open(served):
    with httpx.Client(base_url=served.url) as c:
        schema = c.get("/openapi.json")
        lost = c.get("/nowhere")
        wrong = c.post("/v1/route")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert {"/v1/subjects/{subject_id}/home", "/v1/route", "/v1/census", "/metrics"} <= set(paths)
    for r in (lost, wrong):
        assert r.headers["content-type"].startswith("application/json")
        assert r.json()["message"]
    assert lost.status_code == 404 and wrong.status_code == 405


# -- metrics ------------------------------------------------------------------------


def test_metrics_on_loopback(served):
    with served.client("us-staff") as c:
        c.get("/v1/subjects/1/records", params={"dataset": "users"})
    with httpx.Client(base_url=served.url) as c:
        r = c.get("/metrics")
    assert r.status_code == 200
    text = r.text
    assert 'domicile_violating_records{jurisdiction="US",store="us"} 0.0' in text
    assert 'domicile_run_progress_ratio{run="' in text
    assert 'domicile_access_decisions_total{decision="allow",status="200"}' in text
    assert 'domicile_http_request_duration_seconds_bucket{le="0.001",method="GET"' in text
    assert 'route="/v1/subjects/{subject_id}/records"' in text
    assert "/v1/subjects/1/" not in text  # ids never become labels


def test_metrics_token(served):
    app, service = build(served.path, metrics_token="m" * 20)
    try:
        with servekit.running(app) as url, httpx.Client(base_url=url) as c:
            assert c.get("/metrics").status_code == 401
            bad = c.get("/metrics", headers={"Authorization": "Bearer " + "x" * 20})
            good = c.get("/metrics", headers={"Authorization": "Bearer " + "m" * 20})
    finally:
        service.close()
    assert bad.status_code == 401
    assert good.status_code == 200 and "domicile_census_records" in good.text


# -- schemathesis ---------------------------------------------------------------------

ROLE_OF = {"/v1/subjects/{subject_id}/records": "us-staff", "/v1/route": "app"}


def _fuzz(served: servekit.Served, operation: Any, mode: GenerationMode, who: str) -> int:
    headers = {"Authorization": f"Bearer {served.tokens[who]}"}
    calls = 0

    @settings(
        max_examples=6,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: schemathesis.Case) -> None:
        nonlocal calls
        response = case.call(base_url=served.url, headers=headers)
        calls += 1
        assert response.status_code < 500, (case.formatted_path, response.text)
        if response.status_code >= 400:
            assert response.json()["message"]

    check()
    return calls


def test_schemathesis_finds_no_server_error(served):
    """Valid and invalid cases from the served schema, each operation with its role's principal."""
    schema = schemathesis.openapi.from_url(f"{served.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9
    calls = 0
    for operation in operations:
        path = operation.path
        who = ROLE_OF.get(path, "app" if path.endswith("/home") else "auditor")
        calls += _fuzz(served, operation, GenerationMode.POSITIVE, who)
        if any(True for _ in operation.iter_parameters()):  # nothing to get wrong otherwise
            calls += _fuzz(served, operation, GenerationMode.NEGATIVE, who)
    assert calls >= len(operations)


# -- and the log still verifies --------------------------------------------------------


def test_audit_log_verifies_after_decisions(served, capsys):
    with served.client("us-staff") as c:
        for subject in ("1", "6", "3", "4"):
            c.get(f"/v1/subjects/{subject}/records", params={"dataset": "users"})
    assert len(servekit.decisions(served.path)) >= 4
    code = run_cli(["audit", "verify", "-c", str(served.path)])
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
    assert "audit log verified" in out.out


def test_the_serve_command_stops_cleanly_on_sigterm(served):
    """`domicile serve` in its own process: it answers, and SIGTERM ends it with exit 0."""
    sock = servekit._free_socket()
    port = sock.getsockname()[1]
    sock.close()
    argv = [sys.executable, "-m", "domicile", "serve", "-c", str(served.path), "--port", str(port)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/v1/route?country=US", timeout=2)
                break
            except httpx.HTTPError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
                time.sleep(0.1)
        assert r.status_code == 401
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "domicile serve: http://127.0.0.1" in out
