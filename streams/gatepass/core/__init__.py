"""The pure decision core: identity state, scope policy and `decide`. No I/O lives here."""

from gatepass.core.decide import Freshness, IdentityView, decide, validate_intent
from gatepass.core.identity import (
    AgentRegistered,
    AgentStatusChanged,
    Applied,
    IdentityState,
    LifecycleEvent,
    PrincipalStatusChanged,
    lifecycle_key,
)
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
from gatepass.core.scope import ActionRule, ScopePolicy

__all__ = [
    "ActionRule",
    "AgentRecord",
    "AgentRegistered",
    "AgentStatus",
    "AgentStatusChanged",
    "Applied",
    "Decision",
    "DecisionResult",
    "Freshness",
    "IdentityFacts",
    "IdentityState",
    "IdentityView",
    "Intent",
    "LifecycleEvent",
    "PrincipalRecord",
    "PrincipalStatus",
    "PrincipalStatusChanged",
    "Reason",
    "ScopePolicy",
    "decide",
    "lifecycle_key",
    "validate_intent",
]
