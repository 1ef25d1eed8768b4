"""Offset look-ups that survive a topic's first moments, and commits that survive rebalances.

A partition created a moment ago can answer NOT_LEADER_FOR_PARTITION until its leader
serves; librdkafka does not mark that retriable, so every reader that starts "at the end"
or "up to the end" goes through here.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

from aiokafka.errors import KafkaError
from confluent_kafka import Consumer, KafkaException, TopicPartition

from gatepass.errors import BrokerError

__all__ = ["HighWatermarks", "commit_or_warn", "watermarks"]


def watermarks(consumer: Consumer, topic: str, partition: int,
               timeout: float = 10.0) -> tuple[int, int]:
    """(low, high) offsets of one partition, retried until `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                       timeout=timeout)
            return int(low), int(high)
        except KafkaException as exc:
            if time.monotonic() > deadline:
                raise BrokerError(f"cannot read offsets of {topic}[{partition}]: {exc}") \
                    from exc
            time.sleep(0.1)


class HighWatermarks:
    """The end offsets of partitions, asked for on a connection of its own (blocking: call
    from a thread). The worker's stall watchdog counts waiting intents with it, so that the
    count does not depend on the stream consumer it is there to judge.

    A failed look-up drops the client, and the next call starts a new one: a librdkafka
    consumer was seen to stay stuck after a clean broker restart (the fault suite's verdict
    reader), and a watchdog asking a stuck client would never judge again."""

    def __init__(self, config: dict[str, Any], *, factory: Any = Consumer) -> None:
        self._config = config
        self._factory = factory
        self._consumer: Any = None
        self._lock = threading.Lock()

    def highs(self, topic: str, partitions: Iterable[int], timeout: float = 5.0
              ) -> dict[int, int]:
        with self._lock:
            if self._consumer is None:
                self._consumer = self._factory(self._config)
            try:
                return {p: watermarks(self._consumer, topic, p, timeout)[1]
                        for p in partitions}
            except Exception:
                self._drop()
                raise

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            with contextlib.suppress(Exception):
                consumer.close()


async def commit_or_warn(consumer: Any, log: logging.Logger, what: str) -> bool:
    """Commit an aiokafka consumer's position; whether it was committed.

    For the worker's own consumer groups (the lifecycle fan-out, the approval notices),
    which handle each record at least once: a commit refused because the group rebalanced
    meanwhile (another worker joined or left), or failed while the broker is away, only
    means the partition's owner reads those records again. Raising would stop the faust
    task and with it the whole worker (seen in the fault suite when a second worker left).
    """
    try:
        await consumer.commit()
    except KafkaError as exc:
        log.warning("%s: offsets not committed (%s); those records will be handled again",
                    what, type(exc).__name__)
        return False
    return True
