"""The dashboard at ``/``: one server-rendered page (Jinja2), no script, no build step.

It shows the residency matrix of the last stored census as the report's
heatmap (:func:`domicile.report_svg.heatmap_svg`), the newest runs with
their progress, the latest signed checkpoint and whether the log verifies,
the recent access denials, and the write guard's status per store.  The
page refreshes itself every 30 seconds (a ``<meta>`` refresh).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import jinja2

from domicile import __version__
from domicile.report import _matrix
from domicile.report_svg import heatmap_svg
from domicile.service.context import Service

TEMPLATES = Path(__file__).parent / "templates"


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )


def dashboard_data(service: Service) -> dict[str, Any]:
    """Everything the page shows, JSON-ready (the heatmap as SVG text)."""
    m = service.map
    found = service.census()
    census: dict[str, Any] | None = None
    if found is not None:
        data, taken = found
        matrix = _matrix(m, data, list(m.jurisdictions))
        census = {
            "taken_at": taken.isoformat(timespec="seconds"),
            "violations": data.get("violations", 0),
            "conflicts": data.get("conflicts", 0),
            "unresolved": data.get("unresolved", 0),
            "svg": heatmap_svg(matrix, "census", "Residency matrix: the last stored census"),
        }
    return {
        "version": __version__,
        "map": str(m.path),
        "census": census,
        "runs": service.runs(limit=10),
        "checkpoint": service.checkpoint(),
        "denials": service.recent_denials(limit=10),
        "guard": service.guard(),
        "policy": {
            "source": service.gateway.policies.source,
            "digest": service.gateway.policies.digest,
        },
    }


def render_dashboard(service: Service) -> str:
    """The dashboard's HTML."""
    template = _environment().get_template("dashboard.html")
    return template.render(**dashboard_data(service))
