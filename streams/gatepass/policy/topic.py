"""The policy topic: every pushed bundle and every activation, compacted, one partition.

    bundle:<version>          PolicyBundle      the files of one validated bundle
    activation:<uuid>         PolicyActivation  that version decides from effective_at on

`push` validates the bundle (refusing it as `gatepass policy validate` would), writes the
bundle, then the activation, and returns once Kafka acknowledged both. `read_policy_topic`
reads the whole topic (CLI, replay); workers follow it with worker/policy_loader.py.
"""

from __future__ import annotations

import getpass
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from gatepass.codec.avro import SchemaSet
from gatepass.config import Settings
from gatepass.core.policy import CedarPolicy
from gatepass.errors import BrokerError, DecodeError, PolicyError
from gatepass.policy.book import Activation, PolicyBook
from gatepass.transport.topics import KAFKA_LOG, ensure_topics, topic_specs

__all__ = ["PolicyHistory", "book_from_history", "push", "read_policy_topic", "who"]


@dataclass(slots=True)
class PolicyHistory:
    """What the policy topic holds: bundles by version, activations in time order."""

    bundles: dict[str, dict[str, str]] = field(default_factory=dict)
    activations: list[Activation] = field(default_factory=list)
    unreadable: int = 0

    def current(self, now: datetime) -> Activation | None:
        due = [a for a in self.activations if a.effective_at <= now]
        return due[-1] if due else None


def who() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no user name in a container: the host alone
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def apply_record(history: PolicyHistory, schemas: SchemaSet, key: bytes | None,
                 value: bytes | None) -> None:
    """Fold one policy-topic record into `history` (unreadable ones are counted)."""
    if value is None or key is None:
        return
    try:
        if key.startswith(b"bundle:"):
            bundle = schemas.policy_bundle.decode(value)
            history.bundles[bundle["version"]] = dict(bundle["files"])
        elif key.startswith(b"activation:"):
            a = schemas.policy_activation.decode(value)
            activation = Activation(a["effective_at"], a["activation_id"], a["version"])
            if activation not in history.activations:
                history.activations.append(activation)
                history.activations.sort()
        else:
            history.unreadable += 1
    except (DecodeError, KeyError, TypeError, ValueError):
        history.unreadable += 1


def read_policy_topic(settings: Settings, schemas: SchemaSet, *,
                      timeout: float = 30.0) -> PolicyHistory:
    """Every bundle and activation on the policy topic (empty if the topic does not exist)."""
    topic = settings.topics.policies
    history = PolicyHistory()
    consumer = Consumer({"bootstrap.servers": settings.bootstrap, "group.id": settings.app_id,
                         "enable.auto.commit": False, "logger": KAFKA_LOG})
    try:
        meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            return history
        tp = TopicPartition(topic, 0)
        low, high = consumer.get_watermark_offsets(tp, timeout=timeout)
        if high <= low:
            return history
        consumer.assign([TopicPartition(topic, 0, low)])
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() > deadline:
                raise BrokerError(f"reading {topic} took over {timeout:.0f}s")
            msg = consumer.poll(0.2)
            if msg is not None and not msg.error():
                apply_record(history, schemas, msg.key(), msg.value())
            position = consumer.position([tp])[0].offset
            if position >= high:
                return history
    except KafkaException as exc:
        raise BrokerError(f"cannot read {topic}: {exc}") from exc
    finally:
        consumer.close()


def book_from_history(initial: CedarPolicy, history: PolicyHistory, *,
                      rollout_delay: timedelta) -> PolicyBook:
    """A complete PolicyBook of everything on the topic (offline: CLI, replay)."""
    book = PolicyBook.fixed(initial)
    book.rollout_delay = rollout_delay
    for version, files in history.bundles.items():
        try:
            book.add_bundle(CedarPolicy.from_files(files))
        except PolicyError as exc:
            book.refuse_bundle(version, str(exc))
    for activation in history.activations:
        book.add_activation(activation)
    return book


def push(settings: Settings, schemas: SchemaSet, policy: CedarPolicy, *,
         pushed_by: str | None = None, now: datetime | None = None,
         delay: timedelta | None = None, timeout: float = 30.0) -> tuple[Activation, str | None]:
    """Publish a validated bundle and put it in force `delay` (the rollout delay) from now.

    Returns the activation and the version that was in force before, as the topic said.
    """
    ensure_topics(settings, specs=[s for s in topic_specs(settings)
                                   if s.name == settings.topics.policies])
    now = now or datetime.now(UTC)
    now = now.replace(microsecond=now.microsecond // 1000 * 1000)
    delay = settings.policy_rollout_delay if delay is None else delay
    history = read_policy_topic(settings, schemas, timeout=timeout)
    previous = history.current(now)
    pushed_by = pushed_by or who()
    activation = Activation(now + delay, str(uuid.uuid4()), policy.version)
    records: list[tuple[bytes, bytes]] = []
    if history.bundles.get(policy.version) != dict(policy.files):
        # New, or on the topic under its name with other files (a broken record that
        # workers refused): written, so workers load the genuine one.
        records.append((f"bundle:{policy.version}".encode(), schemas.policy_bundle.encode({
            "version": policy.version, "files": dict(policy.files), "pushed_at": now,
            "pushed_by": pushed_by})))
    records.append((f"activation:{activation.activation_id}".encode(),
                    schemas.policy_activation.encode({
                        "activation_id": activation.activation_id,
                        "version": policy.version, "effective_at": activation.effective_at,
                        "pushed_at": now, "pushed_by": pushed_by,
                        "previous_version": previous.version if previous else None})))
    _produce(settings, settings.topics.policies, records, timeout)
    return activation, previous.version if previous else None


def _produce(settings: Settings, topic: str, records: list[tuple[bytes, bytes]],
             timeout: float) -> None:
    producer = Producer({"bootstrap.servers": settings.bootstrap, "acks": "all",
                         "enable.idempotence": True, "logger": KAFKA_LOG})
    failures: list[Any] = []

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            failures.append(err)

    # In order, one partition: the bundle is on the topic before its activation.
    for key, value in records:
        producer.produce(topic, value=value, key=key, partition=0, on_delivery=delivered)
    remaining = producer.flush(timeout)
    if remaining or failures:
        raise BrokerError(f"the policy was not written to {topic}: "
                          f"{failures[0] if failures else f'{remaining} records unsent'}")
