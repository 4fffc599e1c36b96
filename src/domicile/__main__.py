"""``python -m domicile``: the command line."""

from __future__ import annotations

from domicile.cli import main

main()
