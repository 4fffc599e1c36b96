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

A move runs on several threads (a part's read-ahead, two deletes at once,
parallel parts), and glibc's allocator gives each new thread an arena of its
own, whose freed memory the others do not reuse: resident memory then grows
with the threads a long run has had.  On glibc the arenas are capped at
:data:`MALLOC_ARENAS` (``mallopt(M_ARENA_MAX)``, what ``MALLOC_ARENA_MAX``
sets at start-up); elsewhere nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import sys
import threading

log = logging.getLogger(__name__)

_lock = threading.Lock()
_done = False

MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # glibc's mallopt parameter number for M_ARENA_MAX


def tune_for_moves() -> None:
    """Freeze the objects alive now out of the garbage collector (once per process)."""
    global _done
    with _lock:
        if _done:
            return
        _done = True
        gc.collect()  # garbage now is not frozen with the rest
        gc.freeze()
        _cap_arenas()
    log.debug("garbage collector: %d objects frozen", gc.get_freeze_count())


def _cap_arenas() -> None:
    """At most :data:`MALLOC_ARENAS` glibc malloc arenas for the threads to come."""
    if not sys.platform.startswith("linux"):
        return
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return
    if mallopt(_M_ARENA_MAX, MALLOC_ARENAS) != 1:
        log.debug("malloc arenas could not be capped")
