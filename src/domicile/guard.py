"""The write guard: triggers at forbidden stores that refuse new rows of subjects moved home.

Moving the data home is half of the promise; the legacy stores must also stop
taking new rows of the subjects who moved.  ``domicile guard install``
puts, in every SQL store that a jurisdiction's rule forbids, a trigger on each
dataset table living there (the engine's SQL is in
:mod:`domicile.connectors.guard_sql`).  The trigger refuses an INSERT or an
UPDATE of a row whose owner — a column, or the subject found along an owner
path joined inside that store — is a *guarded* subject, naming the subject's
home store in the error.

A subject is guarded once it has come home: its directory record is in a
store its rule allows and in none its rule forbids.  That is the state
``domicile run`` leaves a subject in after moving it (and the state of a
subject created at home, which never had a place abroad).  A subject whose
directory record is still abroad has not been moved and keeps writing where
it is.  Rows an active exception allows at that store pass (its filter is
evaluated on the written row, its expiry on the day of the write); a
``multi_owner: each`` record passes where another of its owners' rules allows
it, as :func:`domicile.placement.classify` says.

Which subjects are guarded is computed here, from the directories, and
written into each guarded store's own ``domicile_guard_subjects`` table, which
the triggers read: by ``guard install`` and, through :func:`refresh_after_run`,
after every successful run made with :func:`domicile.api.run`.  Nothing is
installed unless asked for; ``guard remove`` drops every object the guard
created, so the store's schema is what it was before.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from domicile.connectors.guard_sql import (
    META_TABLE,
    SUBJECTS_TABLE,
    GuardSQL,
    OwnerRef,
    TableGuard,
    WaiverRef,
    guard_sql_for,
    id_text,
)
from domicile.connectors.sql import SqlStore
from domicile.countries import normalize_country
from domicile.directory_sql import directory_rows
from domicile.errors import ConfigError
from domicile.fleet import Fleet
from domicile.model import DataMap, Dataset, Jurisdiction, Store
from domicile.placement import store_allowed


@dataclass(frozen=True)
class StoreGuard:
    """One store's guard, as installed (or found by ``status``)."""

    store: str
    display_url: str
    jurisdictions: tuple[str, ...]  # whose subjects the triggers refuse here
    tables: tuple[str, ...]  # tables with triggers
    triggers: tuple[str, ...]
    refused: int  # guarded subjects (their rows are refused here)
    allowed: int  # subjects whose rule allows this store (``each`` tables only)
    hashed: bool  # True: subjects kept as salted hashes; False: plain ids (SQLite)
    refreshed_at: str | None = None
    forbidden_for: tuple[str, ...] = ()  # jurisdictions whose rule forbids this store
    notes: tuple[str, ...] = ()

    @property
    def installed(self) -> bool:
        """True when this store has a guard."""
        return bool(self.triggers) or bool(self.jurisdictions)

    def to_json(self) -> dict[str, Any]:
        """``guard status --json``: one store."""
        return {
            "store": self.store,
            "installed": self.installed,
            "jurisdictions": list(self.jurisdictions),
            "forbidden_for": list(self.forbidden_for),
            "tables": list(self.tables),
            "triggers": len(self.triggers),
            "guarded_subjects": self.refused,
            "allowed_subjects": self.allowed,
            "hashed": self.hashed,
            "refreshed_at": self.refreshed_at,
            "notes": list(self.notes),
        }


@dataclass
class _Directory:
    """Every subject: its jurisdiction (None: unrestricted or unknown) and where its record sits."""

    jurisdiction: dict[str, str | None] = field(default_factory=dict)
    stores: dict[str, set[str]] = field(default_factory=dict)


def forbidden_for(m: DataMap, store: Store, scope: Sequence[str]) -> tuple[str, ...]:
    """The jurisdictions of *scope* whose rule forbids *store*."""
    return tuple(j for j in scope if not store_allowed(m.jurisdictions[j], store.labels))


def sql_home(m: DataMap, j: Jurisdiction) -> str:
    """The jurisdiction's SQL home store (where its subjects' rows belong)."""
    for name in j.home:
        if m.stores[name].kind == "sql":
            return name
    raise ConfigError(
        f"jurisdiction {j.name} has no SQL store in its home: the guard has no store to name",
        where=f"jurisdictions.{j.name}.home",
    )


def table_guard(
    m: DataMap, store: Store, ds: Dataset, jurisdictions: Sequence[str], today: dt.date
) -> TableGuard:
    """What the triggers of *ds*'s table in *store* check for *jurisdictions*."""
    assert ds.table is not None
    waivers = tuple(
        WaiverRef(dict(w.where), w.expires, w.jurisdictions)
        for w in m.exceptions
        if w.dataset == ds.name
        and w.active(today)
        and w.allows(store.labels)
        and (w.jurisdictions is None or any(j in w.jurisdictions for j in jurisdictions))
    )
    return TableGuard(
        table=ds.table,
        owners=tuple(OwnerRef(o.column, o.hops) for o in ds.owners),
        homes={j: sql_home(m, m.jurisdictions[j]) for j in jurisdictions},
        waivers=waivers,
        each=ds.multi_owner == "each" and len(ds.owners) > 1,
    )


def _read_directory(fleet: Fleet) -> _Directory:
    m = fleet.map
    out = _Directory()
    for loc in fleet.locations(m.subjects.dataset):
        rows = directory_rows(loc.store, loc.table, m.subjects)
        q = sa.select(rows.id, rows.country).select_from(rows.from_)
        with loc.store.connect("reading the subjects directory for the guard") as conn:
            for sid, raw in conn.execute(q):
                if sid is None:
                    continue
                key = id_text(sid)
                if key not in out.jurisdiction:  # the first directory wins, as in the census
                    code = normalize_country(raw)
                    j = m.jurisdiction_of_country(code) if code else None
                    out.jurisdiction[key] = j.name if j is not None else None
                out.stores.setdefault(key, set()).add(loc.store.name)
    return out


def guarded_subjects(m: DataMap, directory: _Directory, jurisdiction: str) -> list[str]:
    """Ids of *jurisdiction*'s subjects that have come home: their directory record is
    only in stores their rule allows."""
    j = m.jurisdictions[jurisdiction]
    return sorted(
        sid
        for sid, name in directory.jurisdiction.items()
        if name == jurisdiction
        and all(store_allowed(j, m.stores[s].labels) for s in directory.stores[sid])
    )


def _engine(store: SqlStore) -> GuardSQL:
    sql = guard_sql_for(store.dialect)
    if sql is None:
        raise ConfigError(
            f"store {store.name}: the write guard has no triggers for this engine "
            f"({store.dialect}); SQLite, PostgreSQL and MySQL/MariaDB are supported",
            where=f"stores.{store.name}",
        )
    return sql


def _meta(conn: sa.Connection, sql: GuardSQL) -> dict[str, str] | None:
    if not sa.inspect(conn).has_table(META_TABLE):
        return None
    _, meta = sql.tables()
    return {str(n): str(v) for n, v in conn.execute(sa.select(meta.c.name, meta.c.value))}


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _build(
    fleet: Fleet,
    store: SqlStore,
    scope: tuple[str, ...],
    directory: _Directory,
    today: dt.date,
) -> StoreGuard:
    """(Re)build *store*'s guard for *scope*: triggers from the map, subjects from *directory*."""
    m = fleet.map
    sql = _engine(store)
    specs = []
    for ds in m.datasets.values():
        if not ds.is_sql or ds.reference:
            continue
        loc = fleet.location(ds.name, store.name)
        if loc is not None:
            specs.append(table_guard(m, store.store, ds, scope, today))
    rows: list[tuple[Any, str, str, int]] = []
    with store.begin(f"installing the write guard for {', '.join(scope)}") as conn:
        meta = _meta(conn, sql)
        salt = meta["salt"] if meta and "salt" in meta else secrets.token_hex(16)
        for j in scope:
            home = sql_home(m, m.jurisdictions[j])
            rows += [
                (sql.subject_value(s, salt), j, home, 1) for s in guarded_subjects(m, directory, j)
            ]
        allowed = 0
        if any(s.each for s in specs):
            # an `each` record may sit where any of its owners' rules allows it
            for sid, name in directory.jurisdiction.items():
                if name is not None and store_allowed(m.jurisdictions[name], store.store.labels):
                    rows.append((sql.subject_value(sid, salt), name, store.name, 0))
                    allowed += 1
        sql.drop(conn, sql.installed(conn))
        subjects, meta_table = sql.tables()
        subjects.metadata.create_all(conn)
        sql.fill(conn, rows)
        refreshed = _now()
        values = {
            "salt": salt,
            "jurisdictions": json.dumps(list(scope)),
            "installed_at": (meta or {}).get("installed_at", refreshed),
            "refreshed_at": refreshed,
        }
        conn.execute(meta_table.delete())
        conn.execute(meta_table.insert(), [{"name": k, "value": v} for k, v in values.items()])
        # triggers last: where DDL commits (MySQL), a failure here leaves the meta
        # table behind, so ``guard remove`` still finds and drops what was created
        triggers: list[str] = []
        for spec in specs:
            triggers += sql.install(conn, spec, salt)
    return StoreGuard(
        store=store.name,
        display_url=store.store.display_url,
        jurisdictions=scope,
        tables=tuple(s.table for s in specs),
        triggers=tuple(triggers),
        refused=len(rows) - allowed,
        allowed=allowed,
        hashed=sql.hashes,
        refreshed_at=refreshed,
        forbidden_for=scope,
    )


def _drop(store: SqlStore) -> None:
    sql = _engine(store)
    with store.begin("removing the write guard") as conn:
        sql.drop(conn, sql.installed(conn))
        subjects, _meta_table = sql.tables()
        subjects.metadata.drop_all(conn, checkfirst=True)


def _installed_scope(store: SqlStore) -> tuple[str, ...] | None:
    """The jurisdictions *store*'s guard covers; None when it has none."""
    sql = guard_sql_for(store.dialect)
    if sql is None:
        return None
    with store.connect("reading the write guard") as conn:
        meta = _meta(conn, sql)
        if meta is None:
            # its tables or triggers without the meta row: an install that failed
            # half-way where DDL commits (MySQL); ``remove`` drops what is there
            partial = sql.installed(conn) or sa.inspect(conn).has_table(SUBJECTS_TABLE)
            return () if partial else None
    return tuple(json.loads(meta.get("jurisdictions", "[]")))


def install(fleet: Fleet, scope: Sequence[str], today: dt.date | None = None) -> list[StoreGuard]:
    """Install (or refresh) the guard for *scope* in every store a jurisdiction of it forbids.

    A store already guarded for other jurisdictions keeps them: its guard is
    rebuilt for the union.  Returns each guarded store.
    """
    m = fleet.map
    today = today or dt.datetime.now(dt.UTC).date()
    fleet.validate()
    targets: list[tuple[SqlStore, tuple[str, ...]]] = []
    for store in fleet.sql.values():
        wanted = forbidden_for(m, store.store, scope)
        if not wanted:
            continue
        _engine(store)  # an engine without triggers fails before anything is created
        had = _installed_scope(store) or ()
        union = tuple(j for j in m.jurisdictions if j in wanted or j in had)
        targets.append((store, union))
    if not targets:
        return []
    directory = _read_directory(fleet)
    return [_build(fleet, store, union, directory, today) for store, union in targets]


def remove(fleet: Fleet, scope: Sequence[str] | None = None) -> list[str]:
    """Remove the guard of *scope* (every jurisdiction when None); the stores changed.

    A store whose guard covers no jurisdiction left is exactly as before
    ``install``: every trigger, function and table of the guard is dropped.
    """
    m = fleet.map
    changed: list[str] = []
    rebuild: list[tuple[SqlStore, tuple[str, ...]]] = []
    for store in fleet.sql.values():
        had = _installed_scope(store)
        if had is None or (scope is not None and had and not set(had) & set(scope)):
            continue
        left = tuple(
            j for j in had if scope is not None and j not in scope and j in m.jurisdictions
        )
        if left:
            rebuild.append((store, left))
        else:
            _drop(store)
        changed.append(store.name)
    if rebuild:
        directory = _read_directory(fleet)
        today = dt.datetime.now(dt.UTC).date()
        for store, left in rebuild:
            _build(fleet, store, left, directory, today)
    return changed


def status(fleet: Fleet) -> list[StoreGuard]:
    """What is installed where: every SQL store, guarded or not."""
    m = fleet.map
    out = []
    for store in fleet.sql.values():
        forbidden = forbidden_for(m, store.store, list(m.jurisdictions))
        sql = guard_sql_for(store.dialect)
        if sql is None:
            note = "this engine has no guard triggers"
            out.append(
                StoreGuard(
                    store.name,
                    store.store.display_url,
                    (),
                    (),
                    (),
                    0,
                    0,
                    False,
                    forbidden_for=forbidden,
                    notes=(note,),
                )
            )
            continue
        with store.connect("reading the write guard") as conn:
            meta = _meta(conn, sql)
            triggers = sql.installed(conn)
            refused = allowed = 0
            if meta is not None:
                subjects, _ = sql.tables()
                for refuse, n in conn.execute(
                    sa.select(subjects.c.refuse, sa.func.count()).group_by(subjects.c.refuse)
                ):
                    if refuse:
                        refused = int(n)
                    else:
                        allowed = int(n)
        scope = tuple(json.loads(meta["jurisdictions"])) if meta else ()
        notes = []
        unguarded = [j for j in forbidden if j not in scope]
        if unguarded:
            notes.append(f"forbidden for {', '.join(unguarded)}: not guarded for it")
        out.append(
            StoreGuard(
                store=store.name,
                display_url=store.store.display_url,
                jurisdictions=scope,
                tables=tuple(dict.fromkeys(t for _, t in triggers)),
                triggers=tuple(n for n, _ in triggers),
                refused=refused,
                allowed=allowed,
                hashed=sql.hashes,
                refreshed_at=(meta or {}).get("refreshed_at"),
                forbidden_for=forbidden,
                notes=tuple(notes),
            )
        )
    return out


def refresh_after_run(m: DataMap) -> list[StoreGuard]:
    """Rebuild every installed guard (after a run moved subjects home); [] when none is."""
    with Fleet(m) as fleet:
        installed = {
            name: scope for name, store in fleet.sql.items() if (scope := _installed_scope(store))
        }
        if not installed:
            return []
        fleet.validate()
        directory = _read_directory(fleet)
        today = dt.datetime.now(dt.UTC).date()
        return [
            _build(fleet, fleet.sql[name], scope, directory, today)
            for name, scope in installed.items()
        ]


__all__ = [
    "SUBJECTS_TABLE",
    "StoreGuard",
    "forbidden_for",
    "guarded_subjects",
    "install",
    "refresh_after_run",
    "remove",
    "status",
    "table_guard",
]
