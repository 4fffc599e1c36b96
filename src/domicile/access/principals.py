"""Principals: who asks the gateway, with the attributes Cedar judges.

The principals file (``.domicile/principals.json`` beside the map, mode 0600)
holds, per principal, its name, role, employer, country and the SHA-256 of
its bearer token — never the token.  ``domicile principals add`` makes a
token of 256 random bits, stores its hash and prints the token once; a lost
token cannot be recovered, only replaced.  A plain SHA-256 is enough: the
token is random, so there is nothing to guess from its hash.

Roles gate the endpoints before any policy runs: ``router`` asks where a
subject's data goes (``/home``, ``/route``), ``reader`` asks for records (and
Cedar then decides per subject), ``auditor`` reads the census, runs and audit
log.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from domicile.access import files
from domicile.countries import normalize_country
from domicile.errors import ConfigError

Role = Literal["router", "reader", "auditor"]
ROLES: tuple[Role, ...] = ("router", "reader", "auditor")

PRINCIPALS_FILE = "principals.json"
TOKEN_PREFIX = "dmc_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: a name and the attributes policies read."""

    name: str
    role: Role
    employer: str | None = None
    country: str | None = None
    via: Literal["token", "jwt", "cli"] = "token"

    def attributes(self) -> dict[str, Any]:
        """The Cedar entity attributes (empty strings for what is not set)."""
        return {
            "name": self.name,
            "role": self.role,
            "employer": self.employer or "",
            "country": self.country or "",
        }


def principals_path(map_path: Path) -> Path:
    """Where the principals file of the map at *map_path* lives."""
    return files.beside(map_path, PRINCIPALS_FILE)


def token_hash(token: str) -> str:
    """The hex SHA-256 of a bearer token, as stored."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_name(name: str) -> str:
    """A principal name: letters, digits and ``_.@-``, at most 64 characters."""
    if not _NAME.match(name):
        raise ConfigError(
            f"invalid principal name {name!r}",
            hint="use letters, digits and _ . @ -, starting with a letter or digit (64 at most)",
        )
    return name


def check_role(role: str) -> Role:
    """One of ``router``, ``reader``, ``auditor``."""
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}", hint="roles: " + ", ".join(ROLES))
    return cast(Role, role)


def check_country(country: str | None) -> str | None:
    """A country normalised to ISO alpha-2 (None stays None)."""
    if country is None:
        return None
    code = normalize_country(country)
    if code is None:
        raise ConfigError(f"unknown country {country!r}", hint="use an ISO 3166-1 code such as US")
    return code


def _empty() -> dict[str, Any]:
    return {"version": 1, "principals": []}


def _entry_principal(entry: Any, path: Path) -> tuple[str, Principal]:
    if not isinstance(entry, dict) or not isinstance(entry.get("token_sha256"), str):
        raise ConfigError("a principal entry lacks its token hash", where=str(path))
    try:
        principal = Principal(
            name=check_name(str(entry["name"])),
            role=check_role(str(entry["role"])),
            employer=entry.get("employer") or None,
            country=entry.get("country") or None,
        )
    except KeyError as exc:
        raise ConfigError(f"a principal entry lacks {exc.args[0]!r}", where=str(path)) from None
    return entry["token_sha256"], principal


def add_principal(
    map_path: Path,
    name: str,
    role: str,
    *,
    employer: str | None = None,
    country: str | None = None,
) -> tuple[Principal, str]:
    """Add a principal with a new token; return it and the token (shown once, never stored)."""
    principal = Principal(
        check_name(name), check_role(role), employer or None, check_country(country)
    )
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    path = principals_path(map_path)
    with files.editing(path, "principals", _empty) as data:
        entries = data.setdefault("principals", [])
        if any(isinstance(e, dict) and e.get("name") == name for e in entries):
            raise ConfigError(
                f"principal {name!r} exists already",
                where=str(path),
                hint=f"`domicile principals remove {name}` first to give it a new token",
            )
        entries.append(
            {
                "name": principal.name,
                "role": principal.role,
                "employer": principal.employer,
                "country": principal.country,
                "token_sha256": token_hash(token),
                "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            }
        )
    return principal, token


def remove_principal(map_path: Path, name: str) -> None:
    """Remove a principal (its token stops working at once)."""
    path = principals_path(map_path)
    with files.editing(path, "principals", _empty) as data:
        entries = data.get("principals", [])
        kept = [e for e in entries if not (isinstance(e, dict) and e.get("name") == name)]
        if len(kept) == len(entries):
            raise ConfigError(f"no principal named {name!r}", where=str(path))
        data["principals"] = kept


def list_principals(map_path: Path) -> list[Principal]:
    """Every principal in the file (without their token hashes)."""
    path = principals_path(map_path)
    data = files.read_json(path, "principals", _empty)
    return [_entry_principal(e, path)[1] for e in data.get("principals", [])]


class PrincipalDirectory:
    """The principals file by token hash, reloaded when the file changes."""

    def __init__(self, map_path: Path):
        self.path = principals_path(map_path)
        self._lock = threading.Lock()
        self._version: tuple[int, int, int] | bool | None = False  # False: never read
        self._by_hash: dict[str, Principal] = {}
        self._by_name: dict[str, Principal] = {}

    def _current(self) -> tuple[dict[str, Principal], dict[str, Principal]]:
        version = files.version(self.path)
        with self._lock:
            if version != self._version:
                data = files.read_json(self.path, "principals", _empty)
                pairs = [_entry_principal(e, self.path) for e in data.get("principals", [])]
                self._by_hash = dict(pairs)
                self._by_name = {p.name: p for _, p in pairs}
                self._version = version
            return self._by_hash, self._by_name

    def by_token(self, token: str) -> Principal | None:
        """The principal whose token this is, or None."""
        return self._current()[0].get(token_hash(token))

    def by_name(self, name: str) -> Principal | None:
        """The principal of that name, or None."""
        return self._current()[1].get(name)
