"""Passes: short-lived Ed25519-signed JWS credentials for allowed agent actions, and their verifier.

The broker side holds a `KeyStore` and a `PassIssuer`; target systems hold only the public
JWKS and a `PassVerifier`, and check each pass offline against the action they execute:

>>> import tempfile
>>> from datetime import datetime, timedelta, timezone
>>> from decimal import Decimal
>>> from pathlib import Path
>>> from gatepass.credentials import KeyStore, PassIssuer, PassRequest, PassVerifier
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
>>> tmp.cleanup()
"""

from gatepass.credentials._jose import scope_hash
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
    "load_jwks",
    "scope_hash",
    "token_hash",
]
