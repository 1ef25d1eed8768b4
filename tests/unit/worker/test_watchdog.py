"""StallWatchdog: a worker exits only when stuck, never while busy, idle or cut off."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from gatepass.worker.metrics import WorkerMetrics
from gatepass.worker.watchdog import EXIT_STALLED, StallWatchdog


@dataclass
class World:
    lag: int | None = 5
    broker: bool = True
    busy: bool = False
    now: float = 1000.0
    events: list[str] = field(default_factory=list)
    metrics: WorkerMetrics = field(default_factory=WorkerMetrics)

    def __post_init__(self) -> None:
        self.metrics.last_progress = 0.0  # on this test's clock: long before the looks

    def watchdog(self, after: float = 120.0) -> StallWatchdog:
        async def lag() -> int | None:
            return self.lag

        async def broker() -> bool:
            self.events.append("asked broker")
            return self.broker

        return StallWatchdog(self.metrics, after, lag=lag, broker_answers=broker,
                             busy=lambda: self.busy, dump=lambda: self.events.append("dump"),
                             exit=lambda code: self.events.append(f"exit {code}"),
                             clock=lambda: self.now)

    def look(self, dog: StallWatchdog, at: float) -> bool:
        self.now = at
        return asyncio.run(dog.check())


def test_stuck_with_the_broker_answering_dumps_then_exits_70() -> None:
    w = World()
    dog = w.watchdog()
    assert not w.look(dog, 1000)  # the wait is first seen
    assert not w.look(dog, 1119)
    assert w.look(dog, 1121)
    assert w.events == ["asked broker", "dump", f"exit {EXIT_STALLED}"]
    assert EXIT_STALLED == 70


def test_a_decision_restarts_the_clock() -> None:
    w = World()
    dog = w.watchdog()
    w.look(dog, 1000)
    w.metrics.last_progress = 1100.0
    assert not w.look(dog, 1121)
    assert not w.look(dog, 1240)
    assert w.look(dog, 1242)


@pytest.mark.parametrize("change", ["no_lag", "lag_unknown", "broker_away", "busy", "off"])
def test_no_exit_when_not_stuck_or_a_restart_would_not_help(change: str) -> None:
    w = World()
    dog = w.watchdog(after=0.0 if change == "off" else 120.0)
    w.look(dog, 1000)
    if change == "no_lag":
        w.lag = 0
    elif change == "lag_unknown":
        w.lag = None
    elif change == "broker_away":
        w.broker = False
    elif change == "busy":
        w.busy = True
    assert not w.look(dog, 1500)
    assert not any(e.startswith(("dump", "exit")) for e in w.events)


def test_a_rebalance_or_recovery_restarts_the_wait() -> None:
    w = World()
    dog = w.watchdog()
    w.look(dog, 1000)
    w.busy = True
    w.look(dog, 1100)
    w.busy = False
    assert not w.look(dog, 1130)  # 130 s since the wait was first seen, but 30 since busy
    assert not w.look(dog, 1249)
    assert w.look(dog, 1251)
