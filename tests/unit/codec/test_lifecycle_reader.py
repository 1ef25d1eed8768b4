"""The direct lifecycle reader agrees with fastavro's, or is stricter only on bytes no Avro
writer produces (see gatepass.codec.lifecycle_reader)."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatepass.codec import MARKER, schema_dir, schemas
from gatepass.codec.avro import SchemaSet
from gatepass.codec.lifecycle_reader import READS_FINGERPRINT, decode_lifecycle
from gatepass.codec.records import lifecycle_from_record, lifecycle_to_record
from gatepass.core import (
    AgentRegistered,
    AgentStatus,
    AgentStatusChanged,
    LifecycleEvent,
    PrincipalStatus,
    PrincipalStatusChanged,
)
from gatepass.errors import DecodeError, RecordInvalidError, UnknownSchemaError

CODEC = schemas().lifecycle
AT = datetime(2026, 11, 29, 12, 0, 0, 123000, tzinfo=UTC)


def _slow(data: bytes) -> LifecycleEvent:
    return lifecycle_from_record(CODEC.decode(data))


def _encode(event: LifecycleEvent) -> bytes:
    return CODEC.encode(lifecycle_to_record(event))


def test_written_for_the_current_schema() -> None:
    """Fails when schemas/lifecycle.avsc changes: update `_read` (and READS_FINGERPRINT)
    for the new schema, or every lifecycle record silently takes the slower path."""
    assert CODEC.fingerprint == READS_FINGERPRINT


@pytest.mark.parametrize("event", [
    PrincipalStatusChanged(principal_id="p-1", status=PrincipalStatus.OFFBOARDED,
                           event_time=AT, source="hr", source_event_id="e-1"),
    PrincipalStatusChanged(principal_id="p-1", status=PrincipalStatus.SUSPENDED,
                           event_time=AT + timedelta(days=3), source="hr",
                           recorded_at=AT),
    AgentStatusChanged(agent_id="a-1", status=AgentStatus.DECOMMISSIONED, event_time=AT,
                       source="okta"),
    AgentRegistered(agent_id="a-1", owner="p-1", purpose="procurement", event_time=AT,
                    source="entra"),
    AgentRegistered(agent_id="ä-ü", owner="p-1", purpose="x" * 300, department="fin",
                    contact="c@example.com", created_by="p-2", public_key="k" * 43,
                    event_time=datetime(1969, 7, 20, tzinfo=UTC), source="cli",
                    source_event_id="é", recorded_at=AT),
], ids=["offboarded", "scheduled", "agent-status", "registered", "registered-full"])
def test_each_event_kind_reads_back_as_written(event: LifecycleEvent) -> None:
    data = _encode(event)
    assert decode_lifecycle(CODEC, data) == event == _slow(data)
    assert decode_lifecycle(CODEC, memoryview(data)) == event


_TEXT = st.text(max_size=12)
_TIMES = st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1),
                      timezones=st.just(UTC)).map(
                          lambda t: t.replace(microsecond=t.microsecond // 1000 * 1000))
_OPT = st.none() | _TEXT
_SOURCE = {"event_time": _TIMES, "source": _TEXT, "source_event_id": _TEXT,
           "recorded_at": st.none() | _TIMES}
EVENTS = st.one_of(
    st.builds(AgentRegistered, agent_id=_TEXT, owner=_TEXT, purpose=_TEXT, department=_OPT,
              contact=_OPT, created_by=_OPT, public_key=_OPT, **_SOURCE),
    st.builds(AgentStatusChanged, agent_id=_TEXT, status=st.sampled_from(AgentStatus),
              **_SOURCE),
    st.builds(PrincipalStatusChanged, principal_id=_TEXT,
              status=st.sampled_from(PrincipalStatus), **_SOURCE),
)


@settings(max_examples=400, deadline=None)
@given(event=EVENTS)
def test_generated_events_read_back_the_same_both_ways(event: LifecycleEvent) -> None:
    data = _encode(event)
    assert decode_lifecycle(CODEC, data) == event == _slow(data)


def _outcome(read: object, data: bytes) -> LifecycleEvent | None:
    try:
        return read(data)  # type: ignore[operator, no-any-return]
    except (DecodeError, KeyError, ValueError, TypeError):  # what the loader counts rejected
        return None


def _agree(data: bytes) -> None:
    fast = _outcome(lambda d: decode_lifecycle(CODEC, d), data)
    slow = _outcome(_slow, data)
    if fast is not None:
        assert slow == fast, "accepted by the direct reader only, or read differently"
    elif slow is not None:
        # Refused here, read by fastavro: allowed only for an encoding no writer makes,
        # i.e. not the bytes the event encodes to (negative index, over-long varint).
        assert _encode(slow) != data, f"refused a canonical record: {slow!r}"


@settings(max_examples=400, deadline=None)
@given(event=EVENTS, position=st.integers(min_value=0), value=st.integers(0, 255))
def test_a_changed_byte_is_read_alike_or_refused(event: LifecycleEvent, position: int,
                                                  value: int) -> None:
    data = bytearray(_encode(event))
    at = 10 + position % (len(data) - 10)  # the body, past marker and fingerprint
    data[at] = value
    _agree(bytes(data))


@settings(max_examples=300, deadline=None)
@given(event=EVENTS, cut=st.integers(min_value=0), extra=st.binary(max_size=4))
def test_a_cut_or_extended_record_is_refused_alike(event: LifecycleEvent, cut: int,
                                                   extra: bytes) -> None:
    data = _encode(event)
    _agree(data[:10 + cut % (len(data) - 9)] + extra)


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=80))
def test_random_bodies_are_read_alike_or_refused(body: bytes) -> None:
    _agree(MARKER + READS_FINGERPRINT + body)


NEGATIVE_UNION_INDEX = b"\x02\x00\x00\x01\x02p\x00\x00"
NEGATIVE_ENUM_INDEX = b"\x02\x00\x00\x04\x02p\x01\x00"


def test_fastavro_reads_negative_indexes_from_the_end() -> None:
    """Why the direct reader is stricter there: fastavro takes index -1 as the last union
    branch or enum symbol. No Avro writer writes one."""
    assert isinstance(_slow(MARKER + READS_FINGERPRINT + NEGATIVE_UNION_INDEX),
                      PrincipalStatusChanged)
    assert _slow(MARKER + READS_FINGERPRINT + NEGATIVE_ENUM_INDEX).status is \
        PrincipalStatus.OFFBOARDED


@pytest.mark.parametrize(("body", "why"), [
    (NEGATIVE_UNION_INDEX, "negative union index"),
    (NEGATIVE_ENUM_INDEX, "negative enum index"),
    (b"\x82" + b"\x80" * 9 + b"\x00\x00\x00\x04\x02p\x00\x00", "long over 10 bytes"),
    (b"\x02\x00\x00\x04\x02p\x06\x00", "enum index past the symbols"),
    (b"\x02\x00\x00\x06", "union index past the branches"),
    (b"\x02\x00\x00\x04\x03", "negative string length"),
    (b"\x02\x00\x00\x04\x08p", "string past the end"),
    (b"\x02\x00\x00\x04\x02\xff\x00\x00", "invalid UTF-8"),
    (b"\x02\x00\x00\x04\x02p\x00\x00\x00", "trailing byte"),
    (b"\x02\x00\x00\x04\x02p\x00\x02" + b"\xfe" * 9 + b"\x01", "time out of range"),
])
def test_malformed_bodies_are_record_invalid(body: bytes, why: str) -> None:
    with pytest.raises(RecordInvalidError, match="body does not match its schema"):
        decode_lifecycle(CODEC, MARKER + READS_FINGERPRINT + body)


def test_the_smallest_valid_body_reads() -> None:
    """The table above differs from this by one byte each: it is the bytes, not the frame."""
    event = decode_lifecycle(CODEC, MARKER + READS_FINGERPRINT + b"\x02\x00\x00\x04\x02p\x00\x00")
    assert event == PrincipalStatusChanged(principal_id="p", status=PrincipalStatus.ACTIVE,
                                           event_time=datetime(1970, 1, 1, 0, 0, 0, 1000,
                                                               tzinfo=UTC), source="")


def test_a_ten_byte_long_wraps_to_64_bits_like_fastavro() -> None:
    """Bits past the 64th are dropped (fastavro reads into an unsigned 64-bit integer)."""
    data = MARKER + READS_FINGERPRINT + b"\x80" * 9 + b"\x7e\x00\x00\x04\x02p\x00\x00"
    assert decode_lifecycle(CODEC, data) == _slow(data)
    assert decode_lifecycle(CODEC, data).event_time == datetime(1970, 1, 1, tzinfo=UTC)


def test_a_non_minimal_varint_reads_like_fastavro() -> None:
    data = MARKER + READS_FINGERPRINT + b"\x82\x00\x00\x00\x84\x00\x82\x00p\x80\x00\x80\x00"
    assert decode_lifecycle(CODEC, data) == _slow(data)


def test_other_writer_schemas_and_frames_take_fastavro() -> None:
    with pytest.raises(UnknownSchemaError):
        decode_lifecycle(CODEC, MARKER + b"\x00" * 8 + b"\x02\x00\x00\x04\x02p\x00\x00")
    with pytest.raises(RecordInvalidError, match="empty"):
        decode_lifecycle(CODEC, b"")
    with pytest.raises(DecodeError, match="bad marker"):
        decode_lifecycle(CODEC, b"\xc3\x02" + READS_FINGERPRINT + b"\x00")


def test_an_older_writer_schema_is_resolved_by_fastavro(tmp_path: Path) -> None:
    """A record of lifecycle.v2 (before agent keys) is not the current schema's bytes: it
    goes through fastavro's resolution and reads with the newer field's default."""
    folder = tmp_path / "schemas"
    folder.mkdir()
    for avsc in schema_dir().glob("*.avsc"):
        shutil.copy(avsc, folder / avsc.name)
    shutil.copy(schema_dir() / "history" / "lifecycle.v2.avsc", folder / "lifecycle.avsc")
    old = SchemaSet.load(folder).lifecycle
    assert old.fingerprint != READS_FINGERPRINT
    data = old.encode({"event_time": AT, "source": "okta", "source_event_id": "e-1",
                       "event": ("dev.gatepass.v1.AgentRegistered", {
                           "agent_id": "a-1", "owner": "p-1", "purpose": "procurement",
                           "department": None, "contact": None, "created_by": None}),
                       "recorded_at": None})
    assert decode_lifecycle(CODEC, data) == AgentRegistered(
        agent_id="a-1", owner="p-1", purpose="procurement", public_key=None, event_time=AT,
        source="okta", source_event_id="e-1")


def test_a_codec_of_another_schema_never_takes_the_direct_path(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """If the codec's schema is not the one `_read` knows, fastavro decodes everything."""
    import gatepass.codec.lifecycle_reader as reader

    calls: list[bytes] = []
    monkeypatch.setattr(reader, "_read", lambda data: calls.append(data))
    monkeypatch.setattr(reader, "READS_FINGERPRINT", b"\x00" * 8)
    event = PrincipalStatusChanged(principal_id="p-1", status=PrincipalStatus.ACTIVE,
                                   event_time=AT, source="hr")
    assert reader.decode_lifecycle(CODEC, _encode(event)) == event
    assert calls == []
