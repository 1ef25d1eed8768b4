"""Stateful limits through the pipeline without a broker: a little bus routes every record
the pipeline sends to the handler of its topic (in order), with dicts standing in for the
changelog tables of each partition. Agents of one owner and one department sit on different
partitions, so owner and department budgets go through the reservation chain."""

from __future__ import annotations

import shutil
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from gatepass.codec import schemas
from gatepass.codec.records import approval_decision_to_record
from gatepass.core import AgentRegistered, PrincipalStatus, PrincipalStatusChanged
from gatepass.core.approval import ApprovalDecision, approval_code, decision_proof
from gatepass.core.policy import CedarPolicy
from gatepass.credentials import KeyStore, PassIssuer
from gatepass.policy import DEFAULT_POLICY_DIR, read_bundle
from gatepass.transport import partition_for
from gatepass.worker import Pipeline
from gatepass.worker.pipeline import Outgoing, request_id_for
from unit.worker.test_pipeline import NOW, SETTINGS, T0, TOPICS, TTL, Clock, N, intent_bytes

KEY = bytes(range(32))
LIMITS = '''
[approval.delegates]

[[limits]]
name = "agent-daily-spend"
scope = "agent"
measure = "amount"
max = "1000.00"
currency = "USD"
window = "1d"

[[limits]]
name = "owner-daily-spend"
scope = "owner"
measure = "amount"
max = "1500.00"
currency = "USD"
window = "1d"
actions = ["purchase_order.create"]

[[limits]]
name = "department-monthly-spend"
scope = "department"
measure = "amount"
max = "2500.00"
currency = "USD"
window = "30d"
sliding = true
actions = ["purchase_order.create"]

[[limits]]
name = "agent-rate"
scope = "agent"
measure = "count"
max = 5
window = "1m"
'''
# sarah owns a1..a3 (finance); tom owns t1 (finance); zed owns z1 (ops, no shared budget).
AGENTS = {"a1": ("sarah", "finance"), "a2": ("sarah", "finance"), "a3": ("sarah", "finance"),
          "t1": ("tom", "finance"), "z1": ("zed", "ops")}


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> CedarPolicy:
    folder = tmp_path_factory.mktemp("limits") / "policies"
    shutil.copytree(DEFAULT_POLICY_DIR, folder)
    (folder / "gatepass.toml").write_text(LIMITS)
    return CedarPolicy.from_files(read_bundle(folder))


@dataclass
class Bus:
    pipeline: Pipeline
    clock: Clock
    decided: dict[str, bytes] = field(default_factory=dict)
    pending: dict[str, bytes] = field(default_factory=dict)
    ledgers: dict[str, bytes] = field(default_factory=dict)
    holds: dict[str, bytes] = field(default_factory=dict)
    queue: deque[Outgoing] = field(default_factory=deque)
    verdicts: list[dict[str, Any]] = field(default_factory=list)
    other: list[Outgoing] = field(default_factory=list)

    def intent(self, agent: str, amount: str | None = "400.00", *, action: str =
               "purchase_order.create", intent_id: str | None = None) -> str:
        intent_id = intent_id or str(uuid.uuid4())
        value = intent_bytes(intent_id=intent_id, agent_id=agent, action=action,
                             amount=None if amount is None else Decimal(amount),
                             currency=None if amount is None else "USD", context={},
                             requested_at=self.clock.now - timedelta(seconds=1))
        self.queue.append(Outgoing(TOPICS.intents, agent.encode(), value,
                                   partition_for(agent, N)))
        return intent_id

    def run(self) -> None:
        """Deliver everything queued, in order, including what the handlers send."""
        while self.queue:
            self.deliver(self.queue.popleft())

    def deliver(self, r: Outgoing) -> None:
        p = self.pipeline
        partition = r.partition if r.partition is not None else 0
        if r.topic == TOPICS.intents:
            out = p.on_intent(r.key, r.value, partition=partition, offset=0, memo=self.decided,
                              ledgers=self.ledgers, holds=self.holds)
            self.apply(out)
        elif r.topic == TOPICS.budget_requests:
            b = p.on_budget(r.key, r.value, partition=partition, offset=0,
                            ledgers=self.ledgers)
            self.ledgers.update(b.ledgers)
            self.route(b.records)
        elif r.topic == TOPICS.budget_replies:
            self.apply(p.on_budget_reply(r.key, r.value, partition=partition, offset=0,
                                         holds=self.holds, decided=self.decided,
                                         ledgers=self.ledgers))
        elif r.topic == TOPICS.approval_decisions:
            a = p.on_approval(r.key, r.value, partition=partition, offset=0,
                              pending=self.pending, decided=self.decided, ledgers=self.ledgers)
            self.ledgers.update(a.ledgers)
            if a.remember:
                self.decided[a.remember[0]] = a.remember[1]
            if a.finish:
                self.pending.pop(a.finish, None)
            self.route(a.records)
        else:
            self.other.append(r)

    def apply(self, out: Any) -> None:
        self.ledgers.update(out.ledgers)
        if out.hold:
            self.holds[out.hold[0]] = out.hold[1]
        if out.unhold:
            self.holds.pop(out.unhold, None)
        if out.remember:
            self.decided[out.remember[0]] = out.remember[1]
        if out.pending:
            self.pending[out.pending[0]] = out.pending[1]
        self.route(out.records)

    def route(self, records: list[Outgoing]) -> None:
        for r in records:
            if r.topic == TOPICS.verdicts:
                self.verdicts.append(schemas().verdict.decode(r.value))
            elif r.topic in (TOPICS.budget_requests, TOPICS.budget_replies):
                assert r.partition == partition_for(r.key or b"", N), r
                self.queue.append(r)
            else:
                self.other.append(r)

    def verdict(self, intent_id: str) -> dict[str, Any]:
        mine = [v for v in self.verdicts if v["intent_id"] == intent_id]
        assert len(mine) == 1, mine
        return mine[0]

    def used(self, key: str) -> Decimal:
        raw = self.ledgers.get(key)
        if raw is None:
            return Decimal(0)
        return sum((e["amount"] or Decimal(0) for e in schemas().budget_ledger.decode(raw)[
            "entries"] if not e["released"]), Decimal(0))


def make_bus(tmp_path: Path, policy: CedarPolicy) -> Bus:
    from gatepass.core import IdentityState

    state = IdentityState()
    for owner in ("sarah", "tom", "zed"):
        state.apply(PrincipalStatusChanged(principal_id=owner, status=PrincipalStatus.ACTIVE,
                                           event_time=T0, source="hr"))
    for agent, (owner, department) in AGENTS.items():
        state.apply(AgentRegistered(agent_id=agent, owner=owner, purpose="procurement",
                                    department=department, event_time=T0, source="okta"))
    clock = Clock(NOW)
    keystore = KeyStore.open(tmp_path / "keys", now=NOW)
    pipeline = Pipeline(settings=SETTINGS, schemas=schemas(), policy=policy,
                        issuer=PassIssuer(keystore, issuer="gatepass", ttl=TTL),
                        identity=state, ready=lambda: True, worker="w", clock=clock,
                        approval_key=lambda: KEY)
    return Bus(pipeline, clock)


@pytest.fixture
def bus(tmp_path: Path, policy: CedarPolicy) -> Bus:
    return make_bus(tmp_path, policy)


def test_agents_are_on_different_partitions() -> None:
    """Otherwise owner and department budgets would not need the reservation chain."""
    assert len({partition_for(a, N) for a in ("a1", "a2", "a3", "t1")}) >= 2


def test_an_agent_limit_is_checked_in_the_agents_partition(bus: Bus) -> None:
    ids = [bus.intent("z1", "400.00") for _ in range(3)]
    bus.run()
    decisions = [bus.verdict(i)["decision"] for i in ids]
    assert decisions == ["ALLOW", "ALLOW", "DENY"]
    denied = bus.verdict(ids[2])
    assert denied["reasons"] == ["limit_exceeded"] and denied["credential"] is None
    assert "agent-daily-spend" in denied["detail"] and "800" in denied["detail"]
    assert bus.used("agent:z1") == Decimal("800")


def test_a_rate_limit_counts_actions_of_any_kind(bus: Bus) -> None:
    ids = [bus.intent("z1", None, action="vendor.read") for _ in range(6)]
    bus.run()
    assert [bus.verdict(i)["decision"] for i in ids] == ["ALLOW"] * 5 + ["DENY"]
    assert "agent-rate" in bus.verdict(ids[5])["detail"]
    bus.clock.now = NOW + timedelta(minutes=1, seconds=1)  # the next minute
    again = bus.intent("z1", None, action="vendor.read")
    bus.run()
    assert bus.verdict(again)["decision"] == "ALLOW"


def test_an_owner_budget_holds_across_the_owners_agents(bus: Bus) -> None:
    ids = [bus.intent(agent, "400.00") for agent in ("a1", "a2", "a3", "a1", "a2")]
    bus.run()
    decisions = [bus.verdict(i)["decision"] for i in ids]
    # 1500 a day for sarah: three orders of 400, the fourth would make 1600.
    assert decisions == ["ALLOW", "ALLOW", "ALLOW", "DENY", "DENY"]
    for denied in ids[3:]:
        v = bus.verdict(denied)
        assert v["reasons"] == ["limit_exceeded"] and "owner-daily-spend" in v["detail"]
    assert bus.used("owner:sarah") == Decimal("1200")
    # What the owner refused, the agents do not count either.
    assert bus.used("agent:a1") == Decimal("400") and bus.used("agent:a2") == Decimal("400")


def test_concurrent_intents_never_overspend_a_department(bus: Bus) -> None:
    """Every intent is published before any is decided (all in flight at once)."""
    ids = [bus.intent(agent, "300.00") for _ in range(3) for agent in ("a1", "t1", "a2", "a3")]
    bus.run()
    allowed = [i for i in ids if bus.verdict(i)["decision"] == "ALLOW"]
    spent = Decimal("300") * len(allowed)
    assert spent <= Decimal("2500") and spent + Decimal("300") > Decimal("2500")
    assert bus.used("department:finance") == spent
    assert bus.used("owner:sarah") <= Decimal("1500")
    assert len(bus.verdicts) == len(ids)  # one answer each
    for i in ids:
        v = bus.verdict(i)
        assert (v["decision"] == "ALLOW") == (v["credential"] is not None)


def test_a_refusal_further_down_the_chain_releases_what_came_before(bus: Bus) -> None:
    # Fill the department with tom's orders over three days (his agent may spend 1000 a
    # day); the department counts 30 sliding days.
    for day, amount in ((0, "1000.00"), (1, "1000.00"), (2, "400.00")):
        bus.clock.now = NOW + timedelta(days=day)
        bus.intent("t1", amount)
        bus.run()
    assert [v["decision"] for v in bus.verdicts] == ["ALLOW"] * 3
    assert bus.used("department:finance") == Decimal("2400")
    refused = bus.intent("a1", "400.00")
    bus.run()
    v = bus.verdict(refused)
    assert v["reasons"] == ["limit_exceeded"] and "department-monthly-spend" in v["detail"]
    # sarah's owner budget reserved it first, then was told to give it back.
    assert bus.used("owner:sarah") == Decimal("0")
    assert bus.used("agent:a1") == Decimal("0")


def test_a_redelivered_intent_on_hold_is_answered_once(bus: Bus) -> None:
    intent_id = bus.intent("a1", "100.00")
    first = bus.queue[0]
    bus.deliver(bus.queue.popleft())
    assert bus.holds and not bus.verdicts  # held: no answer yet
    bus.deliver(first)  # the same intent again, while it waits
    assert not bus.verdicts
    bus.run()
    assert bus.verdict(intent_id)["decision"] == "ALLOW" and not bus.holds
    bus.deliver(first)  # and again after: the remembered verdict, same pass id
    again = [v for v in bus.verdicts if v["intent_id"] == intent_id]
    assert len(again) == 2 and again[0]["credential_id"] == again[1]["credential_id"]


def test_a_hold_without_an_answer_is_denied_and_released(bus: Bus) -> None:
    intent_id = bus.intent("a1", "100.00")
    bus.deliver(bus.queue.popleft())
    bus.queue.clear()  # the reservation is lost on its way
    assert bus.used("agent:a1") == Decimal("100")
    bus.deliver(bus.pipeline.budget_timeout(intent_id, "a1", partition_for("a1", N)))
    v = bus.verdict(intent_id)
    assert v["decision"] == "DENY" and v["reasons"] == ["state_not_ready"]
    assert bus.used("agent:a1") == Decimal("0")
    bus.run()  # the releases it sent
    # A late reservation of the same intent is refused: it must not count after its end.
    late = bus.pipeline.on_budget(
        b"owner:sarah", schemas().budget_message.encode({
            "op": "RESERVE", "intent_id": intent_id, "agent_id": "a1", "key": "owner:sarah",
            "hops": ["owner:sarah", "department:finance"],
            "reply_partition": partition_for("a1", N), "at": NOW, "action":
            "purchase_order.create", "amount": Decimal("100.00"), "currency": "USD",
            "policy_version": bus.pipeline.policy.version, "detail": ""}),
        partition=partition_for("owner:sarah", N), offset=0, ledgers=bus.ledgers)
    assert late.refused == "already released"
    assert bus.used("owner:sarah") == Decimal("0")


def test_a_pending_order_counts_until_its_approval_is_denied(tmp_path: Path) -> None:
    """Above $10,000 the owner must approve (approval/spend.cedar): while pending the order
    counts against every budget; denied, it counts nothing."""
    folder = tmp_path / "policies"
    shutil.copytree(DEFAULT_POLICY_DIR, folder)
    (folder / "gatepass.toml").write_text(LIMITS.replace('"1500.00"', '"50000.00"').replace(
        '"2500.00"', '"60000.00"').replace('"1000.00"', '"50000.00"'))
    big_policy = CedarPolicy.from_files(read_bundle(folder))
    b = make_bus(tmp_path, big_policy)
    intent_id = b.intent("a1", "20000.00")  # above the approval threshold
    b.run()
    (pending,) = [v for v in b.verdicts if v["intent_id"] == intent_id]
    assert pending["decision"] == "PENDING"
    assert b.used("owner:sarah") == Decimal("20000")
    request_id = request_id_for(intent_id)
    code = approval_code(KEY, request_id, "sarah")
    decision_id = str(uuid.uuid4())
    value = schemas().approval_decision.encode(approval_decision_to_record(ApprovalDecision(
        decision_id=decision_id, request_id=request_id, intent_id=intent_id, agent_id="a1",
        approver="sarah", approve=False,
        proof=decision_proof(code, request_id=request_id, intent_id=intent_id, agent_id="a1",
                             approver="sarah", approve=False, decision_id=decision_id),
        channel="test"), submitted_at=NOW))
    b.queue.append(Outgoing(TOPICS.approval_decisions, b"a1", value, partition_for("a1", N)))
    b.run()
    final = [v for v in b.verdicts if v["intent_id"] == intent_id][-1]
    assert final["decision"] == "DENY" and final["reasons"] == ["approval_denied"]
    assert b.used("agent:a1") == Decimal("0")
    assert b.used("owner:sarah") == Decimal("0")
    assert b.used("department:finance") == Decimal("0")
