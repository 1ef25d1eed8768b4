"""Publishes the public pass-verification keys to the compacted keys topic."""

from __future__ import annotations

from datetime import datetime

from confluent_kafka import Producer

from gatepass.codec.avro import SchemaSet
from gatepass.config import Settings
from gatepass.credentials import KeyStore

__all__ = ["publish_public_keys"]


def publish_public_keys(settings: Settings, schemas: SchemaSet, keystore: KeyStore,
                        now: datetime) -> int:
    """Write one PublicKey record per published key (public members only). Blocking."""
    producer = Producer({"bootstrap.servers": settings.bootstrap, "acks": "all",
                         "enable.idempotence": True})
    jwks = keystore.jwks(now=now)
    active = keystore.active.kid
    for jwk in jwks["keys"]:
        record = {"kid": jwk["kid"], "kty": jwk["kty"], "crv": jwk["crv"], "x": jwk["x"],
                  "alg": jwk.get("alg", "EdDSA"),
                  "status": "active" if jwk["kid"] == active else "retired",
                  "published_at": now}
        producer.produce(settings.topics.keys, key=jwk["kid"].encode(),
                         value=schemas.public_key.encode(record))
    producer.flush(30)
    return len(jwks["keys"])
