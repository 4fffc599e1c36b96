"""Cedar policies: ``policies.cedar`` beside the map, validated once, evaluated per request.

The request Cedar sees for "may *principal* read *subject*'s *dataset*":

- principal ``Domicile::Principal::"<name>"`` with ``name``, ``role``,
  ``employer``, ``country`` (empty strings when not set);
- action ``Domicile::Action::"read"``;
- resource ``Domicile::Subject::"<keyed hash of the subject id>"`` with
  ``subject`` (that hash), ``dataset``, ``jurisdiction`` (a name,
  ``unrestricted`` or ``unresolved``), ``countries`` (the jurisdiction's,
  a set), ``restricted`` (bool), ``home`` (the dataset's home store) and
  ``custodian`` (that store's ``operator`` label);
- context ``now`` (Unix seconds), ``has_ticket`` and ``ticket`` (``id``,
  ``principal``, ``approver``, ``expires`` in Unix seconds, and the sets
  ``datasets``, ``jurisdictions``, ``subjects`` — empty for "any"), filled
  only from a ticket the server holds.

Cedar denies by default and a matching ``forbid`` overrides every
``permit``.  Without a ``policies.cedar`` the shipped :data:`EXAMPLE_POLICY`
applies.  cedarpy reports a syntax error without its place, so
:func:`load_policies` finds the line itself: it parses the file statement
by statement, then the failing statement line by line.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domicile.errors import ConfigError

POLICY_FILE = "policies.cedar"

EXAMPLE_POLICY = """\
// domicile's example policy: the custodian's own staff, in the jurisdiction,
// read its subjects' records; anyone else only with a ticket the server holds.

// The custodian of a subject's data is the `operator` label of the dataset's
// home store; its staff must also be in one of the jurisdiction's countries.
@id("custodian-staff-in-jurisdiction")
permit (principal, action == Domicile::Action::"read", resource)
when {
  resource.restricted &&
  principal.employer != "" &&
  principal.employer == resource.custodian &&
  resource.countries.contains(principal.country)
};

// A time-limited exception: a ticket held server-side, issued to this
// principal, not expired, and whose scope covers the request.
@id("exception-ticket")
permit (principal, action == Domicile::Action::"read", resource)
when {
  context.has_ticket &&
  context.ticket.principal == principal.name &&
  context.ticket.expires > context.now &&
  (context.ticket.datasets.isEmpty() ||
   context.ticket.datasets.contains(resource.dataset)) &&
  (context.ticket.jurisdictions.isEmpty() ||
   context.ticket.jurisdictions.contains(resource.jurisdiction)) &&
  (context.ticket.subjects.isEmpty() ||
   context.ticket.subjects.contains(resource.subject))
};
"""

PRINCIPAL_TYPE = "Domicile::Principal"
SUBJECT_TYPE = "Domicile::Subject"
READ = {"type": "Domicile::Action", "id": "read"}

SCHEMA = """\
namespace Domicile {
  entity Principal = { name: String, role: String, employer: String, country: String };
  entity Subject = {
    subject: String, dataset: String, jurisdiction: String, countries: Set<String>,
    restricted: Bool, home: String, custodian: String
  };
  type Ticket = {
    id: String, principal: String, approver: String, expires: Long,
    datasets: Set<String>, jurisdictions: Set<String>, subjects: Set<String>
  };
  action read appliesTo {
    principal: Principal, resource: Subject,
    context: { now: Long, has_ticket: Bool, ticket: Ticket }
  };
}
"""
"""What a policy may read (see the module docstring); policies are validated against it."""


@dataclass(frozen=True)
class Policies:
    """A validated policy set: its text, where it came from, its digest, its policy ids."""

    text: str
    source: str  # the file, or "the shipped example policy"
    digest: str  # hex SHA-256 of the text: which policies decided, in every audit entry
    names: dict[str, str]  # cedarpy's policy id ("policy0") -> its @id annotation, if any
    handle: Any  # cedarpy.PolicySet

    def name(self, policy_id: str) -> str:
        """A policy's ``@id`` (or cedarpy's own id when it has none)."""
        return self.names.get(policy_id, policy_id)


@dataclass(frozen=True)
class Verdict:
    """What Cedar said: allowed or not, and the policies that decided."""

    allowed: bool
    policies: tuple[str, ...]
    errors: tuple[str, ...] = ()


def policies_path(map_path: Path) -> Path:
    """``policies.cedar`` beside the map."""
    return map_path.parent / POLICY_FILE


def _statements(text: str) -> list[tuple[int, str]]:
    """Top-level statements (up to each ``;`` outside strings and comments), by first line."""
    out: list[tuple[int, str]] = []
    start, i, line, n = 0, 0, 1, len(text)
    first: int | None = None  # the line of the statement's first token
    in_string = False
    while i < n:
        ch = text[i]
        if in_string:
            if ch == "\\" and i + 1 < n and text[i + 1] != "\n":
                i += 1
            elif ch == '"':
                in_string = False
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        else:
            if first is None and not ch.isspace():
                first = line
            if ch == '"':
                in_string = True
            elif ch == ";":
                out.append((first or line, text[start : i + 1]))
                start, first = i + 1, None
        if ch == "\n":
            line += 1
        i += 1
    if first is not None:
        out.append((first, text[start:]))
    return out


def _parse_error(text: str) -> str | None:
    import cedarpy

    try:
        cedarpy.PolicySet.from_str(text)
    except ValueError as exc:
        return str(exc) or "syntax error"
    return None


def _error_line(statement: str, first_line: int, message: str) -> int:
    """The line of a statement where parsing stops failing only for want of more input."""
    lines = statement.split("\n")
    # Offsets of the statement's lines within the file: its text starts after the
    # previous ';', so blank lines and comments before `first_line` come first.
    lead = 0
    while lead < len(lines) and (not lines[lead].strip() or lines[lead].lstrip().startswith("//")):
        lead += 1
    eof = _parse_error("permit (")  # the parser's message for input that stops early
    for k in range(lead, len(lines)):
        error = _parse_error("\n".join(lines[lead : k + 1]))
        if error is not None and error != eof and error == message:
            return first_line + (k - lead)
    return first_line


def load_policies(map_path: Path) -> Policies:
    """The map's policies (or the shipped example), parsed; a syntax error names its line."""

    path = policies_path(map_path)
    if path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the policies: {exc}", where=str(path)) from None
        source = str(path)
    else:
        text, source = EXAMPLE_POLICY, "the shipped example policy"
    return parse_policies(text, source, path if path.exists() else None)


def parse_policies(text: str, source: str, path: Path | None = None) -> Policies:
    """Parse and validate *text*; ConfigError with ``file:line`` on a syntax error."""
    import cedarpy

    where = str(path) if path is not None else source
    statements = _statements(text)
    for first_line, statement in statements:
        message = _parse_error(statement)
        if message is not None:
            line = _error_line(statement, first_line, message)
            raise ConfigError(
                f"Cedar syntax error: {message}",
                where=f"{where}:{line}",
                hint="see https://docs.cedarpolicy.com/ for the policy language",
            )
    checked = cedarpy.validate_policies(text, SCHEMA)
    if not checked.validation_passed:
        error = checked.errors[0]
        number = error.policy_id.removeprefix("policy")
        policy_line = (
            statements[int(number)][0]
            if number.isdigit() and int(number) < len(statements)
            else None
        )
        raise ConfigError(
            f"Cedar policy does not fit what the gateway provides: {error.error}",
            where=f"{where}:{policy_line}" if policy_line else where,
            hint="principal: name, role, employer, country; resource: subject, dataset, "
            "jurisdiction, countries, restricted, home, custodian; "
            "context: now, has_ticket, ticket",
        )
    try:
        handle = cedarpy.PolicySet.from_str(text)
        parsed = json.loads(cedarpy.policies_to_json_str(text))
    except ValueError as exc:  # a whole-file error (two policies with one @id, say)
        raise ConfigError(f"Cedar policies do not parse: {exc}", where=where) from None
    names: dict[str, str] = {}
    for pid, body in (parsed.get("staticPolicies") or {}).items():
        annotations = body.get("annotations") or {}
        if isinstance(annotations.get("id"), str):
            names[pid] = annotations["id"]
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return Policies(text, source, digest, names, handle)


def evaluate(
    policies: Policies,
    principal: dict[str, Any],
    resource: dict[str, Any],
    context: dict[str, Any],
) -> Verdict:
    """Ask Cedar whether the principal (attributes) may read the resource (attributes)."""
    import cedarpy

    p_uid = {"type": PRINCIPAL_TYPE, "id": principal["name"]}
    r_uid = {"type": SUBJECT_TYPE, "id": resource["subject"]}
    entities = [
        {"uid": p_uid, "attrs": principal, "parents": []},
        {"uid": r_uid, "attrs": resource, "parents": []},
    ]
    request = {"principal": p_uid, "action": READ, "resource": r_uid, "context": context}
    result = cedarpy.is_authorized(request, policies.handle, entities)
    reasons = tuple(policies.name(p) for p in result.diagnostics.reasons)
    errors = tuple(str(e) for e in result.diagnostics.errors)
    return Verdict(bool(result.allowed), reasons, errors)
