"""Offset look-ups that survive a topic's first moments.

A partition created a moment ago can answer NOT_LEADER_FOR_PARTITION until its leader
serves; librdkafka does not mark that retriable, so every reader that starts "at the end"
or "up to the end" goes through here.
"""

from __future__ import annotations

import time

from confluent_kafka import Consumer, KafkaException, TopicPartition

from gatepass.errors import BrokerError

__all__ = ["watermarks"]


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
