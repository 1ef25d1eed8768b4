"""Co-partitioning across clients, on a real broker: where does each client put a key?

Gatepass computes `partition_for(agent_id, n)` (Java's murmur2) and sets the partition
explicitly on every produce. A foreign producer that leaves the choice to its client must land
on the same partition: the Java producer and librdkafka with `partitioner=murmur2_random` do;
librdkafka's default (`consistent_random`, CRC32) does not, which is why our own producers
never rely on a client default.
"""

from __future__ import annotations

import random
import shutil
import string
import subprocess
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from gatepass.kafka_local import KAFKA_VERSION
from gatepass.transport import partition_for
from support.broker import gatepass_home

pytestmark = pytest.mark.integration
_ID_CHARS = string.ascii_letters + string.digits + "._:@-"
SEED = random.randrange(2**32)


@pytest.fixture(scope="module")
def agent_ids() -> list[str]:
    """200 distinct random agent ids, every length from 1 to 40 (all murmur2 tail cases)."""
    rng = random.Random(SEED)
    ids: set[str] = set()
    while len(ids) < 200:
        length = rng.randint(1, 40)
        ids.add(rng.choice(string.ascii_letters) + "".join(
            rng.choice(_ID_CHARS) for _ in range(length - 1)))
    return sorted(ids)


def _fresh_topic(bootstrap: str, partitions: int) -> str:
    name = f"partitioning-{partitions}-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, num_partitions=partitions,
                                  replication_factor=1)])[name].result(30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        meta = admin.list_topics(name, timeout=10).topics.get(name)
        if meta is not None and len(meta.partitions) == partitions and \
                all(p.leader >= 0 for p in meta.partitions.values()):
            return name
        time.sleep(0.05)
    raise AssertionError(f"topic {name} has no leaders")


def _librdkafka_partitions(bootstrap: str, topic: str, keys: list[str],
                           **conf: Any) -> dict[str, int]:
    """Produce each key with no partition given; return the partition the broker stored."""
    delivered: dict[str, int] = {}
    errors: list[str] = []

    def on_delivery(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            delivered[msg.key().decode()] = msg.partition()

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", **conf})
    for key in keys:
        producer.produce(topic, key=key.encode(), value=b"x", on_delivery=on_delivery)
    assert producer.flush(30) == 0
    assert not errors, errors[:3]
    assert set(delivered) == set(keys)
    return delivered


@pytest.mark.parametrize("partitions", [4, 7])
def test_librdkafka_murmur2_random_puts_every_key_where_partition_for_says(
        kafka_bootstrap: str, agent_ids: list[str], partitions: int) -> None:
    topic = _fresh_topic(kafka_bootstrap, partitions)
    delivered = _librdkafka_partitions(kafka_bootstrap, topic, agent_ids,
                                       partitioner="murmur2_random")
    wrong = {k: (p, partition_for(k, partitions)) for k, p in delivered.items()
             if p != partition_for(k, partitions)}
    assert not wrong, f"seed {SEED}: key -> (librdkafka, partition_for): {wrong}"
    assert set(delivered.values()) == set(range(partitions))


@pytest.mark.parametrize("partitions", [4, 7])
def test_librdkafka_default_partitioner_disagrees(
        kafka_bootstrap: str, agent_ids: list[str], partitions: int) -> None:
    """consistent_random is CRC32(key) % n: a foreign default producer splits an agent's
    intents from its verdicts, hence `partition=` on every Gatepass produce."""
    topic = _fresh_topic(kafka_bootstrap, partitions)
    delivered = _librdkafka_partitions(kafka_bootstrap, topic, agent_ids)
    assert delivered == {k: zlib.crc32(k.encode()) % partitions for k in agent_ids}
    differ = [k for k, p in delivered.items() if p != partition_for(k, partitions)]
    assert differ, f"seed {SEED}: consistent_random agreed with murmur2 on every key"
    # Not a rare corner: roughly (n-1)/n of the keys land elsewhere.
    assert len(differ) > len(agent_ids) // 3


_JAVA_PRODUCER = """
import java.io.*;
import java.util.*;
import org.apache.kafka.clients.producer.*;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public class KeyedProducer {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.put("bootstrap.servers", args[0]);
        props.put("acks", "all");
        props.put("key.serializer", ByteArraySerializer.class.getName());
        props.put("value.serializer", ByteArraySerializer.class.getName());
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, "UTF-8"));
        try (Producer<byte[], byte[]> producer = new KafkaProducer<>(props)) {
            String key;
            while ((key = in.readLine()) != null) {
                RecordMetadata meta = producer.send(new ProducerRecord<>(
                    args[1], key.getBytes("UTF-8"), new byte[] {1})).get();
                System.out.println(key + "\\t" + meta.partition());
            }
        }
    }
}
"""


@pytest.mark.parametrize("partitions", [4, 7])
def test_the_java_producer_puts_every_key_where_partition_for_says(
        kafka_bootstrap: str, agent_ids: list[str], partitions: int, tmp_path: Path) -> None:
    libs = gatepass_home() / "dist" / KAFKA_VERSION / "libs"
    java = shutil.which("java")
    if java is None or not any(libs.glob("kafka-clients-*.jar")):
        pytest.skip(f"needs java and the Kafka jars in {libs} (fetched by `gatepass kafka up`)")
    topic = _fresh_topic(kafka_bootstrap, partitions)
    source = tmp_path / "KeyedProducer.java"
    source.write_text(_JAVA_PRODUCER)
    run = subprocess.run([java, "-cp", f"{libs}/*", str(source), kafka_bootstrap, topic],
                         input="\n".join(agent_ids) + "\n", capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    delivered = {k: int(p) for k, p in (line.split("\t") for line in run.stdout.splitlines())}
    assert set(delivered) == set(agent_ids)
    wrong = {k: (p, partition_for(k, partitions)) for k, p in delivered.items()
             if p != partition_for(k, partitions)}
    assert not wrong, f"seed {SEED}: key -> (java, partition_for): {wrong}"
