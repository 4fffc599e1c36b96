"""The pass loop: copy and verify in copy order, then compare-and-delete in delete order.

Each (dataset, source) pair is walked batch by batch, part by part; each
batch is driven through the protocol by :func:`domicile.run.protocol.settle`,
never by this module.  The parts run on the run's executor: the parts of a
table (:mod:`domicile.run.parts`) and the object pairs — object datasets, and
objects abroad that rows which do not move name (rows already home), a
payload of their own copied first and deleted last
(:mod:`domicile.run.object_parts`).  With the local executor the object pairs
run on this process's threads; with a fenced one (Dask) each is a part a
worker claims.  A stop asked for by a signal is honoured between batches.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from domicile.connectors.objects import ObjectStore
from domicile.fleet import Location
from domicile.model import Dataset
from domicile.run import hooks
from domicile.run.batch import Mover
from domicile.run.batch_sweep import sweep_home_copies
from domicile.run.context import RunContext
from domicile.run.executors import PartFn, Place, Work
from domicile.run.journal import BatchRow
from domicile.run.object_parts import (
    HOME_BLOBS_COPY,
    HOME_BLOBS_DELETE,
    OBJECTS_COPY,
    OBJECTS_DELETE,
    STEPS,
    copy_home_blob_part,
    copy_home_blobs,
    delete_batches,
    delete_home_blob_part,
    delete_home_blobs,
    home_blob_batches,
    home_blob_sources,
    object_part,
)
from domicile.run.parts import PARTS_PER_WORKER, Part, journalled, parts_for
from domicile.run.pipeline import read_ahead
from domicile.run.protocol import BatchState, settle
from domicile.run.reading import Page

DELETE_OVERLAP = 2
"""Batches of one part deleted at once where that is safe (:meth:`Mover.deletes_overlap`):
one batch's statements run on the servers while this process works on the other's."""


def copy_part(ctx: RunContext, ds: Dataset, source: Location, part: Part) -> None:
    """Journal, copy and verify the moving rows of one part, batch after batch.

    A resume first finishes the copy of the batches this part journalled,
    then reads on after the last of them, up to the part's end.
    """
    mover = Mover(ctx, ds, source)
    journal = ctx.journal
    batches = journal.batches(ctx.run_id, ds.name, source.store.name)
    current = [b for b in batches if part.holds(b)]
    for b in current:  # a resume: finish the copy of what this part journalled
        ctx.stop.check()
        settle(journal, mover, b.id, ctx.retry, until=BatchState.VERIFIED)
    after = current[-1].hi if current else part.lo
    seq = current[-1].seq + 1 if current else part.first_seq

    reads = 0

    def read(start: tuple[Any, ...] | None) -> Page:
        nonlocal reads
        reads += 1
        if reads > 1:  # the next page: read ahead (where it is) while the one before moves
            hooks.point("read-ahead")
        return ctx.retry.call(partial(mover.read, start, ctx.options.batch_size, part.hi))

    def next_start(page: Page) -> tuple[Any, ...] | None:
        return None if page.exhausted else page.hi

    # the next page is read while this one is journalled, copied and verified
    for page in read_ahead(read, after, next_start, ahead=mover.reads_ahead()):
        ctx.stop.check()
        if page.rows:
            rows = [
                BatchRow(c.key, c.digest, c.targets, None, c.home_digest, c.blob) for c in page.rows
            ]
            batch_id = journal.add_batch(
                ctx.run_id, ds.name, source.store.name, part.pass_no, seq, page.lo,
                page.hi or (), rows,
            )  # fmt: skip
            seq += 1
            values = {c.key: c.values for c in page.rows}
            settle(journal, mover, batch_id, ctx.retry, until=BatchState.VERIFIED, values=values)
            ctx.progress("copied", ds.name, len(page.rows))
            ctx.throttle.wait(len(page.rows))


def delete_part(ctx: RunContext, ds: Dataset, source: Location, part: Part) -> None:
    """Compare-and-delete at the source every verified batch of one part."""
    mover = Mover(ctx, ds, source)
    overlap = DELETE_OVERLAP if mover.deletes_overlap() else 1
    delete_batches(ctx, mover, ds.name, source.store.name, part.pass_no, part, overlap=overlap)


def _sources(ctx: RunContext, dataset: str) -> list[str]:
    """Sources to work on: the plan's, and any with unfinished batches in the journal."""
    stores = list(ctx.plan.sources(dataset))
    for b in ctx.journal.batches(ctx.run_id, dataset):
        if b.state != "done" and b.source not in stores:
            stores.append(b.source)
    return stores


def _pairs(ctx: RunContext, dataset: str) -> list[tuple[Dataset, Location]]:
    ds = ctx.map.datasets[dataset]
    out = []
    for store in _sources(ctx, dataset):
        loc = ctx.fleet.location(dataset, store)
        if loc is not None:
            out.append((ds, loc))
    return out


def _parallel(ctx: RunContext, fn: PartFn[ObjectStore], work: list[Work[ObjectStore]]) -> None:
    """Object pairs on this process's threads: one (dataset, store) per thread."""
    if ctx.options.workers <= 1 or len(work) <= 1:
        for ds, store, part in work:
            fn(ctx, ds, store, part)
        return
    with ThreadPoolExecutor(max_workers=ctx.options.workers) as pool:
        futures = [pool.submit(fn, ctx, ds, store, part) for ds, store, part in work]
        for f in futures:
            f.result()


def _copy_parts(ctx: RunContext, dataset: str, pass_no: int) -> list[Work[Location]]:
    """The parts to copy of every source of *dataset*: split now, or as journalled."""
    executor = ctx.executor
    wanted = executor.workers * PARTS_PER_WORKER if executor.workers > 1 else 1
    out: list[Work[Location]] = []
    for ds, loc in _pairs(ctx, dataset):
        for part in parts_for(
            ctx.journal, ctx.run_id, loc, ds.name, pass_no,
            wanted=wanted, batch_size=ctx.options.batch_size, fenced=executor.fenced,
        ):  # fmt: skip
            out.append((ds, loc, part))
    return out


def _delete_parts(ctx: RunContext, dataset: str, pass_no: int) -> list[Work[Location]]:
    """The parts of *dataset* this pass journalled (the implicit one where none)."""
    out: list[Work[Location]] = []
    for ds, loc in _pairs(ctx, dataset):
        found = journalled(ctx.journal, ctx.run_id, ds.name, loc.store.name, pass_no)
        for part in found or [Part(ds.name, loc.store.name, pass_no)]:
            out.append((ds, loc, part))
    return out


def _run(ctx: RunContext, phase: str, fn: PartFn[Place], work: list[Work[Place]]) -> None:
    """Run the parts on the run's executor.

    A part run in another process needs a journal row to claim: an implicit
    part (batches journalled by a run started with the local executor) runs
    here instead.
    """
    if ctx.executor.fenced:
        for ds, loc, part in [w for w in work if w[2].id is None]:
            fn(ctx, ds, loc, part)
        work = [w for w in work if w[2].id is not None]
    if work:
        ctx.executor.run(ctx, phase, fn, work)


def _object_work(ctx: RunContext, pass_no: int) -> list[Work[ObjectStore]]:
    """Every object dataset at each of its source object stores: one part each."""
    fenced = ctx.executor.fenced
    out: list[Work[ObjectStore]] = []
    for ds in ctx.map.datasets.values():
        if ds.objects is None:
            continue
        for store in _sources(ctx, ds.name):
            if store in ctx.fleet.objects:
                part = object_part(ctx.journal, ctx.run_id, ds.name, store, pass_no, fenced=fenced)
                out.append((ds, ctx.fleet.objects[store], part))
    return out


def _run_objects(ctx: RunContext, phase: str, work: list[Work[ObjectStore]]) -> None:
    """Object parts on this process's threads, or (a fenced executor) on its workers."""
    fn = STEPS[phase]
    if ctx.executor.fenced:
        _run(ctx, phase, fn, work)
    else:
        _parallel(ctx, fn, work)


def _home_blob_work(ctx: RunContext, ds: Dataset, pass_no: int) -> list[Work[ObjectStore]]:
    """One fenced part per source object store of the objects abroad of *ds*'s staying rows.

    The stores the plan names, and any this pass journalled batches of (a resume).
    """
    batches = home_blob_batches(ctx, ds, pass_no)
    sources = dict.fromkeys([*home_blob_sources(ctx, ds), *(b.source for b in batches)])
    out: list[Work[ObjectStore]] = []
    for store in sources:
        part = object_part(ctx.journal, ctx.run_id, ds.name, store, pass_no, fenced=True)
        out.append((ds, ctx.fleet.objects[store], part))
    return out


def _copy_home_blobs(ctx: RunContext, ds: Dataset, pass_no: int) -> None:
    """Objects abroad of rows already home: one part per source store on a fenced executor."""
    if ctx.executor.fenced:
        _run(ctx, HOME_BLOBS_COPY, copy_home_blob_part, _home_blob_work(ctx, ds, pass_no))
    else:
        copy_home_blobs(ctx, ds, pass_no)


def _delete_home_blobs(ctx: RunContext, ds: Dataset, pass_no: int) -> None:
    """The compare-and-delete of :func:`_copy_home_blobs`, where it ran."""
    if ctx.executor.fenced:
        _run(ctx, HOME_BLOBS_DELETE, delete_home_blob_part, _home_blob_work(ctx, ds, pass_no))
    else:
        delete_home_blobs(ctx, ds, pass_no)


def run_pass(ctx: RunContext, pass_no: int) -> None:
    """One pass: copy and verify in copy order, then delete in delete order.

    First the objects abroad that rows staying put name (rows already home
    that name an object in a store their rule forbids): read before any row
    moves, so that the rows this pass moves are not mistaken for them, and
    copied (URLs at home rewritten) before any source object is deleted.
    Then rows (and the objects they name), parents before children; then the
    object datasets.  Deletes run the other way round, the staying rows'
    objects last: by then the rows that moved are gone from their sources
    and no longer keep a shared object there.  Last, the home copies that
    finished batches left of rows they did not delete are removed where the
    application has since deleted the row at its source
    (:mod:`domicile.run.batch_sweep`).
    """
    blob_datasets = [ctx.map.datasets[d] for d in ctx.order if ctx.map.datasets[d].blobs]
    for ds in blob_datasets:
        _copy_home_blobs(ctx, ds, pass_no)
    for dataset in ctx.order:
        work = _copy_parts(ctx, dataset, pass_no)
        if work:
            _run(ctx, "copy", copy_part, work)
            ctx.journal.mark("dataset-done")
    objects = _object_work(ctx, pass_no)
    _run_objects(ctx, OBJECTS_COPY, objects)
    _run_objects(ctx, OBJECTS_DELETE, objects)
    for dataset in reversed(ctx.order):
        _run(ctx, "delete", delete_part, _delete_parts(ctx, dataset, pass_no))
    for ds in reversed(blob_datasets):
        _delete_home_blobs(ctx, ds, pass_no)
    ctx.retry.call(partial(sweep_home_copies, ctx))
