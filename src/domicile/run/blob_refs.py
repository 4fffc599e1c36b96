"""Which objects rows still name: asked before a blob's source object is deleted.

One object can be named by several rows: a private video moving home and a
public one kept abroad by an exception may name the same file.  Deleting the
source object with the moving row would leave the staying row naming nothing
(by URL), or the copy at home instead of the object beside it (by bare key).
So before domicile deletes source objects it asks, set-wise for a whole batch
(one query per table and chunk of keys, never one per row), which of them a
row still names: by bare key, or by the URL domicile writes for the object
(:meth:`~domicile.connectors.objects.ObjectStore.url_for`).  Such an object
stays where it is; nothing is lost, and the caller counts it (``blobs_shared``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from domicile.connectors.keys import column_in
from domicile.connectors.objects import ObjectStore
from domicile.run.journal import key_text
from domicile.run.rows import chunks, key_columns

if TYPE_CHECKING:
    from domicile.run.context import RunContext

Moving = Collection[tuple[str, str, str]]
"""(SQL store, dataset, key text) of rows whose naming by bare key does not count."""


def named_keys(
    ctx: RunContext,
    store: ObjectStore,
    keys: Iterable[str],
    *,
    sql_stores: Collection[str] | None = None,
    moving: Moving = (),
) -> set[str]:
    """The *keys* of objects in *store* that a row in *sql_stores* (None: any) still names.

    Every dataset whose blobs may live in *store* is asked, in each of its SQL
    locations among *sql_stores*.  A row named in *moving* does not count when
    it names the object by bare key: its key finds the copy at home once the
    source object is gone (every dataset's blob stores include the homes).  By
    URL it always counts: the URL names this store, so deleting the object
    would leave that row naming nothing.
    """
    wanted = sorted(set(keys))
    if not wanted:
        return set()
    by_value: dict[str, str] = {}
    for k in wanted:
        by_value[k] = k
        by_value[store.url_for(k)] = k
    values = sorted(by_value)
    skip = set(moving)
    named: set[str] = set()
    for ds in ctx.map.datasets.values():
        if ds.blobs is None:
            continue
        if store.name not in {s.name for s in ctx.fleet.object_stores_for(ds)}:
            continue
        for loc in ctx.fleet.locations(ds.name):
            if sql_stores is not None and loc.store.name not in sql_stores:
                continue
            column: sa.ColumnElement[Any] = loc.table.c[ds.blobs.column]
            if not isinstance(column.type, sa.String):
                column = sa.cast(column, sa.String)  # a key held in a non-text column
            cols = key_columns(loc.table, loc.key)
            with loc.store.connect(f"looking for rows naming objects of {store.name}") as conn:
                for chunk in chunks(values):
                    q = sa.select(column, *cols).where(
                        column_in(loc.store.dialect, column, chunk, name="_dm_named")
                    )
                    for value, *key in conn.execute(q):
                        hit = by_value.get(str(value))
                        if hit is None or hit in named:
                            continue
                        if value == hit and (loc.store.name, ds.name, key_text(key)) in skip:
                            continue  # a row of the batch itself, served by the home copy
                        named.add(hit)
    return named
