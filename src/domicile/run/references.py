"""Reference rows (shared catalogues) that moved records point to.

Before rows are written at home, every row of a reference dataset they point
to by foreign key — and, transitively, what those rows point to — is copied
there first (inserted if missing, never overwritten), so that the home's
foreign keys hold.  Reference rows are never deleted from the source.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from domicile.errors import PermanentConnectorError
from domicile.fleet import Location
from domicile.run.rows import chunks, key_in

if TYPE_CHECKING:
    from domicile.connectors.sql import SqlStore
    from domicile.run.context import RunContext

MAX_DEPTH = 16  # reference chains deeper than this are a cycle in the catalogue


def copy_references(
    ctx: RunContext,
    source: Location,
    home: Location,
    conn: sa.Connection,
    rows: Iterable[Mapping[str, Any]],
) -> int:
    """Copy the reference rows *rows* point to into *home*'s store, in *conn*'s transaction."""
    return _copy(ctx, source.store, source.table, home.store, conn, list(rows), 0)


def _copy(
    ctx: RunContext,
    src: SqlStore,
    table: sa.Table,
    dst: SqlStore,
    conn: sa.Connection,
    rows: Sequence[Mapping[str, Any]],
    depth: int,
) -> int:
    copied = 0
    if depth > MAX_DEPTH or not rows:
        return 0
    for fk in table.foreign_key_constraints:
        ref_table_name = fk.referred_table.name
        if not ctx.is_reference_table(ref_table_name):
            continue  # personal parents are ordered by the plan, not copied here
        local = [e.parent.name for e in fk.elements]
        remote = [e.column.name for e in fk.elements]
        wanted = {
            tuple(r[c] for c in local) for r in rows if all(r.get(c) is not None for c in local)
        }
        if not wanted:
            continue
        src_ref = src.table(ref_table_name)
        dst_ref = dst.table(ref_table_name)
        present: set[tuple[Any, ...]] = set()
        for chunk in chunks(sorted(wanted, key=str)):
            q = sa.select(*[dst_ref.c[c] for c in remote]).where(key_in(dst_ref, remote, chunk))
            present |= {tuple(r) for r in conn.execute(q)}
        missing = sorted(wanted - present, key=str)
        if not missing:
            continue
        fetched: list[dict[str, Any]] = []
        with src.connect(f"reading reference rows of {ref_table_name}") as src_conn:
            for chunk in chunks(missing):
                q2 = sa.select(src_ref).where(key_in(src_ref, remote, chunk))
                fetched += [dict(r) for r in src_conn.execute(q2).mappings()]
        found = {tuple(r[c] for c in remote) for r in fetched}
        absent = [m for m in missing if m not in found]
        if absent:
            shown = ", ".join(str(list(a)) for a in absent[:5])
            raise PermanentConnectorError(
                f"{table.name}.{', '.join(local)} points to {ref_table_name} rows that exist "
                f"neither at home nor in the source: {shown}",
                where=f"store {src.name} -> {dst.name}",
                hint=f"add the missing {ref_table_name} rows (or clear the references), "
                "then resume the run; nothing was deleted",
            )
        copied += _copy(ctx, src, src_ref, dst, conn, fetched, depth + 1)
        names = [c.name for c in src_ref.columns if c.name in dst_ref.c]
        conn.execute(dst_ref.insert(), [{n: r[n] for n in names} for r in fetched])
        copied += len(fetched)
    return copied
