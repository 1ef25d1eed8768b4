"""Issuer: exact header and claims, determinism, TTL bounds, actor chains, audit-safe output."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import jwt
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from gatepass.credentials import (
    MAX_PASS_TTL,
    PASS_TYP,
    KeyStore,
    PassIssuer,
    PassRequest,
    scope_hash,
    token_hash,
)
from gatepass.credentials._jose import b64url_decode, b64url_encode
from gatepass.credentials.issuer import PASS_ID_NAMESPACE
from gatepass.errors import ConfigError, CredentialError

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
T = int(NOW.timestamp())
ISSUER = "https://gatepass.test"
TTL = timedelta(minutes=5)


def make_request(**overrides: Any) -> PassRequest:
    fields: dict[str, Any] = {
        "intent_id": "intent-1",
        "agent_id": "agent-7",
        "audience": "payments",
        "action": "pay",
        "resource": "invoice/42",
        "amount": Decimal("120.00"),
        "currency": "eur",
        "owner": "alice",
        "delegation_chain": (),
        "policy_version": "policy-v3",
        "issued_at": NOW,
    }
    fields.update(overrides)
    return PassRequest(**fields)


def decode(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header, payload, _ = token.split(".")
    return json.loads(b64url_decode(header)), json.loads(b64url_decode(payload))


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    return KeyStore.open(tmp_path / "keys", now=NOW)


@pytest.fixture
def issuer(store: KeyStore) -> PassIssuer:
    return PassIssuer(store, issuer=ISSUER, ttl=TTL)


def test_header_is_exactly_alg_kid_typ(store: KeyStore, issuer: PassIssuer) -> None:
    header, _ = decode(issuer.issue(make_request()).token)
    assert header == {"alg": "EdDSA", "kid": store.active.kid, "typ": PASS_TYP}
    assert PASS_TYP == "gatepass-pass+jwt"


def test_claims(issuer: PassIssuer) -> None:
    issued = issuer.issue(make_request())
    _, claims = decode(issued.token)
    assert claims == {
        "iss": ISSUER,
        "sub": "agent-7",
        "aud": "payments",
        "iat": T,
        "nbf": T,
        "exp": T + 300,
        "jti": str(uuid.uuid5(PASS_ID_NAMESPACE, "intent-1")),
        "intent_id": "intent-1",
        "scope": scope_hash("pay", "invoice/42", Decimal("120"), "EUR"),
        "authorization_details": [
            {
                "type": "gatepass_action",
                "actions": ["pay"],
                "locations": ["payments"],
                "identifier": "invoice/42",
                "amount": {"value": "120", "currency": "EUR"},
            }
        ],
        "owner": "alice",
        "policy_version": "policy-v3",
    }
    assert issued.credential_id == claims["jti"]
    assert issued.issued_at == NOW and issued.expires_at == NOW + TTL


def test_authorization_details_without_amount(issuer: PassIssuer) -> None:
    _, claims = decode(issuer.issue(make_request(amount=None, currency=None)).token)
    assert "amount" not in claims["authorization_details"][0]
    assert claims["scope"] == scope_hash("pay", "invoice/42", None, None)


def test_times_are_whole_seconds(issuer: PassIssuer) -> None:
    _, claims = decode(issuer.issue(make_request(issued_at=NOW + timedelta(seconds=0.9))).token)
    assert (claims["iat"], claims["nbf"], claims["exp"]) == (T, T, T + 300)


def test_same_request_same_key_gives_the_same_token_bytes(store: KeyStore) -> None:
    first = PassIssuer(store, issuer=ISSUER, ttl=TTL).issue(make_request())
    second = PassIssuer(store, issuer=ISSUER, ttl=TTL).issue(make_request())
    assert first.token == second.token
    assert first == second


def test_credential_id_is_derived_from_the_intent(issuer: PassIssuer) -> None:
    a = issuer.issue(make_request())
    later = issuer.issue(make_request(issued_at=NOW + timedelta(minutes=1)))
    other = issuer.issue(make_request(intent_id="intent-2"))
    assert a.token != later.token
    assert a.credential_id == later.credential_id != other.credential_id


def test_scope_hash_pins_its_canonical_form() -> None:
    canonical = b'{"action":"pay","amount":"120","currency":"EUR","resource":"invoice/42"}'
    expected = b64url_encode(hashlib.sha256(canonical).digest())
    for amount in ("120", "120.00", "1.2E+2", "120.000000"):
        assert scope_hash("pay", "invoice/42", Decimal(amount), "eur") == expected
    assert scope_hash("pay", "invoice/42", Decimal("120.01"), "EUR") != expected
    assert scope_hash("pay", "invoice/42", Decimal("120"), "USD") != expected
    assert scope_hash("pay", "invoice/43", Decimal("120"), "EUR") != expected
    assert scope_hash("refund", "invoice/42", Decimal("120"), "EUR") != expected
    assert scope_hash("pay", "invoice/42", None, None) != scope_hash(
        "pay", "invoice/42", Decimal(0), None
    )
    assert scope_hash("x", "y", Decimal("-0.00"), None) == scope_hash("x", "y", Decimal(0), None)
    with pytest.raises(ValueError):
        scope_hash("x", "y", Decimal("NaN"), None)
    with pytest.raises(TypeError):
        scope_hash("x", "y", 1.5, None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "ttl",
    [
        timedelta(0),
        timedelta(seconds=-1),
        MAX_PASS_TTL + timedelta(seconds=1),
        timedelta(days=1),
        timedelta(seconds=1.5),
    ],
)
def test_ttl_out_of_bounds_is_a_config_error(store: KeyStore, ttl: timedelta) -> None:
    with pytest.raises(ConfigError) as err:
        PassIssuer(store, issuer=ISSUER, ttl=ttl)
    assert err.value.key == "pass_ttl" and err.value.code == "config_invalid"


def test_ttl_of_exactly_one_hour_is_allowed(store: KeyStore) -> None:
    issued = PassIssuer(store, issuer=ISSUER, ttl=MAX_PASS_TTL).issue(make_request())
    assert issued.expires_at - issued.issued_at == timedelta(hours=1)


def test_empty_issuer_is_a_config_error(store: KeyStore) -> None:
    with pytest.raises(ConfigError) as err:
        PassIssuer(store, issuer="", ttl=TTL)
    assert err.value.key == "pass_issuer"


@pytest.mark.parametrize(
    ("chain", "act"),
    [
        ((), None),
        (("a",), {"sub": "a"}),
        (("a", "b"), {"sub": "b", "act": {"sub": "a"}}),
        (("a", "b", "c"), {"sub": "c", "act": {"sub": "b", "act": {"sub": "a"}}}),
    ],
)
def test_delegation_chain_becomes_nested_act(
    issuer: PassIssuer, chain: tuple[str, ...], act: dict[str, Any] | None
) -> None:
    _, claims = decode(issuer.issue(make_request(delegation_chain=chain)).token)
    assert claims.get("act") == act


def test_token_hash_is_base64url_sha256_of_the_token(issuer: PassIssuer) -> None:
    issued = issuer.issue(make_request())
    digest = hashlib.sha256(issued.token.encode()).digest()
    assert issued.token_hash == b64url_encode(digest) == token_hash(issued.token)
    assert len(issued.token_hash) == 43


def test_issued_pass_repr_hides_the_token(issuer: PassIssuer) -> None:
    issued = issuer.issue(make_request())
    for shown in (repr(issued), str(issued), f"{issued}"):
        assert issued.token not in shown
        for segment in issued.token.split("."):
            assert segment not in shown
        assert issued.credential_id in shown and issued.kid in shown
        assert issued.expires_at.isoformat() in shown


def test_rotation_switches_the_signing_key(store: KeyStore, issuer: PassIssuer) -> None:
    before = issuer.issue(make_request())
    new_kid = store.rotate(now=NOW, grace=timedelta(minutes=10))
    after = issuer.issue(make_request())
    assert before.kid != after.kid == new_kid
    assert decode(after.token)[0]["kid"] == new_kid


def test_pass_verifies_with_an_independent_jose_library(
    store: KeyStore, issuer: PassIssuer
) -> None:
    issued = issuer.issue(make_request(delegation_chain=("a",)))
    claims = jwt.decode(
        issued.token,
        key=store.active.public_key,
        algorithms=["EdDSA"],
        audience="payments",
        issuer=ISSUER,
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )
    assert claims["act"] == {"sub": "a"}
    assert jwt.get_unverified_header(issued.token)["typ"] == PASS_TYP


@pytest.mark.parametrize(
    "overrides",
    [
        {"agent_id": ""},
        {"intent_id": 7},
        {"policy_version": ""},
        {"amount": 1.5},
        {"amount": Decimal("NaN")},
        {"amount": Decimal("Infinity")},
        {"currency": ""},
        {"delegation_chain": ["a"]},
        {"delegation_chain": ("a", "")},
        {"issued_at": datetime(2025, 6, 1, 12, 0)},  # naive
    ],
)
def test_invalid_requests_are_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises(CredentialError) as err:
        make_request(**overrides)
    assert err.value.code == "credential_invalid"


def test_request_is_frozen() -> None:
    req = make_request()
    with pytest.raises(AttributeError):
        req.amount = Decimal(1)  # type: ignore[misc]
    assert replace(req, amount=None).amount is None


@given(
    st.decimals(allow_nan=False, allow_infinity=False, places=None),
    st.integers(min_value=0, max_value=6),
)
def test_scope_hash_ignores_trailing_zeros(amount: Decimal, extra_zeros: int) -> None:
    sign, digits, exponent = amount.as_tuple()
    assert isinstance(exponent, int)
    # Amounts needing more than 1000 digits either side of the point match no pass (below).
    assume(-1000 <= amount.adjusted() <= 1000 and exponent - extra_zeros >= -1000)
    padded = Decimal((sign, (*digits, *(0,) * extra_zeros), exponent - extra_zeros))
    assert padded == amount
    assert scope_hash("pay", "r", padded, "eur") == scope_hash("pay", "r", amount, "EUR")


@pytest.mark.parametrize("amount", ["1e999999999", "1e-999999999", "1E+1001"])
def test_scope_hash_refuses_amounts_too_long_to_write_out(amount: str) -> None:
    """'1e999999999' in plain notation is a gigabyte of digits: refused, never formatted."""
    with pytest.raises(ValueError, match="out of range"):
        scope_hash("pay", "r", Decimal(amount), "EUR")


# ---- key binding (cnf.jkt, RFC 9449 section 6.1) -----------------------------------------
JKT = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"  # RFC 8037 A.3


def test_a_pass_for_a_keyed_agent_is_bound_to_its_key(issuer: PassIssuer) -> None:
    _, claims = decode(issuer.issue(make_request(cnf_jkt=JKT)).token)
    assert claims["cnf"] == {"jkt": JKT}
    _, bearer = decode(issuer.issue(make_request()).token)
    assert "cnf" not in bearer  # no key: a bearer pass, exactly as before


def test_a_bound_pass_is_reproduced_byte_for_byte(issuer: PassIssuer) -> None:
    assert issuer.issue(make_request(cnf_jkt=JKT)).token == \
        issuer.issue(make_request(cnf_jkt=JKT)).token


@pytest.mark.parametrize("jkt", ["", "short", JKT + "A", JKT[:-1] + "=", 42])
def test_a_malformed_thumbprint_is_refused(jkt: Any) -> None:
    with pytest.raises(CredentialError, match="cnf_jkt"):
        make_request(cnf_jkt=jkt)
