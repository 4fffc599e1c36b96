"""Where the parts of a pass run: threads of this process, or a Dask cluster.

The pass loop (:mod:`domicile.run.passes`) hands an executor the parts of one
dataset at a time — every part copied before its children's, deleted after
them — and waits until all are done; then the object pairs of the pass (one
part each, :mod:`domicile.run.object_parts`).  ``--executor local`` (the default) runs
them on ``--workers`` threads of this process.  ``--executor dask`` starts a
``distributed.LocalCluster`` of ``--workers`` processes on this machine, and
``--executor tcp://host:8786`` uses an existing Dask scheduler: each part is
a task that a worker runs against its own connections, opened from the map
(see :mod:`domicile.run.worker`).  The lease and the audit log stay here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from domicile.errors import ConfigError

if TYPE_CHECKING:
    from domicile.model import DataMap, Dataset
    from domicile.run.context import RunContext
    from domicile.run.parts import Part

Place = TypeVar("Place")
"""Where a part's records are: a SQL :class:`~domicile.fleet.Location`, or an object store."""

Work = tuple["Dataset", Place, "Part"]
PartFn = Callable[["RunContext", "Dataset", Place, "Part"], None]


class Executor(Protocol):
    """Runs the parts of one phase of a pass and returns when every one is done."""

    workers: int
    fenced: bool  # parts run in other processes: each needs a journal row and a token

    def run(
        self, ctx: RunContext, phase: str, fn: PartFn[Place], work: Sequence[Work[Place]]
    ) -> None:
        """Run ``fn(ctx, *w)`` for every *w*.

        *phase* names what *fn* does, for an executor that runs the part in
        another process (:mod:`domicile.run.worker`): ``copy`` or ``delete``
        (rows), or one of :data:`domicile.run.object_parts.STEPS` (objects).
        """

    def close(self) -> None:
        """Let go of threads, processes or the cluster connection."""


class LocalExecutor:
    """Threads of this process, sharing its connections."""

    fenced = False

    def __init__(self, workers: int = 1):
        self.workers = max(1, workers)

    def run(
        self, ctx: RunContext, phase: str, fn: PartFn[Place], work: Sequence[Work[Place]]
    ) -> None:
        """Run the parts on up to ``workers`` threads; the first failure is raised."""
        if self.workers <= 1 or len(work) <= 1:
            for ds, loc, part in work:
                fn(ctx, ds, loc, part)
            return
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            futures = [pool.submit(fn, ctx, ds, loc, part) for ds, loc, part in work]
            for f in futures:
                f.result()

    def close(self) -> None:
        """Nothing to let go of."""


def parse_executor(spec: str) -> str:
    """Check an ``--executor`` value: ``local``, ``dask`` or ``tcp://host:port``."""
    spec = spec.strip()
    if spec in ("local", "dask") or spec.startswith(("tcp://", "tls://")):
        return spec
    raise ConfigError(
        f"unknown executor {spec!r}",
        where="--executor",
        hint="use local (threads, the default), dask (a cluster on this machine) or "
        "tcp://host:8786 (an existing Dask scheduler)",
    )


def make_executor(spec: str, workers: int, m: DataMap, **dask: Any) -> Executor:
    """The executor *spec* names, ready to run parts (a Dask cluster started if asked)."""
    spec = parse_executor(spec)
    if spec == "local":
        return LocalExecutor(workers)
    from domicile.run.dask_executor import DaskExecutor

    return DaskExecutor(m, None if spec == "dask" else spec, workers, **dask)
