"""Human approval, decided purely: which intents need the owner, and which decisions count.

No I/O, no clock, no key store: the worker passes `now`, the identity view and the approval
key's bytes in. Three questions are answered here and nowhere else:

* which intents need approval: the bundle's approval/*.cedar (gatepass.core.policy)
* `judge(...)` - what does one approval decision event do to its pending request?
* `judge_timeout(...)` - has a pending request run out of time?

The one-time secret. Each approver of each request has a code,
`approval_code(key, request_id, approver)` (an HMAC under the deployment's approval key), sent
only through that approver's channel (webhook, inbox, the approval page's link). Decision
events never carry the code: they carry `decision_proof(code, ...)`, an HMAC of the decision
itself under the code, so a reader of the decisions topic can neither reuse a code nor flip a
decision. The proof is compared in constant time. A code is good for one decision on one
request: the first decision that passes every check finalizes the request, and anything
after it is `approval_replayed`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from gatepass.core.model import (
    AgentRecord,
    AgentStatus,
    Decision,
    Intent,
    PrincipalRecord,
    PrincipalStatus,
    Reason,
)
from gatepass.errors import PolicyError

__all__ = [
    "ApprovalDecision",
    "ApprovalRules",
    "Judgement",
    "PendingApproval",
    "approvable",
    "approval_code",
    "decision_proof",
    "judge",
    "judge_timeout",
    "proof_valid",
]

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
_CODE_LABEL = b"gatepass-approval-code"
_PROOF_LABEL = "gatepass-approval-decision"


class _Identity(Protocol):
    def agent(self, agent_id: str) -> AgentRecord | None: ...
    def principal(self, principal_id: str,
                  now: datetime | None = None) -> PrincipalRecord | None: ...


# ---- who may approve ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ApprovalRules:
    """Who may approve for an owner: the owner and their delegates (`[approval.delegates]`
    of the bundle's gatepass.toml). Which intents need approval is Cedar's to say
    (approval/*.cedar, see gatepass.core.policy)."""

    delegates: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def approvers(self, owner: str) -> tuple[str, ...]:
        """Who may approve for this owner: the owner first, then their delegates."""
        return (owner, *(d for d in self.delegates.get(owner, ()) if d != owner))

    @classmethod
    def from_mapping(cls, doc: Any, *, source: str) -> ApprovalRules:
        """The `[approval]` table: `delegates."owner@x" = ["delegate@x", ...]`."""
        if not isinstance(doc, Mapping):
            raise PolicyError("approval must be a table", file=source)
        unknown = set(doc) - {"delegates"}
        if unknown:
            raise PolicyError(f"approval: unknown keys {sorted(unknown)}", file=source)
        delegates_doc = doc.get("delegates", {})
        if not isinstance(delegates_doc, Mapping):
            raise PolicyError("approval.delegates must be a table", file=source)
        delegates: dict[str, tuple[str, ...]] = {}
        for owner, names in delegates_doc.items():
            if not _ID_RE.match(owner) or not isinstance(names, list) or not all(
                    isinstance(n, str) and _ID_RE.match(n) for n in names):
                raise PolicyError(f"approval.delegates.{owner} must be a list of principal "
                                  "ids", file=source)
            delegates[owner] = tuple(names)
        return cls(delegates=delegates)


# ---- the one-time secret ---------------------------------------------------------------------
def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def approval_code(key: bytes, request_id: str, approver: str) -> str:
    """The one-time secret of `approver` for one request (22 URL-safe characters)."""
    if len(key) < 32:
        raise ValueError("approval key must be at least 32 bytes")
    msg = b"\x00".join((_CODE_LABEL, request_id.encode(), approver.encode()))
    return _b64(hmac.new(key, msg, hashlib.sha256).digest()[:16])


def decision_proof(code: str, *, request_id: str, intent_id: str, agent_id: str, approver: str,
                   approve: bool, decision_id: str) -> str:
    """What a decision event carries instead of the code: an HMAC of the decision under it."""
    msg = "\x00".join((_PROOF_LABEL, request_id, intent_id, agent_id, approver,
                       "approve" if approve else "deny", decision_id))
    return _b64(hmac.new(code.encode(), msg.encode(), hashlib.sha256).digest())


@dataclass(frozen=True, slots=True, kw_only=True)
class ApprovalDecision:
    """One approver's answer to one request, as it arrives on the decisions topic."""

    decision_id: str
    request_id: str
    intent_id: str
    agent_id: str
    approver: str
    approve: bool
    proof: str = field(repr=False)
    channel: str = ""
    submitted_at: datetime | None = None  # as the sender claims; never trusted for expiry


def proof_valid(key: bytes, decision: ApprovalDecision) -> bool:
    """Whether the decision was made with the approver's code (constant-time comparison)."""
    expected = decision_proof(
        approval_code(key, decision.request_id, decision.approver),
        request_id=decision.request_id, intent_id=decision.intent_id,
        agent_id=decision.agent_id, approver=decision.approver, approve=decision.approve,
        decision_id=decision.decision_id)
    return hmac.compare_digest(expected.encode(), decision.proof.encode("utf-8", "replace"))


# ---- judging decisions -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class PendingApproval:
    """A request waiting for its owner, as kept in the worker's changelog-backed state."""

    request_id: str
    intent: Intent
    owner: str
    approvers: tuple[str, ...]
    requested_at: datetime
    expires_at: datetime
    why: tuple[str, ...]
    policy_version: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Finalized:
    """What is remembered of a request after its final verdict."""

    decision: Decision
    decision_id: str | None  # the approval decision that finalized it (None: it expired)


@dataclass(frozen=True, slots=True, kw_only=True)
class Judgement:
    """What one event does. `final` set: the request ends with that verdict now. `alert` set:
    the SOC is told (a decision event that failed a check). `repeat`: a redelivery of the
    decision that already finalized the request (send the same final verdict again)."""

    final: Decision | None = None
    reason: Reason | None = None  # of the final verdict
    alert: Reason | None = None
    detail: str = ""
    repeat: bool = False


def judge(pending: PendingApproval | None, finalized: Finalized | None,
          decision: ApprovalDecision, *, identity: _Identity, rules: ApprovalRules,
          key: bytes, now: datetime) -> Judgement:
    """Every check of one decision event; the first decision that passes them all wins.

    A decision that fails a check changes nothing (the request stays pending until it is
    decided validly or expires) and raises an alert - except one arriving after the expiry,
    which also ends the request as `approval_expired` if the timer has not yet.
    """
    try:
        return _judge(pending, finalized, decision, identity=identity, rules=rules, key=key,
                      now=now)
    except Exception as exc:  # a failing check must never approve
        return Judgement(alert=Reason.INTERNAL_ERROR,
                         detail=f"approval check failed: {type(exc).__name__}")


def _judge(pending: PendingApproval | None, finalized: Finalized | None,
           decision: ApprovalDecision, *, identity: _Identity, rules: ApprovalRules,
           key: bytes, now: datetime) -> Judgement:
    if pending is None:
        if finalized is not None:
            if finalized.decision_id is not None and \
                    finalized.decision_id == decision.decision_id:
                return Judgement(repeat=True, detail="redelivered decision")
            approver = identity.principal(decision.approver, now)
            if approver is None or approver.status is not PrincipalStatus.ACTIVE:
                # Tell the SOC the most telling thing: someone who is gone tried to approve.
                return Judgement(alert=Reason.APPROVER_INACTIVE,
                                 detail=f"approver {decision.approver!r} is "
                                        + (approver.status.value if approver else "unknown")
                                        + " (and the request was already decided)")
            return Judgement(alert=Reason.APPROVAL_REPLAYED,
                             detail="the request was already decided: the first decision won")
        return Judgement(alert=Reason.APPROVAL_UNKNOWN,
                         detail="no approval request is pending for this intent")
    if (decision.request_id != pending.request_id
            or decision.intent_id != pending.intent.intent_id
            or decision.agent_id != pending.intent.agent_id):
        return Judgement(alert=Reason.APPROVAL_FORGED,
                         detail="the decision names another request, intent or agent")
    if now >= pending.expires_at:
        return Judgement(final=Decision.DENY, reason=Reason.APPROVAL_EXPIRED,
                         alert=Reason.APPROVAL_EXPIRED,
                         detail=f"decision arrived after the request expired at "
                                f"{pending.expires_at.isoformat()}")
    if not proof_valid(key, decision):
        return Judgement(alert=Reason.APPROVAL_FORGED,
                         detail=f"the approval code of {decision.approver!r} does not match")
    agent = identity.agent(pending.intent.agent_id)
    owner_id = agent.owner if agent is not None else None
    # Who may approve is read now, not at request time: an agent handed to a new owner is
    # approved by the new owner, and a delegate removed from the policy can no longer.
    allowed = rules.approvers(owner_id) if owner_id else ()
    if decision.approver not in allowed:
        return Judgement(alert=Reason.APPROVAL_FORGED,
                         detail=f"{decision.approver!r} is neither the agent's owner nor a "
                                "delegate of the owner")
    approver = identity.principal(decision.approver, now)
    if approver is None or approver.status is not PrincipalStatus.ACTIVE:
        return Judgement(alert=Reason.APPROVER_INACTIVE,
                         detail=f"approver {decision.approver!r} is "
                                + (approver.status.value if approver else "unknown"))
    if agent is None or agent.status is not AgentStatus.ACTIVE:
        return Judgement(alert=Reason.AGENT_INACTIVE,
                         detail="the agent is " + (agent.status.value if agent else "unknown"))
    owner = identity.principal(owner_id, now) if owner_id else None
    if owner is None or owner.status is not PrincipalStatus.ACTIVE:
        return Judgement(alert=Reason.OWNER_INACTIVE,
                         detail=f"owner {owner_id!r} is "
                                + (owner.status.value if owner else "unknown"))
    if decision.approve:
        return Judgement(final=Decision.ALLOW, reason=Reason.APPROVED,
                         detail=f"approved by {decision.approver}")
    return Judgement(final=Decision.DENY, reason=Reason.APPROVAL_DENIED,
                     detail=f"denied by {decision.approver}")


def judge_timeout(pending: PendingApproval | None, *, now: datetime,
                  identity: _Identity | None = None) -> Judgement:
    """The processor's own timer: a pending request ends as `approval_expired` once due, and
    at once as `agent_inactive` / `owner_inactive` when nobody can approve it any more (the
    agent was suspended, or its owner left: a delegate cannot approve for a departed owner)."""
    if pending is None:
        return Judgement()
    if now >= pending.expires_at:
        return Judgement(final=Decision.DENY, reason=Reason.APPROVAL_EXPIRED,
                         detail=f"no valid decision before {pending.expires_at.isoformat()}")
    if identity is None:
        return Judgement()
    try:
        return _still_approvable(pending, identity, now)
    except Exception as exc:  # an erroring lookup keeps it pending; the expiry still ends it
        return Judgement(detail=f"approval state check failed: {type(exc).__name__}")


def approvable(pending_agent: str, identity: _Identity, now: datetime | None = None) -> bool:
    """Whether a request of this agent could still be approved (its agent and owner active)."""
    agent = identity.agent(pending_agent)
    if agent is None or agent.status is not AgentStatus.ACTIVE or not agent.owner:
        return False
    owner = identity.principal(agent.owner, now)
    return owner is not None and owner.status is PrincipalStatus.ACTIVE


def _still_approvable(pending: PendingApproval, identity: _Identity,
                      now: datetime) -> Judgement:
    agent = identity.agent(pending.intent.agent_id)
    if agent is None or agent.status is not AgentStatus.ACTIVE:
        return Judgement(final=Decision.DENY, reason=Reason.AGENT_INACTIVE,
                         detail="the agent is " + (agent.status.value if agent else "unknown")
                                + ": the request can no longer be approved")
    owner = identity.principal(agent.owner, now) if agent.owner else None
    if owner is None or owner.status is not PrincipalStatus.ACTIVE:
        return Judgement(final=Decision.DENY, reason=Reason.OWNER_INACTIVE,
                         detail=f"owner {agent.owner!r} is "
                                + (owner.status.value if owner else "unknown")
                                + ": the request can no longer be approved")
    return Judgement()
