"""The webhook channel: POSTs each approval notice, signed, to the deployment's endpoint.

The body is the notice's JSON (`notice_payload`: compact, keys sorted, UTF-8). The signature
header is `Gatepass-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`;
receivers check it with `verify_signature` (or the standard-library snippet in
docs/approvals-webhook.md) and deduplicate on `Idempotency-Key`, which is the notice id and
so the same on every retry and every redelivery of one notice.

>>> body = b'{"id":"apn_1"}'
>>> header = sign(b"s3cret", body, 1700000000)
>>> verify_signature(b"s3cret", header, body, now=1700000100)
True
>>> verify_signature(b"s3cret", header, body, now=1700000400)  # older than the tolerance
False
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import random as _random
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Generic, NoReturn, TypeVar
from urllib.parse import urlsplit

import aiohttp

from gatepass.approvals.notice import ApprovalNotice, notice_id, notice_payload
from gatepass.errors import ConfigError, NotificationError

__all__ = [
    "DEFAULT_BASE_DELAY",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_MAX_DELAY",
    "DEFAULT_TIMEOUT",
    "DEFAULT_TOLERANCE",
    "SIGNATURE_HEADER",
    "USER_AGENT",
    "WebhookNotifier",
    "encode_body",
    "sign",
    "verify_signature",
]

log = logging.getLogger("gatepass.approvals")

SIGNATURE_HEADER = "Gatepass-Signature"
USER_AGENT = "gatepass-webhook/1"
DEFAULT_MAX_ATTEMPTS = 6
DEFAULT_BASE_DELAY = 0.5  # seconds; attempt n waits up to base * 2**(n-1), capped
DEFAULT_MAX_DELAY = 30.0  # seconds; also the cap on a receiver's Retry-After
DEFAULT_TIMEOUT = 5.0  # seconds per attempt, connect to last byte
DEFAULT_TOLERANCE = 300.0  # seconds a signature stays fresh, either side of the receiver's clock

_V = TypeVar("_V")
_RETRY_STATUSES = frozenset({408, 429})
_SECONDS = re.compile(r"[0-9]{1,10}")


def encode_body(notice: ApprovalNotice) -> bytes:
    """The exact bytes POSTed (and signed) for a notice: compact JSON, keys sorted, UTF-8."""
    text = json.dumps(notice_payload(notice), separators=(",", ":"), sort_keys=True,
                      ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8")


def sign(secret: bytes, body: bytes, t: int) -> str:
    """The `Gatepass-Signature` header value for `body` signed at unix time `t`."""
    return f"t={int(t)},v1={_mac(secret, body, int(t))}"


def verify_signature(secret: bytes, header: str, body: bytes, *, now: float,
                     tolerance: float = DEFAULT_TOLERANCE) -> bool:
    """Whether `header` (`t=...,v1=...[,v1=...]`) signs `body` under `secret`, at most
    `tolerance` seconds away from `now`. Several `v1` are allowed (secret rotation); unknown
    schemes are ignored; a missing or repeated `t`, or an empty secret, never verifies."""
    if not secret:
        return False
    timestamps: list[str] = []
    candidates: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            timestamps.append(value)
        elif key == "v1":
            candidates.append(value)
    if len(timestamps) != 1 or not _SECONDS.fullmatch(timestamps[0]) or not candidates:
        return False
    t = int(timestamps[0])
    if abs(now - t) > tolerance:
        return False
    expected = _mac(secret, body, t).encode("ascii")
    ok = False
    for candidate in candidates:
        if candidate.isascii():
            # No early exit: every candidate costs the same, whichever one matches.
            ok |= hmac.compare_digest(expected, candidate.encode("ascii"))
    return ok


def _mac(secret: bytes, body: bytes, t: int) -> str:
    return hmac.new(secret, f"{t}.".encode("ascii") + body, hashlib.sha256).hexdigest()


class _Hidden(Generic[_V]):
    """A value that never prints or pickles: the signing secret, and the URL (often a
    credential itself), so neither leaks through `vars()`, a debugger or an error reporter."""

    __slots__ = ("_value",)

    def __init__(self, value: _V) -> None:
        self._value = value

    def reveal(self) -> _V:
        return self._value

    def __repr__(self) -> str:
        return "<hidden>"

    def __reduce__(self) -> NoReturn:
        raise TypeError("a hidden value cannot be pickled")


class WebhookNotifier:
    """Delivers approval notices to one HTTP(S) endpoint, retrying transient failures.

    Retried, with exponential backoff and full jitter: connection errors, timeouts, 408, 429
    and 5xx (a `Retry-After` is honoured, capped at `max_delay`). Any other non-2xx status
    (including redirects, which are not followed) fails at once. `deliver` raises
    `NotificationError` when it gives up; neither the secret nor the notice's code or link is
    ever logged or put in an error message.

    `sleep`, `clock` and `random` exist for tests; `session` lets the caller share one
    `aiohttp.ClientSession` (then the caller closes it; otherwise `close` does).
    """

    name = "webhook"

    def __init__(
        self,
        url: str,
        secret: str | bytes,
        *,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        base_delay: float = DEFAULT_BASE_DELAY,
        max_delay: float = DEFAULT_MAX_DELAY,
        timeout: float = DEFAULT_TIMEOUT,
        session: aiohttp.ClientSession | None = None,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        clock: Callable[[], float] = time.time,
        random: _random.Random | None = None,
    ) -> None:
        self._host = _validate_url(url)
        self._url = _Hidden(url)
        key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
        if not key:
            raise ConfigError("approval_webhook_secret", "must not be empty")
        self._secret = _Hidden(key)
        if max_attempts < 1:
            raise ConfigError("approval_webhook_max_attempts", "must be at least 1")
        if base_delay < 0 or max_delay < 0:
            raise ConfigError("approval_webhook_delay", "delays must not be negative")
        if timeout <= 0:
            raise ConfigError("approval_webhook_timeout", "must be positive")
        self._max_attempts = max_attempts
        self._base_delay = float(base_delay)
        self._max_delay = float(max_delay)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session = session
        self._owns_session = session is None
        self._sleep = sleep
        self._clock = clock
        self._random = random or _random.Random()  # noqa: S311 - jitter, not a secret

    def __repr__(self) -> str:
        # The URL's path or query may itself be a credential (many webhook URLs are): host only.
        return f"WebhookNotifier(host={self._host!r})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("WebhookNotifier holds a signing secret and cannot be pickled")

    async def deliver(self, notice: ApprovalNotice) -> None:
        """POST the notice; return on a 2xx, raise `NotificationError` when giving up."""
        body = encode_body(notice)
        key = notice_id(notice)
        request_id = notice.request_id
        session = self._ensure_session()
        last = "no attempt"
        for attempt in range(1, self._max_attempts + 1):
            retry_after: float | None = None
            headers = {
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
                "Idempotency-Key": key,
                # Signed per attempt: a retry after a long backoff is still fresh.
                SIGNATURE_HEADER: sign(self._secret.reveal(), body, int(self._clock())),
            }
            try:
                async with session.post(self._url.reveal(), data=body, headers=headers,
                                        timeout=self._timeout, allow_redirects=False) as resp:
                    status = resp.status
                    if status in _RETRY_STATUSES or status >= 500:
                        retry_after = _retry_after(resp.headers.get("Retry-After"),
                                                   self._clock())
            except TimeoutError:
                last = "timeout"
            except aiohttp.ClientError as exc:
                last = type(exc).__name__
            else:
                if 200 <= status < 300:
                    log.info("approval notice for request %s delivered by webhook "
                             "(HTTP %d, attempt %d)", request_id, status, attempt)
                    return
                last = f"HTTP {status}"
                if not (status in _RETRY_STATUSES or status >= 500):
                    log.warning("approval notice for request %s rejected by webhook (HTTP %d)",
                                request_id, status)
                    raise NotificationError(
                        f"approval webhook at {self._host} rejected the notice for request "
                        f"{request_id}: HTTP {status}")
            if attempt == self._max_attempts:
                break
            if retry_after is not None:
                delay = min(retry_after, self._max_delay)
            else:
                cap = min(self._max_delay, self._base_delay * 2 ** min(attempt - 1, 62))
                delay = self._random.uniform(0, cap)
            log.warning("approval notice for request %s: webhook attempt %d/%d failed (%s); "
                        "retrying in %.2fs", request_id, attempt, self._max_attempts, last,
                        delay)
            await self._sleep(delay)
        log.warning("approval notice for request %s: webhook gave up after %d attempts (%s)",
                    request_id, self._max_attempts, last)
        raise NotificationError(
            f"approval webhook at {self._host} failed for request {request_id} after "
            f"{self._max_attempts} attempts (last: {last})")

    async def close(self) -> None:
        """Close the HTTP session if this notifier opened it."""
        if self._owns_session and self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def _ensure_session(self) -> aiohttp.ClientSession:
        # Created on first use: a ClientSession belongs to the running event loop.
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session


def _validate_url(url: str) -> str:
    """The URL's host, or ConfigError; the message never echoes the URL (it may be secret)."""
    key = "approval_webhook_url"
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except (TypeError, ValueError, AttributeError):
        raise ConfigError(key, "not a valid URL") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ConfigError(key, "must be an http:// or https:// URL")
    if not host:
        raise ConfigError(key, "has no host")
    if parts.scheme.lower() == "http" and not _is_loopback(host):
        log.warning("approval webhook to %s uses plain http: approval codes cross the "
                    "network unencrypted", host)
    return host


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    if _SECONDS.fullmatch(value):
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.fromtimestamp(now, UTC)).total_seconds())
