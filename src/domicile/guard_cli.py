"""``domicile guard install|status|remove`` and ``domicile watch``: thin shells over the library.

Imported by :mod:`domicile.cli` when the command line starts, so it imports
only Typer at module level; each command imports what it uses.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

guard_app = typer.Typer(
    help="The write guard: triggers at forbidden stores refusing rows of subjects moved home.",
    no_args_is_help=True,
)

ConfigOpt = typer.Option(Path("domicile.yaml"), "-c", "--config", help="The data map.")
JurisOpt = typer.Option(
    None, "-j", "--jurisdiction", help="Limit to these jurisdictions (repeatable)."
)


def _print(text: str) -> None:
    from rich.console import Console
    from rich.markup import escape

    Console(highlight=False, soft_wrap=True).print(escape(text))


@guard_app.command("install")
def install(config: Path = ConfigOpt, jurisdiction: list[str] | None = JurisOpt) -> None:
    """Install (or refresh) the guard in every store the jurisdictions' rules forbid."""
    from domicile import api

    stores = api.guard_install(config, jurisdiction)
    if not stores:
        _print("no store is forbidden by these jurisdictions' rules: nothing to guard")
    for s in stores:
        kept = "salted hashes" if s.hashed else "plain ids"
        _print(
            f"{s.store}: guarded for {', '.join(s.jurisdictions)}: {len(s.tables)} tables, "
            f"{len(s.triggers)} triggers, {s.refused:,} subjects ({kept})"
        )


@guard_app.command("status")
def status(
    config: Path = ConfigOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the guard of every store as JSON."),
) -> None:
    """What is installed where."""
    from domicile import api

    stores = api.guard_status(config)
    if as_json:
        sys.stdout.write(json.dumps([s.to_json() for s in stores], indent=2) + "\n")
        return
    for s in stores:
        if s.installed:
            kept = "salted hashes" if s.hashed else "plain ids"
            _print(
                f"{s.store}: guarded for {', '.join(s.jurisdictions)} since {s.refreshed_at}: "
                f"{len(s.tables)} tables ({', '.join(s.tables)}), {len(s.triggers)} triggers, "
                f"{s.refused:,} guarded subjects ({kept})"
            )
        elif s.forbidden_for:
            _print(f"{s.store}: not guarded (forbidden for {', '.join(s.forbidden_for)})")
        else:
            _print(f"{s.store}: not guarded (no rule forbids it)")
        for note in s.notes:
            if s.installed:
                _print(f"  note: {note}")


@guard_app.command("remove")
def remove(config: Path = ConfigOpt, jurisdiction: list[str] | None = JurisOpt) -> None:
    """Remove the guard (of these jurisdictions); a store left unguarded is as before."""
    from domicile import api

    changed = api.guard_remove(config, jurisdiction)
    _print(f"guard removed from {', '.join(changed)}" if changed else "no guard was installed")


def watch(
    config: Path = ConfigOpt,
    every: str = typer.Option("10m", "--every", help="Time between rounds: 30s, 10m, 1h."),
    webhook: str | None = typer.Option(
        None, "--webhook", help="POST a JSON alert here on new violations."
    ),
    rounds: int | None = typer.Option(None, "--rounds", min=1, help="Stop after N rounds."),
) -> None:
    """The drift watch: a census every interval; new violations are logged and POSTed."""
    import logging

    from domicile import api
    from domicile.watch import RoundResult, WatchOptions, parse_every

    logging.basicConfig(stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("domicile.watch").setLevel(logging.INFO)
    options = WatchOptions(every=parse_every(every), webhook=webhook, rounds=rounds)

    def show(r: RoundResult) -> None:
        if r.error is not None:
            _print(f"round {r.round}: census failed: {r.error.splitlines()[0]}")
            return
        sent = {None: "", True: "; alert sent", False: "; alert NOT delivered"}[r.alerted]
        _print(
            f"round {r.round} ({r.seconds:.1f}s): {r.violations:,} violating records, "
            f"{r.conflicts:,} conflicts, {len(r.new)} cells with new drift{sent}"
        )

    done = api.watch(config, options, on_round=show)
    _print(f"watch stopped after {len(done)} rounds")
