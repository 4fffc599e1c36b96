"""domicile: keep every user's personal data at home."""

from __future__ import annotations

__version__ = "0.1.0"
