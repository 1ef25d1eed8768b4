"""Intent signatures: the signed bytes are pinned, deterministic and survive the topic."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from gatepass.codec import schemas
from gatepass.codec.records import intent_from_record, intent_to_record
from gatepass.core import (
    INTENT_SIGNING_LABEL,
    Intent,
    intent_signature_problem,
    intent_signing_input,
    key_thumbprint,
    sign_intent,
)
from gatepass.credentials._jose import b64url_decode
from gatepass.sdk import agent_public_key

AT = datetime(2026, 11, 29, 12, 0, 0, 123000, tzinfo=UTC)
INTENT = Intent(intent_id="7b0e4c8e-2f4e-4a53-9a57-6a3d1b1d2c11", agent_id="procure-bot",
                action="purchase_order.create", resource="vendor:ACME",
                audience="procurement-api", amount=Decimal("120.00"), currency="USD",
                context={"ticket": "PROC-4411", "a": "b"}, requested_at=AT,
                delegation_chain=("planner-bot",))
# RFC 8037 appendix A.1: the Ed25519 key of the JOSE examples, and its A.3 thumbprint.
RFC8037_D = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"
RFC8037_X = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
RFC8037_JKT = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
KEY = Ed25519PrivateKey.from_private_bytes(b64url_decode(RFC8037_D))


def test_the_signing_input_is_pinned() -> None:
    """The documented format, byte for byte: other SDKs must produce exactly this."""
    assert intent_signing_input(INTENT) == (
        b'{"action":"purchase_order.create","agent_id":"procure-bot","amount":"120",'
        b'"audience":"procurement-api","context":{"a":"b","ticket":"PROC-4411"},'
        b'"currency":"USD","delegation_chain":["planner-bot"],'
        b'"intent_id":"7b0e4c8e-2f4e-4a53-9a57-6a3d1b1d2c11","label":"gatepass-intent-v1",'
        b'"requested_at":1795953600123,"resource":"vendor:ACME"}')
    assert INTENT_SIGNING_LABEL == "gatepass-intent-v1"


def test_without_amount_or_currency_they_are_null() -> None:
    text = intent_signing_input(replace(INTENT, amount=None, currency=None)).decode()
    assert '"amount":null' in text and '"currency":null' in text


def test_the_signature_is_not_part_of_what_is_signed() -> None:
    assert intent_signing_input(replace(INTENT, signature="abc")) == intent_signing_input(INTENT)


@pytest.mark.parametrize("amount", ["120", "120.00", "120.0000", "1.2E+2", "0.12e3"])
def test_one_amount_written_any_way_signs_the_same(amount: str) -> None:
    assert intent_signing_input(replace(INTENT, amount=Decimal(amount))) == \
        intent_signing_input(INTENT)


def test_time_zone_and_sub_millisecond_digits_do_not_matter() -> None:
    other_zone = AT.astimezone(timezone(timedelta(hours=5, minutes=30)))
    finer = AT + timedelta(microseconds=999)
    for same in (other_zone, finer):
        assert intent_signing_input(replace(INTENT, requested_at=same)) == \
            intent_signing_input(INTENT)
    later = AT + timedelta(milliseconds=1)
    assert intent_signing_input(replace(INTENT, requested_at=later)) != \
        intent_signing_input(INTENT)


CHANGES: list[tuple[str, Any]] = [
    ("intent_id", "7b0e4c8e-2f4e-4a53-9a57-6a3d1b1d2c12"), ("agent_id", "other-bot"),
    ("action", "purchase_order.delete"), ("resource", "vendor:ACME2"),
    ("audience", "payments-api"), ("amount", Decimal("120.01")), ("currency", "EUR"),
    ("context", {"ticket": "PROC-4412", "a": "b"}), ("context", {"ticket": "PROC-4411"}),
    ("delegation_chain", ()), ("delegation_chain", ("planner-bot", "x")),
    ("requested_at", AT - timedelta(seconds=1)),
]


@pytest.mark.parametrize(("name", "value"), CHANGES, ids=[f"{n}={v!r}" for n, v in CHANGES])
def test_every_field_is_covered(name: str, value: Any) -> None:
    signed = replace(INTENT, signature=sign_intent(INTENT, KEY))
    changed = replace(signed, **{name: value})
    assert intent_signing_input(changed) != intent_signing_input(INTENT)
    assert intent_signature_problem(changed, RFC8037_X) is not None
    assert intent_signature_problem(signed, RFC8037_X) is None


def test_members_are_ordered_as_rfc_8785_orders_them() -> None:
    """By UTF-16 code units: U+1F600 (a surrogate pair, D83D...) sorts before U+FB01."""
    text = intent_signing_input(replace(INTENT, context={"\ufb01": "1", "\U0001f600": "2"}))
    assert text.decode().index("\U0001f600") < text.decode().index("\ufb01")
    same = intent_signing_input(replace(INTENT, context={"\U0001f600": "2", "\ufb01": "1"}))
    assert same == text


def test_an_intent_that_cannot_be_carried_has_no_signing_input() -> None:
    with pytest.raises(ValueError):
        intent_signing_input(replace(INTENT, requested_at=AT.replace(tzinfo=None)))
    with pytest.raises(ValueError):  # a lone surrogate is not UTF-8
        intent_signing_input(replace(INTENT, resource="vendor:\ud800"))


def test_rfc_8037_key_signs_and_verifies_with_its_known_thumbprint() -> None:
    assert agent_public_key(KEY) == RFC8037_X
    assert key_thumbprint(RFC8037_X) == RFC8037_JKT
    signature = sign_intent(INTENT, KEY)
    assert len(b64url_decode(signature)) == 64
    assert sign_intent(INTENT, KEY) == signature  # Ed25519 is deterministic
    assert intent_signature_problem(replace(INTENT, signature=signature), RFC8037_X) is None


@pytest.mark.parametrize("x", ["", "AA", RFC8037_X + "A", RFC8037_X + "=", "*" * 43,
                               "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"])
def test_unusable_keys_have_no_thumbprint_and_verify_nothing(x: str) -> None:
    with pytest.raises(ValueError):
        key_thumbprint(x)
    signed = replace(INTENT, signature=sign_intent(INTENT, KEY))
    assert intent_signature_problem(signed, x) is not None


# ---- through the topic ---------------------------------------------------------------------
_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,20}", fullmatch=True)
_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)


@st.composite
def intents(draw: st.DrawFn) -> Intent:
    amount = draw(st.none() | st.decimals(min_value=0, max_value=Decimal("99999999999999"),
                                          places=draw(st.integers(0, 4)),
                                          allow_nan=False, allow_infinity=False))
    return Intent(
        intent_id=str(draw(st.uuids())), agent_id=draw(_ids), action="a.b",
        resource=draw(_text), audience=draw(_ids), amount=amount,
        currency=None if amount is None else draw(st.sampled_from(["USD", "EUR"])),
        context=draw(st.dictionaries(_text, _text, max_size=4)),
        requested_at=draw(st.datetimes(min_value=datetime(2000, 1, 1),
                                       max_value=datetime(2100, 1, 1),
                                       timezones=st.just(UTC))),
        delegation_chain=tuple(draw(st.lists(_ids, max_size=3, unique=True))))


@settings(deadline=None)  # a shared machine must not make a slow example a failure
@given(intents())
def test_a_signed_intent_verifies_after_the_topic(intent: Intent) -> None:
    """What the SDK signs is what the worker checks, after Avro encode/decode."""
    signed = replace(intent, signature=sign_intent(intent, KEY))
    codec = schemas().intent
    received = intent_from_record(codec.decode(codec.encode(intent_to_record(signed))))
    assert received.signature == signed.signature
    assert intent_signing_input(received) == intent_signing_input(intent)
    assert intent_signature_problem(received, RFC8037_X) is None
