"""The worker pipeline without a broker: real schemas, keys, issuer, identity state and policy;
a dict stands in for each changelog-backed table and a fixed clock for time."""

from __future__ import annotations

import base64
import io
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastavro
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gatepass.codec import MARKER, SchemaSet, schema_dir, schemas
from gatepass.codec.records import intent_to_record, lifecycle_from_record, lifecycle_to_record
from gatepass.config import Settings
from gatepass.core import (
    AgentRegistered,
    AgentStatus,
    AgentStatusChanged,
    IdentityState,
    Intent,
    PrincipalStatus,
    PrincipalStatusChanged,
    lifecycle_key,
)
from gatepass.credentials import (
    KeyStore,
    PassIssuer,
    PassRequest,
    PassVerifier,
    token_hash,
)
from gatepass.credentials.issuer import IssuedPass
from gatepass.errors import KeyStoreError
from gatepass.policy import load_policy
from gatepass.sdk import agent_public_key
from gatepass.transport import partition_for
from gatepass.worker import IntentOutcome, Outgoing, Pipeline
from gatepass.worker.pipeline import ORPHAN_CHECK_CHUNK

NOW = datetime(2026, 3, 2, 9, 30, 15, 123456, tzinfo=UTC)  # microseconds: Avro keeps millis
NOW_MS = NOW.replace(microsecond=123000)
T0 = datetime(2026, 2, 1, 8, 0, tzinfo=UTC)
SETTINGS = Settings()
TOPICS = SETTINGS.topics
N = SETTINGS.partitions
TTL = timedelta(minutes=5)
INTENT_ID = "7b0e4c8e-2f4e-4a53-9a57-6a3d1b1d2c11"
AUDIENCE = "procurement-api"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class BrokenIssuer(PassIssuer):
    """A real issuer whose signing fails, as with a vanished or unreadable key."""

    def __init__(self, keystore: KeyStore, error: Exception) -> None:
        super().__init__(keystore, issuer="gatepass", ttl=TTL)
        self.error = error

    def issue(self, req: PassRequest) -> IssuedPass:
        raise self.error


def world() -> IdentityState:
    state = IdentityState()
    for who, status in [("sarah", "active"), ("tom", "active"), ("gone", "offboarded")]:
        state.apply(PrincipalStatusChanged(principal_id=who, status=PrincipalStatus(status),
                                           event_time=T0, source="hr-feed"))
    for agent, owner in [("procure-bot", "sarah"), ("helper-bot", "sarah"),
                         ("retired-bot", "sarah"), ("tom-bot", "tom"), ("ghost-bot", "gone")]:
        state.apply(AgentRegistered(agent_id=agent, owner=owner, purpose="procurement",
                                    department="finance", contact=f"{owner}@example.com",
                                    event_time=T0, source="okta"))
    state.apply(AgentStatusChanged(agent_id="retired-bot", status=AgentStatus.DECOMMISSIONED,
                                   event_time=T0, source="okta"))
    return state


@dataclass
class Rig:
    pipeline: Pipeline
    identity: IdentityState
    keystore: KeyStore
    clock: Clock

    def verifier(self) -> PassVerifier:
        return PassVerifier(self.keystore.jwks(now=NOW), audience=AUDIENCE, issuer="gatepass",
                            now=lambda: NOW.timestamp())


@pytest.fixture
def keystore(tmp_path: Path) -> KeyStore:
    return KeyStore.open(tmp_path / "keys", now=NOW)


def make_rig(keystore: KeyStore, *, issuer: PassIssuer | None = None, ready: bool = True,
             identity: IdentityState | None = None, clock: Clock | None = None) -> Rig:
    identity = world() if identity is None else identity
    clock = clock or Clock(NOW)
    pipeline = Pipeline(settings=SETTINGS, schemas=schemas(), policy=load_policy(None),
                        issuer=issuer or PassIssuer(keystore, issuer="gatepass", ttl=TTL),
                        identity=identity, ready=lambda: ready, worker="test-worker:1",
                        clock=clock)
    return Rig(pipeline, identity, keystore, clock)


@pytest.fixture
def rig(keystore: KeyStore) -> Rig:
    return make_rig(keystore)


def intent(**changes: Any) -> Intent:
    fields: dict[str, Any] = {
        "intent_id": INTENT_ID, "agent_id": "procure-bot", "action": "purchase_order.create",
        "resource": "vendor:ACME", "audience": AUDIENCE, "amount": Decimal("120.00"),
        "currency": "USD", "requested_at": NOW - timedelta(seconds=1),
        "context": {"ticket": "PROC-4411"}}
    fields.update(changes)
    return Intent(**fields)


def intent_bytes(**changes: Any) -> bytes:
    return schemas().intent.encode(intent_to_record(intent(**changes)))


def send_intent(rig: Rig, value: bytes | None = None, *, key: bytes | None = b"procure-bot",
                memo: dict[str, bytes] | None = None, offset: int = 7) -> IntentOutcome:
    value = intent_bytes() if value is None else value
    partition = partition_for(key or b"", N)
    return rig.pipeline.on_intent(key, value, partition=partition, offset=offset,
                                  memo={} if memo is None else memo)


def only(records: list[Outgoing], topic: str) -> Outgoing:
    found = [r for r in records if r.topic == topic]
    assert len(found) == 1, [r.topic for r in records]
    return found[0]


def verdict_of(out: IntentOutcome) -> dict[str, Any]:
    return schemas().verdict.decode(only(out.records, TOPICS.verdicts).value)


def audit_of(out: IntentOutcome) -> dict[str, Any]:
    return schemas().decision_record.decode(only(out.records, TOPICS.audit).value)


# ---- ALLOW -------------------------------------------------------------------------------
def test_allow_sends_verdict_and_audit_on_the_intents_partition(rig: Rig) -> None:
    out = send_intent(rig)
    partition = partition_for("procure-bot", N)
    assert [(r.topic, r.key, r.partition) for r in out.records] == [
        (TOPICS.verdicts, b"procure-bot", partition), (TOPICS.audit, b"procure-bot", partition)]
    assert (out.decision, out.reasons, out.intent_id, out.duplicate) == (
        "ALLOW", ("allowed",), INTENT_ID, False)
    verdict = verdict_of(out)
    assert (verdict["intent_id"], verdict["agent_id"], verdict["decision"], verdict["reasons"]) \
        == (INTENT_ID, "procure-bot", "ALLOW", ["allowed"])
    assert verdict["policy_version"] == rig.pipeline.policy.version
    assert verdict["decided_at"] == NOW_MS
    assert verdict["facts"]["owner"] == "sarah" and verdict["facts"]["owner_status"] == "active"


def test_allow_carries_a_pass_the_target_accepts(rig: Rig) -> None:
    verdict = verdict_of(send_intent(rig))
    verified = rig.verifier().verify(verdict["credential"], action="purchase_order.create",
                                     resource="vendor:ACME", amount=Decimal("120"),
                                     currency="USD")
    assert verified.credential_id == verdict["credential_id"]
    assert (verified.intent_id, verified.agent_id, verified.owner) == (INTENT_ID, "procure-bot",
                                                                       "sarah")
    assert verified.claims["policy_version"] == rig.pipeline.policy.version
    assert verified.claims["iat"] == int(NOW.timestamp())
    assert verdict["expires_at"] == verified.expires_at == NOW.replace(microsecond=0) + TTL


def test_audit_holds_the_pass_by_id_and_hash_never_the_token(rig: Rig) -> None:
    out = send_intent(rig)
    token = verdict_of(out)["credential"]
    audit_bytes = only(out.records, TOPICS.audit).value
    _header, payload, signature = token.split(".")
    for secret in (token.encode(), payload.encode(), signature.encode(),
                   base64.urlsafe_b64decode(signature + "==")):
        assert secret not in audit_bytes
    audit = audit_of(out)
    assert audit["credential"]["credential_id"] == verdict_of(out)["credential_id"]
    assert audit["credential"]["token_sha256"] == token_hash(token)
    assert audit["credential"]["kid"] == rig.keystore.active.kid
    assert audit["masked_fields"] == ["credential.token"]
    assert audit["worker"] == "test-worker:1"
    assert audit["intent"]["intent_id"] == INTENT_ID and audit["decision"] == "ALLOW"


def test_allow_is_remembered_as_the_audit_record(rig: Rig) -> None:
    out = send_intent(rig)
    assert out.remember == (INTENT_ID, only(out.records, TOPICS.audit).value)


# ---- DENY --------------------------------------------------------------------------------
def test_deny_also_goes_to_denials(rig: Rig) -> None:
    out = send_intent(rig, intent_bytes(action="cloud.provision", resource="gpu-cluster"))
    assert [r.topic for r in out.records] == [TOPICS.verdicts, TOPICS.audit, TOPICS.denials]
    assert only(out.records, TOPICS.denials).value == only(out.records, TOPICS.audit).value
    assert (out.decision, out.reasons) == ("DENY", ("out_of_scope",))
    verdict = verdict_of(out)
    assert (verdict["credential"], verdict["credential_id"], verdict["expires_at"]) == (
        None, None, None)
    assert "cloud.provision" in verdict["detail"]
    audit = audit_of(out)
    assert audit["credential"] is None and audit["masked_fields"] == []
    assert out.remember is not None and out.remember[0] == INTENT_ID


def test_owner_inactive_emits_an_orphan_check(rig: Rig) -> None:
    out = send_intent(rig, intent_bytes(agent_id="ghost-bot"), key=b"ghost-bot")
    assert (out.decision, out.reasons) == ("DENY", ("owner_inactive",))
    assert [r.topic for r in out.records] == [TOPICS.verdicts, TOPICS.audit, TOPICS.denials,
                                              TOPICS.orphan_checks]
    check_record = only(out.records, TOPICS.orphan_checks)
    assert (check_record.key, check_record.partition) == (b"ghost-bot",
                                                          partition_for("ghost-bot", N))
    check = schemas().orphan_check.decode(check_record.value)
    assert check == {"agent_id": "ghost-bot", "more_agent_ids": [], "trigger": "intent_denied",
                     "intent_id": INTENT_ID, "owner": "gone", "owner_status": "offboarded",
                     "owner_status_at": T0, "requested_at": NOW_MS}


def test_other_denials_emit_no_orphan_check(rig: Rig) -> None:
    out = send_intent(rig, intent_bytes(amount=Decimal("100000.01")))
    assert out.reasons == ("out_of_scope",)
    assert TOPICS.orphan_checks not in [r.topic for r in out.records]


def test_decodable_but_invalid_intent_is_denied_not_dead_lettered(rig: Rig) -> None:
    out = send_intent(rig, intent_bytes(action="BuyStuff"))
    assert (out.decision, out.reasons) == ("DENY", ("invalid_intent",))
    assert "action must look like noun.verb" in verdict_of(out)["detail"]


@pytest.mark.parametrize("key", [b"helper-bot", b"PROCURE-BOT", b"", None])
def test_record_key_other_than_the_agent_id_is_denied_invalid_intent(rig: Rig,
                                                                     key: bytes | None) -> None:
    out = send_intent(rig, key=key)
    assert (out.decision, out.reasons) == ("DENY", ("invalid_intent",))
    verdict = verdict_of(out)
    assert verdict["credential"] is None
    assert verdict["detail"] == "record key must equal agent_id"
    # the answer is keyed by the agent id it names, so its SDK finds it
    assert {r.key for r in out.records} == {b"procure-bot"}


def test_not_ready_is_state_not_ready(keystore: KeyStore) -> None:
    out = send_intent(make_rig(keystore, ready=False))
    assert (out.decision, out.reasons) == ("DENY", ("state_not_ready",))
    assert verdict_of(out)["facts"]["state_ready"] is False


def test_stale_intent_uses_the_injected_clock(keystore: KeyStore) -> None:
    clock = Clock(NOW + SETTINGS.intent_max_age + timedelta(seconds=2))
    out = send_intent(make_rig(keystore, clock=clock))
    assert out.reasons == ("stale_intent",)


@pytest.mark.parametrize("error", [KeyStoreError("key file vanished"), OSError(13, "denied"),
                                   RuntimeError("hsm offline")], ids=type)
def test_signing_failure_is_internal_error_never_allow(keystore: KeyStore,
                                                       error: Exception) -> None:
    out = send_intent(make_rig(keystore, issuer=BrokenIssuer(keystore, error)))
    assert (out.decision, out.reasons) == ("DENY", ("internal_error",))
    verdict = verdict_of(out)
    assert verdict["decision"] == "DENY" and verdict["credential"] is None
    assert verdict["detail"] == "pass could not be signed"
    assert [r.topic for r in out.records] == [TOPICS.verdicts, TOPICS.audit, TOPICS.denials]
    assert audit_of(out)["credential"] is None


# ---- redelivery --------------------------------------------------------------------------
def test_memo_hit_re_emits_the_same_verdict_with_a_byte_identical_pass(rig: Rig) -> None:
    memo: dict[str, bytes] = {}
    first = send_intent(rig, memo=memo)
    assert first.remember is not None
    memo[first.remember[0]] = first.remember[1]
    rig.clock.now = NOW + timedelta(seconds=40)  # redelivered later, e.g. after a rebalance
    again = send_intent(rig, memo=memo, offset=8)
    # Its audit record is not known to be written (the worker may have died before the
    # ack): the same record again (byte-identical: one decision id), then the verdict.
    assert [r.topic for r in again.records] == [TOPICS.audit, TOPICS.verdicts]
    assert only(again.records, TOPICS.audit).value == first.remember[1]
    assert again.remember is None and again.duplicate is True
    # Known to be on the audit topic: the verdict alone.
    known = rig.pipeline.on_intent(b"procure-bot", intent_bytes(),
                                   partition=partition_for("procure-bot", N), offset=9,
                                   memo=memo, audited={INTENT_ID})
    assert [r.topic for r in known.records] == [TOPICS.verdicts]
    assert (again.decision, again.reasons) == (first.decision, first.reasons)
    v1, v2 = verdict_of(first), verdict_of(again)
    assert v2["credential"] == v1["credential"]  # Ed25519 is deterministic
    assert (v2["credential_id"], v2["expires_at"], v2["decided_at"], v2["decision"]) == (
        v1["credential_id"], v1["expires_at"], v1["decided_at"], v1["decision"])
    assert only(again.records, TOPICS.verdicts).partition == partition_for("procure-bot", N)


def test_memo_hit_for_a_deny_repeats_it_even_if_the_world_changed(rig: Rig) -> None:
    memo: dict[str, bytes] = {}
    first = send_intent(rig, intent_bytes(agent_id="ghost-bot"), key=b"ghost-bot", memo=memo)
    assert first.remember is not None
    memo[first.remember[0]] = first.remember[1]
    rig.identity.apply(PrincipalStatusChanged(principal_id="gone", event_time=NOW,
                                              status=PrincipalStatus.ACTIVE, source="hr-feed"))
    again = send_intent(rig, intent_bytes(agent_id="ghost-bot"), key=b"ghost-bot", memo=memo)
    # the first audit record again, no new decision, no orphan check
    assert [r.topic for r in again.records] == [TOPICS.audit, TOPICS.verdicts]
    assert (again.decision, again.reasons) == ("DENY", ("owner_inactive",))
    assert verdict_of(again)["credential"] is None


@pytest.mark.parametrize("error", [KeyStoreError("key file vanished"), RuntimeError("hsm")],
                         ids=type)
def test_failed_re_signing_of_a_remembered_allow_never_sends_an_unsigned_allow(
        keystore: KeyStore, error: Exception) -> None:
    memo: dict[str, bytes] = {}
    first = send_intent(make_rig(keystore), memo=memo)
    assert first.remember is not None
    memo[first.remember[0]] = first.remember[1]
    again = send_intent(make_rig(keystore, issuer=BrokenIssuer(keystore, error)), memo=memo)
    # The ALLOW cannot be reproduced with its pass: nothing is re-sent (the first verdict
    # stands on the topic), never an ALLOW without a pass, never a contradicting DENY.
    assert again.records == [] and again.duplicate


def test_unreadable_remembered_decision_does_not_stop_the_agent(rig: Rig) -> None:
    foreign = MARKER + bytes(8) + b"\x00"
    out = send_intent(rig, memo={INTENT_ID: foreign})
    # Unreadable memory of the first verdict: no second, possibly different, answer.
    assert out.records == [] and out.duplicate


# ---- undecodable records -----------------------------------------------------------------
DEAD_LETTERS = [
    ("not avro", b"{\"intent_id\": 1}", "decode_error"),
    ("empty", b"", "record_invalid"),
    ("tombstone", None, "record_invalid"),
    ("unknown writer", MARKER + bytes(8) + b"\x00", "schema_unknown"),
    ("truncated", intent_bytes()[:-4], "record_invalid"),
]


@pytest.mark.parametrize(("label", "value", "code"), DEAD_LETTERS,
                         ids=[c[0] for c in DEAD_LETTERS])
def test_undecodable_intent_is_one_dead_letter_with_its_origin(rig: Rig, label: str,
                                                               value: bytes | None,
                                                               code: str) -> None:
    out = rig.pipeline.on_intent(b"procure-bot", value, partition=3, offset=1234, memo={})
    assert (out.intent_id, out.remember, out.decision) == (None, None, "")
    assert len(out.records) == 1
    record = out.records[0]
    assert (record.topic, record.key, record.partition) == (TOPICS.dead_letter, b"procure-bot",
                                                            None)
    letter = schemas().dead_letter.decode(record.value)
    assert letter["error_code"] == code
    assert (letter["source_topic"], letter["source_partition"], letter["source_offset"]) == (
        TOPICS.intents, 3, 1234)
    assert letter["key"] == b"procure-bot"
    assert letter["value"] == value
    assert letter["received_at"] == NOW_MS
    assert letter["error"]


def oversized_amount_intent() -> bytes:
    """A foreign producer's intent whose decimal exceeds precision 18 (same fingerprint)."""
    raw = json.loads((schema_dir() / "intent.avsc").read_text())
    for field in raw["fields"]:
        if field["name"] == "amount":
            field["type"][1]["precision"] = 80
    record = intent_to_record(intent(amount=None)) | {"amount": Decimal(10**35).scaleb(-4),
                                                      "currency": "USD"}
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(raw), record)
    return MARKER + schemas().intent.fingerprint + buf.getvalue()


def test_amount_beyond_decimal_precision_is_dead_lettered_or_denied(rig: Rig) -> None:
    out = send_intent(rig, oversized_amount_intent())
    topics = [r.topic for r in out.records]
    assert topics == [TOPICS.dead_letter] or out.reasons == ("invalid_intent",)


# ---- lifecycle fan-out -------------------------------------------------------------------
def lifecycle_bytes(event: Any) -> bytes:
    return schemas().lifecycle.encode(lifecycle_to_record(event))


def observe(rig: Rig, event: Any, offset: int = 0) -> list[Outgoing]:
    """What the worker does with one identity record: its loader applies the decoded record
    to the view (millisecond times, as on the topic), then the fan-out handles it."""
    key, value = lifecycle_key(event).encode(), lifecycle_bytes(event)
    rig.identity.apply(lifecycle_from_record(schemas().lifecycle.decode(value)))
    return rig.pipeline.on_lifecycle(key, value, partition=partition_for(key, N), offset=offset)


OFFBOARDED_AT = T0 + timedelta(days=20)


def offboard_sarah(at: datetime = OFFBOARDED_AT,
                   status: PrincipalStatus = PrincipalStatus.OFFBOARDED) -> PrincipalStatusChanged:
    return PrincipalStatusChanged(principal_id="sarah", status=status, event_time=at,
                                  source="hr-feed", source_event_id=f"hr-{at.timestamp():.0f}")


def test_offboarded_owner_gets_one_check_naming_every_active_agent(rig: Rig) -> None:
    out = observe(rig, offboard_sarah())
    # retired-bot (decommissioned) is not named; helper-bot and procure-bot share a partition,
    # so one check names both, keyed and placed like the first of them
    assert partition_for("helper-bot", N) == partition_for("procure-bot", N)
    assert [(r.topic, r.key, r.partition) for r in out] == [
        (TOPICS.orphan_checks, b"helper-bot", partition_for("helper-bot", N))]
    # not the identity record's partition: that one is keyed by the principal's fact
    assert partition_for(b"principal:sarah/status", N) not in {r.partition for r in out}
    check = schemas().orphan_check.decode(out[0].value)
    assert check == {"agent_id": "helper-bot", "more_agent_ids": ["procure-bot"],
                     "trigger": "owner_deactivated", "intent_id": None, "owner": "sarah",
                     "owner_status": "offboarded", "owner_status_at": OFFBOARDED_AT,
                     "requested_at": NOW_MS}


def test_many_agents_are_checked_in_chunks_each_in_its_agents_partition(rig: Rig) -> None:
    many = [f"bulk-bot-{i:03d}" for i in range(3 * ORPHAN_CHECK_CHUNK)]
    for agent in many:
        observe(rig, AgentRegistered(agent_id=agent, owner="sarah", purpose="procurement",
                                     event_time=T0, source="okta"))
    out = observe(rig, offboard_sarah())
    named: list[str] = []
    for record in out:
        check = schemas().orphan_check.decode(record.value)
        chunk = [check["agent_id"], *check["more_agent_ids"]]
        assert record.key == chunk[0].encode()
        assert 1 <= len(chunk) <= ORPHAN_CHECK_CHUNK
        assert {partition_for(a, N) for a in chunk} == {record.partition}
        named += chunk
    assert sorted(named) == sorted([*many, "helper-bot", "procure-bot"])  # each agent once
    assert len(out) < len(named) // 10  # chunks, not one check per agent


def test_suspension_is_a_deactivation_too(rig: Rig) -> None:
    out = observe(rig, offboard_sarah(status=PrincipalStatus.SUSPENDED))
    check = schemas().orphan_check.decode(out[0].value)
    assert [check["agent_id"], *check["more_agent_ids"]] == ["helper-bot", "procure-bot"]
    assert check["owner_status"] == "suspended"


@pytest.mark.parametrize(("label", "late"), [
    ("older event", offboard_sarah(at=OFFBOARDED_AT - timedelta(hours=1),
                                   status=PrincipalStatus.SUSPENDED)),
    ("same time, less restrictive", offboard_sarah(status=PrincipalStatus.SUSPENDED)),
    ("late active", offboard_sarah(at=OFFBOARDED_AT - timedelta(seconds=1),
                                   status=PrincipalStatus.ACTIVE)),
])
def test_losing_lifecycle_event_emits_no_check_and_writes_the_winner_back(
        rig: Rig, label: str, late: Any) -> None:
    winner = offboard_sarah()
    assert observe(rig, winner)
    out = observe(rig, late, offset=1)
    key = b"principal:sarah/status"
    assert [(r.topic, r.key, r.partition) for r in out] == [
        (TOPICS.identity, key, partition_for(key, N))]
    assert lifecycle_from_record(schemas().lifecycle.decode(out[0].value)) == winner
    record = rig.identity.principal("sarah")
    assert record is not None and record.status is PrincipalStatus.OFFBOARDED


def test_the_winner_written_back_changes_nothing_and_needs_no_repair(rig: Rig) -> None:
    winner = offboard_sarah()
    observe(rig, winner)
    repair = observe(rig, offboard_sarah(status=PrincipalStatus.SUSPENDED), offset=1)[0]
    before = rig.identity.principal("sarah")
    again = observe(rig, lifecycle_from_record(schemas().lifecycle.decode(repair.value)),
                    offset=2)
    assert rig.identity.principal("sarah") == before
    assert TOPICS.identity not in [r.topic for r in again]  # no repair loop


def test_redelivered_winner_needs_no_repair(rig: Rig) -> None:
    observe(rig, offboard_sarah())
    out = observe(rig, offboard_sarah(), offset=1)
    assert TOPICS.identity not in [r.topic for r in out]


def test_active_principal_emits_nothing(rig: Rig) -> None:
    event = PrincipalStatusChanged(principal_id="tom", status=PrincipalStatus.ACTIVE,
                                   event_time=NOW, source="hr-feed")
    assert observe(rig, event) == []


def test_agent_registered_to_an_inactive_owner_gets_a_check(rig: Rig) -> None:
    out = observe(rig, AgentRegistered(agent_id="new-bot", owner="gone", purpose="procurement",
                                       event_time=NOW, source="okta"))
    assert [r.key for r in out] == [b"new-bot"]
    check = schemas().orphan_check.decode(out[0].value)
    assert (check["trigger"], check["owner"], check["owner_status"]) == (
        "agent_registered", "gone", "offboarded")


def test_keyless_re_registration_of_a_keyed_agent_is_written_back_with_its_key(
        rig: Rig) -> None:
    """An IdP sync re-registers a keyed agent without its key: the view keeps the key, and
    the fan-out writes the merged registration under the same key, so compaction cannot
    leave the keyless record alone (a later worker would then not require signatures)."""
    key = agent_public_key(Ed25519PrivateKey.generate())
    observe(rig, AgentRegistered(agent_id="keyed-bot", owner="tom", purpose="procurement",
                                 event_time=T0, source="cli", public_key=key))
    sync = AgentRegistered(agent_id="keyed-bot", owner="tom", purpose="procurement",
                           department="finance", event_time=NOW_MS, source="okta")
    out = observe(rig, sync, offset=1)
    record_key = b"agent:keyed-bot/registration"
    assert [(r.topic, r.key, r.partition) for r in out] == [
        (TOPICS.identity, record_key, partition_for(record_key, N))]
    merged = lifecycle_from_record(schemas().lifecycle.decode(out[0].value))
    assert merged == replace(sync, public_key=key)
    assert observe(rig, merged, offset=2) == []  # applied, nothing more to repair


def test_agent_registered_to_an_active_owner_gets_none(rig: Rig) -> None:
    assert observe(rig, AgentRegistered(agent_id="new-bot", owner="tom", purpose="procurement",
                                        event_time=NOW, source="okta")) == []


def test_undecodable_identity_record_is_dead_lettered(rig: Rig) -> None:
    out = rig.pipeline.on_lifecycle(b"principal:sarah/status", b"junk", partition=1, offset=99)
    assert [r.topic for r in out] == [TOPICS.dead_letter]
    letter = schemas().dead_letter.decode(out[0].value)
    assert (letter["source_topic"], letter["source_partition"], letter["source_offset"],
            letter["value"], letter["error_code"]) == (TOPICS.identity, 1, 99, b"junk",
                                                       "decode_error")


def test_identity_log_after_compaction_rebuilds_the_live_state(rig: Rig) -> None:
    events: list[Any] = [
        PrincipalStatusChanged(principal_id="sarah", status=PrincipalStatus.ACTIVE,
                               event_time=T0, source="hr-feed", source_event_id="hr-1"),
        AgentRegistered(agent_id="procure-bot", owner="sarah", purpose="procurement",
                        event_time=T0, source="okta"),
        offboard_sarah(),
        PrincipalStatusChanged(principal_id="sarah", status=PrincipalStatus.ACTIVE,
                               event_time=OFFBOARDED_AT - timedelta(minutes=5),
                               source="okta", source_event_id="okta-late"),
    ]
    live = make_rig(rig.keystore, identity=IdentityState())
    log: list[tuple[bytes, bytes]] = []
    for offset, event in enumerate(events):
        key, value = lifecycle_key(event).encode(), lifecycle_bytes(event)
        log.append((key, value))
        written = observe(live, event, offset=offset)
        log += [(r.key or b"", r.value) for r in written if r.topic == TOPICS.identity]
    last_offset = {key: i for i, (key, _value) in enumerate(log)}
    compacted = [log[i] for i in sorted(last_offset.values())]
    fresh = IdentityState()
    for _key, value in compacted:
        fresh.apply(lifecycle_from_record(schemas().lifecycle.decode(value)))
    assert fresh.principal("sarah") == live.identity.principal("sarah")


# ---- orphan alerts -----------------------------------------------------------------------
class AlertTable:
    """The `alerted` table as the agent uses it: on_orphan_check reads, the caller writes."""

    def __init__(self) -> None:
        self.memo: dict[str, bytes] = {}

    def check(self, rig: Rig, check: Outgoing, offset: int = 0) -> list[Outgoing]:
        records, remember = rig.pipeline.on_orphan_check(
            check.key, check.value, partition=partition_for(check.key or b"", N),
            offset=offset, memo=self.memo)
        assert [(r.key, r.value) for r in records] == [(a.encode(), v) for a, v in remember]
        self.memo.update(remember)
        return records


def checks_for(out: list[Outgoing], agent: bytes) -> Outgoing:
    """The check that names `agent` (alone or in a chunk)."""
    return next(r for r in out if agent.decode() in (
        lambda c: [c["agent_id"], *c["more_agent_ids"]])(schemas().orphan_check.decode(r.value)))


def alert_for(records: list[Outgoing], agent: bytes) -> dict[str, Any]:
    (record,) = [r for r in records if r.key == agent]
    return schemas().orphan_alert.decode(record.value)


@pytest.fixture
def alerts() -> Iterator[AlertTable]:
    yield AlertTable()


def test_first_check_raises_an_alert_and_is_remembered(rig: Rig, alerts: AlertTable) -> None:
    check = checks_for(observe(rig, offboard_sarah()), b"procure-bot")
    out = alerts.check(rig, check)
    # the check names both of sarah's active agents: one alert each, in their partition
    assert [(r.topic, r.key, r.partition) for r in out] == [
        (TOPICS.orphans, agent, partition_for(agent, N))
        for agent in (b"helper-bot", b"procure-bot")]
    alert = alert_for(out, b"procure-bot")
    assert alert | {"alert_id": None} == {
        "alert_id": None, "agent_id": "procure-bot", "owner": "sarah",
        "owner_status": "offboarded", "owner_status_at": OFFBOARDED_AT,
        "purpose": "procurement", "department": "finance", "contact": "sarah@example.com",
        "trigger": "owner_deactivated", "intent_id": None, "detected_at": NOW_MS}
    assert alerts.memo == {"helper-bot": out[0].value, "procure-bot": out[1].value}


def test_alert_id_is_deterministic_for_agent_and_owner_event(keystore: KeyStore) -> None:
    ids = []
    for _ in range(2):
        rig = make_rig(keystore)
        check = checks_for(observe(rig, offboard_sarah()), b"procure-bot")
        ids.append(alert_for(AlertTable().check(rig, check), b"procure-bot")["alert_id"])
    assert ids[0] == ids[1]


def test_same_episode_again_raises_nothing(rig: Rig, alerts: AlertTable) -> None:
    check = checks_for(observe(rig, offboard_sarah()), b"procure-bot")
    assert alerts.check(rig, check)
    remembered = dict(alerts.memo)
    assert alerts.check(rig, check, offset=1) == []
    # an intent denied for the same episode raises a check too: still the one alert
    denied = send_intent(rig)
    assert denied.reasons == ("owner_inactive",)
    assert alerts.check(rig, only(denied.records, TOPICS.orphan_checks), offset=2) == []
    assert alerts.memo == remembered


def test_owner_reinstated_after_the_check_raises_nothing(rig: Rig, alerts: AlertTable) -> None:
    check = checks_for(observe(rig, offboard_sarah()), b"procure-bot")
    observe(rig, offboard_sarah(at=OFFBOARDED_AT + timedelta(hours=1),
                                status=PrincipalStatus.ACTIVE), offset=1)
    assert alerts.check(rig, check) == []
    assert alerts.memo == {}


def test_a_new_deactivation_episode_raises_a_new_alert(rig: Rig, alerts: AlertTable) -> None:
    first = alerts.check(rig, checks_for(observe(rig, offboard_sarah()), b"procure-bot"))
    observe(rig, offboard_sarah(at=OFFBOARDED_AT + timedelta(days=1),
                                status=PrincipalStatus.ACTIVE), offset=1)
    later = OFFBOARDED_AT + timedelta(days=2)
    second = alerts.check(rig, checks_for(observe(rig, offboard_sarah(at=later), offset=2),
                                          b"procure-bot"), offset=1)
    assert len(first) == len(second) == 2  # helper-bot and procure-bot, both times
    a1, a2 = (alert_for(r, b"procure-bot") for r in (first, second))
    assert a1["alert_id"] != a2["alert_id"]
    assert (a1["owner_status_at"], a2["owner_status_at"]) == (OFFBOARDED_AT, later)
    assert alerts.memo["procure-bot"] == next(r.value for r in second if r.key == b"procure-bot")


def test_each_agent_of_the_owner_gets_its_own_alert(rig: Rig, alerts: AlertTable) -> None:
    out = [r for check in observe(rig, offboard_sarah()) for r in alerts.check(rig, check)]
    assert sorted(r.key or b"" for r in out) == [b"helper-bot", b"procure-bot"]
    assert sorted(alerts.memo) == ["helper-bot", "procure-bot"]


def test_a_chunk_alerts_only_the_agents_not_yet_alerted_for_the_episode(
        rig: Rig, alerts: AlertTable) -> None:
    """A chunk redelivered after some of its alerts were remembered (a crash mid-chunk)."""
    check = checks_for(observe(rig, offboard_sarah()), b"procure-bot")
    first = alerts.check(rig, check)
    del alerts.memo["helper-bot"]
    again = alerts.check(rig, check, offset=1)
    assert [r.key for r in again] == [b"helper-bot"]
    assert again[0].value == first[0].value  # the same alert, byte for byte


def test_an_agent_named_twice_in_a_check_gets_one_alert(rig: Rig) -> None:
    observe(rig, offboard_sarah())
    value = schemas().orphan_check.encode({
        "agent_id": "procure-bot", "more_agent_ids": ["helper-bot", "procure-bot", "helper-bot"],
        "trigger": "owner_deactivated", "intent_id": None, "owner": "sarah",
        "owner_status": "offboarded", "owner_status_at": OFFBOARDED_AT, "requested_at": NOW_MS})
    records, remember = rig.pipeline.on_orphan_check(
        b"procure-bot", value, partition=partition_for("procure-bot", N), offset=0, memo={})
    assert [r.key for r in records] == [b"procure-bot", b"helper-bot"]
    assert [a for a, _ in remember] == ["procure-bot", "helper-bot"]


def test_a_check_written_before_chunks_is_still_read(rig: Rig, tmp_path: Path) -> None:
    """Generation 4 of the schema named one agent per check; such checks still alert."""
    observe(rig, offboard_sarah())
    folder = tmp_path / "schemas"
    shutil.copytree(schema_dir(), folder)
    shutil.copy(folder / "history" / "orphan_check.v4.avsc", folder / "orphan_check.avsc")
    written = SchemaSet.load(folder).orphan_check.encode({
        "agent_id": "procure-bot", "trigger": "owner_deactivated", "intent_id": None,
        "owner": "sarah", "owner_status": "offboarded", "owner_status_at": OFFBOARDED_AT,
        "requested_at": NOW_MS})
    assert written[2:10] != schemas().orphan_check.fingerprint  # another writer schema
    assert schemas().orphan_check.decode(written)["more_agent_ids"] == []
    records, remember = rig.pipeline.on_orphan_check(
        b"procure-bot", written, partition=partition_for("procure-bot", N), offset=0, memo={})
    assert [r.key for r in records] == [b"procure-bot"]
    assert [a for a, _ in remember] == ["procure-bot"]


def test_a_check_naming_an_agent_of_another_partition_is_dead_lettered(rig: Rig) -> None:
    """The `alerted` memo consulted is this partition's: an agent living elsewhere (its memo
    there) could be alerted a second time, so the whole check is refused, not half-run."""
    observe(rig, offboard_sarah())
    here = partition_for("procure-bot", N)
    elsewhere = next(a for a in ("retired-bot", "tom-bot", "ghost-bot")
                     if partition_for(a, N) != here)
    value = schemas().orphan_check.encode({
        "agent_id": "procure-bot", "more_agent_ids": ["helper-bot", elsewhere],
        "trigger": "owner_deactivated", "intent_id": None, "owner": "sarah",
        "owner_status": "offboarded", "owner_status_at": OFFBOARDED_AT, "requested_at": NOW_MS})
    records, remember = rig.pipeline.on_orphan_check(b"procure-bot", value, partition=here,
                                                     offset=7, memo={})
    assert remember == [] and [r.topic for r in records] == [TOPICS.dead_letter]
    letter = schemas().dead_letter.decode(records[0].value)
    assert (letter["error_code"], letter["source_offset"]) == ("record_invalid", 7)
    assert "partition" in letter["error"]
    # the same check without the stranger alerts both agents of this partition
    value = schemas().orphan_check.encode({
        **schemas().orphan_check.decode(value), "more_agent_ids": ["helper-bot"]})
    records, remember = rig.pipeline.on_orphan_check(b"procure-bot", value, partition=here,
                                                     offset=8, memo={})
    assert [a for a, _ in remember] == ["procure-bot", "helper-bot"]


def _unknown_owner_check(agent: str, owner: str) -> bytes:
    return schemas().orphan_check.encode({
        "agent_id": agent, "more_agent_ids": [], "trigger": "agent_registered",
        "intent_id": None, "owner": owner, "owner_status": None, "owner_status_at": None,
        "requested_at": NOW_MS})


def test_a_check_raised_for_an_unknown_owner_alerts_while_it_is_still_unknown(
        rig: Rig) -> None:
    value = _unknown_owner_check("procure-bot", "nobody-we-know")
    records, _ = rig.pipeline.on_orphan_check(
        b"procure-bot", value, partition=partition_for("procure-bot", N), offset=0, memo={})
    alert = alert_for(records, b"procure-bot")
    assert (alert["owner"], alert["owner_status"], alert["trigger"]) == (
        "nobody-we-know", None, "agent_registered")


@pytest.mark.parametrize("offboarded", [False, True], ids=["now-active", "now-offboarded"])
def test_a_check_raised_for_an_unknown_owner_is_void_once_the_owner_is_known(
        rig: Rig, alerts: AlertTable, offboarded: bool) -> None:
    """Seen in CI: an agent registered with its owner, the owner offboarded a second later,
    and the registration's check (owner not yet read) alerted "owner unknown" beside the
    offboarding's own alert. The owner's facts decide: the offboarding's check alerts."""
    if offboarded:
        deactivation = observe(rig, offboard_sarah())
    value = _unknown_owner_check("procure-bot", "sarah")
    records, remember = rig.pipeline.on_orphan_check(
        b"procure-bot", value, partition=partition_for("procure-bot", N), offset=0,
        memo=alerts.memo)
    assert (records, remember) == ([], [])
    if offboarded:
        out = alerts.check(rig, checks_for(deactivation, b"procure-bot"), offset=1)
        alert = alert_for(out, b"procure-bot")
        assert (alert["owner_status"], alert["trigger"]) == ("offboarded", "owner_deactivated")


def test_undecodable_orphan_check_is_dead_lettered(rig: Rig) -> None:
    records, remember = rig.pipeline.on_orphan_check(b"procure-bot", b"junk", partition=0,
                                                     offset=5, memo={})
    assert remember == []
    assert [r.topic for r in records] == [TOPICS.dead_letter]
    letter = schemas().dead_letter.decode(records[0].value)
    assert (letter["source_topic"], letter["source_offset"]) == (TOPICS.orphan_checks, 5)


def test_intent_on_another_partition_than_its_agent_is_denied_invalid_intent(rig: Rig) -> None:
    """A producer using librdkafka's default partitioner puts keys elsewhere than murmur2:
    the agent's remembered verdicts and alerts would not be found, so it is refused."""
    right = partition_for(b"procure-bot", N)
    out = rig.pipeline.on_intent(b"procure-bot", intent_bytes(), partition=(right + 1) % N,
                                 offset=9, memo={})
    assert (out.decision, out.reasons) == ("DENY", ("invalid_intent",))
    assert "murmur2" in verdict_of(out)["detail"]
    assert all(r.partition == (right + 1) % N for r in out.records if r.partition is not None)
