"""Passes interoperate with an independent JOSE implementation: npm's `jose`, run under Node.

tests/interop/jose_interop.mjs verifies our passes with `jwtVerify` (alg EdDSA, typ, audience
and issuer required) and signs passes of its own, with its own key, kid and scope hash, that our
PassVerifier must accept. Its dependencies come from tests/interop/package-lock.json
(`npm ci` when node_modules is missing). Without `node` the tests are skipped, except under CI,
where they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gatepass.credentials import (
    DPOP_TYP,
    PASS_TYP,
    KeyStore,
    PassIssuer,
    PassRequest,
    PassVerifier,
    dpop_proof,
    scope_hash,
)
from gatepass.credentials._jose import b64url_decode, b64url_encode, ed25519_thumbprint
from gatepass.errors import ScopeMismatchError, SignatureInvalidError

INTEROP = Path(__file__).resolve().parents[2] / "interop"
SCRIPT = INTEROP / "jose_interop.mjs"
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
T = int(NOW.timestamp())
ISSUER = "https://gatepass.test"
AUDIENCE = "payments"
# A non-ASCII resource: the scope hash is over UTF-8 JSON, which both sides must agree on.
EXECUTED: dict[str, Any] = {
    "action": "pay", "resource": "facture/42-été", "amount": Decimal("120.50"), "currency": "eur",
}


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if _in_ci():
            pytest.fail(f"{tool} is not on PATH and CI is set: the jose interop tests must run")
        pytest.skip(f"{tool} is not on PATH: install Node.js 20+ to run the jose interop tests")
    return path


@pytest.fixture(scope="module")
def node() -> Iterator[str]:
    node = _require("node")
    if not (INTEROP / "node_modules" / "jose" / "package.json").is_file():
        npm = _require("npm")
        run = subprocess.run(
            [npm, "ci", "--prefix", str(INTEROP), "--no-audit", "--no-fund"],
            capture_output=True, text=True, timeout=300, check=False,
        )
        assert run.returncode == 0, f"npm ci failed:\n{run.stdout}\n{run.stderr}"
    yield node


def jose(node: str, mode: str, request: dict[str, Any]) -> dict[str, Any]:
    run = subprocess.run(
        [node, str(SCRIPT), mode], input=json.dumps(request), capture_output=True, text=True,
        timeout=60, check=False, cwd=INTEROP,
    )
    assert run.returncode == 0, f"node {mode} failed:\n{run.stderr}"
    answer: dict[str, Any] = json.loads(run.stdout)
    return answer


def jose_verify(node: str, token: str, jwks: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    request = {"token": token, "jwks": jwks, "audience": AUDIENCE, "issuer": ISSUER,
               "typ": PASS_TYP, "now": T + 1, **overrides}
    return jose(node, "verify", request)


def tamper(token: str, **claims: Any) -> str:
    """Change claims in the payload and keep the original signature."""
    head, payload, sig = token.split(".")
    body = json.loads(b64url_decode(payload))
    body.update(claims)
    return f"{head}.{b64url_encode(json.dumps(body).encode())}.{sig}"


@pytest.fixture
def ours(tmp_path: Path) -> tuple[str, dict[str, Any]]:
    """One of our passes and the JWKS that verifies it."""
    store = KeyStore.open(tmp_path / "keys", now=NOW)
    issuer = PassIssuer(store, issuer=ISSUER, ttl=timedelta(minutes=5))
    issued = issuer.issue(PassRequest(
        intent_id="intent-1", agent_id="agent-7", audience=AUDIENCE, owner="alice",
        delegation_chain=("planner", "booker"), policy_version="v3", issued_at=NOW, **EXECUTED,
    ))
    return issued.token, store.jwks(now=NOW)


@pytest.fixture
def theirs(node: str) -> dict[str, Any]:
    """A pass signed by jose with a key of its own: {token, kid, jwks}."""
    return jose(node, "sign", {
        "issuer": ISSUER, "subject": "agent-9", "audience": AUDIENCE, "iat": T, "ttl": 300,
        "intent_id": "intent-js", "owner": "bob", "policy_version": "v3", "typ": PASS_TYP,
        "action": EXECUTED["action"], "resource": EXECUTED["resource"],
        "amount": "120.5", "currency": EXECUTED["currency"],
    })


def our_verifier(jwks: dict[str, Any]) -> PassVerifier:
    return PassVerifier(jwks, audience=AUDIENCE, issuer=ISSUER, now=lambda: T + 1.0)


def test_our_pass_verifies_in_jose(node: str, ours: tuple[str, dict[str, Any]]) -> None:
    token, jwks = ours
    answer = jose_verify(node, token, jwks)
    assert answer["ok"], answer
    kid = jwks["keys"][0]["kid"]
    assert answer["protectedHeader"] == {"alg": "EdDSA", "kid": kid, "typ": PASS_TYP}
    payload = answer["payload"]
    assert payload == json.loads(b64url_decode(token.split(".")[1]))
    assert payload["iss"] == ISSUER
    assert payload["aud"] == AUDIENCE
    assert payload["sub"] == "agent-7"
    assert (payload["iat"], payload["nbf"], payload["exp"]) == (T, T, T + 300)
    assert payload["scope"] == scope_hash(**EXECUTED)
    assert payload["act"] == {"sub": "booker", "act": {"sub": "planner"}}
    assert payload["authorization_details"][0]["amount"] == {"value": "120.5", "currency": "EUR"}


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"audience": "ledger"}, "ERR_JWT_CLAIM_VALIDATION_FAILED"),
        ({"issuer": "https://elsewhere.test"}, "ERR_JWT_CLAIM_VALIDATION_FAILED"),
        ({"typ": "JWT"}, "ERR_JWT_CLAIM_VALIDATION_FAILED"),
        ({"now": T + 300 + 1}, "ERR_JWT_EXPIRED"),
    ],
    ids=["audience", "issuer", "typ", "expired"],
)
def test_jose_checks_what_it_is_asked_to(
    node: str, ours: tuple[str, dict[str, Any]], overrides: dict[str, Any], code: str
) -> None:
    # The script really enforces audience, issuer, typ and time, so the passing test means it.
    token, jwks = ours
    answer = jose_verify(node, token, jwks, **overrides)
    assert not answer["ok"] and answer["code"] == code, answer


def test_jose_pass_verifies_with_our_verifier(theirs: dict[str, Any]) -> None:
    public = theirs["jwks"]["keys"][0]
    # jose's calculateJwkThumbprint and our RFC 7638 thumbprint agree.
    assert theirs["kid"] == public["kid"] == ed25519_thumbprint(b64url_decode(public["x"]))
    verified = our_verifier(theirs["jwks"]).verify(theirs["token"], **EXECUTED)
    assert verified.kid == theirs["kid"]
    assert verified.agent_id == "agent-9"
    assert (verified.intent_id, verified.owner) == ("intent-js", "bob")
    assert verified.claims["scope"] == scope_hash(**EXECUTED)
    assert verified.expires_at == NOW + timedelta(minutes=5)


def test_jose_pass_for_another_amount_is_refused_by_scope(theirs: dict[str, Any]) -> None:
    with pytest.raises(ScopeMismatchError):
        our_verifier(theirs["jwks"]).verify(theirs["token"], **{**EXECUTED, "amount": Decimal(121)})


def test_tampered_pass_fails_in_both(
    node: str, ours: tuple[str, dict[str, Any]], theirs: dict[str, Any]
) -> None:
    for token, jwks in (ours, (theirs["token"], theirs["jwks"])):
        forged = tamper(token, sub="mallory")
        answer = jose_verify(node, forged, jwks)
        assert not answer["ok"], answer
        assert answer["code"] == "ERR_JWS_SIGNATURE_VERIFICATION_FAILED", answer
        with pytest.raises(SignatureInvalidError):
            our_verifier(jwks).verify(forged, **EXECUTED)
        # The untouched token still verifies on both sides: the failures above are the tamper.
        assert jose_verify(node, token, jwks)["ok"]
        assert our_verifier(jwks).verify(token, **EXECUTED)


# ---- DPoP proofs (RFC 9449) ------------------------------------------------------------------
AGENT_KEY = Ed25519PrivateKey.from_private_bytes(b"\x07" * 32)
DPOP_URL = "https://payments.example/pay"


def _agent_x() -> str:
    return b64url_encode(AGENT_KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


@pytest.fixture
def bound(tmp_path: Path) -> tuple[str, dict[str, Any]]:
    """One of our passes bound to AGENT_KEY (cnf.jkt), and the JWKS that verifies it."""
    store = KeyStore.open(tmp_path / "keys", now=NOW)
    issued = PassIssuer(store, issuer=ISSUER, ttl=timedelta(minutes=5)).issue(PassRequest(
        intent_id="intent-2", agent_id="agent-7", audience=AUDIENCE, owner="alice",
        delegation_chain=(), policy_version="v3", issued_at=NOW,
        cnf_jkt=ed25519_thumbprint(b64url_decode(_agent_x())), **EXECUTED))
    return issued.token, store.jwks(now=NOW)


def test_our_dpop_proof_verifies_in_jose(node: str, bound: tuple[str, dict[str, Any]]) -> None:
    token, _ = bound
    proof = dpop_proof(AGENT_KEY, token=token, method="POST", url=DPOP_URL, now=T)
    answer = jose(node, "dpop-verify", {"proof": proof, "now": T + 1})
    assert answer["ok"], answer
    assert answer["protectedHeader"]["typ"] == DPOP_TYP
    # jose's thumbprint of the proof's key is the pass's cnf.jkt
    assert answer["jkt"] == json.loads(b64url_decode(token.split(".")[1]))["cnf"]["jkt"]
    assert (answer["payload"]["htm"], answer["payload"]["htu"]) == ("POST", DPOP_URL)


def test_a_jose_dpop_proof_is_accepted_by_our_verifier(
        node: str, bound: tuple[str, dict[str, Any]]) -> None:
    token, jwks = bound
    private = {"kty": "OKP", "crv": "Ed25519", "x": _agent_x(),
               "d": b64url_encode(AGENT_KEY.private_bytes_raw())}
    proof = jose(node, "dpop-sign", {"jwk": private, "token": token, "htm": "POST",
                                     "htu": DPOP_URL, "iat": T})["proof"]
    assert '"d"' not in b64url_decode(proof.split(".")[0]).decode()
    verified = our_verifier(jwks).verify(token, **EXECUTED, dpop=proof, method="POST",
                                         url=DPOP_URL)
    assert verified.key_thumbprint == ed25519_thumbprint(b64url_decode(_agent_x()))
