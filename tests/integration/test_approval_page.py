"""The approval page on a real broker and worker: over plain HTTP, then in headless Chromium.

The approver's link comes from their inbox, as the worker wrote it. The HTTP tests play a
browser by hand (cookies, Origin) to check each protection; the browser tests click the
buttons in Debian's Chromium driven by Playwright, and the agent sees the final verdict.

Set GATEPASS_PAGE_SCREENSHOT=<file.png> to keep a screenshot of the page (docs/ has one).
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest

from gatepass.approvals.client import ApprovalsClient
from gatepass.approvals.inbox import read_inbox
from gatepass.core import PrincipalStatus, PrincipalStatusChanged
from gatepass.sdk import GatepassClient, Verdict
from support.stack import Stack, running_stack

pytestmark = pytest.mark.integration
AUDIENCE = "procurement-api"
TIMEOUT = timedelta(seconds=90)  # long enough for a browser on a busy machine
BIG = Decimal("50000.00")
COOKIE = "gatepass-approval"


def _chromium() -> str | None:
    for candidate in (os.environ.get("GATEPASS_CHROMIUM"), shutil.which("chromium"),
                      "/usr/bin/chromium", shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


CHROMIUM = _chromium()
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium executable (apt-get install -y --no-install-recommends chromium, "
           "or set GATEPASS_CHROMIUM)")


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(kafka_bootstrap, tmp_path_factory.mktemp("approval-page"),
                       approval_timeout=TIMEOUT) as s:
        s.start_worker()
        yield s


# ---- helpers -------------------------------------------------------------------------------
class Reply:
    def __init__(self, resp: http.client.HTTPResponse) -> None:
        self.status = resp.status
        self.headers = resp.headers
        self.body = resp.read().decode("utf-8", "replace")

    def cookie(self) -> SimpleCookie:
        jar: SimpleCookie = SimpleCookie()
        for value in self.headers.get_all("Set-Cookie") or ():
            jar.load(value)
        return jar


def _http(stack: Stack, method: str, target: str, *, cookie: str | None = None,
          form: dict[str, str] | None = None, headers: dict[str, str] | None = None) -> Reply:
    """One request, no redirects followed, no cookie jar: each test says what it sends."""
    base = urlsplit(stack.settings.approval_base_url)
    conn = http.client.HTTPConnection(base.hostname or "127.0.0.1", base.port, timeout=60)
    sent = dict(headers or {})
    if cookie is not None:
        sent["Cookie"] = f"{COOKIE}={cookie}"
    body = None
    if form is not None:
        body = urlencode(form).encode()
        sent.setdefault("Content-Type", "application/x-www-form-urlencoded")
    try:
        conn.request(method, target, body=body, headers=sent)
        return Reply(conn.getresponse())
    finally:
        conn.close()


def _names() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:6]
    return f"procure-bot-{tag}", f"sarah-{tag}"


def _pending(gp: GatepassClient) -> Verdict:
    verdict = gp.authorize("purchase_order.create", "vendor:ACME", amount=BIG)
    assert verdict.decision == "PENDING" and verdict.approval is not None, verdict
    return verdict


def _notice(stack: Stack, approver: str, request_id: str, timeout: float = 30.0
            ) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stack.settings.approval_inbox.exists():
            for notice in read_inbox(stack.settings.approval_inbox, approver):
                if notice["request_id"] == request_id:
                    return notice
        time.sleep(0.2)
    raise AssertionError(f"no notice for {approver} within {timeout}s")


def _target(link: str) -> str:
    parts = urlsplit(link)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


def _open(stack: Stack, link: str) -> tuple[str, str]:
    """Open the link like a browser would: (the page path, the session cookie)."""
    reply = _http(stack, "GET", _target(link))
    assert reply.status == 303, reply.body
    morsel = reply.cookie()[COOKIE]
    return str(reply.headers["Location"]), morsel.value


def _csrf(body: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', body)
    assert m is not None, body
    return m.group(1)


def _origin(stack: Stack) -> dict[str, str]:
    return {"Origin": stack.settings.approval_base_url}


def _still_pending(stack: Stack, intent_id: str) -> bool:
    with ApprovalsClient(stack.settings) as client:
        view = client.find(intent_id=intent_id)
    return view is not None and view.pending


@pytest.fixture
def request_for(stack: Stack) -> Iterator[Any]:
    """A pending request of a fresh agent: (client, pending verdict, owner, notice)."""
    clients: list[GatepassClient] = []

    def make() -> tuple[GatepassClient, Verdict, str, dict[str, Any]]:
        agent, owner = _names()
        stack.register(agent, owner)
        gp = stack.client(agent_id=agent, audience=AUDIENCE, timeout=30)
        clients.append(gp)
        pending = _pending(gp)
        assert pending.approval is not None
        return gp, pending, owner, _notice(stack, owner, pending.approval["request_id"])

    yield make
    for gp in clients:
        gp.close()


# ---- plain HTTP ----------------------------------------------------------------------------
def test_a_bad_code_gets_a_generic_403(stack: Stack, request_for: Any) -> None:
    _gp, _pending_verdict, owner, notice = request_for()
    path = urlsplit(notice["link"]).path
    other = "A" * 22 if notice["code"] != "A" * 22 else "B" * 22
    for query in ({"as": owner, "code": other},
                  {"as": "mallory", "code": notice["code"]},  # someone else's name
                  {"as": owner, "code": notice["code"][:-1]},
                  {"as": owner},
                  {"code": notice["code"]}):
        reply = _http(stack, "GET", f"{path}?{urlencode(query)}")
        assert reply.status == 403, query
        assert "Set-Cookie" not in reply.headers
        assert "Link not valid" in reply.body
        assert notice["code"] not in reply.body
        assert reply.headers["Referrer-Policy"] == "no-referrer"
    # and the page itself, without a cookie, or with a made-up one
    assert _http(stack, "GET", path).status == 403
    assert _http(stack, "GET", path, cookie="v1.c2FyYWg.9999999999.n.mac").status == 403


def test_the_link_sets_a_cookie_and_redirects_without_the_secret(
        stack: Stack, request_for: Any) -> None:
    _gp, _pending_verdict, owner, notice = request_for()
    reply = _http(stack, "GET", _target(notice["link"]))
    assert reply.status == 303
    path = urlsplit(notice["link"]).path
    assert reply.headers["Location"] == path  # no query: the code leaves the address bar
    assert reply.headers["Referrer-Policy"] == "no-referrer"
    assert reply.headers["Cache-Control"] == "no-store"
    raw = reply.headers["Set-Cookie"]
    morsel = reply.cookie()[COOKIE]
    assert morsel["httponly"] and morsel["samesite"] == "Strict"
    assert morsel["path"] == path
    assert not morsel["secure"]  # the test's base URL is http
    assert 0 < int(morsel["max-age"]) <= TIMEOUT.total_seconds()
    assert notice["code"] not in raw

    page = _http(stack, "GET", path, cookie=morsel.value)
    assert page.status == 200
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert page.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert notice["code"] not in page.body
    for fact in (notice["agent_id"], owner, "procurement",
                 "purchase_order.create", "vendor:ACME", "50,000.00 USD",
                 "above the approval threshold", "Time left"):
        assert fact in page.body, fact
    assert page.body.count("<button") == 2


def test_a_post_without_a_valid_csrf_token_is_refused(stack: Stack, request_for: Any) -> None:
    _gp, pending, _owner, notice = request_for()
    path, cookie = _open(stack, notice["link"])
    page = _http(stack, "GET", path, cookie=cookie)
    token = _csrf(page.body)
    for form in ({"decision": "approve"},
                 {"decision": "approve", "csrf": ""},
                 {"decision": "approve", "csrf": token[:-2] + "xx"}):
        reply = _http(stack, "POST", path, cookie=cookie, form=form, headers=_origin(stack))
        assert reply.status == 403, form
    # a token of another opening of the same link does not fit this cookie
    _, other_cookie = _open(stack, notice["link"])
    reply = _http(stack, "POST", path, cookie=other_cookie,
                  form={"decision": "approve", "csrf": token}, headers=_origin(stack))
    assert reply.status == 403
    # without the cookie, even the right token is nothing
    reply = _http(stack, "POST", path, form={"decision": "approve", "csrf": token},
                  headers=_origin(stack))
    assert reply.status == 403
    assert _still_pending(stack, pending.intent_id)


def test_a_post_from_a_foreign_origin_is_refused(stack: Stack, request_for: Any) -> None:
    _gp, pending, _owner, notice = request_for()
    path, cookie = _open(stack, notice["link"])
    token = _csrf(_http(stack, "GET", path, cookie=cookie).body)
    form = {"decision": "approve", "csrf": token}
    for headers in ({"Origin": "https://evil.example"}, {"Origin": "null"},
                    {"Sec-Fetch-Site": "cross-site"}):
        reply = _http(stack, "POST", path, cookie=cookie, form=form, headers=headers)
        assert reply.status == 403, headers
        assert reply.headers["X-Frame-Options"] == "DENY"
    assert _still_pending(stack, pending.intent_id)


def test_a_decision_spends_the_link_and_the_code_never_reaches_the_log(
        stack: Stack, request_for: Any) -> None:
    gp, pending, owner, notice = request_for()
    path, cookie = _open(stack, notice["link"])
    token = _csrf(_http(stack, "GET", path, cookie=cookie).body)
    reply = _http(stack, "POST", path, cookie=cookie, form={"decision": "approve", "csrf": token},
                  headers=_origin(stack))
    assert reply.status == 200, reply.body
    assert "You approved the request" in reply.body
    cleared = reply.cookie()[COOKIE]
    assert cleared.value == "" and cleared["max-age"] == "0" and cleared["path"] == path
    final = gp.wait_final(pending, timeout=30)
    assert final.decision == "ALLOW" and final.approver == owner

    # the same link again: it opens the request's status, with nothing left to click
    path2, cookie2 = _open(stack, notice["link"])
    again = _http(stack, "GET", path2, cookie=cookie2)
    assert again.status == 200
    assert "link is spent" in again.body and "<button" not in again.body
    assert f"Approved by {owner}" in again.body and "via page" in again.body
    # a replayed POST with the old cookie and token decides nothing
    replay = _http(stack, "POST", path, cookie=cookie,
                   form={"decision": "deny", "csrf": token}, headers=_origin(stack))
    assert replay.status == 200 and "link is spent" in replay.body
    with ApprovalsClient(stack.settings) as client:
        view = client.find(intent_id=pending.intent_id)
    assert view is not None and view.status == "ALLOW"

    log = stack.workers[0].log_file.read_text(errors="replace")
    assert "approval page: approval by" in log  # the page did log the decision...
    assert notice["code"] not in log  # ...but never the secret, nor the cookie
    assert cookie not in log and cookie2 not in log and token not in log


def test_an_offboarded_owners_click_approves_nothing(stack: Stack, request_for: Any) -> None:
    gp, pending, owner, notice = request_for()
    path, cookie = _open(stack, notice["link"])
    token = _csrf(_http(stack, "GET", path, cookie=cookie).body)
    stack.publisher().publish(PrincipalStatusChanged(
        principal_id=owner, status=PrincipalStatus.OFFBOARDED, event_time=datetime.now(UTC),
        source="hr-test"))
    time.sleep(1.0)  # the offboarding reaches the worker's identity view
    reply = _http(stack, "POST", path, cookie=cookie,
                  form={"decision": "approve", "csrf": token}, headers=_origin(stack))
    assert reply.status == 200
    # refused (approver_inactive), or already ended by the offboarding: never approved
    assert "Not counted" in reply.body or "link is spent" in reply.body, reply.body
    assert "You approved" not in reply.body
    final = gp.wait_final(pending, timeout=TIMEOUT.total_seconds() + 30)
    assert final.decision == "DENY"


# ---- in a real browser ---------------------------------------------------------------------
@pytest.fixture
def browser_page() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            # JavaScript off: the page must work without any (it has none).
            context = browser.new_context(viewport={"width": 820, "height": 760},
                                          java_script_enabled=False)
            yield context.new_page()
        finally:
            browser.close()


def _open_in_browser(page: Any, stack: Stack, notice: dict[str, Any]) -> None:
    page.goto(notice["link"], wait_until="load", timeout=60_000)
    assert notice["code"] not in page.url and "?" not in page.url
    assert page.url == stack.settings.approval_base_url + urlsplit(notice["link"]).path
    cookies = page.context.cookies()
    assert [(c["name"], c["httpOnly"], c["sameSite"]) for c in cookies] == [
        (COOKIE, True, "Strict")]
    assert all(notice["code"] not in c["value"] for c in cookies)


@needs_chromium
def test_in_a_browser_the_owner_approves(stack: Stack, request_for: Any,
                                         browser_page: Any) -> None:
    gp, pending, owner, notice = request_for()
    page = browser_page
    _open_in_browser(page, stack, notice)
    main = page.locator("main")
    text = main.inner_text()
    for fact in (notice["agent_id"], owner, "procurement", "purchase_order.create",
                 "vendor:ACME", "50,000.00 USD",
                 "amount 50000.00 USD is above the approval threshold of 10000.00 USD"):
        assert fact in text, fact
    assert page.title().startswith("Approval needed")
    approve = page.get_by_role("button", name="Approve")
    deny = page.get_by_role("button", name="Deny")
    assert approve.is_visible() and deny.is_visible()
    screenshot = os.environ.get("GATEPASS_PAGE_SCREENSHOT")
    if screenshot:
        box = main.bounding_box()
        assert box is not None
        page.screenshot(path=screenshot, clip={
            "x": max(0, box["x"] - 16), "y": max(0, box["y"] - 16),
            "width": box["width"] + 32, "height": box["height"] + 32})
    approve.click()
    page.wait_for_load_state("load")
    heading = page.get_by_role("heading", level=1)
    heading.wait_for(timeout=30_000)
    assert heading.inner_text().startswith("Approved")
    assert "You approved the request" in page.get_by_role("status").inner_text()
    assert page.context.cookies() == []  # the session ended with the decision
    final = gp.wait_final(pending, timeout=30)
    assert final.decision == "ALLOW" and final.reasons == ("approved",)
    assert final.approver == owner


@needs_chromium
def test_in_a_browser_the_owner_denies(stack: Stack, request_for: Any,
                                       browser_page: Any) -> None:
    gp, pending, owner, notice = request_for()
    page = browser_page
    _open_in_browser(page, stack, notice)
    page.get_by_role("button", name="Deny").click()
    page.wait_for_load_state("load")
    assert page.get_by_role("heading", level=1).inner_text().startswith("Denied")
    assert "You denied the request" in page.get_by_role("status").inner_text()
    final = gp.wait_final(pending, timeout=30)
    assert final.decision == "DENY" and final.reasons == ("approval_denied",)
    assert final.approver == owner
    # back to the link: the request's status, and no buttons any more
    _open_in_browser(page, stack, notice)
    assert "link is spent" in page.locator("main").inner_text()
    assert page.get_by_role("button").count() == 0


@needs_chromium
def test_in_a_browser_the_page_cannot_be_framed(stack: Stack, request_for: Any,
                                                browser_page: Any) -> None:
    _gp, _pending_verdict, _owner, notice = request_for()
    page = browser_page
    _open_in_browser(page, stack, notice)
    framed = page.url
    # Another page (about:blank here, an opaque origin) frames the approval page: Chromium
    # refuses to render it (X-Frame-Options / frame-ancestors) and shows its own error page.
    # Without the headers the frame would hold our page (its 403: SameSite keeps the cookie
    # out of a cross-site frame), so the check is on the frame's document, not on buttons.
    page.set_content(f'<iframe id="f" src="{framed}" width="600" height="400"></iframe>')
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        frames = [f for f in page.frames if f is not page.main_frame]
        if frames and frames[0].url not in {"", "about:blank"}:
            break
        time.sleep(0.2)
    assert frames, "the frame never loaded"
    assert frames[0].url.startswith("chrome-error://"), frames[0].url
    assert "Gatepass" not in frames[0].content()
