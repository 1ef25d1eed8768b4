"""Where a key lives: the Java/Kafka default partitioner, used explicitly by every producer.

Co-partitioning is what makes per-agent state exact: an agent's intents, verdicts, audit
records and orphan checks must share a partition number. librdkafka's default partitioner
(consistent_random, CRC32) differs from Java's and aiokafka's murmur2, so our producers never
leave the choice to the client: they compute the partition here and set it explicitly.
"""

from __future__ import annotations

from aiokafka.partitioner import murmur2

__all__ = ["partition_for"]


def partition_for(key: str | bytes, partitions: int) -> int:
    """Java's `Utils.toPositive(Utils.murmur2(key)) % partitions`."""
    raw = key.encode() if isinstance(key, str) else key
    return (murmur2(raw) & 0x7FFFFFFF) % partitions
