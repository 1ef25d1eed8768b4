"""The pure decision core: identity state, Cedar policy, intent signatures and `decide`.

No I/O lives here.
"""

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
from gatepass.core.policy import CedarPolicy, Evaluation
from gatepass.core.signing import (
    INTENT_SIGNING_LABEL,
    intent_signature_problem,
    intent_signing_input,
    key_thumbprint,
    sign_intent,
    usable_key_thumbprint,
)

__all__ = [
    "INTENT_SIGNING_LABEL",
    "AgentRecord",
    "AgentRegistered",
    "AgentStatus",
    "AgentStatusChanged",
    "Applied",
    "CedarPolicy",
    "Decision",
    "DecisionResult",
    "Evaluation",
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
    "decide",
    "intent_signature_problem",
    "intent_signing_input",
    "key_thumbprint",
    "lifecycle_key",
    "sign_intent",
    "usable_key_thumbprint",
    "validate_intent",
]
