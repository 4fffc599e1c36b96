"""The state store: where the journal and the audit log live.

The data map's ``state:`` key names it (any SQLAlchemy URL); by default a
SQLite file ``.domicile/state.db`` beside the map.  Relative SQLite paths are
resolved against the map's folder so that a command gives the same answer
from any working directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa

DEFAULT_STATE = "sqlite:///.domicile/state.db"


def resolve_sqlite_url(url: str, base: Path) -> str:
    """Make a relative ``sqlite:///path`` absolute against *base*; others unchanged."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith("sqlite:////"):
        rel = url[len(prefix) :]
        if rel and rel != ":memory:" and not rel.startswith(":"):
            return prefix + str((base / rel).resolve())
    return url


def state_engine(url: str, base: Path) -> sa.Engine:
    """An engine on the state store, creating the SQLite folder if needed."""
    url = resolve_sqlite_url(url, base)
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @sa.event.listens_for(engine, "connect")
        def _wal(dbapi_conn: Any, _record: Any) -> None:
            # WAL: one write per commit instead of two; synchronous stays FULL so a
            # journalled state survives a power cut, not only a killed process
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True)
