"""Headless Chromium for the browser tests: Debian's package, never a download."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
ARTIFACTS = Path(__file__).parent.parent / "artifacts"  # screenshots CI keeps


def require_chromium() -> None:
    """Skip where Debian's chromium is not installed; in CI its absence is a failure."""
    if CHROMIUM.exists():
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{CHROMIUM} is missing; CI must run the browser tests")
    pytest.skip("Debian's chromium package is not installed (apt-get install chromium)")
