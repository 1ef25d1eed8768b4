"""Schema evolution as docs/architecture.md promises it, with real schema folders.

Compatible changes: adding a field with a default, removing a field that had a default,
widening to a union with null. Readers know the current schema plus schemas/history/; a
writer schema they do not know is refused (UnknownSchemaError, dead-lettered), never guessed.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from gatepass.codec import SchemaSet, schema_dir, schemas
from gatepass.codec.records import intent_from_record
from gatepass.config import Settings
from gatepass.core import IdentityState
from gatepass.credentials import KeyStore, PassIssuer
from gatepass.errors import RecordInvalidError, UnknownSchemaError
from gatepass.policy import load_policy
from gatepass.worker import Pipeline

FIXTURES = Path(__file__).parent / "fixtures"
# before delegation_chain and signature (which have defaults) existed
PREVIOUS = FIXTURES / "intent.v0.avsc"
NEXT_ADDED = FIXTURES / "intent.next_added_field.avsc"  # + trace_id, default null
NEXT_REMOVED = FIXTURES / "intent.next_removed_field.avsc"  # - context, which had default {}
NEXT_WIDENED = FIXTURES / "intent.next_widened_union.avsc"  # resource: string -> [string, null]
AT = datetime(2026, 3, 2, 9, 30, 15, 123000, tzinfo=UTC)

CURRENT_RECORD: dict[str, Any] = {
    "intent_id": "7b0e4c8e-2f4e-4a53-9a57-6a3d1b1d2c11", "agent_id": "procure-bot",
    "action": "purchase_order.create", "resource": "vendor:ACME", "audience": "procurement-api",
    "amount": Decimal("120.0000"), "currency": "USD", "context": {"ticket": "PROC-4411"},
    "requested_at": AT, "delegation_chain": ["planner-bot"], "signature": "c2ln" * 21 + "cw"}
ADDED_SINCE_V0 = ("delegation_chain", "signature")


def schema_folder(root: Path, *, intent: Path | None = None,
                  history: dict[str, Path] | None = None) -> Path:
    """A copy of schemas/, optionally with another intent.avsc and files under history/."""
    folder = root / "schemas"
    folder.mkdir(parents=True)
    for avsc in schema_dir().glob("*.avsc"):
        shutil.copy(avsc, folder / avsc.name)
    if intent is not None:
        shutil.copy(intent, folder / "intent.avsc")
    for name, source in (history or {}).items():
        (folder / "history").mkdir(exist_ok=True)
        shutil.copy(source, folder / "history" / name)
    return folder


def load(root: Path, **kwargs: Any) -> SchemaSet:
    return SchemaSet.load(schema_folder(root, **kwargs))


def _fields(path: Path) -> dict[str, Any]:
    return {f["name"]: f for f in json.loads(path.read_text())["fields"]}


@pytest.mark.parametrize(("fixture", "added", "removed", "changed"), [
    (PREVIOUS, set(), set(ADDED_SINCE_V0), set()),
    (NEXT_ADDED, {"trace_id"}, set(), set()),
    (NEXT_REMOVED, set(), {"context"}, set()),
    (NEXT_WIDENED, set(), set(), {"resource"}),
], ids=lambda v: v.name if isinstance(v, Path) else None)
def test_fixtures_differ_from_the_current_schema_only_as_described(
        fixture: Path, added: set[str], removed: set[str], changed: set[str]) -> None:
    current, other = _fields(schema_dir() / "intent.avsc"), _fields(fixture)
    assert set(other) - set(current) == added
    assert set(current) - set(other) == removed
    assert {n for n in set(current) & set(other) if current[n] != other[n]} == changed
    for name in removed:
        assert "default" in current[name]  # only fields with a default may go
    for name in added:
        assert "default" in other[name]  # and only fields with one may come
    for name in changed:
        assert other[name]["type"] == [current[name]["type"], "null"]


@pytest.fixture
def current_bytes() -> bytes:
    return schemas().intent.encode(CURRENT_RECORD)


# ---- (a) previous writer, current reader -------------------------------------------------
def test_current_reader_without_history_refuses_the_previous_writer(tmp_path: Path) -> None:
    previous = load(tmp_path / "previous", intent=PREVIOUS)
    data = previous.intent.encode({k: v for k, v in CURRENT_RECORD.items()
                                   if k not in ADDED_SINCE_V0})
    assert previous.intent.fingerprint != schemas().intent.fingerprint
    with pytest.raises(UnknownSchemaError) as info:
        schemas().intent.decode(data)
    assert info.value.code == "schema_unknown"
    assert previous.intent.fingerprint.hex() in str(info.value)


def test_previous_writer_is_read_by_the_current_reader_with_history(tmp_path: Path,
                                                                    current_bytes: bytes) -> None:
    previous = load(tmp_path / "previous", intent=PREVIOUS)
    old_record = {k: v for k, v in CURRENT_RECORD.items() if k not in ADDED_SINCE_V0}
    data = previous.intent.encode(old_record)

    reader = load(tmp_path / "reader", history={"intent.v0.avsc": PREVIOUS})
    assert reader.intent.fingerprint == schemas().intent.fingerprint  # history adds, not replaces
    decoded = reader.intent.decode(data)
    # the added fields' defaults
    assert decoded == old_record | {"delegation_chain": [], "signature": None}
    intent = intent_from_record(decoded)
    assert intent.delegation_chain == () and intent.signature is None
    assert intent.amount == Decimal("120")
    # and the current writer is still read as before
    assert reader.intent.decode(current_bytes) == CURRENT_RECORD


# ---- (b) current writer, next reader (current schema in its history) ---------------------
NEXT_CASES = [
    ("added field with default", NEXT_ADDED, CURRENT_RECORD | {"trace_id": None}),
    ("removed field that had a default", NEXT_REMOVED,
     {k: v for k, v in CURRENT_RECORD.items() if k != "context"}),
    ("widened to a union with null", NEXT_WIDENED, CURRENT_RECORD),
]


@pytest.mark.parametrize(("label", "next_schema", "expected"), NEXT_CASES,
                         ids=[c[0] for c in NEXT_CASES])
def test_current_writer_is_read_by_the_next_reader(tmp_path: Path, current_bytes: bytes,
                                                   label: str, next_schema: Path,
                                                   expected: dict[str, Any]) -> None:
    reader = load(tmp_path, intent=next_schema,
                  history={"intent.v1.avsc": schema_dir() / "intent.avsc"})
    assert reader.intent.fingerprint != schemas().intent.fingerprint
    assert reader.intent.decode(current_bytes) == expected


@pytest.mark.parametrize(("label", "next_schema", "expected"), NEXT_CASES,
                         ids=[c[0] for c in NEXT_CASES])
def test_next_reader_without_the_current_schema_in_history_refuses_it(
        tmp_path: Path, current_bytes: bytes, label: str, next_schema: Path,
        expected: dict[str, Any]) -> None:
    reader = load(tmp_path, intent=next_schema)
    with pytest.raises(UnknownSchemaError):
        reader.intent.decode(current_bytes)


NEXT_WRITTEN = [
    ("added field with default", NEXT_ADDED, CURRENT_RECORD | {"trace_id": "4bf92f3577b34da6"},
     CURRENT_RECORD),
    ("removed field that had a default", NEXT_REMOVED,
     {k: v for k, v in CURRENT_RECORD.items() if k != "context"}, CURRENT_RECORD | {"context": {}}),
    ("widened to a union with null", NEXT_WIDENED, CURRENT_RECORD, CURRENT_RECORD),
]


@pytest.mark.parametrize(("label", "next_schema", "written", "expected"), NEXT_WRITTEN,
                         ids=[c[0] for c in NEXT_WRITTEN])
def test_the_other_direction_resolves_once_the_reader_knows_the_writer(
        tmp_path: Path, label: str, next_schema: Path, written: dict[str, Any],
        expected: dict[str, Any]) -> None:
    writer = load(tmp_path / "writer", intent=next_schema)
    data = writer.intent.encode(written)
    with pytest.raises(UnknownSchemaError):  # readers first: an unknown writer is refused
        schemas().intent.decode(data)
    reader = load(tmp_path / "reader", history={"intent.v2.avsc": next_schema})
    assert reader.intent.decode(data) == expected


def test_a_null_in_a_widened_union_cannot_be_read_as_the_narrow_type(tmp_path: Path) -> None:
    writer = load(tmp_path / "writer", intent=NEXT_WIDENED)
    data = writer.intent.encode(CURRENT_RECORD | {"resource": None})
    reader = load(tmp_path / "reader", history={"intent.v2.avsc": NEXT_WIDENED})
    with pytest.raises(RecordInvalidError) as info:
        reader.intent.decode(data)
    assert info.value.code == "record_invalid"


# ---- unknown writers are refused, then dead-lettered ------------------------------------
def test_unknown_writer_is_dead_lettered_not_guessed(tmp_path: Path) -> None:
    writer = load(tmp_path / "writer", intent=NEXT_ADDED)
    data = writer.intent.encode(CURRENT_RECORD | {"trace_id": "4bf92f3577b34da6"})
    now = AT + timedelta(seconds=1)
    store = KeyStore.open(tmp_path / "keys", now=now)
    pipeline = Pipeline(settings=Settings(), schemas=schemas(),
                        policy=load_policy(None),
                        issuer=PassIssuer(store, issuer="gatepass", ttl=timedelta(minutes=5)),
                        identity=IdentityState(), ready=lambda: True, clock=lambda: now)
    out = pipeline.on_intent(b"procure-bot", data, partition=2, offset=41, memo={})
    assert out.intent_id is None and out.remember is None
    assert [r.topic for r in out.records] == ["gatepass.dead-letter"]
    letter = schemas().dead_letter.decode(out.records[0].value)
    assert letter["error_code"] == "schema_unknown"
    assert (letter["source_topic"], letter["source_partition"], letter["source_offset"]) == (
        "gatepass.intents", 2, 41)
    assert letter["value"] == data
    assert writer.intent.fingerprint.hex() in letter["error"]


# ---- records that embed an evolved type --------------------------------------------------
def test_decision_records_written_before_an_intent_change_stay_readable(tmp_path: Path) -> None:
    old = schemas()
    record = {"decision_id": "c0a8e1d2-0000-4000-8000-000000000001", "intent": CURRENT_RECORD,
              "decision": "DENY", "reasons": ["stale_intent"], "detail": "old",
              "policy_version": "scope-0123456789abcdef", "decided_at": AT,
              "facts": {"state_ready": True, "agent_registered": False},
              "credential": None, "masked_fields": [], "worker": ""}
    data = old.decision_record.encode(record)
    reader = load(tmp_path, intent=NEXT_ADDED, history={
        "intent.v1.avsc": schema_dir() / "intent.avsc",
        "decision_record.v1.avsc": schema_dir() / "decision_record.avsc"})
    decoded = reader.decision_record.decode(data)
    assert decoded["intent"]["trace_id"] is None


# ---- the shipped generations under schemas/history ---------------------------------------
FACTS = {"state_ready": True, "agent_registered": True, "agent_status": "active",
         "agent_status_at": AT, "owner": "sarah", "owner_status": "active",
         "owner_status_at": AT, "purpose": "procurement", "department": None}
# The intent as generations 1 and 2 wrote it (no signature yet).
UNSIGNED_RECORD = {k: v for k, v in CURRENT_RECORD.items() if k != "signature"}
HISTORY = schema_dir() / "history"


def _generation(root: Path, files: dict[str, str]) -> SchemaSet:
    """The writers of an earlier generation: schemas/ with these history files as current."""
    folder = schema_folder(root)
    for stem, name in files.items():
        shutil.copy(HISTORY / name, folder / f"{stem}.avsc")
    return SchemaSet.load(folder)


def _previous_generation(root: Path) -> SchemaSet:
    """Before approvals: verdict and decision record of history v1, with the intent of
    then, which had not changed before generation 2 (so it is the v2 file)."""
    return _generation(root, {"verdict": "verdict.v1.avsc",
                              "decision_record": "decision_record.v1.avsc",
                              "lifecycle": "lifecycle.v1.avsc", "intent": "intent.v2.avsc"})


def _generation_2(root: Path) -> SchemaSet:
    """Before intent signatures: every v2 file of schemas/history."""
    return _generation(root, {p.name.removesuffix(".v2.avsc"): p.name
                              for p in HISTORY.glob("*.v2.avsc")})


def test_the_v2_copies_are_the_schemas_before_signatures() -> None:
    """Every schema that changed with intent signatures (itself or through a type it
    embeds) has its v2 copy, and each copy lacks exactly the new fields."""
    stems = {p.name.removesuffix(".v2.avsc") for p in HISTORY.glob("*.v2.avsc")}
    assert stems == {"intent", "lifecycle", "verdict", "decision_record", "approval_request"}
    assert set(_fields(schema_dir() / "intent.avsc")) - set(
        _fields(HISTORY / "intent.v2.avsc")) == {"signature"}
    old_facts = {f["name"] for f in _fields(HISTORY / "verdict.v2.avsc")["facts"]["type"][
        "fields"]}
    new_facts = {f["name"] for f in _fields(schema_dir() / "verdict.avsc")["facts"]["type"][
        "fields"]}
    assert new_facts - old_facts == {"agent_key_jkt"}


def test_verdicts_written_before_approvals_are_read_with_no_approval(tmp_path: Path) -> None:
    old = _previous_generation(tmp_path)
    record = {"intent_id": CURRENT_RECORD["intent_id"], "agent_id": "procure-bot",
              "decision": "DENY", "reasons": ["owner_inactive"], "detail": "gone",
              "credential": None, "credential_id": None, "expires_at": None,
              "policy_version": "scope-1", "decided_at": AT, "facts": FACTS}
    data = old.verdict.encode(record)
    assert data[2:10] != schemas().verdict.fingerprint
    assert schemas().verdict.decode(data) == {
        **record, "approval": None, "policy_ids": [],
        "facts": FACTS | {"agent_key_jkt": None}}


def test_verdicts_and_records_written_before_cedar_are_read_with_no_policy_ids(
        tmp_path: Path) -> None:
    """Generation v3 (the scope allow-list, no policy ids) reads as `policy_ids = []`."""
    for name in ("verdict", "decision_record"):
        added = set(_fields(schema_dir() / f"{name}.avsc")) - set(
            _fields(HISTORY / f"{name}.v3.avsc"))
        assert added == {"policy_ids"}
    v3 = _generation(tmp_path, {"verdict": "verdict.v3.avsc",
                                "decision_record": "decision_record.v3.avsc"})
    record = {"intent_id": CURRENT_RECORD["intent_id"], "agent_id": "procure-bot",
              "decision": "DENY", "reasons": ["out_of_scope"], "detail": "no",
              "credential": None, "credential_id": None, "expires_at": None,
              "policy_version": "scope-1", "decided_at": AT,
              "facts": FACTS | {"agent_key_jkt": None}, "approval": None}
    data = v3.verdict.encode(record)
    assert data[2:10] != schemas().verdict.fingerprint
    assert schemas().verdict.decode(data) == record | {"policy_ids": []}


def test_decision_records_written_before_approvals_are_read(tmp_path: Path) -> None:
    old = _previous_generation(tmp_path)
    record = {"decision_id": "d-1", "intent": UNSIGNED_RECORD, "decision": "ALLOW",
              "reasons": ["allowed"], "detail": "", "policy_version": "scope-1",
              "decided_at": AT, "facts": FACTS, "credential": None, "masked_fields": [],
              "worker": "w"}
    decoded = schemas().decision_record.decode(old.decision_record.encode(record))
    assert decoded["approval"] is None and decoded["decision"] == "ALLOW"
    assert decoded["intent"] == UNSIGNED_RECORD | {"signature": None}


def test_a_pending_verdict_is_unreadable_to_a_reader_from_before_approvals(
        tmp_path: Path) -> None:
    """Readers first: a worker that writes PENDING needs every reader upgraded before it."""
    old = _previous_generation(tmp_path)
    pending = {"intent_id": CURRENT_RECORD["intent_id"], "agent_id": "procure-bot",
               "decision": "PENDING", "reasons": ["pending_approval"], "detail": "",
               "credential": None, "credential_id": None, "expires_at": None,
               "policy_version": "scope-1", "decided_at": AT, "facts": FACTS,
               "approval": None}
    with pytest.raises(UnknownSchemaError):
        old.verdict.decode(schemas().verdict.encode(pending))


def test_every_record_written_before_signatures_is_read_with_the_new_fields_null(
        tmp_path: Path) -> None:
    old = _generation_2(tmp_path)
    new = schemas()
    intent = new.intent.decode(old.intent.encode(UNSIGNED_RECORD))
    assert intent == UNSIGNED_RECORD | {"signature": None}
    assert intent_from_record(intent).signature is None

    registered = {"event_time": AT, "source": "okta", "source_event_id": "e-1",
                  "event": ("dev.gatepass.v1.AgentRegistered", {
                      "agent_id": "procure-bot", "owner": "sarah", "purpose": "procurement",
                      "department": None, "contact": None, "created_by": None}),
                  "recorded_at": None}
    decoded = new.lifecycle.decode(old.lifecycle.encode(registered))
    assert decoded["event"]["public_key"] is None

    verdict = {"intent_id": CURRENT_RECORD["intent_id"], "agent_id": "procure-bot",
               "decision": "DENY", "reasons": ["out_of_scope"], "detail": "no",
               "credential": None, "credential_id": None, "expires_at": None,
               "policy_version": "scope-1", "decided_at": AT, "facts": FACTS,
               "approval": None}
    assert new.verdict.decode(old.verdict.encode(verdict))["facts"]["agent_key_jkt"] is None

    record = {"decision_id": "d-2", "intent": UNSIGNED_RECORD, "decision": "DENY",
              "reasons": ["out_of_scope"], "detail": "", "policy_version": "scope-1",
              "decided_at": AT, "facts": FACTS, "credential": None, "masked_fields": [],
              "worker": "w", "approval": None}
    decoded = new.decision_record.decode(old.decision_record.encode(record))
    assert decoded["intent"]["signature"] is None and decoded["facts"]["agent_key_jkt"] is None

    request = {"request_id": "r-1", "intent": UNSIGNED_RECORD, "owner": "sarah",
               "approvers": ["sarah"], "purpose": "procurement", "department": None,
               "why": ["big"], "requested_at": AT, "expires_at": AT + timedelta(minutes=5),
               "policy_version": "scope-1", "facts": FACTS}
    decoded = new.approval_request.decode(old.approval_request.encode(request))
    assert decoded["intent"]["signature"] is None and decoded["facts"]["agent_key_jkt"] is None


def test_a_signed_intent_is_unreadable_to_a_reader_from_before_signatures(
        tmp_path: Path) -> None:
    """Readers first: upgrade every worker before any SDK sends the new intent schema."""
    old = _generation_2(tmp_path)
    with pytest.raises(UnknownSchemaError):
        old.intent.decode(schemas().intent.encode(CURRENT_RECORD))
