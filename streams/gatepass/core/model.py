"""The domain records the decision core works on: intents, identities and decisions.

Plain frozen dataclasses with no I/O; the codec turns topic records into these and back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

__all__ = [
    "AgentRecord",
    "AgentStatus",
    "Decision",
    "DecisionResult",
    "IdentityFacts",
    "Intent",
    "PrincipalRecord",
    "PrincipalStatus",
    "Reason",
]


class Decision(StrEnum):
    ALLOW = "ALLOW"
    DENY = "DENY"
    # Not an answer yet: the owner is asked; exactly one final ALLOW or DENY follows.
    PENDING = "PENDING"


class Reason(StrEnum):
    """Stable reason codes; part of the public contract (verdicts, audit, CLI)."""

    ALLOWED = "allowed"
    INVALID_INTENT = "invalid_intent"
    STALE_INTENT = "stale_intent"
    UNREGISTERED_AGENT = "unregistered_agent"
    AGENT_INACTIVE = "agent_inactive"
    OWNER_INACTIVE = "owner_inactive"
    DELEGATION_DENIED = "delegation_denied"
    OUT_OF_SCOPE = "out_of_scope"
    STATE_NOT_READY = "state_not_ready"
    INTERNAL_ERROR = "internal_error"
    # A Cedar policy failed to evaluate (an error never allows, even next to a permit).
    POLICY_ERROR = "policy_error"
    # A stateful limit (gatepass.toml [[limits]]) would be exceeded; the detail names it.
    LIMIT_EXCEEDED = "limit_exceeded"
    # The agent has a registered key (or signatures are mandatory) and the intent's
    # signature is missing or does not verify: nobody proved the agent asked.
    INTENT_SIGNATURE_INVALID = "intent_signature_invalid"
    # Human approval (verdicts): waiting, then approved, denied or expired.
    PENDING_APPROVAL = "pending_approval"
    APPROVED = "approved"
    APPROVAL_DENIED = "approval_denied"
    APPROVAL_EXPIRED = "approval_expired"
    # Approval decision events refused (SOC alerts; the request stays as it was).
    APPROVAL_FORGED = "approval_forged"
    APPROVAL_REPLAYED = "approval_replayed"
    APPROVAL_UNKNOWN = "approval_unknown"
    APPROVER_INACTIVE = "approver_inactive"


class AgentStatus(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    DECOMMISSIONED = "decommissioned"


class PrincipalStatus(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    OFFBOARDED = "offboarded"


@dataclass(frozen=True, slots=True, kw_only=True)
class Intent:
    """One action an agent is about to take, as published by the agent SDK."""

    intent_id: str
    agent_id: str
    action: str
    resource: str
    audience: str
    requested_at: datetime
    amount: Decimal | None = None
    currency: str | None = None
    context: Mapping[str, str] = field(default_factory=dict)
    delegation_chain: tuple[str, ...] = ()
    # base64url Ed25519 signature over `intent_signing_input(intent)` by the acting agent's
    # key (gatepass.core.signing); None: unsigned.
    signature: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentRecord:
    """What the identity state knows of one agent (registration and status are separate facts)."""

    agent_id: str
    owner: str | None = None
    department: str | None = None
    purpose: str | None = None
    contact: str | None = None
    created_by: str | None = None
    # The agent's Ed25519 public key (RFC 8037 OKP `x`, base64url of 32 bytes): when set,
    # its intents must be signed with it and its passes are bound to it.
    public_key: str | None = None
    registered_at: datetime | None = None  # event time of the registration fact
    status: AgentStatus = AgentStatus.ACTIVE
    status_at: datetime | None = None  # event time of the status fact

    @property
    def registered(self) -> bool:
        return self.registered_at is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class PrincipalRecord:
    """A human (or service) principal that can own agents."""

    principal_id: str
    status: PrincipalStatus
    status_at: datetime
    source: str = ""
    source_event_id: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class IdentityFacts:
    """The identity facts a decision used, recorded so a replay can reproduce it."""

    agent_registered: bool = False
    agent_status: str | None = None
    agent_status_at: datetime | None = None
    owner: str | None = None
    owner_status: str | None = None
    owner_status_at: datetime | None = None
    purpose: str | None = None
    department: str | None = None
    state_ready: bool = False
    # RFC 7638 thumbprint of the agent's registered key; a pass then carries cnf.jkt = it.
    agent_key_jkt: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DecisionResult:
    """The outcome of `decide`: what, why, under which policy, from which facts."""

    decision: Decision
    reasons: tuple[Reason, ...]
    policy_version: str
    facts: IdentityFacts
    detail: str = ""
    # True when the agent's owner is gone: the SOC gets (at most) one orphan alert for it.
    orphaned: bool = False
    # PENDING only: why the owner must approve (one human sentence per rule that applied).
    approval_why: tuple[str, ...] = ()
    # The @ids of the Cedar policies that decided: the permits of an ALLOW (and the approval
    # policies of a PENDING), the forbids of an out_of_scope DENY (none: no permit applied).
    policy_ids: tuple[str, ...] = ()

    @property
    def allowed(self) -> bool:
        return self.decision is Decision.ALLOW
