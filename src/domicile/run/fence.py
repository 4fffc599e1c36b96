"""Fencing tokens: a stale attempt at a part cannot write the journal after a newer one began.

A worker that runs a part of a move first *claims* it: one statement raises
the part's token and the worker keeps the new value.  Every journal write of
that attempt then begins with a guarded write of the part's row that only
matches while the token is still its own — in the same transaction as the
journal write, so a claim by a newer attempt (the batch retried on another
worker after this one was thought lost) either commits first and the old
attempt's write is refused, or waits for it.  A refused attempt stops with
:class:`Fenced` before its next step; the protocol makes the newer attempt's
redo of any step safe.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from domicile.errors import DomicileError, Permanent
from domicile.run.journal_records import now, parts


class Fenced(DomicileError, Permanent):
    """A newer attempt claimed this part: this attempt must do nothing more."""

    exit_code = 4


@dataclass(frozen=True)
class Fence:
    """One attempt at a part: the part's row id and the token its claim got."""

    part_id: int
    token: int

    def check(self, conn: sa.Connection) -> None:
        """Refuse (raise :class:`Fenced`) unless the part's token is still this attempt's.

        A write, not a read: it takes the row's (or SQLite's database) write
        lock for the rest of *conn*'s transaction, so no claim can slip in
        between this check and the journal write that follows it.
        """
        stmt = (
            parts.update()
            .where(parts.c.id == self.part_id, parts.c.token == self.token)
            .values(updated_at=now())
        )
        if conn.execute(stmt).rowcount != 1:
            raise Fenced(
                f"part {self.part_id}: a newer attempt took it over (this attempt's token "
                f"{self.token} is stale)",
                hint="nothing to do: the newer attempt finishes the part",
            )


def claim(engine: sa.Engine, part_id: int, holder: str) -> Fence:
    """Raise part *part_id*'s token for a new attempt by *holder*; its :class:`Fence`."""
    with engine.begin() as conn:
        conn.execute(
            parts.update()
            .where(parts.c.id == part_id)
            .values(token=parts.c.token + 1, holder=holder[:200], updated_at=now())
        )
        token = conn.execute(sa.select(parts.c.token).where(parts.c.id == part_id)).scalar_one()
    return Fence(part_id, int(token))
