"""DPoP proofs (RFC 9449): the caller shows it holds the key a pass is bound to.

A pass issued to an agent with a registered key carries `cnf.jkt`, the RFC 7638 thumbprint
of that key. Presenting it, the agent adds a proof: a compact JWS it signs afresh for each
request, with the header

    {"alg": "EdDSA", "jwk": {"crv": "Ed25519", "kty": "OKP", "x": <public key>},
     "typ": "dpop+jwt"}

and the claims

    jti   a unique id (the verifier accepts each once)
    htm   the HTTP method of the request, e.g. "POST"
    htu   the request's URI without query and fragment (see `normalize_htu`)
    iat   integer seconds; the verifier accepts it only within a short window of its clock
    ath   base64url SHA-256 of the pass, so the proof is for that pass only

Whoever steals a pass cannot make the proof, and a captured proof is good for one request
to one URI, for a minute, once. `PassVerifier.verify(..., dpop=, method=, url=)` checks it.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gatepass.credentials._jose import b64url_encode, canonical_json

__all__ = ["DPOP_TYP", "access_token_hash", "dpop_proof", "normalize_htu"]

DPOP_TYP = "dpop+jwt"
_DEFAULT_PORTS = {"http": 80, "https": 443}


def access_token_hash(token: str) -> str:
    """The `ath` claim: base64url SHA-256 of the ASCII pass (RFC 9449 section 4.2)."""
    return b64url_encode(hashlib.sha256(token.encode("ascii")).digest())


def normalize_htu(url: str) -> str:
    """`url` as compared with `htu`: scheme and host lower case, no default port, no query or
    fragment, an empty path as "/" (RFC 9449 section 4.3, RFC 3986 section 6.2.2-6.2.3).

    ValueError unless it is an absolute http(s) URI with a host.
    """
    if not isinstance(url, str):
        raise ValueError("the URI must be a string")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = parts.hostname  # lower-cased, without user info
    if scheme not in _DEFAULT_PORTS or not host:
        raise ValueError("not an absolute http(s) URI")
    port = parts.port  # ValueError for a port out of range
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal
    netloc = host if port in (None, _DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    return f"{scheme}://{netloc}{parts.path or '/'}"


def dpop_proof(key: Ed25519PrivateKey, *, token: str, method: str, url: str,
               now: float | None = None, jti: str | None = None) -> str:
    """A fresh DPoP proof by `key` for presenting `token` in `method` `url`."""
    x = b64url_encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
    header = {"alg": "EdDSA", "jwk": {"crv": "Ed25519", "kty": "OKP", "x": x}, "typ": DPOP_TYP}
    claims = {
        "jti": jti or b64url_encode(secrets.token_bytes(16)),
        "htm": method,
        "htu": normalize_htu(url),
        "iat": int(time.time() if now is None else now),
        "ath": access_token_hash(token),
    }
    signing_input = ".".join(b64url_encode(canonical_json(part)) for part in (header, claims))
    return f"{signing_input}.{b64url_encode(key.sign(signing_input.encode('ascii')))}"
