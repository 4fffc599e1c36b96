"""The residency report of a run: where the data sat, what moved, what is left, and the proof.

:func:`report_data` gathers everything from the journal (a run's summary
holds the census before the run and the verification scan after it), the
data map and the audit log, as one JSON-ready dict: ``domicile report
--json`` prints it.  :func:`render_html` turns that dict into one
self-contained HTML file (inline CSS and SVG; no script, no font, no URL;
see :mod:`domicile.report_html`), so that it can be mailed, archived and
printed as it is.  Nothing here scans the
fleet again: the report shows what the run proved when it ended, and says
how to check that proof independently.
"""

from __future__ import annotations

import datetime as dt
import shlex
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from domicile import __version__
from domicile.audit.log import AuditLog
from domicile.audit.note import Checkpoint, NoteError, open_note, parse_note
from domicile.errors import AuditIntegrityError, ConfigError, DomicileError
from domicile.keys import PUBLIC_KEY_FILE, read_verifier_keys
from domicile.model import UNRESTRICTED, DataMap
from domicile.placement import store_allowed
from domicile.render import human_bytes
from domicile.report_html import render_html, write_report
from domicile.run.audit_events import keys_dir
from domicile.run.executor import map_digest
from domicile.run.journal import BatchRecord, Journal, RunRecord

__all__ = ["find_run", "render_html", "report_data", "write_report"]

EXPORT_DIR = "audit-export"
"""The folder the suggested ``domicile audit export`` command writes."""

CELL_FIELDS = ("records", "bytes", "violating", "excepted", "conflicts")
"""What a census cell counts (see :meth:`domicile.scan.Cell.as_dict`)."""

BATCH_COUNTS = ("copied", "deleted", "changed", "vanished", "pinned", "refreshed", "already")
"""The per-batch counts the report totals (the journal may hold more; they are kept too)."""

NOT_COVERED = (
    "Backups and snapshots of any store, including those taken before this run: they still "
    "hold the records as they were.",
    "Logs: application, web server, database and query logs, and the logs of other systems, "
    "which may contain personal data.",
    "Caches, CDNs, search indexes and message queues.",
    "Analytics copies: data warehouses, exports, spreadsheets and training sets.",
    "Replicas: read replicas, standby servers and cross-region copies not declared as stores.",
    "Any store not declared in the data map, and any table not declared as a dataset.",
)

EVERY_ENGINE_REMNANTS = (
    "Backups, snapshots and exports of the store taken before the delete still hold the "
    "records as they were, until they expire or are destroyed.",
    "Replicas, standbys and cross-region copies not declared as stores in the data map keep "
    "the records unless they replay the delete; domicile neither sees nor checks them.",
)
"""What may remain of a deleted record whatever the engine (see :func:`_remnants`)."""


# ---------------------------------------------------------------------------
# The data.


def find_run(journal: Journal, run_id: str | None) -> RunRecord:
    """The run named *run_id*, or the latest one; ConfigError when there is none to report."""
    if run_id is None:
        runs = journal.runs()
        if not runs:
            raise ConfigError(
                "the journal holds no runs yet",
                hint="bring the data home with `domicile run`, then ask for the report",
            )
        record = runs[-1]
    else:
        found = journal.run(run_id)
        if found is None:
            raise ConfigError(
                f"run '{run_id}' is not in the journal", hint="`domicile status` lists the runs"
            )
        record = found
    if record.summary is None:
        raise ConfigError(
            f"run '{record.id}' has no result yet (status {record.status})",
            hint=f"it is running or was interrupted: `domicile run --resume {record.id}` "
            "finishes it",
        )
    return record


def _matrix(m: DataMap, census: Mapping[str, Any], scope: Sequence[str]) -> dict[str, Any]:
    """Jurisdiction-by-store totals of a census, dense, with the rule's verdict per pair."""
    sums: dict[tuple[str, str], dict[str, int]] = {}
    for c in census["cells"]:
        total = sums.setdefault((c["jurisdiction"], c["store"]), dict.fromkeys(CELL_FIELDS, 0))
        for key in CELL_FIELDS:
            total[key] += int(c[key])
    seen_j = {j for j, _ in sums}
    seen_s = {s for _, s in sums}
    names = list(m.jurisdictions) + sorted(seen_j - set(m.jurisdictions))
    if UNRESTRICTED in names:
        names.remove(UNRESTRICTED)
        names.append(UNRESTRICTED)  # subjects without a rule come last
    # SQL stores always (a home may be empty before the run); object stores when counted.
    stores = [s for s in m.stores.values() if s.kind == "sql" or s.name in seen_s]
    store_names = [s.name for s in stores] + sorted(seen_s - set(m.stores))

    def allowed(j: str, s: str) -> bool:
        if j not in m.jurisdictions or s not in m.stores:
            return True  # unrestricted subjects may sit anywhere
        return store_allowed(m.jurisdictions[j], m.stores[s].labels)

    rows, cells = [], []
    for j in names:
        empty = dict.fromkeys(CELL_FIELDS, 0)
        row_total = sum(sums.get((j, s), empty)["records"] for s in store_names)
        row: dict[str, Any] = {"jurisdiction": j, "records": 0, "bytes": 0, "violating": 0}
        for s in store_names:
            v = sums.get((j, s), empty)
            cells.append(
                {
                    "jurisdiction": j,
                    "store": s,
                    **v,
                    "bytes_text": human_bytes(v["bytes"]),
                    "allowed": allowed(j, s),
                    "restricted": j in m.jurisdictions,
                    "share": round(v["records"] / row_total, 4) if row_total else 0.0,
                }
            )
            for key in ("records", "bytes", "violating"):
                row[key] += v[key]
        juris = m.jurisdictions.get(j)
        row["in_scope"] = j in scope
        row["countries"] = sorted(juris.countries) if juris else []
        row["allowed_stores"] = [s for s in store_names if allowed(j, s)] if juris else ["any"]
        countries = ", ".join(sorted(juris.countries)) if juris else ""
        if juris is None:
            row["note"] = "no rule applies"
        elif j not in scope:
            row["note"] = "not in this run"
        else:
            row["note"] = "in scope" if countries == j else countries
        rows.append(row)
    columns = [
        {
            "store": s,
            "country": m.stores[s].labels.get("country") if s in m.stores else None,
            "operator": m.stores[s].labels.get("operator") if s in m.stores else None,
            "kind": m.stores[s].kind if s in m.stores else None,
        }
        for s in store_names
    ]
    return {"date": census.get("date"), "rows": rows, "columns": columns, "cells": cells}


def _datasets(
    m: DataMap, before: Mapping[str, Any], after: Mapping[str, Any], batches: list[BatchRecord]
) -> list[dict[str, Any]]:
    """Records, bytes and violations per (dataset, store), before and after, and moved out."""
    table: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for side, census in (("before", before), ("after", after)):
        for c in census["cells"]:
            t = table[(c["dataset"], c["store"])]
            t[f"records_{side}"] += int(c["records"])
            t[f"bytes_{side}"] += int(c["bytes"])
            t[f"violating_{side}"] += int(c["violating"])
            t[f"excepted_{side}"] += int(c["excepted"])
        for key in ("orphans", "unknown_country_records"):
            for o in census.get(key, []):
                table[(o["dataset"], o["store"])][f"unresolved_{side}"] += int(o["records"])
    for b in batches:
        table[(b.dataset, b.source)]["moved_out"] += int(b.counts.get("deleted", 0))
    ds_order = {name: i for i, name in enumerate(m.datasets)}
    st_order = {name: i for i, name in enumerate(m.stores)}
    fields = ("records", "bytes", "violating", "excepted", "unresolved")
    out = []
    for (ds, store), t in sorted(
        table.items(),
        key=lambda kv: (ds_order.get(kv[0][0], 1 << 30), st_order.get(kv[0][1], 1 << 30), kv[0]),
    ):
        row: dict[str, Any] = {"dataset": ds, "store": store}
        for f in fields:
            row[f"{f}_before"] = t[f"{f}_before"]
            row[f"{f}_after"] = t[f"{f}_after"]
        row["moved_out"] = t["moved_out"]
        out.append(row)
    return out


def _moves(m: DataMap, plan: Mapping[str, Any], batches: list[BatchRecord]) -> dict[str, Any]:
    """The batches' counts per dataset (moved = verified at home, then deleted abroad)."""
    per: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(BATCH_COUNTS, 0))
    n_batches: dict[str, int] = defaultdict(int)
    for b in batches:
        n_batches[b.dataset] += 1
        for key, value in b.counts.items():
            per[b.dataset][key] = per[b.dataset].get(key, 0) + int(value)
    planned: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for mv in plan.get("moves", []):
        planned[mv["dataset"]][0] += int(mv["records"])
        planned[mv["dataset"]][1] += int(mv["bytes"])
    names = [d for d in m.datasets if d in per or d in planned]
    names += sorted((set(per) | set(planned)) - set(names))
    rows: list[dict[str, Any]] = []
    totals: dict[str, int] = defaultdict(int)
    for d in names:
        numbers = {
            "moved": per[d].get("deleted", 0),
            **per[d],
            "batches": n_batches[d],
            "planned_records": planned[d][0],
            "planned_bytes": planned[d][1],
        }
        for key, value in numbers.items():
            totals[key] += value
        rows.append({"dataset": d, **numbers})
    return {"datasets": rows, "totals": dict(totals)}


def _exceptions(
    m: DataMap, before: Mapping[str, Any], after: Mapping[str, Any], today: dt.date
) -> list[dict[str, Any]]:
    """The exceptions register: the map's exceptions, their state today and what they cover."""
    covered_before = {e["index"]: int(e["records"]) for e in before.get("exceptions", [])}
    covered_after = {e["index"]: int(e["records"]) for e in after.get("exceptions", [])}
    out = []
    for w in m.exceptions:
        active = w.active(today)
        where = ", ".join(f"{k} = {v}" for k, v in w.where.items()) or "every record"
        allowed = (
            "any store"
            if w.allowed == "any"
            else " or ".join(", ".join(f"{k}={v}" for k, v in s.items()) for s in w.allowed)
        )
        out.append(
            {
                "index": w.index,
                "dataset": w.dataset,
                "filter": dict(w.where),
                "filter_text": where,
                "allowed": allowed,
                "jurisdictions": list(w.jurisdictions) if w.jurisdictions else None,
                "reason": w.reason,
                "approved_by": w.approved_by,
                "expires": w.expires.isoformat(),
                "active": active,
                "status": "active" if active else "expired",
                "days_left": (w.expires - today).days,
                # an expired exception's count is what it *would* cover: now violating
                "records": covered_after.get(w.index, 0),
                "records_before": covered_before.get(w.index, 0),
            }
        )
    return out


def _unresolved(census: Mapping[str, Any]) -> dict[str, Any]:
    """Conflicts, orphans and unknown countries of one census."""
    conflicts = [
        {k: c[k] for k in ("jurisdiction", "store", "dataset", "conflicts")}
        for c in census["cells"]
        if c["conflicts"]
    ]
    orphans = list(census.get("orphans", []))
    unknown = list(census.get("unknown_country_records", []))
    return {
        "conflicts": conflicts,
        "orphans": orphans,
        "unknown_country_records": unknown,
        "unknown_countries": list(census.get("unknown_countries", [])),
        "conflict_records": int(census.get("conflicts", 0)),
        "orphan_records": sum(int(o["records"]) for o in orphans),
        "unknown_records": sum(int(o["records"]) for o in unknown),
    }


def _proof(m: DataMap, engine: sa.Engine, note: str | None, run_id: str) -> dict[str, Any]:
    """The run's checkpoint, what this machine can say about it, and how to check it."""
    config = shlex.quote(str(m.path))
    out_dir = shlex.quote(EXPORT_DIR)
    commands = [
        {
            "command": f"domicile audit verify -c {config}",
            "does": "rehash every audit entry in the state store and check every checkpoint",
        },
        {
            "command": f"domicile audit export -c {config} {out_dir}",
            "does": "write the log, its checkpoints and the public key to a folder for an auditor",
        },
        {
            "command": f"domicile audit verify --from {out_dir} --public-key {out_dir}/audit.pub",
            "does": "check the exported folder offline, with only the published public key",
        },
        {
            "command": f"domicile verify {shlex.quote(run_id)} -c {config}",
            "does": "scan the fleet afresh: exit 0 when nothing of the run's scope is out of place",
        },
    ]
    proof: dict[str, Any] = {
        "checkpoint": note,
        "origin": None,
        "tree_size": None,
        "root_hash": None,
        "public_key": None,
        "public_key_file": None,
        "signature": "missing" if note is None else "unchecked",
        "signature_detail": "the run ended without a signed checkpoint" if note is None else "",
        "log_matches": None,
        "commands": commands,
    }
    if note is None:
        return proof
    try:
        parsed = parse_note(note)
        head = Checkpoint.parse(parsed.text)
    except NoteError as exc:
        raise AuditIntegrityError(
            f"the checkpoint recorded with run '{run_id}' is malformed: {exc}",
            hint=f"run `domicile audit verify -c {config}`",
        ) from exc
    proof.update(origin=head.origin, tree_size=head.size, root_hash=parsed.text.split("\n")[2])
    pub = keys_dir(m) / PUBLIC_KEY_FILE
    if pub.exists():
        verifiers = read_verifier_keys(pub)
        proof["public_key"] = verifiers[0].key_text()
        proof["public_key_file"] = str(pub)
        try:
            _, sigs = open_note(note, verifiers)
            proof["signature"] = "valid"
            proof["signature_detail"] = "signed by " + ", ".join(sorted({s.name for s in sigs}))
        except NoteError as exc:
            proof["signature"] = "invalid"
            proof["signature_detail"] = str(exc)
    else:
        proof["signature_detail"] = f"no public key at {pub} to check the signature with"
    # Does the log in the state store still have this checkpoint's root at its size?
    try:
        proof["log_matches"] = AuditLog(engine, head.origin).root(head.size) == head.root
    except DomicileError:
        proof["log_matches"] = False  # the log is shorter than the checkpoint says
    return proof


def _not_covered(
    m: DataMap, before: Mapping[str, Any], scope: Sequence[str], unresolved: Mapping[str, Any]
) -> dict[str, Any]:
    """What the run does not reach: the fixed list, then what this map and run leave out."""
    notes = []
    counted = {c["dataset"] for c in before["cells"]}
    references = [d.name for d in m.datasets.values() if d.reference]
    if references:
        notes.append(
            f"Reference datasets ({', '.join(references)}) are declared shared and non-personal: "
            "they are copied where foreign keys need them and never deleted."
        )
    objects = [d.name for d in m.datasets.values() if not d.is_sql and d.name not in counted]
    if objects:
        notes.append(f"Object datasets not counted by the census: {', '.join(objects)}.")
    obj_stores = [
        s.name for s in m.object_stores() if s.name not in {c["store"] for c in before["cells"]}
    ]
    if obj_stores:
        notes.append(
            f"Object stores without counted records ({', '.join(obj_stores)}) are not in the "
            "matrices; objects named by a row move with that row."
        )
    outside = [j for j in m.jurisdictions if j not in scope]
    if outside:
        notes.append(
            f"Jurisdictions outside this run's scope ({', '.join(outside)}): nothing of theirs "
            "was moved."
        )
    stuck = unresolved["orphan_records"] + unresolved["unknown_records"]
    if stuck:
        notes.append(
            f"{stuck:,} records whose subject or country is unknown were counted but left "
            "where they are: no rule can place them until their owner is known."
        )
    if unresolved["conflict_records"]:
        notes.append(
            f"{unresolved['conflict_records']:,} records whose owners' jurisdictions share no "
            "allowed store were left in place as conflicts."
        )
    return {
        "statement": (
            f"This report covers only the stores and datasets declared in the data map "
            f"({m.path.name}). The run did not look at, move or delete personal data in backups, "
            "logs, caches, analytics copies, replicas, or any store not declared in the map; "
            "copies there must be found and handled separately."
        ),
        "items": list(NOT_COVERED),
        "this_run": notes,
    }


def _remnants(m: DataMap, batches: list[BatchRecord]) -> dict[str, Any]:
    """What may remain on disk of what the run deleted, per store it deleted from.

    The facts are the connectors' (each dialect's and object store's
    ``remnants``): dead tuples, WAL, undo and binary logs, free pages,
    object versions.  Objects named by rows (``blobs``) count against their
    object store when the dataset names one; else every candidate store is listed.
    """
    from sqlalchemy.engine import make_url

    from domicile.connectors.dialects import dialect_for
    from domicile.connectors.objects import ObjectStore

    deleted: dict[str, int | None] = {}
    for b in batches:
        if n := int(b.counts.get("deleted", 0)):
            deleted[b.source] = (deleted.get(b.source) or 0) + n
        ds = m.datasets.get(b.dataset)
        if (n := int(b.counts.get("blobs_deleted", 0))) and ds is not None and ds.blobs:
            where = ds.blobs.stores or tuple(s.name for s in m.object_stores())
            for name in where:  # one candidate: the count is its own
                deleted[name] = (deleted.get(name) or 0) + n if len(where) == 1 else None
    stores = []
    for store in m.stores.values():
        if store.name not in deleted:
            continue
        if store.kind == "sql":
            kind: Any = dialect_for(make_url(store.url).get_backend_name().lower())
        else:
            kind = type(ObjectStore(store.name, store.url, store.options))
        stores.append(
            {
                "store": store.name,
                "engine": kind.display_name,
                "deleted": deleted[store.name],
                "remnants": list(kind.remnants),
            }
        )
    for name in sorted(set(deleted) - set(m.stores)):  # the map changed since the run
        generic = dialect_for("")
        stores.append(
            {
                "store": name,
                "engine": "not in the data map now",
                "deleted": deleted[name],
                "remnants": list(generic.remnants),
            }
        )
    statement = (
        "Deleting a record takes it out of what a store serves, not always off its disks. "
        "What follows may still hold records this run deleted; domicile cannot erase it: the "
        "operator of each store must (vacuum, expire logs and versions, destroy old backups)."
        if stores
        else "This run deleted nothing, so it left no remnants."
    )
    return {
        "statement": statement,
        "stores": stores,
        "every_store": list(EVERY_ENGINE_REMNANTS) if stores else [],
    }


def _iso(when: dt.datetime) -> str:
    """ISO-8601 in UTC; the journal writes UTC, and SQLite hands it back without a zone."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC).isoformat(timespec="seconds")


def report_data(
    m: DataMap,
    journal: Journal,
    engine: sa.Engine,
    run_id: str | None,
    *,
    today: dt.date | None = None,
) -> dict[str, Any]:
    """Everything the report shows, JSON-ready (what ``domicile report --json`` prints).

    *run_id* ``None`` means the latest run.  *engine* is the state store's
    (the audit log's) engine.  *today* decides which exceptions have expired
    (default: today, UTC).  ConfigError when there is no such run, or the
    run has not ended.
    """
    record = find_run(journal, run_id)
    summary: dict[str, Any] = record.summary or {}
    today = today or dt.datetime.now(dt.UTC).date()
    before, after = summary["before"], summary["after"]
    scope = list(record.scope)
    batches = journal.batches(record.id)
    digest_now = map_digest(m) if m.path.exists() else None
    duration = summary.get("seconds")
    if duration is None and record.finished_at is not None:
        duration = (record.finished_at - record.started_at).total_seconds()
    after_cells = [c for c in after["cells"] if c["jurisdiction"] in scope]
    violations_after = int(summary.get("violations_after", 0))
    unresolved_after = _unresolved(after)
    return {
        "report": {
            "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "today": today.isoformat(),
            "domicile_version": __version__,
            "map": str(m.path),
        },
        "run": {
            "id": record.id,
            "status": record.status,
            "scope": scope,
            "started_at": _iso(record.started_at),
            "finished_at": _iso(record.finished_at) if record.finished_at else None,
            "duration_seconds": duration,
            "map_digest": record.map_digest,
            "map_digest_now": digest_now,
            "map_changed": digest_now is not None and digest_now != record.map_digest,
            "counts": summary.get("counts", {}),
            "reasons": summary.get("reasons", []),
        },
        "residual": {
            "jurisdictions": scope,
            "violations_before": int(summary.get("violations_before", 0)),
            "violations_after": violations_after,
            "verified": violations_after == 0 and record.status == "done",
            "excepted_after": sum(int(c["excepted"]) for c in after_cells),
            "conflicts_after": sum(int(c["conflicts"]) for c in after_cells),
            "unresolved_after": int(after.get("unresolved", 0)),
            "scan_date": after.get("date"),
            "statement": (
                f"{violations_after:,} records of {', '.join(scope) or 'no jurisdiction'} "
                "remain outside their allowed stores."
            ),
        },
        "matrix": {"before": _matrix(m, before, scope), "after": _matrix(m, after, scope)},
        "datasets": _datasets(m, before, after, batches),
        "moves": _moves(m, summary.get("plan", {}), batches),
        "exceptions": _exceptions(m, before, after, today),
        "unresolved": {"before": _unresolved(before), "after": unresolved_after},
        "proof": _proof(m, engine, summary.get("checkpoint"), record.id),
        "remnants": _remnants(m, batches),
        "not_covered": _not_covered(m, before, scope, unresolved_after),
    }
