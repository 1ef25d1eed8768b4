"""Fuzz every input topic of the worker: intents, identity (fan-out and loader), orphan-checks.

Inputs are arbitrary bytes, mutations of valid Avro records (bit flips, truncations,
insertions, deletions, a valid header before a random body) and valid records with random
field values (huge and negative decimals, odd unicode, control characters, extreme
timestamps). Whatever comes in: nothing raises; an undecodable record is exactly one
dead-letter record and changes no state; every verdict decodes; an ALLOW carries a pass and
only for an intent that is genuinely valid and in scope for a registered, active agent.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastavro
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fuzz.conftest import Target, fuzz_examples, fuzz_settings
from gatepass.codec import MARKER, RecordCodec, schemas
from gatepass.codec.lifecycle_reader import decode_lifecycle
from gatepass.codec.records import (
    intent_from_record,
    intent_to_record,
    lifecycle_from_record,
    lifecycle_to_record,
)
from gatepass.config import Settings
from gatepass.core import (
    AgentRegistered,
    AgentStatus,
    AgentStatusChanged,
    IdentityState,
    Intent,
    PrincipalStatus,
    PrincipalStatusChanged,
    validate_intent,
)
from gatepass.credentials import KeyStore, PassIssuer, PassVerifier
from gatepass.errors import DecodeError
from gatepass.policy import load_policy
from gatepass.transport import partition_for
from gatepass.worker import IntentOutcome, Outgoing, Pipeline
from gatepass.worker.identity_loader import IdentityLoader

pytestmark = pytest.mark.fuzz

NOW = datetime(2026, 3, 2, 9, 30, 15, 123000, tzinfo=UTC)
T0 = datetime(2026, 2, 1, 8, 0, tzinfo=UTC)
SETTINGS = Settings()
TOPICS = SETTINGS.topics
N = SETTINGS.partitions
TTL = timedelta(minutes=5)
SCHEMAS = schemas()
POLICY = load_policy(None)
EXAMPLES = fuzz_examples()

AGENTS = {"procure-bot": "sarah", "helper-bot": "sarah", "retired-bot": "sarah",
          "tom-bot": "tom", "ghost-bot": "gone", "infra-bot": "tom"}
PRINCIPALS = {"sarah": "active", "tom": "active", "gone": "offboarded"}
REMEMBERED_ID = "7b0e4c8e-2f4e-4a53-9a57-6a3d1b1d2c11"  # in the memo with an ALLOW record
CORRUPT_ID = "0d9e7a3c-5b1f-4c2e-8a6d-1f2e3d4c5b6a"  # in the memo with unreadable bytes
FRESH_ID = "3f1c2b4a-9e8d-4c7b-a6f5-e4d3c2b1a098"


def world() -> IdentityState:
    state = IdentityState()
    for who, status in PRINCIPALS.items():
        state.apply(PrincipalStatusChanged(principal_id=who, status=PrincipalStatus(status),
                                           event_time=T0, source="hr-feed"))
    for agent, owner in AGENTS.items():
        state.apply(AgentRegistered(
            agent_id=agent, owner=owner,
            purpose="infrastructure" if agent == "infra-bot" else "procurement",
            department="finance", contact=f"{owner}@example.com", event_time=T0, source="okta"))
    state.apply(AgentStatusChanged(agent_id="retired-bot", status=AgentStatus.DECOMMISSIONED,
                                   event_time=T0, source="okta"))
    return state


def snapshot(state: IdentityState) -> dict[str, Any]:
    """Everything an IdentityState holds, copied (records are frozen, owner sets are not).

    Read from its __slots__, so a field added to the state is compared without a change here.
    """
    copied: dict[str, Any] = {}
    for name in type(state).__slots__:
        value = getattr(state, name)
        assert isinstance(value, dict), (name, type(value))
        copied[name] = {k: frozenset(v) if isinstance(v, set) else v for k, v in value.items()}
    return copied


@pytest.fixture(scope="module")
def keystore(tmp_path_factory: pytest.TempPathFactory) -> KeyStore:
    return KeyStore.open(Path(tmp_path_factory.mktemp("fuzz-keys")) / "keys", now=NOW)


def make_pipeline(keystore: KeyStore, identity: IdentityState | None = None) -> Pipeline:
    return Pipeline(settings=SETTINGS, schemas=SCHEMAS, policy=POLICY,
                    issuer=PassIssuer(keystore, issuer="gatepass", ttl=TTL),
                    identity=identity or world(), ready=lambda: True, worker="fuzz:1",
                    clock=lambda: NOW)


# ---- byte-level mutations ----------------------------------------------------------------
def raw_encode(codec: RecordCodec, record: Mapping[str, Any]) -> bytes:
    """Encode with fastavro directly: no domain checks, so any schema-typed value goes."""
    buf = io.BytesIO()
    buf.write(MARKER + codec.fingerprint)
    fastavro.schemaless_writer(buf, codec.schema, record)
    return buf.getvalue()


def mutations(seeds: st.SearchStrategy[bytes], codec: RecordCodec) -> st.SearchStrategy[bytes]:
    """Random bytes, and valid records flipped, cut, stretched, spliced or re-bodied."""
    header = MARKER + codec.fingerprint

    @st.composite
    def flipped(draw: Any) -> bytes:
        data = bytearray(draw(seeds))
        for pos in draw(st.lists(st.integers(0, 10**6), min_size=1, max_size=8)):
            data[pos % len(data)] ^= 1 << draw(st.integers(0, 7))
        return bytes(data)

    @st.composite
    def truncated(draw: Any) -> bytes:
        data = draw(seeds)
        return data[:draw(st.integers(0, len(data) - 1))]

    @st.composite
    def inserted(draw: Any) -> bytes:
        data = draw(seeds)
        pos = draw(st.integers(0, len(data)))
        return data[:pos] + draw(st.binary(min_size=1, max_size=16)) + data[pos:]

    @st.composite
    def deleted(draw: Any) -> bytes:
        data = draw(seeds)
        pos = draw(st.integers(0, len(data) - 1))
        return data[:pos] + data[pos + draw(st.integers(1, 16)):]

    @st.composite
    def overwritten(draw: Any) -> bytes:
        data = bytearray(draw(seeds))
        pos = draw(st.integers(len(header), len(data) - 1))
        data[pos] = draw(st.sampled_from([0x00, 0x01, 0x02, 0x7F, 0x80, 0xFE, 0xFF]))
        return bytes(data)

    return st.one_of(
        st.binary(max_size=256),
        st.builds(lambda b: MARKER + b, st.binary(max_size=64)),
        st.builds(lambda b: header + b, st.binary(max_size=256)),
        flipped(), truncated(), inserted(), deleted(), overwritten(),
        st.builds(lambda a, b: a + b, seeds, st.binary(min_size=1, max_size=8)),  # trailing
        seeds,
    )


# ---- field values ------------------------------------------------------------------------
WEIRD = ["", " ", "\x00", "\n", "\r\n", "\t", "\x1b[31m", "\u202e", "\ufeff", "\u200b",
         "\U0001f600", "é", "e\u0301", "İ", "ß", "\uffff", "\U0010ffff", "a" * 5000,
         "../../etc/passwd", "' OR 1=1 --", "${jndi:ldap://x}", "%s%n", "null"]
EXTREME_MILLIS = [-(2**63), 2**63 - 1, -1, 0, 1, 253402300799999, 253402300800000,
                  -62135596800000, -62135596800001, 2**31, -(2**31), 10**15, -(10**15)]


def texts(*known: str) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from([*known, *WEIRD]) if known else st.sampled_from(WEIRD),
                     st.text(max_size=12), st.text(st.characters(codec="utf-8"), max_size=6))


def timestamps() -> st.SearchStrategy[Any]:
    """Mostly near NOW (some intents must be fresh), else extremes and any long."""
    near = st.integers(-600_000, 600_000).map(lambda ms: NOW + timedelta(milliseconds=ms))
    return st.one_of(near, near, st.sampled_from(EXTREME_MILLIS),
                     st.integers(-(2**63), 2**63 - 1))


def unscaled(n: int) -> bytes:
    return n.to_bytes((n.bit_length() + 8) // 8, "big", signed=True)


def amounts() -> st.SearchStrategy[Any]:
    """The decimal's raw two's-complement bytes (scale 4): any size, any sign."""
    return st.one_of(
        st.none(),
        st.sampled_from([1_200_000, 0, 1, 99_999_999, 100_000_000, 10**18 - 1, 10**18,
                         10**60, -1, -(10**30)]).map(unscaled),
        st.integers(-(10**40), 10**40).map(unscaled),
        st.binary(max_size=40))


@st.composite
def intent_inputs(draw: Any) -> tuple[bytes | None, bytes, int]:
    agent = draw(texts(*AGENTS, "unknown-bot"))
    record = {
        "intent_id": draw(st.one_of(st.sampled_from([REMEMBERED_ID, CORRUPT_ID, FRESH_ID,
                                                     FRESH_ID.upper()]),
                                    st.uuids().map(str), texts())),
        "agent_id": agent,
        "action": draw(texts("purchase_order.create", "vendor.read", "cloud.provision",
                             "invoice.read")),
        "resource": draw(texts("vendor:ACME", "gpu")),
        "audience": draw(texts("procurement-api")),
        "amount": draw(amounts()),
        "currency": draw(st.one_of(st.none(), texts("USD", "EUR", "usd"))),
        "context": draw(st.one_of(
            st.dictionaries(texts("ticket", "trace_id", "traceparent"), texts(), max_size=3),
            st.integers(60, 70).map(lambda n: {f"k{i}": "v" for i in range(n)}))),
        "requested_at": draw(timestamps()),
        "delegation_chain": draw(st.one_of(
            st.lists(texts(*AGENTS), max_size=3),
            st.integers(7, 10).map(lambda n: [f"bot-{i}" for i in range(n)]))),
    }
    value = raw_encode(SCHEMAS.intent, record)
    key = draw(st.one_of(st.just(agent.encode()), st.just(agent.encode()), st.none(),
                         st.binary(max_size=16)))
    partition = draw(st.one_of(st.just(partition_for(agent, N)), st.integers(0, N - 1)))
    return key, value, partition


def seed_intent(**changes: Any) -> Intent:
    fields: dict[str, Any] = {
        "intent_id": FRESH_ID, "agent_id": "procure-bot", "action": "purchase_order.create",
        "resource": "vendor:ACME", "audience": "procurement-api", "amount": Decimal("120.00"),
        "currency": "USD", "requested_at": NOW - timedelta(seconds=1),
        "context": {"ticket": "PROC-4411"}}
    fields.update(changes)
    return Intent(**fields)


INTENT_SEEDS = [SCHEMAS.intent.encode(intent_to_record(seed_intent(**c))) for c in (
    {}, {"intent_id": REMEMBERED_ID}, {"intent_id": CORRUPT_ID},
    {"agent_id": "ghost-bot"}, {"agent_id": "tom-bot", "delegation_chain": ("helper-bot",)},
    {"amount": None, "currency": None, "action": "vendor.read"},
    {"amount": Decimal("99999.9999")}, {"context": {}},
    {"agent_id": "infra-bot", "action": "cloud.provision", "resource": "gpu",
     "amount": Decimal("500.00")})]


@st.composite
def near_valid_intents(draw: Any) -> tuple[bytes | None, bytes, int]:
    """Well-formed intents of known agents, keyed and placed right: they reach the policy,
    so ALLOW, PENDING (above the approval threshold, or an always-approved action) and
    every DENY reason each get their share."""
    agent = draw(st.sampled_from(list(AGENTS)))
    intent = seed_intent(
        intent_id=str(draw(st.uuids())), agent_id=agent,
        action=draw(st.sampled_from(["purchase_order.create", "vendor.read", "cloud.provision",
                                     "invoice.read", "customer.read"])),
        amount=draw(st.sampled_from([None, Decimal("120.00"), Decimal("10000.00"),
                                     Decimal("10000.01"), Decimal("50000"),
                                     Decimal("100000.01"), Decimal("1999.99")])),
        delegation_chain=tuple(draw(st.lists(st.sampled_from(list(AGENTS)), max_size=2,
                                             unique=True).filter(lambda c: agent not in c))),
        requested_at=NOW - timedelta(milliseconds=draw(st.integers(-5_000, 200_000))))
    if intent.amount is None:
        intent = seed_intent(**{**{f: getattr(intent, f) for f in (
            "intent_id", "agent_id", "action", "delegation_chain", "requested_at")},
            "amount": None, "currency": None})
    return (agent.encode(), SCHEMAS.intent.encode(intent_to_record(intent)),
            partition_for(agent, N))


def intent_cases() -> st.SearchStrategy[tuple[bytes | None, bytes | None, int]]:
    structured = intent_inputs()
    seeds = st.one_of(st.sampled_from(INTENT_SEEDS), structured.map(lambda t: t[1]))
    keyed = st.tuples(st.sampled_from([b"procure-bot", b"ghost-bot", b"tom-bot", b"infra-bot",
                                       None]),
                      mutations(seeds, SCHEMAS.intent), st.integers(0, N - 1))
    # the right partition for the key, so mutated seeds can still reach the decision
    keyed = keyed.map(lambda t: (t[0], t[1], partition_for(t[0] or b"", N)
                                 if t[2] % 2 else t[2]))
    return st.one_of(structured, keyed, keyed, near_valid_intents(),
                     st.tuples(st.none(), st.none(), st.just(0)))


def decodable_intent(value: bytes | None) -> Intent | None:
    try:
        return intent_from_record(SCHEMAS.intent.decode(value))
    except (DecodeError, KeyError, ValueError, TypeError, ArithmeticError):
        return None


def assert_dead_letter(records: list[Outgoing], topic: str, key: bytes | None,
                       value: bytes | None, offset: int) -> str:
    assert len(records) == 1, [r.topic for r in records]
    letter = records[0]
    assert (letter.topic, letter.key, letter.partition) == (TOPICS.dead_letter, key, None)
    decoded = SCHEMAS.dead_letter.decode(letter.value)
    assert (decoded["source_topic"], decoded["source_offset"]) == (topic, offset)
    assert (decoded["key"], decoded["value"]) == (key, value)
    assert decoded["error_code"] and decoded["error"]
    return str(decoded["error_code"])


def genuinely_allowed(intent: Intent, key: bytes | None, partition: int,
                      identity: IdentityState) -> bool:
    if validate_intent(intent) or key != intent.agent_id.encode():
        return False
    if partition != partition_for(intent.agent_id, N):
        return False
    if not -SETTINGS.intent_max_skew <= NOW - intent.requested_at <= SETTINGS.intent_max_age:
        return False
    for agent_id in (intent.agent_id, *intent.delegation_chain):
        agent = identity.agent(agent_id)
        if agent is None or not agent.registered or agent.status is not AgentStatus.ACTIVE:
            return False
        if not identity.owner_active(agent.owner):
            return False
        owner = identity.principal(agent.owner, NOW) if agent.owner else None
        scope = POLICY.check(agent, owner, intent)[0]
        if scope.failed or not scope.allowed:
            return False
    return True


def needs_approval(intent: Intent, identity: IdentityState) -> bool:
    agent = identity.agent(intent.agent_id)
    if agent is None:
        return False
    owner = identity.principal(agent.owner, NOW) if agent.owner else None
    return POLICY.check(agent, owner, intent)[1].allowed


def assert_pass_covers(token: str, intent: Intent, keystore: KeyStore) -> None:
    verifier = PassVerifier(keystore.jwks(now=NOW), audience=intent.audience,
                            issuer="gatepass", now=NOW.timestamp)
    verified = verifier.verify(token, action=intent.action, resource=intent.resource,
                               amount=intent.amount, currency=intent.currency)
    assert (verified.agent_id, verified.intent_id) == (intent.agent_id, intent.intent_id)


# ---- intents -----------------------------------------------------------------------------
def test_fuzz_intents(keystore: KeyStore, fuzz_target: Callable[[str], Target]) -> None:
    pipeline = make_pipeline(keystore)
    first = pipeline.on_intent(b"procure-bot", INTENT_SEEDS[1],
                               partition=partition_for("procure-bot", N), offset=0, memo={})
    assert first.decision == "ALLOW" and first.remember is not None
    memo = {REMEMBERED_ID: first.remember[1], CORRUPT_ID: b"\xc3\x01not a record"}
    remembered = intent_from_record(SCHEMAS.decision_record.decode(memo[REMEMBERED_ID])
                                    ["intent"])
    frozen_memo = dict(memo)
    before = snapshot(pipeline.identity)
    target = fuzz_target("intents (Pipeline.on_intent)")

    @fuzz_settings()
    @given(intent_cases())
    def run(case: tuple[bytes | None, bytes | None, int]) -> None:
        key, value, partition = case
        out: IntentOutcome = target.run(lambda: pipeline.on_intent(
            key, value, partition=partition, offset=42, memo=memo), label=case)
        assert memo == frozen_memo and snapshot(pipeline.identity) == before
        intent = decodable_intent(value)
        dead = [r for r in out.records if r.topic == TOPICS.dead_letter]
        if intent is None or dead:
            code = assert_dead_letter(out.records, TOPICS.intents, key, value, 42)
            assert out.remember is None and out.decision == ""
            target.count(f"dead_letter:{code}" + ("" if intent is None else ":decodable"))
            return
        topics = [r.topic for r in out.records]
        if out.duplicate:
            target.count("replayed" if topics else "replay_withheld")
            assert out.remember is None
        for r in out.records:
            assert r.topic in {TOPICS.verdicts, TOPICS.audit, TOPICS.denials,
                               TOPICS.orphan_checks, TOPICS.approvals}, r.topic
            assert r.partition == partition
        if not topics:
            assert out.duplicate and intent.intent_id == CORRUPT_ID
            return
        verdicts = [SCHEMAS.verdict.decode(r.value) for r in out.records
                    if r.topic == TOPICS.verdicts]
        assert len(verdicts) == 1
        verdict = verdicts[0]
        for r in out.records:
            if r.topic in (TOPICS.audit, TOPICS.denials):
                audit = SCHEMAS.decision_record.decode(r.value)
                assert audit["decision"] == verdict["decision"]
                assert (audit["credential"] is None) == (verdict["credential"] is None)
            elif r.topic == TOPICS.orphan_checks:
                SCHEMAS.orphan_check.decode(r.value)
            elif r.topic == TOPICS.approvals:
                request = SCHEMAS.approval_request.decode(r.value)
                assert request["intent"]["intent_id"] == intent.intent_id
                assert verdict["decision"] == "PENDING" and not out.duplicate
        if verdict["decision"] == "ALLOW":
            assert verdict["credential"], "ALLOW without a credential"
            covered = remembered if out.duplicate else intent
            if not out.duplicate:
                assert genuinely_allowed(intent, key, partition, pipeline.identity), intent
                assert not needs_approval(intent, pipeline.identity), intent
            assert_pass_covers(verdict["credential"], covered, keystore)
            target.count("allow")
        elif verdict["decision"] == "PENDING":
            # every check passed but the owner must decide: no pass, one request
            assert verdict["credential"] is None and not out.duplicate
            assert genuinely_allowed(intent, key, partition, pipeline.identity), intent
            assert needs_approval(intent, pipeline.identity), intent
            assert TOPICS.approvals in topics and out.pending is not None
            target.count("pending")
        else:
            assert verdict["decision"] == "DENY" and verdict["credential"] is None
            target.count("deny:" + ",".join(verdict["reasons"]))

    run()
    assert target.inputs >= EXAMPLES
    assert target.outcomes["allow"] > 0, "no input reached an ALLOW: the strategy is broken"
    assert target.outcomes["pending"] > 0, "no input reached a PENDING: the strategy is broken"


# ---- identity (lifecycle) ----------------------------------------------------------------
@st.composite
def lifecycle_inputs(draw: Any) -> tuple[bytes | None, bytes]:
    kind = draw(st.sampled_from(["registered", "agent_status", "principal_status"]))
    if kind == "registered":
        body: Any = ("dev.gatepass.v1.AgentRegistered", {
            "agent_id": draw(texts(*AGENTS, "new-bot")), "owner": draw(texts(*PRINCIPALS)),
            "purpose": draw(texts("procurement", "support")),
            "department": draw(st.one_of(st.none(), texts())),
            "contact": draw(st.one_of(st.none(), texts())),
            "created_by": draw(st.one_of(st.none(), texts()))})
        key = f"agent:{body[1]['agent_id']}/registration"
    elif kind == "agent_status":
        body = ("dev.gatepass.v1.AgentStatusChanged", {
            "agent_id": draw(texts(*AGENTS)),
            "status": draw(st.sampled_from([s.value for s in AgentStatus]))})
        key = f"agent:{body[1]['agent_id']}/status"
    else:
        body = ("dev.gatepass.v1.PrincipalStatusChanged", {
            "principal_id": draw(texts(*PRINCIPALS)),
            "status": draw(st.sampled_from([s.value for s in PrincipalStatus]))})
        key = f"principal:{body[1]['principal_id']}/status"
    value = raw_encode(SCHEMAS.lifecycle, {
        "event_time": draw(st.one_of(st.sampled_from([T0, NOW]), timestamps())),
        "source": draw(texts("okta", "hr-feed")),
        "source_event_id": draw(texts("hr-1")), "event": body})
    return draw(st.one_of(st.just(key.encode()), st.binary(max_size=16), st.none())), value


LIFECYCLE_SEEDS = [SCHEMAS.lifecycle.encode(lifecycle_to_record(e)) for e in (
    PrincipalStatusChanged(principal_id="sarah", status=PrincipalStatus.OFFBOARDED,
                           event_time=NOW, source="hr-feed", source_event_id="hr-9"),
    PrincipalStatusChanged(principal_id="sarah", status=PrincipalStatus.ACTIVE,
                           event_time=T0 - timedelta(days=1), source="okta"),
    AgentRegistered(agent_id="new-bot", owner="gone", purpose="procurement", event_time=NOW,
                    source="okta", department="it", contact="x@example.com", created_by="cli"),
    AgentStatusChanged(agent_id="procure-bot", status=AgentStatus.SUSPENDED, event_time=NOW,
                       source="okta"))]


def lifecycle_cases() -> st.SearchStrategy[tuple[bytes | None, bytes | None]]:
    structured = lifecycle_inputs()
    seeds = st.one_of(st.sampled_from(LIFECYCLE_SEEDS), structured.map(lambda t: t[1]))
    keyed = st.tuples(st.sampled_from([b"principal:sarah/status", None, b""]),
                      mutations(seeds, SCHEMAS.lifecycle))
    return st.one_of(structured, keyed, keyed, st.tuples(st.none(), st.none()))


def test_fuzz_identity_topic(keystore: KeyStore, fuzz_target: Callable[[str], Target]) -> None:
    """Each record as a worker sees it: the loader applies it, then the fan-out handles it."""
    pipeline = make_pipeline(keystore)
    loader = IdentityLoader(SETTINGS, SCHEMAS, pipeline.identity)
    target = fuzz_target("identity (IdentityLoader apply + Pipeline.on_lifecycle)")

    @fuzz_settings()
    @given(lifecycle_cases())
    def run(case: tuple[bytes | None, bytes | None]) -> None:
        key, value = case
        state = world()  # each input on a fresh view, so a failure replays on its own
        pipeline.identity = loader.state = state
        before = snapshot(state)
        loaded, rejected = loader.loaded_records, loader.rejected_records

        def both() -> list[Outgoing]:
            loader._apply(value)  # the loader's own guard is what is under test
            return pipeline.on_lifecycle(key, value, partition=1, offset=7)

        out = target.run(both, label=case)
        try:
            event = lifecycle_from_record(SCHEMAS.lifecycle.decode(value))
            decodable = True
        except (DecodeError, KeyError, ValueError, TypeError):
            decodable = False
        if decodable:
            try:
                decode_lifecycle(SCHEMAS.lifecycle, value)
            except DecodeError:
                # The direct reader refuses what no Avro writer produces and fastavro reads
                # anyway (a negative union or enum index, a long over 10 bytes): never
                # the bytes the event it read encodes to.
                assert SCHEMAS.lifecycle.encode(lifecycle_to_record(event)) != value
                decodable = False
                target.count("refused_non_canonical")
        if not decodable:
            assert snapshot(state) == before
            if value is not None:
                assert (loader.loaded_records, loader.rejected_records) == (loaded,
                                                                            rejected + 1)
            code = assert_dead_letter(out, TOPICS.identity, key, value, 7)
            target.count(f"dead_letter:{code}")
            return
        assert (loader.loaded_records, loader.rejected_records) == (loaded + 1, rejected)
        for r in out:
            if r.topic == TOPICS.identity:
                assert r.key == key and len(out) == 1
                SCHEMAS.lifecycle.decode(r.value)
                target.count("repair")
            else:
                assert r.topic == TOPICS.orphan_checks, r.topic
                check = SCHEMAS.orphan_check.decode(r.value)
                assert r.key == check["agent_id"].encode()
                assert {partition_for(a, N) for a in [check["agent_id"],
                                                      *check["more_agent_ids"]]} == {r.partition}
                target.count("orphan_check")
        if not out:
            target.count("applied_quietly")

    run()
    assert target.inputs >= EXAMPLES
    assert target.outcomes["orphan_check"] > 0 and target.outcomes["repair"] > 0


# ---- orphan-checks -----------------------------------------------------------------------
@st.composite
def orphan_check_inputs(draw: Any) -> tuple[bytes | None, bytes]:
    agent = draw(texts(*AGENTS, "new-bot"))
    value = raw_encode(SCHEMAS.orphan_check, {
        "agent_id": agent,
        "more_agent_ids": draw(st.lists(texts(*AGENTS, "new-bot"), max_size=4)),
        "trigger": draw(st.sampled_from(["owner_deactivated", "intent_denied",
                                         "agent_registered"])),
        "intent_id": draw(st.one_of(st.none(), texts(FRESH_ID))),
        "owner": draw(st.one_of(st.none(), texts(*PRINCIPALS))),
        "owner_status": draw(st.one_of(st.none(), texts("offboarded", "active"))),
        "owner_status_at": draw(st.one_of(st.none(), st.just(T0), timestamps())),
        "requested_at": draw(timestamps())})
    return draw(st.one_of(st.just(agent.encode()), st.none(), st.binary(max_size=8))), value


def test_fuzz_orphan_checks(keystore: KeyStore, fuzz_target: Callable[[str], Target]) -> None:
    pipeline = make_pipeline(keystore)
    seed_checks = [SCHEMAS.orphan_check.encode({
        "agent_id": agent, "trigger": "owner_deactivated", "intent_id": None, "owner": owner,
        "owner_status": "offboarded", "owner_status_at": at, "requested_at": NOW})
        for agent, owner, at in [("ghost-bot", "gone", T0), ("procure-bot", "sarah", None),
                                 ("helper-bot", "nobody", NOW)]]
    records, remember = pipeline.on_orphan_check(b"ghost-bot", seed_checks[0],
                                                 partition=partition_for("ghost-bot", N),
                                                 offset=0, memo={})
    assert records and remember
    memo = dict(remember)
    frozen_memo = dict(memo)
    before = snapshot(pipeline.identity)
    seeds = st.one_of(st.sampled_from(seed_checks), orphan_check_inputs().map(lambda t: t[1]))
    cases = st.one_of(orphan_check_inputs(),
                      st.tuples(st.sampled_from([b"ghost-bot", None]),
                                mutations(seeds, SCHEMAS.orphan_check)),
                      st.tuples(st.none(), st.none()))
    target = fuzz_target("orphan-checks (Pipeline.on_orphan_check)")

    @fuzz_settings()
    @given(cases, st.one_of(st.none(), st.integers(0, N - 1)))
    def run(case: tuple[bytes | None, bytes | None], pinned: int | None) -> None:
        key, value = case
        try:
            check: dict[str, Any] | None = SCHEMAS.orphan_check.decode(value)
        except DecodeError:
            check = None
        named = [] if check is None else list(
            dict.fromkeys([check["agent_id"], *check["more_agent_ids"]]))
        # mostly the partition of the first agent named, as the writers put it; else any
        partition = pinned if pinned is not None else (
            partition_for(named[0], N) if named else 2)
        out, remember = target.run(lambda: pipeline.on_orphan_check(
            key, value, partition=partition, offset=9, memo=memo), label=(case, partition))
        assert memo == frozen_memo and snapshot(pipeline.identity) == before
        if check is None:
            code = assert_dead_letter(out, TOPICS.orphan_checks, key, value, 9)
            assert remember == []
            target.count(f"dead_letter:{code}")
            return
        if any(partition_for(a, N) != partition for a in named):
            code = assert_dead_letter(out, TOPICS.orphan_checks, key, value, 9)
            assert code == "record_invalid" and remember == []
            target.count("dead_letter:misrouted")
            return
        if not out:
            assert remember == []
            target.count("no_alert")
            return
        assert {r.topic for r in out} == {TOPICS.orphans}
        alerted = [SCHEMAS.orphan_alert.decode(r.value)["agent_id"] for r in out]
        assert len(set(alerted)) == len(alerted) and set(alerted) <= set(named)
        assert remember == [(a, r.value) for a, r in zip(alerted, out, strict=True)]
        target.count("alert" if len(out) == 1 else "alerts")

    run()
    assert target.inputs >= EXAMPLES
    assert target.outcomes["alert"] > 0 and target.outcomes["alerts"] > 0
    assert target.outcomes["dead_letter:misrouted"] > 0
