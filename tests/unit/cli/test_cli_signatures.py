"""`gatepass register-agent --public-key` and `gatepass verify --dpop` without a broker.

Publishing a registration needs a broker (tests/integration); its key is checked before.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gatepass.cli.main import main
from gatepass.core import key_thumbprint
from gatepass.credentials import KeyStore, PassIssuer, PassRequest, dpop_proof
from gatepass.sdk import agent_public_key

AGENT_KEY = Ed25519PrivateKey.from_private_bytes(b"\x09" * 32)
URL = "https://procurement.example/purchase-orders"


@pytest.mark.parametrize("bad", ["", "AA", "A" * 44, "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"])
def test_register_agent_refuses_a_key_that_is_not_one(capsys: pytest.CaptureFixture[str],
                                                      bad: str) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--bootstrap", "127.0.0.1:1", "register-agent", "bot", "--owner", "o",
              "--purpose", "p", "--public-key", bad])
    assert info.value.code == 2
    assert "--public-key" in capsys.readouterr().err


@pytest.fixture
def bound(tmp_path: Path) -> tuple[Path, str]:
    """A home with a key store, its JWKS in a file, and a pass bound to AGENT_KEY."""
    now = datetime.now(UTC)
    store = KeyStore.open(tmp_path / "keys", now=now)
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(store.jwks(now=now)))
    token = PassIssuer(store, issuer="gatepass", ttl=timedelta(minutes=5)).issue(PassRequest(
        intent_id="i-1", agent_id="bot", audience="procurement-api",
        action="purchase_order.create", resource="vendor:ACME", amount=None, currency=None,
        owner="sarah", delegation_chain=(), policy_version="v1", issued_at=now,
        cnf_jkt=key_thumbprint(agent_public_key(AGENT_KEY)))).token
    return jwks, token


def verify(capsys: pytest.CaptureFixture[str], jwks: Path, token: str,
           *extra: str) -> tuple[int, str]:
    code = main(["verify", "--audience", "procurement-api", "--action",
                 "purchase_order.create", "--resource", "vendor:ACME", "--jwks", str(jwks),
                 *extra, token])
    return code, capsys.readouterr().out


def test_verify_a_bound_pass_with_its_proof(capsys: pytest.CaptureFixture[str],
                                            bound: tuple[Path, str]) -> None:
    jwks, token = bound
    proof = dpop_proof(AGENT_KEY, token=token, method="POST", url=URL)
    code, out = verify(capsys, jwks, token, "--dpop", proof, "--method", "POST", "--url", URL)
    assert code == 0, out
    assert out.startswith("valid: pass ")
    assert f"bound to key {key_thumbprint(agent_public_key(AGENT_KEY))}" in out


def test_verify_a_bound_pass_without_a_proof(capsys: pytest.CaptureFixture[str],
                                             bound: tuple[Path, str]) -> None:
    jwks, token = bound
    code, out = verify(capsys, jwks, token)
    assert code == 1
    assert out.startswith("invalid: dpop_missing: ")


def test_verify_a_proof_for_another_url(capsys: pytest.CaptureFixture[str],
                                        bound: tuple[Path, str]) -> None:
    jwks, token = bound
    proof = dpop_proof(AGENT_KEY, token=token, method="POST", url=URL + "/x")
    code, out = verify(capsys, jwks, token, "--dpop", proof, "--method", "POST", "--url", URL)
    assert code == 1
    assert out.startswith("invalid: dpop_invalid: ")


def test_verify_dpop_without_method_and_url_is_a_usage_error(
        capsys: pytest.CaptureFixture[str], bound: tuple[Path, str]) -> None:
    jwks, token = bound
    code = main(["verify", "--audience", "procurement-api", "--action", "x.y", "--resource",
                 "r", "--jwks", str(jwks), "--dpop", "p", token])
    assert code == 2
    assert "[config_invalid]" in capsys.readouterr().err
