"""The fail-closed matrix (issue #7): one named test per way a decision can go wrong.

Every row ends in a DENY with its stable reason code, or in no answer at all plus an alert
(a dead letter, an approval alert, an orphan check, a worker that refuses to start), and
never in an ALLOW or a pass. The rows run the pieces a real worker builds at start,
`gatepass.worker.app.Runtime` (schemas, scope policy, key store, approval key, identity view,
pipeline; no broker needed), with dicts standing in for the changelog-backed tables as the
faust agents in worker/app.py use them. The row about unwritable output topics also runs on
the real broker (marked `integration`).

A row that is not fail-closed today is a strict xfail whose reason says what is wrong; it
turns red (XPASS) the day it is fixed, so the marker has to go. Deeper coverage of the same
ground lives elsewhere and is named in each docstring.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from gatepass.approvals.inbox import InboxNotifier, inbox_file_name
from gatepass.approvals.notice import ApprovalNotice
from gatepass.codec import MARKER, schemas
from gatepass.codec.records import approval_decision_to_record, intent_to_record
from gatepass.config import Settings
from gatepass.core import (
    AgentRegistered,
    AgentStatus,
    AgentStatusChanged,
    Intent,
    PrincipalStatus,
    PrincipalStatusChanged,
)
from gatepass.core.approval import (
    ApprovalDecision,
    approval_code,
    decision_proof,
)
from gatepass.core.policy import CedarPolicy
from gatepass.credentials import IssuedPass, KeyStore, PassIssuer, PassRequest
from gatepass.errors import KeyStoreError, PolicyError
from gatepass.policy import DEFAULT_POLICY_DIR, read_bundle
from gatepass.policy.book import PolicyBook
from gatepass.transport import partition_for
from gatepass.worker.app import Runtime
from gatepass.worker.delivery import DeliveryGuard
from gatepass.worker.pipeline import ApprovalOutcome, IntentOutcome, Outgoing, request_id_for

SCHEMAS = schemas()
AUDIENCE = "procurement-api"
T0 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
NOW = datetime(2026, 3, 2, 9, 30, 15, 123000, tzinfo=UTC)
BIG = Decimal("50000.00")  # above the default policy's approval threshold (10,000 USD)
# The first bytes of every pass header ({"alg":"EdDSA","kid":...} in base64url): a record
# that holds them holds a pass.
PASS_PREFIX = b"eyJhbGciOiJFZERTQSIsImtpZCI6"


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Worker:
    """A worker's runtime without faust: the agents' table handling, done by hand."""

    rt: Runtime
    clock: Clock
    decided: dict[str, bytes] = field(default_factory=dict)
    pending: dict[str, bytes] = field(default_factory=dict)
    offset: int = 0

    @property
    def topics(self) -> Any:
        return self.rt.settings.topics

    def apply(self, *events: Any) -> None:
        for event in events:
            self.rt.identity.apply(event)

    def intent(self, **changes: Any) -> Intent:
        fields: dict[str, Any] = {
            "intent_id": str(uuid.uuid4()), "agent_id": "procure-bot",
            "action": "purchase_order.create", "resource": "vendor:ACME", "audience": AUDIENCE,
            "amount": Decimal("120.00"), "currency": "USD",
            "requested_at": self.clock.now - timedelta(seconds=1)}
        fields.update(changes)
        return Intent(**fields)

    def ask(self, intent: Intent | None = None, *, raw: bool = False,
            value: bytes | None = None, key: bytes | None = None,
            partition: int | None = None) -> IntentOutcome:
        """One intent through `Pipeline.on_intent`, with the table writes decide_intents does
        (`raw`: send `value` as the record instead of the intent's encoding)."""
        intent = intent or self.intent()
        if not raw:
            value = SCHEMAS.intent.encode(intent_to_record(intent))
        key = intent.agent_id.encode() if key is None else key
        if partition is None:
            partition = partition_for(key, self.rt.settings.partitions)
        self.offset += 1
        out = self.rt.pipeline.on_intent(key, value, partition=partition, offset=self.offset,
                                         memo=self.decided)
        if out.remember is not None:
            self.decided[out.remember[0]] = out.remember[1]
        if out.pending is not None:
            self.pending[out.pending[0]] = out.pending[1]
        return out

    def settle(self, value: bytes | None, *, agent: str = "procure-bot",
               key: bytes | None = None, partition: int | None = None) -> ApprovalOutcome:
        """One approval event through `Pipeline.on_approval`, as settle_approvals does."""
        key = agent.encode() if key is None else key
        if partition is None:
            partition = partition_for(agent, self.rt.settings.partitions)
        self.offset += 1
        before = (dict(self.pending), dict(self.decided))
        out = self.rt.pipeline.on_approval(key, value, partition=partition, offset=self.offset,
                                           pending=self.pending, decided=self.decided)
        assert (self.pending, self.decided) == before  # the pipeline itself never writes
        if out.remember is not None:
            self.decided[out.remember[0]] = out.remember[1]
        if out.finish is not None:
            self.pending.pop(out.finish, None)
        return out

    def decision(self, intent: Intent, *, approver: str = "sarah", approve: bool = True,
                 code: str | None = None, request_id: str | None = None,
                 intent_id: str | None = None) -> bytes:
        """An approval decision event; by default the owner's genuine one."""
        request_id = request_id or request_id_for(intent.intent_id)
        intent_id = intent_id or intent.intent_id
        if code is None:
            code = approval_code(self.rt.approval_key(), request_id, approver)
        decision_id = str(uuid.uuid4())
        proof = decision_proof(code, request_id=request_id, intent_id=intent_id,
                               agent_id=intent.agent_id, approver=approver, approve=approve,
                               decision_id=decision_id)
        return SCHEMAS.approval_decision.encode(approval_decision_to_record(
            ApprovalDecision(decision_id=decision_id, request_id=request_id,
                             intent_id=intent_id, agent_id=intent.agent_id, approver=approver,
                             approve=approve, proof=proof, channel="matrix"),
            submitted_at=self.clock.now))

    def tick(self, intent: Intent) -> bytes:
        """The worker's own expiry timer for one request (what expire_approvals writes)."""
        return SCHEMAS.approval_timeout.encode({
            "request_id": "", "intent_id": intent.intent_id, "agent_id": intent.agent_id,
            "expires_at": self.clock.now, "raised_at": self.clock.now})


def world() -> list[Any]:
    """sarah and tom active, gone offboarded, paused suspended; their agents."""
    events: list[Any] = [
        PrincipalStatusChanged(principal_id=who, status=PrincipalStatus(status), event_time=T0,
                               source="hr-feed")
        for who, status in [("sarah", "active"), ("tom", "active"), ("gone", "offboarded"),
                            ("paused", "suspended")]]
    for agent, owner in [("procure-bot", "sarah"), ("tom-bot", "tom"), ("ghost-bot", "gone"),
                         ("sleepy-bot", "paused"), ("stranger-bot", "nobody"),
                         ("stopped-bot", "sarah"), ("retired-bot", "sarah")]:
        events.append(AgentRegistered(agent_id=agent, owner=owner, purpose="procurement",
                                      department="finance", event_time=T0, source="okta"))
    events += [
        AgentStatusChanged(agent_id="stopped-bot", status=AgentStatus.SUSPENDED, event_time=T0,
                           source="okta"),
        AgentStatusChanged(agent_id="retired-bot", status=AgentStatus.DECOMMISSIONED,
                           event_time=T0, source="okta"),
        # a status record, but never a registration
        AgentStatusChanged(agent_id="status-only-bot", status=AgentStatus.ACTIVE,
                           event_time=T0, source="okta"),
    ]
    return events


def make_worker(home: Path, *, loaded: bool = True, policy_read: bool = True,
                **overrides: Any) -> Worker:
    rt = Runtime(Settings(home=home, **overrides))
    clock = Clock(NOW)
    rt.pipeline.clock = clock
    worker = Worker(rt, clock)
    worker.apply(*world())
    rt.loader.ready = loaded  # what IdentityLoader.run sets once the view has caught up
    rt.loader.fresh_as_of = time.monotonic() + 3600 if loaded else None  # and keeps fresh
    if policy_read:  # what PolicyLoader does once it has read the policy topic to its end
        rt.book.mark_complete(NOW + timedelta(days=1))
    return worker


@pytest.fixture
def worker(tmp_path: Path) -> Worker:
    return make_worker(tmp_path / "home")


def verdicts(worker: Worker, records: list[Outgoing]) -> list[dict[str, Any]]:
    return [SCHEMAS.verdict.decode(r.value) for r in records
            if r.topic == worker.topics.verdicts]


def assert_never_allowed(worker: Worker, records: list[Outgoing]) -> None:
    """No ALLOW verdict and no pass in any record, whatever the topic."""
    for verdict in verdicts(worker, records):
        assert verdict["decision"] != "ALLOW" and verdict["credential"] is None, verdict
    for record in records:
        assert PASS_PREFIX not in record.value, record.topic


def assert_denied(worker: Worker, out: IntentOutcome, reason: str) -> dict[str, Any]:
    assert_never_allowed(worker, out.records)
    (verdict,) = verdicts(worker, out.records)
    assert verdict["decision"] == "DENY" and reason in verdict["reasons"], verdict
    assert (out.decision, reason in out.reasons) == ("DENY", True)
    topics = [r.topic for r in out.records]
    assert worker.topics.audit in topics and worker.topics.denials in topics  # recorded
    return verdict


# ---- unknown agent -------------------------------------------------------------------------
@pytest.mark.parametrize(("agent", "chain", "reason"), [
    ("nobody-bot", (), "unregistered_agent"),
    ("status-only-bot", (), "unregistered_agent"),
    ("procure-bot", ("nobody-bot",), "delegation_denied"),
], ids=["never registered", "status but no registration", "unknown delegator"])
def test_unknown_agent_is_denied_unregistered_agent(worker: Worker, agent: str,
                                                    chain: tuple[str, ...],
                                                    reason: str) -> None:
    """Also: decide.toml ("unregistered agent" cases), test_pipeline.py."""
    out = worker.ask(worker.intent(agent_id=agent, delegation_chain=chain))
    assert_denied(worker, out, reason)


# ---- inactive agent or owner ---------------------------------------------------------------
@pytest.mark.parametrize(("agent", "chain", "reason"), [
    ("stopped-bot", (), "agent_inactive"),
    ("retired-bot", (), "agent_inactive"),
    ("ghost-bot", (), "owner_inactive"),
    ("sleepy-bot", (), "owner_inactive"),
    ("stranger-bot", (), "owner_inactive"),
    ("procure-bot", ("ghost-bot",), "delegation_denied"),
    ("procure-bot", ("stopped-bot",), "delegation_denied"),
], ids=["agent suspended", "agent decommissioned", "owner offboarded", "owner suspended",
        "owner never known", "delegator's owner offboarded", "delegator suspended"])
def test_inactive_agent_or_owner_is_denied(worker: Worker, agent: str, chain: tuple[str, ...],
                                           reason: str) -> None:
    """An owner who is not active also raises an orphan check (the SOC alert's source).

    Also: decide.toml, test_pipeline.py (orphan checks), tests/integration/test_pipeline.py.
    """
    out = worker.ask(worker.intent(agent_id=agent, delegation_chain=chain))
    assert_denied(worker, out, reason)
    checks = [r for r in out.records if r.topic == worker.topics.orphan_checks]
    assert len(checks) == (1 if reason == "owner_inactive" else 0)


def test_owner_offboarded_by_a_termination_dated_ahead_is_denied_once_it_is_due(
        worker: Worker) -> None:
    """The same row, by time alone: HR's termination for 'now' was recorded yesterday."""
    worker.apply(PrincipalStatusChanged(
        principal_id="sarah", status=PrincipalStatus.OFFBOARDED,
        event_time=NOW + timedelta(minutes=1), recorded_at=NOW - timedelta(days=1),
        source="hr-feed", source_event_id="hr-term-1"))
    assert worker.ask().decision == "ALLOW"  # a minute before: still her agent
    worker.clock.now = NOW + timedelta(minutes=1)
    assert_denied(worker, worker.ask(), "owner_inactive")


# ---- identity state older than the allowed maximum -----------------------------------------
def test_identity_state_older_than_the_allowed_maximum_is_denied(worker: Worker) -> None:
    """The view is known complete only up to an hour ago (the identity consumer stalled, or
    the broker is unreachable): nothing since, such as sarah being offboarded, may have
    reached it, so nothing is decided on it - not even a big order sent for approval."""
    max_age = worker.rt.settings.identity_max_age.total_seconds()
    assert worker.ask().decision == "ALLOW"  # fresh: decided
    worker.rt.loader.fresh_as_of = time.monotonic() - 3600
    assert time.monotonic() - worker.rt.loader.fresh_as_of > max_age
    assert_denied(worker, worker.ask(), "state_not_ready")
    assert worker.rt.identity_ready() is False
    worker.rt.loader.fresh_as_of = time.monotonic() - max_age + 5  # just within: decided again
    assert worker.ask().decision == "ALLOW"


# ---- worker still loading state ------------------------------------------------------------
def test_worker_still_loading_state_is_denied_state_not_ready(tmp_path: Path) -> None:
    """Runtime wires the pipeline's readiness to IdentityLoader.ready: until the view has
    caught up, every intent is DENY state_not_ready (after ready_wait, which app.py holds
    intents for). Also: test_pipeline.py, tests/integration/test_identity_loading.py."""
    worker = make_worker(tmp_path / "home", loaded=False)
    assert worker.rt.loader.ready is False
    for intent in (worker.intent(), worker.intent(amount=BIG), worker.intent(agent_id="x-bot")):
        verdict = assert_denied(worker, worker.ask(intent), "state_not_ready")
        assert verdict["reasons"] == ["state_not_ready"]
        assert verdict["facts"]["state_ready"] is False
    assert worker.pending == {}  # a big order is not even sent for approval


# ---- policy failing to load or erroring ----------------------------------------------------
# Each edits one file of the shipped bundle (None: the folder is missing).
BAD_POLICIES: dict[str, tuple[str, str] | None] = {
    "missing folder": None,
    "syntax error": ("scope/procurement.cedar", '@id("x") permit (principal, action, resource'),
    "policy without @id": ("scope/extra.cedar", "permit (principal, action, resource);"),
    "unknown attribute": ("scope/extra.cedar", '@id("x") permit (principal, action, resource)'
                                               ' when { principal.salary > 1 };'),
    "no schema": ("schema.cedarschema", ""),
    "bad gatepass.toml": ("gatepass.toml", "[approval\n"),
}
# Valid against the schema, but overflows on every evaluation: Cedar skips an erroring
# policy, Gatepass denies policy_error.
OVERFLOW = ('@id("{id}") {effect} (principal, action, resource) '
            "when {{ context.delegation_depth + 9223372036854775807 + 1 > 0 }};")


def bundle_with(tmp_path: Path, name: str, text: str) -> Path:
    folder = tmp_path / "policies"
    if not folder.exists():
        shutil.copytree(DEFAULT_POLICY_DIR, folder)
    if text:
        (folder / name).write_text(text)
    else:
        (folder / name).unlink()
    return folder


@pytest.mark.parametrize("case", [*BAD_POLICIES, "scope policy errors",
                                  "forbid errors next to a permit", "approval policy errors",
                                  "policy code raises"])
def test_policy_failing_to_load_or_erroring_never_allows(tmp_path: Path, case: str) -> None:
    """A bundle that does not load stops the worker at start (PolicyError naming file and
    line: no worker, no answer, exit 2 from `gatepass worker`); a pushed one that does not
    load is refused and the last good policy decides (test_policy_rollout.py). A policy that
    errors while deciding is DENY policy_error, even next to a permit; an exception in the
    policy code is DENY internal_error. Also: test_policy.py, cases/policy.toml."""
    if case in BAD_POLICIES:
        edit = BAD_POLICIES[case]
        folder = tmp_path / "nowhere" if edit is None else bundle_with(tmp_path, *edit)
        with pytest.raises(PolicyError) as err:
            Runtime(Settings(home=tmp_path / "home", policy_dir=folder))
        assert err.value.code == "policy_invalid" and err.value.file
        if edit is not None and edit[1]:
            assert err.value.file == edit[0]
        return
    worker = make_worker(tmp_path / "home")
    if case == "policy code raises":
        class Raising(CedarPolicy):
            def check(self, *args: Any, **kwargs: Any) -> Any:
                raise ArithmeticError("boom")
        policy: CedarPolicy = Raising.from_files(read_bundle(DEFAULT_POLICY_DIR))
        reason = "internal_error"
    else:
        name, effect = {"scope policy errors": ("scope/overflow.cedar", "permit"),
                        "forbid errors next to a permit": ("scope/overflow.cedar", "forbid"),
                        "approval policy errors": ("approval/overflow.cedar", "permit")}[case]
        folder = bundle_with(tmp_path, name, OVERFLOW.format(id="overflow", effect=effect))
        policy = CedarPolicy.from_files(read_bundle(folder))
        reason = "policy_error"
    worker.rt.pipeline.book = PolicyBook.fixed(policy)
    verdict = assert_denied(worker, worker.ask(), reason)
    assert verdict["reasons"][0] == reason
    assert verdict["policy_version"] == policy.version


def test_policy_topic_not_read_yet_is_denied(tmp_path: Path) -> None:
    """A worker that has not read the policy topic up to an intent's append time cannot know
    whether a pushed policy is in force for it: DENY state_not_ready (after waiting for the
    loader, in the app), never a decision by a policy that may already be replaced."""
    worker = make_worker(tmp_path / "home", policy_read=False)
    for intent in (worker.intent(), worker.intent(amount=BIG)):
        verdict = assert_denied(worker, worker.ask(intent), "state_not_ready")
        assert verdict["reasons"] == ["state_not_ready"]
        assert "policy" in verdict["detail"]
    assert worker.pending == {}


# ---- signing key unavailable ---------------------------------------------------------------
class KeylessIssuer(PassIssuer):
    """The worker's issuer once its signing key is gone (an HSM away, a key store lost)."""

    def issue(self, req: PassRequest) -> IssuedPass:
        raise KeyStoreError("signing key unavailable")


def test_signing_key_unavailable_issues_no_pass(tmp_path: Path) -> None:
    """At start an unusable key file stops the worker (KeyStoreError); at run time a failed
    signature turns the ALLOW into DENY internal_error, also for an approved request, and a
    redelivered ALLOW that cannot be re-signed is not answered again (its first verdict
    stands). Never an ALLOW without a pass. Also: test_pipeline.py, test_keystore.py."""
    worker = make_worker(tmp_path / "home")
    first = worker.ask()
    assert first.decision == "ALLOW"
    keys = worker.rt.settings.keystore_dir
    keyless = KeylessIssuer(worker.rt.keystore, issuer="gatepass", ttl=timedelta(minutes=5))
    big = worker.intent(amount=BIG)
    assert worker.ask(big).decision == "PENDING"
    worker.rt.pipeline.issuer = keyless

    verdict = assert_denied(worker, worker.ask(), "internal_error")
    assert verdict["detail"] == "pass could not be signed"

    approved = worker.settle(worker.decision(big))  # the owner approves; no key to sign
    assert_never_allowed(worker, approved.records)
    assert (approved.final, approved.reason) == ("DENY", "internal_error")

    assert first.intent_id is not None
    redelivered = worker.ask(worker.intent(intent_id=first.intent_id))
    assert redelivered.duplicate and redelivered.records == []

    # A key file others can read, or that is not a key, stops the worker before it decides.
    (pem,) = keys.glob("*.pem")
    pem.chmod(0o644)
    with pytest.raises(KeyStoreError):
        Runtime(worker.rt.settings)
    pem.chmod(0o600)
    pem.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    with pytest.raises(KeyStoreError):
        Runtime(worker.rt.settings)


# ---- verdict or audit topic unwritable -----------------------------------------------------
class Broker:
    """A producer whose writes to some topics fail until told otherwise (as after a broker
    refused them: authorization, size limit, topic gone)."""

    def __init__(self) -> None:
        self.refused: set[str] = set()
        self.written: list[Outgoing] = []

    async def send(self, record: Outgoing) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if record.topic in self.refused:
            fut.set_exception(ConnectionError(f"{record.topic} is not writable"))
        else:
            self.written.append(record)
            fut.set_result(None)
        return fut

    async def flush(self) -> None:
        return None


@pytest.mark.parametrize("unwritable", ["verdicts", "audit"])
def test_verdict_or_audit_topic_unwritable_blocks_the_commit(worker: Worker,
                                                             unwritable: str) -> None:
    """What app.py builds around the pipeline: every record goes through DeliveryGuard.send,
    and faust's flush before a commit is DeliveryGuard.flush. While one topic refuses writes
    that flush does not return - so no offset past the intent is committed and a restart
    re-delivers it - and once the topic takes writes again every record is written.

    This proves "no commit past an unrecorded decision", not "the worker stops deciding":
    the agent keeps deciding the next intents meanwhile (see the broker tests below).
    Also: tests/unit/worker/test_delivery.py.
    """
    topic = getattr(worker.topics, unwritable)
    out = worker.ask()
    assert out.decision == "ALLOW"

    async def scenario() -> tuple[bool, list[Outgoing]]:
        broker = Broker()
        broker.refused.add(topic)
        guard = DeliveryGuard(broker.send, broker.flush, max_backoff=0.01)
        for record in out.records:
            await guard.send(record)
        commit = asyncio.ensure_future(guard.flush())  # what precedes faust's commit
        await asyncio.sleep(0.3)
        blocked = not commit.done()
        broker.refused.clear()  # the topic takes writes again
        await asyncio.wait_for(commit, 5)
        return blocked, broker.written

    blocked, written = asyncio.run(scenario())
    assert blocked, f"the commit went ahead while {topic} refused the records"
    assert sorted(r.topic for r in written) == sorted(r.topic for r in out.records)


# The same row on the real broker: a topic is made unwritable by giving it a message size
# limit smaller than any record (the broker then refuses every batch, as it would for a
# missing ACL), then writable again.
UNWRITABLE_BYTES = 64


def _alter_max_bytes(bootstrap: str, topic: str, value: int | None) -> None:
    from confluent_kafka.admin import (
        AdminClient,
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
        ResourceType,
    )

    op = AlterConfigOpType.SET if value is not None else AlterConfigOpType.DELETE
    entry = ConfigEntry("max.message.bytes", str(value or ""), incremental_operation=op)
    resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[entry])
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for fut in admin.incremental_alter_configs([resource]).values():
        fut.result(timeout=30)


@dataclass
class Sent:
    intent: Intent
    partition: int
    offset: int


def _send_intent(stack: Any, intent: Intent) -> Sent:
    """Write one intent as the SDK would (keyed, murmur2 partition), and learn its offset."""
    from confluent_kafka import Producer

    settings = stack.settings
    partition = partition_for(intent.agent_id, settings.partitions)
    where: list[Any] = []
    producer = Producer({"bootstrap.servers": settings.bootstrap})
    producer.produce(settings.topics.intents, key=intent.agent_id.encode(),
                     value=SCHEMAS.intent.encode(intent_to_record(intent)),
                     partition=partition, on_delivery=lambda err, msg: where.append((err, msg)))
    assert producer.flush(10) == 0
    ((err, msg),) = where
    assert err is None, err
    return Sent(intent, partition, msg.offset())


def _committed(stack: Any, partition: int) -> int:
    from confluent_kafka import Consumer, TopicPartition

    settings = stack.settings
    consumer = Consumer({"bootstrap.servers": settings.bootstrap, "group.id": settings.app_id,
                         "enable.auto.commit": False})
    try:
        (tp,) = consumer.committed([TopicPartition(settings.topics.intents, partition)],
                                   timeout=10)
        return int(tp.offset)
    finally:
        consumer.close()


def _records_for(stack: Any, topic: str, codec: Any, intent_id: str,
                 timeout: float) -> list[dict[str, Any]]:
    from support.stack import read_topic

    def found(records: list[Any]) -> bool:
        return any(intent_of(r) == intent_id for r in records)

    def intent_of(record: dict[str, Any]) -> str:
        return str(record["intent_id"] if "intent_id" in record else
                   record["intent"]["intent_id"])

    return [r for r in read_topic(stack.settings, topic, codec, found, timeout)
            if intent_of(r) == intent_id]


def _fresh_intent(agent: str) -> Intent:
    return Intent(intent_id=str(uuid.uuid4()), agent_id=agent, action="purchase_order.create",
                  resource="vendor:ACME", audience=AUDIENCE, amount=Decimal("120.00"),
                  currency="USD", requested_at=datetime.now(UTC))


@pytest.fixture(scope="module")
def registered(stack: Any) -> str:
    agent, owner = f"unwritable-bot-{uuid.uuid4().hex[:6]}", f"owner-{uuid.uuid4().hex[:6]}"
    stack.register(agent, owner)
    # one answered intent first: the worker's view has the agent and its partitions run
    with stack.client(agent_id=agent, audience=AUDIENCE, timeout=30) as gp:
        assert gp.authorize("vendor.read", "vendor:ACME").decision == "ALLOW"
    return agent


@pytest.mark.integration
def test_verdict_topic_unwritable_gives_no_answer_and_commits_nothing_until_it_is_written(
        stack: Any, registered: str) -> None:
    """While the verdicts topic refuses writes: the agent gets no verdict (its SDK times out
    into DENY sdk_timeout), the intent's offset is not committed (a crash re-delivers it),
    and the decision is recorded on the audit topic. Once the topic takes writes again the
    same verdict arrives and the offset moves past the intent."""
    verdicts_topic = stack.settings.topics.verdicts
    _alter_max_bytes(stack.settings.bootstrap, verdicts_topic, UNWRITABLE_BYTES)
    try:
        time.sleep(1.0)  # let the broker apply the limit
        sent = _send_intent(stack, _fresh_intent(registered))
        audit = _records_for(stack, stack.settings.topics.audit,
                             SCHEMAS.decision_record, sent.intent.intent_id, 20)
        assert [r["decision"] for r in audit] == ["ALLOW"]  # decided and recorded...
        time.sleep(3.0)  # several commit intervals (1 s)
        assert _records_for(stack, verdicts_topic, SCHEMAS.verdict, sent.intent.intent_id,
                            2) == []  # ...but not answered
        assert _committed(stack, sent.partition) <= sent.offset  # and not committed past
    finally:
        _alter_max_bytes(stack.settings.bootstrap, verdicts_topic, None)
    answered = _records_for(stack, verdicts_topic, SCHEMAS.verdict, sent.intent.intent_id, 30)
    assert answered and {v["decision"] for v in answered} == {"ALLOW"}
    assert {v["credential_id"] for v in answered} == {audit[0]["credential"]["credential_id"]}
    deadline = time.monotonic() + 30
    while _committed(stack, sent.partition) <= sent.offset:
        assert time.monotonic() < deadline, "the offset never moved past the answered intent"
        time.sleep(0.5)


@pytest.mark.integration
def test_audit_topic_unwritable_stops_the_worker_from_deciding_unrecorded(
        stack: Any, registered: str) -> None:
    """A verdict goes out only once its audit record is acknowledged (DeliveryGuard
    .send_after): while the audit topic refuses, the agent gets no answer (its SDK gives up:
    DENY sdk_timeout); once writable, the recorded decision and then its verdict arrive. A
    redelivered intent re-sends its audit record too, in case the first never landed."""
    audit_topic = stack.settings.topics.audit
    _alter_max_bytes(stack.settings.bootstrap, audit_topic, UNWRITABLE_BYTES)
    try:
        time.sleep(1.0)
        sent = _send_intent(stack, _fresh_intent(registered))
        # (a generous wait: a verdict that is merely slow must not pass for a fix)
        answered = _records_for(stack, stack.settings.topics.verdicts, SCHEMAS.verdict,
                                sent.intent.intent_id, 20)
        assert answered == [], (
            f"answered {[v['decision'] for v in answered]} while the audit topic refused "
            "the decision record")
    finally:
        _alter_max_bytes(stack.settings.bootstrap, audit_topic, None)
    answered = _records_for(stack, stack.settings.topics.verdicts, SCHEMAS.verdict,
                            sent.intent.intent_id, 30)
    assert answered and {v["decision"] for v in answered} == {"ALLOW"}
    audit = _records_for(stack, audit_topic, SCHEMAS.decision_record, sent.intent.intent_id, 5)
    assert audit and {a["credential"]["credential_id"] for a in audit} == {
        v["credential_id"] for v in answered}


# ---- approval missing, expired, forged or for another intent -------------------------------
def _pending(worker: Worker, **changes: Any) -> Intent:
    intent = worker.intent(amount=BIG, **changes)
    out = worker.ask(intent)
    assert (out.decision, out.reasons) == ("PENDING", ("pending_approval",))
    assert_never_allowed(worker, out.records)
    return intent


@pytest.mark.parametrize("case", [
    "missing: nobody decides before the expiry",
    "missing: a decision for an intent with no request",
    "expired: the owner's approval arrives after the expiry",
    "forged: a made-up proof",
    "forged: a flipped choice",
    "forged: a principal who is not an approver, with a valid code of their own",
    "forged: a code made under another deployment's approval key",
    "for another intent: the owner's code for another request",
    "for another intent: a genuine decision re-addressed to another intent",
])
def test_approval_missing_expired_forged_or_for_another_intent_never_allows(
        worker: Worker, case: str) -> None:
    """The request stays pending (no pass) or ends DENY; each refused decision raises an
    approval alert for the SOC. Also: approval.toml, test_pipeline_approvals.py,
    tests/integration/test_approvals.py (forged, replayed, timeout on a real worker)."""
    intent = _pending(worker)
    timeout = worker.rt.settings.approval_timeout
    kind = case.split(":")[0]
    if case.startswith("missing: nobody"):
        for at in (NOW + timedelta(seconds=1), NOW + timeout / 2):
            worker.clock.now = at
            early = worker.settle(worker.tick(intent))
            assert early.records == [] and early.final is None
        worker.clock.now = NOW + timeout
        out = worker.settle(worker.tick(intent))
        assert (out.final, out.reason, out.alert) == ("DENY", "approval_expired", None)
    elif case.startswith("missing: a decision"):
        other = worker.intent()  # never asked: no request exists for it
        out = worker.settle(worker.decision(other))
        assert (out.final, out.alert) == (None, "approval_unknown")
    elif kind == "expired":
        worker.clock.now = NOW + timeout + timedelta(milliseconds=1)
        out = worker.settle(worker.decision(intent))
        assert (out.final, out.reason, out.alert) == ("DENY", "approval_expired",
                                                      "approval_expired")
    elif case.endswith("made-up proof"):
        out = worker.settle(worker.decision(intent, code="A" * 22))
        assert (out.final, out.alert) == (None, "approval_forged")
    elif case.endswith("flipped choice"):
        deny = SCHEMAS.approval_decision.decode(worker.decision(intent, approve=False))
        out = worker.settle(SCHEMAS.approval_decision.encode(deny | {"choice": "APPROVE"}))
        assert (out.final, out.alert) == (None, "approval_forged")
    elif case.endswith("code of their own"):
        out = worker.settle(worker.decision(intent, approver="tom"))
        assert (out.final, out.alert) == (None, "approval_forged")
    elif case.endswith("approval key"):
        code = approval_code(os.urandom(32), request_id_for(intent.intent_id), "sarah")
        out = worker.settle(worker.decision(intent, code=code))
        assert (out.final, out.alert) == (None, "approval_forged")
    elif case.endswith("another request"):
        other = _pending(worker)
        code = approval_code(worker.rt.approval_key(), request_id_for(other.intent_id),
                             "sarah")
        out = worker.settle(worker.decision(intent, code=code))
        assert (out.final, out.alert) == (None, "approval_forged")
    else:
        other = _pending(worker)
        genuine = SCHEMAS.approval_decision.decode(worker.decision(intent))
        out = worker.settle(SCHEMAS.approval_decision.encode(
            genuine | {"intent_id": other.intent_id}))
        assert (out.final, out.alert) == (None, "approval_forged")
        assert other.intent_id in worker.pending
    assert_never_allowed(worker, out.records)
    if out.final is None:
        assert out.remember is None and out.finish is None  # nothing changed...
        assert intent.intent_id in worker.pending  # ...the request still waits
        if out.alert is not None:
            assert [r.topic for r in out.records] == [worker.topics.approval_alerts]
    else:
        assert intent.intent_id not in worker.pending
        remembered = SCHEMAS.decision_record.decode(worker.decided[intent.intent_id])
        assert remembered["decision"] == "DENY" and remembered["credential"] is None
    # and the intent, redelivered, is never answered with more than it had
    again = worker.ask(intent)
    assert again.duplicate
    assert_never_allowed(worker, again.records)


# ---- schema-invalid input ------------------------------------------------------------------
def test_schema_invalid_input_is_dead_lettered_or_denied(worker: Worker) -> None:
    """Undecodable records on every input topic are one dead letter each (no verdict is
    possible without an intent id) and change no state; a decodable intent that breaks the
    contract is DENY invalid_intent. Also: test_pipeline.py, tests/fuzz/ (every input topic
    with thousands of random and mutated records)."""
    t = worker.topics
    garbage: list[bytes | None] = [None, b"", b"{\"intent_id\": 1}", MARKER + bytes(8) + b"\x00",
                                   SCHEMAS.intent.encode(intent_to_record(worker.intent()))[:-3]]
    identity_before = (dict(worker.rt.identity.agents), dict(worker.rt.identity.principals))
    for value in garbage:
        out = worker.ask(worker.intent(), raw=True, value=value)
        assert [r.topic for r in out.records] == [t.dead_letter]
        assert out.remember is None and out.pending is None and out.decision == ""
        approval = worker.settle(value)
        assert [r.topic for r in approval.records] == [t.dead_letter]
        assert approval.final is None and approval.remember is None
        lifecycle = worker.rt.pipeline.on_lifecycle(b"principal:sarah/status", value,
                                                    partition=0, offset=1)
        assert [r.topic for r in lifecycle] == [t.dead_letter]
        checks, remember = worker.rt.pipeline.on_orphan_check(b"ghost-bot", value or b"x",
                                                              partition=0, offset=1, memo={})
        assert [r.topic for r in checks] == [t.dead_letter] and remember == []
    assert worker.decided == {} and worker.pending == {}
    assert (dict(worker.rt.identity.agents), dict(worker.rt.identity.principals)) == \
        identity_before
    for changes in ({"action": "BuyStuff"}, {"intent_id": "not-a-uuid"},
                    {"amount": Decimal("-1")}, {"currency": None},
                    {"resource": ""}, {"context": {f"k{i}": "v" for i in range(65)}},
                    {"delegation_chain": ("procure-bot",)}):
        verdict = assert_denied(worker, worker.ask(worker.intent(**changes)), "invalid_intent")
        assert verdict["reasons"] == ["invalid_intent"]
    # a valid intent under another agent's key, or on another partition: refused too
    assert_denied(worker, worker.ask(worker.intent(), key=b"tom-bot"), "invalid_intent")


# ---- key files 0600 ------------------------------------------------------------------------
def _modes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): stat.S_IMODE(os.lstat(p).st_mode)
            for p in [folder, *folder.rglob("*")]}


@pytest.fixture
def loose_umask() -> Iterator[None]:
    old = os.umask(0)  # the modes must not depend on a friendly umask
    try:
        yield
    finally:
        os.umask(old)


def test_key_files_are_0600(tmp_path: Path, loose_umask: None) -> None:
    """Everything secret a worker keeps on disk: the signing keys (also after a rotation),
    their metadata, the approval key, the store's lock, the approvers' inboxes. Directories
    0700, files 0600; only the public JWKS file (outside the key store) is readable by all.
    Also: test_keystore.py, test_inbox.py (the same, file by file)."""
    home = tmp_path / "home"
    worker = make_worker(home)
    store: KeyStore = worker.rt.keystore
    store.rotate(now=datetime.now(UTC), grace=timedelta(hours=1))
    store.write_jwks(worker.rt.settings.jwks_file, now=datetime.now(UTC))
    notice = ApprovalNotice(
        request_id="r-1", intent_id=str(uuid.uuid4()), agent_id="procure-bot", owner="sarah",
        approver="sarah", purpose="procurement", department=None,
        action="purchase_order.create", resource="vendor:ACME", amount="50000.00",
        currency="USD", why=("above the threshold",), requested_at=NOW,
        expires_at=NOW + timedelta(minutes=5), code="c" * 22, link="http://x/approvals")
    asyncio.run(InboxNotifier(worker.rt.settings.approval_inbox).deliver(notice))

    keys = _modes(worker.rt.settings.keystore_dir)
    assert len([k for k in keys if k.endswith(".pem")]) == 2
    assert {"approval.key", "keys.json", ".lock"} <= set(keys)
    assert keys == {name: 0o700 if name == "." else 0o600 for name in keys}
    inbox = _modes(worker.rt.settings.approval_inbox)
    assert inbox == {".": 0o700, inbox_file_name("sarah"): 0o600}
    assert stat.S_IMODE(worker.rt.settings.jwks_file.stat().st_mode) == 0o644  # public
