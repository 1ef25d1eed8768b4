"""Turns an allowed intent into a pass: a compact JWS signed with the store's active Ed25519 key.

The header is exactly {"alg": "EdDSA", "kid": <kid>, "typ": "gatepass-pass+jwt"}. Claims:

    iss                     the issuer name given to PassIssuer
    sub                     PassRequest.agent_id (the agent that will act)
    aud                     PassRequest.audience, a string (the target system)
    iat, nbf                PassRequest.issued_at (the decision time), integer seconds
    exp                     iat + ttl
    jti                     the credential id: uuid5(PASS_ID_NAMESPACE, intent_id), so re-issuing
                            for the same intent gives the same id and the verifier's replay cache
                            lets only one of them through
    intent_id, owner, policy_version
    scope                   scope_hash(action, resource, amount, currency): what the verifier
                            compares with the action actually being executed
    authorization_details   RFC 9396, one entry: {"type": "gatepass_action", "actions": [action],
                            "locations": [audience], "identifier": resource,
                            "amount": {"value": "120.5", "currency": "EUR"}}  (amount only if set)
    approval                only for an intent its owner had to approve:
                            {"request_id": ..., "approver": <principal id>,
                             "approved_at": <integer seconds>}
    cnf                     only when the agent has a registered key: {"jkt": <RFC 7638
                            thumbprint of its OKP JWK>} (RFC 9449 section 6.1): the pass is
                            then bound to that key, and a verifier demands a DPoP proof made
                            with it (see verifier.py); without cnf it is a bearer pass
    act                     RFC 8693 actor chain, only when the delegation chain is non-empty:
                            nested actors, most recent delegator outermost: the chain (a, b)
                            (a delegated to b, b to the agent) gives
                            {"sub": "b", "act": {"sub": "a"}}

Header and payload are canonical JSON and Ed25519 is deterministic, so the same request and
key always give the same token, byte for byte.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from gatepass.credentials._jose import (
    b64url_encode,
    canonical_json,
    decimal_string,
    require_aware,
    scope_hash,
)
from gatepass.credentials.keystore import KeyStore
from gatepass.errors import ConfigError, CredentialError

__all__ = [
    "MAX_PASS_TTL",
    "PASS_ID_NAMESPACE",
    "PASS_TYP",
    "IssuedPass",
    "PassApproval",
    "PassIssuer",
    "PassRequest",
    "actor_claim",
    "token_hash",
]

PASS_TYP = "gatepass-pass+jwt"  # noqa: S105 (a media type, not a password)
# Hard ceiling: a pass is a bearer credential for one action "now", never a session.
MAX_PASS_TTL = timedelta(hours=1)
# Fixed forever: changing it would change every credential id derived from an intent id.
PASS_ID_NAMESPACE = uuid.UUID("6f1d3c52-8a0e-4b7e-9d25-3c1f0b9e7a41")
_JKT = re.compile(r"[A-Za-z0-9_-]{43}")  # base64url of a SHA-256 digest


@dataclass(frozen=True, kw_only=True)
class PassApproval:
    """Who approved the action, for a pass whose intent waited for its owner."""

    request_id: str
    approver: str
    approved_at: datetime


@dataclass(frozen=True, kw_only=True)
class PassRequest:
    """What an allowed decision lets one agent do once, and why."""

    intent_id: str
    agent_id: str
    audience: str
    action: str
    resource: str
    amount: Decimal | None
    currency: str | None
    owner: str  # the agent's human owner (principal id)
    delegation_chain: tuple[str, ...]  # agent ids the request came through, originator first
    policy_version: str
    issued_at: datetime  # tz-aware decision time; the issuer never reads a clock
    approval: PassApproval | None = None
    # RFC 7638 thumbprint of the agent's public key: the pass is bound to it (cnf.jkt).
    cnf_jkt: str | None = None

    def __post_init__(self) -> None:
        names = ("intent_id", "agent_id", "audience", "action", "resource", "owner")
        for name in (*names, "policy_version"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise CredentialError(f"pass request: {name} must be a non-empty string")
        if not isinstance(self.delegation_chain, tuple) or not all(
            isinstance(a, str) and a for a in self.delegation_chain
        ):
            raise CredentialError("pass request: delegation_chain must be a tuple of agent ids")
        if self.currency is not None and (not isinstance(self.currency, str) or not self.currency):
            raise CredentialError("pass request: currency must be a non-empty string or None")
        if self.amount is not None:
            try:
                decimal_string(self.amount)
            except (TypeError, ValueError) as exc:
                raise CredentialError(f"pass request: {exc}") from exc
        try:
            require_aware(self.issued_at, "issued_at")
            if self.approval is not None:
                require_aware(self.approval.approved_at, "approval.approved_at")
        except ValueError as exc:
            raise CredentialError(f"pass request: {exc}") from exc
        if self.approval is not None and not (self.approval.request_id
                                              and self.approval.approver):
            raise CredentialError("pass request: approval needs a request id and an approver")
        if self.cnf_jkt is not None and not (isinstance(self.cnf_jkt, str)
                                             and _JKT.fullmatch(self.cnf_jkt)):
            raise CredentialError("pass request: cnf_jkt must be a SHA-256 JWK thumbprint")


@dataclass(frozen=True, repr=False)
class IssuedPass:
    """A signed pass. `token` is a bearer credential: audit records keep `token_hash` instead."""

    token: str
    credential_id: str
    kid: str
    issued_at: datetime
    expires_at: datetime
    token_hash: str  # base64url(SHA-256(token))

    def __repr__(self) -> str:
        return (
            f"IssuedPass(credential_id={self.credential_id!r}, kid={self.kid!r}, "
            f"expires_at={self.expires_at.isoformat()!r})"
        )


class PassIssuer:
    """Signs passes with the key store's active key (read per call, so rotation takes effect)."""

    def __init__(self, keystore: KeyStore, *, issuer: str, ttl: timedelta) -> None:
        if not isinstance(issuer, str) or not issuer:
            raise ConfigError("pass_issuer", "must be a non-empty string")
        if not isinstance(ttl, timedelta) or ttl <= timedelta(0) or ttl > MAX_PASS_TTL:
            raise ConfigError("pass_ttl", f"must be more than 0 and at most {MAX_PASS_TTL}")
        if ttl % timedelta(seconds=1):
            raise ConfigError("pass_ttl", "must be a whole number of seconds")
        self._keystore = keystore
        self._issuer = issuer
        self._ttl_seconds = int(ttl.total_seconds())
        self._headers: dict[str, str] = {}  # kid -> encoded header segment, built once per key

    def _header_segment(self, kid: str) -> str:
        segment = self._headers.get(kid)
        if segment is None:
            header = {"alg": "EdDSA", "kid": kid, "typ": PASS_TYP}
            segment = self._headers[kid] = b64url_encode(canonical_json(header))
        return segment

    def issue(self, req: PassRequest) -> IssuedPass:
        key = self._keystore.active
        iat = int(req.issued_at.timestamp())  # whole seconds, truncated like every JWT time
        exp = iat + self._ttl_seconds
        credential_id = str(uuid.uuid5(PASS_ID_NAMESPACE, req.intent_id))
        currency = None if req.currency is None else req.currency.upper()
        detail: dict[str, Any] = {
            "type": "gatepass_action",
            "actions": [req.action],
            "locations": [req.audience],
            "identifier": req.resource,
        }
        if req.amount is not None:
            detail["amount"] = {"value": decimal_string(req.amount), "currency": currency}
        claims: dict[str, Any] = {
            "iss": self._issuer,
            "sub": req.agent_id,
            "aud": req.audience,
            "iat": iat,
            "nbf": iat,
            "exp": exp,
            "jti": credential_id,
            "intent_id": req.intent_id,
            "scope": scope_hash(req.action, req.resource, req.amount, currency),
            "authorization_details": [detail],
            "owner": req.owner,
            "policy_version": req.policy_version,
        }
        if req.approval is not None:
            claims["approval"] = {"request_id": req.approval.request_id,
                                  "approver": req.approval.approver,
                                  "approved_at": int(req.approval.approved_at.timestamp())}
        if req.cnf_jkt is not None:
            claims["cnf"] = {"jkt": req.cnf_jkt}
        if req.delegation_chain:
            claims["act"] = actor_claim(req.delegation_chain)
        signing_input = f"{self._header_segment(key.kid)}.{b64url_encode(canonical_json(claims))}"
        token = f"{signing_input}.{b64url_encode(key.sign(signing_input.encode('ascii')))}"
        return IssuedPass(
            token=token,
            credential_id=credential_id,
            kid=key.kid,
            issued_at=datetime.fromtimestamp(iat, UTC),
            expires_at=datetime.fromtimestamp(exp, UTC),
            token_hash=token_hash(token),
        )


def actor_claim(chain: tuple[str, ...]) -> dict[str, Any]:
    """RFC 8693 `act` for a delegation chain (originator first): the last delegator outermost."""
    act: dict[str, Any] | None = None
    for agent_id in chain:  # originator first, so each later delegator wraps the earlier ones
        act = {"sub": agent_id} if act is None else {"sub": agent_id, "act": act}
    if act is None:
        raise ValueError("empty delegation chain")
    return act


def token_hash(token: str) -> str:
    """base64url(SHA-256(token)): how audit records refer to a pass without holding it."""
    return b64url_encode(hashlib.sha256(token.encode("ascii")).digest())
