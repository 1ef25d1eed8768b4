"""Small JOSE helpers (and a clock guard) shared by the key store, issuer and verifier.

Strict on input (unpadded canonical base64url, JSON without duplicate members) and
canonical on output, so the same inputs always give the same bytes.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
from datetime import datetime
from decimal import Decimal
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = [
    "KID_PATTERN",
    "b64url_decode",
    "b64url_encode",
    "canonical_json",
    "decimal_string",
    "ed25519_public_key",
    "ed25519_thumbprint",
    "is_small_order",
    "loads_strict",
    "require_aware",
    "scope_hash",
]

# A kid is an RFC 7638 thumbprint for our keys; anything else (dots, slashes, spaces)
# is refused so that no kid can ever be used as a path or a query fragment.
KID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,128}")

_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def b64url_encode(data: bytes) -> str:
    """Unpadded base64url (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode unpadded base64url, refusing padding, foreign characters and non-canonical forms.

    Non-canonical encodings (stray low bits in the last character) are refused so a token
    has exactly one spelling: otherwise an attacker could mint "different" tokens from one.
    """
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not unpadded base64url")
    # The last character of a 2- or 3-character tail carries 4 or 2 bits beyond the data;
    # canonical means they are zero (the same test as re-encoding, without the encode).
    spare = _SPARE_BITS[len(text) % 4]
    if spare and _B64URL_VALUE[text[-1]] & spare:
        raise ValueError("non-canonical base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_B64URL_VALUE = {c: i for i, c in enumerate(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")}
_SPARE_BITS = {0: 0, 2: 0b1111, 3: 0b11}


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            # Parsers disagree on which duplicate wins; refusing is the only safe reading.
            raise ValueError(f"duplicate member {key!r}")
        obj[key] = value
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# Built once: json.loads with hooks builds a new decoder on every call.
_STRICT = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constant)


def loads_strict(data: bytes) -> Any:
    """Parse UTF-8 JSON, refusing duplicate member names and NaN/Infinity; errors are ValueError."""
    try:
        return _STRICT.decode(data.decode("utf-8"))
    except RecursionError:  # "[[[[..." deep enough to exhaust the parser's stack
        raise ValueError("JSON nested too deeply") from None


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8: one byte string per value."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


# Digits either side of the point that an amount may need in plain notation: far beyond any
# amount a pass can carry (the schema has 18 digits), small enough to format harmlessly.
_MAX_EXPONENT = 1000


def decimal_string(value: Decimal) -> str:
    """Plain decimal notation without trailing zeros: 120, 120.00 and 1.2E+2 all give "120".

    Formatting with "f" is exact (no context precision), unlike Decimal.normalize().
    """
    if not isinstance(value, Decimal):
        raise TypeError(f"amount must be a Decimal, not {type(value).__name__}")
    if not value.is_finite():
        raise ValueError("amount must be finite")
    if not -_MAX_EXPONENT <= value.adjusted() <= _MAX_EXPONENT or \
            value.as_tuple().exponent < -_MAX_EXPONENT:  # type: ignore[operator]
        # "1e999999999" would format as a gigabyte of zeros; no pass covers such an amount.
        raise ValueError("amount is out of range")
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def scope_hash(action: str, resource: str, amount: Decimal | None, currency: str | None) -> str:
    """The pass's `scope` claim: base64url SHA-256 of the canonical JSON of what it allows.

    Amounts are compared as numbers (Decimal("120") and Decimal("120.00") hash the same);
    currencies are case-insensitive (upper-cased).
    """
    if not isinstance(action, str) or not isinstance(resource, str):
        raise TypeError("action and resource must be str")
    if currency is not None and not isinstance(currency, str):
        raise TypeError("currency must be a str or None")
    if amount is not None:
        if not isinstance(amount, Decimal):
            raise TypeError(f"amount must be a Decimal, not {type(amount).__name__}")
        if not amount.is_finite():
            raise ValueError("amount must be finite")
    return _scope_hash(action, resource, amount, currency)


@functools.lru_cache(maxsize=4096, typed=True)
def _scope_hash(action: str, resource: str, amount: Decimal | None, currency: str | None) -> str:
    # Cached: issuer and verifier see the same few scopes again and again. Equal amounts
    # (120 and 120.00) share an entry, rightly: their scope is the same.
    scope = {
        "action": action,
        "resource": resource,
        "amount": None if amount is None else decimal_string(amount),
        "currency": None if currency is None else currency.upper(),
    }
    return b64url_encode(hashlib.sha256(canonical_json(scope)).digest())


def ed25519_thumbprint(x: bytes) -> str:
    """RFC 7638 JWK thumbprint of an Ed25519 public key (RFC 8037 section 2)."""
    members = {"crv": "Ed25519", "kty": "OKP", "x": b64url_encode(x)}
    return b64url_encode(hashlib.sha256(canonical_json(members)).digest())


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


def is_small_order(raw: bytes) -> bool:
    """Whether a 32-byte Ed25519 public key encodes a point of small order.

    R = identity, S = 0 verifies under such a key for ANY message: a key like that would
    let anyone forge signatures without a private key.
    """
    return len(raw) == 32 and raw[:31] + bytes([raw[31] & 0x7F]) in _SMALL_ORDER


def ed25519_public_key(x: str) -> Ed25519PublicKey:
    """An RFC 8037 OKP `x` value as a usable Ed25519 public key; ValueError when it is not.

    Strict: canonical unpadded base64url of exactly 32 bytes, not a small-order point.
    """
    if not isinstance(x, str):
        raise ValueError("x must be a string")
    raw = b64url_decode(x)
    if len(raw) != 32:
        raise ValueError("x is not 32 bytes")
    if is_small_order(raw):
        raise ValueError("small-order point")
    return Ed25519PublicKey.from_public_bytes(raw)


def require_aware(value: datetime, name: str) -> datetime:
    """Refuse naive datetimes: a pass's times must not depend on the host's time zone."""
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime")
    return value
