"""One dataset out of one source store, batch by batch: copy → verify → compare-and-delete.

Every step writes its state to the journal before the side effect that
follows it, so that a process killed anywhere resumes without losing or
duplicating a record:

- **copy**: the batch's rows and their content digests are journalled
  (``copying``), then upserted at each home in one transaction per home;
  the batch digest is journalled (``copied``).
- **verify**: the rows are read back at home and their digests compared
  (``verified``).  A mismatch stops the batch; nothing is deleted.
- **compare-and-delete**: in one source transaction holding the rows' locks,
  rows whose current digest still equals the copied one are deleted.  The
  rows that changed since the copy, and those the application deleted, are
  journalled (``deleting``) before the delete commits, so a resume knows
  which missing rows were domicile's own deletes.  Rows the application
  deleted are removed from home too (only if home still holds exactly what
  domicile copied), so a deleted record never comes back; so are the stale
  copies of rows that changed, unless rows at home reference them (then the
  row refreshes its copy when it moves again).  Copies left at home of rows
  that stay are swept once the application deletes the row at its source
  (:mod:`domicile.run.batch_sweep`).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from domicile.digest import batch_digest_hex, storage_value
from domicile.errors import (
    ConflictError,
    PermanentConnectorError,
    VerificationError,
)
from domicile.fleet import Location
from domicile.run import delete_marks
from domicile.run.batch_sweep import remove_own_copies
from domicile.run.conflict import Decision, decide
from domicile.run.engine_digests import TableDigests
from domicile.run.home_write import write_rows
from domicile.run.journal import BatchRecord, BatchRow, key_text
from domicile.run.pins import Child, cascading_children, pinned_by_children
from domicile.run.reading import RowReader
from domicile.run.references import copy_references
from domicile.run.rows import (
    delete_by_keys,
    digest_hex,
    normalize_keys,
    same_kinds,
    same_values,
    select_by_keys,
    shared_columns,
    storage_columns,
)

if TYPE_CHECKING:
    from domicile.model import Dataset
    from domicile.run.context import RunContext

ACTIVE = (None, "kept-home")  # row statuses that still move


def batch_digest(row_digests: Sequence[str]) -> str:
    """Fingerprint of a batch over its row digests (see :func:`domicile.digest.batch_digest`)."""
    return batch_digest_hex(bytes.fromhex(d) for d in row_digests)


class Mover(RowReader):
    """Moves one dataset's violating rows out of one source store: copy, verify, delete."""

    def __init__(self, ctx: RunContext, dataset: Dataset, source: Location):
        super().__init__(ctx, dataset, source)
        self._sent: dict[tuple[int, str], dict[tuple[Any, ...], dict[str, Any]]] = {}
        self._children: list[Child] | None = None  # cascading keys that refer to the table
        self._at_source: TableDigests | None = None
        self._at_home: dict[str, TableDigests] = {}

    # -- steps by batch id (the journal's current state is read each time) -----------

    def copy_batch(
        self, batch_id: int, values: dict[tuple[Any, ...], dict[str, Any]] | None
    ) -> None:
        """:meth:`copy` for the batch as the journal holds it now."""
        self.copy(self.ctx.journal.checked_batch(batch_id), values)

    def verify_batch(self, batch_id: int) -> None:
        """:meth:`verify` for the batch as the journal holds it now."""
        self.verify(self.ctx.journal.checked_batch(batch_id))

    def delete_batch(self, batch_id: int) -> int:
        """:meth:`delete` for the batch as the journal holds it now."""
        return self.delete(self.ctx.journal.checked_batch(batch_id, fresh=True))

    # -- copy ------------------------------------------------------------------

    def copy(
        self, batch: BatchRecord, values: dict[tuple[Any, ...], dict[str, Any]] | None
    ) -> None:
        """Upsert the batch's rows at each home; journal ``copied``.

        *values* are the rows as read when the batch was formed; on a resume
        they are read again, and rows that changed or vanished since the
        batch was journalled are dropped from it (and any copy of them that
        reached home is removed, if home still holds exactly that copy).
        """
        journal = self.ctx.journal
        rows = [r for r in journal.rows(batch.id) if r.status in ACTIVE]
        dropped = 0
        if values is None:
            values = self._reread(batch, rows)
            live = {r.key for r in rows if r.key in values}
            dropped = len(rows) - len(live)
            rows = [r for r in rows if r.key in live]
        counts = {"copied": 0, "already": 0, "refreshed": 0, "kept_home": 0, "deferred": 0}
        counts["dropped"] = dropped  # their copies may stay at home (batch_sweep)
        for target in sorted({t for r in rows for t in r.targets}):
            part = [r for r in rows if target in r.targets]
            result = self._copy_to(batch, target, part, values)
            for k, v in result.items():
                counts[k] = counts.get(k, 0) + v
        self.ctx.journal.transition(
            batch.id, "copied", digest=batch_digest([r.digest for r in rows]), counts=counts
        )
        self.ctx.emit(
            "batch.copied",
            batch,
            rows=[r.digest for r in rows],
            count=len(rows),
        )

    def _reread(
        self, batch: BatchRecord, rows: list[BatchRow]
    ) -> dict[tuple[Any, ...], dict[str, Any]]:
        table = self.source.table
        keys = normalize_keys(table, self.key, [r.key for r in rows])
        with self.source.store.connect(f"re-reading {self.ds.name}") as conn:
            current = select_by_keys(conn, table, self.key, keys)
        keep: dict[tuple[Any, ...], dict[str, Any]] = {}
        dropped: list[BatchRow] = []
        for r, k in zip(rows, keys, strict=True):
            now = current.get(k)
            if now is not None and digest_hex(now, table.columns) == r.digest:
                keep[r.key] = now
            else:
                dropped.append(r)
        if dropped:
            remove_own_copies(self, dropped)
            self.ctx.journal.set_row_status(batch.id, [r.key for r in dropped], "dropped")
        return keep

    def _copy_to(
        self,
        batch: BatchRecord,
        target: str,
        rows: list[BatchRow],
        values: dict[tuple[Any, ...], dict[str, Any]],
    ) -> dict[str, int]:
        home = self.home(target)
        if self.blobs is not None:
            values = self._copy_blobs(batch, target, rows, values)
        else:
            # what was sent (rows whose digest is the journalled one: read with it
            # or re-read and checked against it), for the verify that follows
            self._sent[(batch.id, target)] = values
        try:
            return self._upsert(batch, home, rows, values, per_row=False)
        except sa.exc.IntegrityError:
            # A parent the rows point to is not at home yet (the application
            # added it after the parent's batch): copy row by row, defer the rest.
            return self._upsert(batch, home, rows, values, per_row=True)
        except PermanentConnectorError as exc:
            if isinstance(exc.__cause__, sa.exc.IntegrityError):
                return self._upsert(batch, home, rows, values, per_row=True)
            raise

    def _copy_blobs(
        self,
        batch: BatchRecord,
        target: str,
        rows: list[BatchRow],
        values: dict[tuple[Any, ...], dict[str, Any]],
    ) -> dict[tuple[Any, ...], dict[str, Any]]:
        """Journal the rows' objects' hashes, stream them home, journal what arrived; rewrite
        URL columns.  Each hash is journalled before the bytes go (see ``BlobMover.planned``):
        a copy a kill interrupts is still domicile's own on the resume."""
        assert self.blobs is not None
        out = dict(values)
        if all(r.blob is None for r in rows):
            return out
        home_name = self.blobs.home_store(target)
        planned = []
        for i, r in enumerate(rows):
            if r.blob is not None:
                # None: the object was deleted meanwhile; the row moves without it
                rows[i] = r._replace(blob=self.blobs.planned(r.blob, home_name))
                planned.append(rows[i])
        self.ctx.journal.update_rows(batch.id, planned)
        updated: list[BatchRow] = []
        for i, r in enumerate(rows):
            if r.blob is None:
                continue
            blob = self.blobs.copy_to(r.blob, home_name)
            rows[i] = r._replace(blob=blob)
            updated.append(rows[i])
            if blob["url"]:
                out[r.key] = dict(
                    values[r.key], **{self.blobs.column: self.blobs.home_value(blob, target)}
                )
        self.ctx.journal.update_rows(batch.id, updated)
        return out

    def _upsert(
        self,
        batch: BatchRecord,
        home: Location,
        rows: list[BatchRow],
        values: dict[tuple[Any, ...], dict[str, Any]],
        per_row: bool,
    ) -> dict[str, int]:
        table = home.table
        cols = shared_columns(self.source.table, table)
        names = [c.name for c in cols]
        convert = [(names.index(c.name), c.type) for c in storage_columns(cols)]
        counts = {"copied": 0, "already": 0, "refreshed": 0, "kept_home": 0, "deferred": 0}
        keys = normalize_keys(table, self.key, [r.key for r in rows])
        by_key = dict(zip(keys, rows, strict=True))
        inserts: list[tuple[Any, ...]] = []
        updates: list[tuple[Any, ...]] = []
        kept: list[BatchRow] = []
        conflicts: list[tuple[Any, ...]] = []
        others: list[tuple[Any, ...]] = []
        source_name = self.source.store.name

        def stored(r: BatchRow) -> tuple[Any, ...]:
            row = values[r.key]
            out = [row[n] for n in names]
            for i, type_ in convert:
                out[i] = storage_value(out[i], type_)
            return tuple(out)

        with home.store.begin_write(f"copying {self.ds.name} to {home.store.name}") as conn:
            existing = select_by_keys(conn, table, self.key, keys, for_update=True)
            if not existing:  # the common case: nothing of the batch at home yet
                inserts = [stored(r) for r in rows]
            else:
                copies = self.ctx.journal.copies(
                    self.ds.name, home.store.name, [by_key[k].key for k in existing if k in by_key]
                )
                for k, r in by_key.items():
                    at_home = digest_hex(existing[k], cols) if k in existing else None
                    decision = decide(
                        at_home,
                        r.digest_at_home,
                        copies.get(key_text(r.key), []),
                        source_name,
                        self.ctx.map.on_conflict,
                    )
                    if decision is Decision.INSERT:
                        inserts.append(stored(r))
                    elif decision is Decision.ALREADY:
                        counts["already"] += 1
                    elif decision in (Decision.REFRESH, Decision.OVERWRITE):
                        updates.append(stored(r))
                    elif decision is Decision.KEEP_HOME:
                        kept.append(r)
                    elif decision is Decision.CONFLICT_OTHER_SOURCE:
                        others.append(r.key)
                    else:
                        conflicts.append(r.key)
            if others:
                shown = ", ".join(str(list(k)) for k in others[:5])
                raise ConflictError(
                    f"{len(others)} {self.ds.name} records from {source_name} have the key of a "
                    f"different record that domicile copied to {home.store.name} from another "
                    f"source (keys {shown}{' ...' if len(others) > 5 else ''}); nothing was "
                    "overwritten or deleted",
                    where=f"batch {batch.id} ({self.ds.name} from {source_name})",
                    hint="two sources use one key for different records (per-shard ids): give "
                    "the dataset a key that is unique across sources (for example [shard, id]), "
                    "or move the sources to different homes",
                )
            if conflicts:
                shown = ", ".join(str(list(k)) for k in conflicts[:5])
                raise ConflictError(
                    f"{len(conflicts)} {self.ds.name} records already at home in "
                    f"{home.store.name} with different content (keys {shown}"
                    f"{' ...' if len(conflicts) > 5 else ''}); nothing was overwritten or deleted",
                    where=f"batch {batch.id} ({self.ds.name} from {self.source.store.name})",
                    hint="compare both versions; set on_conflict: keep-home or overwrite in "
                    "the map to decide, then resume the run",
                )
            all_rows = [values[r.key] for r in rows]
            copy_references(self.ctx, self.source, home, conn, all_rows, stored=self.stored)
            deferred = write_rows(conn, table, self.key, names, inserts, updates, per_row)
            counts["copied"] = len(inserts) - len(deferred)
            counts["refreshed"] = len(updates)
            counts["kept_home"] = len(kept)
            counts["deferred"] = len(deferred)
        if kept:
            self.ctx.journal.set_row_status(batch.id, [r.key for r in kept], "kept-home")
        if deferred:
            at = [names.index(k) for k in self.key]
            deferred_keys = {tuple(v[i] for i in at) for v in deferred}
            self.ctx.journal.set_row_status(
                batch.id, [r.key for k, r in by_key.items() if k in deferred_keys], "deferred"
            )
        return counts

    # -- verify ----------------------------------------------------------------

    def verify(self, batch: BatchRecord) -> None:
        """Read the rows back at each home and compare digests; journal ``verified``.

        A home row equal, value by value and type by type, to what this
        process just sent there from a table of the same column kinds has the
        digest of what was sent, which was checked against the journal when
        the row was read: no digest is computed for it.  Any other row (a
        resumed batch, another engine's types, a value that reads back in
        another form) is digested and compared with the journal.
        """
        rows = [r for r in self.ctx.journal.rows(batch.id) if r.status in ACTIVE]
        for target in sorted({t for r in rows for t in r.targets}):
            home = self.home(target)
            part = [r for r in rows if target in r.targets]
            keys = normalize_keys(home.table, self.key, [r.key for r in part])
            sent = self._sent.pop((batch.id, target), None)
            with home.store.connect(f"verifying {self.ds.name} at {target}") as conn:
                at_home = self._verified_digests(conn, target, home, keys, part, sent)
            bad = []
            for k, r in zip(keys, part, strict=True):
                got = at_home.get(k)
                if got is None:
                    bad.append((r.key, "missing"))
                elif r.status is None and got != r.digest_at_home:
                    bad.append((r.key, "different content"))
                elif r.status is None and self.blobs is not None and r.blob is not None:
                    self.blobs.verify(r.blob)
            if bad:
                detail = ", ".join(f"{list(k)} {why}" for k, why in bad[:5])
                raise VerificationError(
                    f"{len(bad)} {self.ds.name} records do not match at {target}: {detail}",
                    where=f"batch {batch.id}",
                    hint="nothing was deleted at the source; find what changed the home rows, "
                    "then resume the run (the batch is copied again)",
                )
        self.ctx.journal.transition(batch.id, "verified")
        self.ctx.emit("batch.verified", batch, count=len(rows))

    def _verified_digests(
        self,
        conn: sa.Connection,
        target: str,
        home: Location,
        keys: list[tuple[Any, ...]],
        part: list[BatchRow],
        sent: dict[tuple[Any, ...], dict[str, Any]] | None,
    ) -> dict[tuple[Any, ...], str]:
        """The home rows' digests by key: from the home engine where it computes them;
        else a row equal (value and type) to what this process just sent from a table
        of the same column kinds has the journalled digest without computing it."""
        digests = self._home_digests(target, home)
        if digests.in_sql or sent is None or not same_kinds(self.source.table, home.table):
            return digests.by_keys(conn, keys)
        found = select_by_keys(conn, home.table, self.key, keys)
        names = [c.name for c in digests.columns]
        out = {}
        for k, r in zip(keys, part, strict=True):
            now = found.get(k)
            if now is None:
                continue
            was = sent.get(r.key)
            same = was is not None and r.status is None and same_values(now, was, names)
            out[k] = r.digest_at_home if same else digest_hex(now, digests.columns)
        return out

    # -- compare-and-delete ---------------------------------------------------------

    def delete(self, batch: BatchRecord) -> int:
        """Compare-and-delete at the source; journal ``deleting`` then ``done``.

        In one source transaction holding the rows' locks, a row is deleted
        only if its current digest equals the copied one *and* its home copy,
        read again now (and locked until the source commits), still matches.
        A row whose home copy went missing or changed since the verify (a
        fail-over to a lagging replica, a restore, a mistake) stays and moves
        again.  A row the application changed since the copy stays too, and
        its now stale home copy is removed, so that deleting the row later
        where it lives cannot bring the old version back at home — unless
        children that moved home reference it there: then it stays, refreshed
        when the row moves again, or swept if the application deletes the row
        first (:func:`~domicile.run.batch_sweep.sweep_home_copies`).
        """
        journal = self.ctx.journal
        rows = journal.rows(batch.id)
        moving = [r for r in rows if r.status in ACTIVE]
        known_vanished = {r.key for r in rows if r.status == "vanished"}
        table = self.source.table
        keys = normalize_keys(table, self.key, [r.key for r in moving])
        resumed = batch.state == "deleting"
        mark = delete_marks.token(batch.run_id, batch.id)
        delete_marks.ensure(self.source.store)
        # a resumed delete whose transaction committed before the crash: the
        # rows missing now are domicile's own deletes (see delete_marks)
        committed = resumed and delete_marks.committed(self.source.store, mark)
        source_name = self.source.store.name
        with ExitStack() as stack:
            # Source and homes are locked in one global order (by store name),
            # so two workers moving in opposite directions cannot deadlock.
            conns: dict[str, sa.Connection] = {}
            for name in sorted({t for r in moving for t in r.targets} | {source_name}):
                store = self.source.store if name == source_name else self.ctx.fleet.sql[name]
                doing = (
                    f"deleting moved {self.ds.name}"
                    if name == source_name
                    else f"re-checking {self.ds.name} at {name}"
                )
                conns[name] = stack.enter_context(store.begin_write(doing))
            conn = conns.pop(source_name)
            # the rows' digests now, locked until the delete commits
            current = self._source_digests().by_keys(conn, keys, for_update=True)
            candidates, changed, vanished = [], [], []
            for k, r in zip(keys, moving, strict=True):
                now = current.get(k)
                if now is None:
                    vanished.append(r)
                elif now == r.digest:
                    candidates.append((k, r))
                else:
                    changed.append(r)
            held = self._home_still_holds(conns, [r for _, r in candidates])
            deletable = [k for k, r in candidates if r.key in held]
            # a cascading key would delete or rewrite rows that stay: pin their parents
            cascading = self._cascade_pins(conn, deletable)
            deletable = [k for k in deletable if k not in cascading]
            home_lost = [r for _, r in candidates if r.key not in held]
            # On a resume after a committed delete, rows missing now that were not
            # journalled as vanished were deleted by that transaction (the run
            # lease guarantees no other domicile process deleted them).
            ours = [r for r in vanished if committed and r.key not in known_vanished]
            vanished = [r for r in vanished if r not in ours]
            new_vanished = [r for r in vanished if r.key not in known_vanished]
            if new_vanished:
                journal.set_row_status(batch.id, [r.key for r in new_vanished], "vanished")
            if changed:
                journal.set_row_status(batch.id, [r.key for r in changed], "changed")
            if home_lost:
                journal.set_row_status(batch.id, [r.key for r in home_lost], "home-lost")
            if not resumed:
                journal.transition(batch.id, "deleting")
            refused = delete_by_keys(conn, self.source.table, self.key, deletable)
            if not committed:
                delete_marks.mark(conn, mark)
            # commit the source while the homes' locks are still held: the copies
            # cannot change between the re-check and the delete
            conn.commit()
        pinned = refused | cascading
        if pinned:
            journal.set_row_status(
                batch.id,
                [r.key for k, r in zip(keys, moving, strict=True) if k in pinned],
                "pinned",
            )
        all_vanished = [r for r in rows if r.status == "vanished"] + new_vanished
        all_changed = [r for r in rows if r.status == "changed"] + changed
        remove_own_copies(self, all_vanished + all_changed)
        deleted = len(deletable) - len(refused) + len(ours)
        counts = {
            "deleted": deleted,
            "pinned": len(pinned),
            "changed": len(all_changed),
            "vanished": len(all_vanished),
            "home_lost": len(home_lost) + sum(1 for r in rows if r.status == "home-lost"),
        }
        if self.blobs is not None:
            # the rows are gone from the source: now their objects, if unchanged and
            # if no row still there names them (a public video kept abroad may
            # name the same file; its object must stay beside it)
            gone_keys = {k for k in deletable if k not in pinned}
            gone = [r for k, r in zip(keys, moving, strict=True) if k in gone_keys] + ours
            outcomes = self.blobs.delete_sources(
                [r.blob for r in gone if r.blob is not None], sql_stores=[source_name]
            )
            counts["blobs_deleted"] = outcomes.count("deleted") + outcomes.count("gone")
            counts["blobs_changed"] = outcomes.count("changed")
            counts["blobs_home_lost"] = outcomes.count("home-lost")
            counts["blobs_shared"] = outcomes.count("shared")
        journal.transition(batch.id, "done", counts=counts)
        delete_marks.clear(self.source.store, mark)
        changed_keys = {v.key for v in changed}
        self.ctx.emit(
            "batch.deleted",
            batch,
            count=deleted,
            changed=len(changed),
            vanished=len(all_vanished),
            rows=[r.digest for r in moving if r.key not in changed_keys],
        )
        return deleted

    def undo(self, batch: BatchRecord) -> int:
        """Remove this unfinished batch's copies at home wherever that loses nothing.

        For a run that is abandoned: a copy is removed (if home still holds
        exactly it) unless its source row is gone by domicile's own committed
        delete.  Returns how many rows' copies were looked at for removal.
        """
        rows = [r for r in self.ctx.journal.rows(batch.id) if r.status in (*ACTIVE, "changed")]
        committed = batch.state == "deleting" and delete_marks.committed(
            self.source.store, delete_marks.token(batch.run_id, batch.id)
        )
        table = self.source.table
        keys = normalize_keys(table, self.key, [r.key for r in rows])
        with self.source.store.connect(f"reading {self.ds.name}") as conn:
            present = select_by_keys(conn, table, self.key, keys)
        undo = [r for k, r in zip(keys, rows, strict=True) if k in present or not committed]
        # rows the application deleted (seen at the delete step): their copies go too
        undo += [r for r in self.ctx.journal.rows(batch.id) if r.status == "vanished"]
        remove_own_copies(self, undo)
        return len(undo)

    def _home_still_holds(
        self, conns: dict[str, sa.Connection], rows: list[BatchRow]
    ) -> set[tuple[Any, ...]]:
        """Keys (as journalled) whose copy is still at every home, as verified.

        *conns* are the homes' transactions: each home row's digest is read
        (computed by the home engine where it can) with the row locked until
        after the source's delete commits, and compared with what was verified.
        """
        held = {r.key for r in rows}
        for target in sorted({t for r in rows for t in r.targets}):
            home = self.home(target)
            part = [r for r in rows if target in r.targets]
            keys = normalize_keys(home.table, self.key, [r.key for r in part])
            digests = self._home_digests(target, home)
            found = digests.by_keys(conns[target], keys, for_update=True)
            for k, r in zip(keys, part, strict=True):
                now = found.get(k)
                # kept-home (status set): home's own version, which only has to be there
                if now is None or (r.status is None and now != r.digest_at_home):
                    held.discard(r.key)
        return held

    def deletes_overlap(self) -> bool:
        """True when two batches of this pair may be compare-and-deleted at once.

        Their keys are disjoint, so their row locks cannot meet — as long as
        every store involved locks rows (a SQLite file has one write lock), no
        row of the table refers to another row of it (a delete's foreign-key
        check would lock rows of the other batch), and no objects are deleted
        with the rows (the check for a row still naming a shared object
        relies on one batch at a time).
        """
        if self.blobs is not None or not self.source.store.behaviour.locks_rows:
            return False
        table = self.typed.table
        if any(fk.column.table is table for fk in table.foreign_keys):
            return False
        return all(self.ctx.fleet.sql[t].behaviour.locks_rows for t in self.possible_homes())

    def _source_digests(self) -> TableDigests:
        if self._at_source is None:
            table = self.source.table
            self._at_source = TableDigests(self.source.store, table, self.key, list(table.columns))
        return self._at_source

    def _home_digests(self, target: str, home: Location) -> TableDigests:
        cached = self._at_home.get(target)
        if cached is None or cached.table is not home.table:
            cols = shared_columns(self.source.table, home.table)
            cached = TableDigests(home.store, home.table, self.key, cols)
            self._at_home[target] = cached
        return cached

    def _cascade_pins(
        self, conn: sa.Connection, keys: list[tuple[Any, ...]]
    ) -> set[tuple[Any, ...]]:
        """*keys* whose rows rows staying at the source reference by a cascading key."""
        if not keys:
            return set()
        if self._children is None:
            self._children = cascading_children(self.source.store, self.typed.table.name)
        if not self._children:
            return set()
        # the rows are locked already (the compare above): read their referred values
        rows = select_by_keys(conn, self.source.table, self.key, keys)
        return pinned_by_children(
            conn, self.source.store, self._children, self.typed.table, self.key, rows
        )
