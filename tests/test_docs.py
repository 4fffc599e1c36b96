"""Every command of the command line is documented in the README."""

from __future__ import annotations

from pathlib import Path

import typer

from domicile.cli import app

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")


def _commands(group: typer.Typer, prefix: str) -> list[str]:
    names = [f"{prefix}{c.name or c.callback.__name__}" for c in group.registered_commands]  # type: ignore[union-attr]
    for sub in group.registered_groups:
        assert sub.typer_instance is not None
        names += _commands(sub.typer_instance, f"{prefix}{sub.name} ")
    return names


def test_every_command_is_in_the_readme():
    commands = _commands(app, "")
    assert {"check", "scan", "plan", "run", "status", "verify", "report", "demo"} <= set(commands)
    assert any(c.startswith("audit ") for c in commands)
    for command in commands:
        group, _, sub = command.partition(" ")
        documented = f"domicile {command}" in README or (
            sub and f"domicile {group} " in README and sub.replace("_", "-") in README
        )
        assert documented, f"`domicile {command}` is not documented in README.md"
