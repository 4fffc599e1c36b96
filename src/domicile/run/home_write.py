"""Writing a batch's rows at home: the engine's bulk insert, savepoints when a parent is missing.

The rows arrive as tuples in *names* order, already in their storage form
(:func:`domicile.digest.storage_value`); the engine's fastest insert is its
dialect's (:meth:`domicile.connectors.dialects.Dialect.bulk_insert`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from domicile.connectors.dialects import dialect_for
from domicile.run.rows import key_columns, unused_prefix


def write_rows(
    conn: sa.Connection,
    table: sa.Table,
    key: Sequence[str],
    names: list[str],
    inserts: list[tuple[Any, ...]],
    updates: list[tuple[Any, ...]],
    per_row: bool,
) -> list[tuple[Any, ...]]:
    """Insert and update; with *per_row*, each insert in a savepoint. Returns deferred rows."""
    deferred: list[tuple[Any, ...]] = []
    if inserts and not per_row:
        dialect_for(conn.dialect.name).bulk_insert(conn, table, names, inserts)
    elif inserts:
        stmt = table.insert().values({n: sa.bindparam(n) for n in names})
        for row in inserts:
            try:
                with conn.begin_nested():
                    conn.execute(stmt, [dict(zip(names, row, strict=True))])
            except sa.exc.IntegrityError:
                deferred.append(row)
    if updates:
        keycols = key_columns(table, key)
        value_names = [n for n in names if n not in key]
        # parameters named after columns, and key parameters under a
        # prefix that no column name starts with (a user may have "_k_id")
        prefix = unused_prefix("_k_", [c.name for c in table.columns])
        update = (
            table.update()
            .where(*[c == sa.bindparam(f"{prefix}{i}") for i, c in enumerate(keycols)])
            .values({n: sa.bindparam(n) for n in value_names})
        )
        at = [names.index(k) for k in key]
        params = [
            {
                **{n: v for n, v in zip(names, u, strict=True) if n not in key},
                **{f"{prefix}{i}": u[j] for i, j in enumerate(at)},
            }
            for u in updates
        ]
        conn.execute(update, params)
    return deferred
