"""Offline verification of passes at the target system: every check, each failure its own error.

`PassVerifier.verify` runs the checks in this order; the first failure is raised:

    size <= max_token_bytes, before any decoding          TokenTooLargeError
    3 canonical base64url segments, JSON objects,
      no duplicate member names in header or payload      TokenMalformedError
    alg is exactly "EdDSA"                                 AlgorithmNotAllowedError
    no jku/x5u/jwk/x5c/x5t/x5t#S256 (never fetched or
      used), no crit (we define no critical extensions)    HeaderNotAllowedError
    typ is exactly PASS_TYP                                TypeInvalidError
    kid well-formed, in the JWKS, an OKP/Ed25519 key       KeyUnknownError
    Ed25519 signature                                      SignatureInvalidError
    iss sub aud iat nbf exp jti intent_id scope owner      ClaimMissingError
    their types (times are integers, not bools/strings),
      exp after iat, the configured issuer                 ClaimInvalidError
    exp > now - leeway                                     TokenExpiredError
    nbf and iat <= now + leeway                            TokenNotYetValidError
    exp - iat <= max_ttl                                   LifetimeExceededError
    aud is the verifier's audience                         AudienceMismatchError
    scope == scope_hash of the action being executed       ScopeMismatchError
    a key-bound pass (cnf.jkt), or require_dpop, and no
      DPoP proof; require_dpop and a pass without cnf      ProofMissingError
    the proof (only when the pass has cnf.jkt), in order:  ProofInvalidError
      size, 3 canonical segments, JSON objects; typ is
      exactly "dpop+jwt"; alg exactly "EdDSA"; no jku,
      x5u, x5c, kid or crit; jwk an OKP/Ed25519 public key
      (a private member "d" is refused); its thumbprint ==
      cnf.jkt; Ed25519 signature; jti htm htu iat ath
      present and typed; htm == the request's method
      (case-sensitive); htu == its URI (normalised, no
      query or fragment); |now - iat| <= dpop_window;
      ath == base64url SHA-256 of the pass
    the proof's jti never presented before (remembered)    ProofReplayedError
    jti never presented before (then remembered)           TokenReplayedError

`aud` may be the audience string or a one-member array holding it: a pass is for exactly one
target system, so a multi-audience pass (usable at another system too) is refused.
The jti is consumed only once every other check has passed: a rejected pass never burns it
(nor does a rejected or replayed proof). Proof jtis live in a ReplayCache of their own.
A verifier holds one parsed JWKS; after a key rotation build a new one, passing the same
ReplayCache so single use holds across the switch.
"""

from __future__ import annotations

import heapq
import ipaddress
import math
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.client import HTTPException
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gatepass.credentials._jose import (
    KID_PATTERN,
    b64url_decode,
    ed25519_public_key,
    ed25519_thumbprint,
    loads_strict,
    scope_hash,
)
from gatepass.credentials.dpop import DPOP_TYP, access_token_hash, normalize_htu
from gatepass.credentials.issuer import PASS_TYP
from gatepass.errors import (
    AlgorithmNotAllowedError,
    AudienceMismatchError,
    ClaimInvalidError,
    ClaimMissingError,
    ConfigError,
    CredentialError,
    HeaderNotAllowedError,
    JwksError,
    KeyUnknownError,
    LifetimeExceededError,
    ProofInvalidError,
    ProofMissingError,
    ProofReplayedError,
    ReplayCacheFullError,
    ScopeMismatchError,
    SignatureInvalidError,
    TokenExpiredError,
    TokenMalformedError,
    TokenNotYetValidError,
    TokenReplayedError,
    TokenTooLargeError,
    TypeInvalidError,
)

__all__ = ["PassVerifier", "ReplayCache", "VerifiedPass", "load_jwks"]

# Header members that would let the token choose its own verification key.
_KEY_REFERENCE_HEADERS = ("jku", "x5u", "jwk", "x5c", "x5t", "x5t#S256")
_REQUIRED_CLAIMS = ("iss", "sub", "aud", "iat", "nbf", "exp", "jti", "intent_id", "scope", "owner")
_STRING_CLAIMS = ("iss", "sub", "jti", "intent_id", "scope", "owner")
_TIME_CLAIMS = ("iat", "nbf", "exp")
_MAX_TIME = 253402300799  # 9999-12-31T23:59:59Z, the last second a datetime can hold
_MAX_JWKS_BYTES = 1 << 20
_JKT = re.compile(r"[A-Za-z0-9_-]{43}")  # base64url of a SHA-256 digest
# Proof header members that would name a key other than the one in `jwk`.
_PROOF_REFUSED_HEADERS = ("jku", "x5u", "x5c", "x5t", "x5t#S256", "kid", "crit")
_PROOF_CLAIMS = ("jti", "htm", "htu", "iat", "ath")
_MAX_JTI = 256
_HEADER_CACHE = 64  # distinct pass headers parsed once (one per signing key in practice)


class ReplayCache:
    """In-memory, thread-safe set of presented jtis, each kept until its expiry; first use wins.

    Bounded: when full of unexpired entries it refuses new ones (ReplayCacheFullError) rather
    than evict a live jti, which would reopen it to replay. Only fully verified passes reach
    it, so filling it takes that many genuine passes, not forged ones.
    """

    def __init__(self, *, max_entries: int = 100_000) -> None:
        if max_entries <= 0:
            raise ConfigError("replay_cache_max_entries", "must be positive")
        self._max_entries = max_entries
        self._seen: dict[str, float] = {}
        self._expiries: list[tuple[float, str]] = []  # min-heap, so expiry costs O(log n) each
        self._lock = threading.Lock()

    def check_and_store(self, jti: str, exp: int, now: float) -> bool:
        """Remember `jti` until `exp` (epoch seconds); False if it is already remembered.

        The verifier passes the pass's exp plus its leeway: as long as a pass could still be
        accepted, its jti must still be here.
        """
        with self._lock:
            while self._expiries and self._expiries[0][0] <= now:
                _, old = heapq.heappop(self._expiries)
                del self._seen[old]
            if jti in self._seen:
                return False
            if len(self._seen) >= self._max_entries:
                raise ReplayCacheFullError(
                    f"replay cache holds {self._max_entries} unexpired passes; refusing more"
                )
            self._seen[jti] = exp
            heapq.heappush(self._expiries, (exp, jti))
            return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._seen)


@dataclass(frozen=True)
class VerifiedPass:
    """A pass that passed every check; `claims` is its full payload."""

    claims: dict[str, Any]
    kid: str
    credential_id: str
    agent_id: str
    intent_id: str
    owner: str
    expires_at: datetime

    @property
    def approver(self) -> str | None:
        """Who approved the action, when its intent waited for the owner."""
        approval = self.claims.get("approval")
        return approval["approver"] if isinstance(approval, dict) else None

    @property
    def key_thumbprint(self) -> str | None:
        """cnf.jkt of a key-bound pass (the caller proved it holds that key); None: bearer."""
        cnf = self.claims.get("cnf")
        return cnf["jkt"] if isinstance(cnf, dict) else None


class PassVerifier:
    """Verifies passes for one audience against one JWKS, offline."""

    def __init__(
        self,
        jwks: Mapping[str, Any],
        *,
        audience: str,
        issuer: str | None = None,
        max_ttl: timedelta = timedelta(hours=1),
        leeway: timedelta = timedelta(seconds=30),
        replay_cache: ReplayCache | None = None,
        now: Callable[[], float] = time.time,
        max_token_bytes: int = 8192,
        require_dpop: bool = False,
        dpop_window: timedelta = timedelta(seconds=60),
        dpop_replay_cache: ReplayCache | None = None,
    ) -> None:
        if not isinstance(audience, str) or not audience:
            raise ConfigError("pass_audience", "must be a non-empty string")
        if issuer is not None and (not isinstance(issuer, str) or not issuer):
            raise ConfigError("pass_issuer", "must be a non-empty string or None")
        if max_ttl <= timedelta(0):
            raise ConfigError("pass_max_ttl", "must be positive")
        if leeway < timedelta(0):
            raise ConfigError("pass_leeway", "must not be negative")
        if max_token_bytes <= 0:
            raise ConfigError("pass_max_token_bytes", "must be positive")
        if not timedelta(seconds=1) <= dpop_window <= timedelta(minutes=10):
            raise ConfigError("dpop_window", "must be between 1 second and 10 minutes")
        if dpop_replay_cache is not None and dpop_replay_cache is replay_cache:
            raise ConfigError("dpop_replay_cache", "must not be the passes' replay cache")
        self._keys, self._unusable = _parse_jwks(jwks)
        self._audience = audience
        self._issuer = issuer
        self._max_ttl = max_ttl.total_seconds()
        self._leeway = leeway.total_seconds()
        self._replay_cache = ReplayCache() if replay_cache is None else replay_cache
        self._now = now
        self._max_token_bytes = max_token_bytes
        self._headers: dict[str, dict[str, Any]] = {}
        self._require_dpop = require_dpop
        self._dpop_window = dpop_window.total_seconds()
        self._dpop_replay_cache = ReplayCache() if dpop_replay_cache is None \
            else dpop_replay_cache

    def verify(
        self,
        token: str,
        *,
        action: str,
        resource: str,
        amount: Decimal | None = None,
        currency: str | None = None,
        dpop: str | None = None,
        method: str | None = None,
        url: str | None = None,
    ) -> VerifiedPass:
        """Check `token` as a pass for exactly this action; consume it; return its claims.

        A pass bound to a key (cnf.jkt) needs `dpop`, a proof made with that key for this
        request: its `method` (e.g. "POST") and `url` (the target URI as the caller used it).
        """
        header, claims, signing_input, signature = self._decode(token)
        key, kid = self._key_for(header)
        try:
            key.verify(signature, signing_input)
        except InvalidSignature:
            raise SignatureInvalidError("signature does not verify") from None
        head = token[:token.index(".")]
        if head not in self._headers and len(self._headers) < _HEADER_CACHE:
            # Passes of one key share their header byte for byte: parse it once. Only a
            # header our own key signed is kept (junk headers cannot fill the cache), by its
            # exact segment, so a cached header is the one the token carries.
            self._headers[head] = header
        self._check_claims(claims)
        now = self._now()
        self._check_times(claims, now)
        self._check_audience(claims["aud"])
        try:
            expected_scope = scope_hash(action, resource, amount, currency)
        except (TypeError, ValueError) as exc:
            raise ScopeMismatchError(f"cannot compute the executed action's scope: {exc}") from exc
        if claims["scope"] != expected_scope:
            raise ScopeMismatchError("pass does not cover this action, resource and amount")
        proof = self._check_binding(token, claims, dpop, method, url, now)
        if proof is not None:
            # Before the pass's jti: a replayed proof must not use up the pass.
            proof_jti, proof_until = proof
            if not self._dpop_replay_cache.check_and_store(proof_jti, proof_until, now):
                raise ProofReplayedError("DPoP proof was already presented")
        # Last: only a pass that is otherwise valid may use up its jti.
        remember_until = claims["exp"] + math.ceil(self._leeway)
        if not self._replay_cache.check_and_store(claims["jti"], remember_until, now):
            raise TokenReplayedError(f"pass {claims['jti']} was already presented")
        return VerifiedPass(
            claims=claims,
            kid=kid,
            credential_id=claims["jti"],
            agent_id=claims["sub"],
            intent_id=claims["intent_id"],
            owner=claims["owner"],
            expires_at=datetime.fromtimestamp(claims["exp"], UTC),
        )

    def _decode(self, token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
        if not isinstance(token, str):
            raise TokenMalformedError("token must be a str")
        # Length in characters first (cheap, bounds the encode), then in UTF-8 bytes (the
        # same number for ASCII, which every well-formed token is).
        if len(token) > self._max_token_bytes or (
            not token.isascii()
            and len(token.encode("utf-8", "surrogatepass")) > self._max_token_bytes
        ):
            raise TokenTooLargeError(f"token exceeds {self._max_token_bytes} bytes")
        segments = token.split(".")
        if len(segments) != 3:
            raise TokenMalformedError("a compact JWS has three dot-separated segments")
        header = self._headers.get(segments[0])
        try:
            header_bytes = b"" if header is not None else b64url_decode(segments[0])
            payload_bytes, signature = b64url_decode(segments[1]), b64url_decode(segments[2])
        except ValueError:
            raise TokenMalformedError("segment is not canonical unpadded base64url") from None
        if header is None:
            header = self._json_object("header", header_bytes)
        claims = self._json_object("payload", payload_bytes)
        signing_input = token[:len(segments[0]) + 1 + len(segments[1])].encode("ascii")
        return header, claims, signing_input, signature

    @staticmethod
    def _json_object(name: str, raw: bytes) -> dict[str, Any]:
        try:
            value = loads_strict(raw)
        except ValueError as exc:
            raise TokenMalformedError(f"{name} is not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise TokenMalformedError(f"{name} is not a JSON object")
        return value

    def _key_for(self, header: dict[str, Any]) -> tuple[Ed25519PublicKey, str]:
        alg = header.get("alg")
        if alg != "EdDSA":
            raise AlgorithmNotAllowedError(f"alg {_short(alg)} is not allowed; passes use EdDSA")
        refused = [name for name in _KEY_REFERENCE_HEADERS if name in header]
        if refused:
            raise HeaderNotAllowedError(f"header member {refused[0]!r} is not allowed")
        if "crit" in header:
            raise HeaderNotAllowedError("header member 'crit' is not allowed")
        if header.get("typ") != PASS_TYP:
            raise TypeInvalidError(f"typ {_short(header.get('typ'))} is not {PASS_TYP!r}")
        kid = header.get("kid")
        if not isinstance(kid, str) or not KID_PATTERN.fullmatch(kid):
            raise KeyUnknownError("kid is missing or malformed")
        key = self._keys.get(kid)
        if key is None:
            if kid in self._unusable:
                raise KeyUnknownError(f"kid {kid!r} is not an EdDSA/Ed25519 signing key")
            raise KeyUnknownError(f"kid {kid!r} is not in the trusted key set")
        return key, kid

    def _check_claims(self, claims: dict[str, Any]) -> None:
        for name in _REQUIRED_CLAIMS:
            if name not in claims:
                raise ClaimMissingError(f"claim {name!r} is missing")
        for name in _STRING_CLAIMS:
            if not isinstance(claims[name], str) or not claims[name]:
                raise ClaimInvalidError(f"claim {name!r} must be a non-empty string")
        for name in _TIME_CLAIMS:
            value = claims[name]
            # type() rather than isinstance(): bool is an int subclass and True is not a time.
            if type(value) is not int or not 0 <= value <= _MAX_TIME:
                raise ClaimInvalidError(f"claim {name!r} must be integer seconds since the epoch")
        aud = claims["aud"]
        if not isinstance(aud, str) and not (
            isinstance(aud, list) and all(isinstance(a, str) for a in aud)
        ):
            raise ClaimInvalidError("claim 'aud' must be a string or an array of strings")
        if claims["exp"] <= claims["iat"]:
            raise ClaimInvalidError("claim 'exp' must be after 'iat'")
        if self._issuer is not None and claims["iss"] != self._issuer:
            raise ClaimInvalidError(f"claim 'iss' is not the trusted issuer {self._issuer!r}")
        if "cnf" in claims:
            cnf = claims["cnf"]
            # jkt is the only confirmation method we issue; another one is not understood,
            # and a binding we cannot check must not become a bearer pass.
            if (not isinstance(cnf, dict) or set(cnf) != {"jkt"}
                    or not isinstance(cnf["jkt"], str) or not _JKT.fullmatch(cnf["jkt"])):
                raise ClaimInvalidError("claim 'cnf' must be {\"jkt\": <key thumbprint>}")
        if "approval" in claims:
            approval = claims["approval"]
            if (not isinstance(approval, dict) or set(approval) != {"request_id", "approver",
                                                                    "approved_at"}
                    or not all(isinstance(approval[k], str) and approval[k]
                               for k in ("request_id", "approver"))
                    or type(approval["approved_at"]) is not int
                    or not 0 <= approval["approved_at"] <= claims["iat"]):
                raise ClaimInvalidError("claim 'approval' is malformed")

    def _check_times(self, claims: dict[str, Any], now: float) -> None:
        if claims["exp"] <= now - self._leeway:
            raise TokenExpiredError("pass has expired")
        if claims["nbf"] > now + self._leeway or claims["iat"] > now + self._leeway:
            raise TokenNotYetValidError("pass is not valid yet")
        if claims["exp"] - claims["iat"] > self._max_ttl:
            raise LifetimeExceededError(f"pass lifetime exceeds {self._max_ttl:g} s")

    def _check_binding(self, token: str, claims: dict[str, Any], dpop: str | None,
                       method: str | None, url: str | None,
                       now: float) -> tuple[str, int] | None:
        """The DPoP proof of a key-bound pass: (its jti key, remember-until), or None for a
        bearer pass (allowed unless require_dpop)."""
        cnf = claims.get("cnf")
        if cnf is None:
            if self._require_dpop:
                raise ProofMissingError("pass is not bound to a key (no cnf.jkt); this verifier "
                                        "accepts DPoP-bound passes only")
            return None  # a bearer pass; a proof beside it proves nothing about it
        if dpop is None or dpop == "":
            raise ProofMissingError("pass is bound to a key (cnf.jkt): a DPoP proof is required")
        if not isinstance(method, str) or not method or not isinstance(url, str):
            raise ProofInvalidError("the request's method and url are needed to check the proof")
        jkt = cnf["jkt"]
        header, proof, signing_input, signature = self._decode_proof(dpop)
        if header.get("typ") != DPOP_TYP:
            raise ProofInvalidError(f"proof typ {_short(header.get('typ'))} is not {DPOP_TYP!r}")
        if header.get("alg") != "EdDSA":
            raise ProofInvalidError(f"proof alg {_short(header.get('alg'))} is not allowed; "
                                    "proofs use EdDSA")
        refused = [name for name in _PROOF_REFUSED_HEADERS if name in header]
        if refused:
            raise ProofInvalidError(f"proof header member {refused[0]!r} is not allowed")
        jwk = header.get("jwk")
        if not isinstance(jwk, dict):
            raise ProofInvalidError("proof header has no jwk")
        if "d" in jwk:
            raise ProofInvalidError("proof jwk holds a private key member 'd'")
        if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
            raise ProofInvalidError("proof jwk is not an OKP/Ed25519 key")
        try:
            key = ed25519_public_key(jwk.get("x"))  # type: ignore[arg-type]
        except ValueError as exc:
            raise ProofInvalidError(f"proof jwk is not a usable Ed25519 key ({exc})") from None
        if ed25519_thumbprint(b64url_decode(jwk["x"])) != jkt:
            raise ProofInvalidError("proof is not made with the key the pass is bound to")
        try:
            key.verify(signature, signing_input)
        except InvalidSignature:
            raise ProofInvalidError("proof signature does not verify") from None
        for name in _PROOF_CLAIMS:
            if name not in proof:
                raise ProofInvalidError(f"proof claim {name!r} is missing")
        for name in ("jti", "htm", "htu", "ath"):
            if not isinstance(proof[name], str) or not proof[name]:
                raise ProofInvalidError(f"proof claim {name!r} must be a non-empty string")
        if len(proof["jti"]) > _MAX_JTI:
            raise ProofInvalidError(f"proof jti is longer than {_MAX_JTI} characters")
        if type(proof["iat"]) is not int or not 0 <= proof["iat"] <= _MAX_TIME:
            raise ProofInvalidError("proof claim 'iat' must be integer seconds since the epoch")
        if proof["htm"] != method:
            raise ProofInvalidError(f"proof is for method {_short(proof['htm'])}, "
                                    f"not {_short(method)}")
        try:
            htu = normalize_htu(proof["htu"])
        except ValueError:
            raise ProofInvalidError("proof htu is not an absolute http(s) URI") from None
        try:
            target = normalize_htu(url)
        except ValueError:
            raise ProofInvalidError("the request url is not an absolute http(s) URI") from None
        if htu != target:
            raise ProofInvalidError(f"proof is for {_short(htu)}, not {_short(target)}")
        if abs(now - proof["iat"]) > self._dpop_window:
            raise ProofInvalidError(f"proof iat is more than {self._dpop_window:g} s from now")
        if proof["ath"] != access_token_hash(token):
            raise ProofInvalidError("proof is for another pass (ath)")
        # Kept until no clock in the window could accept the proof any more.
        return f"{jkt}:{proof['jti']}", proof["iat"] + math.ceil(self._dpop_window) + 1

    def _decode_proof(self, proof: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
        try:
            return self._decode(proof)
        except CredentialError as exc:
            raise ProofInvalidError(f"proof: {exc}") from None

    def _check_audience(self, aud: str | list[str]) -> None:
        if isinstance(aud, list):
            ok = len(aud) == 1 and aud[0] == self._audience
        else:
            ok = aud == self._audience
        if not ok:
            raise AudienceMismatchError(f"pass is not for audience {self._audience!r}")


def _short(value: Any) -> str:
    # Attacker-controlled values go into messages and logs: quoted and cut short.
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _parse_jwks(jwks: Mapping[str, Any]) -> tuple[dict[str, Ed25519PublicKey], set[str]]:
    """Usable Ed25519 keys by kid, and the kids of other keys (RSA, EC...) we will not use."""
    keys_list = jwks.get("keys") if isinstance(jwks, Mapping) else None
    if not isinstance(keys_list, list):
        raise JwksError("a JWKS is an object with a 'keys' array")
    keys: dict[str, Ed25519PublicKey] = {}
    unusable: set[str] = set()
    for jwk in keys_list:
        if not isinstance(jwk, Mapping):
            raise JwksError("each JWKS entry must be an object")
        if "d" in jwk:
            raise JwksError("the JWKS holds a private key member 'd'; publish public keys only")
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not KID_PATTERN.fullmatch(kid):
            continue  # a key no pass can name is simply not a candidate
        if kid in keys or kid in unusable:
            raise JwksError(f"kid {kid!r} appears twice in the JWKS")
        if (
            jwk.get("kty") != "OKP"
            or jwk.get("crv") != "Ed25519"
            or jwk.get("use", "sig") != "sig"
            or jwk.get("alg", "EdDSA") != "EdDSA"
        ):
            unusable.add(kid)
            continue
        x = jwk.get("x")
        try:
            if not isinstance(x, str):
                raise ValueError("missing x")
            # Small-order keys are refused: whoever could slip one into a JWKS could forge
            # passes without a private key.
            keys[kid] = ed25519_public_key(x)
        except ValueError as exc:
            raise JwksError(f"kid {kid!r}: bad Ed25519 public key ({exc})") from exc
    return keys, unusable


def load_jwks(
    source: str | Path, *, timeout: float = 5.0, allow_insecure_http: bool = False
) -> dict[str, Any]:
    """Read a JWKS from a file path or an https URL (at most 1 MiB); failures raise JwksError.

    Plain http is accepted only for loopback hosts unless `allow_insecure_http`: whoever can
    alter the JWKS in transit can sign passes.
    """
    if isinstance(source, str) and "://" in source:
        data = _fetch(source, timeout=timeout, allow_insecure_http=allow_insecure_http)
    else:
        try:
            with open(source, "rb") as f:
                data = f.read(_MAX_JWKS_BYTES + 1)
        except OSError as exc:
            raise JwksError(f"{source}: cannot read JWKS: {exc.strerror or exc}") from exc
    if len(data) > _MAX_JWKS_BYTES:
        raise JwksError(f"{source}: JWKS is larger than {_MAX_JWKS_BYTES} bytes")
    try:
        doc = loads_strict(data)
    except ValueError as exc:
        raise JwksError(f"{source}: JWKS is not valid JSON ({exc})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise JwksError(f"{source}: not a JWKS (an object with a 'keys' array)")
    return doc


def _check_url(url: str, *, allow_insecure_http: bool) -> None:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "https":
        return
    if scheme == "http":
        host = parts.hostname or ""
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if loopback or allow_insecure_http:
            return
        raise JwksError(f"{url}: refusing plain http to a non-loopback host; use https")
    raise JwksError(f"{url}: only https (or loopback http) JWKS URLs are supported")


def _fetch(url: str, *, timeout: float, allow_insecure_http: bool) -> bytes:
    _check_url(url, allow_insecure_http=allow_insecure_http)

    class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req, fp, code, msg, headers, newurl):
            _check_url(newurl, allow_insecure_http=allow_insecure_http)
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    opener = urllib.request.build_opener(_CheckedRedirects)
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    try:
        with opener.open(request, timeout=timeout) as response:
            return bytes(response.read(_MAX_JWKS_BYTES + 1))
    except (OSError, HTTPException, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise JwksError(f"{url}: cannot fetch JWKS: {reason}") from exc
