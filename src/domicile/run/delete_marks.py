"""A mark, written in the source's own delete transaction, that says the delete committed.

The journal records ``deleting`` before the source transaction that deletes
a batch's rows commits.  A process killed between the two leaves the journal
saying ``deleting`` whether or not the delete committed; if the application
then deletes one of the rows itself, a resume cannot tell its delete from
domicile's by the journal alone — and taking it for domicile's would keep the
home copy of a record the application deleted.  So the delete transaction
also inserts a row in ``domicile_delete_marks`` at the source: present after
a crash means the delete committed (the missing rows are domicile's);
absent means it rolled back (missing rows were deleted by the application,
and their home copies go too).  The mark is removed once the journal says
``done``.
"""

from __future__ import annotations

import datetime as dt
import threading

import sqlalchemy as sa

from domicile.connectors.sql import SqlStore
from domicile.errors import ConnectorError

MARKS_TABLE = "domicile_delete_marks"

_md = sa.MetaData()
marks = sa.Table(
    MARKS_TABLE,
    _md,
    sa.Column("token", sa.String(120), primary_key=True),  # run id / batch id
    sa.Column("at", sa.DateTime(), nullable=False),  # naive UTC, for people reading it
)


def token(run_id: str, batch_id: int) -> str:
    """The mark's key for one batch of one run."""
    return f"{run_id}/{batch_id}"


_creating = threading.Lock()


def ensure(store: SqlStore) -> None:
    """Create the marks table at *store* if it is missing (before the delete transaction).

    Parts of one source delete in parallel, on threads (one at a time here)
    and in other processes: a creation that lost the race to another process
    is fine once the table is there.
    """
    with _creating:
        try:
            with store.begin(f"preparing {MARKS_TABLE}") as conn:
                marks.create(conn, checkfirst=True)
        except ConnectorError:
            with store.connect(f"looking for {MARKS_TABLE}") as conn:
                if not sa.inspect(conn).has_table(MARKS_TABLE):
                    raise


def mark(conn: sa.Connection, key: str) -> None:
    """Insert the mark inside the (uncommitted) delete transaction *conn*."""
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    conn.execute(marks.insert().values(token=key, at=now))


def committed(store: SqlStore, key: str) -> bool:
    """True when a delete transaction that wrote this mark committed."""
    with store.connect(f"reading {MARKS_TABLE}") as conn:
        return (
            conn.execute(sa.select(marks.c.token).where(marks.c.token == key)).first() is not None
        )


def clear(store: SqlStore, key: str) -> None:
    """Remove the mark (the journal says ``done``: nothing will ask again)."""
    with store.begin(f"clearing {MARKS_TABLE}") as conn:
        conn.execute(marks.delete().where(marks.c.token == key))
