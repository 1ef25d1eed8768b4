"""The compiled writer gives fastavro's bytes, or leaves the record to fastavro.

`RecordCodec.encode` tries the writer compiled from the schema first and falls back to
fastavro on anything it is not sure of. For every record type, on generated records and on
records with odd values planted in them, the result must be exactly what fastavro alone
gives: the same bytes, or the same refusal.
"""

from __future__ import annotations

from dataclasses import fields
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatepass.codec import SchemaSet, schemas
from gatepass.codec.avro import RecordCodec
from gatepass.codec.avro_writer import Unsure, compile_writer
from gatepass.errors import RecordInvalidError

CODECS = {f.name: getattr(schemas(), f.name) for f in fields(SchemaSet)}
# What the worker and the SDK write for every intent: these must not drop to fastavro.
HOT = ("intent", "verdict", "decision_record", "orphan_check", "orphan_alert",
       "approval_request", "approval_decision")
ODD = st.sampled_from([None, True, False, 0, -1, 2**31, 2**63, -(2**63) - 1, 1.5, "", "x",
                       b"", b"\x00\xff", (), ("x", 1), [], [1], {}, {"-type": "other"},
                       datetime(2026, 1, 1), Decimal("NaN"), Decimal("1.23456"),
                       Decimal("-0"), Decimal("1E+30")])
_TIMES = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                      timezones=st.sampled_from([UTC, timezone(timedelta(hours=-7)),
                                                 timezone(timedelta(hours=5, minutes=30))]))


def _decimal(schema: dict[str, Any]) -> Any:
    precision, scale = schema["precision"], schema.get("scale", 0)
    limit = Decimal(10) ** (precision - scale) - 1
    return st.decimals(min_value=-limit, max_value=limit, places=scale, allow_nan=False,
                       allow_infinity=False) | st.decimals(places=scale + 2, allow_nan=False,
                                                           allow_infinity=False)


def strategy(schema: Any, odd: bool) -> Any:
    """Values for a parsed, expanded schema; with `odd`, sometimes an odd one instead."""
    plain = _plain(schema, odd)
    return st.one_of(plain, ODD) if odd else plain


def _plain(schema: Any, odd: bool) -> Any:
    if isinstance(schema, list):
        return st.one_of([strategy(b, odd) for b in schema])
    if isinstance(schema, str):
        schema = {"type": schema}
    kind, logical = schema["type"], schema.get("logicalType")
    if logical == "timestamp-millis":
        return _TIMES | st.integers(-(2**62), 2**62)
    if logical == "decimal":
        return _decimal(schema)
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "int":
        return st.integers(-(2**31), 2**31 - 1)
    if kind == "long":
        return st.integers(-(2**63), 2**63 - 1)
    if kind == "string":
        return st.text(max_size=70)
    if kind == "bytes":
        return st.binary(max_size=70)
    if kind == "enum":
        return st.sampled_from(schema["symbols"])
    if kind == "array":
        return st.lists(strategy(schema["items"], odd), max_size=3)
    if kind == "map":
        return st.dictionaries(st.text(max_size=5), strategy(schema["values"], odd),
                               max_size=3)
    if kind == "record":
        required = {f["name"]: strategy(f["type"], odd) for f in schema["fields"]}
        optional = {f["name"]: strategy(f["type"], odd) for f in schema["fields"]
                    if "default" in f}
        for name in optional:
            del required[name]
        return st.fixed_dictionaries(required, optional=optional)
    raise AssertionError(f"no strategy for {schema!r}")


def outcome(fn: Any, record: Any) -> bytes | type[Exception]:
    try:
        return bytes(fn(record))
    except RecordInvalidError:
        return RecordInvalidError


@pytest.mark.parametrize("name", HOT)
def test_what_the_worker_writes_has_a_compiled_writer(name: str) -> None:
    """Fails when a schema change takes one of these off the fast path unnoticed."""
    assert compile_writer(CODECS[name].schema) is not None


@pytest.mark.parametrize("odd", [False, True], ids=["generated", "odd-values-planted"])
@pytest.mark.parametrize("name", sorted(CODECS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_same_bytes_or_same_refusal_as_fastavro(name: str, odd: bool, data: Any) -> None:
    codec = CODECS[name]
    record = data.draw(strategy(codec.schema, odd=odd), label="record")
    assert outcome(codec.encode, record) == outcome(codec._encode_fastavro, record)


def _fast_only(codec: RecordCodec, record: Any) -> bytes:
    writer = compile_writer(codec.schema)
    assert writer is not None
    out = bytearray()
    writer(out, record)
    return bytes(out)


INTENT = {"intent_id": "i-1", "agent_id": "a-1", "action": "purchase_order.create",
          "resource": "vendor:ACME", "audience": "procurement-api",
          "amount": Decimal("120.5000"), "currency": "USD", "context": {"k": "v"},
          "delegation_chain": [], "signature": None,
          "requested_at": datetime(2026, 3, 2, 9, 30, 15, 123456, tzinfo=UTC)}


def test_a_typical_intent_takes_the_fast_path() -> None:
    """The writer really writes (no silent fallback for every record)."""
    codec = CODECS["intent"]
    assert codec._header + _fast_only(codec, INTENT) == codec._encode_fastavro(INTENT)


@pytest.mark.parametrize(("label", "change"), [
    ("naive timestamp: fastavro reads it as local time", {"requested_at": datetime(2026, 1, 1)}),
    ("a float amount", {"amount": 1.5}),
    ("an amount finer than the schema's scale", {"amount": Decimal("1.00001")}),
    ("NaN amount", {"amount": Decimal("NaN")}),
    ("a bool where a string goes", {"currency": True}),
    ("a tuple in a union: fastavro's (name, value) notation", {"currency": ("string", "USD")}),
    ("a required field missing", {"intent_id": None}),
    ("a record with a -type key", {"-type": "other"}),
])
def test_the_fast_path_defers_what_it_is_not_sure_of(label: str, change: dict[str, Any]
                                                      ) -> None:
    record = {**INTENT, **change}
    if change.get("intent_id", "") is None:
        del record["intent_id"]
    with pytest.raises(Unsure):
        _fast_only(CODECS["intent"], record)
    # and the codec still answers as fastavro does
    codec = CODECS["intent"]
    assert outcome(codec.encode, record) == outcome(codec._encode_fastavro, record)


@pytest.mark.parametrize(("millis_of", "expected"), [
    (datetime(1969, 12, 31, 23, 59, 59, 999500, tzinfo=UTC), -1),
    (datetime(1970, 1, 1, 0, 0, 0, 999, tzinfo=UTC), 0),
    (datetime(2026, 3, 2, 9, 30, 15, 123999, tzinfo=UTC), 1772443815123),
])
def test_timestamps_truncate_to_the_millisecond_as_fastavro_does(millis_of: datetime,
                                                                 expected: int) -> None:
    codec = CODECS["intent"]
    record = {**INTENT, "requested_at": millis_of}
    assert codec.encode(record) == codec._encode_fastavro(record)
    assert codec.decode(codec.encode(record))["requested_at"] == \
        datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=expected)


def test_unions_of_several_records_are_left_to_fastavro() -> None:
    """fastavro picks among record branches by validating each: not compiled."""
    assert compile_writer(CODECS["lifecycle"].schema) is None
    assert compile_writer({"type": "record", "name": "R", "fields": [
        {"name": "f", "type": ["null", "string", "long"]}]}) is None
    assert compile_writer({"type": "fixed", "name": "F", "size": 4}) is None
    assert compile_writer({"type": "string", "logicalType": "uuid"}) is None
