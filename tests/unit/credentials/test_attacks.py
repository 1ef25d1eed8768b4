"""One named test per known attack on passes (after pyjwt's test_advisory.py).

Each attack token is built by hand (base64url + JSON + a signature) the way an attacker would
send it, and each test asserts the specific error class that stops it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from gatepass.credentials import KeyStore, PassIssuer, PassRequest, PassVerifier
from gatepass.errors import (
    AlgorithmNotAllowedError,
    AudienceMismatchError,
    ClaimInvalidError,
    ClaimMissingError,
    HeaderNotAllowedError,
    KeyUnknownError,
    LifetimeExceededError,
    ScopeMismatchError,
    SignatureInvalidError,
    TokenExpiredError,
    TokenMalformedError,
    TokenNotYetValidError,
    TokenReplayedError,
    TokenTooLargeError,
    TypeInvalidError,
)

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
T = int(NOW.timestamp())
TYP = "gatepass-pass+jwt"
AUDIENCE = "payments"
EXECUTED = {"action": "pay", "resource": "invoice/42", "amount": Decimal("120"), "currency": "EUR"}


# --- the attacker's toolbox: no Gatepass code involved in building tokens -----------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def part(value: dict[str, Any] | bytes) -> str:
    return b64(value if isinstance(value, bytes) else json.dumps(value).encode())


def forge(
    header: dict[str, Any] | bytes,
    payload: dict[str, Any] | bytes,
    signer: Callable[[bytes], bytes] | None = None,
) -> str:
    signing_input = f"{part(header)}.{part(payload)}"
    signature = signer(signing_input.encode()) if signer else b""
    return f"{signing_input}.{b64(signature)}"


def ed25519_jwk(key: Ed25519PrivateKey) -> dict[str, str]:
    x = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    thumbprint_input = f'{{"crv":"Ed25519","kty":"OKP","x":"{b64(x)}"}}'.encode()
    kid = b64(hashlib.sha256(thumbprint_input).digest())
    return {"kty": "OKP", "crv": "Ed25519", "x": b64(x), "kid": kid}


@dataclass
class Target:
    """A target system's view: the published JWKS and a verifier, plus a genuine pass."""

    store: KeyStore
    issuer: PassIssuer
    verifier: PassVerifier
    clock: list[float]

    @property
    def kid(self) -> str:
        return self.store.active.kid

    def genuine(self, **overrides: Any) -> str:
        fields: dict[str, Any] = {
            "intent_id": "intent-1",
            "agent_id": "agent-7",
            "audience": AUDIENCE,
            "action": "pay",
            "resource": "invoice/42",
            "amount": Decimal("120"),
            "currency": "EUR",
            "owner": "alice",
            "delegation_chain": (),
            "policy_version": "policy-v3",
            "issued_at": NOW,
        }
        fields.update(overrides)
        return self.issuer.issue(PassRequest(**fields)).token

    def genuine_claims(self) -> dict[str, Any]:
        claims: dict[str, Any] = json.loads(unb64(self.genuine().split(".")[1]))
        return claims

    def header(self, **members: Any) -> dict[str, Any]:
        return {"alg": "EdDSA", "kid": self.kid, "typ": TYP, **members}

    def sign_with_real_key(self, data: bytes) -> bytes:
        # Stands for an issuer bug or a stolen-key scenario: the claim checks must hold anyway.
        return self.store.active.private_key.sign(data)

    def verify(self, token: str, **executed: Any) -> Any:
        return self.verifier.verify(token, **{**EXECUTED, **executed})


@pytest.fixture
def target(tmp_path: Path) -> Target:
    store = KeyStore.open(tmp_path / "keys", now=NOW)
    issuer = PassIssuer(store, issuer="https://gatepass.test", ttl=timedelta(minutes=5))
    clock = [T + 1.0]
    verifier = PassVerifier(
        store.jwks(now=NOW), audience=AUDIENCE, issuer="https://gatepass.test", now=lambda: clock[0]
    )
    return Target(store, issuer, verifier, clock)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A socket on a local port that records any connection (a fetch would show up here)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    yield sock
    sock.close()


def assert_no_connection(sock: socket.socket) -> None:
    with pytest.raises(BlockingIOError):
        sock.accept()


# --- algorithm attacks ------------------------------------------------------------------


def test_alg_none_rejected(target: Target) -> None:
    for alg in ("none", "None", "NONE", "nOnE"):
        token = forge(target.header(alg=alg), target.genuine_claims())
        with pytest.raises(AlgorithmNotAllowedError):
            target.verify(token)
    with pytest.raises(AlgorithmNotAllowedError):  # no alg at all
        target.verify(forge({"kid": target.kid, "typ": TYP}, target.genuine_claims()))


def test_hs256_signed_with_public_key_rejected(target: Target) -> None:
    # Key confusion: HMAC keyed with public material, hoping the verifier uses the JWK as secret.
    public = target.store.active.public_key
    [jwk] = target.store.jwks(now=NOW)["keys"]
    secrets = [
        public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw),
        jwk["x"].encode(),
        json.dumps(jwk).encode(),
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    ]
    for secret in secrets:

        def hs256(data: bytes, secret: bytes = secret) -> bytes:
            return hmac.new(secret, data, hashlib.sha256).digest()

        token = forge(target.header(alg="HS256"), target.genuine_claims(), hs256)
        with pytest.raises(AlgorithmNotAllowedError):
            target.verify(token)


def test_es256_token_rejected(target: Target) -> None:
    key = ec.generate_private_key(ec.SECP256R1())

    def es256(data: bytes) -> bytes:
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    token = forge(target.header(alg="ES256"), target.genuine_claims(), es256)
    with pytest.raises(AlgorithmNotAllowedError):
        target.verify(token)


def test_rs256_token_rejected(target: Target) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = forge(
        target.header(alg="RS256"),
        target.genuine_claims(),
        lambda data: key.sign(data, padding.PKCS1v15(), hashes.SHA256()),
    )
    with pytest.raises(AlgorithmNotAllowedError):
        target.verify(token)


def test_alg_spelling_variants_rejected(target: Target) -> None:
    # Only the exact registered name: no case folding, no "Ed25519" synonym, no list.
    for alg in ("eddsa", "EDDSA", "EdDSA ", "Ed25519", ["EdDSA"]):
        token = forge(target.header(alg=alg), target.genuine_claims(), target.sign_with_real_key)
        with pytest.raises(AlgorithmNotAllowedError):
            target.verify(token)


# --- header injection -------------------------------------------------------------------


def test_unknown_crit_rejected(target: Target) -> None:
    for crit in (["x-gatepass-never"], ["b64"], []):
        header = target.header(crit=crit, **{"x-gatepass-never": True, "b64": False})
        token = forge(header, target.genuine_claims(), target.sign_with_real_key)
        with pytest.raises(HeaderNotAllowedError):
            target.verify(token)


def test_jku_header_never_fetched(target: Target, listener: socket.socket) -> None:
    attacker = Ed25519PrivateKey.generate()
    jwk = ed25519_jwk(attacker)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/jwks.json"
    token = forge(target.header(jku=url, kid=jwk["kid"]), target.genuine_claims(), attacker.sign)
    with pytest.raises(HeaderNotAllowedError):
        target.verify(token)
    assert_no_connection(listener)


def test_x5u_header_rejected(target: Target, listener: socket.socket) -> None:
    attacker = Ed25519PrivateKey.generate()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/cert.pem"
    token = forge(target.header(x5u=url), target.genuine_claims(), attacker.sign)
    with pytest.raises(HeaderNotAllowedError):
        target.verify(token)
    assert_no_connection(listener)


def test_embedded_jwk_header_rejected(target: Target) -> None:
    # Attacker signs with their own key and embeds it, under the genuine kid and their own.
    attacker = Ed25519PrivateKey.generate()
    jwk = ed25519_jwk(attacker)
    for kid in (target.kid, jwk["kid"]):
        token = forge(target.header(jwk=jwk, kid=kid), target.genuine_claims(), attacker.sign)
        with pytest.raises(HeaderNotAllowedError):
            target.verify(token)


def test_x5c_and_thumbprint_headers_rejected(target: Target) -> None:
    for member, value in (("x5c", ["MIIB"]), ("x5t", "abc"), ("x5t#S256", "abc")):
        header = target.header(**{member: value})
        token = forge(header, target.genuine_claims(), target.sign_with_real_key)
        with pytest.raises(HeaderNotAllowedError):
            target.verify(token)


def test_wrong_typ_rejected(target: Target) -> None:
    # e.g. an OIDC id token or access token signed by the same key must not pass as a pass.
    for typ in ("JWT", "at+jwt", "application/gatepass-pass+jwt", None):
        header = target.header(typ=typ)
        if typ is None:
            del header["typ"]
        token = forge(header, target.genuine_claims(), target.sign_with_real_key)
        with pytest.raises(TypeInvalidError):
            target.verify(token)


# --- parser differentials and encoding tricks -------------------------------------------


def test_duplicate_header_member_rejected(target: Target) -> None:
    header = f'{{"alg":"EdDSA","kid":"{target.kid}","typ":"{TYP}","alg":"none"}}'.encode()
    token = forge(header, target.genuine_claims(), target.sign_with_real_key)
    with pytest.raises(TokenMalformedError):
        target.verify(token)


def test_duplicate_payload_member_rejected(target: Target) -> None:
    genuine = json.dumps(target.genuine_claims())
    payload = (genuine[:-1] + ', "aud": "crm"}').encode()  # which aud would win?
    token = forge(target.header(), payload, target.sign_with_real_key)
    with pytest.raises(TokenMalformedError):
        target.verify(token)


def test_oversized_token_rejected_before_decoding(target: Target) -> None:
    # Not even base64: if anything decoded it first, this would be "malformed" instead.
    with pytest.raises(TokenTooLargeError):
        target.verify("!" * 8193)
    with pytest.raises(TokenTooLargeError):
        target.verify("é" * 4097)  # 4097 characters, 8194 UTF-8 bytes
    claims = {**target.genuine_claims(), "padding": "x" * 8192}
    with pytest.raises(TokenTooLargeError):
        target.verify(forge(target.header(), claims, target.sign_with_real_key))


def test_deeply_nested_json_rejected(target: Target) -> None:
    token = forge(target.header(), b"[" * 5000, target.sign_with_real_key)
    with pytest.raises(TokenMalformedError):
        target.verify(token)


def test_signature_base64_malleability_rejected(target: Target) -> None:
    # 64 signature bytes leave 4 unused bits in the last base64url character: flipping them
    # spells the same signature differently, which would mint a "new" token from a used one.
    token = target.genuine()
    head, body, sig = token.split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = sig[:-1] + alphabet[alphabet.index(sig[-1]) ^ 1]
    assert unb64(twin) == unb64(sig)
    with pytest.raises(TokenMalformedError):
        target.verify(f"{head}.{body}.{twin}")


# --- keys -------------------------------------------------------------------------------


def test_unknown_kid_rejected(target: Target) -> None:
    attacker = Ed25519PrivateKey.generate()
    token = forge(
        target.header(kid=ed25519_jwk(attacker)["kid"]), target.genuine_claims(), attacker.sign
    )
    with pytest.raises(KeyUnknownError):
        target.verify(token)


def test_kid_path_traversal_rejected(target: Target) -> None:
    for kid in (
        "../../../../etc/passwd",
        f"../keys/{target.kid}",
        f"{target.kid}.pem",
        f"{target.kid}\n",  # `$` in a regex would let this through
        "/dev/null",
        "key; rm -rf /",
    ):
        token = forge(target.header(kid=kid), target.genuine_claims(), target.sign_with_real_key)
        with pytest.raises(KeyUnknownError):
            target.verify(token)


def test_retired_key_after_grace_rejected(target: Target) -> None:
    old_pass = target.genuine()
    grace = timedelta(minutes=5, seconds=30)
    target.store.rotate(now=NOW, grace=grace)
    target.store.prune(now=NOW + grace)
    verifier = PassVerifier(
        target.store.jwks(now=NOW + grace), audience=AUDIENCE, now=lambda: T + 60
    )
    with pytest.raises(KeyUnknownError):
        verifier.verify(old_pass, **EXECUTED)


def test_signature_from_another_key_under_the_genuine_kid_rejected(target: Target) -> None:
    attacker = Ed25519PrivateKey.generate()
    token = forge(target.header(), target.genuine_claims(), attacker.sign)
    with pytest.raises(SignatureInvalidError):
        target.verify(token)


def test_stripped_signature_rejected(target: Target) -> None:
    head, body, _ = target.genuine().split(".")
    with pytest.raises(SignatureInvalidError):
        target.verify(f"{head}.{body}.")


def test_tampered_payload_with_original_signature_rejected(target: Target) -> None:
    head, _, sig = target.genuine().split(".")
    claims = target.genuine_claims()
    claims["sub"] = "agent-evil"
    claims["authorization_details"][0]["amount"]["value"] = "99999"
    with pytest.raises(SignatureInvalidError):
        target.verify(f"{head}.{part(claims)}.{sig}")


def test_a_cached_header_does_not_vouch_for_another_header(target: Target) -> None:
    # The verifier parses each distinct header segment once; a token whose header differs
    # by one byte from a cached one is parsed (and refused) on its own.
    target.verify(target.genuine())  # the genuine header is cached now
    head = target.genuine(intent_id="intent-2").split(".")[0]
    for forged_header in (target.header(alg="none"), target.header(typ="JWT"),
                          target.header(kid="other"), target.header(jku="https://x")):
        token = forge(forged_header, target.genuine_claims(), target.sign_with_real_key)
        assert token.split(".")[0] != head
        with pytest.raises((AlgorithmNotAllowedError, TypeInvalidError, KeyUnknownError,
                            HeaderNotAllowedError)):
            target.verify(token)
    target.verify(target.genuine(intent_id="intent-3"))  # and the cache still serves


def test_junk_headers_cannot_fill_the_header_cache(target: Target) -> None:
    # Only headers whose signature verified are kept: a flood of tokens with distinct,
    # well-formed headers must not crowd the genuine one out (a slow verifier for everyone).
    other = Ed25519PrivateKey.generate()
    for n in range(100):
        token = forge(target.header(n=n), target.genuine_claims(), other.sign)
        with pytest.raises(SignatureInvalidError):
            target.verify(token)
    target.verify(target.genuine())
    assert list(target.verifier._headers) == [target.genuine().split(".")[0]]


# --- claims -----------------------------------------------------------------------------


def test_missing_exp_rejected(target: Target) -> None:
    claims = target.genuine_claims()
    del claims["exp"]
    with pytest.raises(ClaimMissingError):
        target.verify(forge(target.header(), claims, target.sign_with_real_key))


def test_exp_beyond_max_ttl_rejected(target: Target) -> None:
    claims = {**target.genuine_claims(), "exp": T + 3600 + 1}
    with pytest.raises(LifetimeExceededError):
        target.verify(forge(target.header(), claims, target.sign_with_real_key))


def test_exp_as_string_rejected(target: Target) -> None:
    for exp in (str(T + 300), f"{T + 300}.0", float(T + 300), True, None, [T + 300]):
        claims = {**target.genuine_claims(), "exp": exp}
        with pytest.raises(ClaimInvalidError):
            target.verify(forge(target.header(), claims, target.sign_with_real_key))


def test_replayed_jti_rejected(target: Target) -> None:
    token = target.genuine()
    target.verify(token)
    with pytest.raises(TokenReplayedError):
        target.verify(token)
    # The same intent re-issued later is a different token with the same credential id.
    reissued = target.genuine(issued_at=NOW + timedelta(seconds=1))
    assert reissued != token
    with pytest.raises(TokenReplayedError):
        target.verify(reissued)


def test_wrong_audience_rejected(target: Target) -> None:
    with pytest.raises(AudienceMismatchError):
        target.verify(target.genuine(audience="crm"))
    claims = {**target.genuine_claims(), "aud": ["crm", AUDIENCE]}
    with pytest.raises(AudienceMismatchError):
        target.verify(forge(target.header(), claims, target.sign_with_real_key))


def test_expired_rejected(target: Target) -> None:
    token = target.genuine()
    target.clock[0] = T + 300 + 30  # exp + leeway
    with pytest.raises(TokenExpiredError):
        target.verify(token)


def test_future_nbf_rejected(target: Target) -> None:
    claims = {**target.genuine_claims(), "nbf": T + 120}
    with pytest.raises(TokenNotYetValidError):
        target.verify(forge(target.header(), claims, target.sign_with_real_key))


def test_foreign_issuer_rejected(target: Target) -> None:
    claims = {**target.genuine_claims(), "iss": "https://evil.test"}
    with pytest.raises(ClaimInvalidError):
        target.verify(forge(target.header(), claims, target.sign_with_real_key))


# --- scope: a pass for one action is not a pass for another -----------------------------


def test_other_action_rejected(target: Target) -> None:
    with pytest.raises(ScopeMismatchError):
        target.verify(target.genuine(), action="refund")


def test_other_resource_rejected(target: Target) -> None:
    with pytest.raises(ScopeMismatchError):
        target.verify(target.genuine(), resource="invoice/43")


def test_higher_amount_rejected(target: Target) -> None:
    with pytest.raises(ScopeMismatchError):
        target.verify(target.genuine(), amount=Decimal("120.01"))


def test_other_currency_rejected(target: Target) -> None:
    with pytest.raises(ScopeMismatchError):
        target.verify(target.genuine(), currency="JPY")


def test_authorization_details_cannot_widen_the_scope(target: Target) -> None:
    # Even a validly signed pass whose human-readable details say 999 only covers its scope hash.
    claims = target.genuine_claims()
    claims["authorization_details"][0]["amount"]["value"] = "999"
    token = forge(target.header(), claims, target.sign_with_real_key)
    with pytest.raises(ScopeMismatchError):
        target.verify(token, amount=Decimal("999"))


def test_small_order_key_in_jwks_rejected() -> None:
    """A JWKS entry holding a small-order point (here the identity) would let R=identity,
    S=0 verify for any message: the key is refused when the JWKS is loaded."""
    import pytest as _pytest

    from gatepass.credentials import PassVerifier
    from gatepass.credentials._jose import b64url_encode, ed25519_thumbprint
    from gatepass.errors import JwksError

    identity = bytes([1]) + bytes(31)
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(identity),
           "kid": ed25519_thumbprint(identity)}
    with _pytest.raises(JwksError):
        PassVerifier({"keys": [jwk]}, audience="payments")
