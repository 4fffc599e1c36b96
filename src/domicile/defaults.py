"""Default values the command line shows in ``--help``, kept free of imports.

They live here, not beside the code that uses them, so that building the
command line (and printing its help) does not import SQLAlchemy, pydantic or
cryptography.  :mod:`domicile.plan` and :mod:`domicile.keys` re-export them.
"""

from __future__ import annotations

DEFAULT_BATCH_SIZE = 10_000
"""Records per batch of a move (``--batch-size``): one journal record, one transaction
per home and one source delete transaction each; 10k-20k rows was the fastest on
PostgreSQL and SQLite, and bounds what a crash makes a resume redo."""

DEFAULT_KEY_NAME = "domicile-audit"
"""The audit signing key's name (``domicile keys init --name``)."""
