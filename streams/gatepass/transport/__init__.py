"""Kafka plumbing shared by the worker, the SDK and the CLI: topics and partitioning."""

from gatepass.transport.offsets import watermarks
from gatepass.transport.partitioning import partition_for
from gatepass.transport.topics import TopicSpec, ensure_topics, topic_specs

__all__ = ["TopicSpec", "ensure_topics", "partition_for", "topic_specs", "watermarks"]
