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
    jti never presented before (then remembered)           TokenReplayedError

`aud` may be the audience string or a one-member array holding it: a pass is for exactly one
target system, so a multi-audience pass (usable at another system too) is refused.
The jti is consumed only once every other check has passed: a rejected pass never burns it.
A verifier holds one parsed JWKS; after a key rotation build a new one, passing the same
ReplayCache so single use holds across the switch.
"""

from __future__ import annotations

import heapq
import ipaddress
import math
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

from gatepass.credentials._jose import KID_PATTERN, b64url_decode, loads_strict, scope_hash
from gatepass.credentials.issuer import PASS_TYP
from gatepass.errors import (
    AlgorithmNotAllowedError,
    AudienceMismatchError,
    ClaimInvalidError,
    ClaimMissingError,
    ConfigError,
    HeaderNotAllowedError,
    JwksError,
    KeyUnknownError,
    LifetimeExceededError,
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
        self._keys, self._unusable = _parse_jwks(jwks)
        self._audience = audience
        self._issuer = issuer
        self._max_ttl = max_ttl.total_seconds()
        self._leeway = leeway.total_seconds()
        self._replay_cache = ReplayCache() if replay_cache is None else replay_cache
        self._now = now
        self._max_token_bytes = max_token_bytes

    def verify(
        self,
        token: str,
        *,
        action: str,
        resource: str,
        amount: Decimal | None = None,
        currency: str | None = None,
    ) -> VerifiedPass:
        """Check `token` as a pass for exactly this action; consume it; return its claims."""
        header, claims, signing_input, signature = self._decode(token)
        key, kid = self._key_for(header)
        try:
            key.verify(signature, signing_input)
        except InvalidSignature:
            raise SignatureInvalidError("signature does not verify") from None
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
        # Length in characters first (cheap, bounds the encode), then in UTF-8 bytes.
        if len(token) > self._max_token_bytes or (
            len(token.encode("utf-8", "surrogatepass")) > self._max_token_bytes
        ):
            raise TokenTooLargeError(f"token exceeds {self._max_token_bytes} bytes")
        segments = token.split(".")
        if len(segments) != 3:
            raise TokenMalformedError("a pass has three dot-separated segments")
        try:
            header_bytes, payload_bytes, signature = (b64url_decode(s) for s in segments)
        except ValueError:
            raise TokenMalformedError("segment is not canonical unpadded base64url") from None
        parts = []
        for name, raw in (("header", header_bytes), ("payload", payload_bytes)):
            try:
                value = loads_strict(raw)
            except ValueError as exc:
                raise TokenMalformedError(f"{name} is not valid JSON: {exc}") from None
            if not isinstance(value, dict):
                raise TokenMalformedError(f"{name} is not a JSON object")
            parts.append(value)
        signing_input = f"{segments[0]}.{segments[1]}".encode("ascii")
        return parts[0], parts[1], signing_input, signature

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


# Encodings of the Ed25519 points of small order (and their non-canonical aliases), compared
# with the sign bit cleared, as libsodium's ge25519_has_small_order does.
_SMALL_ORDER = frozenset(bytes.fromhex(h) for h in (
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
))


def _small_order(raw: bytes) -> bool:
    return raw[:31] + bytes([raw[31] & 0x7F]) in _SMALL_ORDER


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
            raw = b64url_decode(x)
            if len(raw) != 32:
                raise ValueError("x is not 32 bytes")
            if _small_order(raw):
                # R = identity, S = 0 verifies under such a key for ANY message: whoever can
                # slip one into a JWKS could forge passes without a private key.
                raise ValueError("small-order point")
            keys[kid] = Ed25519PublicKey.from_public_bytes(raw)
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
