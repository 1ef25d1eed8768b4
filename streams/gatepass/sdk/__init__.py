"""What agent frameworks and identity connectors import: the client, its verdicts, a guard."""

from gatepass.sdk.client import (
    SDK_PUBLISH_FAILED,
    SDK_TIMEOUT,
    GatepassClient,
    LifecyclePublisher,
    Verdict,
    agent_public_key,
    guard,
)

__all__ = [
    "SDK_PUBLISH_FAILED",
    "SDK_TIMEOUT",
    "GatepassClient",
    "LifecyclePublisher",
    "Verdict",
    "agent_public_key",
    "guard",
]
