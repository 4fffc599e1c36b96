"""Request limits and timing, as one plain ASGI middleware (no per-request task or copy).

The API takes no request bodies: a body larger than :data:`MAX_BODY`, or one
sent without a ``Content-Length`` (chunked), is refused with 413 before any
route runs, and so are URLs longer than :data:`MAX_URL` (414) and header
blocks larger than :data:`MAX_HEADERS` (431).  Every answer's duration is
handed to *observe* with the route's path template (never the raw path, so
subject ids do not become metric labels); every refusal to *on_refuse*
before it is sent (the service logs it in the audit log).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio.to_thread

from domicile.service.errors import error_body

MAX_URL = 4096
MAX_HEADERS = 8192
MAX_BODY = 16 * 1024

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Observe = Callable[[str, str, int, float], None]
Refused = Callable[[int, str], None]


async def _refuse(send: Send, status: int, message: str) -> None:
    body = json.dumps(error_body(status, message)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _too_big(scope: Scope) -> tuple[int, str] | None:
    if len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") > MAX_URL:
        return 414, f"the URL is longer than {MAX_URL} bytes"
    headers = scope.get("headers") or []
    if sum(len(k) + len(v) for k, v in headers) > MAX_HEADERS:
        return 431, f"the headers are larger than {MAX_HEADERS} bytes"
    for k, v in headers:
        if k == b"content-length":
            try:
                if int(v) > MAX_BODY:
                    return 413, f"the body is larger than {MAX_BODY} bytes"
            except ValueError:
                return 413, "the Content-Length is not a number"
        elif k == b"transfer-encoding":
            return 413, "request bodies must declare a Content-Length"
    return None


class Limits:
    """Refuse oversized requests; time every answer."""

    def __init__(
        self, app: ASGIApp, observe: Observe | None = None, on_refuse: Refused | None = None
    ):
        self.app = app
        self.observe = observe
        self.on_refuse = on_refuse  # logs the refusal (in a worker thread) before it is sent

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        refused = _too_big(scope)
        status = 500
        if refused is not None:
            status = refused[0]
            if self.on_refuse is not None:
                await anyio.to_thread.run_sync(self.on_refuse, *refused)
            await _refuse(send, *refused)
        else:

            async def timed_send(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                await send(message)

            await self.app(scope, receive, timed_send)
        if self.observe is not None:
            route = scope.get("route")
            label = getattr(route, "path", None) or ("(refused)" if refused else "(unmatched)")
            self.observe(scope.get("method", ""), label, status, time.perf_counter() - start)
