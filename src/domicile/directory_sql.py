"""The subject directory in SQL: subject ids and countries read through owner paths.

``subjects.id`` and ``subjects.country`` are each a column of the directory's
table or an owner path from it.  A path is joined inside the store that holds
the directory, the same way owner paths of datasets are (outer joins, so a
subject whose path breaks reads as an unknown country, never as a missing
subject).  Nothing here runs a query: callers put the expressions in theirs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from domicile.model import Hop, Subjects

if TYPE_CHECKING:
    from domicile.connectors.sql import SqlStore


def follow(
    store: SqlStore,
    from_: sa.FromClause,
    start: sa.ColumnElement[Any],
    hops: tuple[Hop, ...],
    *,
    outer: bool = True,
) -> tuple[sa.FromClause, sa.ColumnElement[Any]]:
    """Join each hop onto *from_*, starting at *start*; the FROM and the value read last."""
    current = start
    for hop in hops:
        table = store.table(hop.table).alias()
        on = table.c[hop.match] == current
        from_ = from_.outerjoin(table, on) if outer else from_.join(table, on)
        current = table.c[hop.read]
    return from_, current


@dataclass(frozen=True)
class DirectoryJoin:
    """The directory joined onto a query: the FROM, the id matched, the raw country."""

    from_: sa.FromClause
    id: sa.ColumnElement[Any]
    country: sa.ColumnElement[Any]


def join_directory(
    store: SqlStore,
    directory: sa.Table,
    sub: Subjects,
    from_: sa.FromClause,
    owner: sa.ColumnElement[Any],
) -> DirectoryJoin:
    """Outer-join the directory (with its id path) onto *from_* where its id equals *owner*.

    The id path is an inner join nested under the outer join (a directory row
    whose id path breaks has no id); the country path is outer-joined after.
    ``id`` is NULL in a result row when the directory does not know the owner.
    """
    d = directory.alias()
    inner, id_expr = follow(store, d, d.c[sub.id_owner.column], sub.id_owner.hops, outer=False)
    from_ = from_.outerjoin(inner, id_expr == owner)
    country = sub.country_owner
    from_, country_expr = follow(store, from_, d.c[country.column], country.hops)
    return DirectoryJoin(from_, id_expr, country_expr)


def directory_rows(store: SqlStore, directory: sa.Table, sub: Subjects) -> DirectoryJoin:
    """The directory on its own: one row per subject id, with its raw country."""
    d = directory.alias()
    from_, id_expr = follow(store, d, d.c[sub.id_owner.column], sub.id_owner.hops, outer=False)
    country = sub.country_owner
    from_, country_expr = follow(store, from_, d.c[country.column], country.hops)
    return DirectoryJoin(from_, id_expr, country_expr)


def own_country(
    store: SqlStore, table: sa.Table, sub: Subjects, from_: sa.FromClause
) -> tuple[sa.FromClause, sa.ColumnElement[Any]]:
    """The raw country of the directory's own rows (*table* is the directory)."""
    country = sub.country_owner
    return follow(store, from_, table.c[country.column], country.hops)


def id_type_column(store: SqlStore, directory: sa.Table, sub: Subjects) -> sa.Column[Any]:
    """The column whose type subject ids have (the last column of the id path)."""
    owner = sub.id_owner
    if not owner.hops:
        return directory.c[owner.column]
    last = owner.hops[-1]
    return store.table(last.table).c[last.read]
