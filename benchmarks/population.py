"""Who exists in a benchmark run, and what they ask for.

The registered population (`Population`): `agents` procurement agents, five per owner; of
them 5% belong to offboarded owners (ghosts) and 5% are suspended. Beside them one owner with
`orphan_agents` agents (the orphan alert figure) and `revoke_repeats` owner/agent pairs (the
time-to-revoke figure), all active.

The intent mix (`IntentMix`), per 20 intents: 16 ALLOW with a signed pass (12 purchase orders
of 120.00 USD, 4 vendor reads), then one each of out_of_scope (cloud.provision),
owner_inactive (a ghost), agent_inactive (a suspended agent), and, alternately,
unregistered_agent and stale_intent (requested 5 minutes ago): 80% ALLOW, 20% DENY.

`bulk_identities` writes a large identity topic fast: records are encoded once by the codec
and copied with fixed-length ids substituted (a sample is re-encoded to prove the bytes).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from confluent_kafka import Producer

from benchmarks.common import AUDIENCE
from gatepass.codec.avro import schemas
from gatepass.codec.records import lifecycle_from_record, lifecycle_to_record
from gatepass.config import Settings
from gatepass.core import (
    AgentRegistered,
    AgentStatus,
    AgentStatusChanged,
    Intent,
    LifecycleEvent,
    PrincipalStatus,
    PrincipalStatusChanged,
    lifecycle_key,
)
from gatepass.sdk import LifecyclePublisher
from gatepass.transport import partition_for

AGENTS_PER_OWNER = 5
PURCHASE = Decimal("120.00")  # under the policy's approval threshold: ALLOW, never PENDING


@dataclass
class Population:
    tag: str
    active: list[str] = field(default_factory=list)
    ghosts: list[str] = field(default_factory=list)  # owner offboarded
    suspended: list[str] = field(default_factory=list)
    orphan_owner: str = ""
    orphan_agents: list[str] = field(default_factory=list)
    revoke_pairs: list[tuple[str, str]] = field(default_factory=list)  # (owner, agent)

    @property
    def registered(self) -> int:
        return (len(self.active) + len(self.ghosts) + len(self.suspended)
                + len(self.orphan_agents) + len(self.revoke_pairs))


def build_population(agents: int, orphan_agents: int, revoke_repeats: int
                     ) -> tuple[Population, list[LifecycleEvent]]:
    tag = uuid.uuid4().hex[:6]
    at = datetime.now(UTC) - timedelta(minutes=10)
    pop = Population(tag)
    events: list[LifecycleEvent] = []
    owners = max(1, agents // AGENTS_PER_OWNER)
    ghost_owners = max(1, owners // 20)
    for o in range(owners):
        owner = f"bo-{tag}-{o}"
        events.append(PrincipalStatusChanged(principal_id=owner, status=PrincipalStatus.ACTIVE,
                                             event_time=at, source="bench"))
        if o < ghost_owners:  # offboarded later than registered: their agents are ghosts
            events.append(PrincipalStatusChanged(principal_id=owner,
                                                 status=PrincipalStatus.OFFBOARDED,
                                                 event_time=at + timedelta(minutes=1),
                                                 source="bench"))
    for i in range(agents):
        o = i % owners
        agent = f"ba-{tag}-{i}"
        events.append(AgentRegistered(agent_id=agent, owner=f"bo-{tag}-{o}",
                                      purpose="procurement", event_time=at, source="bench"))
        if o < ghost_owners:
            pop.ghosts.append(agent)
        elif len(pop.suspended) < len(pop.ghosts) and i % 19 == 0:
            events.append(AgentStatusChanged(agent_id=agent, status=AgentStatus.SUSPENDED,
                                             event_time=at + timedelta(minutes=1),
                                             source="bench"))
            pop.suspended.append(agent)
        else:
            pop.active.append(agent)
    pop.orphan_owner = f"bo-{tag}-orphans"
    events.append(PrincipalStatusChanged(principal_id=pop.orphan_owner,
                                         status=PrincipalStatus.ACTIVE, event_time=at,
                                         source="bench"))
    for i in range(orphan_agents):
        agent = f"ba-{tag}-orphan-{i}"
        events.append(AgentRegistered(agent_id=agent, owner=pop.orphan_owner,
                                      purpose="procurement", event_time=at, source="bench"))
        pop.orphan_agents.append(agent)
    for k in range(revoke_repeats):
        owner, agent = f"bo-{tag}-revoke-{k}", f"ba-{tag}-revoke-{k}"
        events += [PrincipalStatusChanged(principal_id=owner, status=PrincipalStatus.ACTIVE,
                                          event_time=at, source="bench"),
                   AgentRegistered(agent_id=agent, owner=owner, purpose="procurement",
                                   event_time=at, source="bench")]
        pop.revoke_pairs.append((owner, agent))
    return pop, events


def register(settings: Settings, events: list[LifecycleEvent]) -> None:
    pub = publisher(settings)
    for i in range(0, len(events), 5000):
        pub.publish(*events[i:i + 5000], timeout=60)


def publisher(settings: Settings) -> LifecyclePublisher:
    return LifecyclePublisher(bootstrap=settings.bootstrap, topic_prefix=settings.topic_prefix)


def offboard(publisher: LifecyclePublisher, principal_id: str) -> None:
    """The principal offboarded now; returns once the broker has acknowledged the event."""
    publisher.publish(PrincipalStatusChanged(principal_id=principal_id,
                                             status=PrincipalStatus.OFFBOARDED,
                                             event_time=datetime.now(UTC), source="bench"))


class IntentMix:
    """make(n) -> the n-th intent of the realistic mix (see the module docstring)."""

    expected = {"ALLOW/allowed": 0.80, "DENY/out_of_scope": 0.05, "DENY/owner_inactive": 0.05,
                "DENY/agent_inactive": 0.05, "DENY/unregistered_agent": 0.025,
                "DENY/stale_intent": 0.025}

    def __init__(self, pop: Population) -> None:
        self.pop = pop
        self._unknown = f"ba-{pop.tag}-never-registered"

    def make(self, n: int) -> Intent:
        slot, turn = n % 20, n // 20
        pop = self.pop
        now = datetime.now(UTC)
        agent, action, amount, at = pop.active[n % len(pop.active)], "vendor.read", None, now
        if slot < 12:
            action, amount = "purchase_order.create", PURCHASE
        elif slot < 16:
            pass  # vendor.read
        elif slot == 16:
            action = "cloud.provision"  # not in the procurement purpose: out_of_scope
        elif slot == 17:
            agent = pop.ghosts[turn % len(pop.ghosts)]
        elif slot == 18:
            agent = (pop.suspended or pop.ghosts)[turn % len(pop.suspended or pop.ghosts)]
        elif turn % 2 == 0:
            agent = f"{self._unknown}-{turn % 100}"
        else:
            at = now - timedelta(minutes=5)
        return Intent(intent_id=str(uuid.uuid4()), agent_id=agent, action=action,
                      resource="vendor:ACME", audience=AUDIENCE, amount=amount,
                      currency="USD" if amount is not None else None, requested_at=at)


def simple_intent(agent: str) -> Intent:
    """An intent that is allowed while the agent and its owner are active."""
    return Intent(intent_id=str(uuid.uuid4()), agent_id=agent, action="vendor.read",
                  resource="vendor:ACME", audience=AUDIENCE, requested_at=datetime.now(UTC))


def bulk_identities(settings: Settings, count: int,
                    on_progress: Callable[[int], None] = lambda n: None) -> dict[str, Any]:
    """Write `count` identity records: half active principals, half agents each owned by one
    of them (so no orphan check is due). Returns what was written and how fast."""
    import time

    codec = schemas().lifecycle
    tag = uuid.uuid4().hex[:6]
    at = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)
    width = 8

    def principal(i: int) -> PrincipalStatusChanged:
        return PrincipalStatusChanged(principal_id=f"bp-{tag}-{i:0{width}d}",
                                      status=PrincipalStatus.ACTIVE, event_time=at,
                                      source="bulk-import")

    def agent(i: int) -> AgentRegistered:
        return AgentRegistered(agent_id=f"bg-{tag}-{i:0{width}d}",
                               owner=f"bp-{tag}-{i:0{width}d}", purpose="procurement",
                               event_time=at, source="bulk-import")

    def template(event: LifecycleEvent) -> tuple[bytes, bytes]:
        return lifecycle_key(event).encode(), codec.encode(lifecycle_to_record(event))

    zero = f"{0:0{width}d}".encode()
    (pk, pv), (ak, av) = template(principal(0)), template(agent(0))

    def fill(raw: bytes, i: int) -> bytes:
        return raw.replace(zero, f"{i:0{width}d}".encode())

    for i in (1, 7, count // 2, max(0, count - 1)):  # the copies are what the codec writes
        for make, (k, v) in ((principal, (pk, pv)), (agent, (ak, av))):
            ev = make(i)
            assert fill(k, i).decode() == lifecycle_key(ev)
            assert fill(v, i) == codec.encode(lifecycle_to_record(ev))
            assert lifecycle_from_record(codec.decode(fill(v, i))) == ev

    producer = Producer({"bootstrap.servers": settings.bootstrap, "linger.ms": 50,
                         "batch.num.messages": 10000, "batch.size": 1_000_000,
                         "queue.buffering.max.messages": 1_000_000,
                         "queue.buffering.max.kbytes": 1_000_000, "acks": "all",
                         "compression.type": "lz4"})
    failures: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    topic, n = settings.topics.identity, settings.partitions
    started = time.monotonic()
    for j in range(count):
        i = j // 2
        k, v = (fill(pk, i), fill(pv, i)) if j % 2 == 0 else (fill(ak, i), fill(av, i))
        while True:
            try:
                producer.produce(topic, key=k, value=v, partition=partition_for(k, n),
                                 on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        if j % 20000 == 0:
            producer.poll(0)
            on_progress(j)
    remaining = producer.flush(120)
    if remaining or failures:
        raise RuntimeError(f"bulk identities not written: {remaining} left, {failures[:3]}")
    seconds = time.monotonic() - started
    return {"records": count, "principals": (count + 1) // 2, "agents": count // 2,
            "record_bytes": {"principal": len(pv), "agent": len(av)},
            "produce_seconds": round(seconds, 2),
            "produce_records_per_s": round(count / seconds) if seconds else None}
