"""The pass loop: copy and verify in copy order, then compare-and-delete in delete order.

Each (dataset, source) pair is walked batch by batch; each batch is driven
through the protocol by :func:`domicile.run.protocol.settle`, never by this
module.  Objects abroad that rows which do not move name (rows already home)
are a payload of their own (:mod:`domicile.run.home_blobs`), copied first
and deleted last.  A stop asked for by a signal is honoured between batches.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from domicile.connectors.objects import ObjectStore
from domicile.fleet import Location
from domicile.model import Dataset
from domicile.run.batch import Mover
from domicile.run.batch_sweep import sweep_home_copies
from domicile.run.context import RunContext
from domicile.run.executors import PartFn, Work
from domicile.run.home_blobs import HomeBlobMover, staying_blobs
from domicile.run.journal import BatchRecord, BatchRow
from domicile.run.objects_move import ObjectMover
from domicile.run.parts import PARTS_PER_WORKER, Part, journalled, parts_for
from domicile.run.protocol import BatchState, Payload, settle


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
    while True:
        ctx.stop.check()
        page = ctx.retry.call(partial(mover.read, after, ctx.options.batch_size, part.hi))
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
        if page.exhausted:
            break
        after = page.hi


def delete_part(ctx: RunContext, ds: Dataset, source: Location, part: Part) -> None:
    """Compare-and-delete at the source every verified batch of one part."""
    mover = Mover(ctx, ds, source)
    _delete_batches(ctx, mover, ds.name, source.store.name, part.pass_no, part)


def _delete_batches(
    ctx: RunContext,
    payload: Payload,
    dataset: str,
    source: str,
    pass_no: int,
    part: Part | None = None,
) -> None:
    for b in ctx.journal.batches(ctx.run_id, dataset, source):
        if b.pass_no != pass_no or b.state == BatchState.DONE:
            continue
        if part is not None and not part.holds(b):
            continue
        ctx.stop.check()
        ctx.check_lease()  # a run that lost its lease (broken by an operator) deletes nothing
        before = b.counts.get("deleted", 0)
        settle(ctx.journal, payload, b.id, ctx.retry, until=BatchState.DONE)
        deleted = ctx.journal.batch(b.id).counts.get("deleted", 0) - before
        ctx.progress("deleted", dataset, deleted)


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


def _parallel(ctx: RunContext, fn: Callable[..., None], pairs: list[Any], pass_no: int) -> None:
    """Object datasets: one (dataset, store) per thread of this process."""
    if ctx.options.workers <= 1 or len(pairs) <= 1:
        for ds, loc in pairs:
            fn(ctx, ds, loc, pass_no)
        return
    with ThreadPoolExecutor(max_workers=ctx.options.workers) as pool:
        futures = [pool.submit(fn, ctx, ds, loc, pass_no) for ds, loc in pairs]
        for f in futures:
            f.result()


def _copy_parts(ctx: RunContext, dataset: str, pass_no: int) -> list[Work]:
    """The parts to copy of every source of *dataset*: split now, or as journalled."""
    executor = ctx.executor
    wanted = executor.workers * PARTS_PER_WORKER if executor.workers > 1 else 1
    out: list[Work] = []
    for ds, loc in _pairs(ctx, dataset):
        for part in parts_for(
            ctx.journal, ctx.run_id, loc, ds.name, pass_no,
            wanted=wanted, batch_size=ctx.options.batch_size, fenced=executor.fenced,
        ):  # fmt: skip
            out.append((ds, loc, part))
    return out


def _delete_parts(ctx: RunContext, dataset: str, pass_no: int) -> list[Work]:
    """The parts of *dataset* this pass journalled (the implicit one where none)."""
    out: list[Work] = []
    for ds, loc in _pairs(ctx, dataset):
        found = journalled(ctx.journal, ctx.run_id, ds.name, loc.store.name, pass_no)
        for part in found or [Part(ds.name, loc.store.name, pass_no)]:
            out.append((ds, loc, part))
    return out


def _run(ctx: RunContext, phase: str, fn: PartFn, work: list[Work]) -> None:
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


def _object_pairs(ctx: RunContext) -> list[tuple[Dataset, ObjectStore]]:
    out = []
    for ds in ctx.map.datasets.values():
        if ds.objects is not None:
            for store in _sources(ctx, ds.name):
                if store in ctx.fleet.objects:
                    out.append((ds, ctx.fleet.objects[store]))
    return out


def _copy_objects(ctx: RunContext, ds: Dataset, source: ObjectStore, pass_no: int) -> None:
    mover = ObjectMover(ctx, ds, source)
    journal = ctx.journal
    current = [b for b in journal.batches(ctx.run_id, ds.name, source.name) if b.pass_no == pass_no]
    for b in current:
        ctx.stop.check()
        settle(journal, mover, b.id, ctx.retry, until=BatchState.VERIFIED)
    after = str(current[-1].hi[0]) if current else None
    seq = current[-1].seq + 1 if current else 1
    rows = ctx.retry.call(partial(mover.moving, after))
    size = ctx.options.batch_size
    for start in range(0, len(rows), size):
        ctx.stop.check()
        chunk = rows[start : start + size]
        lo = (after,) if after is not None else None
        hi = chunk[-1].key
        batch_id = journal.add_batch(ctx.run_id, ds.name, source.name, pass_no, seq, lo, hi, chunk)
        seq += 1
        after = str(hi[0])
        settle(journal, mover, batch_id, ctx.retry, until=BatchState.VERIFIED)
        ctx.progress("copied", ds.name, len(chunk))


def _delete_objects(ctx: RunContext, ds: Dataset, source: ObjectStore, pass_no: int) -> None:
    _delete_batches(ctx, ObjectMover(ctx, ds, source), ds.name, source.name, pass_no)


def _home_blob_batches(ctx: RunContext, ds: Dataset, pass_no: int) -> list[BatchRecord]:
    """This pass's batches of objects that rows staying put name (their source: an object store)."""
    return [
        b
        for b in ctx.journal.batches(ctx.run_id, ds.name)
        if b.pass_no == pass_no and b.source in ctx.fleet.objects
    ]


def _copy_home_blobs(ctx: RunContext, ds: Dataset, pass_no: int) -> None:
    """Journal, copy and verify the objects abroad of rows that do not move (already home)."""
    journal = ctx.journal
    current = _home_blob_batches(ctx, ds, pass_no)
    for b in current:  # a resume: finish the copy of what this pass journalled
        ctx.stop.check()
        mover = HomeBlobMover(ctx, ds, ctx.fleet.objects[b.source])
        settle(journal, mover, b.id, ctx.retry, until=BatchState.VERIFIED)
    # only the object stores the census found violating blobs in are looked at
    sources = {s for d, s in ctx.plan.blob_sources if d == ds.name and s in ctx.fleet.objects}
    if not sources:
        return
    found = ctx.retry.call(partial(staying_blobs, ctx, ds, sources))
    for source, rows in found.items():
        mine = [b for b in current if b.source == source]
        after = str(mine[-1].hi[0]) if mine else None
        seq = max((b.seq for b in mine), default=0) + 1
        rows = [r for r in rows if after is None or str(r.key[0]) > after]
        mover = HomeBlobMover(ctx, ds, ctx.fleet.objects[source])
        for start in range(0, len(rows), ctx.options.batch_size):
            ctx.stop.check()
            chunk = rows[start : start + ctx.options.batch_size]
            lo = (after,) if after is not None else None
            hi = chunk[-1].key
            batch_id = journal.add_batch(ctx.run_id, ds.name, source, pass_no, seq, lo, hi, chunk)
            seq += 1
            after = str(hi[0])
            settle(journal, mover, batch_id, ctx.retry, until=BatchState.VERIFIED)
            ctx.progress("copied", ds.name, len(chunk))


def _delete_home_blobs(ctx: RunContext, ds: Dataset, pass_no: int) -> None:
    """Compare-and-delete at their sources the objects :func:`_copy_home_blobs` verified."""
    sources = dict.fromkeys(b.source for b in _home_blob_batches(ctx, ds, pass_no))
    for source in sources:
        mover = HomeBlobMover(ctx, ds, ctx.fleet.objects[source])
        _delete_batches(ctx, mover, ds.name, source, pass_no)


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
    objects = _object_pairs(ctx)
    _parallel(ctx, _copy_objects, objects, pass_no)
    _parallel(ctx, _delete_objects, objects, pass_no)
    for dataset in reversed(ctx.order):
        _run(ctx, "delete", delete_part, _delete_parts(ctx, dataset, pass_no))
    for ds in reversed(blob_datasets):
        _delete_home_blobs(ctx, ds, pass_no)
    ctx.retry.call(partial(sweep_home_copies, ctx))
