"""Kafka plumbing shared by the worker, the SDK and the CLI: topics and partitioning."""

from gatepass.transport.offsets import watermarks
from gatepass.transport.partitioning import partition_for
from gatepass.transport.reader import RawRecord, read_topics
from gatepass.transport.topics import TopicSpec, ensure_topics, topic_specs

__all__ = ["RawRecord", "TopicSpec", "ensure_topics", "partition_for", "read_topics", "topic_specs",
           "watermarks"]
