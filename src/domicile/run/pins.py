"""Rows a delete at the source must not take: parents of rows that stay, by cascading keys.

A foreign key with ``ON DELETE RESTRICT`` (or ``NO ACTION``) refuses the
delete of a parent that rows staying at the source still reference, and the
delete step reports it as *pinned*.  One with ``ON DELETE CASCADE``, ``SET
NULL`` or ``SET DEFAULT`` would not refuse: the engine would delete or rewrite
the staying rows — records domicile never copied, or a conflict it promised
to leave untouched.  So before a batch is deleted, the parents such keys
still point to are found (in the delete's own transaction, with the parents
locked, so no new child can appear before the commit) and pinned instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from domicile.connectors.keys import chunks, key_in

if TYPE_CHECKING:
    from domicile.connectors.sql import SqlStore

ACTIONS = frozenset({"CASCADE", "SET NULL", "SET DEFAULT"})


@dataclass(frozen=True)
class Child:
    """A foreign key that refers to the table and acts on delete."""

    table: str
    columns: tuple[str, ...]
    referred: tuple[str, ...]  # the parent's columns, in the same order


def cascading_children(store: SqlStore, table: str) -> list[Child]:
    """Foreign keys in *store* that refer to *table* with a delete action."""
    out = []
    for other in store.table_names():
        for fk in store.table(other).foreign_key_constraints:
            if fk.referred_table.name != table:
                continue
            action = (fk.ondelete or "").strip().upper()
            if action in ACTIONS:
                out.append(
                    Child(
                        other,
                        tuple(e.parent.name for e in fk.elements),
                        tuple(e.column.name for e in fk.elements),
                    )
                )
    return out


def pinned_by_children(
    conn: sa.Connection,
    store: SqlStore,
    children: Sequence[Child],
    table: sa.Table,
    key: Sequence[str],
    rows: Mapping[tuple[Any, ...], Mapping[str, Any]],
) -> set[tuple[Any, ...]]:
    """Keys of *rows* (by key, about to be deleted) that a cascading child row references.

    A child row that is itself about to be deleted (a self-reference within
    the batch) does not pin its parent.
    """
    pinned: set[tuple[Any, ...]] = set()
    for child in children:
        by_value: dict[tuple[Any, ...], list[tuple[Any, ...]]] = {}
        for k, row in rows.items():
            value = tuple(row[c] for c in child.referred)
            if all(v is not None for v in value):
                by_value.setdefault(value, []).append(k)
        if not by_value:
            continue
        child_table = store.table(child.table)
        cols = [child_table.c[c] for c in child.columns]
        own_key = child.table == table.name
        extra = [child_table.c[k] for k in key] if own_key else []
        for chunk in chunks(list(by_value)):
            q = sa.select(*cols, *extra).where(key_in(child_table, list(child.columns), chunk))
            for r in conn.execute(q):
                if own_key and tuple(r[len(cols) :]) in rows:
                    continue  # deleted with its parent
                pinned.update(by_value.get(tuple(r[: len(cols)]), ()))
    return pinned
