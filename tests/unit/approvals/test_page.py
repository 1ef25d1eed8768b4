"""The approval page's pure parts: escaping, the session cookie, the CSRF token, the headers."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from html.parser import HTMLParser
from typing import Any

import pytest

from gatepass.approvals.client import Outcome, RequestView
from gatepass.approvals.page import (
    code_valid,
    csrf_token,
    csrf_valid,
    open_session,
    origin_allowed,
    page_headers,
    page_path,
    read_session,
    render_error,
    render_outcome,
    render_request,
    session_token,
)
from gatepass.core.approval import approval_code

KEY = b"k" * 32
OTHER_KEY = b"o" * 32
NOW = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
EVIL = '<script>alert("x")</script>'


def make_view(*, status: str = "pending", final: dict[str, Any] | None = None,
              **intent: Any) -> RequestView:
    values: dict[str, Any] = {
        "intent_id": "int-1", "agent_id": "procure-bot", "action": "purchase_order.create",
        "resource": "vendor:ACME", "amount": Decimal("50000.0000"), "currency": "USD"}
    values.update(intent)
    return RequestView(request={
        "request_id": "apr-1", "intent": values, "owner": "sarah", "approvers": ["sarah"],
        "purpose": "procurement", "department": "finance",
        "why": ["amount 50000.00 USD is above the approval threshold of 10000.00 USD"],
        "requested_at": NOW - timedelta(minutes=1), "expires_at": NOW + timedelta(minutes=9),
    }, status=status, final=final)


def session(**overrides: Any) -> Any:
    values: dict[str, Any] = {"agent_id": "procure-bot", "request_id": "apr-1",
                              "approver": "sarah", "expires": int(NOW.timestamp()) + 600}
    values.update(overrides)
    return open_session(**values)


class _Checker(HTMLParser):
    """Collects start tags and text; any <script> is a failure."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        if self.lasttag != "style":
            self.text.append(data)


def parse(html: str) -> _Checker:
    checker = _Checker()
    checker.feed(html)
    return checker


# ---- rendering ---------------------------------------------------------------------------
def test_agent_controlled_strings_are_escaped() -> None:
    view = make_view(action=EVIL, resource=f'vendor:"><img src=x onerror=alert(1)>{EVIL}',
                     agent_id=EVIL)
    page = render_request(view, approver=EVIL, now=NOW, csrf="t", action="/approvals/a/b")
    assert "<script>" not in page and "<img" not in page
    doc = parse(page)
    assert not any(tag in {"script", "img", "iframe"} for tag, _ in doc.tags)
    assert EVIL in "".join(doc.text)  # shown as text, not run


def test_why_and_context_are_escaped_in_the_outcome_too() -> None:
    view = make_view(resource=EVIL)
    page = render_outcome(view, Outcome(False, None, "approver_inactive", EVIL),
                          approve=True, approver="sarah", now=NOW)
    assert "<script>" not in page
    assert "approver_inactive" in page


def test_the_pending_page_shows_the_request_in_context() -> None:
    page = render_request(make_view(), approver="sarah", now=NOW, csrf="tok",
                          action="/approvals/procure-bot/apr-1")
    doc = parse(page)
    text = " ".join("".join(doc.text).split())
    for fact in ("procure-bot", "procurement", "sarah", "finance", "purchase_order.create",
                 "vendor:ACME", "50,000.00 USD", "above the approval threshold",
                 "9 min 0 s"):
        assert fact in text, fact
    buttons = [a for tag, a in doc.tags if tag == "button"]
    assert [(b["name"], b["value"], b["type"]) for b in buttons] == [
        ("decision", "approve", "submit"), ("decision", "deny", "submit")]
    forms = [a for tag, a in doc.tags if tag == "form"]
    assert forms == [{"method": "post", "action": "/approvals/procure-bot/apr-1"}]
    assert {"type": "hidden", "name": "csrf", "value": "tok"} in [a for t, a in doc.tags
                                                                  if t == "input"]


def test_the_markup_is_accessible_and_has_no_script() -> None:
    page = render_request(make_view(), approver="sarah", now=NOW, csrf="tok", action="/a")
    doc = parse(page)
    tags = [t for t, _ in doc.tags]
    assert ("html", {"lang": "en"}) in doc.tags
    assert {"title", "main", "h1", "dl", "dt", "dd", "button"} <= set(tags)
    assert "script" not in tags
    assert not re.search(r"\son[a-z]+=", page)  # no inline event handlers
    assert ":focus-visible" in page


def test_a_settled_request_shows_its_status_and_no_buttons() -> None:
    final = {"decision": "ALLOW", "reasons": ["approved"],
             "approval": {"approver": "sarah", "decided_at": NOW, "channel": "page"}}
    page = render_request(make_view(status="ALLOW", final=final), approver="sarah", now=NOW,
                          csrf=None, action="/a")
    doc = parse(page)
    assert not [a for t, a in doc.tags if t in {"form", "button"}]
    assert "Approved by sarah" in page and "link is spent" in page


@pytest.mark.parametrize(("status", "reason", "heading"), [
    ("DENY", "approval_denied", "Denied by sarah"),
    ("DENY", "approval_expired", "No valid decision arrived in time"),
    ("DENY", "owner_inactive", "its owner is no longer active (owner_inactive)"),
    ("DENY", "agent_inactive", "the agent is no longer active (agent_inactive)"),
    ("DENY", "internal_error", "The action was denied (internal_error)"),
    ("expired", None, "The time to decide is over"),
])
def test_other_settled_states(status: str, reason: str | None, heading: str) -> None:
    final = ({"decision": status, "reasons": [reason],
              "approval": {"approver": "sarah" if reason == "approval_denied" else None}}
             if reason else None)
    page = render_request(make_view(status=status, final=final), approver="sarah", now=NOW,
                          csrf="tok", action="/a")
    assert heading in page and "<form" not in page


@pytest.mark.parametrize(("outcome", "expected"), [
    (Outcome(True, "ALLOW", "approved"), "You approved the request"),
    (Outcome(True, "DENY", "approval_denied"), "You denied the request"),
    (Outcome(False, None, "approver_inactive"), "refused (approver_inactive)"),
    (Outcome(False, None, "timeout"), "did not confirm"),
    (Outcome(False, "DENY", "approval_expired"), "ended as DENY (approval_expired)"),
])
def test_the_outcome_says_what_the_click_did(outcome: Outcome, expected: str) -> None:
    page = render_outcome(make_view(), outcome, approve=True, approver="sarah", now=NOW)
    assert expected in page
    assert "<form" not in page


def test_error_pages_say_nothing_about_which_check_failed() -> None:
    text = " ".join(parse(render_error(403)).text).lower()
    assert "link not valid" in text
    for word in ("csrf", "cookie", "origin", "code", "expired", "token"):
        assert word not in text


def test_amounts_keep_their_precision() -> None:
    page = render_request(make_view(amount=Decimal("1234.5678"), currency="EUR"),
                          approver="sarah", now=NOW, csrf="t", action="/a")
    assert "1,234.5678 EUR" in page
    page = render_request(make_view(amount=None, currency=None), approver="sarah", now=NOW,
                          csrf="t", action="/a")
    assert "Amount" not in page


# ---- the session cookie and the CSRF token -----------------------------------------------
def test_a_session_round_trips_and_holds_no_code() -> None:
    s = session()
    token = session_token(KEY, s)
    assert approval_code(KEY, "apr-1", "sarah") not in token
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", token)  # a cookie value without quoting
    back = read_session(KEY, token, agent_id="procure-bot", request_id="apr-1",
                        now=NOW.timestamp())
    assert back == s


@pytest.mark.parametrize("where", [
    {"agent_id": "other-bot"}, {"request_id": "apr-2"}])
def test_a_session_is_bound_to_its_request(where: dict[str, str]) -> None:
    token = session_token(KEY, session())
    ids = {"agent_id": "procure-bot", "request_id": "apr-1", **where}
    assert read_session(KEY, token, now=NOW.timestamp(), **ids) is None


def test_a_session_under_another_key_or_tampered_is_refused() -> None:
    token = session_token(KEY, session())
    ids = {"agent_id": "procure-bot", "request_id": "apr-1", "now": NOW.timestamp()}
    assert read_session(OTHER_KEY, token, **ids) is None  # type: ignore[arg-type]
    parts = token.split(".")
    forged_approver = ".".join([parts[0], "bWFsbG9yeQ", *parts[2:]])  # "mallory"
    longer = ".".join([*parts[:2], str(int(parts[2]) + 3600), *parts[3:]])
    for bad in (forged_approver, longer, token[:-1], "", "v1....", "x" * 2000, "v2" + token[2:]):
        assert read_session(KEY, bad, **ids) is None, bad  # type: ignore[arg-type]


def test_an_expired_session_is_refused() -> None:
    s = session(expires=int(NOW.timestamp()))
    assert read_session(KEY, session_token(KEY, s), agent_id="procure-bot",
                        request_id="apr-1", now=NOW.timestamp()) is None


def test_the_csrf_token_is_bound_to_the_cookie() -> None:
    s = session()
    token = csrf_token(KEY, s)
    assert csrf_valid(KEY, s, token)
    assert not csrf_valid(KEY, session(), token)  # another opening of the link: new nonce
    assert not csrf_valid(KEY, session(approver="mallory"), token)
    assert not csrf_valid(KEY, session(request_id="apr-2"), token)
    assert not csrf_valid(OTHER_KEY, s, token)
    assert not csrf_valid(KEY, s, None) and not csrf_valid(KEY, s, "")
    assert not csrf_valid(KEY, s, token[:-1] + ("A" if token[-1] != "A" else "B"))


def test_only_the_approvers_own_code_opens_the_link() -> None:
    code = approval_code(KEY, "apr-1", "sarah")
    assert code_valid(KEY, request_id="apr-1", approver="sarah", code=code)
    assert not code_valid(KEY, request_id="apr-2", approver="sarah", code=code)
    assert not code_valid(KEY, request_id="apr-1", approver="mallory", code=code)
    assert not code_valid(OTHER_KEY, request_id="apr-1", approver="sarah", code=code)
    for bad in ("", code[:-1], code + "A", "\u00e9" * 22, "A" * 22):
        assert not code_valid(KEY, request_id="apr-1", approver="sarah", code=bad)
    assert not code_valid(KEY, request_id="apr-1", approver="", code=code)


def test_the_session_repr_hides_the_nonce() -> None:
    s = session()
    assert s.nonce not in repr(s)


# ---- headers and origins -----------------------------------------------------------------
def test_every_response_forbids_framing_caching_and_scripts() -> None:
    for secret in (True, False):
        headers = page_headers(carries_secret=secret)
        assert headers["X-Frame-Options"] == "DENY"
        csp = headers["Content-Security-Policy"]
        for directive in ("default-src 'none'", "frame-ancestors 'none'", "form-action 'self'",
                          "base-uri 'none'"):
            assert directive in csp
        assert "script-src" not in csp and "unsafe" not in csp
        assert headers["Cache-Control"] == "no-store"
        assert headers["X-Content-Type-Options"] == "nosniff"
    assert page_headers(carries_secret=True)["Referrer-Policy"] == "no-referrer"
    assert page_headers()["Referrer-Policy"] == "same-origin"


def test_the_style_hash_in_the_csp_matches_the_page() -> None:
    import base64
    import hashlib

    page = render_error(403)
    css = re.search(r"<style>(.*?)</style>", page, re.S)
    assert css is not None
    digest = base64.b64encode(hashlib.sha256(css.group(1).encode()).digest()).decode()
    assert f"'sha256-{digest}'" in page_headers()["Content-Security-Policy"]


@pytest.mark.parametrize(("headers", "allowed"), [
    ({"Origin": "http://127.0.0.1:6066"}, True),
    ({"Origin": "HTTP://127.0.0.1:6066"}, True),
    ({"Origin": "http://127.0.0.1:6067"}, False),
    ({"Origin": "https://127.0.0.1:6066"}, False),
    ({"Origin": "https://evil.example"}, False),
    ({"Origin": "null"}, False),
    ({"Origin": ""}, False),
    ({"Sec-Fetch-Site": "same-origin"}, True),
    ({"Sec-Fetch-Site": "cross-site"}, False),
    ({"Sec-Fetch-Site": "same-site"}, False),
    ({}, True),  # no browser: the cookie and the CSRF token still guard it
])
def test_origin_check(headers: dict[str, str], allowed: bool) -> None:
    assert origin_allowed(headers, "http://127.0.0.1:6066") is allowed


def test_default_ports_are_the_same_origin() -> None:
    assert origin_allowed({"Origin": "https://gate.example.com"},
                          "https://gate.example.com:443/gp")
    assert not origin_allowed({"Origin": "https://gate.example.com.evil"},
                              "https://gate.example.com")


def test_the_page_path_is_quoted_and_keeps_the_base_path() -> None:
    assert page_path("https://gate.example.com/gp/", "bot/1", "apr 1") == \
        "/gp/approvals/bot%2F1/apr%201"
    assert page_path("http://127.0.0.1:6066", "bot", "apr-1") == "/approvals/bot/apr-1"
