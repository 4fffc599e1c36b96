"""``domicile serve``: the routing API, the custodian gateway, metrics and the dashboard.

- :mod:`~domicile.service.app`: the FastAPI application and its routes;
- :mod:`~domicile.service.errors`: errors to HTTP statuses and JSON bodies, in one place;
- :mod:`~domicile.service.limits`: request size limits and request timing (ASGI);
- :mod:`~domicile.service.metrics`: ``/metrics`` in Prometheus text format;
- :mod:`~domicile.service.dashboard`: the server-rendered dashboard at ``/``;
- :mod:`~domicile.service.cli`: the ``serve`` command (uvicorn).

Importing this package is cheap; FastAPI is imported by what uses it.
"""

from __future__ import annotations
