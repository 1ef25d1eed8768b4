"""`gatepass export ocsf`: read the denials and orphan-alerts topics, emit OCSF CloudEvents.

Each topic is read from the beginning to the end offsets seen at start (like `gatepass tail`),
or on and on with `follow`. Every record becomes one CloudEvent printed as one JSON line and,
with `to_topic`, also written to `<prefix>ocsf-events`: key = event id, value = the same
JSON bytes (CloudEvents Kafka binding, structured mode). That topic is the one deliberate
non-Avro topic: it is meant for SIEM connectors, which read JSON and know nothing of our
single-object Avro encoding.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from typing import Any, TextIO

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from gatepass.codec.avro import RecordCodec, schemas
from gatepass.config import Settings
from gatepass.errors import BrokerError, ConfigError, DecodeError
from gatepass.export.ocsf import (
    DENIAL_EVENT_TYPE,
    ORPHAN_ALERT_EVENT_TYPE,
    denial_to_ocsf,
    orphan_to_ocsf,
    to_cloudevent,
)
from gatepass.transport import partition_for, watermarks

__all__ = ["EXPORT_SOURCES", "ExportTopicWriter", "cloudevent_source", "export_ocsf",
           "export_topic"]

log = logging.getLogger("gatepass.export")

EXPORT_SOURCES = ("denials", "orphans", "both")
EXPORT_TOPIC_RETENTION_MS = 30 * 24 * 3600 * 1000  # like the denials and orphan-alerts topics
CONTENT_TYPE = b"application/cloudevents+json; charset=utf-8"


@dataclass(frozen=True, slots=True)
class _Source:
    topic: str
    codec: RecordCodec
    event_type: str
    to_ocsf: Callable[[Mapping[str, Any]], dict[str, Any]]
    subject: Callable[[Mapping[str, Any]], str]


def export_topic(settings: Settings) -> str:
    """The JSON topic `--to-topic` writes: `<prefix>ocsf-events`."""
    return f"{settings.topic_prefix}ocsf-events"


def cloudevent_source(topic: str) -> str:
    """CloudEvents `source` of the records of one topic (a URI reference, stable per topic)."""
    return f"urn:gatepass:topic:{topic}"


def _sources(settings: Settings, which: str) -> list[_Source]:
    t, s = settings.topics, schemas()
    known = {
        "denials": _Source(t.denials, s.decision_record, DENIAL_EVENT_TYPE, denial_to_ocsf,
                           lambda r: str(r["intent"]["agent_id"])),
        "orphans": _Source(t.orphans, s.orphan_alert, ORPHAN_ALERT_EVENT_TYPE, orphan_to_ocsf,
                           lambda r: str(r["agent_id"])),
    }
    if which == "both":
        return [known["denials"], known["orphans"]]
    if which not in known:
        raise ConfigError("from", f"expected one of {', '.join(EXPORT_SOURCES)}, got {which!r}")
    return [known[which]]


def _to_event(source: _Source, record: Mapping[str, Any]) -> dict[str, Any]:
    return to_cloudevent(source.to_ocsf(record), source=cloudevent_source(source.topic),
                         type=source.event_type, subject=source.subject(record))


def _read(settings: Settings, sources: Sequence[_Source], *, follow: bool,
          idle_timeout: float) -> Generator[tuple[_Source, dict[str, Any]], None, None]:
    """Decoded records of every source topic, from the beginning to the ends seen at start."""
    by_topic = {s.topic: s for s in sources}
    consumer = Consumer({"bootstrap.servers": settings.bootstrap, "group.id": "gatepass-export",
                         "enable.auto.commit": False})
    try:
        ends: dict[tuple[str, int], int] = {}
        done: set[tuple[str, int]] = set()
        assignment = []
        for topic in by_topic:
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
            msg = consumer.poll(idle_timeout)
            if msg is None:
                continue
            error = msg.error()
            if error is not None:
                if error.fatal():
                    raise BrokerError(f"cannot read {msg.topic()}: {error}")
                continue
            topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
            if offset + 1 >= ends.get((topic, partition), 0):
                done.add((topic, partition))
            try:
                record = by_topic[topic].codec.decode(msg.value())
            except DecodeError as exc:
                log.warning("skipped undecodable record at %s[%d]@%d: %s", topic, partition,
                            offset, exc.code)
                continue
            yield by_topic[topic], record
    except KafkaException as exc:
        raise BrokerError(f"cannot read {', '.join(by_topic)}: {exc}") from exc
    finally:
        consumer.close()


class ExportTopicWriter:
    """Writes exported events to `<prefix>ocsf-events`, creating the topic if it is missing."""

    def __init__(self, settings: Settings, *, timeout: float = 30.0) -> None:
        self.topic = export_topic(settings)
        self._timeout = timeout
        self._failures: list[str] = []
        self._partitions = self._ensure(settings)
        self._producer = Producer({"bootstrap.servers": settings.bootstrap, "acks": "all",
                                   "enable.idempotence": True, "linger.ms": 5})

    def _ensure(self, settings: Settings) -> int:
        admin = AdminClient({"bootstrap.servers": settings.bootstrap,
                             "socket.timeout.ms": 10000})
        try:
            meta = admin.list_topics(timeout=self._timeout).topics.get(self.topic)
            if meta is None:
                futures = admin.create_topics([NewTopic(
                    self.topic, num_partitions=settings.partitions,
                    replication_factor=settings.replication,
                    config={"retention.ms": str(EXPORT_TOPIC_RETENTION_MS)})],
                    operation_timeout=self._timeout)
                for future in futures.values():
                    try:
                        future.result()
                    except KafkaException as exc:
                        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                            raise
            return self._await_leaders(admin)
        except KafkaException as exc:
            raise BrokerError(f"cannot create topic {self.topic}: {exc}") from exc

    def _await_leaders(self, admin: AdminClient) -> int:
        """A new topic's partitions have no leader for a moment; produce only once they do."""
        deadline = time.monotonic() + self._timeout
        while True:
            meta = admin.list_topics(self.topic, timeout=self._timeout).topics.get(self.topic)
            if meta is not None and meta.error is None and meta.partitions and all(
                    p.leader >= 0 for p in meta.partitions.values()):
                return len(meta.partitions)
            if time.monotonic() > deadline:
                raise BrokerError(f"topic {self.topic} has no partition leaders")
            time.sleep(0.05)

    def write(self, event_id: str, line: str) -> None:
        """Queue one event: key = its id, value = its JSON, partition = murmur2 of the key."""
        kwargs: dict[str, Any] = {
            "key": event_id.encode(), "value": line.encode(),
            "partition": partition_for(event_id, self._partitions),
            "headers": [("content-type", CONTENT_TYPE)], "on_delivery": self._delivered}
        while True:
            try:
                self._producer.produce(self.topic, **kwargs)
                break
            except BufferError:  # local queue full: let deliveries drain, then retry
                self._producer.poll(0.1)
        self._producer.poll(0)

    def _delivered(self, error: KafkaError | None, msg: Message) -> None:
        if error is not None:
            self._failures.append(str(error))

    def close(self) -> None:
        """Wait for every queued event; raise BrokerError if any was not written."""
        left = self._producer.flush(self._timeout)
        if left or self._failures:
            raise BrokerError(f"{left + len(self._failures)} events not written to "
                              f"{self.topic}: {'; '.join(self._failures[:3]) or 'timeout'}")


def export_ocsf(settings: Settings, which: str = "both", *, follow: bool = False,
                limit: int = 0, to_topic: bool = False, out: TextIO,
                idle_timeout: float = 1.0) -> int:
    """Print each denial / orphan alert as one CloudEvent JSON line; return how many.

    `which` is denials, orphans or both; `limit` 0 means no limit. With `to_topic` the same
    lines are also written to `<prefix>ocsf-events` (flushed before returning).
    """
    if limit < 0:
        raise ConfigError("max", "must not be negative")
    sources = _sources(settings, which)
    writer = ExportTopicWriter(settings) if to_topic else None
    count = 0
    try:
        with closing(_read(settings, sources, follow=follow,
                           idle_timeout=idle_timeout)) as records:
            for source, record in records:
                try:
                    event = _to_event(source, record)
                except DecodeError as exc:  # e.g. an ALLOW on the denials topic
                    log.warning("skipped a record of %s: %s", source.topic, exc)
                    continue
                # json.dumps escapes control characters: one event is always one line.
                line = json.dumps(event, separators=(",", ":"))
                out.write(line + "\n")
                out.flush()
                if writer is not None:
                    writer.write(event["id"], line)
                count += 1
                if limit and count >= limit:
                    break
    finally:
        if writer is not None:
            writer.close()
    return count
