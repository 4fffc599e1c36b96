"""The ``domicile`` command line: thin; parses, calls the library, renders.

Errors reach the user through :func:`main`, the one place that maps them to
exit codes and prints them without a traceback.

Importing this module must stay cheap: ``domicile --help`` and every
``domicile COMMAND --help`` import only it, Typer and :mod:`domicile.errors`.
Each command imports the library modules it needs (SQLAlchemy, pydantic, the
run package, the report) when it runs; ``tests/test_startup.py`` holds this.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from domicile.access.cli import access_app, principals_app
from domicile.audit.cli import audit_app, keys_app
from domicile.defaults import DEFAULT_BATCH_SIZE
from domicile.errors import (
    EXIT_BAD_INPUT,
    EXIT_INCOMPLETE,
    EXIT_OK,
    EXIT_VIOLATIONS,
    DomicileError,
    exit_code_for,
)
from domicile.guard_cli import guard_app
from domicile.guard_cli import watch as watch_command
from domicile.service.cli import serve_command

if TYPE_CHECKING:
    from rich.console import Console

    from domicile import api
    from domicile.model import DataMap
    from domicile.run.executor import RunOptions, RunResult
    from domicile.run.journal import Journal, RunRecord

app = typer.Typer(
    name="domicile",
    help="Keep every user's personal data at home: census, move and prove data residency.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(audit_app, name="audit")
app.add_typer(keys_app, name="keys")
app.add_typer(guard_app, name="guard")
app.command("watch")(watch_command)
app.add_typer(principals_app, name="principals")
app.add_typer(access_app, name="access")
app.command("serve")(serve_command)


@app.callback()
def _global_options(
    verbose: int = typer.Option(
        0, "-v", "--verbose", count=True, help="Log more: -v steps, -vv every batch transition."
    ),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Log errors only."),
    log_format: str = typer.Option(
        "plain", "--log-format", help="Log lines on stderr: plain or json (one object a line)."
    ),
) -> None:
    """Keep every user's personal data at home: census, move and prove data residency."""
    from domicile.logs import FORMATS, configure

    if log_format not in FORMATS:
        raise typer.BadParameter(
            f"{log_format!r} is not one of {', '.join(FORMATS)}", param_hint="--log-format"
        )
    configure(verbose, quiet, log_format)


ConfigOpt = typer.Option(Path("domicile.yaml"), "-c", "--config", help="The data map.")


def _console() -> Console:
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=False)
    if not console.is_terminal:
        # CI logs and files: plain text, wide enough that tables do not fold
        console = Console(highlight=False, soft_wrap=False, width=160)
    return console


def _err_console() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


@app.command()
def check(config: Path = ConfigOpt) -> None:
    """Validate the data map and reach every store (one line per store); changes nothing."""
    from domicile import api
    from domicile.datamap import load_map

    console = _console()
    m = load_map(config)
    console.print(
        f"data map {m.path}: valid ({len(m.stores)} stores, {len(m.datasets)} datasets, "
        f"{len(m.jurisdictions)} jurisdictions)"
    )

    def show(s: api.StoreCheck) -> None:
        if s.error is None:
            console.print(f"  ok    {s.name:<16} {s.display_url}  ({s.version})")
        else:
            console.print(f"  FAIL  {s.name:<16} {s.display_url}  {s.error.message}")

    result = api.check(m, on_store=show)
    for note in result.notes:
        console.print(f"  note  {note}")
    console.print(
        "every store reached and distinct; every dataset, owner path, column and key found"
    )


@app.command()
def scan(
    config: Path = ConfigOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the census as JSON."),
) -> None:
    """The census: where each jurisdiction's records sit, and which break the rule."""
    from domicile import api
    from domicile.datamap import load_map
    from domicile.render import print_census

    m = load_map(config)
    census = api.scan(m)
    if as_json:
        sys.stdout.write(json.dumps(census.to_json(), indent=2) + "\n")
    else:
        print_census(_console(), m, census)
    raise typer.Exit(EXIT_OK if census.compliant else EXIT_VIOLATIONS)


JurisOpt = typer.Option(
    None, "-j", "--jurisdiction", help="Limit to these jurisdictions (repeatable)."
)


def _journal(m: DataMap) -> Journal:
    from domicile.run.journal import Journal
    from domicile.state import state_engine

    return Journal(state_engine(m.state, m.base_dir))


@app.command()
def plan(
    config: Path = ConfigOpt,
    jurisdiction: list[str] | None = JurisOpt,
    output: Path | None = typer.Option(None, "-o", "--output", help="Write the plan as JSON."),
    batch_size: int = typer.Option(DEFAULT_BATCH_SIZE, "--batch-size", min=1),
) -> None:
    """The moves that would bring every violating record home, in order."""
    from domicile.datamap import load_map
    from domicile.fleet import Fleet
    from domicile.render import print_plan
    from domicile.run.executor import plan_for

    m = load_map(config)
    with Fleet(m) as fleet:
        _, the_plan = plan_for(fleet, jurisdiction, batch_size)
    print_plan(_console(), m, the_plan)
    if output is not None:
        output.write_text(json.dumps(the_plan.to_json(), indent=2) + "\n")
        _console().print(f"plan written to {output}")
    if the_plan.blockers:
        raise typer.Exit(EXIT_BAD_INPUT)


@app.command()
def prepare(
    config: Path = ConfigOpt,
    jurisdiction: list[str] | None = JurisOpt,
    headroom: int = typer.Option(
        100_000, "--headroom", min=0, help="Ids kept free above the sources' largest."
    ),
) -> None:
    """Create the home schema before anything moves: tables, types, sequences past the sources."""
    from rich.markup import escape

    from domicile import api

    result = api.prepare(config, jurisdiction, headroom)
    console = _console()
    for blocker in result.blockers:
        console.print(f"[bold red]blocker:[/] {escape(blocker)}")
    if result.blockers:
        console.print("nothing was created")
        raise typer.Exit(EXIT_BAD_INPUT)
    for store, tables in sorted(result.created.items()):
        console.print(f"{store}: created {', '.join(tables)}")
    for store, sequences in sorted(result.sequences.items()):
        for table, value in sorted(sequences.items()):
            console.print(f"{store}: {table} generates ids from {value:,}")
    if not result.created and not any(result.sequences.values()):
        console.print("every home already has its schema")


@app.command()
def run(
    config: Path = ConfigOpt,
    jurisdiction: list[str] | None = JurisOpt,
    resume: str | None = typer.Option(None, "--resume", help="Resume this unfinished run."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the plan; change nothing."),
    workers: int = typer.Option(
        1,
        "--workers",
        min=1,
        help="Parts moved in parallel: threads (local) or LocalCluster processes (dask); "
        "a large table's key space is split among them.",
    ),
    executor: str = typer.Option(
        "local",
        "--executor",
        help="Where parts run: local (threads), dask (a LocalCluster on this machine) or "
        "tcp://host:8786 (an existing Dask scheduler).",
    ),
    max_rows_per_second: float | None = typer.Option(
        None, "--max-rows-per-second", min=1, help="Protect production stores: a rate cap."
    ),
    batch_size: int = typer.Option(DEFAULT_BATCH_SIZE, "--batch-size", min=1),
    max_passes: int = typer.Option(5, "--max-passes", min=1),
    retries: int = typer.Option(
        5, "--retries", min=1, help="Attempts at a step when a store fails transiently."
    ),
    break_lease: bool = typer.Option(
        False, "--break-lease", help="Take the run lease from a holder you know is gone."
    ),
    abandon: str | None = typer.Option(
        None, "--abandon", help="Give up this unfinished run (it is never resumed)."
    ),
    vacuum: bool = typer.Option(
        False,
        "--vacuum",
        help="After a run that ends done, compact the source tables it deleted from "
        "(SQLite VACUUM, PostgreSQL VACUUM FULL, MySQL OPTIMIZE TABLE).",
    ),
) -> None:
    """Bring it home: copy, verify, compare-and-delete; resumable; then verify by scan."""
    from domicile.datamap import load_map
    from domicile.fleet import Fleet
    from domicile.render import print_census, print_plan
    from domicile.run.audit_events import RunAudit
    from domicile.run.executor import RunOptions, plan_for
    from domicile.run.executor import abandon as abandon_run
    from domicile.run.executors import parse_executor

    m = load_map(config)
    console = _console()
    if abandon is not None:
        journal = _journal(m)
        abandon_run(m, journal, abandon, RunAudit(m, journal.engine))
        console.print(f"run {abandon} abandoned; a new run may start")
        return
    if dry_run:
        with Fleet(m) as fleet:
            _, the_plan = plan_for(fleet, jurisdiction, batch_size)
        print_plan(console, m, the_plan)
        console.print("dry run: nothing was changed")
        raise typer.Exit(EXIT_BAD_INPUT if the_plan.blockers else EXIT_OK)
    journal = _journal(m)
    options = RunOptions(
        scope=jurisdiction or (),
        workers=workers,
        batch_size=batch_size,
        max_rows_per_second=max_rows_per_second,
        max_passes=max_passes,
        retries=retries,
        break_lease=break_lease,
        vacuum=vacuum,
        executor=parse_executor(executor),
    )
    result = _execute(console, m, journal, options, resume)
    print_census(console, m, result.after, title=f"Census after run {result.run_id}")
    console.print(
        f"run {result.run_id}: {result.status} in {result.seconds:.1f}s "
        f"({', '.join(f'{k} {v:,}' for k, v in sorted(result.counts.items()))})"
    )
    for reason in result.reasons:  # a done run's notes (a failed compaction) are notes
        console.print(f"  {'note' if result.status == 'done' else 'incomplete'}: {reason}")
    raise typer.Exit(EXIT_OK if result.status == "done" else EXIT_INCOMPLETE)


def _confirm_resume(record: RunRecord) -> bool:
    """On a terminal, offer to resume an unfinished run; elsewhere, refuse (never guess)."""
    if not sys.stdin.isatty():
        return False
    return typer.confirm(
        f"run {record.id} ({record.status}) did not finish; resume it?", default=True
    )


def _execute(
    console: Console, m: DataMap, journal: Journal, options: RunOptions, resume: str | None
) -> RunResult:
    from domicile.fleet import Fleet
    from domicile.render import RunProgress, print_census, print_plan
    from domicile.run.audit_events import RunAudit
    from domicile.run.executor import execute, plan_for

    with Fleet(m) as fleet:
        before, the_plan = plan_for(fleet, options.scope or None, options.batch_size)
    print_census(console, m, before, title="Census before")
    print_plan(console, m, the_plan)
    totals: dict[str, int] = {}
    for mv in the_plan.moves:
        totals[mv.dataset] = totals.get(mv.dataset, 0) + mv.records
    audit = RunAudit(m, journal.engine)
    with RunProgress(console, totals) as progress:
        result = execute(
            m,
            journal,
            options,
            resume=resume,
            audit=audit,
            progress=progress,
            confirm_resume=_confirm_resume,
        )
    if audit.created_keys:
        console.print(
            f"audit keys created in {audit.keys_dir} (keep audit.key secret; "
            "share audit.pub with auditors)"
        )
    if result.status == "done":  # subjects came home: an installed write guard learns them
        from domicile.guard import refresh_after_run

        for g in refresh_after_run(m):
            console.print(f"write guard refreshed at {g.store}")
    return result


@app.command()
def status(
    run_id: str | None = typer.Argument(None),
    config: Path = ConfigOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the runs and batches as JSON."),
) -> None:
    """Where runs stand: every run, or one run's batches by dataset and state."""
    from domicile import api
    from domicile.render import print_status

    result = api.status(config, run_id)
    if as_json:
        sys.stdout.write(json.dumps(result.to_json(), indent=2, default=str) + "\n")
        return
    print_status(_console(), result)


@app.command()
def verify(run_id: str | None = typer.Argument(None), config: Path = ConfigOpt) -> None:
    """A fresh scan: exit 0 when no record of the run's jurisdictions is out of place."""
    from domicile import api
    from domicile.datamap import load_map
    from domicile.render import print_census

    m = load_map(config)
    result = api.verify(m, run_id)
    console = _console()
    print_census(console, m, result.census, title="Verification scan")
    console.print(
        f"{'verified' if result.verified else 'NOT verified'}: {result.left:,} violating records "
        f"of {', '.join(result.scope)}"
    )
    raise typer.Exit(EXIT_OK if result.verified else EXIT_VIOLATIONS)


@app.command()
def demo(
    directory: Path = typer.Option(Path("demo"), "--dir", help="Folder for the demo fleet."),
    users: int = typer.Option(3000, "--users", min=10, help="How many users the app has."),
    seed: int = typer.Option(2019, "--seed", help="Random seed (the fleet is deterministic)."),
    media: bool = typer.Option(
        True, "--media/--no-media", help="Videos and avatars as files in local folders."
    ),
) -> None:
    """Build the demo fleet of a short-video app, show its census, bring the data home."""
    from domicile.datamap import load_map
    from domicile.demo import build_demo
    from domicile.render import print_census
    from domicile.report import report_data, write_report
    from domicile.run.executor import RunOptions

    console = _console()
    console.print(f"building the demo fleet in {directory} ({users:,} users) ...")
    path = build_demo(
        directory, users=users, seed=seed, media=media, progress=lambda s: console.print(f"  {s}")
    )
    console.print(f"data map written to {path}")
    m = load_map(path)
    result = _execute(console, m, _journal(m), RunOptions(workers=2), None)
    print_census(console, m, result.after, title="Census after")
    console.print(f"run {result.run_id}: {result.status} in {result.seconds:.1f}s")
    journal = _journal(m)
    report_path = write_report(
        path.parent / "report.html", report_data(m, journal, journal.engine, result.run_id)
    )
    console.print(f"report written to {report_path}")
    console.print(
        f"next: domicile verify {result.run_id} -c {path}   (or status, audit verify, report)"
    )
    raise typer.Exit(EXIT_OK if result.status == "done" else EXIT_INCOMPLETE)


@app.command()
def report(
    run_id: str | None = typer.Argument(None, help="The run (default: the latest)."),
    config: Path = ConfigOpt,
    output: Path = typer.Option(Path("report.html"), "-o", "--output", help="The HTML file."),
    as_json: bool = typer.Option(False, "--json", help="Print the report's data as JSON."),
) -> None:
    """The residency report of a run: one self-contained HTML file an auditor can read."""
    from domicile.datamap import load_map
    from domicile.report import report_data, write_report

    m = load_map(config)
    journal = _journal(m)
    data = report_data(m, journal, journal.engine, run_id)
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        return
    path = write_report(output, data)
    _console().print(f"report written to {path}")


def run_cli(argv: list[str] | None = None) -> int:
    """Run the command line with *argv*; return the exit code (errors printed, never raised)."""
    try:
        # standalone mode: Typer handles usage errors (exit 2) and ends with SystemExit
        app(args=argv, prog_name="domicile")
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (EXIT_OK if code is None else 1)
    except DomicileError as exc:
        from rich.markup import escape

        _err_console().print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        return exit_code_for(exc)
    return EXIT_OK


def main() -> None:
    """Console-script entry point."""
    sys.exit(run_cli())
