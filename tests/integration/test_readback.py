"""Read-back on partition assignment, against a real broker: every orphan alert the partition
holds comes back, however old, so a later check cannot raise an alert a second time."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from gatepass.codec.avro import schemas
from gatepass.config import Settings
from gatepass.transport import ensure_topics
from gatepass.worker.readback import read_back

pytestmark = pytest.mark.integration


def test_an_alert_older_than_the_redelivery_window_is_read_back(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    # Seen in the fault suite: the alert reached the topic, its `alerted` table write was
    # lost with the worker, every check was committed, and a new owner_inactive DENY 70 s
    # later met no memory of it (the read-back then covered only the last 60 s).
    tag = uuid.uuid4().hex[:6]
    settings = Settings(bootstrap=kafka_bootstrap, topic_prefix=f"rb{tag}.", partitions=2,
                        home=tmp_path, app_id=f"gatepass-rb-{tag}")
    ensure_topics(settings)
    codec = schemas()
    raised = datetime.now(UTC) - timedelta(minutes=10)
    alert = codec.orphan_alert.encode({
        "alert_id": str(uuid.uuid4()), "agent_id": "ghost-1", "owner": "sarah",
        "owner_status": "offboarded", "owner_status_at": raised, "purpose": None,
        "department": None, "contact": None, "trigger": "owner_deactivated",
        "intent_id": None, "detected_at": raised})
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(settings.topics.orphans, key=b"ghost-1", value=alert, partition=1,
                     timestamp=int(raised.timestamp() * 1000))
    assert producer.flush(30) == 0
    # The group has handled every check of the partition (committed at its end).
    group = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": settings.app_id,
                      "enable.auto.commit": False})
    try:
        group.commit(offsets=[TopicPartition(settings.topics.orphan_checks, 1, 0)],
                     asynchronous=False)
    finally:
        group.close()

    _, alerted, _ = read_back(settings, codec, 1)

    assert alerted == {"ghost-1": alert}
