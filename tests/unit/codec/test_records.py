"""Domain objects <-> Avro records: intents, lifecycle events and identity facts round-trip."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import fastavro
import pytest

from gatepass.codec import MARKER, schema_dir, schemas
from gatepass.codec.records import (
    AMOUNT_QUANTUM,
    facts_from_record,
    facts_to_record,
    intent_from_record,
    intent_to_record,
    lifecycle_from_record,
    lifecycle_to_record,
)
from gatepass.core import (
    AgentRegistered,
    AgentStatus,
    AgentStatusChanged,
    IdentityFacts,
    Intent,
    LifecycleEvent,
    PrincipalStatus,
    PrincipalStatusChanged,
    validate_intent,
)
from gatepass.credentials import scope_hash
from gatepass.errors import RecordInvalidError

AT = datetime(2026, 3, 2, 9, 30, 15, 123000, tzinfo=UTC)


def make_intent(**changes: Any) -> Intent:
    fields: dict[str, Any] = {
        "intent_id": "7b0e4c8e-2f4e-4a53-9a57-6a3d1b1d2c11", "agent_id": "procure-bot",
        "action": "purchase_order.create", "resource": "vendor:ACME",
        "audience": "procurement-api", "requested_at": AT, "amount": Decimal("120.00"),
        "currency": "USD", "context": {"ticket": "PROC-4411"},
        "delegation_chain": ("planner-bot", "router-bot")}
    fields.update(changes)
    return Intent(**fields)


def through_avro_intent(intent: Intent) -> Intent:
    codec = schemas().intent
    return intent_from_record(codec.decode(codec.encode(intent_to_record(intent))))


# ---- intents -----------------------------------------------------------------------------
def test_intent_round_trips_field_for_field() -> None:
    intent = make_intent()
    assert through_avro_intent(intent) == intent


@pytest.mark.parametrize(("amount", "shown"), [
    ("120", "120.00"),
    ("120.00", "120.00"),
    ("120.5", "120.50"),
    ("120.1234", "120.1234"),
    ("0.0001", "0.0001"),
    ("0", "0.00"),
    ("1E+3", "1000.00"),
    ("99999999999999.9999", "99999999999999.9999"),
])
def test_amount_keeps_its_value(amount: str, shown: str) -> None:
    back = through_avro_intent(make_intent(amount=Decimal(amount)))
    assert back.amount == Decimal(amount)
    assert str(back.amount) == shown  # padding to the schema scale (4) is dropped again
    # what matters for a pass: the scope hash an agent computes from its own amount
    assert scope_hash("a.b", "r", back.amount, "USD") == scope_hash("a.b", "r", Decimal(amount),
                                                                     "USD")


def test_amount_is_written_at_the_schema_scale() -> None:
    record = intent_to_record(make_intent(amount=Decimal("120")))
    assert record["amount"] == Decimal("120.0000")
    assert record["amount"].as_tuple().exponent == AMOUNT_QUANTUM.as_tuple().exponent == -4


def test_intent_without_money_and_context() -> None:
    intent = make_intent(amount=None, currency=None, context={}, delegation_chain=())
    back = through_avro_intent(intent)
    assert back == intent
    assert back.amount is None and back.currency is None
    assert back.delegation_chain == ()


def test_requested_at_keeps_the_instant_and_comes_back_in_utc() -> None:
    berlin = AT.astimezone(timezone(timedelta(hours=1)))
    back = through_avro_intent(make_intent(requested_at=berlin))
    assert back.requested_at == AT
    assert back.requested_at.utcoffset() == timedelta(0)


def test_delegation_chain_order_is_kept() -> None:
    chain = ("originator-bot", "planner-bot", "router-bot")
    assert through_avro_intent(make_intent(delegation_chain=chain)).delegation_chain == chain


def test_intent_record_has_exactly_the_schema_fields() -> None:
    names = [f["name"] for f in json.loads((schema_dir() / "intent.avsc").read_text())["fields"]]
    assert sorted(intent_to_record(make_intent())) == sorted(names)


def test_intent_missing_a_required_field_is_refused() -> None:
    record = intent_to_record(make_intent())
    del record["action"]
    with pytest.raises(KeyError):
        intent_from_record(record)


@pytest.mark.parametrize("amount", ["0.00005", "5000.00004", "120.12345"])
def test_amount_finer_than_the_schema_scale_is_refused_not_rounded(amount: str) -> None:
    intent = make_intent(amount=Decimal(amount))
    codec = schemas().intent
    try:
        data = codec.encode(intent_to_record(intent))
    except RecordInvalidError:
        return
    assert intent_from_record(codec.decode(data)).amount == Decimal(amount)


def oversized_amount_payload(unscaled: int) -> bytes:
    """An intent whose decimal has more digits than precision 18 allows, as a foreign or
    malicious producer could write it: same fingerprint (the canonical form has no precision)."""
    raw = json.loads((schema_dir() / "intent.avsc").read_text())
    for field in raw["fields"]:
        if field["name"] == "amount":
            field["type"][1]["precision"] = 80
    record = intent_to_record(make_intent(amount=None)) | {
        "amount": Decimal(unscaled).scaleb(-4), "currency": "USD"}
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(raw), record)
    return MARKER + schemas().intent.fingerprint + buf.getvalue()


def test_decoded_amount_beyond_the_schema_range_is_kept_and_denied_by_validation() -> None:
    """A foreign writer's amount of more digits than precision 18 decodes to its real value
    (no crash, no rounding) and the decision core refuses it as invalid."""
    data = oversized_amount_payload(10**35)
    intent = intent_from_record(schemas().intent.decode(data))
    assert intent.amount == Decimal(10**35).scaleb(-4)
    assert any("amount" in problem for problem in validate_intent(intent))


# ---- lifecycle events --------------------------------------------------------------------
LIFECYCLE: list[LifecycleEvent] = [
    AgentRegistered(agent_id="procure-bot", owner="sarah", purpose="procurement",
                    department="finance", contact="sarah@example.com", created_by="it-admin",
                    event_time=AT, source="okta", source_event_id="evt-1"),
    AgentRegistered(agent_id="procure-bot", owner="sarah", purpose="procurement",
                    event_time=AT, source="cli"),
    AgentStatusChanged(agent_id="procure-bot", status=AgentStatus.SUSPENDED, event_time=AT,
                       source="entra", source_event_id="e-2"),
    AgentStatusChanged(agent_id="procure-bot", status=AgentStatus.DECOMMISSIONED,
                       event_time=AT, source="entra"),
    PrincipalStatusChanged(principal_id="sarah", status=PrincipalStatus.OFFBOARDED,
                           event_time=AT, source="hr-feed", source_event_id="hr-77"),
    PrincipalStatusChanged(principal_id="sarah", status=PrincipalStatus.ACTIVE, event_time=AT,
                           source="hr-feed"),
]


@pytest.mark.parametrize("event", LIFECYCLE, ids=lambda e: f"{type(e).__name__}")
def test_lifecycle_event_round_trips_to_the_same_class(event: Any) -> None:
    codec = schemas().lifecycle
    back = lifecycle_from_record(codec.decode(codec.encode(lifecycle_to_record(event))))
    assert type(back) is type(event)
    assert back == event


@pytest.mark.parametrize(("event", "member"), [
    (LIFECYCLE[0], "dev.gatepass.v1.AgentRegistered"),
    (LIFECYCLE[2], "dev.gatepass.v1.AgentStatusChanged"),
    (LIFECYCLE[4], "dev.gatepass.v1.PrincipalStatusChanged"),
], ids=["registered", "agent status", "principal status"])
def test_lifecycle_event_is_written_as_its_union_member(event: Any, member: str) -> None:
    codec = schemas().lifecycle
    record = lifecycle_to_record(event)
    assert record["event"][0] == member
    # the member is what a foreign reader sees: decode with the type name kept
    body = io.BytesIO(codec.encode(record)[10:])
    named: Any = fastavro.schemaless_reader(body, codec.schema, None, return_record_name=True)
    assert named["event"][0] == member


def test_status_values_are_the_enum_symbols() -> None:
    record = lifecycle_to_record(LIFECYCLE[2])
    assert record["event"][1]["status"] == "suspended"
    assert record["source_event_id"] == "e-2"


def test_lifecycle_without_source_event_id_gets_the_empty_default() -> None:
    codec = schemas().lifecycle
    rec = codec.decode(codec.encode(lifecycle_to_record(LIFECYCLE[4])))
    del rec["source_event_id"]
    assert lifecycle_from_record(rec).source_event_id == ""


@pytest.mark.parametrize("body", [{}, {"agent_id": "procure-bot"}, {"kind": "other"}])
def test_unknown_lifecycle_body_is_record_invalid(body: dict[str, Any]) -> None:
    with pytest.raises(RecordInvalidError) as info:
        lifecycle_from_record({"event_time": AT, "source": "x", "event": body})
    assert info.value.code == "record_invalid"


def test_unknown_status_symbol_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        lifecycle_from_record({"event_time": AT, "source": "x",
                               "event": {"principal_id": "sarah", "status": "retired"}})


# ---- identity facts ----------------------------------------------------------------------
FACTS = [
    IdentityFacts(agent_registered=True, agent_status="active",
                  agent_status_at=AT - timedelta(days=2), owner="sarah", owner_status="active",
                  owner_status_at=AT - timedelta(days=40), purpose="procurement",
                  department="finance", state_ready=True),
    IdentityFacts(agent_registered=True, agent_status="active", owner="nobody",
                  owner_status=None, purpose="procurement", state_ready=True),
    IdentityFacts(state_ready=False),
]


@pytest.mark.parametrize("facts", FACTS, ids=["complete", "unknown owner", "not ready"])
def test_facts_round_trip_inside_a_verdict(facts: IdentityFacts) -> None:
    codec = schemas().verdict
    record = {"intent_id": "7b0e4c8e-2f4e-4a53-9a57-6a3d1b1d2c11", "agent_id": "procure-bot",
              "decision": "DENY", "reasons": ["owner_inactive"], "policy_version": "scope-x",
              "decided_at": AT, "facts": facts_to_record(facts)}
    assert facts_from_record(codec.decode(codec.encode(record))["facts"]) == facts


def test_facts_from_a_sparse_record_default_to_not_ready_and_unregistered() -> None:
    assert facts_from_record({}) == IdentityFacts()
    assert facts_from_record({"state_ready": True}).agent_registered is False
