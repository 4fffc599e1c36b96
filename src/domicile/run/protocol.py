"""The move protocol: one state machine for every batch — rows, objects, a row's blobs.

A batch is one key range of one dataset at one source.  It moves through

    copying ──► copied ──► verified ──► deleting ──► done
       │           │                       │
       └───────────┴──────► failed ◄───────┘   (a resume re-enters copying or deleting)

and :func:`advance` is the only function that moves it: it reads the state
the journal holds (checking the batch's MAC first) and performs exactly the
one step that follows it.  Each state is journalled *before* the side effect
that follows it, which is the whole correctness argument:

- ``copying`` is written with the batch's keys, row digests and homes
  *before* anything is written at home.  A crash leaves at most rows at home
  that the journal knows domicile may have written; a resume copies again
  (an upsert checked by digest), and rows that changed or vanished since are
  dropped from the batch and their copies removed if home holds exactly them.
- ``copied`` is written after every home committed; ``verify`` then reads the
  rows back at home and compares digests.  A mismatch stops the batch:
  nothing is deleted.
- ``verified`` → ``deleting``: in one source transaction holding the rows'
  locks, each row is deleted only if its current digest equals the copied one
  and its home copy, read again in this step under a lock held until the
  source commits, still matches.  Rows that changed, vanished or lost their
  home copy are journalled *before* the delete commits, so a resume tells
  domicile's own deletes from the application's.  Rows that changed keep
  their place and move again; their stale home copies are removed, so that
  no deleted record comes back.
- ``done`` after the source committed.

What this relies on is checked, not assumed, before the first step: one run
per state store (:mod:`domicile.run.lease`); distinct stores, no home inside a
source (:mod:`domicile.connectors.identity`); keys unique at every source
(:meth:`domicile.fleet.Fleet.check_unique_keys`); one dataset per table (the
map loader); the journal unedited (its MACs); the map unchanged since the run
began (:mod:`domicile.run.depends`).  A key arriving at a home from two
sources is a conflict (:mod:`domicile.run.conflict`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from domicile.errors import DomicileError
from domicile.run.journal import IllegalTransition

if TYPE_CHECKING:
    from domicile.run.journal import BatchRecord, Journal
    from domicile.run.retry import Retry

log = logging.getLogger(__name__)


class BatchState(StrEnum):
    """Where a batch stands; the journal stores the value."""

    COPYING = "copying"
    COPIED = "copied"
    VERIFIED = "verified"
    DELETING = "deleting"
    DONE = "done"
    FAILED = "failed"


class Payload(Protocol):
    """What moves: rows of a table (with their blobs as children) or objects.

    Each method performs one step on the batch as the journal holds it and
    journals the state that follows (through the journal's checked
    transitions); none decides which step comes next.
    """

    def copy_batch(self, batch_id: int, values: Any | None) -> None:
        """copying → copied: write the batch home (*values*: rows as just read, or None)."""

    def verify_batch(self, batch_id: int) -> None:
        """copied → verified: read the batch back at home and compare digests."""

    def delete_batch(self, batch_id: int) -> int:
        """verified / deleting → done: compare-and-delete at the source; returns rows deleted."""


def advance(
    journal: Journal,
    payload: Payload,
    batch_id: int,
    retry: Retry,
    *,
    values: Any | None = None,
    delete: bool = False,
) -> BatchState:
    """Perform exactly the next step of batch *batch_id*; return the state it reached.

    A batch that reached ``verified`` only goes on when *delete* is true (the
    pass loop deletes after every dataset is copied, children first).  A
    ``failed`` batch re-enters the step where it failed.  A step that fails
    for good journals ``failed`` (with the error) and re-raises.
    """
    # which step is next; the step itself (and any transition) checks the
    # batch's MAC over its rows before it acts
    batch = journal.batch(batch_id)
    state = BatchState(batch.state)
    if state is BatchState.FAILED:
        again = BatchState.DELETING if batch.failed_in == "delete" else BatchState.COPYING
        journal.transition(batch_id, again.value)
        return again
    step: Callable[[], Any]
    if state is BatchState.COPYING:
        step, side, ends = (lambda: payload.copy_batch(batch_id, values)), "copy", BatchState.COPIED
    elif state is BatchState.COPIED:
        step, side, ends = (lambda: payload.verify_batch(batch_id)), "copy", BatchState.VERIFIED
    elif state in (BatchState.VERIFIED, BatchState.DELETING) and delete:
        step, side, ends = (lambda: payload.delete_batch(batch_id)), "delete", BatchState.DONE
    else:
        return state
    attempts = 0

    def attempt() -> None:
        # An attempt can fail after it journalled the state its step ends in (a
        # connection lost while it tidied up, such as clearing a delete mark):
        # the step is done then, and running it again would go backwards.
        nonlocal attempts
        attempts += 1
        if attempts > 1 and journal.batch(batch_id).state == ends.value:
            log.debug("batch %d: an earlier attempt reached %s", batch_id, ends.value)
            return
        step()

    try:
        retry.call(attempt)
    except DomicileError as exc:
        log.warning("batch %d (%s from %s) failed in %s: %s", batch_id, batch.dataset,
                    batch.source, side, exc)  # fmt: skip
        _fail(journal, batch, exc, side)
        raise
    reached = BatchState(journal.batch(batch_id).state)
    log.debug("batch %d (%s from %s): %s -> %s", batch_id, batch.dataset, batch.source,
              state.value, reached.value)  # fmt: skip
    return reached


def settle(
    journal: Journal,
    payload: Payload,
    batch_id: int,
    retry: Retry,
    *,
    until: BatchState,
    values: Any | None = None,
) -> BatchState:
    """:func:`advance` until the batch reaches *until* (``verified`` or ``done``)."""
    order = list(BatchState)
    delete = until is BatchState.DONE
    state = BatchState(journal.batch(batch_id).state)
    while order.index(state) < order.index(until) or state is BatchState.FAILED:
        if state is BatchState.VERIFIED and not delete:
            break
        reached = advance(journal, payload, batch_id, retry, values=values, delete=delete)
        values = None  # the rows as first read serve the first copy only
        if reached is state:
            raise IllegalTransition(
                f"batch {batch_id} did not leave state {state}",
                hint="this is a bug in domicile; the journal was left unchanged",
            )
        state = reached
    return state


def _fail(journal: Journal, batch: BatchRecord, exc: DomicileError, side: str) -> None:
    current = journal.batch(batch.id)
    if current.state in (BatchState.COPYING, BatchState.COPIED, BatchState.DELETING):
        journal.transition(batch.id, BatchState.FAILED.value, error=str(exc), failed_in=side)
