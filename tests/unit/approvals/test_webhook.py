"""The webhook channel against a real aiohttp server on 127.0.0.1: format, signature, retries.

Retry tests count attempts and record the delays asked for; none measures time.
"""

from __future__ import annotations

import asyncio
import doctest
import json
import logging
import pickle
import random
import re
import socket
import traceback
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web

from gatepass.approvals import webhook
from gatepass.approvals.notice import ApprovalNotice, notice_id
from gatepass.approvals.webhook import (
    SIGNATURE_HEADER,
    WebhookNotifier,
    encode_body,
    sign,
    verify_signature,
)
from gatepass.errors import ConfigError, NotificationError

SECRET = b"whsec-0123456789-do-not-leak"
CODE = "CODE-7f3a9c1e55-do-not-leak"
LINK = f"https://approve.example/r/apr-1?code={CODE}"
R = TypeVar("R")
DOCS = Path(__file__).resolve().parents[3] / "docs" / "approvals-webhook.md"


def make_notice(**overrides: Any) -> ApprovalNotice:
    values: dict[str, Any] = {
        "request_id": "apr-1",
        "intent_id": "int-1",
        "agent_id": "agent-7",
        "owner": "alice@example.com",
        "approver": "bob@example.com",
        "purpose": "Küchenbedarf",  # non-ASCII: must go out as raw UTF-8
        "department": None,
        "action": "payments.transfer",
        "resource": "acct:DE89",
        "amount": "1250.00",
        "currency": "EUR",
        "why": ("amount_over_threshold", "new_payee"),
        "requested_at": datetime(2026, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=2))),
        "expires_at": datetime(2026, 1, 1, 10, 15, 30, tzinfo=UTC),
        "code": CODE,
        "link": LINK,
    }
    values.update(overrides)
    return ApprovalNotice(**values)


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Answers with the scripted statuses in turn (the last one repeats) and records requests."""

    url: str
    script: list[tuple[int, dict[str, str]]]
    requests: list[Received] = field(default_factory=list)
    stall_first: float = 0.0


@asynccontextmanager
async def receiver(*script: int | tuple[int, dict[str, str]],
                   stall_first: float = 0.0) -> AsyncIterator[Receiver]:
    steps = [s if isinstance(s, tuple) else (s, {}) for s in script]
    rec = Receiver(url="", script=steps, stall_first=stall_first)

    async def handle(request: web.Request) -> web.Response:
        rec.requests.append(Received(dict(request.headers), await request.read()))
        n = len(rec.requests)
        if n == 1 and rec.stall_first:
            await asyncio.sleep(rec.stall_first)
        status, headers = rec.script[min(n, len(rec.script)) - 1]
        if 300 <= status < 400:
            headers = {"Location": "/elsewhere", **headers}
        return web.Response(status=status, headers=headers, text="ok")

    async def elsewhere(request: web.Request) -> web.Response:
        raise AssertionError("a redirect was followed")

    app = web.Application()
    app.router.add_post("/hooks/gatepass", handle)
    app.router.add_route("*", "/elsewhere", elsewhere)
    runner = web.AppRunner(app, access_log=None)  # the server's log is not ours to check
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    rec.url = f"http://{host}:{port}/hooks/gatepass"
    try:
        yield rec
    finally:
        await runner.cleanup()


class Sleeps:
    """Stands in for asyncio.sleep: records each delay asked for, waits for none."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def run(coro_fn: Callable[[], Coroutine[Any, Any, R]]) -> R:
    return asyncio.run(coro_fn())


async def deliver(url: str, notice: ApprovalNotice | None = None, **kwargs: Any) -> None:
    notifier = WebhookNotifier(url, SECRET, **kwargs)
    try:
        await notifier.deliver(notice or make_notice())
    finally:
        await notifier.close()


def assert_no_secrets(*texts: str) -> None:
    for text in texts:
        for secret in (SECRET.decode(), CODE, LINK):
            assert secret not in text


def full_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


# --- the request -------------------------------------------------------------------------


def test_body_is_exactly_the_specified_json() -> None:
    async def go() -> Receiver:
        async with receiver(200) as rec:
            await deliver(rec.url)
            return rec

    rec = run(go)
    assert len(rec.requests) == 1
    notice = make_notice()
    expected = {
        "type": "gatepass.approval.requested",
        "id": notice_id(notice),
        "request_id": "apr-1",
        "intent_id": "int-1",
        "agent_id": "agent-7",
        "owner": "alice@example.com",
        "approver": "bob@example.com",
        "purpose": "Küchenbedarf",
        "department": None,
        "action": "payments.transfer",
        "resource": "acct:DE89",
        "amount": "1250.00",
        "currency": "EUR",
        "why": ["amount_over_threshold", "new_payee"],
        "requested_at": "2026-01-01T10:00:00Z",
        "expires_at": "2026-01-01T10:15:30Z",
        "code": CODE,
        "link": LINK,
    }
    body = rec.requests[0].body
    assert body == json.dumps(expected, separators=(",", ":"), sort_keys=True,
                              ensure_ascii=False).encode("utf-8")
    assert "Küchenbedarf".encode() in body  # raw UTF-8, not \u escapes
    assert b", " not in body and b": " not in body
    assert body == encode_body(notice)


def test_null_amount_and_currency_are_json_null() -> None:
    payload = json.loads(encode_body(make_notice(amount=None, currency=None)))
    assert payload["amount"] is None and payload["currency"] is None


def test_naive_datetime_is_refused() -> None:
    with pytest.raises(ValueError, match="expires_at"):
        encode_body(make_notice(expires_at=datetime(2026, 1, 1)))


def test_headers_and_signature_verify() -> None:
    async def go() -> Receiver:
        async with receiver(200) as rec:
            await deliver(rec.url, clock=lambda: 1_767_261_720.9)
            return rec

    got = run(go).requests[0]
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["User-Agent"] == "gatepass-webhook/1"
    assert got.headers["Idempotency-Key"] == notice_id(make_notice())
    header = got.headers[SIGNATURE_HEADER]
    assert re.fullmatch(r"t=1767261720,v1=[0-9a-f]{64}", header)
    assert verify_signature(SECRET, header, got.body, now=1_767_261_720)


def test_idempotency_key_is_stable_across_redeliveries_and_header_safe() -> None:
    async def go() -> Receiver:
        async with receiver(200) as rec:
            await deliver(rec.url)
            await deliver(rec.url)  # a worker restart sends the same notice again
            await deliver(rec.url, make_notice(approver="carol@example.com"))
            return rec

    keys = [r.headers["Idempotency-Key"] for r in run(go).requests]
    assert keys[0] == keys[1] != keys[2]
    hostile = make_notice(approver="evil\r\nX-Injected: 1")
    assert re.fullmatch(r"apn_[0-9a-f]{32}", notice_id(hostile))


# --- retries -----------------------------------------------------------------------------


def test_500_500_200_succeeds_on_the_third_attempt_with_one_key_and_fresh_signatures() -> None:
    async def go() -> Receiver:
        async with receiver(500, 500, 200) as rec:
            await deliver(rec.url, base_delay=0.001, max_delay=0.01)
            return rec

    rec = run(go)
    assert len(rec.requests) == 3
    assert {r.headers["Idempotency-Key"] for r in rec.requests} == {notice_id(make_notice())}
    assert {r.body for r in rec.requests} == {encode_body(make_notice())}
    for r in rec.requests:
        t = int(r.headers[SIGNATURE_HEADER].split(",")[0].removeprefix("t="))
        assert verify_signature(SECRET, r.headers[SIGNATURE_HEADER], r.body, now=t)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 410, 422])
def test_other_4xx_fails_at_once(status: int) -> None:
    sleeps = Sleeps()

    async def go() -> tuple[Receiver, NotificationError]:
        async with receiver(status, 200) as rec:
            with pytest.raises(NotificationError) as info:
                await deliver(rec.url, sleep=sleeps)
            return rec, info.value

    rec, err = run(go)
    assert len(rec.requests) == 1
    assert sleeps.delays == []
    assert str(status) in str(err)
    assert err.code == "notification_failed"


def test_redirect_is_not_followed_and_fails_at_once() -> None:
    async def go() -> Receiver:
        async with receiver(302) as rec:
            with pytest.raises(NotificationError, match="302"):
                await deliver(rec.url)
            return rec

    assert len(run(go).requests) == 1  # /elsewhere would have raised in the server


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_transient_statuses_are_retried(status: int) -> None:
    sleeps = Sleeps()

    async def go() -> Receiver:
        async with receiver(status, 200) as rec:
            await deliver(rec.url, sleep=sleeps)
            return rec

    assert len(run(go).requests) == 2
    assert len(sleeps.delays) == 1


def test_retry_after_seconds_is_honoured() -> None:
    sleeps = Sleeps()

    async def go() -> Receiver:
        async with receiver((429, {"Retry-After": "7"}), 200) as rec:
            await deliver(rec.url, sleep=sleeps, base_delay=0.001, max_delay=30)
            return rec

    assert len(run(go).requests) == 2
    assert sleeps.delays == [7.0]


def test_retry_after_http_date_is_honoured() -> None:
    sleeps = Sleeps()
    now = 1_767_261_720.0

    async def go() -> Receiver:
        retry_at = "Thu, 01 Jan 2026 10:02:12 GMT"  # now + 12 s
        async with receiver((503, {"Retry-After": retry_at}), 200) as rec:
            await deliver(rec.url, sleep=sleeps, clock=lambda: now)
            return rec

    assert len(run(go).requests) == 2
    assert sleeps.delays == [12.0]


def test_retry_after_is_capped_at_max_delay() -> None:
    sleeps = Sleeps()

    async def go() -> Receiver:
        async with receiver((429, {"Retry-After": "86400"}), 200) as rec:
            await deliver(rec.url, sleep=sleeps, max_delay=5)
            return rec

    run(go)
    assert sleeps.delays == [5.0]


def test_unreadable_retry_after_falls_back_to_backoff() -> None:
    sleeps = Sleeps()

    async def go() -> Receiver:
        async with receiver((429, {"Retry-After": "soon"}), 200) as rec:
            await deliver(rec.url, sleep=sleeps, base_delay=0.25)
            return rec

    run(go)
    assert len(sleeps.delays) == 1 and 0 <= sleeps.delays[0] <= 0.25


def test_backoff_is_exponential_with_full_jitter_and_capped() -> None:
    sleeps = Sleeps()

    async def go() -> Receiver:
        async with receiver(503) as rec:
            with pytest.raises(NotificationError):
                await deliver(rec.url, sleep=sleeps, max_attempts=8, base_delay=1,
                              max_delay=10, random=random.Random(7))
            return rec

    assert len(run(go).requests) == 8
    assert len(sleeps.delays) == 7  # no sleep after the last attempt
    caps = [min(10, 2 ** n) for n in range(7)]
    assert all(0 <= d <= cap for d, cap in zip(sleeps.delays, caps, strict=True))


def test_timeout_is_retried() -> None:
    async def go() -> Receiver:
        async with receiver(200, stall_first=2.0) as rec:
            await deliver(rec.url, timeout=0.2, base_delay=0.001)
            return rec

    assert len(run(go).requests) == 2


def test_connection_refused_fails_after_max_attempts(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    sleeps = Sleeps()
    # A bound socket that never listens: connecting to it is refused, and the port stays ours.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

        async def go() -> NotificationError:
            with pytest.raises(NotificationError) as info:
                await deliver(f"http://127.0.0.1:{port}/hook", sleep=sleeps, max_attempts=4)
            return info.value

        err = run(go)
    assert len(sleeps.delays) == 3
    assert "after 4 attempts" in str(err)
    assert err.__cause__ is None or isinstance(err.__cause__, Exception)
    assert_no_secrets(str(err), full_text(err), caplog.text)


def test_secret_code_and_link_never_reach_logs_or_errors(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    async def go() -> list[NotificationError]:
        errors = []
        async with receiver(500, 500, 400) as rec:
            for kwargs in ({"max_attempts": 2}, {"max_attempts": 5}):
                with pytest.raises(NotificationError) as info:
                    await deliver(rec.url, base_delay=0.001, **kwargs)
                errors.append(info.value)
        return errors

    errors = run(go)
    assert "apr-1" in caplog.text  # the request id is what an operator needs
    assert "HTTP 500" in caplog.text
    assert_no_secrets(caplog.text, *(str(e) for e in errors), *(full_text(e) for e in errors))


def test_a_secret_path_in_the_url_is_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    sleeps = Sleeps()

    async def go() -> NotificationError:
        async with receiver(503) as rec:
            url = rec.url + "?token=url-secret-123"
            with pytest.raises(NotificationError) as info:
                await deliver(url, sleep=sleeps, max_attempts=2)
            return info.value

    err = run(go)
    assert "url-secret-123" not in caplog.text + str(err)


def test_a_shared_session_is_left_open() -> None:
    async def go() -> bool:
        async with receiver(200) as rec, aiohttp.ClientSession() as session:
            notifier = WebhookNotifier(rec.url, SECRET, session=session)
            await notifier.deliver(make_notice())
            await notifier.close()
            return session.closed

    assert run(go) is False


def test_close_twice_is_harmless() -> None:
    async def go() -> None:
        async with receiver(200) as rec:
            notifier = WebhookNotifier(rec.url, SECRET)
            await notifier.deliver(make_notice())
            await notifier.close()
            await notifier.close()

    run(go)


# --- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd", "example.com/x",
                                 "https://", "", "http://[::1/x", "https://h:99999/x"])
def test_bad_url_is_a_config_error_that_does_not_echo_it(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        WebhookNotifier(url, SECRET)
    assert info.value.key == "approval_webhook_url"
    if url:
        assert url not in str(info.value)


@pytest.mark.parametrize("secret", ["", b""])
def test_empty_secret_is_a_config_error(secret: str | bytes) -> None:
    with pytest.raises(ConfigError) as info:
        WebhookNotifier("https://hooks.example/x", secret)
    assert info.value.key == "approval_webhook_secret"


def test_str_secret_signs_like_its_utf8_bytes() -> None:
    async def go() -> Receiver:
        async with receiver(200) as rec:
            notifier = WebhookNotifier(rec.url, SECRET.decode())
            await notifier.deliver(make_notice())
            await notifier.close()
            return rec

    got = run(go).requests[0]
    t = int(got.headers[SIGNATURE_HEADER].split(",")[0][2:])
    assert verify_signature(SECRET, got.headers[SIGNATURE_HEADER], got.body, now=t)


def test_repr_shows_the_host_only_and_pickling_is_refused() -> None:
    notifier = WebhookNotifier("https://hooks.example/T0/B1/xoxsecretpath?k=v", SECRET)
    assert repr(notifier) == "WebhookNotifier(host='hooks.example')"
    # Nor through the attributes' reprs (a debugger, an error reporter capturing locals).
    assert SECRET.decode() not in repr(vars(notifier))
    assert "xoxsecretpath" not in repr(vars(notifier))
    with pytest.raises(TypeError):
        pickle.dumps(notifier)


def test_invalid_retry_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        WebhookNotifier("https://h.example/", SECRET, max_attempts=0)
    with pytest.raises(ConfigError):
        WebhookNotifier("https://h.example/", SECRET, timeout=0)
    with pytest.raises(ConfigError):
        WebhookNotifier("https://h.example/", SECRET, base_delay=-1)


# --- verify_signature: one test per attack ------------------------------------------------

BODY = b'{"id":"apn_x","code":"c"}'
T = 1_767_261_720


def test_verify_accepts_a_fresh_signature() -> None:
    assert verify_signature(SECRET, sign(SECRET, BODY, T), BODY, now=T + 299)
    assert verify_signature(SECRET, sign(SECRET, BODY, T), BODY, now=T - 299)


def test_verify_rejects_a_tampered_body() -> None:
    header = sign(SECRET, BODY, T)
    assert not verify_signature(SECRET, header, BODY.replace(b'"c"', b'"d"'), now=T)
    assert not verify_signature(SECRET, header, BODY + b" ", now=T)


def test_verify_rejects_a_replayed_old_timestamp() -> None:
    assert not verify_signature(SECRET, sign(SECRET, BODY, T), BODY, now=T + 301)


def test_verify_rejects_a_timestamp_from_the_future() -> None:
    assert not verify_signature(SECRET, sign(SECRET, BODY, T), BODY, now=T - 301)


def test_verify_rejects_a_moved_timestamp() -> None:
    # The timestamp is signed: taking a fresh t with an old v1 fails.
    v1 = sign(SECRET, BODY, T - 3600).split(",")[1]
    assert not verify_signature(SECRET, f"t={T},{v1}", BODY, now=T)


def test_verify_rejects_the_wrong_secret() -> None:
    assert not verify_signature(b"another-secret", sign(SECRET, BODY, T), BODY, now=T)


def test_verify_rejects_an_empty_secret() -> None:
    assert not verify_signature(b"", sign(b"", BODY, T), BODY, now=T)


def test_verify_accepts_any_matching_v1_during_rotation() -> None:
    old = sign(b"old-secret", BODY, T).split(",")[1]
    new = sign(SECRET, BODY, T).split(",")[1]
    assert verify_signature(SECRET, f"t={T},{old},{new}", BODY, now=T)
    assert verify_signature(b"old-secret", f"t={T},{old},{new}", BODY, now=T)
    assert verify_signature(SECRET, f"t={T},v0=zzz,{new},scheme=x", BODY, now=T)


@pytest.mark.parametrize("header", [
    "", "garbage", "v1=abc", f"t={T}", f"t={T},t={T},v1=x", f"t=-{T},v1=x", f"t={T}.5,v1=x",
    "t=\uff11\uff12,v1=x", f"t={T},v1=é", "t=,v1=", ",,,",
])
def test_verify_rejects_malformed_headers(header: str) -> None:
    assert not verify_signature(SECRET, header, BODY, now=T)


def test_verify_rejects_a_duplicated_timestamp_even_with_a_good_v1() -> None:
    good = sign(SECRET, BODY, T)
    assert not verify_signature(SECRET, f"t={T - 9999},{good}", BODY, now=T)


def test_verify_tolerates_spaces_around_items() -> None:
    t, v1 = sign(SECRET, BODY, T).split(",")
    assert verify_signature(SECRET, f" {t} , {v1} ", BODY, now=T)


# --- the documented receiver snippet and doctests ----------------------------------------


def docs_verifier() -> Callable[..., bool]:
    text = DOCS.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1
    namespace: dict[str, Any] = {}
    exec(compile(blocks[0], str(DOCS), "exec"), namespace)  # our own docs
    return namespace["verify_gatepass_signature"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(("secret", "header", "body", "now"), [
    (SECRET, sign(SECRET, BODY, T), BODY, T),
    (SECRET, sign(SECRET, BODY, T), BODY, T + 301),
    (SECRET, sign(SECRET, BODY, T), BODY, T - 301),
    (SECRET, sign(SECRET, BODY, T), BODY + b"x", T),
    (b"wrong", sign(SECRET, BODY, T), BODY, T),
    (b"", sign(b"", BODY, T), BODY, T),
    (SECRET, f"t={T},v1=00,{sign(SECRET, BODY, T).split(',')[1]}", BODY, T),
    (SECRET, f"t={T},t={T},{sign(SECRET, BODY, T).split(',')[1]}", BODY, T),
    (SECRET, f"t={T},v1=é", BODY, T),
    (SECRET, "t=\uff11\uff12,v1=x", BODY, T),
    (SECRET, "", BODY, T),
])
def test_the_documented_receiver_agrees_with_verify_signature(
        secret: bytes, header: str, body: bytes, now: float) -> None:
    assert docs_verifier()(secret, header, body, now=now) == verify_signature(
        secret, header, body, now=now)


def test_the_documented_receiver_accepts_a_real_delivery() -> None:
    async def go() -> Receiver:
        async with receiver(200) as rec:
            await deliver(rec.url)
            return rec

    got = run(go).requests[0]
    assert docs_verifier()(SECRET, got.headers[SIGNATURE_HEADER], got.body)


def test_module_doctests() -> None:
    assert doctest.testmod(webhook, raise_on_error=False).failed == 0
