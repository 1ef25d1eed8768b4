"""Passes: short-lived Ed25519-signed JWS credentials for allowed agent actions, and their verifier.

A pass for an agent with a registered key is bound to that key (`cnf.jkt`): its holder
presents it with a DPoP proof (`dpop_proof`, RFC 9449) that the verifier checks too.

The broker side holds a `KeyStore` and a `PassIssuer`; target systems hold only the public
JWKS and a `PassVerifier`, and check each pass offline against the action they execute:

>>> import tempfile
>>> from datetime import datetime, timedelta, timezone
>>> from decimal import Decimal
>>> from pathlib import Path
>>> from gatepass.credentials import (
...     KeyStore, PassIssuer, PassRequest, PassVerifier, dpop_proof)
>>> now = datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc)
>>> tmp = tempfile.TemporaryDirectory()
>>> store = KeyStore.open(Path(tmp.name) / "keys", now=now)
>>> issuer = PassIssuer(store, issuer="gatepass", ttl=timedelta(minutes=5))
>>> issued = issuer.issue(PassRequest(
...     intent_id="intent-1", agent_id="agent-7", audience="payments", action="pay",
...     resource="invoice/42", amount=Decimal("120.00"), currency="eur", owner="alice",
...     delegation_chain=(), policy_version="v3", issued_at=now))
>>> verifier = PassVerifier(store.jwks(now=now), audience="payments", now=now.timestamp)
>>> verifier.verify(issued.token, action="pay", resource="invoice/42",
...                 amount=Decimal("120"), currency="EUR").intent_id
'intent-1'

A pass bound to the agent's key is presented with a fresh proof of possession:

>>> from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
>>> from gatepass.core import key_thumbprint
>>> from gatepass.sdk import agent_public_key
>>> agent_key = Ed25519PrivateKey.generate()
>>> bound = issuer.issue(PassRequest(
...     intent_id="intent-2", agent_id="agent-7", audience="payments", action="pay",
...     resource="invoice/43", amount=None, currency=None, owner="alice",
...     delegation_chain=(), policy_version="v3", issued_at=now,
...     cnf_jkt=key_thumbprint(agent_public_key(agent_key))))
>>> proof = dpop_proof(agent_key, token=bound.token, method="POST",
...                    url="https://payments.example/pay", now=now.timestamp())
>>> verifier.verify(bound.token, action="pay", resource="invoice/43", dpop=proof,
...                 method="POST", url="https://payments.example/pay").key_thumbprint == (
...     key_thumbprint(agent_public_key(agent_key)))
True
>>> tmp.cleanup()
"""

from gatepass.credentials._jose import scope_hash
from gatepass.credentials.dpop import DPOP_TYP, dpop_proof
from gatepass.credentials.issuer import (
    MAX_PASS_TTL,
    PASS_TYP,
    IssuedPass,
    PassApproval,
    PassIssuer,
    PassRequest,
    token_hash,
)
from gatepass.credentials.keystore import KeyStore, SigningKey
from gatepass.credentials.verifier import PassVerifier, ReplayCache, VerifiedPass, load_jwks

__all__ = [
    "DPOP_TYP",
    "MAX_PASS_TTL",
    "PASS_TYP",
    "IssuedPass",
    "KeyStore",
    "PassApproval",
    "PassIssuer",
    "PassRequest",
    "PassVerifier",
    "ReplayCache",
    "SigningKey",
    "VerifiedPass",
    "dpop_proof",
    "load_jwks",
    "scope_hash",
    "token_hash",
]
