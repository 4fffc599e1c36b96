"""Object datasets, and objects abroad of rows already home, moved part by part.

Two kinds of *object pair* move in a pass: an object dataset
(``objects: "avatars/{owner}/*"``) at one source object store
(:mod:`domicile.run.objects_move`), and one SQL dataset's objects in one
source object store that rows which do not move name
(:mod:`domicile.run.home_blobs`).  Each pair of a pass is one part over its
whole key range, and the functions here drive its batches through the
protocol wherever the part runs:

- with the local executor, on this process's threads, as the implicit part
  (no journal row, batches numbered from 1) — unless a run begun on Dask
  journalled a part for the pair, which is then resumed as such;
- with a fenced executor (Dask), each pair is first journalled as a part row
  of its own (:func:`object_part`), so that a worker claims it — raising its
  fencing token, :mod:`domicile.run.fence` — exactly as it claims a part of
  a table, and runs the same function (:data:`STEPS`,
  :mod:`domicile.run.worker`).  A pair that already has batches in the pass
  but no part row (a run begun with the local executor) keeps its implicit
  part, which only the coordinator can run.

Without a fenced executor the objects abroad of rows already home move as
they always did: one dataset at a time on this process, every source object
store from one reading of the rows (:func:`copy_home_blobs`).  A part of them
(:func:`copy_home_blob_part`) reads the rows for its own source store only.

The compare-and-delete loop (:func:`delete_batches`) is here because every
part shares it, a table's too (:func:`domicile.run.passes.delete_part`).
"""

from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING

from domicile.connectors.objects import ObjectStore
from domicile.model import Dataset
from domicile.run.home_blobs import HomeBlobMover, staying_blobs
from domicile.run.journal import BatchRecord, BatchRow, Journal
from domicile.run.journal_records import now, parts
from domicile.run.objects_move import ObjectMover
from domicile.run.parts import Part, journalled
from domicile.run.protocol import BatchState, Payload, settle

if TYPE_CHECKING:
    from domicile.run.context import RunContext
    from domicile.run.executors import PartFn

log = logging.getLogger(__name__)

OBJECTS_COPY = "objects-copy"
OBJECTS_DELETE = "objects-delete"
HOME_BLOBS_COPY = "home-blobs-copy"
HOME_BLOBS_DELETE = "home-blobs-delete"


# -- the part of an object pair --------------------------------------------------------


def object_part(
    journal: Journal, run_id: str, dataset: str, source: str, pass_no: int, *, fenced: bool
) -> Part:
    """The one part of an object pair in a pass: as journalled, else made now if *fenced*.

    Unfenced, a pair without a part row is the implicit part, as always.
    Fenced, it gets a row of its own (part 1, the whole key range) that a
    worker can claim — unless the pass already journalled batches of the
    pair without one: those are the implicit part's, which keeps them.
    """
    found = journalled(journal, run_id, dataset, source, pass_no)
    if found:
        return found[0]
    implicit = Part(dataset, source, pass_no)
    if not fenced or any(b.pass_no == pass_no for b in journal.batches(run_id, dataset, source)):
        return implicit
    with journal.engine.begin() as conn:
        conn.execute(
            parts.insert().values(
                run_id=run_id, dataset=dataset, source=source, pass_no=pass_no, part_no=1,
                lo=None, hi=None, token=0, updated_at=now(),
            )
        )  # fmt: skip
    log.info("%s@%s pass %d: 1 part (objects)", dataset, source, pass_no)
    # read back, so that a first run and a resume see the part alike
    return journalled(journal, run_id, dataset, source, pass_no)[0]


# -- the compare-and-delete loop every part shares ------------------------------------


def delete_batches(
    ctx: RunContext,
    payload: Payload,
    dataset: str,
    source: str,
    pass_no: int,
    part: Part | None = None,
    *,
    overlap: int = 1,
) -> None:
    """Compare-and-delete every verified batch of a pair's pass (of *part* only, if given).

    *overlap* > 1 runs that many batches' deletes at once, each in its own
    transactions (the payload says when that is safe: disjoint keys whose row
    locks cannot wait on each other); one engine's answer is then awaited
    while this process works on another batch.
    """
    todo = []
    for b in ctx.journal.batches(ctx.run_id, dataset, source):
        if b.pass_no != pass_no or b.state == BatchState.DONE:
            continue
        if part is not None and not part.holds(b):
            continue
        todo.append(b)

    def one(b: BatchRecord) -> None:
        before = b.counts.get("deleted", 0)
        settle(ctx.journal, payload, b.id, ctx.retry, until=BatchState.DONE)
        deleted = ctx.journal.batch(b.id).counts.get("deleted", 0) - before
        ctx.progress("deleted", dataset, deleted)

    def ready() -> None:
        ctx.stop.check()
        ctx.check_lease()  # a run that lost its lease (broken by an operator) deletes nothing

    if overlap <= 1 or len(todo) <= 1:
        for b in todo:
            ready()
            one(b)
        return
    with ThreadPoolExecutor(max_workers=overlap, thread_name_prefix="domicile-delete") as pool:
        running: deque[Future[None]] = deque()
        try:
            for b in todo:
                ready()
                running.append(pool.submit(one, b))
                while len(running) >= overlap:
                    running.popleft().result()
            while running:
                running.popleft().result()
        finally:
            for f in running:  # a failure or a stop: start no more; those running finish
                f.cancel()


# -- object datasets --------------------------------------------------------------------


def copy_objects(ctx: RunContext, ds: Dataset, source: ObjectStore, part: Part) -> None:
    """Journal, copy and verify an object dataset's violating objects at *source*.

    A resume first finishes the copy of the batches this part journalled,
    then lists on after the last key of them.
    """
    mover = ObjectMover(ctx, ds, source)
    journal = ctx.journal
    current = [b for b in journal.batches(ctx.run_id, ds.name, source.name) if part.holds(b)]
    for b in current:
        ctx.stop.check()
        settle(journal, mover, b.id, ctx.retry, until=BatchState.VERIFIED)
    after = str(current[-1].hi[0]) if current else None
    seq = current[-1].seq + 1 if current else part.first_seq
    rows = ctx.retry.call(partial(mover.moving, after))
    size = ctx.options.batch_size
    for start in range(0, len(rows), size):
        ctx.stop.check()
        chunk = rows[start : start + size]
        lo = (after,) if after is not None else None
        hi = chunk[-1].key
        batch_id = journal.add_batch(
            ctx.run_id, ds.name, source.name, part.pass_no, seq, lo, hi, chunk
        )
        seq += 1
        after = str(hi[0])
        settle(journal, mover, batch_id, ctx.retry, until=BatchState.VERIFIED)
        ctx.progress("copied", ds.name, len(chunk))


def delete_objects(ctx: RunContext, ds: Dataset, source: ObjectStore, part: Part) -> None:
    """Compare-and-delete at *source* the objects :func:`copy_objects` verified."""
    mover = ObjectMover(ctx, ds, source)
    delete_batches(ctx, mover, ds.name, source.name, part.pass_no, part)


# -- objects abroad of rows already home ------------------------------------------------


def home_blob_batches(ctx: RunContext, ds: Dataset, pass_no: int) -> list[BatchRecord]:
    """This pass's batches of objects that rows staying put name (their source: an object store)."""
    return [
        b
        for b in ctx.journal.batches(ctx.run_id, ds.name)
        if b.pass_no == pass_no and b.source in ctx.fleet.objects
    ]


def home_blob_sources(ctx: RunContext, ds: Dataset) -> list[str]:
    """The object stores the census found violating objects of *ds*'s rows in (plan order)."""
    found = [s for d, s in ctx.plan.blob_sources if d == ds.name and s in ctx.fleet.objects]
    return list(dict.fromkeys(found))


def copy_home_blobs(ctx: RunContext, ds: Dataset, pass_no: int) -> None:
    """Journal, copy and verify the objects abroad of rows that do not move (already home).

    Every source object store of the dataset, from one reading of its rows.
    """
    current = home_blob_batches(ctx, ds, pass_no)
    _copy_home_blobs(ctx, ds, pass_no, current, set(home_blob_sources(ctx, ds)), first_seq=1)


def copy_home_blob_part(ctx: RunContext, ds: Dataset, source: ObjectStore, part: Part) -> None:
    """:func:`copy_home_blobs` for one source object store: one part, run anywhere."""
    current = [b for b in home_blob_batches(ctx, ds, part.pass_no) if part.holds(b)]
    sources = {source.name} & set(home_blob_sources(ctx, ds))
    _copy_home_blobs(ctx, ds, part.pass_no, current, sources, first_seq=part.first_seq)


def _copy_home_blobs(
    ctx: RunContext,
    ds: Dataset,
    pass_no: int,
    current: list[BatchRecord],
    sources: set[str],
    first_seq: int,
) -> None:
    """Finish the copy of *current*, then journal and copy what rows name in *sources*."""
    journal = ctx.journal
    for b in current:  # a resume: finish the copy of what this pass journalled
        ctx.stop.check()
        mover = HomeBlobMover(ctx, ds, ctx.fleet.objects[b.source])
        settle(journal, mover, b.id, ctx.retry, until=BatchState.VERIFIED)
    # only the object stores the census found violating blobs in are looked at
    if not sources:
        return
    found = ctx.retry.call(partial(staying_blobs, ctx, ds, sources))
    for source, rows in found.items():
        mine = [b for b in current if b.source == source]
        _add_home_blob_batches(ctx, ds, source, pass_no, mine, rows, first_seq)


def _add_home_blob_batches(
    ctx: RunContext,
    ds: Dataset,
    source: str,
    pass_no: int,
    mine: list[BatchRecord],
    rows: list[BatchRow],
    first_seq: int,
) -> None:
    """Journal *rows* (after the last key of *mine*) batch by batch, each copied and verified."""
    journal = ctx.journal
    after = str(mine[-1].hi[0]) if mine else None
    seq = max((b.seq for b in mine), default=first_seq - 1) + 1
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


def delete_home_blobs(ctx: RunContext, ds: Dataset, pass_no: int) -> None:
    """Compare-and-delete at their sources the objects :func:`copy_home_blobs` verified."""
    sources = dict.fromkeys(b.source for b in home_blob_batches(ctx, ds, pass_no))
    for source in sources:
        mover = HomeBlobMover(ctx, ds, ctx.fleet.objects[source])
        delete_batches(ctx, mover, ds.name, source, pass_no)


def delete_home_blob_part(ctx: RunContext, ds: Dataset, source: ObjectStore, part: Part) -> None:
    """:func:`delete_home_blobs` for one source object store: one part, run anywhere."""
    mover = HomeBlobMover(ctx, ds, source)
    delete_batches(ctx, mover, ds.name, source.name, part.pass_no, part)


STEPS: dict[str, PartFn[ObjectStore]] = {
    OBJECTS_COPY: copy_objects,
    OBJECTS_DELETE: delete_objects,
    HOME_BLOBS_COPY: copy_home_blob_part,
    HOME_BLOBS_DELETE: delete_home_blob_part,
}
"""What a part of each object phase runs, here or on a worker (by the phase's name)."""
