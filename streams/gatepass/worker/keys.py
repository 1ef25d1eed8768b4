"""Keeps the compacted keys topic equal to the published JWKS: public keys only, never private.

Each published key is one `PublicKey` record keyed by kid; a key whose grace period has
ended gets a tombstone, so the compacted topic converges to exactly the current JWKS. Run at
start-up and periodically (a retired key's grace ends while the worker runs).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from confluent_kafka import Producer

from gatepass.codec.avro import SchemaSet
from gatepass.config import Settings
from gatepass.credentials import KeyStore
from gatepass.errors import BrokerError, DecodeError
from gatepass.transport import read_topics
from gatepass.transport.topics import KAFKA_LOG

__all__ = ["published_keys", "sync_public_keys"]


def published_keys(settings: Settings, schemas: SchemaSet,
                   timeout: float = 10.0) -> dict[str, dict[str, Any]]:
    """kid -> PublicKey record, as the keys topic holds them now (tombstones applied)."""
    keys: dict[str, dict[str, Any]] = {}
    for raw in read_topics(settings.bootstrap, [settings.topics.keys], idle_timeout=0.2,
                           group="gatepass-keys", timeout=timeout):
        kid = (raw.key or b"").decode(errors="replace")
        try:
            if raw.value is None:
                raise DecodeError("tombstone")
            keys[kid] = schemas.public_key.decode(raw.value)
        except DecodeError:
            keys.pop(kid, None)  # retracted (or unreadable, so not trusted)
    return keys


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
