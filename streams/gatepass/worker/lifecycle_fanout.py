"""Proactive ghost detection, consumed apart from the intents so a backlog cannot delay them.

Reads the identity topic in its own consumer group (each record once across the workers,
resuming where the group left off, so an offboarding that happened while every worker was
down is still reported), waits until this worker's identity view has applied each record,
and hands it to `Pipeline.on_lifecycle` (orphan checks, compaction repairs). Offsets are
committed only after what was produced has been flushed: at least once, and the orphan
memo makes repeats harmless.

It runs outside faust's own consumer on purpose: faust delivers every subscribed topic
through one fetcher, so a large identity backlog (a new deployment, a bulk HR import) would
hold intents back until it was processed.

Between fetches it also promotes scheduled principal statuses whose time has come (an
offboarding dated ahead by HR): it writes each back as the status in force, under
`principal:<id>/status`, and the usual fan-out of that record raises the orphan checks. Only
the group member that owns the partition of that key writes it, so one worker does per
fact; a second copy (during a rebalance) changes nothing and the orphan memo collapses its
checks. Decisions do not wait for this: they read the status as of their own time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from datetime import datetime, timedelta

from aiokafka import AIOKafkaConsumer

from gatepass.codec.records import lifecycle_to_record
from gatepass.config import Settings
from gatepass.core import PrincipalStatusChanged, lifecycle_key
from gatepass.transport import partition_for
from gatepass.transport.offsets import commit_or_warn
from gatepass.worker.identity_loader import IdentityLoader
from gatepass.worker.pipeline import Outgoing, Pipeline

__all__ = ["PROMOTE_AFTER", "LifecycleFanout"]

log = logging.getLogger("gatepass.lifecycle")
_YIELD_EVERY = 200
# A scheduled status is written back this long after its time, not at once: a newer plan
# recorded just before that time (a cancelled termination) has then reached this worker's
# view. Decisions are not delayed by it; only the proactive orphan alert is.
PROMOTE_AFTER = timedelta(seconds=1)
# A promotion written but not yet back in the view is not written again before this.
_RESEND_AFTER = 30.0


class LifecycleFanout:
    def __init__(self, settings: Settings, loader: IdentityLoader, pipeline: Pipeline,
                 send: Callable[[list[Outgoing]], Awaitable[None]],
                 flush: Callable[[], Awaitable[None]], *,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.settings = settings
        self.loader = loader
        self.pipeline = pipeline
        self.send = send
        self.flush = flush
        self.clock = clock or pipeline.clock
        self.processed = 0
        self.promoted = 0
        self._sent: dict[PrincipalStatusChanged, float] = {}  # written, not yet applied

    @property
    def group_id(self) -> str:
        return f"{self.settings.app_id}-lifecycle"

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(
            self.settings.topics.identity, bootstrap_servers=self.settings.bootstrap,
            group_id=self.group_id, client_id=self.group_id, enable_auto_commit=False,
            auto_offset_reset="earliest", max_poll_records=2000)
        await consumer.start()
        try:
            while True:
                await self.step(consumer)
        finally:
            await consumer.stop()

    async def step(self, consumer: AIOKafkaConsumer) -> None:
        """One fetch: fan each record out, flush, commit; then the due promotions."""
        batch = await consumer.getmany(timeout_ms=500, max_records=2000)
        for tp, messages in batch.items():
            await self.loader.wait_applied(tp.partition, messages[-1].offset)
            for i, msg in enumerate(messages):
                await self.send(self.pipeline.on_lifecycle(
                    msg.key, msg.value, partition=tp.partition, offset=msg.offset))
                if i % _YIELD_EVERY == _YIELD_EVERY - 1:
                    await asyncio.sleep(0)  # let intents through
            self.processed += len(messages)
        if batch:
            await self.flush()
            await commit_or_warn(consumer, log, "lifecycle fan-out")
        await self._promote(consumer)

    async def _promote(self, consumer: AIOKafkaConsumer) -> None:
        if not self.loader.ready:
            return  # a partial view could promote a plan that a later record replaced
        topic = self.settings.topics.identity
        owned = {tp.partition for tp in consumer.assignment() if tp.topic == topic}
        partitions = len(consumer.partitions_for_topic(topic) or ()) or self.settings.partitions
        records = self.promotions(self.clock(), owned, partitions)
        if records:
            await self.send(records)
            await self.flush()

    def promotions(self, now: datetime, owned: Collection[int], partitions: int,
                   monotonic: Callable[[], float] = time.monotonic) -> list[Outgoing]:
        """The due scheduled statuses this member writes back as in force (see module doc)."""
        out: list[Outgoing] = []
        due = self.pipeline.identity.due_promotions(now - PROMOTE_AFTER)
        for event in due:
            key = lifecycle_key(event)
            partition = partition_for(key, partitions)
            if partition not in owned:
                continue
            sent = self._sent.get(event)
            if sent is not None and monotonic() - sent < _RESEND_AFTER:
                continue
            self._sent[event] = monotonic()
            out.append(Outgoing(self.settings.topics.identity, key.encode(),
                                self.pipeline.schemas.lifecycle.encode(
                                    lifecycle_to_record(event)), partition))
            log.info("scheduled status of %s in force since %s: written back",
                     event.principal_id, event.event_time.isoformat())
        for event in set(self._sent) - set(due):
            del self._sent[event]  # back in the view (or superseded): nothing owed
        self.promoted += len(out)
        return out
