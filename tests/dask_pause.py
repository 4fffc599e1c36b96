"""Test-owned Dask worker preload: the first worker to reach a copied batch pauses there.

``dask worker ... --preload tests/dask_pause.py`` with ``DOMICILE_TEST_PAUSE_DIR``
set: the first worker process (of any on the machine) whose batch reaches
``copied`` writes its pid to ``paused`` in that folder and sleeps, holding the
batch, so that a test can kill it there.  Production code never reads this.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from domicile.run import hooks


def _pause_once(name: str) -> None:
    if name != "copied":
        return
    mark = Path(os.environ["DOMICILE_TEST_PAUSE_DIR"]) / "paused"
    try:
        fd = os.open(mark, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return  # another worker already paused: this one goes on
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    time.sleep(120)


def dask_setup(worker: Any) -> None:
    """Called by Dask when the worker starts."""
    hooks.install(_pause_once)
