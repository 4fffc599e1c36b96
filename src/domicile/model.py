"""The vocabulary of domicile as frozen dataclasses (see DESIGN.md, "Concepts").

These are the validated, resolved form of the data map: the loader in
:mod:`domicile.datamap` builds them and everything else reads them.  They carry
no I/O and no defaults that need a reset between tests.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Selector = Mapping[str, str]
"""A label selector: every given label must equal the store's label."""

UNRESTRICTED = "unrestricted"
"""Pseudo-jurisdiction of subjects whose country no jurisdiction names."""


def selector_matches(selector: Selector, labels: Mapping[str, str]) -> bool:
    """True when every label of *selector* has the same value in *labels*."""
    return all(labels.get(k) == v for k, v in selector.items())


@dataclass(frozen=True)
class Store:
    """One place data lives: a SQL database or an object store."""

    name: str
    url: str  # expanded (secrets included): never print it, use ``display_url``
    display_url: str  # the URL with any password masked
    labels: Mapping[str, str]
    kind: Literal["sql", "objects"]
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def country(self) -> str | None:
        """The store's ``country`` label (ISO alpha-2), if any."""
        return self.labels.get("country")


@dataclass(frozen=True)
class Hop:
    """One foreign-key hop of an owner path: find the ``table`` row whose
    ``match`` column equals the current value, then read its ``read`` column."""

    table: str
    match: str
    read: str


@dataclass(frozen=True)
class Owner:
    """How a record leads to its subject: a column, then zero or more hops."""

    column: str
    hops: tuple[Hop, ...] = ()

    @property
    def text(self) -> str:
        """The owner as written in the map (``a -> T.b -> c``)."""
        parts = [self.column]
        for hop in self.hops:
            parts += [f"{hop.table}.{hop.match}", hop.read]
        return " -> ".join(parts)


@dataclass(frozen=True)
class Blobs:
    """Objects named by a column of a SQL dataset; they move with the row."""

    column: str
    stores: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Dataset:
    """A logical table (or object prefix) that may exist in several stores."""

    name: str
    table: str | None = None
    objects: str | None = None  # object key pattern such as "avatars/{owner}/*"
    key: tuple[str, ...] = ()
    owners: tuple[Owner, ...] = ()
    multi_owner: Literal["all", "each"] = "all"
    reference: bool = False
    stores: tuple[str, ...] | None = None  # None: every store that has it
    blobs: Blobs | None = None

    @property
    def is_sql(self) -> bool:
        """True for a table dataset, False for an object dataset."""
        return self.table is not None


@dataclass(frozen=True)
class Jurisdiction:
    """A set of subjects (by country) with a placement rule."""

    name: str
    countries: frozenset[str]
    allowed: tuple[Selector, ...]
    home: tuple[str, ...]


@dataclass(frozen=True)
class Waiver:
    """An approved exception: a dataset (and row filter) allowed outside the rule.

    Called ``Waiver`` in code so as not to shadow Python's ``Exception``; the
    map and every report call it an *exception*.
    """

    index: int  # position in the map's ``exceptions`` list, for messages
    dataset: str
    where: Mapping[str, Any]
    allowed: tuple[Selector, ...] | Literal["any"]
    reason: str
    approved_by: str
    expires: dt.date
    jurisdictions: tuple[str, ...] | None = None  # None: every jurisdiction

    def active(self, today: dt.date) -> bool:
        """An exception counts up to and including its expiry date."""
        return today <= self.expires

    def allows(self, labels: Mapping[str, str]) -> bool:
        """True when a store with *labels* is one this exception allows."""
        if self.allowed == "any":
            return True
        return any(selector_matches(s, labels) for s in self.allowed)


@dataclass(frozen=True)
class Subjects:
    """Where each subject's jurisdiction is read: the directory.

    ``id`` and ``country`` are the map's texts: a column of the directory's
    table, or an owner path from it (``address_id -> address.address_id ->
    city_id -> city.city_id -> country_id -> country.country_id -> country``)
    joined inside the store that holds the directory.
    """

    dataset: str
    id: str
    country: str
    id_path: Owner | None = None  # parsed ``id``; None: the plain column ``id``
    country_path: Owner | None = None  # parsed ``country``

    @property
    def id_owner(self) -> Owner:
        """``id`` as a path (no hops for a plain column)."""
        return self.id_path or Owner(self.id)

    @property
    def country_owner(self) -> Owner:
        """``country`` as a path (no hops for a plain column)."""
        return self.country_path or Owner(self.country)

    @property
    def id_column(self) -> str | None:
        """The directory column that holds subject ids, when ``id`` is not a path."""
        return None if self.id_owner.hops else self.id_owner.column

    def path_tables(self) -> list[str]:
        """Tables the id and country paths go through, in path order."""
        out: list[str] = []
        for owner in (self.id_owner, self.country_owner):
            out += [h.table for h in owner.hops if h.table not in out]
        return out


@dataclass(frozen=True)
class DataMap:
    """The whole validated data map."""

    path: Path
    version: int
    state: str
    stores: Mapping[str, Store]
    subjects: Subjects
    jurisdictions: Mapping[str, Jurisdiction]
    datasets: Mapping[str, Dataset]
    exceptions: tuple[Waiver, ...]
    on_conflict: Literal["fail", "keep-home", "overwrite"] = "fail"
    audit_keys: str | None = None
    audit_origin: str | None = None
    # key path -> line in the file, for messages raised after loading
    lines: Mapping[tuple[str | int, ...], int] = field(
        default_factory=dict, compare=False, repr=False
    )

    @property
    def base_dir(self) -> Path:
        """The folder relative paths in the map are resolved against."""
        return self.path.parent

    def jurisdiction_of_country(self, country: str) -> Jurisdiction | None:
        """The jurisdiction that names *country* (alpha-2), or None if unrestricted."""
        for j in self.jurisdictions.values():
            if country in j.countries:
                return j
        return None

    def sql_stores(self) -> list[Store]:
        """The SQL stores, in map order."""
        return [s for s in self.stores.values() if s.kind == "sql"]

    def object_stores(self) -> list[Store]:
        """The object stores, in map order."""
        return [s for s in self.stores.values() if s.kind == "objects"]


@dataclass(frozen=True)
class ForeignKey:
    """A foreign key of a dataset's table, as reflected in one store."""

    dataset: str
    store: str
    columns: tuple[str, ...]
    referred_table: str
