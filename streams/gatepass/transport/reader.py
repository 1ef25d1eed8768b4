"""Reading topics from their beginning, for the command-line readers (`tail`, `export`).

Every partition is read from its first retained record to the end offset seen at start
(then the iterator ends), or on and on with `follow`. Records come back raw; decoding, and
what to do with a record that does not decode, is the caller's business.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException, TopicPartition

from gatepass.errors import BrokerError
from gatepass.transport.offsets import watermarks
from gatepass.transport.topics import KAFKA_LOG

__all__ = ["RawRecord", "read_topics"]


@dataclass(frozen=True, slots=True)
class RawRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def read_topics(bootstrap: str, topics: Sequence[str], *, follow: bool = False,
                idle_timeout: float = 1.0, group: str = "gatepass-reader",
                timeout: float | None = None) -> Generator[RawRecord, None, None]:
    """`timeout` bounds the whole read (BrokerError past it); None waits as long as it takes."""
    deadline = None if timeout is None else time.monotonic() + timeout
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "enable.auto.commit": False,
                         "logger": KAFKA_LOG})
    try:
        ends: dict[tuple[str, int], int] = {}
        done: set[tuple[str, int]] = set()
        assignment = []
        for topic in topics:
            meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
            if meta is None or meta.error is not None:
                raise BrokerError(f"topic {topic} does not exist")
            for p in meta.partitions:
                low, high = watermarks(consumer, topic, p)
                ends[(topic, p)] = high
                if low >= high:  # empty, or every record already deleted by retention
                    done.add((topic, p))
                assignment.append(TopicPartition(topic, p, low))
        consumer.assign(assignment)
        while follow or len(done) < len(ends):
            if deadline is not None and time.monotonic() > deadline:
                raise BrokerError(f"reading {', '.join(topics)} took over {timeout:.0f}s")
            msg = consumer.poll(idle_timeout)
            if msg is None:
                continue
            error = msg.error()
            if error is not None:
                if error.fatal():
                    raise BrokerError(f"cannot read {msg.topic()}: {error}")
                continue
            record = RawRecord(msg.topic() or "", msg.partition() or 0, msg.offset() or 0,
                               msg.key(), msg.value())
            if record.offset + 1 >= ends.get((record.topic, record.partition), 0):
                done.add((record.topic, record.partition))
            yield record
    except KafkaException as exc:
        raise BrokerError(f"cannot read {', '.join(topics)}: {exc}") from exc
    finally:
        consumer.close()
