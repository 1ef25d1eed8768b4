"""Lifecycle records decoded straight to events: the identity view's hot path.

Every worker folds the whole identity topic at start (docs/benchmarks.md, *recovery*), so
the cost of one record bounds how soon a worker is ready: with a million identities, each
microsecond is a second. Through fastavro a record becomes a dict and then an event, 11-17
us; a principal's 30 bytes alone cost fastavro about 7 us, most of it per-call and
per-field overhead, not decoding. This reader knows one schema, the current
`schemas/lifecycle.avsc`, and builds the event from the bytes directly (6-11 us).

It is used only when the record's writer fingerprint and the codec's current schema are
both `READS_FINGERPRINT`; any other writer schema (the older versions under
schemas/history/) goes through fastavro's schema resolution as before, and so does every
record if the schema file changes (a unit test then fails until this reader is updated).

It reads the Avro binary encoding by the specification, and is stricter than fastavro
where fastavro is lenient: a negative union or enum index (fastavro counts it from the end
of the list), a long of more than 10 bytes. No Avro writer produces these; such a record
is rejected (`RecordInvalidError`) like any other malformed one. Everything else it
accepts exactly when fastavro does, with the same event; `tests/unit/codec/
test_lifecycle_reader.py` checks both on generated records and on mutated bytes.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gatepass.codec.avro import MARKER, RecordCodec
from gatepass.codec.records import lifecycle_from_record
from gatepass.core import (
    AgentRegistered,
    AgentStatus,
    AgentStatusChanged,
    LifecycleEvent,
    PrincipalStatus,
    PrincipalStatusChanged,
)
from gatepass.errors import RecordInvalidError

__all__ = ["READS_FINGERPRINT", "decode_lifecycle"]

# CRC-64-AVRO fingerprint of the lifecycle schema `_read` is written for.
READS_FINGERPRINT = bytes.fromhex("bf7bc8a3ac0783e2")
_BODY = len(MARKER) + len(READS_FINGERPRINT)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Enum symbols by their encoded index (zigzag: symbol k is written as 2k).
_AGENT_STATUS = {2 * i: s for i, s in enumerate(AgentStatus)}
_PRINCIPAL_STATUS = {2 * i: s for i, s in enumerate(PrincipalStatus)}
_U64 = (1 << 64) - 1


def decode_lifecycle(codec: RecordCodec, data: bytes | None) -> LifecycleEvent:
    """The lifecycle event in `data` (single-object encoded), or a DecodeError.

    The same result as `lifecycle_from_record(codec.decode(data))`, faster for records of
    the current schema (see the module doc).
    """
    if (data and codec.fingerprint == READS_FINGERPRINT and data[:2] == MARKER
            and data[2:_BODY] == READS_FINGERPRINT):
        try:
            return _read(bytes(data))
        except (LookupError, ValueError, OverflowError) as exc:
            raise RecordInvalidError(f"{codec.name}: body does not match its schema: "
                                     f"{type(exc).__name__}") from exc
    return lifecycle_from_record(codec.decode(data))


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """The unsigned varint at `pos` (before zigzag) and the position after it."""
    b = data[pos]
    n, shift = b & 0x7F, 7
    while b & 0x80:
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")
        pos += 1
        b = data[pos]
        n |= (b & 0x7F) << shift
        shift += 7
    return n & _U64, pos + 1


def _long(data: bytes, pos: int) -> tuple[int, int]:
    n, pos = _varint(data, pos)
    return (n >> 1) ^ -(n & 1), pos


def _index(data: bytes, pos: int) -> tuple[int, int]:
    """A union or enum index as encoded: 2k for index k. The callers compare it with the
    even values they know, so a negative index (odd) matches nothing and is refused."""
    n = data[pos]
    if n & 0x80:
        return _varint(data, pos)
    return n, pos + 1


def _str(data: bytes, pos: int) -> tuple[str, int]:
    n = data[pos]
    if n & 0x80:
        n, pos = _varint(data, pos)
    else:
        pos += 1
    if n & 1:
        raise ValueError("negative length")
    end = pos + (n >> 1)
    # A length past the end gives a short string here; the next field's read then fails
    # (every branch ends with `recorded_at`).
    return data[pos:end].decode(), end


def _opt_str(data: bytes, pos: int) -> tuple[str | None, int]:
    u, pos = _index(data, pos)
    if u == 0:
        return None, pos
    if u == 2:
        return _str(data, pos)
    raise ValueError("union index")


def _time(ms: int) -> datetime:
    # fastavro's timestamp-millis: epoch + timedelta(microseconds=ms * 1000); positional
    # arguments (days, seconds, microseconds) build the same value a third faster.
    return _EPOCH + timedelta(0, 0, ms * 1000)


def _read(data: bytes) -> LifecycleEvent:
    at, pos = _long(data, _BODY)
    source, pos = _str(data, pos)
    event_id, pos = _str(data, pos)
    branch, pos = _index(data, pos)
    if branch == 0:
        agent_id, pos = _str(data, pos)
        owner, pos = _str(data, pos)
        purpose, pos = _str(data, pos)
        department, pos = _opt_str(data, pos)
        contact, pos = _opt_str(data, pos)
        created_by, pos = _opt_str(data, pos)
        public_key, pos = _opt_str(data, pos)
        recorded_at, pos = _recorded_at(data, pos)
        return AgentRegistered(agent_id=agent_id, owner=owner, purpose=purpose,
                               department=department, contact=contact,
                               created_by=created_by, public_key=public_key,
                               event_time=_time(at), source=source,
                               source_event_id=event_id, recorded_at=recorded_at)
    if branch == 2:
        agent_id, pos = _str(data, pos)
        status, pos = _index(data, pos)
        recorded_at, pos = _recorded_at(data, pos)
        return AgentStatusChanged(agent_id=agent_id, status=_AGENT_STATUS[status],
                                  event_time=_time(at), source=source,
                                  source_event_id=event_id, recorded_at=recorded_at)
    if branch == 4:
        principal_id, pos = _str(data, pos)
        status, pos = _index(data, pos)
        recorded_at, pos = _recorded_at(data, pos)
        return PrincipalStatusChanged(principal_id=principal_id,
                                      status=_PRINCIPAL_STATUS[status],
                                      event_time=_time(at), source=source,
                                      source_event_id=event_id, recorded_at=recorded_at)
    raise ValueError("union index")


def _recorded_at(data: bytes, pos: int) -> tuple[datetime | None, int]:
    """The last field: also checks that nothing follows it."""
    u, pos = _index(data, pos)
    if u == 0:
        value = None
    elif u == 2:
        ms, pos = _long(data, pos)
        value = _time(ms)
    else:
        raise ValueError("union index")
    if pos != len(data):
        raise ValueError("trailing bytes")
    return value, pos
