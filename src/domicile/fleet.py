"""The fleet: the data map's stores opened, and where each dataset lives.

A dataset lives in every SQL store that has its table, unless the map's
``stores:`` narrows it.  Resolving a dataset also checks every column the map
names (key, owners and their hops, blob column, exception filters, the
directory's id and country) so that a typo fails before any work starts,
with the map's line and the columns that do exist.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from domicile.connectors.objects import ObjectStore
from domicile.connectors.sql import SqlStore
from domicile.datamap import locate
from domicile.errors import ConfigError, DomicileError, PermanentConnectorError
from domicile.model import DataMap, Dataset, ForeignKey, Owner


@dataclass(frozen=True)
class Location:
    """One store's copy of a SQL dataset."""

    store: SqlStore
    table: sa.Table
    key: tuple[str, ...]


def _missing_column(column: str, table: sa.Table, store: str, where: str, what: str) -> ConfigError:
    names = [c.name for c in table.columns]
    close = difflib.get_close_matches(column, names, n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"columns: {', '.join(names)}"
    return ConfigError(
        f"{what} '{column}' is not a column of table '{table.name}' in store {store}",
        where=where,
        hint=hint,
    )


class Fleet:
    """Opened stores of a data map, with dataset locations resolved lazily."""

    def __init__(self, datamap: DataMap, connect_timeout: int = 5, pool_size: int = 5):
        self.map = datamap
        self.sql: dict[str, SqlStore] = {
            s.name: SqlStore(s, connect_timeout=connect_timeout, pool_size=pool_size)
            for s in datamap.sql_stores()
        }
        self.objects: dict[str, ObjectStore] = {
            s.name: ObjectStore(s.name, s.url, s.options) for s in datamap.object_stores()
        }
        self._locations: dict[str, list[Location]] = {}

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Dispose every engine."""
        for store in self.sql.values():
            store.dispose()

    def check_stores(self) -> Iterable[tuple[str, str | None, DomicileError | None]]:
        """Reach every SQL store: yields (name, server version, error)."""
        for name, store in self.sql.items():
            try:
                yield name, store.check(), None
            except DomicileError as exc:
                yield name, None, exc
        for name, objects in self.objects.items():
            try:
                objects.check()
                yield name, f"objects ({objects.scheme})", None
            except DomicileError as exc:
                yield name, None, exc

    def object_stores_for(self, ds: Dataset) -> list[ObjectStore]:
        """The object stores an object dataset (or a dataset's blobs) may live in."""
        names = ds.stores if ds.objects is not None else (ds.blobs.stores if ds.blobs else None)
        if names is None:
            return list(self.objects.values())
        homes = {h for j in self.map.jurisdictions.values() for h in j.home}
        picked = [self.objects[n] for n in names if n in self.objects]
        return picked + [o for n, o in self.objects.items() if n in homes and o not in picked]

    def locations(self, name: str) -> list[Location]:
        """Where SQL dataset *name* lives, validated; cached."""
        if name not in self._locations:
            self._locations[name] = self._resolve(self.map.datasets[name])
        return self._locations[name]

    def refresh(self, dataset: str) -> None:
        """Forget where *dataset* lives (after its table was created in another store)."""
        self._locations.pop(dataset, None)

    def location(self, dataset: str, store: str) -> Location | None:
        """The dataset's location in *store*, if it lives there."""
        for loc in self.locations(dataset):
            if loc.store.name == store:
                return loc
        return None

    def subject_id_column(self) -> sa.Column[Any]:
        """The column whose type subject ids have (in the first store with the directory)."""
        from domicile.directory_sql import id_type_column

        loc = self.locations(self.map.subjects.dataset)[0]
        return id_type_column(loc.store, loc.table, self.map.subjects)

    def validate(self) -> None:
        """Resolve every SQL dataset (raises on the first problem)."""
        for ds in self.map.datasets.values():
            if ds.is_sql:
                self.locations(ds.name)

    # -- resolution -----------------------------------------------------------

    def _resolve(self, ds: Dataset) -> list[Location]:
        assert ds.table is not None
        where = locate(self.map, "datasets", ds.name, "table")
        if ds.stores is not None:
            candidates = [self.sql[s] for s in ds.stores if s in self.sql]
            for store in candidates:
                if not store.has_table(ds.table):
                    raise PermanentConnectorError(
                        f"dataset '{ds.name}': table '{ds.table}' does not exist "
                        f"in store {store.name}",
                        where=where,
                        hint=f"create it there, or remove {store.name} from the dataset's stores:",
                    )
            # records moved home live there too, whatever the narrowing says
            homes = {h for j in self.map.jurisdictions.values() for h in j.home}
            candidates += [
                s
                for s in self.sql.values()
                if s.name in homes and s not in candidates and s.has_table(ds.table)
            ]
        else:
            candidates = [s for s in self.sql.values() if s.has_table(ds.table)]
        if not candidates:
            raise ConfigError(
                f"dataset '{ds.name}': table '{ds.table}' is in no SQL store "
                f"(looked in: {', '.join(self.sql) or 'none'})",
                where=where,
                hint="fix the table name or add the store that holds it",
            )
        return [self._check_columns(ds, store) for store in candidates]

    def _check_columns(self, ds: Dataset, store: SqlStore) -> Location:
        assert ds.table is not None
        m = self.map
        if not ds.reference and store.is_view(ds.table):
            # a view's rows cannot be inserted at home nor deleted at the source
            raise ConfigError(
                f"dataset '{ds.name}': '{ds.table}' in store {store.name} is a view, "
                "which domicile cannot move",
                where=locate(m, "datasets", ds.name, "table"),
                hint="declare the view's base table as the dataset (a view may be the "
                "directory's source only as a reference dataset: reference: true)",
            )
        table = store.table(ds.table)
        if ds.key:
            key = ds.key
            for col in key:
                if col not in table.c:
                    raise _missing_column(
                        col, table, store.name, locate(m, "datasets", ds.name, "key"), "key"
                    )
        else:
            key = tuple(c.name for c in table.primary_key.columns)
            if not key:
                raise ConfigError(
                    f"dataset '{ds.name}': table '{ds.table}' in store {store.name} "
                    "has no primary key",
                    where=locate(m, "datasets", ds.name),
                    hint="declare key: [column, ...] in the dataset",
                )
        field = "owners" if len(ds.owners) > 1 else "owner"
        for owner in ds.owners:
            owner_where = locate(m, "datasets", ds.name, field)
            self._check_path(owner, table, store, owner_where, "owner")
        if ds.blobs and ds.blobs.column not in table.c:
            raise _missing_column(
                ds.blobs.column,
                table,
                store.name,
                locate(m, "datasets", ds.name, "blobs", "column"),
                "blob column",
            )
        for w in m.exceptions:
            if w.dataset == ds.name:
                for col in w.where:
                    if col not in table.c:
                        raise _missing_column(
                            col,
                            table,
                            store.name,
                            locate(m, "exceptions", w.index, "where"),
                            "exception filter",
                        )
        if ds.name == m.subjects.dataset:
            sub = m.subjects
            for path, key_name in ((sub.id_owner, "id"), (sub.country_owner, "country")):
                self._check_path(path, table, store, locate(m, "subjects", key_name), "directory")
        return Location(store, table, key)

    def _check_path(
        self, owner: Owner, table: sa.Table, store: SqlStore, where: str, what: str
    ) -> None:
        """Every table and column of an owner path exists in *store*."""
        if owner.column not in table.c:
            raise _missing_column(owner.column, table, store.name, where, f"{what} column")
        for hop in owner.hops:
            if not store.has_table(hop.table):
                raise ConfigError(
                    f"{what} path '{owner.text}' goes through table '{hop.table}', "
                    f"which store {store.name} does not have",
                    where=where,
                    hint="fix the path, or narrow the dataset's stores: to those that have it",
                )
            hop_table = store.table(hop.table)
            for col in (hop.match, hop.read):
                if col not in hop_table.c:
                    raise _missing_column(col, hop_table, store.name, where, f"{what} path column")

    def check_identities(self, *, write_markers: bool) -> list[str]:
        """Refuse two store names for one place, or a store inside another; returns warnings.

        *write_markers*: ``run`` writes a marker through every name and reads
        them back through the others; ``check`` and ``verify`` only read.
        """
        from domicile.connectors.identity import read_identities

        report = read_identities(
            list(self.sql.values()), list(self.objects.values()), write_markers=write_markers
        )
        report.raise_for_clashes()
        return list(report.warnings)

    def check_unique_keys(self) -> None:
        """Refuse a personal dataset whose key no primary key or unique index backs.

        The move deletes by key: a key that two rows share would delete a row
        that was never copied.  Checked in every store the dataset lives in,
        from the reflected schema (a unique constraint, a unique index, or the
        primary key, on exactly the key's columns in any order).
        """
        for ds in self.map.datasets.values():
            if not ds.is_sql or ds.reference:
                continue
            for loc in self.locations(ds.name):
                if not loc.store.is_unique(loc.table, loc.key):
                    raise ConfigError(
                        f"dataset '{ds.name}': key ({', '.join(loc.key)}) of table "
                        f"'{loc.table.name}' in store {loc.store.name} is not backed by a "
                        "primary key or a unique index, so two rows may share it",
                        where=locate(self.map, "datasets", ds.name, "key" if ds.key else "table"),
                        hint="add one (CREATE UNIQUE INDEX ... ON "
                        f"{loc.table.name} ({', '.join(loc.key)})), or declare as key: the "
                        "columns of an existing primary key or unique index; nothing was moved",
                    )

    def foreign_keys(self) -> list[ForeignKey]:
        """Every foreign key of every personal SQL dataset's table, per store."""
        out: list[ForeignKey] = []
        for ds in self.map.datasets.values():
            if not ds.is_sql or ds.reference:
                continue
            for loc in self.locations(ds.name):
                for fk in loc.table.foreign_key_constraints:
                    out.append(
                        ForeignKey(
                            ds.name,
                            loc.store.name,
                            tuple(c.name for c in fk.columns),
                            fk.referred_table.name,
                        )
                    )
        return out


def paths_unique(loc: Location, ds: Dataset) -> bool:
    """True when every hop of every owner path matches at most one row in *loc*'s store.

    Proved from the schema (a primary key or unique index on the hop's match
    column); when it cannot be, one record may join several owners.
    """
    return not non_unique_hops(loc, ds)


def non_unique_hops(loc: Location, ds: Dataset) -> list[str]:
    """``table.column`` of each owner-path hop no key or unique index makes unique."""
    out = []
    for owner in ds.owners:
        for hop in owner.hops:
            table = loc.store.table(hop.table)
            if not loc.store.is_unique(table, (hop.match,)):
                out.append(f"{hop.table}.{hop.match}")
    return out


def path_notes(fleet: Fleet) -> list[str]:
    """A note for each personal dataset whose owner path the schema cannot prove unique."""
    return [
        f"{ds.name} in {loc.store.name}: the owner path goes through {', '.join(hops)}, "
        "which no key or unique index makes unique: a record may have several owners "
        f"(multi_owner: {ds.multi_owner} decides)"
        for ds in fleet.map.datasets.values()
        if ds.is_sql and not ds.reference and any(o.hops for o in ds.owners)
        for loc in fleet.locations(ds.name)
        if (hops := non_unique_hops(loc, ds))
    ]
