"""What was already answered, read back from the output topics when a worker takes a partition.

The `decided` and `alerted` tables are faust changelogs, written by separate produce requests
from the verdict and the alert themselves. A worker killed after its verdict (or alert)
reached the broker but before the table write did would, after the restart, meet the
redelivered intent (or orphan check) with no memory of its answer, and answer it again:
with a different verdict if identity changed in between, or a second alert.

So before a worker handles records of a newly assigned partition it reads back the audit
records of that partition written since the oldest intent that can be redelivered to it
(the group's committed offset, minus a margin for clock skew) and every orphan alert the
partition still holds (a later, new check may meet an alert whose table write was lost),
and the agents consult those next to the tables. The topics themselves are the truth: an answer that
is on them is never given differently.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaException, TopicPartition

from gatepass.codec.avro import SchemaSet
from gatepass.config import Settings
from gatepass.errors import BrokerError, GatepassError
from gatepass.transport.offsets import watermarks
from gatepass.transport.topics import KAFKA_LOG

__all__ = ["Overlay", "Recovered", "read_back", "read_range"]

log = logging.getLogger("gatepass.worker")
SKEW_MARGIN = timedelta(seconds=60)


class Recovered:
    """Per partition: intent id -> DecisionRecord, agent id -> last OrphanAlert (raw Avro)."""

    def __init__(self) -> None:
        self.decided: dict[int, dict[str, bytes]] = {}
        self.alerted: dict[int, dict[str, bytes]] = {}

    def forget(self, partition: int) -> None:
        self.decided.pop(partition, None)
        self.alerted.pop(partition, None)

    def __len__(self) -> int:
        return sum(len(d) for d in self.decided.values()) + \
            sum(len(a) for a in self.alerted.values())


class Overlay(Mapping[str, bytes]):
    """A table view with what was read back next to it; `prefer` picks between the two."""

    def __init__(self, table: Mapping[str, bytes], recovered: Mapping[str, bytes],
                 prefer: Any) -> None:
        self._table = table
        self._recovered = recovered
        self._prefer = prefer

    def get(self, key: str, default: Any = None) -> Any:
        mine = self._table.get(key)
        theirs = self._recovered.get(key) if self._recovered else None
        if mine is None:
            return default if theirs is None else theirs
        if theirs is None or theirs == mine:
            return mine
        return self._prefer(mine, theirs)

    def __getitem__(self, key: str) -> bytes:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter({*self._table, *self._recovered})

    def __len__(self) -> int:
        return len({*self._table, *self._recovered})


def _committed(consumer: Consumer, topic: str, partition: int) -> int | None:
    offset = consumer.committed([TopicPartition(topic, partition)], timeout=10)[0].offset
    return offset if offset >= 0 else None


def _since(consumer: Consumer, topic: str, partition: int, fallback: datetime) -> datetime:
    """When the oldest record that can still be redelivered to this group was written."""
    committed = _committed(consumer, topic, partition)
    if committed is None:
        return fallback
    low, high = watermarks(consumer, topic, partition)
    if committed >= high:
        return datetime.now(UTC) - SKEW_MARGIN
    consumer.assign([TopicPartition(topic, partition, max(committed, low))])
    deadline = time.monotonic() + 10
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            return datetime.fromtimestamp(msg.timestamp()[1] / 1000, UTC) - SKEW_MARGIN
    finally:
        consumer.unassign()
    return fallback


def _read(consumer: Consumer, topic: str, partition: int, since: datetime | None,
          timeout: float) -> Iterator[bytes]:
    """The partition's records written since `since` (None: all it still holds)."""
    low, end = watermarks(consumer, topic, partition)
    if since is None:
        first = low
    else:
        first = consumer.offsets_for_times(
            [TopicPartition(topic, partition, int(since.timestamp() * 1000))],
            timeout=10)[0].offset
    if first < 0 or first >= end:
        return
    consumer.assign([TopicPartition(topic, partition, first)])
    deadline = time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                raise BrokerError(f"reading back {topic}[{partition}] took over {timeout:.0f}s")
            msg = consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            value = msg.value()
            if value is not None:
                yield value
            if (msg.offset() or 0) + 1 >= end:
                return
    finally:
        consumer.unassign()


def read_back(settings: Settings, schemas: SchemaSet, partition: int, *,
              timeout: float = 60.0) -> tuple[dict[str, bytes], dict[str, bytes], int | None]:
    """(intent id -> DecisionRecord, agent id -> OrphanAlert) of one partition, as written
    since anything that can be redelivered to this group was written, and the group's
    committed offset of the intents partition (the next intent it will be given; None when
    the group has committed none)."""
    t = settings.topics
    fallback = datetime.now(UTC) - settings.dedupe_horizon
    consumer = Consumer({"bootstrap.servers": settings.bootstrap, "group.id": settings.app_id,
                         "enable.auto.commit": False, "logger": KAFKA_LOG})
    decided: dict[str, bytes] = {}
    alerted: dict[str, bytes] = {}
    try:
        next_intent = _committed(consumer, t.intents, partition)
        if next_intent is None:  # nothing committed: the group starts at the log's start
            next_intent = watermarks(consumer, t.intents, partition)[0]
        since = _since(consumer, t.intents, partition, fallback)
        for value in _read(consumer, t.audit, partition, since, timeout):
            try:
                record = schemas.decision_record.decode(value)
            except GatepassError:
                continue
            decided[record["intent"]["intent_id"]] = value  # log order: a final after PENDING
        # Every alert the partition still holds, not only those since the oldest check that
        # can be redelivered: a *new* check (a later owner_inactive DENY) for an owner event
        # whose alert reached the topic while its `alerted` table write was lost (a worker
        # killed between the two) would otherwise raise that alert a second time (seen in
        # the fault suite, 70 s later). Alerts are few: one per agent per deactivation.
        for value in _read(consumer, t.orphans, partition, None, timeout):
            try:
                alert = schemas.orphan_alert.decode(value)
            except GatepassError:
                continue
            alerted[alert["agent_id"]] = value
    except KafkaException as exc:
        raise BrokerError(f"cannot read back partition {partition}: {exc}") from exc
    finally:
        consumer.close()
    return decided, alerted, next_intent


def read_range(settings: Settings, topic: str, partition: int, start: int, end: int, *,
               timeout: float = 60.0
               ) -> list[tuple[int, bytes | None, bytes | None, float | None]]:
    """(offset, key, value, timestamp in seconds) of the records at offsets start..end-1."""
    consumer = Consumer({"bootstrap.servers": settings.bootstrap, "group.id": settings.app_id,
                         "enable.auto.commit": False, "logger": KAFKA_LOG})
    out: list[tuple[int, bytes | None, bytes | None, float | None]] = []
    try:
        low, high = watermarks(consumer, topic, partition)
        start, end = max(start, low), min(end, high)
        if start >= end:
            return out
        consumer.assign([TopicPartition(topic, partition, start)])
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() > deadline:
                raise BrokerError(f"reading {topic}[{partition}] {start}..{end} took over "
                                  f"{timeout:.0f}s")
            msg = consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            offset = msg.offset() or 0
            if offset < end:
                kind, stamp = msg.timestamp()
                out.append((offset, msg.key(), msg.value(),
                            stamp / 1000 if kind != TIMESTAMP_NOT_AVAILABLE else None))
            if offset + 1 >= end:
                return out
    except KafkaException as exc:
        raise BrokerError(f"cannot read {topic}[{partition}]: {exc}") from exc
    finally:
        consumer.close()
