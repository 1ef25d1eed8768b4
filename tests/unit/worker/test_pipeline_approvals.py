"""The approval path of the pipeline without a broker: pending -> decision/timer -> one final
verdict, with dicts standing in for the `pending` and `decided` tables."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from gatepass.codec import schemas
from gatepass.codec.records import approval_decision_to_record
from gatepass.core import PrincipalStatus, PrincipalStatusChanged
from gatepass.core.approval import ApprovalDecision, approval_code, decision_proof
from gatepass.credentials import KeyStore, PassIssuer, PassVerifier
from gatepass.policy import load_policy
from gatepass.transport import partition_for
from gatepass.worker import Pipeline
from gatepass.worker.pipeline import ApprovalOutcome, IntentOutcome, request_id_for
from unit.worker.test_pipeline import (
    AUDIENCE,
    INTENT_ID,
    NOW,
    NOW_MS,
    SETTINGS,
    TOPICS,
    TTL,
    Clock,
    N,
    intent_bytes,
    world,
)

KEY = bytes(range(32))
BIG = Decimal("50000.00")
PARTITION = partition_for("procure-bot", N)


@dataclass
class Rig:
    pipeline: Pipeline
    keystore: KeyStore
    clock: Clock
    pending: dict[str, bytes] = field(default_factory=dict)
    decided: dict[str, bytes] = field(default_factory=dict)

    def intent(self, **changes: object) -> IntentOutcome:
        out = self.pipeline.on_intent(b"procure-bot", intent_bytes(amount=BIG, **changes),
                                      partition=PARTITION, offset=1, memo=self.decided)
        if out.remember:
            self.decided[out.remember[0]] = out.remember[1]
        if out.pending:
            self.pending[out.pending[0]] = out.pending[1]
        return out

    def apply(self, value: bytes, key: bytes = b"procure-bot",
              partition: int = PARTITION) -> ApprovalOutcome:
        out = self.pipeline.on_approval(key, value, partition=partition, offset=2,
                                        pending=self.pending, decided=self.decided)
        if out.remember:
            self.decided[out.remember[0]] = out.remember[1]
        if out.finish:
            self.pending.pop(out.finish, None)
        return out


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    keystore = KeyStore.open(tmp_path / "keys", now=NOW)
    clock = Clock(NOW)
    pipeline = Pipeline(settings=SETTINGS, schemas=schemas(), policy=load_policy(None),
                        issuer=PassIssuer(keystore, issuer="gatepass", ttl=TTL),
                        identity=world(), ready=lambda: True, worker="w", clock=clock,
                        approval_key=lambda: KEY)
    return Rig(pipeline, keystore, clock)


def decision(approver: str = "sarah", approve: bool = True, code: str | None = None,
             decision_id: str | None = None) -> bytes:
    request_id = request_id_for(INTENT_ID)
    decision_id = decision_id or str(uuid.uuid4())
    code = code or approval_code(KEY, request_id, approver)
    d = ApprovalDecision(decision_id=decision_id, request_id=request_id, intent_id=INTENT_ID,
                         agent_id="procure-bot", approver=approver, approve=approve,
                         proof=decision_proof(code, request_id=request_id, intent_id=INTENT_ID,
                                              agent_id="procure-bot", approver=approver,
                                              approve=approve, decision_id=decision_id),
                         channel="test")
    return schemas().approval_decision.encode(approval_decision_to_record(d, submitted_at=NOW))


def tick() -> bytes:
    return schemas().approval_timeout.encode({
        "request_id": "", "intent_id": INTENT_ID, "agent_id": "procure-bot",
        "expires_at": NOW, "raised_at": NOW})


def topics(out: IntentOutcome | ApprovalOutcome) -> list[str]:
    return [r.topic for r in out.records]


def verdict(out: IntentOutcome | ApprovalOutcome) -> dict[str, object]:
    (rec,) = [r for r in out.records if r.topic == TOPICS.verdicts]
    return schemas().verdict.decode(rec.value)


def test_a_large_order_is_pending_with_a_request_and_no_pass(rig: Rig) -> None:
    out = rig.intent()
    assert (out.decision, out.reasons) == ("PENDING", ("pending_approval",))
    assert topics(out) == [TOPICS.verdicts, TOPICS.audit, TOPICS.approvals]
    v = verdict(out)
    assert v["credential"] is None and v["credential_id"] is None
    approval = v["approval"]
    assert isinstance(approval, dict)
    assert approval["request_id"] == request_id_for(INTENT_ID)
    assert approval["expires_at"] == NOW_MS + SETTINGS.approval_timeout
    (req_rec,) = [r for r in out.records if r.topic == TOPICS.approvals]
    request = schemas().approval_request.decode(req_rec.value)
    assert request["approvers"] == ["sarah"] and request["owner"] == "sarah"
    assert req_rec.partition == PARTITION and req_rec.key == b"procure-bot"
    assert out.pending is not None and out.pending[0] == INTENT_ID


def test_the_owners_approval_gives_one_allow_naming_her(rig: Rig) -> None:
    rig.intent()
    rig.clock.now = NOW + timedelta(seconds=30)
    out = rig.apply(decision())
    assert (out.final, out.reason, out.alert) == ("ALLOW", "approved", None)
    assert topics(out) == [TOPICS.verdicts, TOPICS.audit]
    v = verdict(out)
    verifier = PassVerifier(rig.keystore.jwks(now=NOW), audience=AUDIENCE, issuer="gatepass",
                            now=lambda: (NOW + timedelta(seconds=31)).timestamp())
    checked = verifier.verify(str(v["credential"]), action="purchase_order.create",
                              resource="vendor:ACME", amount=BIG, currency="USD")
    assert checked.approver == "sarah"
    assert INTENT_ID not in rig.pending
    # the intent redelivered now gets the final verdict, the same pass byte for byte
    again = rig.intent()
    assert again.duplicate and verdict(again)["credential"] == v["credential"]


def test_a_deny_is_final_and_issues_nothing(rig: Rig) -> None:
    rig.intent()
    out = rig.apply(decision(approve=False))
    assert (out.final, out.reason) == ("DENY", "approval_denied")
    assert topics(out) == [TOPICS.verdicts, TOPICS.audit, TOPICS.denials]
    assert verdict(out)["credential"] is None


def test_a_forged_decision_only_alerts(rig: Rig) -> None:
    rig.intent()
    out = rig.apply(decision(code="A" * 22))
    assert (out.final, out.alert) == (None, "approval_forged")
    assert topics(out) == [TOPICS.approval_alerts]
    alert = schemas().approval_alert.decode(out.records[0].value)
    assert alert["reason"] == "approval_forged" and alert["approver"] == "sarah"
    assert INTENT_ID in rig.pending  # still waiting for a real decision


def test_first_decision_wins_and_a_redelivery_repeats_it(rig: Rig) -> None:
    rig.intent()
    first = decision(decision_id="d-1")
    won = rig.apply(first)
    again = rig.apply(first)  # the same event delivered twice
    assert again.final is None and again.alert is None
    assert verdict(again) == verdict(won)
    late = rig.apply(decision(approve=False))
    assert (late.final, late.alert, topics(late)) == (None, "approval_replayed",
                                                       [TOPICS.approval_alerts])


def test_the_timer_expires_it_only_when_due(rig: Rig) -> None:
    rig.intent()
    early = rig.apply(tick())
    assert early.final is None and early.records == []
    rig.clock.now = NOW + SETTINGS.approval_timeout + timedelta(seconds=1)
    out = rig.apply(tick())
    assert (out.final, out.reason) == ("DENY", "approval_expired")
    assert rig.apply(tick()).records == []  # a second tick finds nothing pending


def test_an_owner_offboarded_while_pending_ends_it_at_the_next_tick(rig: Rig) -> None:
    rig.intent()
    rig.pipeline.identity.apply(PrincipalStatusChanged(
        principal_id="sarah", status=PrincipalStatus.OFFBOARDED, event_time=NOW,
        source="hr-feed"))
    out = rig.apply(tick())
    assert (out.final, out.reason) == ("DENY", "owner_inactive")
    late = rig.apply(decision())
    assert late.alert == "approver_inactive" and late.final is None


@pytest.mark.parametrize(("key", "partition"), [(b"other-bot", PARTITION),
                                                (b"procure-bot", (PARTITION + 1) % N)])
def test_a_misrouted_decision_is_dead_lettered(rig: Rig, key: bytes, partition: int) -> None:
    rig.intent()
    out = rig.apply(decision(), key=key, partition=partition)
    assert topics(out) == [TOPICS.dead_letter] and out.final is None
    assert INTENT_ID in rig.pending


def test_garbage_on_the_decisions_topic_is_dead_lettered(rig: Rig) -> None:
    out = rig.apply(b"\x00garbage")
    assert topics(out) == [TOPICS.dead_letter]


def test_without_an_approval_key_nothing_is_approved(rig: Rig) -> None:
    rig.intent()

    def no_key() -> bytes:
        raise RuntimeError("key store unreadable")

    rig.pipeline._approval_key = no_key
    out = rig.apply(decision())
    assert out.final is None and out.alert == "internal_error"


def test_a_final_verdict_outranks_a_stale_pending_entry(rig: Rig) -> None:
    """After a crash the `pending` table may still hold a request whose final verdict was
    remembered: the final verdict stands, the stale entry goes, nothing is decided again."""
    rig.intent()
    stale = dict(rig.pending)
    won = rig.apply(decision(decision_id="d-1"))
    assert won.final == "ALLOW"
    rig.pending.update(stale)  # the deletion was lost
    late = rig.apply(decision(approve=False))
    assert late.final is None and late.alert == "approval_replayed"
    assert INTENT_ID not in rig.pending  # cleaned up
    assert rig.apply(tick()).final is None
