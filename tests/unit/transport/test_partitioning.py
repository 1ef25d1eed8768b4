"""`partition_for` is Java's `toPositive(murmur2(key)) % n`, the partition every client must pick.

No broker: Kafka's own murmur2 test vectors pin the hash, and aiokafka's DefaultPartitioner
(what faust's producer uses when no partition is given) must agree on random agent ids.
The broker-side check with librdkafka and the Java producer is in
tests/integration/test_partitioning.py.
"""

from __future__ import annotations

import random
import string

import pytest
from aiokafka.partitioner import DefaultPartitioner

from gatepass.transport import partition_for

# org.apache.kafka.common.utils.UtilsTest#testMurmur2: input -> Java's signed 32-bit hash.
KAFKA_MURMUR2_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}
_ID_CHARS = string.ascii_letters + string.digits + "._:@-"


def random_agent_ids(count: int, rng: random.Random) -> list[str]:
    """Distinct ids of every length from 1 to 40 (so every murmur2 tail length occurs)."""
    ids: set[str] = set()
    while len(ids) < count:
        length = rng.randint(1, 40)
        ids.add(rng.choice(string.ascii_letters) + "".join(
            rng.choice(_ID_CHARS) for _ in range(length - 1)))
    return sorted(ids)


@pytest.mark.parametrize(("key", "java_hash"), sorted(KAFKA_MURMUR2_VECTORS.items()))
@pytest.mark.parametrize("partitions", [1, 4, 7, 50, 1024])
def test_partition_for_matches_kafkas_murmur2_vectors(key: bytes, java_hash: int,
                                                      partitions: int) -> None:
    expected = (java_hash & 0x7FFFFFFF) % partitions  # Utils.toPositive, then modulo
    assert partition_for(key, partitions) == expected
    assert partition_for(key.decode(), partitions) == expected


def test_a_known_key_lands_where_java_puts_it() -> None:
    assert partition_for("foobar", 50) == 16
    assert partition_for("foobar", 4) == 2


@pytest.mark.parametrize("partitions", [4, 7])
def test_aiokafka_default_partitioner_agrees_on_random_agent_ids(partitions: int) -> None:
    seed = random.randrange(2**32)
    ids = random_agent_ids(200, random.Random(seed))
    everyone = list(range(partitions))
    partitioner = DefaultPartitioner()
    disagree = {a: (partitioner(a.encode(), everyone, everyone), partition_for(a, partitions))
                for a in ids
                if partitioner(a.encode(), everyone, everyone) != partition_for(a, partitions)}
    assert not disagree, f"seed {seed}: {disagree}"
    # A keyed record keeps its partition even when that partition is unavailable.
    for a in ids[:20]:
        others = [p for p in everyone if p != partition_for(a, partitions)]
        assert partitioner(a.encode(), everyone, others) == partition_for(a, partitions)
    # 200 ids spread over every partition (a constant function would pass the rest).
    assert {partition_for(a, partitions) for a in ids} == set(everyone)


def test_unicode_keys_are_hashed_as_utf8() -> None:
    assert partition_for("agent-é", 7) == partition_for("agent-é".encode(), 7)
