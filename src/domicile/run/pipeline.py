"""Reading the next batch while this one moves: a read-ahead of one page.

A part's batches are formed from consecutive key ranges: the read of the
next range needs only the end of this one.  :func:`read_ahead` starts that
read on a background thread as soon as a page is handed out, so the source
engine answers it (and this process turns its rows into candidates) while
the page before is journalled, copied home and verified.  At most one page
is read ahead: memory stays bounded by two batches.  Reading has no side
effect on any store, so a page read ahead and never used (a stop, a kill, a
failed step) changes nothing; a resume reads it again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

A = TypeVar("A")
P = TypeVar("P")


def read_ahead(
    read: Callable[[A], P], first: A, after: Callable[[P], A | None], *, ahead: bool = True
) -> Iterator[P]:
    """``read(first)``, then ``read(after(page))`` for each page until *after* gives None.

    Each read after the first runs while the caller works on the page before
    it.  A read's exception is raised where its page would have been handed
    out.  Closing the iterator early (a ``break``, an exception in the
    caller) waits for the read in flight, whose page is dropped.  With
    *ahead* false the reads run on the caller's thread, each when its page is
    asked for (where no server works meanwhile, a second thread only adds
    switching between the two).
    """
    if not ahead:
        page = read(first)
        while True:
            nxt = after(page)
            yield page
            if nxt is None:
                return
            page = read(nxt)
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="domicile-read-ahead")
    pending: Future[P] | None = pool.submit(read, first)
    try:
        while pending is not None:
            page = pending.result()
            nxt = after(page)
            pending = pool.submit(read, nxt) if nxt is not None else None
            yield page
    finally:
        if pending is not None:
            pending.cancel()
        pool.shutdown(wait=True)
