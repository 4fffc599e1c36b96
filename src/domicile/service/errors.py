"""Errors to HTTP statuses and JSON bodies: the one place the service maps them.

Every error answer is ``{"status": N, "error": "<short name>", "message": "..."}``.
A message says what was wrong with the request; it never carries stored data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from domicile.access.errors import AccessDenied, BadRequest, NotFound, Unauthenticated
from domicile.errors import (
    ConfigError,
    ConnectorError,
    DomicileError,
    StateStoreError,
)

log = logging.getLogger("domicile.service")

_NAMES = {
    400: "bad request",
    401: "unauthorized",
    403: "forbidden",
    404: "not found",
    405: "method not allowed",
    413: "request too large",
    414: "request URI too long",
    422: "invalid request",
    431: "request headers too large",
    500: "internal error",
    503: "unavailable",
}


def status_for(exc: DomicileError) -> int:
    """The HTTP status of a domicile error."""
    if isinstance(exc, Unauthenticated):
        return 401
    if isinstance(exc, AccessDenied):
        return 403
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, BadRequest | ConfigError):
        return 422
    if isinstance(exc, StateStoreError | ConnectorError):
        return 503
    return 500


def error_body(status: int, message: str) -> dict[str, Any]:
    """The JSON body of an error answer."""
    return {"status": status, "error": _NAMES.get(status, "error"), "message": message}


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """An error answer."""
    if status == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="domicile"', **(headers or {})}
    return JSONResponse(error_body(status, message), status_code=status, headers=headers)


def install(app: FastAPI, on_invalid: Callable[[Request, str], None] | None = None) -> None:
    """Register the handlers: domicile errors, HTTP errors, validation errors, anything else.

    *on_invalid* hears of every request that failed validation (in a worker
    thread: it may write to the audit log) before the 422 is sent.
    """

    @app.exception_handler(DomicileError)
    async def _domicile(request: Request, exc: DomicileError) -> JSONResponse:
        status = status_for(exc)
        if status >= 500:
            log.error("%s %s: %s", request.method, request.url.path, exc)
        message = exc.message if status < 500 or status == 503 else "internal error"
        return error_response(status, message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = (
            exc.detail if isinstance(exc.detail, str) else _NAMES.get(exc.status_code, "error")
        )
        return error_response(exc.status_code, message, dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # the field and what is wrong with it; the rejected value is not echoed
        parts = []
        for e in exc.errors()[:5]:
            where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("path", "query"))
            parts.append(f"{where}: {e.get('msg', 'invalid')}")
        message = "; ".join(parts) or "invalid request"
        if on_invalid is not None:
            await anyio.to_thread.run_sync(on_invalid, request, message)
        return error_response(422, message)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return error_response(500, "internal error")
