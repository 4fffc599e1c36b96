"""Starting the service: validate everything first, then run uvicorn until SIGINT/SIGTERM.

Policies, the principals and tickets files, the JWT key and the state store
are all read before the port is bound, so a broken ``policies.cedar`` stops
``serve`` with exit 2 and the file's line instead of a server that denies
everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from domicile.errors import ConfigError

if TYPE_CHECKING:
    from fastapi import FastAPI

    from domicile.service.context import Service

log = logging.getLogger("domicile.service")


def build(
    config: Path,
    *,
    metrics_token: str | None = None,
    jwt_key: Path | None = None,
    jwt_audience: str | None = None,
    jwt_issuer: str | None = None,
    threads: int = 16,
) -> tuple[FastAPI, Service]:
    """The FastAPI app and its :class:`~domicile.service.context.Service` (close it after)."""
    from domicile import api
    from domicile.access.tokens import load_jwt_settings
    from domicile.service.app import create_app
    from domicile.service.context import ServeOptions, Service

    if jwt_audience and jwt_key is None:
        raise ConfigError("--jwt-audience needs --jwt-key")
    jwt = load_jwt_settings(jwt_key, jwt_audience or "", jwt_issuer) if jwt_key else None
    if metrics_token is not None and len(metrics_token) < 16:
        raise ConfigError("the metrics token must have at least 16 characters")
    gateway = api.gateway(config, jwt=jwt, pool_size=threads)
    gateway.principals.by_name("")  # read the principals file now: a broken one fails here
    service = Service(gateway, ServeOptions(metrics_token=metrics_token))
    return create_app(service), service


def serve(
    config: Path,
    *,
    host: str,
    port: int,
    metrics_token: str | None,
    jwt_key: Path | None,
    jwt_audience: str | None,
    jwt_issuer: str | None,
    threads: int,
    watch_every: float | None = None,
    webhook: str | None = None,
) -> None:
    """Run the service in the foreground; with *watch_every*, a drift watch beside it
    (its rounds on ``/metrics``; stopped with the service)."""
    import anyio.to_thread
    import uvicorn

    app, service = build(
        config,
        metrics_token=metrics_token,
        jwt_key=jwt_key,
        jwt_audience=jwt_audience,
        jwt_issuer=jwt_issuer,
        threads=threads,
    )
    print(
        f"domicile serve: http://{host}:{port}/ (policies: {service.gateway.policies.source}, "
        f"digest {service.gateway.policies.digest[:16]})",
        flush=True,
    )

    async def limit_threads() -> None:
        anyio.to_thread.current_default_thread_limiter().total_tokens = threads

    class Server(uvicorn.Server):
        # uvicorn stops gracefully on SIGINT/SIGTERM, then raises the signal again
        # to die by it; a stopped service is a clean exit 0 (after close()) instead.
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            handled = (signal.SIGINT, signal.SIGTERM)
            original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    server = Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            server_header=False,
            h11_max_incomplete_event_size=16 * 1024,
        )
    )

    async def main() -> None:
        await limit_threads()
        await server.serve()

    stop = threading.Event()
    watcher = None
    if watch_every is not None:
        from domicile import api
        from domicile.watch import WatchOptions

        options = WatchOptions(every=watch_every, webhook=webhook, stop=stop)
        watcher = threading.Thread(
            target=api.watch, args=(config, options), name="domicile-watch", daemon=True
        )
        watcher.start()
    try:
        asyncio.run(main())
    finally:
        stop.set()
        if watcher is not None:
            watcher.join(timeout=30)  # a census in progress ends at its next store query
        service.close()
