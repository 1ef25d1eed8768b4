"""Avro for every topic payload: one schema per record type, single-object encoding.

Each payload is the Avro single-object encoding (spec 1.12): the marker C3 01, the 8-byte
CRC-64-AVRO fingerprint of the writer's schema, then the binary body. A reader accepts the
current schema and every earlier version kept under schemas/history/, resolving writer to
reader by Avro's rules, so producers and workers can be upgraded one at a time (readers
first when a schema changes). Schemas are parsed once; codecs are built once per type.
Records are written by a writer compiled from the schema (codec/avro_writer.py), which
leaves any value it is not sure of to fastavro: the bytes are fastavro's either way.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

from gatepass.codec.avro_writer import compile_writer
from gatepass.errors import ConfigError, DecodeError, RecordInvalidError, UnknownSchemaError

__all__ = ["MARKER", "RecordCodec", "SchemaSet", "schema_dir", "schemas"]

MARKER = b"\xc3\x01"
_HEADER = len(MARKER) + 8
# Load order: a schema may refer to named types defined by the ones before it.
_FILES = ("intent", "lifecycle", "verdict", "orphan_alert", "decision_record", "orphan_check",
          "dead_letter", "public_key", "approval_request", "approval_decision",
          "approval_timeout", "approval_alert", "policy_bundle", "policy_activation",
          "budget_ledger", "budget_message", "budget_hold")


def schema_dir() -> Path:
    """schemas/ of this checkout, or GATEPASS_SCHEMAS_DIR for an installed package."""
    env = os.environ.get("GATEPASS_SCHEMAS_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "schemas"


def _prepared(expanded: Any) -> Any:
    return parse_schema(expanded, {}, _force=True)


def _fingerprint(parsed: Any) -> bytes:
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))


class RecordCodec:
    """Encode/decode one record type; errors surface as DecodeError subclasses."""

    __slots__ = ("_fast", "_header", "_readers", "_schema", "name")

    def __init__(self, name: str, schema: Any, history: list[Any]) -> None:
        self.name = name
        # fastavro re-parses a schema dict on every call unless it carries its parse hint,
        # which costs more than the encoding itself: parse once, with the hint.
        self._schema = _prepared(schema)
        self._header = MARKER + _fingerprint(schema)
        self._fast = compile_writer(self._schema)
        # writer fingerprint -> writer schema (None: the current schema, no resolution needed)
        self._readers: dict[bytes, Any] = {self._header[2:]: None}
        for old in history:
            self._readers.setdefault(_fingerprint(old), _prepared(old))

    @property
    def schema(self) -> Any:
        return self._schema

    @property
    def fingerprint(self) -> bytes:
        return self._header[2:]

    def encode(self, record: Mapping[str, Any]) -> bytes:
        if self._fast is not None:
            out = bytearray(self._header)
            try:
                self._fast(out, record)
                sure = True
            except Exception:  # Unsure, or anything unforeseen: fastavro decides
                sure = False
            if sure:
                return bytes(out)
        return self._encode_fastavro(record)

    def _encode_fastavro(self, record: Mapping[str, Any]) -> bytes:
        buf = io.BytesIO()
        buf.write(self._header)
        try:
            fastavro.schemaless_writer(buf, self._schema, record)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            raise RecordInvalidError(f"{self.name}: cannot encode: {exc}") from exc
        return buf.getvalue()

    def accepts(self, data: bytes | None) -> bool:
        """Whether `data` names a writer schema of this record type (no decoding)."""
        if not data or len(data) < _HEADER or data[:2] != MARKER:
            return False
        return bytes(data[2:_HEADER]) in self._readers

    def decode(self, data: bytes | None) -> dict[str, Any]:
        if not data:
            raise RecordInvalidError(f"{self.name}: empty payload")
        if len(data) < _HEADER or data[:2] != MARKER:
            raise DecodeError(f"{self.name}: not Avro single-object encoding (bad marker)")
        fp = bytes(data[2:_HEADER])
        if fp not in self._readers:
            raise UnknownSchemaError(f"{self.name}: unknown writer schema fingerprint {fp.hex()}")
        writer = self._readers[fp]
        buf = io.BytesIO(data)
        buf.seek(_HEADER)
        try:
            if writer is None:
                record = fastavro.schemaless_reader(buf, self._schema, None)
            else:
                record = fastavro.schemaless_reader(buf, writer, self._schema)
        except Exception as exc:  # fastavro raises many types on garbage input
            raise RecordInvalidError(f"{self.name}: body does not match its schema: "
                                     f"{type(exc).__name__}") from exc
        if buf.tell() != len(data):
            raise RecordInvalidError(f"{self.name}: {len(data) - buf.tell()} trailing bytes")
        if not isinstance(record, dict):
            raise RecordInvalidError(f"{self.name}: not a record")
        return record


@dataclass(frozen=True)
class SchemaSet:
    """The codecs of every record type, built from one schema folder."""

    intent: RecordCodec
    lifecycle: RecordCodec
    verdict: RecordCodec
    orphan_alert: RecordCodec
    decision_record: RecordCodec
    orphan_check: RecordCodec
    dead_letter: RecordCodec
    public_key: RecordCodec
    approval_request: RecordCodec
    approval_decision: RecordCodec
    approval_timeout: RecordCodec
    approval_alert: RecordCodec
    policy_bundle: RecordCodec
    policy_activation: RecordCodec
    budget_ledger: RecordCodec
    budget_message: RecordCodec
    budget_hold: RecordCodec

    @classmethod
    def load(cls, folder: Path) -> SchemaSet:
        current = {stem: json.loads((folder / f"{stem}.avsc").read_text()) for stem in _FILES}
        # history/<stem>.v<N>.avsc: the files of one N form one earlier generation, holding
        # the record types that changed after it. A type they refer to resolves within that
        # generation, else as the nearest later generation has it (it had not changed since),
        # else to the current file; so a DecisionRecord written before ActionIntent changed
        # keeps its own fingerprint, however many generations ago it was written.
        generations: dict[int, dict[str, Any]] = {}
        for path in sorted((folder / "history").glob("*.v*.avsc")):
            stem, _, version = path.name.removesuffix(".avsc").rpartition(".v")
            if stem not in current or not version.isdigit():
                raise ConfigError("schemas_dir", f"{path}: expected <record>.v<N>.avsc")
            generations.setdefault(int(version), {})[stem] = json.loads(path.read_text())
        history: dict[str, list[Any]] = {stem: [] for stem in _FILES}
        ordered = sorted(generations)
        for i, generation in enumerate(ordered):
            files = generations[generation]
            as_then = dict(current)
            for later in reversed(ordered[i + 1:]):  # the nearest later generation wins
                as_then.update(generations[later])
            for stem, expanded in _expand_all({**as_then, **files}).items():
                if stem in files:
                    history[stem].append(expanded)
        return cls(**{stem: RecordCodec(current[stem]["name"], expanded, history[stem])
                      for stem, expanded in _expand_all(current).items()})


def _expand_all(raw_by_stem: Mapping[str, Any]) -> dict[str, Any]:
    """Each schema with every named type it uses inlined (self-contained, fingerprintable)."""
    named: dict[str, Any] = {}
    expanded = {}
    for stem in _FILES:
        raw = raw_by_stem[stem]
        parse_schema(raw, named, _force=True)  # registers its types for the files after it
        expanded[stem] = parse_schema(raw, dict(named), expand=True, _write_hint=False,
                                      _force=True)
    return expanded


@cache
def schemas() -> SchemaSet:
    """The process-wide schema set (parsed once)."""
    return SchemaSet.load(schema_dir())
