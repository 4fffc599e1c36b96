"""The custodian gateway: credentials, roles, Cedar, tickets and the audit log, in one object.

:class:`Gateway` is what ``domicile serve`` and ``domicile access check``
hold.  Its decision for "may this principal read this subject's dataset":

1. the role gate: only a ``reader`` asks for records (others: denied, 403);
2. the subject: looked up in the directory; the resource Cedar sees carries
   the jurisdiction, its countries, the dataset's home store and that
   store's ``operator`` label as the custodian.  A subject no directory
   holds is judged as ``unknown`` (not restricted, no custodian) — so a
   principal the policy refuses learns nothing about whether it exists;
3. the ticket the request names: looked up in the server's tickets file;
   only a ticket found there (and not revoked) reaches the policy;
4. Cedar decides (default deny, ``forbid`` wins);
5. the decision is appended to the audit log and committed — only then
   does the caller answer.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from typing import Any

from domicile import keys as keystore
from domicile.access.decisions import DecisionLog, decision_event
from domicile.access.errors import BadRequest, NotFound
from domicile.access.policy import Policies, evaluate, load_policies
from domicile.access.principals import Principal, PrincipalDirectory
from domicile.access.subjects import HomeAnswer, record_dataset, subject_home
from domicile.access.tickets import NO_TICKET, TicketBook
from domicile.access.tokens import Authenticator, JwtSettings
from domicile.audit.log import AuditLog, stored_origin
from domicile.fleet import Fleet
from domicile.model import DataMap
from domicile.run.audit_events import deployment_key
from domicile.state import state_engine

UNKNOWN_SUBJECT = "unknown"


@dataclass(frozen=True)
class Decision:
    """One access decision, as logged."""

    allowed: bool
    status: int  # the HTTP status it answers with: 200, 401, 403 (404 after an allow)
    reason: str
    principal: Principal | None
    subject_hash: str | None
    dataset: str | None
    policies: tuple[str, ...] = ()
    audit_index: int | None = None
    sid: Any = None
    answer: HomeAnswer | None = None


class Gateway:
    """Everything the service needs about who may read what, opened once."""

    def __init__(
        self,
        m: DataMap,
        *,
        jwt: JwtSettings | None = None,
        fleet: Fleet | None = None,
        pool_size: int = 5,
    ):
        self.map = m
        self.policies: Policies = load_policies(m.path)  # validated before anything else
        self.principals = PrincipalDirectory(m.path)
        self.authenticator = Authenticator(self.principals, jwt)
        self.tickets = TicketBook(m.path)
        self.fleet = fleet or Fleet(m, pool_size=pool_size)
        self.state = state_engine(m.state, m.base_dir)
        self.hmac_key = deployment_key(m)
        origin = m.audit_origin or stored_origin(self.state) or keystore.default_origin()
        self.audit = AuditLog(self.state, origin)
        self.decisions = DecisionLog(self.audit)

    def close(self) -> None:
        """Flush the decision writer, close the stores."""
        self.decisions.close()
        self.fleet.close()
        self.state.dispose()

    # -- hashing and logging ----------------------------------------------

    def subject_hash(self, subject: Any) -> str:
        """The keyed hash of a subject id: the only form of it the log holds."""
        return keystore.keyed_hash(self.hmac_key, f"subject:{subject}")

    def log(self, decision: Decision, endpoint: str, ticket: str | None = None) -> Decision:
        """Append *decision* to the audit log (committed on return); the decision with its index."""
        p = decision.principal
        index = self.decisions.record(
            decision_event(
                principal=p.name if p else None,
                role=p.role if p else None,
                allowed=decision.allowed,
                status=decision.status,
                policy_set=self.policies.digest,
                subject_hash=decision.subject_hash,
                dataset=decision.dataset,
                reason=decision.reason,
                endpoint=endpoint,
                ticket=ticket,
                policies=decision.policies,
            )
        )
        return dataclasses.replace(decision, audit_index=index)

    def refusal(
        self,
        principal: Principal | None,
        status: int,
        reason: str,
        endpoint: str,
        *,
        subject: str | None = None,
        dataset: str | None = None,
    ) -> Decision:
        """Log a refusal that came before any policy (no or bad credentials, wrong role)."""
        hashed = self.subject_hash(subject) if subject is not None else None
        return self.log(Decision(False, status, reason, principal, hashed, dataset), endpoint)

    # -- the records decision -----------------------------------------------

    def _resource(
        self, sid_text: str, dataset: str
    ) -> tuple[Any, HomeAnswer | None, dict[str, Any]]:
        try:
            sid, answer = subject_home(self.fleet, sid_text)
        except NotFound:
            sid, answer = None, None
        subject = self.subject_hash(sid if sid is not None else sid_text)
        resource: dict[str, Any] = {
            "subject": subject,
            "dataset": dataset,
            "jurisdiction": UNKNOWN_SUBJECT,
            "countries": [],
            "restricted": False,
            "home": "",
            "custodian": "",
        }
        if answer is not None:
            resource["jurisdiction"] = answer.jurisdiction or answer.status
            resource["countries"] = list(answer.countries)
            resource["restricted"] = answer.status == "restricted"
            home = answer.homes.get(dataset, "")
            resource["home"] = home
            resource["custodian"] = self.map.stores[home].labels.get("operator", "") if home else ""
        return sid, answer, resource

    def _ticket_context(
        self, ticket_id: str | None, principal: Principal, now: dt.datetime
    ) -> tuple[dict[str, Any], str]:
        context: dict[str, Any] = {"now": int(now.timestamp()), "has_ticket": False}
        context["ticket"] = dict(NO_TICKET)
        if not ticket_id:
            return context, ""
        ticket = self.tickets.get(ticket_id)
        if ticket is None:
            return context, f"; ticket {ticket_id[:40]!r} is not held by the server (ignored)"
        if ticket.revoked:
            return context, f"; ticket {ticket.id} was revoked (ignored)"
        context["has_ticket"] = True
        context["ticket"] = ticket.context()
        if ticket.principal != principal.name:
            return context, f"; ticket {ticket.id} was issued to another principal"
        if ticket.expired(now):
            return context, f"; ticket {ticket.id} expired {ticket.expires.isoformat()}"
        return context, f"; ticket {ticket.id} (approved by {ticket.approver})"

    def decide_records(
        self,
        principal: Principal,
        subject: str,
        dataset: str,
        ticket: str | None = None,
        *,
        endpoint: str = "GET /v1/subjects/{id}/records",
    ) -> Decision:
        """Decide, log (committed) and return: may *principal* read *subject*'s *dataset*?

        Raises BadRequest for a malformed id or an unknown dataset (logged as a
        refusal with status 422); the caller answers 404 when the decision
        allows but the subject does not exist.
        """
        if principal.role != "reader":
            return self.refusal(
                principal,
                403,
                f"role {principal.role} may not read records (only reader)",
                endpoint,
                subject=subject,
                dataset=dataset,
            )
        try:
            record_dataset(self.map, dataset)
            sid, answer, resource = self._resource(subject, dataset)
        except BadRequest as exc:  # refused before any policy: logged all the same
            self.refusal(principal, 422, exc.message, endpoint, subject=subject, dataset=dataset)
            raise
        now = dt.datetime.now(dt.UTC)
        context, note = self._ticket_context(ticket, principal, now)
        verdict = evaluate(self.policies, principal.attributes(), resource, context)
        if verdict.allowed:
            reason = "permitted by " + ", ".join(verdict.policies)
        elif verdict.policies:
            reason = "forbidden by " + ", ".join(verdict.policies)
        else:
            reason = "no policy permits (default deny)"
        if verdict.errors:
            reason += "; policy errors: " + "; ".join(verdict.errors)[:300]
        decision = Decision(
            verdict.allowed,
            200 if verdict.allowed else 403,
            reason + note,
            principal,
            resource["subject"],
            dataset,
            verdict.policies,
            sid=sid,
            answer=answer,
        )
        return self.log(decision, endpoint, ticket=ticket[:64] if ticket else None)
