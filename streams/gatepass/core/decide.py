"""The decision: one pure function of the intent, the identity state, the policy and the clock.

No Kafka, no I/O, no clock of its own: the worker passes `now` in. Every path that is not a
clean ALLOW is a DENY with stable reason codes; an exception anywhere is `internal_error`.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Protocol

from gatepass.core.model import (
    AgentRecord,
    AgentStatus,
    Decision,
    DecisionResult,
    IdentityFacts,
    Intent,
    PrincipalRecord,
    PrincipalStatus,
    Reason,
)
from gatepass.core.policy import CedarPolicy, Evaluation
from gatepass.core.signing import intent_signature_problem, usable_key_thumbprint

__all__ = ["Freshness", "IdentityView", "decide", "validate_intent"]

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
_ACTION_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
_CURRENCY_RE = re.compile(r"^[A-Z]{3}$")
_MAX_AMOUNT = Decimal("100000000000000")  # 1e14: beyond any real order, and it fits the schema
_MAX_CHAIN = 8
_MAX_CONTEXT = 64


class IdentityView(Protocol):
    def agent(self, agent_id: str) -> AgentRecord | None: ...
    def principal(self, principal_id: str, now: datetime | None = None
                  ) -> PrincipalRecord | None: ...


@dataclass(frozen=True, slots=True)
class Freshness:
    """How far requested_at may lie from the decision time."""

    max_age: timedelta
    max_skew: timedelta


def validate_intent(intent: Intent) -> list[str]:
    """Every way the intent breaks the contract, as human messages (empty when valid)."""
    problems: list[str] = []
    try:
        if str(uuid.UUID(intent.intent_id)) != intent.intent_id.lower():
            problems.append("intent_id must be a canonical UUID")
    except (ValueError, AttributeError, TypeError):
        problems.append("intent_id must be a UUID")
    if not _ID_RE.match(intent.agent_id):
        problems.append("agent_id must be 1-128 characters of letters, digits and ._:@-")
    if not _ACTION_RE.match(intent.action) or len(intent.action) > 128:
        problems.append("action must look like noun.verb (lower case, dotted)")
    if not intent.resource or len(intent.resource) > 1024 or not intent.resource.isprintable():
        problems.append("resource must be 1-1024 printable characters")
    if not _ID_RE.match(intent.audience):
        problems.append("audience must be 1-128 characters of letters, digits and ._:@-")
    if intent.requested_at.tzinfo is None:
        problems.append("requested_at must carry a time zone")
    if intent.amount is not None:
        amount = intent.amount
        if not amount.is_finite() or amount < 0 or amount >= _MAX_AMOUNT:
            problems.append("amount must be a finite, non-negative amount below 1e14")
        elif amount.as_tuple().exponent < -4:  # type: ignore[operator]
            problems.append("amount may have at most 4 decimal places")
        if intent.currency is None or not _CURRENCY_RE.match(intent.currency):
            problems.append("an amount needs an ISO 4217 currency code")
    elif intent.currency is not None:
        problems.append("currency given without an amount")
    if len(intent.context) > _MAX_CONTEXT:
        problems.append(f"context may hold at most {_MAX_CONTEXT} entries")
    chain = intent.delegation_chain
    if len(chain) > _MAX_CHAIN:
        problems.append(f"delegation chain may hold at most {_MAX_CHAIN} agents")
    if any(not _ID_RE.match(a) for a in chain):
        problems.append("delegation chain holds an invalid agent id")
    if len(set(chain)) != len(chain) or intent.agent_id in chain:
        problems.append("delegation chain must not repeat an agent or contain the agent itself")
    return problems


def decide(intent: Intent, identity: IdentityView, policy: CedarPolicy, *, now: datetime,
           freshness: Freshness, ready: bool,
           require_signed_intents: bool = False) -> DecisionResult:
    """ALLOW only when every check passes; any error is a DENY `internal_error`.

    PENDING (reason `pending_approval`) when every check passes but the policy says the
    owner must approve this one: `gatepass.core.approval.judge` decides the rest.
    An agent with a registered public key must have signed the intent (and every agent
    must, with `require_signed_intents`): otherwise DENY `intent_signature_invalid`, for
    that reason alone, before any other identity check can speak for an unproven request.
    """
    try:
        return _decide(intent, identity, policy, now=now, freshness=freshness, ready=ready,
                       require_signed=require_signed_intents)
    except Exception as exc:  # a failing rule must never allow
        return _deny(policy.version, (Reason.INTERNAL_ERROR,), IdentityFacts(state_ready=ready),
                     f"decision failed: {type(exc).__name__}")


def _deny(version: str, reasons: tuple[Reason, ...], facts: IdentityFacts, detail: str,
          orphaned: bool = False, policy_ids: tuple[str, ...] = ()) -> DecisionResult:
    return DecisionResult(decision=Decision.DENY, reasons=reasons, policy_version=version,
                          facts=facts, detail=detail, orphaned=orphaned, policy_ids=policy_ids)


def _decide(intent: Intent, identity: IdentityView, policy: CedarPolicy, *, now: datetime,
            freshness: Freshness, ready: bool, require_signed: bool) -> DecisionResult:
    version = policy.version
    problems = validate_intent(intent)
    if problems:
        return _deny(version, (Reason.INVALID_INTENT,), IdentityFacts(state_ready=ready),
                     "; ".join(problems))
    age = now - intent.requested_at
    if age > freshness.max_age or -age > freshness.max_skew:
        return _deny(version, (Reason.STALE_INTENT,), IdentityFacts(state_ready=ready),
                     f"requested_at is {age.total_seconds():.3f}s from the decision time")
    if not ready:
        return _deny(version, (Reason.STATE_NOT_READY,), IdentityFacts(state_ready=False),
                     "identity state is not ready: still loading, or older than the "
                     "allowed maximum")

    agent = identity.agent(intent.agent_id)
    if agent is None or not agent.registered:
        facts = IdentityFacts(state_ready=True,
                              agent_status=agent.status.value if agent else None)
        return _deny(version, (Reason.UNREGISTERED_AGENT,), facts,
                     f"agent {intent.agent_id!r} is not registered")
    owner = identity.principal(agent.owner, now) if agent.owner else None
    facts = IdentityFacts(
        agent_registered=True, agent_status=agent.status.value, agent_status_at=agent.status_at,
        owner=agent.owner, owner_status=owner.status.value if owner else None,
        owner_status_at=owner.status_at if owner else None, purpose=agent.purpose,
        department=agent.department, state_ready=True,
        agent_key_jkt=usable_key_thumbprint(agent.public_key))
    bad_signature = intent_signature_problem(intent, agent.public_key, required=require_signed)
    if bad_signature:
        # Nothing else is judged for a request nobody proved the agent made: no orphan
        # alert, no scope answer, just this.
        return _deny(version, (Reason.INTENT_SIGNATURE_INVALID,), facts, bad_signature)

    reasons: list[Reason] = []
    details: list[str] = []
    if agent.status is not AgentStatus.ACTIVE:
        reasons.append(Reason.AGENT_INACTIVE)
        details.append(f"agent is {agent.status.value}")
    orphaned = owner is None or owner.status is not PrincipalStatus.ACTIVE
    if orphaned:
        reasons.append(Reason.OWNER_INACTIVE)
        details.append(f"owner {agent.owner!r} is " + (owner.status.value if owner else "unknown"))
    chain_problem = _check_chain(intent, identity, policy, now)
    if chain_problem:
        reasons.append(Reason.DELEGATION_DENIED)
        details.append(chain_problem)
    scope, approval = policy.check(agent, owner, intent)
    if scope.failed:
        # Cedar skips an erroring policy; we do not: an error may have hidden a forbid.
        return _deny(version, (Reason.POLICY_ERROR, *reasons), facts,
                     "; ".join([_errors(scope), *details]), orphaned=orphaned,
                     policy_ids=scope.policy_ids)
    if not scope.allowed:
        reasons.append(Reason.OUT_OF_SCOPE)
        details.append(_out_of_scope(intent, agent, scope))
    if reasons:
        # A DENY names only the policies that denied: the forbids, when Cedar said no.
        return _deny(version, tuple(reasons), facts, "; ".join(details), orphaned=orphaned,
                     policy_ids=() if scope.allowed else scope.policy_ids)
    if approval.allowed:
        # Everything else allows it; the owner decides. No pass until they approve.
        why = policy.why(approval.policy_ids, intent)
        return DecisionResult(decision=Decision.PENDING, reasons=(Reason.PENDING_APPROVAL,),
                              policy_version=version, facts=facts, detail="; ".join(why),
                              approval_why=why,
                              policy_ids=scope.policy_ids + approval.policy_ids)
    return DecisionResult(decision=Decision.ALLOW, reasons=(Reason.ALLOWED,),
                          policy_version=version, facts=facts,
                          detail=f"{intent.action} allowed by " + ", ".join(scope.policy_ids),
                          policy_ids=scope.policy_ids)


def _errors(evaluation: Evaluation) -> str:
    return "policy evaluation failed: " + "; ".join(evaluation.errors)


def _out_of_scope(intent: Intent, agent: AgentRecord, scope: Evaluation) -> str:
    if scope.policy_ids:
        return f"{intent.action} forbidden by " + ", ".join(scope.policy_ids)
    return f"no policy permits {intent.action} for purpose {agent.purpose!r}"


def _check_chain(intent: Intent, identity: IdentityView, policy: CedarPolicy,
                 now: datetime) -> str | None:
    """Every delegating agent must pass the same checks: no escalation through delegation."""
    for delegator in intent.delegation_chain:
        agent = identity.agent(delegator)
        if agent is None or not agent.registered:
            return f"delegating agent {delegator!r} is not registered"
        if agent.status is not AgentStatus.ACTIVE:
            return f"delegating agent {delegator!r} is {agent.status.value}"
        owner = identity.principal(agent.owner, now) if agent.owner else None
        if owner is None or owner.status is not PrincipalStatus.ACTIVE:
            return f"owner of delegating agent {delegator!r} is inactive or unknown"
        scope = policy.scope(agent, owner, intent)
        if scope.failed or not scope.allowed:
            return f"action is outside the scope of delegating agent {delegator!r}"
    return None
