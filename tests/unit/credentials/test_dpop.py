"""Key-bound passes and DPoP proofs (RFC 9449): one named test per attack on the binding.

A pass issued to an agent with a registered key carries cnf.jkt; the verifier then wants a
proof made with that key for this very request. Attack proofs are built by hand here (JSON,
base64url, a signature), the way an attacker would send them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gatepass.credentials import (
    DPOP_TYP,
    KeyStore,
    PassIssuer,
    PassRequest,
    PassVerifier,
    ReplayCache,
    dpop_proof,
)
from gatepass.credentials.dpop import normalize_htu
from gatepass.errors import (
    ClaimInvalidError,
    ConfigError,
    ProofInvalidError,
    ProofMissingError,
    ProofReplayedError,
    TokenReplayedError,
)

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
T = int(NOW.timestamp())
AUDIENCE = "payments"
EXECUTED: dict[str, Any] = {"action": "pay", "resource": "invoice/42",
                            "amount": Decimal("120"), "currency": "EUR"}
METHOD, URL = "POST", "https://payments.example/pay"
AGENT_KEY = Ed25519PrivateKey.from_private_bytes(b"\x01" * 32)
THIEF_KEY = Ed25519PrivateKey.from_private_bytes(b"\x02" * 32)


# --- the attacker's toolbox: no Gatepass code involved in building proofs -----------------
def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_x(key: Ed25519PrivateKey) -> str:
    return b64(key.public_key().public_bytes(serialization.Encoding.Raw,
                                             serialization.PublicFormat.Raw))


def jwk(key: Ed25519PrivateKey) -> dict[str, str]:
    return {"kty": "OKP", "crv": "Ed25519", "x": raw_x(key)}


def thumbprint(key: Ed25519PrivateKey) -> str:
    members = f'{{"crv":"Ed25519","kty":"OKP","x":"{raw_x(key)}"}}'.encode()
    return b64(hashlib.sha256(members).digest())


def ath(token: str) -> str:
    return b64(hashlib.sha256(token.encode()).digest())


def proof(token: str, *, key: Ed25519PrivateKey = AGENT_KEY, header: dict[str, Any] | None = None,
          drop: tuple[str, ...] = (), sign: Any = None, jti: str = "jti-1",
          **claims: Any) -> str:
    """A proof as anyone can build it: header and claims overridable, any signer."""
    head = {"typ": "dpop+jwt", "alg": "EdDSA", "jwk": jwk(key), **(header or {})}
    body = {"jti": jti, "htm": METHOD, "htu": URL, "iat": T, "ath": ath(token), **claims}
    for name in drop:
        body.pop(name, None)
        head.pop(name, None)
    signing_input = f"{b64(json.dumps(head).encode())}.{b64(json.dumps(body).encode())}"
    signature = (sign or key.sign)(signing_input.encode())
    return f"{signing_input}.{b64(signature)}"


@dataclass
class Target:
    store: KeyStore
    issuer: PassIssuer
    verifier: PassVerifier
    clock: list[float]

    def bound_pass(self, intent_id: str = "intent-1", key: Ed25519PrivateKey = AGENT_KEY) -> str:
        return self.issuer.issue(PassRequest(
            intent_id=intent_id, agent_id="agent-7", audience=AUDIENCE, action="pay",
            resource="invoice/42", amount=Decimal("120"), currency="EUR", owner="alice",
            delegation_chain=(), policy_version="v3", issued_at=NOW,
            cnf_jkt=thumbprint(key))).token

    def bearer_pass(self, intent_id: str = "intent-b") -> str:
        return self.issuer.issue(PassRequest(
            intent_id=intent_id, agent_id="agent-8", audience=AUDIENCE, action="pay",
            resource="invoice/42", amount=Decimal("120"), currency="EUR", owner="alice",
            delegation_chain=(), policy_version="v3", issued_at=NOW)).token

    def verify(self, token: str, dpop: str | None, *, method: str = METHOD, url: str = URL,
               verifier: PassVerifier | None = None) -> Any:
        return (verifier or self.verifier).verify(token, **EXECUTED, dpop=dpop, method=method,
                                                  url=url)


@pytest.fixture
def target(tmp_path: Path) -> Target:
    store = KeyStore.open(tmp_path / "keys", now=NOW)
    issuer = PassIssuer(store, issuer="gatepass", ttl=timedelta(minutes=5))
    clock = [T + 1.0]
    verifier = PassVerifier(store.jwks(now=NOW), audience=AUDIENCE, issuer="gatepass",
                            now=lambda: clock[0])
    return Target(store, issuer, verifier, clock)


# --- what must work -----------------------------------------------------------------------
def test_a_bound_pass_with_its_proof_is_accepted(target: Target) -> None:
    token = target.bound_pass()
    verified = target.verify(token, proof(token))
    assert verified.key_thumbprint == thumbprint(AGENT_KEY)
    assert verified.claims["cnf"] == {"jkt": thumbprint(AGENT_KEY)}


def test_our_own_proof_builder_makes_an_accepted_proof(target: Target) -> None:
    token = target.bound_pass()
    made = dpop_proof(AGENT_KEY, token=token, method=METHOD, url=URL, now=T)
    header = json.loads(base64.urlsafe_b64decode(made.split(".")[0] + "=="))
    assert header == {"alg": "EdDSA", "jwk": jwk(AGENT_KEY), "typ": DPOP_TYP}
    target.verify(token, made)


def test_two_proofs_of_the_builder_never_share_a_jti() -> None:
    first, second = (dpop_proof(AGENT_KEY, token="a.b.c", method="GET", url=URL) for _ in "ab")
    claims = [json.loads(base64.urlsafe_b64decode(p.split(".")[1] + "==")) for p in (first,
                                                                                    second)]
    assert claims[0]["jti"] != claims[1]["jti"]


def test_a_bearer_pass_needs_no_proof(target: Target) -> None:
    verified = target.verify(target.bearer_pass(), None)
    assert verified.key_thumbprint is None


@pytest.mark.parametrize("presented", [
    "https://PAYMENTS.example/pay", "HTTPS://payments.example:443/pay",
    "https://payments.example/pay?order=1", "https://payments.example/pay#top",
    "https://user@payments.example/pay"])
def test_the_url_is_compared_normalised(target: Target, presented: str) -> None:
    token = target.bound_pass()
    target.verify(token, proof(token), url=presented)


@pytest.mark.parametrize(("url", "normal"), [
    ("https://Example.COM", "https://example.com/"),
    ("http://example.com:80/a?b#c", "http://example.com/a"),
    ("http://example.com:8080/a", "http://example.com:8080/a"),
    ("https://[::1]:8443/x", "https://[::1]:8443/x"),
])
def test_normalize_htu(url: str, normal: str) -> None:
    assert normalize_htu(url) == normal


@pytest.mark.parametrize("url", ["/pay", "ftp://example.com/x", "https://", "https:///x",
                                 "https://example.com:99999/"])
def test_normalize_htu_refuses_what_is_not_an_http_uri(url: str) -> None:
    with pytest.raises(ValueError):
        normalize_htu(url)


# --- attacks ------------------------------------------------------------------------------
def test_stolen_bound_pass_without_proof_rejected(target: Target) -> None:
    token = target.bound_pass()
    with pytest.raises(ProofMissingError) as info:
        target.verify(token, None)
    assert info.value.code == "dpop_missing"
    with pytest.raises(ProofMissingError):
        target.verify(token, "")
    target.verify(token, proof(token))  # the refusal did not use the pass up


def test_proof_signed_by_another_key_rejected(target: Target) -> None:
    """The thief signs with their own key and puts their own jwk in the header."""
    token = target.bound_pass()
    with pytest.raises(ProofInvalidError, match="bound to") as info:
        target.verify(token, proof(token, key=THIEF_KEY))
    assert info.value.code == "dpop_invalid"


def test_proof_naming_the_agent_key_but_signed_by_another_rejected(target: Target) -> None:
    token = target.bound_pass()
    with pytest.raises(ProofInvalidError, match="signature"):
        target.verify(token, proof(token, header={"jwk": jwk(AGENT_KEY)}, key=THIEF_KEY))


def test_proof_for_another_method_rejected(target: Target) -> None:
    token = target.bound_pass()
    with pytest.raises(ProofInvalidError, match="method"):
        target.verify(token, proof(token, htm="GET"))


def test_proof_method_is_case_sensitive(target: Target) -> None:
    token = target.bound_pass()
    with pytest.raises(ProofInvalidError, match="method"):
        target.verify(token, proof(token, htm="post"))


@pytest.mark.parametrize("htu", ["https://payments.example/refund",
                                 "https://evil.example/pay", "http://payments.example/pay",
                                 "https://payments.example:8443/pay", "/pay", 42])
def test_proof_for_another_target_uri_rejected(target: Target, htu: Any) -> None:
    token = target.bound_pass()
    with pytest.raises(ProofInvalidError):
        target.verify(token, proof(token, htu=htu))


def test_stale_proof_rejected(target: Target) -> None:
    token = target.bound_pass()
    with pytest.raises(ProofInvalidError, match="iat"):
        target.verify(token, proof(token, iat=T + 1 - 61))
    target.verify(token, proof(token, iat=T + 1 - 60, jti="on-the-edge"))


def test_proof_from_the_future_rejected(target: Target) -> None:
    token = target.bound_pass()
    with pytest.raises(ProofInvalidError, match="iat"):
        target.verify(token, proof(token, iat=T + 1 + 61))


@pytest.mark.parametrize("iat", [str(T), float(T), True, None, -1])
def test_proof_iat_of_the_wrong_type_rejected(target: Target, iat: Any) -> None:
    token = target.bound_pass()
    with pytest.raises(ProofInvalidError, match="iat"):
        target.verify(token, proof(token, iat=iat))


def test_proof_for_another_pass_rejected(target: Target) -> None:
    """A proof captured with one pass of the agent does not carry a second one."""
    token, other = target.bound_pass("intent-1"), target.bound_pass("intent-2")
    with pytest.raises(ProofInvalidError, match="ath"):
        target.verify(token, proof(other))


def test_replayed_proof_rejected(target: Target) -> None:
    token = target.bound_pass()
    captured = proof(token)
    target.verify(token, captured)
    with pytest.raises(ProofReplayedError) as info:
        target.verify(token, captured)
    assert info.value.code == "dpop_replayed"


def test_proof_jti_reused_with_another_pass_rejected_without_burning_it(target: Target) -> None:
    first, second = target.bound_pass("intent-1"), target.bound_pass("intent-2")
    target.verify(first, proof(first, jti="same"))
    with pytest.raises(ProofReplayedError):
        target.verify(second, proof(second, jti="same"))
    target.verify(second, proof(second, jti="fresh"))  # the second pass is still good


def test_a_bound_pass_is_still_single_use(target: Target) -> None:
    token = target.bound_pass()
    target.verify(token, proof(token, jti="one"))
    with pytest.raises(TokenReplayedError):
        target.verify(token, proof(token, jti="two"))


def test_proof_with_alg_none_rejected(target: Target) -> None:
    token = target.bound_pass()
    with pytest.raises(ProofInvalidError, match="alg"):
        target.verify(token, proof(token, header={"alg": "none"}, sign=lambda _: b""))


def test_proof_hs256_keyed_with_the_public_key_rejected(target: Target) -> None:
    token = target.bound_pass()
    secret = raw_x(AGENT_KEY).encode()
    forged = proof(token, header={"alg": "HS256"},
                   sign=lambda data: hmac.new(secret, data, hashlib.sha256).digest())
    with pytest.raises(ProofInvalidError, match="alg"):
        target.verify(token, forged)


def test_proof_jwk_with_a_private_member_rejected(target: Target) -> None:
    token = target.bound_pass()
    leaky = jwk(AGENT_KEY) | {"d": b64(b"\x01" * 32)}
    with pytest.raises(ProofInvalidError, match="private"):
        target.verify(token, proof(token, header={"jwk": leaky}))


@pytest.mark.parametrize("typ", ["JWT", "DPOP+JWT", "gatepass-pass+jwt", "", None])
def test_proof_with_the_wrong_typ_rejected(target: Target, typ: Any) -> None:
    token = target.bound_pass()
    with pytest.raises(ProofInvalidError, match="typ"):
        target.verify(token, proof(token, header={"typ": typ}))


def test_proof_without_typ_rejected(target: Target) -> None:
    token = target.bound_pass()
    with pytest.raises(ProofInvalidError, match="typ"):
        target.verify(token, proof(token, drop=("typ",)))


@pytest.mark.parametrize("member", ["jku", "x5u", "x5c", "kid", "crit"])
def test_proof_header_naming_another_key_source_rejected(target: Target, member: str) -> None:
    token = target.bound_pass()
    with pytest.raises(ProofInvalidError, match=member):
        target.verify(token, proof(token, header={member: "https://evil.example/k"}))


@pytest.mark.parametrize("bad_jwk", [
    None, "x", {"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"},
    {"kty": "OKP", "crv": "X25519", "x": b64(b"\x09" * 32)},
    {"kty": "OKP", "crv": "Ed25519", "x": b64(b"\x01" + b"\x00" * 31)},  # small order
    {"kty": "OKP", "crv": "Ed25519", "x": b64(b"\x01" * 31)},
])
def test_proof_jwk_that_is_not_a_usable_ed25519_key_rejected(target: Target,
                                                             bad_jwk: Any) -> None:
    token = target.bound_pass()
    with pytest.raises(ProofInvalidError):
        target.verify(token, proof(token, header={"jwk": bad_jwk}))


@pytest.mark.parametrize("claim", ["jti", "htm", "htu", "iat", "ath"])
def test_proof_without_a_required_claim_rejected(target: Target, claim: str) -> None:
    token = target.bound_pass()
    with pytest.raises(ProofInvalidError, match=claim):
        target.verify(token, proof(token, drop=(claim,)))


@pytest.mark.parametrize("garbage", ["x", "a.b", "a.b.c", "e30.e30.", "." * 5000])
def test_malformed_proof_rejected(target: Target, garbage: str) -> None:
    token = target.bound_pass()
    with pytest.raises(ProofInvalidError):
        target.verify(token, garbage)


def test_proof_checked_without_the_request_s_method_and_url_rejected(target: Target) -> None:
    token = target.bound_pass()
    with pytest.raises(ProofInvalidError, match="method and url"):
        target.verifier.verify(token, **EXECUTED, dpop=proof(token))


def test_a_bound_pass_for_another_key_cannot_be_used_with_the_agent_s_proof(
        target: Target) -> None:
    token = target.bound_pass(key=THIEF_KEY)
    with pytest.raises(ProofInvalidError, match="bound to"):
        target.verify(token, proof(token))


def test_verifier_requiring_dpop_refuses_a_bearer_pass(target: Target) -> None:
    strict = PassVerifier(target.store.jwks(now=NOW), audience=AUDIENCE, issuer="gatepass",
                          now=lambda: target.clock[0], require_dpop=True)
    with pytest.raises(ProofMissingError, match="not bound"):
        target.verify(target.bearer_pass(), None, verifier=strict)
    token = target.bound_pass()
    target.verify(token, proof(token), verifier=strict)


def test_pass_with_a_confirmation_we_do_not_understand_rejected(target: Target) -> None:
    """A binding the verifier cannot check must not degrade into a bearer pass."""
    key = target.store.active
    for cnf in ({"jwk": jwk(AGENT_KEY)}, {"jkt": thumbprint(AGENT_KEY), "x5t#S256": "a"},
                {"jkt": 1}, "jkt", {"jkt": "short"}):
        header = {"alg": "EdDSA", "kid": key.kid, "typ": "gatepass-pass+jwt"}
        genuine = target.bearer_pass()
        claims = json.loads(base64.urlsafe_b64decode(genuine.split(".")[1] + "=="))
        claims["cnf"] = cnf
        signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
        forged = f"{signing_input}.{b64(key.private_key.sign(signing_input.encode()))}"
        with pytest.raises(ClaimInvalidError, match="cnf"):
            target.verify(forged, None)


def test_proof_window_and_replay_caches_are_configured_apart(target: Target) -> None:
    cache = ReplayCache()
    with pytest.raises(ConfigError):
        PassVerifier(target.store.jwks(now=NOW), audience=AUDIENCE, replay_cache=cache,
                     dpop_replay_cache=cache)
    with pytest.raises(ConfigError):
        PassVerifier(target.store.jwks(now=NOW), audience=AUDIENCE,
                     dpop_window=timedelta(0))
    wide = PassVerifier(target.store.jwks(now=NOW), audience=AUDIENCE, issuer="gatepass",
                        now=lambda: target.clock[0], dpop_window=timedelta(minutes=5))
    token = target.bound_pass()
    target.verify(token, proof(token, iat=T - 200), verifier=wide)
