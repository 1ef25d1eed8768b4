"""The fan-out's timer: a due scheduled status is written back once, by the member owning it."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from gatepass.codec import schemas
from gatepass.codec.records import lifecycle_from_record
from gatepass.config import Settings
from gatepass.core import IdentityState, PrincipalStatus, PrincipalStatusChanged, lifecycle_key
from gatepass.transport import partition_for
from gatepass.worker.lifecycle_fanout import PROMOTE_AFTER, LifecycleFanout

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
SETTINGS = Settings()
N = SETTINGS.partitions
PLAN = PrincipalStatusChanged(principal_id="sarah", status=PrincipalStatus.OFFBOARDED,
                              event_time=T0 + timedelta(hours=1), recorded_at=T0,
                              source="hr-feed", source_event_id="E1/offboarded")
IN_FORCE_KEY = "principal:sarah/status"
HOME = partition_for(IN_FORCE_KEY, N)
ALL = set(range(N))


class Ticks:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fanout(identity: IdentityState) -> LifecycleFanout:
    pipeline: Any = SimpleNamespace(identity=identity, schemas=schemas(),
                                    clock=lambda: T0)
    return LifecycleFanout(SETTINGS, loader=None,  # type: ignore[arg-type]
                           pipeline=pipeline, send=None, flush=None)  # type: ignore[arg-type]


def world() -> IdentityState:
    state = IdentityState()
    state.apply(PrincipalStatusChanged(principal_id="sarah", status=PrincipalStatus.ACTIVE,
                                       event_time=T0 - timedelta(days=30), source="hr-feed"))
    state.apply(PLAN)
    return state


@pytest.mark.parametrize(("after", "written"), [
    (timedelta(0), False),  # at its time: decisions deny already, the write waits
    (PROMOTE_AFTER - timedelta(milliseconds=1), False),
    (PROMOTE_AFTER, True),
    (timedelta(days=2), True),  # every worker was down meanwhile: still written
])
def test_a_due_plan_is_written_back_after_the_grace(after: timedelta, written: bool) -> None:
    records = fanout(world()).promotions(PLAN.event_time + after, ALL, N)
    assert bool(records) is written


def test_the_record_is_the_plan_in_force_under_the_status_key() -> None:
    [record] = fanout(world()).promotions(PLAN.event_time + timedelta(minutes=1), ALL, N)
    assert (record.topic, record.key, record.partition) == (SETTINGS.topics.identity,
                                                            IN_FORCE_KEY.encode(), HOME)
    event = lifecycle_from_record(schemas().lifecycle.decode(record.value))
    assert event == replace(PLAN, recorded_at=PLAN.event_time)
    assert lifecycle_key(event) == IN_FORCE_KEY


@pytest.mark.parametrize(("owned", "written"), [({HOME}, True), (ALL - {HOME}, False),
                                                (set(), False)])
def test_only_the_member_owning_the_partition_writes_it(owned: set[int],
                                                        written: bool) -> None:
    records = fanout(world()).promotions(PLAN.event_time + timedelta(minutes=1), owned, N)
    assert bool(records) is written


def test_written_once_until_it_is_back_in_the_view_then_never_again() -> None:
    identity, ticks = world(), Ticks()
    f = fanout(identity)
    later = PLAN.event_time + timedelta(minutes=1)
    [record] = f.promotions(later, ALL, N, ticks)
    ticks.now += 5
    assert f.promotions(later, ALL, N, ticks) == []  # in flight
    ticks.now += 60
    assert len(f.promotions(later, ALL, N, ticks)) == 1  # lost? written again (same bytes)
    identity.apply(lifecycle_from_record(schemas().lifecycle.decode(record.value)))
    assert f.promotions(later + timedelta(days=1), ALL, N, ticks) == []
    assert f.promoted == 2


def test_two_members_write_identical_bytes() -> None:
    later = PLAN.event_time + timedelta(minutes=1)
    a = fanout(world()).promotions(later, ALL, N)
    b = fanout(world()).promotions(later, ALL, N)
    assert a == b and len(a) == 1


# ---- the pipeline's fan-out of the plan and of its promotion -----------------------------
def _pipeline(identity: IdentityState, tmp_path: Any) -> Any:
    from gatepass.core import AgentRegistered
    from gatepass.credentials import KeyStore, PassIssuer
    from gatepass.policy import load_policy
    from gatepass.worker import Pipeline

    for agent in ("procure-bot", "helper-bot"):
        identity.apply(AgentRegistered(agent_id=agent, owner="sarah", purpose="procurement",
                                       event_time=T0 - timedelta(days=30), source="okta"))
    keystore = KeyStore.open(tmp_path / "keys", now=T0)
    return Pipeline(settings=SETTINGS, schemas=schemas(), policy=load_policy(None),
                    issuer=PassIssuer(keystore, issuer="gatepass", ttl=timedelta(minutes=5)),
                    identity=identity, ready=lambda: True, clock=lambda: T0)


def _lifecycle(pipeline: Any, event: PrincipalStatusChanged) -> list[Any]:
    from gatepass.codec.records import lifecycle_to_record

    key = lifecycle_key(event).encode()
    return pipeline.on_lifecycle(key, schemas().lifecycle.encode(lifecycle_to_record(event)),
                                 partition=partition_for(key, N), offset=1)


def test_the_plan_raises_no_check_its_promotion_checks_every_agent(tmp_path: Any) -> None:
    identity = world()
    pipeline = _pipeline(identity, tmp_path)
    assert _lifecycle(pipeline, PLAN) == []  # recorded, not yet in force
    [promoted] = fanout(identity).promotions(PLAN.event_time + timedelta(minutes=1), ALL, N)
    event = lifecycle_from_record(schemas().lifecycle.decode(promoted.value))
    identity.apply(event)  # the worker's view applies it before the fan-out sees it
    checks = [schemas().orphan_check.decode(r.value) for r in _lifecycle(pipeline, event)]
    named = [a for c in checks for a in [c["agent_id"], *c["more_agent_ids"]]]
    assert sorted(named) == ["helper-bot", "procure-bot"]
    assert {(c["trigger"], c["owner_status"], c["owner_status_at"]) for c in checks} == {
        ("owner_deactivated", "offboarded", PLAN.event_time)}


class _Consumer:
    """getmany hands out the given batches (then nothing); commit fails as told."""

    def __init__(self, batches: list[dict[Any, list[Any]]], commit_errors: list[Any]) -> None:
        self.batches, self.commit_errors, self.commits = batches, commit_errors, 0

    async def getmany(self, **kwargs: Any) -> dict[Any, list[Any]]:
        return self.batches.pop(0) if self.batches else {}

    async def commit(self) -> None:
        error = self.commit_errors.pop(0) if self.commit_errors else None
        if error is not None:
            raise error
        self.commits += 1


def test_a_commit_refused_by_a_rebalance_does_not_stop_the_fan_out() -> None:
    # A second worker leaving rebalanced the lifecycle group mid-batch: commit() raised
    # CommitFailedError out of the faust task and the whole worker crashed.
    import asyncio

    from aiokafka import TopicPartition
    from aiokafka.errors import CommitFailedError

    sent: list[Any] = []
    flushed: list[bool] = []

    async def send(records: list[Any]) -> None:
        sent.append(records)

    async def flush() -> None:
        flushed.append(True)

    async def applied(partition: int, offset: int) -> None:
        return None

    pipeline: Any = SimpleNamespace(identity=IdentityState(), schemas=schemas(), clock=lambda: T0,
                                    on_lifecycle=lambda key, value, **kw: [("check", value)])
    loader: Any = SimpleNamespace(ready=False, wait_applied=applied)
    fan = LifecycleFanout(SETTINGS, loader=loader, pipeline=pipeline, send=send, flush=flush)
    tp = TopicPartition(SETTINGS.topics.identity, 0)
    record = SimpleNamespace(key=b"k", value=b"v1", offset=7)
    consumer = _Consumer([{tp: [record]}, {tp: [replace_value(record, b"v2")]}],
                         [CommitFailedError("rebalanced"), None])

    asyncio.run(fan.step(consumer))  # type: ignore[arg-type]
    asyncio.run(fan.step(consumer))  # type: ignore[arg-type]

    assert sent == [[("check", b"v1")], [("check", b"v2")]]
    assert flushed == [True, True] and consumer.commits == 1 and fan.processed == 2


def replace_value(record: Any, value: bytes) -> Any:
    return SimpleNamespace(key=record.key, value=value, offset=record.offset + 1)
