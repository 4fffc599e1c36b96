"""``domicile principals`` and ``domicile access``: thin shells over :mod:`domicile.api`.

The main CLI mounts them with ``app.add_typer(principals_app, name="principals")``
and ``app.add_typer(access_app, name="access")``.  Exit codes: 0 ok (allowed),
2 bad input, 6 denied.  Importing this module stays cheap: the library is
imported by the commands.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from domicile.access.errors import EXIT_DENIED

principals_app = typer.Typer(
    help="The gateway's principals: who may ask, with which role (token hashes only).",
    no_args_is_help=True,
)
access_app = typer.Typer(
    help="Access decisions from the command line, and exception tickets.", no_args_is_help=True
)
ticket_app = typer.Typer(
    help="Time-limited exception tickets held server-side.", no_args_is_help=True
)
access_app.add_typer(ticket_app, name="ticket")

ConfigOpt = typer.Option(Path("domicile.yaml"), "-c", "--config", help="The data map.")


@principals_app.command("add")
def principals_add(
    name: str = typer.Argument(..., help="The principal's name."),
    role: str = typer.Option(..., "--role", help="router | reader | auditor"),
    employer: str | None = typer.Option(None, "--employer", help="Whom the principal works for."),
    country: str | None = typer.Option(None, "--country", help="Where the principal is (ISO)."),
    config: Path = ConfigOpt,
) -> None:
    """Add a principal; its bearer token is printed once, as the last line."""
    from domicile import api

    principal, token = api.add_principal(config, name, role, employer=employer, country=country)
    attrs = ", ".join(
        f"{k} {v}"
        for k, v in (("employer", principal.employer), ("country", principal.country))
        if v
    )
    typer.echo(
        f"added principal {principal.name} (role {principal.role}{', ' + attrs if attrs else ''})"
    )
    typer.echo("its token, shown this once (only its hash is kept):", err=True)
    typer.echo(token)


@principals_app.command("list")
def principals_list(
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    config: Path = ConfigOpt,
) -> None:
    """The principals (never their tokens)."""
    from domicile import api

    found = api.principals(config)
    if as_json:
        rows = [
            {"name": p.name, "role": p.role, "employer": p.employer, "country": p.country}
            for p in found
        ]
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    for p in found:
        typer.echo(f"{p.name:<24} {p.role:<8} {p.employer or '-':<16} {p.country or '-'}")


@principals_app.command("remove")
def principals_remove(
    name: str = typer.Argument(..., help="The principal's name."), config: Path = ConfigOpt
) -> None:
    """Remove a principal; its token stops working at once."""
    from domicile import api

    api.remove_principal(config, name)
    typer.echo(f"removed principal {name}")


@access_app.command("check")
def access_check(
    principal: str = typer.Option(..., "--principal", help="A principal of the principals file."),
    subject: str = typer.Option(..., "--subject", help="The subject id."),
    dataset: str = typer.Option(..., "--dataset", help="The dataset."),
    ticket: str | None = typer.Option(None, "--ticket", help="An exception ticket's id."),
    config: Path = ConfigOpt,
) -> None:
    """Would the gateway let PRINCIPAL read SUBJECT's DATASET? Exit 0 allow, 6 deny (logged)."""
    from domicile import api

    decision = api.access_check(config, principal, subject, dataset, ticket)
    verdict = "allow" if decision.allowed else "deny"
    typer.echo(f"{verdict}: {decision.reason} (audit entry {decision.audit_index})")
    raise typer.Exit(0 if decision.allowed else EXIT_DENIED)


@ticket_app.command("add")
def ticket_add(
    principal: str = typer.Option(..., "--principal", help="Who may use the ticket."),
    approver: str = typer.Option(..., "--approver", help="Who approved it."),
    reason: str = typer.Option(..., "--reason", help="Why."),
    expires: str = typer.Option(..., "--expires", help="ISO date or time, or 8h, 3d, 90m."),
    dataset: list[str] | None = typer.Option(None, "--dataset", help="Only these datasets."),
    jurisdiction: list[str] | None = typer.Option(
        None, "--jurisdiction", "-j", help="Only these jurisdictions' subjects."
    ),
    subject: list[str] | None = typer.Option(None, "--subject", help="Only these subjects."),
    config: Path = ConfigOpt,
) -> None:
    """Issue a ticket; its id (what a request names) is printed as the last line."""
    from domicile import api
    from domicile.access.tickets import parse_expiry

    t = api.add_ticket(
        config,
        principal=principal,
        approver=approver,
        reason=reason,
        expires=parse_expiry(expires),
        datasets=dataset or (),
        jurisdictions=jurisdiction or (),
        subjects=subject or (),
    )
    typer.echo(
        f"ticket for {t.principal}, approved by {t.approver}, expires {t.expires.isoformat()}"
    )
    typer.echo(t.id)


@ticket_app.command("list")
def ticket_list(
    as_json: bool = typer.Option(False, "--json", help="Print JSON."), config: Path = ConfigOpt
) -> None:
    """Every ticket: who, approved by whom, scope, expiry, revoked or not."""
    import datetime as dt

    from domicile import api

    found = api.tickets(config)
    if as_json:
        sys.stdout.write(json.dumps([t.to_json() for t in found], indent=2) + "\n")
        return
    now = dt.datetime.now(dt.UTC)
    for t in found:
        state = "revoked" if t.revoked else ("expired" if t.expired(now) else "active")
        scope = "; ".join(
            f"{label} {', '.join(v)}"
            for label, v in (("datasets", t.datasets), ("jurisdictions", t.jurisdictions))
            if v
        )
        if t.subjects:
            scope += ("; " if scope else "") + f"{len(t.subjects)} subjects"
        typer.echo(
            f"{t.id}  {state:<7}  {t.principal:<16} by {t.approver:<16} "
            f"until {t.expires.isoformat(timespec='minutes')}  {scope or 'any record'}  "
            f"({t.reason})"
        )


@ticket_app.command("revoke")
def ticket_revoke(
    ticket_id: str = typer.Argument(..., help="The ticket's id."), config: Path = ConfigOpt
) -> None:
    """Revoke a ticket; it stops counting at once."""
    from domicile import api

    t = api.revoke_ticket(config, ticket_id)
    typer.echo(f"revoked {t.id}")
