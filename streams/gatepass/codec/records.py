"""Conversions between topic records (Avro dicts) and the core's domain objects."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Context, Decimal
from typing import Any

from gatepass.core import (
    AgentRegistered,
    AgentStatus,
    AgentStatusChanged,
    IdentityFacts,
    Intent,
    LifecycleEvent,
    PrincipalStatus,
    PrincipalStatusChanged,
)
from gatepass.core.approval import ApprovalDecision, PendingApproval
from gatepass.errors import RecordInvalidError

__all__ = [
    "AMOUNT_QUANTUM",
    "approval_decision_from_record",
    "approval_decision_to_record",
    "facts_from_record",
    "facts_to_record",
    "intent_from_record",
    "intent_to_record",
    "lifecycle_from_record",
    "lifecycle_to_record",
    "pending_from_record",
    "pending_to_record",
]

AMOUNT_QUANTUM = Decimal("0.0001")  # the schema's decimal scale
_WIDE = Context(prec=60)  # wider than any amount the schema (precision 18) can carry


def intent_to_record(intent: Intent) -> dict[str, Any]:
    amount = intent.amount
    if amount is not None and amount.is_finite():
        exponent = amount.as_tuple().exponent
        if isinstance(exponent, int) and exponent < -4 and amount != amount.quantize(
                AMOUNT_QUANTUM, context=_WIDE):
            # Rounding would send another amount than the agent asked for.
            raise RecordInvalidError(f"amount {amount} has more than 4 decimal places")
        amount = amount.quantize(AMOUNT_QUANTUM, context=_WIDE)
    return {
        "intent_id": intent.intent_id, "agent_id": intent.agent_id, "action": intent.action,
        "resource": intent.resource, "audience": intent.audience, "amount": amount,
        "currency": intent.currency, "context": dict(intent.context),
        "requested_at": intent.requested_at,
        "delegation_chain": list(intent.delegation_chain), "signature": intent.signature,
    }


def intent_from_record(rec: Mapping[str, Any]) -> Intent:
    amount = rec.get("amount")
    if amount is not None:
        # Decoded decimals carry the schema scale (120.0000); keep the value, drop the padding
        # so reasons and passes show what the agent asked for.
        amount = _normalize(amount)
    return Intent(
        intent_id=rec["intent_id"], agent_id=rec["agent_id"], action=rec["action"],
        resource=rec["resource"], audience=rec["audience"], amount=amount,
        currency=rec.get("currency"), context=rec.get("context") or {},
        requested_at=rec["requested_at"],
        delegation_chain=tuple(rec.get("delegation_chain") or ()),
        signature=rec.get("signature"))


def _normalize(amount: Decimal) -> Decimal:
    """120.0000 -> 120.00, 1.2345 -> 1.2345; values beyond the schema's range stay as they
    are and are denied by validation (the schema allows 18 digits, a foreign writer more)."""
    if not amount.is_finite() or amount.adjusted() >= 18:
        return amount
    cents = amount.quantize(Decimal("0.01"), context=_WIDE)
    return cents if cents == amount else amount.normalize(context=_WIDE)


def lifecycle_to_record(event: LifecycleEvent) -> dict[str, Any]:
    body: tuple[str, dict[str, Any]]
    if isinstance(event, AgentRegistered):
        body = ("dev.gatepass.v1.AgentRegistered", {
            "agent_id": event.agent_id, "owner": event.owner, "purpose": event.purpose,
            "department": event.department, "contact": event.contact,
            "created_by": event.created_by, "public_key": event.public_key})
    elif isinstance(event, AgentStatusChanged):
        body = ("dev.gatepass.v1.AgentStatusChanged",
                {"agent_id": event.agent_id, "status": event.status.value})
    else:
        body = ("dev.gatepass.v1.PrincipalStatusChanged",
                {"principal_id": event.principal_id, "status": event.status.value})
    return {"event_time": event.event_time, "source": event.source,
            "source_event_id": event.source_event_id, "event": body,
            "recorded_at": event.recorded_at}


def lifecycle_from_record(rec: Mapping[str, Any]) -> LifecycleEvent:
    body = rec["event"]
    # Every worker folds the whole identity topic with this at start: spelled out, no
    # intermediate dict.
    at, source = rec["event_time"], rec["source"]
    event_id, recorded_at = rec.get("source_event_id", ""), rec.get("recorded_at")
    # fastavro returns a plain dict for unions of records; tell them apart by their fields.
    if "principal_id" in body:
        return PrincipalStatusChanged(principal_id=body["principal_id"],
                                      status=PrincipalStatus(body["status"]), event_time=at,
                                      source=source, source_event_id=event_id,
                                      recorded_at=recorded_at)
    if "owner" in body:
        return AgentRegistered(agent_id=body["agent_id"], owner=body["owner"],
                               purpose=body["purpose"], department=body.get("department"),
                               contact=body.get("contact"), created_by=body.get("created_by"),
                               public_key=body.get("public_key"), event_time=at,
                               source=source, source_event_id=event_id,
                               recorded_at=recorded_at)
    if "status" in body:
        return AgentStatusChanged(agent_id=body["agent_id"], status=AgentStatus(body["status"]),
                                  event_time=at, source=source, source_event_id=event_id,
                                  recorded_at=recorded_at)
    raise RecordInvalidError("LifecycleEvent: unknown event body")


def facts_to_record(facts: IdentityFacts) -> dict[str, Any]:
    return {
        "state_ready": facts.state_ready, "agent_registered": facts.agent_registered,
        "agent_status": facts.agent_status, "agent_status_at": facts.agent_status_at,
        "owner": facts.owner, "owner_status": facts.owner_status,
        "owner_status_at": facts.owner_status_at, "purpose": facts.purpose,
        "department": facts.department, "agent_key_jkt": facts.agent_key_jkt,
    }


def facts_from_record(rec: Mapping[str, Any]) -> IdentityFacts:
    return IdentityFacts(**{k: rec.get(k) for k in (
        "agent_status", "agent_status_at", "owner", "owner_status", "owner_status_at",
        "purpose", "department", "agent_key_jkt")}, state_ready=bool(rec.get("state_ready")),
        agent_registered=bool(rec.get("agent_registered")))



def pending_to_record(p: PendingApproval, *, purpose: str | None, department: str | None,
                      facts: IdentityFacts) -> dict[str, Any]:
    return {"request_id": p.request_id, "intent": intent_to_record(p.intent), "owner": p.owner,
            "approvers": list(p.approvers), "purpose": purpose, "department": department,
            "why": list(p.why), "requested_at": p.requested_at, "expires_at": p.expires_at,
            "policy_version": p.policy_version, "facts": facts_to_record(facts)}


def pending_from_record(rec: Mapping[str, Any]) -> PendingApproval:
    return PendingApproval(request_id=rec["request_id"], intent=intent_from_record(rec["intent"]),
                           owner=rec["owner"], approvers=tuple(rec["approvers"]),
                           requested_at=rec["requested_at"], expires_at=rec["expires_at"],
                           why=tuple(rec["why"]), policy_version=rec["policy_version"])


def approval_decision_to_record(d: ApprovalDecision, *, submitted_at: datetime) -> dict[str, Any]:
    return {"decision_id": d.decision_id, "request_id": d.request_id, "intent_id": d.intent_id,
            "agent_id": d.agent_id, "approver": d.approver,
            "choice": "APPROVE" if d.approve else "DENY", "proof": d.proof,
            "channel": d.channel, "submitted_at": submitted_at}


def approval_decision_from_record(rec: Mapping[str, Any]) -> ApprovalDecision:
    return ApprovalDecision(decision_id=rec["decision_id"], request_id=rec["request_id"],
                            intent_id=rec["intent_id"], agent_id=rec["agent_id"],
                            approver=rec["approver"], approve=rec["choice"] == "APPROVE",
                            proof=rec["proof"], channel=rec.get("channel", ""),
                            submitted_at=rec.get("submitted_at"))
