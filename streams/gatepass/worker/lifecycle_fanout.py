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
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer

from gatepass.config import Settings
from gatepass.worker.identity_loader import IdentityLoader
from gatepass.worker.pipeline import Outgoing, Pipeline

__all__ = ["LifecycleFanout"]

log = logging.getLogger("gatepass.lifecycle")
_YIELD_EVERY = 200


class LifecycleFanout:
    def __init__(self, settings: Settings, loader: IdentityLoader, pipeline: Pipeline,
                 send: Callable[[list[Outgoing]], Awaitable[None]],
                 flush: Callable[[], Awaitable[None]]) -> None:
        self.settings = settings
        self.loader = loader
        self.pipeline = pipeline
        self.send = send
        self.flush = flush
        self.processed = 0

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
                    await consumer.commit()
        finally:
            await consumer.stop()
