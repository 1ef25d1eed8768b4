"""A running Gatepass for integration tests: its own topic prefix, key store and worker.

Each test module gets a fresh prefix, so modules never see each other's records, and reads
topics with an independent consumer (never through the worker's own code paths).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from gatepass.codec.avro import RecordCodec, schemas
from gatepass.config import Settings
from gatepass.core import AgentRegistered, PrincipalStatus, PrincipalStatusChanged
from gatepass.sdk import GatepassClient, LifecyclePublisher
from gatepass.transport import ensure_topics
from gatepass.worker.process import WorkerProcess
from support.broker import free_ports


def new_settings(bootstrap: str, home: Path, **overrides: Any) -> Settings:
    tag = uuid.uuid4().hex[:8]
    (web_port,) = free_ports(1)
    return Settings(bootstrap=bootstrap, topic_prefix=f"t{tag}.", partitions=4, home=home,
                    app_id=f"gatepass-test-{tag}", web_port=web_port, **overrides)


@dataclass
class Stack:
    settings: Settings
    workers: list[WorkerProcess] = field(default_factory=list)

    def start_worker(self, *, wait: bool = True, **overrides: Any) -> WorkerProcess:
        settings = self.settings.with_(**overrides) if overrides else self.settings
        log = self.settings.home / "logs" / f"worker-{len(self.workers)}.log"
        worker = WorkerProcess(settings, log_file=log).start()
        self.workers.append(worker)
        if wait:
            worker.wait_ready(timeout=120)
        return worker

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()

    def client(self, **kwargs: Any) -> GatepassClient:
        return GatepassClient.from_settings(self.settings, **kwargs)

    def publisher(self) -> LifecyclePublisher:
        return LifecyclePublisher(bootstrap=self.settings.bootstrap,
                                  topic_prefix=self.settings.topic_prefix)

    def register(self, agent: str, owner: str, purpose: str = "procurement",
                 at: datetime | None = None) -> None:
        at = at or datetime.now(UTC)
        self.publisher().publish(
            PrincipalStatusChanged(principal_id=owner, status=PrincipalStatus.ACTIVE,
                                   event_time=at, source="test"),
            AgentRegistered(agent_id=agent, owner=owner, purpose=purpose, event_time=at,
                            source="test"))

    def produce_raw(self, topic: str, key: bytes | None, value: bytes | None,
                    partition: int | None = None) -> None:
        producer = Producer({"bootstrap.servers": self.settings.bootstrap})
        kwargs: dict[str, Any] = {"key": key, "value": value}
        if partition is not None:
            kwargs["partition"] = partition
        producer.produce(topic, **kwargs)
        assert producer.flush(10) == 0


def read_topic(settings: Settings, topic: str, codec: RecordCodec | None,
               until: Callable[[list[Any]], bool] = lambda _: False,
               timeout: float = 20.0) -> list[Any]:
    """Read a topic from the beginning (an independent reader), until `until` or timeout.

    With codec None the raw (key, value) pairs are returned.
    """
    consumer = Consumer({"bootstrap.servers": settings.bootstrap, "group.id": "test-reader",
                         "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
        records: list[Any] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not until(records):
            msg = consumer.poll(0.1)
            if msg is None or msg.error():
                continue
            records.append(codec.decode(msg.value()) if codec else (msg.key(), msg.value()))
        return records
    finally:
        consumer.close()


def verdicts_for(settings: Settings, intent_ids: set[str], *, at_least: int = 1,
                 timeout: float = 20.0) -> list[dict[str, Any]]:
    def enough(records: list[Any]) -> bool:
        counts = {i: 0 for i in intent_ids}
        for r in records:
            if r["intent_id"] in counts:
                counts[r["intent_id"]] += 1
        return all(c >= at_least for c in counts.values())

    records = read_topic(settings, settings.topics.verdicts, schemas().verdict, enough, timeout)
    return [r for r in records if r["intent_id"] in intent_ids]


@contextmanager
def running_stack(bootstrap: str, home: Path, **overrides: Any) -> Iterator[Stack]:
    stack = Stack(new_settings(bootstrap, home, **overrides))
    ensure_topics(stack.settings)
    try:
        yield stack
    finally:
        stack.stop()
