"""LocalKafka against a real broker: up, produce and consume, idempotent up, down, restart.

Runs in a temporary home but reuses the shared jar cache (GATEPASS_HOME or <repo>/.gatepass),
so only the first run on a machine downloads Kafka.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from gatepass.kafka_local import KAFKA_VERSION, LocalKafka
from support.broker import free_ports, gatepass_home

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        bool(os.environ.get("GATEPASS_TEST_BOOTSTRAP")),
        reason="GATEPASS_TEST_BOOTSTRAP is set: this run uses an external broker, so the"
        " local broker manager is not exercised",
    ),
]


@pytest.fixture
def kafka(tmp_path: Path) -> Iterator[LocalKafka]:
    port, controller_port = free_ports(2)
    broker = LocalKafka(
        home=tmp_path / "home",
        port=port,
        controller_port=controller_port,
        dist_dir=gatepass_home() / "dist",
    )
    yield broker
    broker.down()  # whatever the test did, never leave a broker running


def test_local_broker_lifecycle(kafka: LocalKafka) -> None:
    started = time.monotonic()
    status = kafka.up()
    print(f"up took {time.monotonic() - started:.1f} s")  # visible with -s

    assert status.running is True
    assert status.pid is not None
    assert status.bootstrap == f"127.0.0.1:{kafka.port}"
    assert status.version == KAFKA_VERSION
    assert status.data_dir == kafka.home / "brokers" / str(kafka.port) / "data"
    assert "Kafka Server started" in status.log_file.read_text()
    assert kafka.status() == status

    topic = f"gatepass-it-{uuid.uuid4().hex[:8]}"
    _create_topic(status.bootstrap, topic)
    _produce(status.bootstrap, topic, b"intent-1", b'{"action": "refund"}')
    assert _consume_one(status.bootstrap, topic) == (b"intent-1", b'{"action": "refund"}')

    again = LocalKafka(
        home=kafka.home,
        port=kafka.port,
        controller_port=kafka.controller_port,
        dist_dir=kafka.dist_dir,
    ).up(timeout=5)
    assert again == status, "a second up() must find the running broker, not start another"

    assert kafka.down() is True
    stopped = kafka.status()
    assert stopped.running is False
    assert stopped.pid is None
    assert not kafka.pid_file.exists()
    assert kafka.down() is False

    # Restart on the same storage: formatted once, data kept.
    restarted = kafka.up()
    assert restarted.running is True and restarted.pid != status.pid
    assert _consume_one(restarted.bootstrap, topic) == (b"intent-1", b'{"action": "refund"}')
    assert kafka.down() is True


def _create_topic(bootstrap: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    futures[topic].result(timeout=30)


def _produce(bootstrap: str, topic: str, key: bytes, value: bytes) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0


def _consume_one(bootstrap: str, topic: str) -> tuple[bytes | None, bytes | None]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"gatepass-it-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            assert message.error() is None, message.error()
            return message.key(), message.value()
        raise AssertionError(f"no message on {topic} within 30 s")
    finally:
        consumer.close()
