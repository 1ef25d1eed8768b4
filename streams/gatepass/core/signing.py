"""Intent signatures: what an agent signs, and the check `decide` makes of it.

An agent registered with an Ed25519 public key (RFC 8037 OKP `x`) signs every intent it
sends; the signature covers every field of the intent except `signature` itself. The signed
bytes are `intent_signing_input(intent)`: the RFC 8785 (JCS) canonical JSON, UTF-8, of

    {"action": ..., "agent_id": ..., "amount": "120.5" | null, "audience": ...,
     "context": {...}, "currency": "USD" | null, "delegation_chain": [...],
     "intent_id": ..., "label": "gatepass-intent-v1", "requested_at": <integer ms>,
     "resource": ...}

Amounts are plain decimal strings without trailing zeros (120, 120.00 and 1.2E+2 all give
"120", as the topic's fixed-scale decimal cannot tell them apart); `requested_at` is
integer milliseconds since the epoch (the topic's precision: finer digits are not signed).
The label separates these bytes from anything else the key might sign; a future field
gets a new label. Only the acting agent signs: agents in `delegation_chain` are named by
it (and checked by `decide`), not signed by.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gatepass.core.model import Intent
from gatepass.credentials._jose import (
    b64url_decode,
    b64url_encode,
    decimal_string,
    ed25519_public_key,
    ed25519_thumbprint,
)

__all__ = [
    "INTENT_SIGNING_LABEL",
    "intent_signature_problem",
    "intent_signing_input",
    "key_thumbprint",
    "sign_intent",
    "usable_key_thumbprint",
]

INTENT_SIGNING_LABEL = "gatepass-intent-v1"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def _jcs(value: Any) -> Any:
    """Members ordered as RFC 8785 orders them: by the UTF-16 code units of their names."""
    if isinstance(value, dict):
        return {k: _jcs(value[k]) for k in sorted(value, key=lambda k: k.encode("utf-16-be"))}
    if isinstance(value, list):
        return [_jcs(v) for v in value]
    return value


def intent_signing_input(intent: Intent) -> bytes:
    """The bytes an agent signs for `intent` (every field but `signature`); see the module.

    Deterministic: equal intents, as the topic carries them, give equal bytes. Raises
    ValueError for an intent that cannot be carried (naive time, unencodable text).
    """
    if intent.requested_at.utcoffset() is None:
        raise ValueError("requested_at must carry a time zone")
    doc = {
        "label": INTENT_SIGNING_LABEL,
        "intent_id": intent.intent_id,
        "agent_id": intent.agent_id,
        "action": intent.action,
        "resource": intent.resource,
        "audience": intent.audience,
        "amount": None if intent.amount is None else decimal_string(intent.amount),
        "currency": intent.currency,
        "context": dict(intent.context),
        "requested_at": (intent.requested_at - _EPOCH) // _MS,
        "delegation_chain": list(intent.delegation_chain),
    }
    text = json.dumps(_jcs(doc), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.encode("utf-8")  # a lone surrogate raises UnicodeEncodeError, a ValueError


def sign_intent(intent: Intent, key: Ed25519PrivateKey) -> str:
    """The base64url signature of `intent` by `key` (what goes into `Intent.signature`)."""
    return b64url_encode(key.sign(intent_signing_input(intent)))


def key_thumbprint(public_key: str) -> str:
    """RFC 7638 thumbprint of an agent's OKP key `x`; ValueError when `x` is not a usable key."""
    ed25519_public_key(public_key)  # refuses malformed and small-order keys
    return ed25519_thumbprint(b64url_decode(public_key))


def usable_key_thumbprint(public_key: str | None) -> str | None:
    """The thumbprint of an agent's key for its identity facts (and its passes' cnf.jkt);
    None for no key or an unusable one, whose intents `intent_signature_problem` refuses."""
    if public_key is None:
        return None
    try:
        return key_thumbprint(public_key)
    except ValueError:
        return None


def intent_signature_problem(intent: Intent, public_key: str | None, *,
                             required: bool = False) -> str | None:
    """Why `intent`'s signature is not acceptable (None: it is, or none is needed).

    With a registered key the signature must verify under it; without one, a signature is
    needed only when `required` (and then nothing can verify it, so the intent fails).
    Any doubt (malformed key, signature or intent) is a problem, never a pass.
    """
    if public_key is None:
        if required:
            return (f"agent {intent.agent_id!r} has no registered public key and this "
                    "deployment requires signed intents")
        return None
    if intent.signature is None:
        return f"intent is not signed; agent {intent.agent_id!r} has a registered public key"
    try:
        key = ed25519_public_key(public_key)
    except ValueError as exc:
        return f"the agent's registered public key is unusable ({exc})"
    try:
        signature = b64url_decode(intent.signature)
        if len(signature) != 64:
            raise ValueError("not 64 bytes")
        key.verify(signature, intent_signing_input(intent))
    except (ValueError, TypeError, InvalidSignature):
        return "intent signature does not verify under the agent's registered public key"
    return None
