"""The worker's memo helpers: decided-intent expiry, offset tracking and the skip guard."""

from __future__ import annotations

import asyncio
from typing import Any

from gatepass.worker.memo import ExpiryIndex, SkipGuard


def test_only_keys_older_than_the_horizon_of_that_partition_are_due() -> None:
    index = ExpiryIndex(100.0, sweep_every=0.0)
    index.add(0, b"old", 1000.0)
    index.add(0, b"young", 1090.0)
    index.add(1, b"other-partition", 1000.0)
    assert index.due(0, 1150.0) == [b"old"]
    assert index.due(0, 1150.0) == []
    assert index.due(1, 1150.0) == [b"other-partition"]
    assert index.due(0, 1191.0) == [b"young"]
    assert len(index) == 0


def test_sweeps_are_rate_limited_per_partition() -> None:
    index = ExpiryIndex(10.0, sweep_every=5.0)
    index.add(0, b"a", 0.0)
    index.add(0, b"b", 1.0)
    assert index.due(0, 100.0) == [b"a", b"b"]
    index.add(0, b"c", 2.0)
    assert index.due(0, 102.0) == []  # swept 2 s ago
    assert index.due(0, 106.0) == [b"c"]


def test_a_sweep_is_bounded() -> None:
    index = ExpiryIndex(1.0, sweep_every=0.0, max_per_sweep=3)
    for i in range(7):
        index.add(2, str(i).encode(), float(i))
    assert index.due(2, 100.0) == [b"0", b"1", b"2"]
    assert index.due(2, 100.0) == [b"3", b"4", b"5"]
    assert index.due(2, 100.0) == [b"6"]


def test_a_revoked_partition_is_forgotten() -> None:
    index = ExpiryIndex(1.0, sweep_every=0.0)
    index.add(3, b"k", 0.0)
    index.forget_partition(3)
    assert index.due(3, 100.0) == []


# ---- OffsetTracker ----------------------------------------------------------------------------
def test_tracker_reports_offsets_skipped_since_the_committed_one() -> None:
    from gatepass.worker.memo import OffsetTracker

    t = OffsetTracker()
    assert t.missing(1, 500) is None  # nothing known yet: nothing to compare
    t.expect(1, 568)  # the group's committed offset when the partition was taken
    assert t.missing(1, 568) is None
    t.done(1, 568)
    assert t.missing(1, 569) is None
    t.done(1, 569)
    assert t.missing(1, 652) == (570, 652)  # 570..651 never reached the agent
    t.done(1, 652)
    assert t.missing(1, 600) is None  # a redelivery after a seek back is not a skip
    t.done(1, 600)
    assert t.missing(1, 653) is None  # done() never moves backwards
    assert t.missing(2, 10) is None  # partitions are separate
    t.forget(1)
    assert t.missing(1, 10_000) is None


def test_tracker_tells_the_next_offset_to_handle_for_the_lag() -> None:
    from gatepass.worker.memo import OffsetTracker

    t = OffsetTracker()
    assert t.next_offset(3) is None
    t.expect(3, 40)
    assert t.next_offset(3) == 40
    t.done(3, 40)
    t.done(3, 39)  # a redelivery
    assert t.next_offset(3) == 41
    t.forget(3)
    assert t.next_offset(3) is None


def test_audited_index_notes_an_intent_once_its_audit_record_is_acknowledged() -> None:
    import asyncio

    from gatepass.worker.memo import AuditedIndex

    async def go() -> None:
        index = AuditedIndex(max_per_partition=2)
        loop = asyncio.get_running_loop()
        ok, failed = loop.create_future(), loop.create_future()
        index.note(1, "i-1", ok)
        index.note(1, "i-2", failed)
        assert "i-1" not in index.view(1, {})  # not yet acknowledged
        ok.set_result("ok")
        failed.set_exception(ConnectionError("gone"))
        await asyncio.sleep(0)
        assert "i-1" in index.view(1, {}) and "i-2" not in index.view(1, {})
        assert "i-9" in index.view(1, {"i-9": b""})  # read back from the topic
        for n in range(3, 6):  # bounded: the oldest go first
            fut = loop.create_future()
            fut.set_result("ok")
            index.note(1, f"i-{n}", fut)
        await asyncio.sleep(0)
        assert "i-1" not in index.view(1, {}) and "i-5" in index.view(1, {})
        index.forget(1)
        assert "i-5" not in index.view(1, {})

    asyncio.run(go())


# -- SkipGuard: skipped records are read and handled before the record after them ----------

class _Topic:
    """A partitioned topic the guard can read ranges of; records its handler's calls."""

    def __init__(self) -> None:
        self.fetches: list[tuple[str, int, int, int]] = []
        self.handled: list[tuple[int, int, bytes | None]] = []

    async def fetch(self, topic: str, partition: int, start: int, end: int
                    ) -> list[tuple[int, bytes | None, bytes | None, float | None]]:
        self.fetches.append((topic, partition, start, end))
        return [(o, b"k", f"v{o}".encode(), 1.0) for o in range(start, end)]

    async def handle(self, key: bytes | None, value: bytes | None, partition: int,
                     offset: int, timestamp: float | None) -> None:
        self.handled.append((partition, offset, value))


def _feed(guard: SkipGuard, topic: _Topic, *records: tuple[int, int]) -> None:
    async def run() -> None:
        for partition, offset in records:
            await guard.handle(b"k", f"v{offset}".encode(), partition, offset, 1.0,
                               topic.handle)
    asyncio.run(run())


def test_skip_guard_handles_consecutive_records_without_reading() -> None:
    topic = _Topic()
    guard = SkipGuard("orphan-checks", topic.fetch)
    _feed(guard, topic, (0, 0), (0, 1), (0, 2))
    assert topic.fetches == []
    assert [o for _, o, _ in topic.handled] == [0, 1, 2]


def test_skip_guard_reads_and_handles_a_skipped_range_first_in_order() -> None:
    topic, repaired = _Topic(), []
    guard = SkipGuard("orphan-checks", topic.fetch,
                      on_repaired=lambda t, n: repaired.append((t, n)))
    _feed(guard, topic, (2, 10), (2, 11), (2, 15), (2, 16))
    assert topic.fetches == [("orphan-checks", 2, 12, 15)]
    assert topic.handled == [(2, o, f"v{o}".encode()) for o in (10, 11, 12, 13, 14, 15, 16)]
    assert repaired == [("orphan-checks", 3)]


def test_skip_guard_starts_at_the_expected_offset_and_per_partition() -> None:
    topic = _Topic()
    guard = SkipGuard("approval-decisions", topic.fetch)
    guard.offsets.expect(0, 5)  # e.g. the group's committed offset, read on assignment
    _feed(guard, topic, (0, 7), (1, 40), (1, 41), (0, 8))
    assert topic.fetches == [("approval-decisions", 0, 5, 7)]
    assert [(p, o) for p, o, _ in topic.handled] == [(0, 5), (0, 6), (0, 7), (1, 40), (1, 41),
                                                     (0, 8)]


def test_skip_guard_a_redelivery_is_handled_again_not_read() -> None:
    # An earlier offset again (a rebalance re-delivered it) is the handler's to deduplicate.
    topic = _Topic()
    guard = SkipGuard("budget-replies", topic.fetch)
    _feed(guard, topic, (0, 3), (0, 4), (0, 2), (0, 5))
    assert topic.fetches == []
    assert [o for _, o, _ in topic.handled] == [3, 4, 2, 5]


def test_skip_guard_forgets_a_revoked_partition() -> None:
    topic = _Topic()
    guard = SkipGuard("budget-requests", topic.fetch)
    _feed(guard, topic, (0, 3))
    guard.offsets.forget(0)
    _feed(guard, topic, (0, 9))  # another worker had it meanwhile: no skip to repair
    assert topic.fetches == []


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_stranded_records_at_the_end_of_a_partition_are_reported_once_it_is_still() -> None:
    clock, topic = _Clock(), _Topic()
    guard = SkipGuard("intents", topic.fetch, clock=clock)
    guard.offsets.expect(1, 1921)  # taken at the committed offset
    assert guard.stranded(1, 2280, still_for=5.0) is None  # just taken: records may be coming
    clock.now += 5.0
    assert guard.stranded(1, 2280, still_for=5.0) == (1921, 2280)
    assert guard.stranded(1, 1921, still_for=5.0) is None  # nothing fetched past it
    assert guard.stranded(1, None, still_for=5.0) is None
    assert guard.stranded(2, 50, still_for=5.0) is None  # nothing known of that partition
    guard.offsets.touch(1)  # sought back: give the fetch time
    assert guard.stranded(1, 2280, still_for=5.0) is None


def test_a_partition_that_keeps_moving_or_is_being_handled_is_not_stranded() -> None:
    clock, topic = _Clock(), _Topic()
    guard = SkipGuard("intents", topic.fetch, clock=clock)
    _feed(guard, topic, (0, 10))
    clock.now += 4.0
    assert guard.stranded(0, 30, still_for=5.0) is None  # moved 4 s ago
    clock.now += 2.0
    assert guard.stranded(0, 30, still_for=5.0) == (11, 30)

    async def slow(key: bytes | None, value: bytes | None, partition: int, offset: int,
                   timestamp: float | None) -> None:
        clock.now += 60.0  # a handler that waits long (an orphan check, a budget hold)
        assert guard.stranded(0, 30, still_for=5.0) is None

    asyncio.run(guard.handle(b"k", b"v", 0, 11, 1.0, slow))
    clock.now += 5.0
    assert guard.stranded(0, 30, still_for=5.0) == (12, 30)


def test_refetch_seeks_back_only_stranded_partitions_of_guarded_topics() -> None:
    from collections import namedtuple

    from gatepass.worker.memo import refetch_stranded_records

    tp_ = namedtuple("tp_", "topic partition")
    clock, topic = _Clock(), _Topic()
    intents = SkipGuard("intents", topic.fetch, clock=clock)
    checks = SkipGuard("orphan-checks", topic.fetch, clock=clock)
    for p in range(4):
        intents.offsets.expect(p, 100)
    checks.offsets.expect(0, 7)
    clock.now += 10
    positions = {("intents", 0): 100, ("intents", 1): 180, ("intents", 2): 150,
                 ("intents", 3): 160, ("orphan-checks", 0): 9, ("changelog", 0): 5000}
    queued = {("intents", 2): 3}  # records of partition 2 wait in the stream's buffer
    sought: list[tuple[str, int, int]] = []
    counted: list[tuple[str, int]] = []

    async def position(tp: Any) -> int | None:
        if tp == ("intents", 3):
            raise TimeoutError  # the consumer did not answer: look again next time
        return positions[tp]

    async def seek(tp: Any, offset: int) -> None:
        sought.append((tp.topic, tp.partition, offset))

    done = asyncio.run(refetch_stranded_records(
        {"intents": intents, "orphan-checks": checks},
        [tp_(t, p) for t, p in positions], buffered=lambda tp: queued.get(tuple(tp), 0),
        position=position, seek=seek, still_for=5.0,
        on_refetch=lambda t, n: counted.append((t, n))))
    assert done == [("intents", 1, 100, 180), ("orphan-checks", 0, 7, 9)]
    assert sought == [("intents", 1, 100), ("orphan-checks", 0, 7)]
    assert counted == [("intents", 80), ("orphan-checks", 2)]
    # Just sought back: not again before the partition has been still long enough.
    again = asyncio.run(refetch_stranded_records(
        {"intents": intents}, [tp_("intents", 1)], buffered=lambda tp: 0,
        position=position, seek=seek, still_for=5.0))
    assert again == []


def test_a_failed_seek_is_tried_again_next_time() -> None:
    from collections import namedtuple

    from gatepass.worker.memo import refetch_stranded_records

    tp_ = namedtuple("tp_", "topic partition")
    clock, topic = _Clock(), _Topic()
    guard = SkipGuard("intents", topic.fetch, clock=clock)
    guard.offsets.expect(0, 10)
    clock.now += 10
    calls: list[int] = []

    async def position(tp: Any) -> int:
        return 20

    async def seek(tp: Any, offset: int) -> None:
        calls.append(offset)
        if len(calls) == 1:
            raise RuntimeError("broker away")

    def run() -> list[tuple[str, int, int, int]]:
        return asyncio.run(refetch_stranded_records(
            {"intents": guard}, [tp_("intents", 0)], buffered=lambda tp: 0,
            position=position, seek=seek, still_for=5.0))

    assert run() == []
    assert run() == [("intents", 0, 10, 20)]
    assert calls == [10, 10]
