"""Follows the policy topic into this worker's PolicyBook (see gatepass.policy.book).

Reads the one partition from the start and keeps reading. Every half second it asks for the
end offset; once its position reaches an end asked for at wall time T, every activation
pushed before T is known, and the book can name the policy of intents appended up to T plus
the rollout delay. A bundle that fails to load here (it passed validation when pushed, so
this means a different Gatepass version) is refused and logged, and its activation is passed
over: the last good policy keeps deciding.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, TopicPartition

from gatepass.codec.avro import SchemaSet
from gatepass.config import Settings
from gatepass.core.policy import CedarPolicy
from gatepass.errors import PolicyError
from gatepass.policy.book import PolicyBook
from gatepass.policy.topic import PolicyHistory, apply_record

__all__ = ["PolicyLoader"]

log = logging.getLogger("gatepass.policy")
_CHECK_EVERY_S = 0.5


class PolicyLoader:
    def __init__(self, settings: Settings, schemas: SchemaSet, book: PolicyBook) -> None:
        self.settings = settings
        self.schemas = schemas
        self.book = book
        self.history = PolicyHistory()
        self.load_failures = 0
        self._progress = asyncio.Condition()

    async def run(self) -> None:
        topic = self.settings.topics.policies
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap, group_id=None, enable_auto_commit=False,
            client_id=f"{self.settings.app_id}-policy", auto_offset_reset="earliest",
            fetch_max_wait_ms=100)
        await consumer.start()
        try:
            tp = TopicPartition(topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            last_check = 0.0
            target: tuple[datetime, int] | None = None
            while True:
                batch = await consumer.getmany(timeout_ms=100, max_records=500)
                for messages in batch.values():
                    for msg in messages:
                        self._apply(msg.key, msg.value)
                if target is None and time.monotonic() - last_check >= _CHECK_EVERY_S:
                    last_check = time.monotonic()
                    asked_at = datetime.now(UTC)  # before asking: the end covers this time
                    try:
                        ends = await consumer.end_offsets([tp])
                        target = (asked_at, ends[tp])
                    except Exception as exc:  # unreachable: the book just ages, then denies
                        log.debug("policy end offset not available: %s", type(exc).__name__)
                if target is not None and await consumer.position(tp) >= target[1]:
                    self.book.mark_complete(target[0])
                    target = None
                    async with self._progress:
                        self._progress.notify_all()
        finally:
            await consumer.stop()

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        before = dict(self.history.bundles), set(self.history.activations)
        apply_record(self.history, self.schemas, key, value)
        # New versions, and a version written again with other files after it was refused
        # (a genuine push may follow a broken record of the same name).
        fresh = {v for v, files in self.history.bundles.items()
                 if before[0].get(v) != files and self.book.by_version(v) is None}
        for version in sorted(fresh):
            try:
                policy = CedarPolicy.from_files(self.history.bundles[version])
            except PolicyError as exc:
                self.load_failures += 1
                self.book.refuse_bundle(version, str(exc))
                log.error("pushed policy %s refused, the last good policy keeps deciding: %s",
                          version, exc)
                continue
            if policy.version != version:
                self.load_failures += 1
                self.book.refuse_bundle(version, f"its content hashes to {policy.version}")
                log.error("pushed policy %s refused: its content hashes to %s", version,
                          policy.version)
                continue
            self.book.add_bundle(policy)
            self.book.refused.pop(version, None)
            log.info("policy %s loaded", version)
        for activation in set(self.history.activations) - before[1]:
            self.book.add_activation(activation)
            log.info("policy %s in force from %s", activation.version,
                     activation.effective_at.isoformat())

    async def wait_until_known(self, at: datetime, timeout: float) -> bool:
        """Wait (up to `timeout` s) until the book can name the policy for time `at`."""
        if self.book.knows(at):
            return True
        try:
            async with self._progress:
                await asyncio.wait_for(self._progress.wait_for(lambda: self.book.knows(at)),
                                       timeout)
        except TimeoutError:
            return False
        return True
