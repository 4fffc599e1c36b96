"""docs/guarantees.md names tests that exist: a promise never points at nothing."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "guarantees.md"


def _tests_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}


def test_every_test_named_in_the_guarantees_exists() -> None:
    text = DOC.read_text()
    named: list[tuple[str, str | None]] = []
    for cell in re.findall(r"`(tests/[^`]+|::[^`]+)`", text):
        if cell.startswith("tests/"):
            file, _, name = cell.partition("::")
            current = file
            named.append((file, name or None))
        else:
            named.append((current, cell[2:]))
    assert len(named) > 20
    for file, name in named:
        path = ROOT / file
        assert path.is_file(), f"{file} named in docs/guarantees.md does not exist"
        if name is not None:
            assert name in _tests_of(path), f"{file}::{name} named in docs/guarantees.md"


def test_the_readme_links_the_guarantees() -> None:
    assert "(docs/guarantees.md)" in (ROOT / "README.md").read_text()
