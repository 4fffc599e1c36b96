"""The last censuses, kept in the state store: what ``serve`` shows without scanning.

``domicile scan`` (through :func:`domicile.api.scan`) and every round of
``domicile watch`` store the census they computed with :func:`save_census`;
the routing service, its ``/metrics`` and the dashboard read the newest with
:func:`latest_census`.  A request never starts a live scan: a census reads
every store, and a request must not be able to make the fleet do that.

The table holds the census JSON (``scan --json``'s shape: counts, store and
dataset names, never a subject's id) with the time it was taken.  Only the
newest :data:`KEEP` are kept: the audit log, not this table, is the history.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from domicile.errors import StateStoreError
from domicile.state import state_engine

if TYPE_CHECKING:
    from domicile.model import DataMap
    from domicile.scan import Census

KEEP = 50
"""How many censuses the state store keeps (older ones are removed on save)."""

metadata = sa.MetaData()

censuses = sa.Table(
    "domicile_censuses",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("taken_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("census", sa.Text, nullable=False),
)


def _engine(m: DataMap, engine: sa.Engine | None) -> tuple[sa.Engine, bool]:
    if engine is not None:
        return engine, False
    return state_engine(m.state, m.base_dir), True


def _as_json(census: Census | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(census, Mapping):
        return dict(census)
    return census.to_json()


def save_census(
    m: DataMap,
    census: Census | Mapping[str, Any],
    *,
    engine: sa.Engine | None = None,
    taken_at: dt.datetime | None = None,
) -> dt.datetime:
    """Store *census* (a :class:`~domicile.scan.Census` or its JSON) as the newest; its time.

    Creates the table on first use.  Failures of the state store raise
    :class:`~domicile.errors.StateStoreError`.
    """
    when = taken_at or dt.datetime.now(dt.UTC)
    text = json.dumps(_as_json(census), sort_keys=True, separators=(",", ":"))
    eng, owned = _engine(m, engine)
    try:
        metadata.create_all(eng, checkfirst=True)
        with eng.begin() as conn:
            conn.execute(censuses.insert().values(taken_at=when, census=text))
            newest = sa.select(censuses.c.id).order_by(censuses.c.id.desc()).limit(KEEP)
            keep_from = sa.select(sa.func.min(newest.subquery().c.id)).scalar_subquery()
            conn.execute(censuses.delete().where(censuses.c.id < keep_from))
    except sa.exc.SQLAlchemyError as exc:
        raise StateStoreError(
            f"cannot store the census: {str(getattr(exc, 'orig', exc)).splitlines()[0]}",
            where="the state store",
        ) from exc
    finally:
        if owned:
            eng.dispose()
    return when


def latest_census(
    m: DataMap, *, engine: sa.Engine | None = None
) -> tuple[dict[str, Any], dt.datetime] | None:
    """The newest stored census (JSON) and when it was taken (UTC), or None if there is none."""
    eng, owned = _engine(m, engine)
    try:
        if not sa.inspect(eng).has_table(censuses.name):
            return None
        with eng.connect() as conn:
            row = conn.execute(
                sa.select(censuses.c.census, censuses.c.taken_at)
                .order_by(censuses.c.id.desc())
                .limit(1)
            ).first()
    except sa.exc.SQLAlchemyError as exc:
        raise StateStoreError(
            f"cannot read the census: {str(getattr(exc, 'orig', exc)).splitlines()[0]}",
            where="the state store",
        ) from exc
    finally:
        if owned:
            eng.dispose()
    if row is None:
        return None
    taken: dt.datetime = row[1]
    if taken.tzinfo is None:  # SQLite keeps no zone: the value was written in UTC
        taken = taken.replace(tzinfo=dt.UTC)
    data: dict[str, Any] = json.loads(row[0])
    return data, taken
