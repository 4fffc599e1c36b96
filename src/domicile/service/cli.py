"""``domicile serve``: the routing API, custodian gateway, metrics and dashboard (uvicorn).

Mounted by the main CLI with ``app.command("serve")(serve_command)``.  Cheap
to import: FastAPI, uvicorn and the library are imported when it runs.
"""

from __future__ import annotations

from pathlib import Path

import typer


def serve_command(
    config: Path = typer.Option(Path("domicile.yaml"), "-c", "--config", help="The data map."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port to bind."),
    metrics_token: str | None = typer.Option(
        None,
        "--metrics-token",
        envvar="DOMICILE_METRICS_TOKEN",
        help="Require this bearer token on /metrics (default: loopback clients only).",
    ),
    jwt_key: Path | None = typer.Option(
        None, "--jwt-key", help="Accept JWTs: an Ed25519 public key (PEM) or an HS256 secret file."
    ),
    jwt_audience: str | None = typer.Option(
        None, "--jwt-audience", help="The `aud` JWTs must carry (required with --jwt-key)."
    ),
    jwt_issuer: str | None = typer.Option(None, "--jwt-issuer", help="The `iss` JWTs must carry."),
    workers: int = typer.Option(
        16, "--threads", min=1, max=256, help="Threads answering requests (store connections)."
    ),
    watch: str | None = typer.Option(
        None, "--watch", help="Run the drift watch beside the service, every 10m (30s, 1h...)."
    ),
    webhook: str | None = typer.Option(
        None, "--webhook", help="With --watch: POST new violations here as JSON."
    ),
) -> None:
    """Serve routing answers, the custodian gateway, /metrics and the dashboard."""
    from domicile.errors import ConfigError
    from domicile.service.server import serve
    from domicile.watch import parse_every

    if webhook is not None and watch is None:
        raise ConfigError("--webhook needs --watch", hint="add --watch 10m (or another interval)")
    every = parse_every(watch) if watch is not None else None
    serve(
        config,
        host=host,
        port=port,
        metrics_token=metrics_token,
        jwt_key=jwt_key,
        jwt_audience=jwt_audience,
        jwt_issuer=jwt_issuer,
        threads=workers,
        watch_every=every,
        webhook=webhook,
    )
