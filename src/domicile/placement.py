"""Placement rules: which stores may hold a record, and where home is.

Pure functions over the model; no I/O.  The census and the planner both ask
:func:`classify` about a group of records (their owners' countries, the
store they sit in, the exceptions whose filter they match) and get one
verdict, so the two can never disagree.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from domicile.errors import ConfigError
from domicile.model import (
    UNRESTRICTED,
    DataMap,
    Dataset,
    Jurisdiction,
    Store,
    Waiver,
    selector_matches,
)

ORPHAN = "!orphan"
"""An owner that is empty or names no subject in any directory."""

UNKNOWN = "!unknown"
"""An owner whose subject's country cannot be mapped to a country code."""

Status = Literal["ok", "violating", "excepted", "conflict", "orphan", "unknown"]


@dataclass(frozen=True)
class Verdict:
    """What the rule says about records in one store."""

    status: Status
    jurisdictions: tuple[str, ...]  # the owners' jurisdictions (UNRESTRICTED if none)
    waiver: Waiver | None = None  # the active exception that allows them
    expired: Waiver | None = None  # an expired exception that would have allowed them


def store_allowed(j: Jurisdiction, labels: Mapping[str, str]) -> bool:
    """True when a store with *labels* may hold data of *j*'s subjects."""
    return any(selector_matches(s, labels) for s in j.allowed)


def allowed_stores(m: DataMap, j: Jurisdiction) -> list[str]:
    """Names of the map's stores that may hold *j*'s data."""
    return [s.name for s in m.stores.values() if store_allowed(j, s.labels)]


def home_store(m: DataMap, j: Jurisdiction, dataset: Dataset) -> str:
    """The store where *dataset*'s records of *j* go: the first home of the right kind."""
    kind = "sql" if dataset.is_sql else "objects"
    for name in j.home:
        if m.stores[name].kind == kind:
            return name
    raise ConfigError(
        f"jurisdiction {j.name} has no {'SQL' if kind == 'sql' else 'object'} store in its home "
        f"for dataset '{dataset.name}'",
        where=f"jurisdictions.{j.name}.home",
        hint=f"add a {'database' if kind == 'sql' else 'file:// or s3://'} store to home",
    )


def _shared_store_exists(m: DataMap, juris: Iterable[Jurisdiction]) -> bool:
    js = list(juris)
    return any(all(store_allowed(j, s.labels) for j in js) for s in m.stores.values())


def _waiver_for(
    waivers: Iterable[Waiver], flags: frozenset[int], store: Store, juris: tuple[str, ...]
) -> Waiver | None:
    for w in waivers:
        covers = w.jurisdictions is None or all(j in w.jurisdictions for j in juris)
        if w.index in flags and w.allows(store.labels) and covers:
            return w
    return None


def classify(
    m: DataMap,
    store: Store,
    dataset: Dataset,
    owner_countries: Iterable[str],
    matched_waivers: frozenset[int],
    today: dt.date,
) -> Verdict:
    """The verdict for records of *dataset* in *store* whose owners have these countries.

    *owner_countries* holds one alpha-2 code per owner, or ORPHAN / UNKNOWN.
    *matched_waivers* are the indexes of the exceptions whose ``where`` the
    records match.  Owners that are orphans are ignored as long as one owner
    is known (a message whose recipient was deleted still belongs to its
    sender); a record with only orphan owners is an orphan.
    """
    countries = list(owner_countries)
    if UNKNOWN in countries:
        return Verdict("unknown", ())
    known = [c for c in countries if c != ORPHAN]
    if not known:
        return Verdict("orphan", ())
    juris_objs: list[Jurisdiction] = []
    for c in known:
        j = m.jurisdiction_of_country(c)
        if j is not None and j not in juris_objs:
            juris_objs.append(j)
    if not juris_objs:
        return Verdict("ok", (UNRESTRICTED,))
    names = tuple(j.name for j in juris_objs)
    if dataset.multi_owner == "each":
        # One copy at each owner's home: any restricted owner's rule makes it legal here.
        legal = any(store_allowed(j, store.labels) for j in juris_objs)
    else:
        legal = all(store_allowed(j, store.labels) for j in juris_objs)
    if legal:
        return Verdict("ok", names)
    active = [w for w in m.exceptions if w.dataset == dataset.name and w.active(today)]
    expired = [w for w in m.exceptions if w.dataset == dataset.name and not w.active(today)]
    waiver = _waiver_for(active, matched_waivers, store, names)
    if waiver is not None:
        return Verdict("excepted", names, waiver=waiver)
    lapsed = _waiver_for(expired, matched_waivers, store, names)
    if dataset.multi_owner == "all" and not _shared_store_exists(m, juris_objs):
        return Verdict("conflict", names, expired=lapsed)
    return Verdict("violating", names, expired=lapsed)


def targets(m: DataMap, dataset: Dataset, verdict: Verdict) -> list[str]:
    """Home stores a violating record must reach: one for `all`, one per owner for `each`."""
    juris = [m.jurisdictions[n] for n in verdict.jurisdictions if n in m.jurisdictions]
    if not juris:
        return []
    if dataset.multi_owner == "each":
        homes: list[str] = []
        for j in juris:
            h = home_store(m, j, dataset)
            if h not in homes:
                homes.append(h)
        return homes
    # `all`: the first home (in jurisdiction order) that every owner's rule allows.
    for j in juris:
        h = home_store(m, j, dataset)
        if all(store_allowed(k, m.stores[h].labels) for k in juris):
            return [h]
    return []
