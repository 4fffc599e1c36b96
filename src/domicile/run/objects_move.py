"""Object datasets (``objects: "avatars/{owner}/*"``): the same protocol, for files.

A batch is a run of keys (in key order) of one source object store.  Each
object is journalled with its version before it is copied (``copying``);
streamed to the home object store under the same key, hashing the bytes
(``copied``, with the SHA-256 journalled); read back at home and compared
(``verified``); and deleted at the source only if its version is still the
one copied (``deleting`` → ``done``).  An object the application overwrote
after the copy stays and moves again in the next pass; one it deleted is
removed from home too (if home holds exactly the copy).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from domicile.blobs import coerce_owner, owner_pattern
from domicile.connectors.objects import ObjectStore
from domicile.errors import ConflictError, VerificationError
from domicile.model import Dataset
from domicile.placement import classify, home_store
from domicile.run.conflict import Decision, decide
from domicile.run.journal import BatchRecord, BatchRow, key_text
from domicile.scan_objects import unconditional_waivers

if TYPE_CHECKING:
    from domicile.run.context import RunContext

OBJECT_COPIES = 8
"""Objects of one batch worked on at once (hashed, copied, read back, deleted): each
is a few round trips to a bucket or a disk, independent of the others."""

T = TypeVar("T")
R = TypeVar("R")


def each(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``[fn(x) for x in items]`` on up to :data:`OBJECT_COPIES` threads, in order.

    The first failure (in the items' order) is raised once every started call
    has ended; journal writes stay with the caller, after the calls.
    """
    todo = list(items)
    if len(todo) <= 1:
        return [fn(x) for x in todo]
    with ThreadPoolExecutor(max_workers=min(OBJECT_COPIES, len(todo))) as pool:
        return list(pool.map(fn, todo))


class ObjectMover:
    """Moves one object dataset's violating objects out of one object store."""

    def __init__(self, ctx: RunContext, ds: Dataset, source: ObjectStore):
        assert ds.objects is not None
        self.ctx = ctx
        self.ds = ds
        self.source = source
        self.glob, self.rx = owner_pattern(ds.objects)
        self.id_col = ctx.fleet.subject_id_column()
        self.flags = unconditional_waivers(ctx.fleet, ds)

    def _store(self, name: str) -> ObjectStore:
        return self.ctx.fleet.objects[name]

    def moving(self, after: str | None) -> list[BatchRow]:
        """Every violating object of the scope after key *after*, in key order."""
        m = self.ctx.map
        found: list[tuple[str, Any, str, int]] = []
        for info in self.source.list(pattern=self.glob):
            match = self.rx.fullmatch(info.key)
            if match and (after is None or info.key > after):
                owner = coerce_owner(match.group("owner"), self.id_col)
                found.append((info.key, owner, info.version, info.size))
        self.ctx.directory.resolve(o for _, o, _, _ in found)
        model = m.stores[self.source.name]
        rows = []
        for key, owner, version, size in sorted(found):
            country = self.ctx.directory.country(owner)
            verdict = classify(m, model, self.ds, [country], self.flags, self.ctx.today)
            scope = [j for j in verdict.jurisdictions if j in self.ctx.scope]
            if verdict.status != "violating" or not scope:
                continue
            target = home_store(m, m.jurisdictions[scope[0]], self.ds)
            blob = {"store": self.source.name, "key": key, "version": version, "size": size}
            rows.append(BatchRow((key,), version, (target,), None, None, blob))
        return rows

    def copy(self, batch: BatchRecord) -> None:
        """Journal each object's SHA-256, stream it home, journal what arrived; ``copied``.

        The SHA-256 is journalled *before* the bytes go home: it is what the
        conflict policy knows domicile's own copies by, so a copy killed before
        the journal write that follows it is still domicile's own on the resume
        (refreshed, or removed if the application deleted the object meanwhile)
        and never taken for the application's.
        """
        journal = self.ctx.journal
        rows = [r for r in journal.rows(batch.id) if r.status is None]
        found = each(self._plan, rows)
        planned = [p for p in found if p is not None]
        gone = [r for r, p in zip(rows, found, strict=True) if p is None]
        if gone:
            self._remove_home_copies(gone)
            journal.set_row_status(batch.id, [r.key for r in gone], "vanished")
        journal.update_rows(batch.id, planned)
        updated = each(lambda r: self._copy_one(batch, r), planned)
        journal.update_rows(batch.id, updated)
        journal.transition(batch.id, "copied", counts={"copied": len(updated)})
        self.ctx.emit("batch.copied", batch, rows=[r.digest for r in updated], count=len(updated))

    def _plan(self, r: BatchRow) -> BatchRow | None:
        """The row with its object's SHA-256 at the source; None if the object is gone."""
        assert r.blob is not None
        if self.source.stat(r.key[0]) is None:
            return None  # deleted by the application since the batch was formed
        sha = self.source.sha256(r.key[0])
        # what an earlier, killed attempt may have left at home stays known as ours
        before = r.blob.get("sha256")
        earlier = before if before and before != sha else None
        return BatchRow(r.key, sha, r.targets, None, earlier, dict(r.blob, sha256=sha))

    def _copy_one(self, batch: BatchRecord, r: BatchRow) -> BatchRow:
        """Copy one planned object home (or keep what home holds); the row as copied."""
        assert r.blob is not None
        journal = self.ctx.journal
        home = self._store(r.targets[0])
        key = r.key[0]
        if home.stat(key) is not None:
            at_home = home.sha256(key)
            copies = journal.copies(self.ds.name, home.name, [r.key]).get(key_text(r.key), [])
            decision = decide(
                at_home, self.source.sha256(key), copies, self.source.name,
                self.ctx.map.on_conflict,
            )  # fmt: skip
            if decision in (Decision.CONFLICT, Decision.CONFLICT_OTHER_SOURCE):
                raise ConflictError(
                    f"object {key} is already at {home.name} with different content"
                    + (
                        ", copied there from another source"
                        if decision is Decision.CONFLICT_OTHER_SOURCE
                        else ""
                    ),
                    where=f"batch {batch.id} ({self.ds.name} from {self.source.name})",
                    hint="compare both; set on_conflict: keep-home or overwrite, then resume"
                    if decision is Decision.CONFLICT
                    else "two sources hold different objects under one key: give them "
                    "different homes or keys",
                )
            if decision is Decision.KEEP_HOME:
                blob = dict(r.blob, sha256=at_home, kept_home=True)
                return BatchRow(r.key, at_home, r.targets, None, None, blob)
        result = home.copy_from(self.source, key, key)
        self.ctx.progress("bytes", self.ds.name, result.size)
        blob = dict(r.blob, sha256=result.sha256, version=result.source_version)
        return BatchRow(r.key, result.sha256, r.targets, None, None, blob)

    def _remove_home_copies(self, rows: list[BatchRow]) -> None:
        """Remove each row's object at home if home holds exactly what was journalled."""
        for r in rows:
            home = self._store(r.targets[0])
            info = home.stat(r.key[0])
            if info is not None and home.sha256(r.key[0]) in (r.digest, r.home_digest):
                home.delete_if_unchanged(r.key[0], info.version)

    def verify(self, batch: BatchRecord) -> None:
        """Read each object back at home and compare SHA-256s; ``verified``."""
        rows = [r for r in self.ctx.journal.rows(batch.id) if r.status is None]

        def matches(r: BatchRow) -> bool:
            home = self._store(r.targets[0])
            return home.stat(r.key[0]) is not None and home.sha256(r.key[0]) == r.digest

        for r, ok in zip(rows, each(matches, rows), strict=True):
            if not ok:
                raise VerificationError(
                    f"object {r.key[0]} at {self._store(r.targets[0]).name} does not match "
                    "what was copied",
                    where=f"batch {batch.id}",
                    hint="nothing was deleted; resume the run to copy it again",
                )
        self.ctx.journal.transition(batch.id, "verified")
        self.ctx.emit("batch.verified", batch, count=len(rows))

    def delete(self, batch: BatchRecord) -> int:
        """Delete each source object whose version is still the one copied; ``done``.

        Objects the application deleted after the copy are journalled
        (``vanished``) *before* ``deleting``: a resume then tells them from
        domicile's own deletes, and their home copies are removed rather than
        kept (a deleted object never comes back).
        """
        journal = self.ctx.journal
        resumed = batch.state == "deleting"
        if not resumed:
            gone = [r for r in journal.rows(batch.id) if r.status is None and not self._exists(r)]
            journal.set_row_status(batch.id, [r.key for r in gone], "vanished")
            journal.transition(batch.id, "deleting")
        all_rows = journal.rows(batch.id)
        rows = [r for r in all_rows if r.status is None]
        deleted, changed = 0, []
        vanished = [r for r in all_rows if r.status == "vanished"]

        def outcome(r: BatchRow) -> str:
            assert r.blob is not None
            key = r.key[0]
            if self.source.delete_if_unchanged(key, r.blob["version"]):
                return "deleted"
            if self.source.stat(key) is None:
                # domicile's own delete before the crash, or the application's just now
                return "deleted" if resumed else "vanished"
            return "changed"  # overwritten after the copy: the next pass moves it

        for r, what in zip(rows, each(outcome, rows), strict=True):
            if what == "deleted":
                deleted += 1
            elif what == "vanished":
                vanished.append(r)
            else:
                changed.append(r)
        self._remove_home_copies(vanished)
        journal.set_row_status(batch.id, [r.key for r in vanished], "vanished")
        journal.set_row_status(batch.id, [r.key for r in changed], "changed")
        counts = {"deleted": deleted, "changed": len(changed), "vanished": len(vanished)}
        journal.transition(batch.id, "done", counts=counts)
        self.ctx.emit(
            "batch.deleted", batch, count=deleted, changed=len(changed), vanished=len(vanished)
        )
        return deleted

    def _exists(self, r: BatchRow) -> bool:
        return self.source.stat(r.key[0]) is not None

    # by id, for the executor's retries
    def copy_batch(self, batch_id: int, values: Any | None = None) -> None:
        """:meth:`copy` for the batch as the journal holds it now."""
        self.copy(self.ctx.journal.checked_batch(batch_id))

    def verify_batch(self, batch_id: int) -> None:
        """:meth:`verify` for the batch as the journal holds it now."""
        self.verify(self.ctx.journal.checked_batch(batch_id))

    def delete_batch(self, batch_id: int) -> int:
        """:meth:`delete` for the batch as the journal holds it now."""
        return self.delete(self.ctx.journal.checked_batch(batch_id, fresh=True))
