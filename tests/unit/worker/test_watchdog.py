"""StallWatchdog: a worker exits only when stuck, never while busy, idle or cut off."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import pytest

from gatepass.worker.metrics import WorkerMetrics
from gatepass.worker.watchdog import EXIT_STALLED, NOTE_AFTER, StallWatchdog, waiting_intents


@dataclass
class World:
    lag: int | None = 5
    broker: bool = True
    busy: bool = False
    progress: object = "recovering, 10 changelog records applied"
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
                             busy=lambda: self.busy, progress=lambda: self.progress,
                             describe=lambda: "partitions 0, 1 paused",
                             dump=lambda: self.events.append("dump"),
                             exit=lambda code: self.events.append(f"exit {code}"),
                             clock=lambda: self.now)

    def change(self, what: str) -> None:
        """One way the world is not "stuck and a restart would help"."""
        if what == "no_lag":
            self.lag = 0
        elif what == "lag_unknown":
            self.lag = None
        elif what == "broker_away":
            self.broker = False
        elif what == "busy":
            self.busy = True
        elif what == "progress_unknown":
            self.progress = None
        else:
            assert what == "off"

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
    w.change(change)
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


def test_a_rebalance_or_recovery_without_progress_is_stuck_too() -> None:
    """faust's table recovery once waited four minutes for changelog records that never
    came: busy, but not moving."""
    w = World(busy=True)
    dog = w.watchdog()
    assert not w.look(dog, 1000)  # busy first seen
    assert not w.look(dog, 1120)
    assert w.look(dog, 1121)
    assert w.events == ["asked broker", "dump", f"exit {EXIT_STALLED}"]


def test_a_rebalance_or_recovery_that_moves_on_is_never_stuck() -> None:
    w = World(busy=True)
    dog = w.watchdog()
    for n, at in enumerate(range(1000, 2000, 100)):
        w.progress = f"recovering, {n * 1000} changelog records applied"
        assert not w.look(dog, at)
    w.progress = "recovering, no record since 2000"
    w.look(dog, 2000)
    assert not w.look(dog, 2120)  # the same mark for 120 s: not yet
    assert w.look(dog, 2121)


@pytest.mark.parametrize("change", ["no_lag", "lag_unknown", "broker_away", "progress_unknown",
                                    "off"])
def test_no_exit_while_busy_unless_stuck_and_a_restart_would_help(change: str) -> None:
    w = World(busy=True)
    dog = w.watchdog(after=0.0 if change == "off" else 120.0)
    w.change(change)
    for at in (1000, 1100, 1200, 1500, 5000):
        assert not w.look(dog, at)
    assert not any(e.startswith(("dump", "exit")) for e in w.events)


def test_busy_then_deciding_again_forgets_the_busy_clock() -> None:
    w = World(busy=True)
    dog = w.watchdog()
    w.look(dog, 1000)
    w.busy = False
    w.lag = 0
    w.look(dog, 1100)
    w.busy, w.lag = True, 5
    assert not w.look(dog, 1200)  # busy again: its clock starts now, not at 1000
    assert not w.look(dog, 1320)
    assert w.look(dog, 1321)


@pytest.mark.parametrize(("highs", "next_offsets", "expected"), [
    ({0: 10, 1: 7}, {0: 10, 1: 5}, 2),
    ({0: 10, 1: 7}, {0: 4, 1: None}, 6),  # partition 1 not known yet: not counted
    ({0: 10}, {0: None}, None),  # nothing known: no judgement
    ({0: 10}, {0: 12}, 0),  # handled past the end we asked for: nothing waits
    ({}, {0: 3}, None),  # the broker did not say
    ({0: 5, 1: 5}, {}, None),
], ids=["two-partitions", "one-unknown", "none-known", "ahead", "no-answer", "no-partitions"])
def test_waiting_intents_counts_from_the_next_offset_to_handle(
        highs: dict[int, int], next_offsets: dict[int, int | None], expected: int | None
) -> None:
    assert waiting_intents(highs, next_offsets) == expected


def _notes(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_a_long_wait_is_noted_with_the_workers_account_long_before_the_exit(
        caplog: pytest.LogCaptureFixture) -> None:
    w = World()
    dog = w.watchdog()
    with caplog.at_level(logging.WARNING, "gatepass.worker"):
        w.look(dog, 1000)
        w.look(dog, 1000 + NOTE_AFTER - 1)
        assert _notes(caplog) == []
        w.look(dog, 1000 + NOTE_AFTER)
        w.look(dog, 1000 + NOTE_AFTER + 5)  # not again within NOTE_AFTER
        assert _notes(caplog) == ["5 intents wait, none decided for 30s; partitions 0, 1 paused"]
        w.look(dog, 1000 + 2 * NOTE_AFTER)
    assert len(_notes(caplog)) == 2
    assert not any(e.startswith("exit") for e in w.events)


@pytest.mark.parametrize(("lag", "waiting"), [(5, "5"), (0, "0"),
                                              (None, "an unknown number of")])
def test_a_busy_worker_without_progress_is_noted_too(
        caplog: pytest.LogCaptureFixture, lag: int | None, waiting: str) -> None:
    w = World(busy=True, lag=lag)
    dog = w.watchdog()
    with caplog.at_level(logging.WARNING, "gatepass.worker"):
        w.look(dog, 1000)
        w.look(dog, 1000 + NOTE_AFTER)
    assert _notes(caplog) == [f"rebalancing or recovering with no progress for 30s while "
                              f"{waiting} intents wait; partitions 0, 1 paused"]


def test_a_state_that_cannot_be_read_does_not_stop_the_watchdog(
        caplog: pytest.LogCaptureFixture) -> None:
    w = World()

    def broken() -> str:
        raise RuntimeError("faust changed")

    async def lag() -> int | None:
        return w.lag

    async def broker() -> bool:
        return True

    dog = StallWatchdog(w.metrics, 120.0, lag=lag, broker_answers=broker, busy=lambda: False,
                        describe=broken, dump=lambda: None,
                        exit=lambda code: w.events.append(f"exit {code}"), clock=lambda: w.now)
    with caplog.at_level(logging.WARNING, "gatepass.worker"):
        w.look(dog, 1000)
        w.look(dog, 1040)
        w.look(dog, 1121)
    assert _notes(caplog)[0].endswith("(state not readable: RuntimeError)")
    assert w.events == [f"exit {EXIT_STALLED}"]


@pytest.mark.parametrize("busy", [False, True], ids=["waiting", "busy"])
def test_with_exits_off_long_waits_are_still_noted(caplog: pytest.LogCaptureFixture,
                                                   busy: bool) -> None:
    w = World(busy=busy)
    dog = w.watchdog(after=0.0)
    with caplog.at_level(logging.WARNING, "gatepass.worker"):
        for at in (1000, 1000 + NOTE_AFTER, 5000):
            assert not w.look(dog, at)
    assert len(_notes(caplog)) == 2
    assert not any(e.startswith(("dump", "exit")) for e in w.events)
