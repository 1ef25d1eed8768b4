"""Signed intents and key-bound passes in the pipeline, without a broker."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gatepass.codec import schemas
from gatepass.codec.records import intent_to_record
from gatepass.config import Settings
from gatepass.core import AgentRegistered, IdentityState, key_thumbprint, sign_intent
from gatepass.credentials import KeyStore, PassIssuer, PassVerifier, dpop_proof
from gatepass.credentials._jose import b64url_decode
from gatepass.errors import ProofMissingError
from gatepass.policy import load_policy
from gatepass.sdk import agent_public_key
from gatepass.transport import partition_for
from gatepass.worker import Pipeline
from unit.worker.test_pipeline import (
    AUDIENCE,
    NOW,
    SETTINGS,
    T0,
    TOPICS,
    TTL,
    Clock,
    N,
    Rig,
    audit_of,
    intent,
    make_rig,
    send_intent,
    verdict_of,
    world,
)

AGENT_KEY = Ed25519PrivateKey.from_private_bytes(b"\x05" * 32)
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(b"\x06" * 32)
JKT = key_thumbprint(agent_public_key(AGENT_KEY))
URL = "https://procurement.example/purchase-orders"
EXECUTED: dict[str, Any] = {"action": "purchase_order.create", "resource": "vendor:ACME",
                            "amount": Decimal("120"), "currency": "USD"}


def register(identity: IdentityState, agent: str, owner: str = "sarah",
             key: Ed25519PrivateKey | None = AGENT_KEY, public_key: str | None = None,
             at: timedelta = timedelta(0)) -> None:
    identity.apply(AgentRegistered(
        agent_id=agent, owner=owner, purpose="procurement", department="finance",
        public_key=public_key or (agent_public_key(key) if key else None),
        event_time=T0 + timedelta(hours=1) + at, source="okta"))


def keyed_world() -> IdentityState:
    identity = world()
    register(identity, "keyed-bot")
    register(identity, "keyed-ghost", owner="gone")
    return identity


def signed(key: Ed25519PrivateKey | None = AGENT_KEY, **changes: Any) -> bytes:
    it = intent(**{"agent_id": "keyed-bot", **changes})
    if key is not None:
        it = replace(it, signature=sign_intent(it, key))
    return schemas().intent.encode(intent_to_record(it))


def send(rig: Rig, value: bytes, agent: str = "keyed-bot",
         memo: dict[str, bytes] | None = None) -> Any:
    return send_intent(rig, value, key=agent.encode(), memo=memo)


def claims_of(token: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(b64url_decode(token.split(".")[1]))
    return result


@pytest.fixture
def keystore(tmp_path: Path) -> KeyStore:
    return KeyStore.open(tmp_path / "keys", now=NOW)


@pytest.fixture
def rig(keystore: KeyStore) -> Rig:
    return make_rig(keystore, identity=keyed_world())


def test_a_signed_intent_gets_a_pass_bound_to_the_agent_key(rig: Rig) -> None:
    out = send(rig, signed())
    assert (out.decision, out.reasons) == ("ALLOW", ("allowed",))
    verdict = verdict_of(out)
    assert claims_of(verdict["credential"])["cnf"] == {"jkt": JKT}
    assert verdict["facts"]["agent_key_jkt"] == JKT
    record = audit_of(out)
    assert record["facts"]["agent_key_jkt"] == JKT
    assert record["intent"]["signature"] is not None  # the audit trail keeps the evidence
    verifier = rig.verifier()
    with pytest.raises(ProofMissingError):
        verifier.verify(verdict["credential"], **EXECUTED)
    proof = dpop_proof(AGENT_KEY, token=verdict["credential"], method="POST", url=URL,
                       now=NOW.timestamp())
    verified = verifier.verify(verdict["credential"], **EXECUTED, dpop=proof, method="POST",
                               url=URL)
    assert verified.key_thumbprint == JKT


def test_an_unkeyed_agent_still_gets_a_bearer_pass(rig: Rig) -> None:
    out = send_intent(rig)
    assert out.decision == "ALLOW"
    assert "cnf" not in claims_of(verdict_of(out)["credential"])
    assert verdict_of(out)["facts"]["agent_key_jkt"] is None


@pytest.mark.parametrize(("label", "value"), [
    ("unsigned", signed(key=None)),
    ("another key", signed(key=OTHER_KEY)),
])
def test_an_intent_not_signed_by_the_agent_is_denied(rig: Rig, label: str,
                                                     value: bytes) -> None:
    out = send(rig, value)
    assert (out.decision, out.reasons) == ("DENY", ("intent_signature_invalid",))
    assert [r.topic for r in out.records] == [TOPICS.verdicts, TOPICS.audit, TOPICS.denials]
    assert verdict_of(out)["credential"] is None


def test_an_unsigned_intent_for_a_ghost_agent_raises_no_orphan_check(rig: Rig) -> None:
    """Only a request the agent proved it made may speak about its owner."""
    out = send(rig, signed(key=None, agent_id="keyed-ghost"), agent="keyed-ghost")
    assert out.reasons == ("intent_signature_invalid",)
    assert TOPICS.orphan_checks not in [r.topic for r in out.records]
    proven = send(rig, signed(agent_id="keyed-ghost"), agent="keyed-ghost")
    assert proven.reasons == ("owner_inactive",)
    assert TOPICS.orphan_checks in [r.topic for r in proven.records]


def test_the_deployment_switch_makes_signatures_mandatory(keystore: KeyStore) -> None:
    strict = Pipeline(settings=Settings(require_signed_intents=True), schemas=schemas(),
                      policy=load_policy(None),
                      issuer=PassIssuer(keystore, issuer="gatepass", ttl=TTL),
                      identity=keyed_world(), ready=lambda: True, clock=Clock(NOW))
    rig = Rig(strict, strict.identity, keystore, Clock(NOW))
    out = send_intent(rig)  # procure-bot has no key: nothing can prove it asked
    assert (out.decision, out.reasons) == ("DENY", ("intent_signature_invalid",))
    assert send(rig, signed()).decision == "ALLOW"


def test_a_redelivered_intent_gets_the_same_bound_pass_after_a_key_change(rig: Rig) -> None:
    memo: dict[str, bytes] = {}
    first = send(rig, signed(), memo=memo)
    assert first.remember is not None
    memo[first.remember[0]] = first.remember[1]
    register(rig.identity, "keyed-bot", key=OTHER_KEY, at=timedelta(minutes=5))  # rotated
    rig.clock.now = NOW + timedelta(seconds=30)
    again = send(rig, signed(), memo=memo)
    assert again.duplicate
    assert verdict_of(again)["credential"] == verdict_of(first)["credential"]
    assert claims_of(verdict_of(again)["credential"])["cnf"] == {"jkt": JKT}


def test_a_malformed_registered_key_never_yields_a_bearer_pass(rig: Rig) -> None:
    register(rig.identity, "keyed-bot", public_key="A" * 43, at=timedelta(minutes=5))
    out = send(rig, signed())
    assert (out.decision, out.reasons) == ("DENY", ("intent_signature_invalid",))
    assert verdict_of(out)["facts"]["agent_key_jkt"] is None


# ---- approvals -----------------------------------------------------------------------------
def test_an_approved_pass_is_bound_to_the_agent_key(tmp_path: Path) -> None:
    from unit.worker.test_pipeline_approvals import KEY, decision

    keystore = KeyStore.open(tmp_path / "keys", now=NOW)
    identity = world()
    register(identity, "procure-bot")  # the approvals helpers speak for procure-bot
    clock = Clock(NOW)
    pipeline = Pipeline(settings=SETTINGS, schemas=schemas(), policy=load_policy(None),
                        issuer=PassIssuer(keystore, issuer="gatepass", ttl=TTL),
                        identity=identity, ready=lambda: True, clock=clock,
                        approval_key=lambda: KEY)
    partition = partition_for("procure-bot", N)
    decided: dict[str, bytes] = {}
    pending: dict[str, bytes] = {}
    big = intent(amount=Decimal("50000.00"))
    value = schemas().intent.encode(intent_to_record(
        replace(big, signature=sign_intent(big, AGENT_KEY))))
    out = pipeline.on_intent(b"procure-bot", value, partition=partition, offset=1,
                             memo=decided)
    assert out.decision == "PENDING" and out.pending is not None and out.remember is not None
    pending[out.pending[0]], decided[out.remember[0]] = out.pending[1], out.remember[1]
    request = schemas().approval_request.decode(out.pending[1])
    assert request["intent"]["signature"] is not None and request["facts"]["agent_key_jkt"] == JKT

    clock.now = NOW + timedelta(seconds=30)
    final = pipeline.on_approval(b"procure-bot", decision(), partition=partition, offset=2,
                                 pending=pending, decided=decided)
    assert final.final == "ALLOW"
    (rec,) = [r for r in final.records if r.topic == TOPICS.verdicts]
    token = schemas().verdict.decode(rec.value)["credential"]
    assert claims_of(token)["cnf"] == {"jkt": JKT}
    assert final.remember is not None
    decided[final.remember[0]] = final.remember[1]
    again = pipeline.on_intent(b"procure-bot", value, partition=partition, offset=3,
                               memo=decided)
    (rec,) = [r for r in again.records if r.topic == TOPICS.verdicts]
    assert schemas().verdict.decode(rec.value)["credential"] == token

    verifier = PassVerifier(keystore.jwks(now=NOW), audience=AUDIENCE, issuer="gatepass",
                            now=lambda: clock.now.timestamp())
    proof = dpop_proof(AGENT_KEY, token=token, method="POST", url=URL,
                       now=clock.now.timestamp())
    verifier.verify(token, action="purchase_order.create", resource="vendor:ACME",
                    amount=Decimal("50000"), currency="USD", dpop=proof, method="POST", url=URL)


def test_an_approval_for_an_agent_whose_key_broke_meanwhile_is_denied(tmp_path: Path) -> None:
    from unit.worker.test_pipeline_approvals import KEY, decision

    keystore = KeyStore.open(tmp_path / "keys", now=NOW)
    identity = world()
    register(identity, "procure-bot")
    pipeline = Pipeline(settings=SETTINGS, schemas=schemas(), policy=load_policy(None),
                        issuer=PassIssuer(keystore, issuer="gatepass", ttl=TTL),
                        identity=identity, ready=lambda: True, clock=Clock(NOW),
                        approval_key=lambda: KEY)
    partition = partition_for("procure-bot", N)
    big = intent(amount=Decimal("50000.00"))
    value = schemas().intent.encode(intent_to_record(
        replace(big, signature=sign_intent(big, AGENT_KEY))))
    out = pipeline.on_intent(b"procure-bot", value, partition=partition, offset=1, memo={})
    assert out.pending is not None and out.remember is not None
    register(identity, "procure-bot", public_key="A" * 43, at=timedelta(minutes=5))
    final = pipeline.on_approval(b"procure-bot", decision(), partition=partition, offset=2,
                                 pending={out.pending[0]: out.pending[1]},
                                 decided={out.remember[0]: out.remember[1]})
    assert (final.final, final.reason) == ("DENY", "internal_error")
