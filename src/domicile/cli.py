"""The ``domicile`` command line: thin; parses, calls the library, renders.

Errors reach the user through :func:`main`, the one place that maps them to
exit codes and prints them without a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from domicile.datamap import load_map
from domicile.errors import (
    EXIT_OK,
    EXIT_VIOLATIONS,
    DomicileError,
    exit_code_for,
)
from domicile.fleet import Fleet
from domicile.render import print_census
from domicile.scan import scan as run_scan

app = typer.Typer(
    name="domicile",
    help="Keep every user's personal data at home: census, move and prove data residency.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

ConfigOpt = typer.Option(Path("domicile.yaml"), "-c", "--config", help="The data map.")


def _console() -> Console:
    console = Console(highlight=False, soft_wrap=False)
    if not console.is_terminal:
        # CI logs and files: plain text, wide enough that tables do not fold
        console = Console(highlight=False, soft_wrap=False, width=160)
    return console


def _err_console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


@app.command()
def check(config: Path = ConfigOpt) -> None:
    """Validate the data map and reach every store (one line per store)."""
    console = _console()
    m = load_map(config)
    console.print(
        f"data map {m.path}: valid ({len(m.stores)} stores, {len(m.datasets)} datasets, "
        f"{len(m.jurisdictions)} jurisdictions)"
    )
    failed: DomicileError | None = None
    with Fleet(m) as fleet:
        for name, version, error in fleet.check_stores():
            store = m.stores[name]
            if error is None:
                console.print(f"  ok    {name:<16} {store.display_url}  ({version})")
            else:
                console.print(f"  FAIL  {name:<16} {store.display_url}  {error.message}")
                failed = failed or error
        if failed is not None:
            raise failed
        fleet.validate()
    console.print("every store reached; every dataset, owner path and column found")


@app.command()
def scan(
    config: Path = ConfigOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the census as JSON."),
) -> None:
    """The census: where each jurisdiction's records sit, and which break the rule."""
    m = load_map(config)
    with Fleet(m) as fleet:
        census = run_scan(fleet)
    if as_json:
        sys.stdout.write(json.dumps(census.to_json(), indent=2) + "\n")
    else:
        print_census(_console(), m, census)
    raise typer.Exit(EXIT_OK if census.compliant else EXIT_VIOLATIONS)


@app.command()
def demo(
    directory: Path = typer.Option(Path("demo"), "--dir", help="Folder for the demo fleet."),
    users: int = typer.Option(3000, "--users", min=10, help="How many users the app has."),
    seed: int = typer.Option(2019, "--seed", help="Random seed (the fleet is deterministic)."),
) -> None:
    """Build the embedded demo fleet of a short-video app and show its census."""
    from domicile.demo import build_demo

    console = _console()
    console.print(f"building the demo fleet in {directory} ({users:,} users) ...")
    path = build_demo(directory, users=users, seed=seed, progress=lambda s: console.print(f"  {s}"))
    console.print(f"data map written to {path}")
    m = load_map(path)
    with Fleet(m) as fleet:
        census = run_scan(fleet)
    print_census(console, m, census, title="Census before")
    console.print(f"next: domicile scan -c {path}")


def run_cli(argv: list[str] | None = None) -> int:
    """Run the command line with *argv*; return the exit code (errors printed, never raised)."""
    try:
        # standalone mode: Typer handles usage errors (exit 2) and ends with SystemExit
        app(args=argv, prog_name="domicile")
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (EXIT_OK if code is None else 1)
    except DomicileError as exc:
        _err_console().print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        return exit_code_for(exc)
    return EXIT_OK


def main() -> None:
    """Console-script entry point."""
    sys.exit(run_cli())
