"""Avro codec: schema files, single-object encoding, round trips, every way decoding fails."""

from __future__ import annotations

import json
from dataclasses import fields
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fastavro.schema import to_parsing_canonical_form
from hypothesis import given, settings
from hypothesis import strategies as st

from gatepass.codec import MARKER, RecordCodec, SchemaSet, schema_dir, schemas
from gatepass.errors import DecodeError, RecordInvalidError, UnknownSchemaError

SCHEMA_DIR = schema_dir()
# The order SchemaSet.load reads them in: later files refer to named types of earlier ones.
LOAD_ORDER = ("intent", "lifecycle", "verdict", "orphan_alert", "decision_record",
              "orphan_check", "dead_letter", "public_key", "approval_request",
              "approval_decision", "approval_timeout", "approval_alert", "policy_bundle",
              "policy_activation", "budget_ledger", "budget_message", "budget_hold")
CODEC_NAMES = [f.name for f in fields(SchemaSet)]
AT = datetime(2026, 3, 2, 9, 30, 15, 123000, tzinfo=UTC)  # millisecond precision, like Avro
INTENT_ID = "7b0e4c8e-2f4e-4a53-9a57-6a3d1b1d2c11"
APPROVED = {"request_id": "r-1", "expires_at": AT + timedelta(minutes=5),
            "why": ["amount above 10000.00 USD"], "approver": "sarah",
            "decided_at": AT, "decision_id": "d-1", "channel": "page"}
PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


def raw_schema(stem: str) -> dict[str, Any]:
    return json.loads((SCHEMA_DIR / f"{stem}.avsc").read_text())


# ---- an independent CRC-64-AVRO (Avro spec, "Schema Fingerprints") -----------------------
EMPTY64 = 0xC15D213AA4D7A795
_TABLE = []
for _i in range(256):
    _fp = _i
    for _ in range(8):
        _fp = (_fp >> 1) ^ (EMPTY64 & -(_fp & 1))
    _TABLE.append(_fp)


def crc64_avro(data: bytes) -> int:
    fp = EMPTY64
    for byte in data:
        fp = (fp >> 8) ^ _TABLE[(fp ^ byte) & 0xFF]
    return fp


# ---- an independent Parsing Canonical Form, enough for our schemas -----------------------
def _fullname(name: str, namespace: str | None) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _collect_named(schema: Any, namespace: str | None, into: dict[str, Any]) -> None:
    """Register every named type a schema file defines (for references from later files)."""
    if isinstance(schema, list):
        for branch in schema:
            _collect_named(branch, namespace, into)
    elif isinstance(schema, dict):
        kind = schema["type"]
        if kind in ("record", "enum", "fixed"):
            full = _fullname(schema["name"], schema.get("namespace", namespace))
            into[full] = schema | {"name": full}
            inner_ns = full.rpartition(".")[0] or None
            for field in schema.get("fields", []):
                _collect_named(field["type"], inner_ns, into)
        elif kind == "array":
            _collect_named(schema["items"], namespace, into)
        elif kind == "map":
            _collect_named(schema["values"], namespace, into)
        elif isinstance(kind, dict | list):
            _collect_named(kind, namespace, into)


def pcf(schema: Any, namespace: str | None, known: dict[str, Any], seen: set[str]) -> str:
    """Avro 1.12 Parsing Canonical Form: names full, attributes ordered, doc/defaults/logical
    types stripped; a named type is written out at its first use and by name afterwards."""
    if isinstance(schema, str):
        if schema in PRIMITIVES:
            return json.dumps(schema)
        full = _fullname(schema, namespace)
        if full in seen:
            return json.dumps(full)
        return pcf(known[full], namespace, known, seen)
    if isinstance(schema, list):
        return "[" + ",".join(pcf(b, namespace, known, seen) for b in schema) + "]"
    kind = schema["type"]
    if isinstance(kind, dict | list) or (kind not in PRIMITIVES and kind not in (
            "record", "enum", "fixed", "array", "map")):
        return pcf(kind, namespace, known, seen)
    if kind in PRIMITIVES:
        return json.dumps(kind)
    if kind == "array":
        return '{"type":"array","items":' + pcf(schema["items"], namespace, known, seen) + "}"
    if kind == "map":
        return '{"type":"map","values":' + pcf(schema["values"], namespace, known, seen) + "}"
    full = _fullname(schema["name"], schema.get("namespace", namespace))
    if full in seen:
        return json.dumps(full)
    seen.add(full)
    head = '{"name":' + json.dumps(full) + ',"type":' + json.dumps(kind)
    if kind == "enum":
        return head + ',"symbols":' + json.dumps(schema["symbols"], separators=(",", ":")) + "}"
    if kind == "fixed":
        return head + ',"size":' + str(schema["size"]) + "}"
    inner_ns = full.rpartition(".")[0] or None
    parts = ['{"name":' + json.dumps(f["name"]) + ',"type":'
             + pcf(f["type"], inner_ns, known, seen) + "}" for f in schema["fields"]]
    return head + ',"fields":[' + ",".join(parts) + "]}"


def independent_forms() -> dict[str, str]:
    """Parsing canonical form of every schema file, resolving references file by file."""
    known: dict[str, Any] = {}
    forms = {}
    for stem in LOAD_ORDER:
        raw = raw_schema(stem)
        _collect_named(raw, None, known)
        forms[stem] = pcf(raw, None, known, set())
    return forms


# ---- realistic records of every type -----------------------------------------------------
FACTS = {"state_ready": True, "agent_registered": True, "agent_status": "active",
         "agent_status_at": AT - timedelta(days=3), "owner": "sarah", "owner_status": "active",
         "owner_status_at": AT - timedelta(days=40), "purpose": "procurement",
         "department": "finance",
         "agent_key_jkt": "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"}
INTENT = {"intent_id": INTENT_ID, "agent_id": "procure-bot", "action": "purchase_order.create",
          "resource": "vendor:ACME", "audience": "procurement-api",
          "amount": Decimal("120.0000"), "currency": "USD",
          "context": {"ticket": "PROC-4411", "trace_id": "0af7651916cd43dd"},
          "requested_at": AT - timedelta(seconds=1), "delegation_chain": ["planner-bot"],
          "signature": "s" * 86}

RECORDS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "intent": [
        ("with amount and delegation", INTENT),
        ("no amount, no context", INTENT | {"amount": None, "currency": None, "context": {},
                                            "delegation_chain": [], "action": "vendor.read",
                                            "signature": None}),
        ("largest amount the schema holds", INTENT | {"amount": Decimal("99999999999999.9999")}),
        ("smallest amount step", INTENT | {"amount": Decimal("0.0001")}),
    ],
    "lifecycle": [
        ("agent registered", {"event_time": AT, "source": "okta", "source_event_id": "evt-1",
                              "event": ("dev.gatepass.v1.AgentRegistered", {
                                  "agent_id": "procure-bot", "owner": "sarah",
                                  "purpose": "procurement", "department": "finance",
                                  "contact": "sarah@example.com", "created_by": "it-admin",
                                  "public_key": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}),
                              "recorded_at": None}),
        ("agent registered, optionals null", {
            "event_time": AT, "source": "cli", "source_event_id": "",
            "event": ("dev.gatepass.v1.AgentRegistered", {
                "agent_id": "procure-bot", "owner": "sarah", "purpose": "procurement",
                "department": None, "contact": None, "created_by": None,
                "public_key": None}),
            "recorded_at": None}),
        ("agent suspended", {"event_time": AT, "source": "entra", "source_event_id": "e-2",
                             "event": ("dev.gatepass.v1.AgentStatusChanged",
                                       {"agent_id": "procure-bot", "status": "suspended"}),
                             "recorded_at": None}),
        ("principal offboarded", {"event_time": AT, "source": "hr-feed",
                                  "source_event_id": "hr-77",
                                  "event": ("dev.gatepass.v1.PrincipalStatusChanged",
                                            {"principal_id": "sarah", "status": "offboarded"}),
                                  "recorded_at": None}),
        ("principal offboarding scheduled", {
            "event_time": AT + timedelta(days=3), "source": "hr-feed", "source_event_id": "hr-78",
            "event": ("dev.gatepass.v1.PrincipalStatusChanged",
                      {"principal_id": "sarah", "status": "offboarded"}),
            "recorded_at": AT}),
    ],
    "verdict": [
        ("allow with pass", {"intent_id": INTENT_ID, "agent_id": "procure-bot",
                             "decision": "ALLOW", "reasons": ["allowed"], "detail": "ok",
                             "credential": "eyJhbGciOiJFZERTQSJ9.e30.c2ln",
                             "credential_id": "6da0eb0a-5a50-50ec-9bea-5b600c5ab0fe",
                             "expires_at": AT + timedelta(minutes=5),
                             "policy_version": "cedar-0123456789abcdef",
                             "policy_ids": ["procurement.orders"], "decided_at": AT,
                             "facts": FACTS, "approval": None}),
        ("approved", {"intent_id": INTENT_ID, "agent_id": "procure-bot",
                      "decision": "ALLOW", "reasons": ["approved"], "detail": "approved",
                      "credential": "eyJhbGciOiJFZERTQSJ9.e30.c2ln",
                      "credential_id": "6da0eb0a-5a50-50ec-9bea-5b600c5ab0fe",
                      "expires_at": AT + timedelta(minutes=5),
                      "policy_version": "cedar-0123456789abcdef",
                             "policy_ids": ["procurement.orders"], "decided_at": AT,
                      "facts": FACTS, "approval": APPROVED}),
        ("pending", {"intent_id": INTENT_ID, "agent_id": "procure-bot",
                     "decision": "PENDING", "reasons": ["pending_approval"], "detail": "big",
                     "credential": None, "credential_id": None, "expires_at": None,
                     "policy_version": "cedar-0123456789abcdef",
                             "policy_ids": ["procurement.orders"], "decided_at": AT,
                     "facts": FACTS, "approval": {
                         "request_id": "r-1", "expires_at": AT + timedelta(minutes=5),
                         "why": ["amount above 10000.00 USD"], "approver": None,
                         "decided_at": None, "decision_id": None, "channel": None}}),
        ("deny, nulls", {"intent_id": INTENT_ID, "agent_id": "procure-bot", "decision": "DENY",
                         "reasons": ["owner_inactive", "out_of_scope"], "detail": "no",
                         "credential": None, "credential_id": None, "expires_at": None,
                         "policy_version": "cedar-0123456789abcdef",
                             "policy_ids": ["procurement.orders"], "decided_at": AT,
                         "facts": {"state_ready": False, "agent_registered": False,
                                   "agent_status": None, "agent_status_at": None,
                                   "owner": None, "owner_status": None,
                                   "owner_status_at": None, "purpose": None,
                                   "department": None, "agent_key_jkt": None},
                         "approval": None}),
    ],
    "orphan_alert": [
        ("owner offboarded", {"alert_id": "0d4c7c52-1b3e-5f59-9a0e-4c3f4a5e8d21",
                              "agent_id": "procure-bot", "owner": "sarah",
                              "owner_status": "offboarded", "owner_status_at": AT,
                              "purpose": "procurement", "department": "finance",
                              "contact": "sarah@example.com", "trigger": "owner_deactivated",
                              "intent_id": None, "detected_at": AT + timedelta(seconds=1)}),
        ("unknown owner", {"alert_id": "0d4c7c52-1b3e-5f59-9a0e-4c3f4a5e8d22",
                           "agent_id": "ghost-bot", "owner": None, "owner_status": None,
                           "owner_status_at": None, "purpose": None, "department": None,
                           "contact": None, "trigger": "intent_denied",
                           "intent_id": INTENT_ID, "detected_at": AT}),
    ],
    "decision_record": [
        ("allow", {"decision_id": "c0a8e1d2-0000-4000-8000-000000000001", "intent": INTENT,
                   "decision": "ALLOW", "reasons": ["allowed"], "detail": "allowed",
                   "policy_version": "cedar-0123456789abcdef",
                   "policy_ids": [], "decided_at": AT,
                   "facts": FACTS,
                   "credential": {"credential_id": "6da0eb0a-5a50-50ec-9bea-5b600c5ab0fe",
                                  "token_sha256": "n4bQgYhMfWWaL-qgxVrQFaO_TxsrC4Is0V1sFbDwCgg",
                                  "kid": "kid-abc", "issued_at": AT.replace(microsecond=0),
                                  "expires_at": AT.replace(microsecond=0)
                                  + timedelta(minutes=5)},
                   "masked_fields": ["credential.token"], "worker": "host:123",
                   "approval": APPROVED}),
        ("deny", {"decision_id": "c0a8e1d2-0000-4000-8000-000000000002", "intent": INTENT,
                  "decision": "DENY", "reasons": ["stale_intent"], "detail": "old",
                  "policy_version": "cedar-0123456789abcdef",
                   "policy_ids": [], "decided_at": AT,
                  "facts": FACTS, "credential": None, "masked_fields": [], "worker": "",
                  "approval": None}),
    ],
    "orphan_check": [
        ("from offboarding", {"agent_id": "procure-bot",
                              "more_agent_ids": ["helper-bot", "report-bot"],
                              "trigger": "owner_deactivated",
                              "intent_id": None, "owner": "sarah", "owner_status": "offboarded",
                              "owner_status_at": AT, "requested_at": AT}),
        ("from a denial", {"agent_id": "procure-bot", "more_agent_ids": [],
                           "trigger": "intent_denied",
                           "intent_id": INTENT_ID, "owner": None, "owner_status": None,
                           "owner_status_at": None, "requested_at": AT}),
    ],
    "dead_letter": [
        ("with bytes", {"source_topic": "gatepass.intents", "source_partition": 3,
                        "source_offset": 2**40, "error_code": "decode_error",
                        "error": "bad marker", "key": b"procure-bot",
                        "value": b"\x00\xffgarbage", "received_at": AT}),
        ("tombstone", {"source_topic": "gatepass.intents", "source_partition": 0,
                       "source_offset": 0, "error_code": "record_invalid",
                       "error": "empty payload", "key": None, "value": None,
                       "received_at": AT}),
    ],
    "public_key": [
        ("active key", {"kid": "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs", "kty": "OKP",
                        "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
                        "alg": "EdDSA", "status": "active", "published_at": AT}),
    ],
    "approval_request": [
        ("with delegates", {"request_id": "r-1", "intent": INTENT, "owner": "sarah",
                            "approvers": ["sarah", "cfo"], "purpose": "procurement",
                            "department": None, "why": ["amount above 10000.00 USD"],
                            "requested_at": AT, "expires_at": AT + timedelta(minutes=5),
                            "policy_version": "scope-0123456789abcdef", "facts": FACTS}),
    ],
    "approval_decision": [
        ("approve", {"decision_id": "d-1", "request_id": "r-1", "intent_id": INTENT_ID,
                     "agent_id": "procure-bot", "approver": "sarah", "choice": "APPROVE",
                     "proof": "x" * 43, "channel": "page", "submitted_at": AT}),
    ],
    "approval_timeout": [
        ("due", {"request_id": "r-1", "intent_id": INTENT_ID, "agent_id": "procure-bot",
                 "expires_at": AT, "raised_at": AT + timedelta(seconds=1)}),
    ],
    "approval_alert": [
        ("forged", {"alert_id": "a-1", "reason": "approval_forged", "detail": "bad code",
                    "decision_id": "d-1", "request_id": "r-1", "intent_id": INTENT_ID,
                    "agent_id": "procure-bot", "approver": "mallory", "choice": "APPROVE",
                    "channel": "cli", "detected_at": AT}),
    ],
    "policy_bundle": [
        ("bundle", {"version": "cedar-0123456789abcdef",
                    "files": {"schema.cedarschema": "namespace Gatepass {}",
                              "scope/a.cedar": '@id("a") permit(principal, action, resource);'},
                    "pushed_at": AT, "pushed_by": "ops@host"}),
    ],
    "budget_ledger": [
        ("two entries", {"key": "department:finance", "entries": [
            {"intent_id": INTENT_ID, "at": AT, "action": "purchase_order.create",
             "amount": Decimal("120.0000"), "currency": "USD", "released": False},
            {"intent_id": "i-2", "at": AT, "action": "vendor.read", "amount": None,
             "currency": None, "released": True}]}),
    ],
    "budget_message": [
        ("reserve", {"op": "RESERVE", "intent_id": INTENT_ID, "agent_id": "procure-bot",
                     "key": "owner:sarah", "hops": ["owner:sarah", "department:finance"],
                     "reply_partition": 3, "at": AT, "action": "purchase_order.create",
                     "amount": Decimal("120.0000"), "currency": "USD",
                     "policy_version": "cedar-0123456789abcdef", "detail": ""}),
        ("refused", {"op": "REFUSED", "intent_id": INTENT_ID, "agent_id": "procure-bot",
                     "key": "department:finance", "hops": [], "reply_partition": 3, "at": AT,
                     "action": "purchase_order.create", "amount": None, "currency": None,
                     "policy_version": "cedar-0123456789abcdef",
                     "detail": "limit department-monthly-spend: ..."}),
    ],
    "budget_hold": [
        ("hold", {"record": b"\xc3\x01record", "why": [], "keys": ["agent:a", "owner:o"],
                  "held_at": AT}),
    ],
    "policy_activation": [
        ("first", {"activation_id": "1b0e4c8e-2f4e-4a53-9a57-6a3d1b1d2c11",
                   "version": "cedar-0123456789abcdef", "effective_at": AT,
                   "pushed_at": AT, "pushed_by": "", "previous_version": None}),
        ("rollback", {"activation_id": "2b0e4c8e-2f4e-4a53-9a57-6a3d1b1d2c11",
                      "version": "cedar-0123456789abcdef", "effective_at": AT,
                      "pushed_at": AT, "pushed_by": "ops@host",
                      "previous_version": "cedar-fedcba9876543210"}),
    ],
}
ROUND_TRIPS = [(name, label, rec) for name, cases in RECORDS.items() for label, rec in cases]


def expected_decoded(record: Any) -> Any:
    """What fastavro gives back: union records as plain dicts."""
    if isinstance(record, tuple) and len(record) == 2 and isinstance(record[0], str):
        return expected_decoded(record[1])
    if isinstance(record, dict):
        return {k: expected_decoded(v) for k, v in record.items()}
    return record


# ---- the schema files --------------------------------------------------------------------
def _walk_types(schema: Any, where: str) -> list[tuple[str, dict[str, Any]]]:
    """Every named type (record, enum, fixed) defined anywhere in a schema, with its path."""
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(schema, list):
        for i, branch in enumerate(schema):
            found += _walk_types(branch, f"{where}[{i}]")
    elif isinstance(schema, dict):
        kind = schema["type"]
        if kind in ("record", "enum", "fixed"):
            found.append((f"{where}:{schema['name']}", schema))
            for field in schema.get("fields", []):
                found += _walk_types(field["type"], f"{where}.{schema['name']}.{field['name']}")
        elif kind == "array":
            found += _walk_types(schema["items"], where)
        elif kind == "map":
            found += _walk_types(schema["values"], where)
        elif isinstance(kind, dict | list):
            found += _walk_types(kind, where)
    return found


def _type_names(schema: Any) -> set[str]:
    if isinstance(schema, str):
        return {schema}
    if isinstance(schema, list):
        return set().union(*(_type_names(b) for b in schema))
    names = set()
    for key in ("type", "items", "values"):
        if key in schema:
            names |= _type_names(schema[key])
    for field in schema.get("fields", []):
        names |= _type_names(field["type"])
    return names


def test_every_schema_file_is_a_record_type_the_codec_loads() -> None:
    files = {p.stem for p in SCHEMA_DIR.glob("*.avsc")}
    assert files == set(CODEC_NAMES) == set(LOAD_ORDER)
    loaded = SchemaSet.load(SCHEMA_DIR)
    for name in CODEC_NAMES:
        codec = getattr(loaded, name)
        assert isinstance(codec, RecordCodec)
        assert codec.name == raw_schema(name)["name"]


@pytest.mark.parametrize("stem", LOAD_ORDER)
def test_schema_is_a_documented_record_in_our_namespace(stem: str) -> None:
    raw = raw_schema(stem)
    assert raw["type"] == "record"
    assert raw["namespace"] == "dev.gatepass.v1"
    assert raw.get("doc", "").strip()


@pytest.mark.parametrize("stem", LOAD_ORDER)
def test_every_field_of_every_record_has_a_doc(stem: str) -> None:
    missing = []
    for where, named in _walk_types(raw_schema(stem), stem):
        if not named.get("doc", "").strip():
            missing.append(where)
        for field in named.get("fields", []):
            if not isinstance(field.get("doc"), str) or not field["doc"].strip():
                missing.append(f"{where}.{field['name']}")
    assert missing == []


@pytest.mark.parametrize("stem", LOAD_ORDER)
def test_no_binary_floating_point_anywhere(stem: str) -> None:
    assert _type_names(raw_schema(stem)) & {"float", "double"} == set()


def test_money_is_a_decimal_with_scale_4() -> None:
    amount = next(f for f in raw_schema("intent")["fields"] if f["name"] == "amount")
    assert amount["type"][0] == "null"
    assert amount["type"][1] == {"type": "bytes", "logicalType": "decimal", "precision": 18,
                                 "scale": 4}


# ---- single-object encoding --------------------------------------------------------------
@pytest.mark.parametrize(("schema", "fingerprint"), [
    ('"null"', 7195948357588979594),
    ('"boolean"', -6970731678124411036),
    ('"int"', 8247732601305521295),
    ('{"name":"foo","type":"fixed","size":15}', 1756455273707447556),
])
def test_our_crc64_matches_the_avro_spec_test_vectors(schema: str, fingerprint: int) -> None:
    # share/test/data/schema-tests.txt publishes them as signed 64-bit integers
    assert crc64_avro(schema.encode()) == fingerprint % 2**64


@pytest.mark.parametrize("stem", LOAD_ORDER)
def test_fingerprint_is_crc64_avro_of_the_parsing_canonical_form(stem: str) -> None:
    form = independent_forms()[stem]
    codec = getattr(schemas(), stem)
    assert to_parsing_canonical_form(codec.schema) == form
    expected = crc64_avro(form.encode("utf-8")).to_bytes(8, "little")
    assert codec.fingerprint == expected


@pytest.mark.parametrize(("name", "label", "record"), ROUND_TRIPS,
                         ids=[f"{n}-{label}" for n, label, _ in ROUND_TRIPS])
def test_payload_is_marker_fingerprint_then_body(name: str, label: str,
                                                 record: dict[str, Any]) -> None:
    codec = getattr(schemas(), name)
    data = codec.encode(record)
    assert data[:2] == MARKER == b"\xc3\x01"
    assert data[2:10] == crc64_avro(independent_forms()[name].encode()).to_bytes(8, "little")
    assert len(data) > 10


@pytest.mark.parametrize(("name", "label", "record"), ROUND_TRIPS,
                         ids=[f"{n}-{label}" for n, label, _ in ROUND_TRIPS])
def test_round_trip(name: str, label: str, record: dict[str, Any]) -> None:
    codec = getattr(schemas(), name)
    assert codec.decode(codec.encode(record)) == expected_decoded(record)


def test_decoded_timestamps_are_utc_aware_and_keep_the_instant() -> None:
    codec = schemas().orphan_check
    paris = datetime(2026, 3, 2, 10, 30, 15, 123000, tzinfo=timezone(timedelta(hours=1)))
    decoded = codec.decode(codec.encode(RECORDS["orphan_check"][0][1] | {"requested_at": paris}))
    assert decoded["requested_at"] == paris
    assert decoded["requested_at"].utcoffset() == timedelta(0)
    assert decoded["requested_at"] == AT


def test_timestamps_keep_milliseconds_and_drop_microseconds() -> None:
    codec = schemas().orphan_check
    fine = AT.replace(microsecond=123987)
    decoded = codec.decode(codec.encode(RECORDS["orphan_check"][0][1] | {"requested_at": fine}))
    assert decoded["requested_at"] == AT.replace(microsecond=123000)


def test_decimal_amount_keeps_its_exact_value() -> None:
    codec = schemas().intent
    decoded = codec.decode(codec.encode(INTENT | {"amount": Decimal("120.5")}))
    assert decoded["amount"] == Decimal("120.5")
    assert isinstance(decoded["amount"], Decimal)
    assert decoded["amount"].as_tuple().exponent == -4  # the schema's scale


def test_defaults_fill_omitted_optional_fields() -> None:
    codec = schemas().verdict
    minimal = {k: v for k, v in RECORDS["verdict"][0][1].items()
               if k not in ("detail", "credential", "credential_id", "expires_at")}
    decoded = codec.decode(codec.encode(minimal))
    assert (decoded["detail"], decoded["credential"], decoded["credential_id"],
            decoded["expires_at"]) == ("", None, None, None)


@pytest.mark.parametrize(("label", "change"), [
    ("missing required field", {"agent_id": None}),
    ("float amount", {"amount": 1.5}),
    ("amount finer than the scale", {"amount": Decimal("1.23456")}),
    ("amount beyond precision 18", {"amount": Decimal("100000000000000.0000")}),
    ("string timestamp", {"requested_at": "yesterday"}),
    ("non-string context value", {"context": {"attempt": 1}}),
])
def test_encode_refuses_records_that_do_not_fit(label: str, change: dict[str, Any]) -> None:
    with pytest.raises(RecordInvalidError) as info:
        schemas().intent.encode(INTENT | change)
    assert info.value.code == "record_invalid"
    assert "ActionIntent" in str(info.value)
    assert info.value.__cause__ is not None


def test_encode_refuses_unknown_enum_symbol() -> None:
    with pytest.raises(RecordInvalidError):
        schemas().verdict.encode(RECORDS["verdict"][0][1] | {"decision": "MAYBE"})


# ---- decoding failures -------------------------------------------------------------------
def _valid_intent_bytes() -> bytes:
    return schemas().intent.encode(INTENT)


DECODE_FAILURES: list[tuple[str, Any, type[DecodeError], str]] = [
    ("empty payload", b"", RecordInvalidError, "record_invalid"),
    ("tombstone (None)", None, RecordInvalidError, "record_invalid"),
    ("wrong marker", b"\xc3\x02" + _valid_intent_bytes()[2:], DecodeError, "decode_error"),
    ("plain JSON", json.dumps({"intent_id": INTENT_ID}).encode(), DecodeError, "decode_error"),
    ("header cut short", _valid_intent_bytes()[:7], DecodeError, "decode_error"),
    ("unknown fingerprint", MARKER + bytes(8) + _valid_intent_bytes()[10:], UnknownSchemaError,
     "schema_unknown"),
    ("another record type's fingerprint", schemas().verdict.encode(RECORDS["verdict"][0][1]),
     UnknownSchemaError, "schema_unknown"),
    ("truncated body", _valid_intent_bytes()[:-3], RecordInvalidError, "record_invalid"),
    ("header only", _valid_intent_bytes()[:10], RecordInvalidError, "record_invalid"),
    ("trailing bytes", _valid_intent_bytes() + b"\x00", RecordInvalidError, "record_invalid"),
]


@pytest.mark.parametrize(("label", "data", "error", "code"), DECODE_FAILURES,
                         ids=[c[0] for c in DECODE_FAILURES])
def test_decode_failure_raises_the_right_error(label: str, data: Any, error: type[DecodeError],
                                               code: str) -> None:
    with pytest.raises(DecodeError) as info:
        schemas().intent.decode(data)
    assert type(info.value) is error
    assert info.value.code == code
    assert "ActionIntent" in str(info.value)


def test_unknown_fingerprint_is_named_in_the_error() -> None:
    with pytest.raises(UnknownSchemaError, match="0102030405060708"):
        schemas().intent.decode(MARKER + bytes(range(1, 9)) + b"\x00")


def test_body_errors_chain_the_fastavro_cause() -> None:
    with pytest.raises(RecordInvalidError) as info:
        schemas().intent.decode(_valid_intent_bytes()[:-3])
    assert info.value.__cause__ is not None
    assert "trailing" not in str(info.value)


def test_trailing_byte_count_is_reported() -> None:
    with pytest.raises(RecordInvalidError, match="2 trailing bytes"):
        schemas().intent.decode(_valid_intent_bytes() + b"\x00\x00")


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200))
def test_arbitrary_bytes_only_ever_raise_decode_errors(data: bytes) -> None:
    for name in CODEC_NAMES:
        try:
            getattr(schemas(), name).decode(data)
        except DecodeError:
            pass


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(CODEC_NAMES), body=st.binary(max_size=120))
def test_arbitrary_body_behind_a_valid_header_only_raises_decode_errors(name: str,
                                                                        body: bytes) -> None:
    codec = getattr(schemas(), name)
    try:
        record = codec.decode(MARKER + codec.fingerprint + body)
    except DecodeError:
        return
    assert isinstance(record, dict)


@settings(max_examples=100, deadline=None)
@given(position=st.integers(min_value=0), flip=st.integers(min_value=1, max_value=255))
def test_corrupted_valid_payload_decodes_or_raises_decode_error(position: int, flip: int) -> None:
    data = bytearray(schemas().decision_record.encode(RECORDS["decision_record"][0][1]))
    data[position % len(data)] ^= flip
    try:
        schemas().decision_record.decode(bytes(data))
    except DecodeError:
        pass


def test_schema_dir_is_overridable_for_an_installed_package(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GATEPASS_SCHEMAS_DIR", str(tmp_path))
    assert schema_dir() == tmp_path
    monkeypatch.delenv("GATEPASS_SCHEMAS_DIR")
    assert schema_dir() == SCHEMA_DIR
    assert (SCHEMA_DIR / "intent.avsc").is_file()
