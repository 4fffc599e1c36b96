"""What of the data map a run depends on, so a resume can refuse a map that changed it.

A run journals batches under the map it started with: the keys name rows of
tables in stores, the targets name homes.  Resuming under a map where a store
points elsewhere, a home moved or a key changed would apply those batches to
the wrong place.  :func:`depends_of` extracts exactly those parts (URLs are
taken with their password masked, so rotating a secret does not block a
resume); :func:`changed` names the entries that differ.
"""

from __future__ import annotations

from typing import Any

from domicile.model import DataMap


def depends_of(m: DataMap) -> dict[str, Any]:
    """The parts of *m* a run's batches depend on, as JSON-ready data."""
    return {
        "stores": {
            s.name: {"url": s.display_url, "labels": dict(sorted(s.labels.items()))}
            for s in m.stores.values()
        },
        "jurisdictions": {
            j.name: {
                "countries": sorted(j.countries),
                "home": list(j.home),
                "allowed": [dict(sorted(sel.items())) for sel in j.allowed],
            }
            for j in m.jurisdictions.values()
        },
        "datasets": {
            d.name: {
                "table": d.table,
                "objects": d.objects,
                "key": list(d.key),
                "owners": [o.text for o in d.owners],
                "multi_owner": d.multi_owner,
                "reference": d.reference,
                "stores": list(d.stores) if d.stores is not None else None,
                "blobs": d.blobs.column if d.blobs is not None else None,
            }
            for d in m.datasets.values()
        },
        "subjects": {"dataset": m.subjects.dataset, "id": m.subjects.id},
    }


def changed(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The entries (``stores.us``, ``datasets.users``) that differ between two dependency sets."""
    out: list[str] = []
    for section in sorted(set(before) | set(now)):
        a, b = before.get(section, {}), now.get(section, {})
        if section == "subjects":
            if a != b:
                out.append("subjects")
            continue
        for name in sorted(set(a) | set(b)):
            if name not in b:
                out.append(f"{section}.{name} (removed)")
            elif name not in a:
                out.append(f"{section}.{name} (added)")
            elif a[name] != b[name]:
                fields = sorted(
                    k for k in set(a[name]) | set(b[name]) if a[name].get(k) != b[name].get(k)
                )
                out.append(f"{section}.{name} ({', '.join(fields)})")
    return out
