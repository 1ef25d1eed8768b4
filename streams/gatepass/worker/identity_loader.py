"""Every worker's full view of identity: the whole lifecycle topic, read from the start.

Decisions need the agent (keyed like the intent) and its owner (keyed by principal), which
no partitioning can co-locate, so each worker keeps all identities, like a Kafka Streams
GlobalKTable. Until the view has caught up with the end offsets seen at start-up it is not
ready, and every intent is denied `state_not_ready`.

Loading a large view is mostly allocation: each identity adds a few long-lived objects, and
CPython's cyclic collector scans every long-lived object again each time their number has
grown by a quarter, a cost that grows with the view (about a fifth of a 1,000,000-record
load, measured in docs/benchmarks.md). So while the view first loads, automatic collection
is off (young generations are still collected every few seconds, so cyclic garbage of a
long wait for the broker does not pile up); once loaded, the young generations are
collected and every object left is frozen (`gc.freeze`): the identities are never scanned
again by later collections. They are still freed by reference counting when replaced.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from gatepass.codec.avro import SchemaSet
from gatepass.codec.lifecycle_reader import decode_lifecycle
from gatepass.config import Settings
from gatepass.core import IdentityState
from gatepass.errors import BrokerError, DecodeError
from gatepass.transport.topics import admin_client

__all__ = ["IdentityLoader"]

log = logging.getLogger("gatepass.identity")
_YIELD_EVERY = 500
_FRESHNESS_CHECK_S = 1.0
_MAX_TARGETS = 30
_YOUNG_COLLECT_EVERY_S = 5.0


class _LoadCollector:
    """Automatic cyclic collection off while the view first loads; see the module doc."""

    def __init__(self) -> None:
        self._was_enabled = False
        self._paused = False
        self._last_young = 0.0

    def pause(self) -> None:
        if not self._paused:
            self._was_enabled, self._paused = gc.isenabled(), True
            self._last_young = time.monotonic()
            gc.disable()

    def tick(self) -> None:
        """While paused: the young generations, now and then (cheap: recent objects only)."""
        if self._paused and time.monotonic() - self._last_young >= _YOUNG_COLLECT_EVERY_S:
            self._last_young = time.monotonic()
            gc.collect(1)

    def settle(self) -> None:
        """Loaded: collect the young generations, freeze what is left (mostly the view),
        resume as before. Not a full collection: that would scan the whole view once more
        (0.7 s for 1,000,000 identities) for garbage that can only be what was alive at the
        last young collection."""
        if self._paused:
            gc.collect(1)
            gc.freeze()
            self.resume()

    def resume(self) -> None:
        if self._paused:
            self._paused = False
            if self._was_enabled:
                gc.enable()


class IdentityLoader:
    def __init__(self, settings: Settings, schemas: SchemaSet, state: IdentityState) -> None:
        self.settings = settings
        self.schemas = schemas
        self.state = state
        self.ready = False
        self.loaded_records = 0
        self.rejected_records = 0
        self.ready_after: float | None = None
        self.last_poll = 0.0
        # Monotonic time up to which the view is known complete: end offsets asked for then
        # have all been applied. None until the first such check succeeds.
        self.fresh_as_of: float | None = None
        self._targets: list[tuple[float, dict[Any, int]]] = []
        self._last_check = 0.0
        self._positions: dict[int, int] = {}
        self._progress = asyncio.Condition()
        self._collector = _LoadCollector()

    def fresh(self, max_age: float, now: float | None = None) -> bool:
        """Loaded, and known to hold every lifecycle record written `max_age` seconds ago.

        A stalled identity consumer (or a broker it cannot reach) makes the view age, and a
        view older than the allowed maximum decides nothing: DENY state_not_ready.
        """
        if not self.ready or self.fresh_as_of is None:
            return False
        return (time.monotonic() if now is None else now) - self.fresh_as_of <= max_age

    async def _track_freshness(self, consumer: AIOKafkaConsumer, tps: list[Any]) -> None:
        """About once a second: ask for the end offsets; once every partition's position has
        reached the ends asked for at time T, the view is complete as of T."""
        now = time.monotonic()
        if now - self._last_check >= _FRESHNESS_CHECK_S:
            self._last_check = now
            try:
                ends = await consumer.end_offsets(tps)
            except Exception as exc:  # unreachable: the view just ages (and then denies)
                log.debug("identity end offsets not available: %s", type(exc).__name__)
            else:
                self._targets = [*self._targets[-(_MAX_TARGETS - 1):], (now, dict(ends))]
        while self._targets:
            asked_at, ends = self._targets[0]
            if not all([await consumer.position(tp) >= end for tp, end in ends.items()]):
                break
            self.fresh_as_of = asked_at
            self._targets.pop(0)

    async def run(self) -> None:
        topic = self.settings.topics.identity
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap, group_id=None, enable_auto_commit=False,
            client_id=f"{self.settings.app_id}-identity", auto_offset_reset="earliest",
            fetch_max_wait_ms=50, fetch_max_bytes=32 * 1024 * 1024,
            max_partition_fetch_bytes=8 * 1024 * 1024)
        started = time.monotonic()
        await consumer.start()
        try:
            partitions = await self._partitions(consumer, topic)
            tps = [TopicPartition(topic, p) for p in partitions]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            targets = {tp: off for tp, off in (await consumer.end_offsets(tps)).items()}
            log.info("loading identity state from %s (%d records at most)", topic,
                     sum(targets.values()))
            while True:
                batch = await consumer.getmany(timeout_ms=200, max_records=10000)
                self.last_poll = time.monotonic()
                if not self.ready:
                    self._collector.pause()
                    self._collector.tick()
                for tp, messages in batch.items():
                    for i, msg in enumerate(messages):
                        self._apply(msg.value)
                        if i % _YIELD_EVERY == _YIELD_EVERY - 1:
                            # getmany does not yield while records are buffered: without this
                            # a large load would hold intents, health checks and the fan-out.
                            self._positions[tp.partition] = msg.offset + 1
                            await asyncio.sleep(0)
                    self._positions[tp.partition] = messages[-1].offset + 1
                if not self.ready:
                    # position() skips compaction gaps and transaction markers, offsets don't
                    if all([await consumer.position(tp) >= end for tp, end in targets.items()]):
                        self._collector.settle()
                        self.ready = True
                        self.ready_after = time.monotonic() - started
                        log.info("identity state ready: %d identities in %.2fs",
                                 len(self.state), self.ready_after)
                complete_as_of = self.fresh_as_of
                await self._track_freshness(consumer, tps)
                if batch or not self.ready or self.fresh_as_of != complete_as_of:
                    async with self._progress:
                        self._progress.notify_all()
        finally:
            self._collector.resume()
            await consumer.stop()

    async def _partitions(self, consumer: AIOKafkaConsumer, topic: str) -> list[int]:
        def lookup() -> list[int]:
            meta = admin_client(self.settings).list_topics(topic, timeout=30).topics.get(topic)
            if meta is None or meta.error is not None or not meta.partitions:
                raise BrokerError(f"identity topic {topic} not found")
            return sorted(meta.partitions)

        return await asyncio.get_running_loop().run_in_executor(None, lookup)

    def _apply(self, value: bytes | None) -> None:
        if value is None:
            return  # a tombstone: facts are retracted by newer events, never by deletion
        try:
            self.state.apply(decode_lifecycle(self.schemas.lifecycle, value))
            self.loaded_records += 1
        except (DecodeError, KeyError, ValueError, TypeError):
            # The lifecycle agent dead-letters it once for the whole group; here we only count.
            self.rejected_records += 1

    async def wait_ready(self) -> None:
        async with self._progress:
            await self._progress.wait_for(lambda: self.ready)

    async def wait_complete(self, since: float, timeout: float) -> bool:
        """Wait until the view holds every lifecycle record written before monotonic time
        `since` (end offsets asked for at or after it have all been applied). False if that
        is not so within `timeout` seconds. Records of different keys sit on different
        partitions, read in no particular order: an agent's registration can be applied
        before its owner's, written just ahead of it; this is how to tell an owner the view
        does not know yet from one that is unknown."""
        def complete() -> bool:
            return self.fresh_as_of is not None and self.fresh_as_of >= since

        if complete():
            return True
        try:
            async with self._progress:
                await asyncio.wait_for(self._progress.wait_for(complete), timeout)
        except TimeoutError:
            return complete()
        return True

    async def wait_applied(self, partition: int, offset: int) -> None:
        """Wait until the view has applied the record at `offset` of `partition`."""
        async with self._progress:
            await self._progress.wait_for(lambda: self._positions.get(partition, 0) > offset)
