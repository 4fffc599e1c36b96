"""The journal: every run and batch, each state written before its side effect.

A batch moves through ``pending → copying → copied → verified → deleting →
done``; ``failed`` records a stop (conflict, mismatch, store gone) from which
a resume starts the batch again.  Transitions are checked here, in one
place, so a bug elsewhere cannot skip a step (for example delete what was
never verified).  The journal lives in the map's state store (SQLite beside
the map by default, PostgreSQL when ``state:`` names one).

Integrity: every write to a batch (a transition, a row status, what a copy
learnt about its rows) recomputes the batch's MAC — HMAC-SHA-256 under the
deployment key, which lives beside the map or in the environment, never in
the state store — over the batch's fields, its rows and the previous MAC.
Before a step acts on a batch, :meth:`Journal.checked_batch` recomputes it:
a state edited by hand (``copying`` turned into ``verified``) is found before
anything is deleted.  The journal also records which source every copy came
from, so a key arriving at one home from two sources is a conflict.

The state store's tables carry a schema version (:data:`SCHEMA_VERSION`);
an older version is migrated where that is simple, a newer one refused.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa

from domicile.errors import ConfigError
from domicile.run import hooks
from domicile.run.fence import Fence
from domicile.run.journal_pack import (
    Checked,
    Unpacked,
    fingerprint,
    int_keys,
    pack,
    packed_of,
    packed_values,
    range_holds,
)
from domicile.run.journal_records import (
    ALLOWED,
    BATCH_FIELDS,
    META,
    SCHEMA_VERSION,
    STATES,
    BatchRecord,
    BatchRow,
    Copy,
    IllegalTransition,
    JournalTampered,
    RunRecord,
    batch_mac,
    batch_rows,
    batches,
    check_mac,
    key_text,
    key_values,
    now,
    parsed,
    prepare_schema,
    rows_fingerprint,
    runs,
    state_connection,
    state_errors,
)

__all__ = [
    "ALLOWED",
    "SCHEMA_VERSION",
    "STATES",
    "BatchRecord",
    "BatchRow",
    "Copy",
    "IllegalTransition",
    "Journal",
    "JournalTampered",
    "RunRecord",
    "batch_rows",
    "batches",
    "key_text",
    "key_values",
]


class Journal:
    """Runs and batches in the state store.

    *mac_key* is the deployment key (see :mod:`domicile.keys`); a journal
    opened without it can be read (status, report) but not written.
    """

    def __init__(
        self,
        engine: sa.Engine,
        mac_key: bytes | None = None,
        *,
        fence: Fence | None = None,
        prepare: bool = True,
    ):
        self.engine = engine
        self._lock = threading.Lock()
        self._mac_key = mac_key
        self._unpacked = Unpacked()  # a batch's rows are read at each step
        self._checked = Checked()  # the records whose MAC this process checked last
        # batch id -> (MAC, source, rows by key text) as read and checked by this process
        self._index: dict[int, tuple[str, str, dict[str, BatchRow]]] = {}
        self._fence = fence
        if prepare:
            with state_errors(engine, "opening the journal"):
                prepare_schema(engine)

    def set_key(self, mac_key: bytes) -> None:
        """Use *mac_key* to seal and check batches from now on."""
        self._mac_key = mac_key

    # -- schema ---------------------------------------------------------------

    # -- runs ---------------------------------------------------------------

    def new_run(
        self,
        scope: Sequence[str],
        map_digest: str,
        plan: dict[str, Any],
        depends: dict[str, Any] | None = None,
    ) -> str:
        """Record a new run; returns its id."""
        run_id = f"r{now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
        with self._lock, self._begin("recording a new run") as conn:
            conn.execute(
                runs.insert().values(
                    id=run_id,
                    started_at=now(),
                    status="running",
                    scope=json.dumps(list(scope)),
                    map_digest=map_digest,
                    plan=json.dumps(plan),
                    depends=json.dumps(depends) if depends is not None else None,
                )
            )
        return run_id

    @parsed("run")
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
            depends=json.loads(row.depends) if row.depends else None,
        )

    def run(self, run_id: str) -> RunRecord | None:
        """The run, or None."""
        with self._connect("reading the journal") as conn:
            row = conn.execute(sa.select(runs).where(runs.c.id == run_id)).first()
        return self._run(row) if row else None

    def runs(self) -> list[RunRecord]:
        """Every run, oldest first."""
        with self._connect("reading the journal") as conn:
            rows = conn.execute(sa.select(runs).order_by(runs.c.started_at, runs.c.id)).all()
        return [self._run(r) for r in rows]

    def unfinished(self) -> list[RunRecord]:
        """Runs a new run must not start beside: running or failed, or with a batch not done.

        A run that ended ``incomplete`` with every batch done (what is left is
        for a new run: pinned rows, rows the application keeps changing) is
        not unfinished; it can still be resumed by name.
        """
        out = []
        for r in self.runs():
            if r.status in ("done", "abandoned"):
                continue
            if r.status == "incomplete" and all(b.state == "done" for b in self.batches(r.id)):
                continue
            out.append(r)
        return out

    def finish_run(self, run_id: str, status: str, summary: dict[str, Any]) -> None:
        """Record how a run ended."""
        with self._lock, self._begin("recording the end of a run") as conn:
            conn.execute(
                runs.update()
                .where(runs.c.id == run_id)
                .values(status=status, finished_at=now(), summary=json.dumps(summary))
            )

    def reopen(self, run_id: str) -> None:
        """Mark a run running again (resume)."""
        with self._lock, self._begin("reopening a run") as conn:
            conn.execute(runs.update().where(runs.c.id == run_id).values(status="running"))

    def abandon(self, run_id: str) -> None:
        """Mark an unfinished run abandoned: it is never resumed; new runs may start."""
        with self._lock, self._begin("abandoning a run") as conn:
            conn.execute(
                runs.update()
                .where(runs.c.id == run_id)
                .values(status="abandoned", finished_at=now())
            )

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
        """Record a batch and its rows (one record), in state ``copying`` (before the copy)."""
        key = self._key()
        packed = pack(rows)
        with self._lock, self._begin("journalling a batch") as conn:
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
                    updated_at=now(),
                    **packed_values(packed),
                )
            )
            inserted = result.inserted_primary_key
            assert inserted is not None  # an INSERT of one row always has one
            batch_id = int(inserted[0])
            self._seal(conn, batch_id, key)
        hooks.point("copying")
        return batch_id

    @parsed("batch")
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
        """One batch (as stored; see :meth:`checked_batch` before acting on it)."""
        with self._connect("reading the journal") as conn:
            row = conn.execute(sa.select(*META).where(batches.c.id == batch_id)).one()
        return self._batch(row)

    def checked_batch(self, batch_id: int, *, fresh: bool = False) -> BatchRecord:
        """The batch, after checking its MAC; :class:`JournalTampered` if it does not match.

        *fresh* re-hashes its rows too, whatever this process saw before: the
        delete step asks for it.
        """
        key = self._key()
        with self._connect("reading the journal") as conn:
            row = conn.execute(sa.select(batches).where(batches.c.id == batch_id)).one()
            self._check(conn, row, key, fresh=fresh)
        self._checked.put(row)
        return self._batch(row)

    def _check(self, conn: sa.Connection, row: Any, key: bytes, *, fresh: bool = False) -> bytes:
        """Raise :class:`JournalTampered` unless *row*'s MAC matches its fields and rows;
        returns the rows' fingerprint.  The rows are hashed as stored every time (one
        SHA-256 over the packed record); *fresh* is kept for callers that ask for it."""
        fp = self._fingerprint(conn, row)
        check_mac(key, row, fp)
        return fp

    def _fingerprint(self, conn: sa.Connection, row: Any) -> bytes:
        packed = packed_of(row)
        if packed is not None:
            return fingerprint(packed)
        legacy = conn.execute(sa.select(batch_rows).where(batch_rows.c.batch_id == row.id)).all()
        return rows_fingerprint(legacy)

    def _seal(self, conn: sa.Connection, batch_id: int, key: bytes) -> None:
        row = self._row(conn, batch_id)
        mac = batch_mac(key, row, self._fingerprint(conn, row))
        conn.execute(batches.update().where(batches.c.id == batch_id).values(mac=mac))

    @parsed("the rows of batch")
    def _load_rows(self, conn: sa.Connection, row: Any) -> list[BatchRow]:
        """The rows of the batch in *row*: packed (schema 3) or one per record (schema 2)."""
        packed = packed_of(row)
        if packed is not None:
            try:
                return self._unpacked.rows(row.id, packed)
            except (ValueError, TypeError, KeyError, IndexError) as exc:
                raise JournalTampered(
                    f"batch {row.id} of run {row.run_id}: its rows cannot be read ({exc})",
                    where="the journal",
                    hint="the journal was edited outside domicile; compare it with the audit "
                    "log (domicile audit verify), then abandon the run",
                ) from exc
        c = batch_rows.c
        q = sa.select(c.key, c.digest, c.targets, c.status, c.home_digest, c.blob).where(
            c.batch_id == row.id
        )
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

    def _store_rows(
        self, conn: sa.Connection, batch_id: int, rows: Sequence[BatchRow], key: bytes
    ) -> None:
        """Write a batch's rows (packed; a schema-2 batch becomes packed) and reseal it."""
        conn.execute(
            batches.update().where(batches.c.id == batch_id).values(**packed_values(pack(rows)))
        )
        conn.execute(batch_rows.delete().where(batch_rows.c.batch_id == batch_id))
        self._seal(conn, batch_id, key)
        self._index.pop(batch_id, None)

    def tampered(self) -> list[str]:
        """Every batch whose MAC does not match (for ``audit verify``); [] when all do."""
        key = self._key()
        out: list[str] = []
        with self._connect("reading the journal") as conn:
            for row in conn.execute(sa.select(batches).order_by(batches.c.id)).all():
                try:
                    self._check(conn, row, key, fresh=True)
                except JournalTampered as exc:
                    out.append(exc.message)
        return out

    def batches(
        self,
        run_id: str,
        dataset: str | None = None,
        source: str | None = None,
        states: Iterable[str] | None = None,
    ) -> list[BatchRecord]:
        """The run's batches in order, optionally filtered (without their packed rows)."""
        q = sa.select(*META).where(batches.c.run_id == run_id)
        if dataset is not None:
            q = q.where(batches.c.dataset == dataset)
        if source is not None:
            q = q.where(batches.c.source == source)
        if states is not None:
            q = q.where(batches.c.state.in_(list(states)))
        q = q.order_by(batches.c.pass_no, batches.c.dataset, batches.c.source, batches.c.seq)
        with self._connect("reading the journal") as conn:
            return [self._batch(r) for r in conn.execute(q)]

    def rows(self, batch_id: int) -> list[BatchRow]:
        """The rows of a batch as recorded before the copy (with what was learnt since)."""
        with self._connect("reading the journal") as conn:
            mac = conn.execute(sa.select(batches.c.mac).where(batches.c.id == batch_id)).scalar()
            seen = self._checked.get(batch_id, mac)  # unchanged since its MAC was checked
            return self._load_rows(conn, seen if seen is not None else self._row(conn, batch_id))

    def update_rows(self, batch_id: int, updates: Sequence[BatchRow]) -> None:
        """Record what a copy learnt about rows: digest at home, blob hash and location."""
        if not updates:
            return
        key = self._key()
        by_key = {key_text(r.key): r for r in updates}
        with self._lock, self._begin("journalling copied rows") as conn:
            row = self._row(conn, batch_id)
            self._check(conn, row, key)
            rows = self._load_rows(conn, row)
            out = []
            for r in rows:
                u = by_key.get(key_text(r.key))
                out.append(
                    r
                    if u is None
                    else r._replace(digest=u.digest, home_digest=u.home_digest, blob=u.blob)
                )
            self._store_rows(conn, batch_id, out, key)

    def set_row_status(
        self,
        batch_id: int,
        keys: Iterable[Sequence[Any]],
        status: str,
        conn: sa.Connection | None = None,
    ) -> None:
        """Mark rows of a batch (see the ``status`` column)."""
        texts = {key_text(k) for k in keys}
        if not texts:
            return
        key = self._key()
        with self._lock, self._begin("journalling row states") as conn:
            row = self._row(conn, batch_id)
            self._check(conn, row, key)
            rows = [
                r._replace(status=status) if key_text(r.key) in texts else r
                for r in self._load_rows(conn, row)
            ]
            self._store_rows(conn, batch_id, rows, key)

    def _dataset_index(
        self, conn: sa.Connection, dataset: str, key: bytes, wanted: set[str] | None
    ) -> dict[str, list[tuple[int, str, BatchRow]]]:
        """Journalled rows of *dataset* by key text: (batch id, source, row).

        Only the keys in *wanted* (every key when None).  A batch is read, and
        its MAC checked, once per process and again only when its MAC changes;
        for one-integer keys, a batch whose key range holds none of the wanted
        keys is not read at all, so a resume that meets rows already at home
        reads the few batches that can hold them, not the journal's history.
        """
        b = batches.c
        listed = conn.execute(sa.select(b.id, b.mac, b.lo, b.hi).where(b.dataset == dataset)).all()
        ints = int_keys(wanted)
        out: dict[str, list[tuple[int, str, BatchRow]]] = {}
        for batch_id, mac, lo, hi in listed:
            if ints is not None and not range_holds(ints, lo, hi):
                continue
            cached = self._index.get(batch_id)
            if cached is None or cached[0] != mac:
                row = self._row(conn, batch_id)
                self._check(conn, row, key)
                rows = {key_text(r.key): r for r in self._load_rows(conn, row)}
                cached = (row.mac, row.source, rows)
                self._index[batch_id] = cached
            _, source, by_text = cached
            texts = by_text.keys() if wanted is None else wanted & by_text.keys()
            for text in texts:
                out.setdefault(text, []).append((batch_id, source, by_text[text]))
        return out

    def copies(
        self, dataset: str, target: str, keys: Iterable[Sequence[Any]]
    ) -> dict[str, list[Copy]]:
        """Every journalled copy of these keys of *dataset* to *target*, by key text.

        Tells domicile's own copy at home (and from which source it came)
        from content domicile never wrote there.  Each batch relied upon has
        its MAC checked: a forged journal record cannot make a foreign row at
        home look like domicile's own.
        """
        texts = {key_text(k) for k in keys}
        out: dict[str, list[Copy]] = {}
        if not texts:
            return out
        key = self._key()
        with self._connect("reading the journal") as conn:
            index = self._dataset_index(conn, dataset, key, texts)
        for text in texts:
            for batch_id, source, r in index.get(text, []):
                if target in r.targets:
                    out.setdefault(text, []).append(Copy(batch_id, source, r.digest, r.home_digest))
        return out

    def blob_copied(self, dataset: str, object_key: str, home: str, sha256: str) -> bool:
        """True when a journalled row of *dataset* says domicile copied exactly these bytes
        of *object_key* to *home* (MACs checked)."""
        key = self._key()
        with self._connect("reading the journal") as conn:
            index = self._dataset_index(conn, dataset, key, None)
        for entries in index.values():
            for _, _, r in entries:
                b = r.blob
                if b is not None and (b.get("key"), b.get("home"), b.get("sha256")) == (
                    object_key,
                    home,
                    sha256,
                ):
                    return True
        return False

    def check_batches(self, batch_ids: Iterable[int]) -> None:
        """Check the MAC of each batch (:class:`JournalTampered` on the first that fails)."""
        key = self._key()
        with self._connect("reading the journal") as conn:
            for batch_id in sorted(set(batch_ids)):
                self._check(conn, self._row(conn, batch_id), key)

    def copied_before(
        self, dataset: str, target: str, key: Sequence[Any], digest: str, source: str
    ) -> bool:
        """True when a batch from *source* copied exactly this content of *key* to *target*."""
        found = self.copies(dataset, target, [key]).get(key_text(key), [])
        return any(c.source == source and digest in (c.digest, c.home_digest) for c in found)

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
        key = self._key()
        with self._lock, self._begin("journalling a batch state") as conn:
            current = self._row(conn, batch_id)
            fp = self._check(conn, current, key)
            counts_text: str | None = current.counts
            if new_state not in ALLOWED[current.state]:
                raise IllegalTransition(
                    f"batch {batch_id}: {current.state} -> {new_state} is not allowed",
                    hint="this is a bug in domicile; the journal was left unchanged",
                )
            values: dict[str, Any] = {
                "state": new_state,
                "updated_at": now(),
                "error": error,
                "failed_in": failed_in,
            }
            if digest is not None:
                values["digest"] = digest
            if counts is not None:
                merged = json.loads(counts_text) if counts_text else {}
                merged.update(counts)
                values["counts"] = json.dumps(merged)
            # the rows do not change: the new MAC is over the new fields and the
            # fingerprint just checked, written in the same statement
            fields = {f: getattr(current, f) for f in BATCH_FIELDS}
            fields.update({f: v for f, v in values.items() if f in fields})
            values["mac"] = batch_mac(key, SimpleNamespace(**fields), fp)
            conn.execute(batches.update().where(batches.c.id == batch_id).values(**values))
        hooks.point(new_state)

    def mark(self, event: str) -> None:
        """A named point between steps (``dataset-done``) for crash tests."""
        hooks.point(event)

    # -- plumbing ---------------------------------------------------------------

    def _row(self, conn: sa.Connection, batch_id: int) -> Any:
        return conn.execute(sa.select(batches).where(batches.c.id == batch_id)).one()

    def _key(self) -> bytes:
        if self._mac_key is None:
            raise ConfigError(
                "the journal was opened without the deployment key",
                hint="this is a bug in domicile: a run opens the journal with its key",
            )
        return self._mac_key

    def _connect(self, doing: str) -> Any:
        return state_connection(self.engine, doing, begin=False)

    @contextmanager
    def _begin(self, doing: str) -> Iterator[sa.Connection]:
        with state_connection(self.engine, doing, begin=True) as conn:
            if self._fence is not None:  # a worker's attempt at a part: still its own?
                self._fence.check(conn)
            yield conn
