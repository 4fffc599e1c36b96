"""The FastAPI application of ``domicile serve``.

Default deny: every ``/v1`` route declares the role it needs through
:func:`_principal`, which authenticates the caller (401 when the
credentials are missing, malformed, unknown or expired) and checks the role
(403), logging every refusal in the audit log.  The records route goes on to
the Cedar decision (:meth:`~domicile.access.gateway.Gateway.decide_records`),
committed to the log before the answer is sent.  Open without credentials:
``/openapi.json``; ``/metrics`` and the dashboard ``/`` answer loopback
clients (``/metrics`` only with ``--metrics-token`` when one is set; the
dashboard to others with an auditor's credentials).

Routes are plain functions: FastAPI runs them in its thread pool, where the
store and state queries (synchronous SQLAlchemy) belong.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.security import HTTPBearer

from domicile import __version__
from domicile.access.errors import AccessDenied, NotFound, Unauthenticated
from domicile.access.principals import Principal, Role
from domicile.access.subjects import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    MAX_OFFSET,
    SUBJECT_ID_PATTERN,
    read_records,
    route,
    subject_home,
)
from domicile.service import errors
from domicile.service.context import Service
from domicile.service.limits import Limits
from domicile.service.metrics import CONTENT_TYPE

_bearer = HTTPBearer(auto_error=False, description="A principal's token, or a signed JWT.")
LOOPBACK = {"127.0.0.1", "::1", "localhost"}

SubjectId = Annotated[
    str,
    Path(
        description="The subject's id, as the directory holds it.",
        pattern=SUBJECT_ID_PATTERN,
        max_length=128,
    ),
]


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def _principal(role: Role | None, endpoint: str) -> Callable[..., Principal]:
    """A dependency: the authenticated principal, of *role* (None: any; the route decides)."""

    def dependency(request: Request, _: Any = Depends(_bearer)) -> Principal:
        svc = _service(request)
        g = svc.gateway
        subject = request.path_params.get("subject_id") if "records" in endpoint else None
        dataset = request.query_params.get("dataset") if subject is not None else None
        try:
            principal = g.authenticator.authenticate(request.headers.get("authorization"))
        except Unauthenticated as exc:
            g.refusal(None, 401, exc.message, endpoint, subject=subject, dataset=dataset)
            svc.metrics.decision(False, 401)
            raise
        if role is not None and principal.role != role:
            reason = f"role {principal.role} may not use {endpoint} (needs {role})"
            g.refusal(principal, 403, reason, endpoint, subject=subject, dataset=dataset)
            svc.metrics.decision(False, 403)
            raise AccessDenied(f"role {principal.role} may not use this endpoint (needs {role})")
        request.state.principal = principal  # a refused request is logged with it
        request.state.endpoint = endpoint
        return principal

    return dependency


def _log_invalid(service: Service, request: Request, message: str) -> None:
    """A records request of a known principal that failed validation: a logged refusal."""
    principal = getattr(request.state, "principal", None)
    endpoint = getattr(request.state, "endpoint", "")
    if principal is None or "records" not in endpoint:
        return
    subject = request.path_params.get("subject_id", "")[:4096]
    dataset = request.query_params.get("dataset")
    service.gateway.refusal(
        principal, 422, f"malformed request: {message}", endpoint, subject=subject, dataset=dataset
    )
    service.metrics.decision(False, 422)


def _log_refused(service: Service, status: int, message: str) -> None:
    """A request refused for its size, before anyone is known: a logged refusal."""
    service.gateway.refusal(None, status, message, "(request limits)")
    service.metrics.decision(False, status)


def _is_loopback(request: Request) -> bool:
    return request.client is not None and request.client.host in LOOPBACK


def create_app(service: Service) -> FastAPI:
    """The application over an opened :class:`~domicile.service.context.Service`."""
    app = FastAPI(
        title="domicile",
        version=__version__,
        description="Routing answers, the custodian gateway, metrics and the dashboard.",
        docs_url=None,  # Swagger UI loads scripts from a CDN: the schema is at /openapi.json
        redoc_url=None,
    )
    app.state.service = service
    errors.install(app, on_invalid=lambda request, message: _log_invalid(service, request, message))
    app.add_middleware(
        Limits,
        observe=service.metrics.observe,
        on_refuse=lambda status, message: _log_refused(service, status, message),
    )

    home_ep = "GET /v1/subjects/{id}/home"
    records_ep = "GET /v1/subjects/{id}/records"

    @app.get("/v1/subjects/{subject_id}/home", tags=["routing"])
    def subject_home_route(
        subject_id: SubjectId,
        request: Request,
        principal: Principal = Depends(_principal("router", home_ep)),
    ) -> dict[str, Any]:
        """Where this subject's new data must be written: status, jurisdiction, home per dataset."""
        return subject_home(_service(request).gateway.fleet, subject_id)[1].to_json()

    @app.get("/v1/route", tags=["routing"])
    def route_route(
        request: Request,
        country: Annotated[str, Query(min_length=2, max_length=64, description="A country.")],
        principal: Principal = Depends(_principal("router", "GET /v1/route")),
    ) -> dict[str, Any]:
        """The same answer for a subject not yet in the directory, from its country."""
        return route(_service(request).map, country).to_json()

    @app.get("/v1/subjects/{subject_id}/records", tags=["gateway"])
    def records_route(
        subject_id: SubjectId,
        request: Request,
        dataset: Annotated[str, Query(min_length=1, max_length=64)],
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
        ticket: Annotated[str | None, Query(max_length=64)] = None,
        principal: Principal = Depends(_principal(None, records_ep)),
    ) -> dict[str, Any]:
        """The subject's records of one dataset, read at home; only if the policy permits."""
        svc = _service(request)
        g = svc.gateway
        decision = g.decide_records(principal, subject_id, dataset, ticket, endpoint=records_ep)
        svc.metrics.decision(decision.allowed, decision.status)
        if not decision.allowed:
            raise AccessDenied("the policy does not permit this principal to read these records")
        if decision.answer is None:
            raise NotFound("no such subject in the directory")
        ds = svc.map.datasets[dataset]
        page = read_records(g.fleet, decision.answer, decision.sid, ds, limit, offset)
        return {
            "subject": str(decision.sid),
            "dataset": page.dataset,
            "stores": list(page.stores),
            "records": page.records,
            "limit": page.limit,
            "offset": page.offset,
            "next_offset": page.next_offset,
            "audit_entry": decision.audit_index,
        }

    def auditor(endpoint: str) -> Any:
        return Depends(_principal("auditor", endpoint))

    @app.get("/v1/census", tags=["audit"])
    def census_route(
        request: Request, principal: Principal = auditor("GET /v1/census")
    ) -> dict[str, Any]:
        """The last stored census (from `domicile scan` or `domicile watch`)."""
        found = _service(request).census()
        if found is None:
            raise NotFound("no census is stored yet: run `domicile scan`")
        census, taken = found
        return {"taken_at": taken.isoformat(timespec="seconds"), **census}

    @app.get("/v1/runs", tags=["audit"])
    def runs_route(
        request: Request, principal: Principal = auditor("GET /v1/runs")
    ) -> dict[str, Any]:
        """The runs in the journal, newest first, with their batches by state."""
        return {"runs": _service(request).runs(limit=100)}

    @app.get("/v1/runs/{run_id}", tags=["audit"])
    def run_route(
        request: Request,
        run_id: Annotated[str, Path(max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")],
        principal: Principal = auditor("GET /v1/runs/{id}"),
    ) -> dict[str, Any]:
        """One run: status, scope, summary and its batches."""
        from domicile.api import status

        svc = _service(request)
        if svc.journal.run(run_id) is None:
            raise NotFound(f"no run {run_id!r} in the journal")
        return status(svc.map, run_id).to_json()

    @app.get("/v1/audit/checkpoint", tags=["audit"])
    def checkpoint_route(
        request: Request, principal: Principal = auditor("GET /v1/audit/checkpoint")
    ) -> dict[str, Any]:
        """The latest signed checkpoint, and whether the whole log verifies."""
        cp = _service(request).checkpoint()
        return {
            "checkpoint": cp.note,
            "tree_size": cp.tree_size,
            "entries": cp.entries,
            "verified": cp.verified,
            "message": cp.message,
        }

    @app.get("/v1/audit/proof/{entry}", tags=["audit"])
    def proof_route(
        request: Request,
        entry: Annotated[int, Path(ge=0, le=2**62)],
        principal: Principal = auditor("GET /v1/audit/proof/{entry}"),
    ) -> dict[str, Any]:
        """The inclusion proof of an audit entry in the whole log (RFC 6962)."""
        log = _service(request).gateway.audit
        size = log.size()
        if entry >= size:
            raise NotFound(f"the audit log has {size} entries")
        proof = log.inclusion_proof(entry, size)
        return {
            "index": entry,
            "tree_size": size,
            "entry": log.entry(entry).decode("utf-8", "replace"),
            "leaf_hash": log.leaf_hash(entry).hex(),
            "hashes": [h.hex() for h in proof],
            "root": log.root(size).hex(),
        }

    @app.get("/metrics", tags=["operations"], response_class=Response)
    def metrics_route(request: Request) -> Response:
        """Prometheus metrics (loopback clients; with --metrics-token, that bearer token)."""
        svc = _service(request)
        token = svc.options.metrics_token
        if token is not None:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                raise Unauthenticated("/metrics needs the metrics token (Authorization: Bearer)")
        elif not _is_loopback(request):
            raise AccessDenied("/metrics answers loopback clients only (or set --metrics-token)")
        return Response(svc.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/", tags=["operations"], response_class=HTMLResponse)
    def dashboard_route(request: Request) -> HTMLResponse:
        """The dashboard: residency matrix, runs, checkpoint, recent denials, guard."""
        from domicile.service.dashboard import render_dashboard

        svc = _service(request)
        if not _is_loopback(request):
            principal = svc.gateway.authenticator.authenticate(request.headers.get("authorization"))
            if principal.role != "auditor":
                raise AccessDenied("the dashboard is for auditors")
        return HTMLResponse(render_dashboard(svc))

    return app
