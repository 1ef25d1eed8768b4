"""Closed-batch throughput of one worker, next to a bare Kafka round trip of the same records.

    python benchmarks/throughput.py [--intents 20000] [--agents 1000]

Starts (or reuses) the local broker, starts one worker on a fresh topic prefix, registers
the agents, then writes all intents at once (about 80% ALLOW with a signed pass, 20% DENY)
and reads the verdict topic with an independent consumer until every intent has its verdict.
Baseline in the same run: the same number of records of the same size produced to a topic
and consumed back with no processing. Prints figures; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition

from gatepass.codec.avro import schemas
from gatepass.codec.records import intent_to_record
from gatepass.config import Settings
from gatepass.core import AgentRegistered, Intent, PrincipalStatus, PrincipalStatusChanged
from gatepass.kafka_local import KAFKA_VERSION, LocalKafka
from gatepass.sdk import LifecyclePublisher
from gatepass.transport import ensure_topics, partition_for
from gatepass.worker.process import WorkerProcess

REPO = Path(__file__).resolve().parents[1]


def consume_all(bootstrap: str, topic: str, expected: int, timeout: float) -> tuple[int, float]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4()}",
                         "enable.auto.commit": False, "fetch.wait.max.ms": 5})
    meta = consumer.list_topics(topic, timeout=10).topics[topic]
    consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
    seen, deadline, last = 0, time.monotonic() + timeout, time.perf_counter()
    while seen < expected and time.monotonic() < deadline:
        msgs = consumer.consume(1000, timeout=0.1)
        seen += sum(1 for m in msgs if not m.error())
        if msgs:
            last = time.perf_counter()
    consumer.close()
    return seen, last


def produce_all(bootstrap: str, records: list[tuple[str, bytes, bytes, int]]) -> float:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all",
                         "batch.num.messages": 10000, "queue.buffering.max.messages": 1000000})
    start = time.perf_counter()
    for topic, key, value, partition in records:
        producer.produce(topic, key=key, value=value, partition=partition)
        producer.poll(0)
    producer.flush(60)
    return start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--intents", type=int, default=20000)
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    home = REPO / ".gatepass"
    broker = LocalKafka(home=home)
    status = broker.up()
    tmp = Path(tempfile.mkdtemp(prefix="gatepass-bench-"))
    settings = Settings(bootstrap=status.bootstrap, topic_prefix=f"bench{uuid.uuid4().hex[:6]}.",
                        partitions=args.partitions, home=tmp, web_port=6099,
                        app_id=f"bench-{uuid.uuid4().hex[:6]}")
    ensure_topics(settings)
    codec = schemas().intent
    now = datetime.now(UTC)
    pub = LifecyclePublisher(bootstrap=settings.bootstrap, topic_prefix=settings.topic_prefix)
    events = []
    for i in range(args.agents):
        events += [PrincipalStatusChanged(principal_id=f"owner-{i}", status=PrincipalStatus.ACTIVE,
                                          event_time=now, source="bench"),
                   AgentRegistered(agent_id=f"agent-{i}", owner=f"owner-{i}",
                                   purpose="procurement", event_time=now, source="bench")]
    pub.publish(*events, timeout=60)

    worker = WorkerProcess(settings, log_file=tmp / "worker.log").start()
    worker.wait_ready(120)

    records = []
    for n in range(args.intents):
        agent = f"agent-{n % args.agents}"
        denied = n % 5 == 0
        intent = Intent(intent_id=str(uuid.uuid4()), agent_id=agent,
                        action="cloud.provision" if denied else "purchase_order.create",
                        resource="vendor:ACME", audience="procurement-api",
                        amount=None if denied else Decimal("120.00"),
                        currency=None if denied else "USD", requested_at=datetime.now(UTC))
        records.append((settings.topics.intents, agent.encode(),
                        codec.encode(intent_to_record(intent)),
                        partition_for(agent, settings.partitions)))
    size = sum(len(r[2]) for r in records) / len(records)

    start = produce_all(settings.bootstrap, records)
    seen, last = consume_all(settings.bootstrap, settings.topics.verdicts, args.intents, 300)
    gatepass_rate = seen / (last - start)
    worker.stop()

    base_topic = f"{settings.topic_prefix}baseline"
    from confluent_kafka.admin import AdminClient, NewTopic
    admin = AdminClient({"bootstrap.servers": settings.bootstrap})
    admin.create_topics([NewTopic(base_topic, args.partitions, 1)])[base_topic].result()
    time.sleep(1)
    start = produce_all(settings.bootstrap, [(base_topic, k, v, p) for _, k, v, p in records])
    base_seen, base_last = consume_all(settings.bootstrap, base_topic, args.intents, 120)
    baseline_rate = base_seen / (base_last - start)

    result = {
        "intents": args.intents, "verdicts": seen, "agents": args.agents,
        "partitions": args.partitions, "payload_bytes": round(size),
        "gatepass_decisions_per_s": round(gatepass_rate),
        "baseline_roundtrip_records_per_s": round(baseline_rate),
        "ratio_gatepass_to_baseline": round(gatepass_rate / baseline_rate, 3),
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "kafka": KAFKA_VERSION},
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if seen == args.intents else 1


if __name__ == "__main__":
    sys.exit(main())
