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
from collections.abc import Callable, Generator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from typing import Any, TextIO

from confluent_kafka import KafkaError, Message, Producer

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
from gatepass.transport import TopicSpec, ensure_topics, partition_for
from gatepass.transport.reader import read_topics
from gatepass.transport.topics import admin_client

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
    records = read_topics(settings.bootstrap, list(by_topic), follow=follow,
                          idle_timeout=idle_timeout, group="gatepass-export")
    with closing(records):
        for raw in records:
            try:
                record = by_topic[raw.topic].codec.decode(raw.value)
            except DecodeError as exc:
                log.warning("skipped undecodable record at %s[%d]@%d: %s", raw.topic,
                            raw.partition, raw.offset, exc.code)
                continue
            yield by_topic[raw.topic], record


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
        spec = TopicSpec(self.topic, settings.partitions,
                         {"retention.ms": str(EXPORT_TOPIC_RETENTION_MS)}, copartitioned=False)
        ensure_topics(settings, timeout=self._timeout, specs=[spec])
        meta = admin_client(settings).list_topics(self.topic, timeout=self._timeout)
        return len(meta.topics[self.topic].partitions)

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
