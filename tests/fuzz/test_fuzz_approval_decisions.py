"""Fuzz the approval-decisions topic: `Pipeline.on_approval` with owners' decisions and timer ticks.

Inputs are arbitrary bytes, mutations of valid `ApprovalDecision` and `ApprovalTimeout`
records, and valid-shaped records with random fields: proofs made with the right code, with
another approver's or another request's code, or made up; ids of pending, expired, finished
and unknown requests; wrong keys and partitions. The pipeline runs against fixed `pending` and
`decided` tables (pending requests, one expired, one approved earlier). Whatever comes in:
nothing raises and the tables are not written by the pipeline; an undecodable or misrouted
record is exactly one dead letter; a request ends (a final verdict, a `finish`, a `remember`)
only when an independent oracle says the event is a genuine decision of the agent's active
owner made in time, or the request had expired; an ALLOW only for a genuine approval (its
pass verifies and names the approver) or the redelivery of the decision that already won.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fuzz.conftest import Target, fuzz_examples, fuzz_settings
from fuzz.test_fuzz_topics import (
    AGENTS,
    NOW,
    POLICY,
    SCHEMAS,
    SETTINGS,
    TTL,
    assert_dead_letter,
    mutations,
    raw_encode,
    snapshot,
    texts,
    timestamps,
    world,
)
from gatepass.codec.records import (
    approval_decision_from_record,
    approval_decision_to_record,
    intent_to_record,
    pending_from_record,
)
from gatepass.core import Intent
from gatepass.core.approval import ApprovalDecision, approval_code, decision_proof, proof_valid
from gatepass.credentials import KeyStore, PassIssuer, PassVerifier
from gatepass.errors import DecodeError, GatepassError
from gatepass.transport import partition_for
from gatepass.worker import Pipeline
from gatepass.worker.pipeline import ApprovalOutcome, request_id_for

pytestmark = pytest.mark.fuzz

EXAMPLES = fuzz_examples()
TOPICS = SETTINGS.topics
N = SETTINGS.partitions
KEY = bytes(range(32))
BIG = "50000.00"
# intents: OPEN waits for sarah; INFRA (cloud.provision, always approved) waits for tom;
# LATE waited past its expiry; DONE was approved by sarah with decision DONE_DECISION.
OPEN, INFRA, LATE, DONE = (str(uuid.UUID(int=i, version=4)) for i in (1, 2, 3, 4))
DONE_DECISION = "5d1c0b0e-0f4c-4f57-9a33-2f1b7c3d9e10"
UNKNOWN = str(uuid.UUID(int=5, version=4))
INTENTS = {OPEN: "procure-bot", INFRA: "infra-bot", LATE: "procure-bot", DONE: "procure-bot"}
OWNERS = {"procure-bot": "sarah", "infra-bot": "tom"}


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> Any:
        return self.now


@pytest.fixture(scope="module")
def keystore(tmp_path_factory: pytest.TempPathFactory) -> KeyStore:
    return KeyStore.open(Path(tmp_path_factory.mktemp("fuzz-approvals")) / "keys", now=NOW)


def _intent(intent_id: str, **changes: Any) -> Intent:
    fields: dict[str, Any] = {
        "intent_id": intent_id, "agent_id": "procure-bot", "action": "purchase_order.create",
        "resource": "vendor:ACME", "audience": "procurement-api", "amount": Decimal(BIG),
        "currency": "USD", "requested_at": NOW - timedelta(seconds=1)}
    fields.update(changes)
    return Intent(**fields)


def genuine(intent_id: str, approver: str, *, approve: bool = True,
            decision_id: str | None = None, key: bytes = KEY,
            code_for: str | None = None) -> ApprovalDecision:
    """A decision event proved with a code (by default the approver's own for this request)."""
    agent = INTENTS.get(intent_id, "procure-bot")
    request_id = request_id_for(intent_id)
    decision_id = decision_id or str(uuid.uuid4())
    code = approval_code(key, request_id_for(code_for) if code_for else request_id, approver)
    return ApprovalDecision(
        decision_id=decision_id, request_id=request_id, intent_id=intent_id, agent_id=agent,
        approver=approver, approve=approve, channel="fuzz",
        proof=decision_proof(code, request_id=request_id, intent_id=intent_id, agent_id=agent,
                             approver=approver, approve=approve, decision_id=decision_id))


def encode_decision(d: ApprovalDecision) -> bytes:
    return SCHEMAS.approval_decision.encode(approval_decision_to_record(d, submitted_at=NOW))


def encode_tick(intent_id: str, agent: str) -> bytes:
    return SCHEMAS.approval_timeout.encode({"request_id": "", "intent_id": intent_id,
                                            "agent_id": agent, "expires_at": NOW,
                                            "raised_at": NOW})


def tables(keystore: KeyStore) -> tuple[Pipeline, dict[str, bytes], dict[str, bytes]]:
    """A pipeline with requests pending, expired and finished, as the agents left them."""
    clock = Clock()
    pipeline = Pipeline(settings=SETTINGS, schemas=SCHEMAS, policy=POLICY,
                        issuer=PassIssuer(keystore, issuer="gatepass", ttl=TTL),
                        identity=world(), ready=lambda: True, worker="fuzz:1", clock=clock,
                        approval_key=lambda: KEY)
    pending: dict[str, bytes] = {}
    decided: dict[str, bytes] = {}
    late = SETTINGS.approval_timeout + timedelta(minutes=1)
    for intent, asked in [(_intent(OPEN), NOW),
                          (_intent(INFRA, agent_id="infra-bot", action="cloud.provision",
                                   resource="gpu", amount=Decimal("500.00")), NOW),
                          (_intent(LATE, requested_at=NOW - late), NOW - late),
                          (_intent(DONE), NOW)]:
        clock.now = asked
        out = pipeline.on_intent(intent.agent_id.encode(),
                                 SCHEMAS.intent.encode(intent_to_record(intent)),
                                 partition=partition_for(intent.agent_id, N), offset=0,
                                 memo=decided)
        assert out.decision == "PENDING" and out.pending and out.remember, out.reasons
        pending[out.pending[0]] = out.pending[1]
        decided[out.remember[0]] = out.remember[1]
    clock.now = NOW
    won = pipeline.on_approval(
        b"procure-bot", encode_decision(genuine(DONE, "sarah", decision_id=DONE_DECISION)),
        partition=partition_for("procure-bot", N), offset=1, pending=pending, decided=decided)
    assert won.final == "ALLOW" and won.remember and won.finish == DONE
    decided[won.remember[0]] = won.remember[1]
    del pending[DONE]
    return pipeline, pending, decided


# ---- inputs ------------------------------------------------------------------------------
IDS = [OPEN, INFRA, LATE, DONE, UNKNOWN]
PEOPLE = ["sarah", "tom", "gone", "nobody"]


@st.composite
def decision_inputs(draw: Any) -> tuple[bytes | None, bytes, int]:
    """A valid-shaped decision: mostly consistent fields, a proof that may be genuine."""
    target = draw(st.sampled_from(IDS))
    agent = INTENTS.get(target, "procure-bot")
    approver = draw(st.one_of(st.sampled_from([OWNERS[agent]] * 3 + PEOPLE), texts()))
    approve = draw(st.booleans())
    decision_id = draw(st.one_of(st.uuids().map(str), st.just(DONE_DECISION), texts()))
    proof_kind = draw(st.sampled_from(["own", "own", "other request", "other key", "made up"]))
    base = genuine(target, approver, approve=approve, decision_id=decision_id,
                   key=KEY if proof_kind != "other key" else bytes(32),
                   code_for=draw(st.sampled_from(IDS)) if proof_kind == "other request"
                   else None)
    record = approval_decision_to_record(base, submitted_at=NOW)
    if proof_kind == "made up":
        record["proof"] = draw(st.one_of(texts(), st.text(min_size=43, max_size=43)))
    for name in ("request_id", "intent_id", "agent_id"):  # sometimes one field is off
        if draw(st.integers(0, 9)) == 0:
            record[name] = draw(st.one_of(st.sampled_from(
                [*IDS, *(request_id_for(i) for i in IDS), *AGENTS]), texts()))
    if draw(st.integers(0, 9)) == 0:
        record["choice"] = "APPROVE" if record["choice"] == "DENY" else "DENY"  # flipped
    record["channel"] = draw(texts("page", "cli"))
    record["submitted_at"] = draw(st.one_of(st.just(NOW), st.just(NOW), timestamps()))
    value = raw_encode(SCHEMAS.approval_decision, record)
    key, partition = routing(draw, str(record["agent_id"]))
    return key, value, partition


def routing(draw: Any, agent: str) -> tuple[bytes | None, int]:
    """Mostly the agent's key and partition (so the event reaches the judge), else wrong."""
    key: bytes | None = agent.encode()
    partition = partition_for(agent, N)
    wrong = draw(st.integers(0, 9))
    if wrong == 0:
        key = draw(st.one_of(st.none(), st.binary(max_size=12)))
    elif wrong == 1:
        key = draw(st.sampled_from([a.encode() for a in AGENTS]))
    elif wrong == 2:
        partition = draw(st.integers(0, N - 1))
    return key, partition


@st.composite
def tick_inputs(draw: Any) -> tuple[bytes | None, bytes, int]:
    target = draw(st.one_of(st.sampled_from(IDS), texts()))
    agent = draw(st.one_of(st.just(INTENTS.get(target, "procure-bot")), texts(*AGENTS)))
    value = raw_encode(SCHEMAS.approval_timeout, {
        "request_id": draw(st.one_of(st.just(""), texts())), "intent_id": target,
        "agent_id": agent, "expires_at": draw(timestamps()), "raised_at": draw(timestamps())})
    key, partition = routing(draw, agent)
    return key, value, partition


SEEDS = [encode_decision(genuine(OPEN, "sarah")), encode_decision(genuine(OPEN, "sarah",
                                                                          approve=False)),
         encode_decision(genuine(INFRA, "tom")), encode_decision(genuine(LATE, "sarah")),
         encode_decision(genuine(DONE, "sarah", decision_id=DONE_DECISION)),
         encode_tick(OPEN, "procure-bot"), encode_tick(LATE, "procure-bot")]


def approval_cases() -> st.SearchStrategy[tuple[bytes | None, bytes | None, int]]:
    seeds = st.sampled_from(SEEDS)
    mutated = st.tuples(
        st.sampled_from([b"procure-bot", b"infra-bot", None]),
        st.one_of(mutations(seeds, SCHEMAS.approval_decision),
                  mutations(seeds, SCHEMAS.approval_timeout)),
        st.integers(0, N - 1))
    # the right partition for the key half the time, so mutations can reach the judge
    mutated = mutated.map(lambda t: (t[0], t[1], partition_for(t[0] or b"", N)
                                     if t[2] % 2 else t[2]))
    return st.one_of(decision_inputs(), decision_inputs(), decision_inputs(), tick_inputs(),
                     mutated, mutated, st.tuples(st.none(), st.none(), st.just(0)))


# ---- the oracle --------------------------------------------------------------------------
def decoded(value: bytes | None) -> ApprovalDecision | dict[str, Any] | None:
    """The event as the worker should read it (decision or tick), or None if it cannot."""
    try:
        if SCHEMAS.approval_timeout.accepts(value):
            return SCHEMAS.approval_timeout.decode(value)
        return approval_decision_from_record(SCHEMAS.approval_decision.decode(value))
    except (GatepassError, DecodeError, KeyError, ValueError, TypeError):
        return None


def routed(event: ApprovalDecision | dict[str, Any], key: bytes | None, partition: int) -> bool:
    agent = event.agent_id if isinstance(event, ApprovalDecision) else event["agent_id"]
    return key == agent.encode() and partition == partition_for(agent, N)


def expected_final(event: ApprovalDecision | dict[str, Any], pending: dict[str, bytes]
                   ) -> tuple[str, str] | None:
    """(decision, reason) this event must end its request with, else None."""
    intent_id = event.intent_id if isinstance(event, ApprovalDecision) else event["intent_id"]
    raw = pending.get(intent_id)
    if raw is None:
        return None
    request = pending_from_record(SCHEMAS.approval_request.decode(raw))
    if isinstance(event, dict):  # the timer: only an expired request ends (agents are active)
        return ("DENY", "approval_expired") if NOW >= request.expires_at else None
    if (event.request_id, event.intent_id, event.agent_id) != (
            request.request_id, request.intent.intent_id, request.intent.agent_id):
        return None
    if NOW >= request.expires_at:
        return "DENY", "approval_expired"
    if event.approver != OWNERS[request.intent.agent_id] or not proof_valid(KEY, event):
        return None
    return ("ALLOW", "approved") if event.approve else ("DENY", "approval_denied")


def test_fuzz_approval_decisions(keystore: KeyStore,
                                 fuzz_target: Callable[[str], Target]) -> None:
    pipeline, pending, decided = tables(keystore)
    frozen = (dict(pending), dict(decided))
    before = snapshot(pipeline.identity)
    target = fuzz_target("approval-decisions (Pipeline.on_approval)")

    @fuzz_settings()
    @given(approval_cases())
    def run(case: tuple[bytes | None, bytes | None, int]) -> None:
        key, value, partition = case
        out: ApprovalOutcome = target.run(lambda: pipeline.on_approval(
            key, value, partition=partition, offset=77, pending=pending, decided=decided),
            label=case)
        assert (pending, decided) == frozen and snapshot(pipeline.identity) == before
        event = decoded(value)
        if event is None or not routed(event, key, partition):
            code = assert_dead_letter(out.records, TOPICS.approval_decisions, key, value, 77)
            assert (out.final, out.finish, out.remember) == (None, None, None)
            target.count(f"dead_letter:{code}" + (":misrouted" if event else ""))
            return
        want = expected_final(event, pending)
        verdicts = [SCHEMAS.verdict.decode(r.value) for r in out.records
                    if r.topic == TOPICS.verdicts]
        if want is None:
            assert (out.final, out.finish, out.remember) == (None, None, None), want
            for r in out.records:
                assert r.topic in {TOPICS.verdicts, TOPICS.approval_alerts}, r.topic
            if verdicts:  # only the redelivery of the decision that already won
                assert isinstance(event, ApprovalDecision)
                assert (event.intent_id, event.decision_id) == (DONE, DONE_DECISION)
                assert [v["decision"] for v in verdicts] == ["ALLOW"]
                target.count("repeat")
            elif out.alert is not None:
                assert isinstance(event, ApprovalDecision)
                target.count(f"alert:{out.alert}")
            else:
                assert isinstance(event, dict)  # a tick for nothing due
                target.count("tick:nothing")
        else:
            assert (out.final, out.reason) == want
            assert out.finish == out.intent_id and out.remember is not None
            target.count(f"final:{want[0]}:{want[1]}")
        for verdict in verdicts:
            if verdict["decision"] == "ALLOW":
                intent = pending_intent(verdict["intent_id"], frozen[1])
                verifier = PassVerifier(keystore.jwks(now=NOW), audience=intent.audience,
                                        issuer="gatepass", now=NOW.timestamp)  # single use
                checked = verifier.verify(verdict["credential"], action=intent.action,
                                          resource=intent.resource, amount=intent.amount,
                                          currency=intent.currency)
                assert checked.approver == OWNERS[intent.agent_id]
            else:
                assert verdict["credential"] is None

    run()
    assert target.inputs >= EXAMPLES
    for outcome in ("final:ALLOW:approved", "final:DENY:approval_expired",
                    "alert:approval_forged", "repeat"):
        assert target.outcomes[outcome] > 0, f"no input reached {outcome}: strategy broken"


def pending_intent(intent_id: str, decided: dict[str, bytes]) -> Intent:
    from gatepass.codec.records import intent_from_record

    return intent_from_record(SCHEMAS.decision_record.decode(decided[intent_id])["intent"])
