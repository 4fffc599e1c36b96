"""Objects in object stores that belong to subjects: where they are, whose they are.

Two shapes (DESIGN.md): an *object dataset* whose key names its owner
(``avatars/{owner}/*``), and *blobs* named by a column of a SQL dataset
(``blobs: {column: media_key}``) — by key, looked for in the object stores
``blobs.stores`` lists (every object store by default), or by full URL
(``s3://bucket/key``, ``file:///...``), which names its store.
"""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa

from domicile.connectors.objects import ObjectInfo, ObjectStore, find_store
from domicile.fleet import Fleet
from domicile.model import Dataset


def owner_pattern(pattern: str) -> tuple[str, re.Pattern[str]]:
    """(listing glob, regex with an ``owner`` group) for an object dataset's key pattern.

    >>> glob, rx = owner_pattern("avatars/{owner}/*")
    >>> glob, rx.fullmatch("avatars/42/me.jpg").group("owner")
    ('avatars/*/*', '42')
    """
    glob = pattern.replace("{owner}", "*")
    parts = re.split(r"(\{owner\}|\*\*|\*|\?)", pattern)
    regex = ""
    for part in parts:
        if part == "{owner}":
            regex += "(?P<owner>[^/]+)"
        elif part == "**":
            regex += ".*"
        elif part == "*":
            regex += "[^/]*"
        elif part == "?":
            regex += "[^/]"
        else:
            regex += re.escape(part)
    return glob, re.compile(regex)


def coerce_owner(value: str, id_column: sa.Column[Any]) -> Any:
    """An owner read from a key, in the Python type of the directory's id column."""
    try:
        py = id_column.type.python_type
    except NotImplementedError:
        return value
    if py is int and value.lstrip("-").isdigit():
        return int(value)
    return value


def is_url(value: str) -> bool:
    """True for a full object URL (``s3://…``, ``file:///…``), False for a bare key."""
    return "://" in value or value.startswith("file:/")


class BlobLocator:
    """Finds the object a blob column names.

    With ``listing=True`` every candidate store is listed once and looked up
    in memory (the census: one listing instead of one request per row);
    otherwise each object is looked up with a ``stat`` (a run's batch).
    """

    def __init__(self, fleet: Fleet, ds: Dataset, listing: bool = False):
        self.fleet = fleet
        self.ds = ds
        self.candidates = fleet.object_stores_for(ds)
        self.listing = listing
        self._listed: dict[str, dict[str, ObjectInfo]] = {}

    def _lookup(self, store: ObjectStore, key: str) -> ObjectInfo | None:
        if not self.listing:
            return store.stat(key)
        if store.name not in self._listed:
            self._listed[store.name] = {i.key: i for i in store.list()}
        return self._listed[store.name].get(key)

    def locate(self, value: Any) -> tuple[ObjectStore, str, ObjectInfo] | None:
        """(store, key, info) of the object *value* names, or None when it exists nowhere."""
        if value is None or value == "":
            return None
        text = str(value)
        if is_url(text):
            found = find_store(text, self.fleet.objects.values())
            if found is None:
                return None
            store, key = found
            info = self._lookup(store, key)
            return (store, key, info) if info is not None else None
        for store in self.candidates:
            info = self._lookup(store, text)
            if info is not None:
                return store, text, info
        return None
