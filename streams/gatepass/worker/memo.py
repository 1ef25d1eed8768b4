"""When to forget a decided intent: a per-partition index of table keys by write time.

The `decided` table answers redelivered intents; past the dedupe horizon a redelivery is
necessarily stale and its pass expired, so the entry can go. Deletions must be written to
the changelog partition the key lives in, which faust only allows while an event of that
partition is being processed, so the agent asks this index for the expired keys of the
partition of the event in hand. Times come from the changelog records on recovery and from
the clock on live writes, so nothing has to be decoded to expire it.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Container, Iterable, Mapping
from typing import Any

__all__ = ["ApprovalTimer", "ExpiryIndex", "OffsetTracker", "SkipGuard",
           "refetch_stranded_records"]

log = logging.getLogger("gatepass.worker")


class ExpiryIndex:
    def __init__(self, horizon_seconds: float, *, sweep_every: float = 10.0,
                 max_per_sweep: int = 5000) -> None:
        self.horizon = horizon_seconds
        self.sweep_every = sweep_every
        self.max_per_sweep = max_per_sweep
        self._keys: dict[int, deque[tuple[float, bytes]]] = {}
        self._last_sweep: dict[int, float] = {}

    def add(self, partition: int, key: bytes, written_at: float) -> None:
        self._keys.setdefault(partition, deque()).append((written_at, key))

    def forget_partition(self, partition: int) -> None:
        self._keys.pop(partition, None)
        self._last_sweep.pop(partition, None)

    def due(self, partition: int, now: float) -> list[bytes]:
        """Keys of `partition` older than the horizon, at most every `sweep_every` seconds."""
        if now - self._last_sweep.get(partition, 0.0) < self.sweep_every:
            return []
        self._last_sweep[partition] = now
        queue = self._keys.get(partition)
        expired: list[bytes] = []
        cutoff = now - self.horizon
        while queue and queue[0][0] < cutoff and len(expired) < self.max_per_sweep:
            expired.append(queue.popleft()[1])
        return expired

    def __len__(self) -> int:
        return sum(len(q) for q in self._keys.values())


class ApprovalTimer:
    """When each pending approval request of this worker's partitions expires.

    The timer asks for the due ones every second; each is ticked (an ApprovalTimeout record
    into its partition) and ticked again after `retick` seconds if it is still pending, so a
    tick lost in a crash or rebalance is made good.
    """

    def __init__(self, *, retick: float = 5.0) -> None:
        self.retick = retick
        # key -> (expires_at, agent_id, partition, last tick or 0)
        self._entries: dict[bytes, tuple[float, str, int, float]] = {}

    def add(self, key: bytes, expires_at: float, agent_id: str, partition: int) -> None:
        self._entries[key] = (expires_at, agent_id, partition, 0.0)

    def discard(self, key: bytes) -> None:
        self._entries.pop(key, None)

    def forget_partition(self, partition: int) -> None:
        for key in [k for k, v in self._entries.items() if v[2] == partition]:
            del self._entries[key]

    def take_due(self, now: float, approvable: Callable[[str], bool] = lambda _: True,
                 ) -> list[tuple[bytes, str, int, float]]:
        """Requests past their expiry, and those whose agent can no longer be approved."""
        due = []
        for key, (expires_at, agent_id, partition, ticked) in self._entries.items():
            if now - ticked >= self.retick and (expires_at <= now or not approvable(agent_id)):
                due.append((key, agent_id, partition, expires_at))
        for key, agent_id, partition, expires_at in due:
            self._entries[key] = (expires_at, agent_id, partition, now)
        return due

    def __len__(self) -> int:
        return len(self._entries)


class OffsetTracker:
    """The next offset this worker expects per partition, so that a skip shows.

    Intents are neither compacted nor transactional: their offsets are consecutive. faust's
    consumer takes any jump in the offsets it fetches for a "gap" (meant for compaction and
    transaction markers) and commits past it - so records dropped from its buffers around a
    rebalance or a broker reconnect, without the fetch position going back, would be
    committed without ever being decided (seen in the fault suite: a run of 84 consecutive
    intents). The agent asks `missing` before each record and reads a reported range itself.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._next: dict[int, int] = {}
        self._moved: dict[int, float] = {}  # when the partition last moved (clock time)
        self._clock = clock

    def expect(self, partition: int, next_offset: int) -> None:
        self._next[partition] = next_offset
        self._moved[partition] = self._clock()

    def forget(self, partition: int) -> None:
        self._next.pop(partition, None)
        self._moved.pop(partition, None)

    def still_for(self, partition: int) -> float:
        """Seconds since a record of the partition was last handled (or it was taken)."""
        moved = self._moved.get(partition)
        return 0.0 if moved is None else self._clock() - moved

    def touch(self, partition: int) -> None:
        self._moved[partition] = self._clock()

    def next_offset(self, partition: int) -> int | None:
        """The offset after the last one handled (or read back), if known."""
        return self._next.get(partition)

    def missing(self, partition: int, offset: int) -> tuple[int, int] | None:
        """The offsets [start, end) skipped before `offset`, if any (a redelivery of an
        earlier offset is not a skip)."""
        expected = self._next.get(partition)
        if expected is None or offset <= expected:
            return None
        return expected, offset

    def done(self, partition: int, offset: int) -> None:
        self._next[partition] = max(self._next.get(partition, 0), offset + 1)
        self._moved[partition] = self._clock()


# (offset, key, value, timestamp) of one record, as read directly from its partition
RawRecord = tuple[int, bytes | None, bytes | None, float | None]
Handler = Callable[[bytes | None, bytes | None, int, int, float | None], Awaitable[None]]
Fetch = Callable[[str, int, int, int], Awaitable[list[RawRecord]]]


class SkipGuard:
    """An OffsetTracker for one topic, with the repair: before a record is handled, any
    offsets the consumer skipped in its partition are read directly (`fetch`) and handled
    first, in order - so a commit after the record never passes over an unhandled one.

    For topics the worker consumes that are neither compacted nor transactional (intents,
    approval decisions, budget requests and replies, orphan checks): their offsets are
    consecutive, so any jump is a skip.
    """

    def __init__(self, topic: str, fetch: Fetch,
                 on_repaired: Callable[[str, int], None] = lambda topic, n: None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.topic = topic
        self.offsets = OffsetTracker(clock)
        self._fetch = fetch
        self._on_repaired = on_repaired
        self._handling: dict[int, int] = {}

    async def handle(self, key: bytes | None, value: bytes | None, partition: int,
                     offset: int, timestamp: float | None, handler: Handler) -> None:
        self._handling[partition] = self._handling.get(partition, 0) + 1
        try:
            skipped = self.offsets.missing(partition, offset)
            if skipped is not None:
                records = await self._fetch(self.topic, partition, *skipped)
                for at, k, v, ts in records:
                    await handler(k, v, partition, at, ts)
                self._on_repaired(self.topic, len(records))
            await handler(key, value, partition, offset, timestamp)
            self.offsets.done(partition, offset)
        finally:
            self._handling[partition] -= 1

    def stranded(self, partition: int, fetch_position: int | None, *,
                 still_for: float) -> tuple[int, int] | None:
        """Offsets [start, end) the consumer fetched that never reached the agent, if the
        partition looks stuck that way: the consumer's position is past the next offset to
        handle, no record of it is being handled, and none was for `still_for` seconds. The
        caller also checks that nothing waits in the stream's buffer.

        A gap shows when the next record arrives (`missing`); a loss at the end of what was
        written shows only like this. faust's consumer was seen to lose the intents fetched
        right after a restart's table recovery (aiokafka's position at the end of the
        partition, faust's stream never given them), and with no later intent in that
        partition they were never decided.
        """
        expected = self.offsets.next_offset(partition)
        if expected is None or fetch_position is None or fetch_position <= expected:
            return None
        if self._handling.get(partition, 0) or self.offsets.still_for(partition) < still_for:
            return None
        return expected, fetch_position


async def refetch_stranded_records(
        guards: Mapping[str, SkipGuard], assigned: Iterable[Any], *,
        buffered: Callable[[Any], int | None],
        position: Callable[[Any], Awaitable[int | None]],
        seek: Callable[[Any, int], Awaitable[Any]],
        still_for: float,
        on_refetch: Callable[[str, int], None] = lambda topic, n: None,
) -> list[tuple[str, int, int, int]]:
    """Seek the consumer back to records it fetched that never reached the agent, at the end
    of a partition (`SkipGuard.stranded`), for the assigned partitions of guarded topics
    with nothing in the stream's buffer. Returns (topic, partition, start, end) of each.
    A position that cannot be read now, or a seek that fails, is tried again next time."""
    done: list[tuple[str, int, int, int]] = []
    for tp in assigned:
        guard = guards.get(tp.topic)
        if guard is None or buffered(tp) != 0:
            continue
        try:
            at = await position(tp)
        except Exception as exc:  # the consumer is busy or away: look again later
            log.debug("no position for %s partition %d: %s", tp.topic, tp.partition,
                      type(exc).__name__)
            continue
        span = guard.stranded(tp.partition, at, still_for=still_for)
        if span is None:
            continue
        log.error("the consumer fetched records %d..%d of %s partition %d that never reached "
                  "the agent; fetching them again", span[0], span[1] - 1, tp.topic,
                  tp.partition)
        try:
            await seek(tp, span[0])
        except Exception as exc:
            log.warning("seeking %s partition %d back failed (%s); trying again later",
                        tp.topic, tp.partition, type(exc).__name__)
            continue
        guard.offsets.touch(tp.partition)
        on_refetch(tp.topic, span[1] - span[0])
        done.append((tp.topic, tp.partition, *span))
    return done


class AuditedIndex:
    """Per partition, the intents whose audit record is known to be on the audit topic: the
    worker saw it acknowledged, or read it back when it took the partition. Bounded (the
    oldest are forgotten first: a redelivery of a forgotten one writes a harmless copy)."""

    def __init__(self, *, max_per_partition: int = 200_000) -> None:
        self.max = max_per_partition
        self._seen: dict[int, dict[str, None]] = {}

    def note(self, partition: int, intent_id: str, delivered: Any) -> None:
        """Remember `intent_id` once its audit record's delivery future succeeds."""
        def done(fut: Any) -> None:
            if not fut.cancelled() and fut.exception() is None:
                seen = self._seen.setdefault(partition, {})
                seen[intent_id] = None
                if len(seen) > self.max:
                    del seen[next(iter(seen))]
        if hasattr(delivered, "add_done_callback"):
            delivered.add_done_callback(done)

    def view(self, partition: int, read_back: Container[str]) -> Container[str]:
        return _Either(self._seen.get(partition, {}), read_back)

    def forget(self, partition: int) -> None:
        self._seen.pop(partition, None)


class _Either:
    __slots__ = ("_a", "_b")

    def __init__(self, a: Container[str], b: Container[str]) -> None:
        self._a, self._b = a, b

    def __contains__(self, item: object) -> bool:
        return item in self._a or item in self._b
