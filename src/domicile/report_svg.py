"""The pictures of the residency report, as inline SVG (no script, no fonts, no network).

Two pictures: the residency matrix as a heatmap (rows = jurisdictions,
columns = stores) and a bar picture of the records moved per dataset.  Both
read the JSON-ready dicts that :func:`domicile.report.report_data` builds and
return SVG text with every value escaped.  The sizes are fixed in user units
and the ``viewBox`` lets the page scale a picture down (narrow windows,
print) without reflowing it.  No ``xmlns``: SVG inline in HTML needs none,
and the report must not name a single URL.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

# Sequential blue for "share of the jurisdiction's records in this store":
# light enough at the top end that the red hatching of a violating cell and
# the count written on it both stay readable.
_LOW = (0xEE, 0xF3, 0xFA)
_HIGH = (0x1F, 0x5A, 0xA6)
_BAR = "#2f6db5"
_EMPTY_FILL = "#f6f7f9"
_RED = "#c62828"
_AMBER = "#b7791f"
_GREEN = "#2e7d32"
_GREEN_BAR = "#34a853"  # lighter than the text green: it must show on the darkest tint
_PURPLE = "#6a1b9a"
_INK = "#1b2430"
_MUTED = "#6b7480"
_FONT = (
    "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, "
    "'Noto Sans', 'Liberation Sans', sans-serif"
)

# Heatmap geometry (user units).
_LABEL_W = 124  # the jurisdiction labels on the left
_HEAD_H = 50  # the store names on top
_CELL_H = 54
_TOTAL_W = 120  # the row totals on the right
_LEGEND_H = 64
_MIN_CELL_W = 130
_MAX_CELL_W = 150
_CHAR_W = 7.4  # average width of a 12-unit bold glyph, to size columns to their names


def _e(value: object) -> str:
    """Escape any value for SVG text or an attribute."""
    return escape(str(value), quote=True)


def _n(value: int) -> str:
    return f"{value:,}"


def share_fill(share: float) -> str:
    """The fill colour of a cell holding *share* (0..1) of its row's records."""
    # A floor of 12% keeps a cell with a handful of records visibly tinted,
    # so a small leftover never looks like an empty store.
    t = 0.12 + 0.88 * max(0.0, min(1.0, share))
    rgb = (round(lo + (hi - lo) * t) for lo, hi in zip(_LOW, _HIGH, strict=True))
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _text_colour(share: float) -> str:
    return "#ffffff" if share > 0.55 else _INK


def _truncate(text: str, width: float, char_w: float = _CHAR_W) -> str:
    """Cut *text* with an ellipsis so that it fits *width* user units."""
    fits = max(3, int(width / char_w))
    return text if len(text) <= fits else text[: fits - 1] + "…"


def _defs(prefix: str) -> str:
    """Patterns and gradients of one picture (ids prefixed: several SVGs share a page)."""
    return (
        "<defs>"
        f'<pattern id="{prefix}-hatch" width="7" height="7" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)">'
        f'<line x1="0" y1="0" x2="0" y2="7" stroke="{_RED}" stroke-width="2.2" '
        'stroke-opacity="0.55"/></pattern>'
        f'<linearGradient id="{prefix}-scale" x1="0" x2="1" y1="0" y2="0">'
        f'<stop offset="0" stop-color="{share_fill(0)}"/>'
        f'<stop offset="1" stop-color="{share_fill(1)}"/>'
        "</linearGradient>"
        "</defs>"
    )


def _cell_second_line(cell: Mapping[str, Any], width: float) -> tuple[str, str]:
    """The small line under a cell's count and its colour: what matters most first."""
    for key, label, colour in (
        ("violating", "out of place", _RED),
        ("conflicts", "conflicts", _PURPLE),
        ("excepted", "excepted", _AMBER),
    ):
        if cell[key]:
            text = f"{_n(cell[key])} {label}"
            # Too long for a narrow column: the colour and the legend tell what it counts.
            return (text if _text_w(text) + 14 <= width else f"{_n(cell[key])} ✗"), colour
    if cell["records"]:
        share = cell["share"] * 100
        return ("<1%" if 0 < share < 1 else f"{share:.0f}%"), ""
    return "", ""


def _text_w(text: str, size: float = 11) -> float:
    """A rough width of *text* in bold at *size* (no font metrics without a browser)."""
    return len(text) * size * 0.56


def _cell(prefix: str, x: float, y: float, w: float, cell: Mapping[str, Any]) -> str:
    """One heatmap cell: tinted by share, hatched and outlined in red when violating."""
    records = int(cell["records"])
    share = float(cell["share"])
    classes = ["cell"]
    if records == 0:
        classes.append("cell-empty")
    if cell["allowed"]:
        classes.append("cell-allowed")
    if cell["violating"]:
        classes.append("cell-violating")
    if cell["excepted"]:
        classes.append("cell-excepted")
    if cell["conflicts"]:
        classes.append("cell-conflict")
    fill = share_fill(share) if records else _EMPTY_FILL
    ink = _text_colour(share) if records else "#a0a7b0"
    rx, ry, rw, rh = x + 2, y + 2, w - 4, _CELL_H - 4
    rule = "allowed" if cell["allowed"] else "not allowed"
    tip = (
        f"{cell['jurisdiction']} in {cell['store']}: {_n(records)} records "
        f"({cell['bytes_text']}), {share * 100:.1f}% of the jurisdiction's records; "
        f"store {rule}; {_n(cell['violating'])} violating, {_n(cell['excepted'])} excepted, "
        f"{_n(cell['conflicts'])} conflicts"
    )
    parts = [
        f'<g class="{" ".join(classes)}" data-jurisdiction="{_e(cell["jurisdiction"])}" '
        f'data-store="{_e(cell["store"])}" data-records="{records}" '
        f'data-violating="{int(cell["violating"])}">',
        f"<title>{_e(tip)}</title>",
        f'<rect x="{rx:.1f}" y="{ry:.1f}" width="{rw:.1f}" height="{rh:.1f}" rx="4" '
        f'fill="{fill}"/>',
    ]
    if cell["violating"]:
        parts.append(
            f'<rect x="{rx:.1f}" y="{ry:.1f}" width="{rw:.1f}" height="{rh:.1f}" rx="4" '
            f'fill="url(#{prefix}-hatch)" stroke="{_RED}" stroke-width="2.5"/>'
        )
    elif cell["conflicts"]:
        parts.append(
            f'<rect x="{rx:.1f}" y="{ry:.1f}" width="{rw:.1f}" height="{rh:.1f}" rx="4" '
            f'fill="none" stroke="{_PURPLE}" stroke-width="2"/>'
        )
    elif cell["excepted"]:
        parts.append(
            f'<rect x="{rx:.1f}" y="{ry:.1f}" width="{rw:.1f}" height="{rh:.1f}" rx="4" '
            f'fill="none" stroke="{_AMBER}" stroke-width="2" stroke-dasharray="4 3"/>'
        )
    if cell["allowed"] and cell["restricted"]:
        # A green bar along the bottom: "this store may hold this jurisdiction's data".
        parts.append(
            f'<rect x="{rx + 6:.1f}" y="{ry + rh - 5:.1f}" width="{rw - 12:.1f}" height="3" '
            f'rx="1.5" fill="{_GREEN_BAR}" stroke="#ffffff" stroke-width="1"/>'
        )
    cx = x + w / 2
    second, colour = _cell_second_line(cell, rw)
    # The count sits on a halo of the cell's own fill so that hatching never crosses it.
    halo = f'stroke="{fill}" stroke-width="4" paint-order="stroke" stroke-linejoin="round"'
    parts.append(
        f'<text x="{cx:.1f}" y="{y + (24 if second else 32):.1f}" text-anchor="middle" '
        f'font-size="15" font-weight="700" fill="{ink}" {halo} class="cell-count">'
        f"{_n(records)}</text>"
    )
    if second and colour:
        # Counts that need attention sit on a white pill: readable over any tint or hatch.
        pw = min(rw - 6, _text_w(second) + 12)
        parts.append(
            f'<rect x="{cx - pw / 2:.1f}" y="{y + 31:.1f}" width="{pw:.1f}" height="15" rx="7.5" '
            f'fill="#ffffff" fill-opacity="0.94"/>'
            f'<text x="{cx:.1f}" y="{y + 42:.1f}" text-anchor="middle" font-size="11" '
            f'font-weight="700" fill="{colour}">{_e(second)}</text>'
        )
    elif second:
        parts.append(
            f'<text x="{cx:.1f}" y="{y + 41:.1f}" text-anchor="middle" font-size="11" '
            f'fill="{ink}" {halo}>{_e(second)}</text>'
        )
    parts.append("</g>")
    return "".join(parts)


def _legend(prefix: str, x: float, y: float) -> str:
    """The key: the share scale, hatching, the exception outline and the allowed bar."""
    t = f'font-size="11" fill="{_MUTED}"'
    items = [
        f'<g class="legend" transform="translate({x:.1f},{y:.1f})">',
        f'<text x="0" y="12" {t}>Share of the jurisdiction\'s records in the store</text>',
        f'<rect x="0" y="19" width="160" height="12" rx="2" fill="url(#{prefix}-scale)" '
        'stroke="#c9ced6" stroke-width="0.5"/>',
        f'<text x="0" y="45" {t}>0%</text>',
        f'<text x="160" y="45" text-anchor="end" {t}>100%</text>',
        # violating
        f'<rect x="200" y="16" width="26" height="18" rx="3" fill="{share_fill(0.3)}"/>',
        f'<rect x="200" y="16" width="26" height="18" rx="3" fill="url(#{prefix}-hatch)" '
        f'stroke="{_RED}" stroke-width="2"/>',
        f'<text x="233" y="24" font-size="11" fill="{_INK}">Store not allowed:</text>',
        f'<text x="233" y="37" font-size="11" fill="{_INK}">records out of place</text>',
        # exception
        f'<rect x="360" y="16" width="26" height="18" rx="3" fill="{share_fill(0.3)}" '
        f'stroke="{_AMBER}" stroke-width="2" stroke-dasharray="4 3"/>',
        f'<text x="393" y="24" font-size="11" fill="{_INK}">Kept under an</text>',
        f'<text x="393" y="37" font-size="11" fill="{_INK}">approved exception</text>',
        # allowed
        f'<rect x="510" y="16" width="26" height="18" rx="3" fill="{share_fill(0.3)}"/>',
        f'<rect x="513" y="29" width="20" height="3" rx="1.5" fill="{_GREEN_BAR}" '
        'stroke="#ffffff" stroke-width="1"/>',
        f'<text x="543" y="24" font-size="11" fill="{_INK}">Store allowed for</text>',
        f'<text x="543" y="37" font-size="11" fill="{_INK}">the jurisdiction</text>',
        "</g>",
    ]
    return "".join(items)


_LEGEND_W = 650


def heatmap_svg(matrix: Mapping[str, Any], svg_id: str, title: str) -> str:
    """The residency matrix as a heatmap: one row per jurisdiction, one column per store.

    *matrix* is one side of ``report_data(...)["matrix"]``: ``rows``,
    ``columns`` and a dense ``cells`` list.  Each cell is a ``<g>`` with the
    class ``cell`` (plus ``cell-violating``, ``cell-excepted``,
    ``cell-conflict``, ``cell-allowed``, ``cell-empty``) and data attributes,
    so tests and readers can query it.
    """
    rows: Sequence[Mapping[str, Any]] = matrix["rows"]
    cols: Sequence[Mapping[str, Any]] = matrix["columns"]
    by_key = {(c["jurisdiction"], c["store"]): c for c in matrix["cells"]}
    longest = max((len(c["store"]) for c in cols), default=8)
    cell_w = max(_MIN_CELL_W, min(_MAX_CELL_W, longest * _CHAR_W + 20))
    grid_w = _LABEL_W + cell_w * len(cols) + _TOTAL_W
    width = max(grid_w, _LEGEND_W) + 8
    grid_h = _HEAD_H + _CELL_H * max(1, len(rows))
    height = grid_h + 14 + _LEGEND_H
    prefix = _e(svg_id)
    out = [
        f'<svg class="heatmap" id="{prefix}-svg" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" width="{width:.0f}" height="{height:.0f}" '
        f'role="img" aria-labelledby="{prefix}-title" font-family="{_e(_FONT)}">',
        f'<title id="{prefix}-title">{_e(title)}</title>',
        _defs(prefix),
    ]
    # Column heads: the store's name, then its country and operator labels.
    for i, col in enumerate(cols):
        cx = _LABEL_W + cell_w * i + cell_w / 2
        labels = " · ".join(v for v in (col.get("country"), col.get("operator")) if v)
        out.append(
            f'<g class="col-head"><title>{_e(col["store"])} {_e(labels)}</title>'
            f'<text x="{cx:.1f}" y="20" text-anchor="middle" font-size="12" font-weight="700" '
            f'fill="{_INK}">{_e(_truncate(col["store"], cell_w - 8))}</text>'
            f'<text x="{cx:.1f}" y="36" text-anchor="middle" font-size="10.5" fill="{_MUTED}">'
            f"{_e(_truncate(labels, cell_w - 8, 6.0))}</text></g>"
        )
    tx = _LABEL_W + cell_w * len(cols) + 14
    out.append(
        f'<text x="{tx:.1f}" y="20" font-size="12" font-weight="700" fill="{_INK}">Total</text>'
    )
    for r, row in enumerate(rows):
        y = _HEAD_H + _CELL_H * r
        name = row["jurisdiction"]
        sub = row["note"]
        out.append(
            f'<g class="row-head"><text x="8" y="{y + 24:.1f}" font-size="13" font-weight="700" '
            f'fill="{_INK}">{_e(_truncate(name, _LABEL_W - 16, 8.0))}</text>'
            f'<text x="8" y="{y + 40:.1f}" font-size="10.5" fill="{_MUTED}">'
            f"{_e(_truncate(sub, _LABEL_W - 16, 6.0))}</text></g>"
        )
        for i, col in enumerate(cols):
            cell = by_key[(name, col["store"])]
            out.append(_cell(prefix, _LABEL_W + cell_w * i, y, cell_w, cell))
        out.append(
            f'<text x="{tx:.1f}" y="{y + 24:.1f}" font-size="13" font-weight="700" '
            f'fill="{_INK}">{_n(row["records"])}</text>'
        )
        if row["violating"]:
            out.append(
                f'<text x="{tx:.1f}" y="{y + 40:.1f}" font-size="11" font-weight="700" '
                f'fill="{_RED}">{_n(row["violating"])} out of place</text>'
            )
        else:
            out.append(
                f'<text x="{tx:.1f}" y="{y + 40:.1f}" font-size="11" fill="{_GREEN}">'
                "none out of place</text>"
            )
    if not rows:
        out.append(
            f'<text x="{_LABEL_W:.0f}" y="{_HEAD_H + 30}" font-size="13" fill="{_MUTED}">'
            "The census counted no records.</text>"
        )
    out.append(_legend(prefix, 8, grid_h + 14))
    out.append("</svg>")
    return "".join(out)


# Bar picture geometry.
_BAR_LABEL_W = 130
_BAR_W = 420
_BAR_H = 22
_BAR_GAP = 12
_BAR_NOTE_W = 300


def moved_bars_svg(rows: Sequence[Mapping[str, Any]], svg_id: str, title: str) -> str:
    """Records moved per dataset: one horizontal bar each, the count and notes beside it.

    *rows* are ``report_data(...)["moves"]["datasets"]``; a record is *moved*
    once its home copy was verified and it was deleted from the foreign store.
    """
    prefix = _e(svg_id)
    top = 8
    height = top + (_BAR_H + _BAR_GAP) * max(1, len(rows)) + 4
    width = _BAR_LABEL_W + _BAR_W + _BAR_NOTE_W
    most = max((int(r["moved"]) for r in rows), default=0) or 1
    out = [
        f'<svg class="bars" id="{prefix}-svg" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-labelledby="{prefix}-title" font-family="{_e(_FONT)}">',
        f'<title id="{prefix}-title">{_e(title)}</title>',
    ]
    for i, row in enumerate(rows):
        y = top + (_BAR_H + _BAR_GAP) * i
        moved = int(row["moved"])
        length = _BAR_W * moved / most
        notes = [f"{_n(moved)} moved"]
        if row["copied"] != moved:
            notes.append(f"{_n(row['copied'])} copies made")
        for key in ("changed", "vanished", "pinned"):
            if row.get(key):
                notes.append(f"{_n(row[key])} {key}")
        out.append(
            f'<g class="bar" data-dataset="{_e(row["dataset"])}" data-moved="{moved}">'
            f"<title>{_e(row['dataset'])}: {_e(', '.join(notes))}</title>"
            f'<text x="{_BAR_LABEL_W - 10}" y="{y + 15}" text-anchor="end" font-size="12.5" '
            f'font-weight="600" fill="{_INK}">{_e(_truncate(row["dataset"], _BAR_LABEL_W - 14))}'
            "</text>"
            f'<rect x="{_BAR_LABEL_W}" y="{y}" width="{_BAR_W}" height="{_BAR_H}" rx="3" '
            f'fill="{_EMPTY_FILL}"/>'
            f'<rect x="{_BAR_LABEL_W}" y="{y}" width="{max(length, 1.5 if moved else 0):.1f}" '
            f'height="{_BAR_H}" rx="3" fill="{_BAR}"/>'
            f'<text x="{_BAR_LABEL_W + _BAR_W + 10}" y="{y + 15}" font-size="12" fill="{_INK}">'
            f"{_e(_truncate(' · '.join(notes), _BAR_NOTE_W - 14, 6.4))}</text></g>"
        )
    if not rows:
        out.append(
            f'<text x="{_BAR_LABEL_W}" y="{top + 15}" font-size="12.5" fill="{_MUTED}">'
            "Nothing was moved.</text>"
        )
    out.append("</svg>")
    return "".join(out)
