"""The journal: every run and batch, each state written before its side effect.

A batch moves through ``pending → copying → copied → verified → deleting →
done``; ``failed`` records a stop (conflict, mismatch, store gone) from which
a resume starts the batch again.  Transitions are checked here, in one
place, so a bug elsewhere cannot skip a step (for example delete what was
never verified).  The journal lives in the map's state store (SQLite beside
the map by default, PostgreSQL when ``state:`` names one).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import signal
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from domicile.errors import DomicileError

STATES = ("pending", "copying", "copied", "verified", "deleting", "done", "failed")
ALLOWED: dict[str, frozenset[str]] = {
    "pending": frozenset({"copying"}),
    "copying": frozenset({"copied", "failed"}),
    "copied": frozenset({"verified", "failed"}),
    "verified": frozenset({"deleting"}),
    "deleting": frozenset({"done", "failed"}),
    "failed": frozenset({"copying", "deleting"}),
    "done": frozenset(),
}

CRASH_ENV = "DOMICILE_TEST_CRASH_AT"
"""Test-only: ``state[:n]`` kills the process (SIGKILL) right after the n-th
journal write of that state (``dataset-done`` fires between datasets)."""

PAUSE_ENV = "DOMICILE_TEST_PAUSE_AT"
"""Test-only: ``state:n:seconds`` sleeps after the n-th write of that state, so a
test can take a store away while a run is between two steps."""

md = sa.MetaData()
runs = sa.Table(
    "domicile_runs",
    md,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("status", sa.String(20), nullable=False),  # running | done | incomplete | failed
    sa.Column("scope", sa.Text, nullable=False),  # JSON list of jurisdictions
    sa.Column("map_digest", sa.String(64), nullable=False),
    sa.Column("plan", sa.Text, nullable=False),  # JSON
    sa.Column("summary", sa.Text),  # JSON, written at the end
)
batches = sa.Table(
    "domicile_batches",
    md,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(40), sa.ForeignKey("domicile_runs.id"), nullable=False),
    sa.Column("dataset", sa.String(200), nullable=False),
    sa.Column("source", sa.String(200), nullable=False),
    sa.Column("pass_no", sa.Integer, nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("lo", sa.Text),  # JSON key, exclusive; NULL = from the start
    sa.Column("hi", sa.Text, nullable=False),  # JSON key, inclusive
    sa.Column("state", sa.String(20), nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("digest", sa.String(64)),  # batch digest, set when copied
    sa.Column("counts", sa.Text),  # JSON: deleted, changed, vanished, deferred, ...
    sa.Column("error", sa.Text),
    sa.Column("failed_in", sa.String(10)),  # copy | delete: where a resume starts again
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_domicile_batches_run", "run_id", "dataset", "source", "pass_no", "seq"),
)
batch_rows = sa.Table(
    "domicile_batch_rows",
    md,
    sa.Column("batch_id", sa.Integer, sa.ForeignKey("domicile_batches.id"), primary_key=True),
    sa.Column("key", sa.String(500), primary_key=True),  # canonical JSON of the key values
    sa.Column("digest", sa.String(64), nullable=False),  # content digest as copied
    sa.Column("targets", sa.Text, nullable=False),  # JSON list of home stores
    sa.Column("dataset", sa.String(200), nullable=False),
    # NULL: moving; dropped: changed or gone before the copy; deferred: parent not yet
    # at home; kept-home: conflict resolved for home; changed / vanished: seen at delete
    sa.Column("status", sa.String(20)),
    # rows whose blob URL is rewritten at home digest differently there
    sa.Column("home_digest", sa.String(64)),
    # JSON: the row's object (store, key, version, sha256, home url) when it has one
    sa.Column("blob", sa.Text),
    sa.Index("ix_domicile_batch_rows_key", "dataset", "key"),
)


def key_text(key: Sequence[Any]) -> str:
    """Canonical JSON for a key tuple (stable, compact)."""
    return json.dumps(list(key), default=str, separators=(",", ":"), ensure_ascii=False)


def key_values(text: str | None) -> tuple[Any, ...] | None:
    """The key tuple back from :func:`key_text`."""
    return None if text is None else tuple(json.loads(text))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class RunRecord:
    """One run as the journal holds it."""

    id: str
    started_at: dt.datetime
    finished_at: dt.datetime | None
    status: str
    scope: tuple[str, ...]
    map_digest: str
    plan: dict[str, Any]
    summary: dict[str, Any] | None


@dataclass(frozen=True)
class BatchRecord:
    """One batch as the journal holds it."""

    id: int
    run_id: str
    dataset: str
    source: str
    pass_no: int
    seq: int
    lo: tuple[Any, ...] | None
    hi: tuple[Any, ...]
    state: str
    rows: int
    digest: str | None
    counts: dict[str, int]
    error: str | None
    failed_in: str | None


@dataclass(frozen=True)
class BatchRow:
    """A row of a batch: its key, its content digest as copied, and its homes."""

    key: tuple[Any, ...]
    digest: str
    targets: tuple[str, ...]
    status: str | None = None
    home_digest: str | None = None
    blob: dict[str, Any] | None = None

    @property
    def digest_at_home(self) -> str:
        """The digest the row must have at home (differs when a blob URL was rewritten)."""
        return self.home_digest or self.digest


class IllegalTransition(DomicileError):
    """A batch was asked to skip a step of the protocol (a bug, never user input)."""


class Journal:
    """Runs and batches in the state store."""

    def __init__(self, engine: sa.Engine):
        self.engine = engine
        self._lock = threading.Lock()
        self._crash_counts: dict[str, int] = {}
        md.create_all(engine)

    # -- runs ---------------------------------------------------------------

    def new_run(self, scope: Sequence[str], map_digest: str, plan: dict[str, Any]) -> str:
        """Record a new run; returns its id."""
        run_id = f"r{_now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
        with self._lock, self.engine.begin() as conn:
            conn.execute(
                runs.insert().values(
                    id=run_id,
                    started_at=_now(),
                    status="running",
                    scope=json.dumps(list(scope)),
                    map_digest=map_digest,
                    plan=json.dumps(plan),
                )
            )
        return run_id

    def _run(self, row: Any) -> RunRecord:
        return RunRecord(
            id=row.id,
            started_at=row.started_at,
            finished_at=row.finished_at,
            status=row.status,
            scope=tuple(json.loads(row.scope)),
            map_digest=row.map_digest,
            plan=json.loads(row.plan),
            summary=json.loads(row.summary) if row.summary else None,
        )

    def run(self, run_id: str) -> RunRecord | None:
        """The run, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(runs).where(runs.c.id == run_id)).first()
        return self._run(row) if row else None

    def runs(self) -> list[RunRecord]:
        """Every run, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(runs).order_by(runs.c.started_at, runs.c.id)).all()
        return [self._run(r) for r in rows]

    def unfinished(self) -> list[RunRecord]:
        """Runs that did not end ``done`` (running, incomplete or failed)."""
        return [r for r in self.runs() if r.status != "done"]

    def finish_run(self, run_id: str, status: str, summary: dict[str, Any]) -> None:
        """Record how a run ended."""
        with self._lock, self.engine.begin() as conn:
            conn.execute(
                runs.update()
                .where(runs.c.id == run_id)
                .values(status=status, finished_at=_now(), summary=json.dumps(summary))
            )

    def reopen(self, run_id: str) -> None:
        """Mark a run running again (resume)."""
        with self._lock, self.engine.begin() as conn:
            conn.execute(runs.update().where(runs.c.id == run_id).values(status="running"))

    # -- batches --------------------------------------------------------------

    def add_batch(
        self,
        run_id: str,
        dataset: str,
        source: str,
        pass_no: int,
        seq: int,
        lo: Sequence[Any] | None,
        hi: Sequence[Any],
        rows: Sequence[BatchRow],
    ) -> int:
        """Record a batch and its rows, in state ``copying`` (before the copy)."""
        with self._lock, self.engine.begin() as conn:
            result = conn.execute(
                batches.insert().values(
                    run_id=run_id,
                    dataset=dataset,
                    source=source,
                    pass_no=pass_no,
                    seq=seq,
                    lo=key_text(lo) if lo is not None else None,
                    hi=key_text(hi),
                    state="copying",
                    rows=len(rows),
                    updated_at=_now(),
                )
            )
            inserted = result.inserted_primary_key
            assert inserted is not None  # an INSERT of one row always has one
            batch_id = int(inserted[0])
            if rows:
                conn.execute(
                    batch_rows.insert(),
                    [
                        {
                            "batch_id": batch_id,
                            "key": key_text(r.key),
                            "digest": r.digest,
                            "targets": json.dumps(list(r.targets)),
                            "dataset": dataset,
                            "home_digest": r.home_digest,
                            "blob": json.dumps(r.blob) if r.blob is not None else None,
                        }
                        for r in rows
                    ],
                )
        self._maybe_crash("copying")
        return batch_id

    def _batch(self, row: Any) -> BatchRecord:
        return BatchRecord(
            id=row.id,
            run_id=row.run_id,
            dataset=row.dataset,
            source=row.source,
            pass_no=row.pass_no,
            seq=row.seq,
            lo=key_values(row.lo),
            hi=key_values(row.hi) or (),
            state=row.state,
            rows=row.rows,
            digest=row.digest,
            counts=json.loads(row.counts) if row.counts else {},
            error=row.error,
            failed_in=row.failed_in,
        )

    def batch(self, batch_id: int) -> BatchRecord:
        """One batch."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(batches).where(batches.c.id == batch_id)).one()
        return self._batch(row)

    def batches(
        self,
        run_id: str,
        dataset: str | None = None,
        source: str | None = None,
        states: Iterable[str] | None = None,
    ) -> list[BatchRecord]:
        """The run's batches in order, optionally filtered."""
        q = sa.select(batches).where(batches.c.run_id == run_id)
        if dataset is not None:
            q = q.where(batches.c.dataset == dataset)
        if source is not None:
            q = q.where(batches.c.source == source)
        if states is not None:
            q = q.where(batches.c.state.in_(list(states)))
        q = q.order_by(batches.c.pass_no, batches.c.dataset, batches.c.source, batches.c.seq)
        with self.engine.connect() as conn:
            return [self._batch(r) for r in conn.execute(q)]

    def rows(self, batch_id: int) -> list[BatchRow]:
        """The rows of a batch as recorded before the copy."""
        c = batch_rows.c
        q = sa.select(c.key, c.digest, c.targets, c.status, c.home_digest, c.blob).where(
            c.batch_id == batch_id
        )
        with self.engine.connect() as conn:
            return [
                BatchRow(
                    key_values(k) or (),
                    d,
                    tuple(json.loads(t)),
                    st,
                    hd,
                    json.loads(b) if b else None,
                )
                for k, d, t, st, hd, b in conn.execute(q)
            ]

    def update_rows(self, batch_id: int, updates: Sequence[BatchRow]) -> None:
        """Record what a copy learnt about rows: digest at home, blob hash and location."""
        if not updates:
            return
        with self._lock, self.engine.begin() as conn:
            for r in updates:
                conn.execute(
                    batch_rows.update()
                    .where(batch_rows.c.batch_id == batch_id, batch_rows.c.key == key_text(r.key))
                    .values(
                        digest=r.digest,
                        home_digest=r.home_digest,
                        blob=json.dumps(r.blob) if r.blob is not None else None,
                    )
                )

    def set_row_status(self, batch_id: int, keys: Iterable[Sequence[Any]], status: str) -> None:
        """Mark rows of a batch (see the ``status`` column)."""
        texts = [key_text(k) for k in keys]
        if not texts:
            return
        with self._lock, self.engine.begin() as conn:
            for start in range(0, len(texts), 500):
                conn.execute(
                    batch_rows.update()
                    .where(
                        batch_rows.c.batch_id == batch_id,
                        batch_rows.c.key.in_(texts[start : start + 500]),
                    )
                    .values(status=status)
                )

    def copied_before(self, dataset: str, target: str, key: Sequence[Any], digest: str) -> bool:
        """True when some batch copied exactly this content of this key to *target*.

        Tells domicile's own stale copy at home (the source row changed after it
        was copied) from a genuine conflict (home holds content domicile never
        wrote there).
        """
        q = sa.select(batch_rows.c.targets).where(
            batch_rows.c.dataset == dataset,
            batch_rows.c.key == key_text(key),
            sa.or_(batch_rows.c.digest == digest, batch_rows.c.home_digest == digest),
        )
        with self.engine.connect() as conn:
            return any(target in json.loads(t) for (t,) in conn.execute(q))

    def transition(
        self,
        batch_id: int,
        new_state: str,
        *,
        digest: str | None = None,
        counts: dict[str, int] | None = None,
        error: str | None = None,
        failed_in: str | None = None,
    ) -> None:
        """Move a batch to *new_state*, refusing any step the protocol does not allow."""
        with self._lock, self.engine.begin() as conn:
            current = conn.execute(
                sa.select(batches.c.state, batches.c.counts).where(batches.c.id == batch_id)
            ).one()
            counts_text: str | None = current.counts
            if new_state not in ALLOWED[current.state]:
                raise IllegalTransition(
                    f"batch {batch_id}: {current.state} -> {new_state} is not allowed",
                    hint="this is a bug in domicile; the journal was left unchanged",
                )
            values: dict[str, Any] = {
                "state": new_state,
                "updated_at": _now(),
                "error": error,
                "failed_in": failed_in,
            }
            if digest is not None:
                values["digest"] = digest
            if counts is not None:
                merged = json.loads(counts_text) if counts_text else {}
                merged.update(counts)
                values["counts"] = json.dumps(merged)
            conn.execute(batches.update().where(batches.c.id == batch_id).values(**values))
        self._maybe_crash(new_state)

    def mark(self, event: str) -> None:
        """A named point between steps (``dataset-done``) for crash tests."""
        self._maybe_crash(event)

    def _maybe_crash(self, state: str) -> None:
        crash, pause = os.environ.get(CRASH_ENV), os.environ.get(PAUSE_ENV)
        if not crash and not pause:
            return
        self._crash_counts[state] = count = self._crash_counts.get(state, 0) + 1
        if crash:
            name, _, nth = crash.partition(":")
            if name == state and count >= int(nth or 1):
                os.kill(os.getpid(), signal.SIGKILL)
        if pause:
            name, nth, seconds = [*pause.split(":"), "1", "1"][:3]
            if name == state and count == int(nth):
                time.sleep(float(seconds))
