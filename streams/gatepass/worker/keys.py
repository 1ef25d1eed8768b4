"""Keeps the compacted keys topic equal to the published JWKS: public keys only, never private.

Each published key is one `PublicKey` record keyed by kid; a key whose grace period has
ended gets a tombstone, so the compacted topic converges to exactly the current JWKS. Run at
start-up and periodically (a retired key's grace ends while the worker runs).
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from gatepass.codec.avro import SchemaSet
from gatepass.config import Settings
from gatepass.credentials import KeyStore
from gatepass.errors import BrokerError, DecodeError
from gatepass.transport import watermarks
from gatepass.transport.topics import KAFKA_LOG

__all__ = ["published_keys", "sync_public_keys"]


def published_keys(settings: Settings, schemas: SchemaSet,
                   timeout: float = 10.0) -> dict[str, dict[str, Any]]:
    """kid -> PublicKey record, as the keys topic holds them now (tombstones applied)."""
    topic = settings.topics.keys
    consumer = Consumer({"bootstrap.servers": settings.bootstrap, "group.id": "gatepass-keys",
                         "enable.auto.commit": False, "logger": KAFKA_LOG})
    try:
        meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if meta is None or meta.error is not None:
            raise BrokerError(f"keys topic {topic} not found")
        ends = {}
        for p in meta.partitions:
            low, high = watermarks(consumer, topic, p, timeout)
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        keys: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        while ends and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            kid = (msg.key() or b"").decode(errors="replace")
            if msg.value() is None:
                keys.pop(kid, None)
            else:
                try:
                    keys[kid] = schemas.public_key.decode(msg.value())
                except DecodeError:
                    keys.pop(kid, None)
            if (msg.offset() or 0) + 1 >= ends.get(msg.partition() or 0, 0):
                ends.pop(msg.partition() or 0, None)
        return keys
    finally:
        consumer.close()


def sync_public_keys(settings: Settings, schemas: SchemaSet, keystore: KeyStore,
                     now: datetime) -> tuple[int, int]:
    """Publish changed keys and tombstone dropped ones; returns (written, removed). Blocking."""
    keystore.prune(now=now)
    keystore.write_jwks(settings.jwks_file, now=now)
    current = published_keys(settings, schemas)
    active = keystore.active.kid
    producer = Producer({"bootstrap.servers": settings.bootstrap, "acks": "all",
                         "enable.idempotence": True, "logger": KAFKA_LOG})
    written = removed = 0
    wanted = set()
    for jwk in keystore.jwks(now=now)["keys"]:
        kid = jwk["kid"]
        wanted.add(kid)
        status = "active" if kid == active else "retired"
        seen = current.get(kid)
        if seen is not None and seen["status"] == status and seen["x"] == jwk["x"]:
            continue
        producer.produce(settings.topics.keys, key=kid.encode(), value=schemas.public_key.encode({
            "kid": kid, "kty": jwk["kty"], "crv": jwk["crv"], "x": jwk["x"],
            "alg": jwk.get("alg", "EdDSA"), "status": status, "published_at": now}))
        written += 1
    for kid in set(current) - wanted:
        producer.produce(settings.topics.keys, key=kid.encode(), value=None)
        removed += 1
    if producer.flush(30):
        raise BrokerError("keys topic writes not acknowledged")
    return written, removed
