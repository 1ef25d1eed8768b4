"""HighWatermarks: the end offsets the stall watchdog counts waiting intents with, asked on
a connection of its own (a real broker)."""

from __future__ import annotations

import uuid

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from gatepass.transport.offsets import HighWatermarks


def test_high_watermarks_are_the_end_of_each_partition(kafka_bootstrap: str) -> None:
    topic = f"test-offsets-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])[topic] \
        .result(timeout=30)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for partition, count in ((0, 2), (2, 5)):
        for n in range(count):
            producer.produce(topic, value=b"x%d" % n, partition=partition)
    assert producer.flush(30) == 0
    ends = HighWatermarks({"bootstrap.servers": kafka_bootstrap,
                           "group.id": f"test-{topic}", "enable.auto.commit": False})
    try:
        assert ends.highs(topic, [0, 1, 2], timeout=30) == {0: 2, 1: 0, 2: 5}
        producer.produce(topic, value=b"one more", partition=1)
        assert producer.flush(30) == 0
        assert ends.highs(topic, [1], timeout=30) == {1: 1}  # the same connection, asked again
    finally:
        ends.close()
