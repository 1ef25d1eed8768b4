"""Topic layout: every topic's partitions and configs, created at start-up and checked.

Topics are created explicitly (the broker's auto-create is off) so each has the right
cleanup policy. An existing topic with another partition count than configured would break
co-partitioning, so start-up refuses it with a clear error instead of deciding wrongly.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from gatepass.config import Settings
from gatepass.errors import BrokerError, ConfigError

__all__ = ["TopicSpec", "ensure_topics", "topic_specs"]

_DAY_MS = 24 * 3600 * 1000
# Configs that decisions depend on: set on topics that exist without them (older layouts).
_ENFORCED = ("message.timestamp.type",)
# librdkafka's own log lines go through Python logging (JSON, redacted), not raw to stderr.
KAFKA_LOG = logging.getLogger("gatepass.kafka")


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]
    copartitioned: bool  # must have exactly settings.partitions partitions


def topic_specs(settings: Settings) -> list[TopicSpec]:
    t, n = settings.topics, settings.partitions
    compact = {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1",
               "segment.ms": str(_DAY_MS)}
    return [
        # LogAppendTime: an intent's timestamp is the broker's, the point in the stream at
        # which a pushed policy takes over (the same on every worker, for every redelivery).
        TopicSpec(t.intents, n, {"retention.ms": str(7 * _DAY_MS),
                                 "message.timestamp.type": "LogAppendTime"}, True),
        TopicSpec(t.verdicts, n, {"retention.ms": str(_DAY_MS)}, True),
        TopicSpec(t.orphan_checks, n, {"retention.ms": str(_DAY_MS)}, True),
        TopicSpec(t.audit, n, {"retention.ms": str(90 * _DAY_MS)}, True),
        TopicSpec(t.denials, n, {"retention.ms": str(30 * _DAY_MS)}, False),
        TopicSpec(t.orphans, n, {"retention.ms": str(30 * _DAY_MS)}, False),
        TopicSpec(t.identity, n, compact, False),
        TopicSpec(t.dead_letter, 1, {"retention.ms": str(14 * _DAY_MS)}, False),
        TopicSpec(t.keys, 1, compact, False),
        # Every pushed policy bundle and activation (gatepass.policy.topic); one partition,
        # so workers read activations in the order they were pushed.
        TopicSpec(t.policies, 1, compact, False),
        # Owner and department limits (gatepass.core.limits): reservations in the budget
        # key's partition, answers in the agent's partition.
        TopicSpec(t.budget_requests, n, {"retention.ms": str(_DAY_MS)}, True),
        TopicSpec(t.budget_replies, n, {"retention.ms": str(_DAY_MS)}, True),
        # Approvals: requests and decisions live in the agent's partition, like its intents.
        TopicSpec(t.approvals, n, {"retention.ms": str(7 * _DAY_MS)}, True),
        TopicSpec(t.approval_decisions, n, {"retention.ms": str(7 * _DAY_MS)}, True),
        TopicSpec(t.approval_alerts, n, {"retention.ms": str(30 * _DAY_MS)}, False),
    ]


def admin_client(settings: Settings) -> AdminClient:
    return AdminClient({"bootstrap.servers": settings.bootstrap, "socket.timeout.ms": 10000,
                        "logger": KAFKA_LOG})  # type: ignore[dict-item]  # a Logger is allowed


def ensure_topics(settings: Settings, *, timeout: float = 30.0,
                  specs: list[TopicSpec] | None = None) -> list[str]:
    """Create missing topics (default: every topic of the layout); return the names created.

    Raises ConfigError when an existing co-partitioned topic has another partition count.
    """
    admin = admin_client(settings)
    try:
        existing = admin.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        raise BrokerError(f"cannot reach Kafka at {settings.bootstrap}: {exc}") from exc
    specs = topic_specs(settings) if specs is None else specs
    for spec in specs:
        meta = existing.get(spec.name)
        if meta is not None and spec.copartitioned and len(meta.partitions) != spec.partitions:
            raise ConfigError("partitions", (
                f"topic {spec.name} has {len(meta.partitions)} partitions but "
                f"{spec.partitions} are configured; co-partitioned topics must match"))
    _enforce_configs(admin, [s for s in specs if s.name in existing], timeout)
    missing = [s for s in specs if s.name not in existing]
    if not missing:
        _wait_for_leaders(admin, [s.name for s in specs], timeout)
        return []
    futures = admin.create_topics(
        [NewTopic(s.name, num_partitions=s.partitions, replication_factor=settings.replication,
                  config=s.config) for s in missing], operation_timeout=timeout)
    created: list[str] = []
    for name, fut in futures.items():
        try:
            fut.result()
            created.append(name)
        except KafkaException as exc:
            if exc.args and getattr(exc.args[0], "name", lambda: "")() == "TOPIC_ALREADY_EXISTS":
                continue  # another worker won the race
            raise BrokerError(f"cannot create topic {name}: {exc}") from exc
    _wait_for_leaders(admin, [s.name for s in missing], timeout)
    return created


def _enforce_configs(admin: AdminClient, specs: list[TopicSpec], timeout: float) -> None:
    for spec in specs:
        wanted = {k: spec.config[k] for k in _ENFORCED if k in spec.config}
        if not wanted:
            continue
        resource = ConfigResource(ResourceType.TOPIC, spec.name)
        try:
            current = admin.describe_configs([resource])[resource].result(timeout=timeout)
            if all(current.get(k) is not None and current[k].value == v
                   for k, v in wanted.items()):
                continue
            change = ConfigResource(ResourceType.TOPIC, spec.name, incremental_configs=[
                ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET)
                for k, v in wanted.items()])
            admin.incremental_alter_configs([change])[change].result(timeout=timeout)
            KAFKA_LOG.warning("topic %s: set %s", spec.name, wanted)
        except KafkaException as exc:
            raise BrokerError(f"cannot set {sorted(wanted)} on topic {spec.name}: {exc}") \
                from exc


def _wait_for_leaders(admin: AdminClient, names: list[str], timeout: float) -> None:
    """New partitions have no leader for a moment; clients would see NOT_LEADER errors."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        topics = admin.list_topics(timeout=timeout).topics
        if all(name in topics and topics[name].partitions and
               all(p.leader >= 0 for p in topics[name].partitions.values()) for name in names):
            return
        time.sleep(0.05)
    raise BrokerError(f"topics {names} have no partition leaders after {timeout:.0f}s")
