"""Row digests read from the store that holds the rows, computed by its engine.

The move compares rows by their content digest three times: at home after
the copy (verify), at the source before the delete (has the row changed?),
and at home again inside the delete (is the verified copy still there?).
Where every column of a table has an SQL form
(:func:`domicile.connectors.sql_digest.row_digest_sql`) the engine computes
the digest and only ``(key, 32 bytes)`` per row crosses the wire; a row the
SQL leaves NULL ("compute this one in Python") is read whole and digested in
Python, as is every row of a table with a column that has no SQL form.  The
SQL digest is byte-for-byte the Python one, so both ends of a comparison use
one digest function (``domicile.row.v1``) wherever each was computed, and
the journal, the conflict policy and the audit log never see the difference.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from domicile.connectors.keys import chunks, key_chunk, key_columns, key_in_for, select_by_keys
from domicile.connectors.sql_digest import row_digest_sql
from domicile.run.rows import digest_hex

if TYPE_CHECKING:
    from domicile.connectors.sql import SqlStore

log = logging.getLogger(__name__)


class TableDigests:
    """Digests of one table's rows over *columns*, by key, at one store."""

    def __init__(
        self,
        store: SqlStore,
        table: sa.Table,
        key: Sequence[str],
        columns: Sequence[sa.Column[Any]],
    ) -> None:
        self.table = table
        self.key = list(key)
        self.columns = list(columns)
        self.expr = row_digest_sql(store.dialect, self.columns)
        if self.expr is None:
            log.debug("digests of %s at %s are computed in Python", table.name, store.name)

    @property
    def in_sql(self) -> bool:
        """True when the engine computes the digests (NULL rows aside)."""
        return self.expr is not None

    def by_keys(
        self,
        conn: sa.Connection,
        keys: Sequence[tuple[Any, ...]],
        *,
        for_update: bool = False,
    ) -> dict[tuple[Any, ...], str]:
        """Hex digests of the rows with *keys* that exist, by key as the engine returns it.

        *for_update* locks the rows (where the engine locks rows) until the
        transaction of *conn* ends, as :func:`select_by_keys` does.
        """
        if self.expr is None:
            rows = select_by_keys(conn, self.table, self.key, keys, for_update=for_update)
            return {k: digest_hex(v, self.columns) for k, v in rows.items()}
        from domicile.connectors.keys import locks_rows

        dialect = conn.dialect.name
        lock = for_update and locks_rows(dialect)
        width = len(self.key)
        out: dict[tuple[Any, ...], str] = {}
        in_python: list[tuple[Any, ...]] = []
        cols = key_columns(self.table, self.key)
        for chunk in chunks(list(keys), key_chunk(dialect, self.key)):
            q = sa.select(*cols, self.expr).where(key_in_for(dialect, self.table, self.key, chunk))
            if lock:
                q = q.with_for_update()
            for r in conn.execute(q):
                k = tuple(r[:width])
                d = r[width]
                if d is None:
                    in_python.append(k)
                else:
                    out[k] = bytes(d).hex()
        if in_python:  # already locked above: read them whole and digest them here
            rows = select_by_keys(conn, self.table, self.key, in_python)
            out.update((k, digest_hex(v, self.columns)) for k, v in rows.items())
        return out
