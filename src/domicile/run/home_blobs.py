"""Objects abroad that rows which do not move name: moved on their own, by the same protocol.

A blob moves with its row (:mod:`domicile.run.blob_copy`).  A row that is
already home — or anywhere else its rule allows — does not move, so an object
it names in a store its rule forbids (a new upload that still went to the old
bucket) would stay abroad for ever: the census counts it violating and the run
could never end ``done``.  This payload lists, in every SQL store, the rows
that do not move whose blob column names such an object, and moves the
objects through the protocol (:mod:`domicile.run.protocol`):

- a batch is a run of object keys (in key order) of one source object store,
  journalled with each object's version, its home and the rows naming it
  (``copying``), before anything is written;
- **copy**: each object is streamed to the home object store of its rows'
  jurisdiction under the same key, hashed as it passes, and the hashes are
  journalled; then a column holding the object's URL is rewritten at the
  row's store to the home copy's URL — only where it still holds the old one
  (``copied``);
- **verify**: each object at home is read back and its SHA-256 compared
  (``verified``);
- **compare-and-delete**: the source object goes only if its version is still
  the one copied, its home copy is still there, and no other row still names
  it (``deleting`` → ``done``).

The batches are journalled under the dataset's name with the source *object*
store as their source: a SQL dataset's row batches always have a SQL source,
so the two never mix.  The rows naming an object are read when the pass
begins, before any row moves: an object a moving row shares with a row at
home is then already home, and named there, when the moving row's batch
deletes it at the source.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from domicile.blobs import BlobLocator, is_url
from domicile.connectors.identity import MARKER_PREFIX
from domicile.connectors.objects import ObjectInfo, ObjectStore, find_store
from domicile.model import Dataset
from domicile.placement import Verdict, classify, home_store, targets
from domicile.run.blob_copy import BlobMover
from domicile.run.blob_refs import named_keys
from domicile.run.journal import BatchRecord, BatchRow, key_text
from domicile.run.reading import RowReader
from domicile.run.rows import key_columns, key_in, normalize_key
from domicile.scan import matched_waivers, owner_countries

if TYPE_CHECKING:
    from domicile.run.context import RunContext

PAGE = 5000  # rows per page when reading blob columns
NOT_DONE = ("copying", "copied", "verified", "deleting", "failed")


class HomeBlobMover:
    """Moves objects of one source object store that rows staying where they are name."""

    def __init__(self, ctx: RunContext, ds: Dataset, source: ObjectStore):
        assert ds.blobs is not None
        self.ctx = ctx
        self.ds = ds
        self.source = source
        self.column = ds.blobs.column
        self.blobs = BlobMover(ctx, ds)

    # -- steps by batch id (the journal's current state is read each time) -----------

    def copy_batch(self, batch_id: int, values: Any | None = None) -> None:
        """:meth:`copy` for the batch as the journal holds it now."""
        self.copy(self.ctx.journal.checked_batch(batch_id))

    def verify_batch(self, batch_id: int) -> None:
        """:meth:`verify` for the batch as the journal holds it now."""
        self.verify(self.ctx.journal.checked_batch(batch_id))

    def delete_batch(self, batch_id: int) -> int:
        """:meth:`delete` for the batch as the journal holds it now."""
        return self.delete(self.ctx.journal.checked_batch(batch_id, fresh=True))

    # -- copy ------------------------------------------------------------------

    def copy(self, batch: BatchRecord) -> None:
        """Journal each object's SHA-256, stream it home, rewrite URLs naming it; ``copied``.

        The SHA-256 is journalled before the bytes go (:meth:`BlobMover.planned`),
        so a copy a kill interrupts is still domicile's own on the resume.  Run
        again on a resume: an object already home with the same bytes is not
        copied again, and a URL already rewritten no longer matches.
        """
        journal = self.ctx.journal
        rows = [r for r in journal.rows(batch.id) if r.status is None]
        planned, gone = [], []
        for r in rows:
            assert r.blob is not None
            blob = self.blobs.planned(r.blob, r.targets[0])
            if blob is None:  # deleted by the application since the batch was formed
                gone.append(r.key)
            else:
                planned.append(r._replace(blob=blob))
        journal.set_row_status(batch.id, gone, "vanished")
        journal.update_rows(batch.id, planned)
        updated: list[BatchRow] = []
        for r in planned:
            assert r.blob is not None
            blob = self.blobs.copy_to(r.blob, r.targets[0])
            updated.append(BatchRow(r.key, blob["sha256"], r.targets, None, None, blob))
        # the hashes are journalled before any row is made to name the copies
        journal.update_rows(batch.id, updated)
        rewritten = self._rewrite_urls(updated)
        journal.transition(
            batch.id, "copied", counts={"copied": len(updated), "urls_rewritten": rewritten}
        )
        self.ctx.emit("batch.copied", batch, rows=[r.digest for r in updated], count=len(updated))

    def _rewrite_urls(self, rows: list[BatchRow]) -> int:
        """Point each URL naming a copied object at its home copy; returns rows rewritten.

        One transaction per SQL store.  A row is rewritten only while its
        column still holds the URL read when the batch was formed: a value
        the application changed since is left as the application wrote it.
        """
        by_store: dict[str, list[tuple[list[Any], str, str]]] = {}
        for r in rows:
            assert r.blob is not None
            new = self.ctx.fleet.objects[r.targets[0]].url_for(r.blob["key"])
            for store, key, url, old in r.blob["names"]:
                if url and old != new:
                    by_store.setdefault(store, []).append((key, old, new))
        return self._set_urls(by_store, f"pointing {self.ds.name}.{self.column} home")

    def _set_urls(self, by_store: dict[str, list[tuple[list[Any], str, str]]], doing: str) -> int:
        """Set each row's column from one URL to another (store -> [(key, from, to)]).

        A row is changed only while its column still holds the first URL.
        Returns how many rows were changed.
        """
        count = 0
        for store, changes in sorted(by_store.items()):
            loc = self.ctx.fleet.location(self.ds.name, store)
            if loc is None:
                continue  # the table is gone: there is no row left to point anywhere
            column = loc.table.c[self.column]
            with loc.store.begin_write(doing) as conn:
                for key, old, new in changes:
                    k = normalize_key(loc.table, loc.key, key)
                    stmt = (
                        loc.table.update()
                        .where(key_in(loc.table, loc.key, [k]), column == old)
                        .values({self.column: new})
                    )
                    count += conn.execute(stmt).rowcount
        return count

    # -- verify ----------------------------------------------------------------

    def verify(self, batch: BatchRecord) -> None:
        """Read each object back at home and compare SHA-256s; ``verified``."""
        rows = [r for r in self.ctx.journal.rows(batch.id) if r.status is None]
        for r in rows:
            assert r.blob is not None
            self.blobs.verify(r.blob)
        self.ctx.journal.transition(batch.id, "verified")
        self.ctx.emit("batch.verified", batch, count=len(rows))

    # -- compare-and-delete ---------------------------------------------------------

    def delete(self, batch: BatchRecord) -> int:
        """Delete each source object that is unchanged and no other row names; ``done``.

        Every SQL store is asked which objects a row still names (by URL, or by
        bare key unless it is a row of this batch, whose key finds the home
        copy): those stay, counted ``blobs_shared``.  An object the
        application overwrote after the copy is copied again first (see
        :meth:`BlobMover.delete_source`); one whose home copy went missing
        stays (``blobs_home_lost``).  A resume deletes again: an object
        domicile already deleted reads as gone.
        """
        journal = self.ctx.journal
        if batch.state != "deleting":
            journal.transition(batch.id, "deleting")
        rows = [r for r in journal.rows(batch.id) if r.status is None]
        moving = {
            (store, self.ds.name, key_text(key))
            for r in rows
            if r.blob is not None
            for store, key, _url, _old in r.blob["names"]
        }
        outcomes = self.blobs.delete_sources(
            [r.blob for r in rows if r.blob is not None], sql_stores=None, moving=moving
        )
        for status in ("shared", "changed", "home-lost"):
            keys = [r.key for r, o in zip(rows, outcomes, strict=True) if o == status]
            journal.set_row_status(batch.id, keys, status)
        deleted = outcomes.count("deleted") + outcomes.count("gone")
        counts = {
            "deleted": deleted,
            "changed": outcomes.count("changed"),
            "blobs_shared": outcomes.count("shared"),
            "blobs_home_lost": outcomes.count("home-lost"),
        }
        journal.transition(batch.id, "done", counts=counts)
        self.ctx.emit("batch.deleted", batch, count=deleted, changed=counts["changed"], vanished=0)
        return deleted

    # -- abandon ---------------------------------------------------------------------

    def undo(self, batch: BatchRecord) -> int:
        """Put this unfinished batch back where it started, wherever that loses nothing.

        For a run that is abandoned.  An object still at its source (with any
        version) gets its rows back: each URL rewritten to the home copy is
        pointed at the source again (only where it still holds the home URL),
        so that the census counts the object abroad and a new run moves it —
        a rewritten URL left behind would hide an object abroad that no row
        names.  Then the home copy is removed if home holds exactly what
        domicile copied and no other row names it.  An object gone from its
        source keeps its home copy and rewritten URLs: that copy is the one
        left.  Returns how many objects were put back.
        """
        rows = [r for r in self.ctx.journal.rows(batch.id) if r.status is None]
        back = [
            r for r in rows if r.blob is not None and self.source.stat(r.blob["key"]) is not None
        ]
        by_store: dict[str, list[tuple[list[Any], str, str]]] = {}
        for r in back:
            assert r.blob is not None
            home = self.ctx.fleet.objects[r.targets[0]].url_for(r.blob["key"])
            for store, key, url, old in r.blob["names"]:
                if url and old != home:
                    by_store.setdefault(store, []).append((key, home, old))
        self._set_urls(by_store, f"pointing {self.ds.name}.{self.column} back abroad")
        moving = {
            (store, self.ds.name, key_text(key))
            for r in back
            if r.blob is not None
            for store, key, _url, _old in r.blob["names"]
        }
        for home_name in sorted({r.targets[0] for r in back}):
            keys = [r.blob["key"] for r in back if r.blob is not None and r.targets[0] == home_name]
            home_objects = self.ctx.fleet.objects[home_name]
            named = named_keys(self.ctx, home_objects, keys, sql_stores=None, moving=moving)
            for r in back:
                if r.blob is not None and r.targets[0] == home_name and r.blob["key"] not in named:
                    self.blobs.remove_home_copy(dict(r.blob, home=home_name))
        return len(back)


class _StayingRows(RowReader):
    """Reads one SQL location's rows that do not move, with the objects abroad they name."""

    keeps_stored_form = False  # it reads keys and blob columns only, from the typed table

    def blobs_abroad(
        self,
        locator: BlobLocator,
        sources: set[str],
        skip: set[tuple[str, str]],
        found: dict[tuple[str, str], dict[str, Any]],
    ) -> None:
        """Add to *found* ((store, key) -> blob) the violating objects in *sources* rows here name.

        Rows that move themselves are left out (their objects move with
        them), and so are objects in *skip* (unfinished batches have them).
        """
        assert self.ds.blobs is not None
        table = self.source.table
        width = 1 + len(self.key)
        labels = [c.name for c in self.annotated.columns]
        column = table.c[self.ds.blobs.column]
        q = (
            sa.select(column, *key_columns(table, self.key), *self.annotated.columns)
            .select_from(self.annotated.from_)
            .where(column.is_not(None))
        )
        with self.source.store.connect(f"reading {self.ds.name}.{self.ds.blobs.column}") as conn:
            result = conn.execution_options(yield_per=PAGE).execute(q)
            for page in result.partitions(PAGE):
                # annotations are split from the row by position, never by name
                notes = [dict(zip(labels, r[width:], strict=True)) for r in page]
                self.ctx.directory.resolve(
                    n[f"_dm_u{k}"] for n in notes for k in range(self.annotated.owners)
                )
                for r, note in zip(page, notes, strict=True):
                    if self._targets([note]):
                        continue  # the row moves, and its object with it (Mover)
                    placed = self._locate(locator, r[0], sources)
                    if placed is None or placed[:2] in skip:
                        continue
                    home = self._object_home(placed[0], note)
                    if home is not None:
                        # the key as the journal's JSON holds it (dates become text;
                        # normalize_key reads them back for the rewrite)
                        key = json.loads(key_text(r[1:width]))
                        self._add(found, placed, home, key, str(r[0]))

    def _locate(
        self, locator: BlobLocator, value: Any, sources: set[str]
    ) -> tuple[str, str, ObjectInfo] | None:
        """(store, key, info) of the object *value* names when it sits in one of *sources*."""
        if value is None or value == "":
            return None
        if is_url(str(value)):
            # a URL names its store: one outside *sources* is not listed for nothing
            owner = find_store(str(value), self.ctx.fleet.objects.values())
            if owner is None or owner[0].name not in sources:
                return None
        where = locator.locate(value)
        if where is None or where[0].name not in sources or where[1].startswith(MARKER_PREFIX):
            return None  # domicile's own identity markers are never user objects
        return where[0].name, where[1], where[2]

    def _object_home(self, store: str, note: dict[str, Any]) -> str | None:
        """The home object store of an object in *store* named by this row; None: it stays."""
        m = self.ctx.map
        countries = owner_countries(note, self.annotated.owners, self.ctx.directory)
        flags = matched_waivers(note, self.annotated.waivers)
        verdict = classify(m, m.stores[store], self.ds, countries, flags, self.ctx.today)
        return _home_of(self.ctx, self.ds, self.blobs, verdict)

    def _add(
        self,
        found: dict[tuple[str, str], dict[str, Any]],
        placed: tuple[str, str, ObjectInfo],
        home: str,
        key: list[Any],
        value: str,
    ) -> None:
        """Record that this row (*key*, column *value*) names *placed*, which goes to *home*."""
        store, obj_key, info = placed
        entry = found.setdefault(
            (store, obj_key),
            {"store": store, "key": obj_key, "version": info.version, "size": info.size,
             "url": False, "target": home, "names": []},
        )  # fmt: skip
        if entry["target"] != home:
            entry["target"] = None  # rows of two homes name it: it cannot follow both
        entry["url"] = entry["url"] or is_url(value)
        entry["names"].append([self.source.store.name, key, is_url(value), value])


def _home_of(ctx: RunContext, ds: Dataset, blobs: BlobMover | None, verdict: Verdict) -> str | None:
    """The one home object store a violating blob goes to, as its row would; None: it stays.

    Homes are chosen as for a moving row (the SQL home its rule picks, then
    that jurisdiction's object store); an object whose owners' homes differ
    (``multi_owner: each``) cannot follow both and stays.
    """
    if verdict.status != "violating" or not set(verdict.jurisdictions) & set(ctx.scope):
        return None
    m = ctx.map
    if ds.multi_owner == "each":
        juris = [j for j in verdict.jurisdictions if j in ctx.scope]
        sql = [home_store(m, m.jurisdictions[j], ds) for j in juris]
    else:
        sql = targets(m, ds, verdict)
    assert blobs is not None
    homes = {blobs.home_store(t) for t in sql}
    return homes.pop() if len(homes) == 1 else None


def settled_objects(ctx: RunContext, ds: Dataset) -> set[tuple[str, str]]:
    """(store, key) of objects this run need not list again for *ds*.

    Those in its unfinished batches (a resume's only): a row batch copied but
    not yet deleted has its moved rows at home naming their objects abroad,
    and finishing them is that batch's work.  And those an earlier pass found
    another row still names (``shared``): they stay while that row does, so
    copying them again in every pass would only read their bytes again.
    """
    out: set[tuple[str, str]] = set()
    for b in ctx.journal.batches(ctx.run_id, ds.name):
        unfinished = b.state in NOT_DONE
        if not unfinished and b.source not in ctx.fleet.objects:
            continue
        for r in ctx.journal.rows(b.id):
            if r.blob is not None and (unfinished or r.status == "shared"):
                out.add((r.blob["store"], r.blob["key"]))
    return out


def staying_blobs(ctx: RunContext, ds: Dataset, sources: set[str]) -> dict[str, list[BatchRow]]:
    """Per source object store, the violating objects there that rows which stay name.

    Every SQL location of *ds* is read once (owners and exceptions joined in
    its own engine, as the census does), and each object store a row's value
    leads to is listed once and held in memory, as the census holds it.
    Returns batch rows in key order: key ``(object key,)``, digest the
    version, target the home object store.
    """
    assert ds.blobs is not None
    locator = BlobLocator(ctx.fleet, ds, listing=True)
    skip = settled_objects(ctx, ds)
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for loc in ctx.fleet.locations(ds.name):
        _StayingRows(ctx, ds, loc).blobs_abroad(locator, sources, skip, found)
    out: dict[str, list[BatchRow]] = {}
    for (store, key), entry in sorted(found.items()):
        home = entry.pop("target")
        if home is None:
            continue
        row = BatchRow((key,), entry["version"], (home,), None, None, entry)
        out.setdefault(store, []).append(row)
    return out
