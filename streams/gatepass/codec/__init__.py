"""Avro serialization of every topic payload and its mapping to domain objects."""

from gatepass.codec.avro import MARKER, RecordCodec, SchemaSet, schema_dir, schemas

__all__ = ["MARKER", "RecordCodec", "SchemaSet", "schema_dir", "schemas"]
