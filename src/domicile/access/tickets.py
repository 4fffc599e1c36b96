"""Exception tickets: time-limited access a named person approved, held by the server.

``domicile access ticket add`` writes a ticket to ``.domicile/tickets.json``
beside the map: who may use it (a principal), who approved it and why, when
it expires, and its scope — datasets, jurisdictions and subjects (each empty
for "any"; subjects stored as keyed hashes, so the file holds no ids).  A
request names a ticket by id (``?ticket=tkt_…``); only a ticket found in
this file reaches the policy, so a ticket the caller merely asserts counts
for nothing.  A revoked ticket stays in the file, marked, and is never used.
"""

from __future__ import annotations

import datetime as dt
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domicile.access import files
from domicile.errors import ConfigError

TICKETS_FILE = "tickets.json"
TICKET_PREFIX = "tkt_"


@dataclass(frozen=True)
class Ticket:
    """One exception ticket as stored."""

    id: str
    principal: str
    approver: str
    reason: str
    expires: dt.datetime
    created: dt.datetime
    datasets: tuple[str, ...] = ()
    jurisdictions: tuple[str, ...] = ()
    subjects: tuple[str, ...] = ()  # keyed hashes
    revoked: bool = False

    def expired(self, now: dt.datetime) -> bool:
        """True from the expiry instant on."""
        return now >= self.expires

    def context(self) -> dict[str, Any]:
        """The ``ticket`` record of the Cedar context."""
        return {
            "id": self.id,
            "principal": self.principal,
            "approver": self.approver,
            "expires": int(self.expires.timestamp()),
            "datasets": list(self.datasets),
            "jurisdictions": list(self.jurisdictions),
            "subjects": list(self.subjects),
        }

    def to_json(self) -> dict[str, Any]:
        """The stored form (and ``ticket list --json``)."""
        return {
            "id": self.id,
            "principal": self.principal,
            "approver": self.approver,
            "reason": self.reason,
            "expires": self.expires.isoformat(timespec="seconds"),
            "created": self.created.isoformat(timespec="seconds"),
            "datasets": list(self.datasets),
            "jurisdictions": list(self.jurisdictions),
            "subjects": list(self.subjects),
            "revoked": self.revoked,
        }


NO_TICKET: dict[str, Any] = {
    "id": "",
    "principal": "",
    "approver": "",
    "expires": 0,
    "datasets": [],
    "jurisdictions": [],
    "subjects": [],
}
"""The context's ``ticket`` when the request holds none (``has_ticket`` is false)."""


def tickets_path(map_path: Path) -> Path:
    """Where the tickets file of the map at *map_path* lives."""
    return files.beside(map_path, TICKETS_FILE)


def _empty() -> dict[str, Any]:
    return {"version": 1, "tickets": []}


def _when(value: Any, what: str, path: Path) -> dt.datetime:
    try:
        when = dt.datetime.fromisoformat(str(value))
    except ValueError:
        raise ConfigError(
            f"a ticket's {what} is not an ISO time: {value!r}", where=str(path)
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _from_entry(entry: Any, path: Path) -> Ticket:
    if not isinstance(entry, dict):
        raise ConfigError("a ticket entry is not an object", where=str(path))
    try:
        return Ticket(
            id=str(entry["id"]),
            principal=str(entry["principal"]),
            approver=str(entry["approver"]),
            reason=str(entry.get("reason", "")),
            expires=_when(entry["expires"], "expiry", path),
            created=_when(entry.get("created", entry["expires"]), "creation time", path),
            datasets=tuple(entry.get("datasets") or ()),
            jurisdictions=tuple(entry.get("jurisdictions") or ()),
            subjects=tuple(entry.get("subjects") or ()),
            revoked=bool(entry.get("revoked", False)),
        )
    except KeyError as exc:
        raise ConfigError(f"a ticket entry lacks {exc.args[0]!r}", where=str(path)) from None


def parse_expiry(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """``2026-12-31``, ``2026-12-31T18:00:00+00:00`` or a duration ``8h``, ``3d``, ``90m``."""
    now = now or dt.datetime.now(dt.UTC)
    units = {"m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units and text[:-1].isdigit():
        return now + dt.timedelta(seconds=int(text[:-1]) * units[text[-1]])
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"invalid expiry {text!r}", hint="give an ISO date or time, or a duration: 8h, 3d, 90m"
        ) from None
    if len(text) == 10:  # a date: the ticket counts through that day
        when += dt.timedelta(days=1)
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def add_ticket(
    map_path: Path,
    *,
    principal: str,
    approver: str,
    reason: str,
    expires: dt.datetime,
    datasets: Sequence[str] = (),
    jurisdictions: Sequence[str] = (),
    subject_hashes: Sequence[str] = (),
) -> Ticket:
    """Write a new ticket; return it (its id is what the caller names in a request)."""
    now = dt.datetime.now(dt.UTC)
    if not approver.strip() or not reason.strip():
        raise ConfigError("a ticket needs an approver and a reason")
    if expires <= now:
        raise ConfigError(f"the expiry {expires.isoformat()} is in the past")
    ticket = Ticket(
        id=TICKET_PREFIX + secrets.token_urlsafe(12),
        principal=principal,
        approver=approver.strip(),
        reason=reason.strip(),
        expires=expires,
        created=now,
        datasets=tuple(datasets),
        jurisdictions=tuple(jurisdictions),
        subjects=tuple(subject_hashes),
    )
    with files.editing(tickets_path(map_path), "tickets", _empty) as data:
        data.setdefault("tickets", []).append(ticket.to_json())
    return ticket


def revoke_ticket(map_path: Path, ticket_id: str) -> Ticket:
    """Mark a ticket revoked (it stops counting at once); return it."""
    path = tickets_path(map_path)
    with files.editing(path, "tickets", _empty) as data:
        for entry in data.get("tickets", []):
            if isinstance(entry, dict) and entry.get("id") == ticket_id:
                entry["revoked"] = True
                return _from_entry(entry, path)
    raise ConfigError(f"no ticket {ticket_id!r}", where=str(path), hint="`access ticket list`")


def list_tickets(map_path: Path) -> list[Ticket]:
    """Every ticket in the file, oldest first."""
    path = tickets_path(map_path)
    return [
        _from_entry(e, path) for e in files.read_json(path, "tickets", _empty).get("tickets", [])
    ]


class TicketBook:
    """The tickets file by id, reloaded when the file changes."""

    def __init__(self, map_path: Path):
        self.path = tickets_path(map_path)
        self._lock = threading.Lock()
        self._version: tuple[int, int, int] | bool | None = False
        self._by_id: dict[str, Ticket] = {}

    def get(self, ticket_id: str) -> Ticket | None:
        """The ticket with that id, or None when the server holds none."""
        version = files.version(self.path)
        with self._lock:
            if version != self._version:
                data = files.read_json(self.path, "tickets", _empty)
                self._by_id = {
                    t.id: t for t in (_from_entry(e, self.path) for e in data.get("tickets", []))
                }
                self._version = version
            return self._by_id.get(ticket_id)
