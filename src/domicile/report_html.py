"""The residency report as one self-contained HTML page.

:func:`render_html` takes the dict of :func:`domicile.report.report_data`
and returns a page with inline CSS and inline SVG pictures only: no script,
no external font, image, stylesheet or URL, so that the file shows the same
offline, mailed, archived or printed.  Every value is escaped.  The layout is
one column that prints on A4; the pictures scale down with the page.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from domicile.errors import ConfigError
from domicile.render import human_bytes
from domicile.report_svg import heatmap_svg, moved_bars_svg

CSS = """
:root{--ink:#1b2430;--muted:#5f6874;--line:#dfe3e8;--soft:#f5f7fa;--red:#c62828;
--green:#2e7d32;--amber:#b7791f;--blue:#1f5aa6}
*{box-sizing:border-box}
html{-webkit-print-color-adjust:exact;print-color-adjust:exact}
body{margin:0;background:#eef1f5;color:var(--ink);font:14px/1.5 system-ui,-apple-system,
"Segoe UI",Roboto,"Helvetica Neue",Arial,"Noto Sans","Liberation Sans",sans-serif}
main{max-width:1080px;margin:24px auto;background:#fff;padding:36px 44px 28px;
border-radius:8px;box-shadow:0 1px 3px rgba(20,30,50,.12)}
h1{font-size:26px;margin:4px 0 14px;letter-spacing:-.01em}
h2{font-size:18px;margin:34px 0 10px;padding-bottom:6px;border-bottom:2px solid var(--line);
break-after:avoid}
h3{font-size:15px;margin:18px 0 6px}
p{margin:6px 0}
.eyebrow{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.08em}
.badge{display:inline-block;font-size:12px;font-weight:700;padding:2px 9px;border-radius:10px;
vertical-align:middle;text-transform:uppercase;letter-spacing:.04em;background:#e4e7eb}
.badge.good{background:#e3f1e4;color:var(--green)}.badge.bad{background:#fbe5e5;color:var(--red)}
.badge.warn{background:#fbf0dc;color:var(--amber)}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:3px 18px;margin:0}
dl.facts dt{color:var(--muted)}dl.facts dd{margin:0;overflow-wrap:anywhere}
code,pre{font-family:ui-monospace,"SFMono-Regular",Menlo,Consolas,"DejaVu Sans Mono",monospace;
font-size:12.5px}
.residual{display:flex;gap:18px;align-items:center;margin:24px 0 8px;padding:18px 22px;
border-radius:8px;border:2px solid;break-inside:avoid}
.residual.good{background:#f0f8f1;border-color:#9ccc9f}
.residual.bad{background:#fdf0f0;border-color:#e59b9b}
.residual .mark{font-size:40px;font-weight:800;line-height:1}
.residual.good .mark{color:var(--green)}.residual.bad .mark{color:var(--red)}
.residual .statement{font-size:22px;font-weight:700;margin:0}
.residual.bad .statement{color:var(--red)}
.tiles{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:10px;
margin:16px 0;break-inside:avoid}
.tile{background:var(--soft);border-radius:6px;padding:10px 14px}
.tile .v{font-size:22px;font-weight:700;font-variant-numeric:tabular-nums}
.tile .k{color:var(--muted);font-size:12px}
.tile.bad .v{color:var(--red)}.tile.good .v{color:var(--green)}
figure{margin:14px 0 22px;break-inside:avoid}
figcaption{font-weight:700;margin-bottom:6px}
figcaption span{font-weight:400;color:var(--muted)}
svg{max-width:100%;height:auto;display:block}
table{border-collapse:collapse;width:100%;margin:8px 0 4px;font-size:13px}
th,td{padding:5px 8px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{background:var(--soft);font-weight:600;font-size:12px;color:#39424e}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
tr{break-inside:avoid}
td.bad{color:var(--red);font-weight:700}
tr.expired td{background:#fff4f2}tr.group td{border-top:1.5px solid #c5ccd5}
.nowrap{white-space:nowrap}
.note{color:var(--muted);font-size:12.5px}
.warn-text{color:var(--red);font-weight:700}
pre{background:#f3f5f8;border:1px solid var(--line);border-radius:6px;padding:10px 12px;
white-space:pre-wrap;overflow-wrap:anywhere;margin:6px 0}
ol.commands{padding-left:20px}ol.commands li{margin:8px 0}
ol.commands pre{margin:4px 0 0}
#not-covered{background:#fffaf0;border:1px solid #f0d9a8;border-radius:8px;padding:4px 22px 12px;
margin-top:34px;break-inside:avoid}
#not-covered h2{border-bottom-color:#f0d9a8}
#not-covered .statement{font-weight:600}
footer{margin-top:26px;color:var(--muted);font-size:12px}
@media (max-width:800px){main{margin:0;padding:20px 14px;border-radius:0}th,td{padding:4px 5px}}
@page{size:A4;margin:12mm}
@media print{body{background:#fff}main{box-shadow:none;margin:0;padding:0;max-width:none}
th,td{padding:4px 5px}}
"""


def _e(value: object) -> str:
    """Escape any value for HTML text or an attribute."""
    return escape("" if value is None else str(value), quote=True)


def _num(value: int) -> str:
    return f"{int(value):,}"


def _table(
    head: Sequence[str],
    rows: Iterable[Sequence[str]],
    numeric: Iterable[int] = (),
    row_classes: Sequence[str] = (),
) -> str:
    """A table; *rows* hold already-escaped cell HTML; *numeric* columns are right-aligned."""
    right = set(numeric)
    ths = "".join(
        f'<th class="n">{_e(h)}</th>' if i in right else f"<th>{_e(h)}</th>"
        for i, h in enumerate(head)
    )
    body = []
    for k, row in enumerate(rows):
        cls = f' class="{_e(row_classes[k])}"' if k < len(row_classes) and row_classes[k] else ""
        tds = "".join(
            f'<td class="n">{c}</td>' if i in right else f"<td>{c}</td>" for i, c in enumerate(row)
        )
        body.append(f"<tr{cls}>{tds}</tr>")
    if not body:
        body.append(f'<tr><td colspan="{len(head)}" class="note">None.</td></tr>')
    return f"<table><thead><tr>{ths}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _when(iso: str | None) -> str:
    """An ISO time as people read it: ``2026-11-28 10:48:38 UTC``."""
    if not iso:
        return "not finished"
    return iso.replace("T", " ").replace("+00:00", " UTC")


def _header(data: Mapping[str, Any]) -> str:
    run, rep = data["run"], data["report"]
    tone = {"done": "good", "incomplete": "warn"}.get(run["status"], "bad")
    secs = run["duration_seconds"]
    facts = [
        ("Scope", ", ".join(run["scope"]) or "none"),
        ("Started", _when(run["started_at"])),
        ("Finished", _when(run["finished_at"])),
        ("Duration", f"{secs:,.1f} s" if secs is not None else "unknown"),
        ("Data map", rep["map"]),
        ("Map digest", f"sha256:{run['map_digest']}"),
    ]
    dl = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts)
    if run["map_changed"]:
        dl += (
            '<dt>Map now</dt><dd class="warn-text">changed since the run '
            f"(sha256:{_e(run['map_digest_now'])})</dd>"
        )
    for reason in run["reasons"]:
        dl += f'<dt>Incomplete</dt><dd class="warn-text">{_e(reason)}</dd>'
    return (
        '<header><div class="eyebrow">domicile · data residency report</div>'
        f'<h1>Run {_e(run["id"])} <span class="badge {tone}">{_e(run["status"])}</span></h1>'
        f'<dl class="facts">{dl}</dl></header>'
    )


def _residual(data: Mapping[str, Any]) -> str:
    r = data["residual"]
    good = r["violations_after"] == 0
    details = [
        f"Verification scan of {_e(r['scan_date'])}, made by the run after its last delete: "
        f"{_num(r['violations_before'])} records were out of place before the run, "
        f"{_num(r['violations_after'])} after."
    ]
    if r["excepted_after"]:
        details.append(
            f"{_num(r['excepted_after'])} records stay outside under approved exceptions "
            "(see the register below)."
        )
    if r["conflicts_after"]:
        details.append(f"{_num(r['conflicts_after'])} records are left in place as conflicts.")
    if r["unresolved_after"]:
        details.append(
            f"{_num(r['unresolved_after'])} records could not be attributed to a subject or a "
            "country (see below)."
        )
    return (
        f'<section id="residual" class="residual {"good" if good else "bad"}">'
        f'<div class="mark">{"✓" if good else "✗"}</div><div>'
        f'<p class="statement">{_e(r["statement"])}</p>'
        f'<p class="note">{" ".join(details)}</p></div></section>'
    )


def _tiles(data: Mapping[str, Any]) -> str:
    r, totals = data["residual"], data["moves"]["totals"]
    expired = sum(1 for e in data["exceptions"] if not e["active"])
    tiles = [
        ("bad" if r["violations_before"] else "", r["violations_before"], "out of place before"),
        (
            "good" if not r["violations_after"] else "bad",
            r["violations_after"],
            "out of place after",
        ),
        ("", totals.get("moved", 0), "records moved home"),
        ("", totals.get("copied", 0), "copies made at home"),
        ("bad" if expired else "", len(data["exceptions"]), f"exceptions ({expired} expired)"),
        ("", r["unresolved_after"], "unattributed records"),
    ]
    cells = "".join(
        f'<div class="tile {tone}"><div class="v">{_num(v)}</div><div class="k">{_e(k)}</div></div>'
        for tone, v, k in tiles
    )
    return f'<section class="tiles">{cells}</section>'


def _matrices(data: Mapping[str, Any]) -> str:
    parts = [
        '<h2>Where the data sits</h2><p class="note">Records of each jurisdiction\'s '
        "subjects in each store, summed over datasets. A record with owners in two "
        "jurisdictions counts in both rows.</p>"
    ]
    for side, caption in (("before", "Before the run"), ("after", "After the run")):
        mx = data["matrix"][side]
        what = "census" if side == "before" else "verification scan"
        title = f"{caption}: residency matrix ({what} of {mx['date']})"
        parts.append(
            f'<figure id="matrix-{side}"><figcaption>{_e(caption)} '
            f"<span>— {_e(what)} of {_e(mx['date'])}</span></figcaption>"
            f"{heatmap_svg(mx, f'matrix-{side}', title)}</figure>"
        )
    return "".join(parts)


def _moved(data: Mapping[str, Any]) -> str:
    rows = data["moves"]["datasets"]
    table = _table(
        ["dataset", "batches", "moved", "copied", "changed", "vanished", "pinned", "planned bytes"],
        (
            [
                _e(r["dataset"]),
                _num(r["batches"]),
                _num(r["moved"]),
                _num(r["copied"]),
                _num(r["changed"]),
                _num(r["vanished"]),
                _num(r["pinned"]),
                _e(human_bytes(r["planned_bytes"])),
            ]
            for r in rows
        ),
        numeric=range(1, 8),
    )
    return (
        '<h2>What moved</h2><figure id="moved"><figcaption>Records moved home per dataset '
        "<span>— copied, verified at home, then deleted abroad</span></figcaption>"
        f"{moved_bars_svg(rows, 'moved-bars', 'Records moved per dataset')}</figure>{table}"
        '<p class="note">changed: rows the application changed after their copy (moved again in '
        "a later pass); vanished: rows deleted by the application meanwhile; pinned: rows a "
        "foreign key kept in place. A message with owners at two homes gets two copies.</p>"
    )


def _delta(before: int, after: int, bad: bool = False) -> str:
    """``before → after``, the after count in red when *bad* and not zero."""
    cls = "nowrap warn-text" if bad and after else "nowrap"
    # Each side unbreakable, the arrow a break point: narrow pages and A4 wrap, not overflow.
    return f'<span class="nowrap">{_num(before)} →</span> <span class="{cls}">{_num(after)}</span>'


def _per_dataset(data: Mapping[str, Any]) -> str:
    rows, classes, previous = [], [], None
    for r in data["datasets"]:
        first = r["dataset"] != previous
        previous = r["dataset"]
        classes.append("group" if first else "")
        rows.append(
            [
                f"<strong>{_e(r['dataset'])}</strong>" if first else "",
                _e(r["store"]),
                _delta(r["records_before"], r["records_after"]),
                f'<span class="nowrap">{_e(human_bytes(r["bytes_before"]))} →</span> '
                f'<span class="nowrap">{_e(human_bytes(r["bytes_after"]))}</span>',
                _delta(r["violating_before"], r["violating_after"], bad=True),
                _delta(r["excepted_before"], r["excepted_after"]),
                _delta(r["unresolved_before"], r["unresolved_after"]),
                _num(r["moved_out"]),
            ]
        )
    head = ["dataset", "store", "records", "bytes", "out of place", "excepted", "unattributed"]
    return (
        "<h2>Records per dataset and store</h2>"
        + _table([*head, "moved out"], rows, numeric=range(2, 8), row_classes=classes)
        + '<p class="note">Before → after the run. Bytes are estimated from sampled rows. '
        "Unattributed: records whose owner or owner's country is unknown.</p>"
    )


def _exceptions_html(data: Mapping[str, Any]) -> str:
    rows, classes = [], []
    for x in data["exceptions"]:
        if x["active"]:
            state = '<span class="badge good">active</span>'
            days = x["days_left"]
            if days <= 30:
                state += f'<div class="note">{_num(days)} days left</div>'
        else:
            state = '<span class="badge bad">expired</span><div class="note">no longer counts</div>'
        classes.append(f"exception {x['status']}")
        rows.append(
            [
                _e(x["dataset"]),
                f"<code>{_e(x['filter_text'])}</code>",
                _e(x["allowed"]),
                _e(x["reason"]),
                _e(x["approved_by"]),
                f'<span class="nowrap">{_e(x["expires"])}</span>',
                state,
                _delta(x["records_before"], x["records"]),
            ]
        )
    head = ["dataset", "filter", "allowed in", "reason", "approved by", "expires", "status"]
    return (
        '<section id="exceptions"><h2>Exceptions register</h2>'
        '<p class="note">Records allowed outside the rule, with their approval. Records: those '
        "its filter matched outside the rule, before → after the run. An expired exception no "
        "longer counts: the records it matches are out of place like any other.</p>"
        + _table([*head, "records"], rows, numeric=(7,), row_classes=classes)
        + "</section>"
    )


def _unresolved_html(data: Mapping[str, Any]) -> str:
    u = data["unresolved"]["after"]
    where = [
        [_e(kind), _e(o["dataset"]), _e(o["store"]), _num(o["records"])]
        for kind, key in (
            ("no known owner", "orphans"),
            ("unknown country", "unknown_country_records"),
        )
        for o in u[key]
    ]
    conflicts = [
        [_e(c["jurisdiction"]), _e(c["dataset"]), _e(c["store"]), _num(c["conflicts"])]
        for c in u["conflicts"]
    ]
    values = [[_e(repr(v["value"])), _num(v["subjects"])] for v in u["unknown_countries"]]
    return (
        '<section id="unresolved"><h2>Conflicts, orphans and unknown countries</h2>'
        '<p class="note">As found by the verification scan. These records were not moved: '
        "no rule can place them.</p><h3>Conflicts</h3>"
        + _table(["jurisdiction", "dataset", "store", "records"], conflicts, numeric=(3,))
        + "<h3>Records without a known owner or country</h3>"
        + _table(["problem", "dataset", "store", "records"], where, numeric=(3,))
        + "<h3>Country values that name no country</h3>"
        + _table(["value in the directory", "subjects"], values, numeric=(1,))
        + "</section>"
    )


def _proof_html(data: Mapping[str, Any]) -> str:
    p = data["proof"]
    sig = {
        "valid": f'<span class="badge good">signature valid</span> {_e(p["signature_detail"])}',
        "invalid": f'<span class="badge bad">signature invalid</span> {_e(p["signature_detail"])}',
    }.get(
        p["signature"],
        f'<span class="badge warn">{_e(p["signature"])}</span> {_e(p["signature_detail"])}',
    )
    lines = [f"<p>{sig}</p>"]
    if p["log_matches"] is not None:
        lines.append(
            "<p>The audit log in the state store still has this checkpoint's root hash at "
            f"size {_num(p['tree_size'])}.</p>"
            if p["log_matches"]
            else '<p class="warn-text">The audit log in the state store no longer has this '
            "checkpoint's root hash: run the first command below.</p>"
        )
    note = p["checkpoint"] or "(no checkpoint)"
    commands = "".join(
        f"<li>{_e(c['does'].capitalize())}:<pre><code>{_e(c['command'])}</code></pre></li>"
        for c in p["commands"]
    )
    key = (
        f"<p>Public key ({_e(p['public_key_file'])}):</p><pre>{_e(p['public_key'])}</pre>"
        if p["public_key"]
        else ""
    )
    return (
        '<section id="proof"><h2>Proof</h2><p>The run ended by signing the head of the '
        "tamper-evident audit log (a C2SP checkpoint: origin, tree size, root hash, "
        "signature). The log holds digests of what moved, never personal data.</p>"
        + "".join(lines)
        + f'<pre id="checkpoint">{_e(note)}</pre>{key}'
        + f'<h3>Check it yourself</h3><ol class="commands">{commands}</ol></section>'
    )


def _remnants_html(data: Mapping[str, Any]) -> str:
    rem = data.get("remnants")
    if not rem:  # a report's data from before remnants were listed
        return ""
    blocks = []
    for s in rem["stores"]:
        count = "" if s["deleted"] is None else f" ({_num(s['deleted'])} deleted)"
        items = "".join(f"<li>{_e(r)}</li>" for r in s["remnants"])
        blocks.append(f"<h3>{_e(s['store'])}: {_e(s['engine'])}{count}</h3><ul>{items}</ul>")
    every = "".join(f"<li>{_e(r)}</li>" for r in rem["every_store"])
    return (
        '<section id="remnants"><h2>What may remain on disk</h2>'
        f'<p class="statement">{_e(rem["statement"])}</p>'
        + "".join(blocks)
        + (f"<h3>Every store</h3><ul>{every}</ul>" if every else "")
        + "</section>"
    )


def _not_covered_html(data: Mapping[str, Any]) -> str:
    nc = data["not_covered"]
    items = "".join(f"<li>{_e(i)}</li>" for i in nc["items"])
    extra = "".join(f"<li>{_e(i)}</li>" for i in nc["this_run"])
    return (
        '<section id="not-covered"><h2>What this report does not cover</h2>'
        f'<p class="statement">{_e(nc["statement"])}</p><ul>{items}</ul>'
        + (f"<h3>For this map and run</h3><ul>{extra}</ul>" if extra else "")
        + "</section>"
    )


def render_html(data: Mapping[str, Any]) -> str:
    """One self-contained HTML page of *data* (from :func:`report_data`).

    Inline CSS and SVG only: no script, no external font, image or link, so
    the file shows the same offline, archived or printed.  Every value is
    escaped.  Stable ids for readers and tests: ``matrix-before``,
    ``matrix-after``, ``checkpoint``, ``residual``, ``exceptions``,
    ``remnants``, ``not-covered``.
    """
    run, rep = data["run"], data["report"]
    body = "".join(
        [
            _header(data),
            _residual(data),
            _tiles(data),
            _matrices(data),
            _moved(data),
            _per_dataset(data),
            _exceptions_html(data),
            _unresolved_html(data),
            _proof_html(data),
            _remnants_html(data),
            _not_covered_html(data),
            f"<footer>Generated by domicile {_e(rep['domicile_version'])} at "
            f"{_e(_when(rep['generated_at']))}. The same data as JSON: "
            f"<code>domicile report {_e(run['id'])} --json</code>.</footer>",
        ]
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Residency report — run {_e(run['id'])}</title>"
        f"<style>{CSS}</style></head><body><main>{body}</main></body></html>\n"
    )


def write_report(path: Path, data: Mapping[str, Any]) -> Path:
    """Write the HTML report of *data* to *path* (folders created); return the path."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_html(data), encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write the report to {path}: {exc.strerror or exc}") from exc
    return path
