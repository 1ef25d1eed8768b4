"""The core pipeline end to end on a real broker with a real worker process."""

from __future__ import annotations

import base64
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from gatepass.codec.avro import schemas
from gatepass.codec.records import intent_to_record, lifecycle_from_record
from gatepass.core import AgentRegistered, PrincipalStatus, PrincipalStatusChanged
from gatepass.credentials import PassVerifier, load_jwks
from gatepass.errors import AuthorizationTimeout, TokenReplayedError
from gatepass.transport import ensure_topics, partition_for
from support.stack import Stack, new_settings, read_topic, verdicts_for

pytestmark = pytest.mark.integration
AUDIENCE = "procurement-api"


def _agent(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


def test_the_demo_story(stack: Stack) -> None:
    agent, owner = _agent("procure-bot"), _agent("sarah")
    stack.register(agent, owner)
    jwks = load_jwks(f"{stack.settings.web_url}/.well-known/jwks.json")
    verifier = PassVerifier(jwks, audience=AUDIENCE, issuer="gatepass")
    with stack.client(agent_id=agent, audience=AUDIENCE, timeout=20) as gp:
        allowed = gp.authorize("purchase_order.create", "vendor:ACME", amount=Decimal("120.00"))
        assert allowed.decision == "ALLOW", allowed
        assert allowed.reasons == ("allowed",)
        assert allowed.facts["owner"] == owner and allowed.facts["owner_status"] == "active"
        checked = verifier.verify(allowed.credential or "", action="purchase_order.create",
                                  resource="vendor:ACME", amount=Decimal("120"),
                                  currency="USD")
        assert checked.intent_id == allowed.intent_id and checked.owner == owner
        with pytest.raises(TokenReplayedError):
            verifier.verify(allowed.credential or "", action="purchase_order.create",
                            resource="vendor:ACME", amount=Decimal("120"), currency="USD")

        scope = gp.authorize("cloud.provision", "gpu-cluster")
        assert (scope.decision, scope.reasons) == ("DENY", ("out_of_scope",))
        assert scope.credential is None

        stack.publisher().publish(PrincipalStatusChanged(
            principal_id=owner, status=PrincipalStatus.OFFBOARDED,
            event_time=datetime.now(UTC), source="hr"))
        alerts = read_topic(stack.settings, stack.settings.topics.orphans,
                            schemas().orphan_alert,
                            lambda rs: any(r["agent_id"] == agent for r in rs))
        mine = [a for a in alerts if a["agent_id"] == agent]
        assert len(mine) == 1
        assert (mine[0]["owner"], mine[0]["owner_status"], mine[0]["trigger"]) == \
            (owner, "offboarded", "owner_deactivated")

        ghost = gp.authorize("purchase_order.create", "vendor:ACME", amount=Decimal("120.00"))
        assert (ghost.decision, ghost.reasons) == ("DENY", ("owner_inactive",))

    ids = {allowed.intent_id, scope.intent_id, ghost.intent_id}
    audit = read_topic(stack.settings, stack.settings.topics.audit, schemas().decision_record,
                       lambda rs: ids <= {r["intent"]["intent_id"] for r in rs})
    by_id = {r["intent"]["intent_id"]: r for r in audit if r["intent"]["intent_id"] in ids}
    assert by_id[allowed.intent_id]["credential"]["credential_id"] == allowed.credential_id
    assert by_id[allowed.intent_id]["masked_fields"] == ["credential.token"]
    raw_audit = read_topic(stack.settings, stack.settings.topics.audit, None,
                           lambda rs: len(rs) >= len(audit), timeout=5)
    assert all((allowed.credential or "").encode() not in v for _, v in raw_audit)
    denials = read_topic(stack.settings, stack.settings.topics.denials,
                         schemas().decision_record,
                         lambda rs: {scope.intent_id, ghost.intent_id}
                         <= {r["intent"]["intent_id"] for r in rs})
    denied_ids = {r["intent"]["intent_id"] for r in denials}
    assert {scope.intent_id, ghost.intent_id} <= denied_ids
    assert allowed.intent_id not in denied_ids

    # The denial on use is answered by the same single alert (no second one).
    later = read_topic(stack.settings, stack.settings.topics.orphans, schemas().orphan_alert,
                       timeout=3)
    assert len([a for a in later if a["agent_id"] == agent]) == 1


def test_duplicated_intent_gets_the_same_verdict(stack: Stack) -> None:
    agent, owner = _agent("dup-bot"), _agent("owner")
    stack.register(agent, owner)
    with stack.client(agent_id=agent, audience=AUDIENCE, timeout=20) as gp:
        intent = gp.intent("purchase_order.create", "vendor:ACME", amount=Decimal("99.50"))
        first = gp.submit(intent).result(20)
        second = gp.submit(intent).result(20)
        # Same id, other content: still the first verdict, whose pass covers the first content.
        third = gp.submit(replace(intent, amount=Decimal("9999.00"))).result(20)
    assert first.decision == "ALLOW"
    for again in (second, third):
        assert (again.decision, again.reasons, again.credential_id, again.credential) == \
            (first.decision, first.reasons, first.credential_id, first.credential)
    verdicts = verdicts_for(stack.settings, {intent.intent_id}, at_least=3)
    assert len(verdicts) == 3
    assert len({(v["decision"], v["credential_id"]) for v in verdicts}) == 1
    audit = read_topic(stack.settings, stack.settings.topics.audit, schemas().decision_record,
                       timeout=3)
    assert len([r for r in audit if r["intent"]["intent_id"] == intent.intent_id]) == 1


def test_out_of_order_lifecycle_does_not_resurrect_an_owner(stack: Stack) -> None:
    agent, owner = _agent("late-bot"), _agent("owner")
    base = datetime.now(UTC) - timedelta(minutes=10)
    stack.register(agent, owner, at=base)
    pub = stack.publisher()
    pub.publish(PrincipalStatusChanged(principal_id=owner, status=PrincipalStatus.OFFBOARDED,
                                       event_time=base + timedelta(minutes=5), source="hr"))
    # Delivered later, happened earlier: must not win.
    pub.publish(PrincipalStatusChanged(principal_id=owner, status=PrincipalStatus.ACTIVE,
                                       event_time=base + timedelta(minutes=2), source="okta"))
    # The losing record is now followed by the winner under the same key, so compaction
    # (which keeps the last record per key) cannot resurrect the owner on a reload.
    key = f"principal:{owner}/status".encode()

    def repaired(records: list[Any]) -> bool:
        mine = [v for k, v in records if k == key]
        return len(mine) >= 4  # registration, offboarding, the late loser, the repair

    records = read_topic(stack.settings, stack.settings.topics.identity, None, repaired)
    statuses = [lifecycle_from_record(schemas().lifecycle.decode(v)).status  # type: ignore[union-attr]
                for k, v in records if k == key]
    assert statuses[-1] is PrincipalStatus.OFFBOARDED, statuses
    with stack.client(agent_id=agent, audience=AUDIENCE, timeout=20) as gp:
        denied = gp.authorize("vendor.read", "vendor:ACME")
        assert (denied.decision, denied.reasons) == ("DENY", ("owner_inactive",))
        pub.publish(PrincipalStatusChanged(principal_id=owner, status=PrincipalStatus.ACTIVE,
                                           event_time=datetime.now(UTC), source="hr"))
        allowed = gp.authorize("vendor.read", "vendor:ACME")
        assert allowed.decision == "ALLOW", allowed


def test_an_owner_written_just_after_its_agent_raises_no_orphan_alert(stack: Stack) -> None:
    """Agent and owner are keyed apart, so their records sit on different partitions, read
    in no set order; a connector may also write the owner just after the agent. Only an
    owner still unknown once the view has caught up a moment past the check is reported."""
    agent, owner = _agent("late-owner-bot"), _agent("late-owner")
    control, nobody = _agent("no-owner-bot"), _agent("nobody")
    publisher = stack.publisher()
    now = datetime.now(UTC)
    publisher.publish(AgentRegistered(agent_id=agent, owner=owner, purpose="procurement",
                                      event_time=now, source="test"),
                      AgentRegistered(agent_id=control, owner=nobody, purpose="procurement",
                                      event_time=now, source="test"))
    time.sleep(0.5)  # the fan-out has seen the registrations, not yet the owner
    publisher.publish(PrincipalStatusChanged(principal_id=owner, status=PrincipalStatus.ACTIVE,
                                             event_time=now, source="test"))
    # The control's owner never comes: its alert shows checks were raised and decided.
    alerts = read_topic(stack.settings, stack.settings.topics.orphans, schemas().orphan_alert,
                        lambda rs: any(r["agent_id"] == control for r in rs), timeout=30)
    control_alerts = [a for a in alerts if a["agent_id"] == control]
    assert [(a["owner"], a["owner_status"], a["trigger"]) for a in control_alerts] == \
        [(nobody, None, "agent_registered")]
    later = read_topic(stack.settings, stack.settings.topics.orphans, schemas().orphan_alert,
                       timeout=3)
    assert [a for a in later if a["agent_id"] == agent] == []


def test_undecodable_records_go_to_the_dead_letter_topic(stack: Stack) -> None:
    t = stack.settings.topics
    garbage = b"\x00not avro at all " + uuid.uuid4().bytes
    unknown_schema = b"\xc3\x01" + b"\x01" * 8 + uuid.uuid4().bytes
    stack.produce_raw(t.intents, b"mystery-bot", garbage)
    stack.produce_raw(t.intents, b"mystery-bot", unknown_schema)
    letters = read_topic(stack.settings, t.dead_letter, schemas().dead_letter,
                         lambda rs: {garbage, unknown_schema} <= {r["value"] for r in rs})
    by_value = {r["value"]: r for r in letters}
    assert by_value[garbage]["error_code"] == "decode_error"
    assert by_value[unknown_schema]["error_code"] == "schema_unknown"
    for r in (by_value[garbage], by_value[unknown_schema]):
        assert r["source_topic"] == t.intents and r["key"] == b"mystery-bot"
        assert r["source_offset"] >= 0 and r["error"]
    # The worker kept going.
    agent, owner = _agent("after-bad-bot"), _agent("owner")
    stack.register(agent, owner)
    with stack.client(agent_id=agent, audience=AUDIENCE, timeout=20) as gp:
        assert gp.authorize("vendor.read", "vendor:ACME").decision == "ALLOW"


def test_decodable_but_invalid_intents_are_denied(stack: Stack) -> None:
    agent, owner = _agent("sloppy-bot"), _agent("owner")
    stack.register(agent, owner)
    t, codec = stack.settings.topics, schemas().intent
    with stack.client(agent_id=agent, audience=AUDIENCE, timeout=20) as gp:
        negative = gp.intent("purchase_order.create", "vendor:ACME", amount=Decimal("-5.00"))
        assert gp.submit(negative).result(20).reasons == ("invalid_intent",)
        stale = replace(gp.intent("vendor.read", "vendor:ACME"),
                        requested_at=datetime.now(UTC) - timedelta(hours=1))
        assert gp.submit(stale).result(20).reasons == ("stale_intent",)
        # A record keyed by another agent than it names sits in the wrong partition.
        wrong_key = gp.intent("vendor.read", "vendor:ACME")
        stack.produce_raw(t.intents, b"someone-else", codec.encode(intent_to_record(wrong_key)),
                          partition=partition_for(agent, stack.settings.partitions))
    (verdict,) = verdicts_for(stack.settings, {wrong_key.intent_id})
    assert (verdict["decision"], verdict["reasons"]) == ("DENY", ["invalid_intent"])


def test_unregistered_and_suspended_agents_are_denied(stack: Stack) -> None:
    with stack.client(audience=AUDIENCE, timeout=20) as gp:
        v = gp.authorize("vendor.read", "vendor:ACME", agent_id=_agent("stranger"))
    assert (v.decision, v.reasons) == ("DENY", ("unregistered_agent",))


def test_sdk_timeout_is_a_deny_never_an_allow(kafka_bootstrap: str,
                                              tmp_path: Any) -> None:
    settings = new_settings(kafka_bootstrap, tmp_path)  # topics exist, no worker runs
    ensure_topics(settings)
    from gatepass.sdk import GatepassClient

    with GatepassClient.from_settings(settings, agent_id="lonely-bot", audience=AUDIENCE,
                                      timeout=1.0) as gp:
        v = gp.authorize("vendor.read", "vendor:ACME")
        assert (v.decision, v.reasons, v.credential, v.allowed) == \
            ("DENY", ("sdk_timeout",), None, False)
        with pytest.raises(AuthorizationTimeout) as err:
            gp.authorize("vendor.read", "vendor:ACME", raise_on_deny=True)
        assert err.value.code == "timeout"


def test_the_keys_topic_holds_exactly_the_public_jwks(stack: Stack) -> None:
    from gatepass.worker.keys import published_keys

    jwks = load_jwks(f"{stack.settings.web_url}/.well-known/jwks.json")
    published = published_keys(stack.settings, schemas())
    assert set(published) == {k["kid"] for k in jwks["keys"]}
    for record in published.values():
        assert set(record) == {"kid", "kty", "crv", "x", "alg", "status", "published_at"}
        assert (record["kty"], record["crv"], record["alg"]) == ("OKP", "Ed25519", "EdDSA")
    raw = read_topic(stack.settings, stack.settings.topics.keys, None, timeout=3)
    secrets = []
    for pem in (stack.settings.home / "keys").glob("*.pem"):
        key = serialization.load_pem_private_key(pem.read_bytes(), password=None)
        d = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                              serialization.NoEncryption())
        secrets += [d, base64.urlsafe_b64encode(d).rstrip(b"="), d.hex().encode()]
    assert secrets and raw
    for _, value in raw:
        assert not any(secret in (value or b"") for secret in secrets)


def test_rotation_retires_keys_from_the_topic_after_their_grace(kafka_bootstrap: str,
                                                                tmp_path: Any) -> None:
    from gatepass.credentials import KeyStore
    from gatepass.worker.keys import published_keys, sync_public_keys

    settings = new_settings(kafka_bootstrap, tmp_path)
    ensure_topics(settings)
    store = KeyStore.open(settings.keystore_dir)
    first = store.active.kid
    now = datetime.now(UTC)
    assert sync_public_keys(settings, schemas(), store, now) == (1, 0)
    assert sync_public_keys(settings, schemas(), store, now) == (0, 0)  # nothing changed
    second = store.rotate(now=now, grace=timedelta(minutes=10))
    assert sync_public_keys(settings, schemas(), store, now) == (2, 0)  # new + first retired
    keys = published_keys(settings, schemas())
    assert {k: r["status"] for k, r in keys.items()} == {first: "retired", second: "active"}
    later = now + timedelta(minutes=11)
    assert sync_public_keys(settings, schemas(), store, later) == (0, 1)  # tombstone
    assert set(published_keys(settings, schemas())) == {second}
