"""Signed intents and key-bound passes end to end: SDK, broker, worker, verifier, target API."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from gatepass.codec.avro import schemas
from gatepass.codec.records import intent_to_record
from gatepass.core import (
    AgentRegistered,
    PrincipalStatus,
    PrincipalStatusChanged,
    key_thumbprint,
    sign_intent,
)
from gatepass.credentials import PassVerifier, dpop_proof, load_jwks
from gatepass.credentials._jose import b64url_decode
from gatepass.demo.procurement_api import ProcurementApi
from gatepass.errors import ProofMissingError, ProofReplayedError
from gatepass.sdk import agent_public_key
from gatepass.transport import partition_for
from support.stack import Stack, verdicts_for

pytestmark = pytest.mark.integration
AUDIENCE = "procurement-api"
TARGET = "https://procurement.example/purchase-orders"
EXECUTED: dict[str, Any] = {"action": "purchase_order.create", "resource": "vendor:ACME",
                            "amount": Decimal("120"), "currency": "USD"}


def register_with_key(stack: Stack, agent: str, owner: str, key: Ed25519PrivateKey) -> None:
    at = datetime.now(UTC)
    stack.publisher().publish(
        PrincipalStatusChanged(principal_id=owner, status=PrincipalStatus.ACTIVE,
                               event_time=at, source="test"),
        AgentRegistered(agent_id=agent, owner=owner, purpose="procurement", event_time=at,
                        source="test", public_key=agent_public_key(key)))


def cnf_of(token: str) -> Any:
    return json.loads(b64url_decode(token.split(".")[1])).get("cnf")


def post(url: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    body = json.dumps({"vendor": "ACME", "amount": "120.00", "currency": "USD"}).encode()
    req = urllib.request.Request(f"{url}/purchase-orders", data=body, method="POST",
                                 headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_a_keyed_agent_signs_its_intents_and_proves_possession_of_its_passes(
        stack: Stack) -> None:
    agent, owner = f"signing-bot-{uuid.uuid4().hex[:6]}", f"sarah-{uuid.uuid4().hex[:6]}"
    key, wrong = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    register_with_key(stack, agent, owner, key)
    jkt = key_thumbprint(agent_public_key(key))
    jwks = load_jwks(f"{stack.settings.web_url}/.well-known/jwks.json")
    verifier = PassVerifier(jwks, audience=AUDIENCE, issuer="gatepass")

    with stack.client(agent_id=agent, audience=AUDIENCE, timeout=20, agent_key=key) as gp:
        allowed = gp.authorize("purchase_order.create", "vendor:ACME", amount=Decimal("120.00"))
        assert (allowed.decision, allowed.reasons) == ("ALLOW", ("allowed",)), allowed
        assert allowed.facts["agent_key_jkt"] == jkt
        token = allowed.credential or ""
        assert cnf_of(token) == {"jkt": jkt}

        # The same intent re-signed with another key, produced raw: denied.
        forged = gp.intent("purchase_order.create", "vendor:ACME", amount=Decimal("120.00"))
        forged = replace(forged, signature=sign_intent(forged, wrong))
        stack.produce_raw(stack.settings.topics.intents, agent.encode(),
                          schemas().intent.encode(intent_to_record(forged)),
                          partition=partition_for(agent, stack.settings.partitions))
        (denied,) = verdicts_for(stack.settings, {forged.intent_id})
        assert (denied["decision"], denied["reasons"]) == ("DENY", ["intent_signature_invalid"])
        assert denied["credential"] is None

        # The pass: useless alone, accepted once with a proof, the proof single-use.
        with pytest.raises(ProofMissingError):
            verifier.verify(token, **EXECUTED)
        proof = gp.proof(allowed, "POST", TARGET)
        verified = verifier.verify(token, **EXECUTED, dpop=proof, method="POST", url=TARGET)
        assert verified.key_thumbprint == jkt and verified.intent_id == allowed.intent_id
        with pytest.raises(ProofMissingError) as missing:
            verifier.verify(token, **EXECUTED)
        assert missing.value.code == "dpop_missing"
        with pytest.raises(ProofReplayedError) as replayed:
            verifier.verify(token, **EXECUTED, dpop=proof, method="POST", url=TARGET)
        assert replayed.value.code == "dpop_replayed"

        # The same over HTTP at the demo's target API.
        api = ProcurementApi(lambda: jwks, issuer="gatepass").start()
        try:
            second = gp.authorize("purchase_order.create", "vendor:ACME",
                                  amount=Decimal("120.00"))
            assert second.allowed, second
            bare = {"Authorization": f"DPoP {second.credential}"}
            code, body = post(api.url, bare)
            assert (code, body["error"]) == (401, "dpop_missing")
            with_proof = {**bare, "DPoP": gp.proof(second, "POST", f"{api.url}/purchase-orders")}
            code, body = post(api.url, with_proof)
            assert code == 201, body
            assert body["credential_id"] == second.credential_id
            code, body = post(api.url, with_proof)
            assert (code, body["error"]) == (401, "dpop_replayed")
        finally:
            api.stop()


def test_an_unsigned_intent_of_a_keyed_agent_is_denied(stack: Stack) -> None:
    agent, owner = f"unsigned-bot-{uuid.uuid4().hex[:6]}", f"tom-{uuid.uuid4().hex[:6]}"
    register_with_key(stack, agent, owner, Ed25519PrivateKey.generate())
    with stack.client(agent_id=agent, audience=AUDIENCE, timeout=20) as gp:  # no agent_key
        verdict = gp.authorize("vendor.read", "vendor:ACME")
    assert (verdict.decision, verdict.reasons) == ("DENY", ("intent_signature_invalid",))


def test_the_command_line_registers_a_key_signs_and_verifies_with_a_proof(
        stack: Stack, tmp_path: Path) -> None:
    from integration.test_cli import cli

    agent, owner = f"cli-signer-{uuid.uuid4().hex[:6]}", f"ann-{uuid.uuid4().hex[:6]}"
    key = Ed25519PrivateKey.generate()
    pem = tmp_path / "agent.pem"
    pem.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    stack.publisher().publish(PrincipalStatusChanged(
        principal_id=owner, status=PrincipalStatus.ACTIVE, event_time=datetime.now(UTC),
        source="test"))
    run = cli(stack.settings, "register-agent", agent, "--owner", owner, "--purpose",
              "procurement", f"--public-key={agent_public_key(key)}")
    assert run.returncode == 0, run.stderr
    assert "signed intents" in run.stdout

    args = ("intent", "--agent", agent, "--action", "vendor.read", "--resource", "vendor:ACME",
            "--audience", AUDIENCE, "--timeout", "20", "--json")
    unsigned = cli(stack.settings, *args)
    assert unsigned.returncode == 1, unsigned.stderr
    assert json.loads(unsigned.stdout)["reasons"] == ["intent_signature_invalid"]
    signed = cli(stack.settings, *args, "--agent-key", str(pem))
    assert signed.returncode == 0, signed.stderr
    token = json.loads(signed.stdout)["credential"]
    assert cnf_of(token) == {"jkt": key_thumbprint(agent_public_key(key))}

    check = ("verify", "--audience", AUDIENCE, "--action", "vendor.read", "--resource",
             "vendor:ACME", "--jwks", f"{stack.settings.web_url}/.well-known/jwks.json")
    bare = cli(stack.settings, *check, token)
    assert (bare.returncode, bare.stdout.split(":")[:2]) == (1, ["invalid", " dpop_missing"])
    proof = dpop_proof(key, token=token, method="GET", url=TARGET)
    ok = cli(stack.settings, *check, "--dpop", proof, "--method", "GET", "--url", TARGET, token)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("valid: ") and "bound to key" in ok.stdout
