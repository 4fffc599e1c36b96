"""The garbage collector set for a move: the heap of the imports frozen out of it.

A batch allocates hundreds of thousands of short-lived objects (a tuple per
row, per key, per digest), and every few hundred of them CPython starts a
collection; the older generations it traverses hold the large heap the
process built at start-up and never frees (the imported modules of
SQLAlchemy, the drivers, Dask).  Frozen out of every collection
(:func:`gc.freeze`) once per process, before the first batch, that heap is no
longer traversed: measured on an allocation-bound loop this saves about a
fifth of the CPU.  Cycles created later are collected as before, at CPython's
thresholds (raising those too saved little more and let a long run's peak
memory grow).
"""

from __future__ import annotations

import gc
import logging
import threading

log = logging.getLogger(__name__)

_lock = threading.Lock()
_done = False


def tune_for_moves() -> None:
    """Freeze the objects alive now out of the garbage collector (once per process)."""
    global _done
    with _lock:
        if _done:
            return
        _done = True
        gc.collect()  # garbage now is not frozen with the rest
        gc.freeze()
    log.debug("garbage collector: %d objects frozen", gc.get_freeze_count())
