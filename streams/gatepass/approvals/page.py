"""The approval page: one pending request shown to one approver, with Approve and Deny buttons.

Reached by the link in the approver's notice (`approval_link`), which carries the approver's
one-time code. The worker serves it at `/approvals/{agent_id}/{request_id}`:

    GET  ?as=<approver>&code=<code>  code checked (constant time); a session cookie is set
                                     (HttpOnly, SameSite=Strict, this request's path only,
                                     until the request expires) and the browser is sent (303)
                                     to the same path without the query: the secret leaves
                                     the address bar at once and is never in a Referer.
    GET  (cookie)                    the request in context, and a form with a CSRF token
    POST (cookie, token, origin)     one decision through `ApprovalsClient`, then its outcome

The cookie is not the code: it is a MAC under the approval key over (agent, request,
approver, expiry, nonce), so the browser never stores the secret. Once the request is
decided or expired the page shows where it stands and no buttons: the link is spent. Every
response forbids framing, caching, referrers and scripts (the page has no JavaScript).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import secrets
import time
import weakref
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from html import escape
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

from aiohttp import web as aioweb
from faust.web import View

from gatepass.approvals.client import ApprovalsClient, Outcome, RequestView
from gatepass.config import Settings
from gatepass.core.approval import approval_code
from gatepass.errors import GatepassError

__all__ = [
    "PAGE_PATH",
    "Session",
    "code_valid",
    "csrf_token",
    "csrf_valid",
    "install_approval_pages",
    "open_session",
    "origin_allowed",
    "page_headers",
    "page_path",
    "read_session",
    "render_error",
    "render_outcome",
    "render_request",
    "session_token",
]

log = logging.getLogger("gatepass.approvals.page")

PAGE_PATH = "/approvals/{agent_id}/{request_id}"
OUTCOME_TIMEOUT = 15.0  # how long a POST waits for the processor's answer
SPENT_COOKIE_SECONDS = 300  # a decided or expired request: long enough to read its status
_MAX_FORM_BYTES = 4096
_CODE_LEN = 22  # approval_code's length
_MAX_ID = 256
_SESSION_LABEL = b"gatepass-approval-page-session"
_CSRF_LABEL = b"gatepass-approval-page-csrf"

T = TypeVar("T")

# ---- security headers ------------------------------------------------------------------------
_CSS = """\
:root{color-scheme:light}
body{margin:0;background:#f3f4f6;color:#16181d;font:1rem/1.5 system-ui,-apple-system,\
"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:42rem;margin:2rem auto;padding:1.5rem 2rem;background:#fff;\
border:1px solid #c9ced6;border-radius:8px}
h1{font-size:1.5rem;line-height:1.25;margin:0 0 .75rem}
h2{font-size:1.1rem;margin:1.25rem 0 .5rem}
p{margin:.5rem 0}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.35rem 1.25rem;margin:1rem 0}
dt{font-weight:600;color:#3b4048}
dd{margin:0;overflow-wrap:anywhere}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.95em}
.amount{font-size:1.2rem;font-weight:700}
.why{margin:0;padding:.6rem 1rem .6rem 2rem;background:#fff8e1;border-left:4px solid #8a6100}
.actions{display:flex;flex-wrap:wrap;gap:1rem;margin:1.5rem 0 .5rem}
button{font:inherit;font-weight:600;min-width:8rem;padding:.65rem 1.5rem;color:#fff;\
border:2px solid transparent;border-radius:6px;cursor:pointer}
.approve{background:#14632b}
.deny{background:#a0182a}
button:hover{text-decoration:underline}
button:focus-visible,a:focus-visible{outline:3px solid #1d4ed8;outline-offset:3px}
.status{padding:.75rem 1rem;border-radius:6px;border:2px solid #3b4048;background:#f8f9fb}
.status.allow{border-color:#14632b;background:#ecf7ef}
.status.deny{border-color:#a0182a;background:#fcebed}
.status.refused{border-color:#8a6100;background:#fff8e1}
.note{color:#3b4048;font-size:.95rem}
"""
_CSS_HASH = base64.b64encode(hashlib.sha256(_CSS.encode()).digest()).decode()
CSP = ("default-src 'none'; "
       f"style-src 'sha256-{_CSS_HASH}'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


def page_headers(*, carries_secret: bool = False) -> dict[str, str]:
    """The headers of every approval page response.

    The page itself may send a Referer to its own origin only (`same-origin`): Chromium sends
    `Origin: null` on a form POST from a `no-referrer` page, which would make the Origin
    check useless. The response to the link that carries the code says `no-referrer`.
    """
    return {
        "Content-Security-Policy": CSP,
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer" if carries_secret else "same-origin",
        "Cache-Control": "no-store",
        "Pragma": "no-cache",
        "X-Content-Type-Options": "nosniff",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
        "X-Robots-Tag": "noindex, nofollow",
    }


def _origin(url: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if scheme not in {"http", "https"} or not host:
        return None
    return scheme, host, port or (443 if scheme == "https" else 80)


def origin_allowed(headers: Mapping[str, str], base_url: str) -> bool:
    """Whether a POST may come from where its headers say it comes from.

    An `Origin` header (browsers send one on every form POST) must be the base URL's origin;
    `null` is refused. Without one, a `Sec-Fetch-Site` header must say `same-origin`. A
    client that sends neither is no browser a third-party page could drive: it still needs
    the session cookie and the CSRF token.
    """
    origin = headers.get("Origin")
    if origin is not None:
        mine = _origin(base_url)
        return mine is not None and _origin(origin) == mine
    site = headers.get("Sec-Fetch-Site")
    return site is None or site == "same-origin"


# ---- the session cookie and the CSRF token ------------------------------------------------
def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True, kw_only=True)
class Session:
    """What the cookie proves: this browser opened `approver`'s link for this request."""

    agent_id: str
    request_id: str
    approver: str
    expires: int  # unix seconds
    nonce: str

    def __repr__(self) -> str:
        return (f"Session(agent_id={self.agent_id!r}, request_id={self.request_id!r}, "
                f"approver={self.approver!r}, expires={self.expires})")


def _mac(key: bytes, label: bytes, *parts: str) -> str:
    msg = b"\x00".join((label, *(p.encode("utf-8", "surrogatepass") for p in parts)))
    return _b64(hmac.new(key, msg, hashlib.sha256).digest())


def _session_mac(key: bytes, s: Session) -> str:
    return _mac(key, _SESSION_LABEL, s.agent_id, s.request_id, s.approver, str(s.expires),
                s.nonce)


def open_session(*, agent_id: str, request_id: str, approver: str, expires: int) -> Session:
    """A new session with a fresh nonce (each opening of the link gets its own)."""
    return Session(agent_id=agent_id, request_id=request_id, approver=approver,
                   expires=expires, nonce=secrets.token_urlsafe(12))


def session_token(key: bytes, session: Session) -> str:
    """The cookie value: `v1.<approver>.<expires>.<nonce>.<mac>` (all URL-safe)."""
    approver = _b64(session.approver.encode("utf-8", "surrogatepass"))
    return f"v1.{approver}.{session.expires}.{session.nonce}.{_session_mac(key, session)}"


def read_session(key: bytes, token: str | None, *, agent_id: str, request_id: str,
                 now: float) -> Session | None:
    """The session a cookie proves for this request, or None (forged, foreign, expired)."""
    if not token or len(token) > 1024:
        return None
    parts = token.split(".")
    if len(parts) != 5 or parts[0] != "v1" or not parts[2].isdigit():
        return None
    try:
        approver = _unb64(parts[1]).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    session = Session(agent_id=agent_id, request_id=request_id, approver=approver,
                      expires=int(parts[2]), nonce=parts[3])
    if not hmac.compare_digest(_session_mac(key, session).encode(),
                               parts[4].encode("utf-8", "replace")):
        return None
    return session if now < session.expires else None


def csrf_token(key: bytes, session: Session) -> str:
    """The form's token: bound to the request, the approver and this very cookie."""
    return _mac(key, _CSRF_LABEL, _session_mac(key, session))


def csrf_valid(key: bytes, session: Session, token: str | None) -> bool:
    if not token:
        return False
    return hmac.compare_digest(csrf_token(key, session).encode(),
                               token.encode("utf-8", "replace"))


def code_valid(key: bytes, *, request_id: str, approver: str, code: str) -> bool:
    """The link's code, checked in constant time (its length is no secret)."""
    if len(code) != _CODE_LEN or not approver or len(approver) > _MAX_ID:
        return False
    expected = approval_code(key, request_id, approver)
    return hmac.compare_digest(expected.encode(), code.encode("utf-8", "replace"))


# ---- rendering -----------------------------------------------------------------------------
def page_path(base_url: str, agent_id: str, request_id: str) -> str:
    """The page's path as the browser sees it (with the base URL's own path in front)."""
    prefix = urlsplit(base_url).path.rstrip("/")
    return f"{prefix}/approvals/{quote(agent_id, safe='')}/{quote(request_id, safe='')}"


def _e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def _amount(intent: Mapping[str, Any]) -> str | None:
    amount = intent.get("amount")
    if amount is None:
        return None
    value = Decimal(str(amount))
    cents = value.quantize(Decimal("0.01"))
    shown = f"{cents:,}" if cents == value else f"{value.normalize():,f}"
    currency = intent.get("currency")
    return f"{shown} {currency}" if currency else shown


def _utc(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float) -> str:
    s = max(0, int(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h} h {m} min"
    if m:
        return f"{m} min {s} s"
    return f"{s} s"


def _time(ts: datetime) -> str:
    return f'<time datetime="{_e(ts.astimezone(UTC).isoformat())}">{_e(_utc(ts))}</time>'


def _document(title: str, body: str) -> str:
    return ("<!DOCTYPE html>\n"
            '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            '<meta name="robots" content="noindex, nofollow">\n'
            f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n"
            f"<body>\n<main>\n{body}</main>\n</body>\n</html>\n")


def _facts(view: RequestView, *, approver: str, now: datetime) -> str:
    req, intent = view.request, view.intent
    rows: list[tuple[str, str]] = [
        ("Agent", f"<code>{_e(intent.get('agent_id'))}</code>"),
        ("Purpose", _e(req.get("purpose") or "not registered")),
        ("Owner", _e(req.get("owner"))),
    ]
    if req.get("department"):
        rows.append(("Department", _e(req.get("department"))))
    rows += [
        ("Action", f"<code>{_e(intent.get('action'))}</code>"),
        ("Resource", f"<code>{_e(intent.get('resource'))}</code>"),
    ]
    amount = _amount(intent)
    if amount is not None:
        rows.append(("Amount", f'<span class="amount">{_e(amount)}</span>'))
    requested, expires = req.get("requested_at"), req.get("expires_at")
    if isinstance(requested, datetime):
        rows.append(("Requested", _time(requested)))
    if isinstance(expires, datetime):
        left = (expires - now).total_seconds()
        when = (f"{_e(_duration(left))} (until {_time(expires)})" if left > 0
                else f"none: it expired at {_time(expires)}")
        rows.append(("Time left", when))
    rows.append(("You are", _e(approver)))
    items = "".join(f"<dt>{k}</dt><dd>{v}</dd>\n" for k, v in rows)
    return f"<dl>\n{items}</dl>\n"


def _why(view: RequestView) -> str:
    reasons = [str(w) for w in view.request.get("why") or ()]
    if not reasons:
        return ""
    items = "".join(f"<li>{_e(w)}</li>\n" for w in reasons)
    return ('<h2 id="why">Why your approval is needed</h2>\n'
            f'<ul class="why" aria-labelledby="why">\n{items}</ul>\n')


def _settled(view: RequestView) -> tuple[str, str, str]:
    """(tone, heading, sentence) of a request that is no longer pending."""
    final = view.final or {}
    approval = final.get("approval") or {}
    who = approval.get("approver")
    at = approval.get("decided_at")
    when = f" at {_utc(at)}" if isinstance(at, datetime) else ""
    via = f" (via {approval['channel']})" if approval.get("channel") else ""
    reason = (final.get("reasons") or [""])[0]
    if view.status == "ALLOW":
        return "allow", "Approved", f"Approved by {who}{when}{via}."
    if view.status == "DENY" and reason == "approval_denied":
        return "deny", "Denied", f"Denied by {who}{when}{via}."
    if view.status == "DENY" and reason in ("owner_inactive", "agent_inactive"):
        whose = "its owner" if reason == "owner_inactive" else "the agent"
        return ("deny", "Closed",
                f"The request was closed because {whose} is no longer active ({reason}): "
                "the action was denied.")
    if view.status == "DENY" and reason == "approval_expired":
        return "deny", "Expired", "No valid decision arrived in time: the action was denied."
    if view.status == "DENY":
        return "deny", "Denied", f"The action was denied ({reason or 'denied'})."
    return "deny", "Expired", "The time to decide is over: the action will be denied."


def render_request(view: RequestView, *, approver: str, now: datetime, csrf: str | None,
                   action: str) -> str:
    """The page for one request: its facts, and the form while it is pending."""
    intent = view.intent
    what = f"{intent.get('action')} for {intent.get('agent_id')}"
    if view.pending and csrf is not None:
        head = (f"<h1>Approve or deny: {_e(intent.get('action'))}</h1>\n"
                f'<p class="note">Agent <code>{_e(intent.get("agent_id"))}</code> asks to do '
                "this. Nothing happens until you decide, and only your first decision "
                "counts.</p>\n")
        tail = (f'<form method="post" action="{_e(action)}">\n'
                f'<input type="hidden" name="csrf" value="{_e(csrf)}">\n'
                '<div class="actions">\n'
                '<button type="submit" name="decision" value="approve" class="approve">'
                "Approve</button>\n"
                '<button type="submit" name="decision" value="deny" class="deny">'
                "Deny</button>\n</div>\n</form>\n")
        title = f"Approval needed: {what} - Gatepass"
    else:
        tone, heading, sentence = _settled(view)
        head = (f"<h1>{_e(heading)}: {_e(intent.get('action'))}</h1>\n"
                f'<p class="status {tone}" role="status">{_e(sentence)} This link is spent: '
                "nothing more can be decided here.</p>\n")
        tail = ""
        title = f"{heading}: {what} - Gatepass"
    return _document(title, head + _facts(view, approver=approver, now=now) + _why(view) + tail)


_REFUSALS = {
    "approval_replayed": "The request had already been decided: the first decision counts.",
    "approval_forged": "The decision did not match this request or approver.",
    "approval_expired": "The request expired before your decision arrived.",
    "approval_unknown": "No request was waiting for this decision.",
    "approver_inactive": "Your account is not active, so your decision cannot count.",
    "agent_inactive": "The agent is no longer active.",
    "owner_inactive": "The agent's owner is no longer active.",
    "internal_error": "The decision could not be checked.",
    "timeout": "The processor did not confirm your decision in time. Open your link again "
               "to see where the request stands.",
}


def describe_outcome(outcome: Outcome, approve: bool) -> tuple[str, str, str]:
    """(tone, heading, sentence) of what one submitted decision did."""
    if outcome.accepted and outcome.decision == "ALLOW":
        return "allow", "Approved", "You approved the request: the agent may go ahead."
    if outcome.accepted:
        return "deny", "Denied", "You denied the request: the agent may not go ahead."
    if outcome.decision is not None:
        return ("refused", "Not counted",
                f"The request ended as {outcome.decision} ({outcome.reason}) before your "
                "decision could count.")
    explained = _REFUSALS.get(outcome.reason, "The decision was refused.")
    return ("refused", "Not counted",
            f"Your {'approval' if approve else 'denial'} was refused ({outcome.reason}). "
            f"{explained}")


def render_outcome(view: RequestView, outcome: Outcome, *, approve: bool, approver: str,
                   now: datetime) -> str:
    """The page after the click: what the decision did, and the request it was about."""
    tone, heading, sentence = describe_outcome(outcome, approve)
    intent = view.intent
    body = (f"<h1>{_e(heading)}: {_e(intent.get('action'))}</h1>\n"
            f'<p class="status {tone}" role="status">{_e(sentence)}</p>\n'
            '<p class="note">You can close this page. The link is spent: it opens this '
            "request's status, nothing more.</p>\n"
            + _facts(view, approver=approver, now=now) + _why(view))
    return _document(f"{heading}: {intent.get('action')} for {intent.get('agent_id')} "
                     "- Gatepass", body)


_ERRORS = {
    400: ("Form not readable", "The form could not be read. Nothing was decided; open the "
          "link from your notice again."),
    403: ("Link not valid",
          "This approval link is not valid here. Open the link from your notice again; "
          "if it still fails, ask for the request to be sent again."),
    404: ("Request not found",
          "This request is no longer available: it was decided or expired a while ago."),
    413: ("Request too large", "The form was larger than this page accepts."),
    503: ("Try again shortly",
          "The approval service could not be reached. Nothing was decided; try again in a "
          "moment."),
}


def render_error(status: int) -> str:
    """A generic page for a refused or failed request: it never says which check failed."""
    title, text = _ERRORS.get(status, ("Something went wrong", "Nothing was decided."))
    return _document(f"{title} - Gatepass", f"<h1>{_e(title)}</h1>\n<p>{_e(text)}</p>\n")


# ---- the web view ------------------------------------------------------------------------
class _Pages:
    """The handlers, with what they share: settings, key, one lazily made client, locks."""

    def __init__(self, settings: Settings, approval_key: Callable[[], bytes]) -> None:
        self.settings = settings
        self.key = approval_key
        self.base_url = settings.approval_base_url
        self.secure = urlsplit(self.base_url).scheme == "https"
        self.cookie = "__Secure-gatepass-approval" if self.secure else "gatepass-approval"
        # Blocking Kafka calls run here, never on the event loop nor in the default executor
        # (the key sync uses that one).
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="approval-page")
        self._client: ApprovalsClient | None = None
        self._client_lock = asyncio.Lock()
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = \
            weakref.WeakValueDictionary()

    async def _blocking(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def client(self) -> ApprovalsClient:
        async with self._client_lock:
            if self._client is None:
                settings = self.settings
                self._client = await self._blocking(lambda: ApprovalsClient(settings))
            return self._client

    async def find(self, agent_id: str, request_id: str) -> RequestView | None:
        client = await self.client()
        return await self._blocking(
            lambda: client.find(agent_id=agent_id, request_id=request_id))

    # -- responses --
    def html(self, body: str, status: int = 200, *, carries_secret: bool = False
             ) -> aioweb.Response:
        return aioweb.Response(text=body, status=status, content_type="text/html",
                               charset="utf-8",
                               headers=page_headers(carries_secret=carries_secret))

    def error(self, status: int, *, carries_secret: bool = False) -> aioweb.Response:
        return self.html(render_error(status), status, carries_secret=carries_secret)

    def forget(self, response: aioweb.Response, path: str) -> aioweb.Response:
        response.del_cookie(self.cookie, path=path, secure=self.secure or None, httponly=True,
                            samesite="Strict")
        return response

    def session(self, request: aioweb.Request, agent_id: str, request_id: str
                ) -> Session | None:
        return read_session(self.key(), request.cookies.get(self.cookie), agent_id=agent_id,
                            request_id=request_id, now=time.time())

    # -- handlers --
    async def get(self, request: aioweb.Request, agent_id: str, request_id: str
                  ) -> aioweb.Response:
        if "code" in request.query or "as" in request.query:
            return await self._open_link(request, agent_id, request_id)
        session = self.session(request, agent_id, request_id)
        if session is None:
            return self.error(403)
        try:
            view = await self.find(agent_id, request_id)
        except GatepassError as exc:
            log.warning("approval page: request %s not loaded: %s", request_id, exc.code)
            return self.error(503)
        if view is None:
            return self.error(404)
        key = self.key()
        csrf = csrf_token(key, session) if view.pending else None
        return self.html(render_request(view, approver=session.approver,
                                        now=datetime.now(UTC), csrf=csrf,
                                        action=page_path(self.base_url, agent_id, request_id)))

    async def _open_link(self, request: aioweb.Request, agent_id: str, request_id: str
                         ) -> aioweb.Response:
        approver = request.query.get("as", "")
        code = request.query.get("code", "")
        if len(agent_id) > _MAX_ID or len(request_id) > _MAX_ID or not code_valid(
                self.key(), request_id=request_id, approver=approver, code=code):
            log.warning("approval page: a link for request %.64r was refused", request_id)
            return self.error(403, carries_secret=True)
        try:
            view = await self.find(agent_id, request_id)
        except GatepassError as exc:
            log.warning("approval page: request %s not loaded: %s", request_id, exc.code)
            return self.error(503, carries_secret=True)
        if view is None:
            return self.error(404, carries_secret=True)
        now = time.time()
        expires_at = view.request["expires_at"].timestamp()
        lifetime = int(expires_at - now) if view.pending else SPENT_COOKIE_SECONDS
        lifetime = max(1, lifetime)
        session = open_session(agent_id=agent_id, request_id=request_id, approver=approver,
                               expires=int(now) + lifetime)
        path = page_path(self.base_url, agent_id, request_id)
        response = aioweb.Response(status=303, headers={
            **page_headers(carries_secret=True), "Location": path})
        response.set_cookie(self.cookie, session_token(self.key(), session), path=path,
                            max_age=lifetime, secure=self.secure or None, httponly=True,
                            samesite="Strict")
        return response

    async def post(self, request: aioweb.Request, agent_id: str, request_id: str
                   ) -> aioweb.Response:
        path = page_path(self.base_url, agent_id, request_id)
        session = self.session(request, agent_id, request_id)
        if session is None or not origin_allowed(request.headers, self.base_url):
            return self.error(403)
        if (request.content_length or 0) > _MAX_FORM_BYTES:
            return self.error(413)
        if request.content_type != "application/x-www-form-urlencoded":
            return self.error(403)
        try:
            form = await request.post()
        except (UnicodeDecodeError, ValueError):  # not a form we can read: nothing decided
            return self.error(400)
        csrf, choice = form.get("csrf"), form.get("decision")
        if not isinstance(csrf, str) or not csrf_valid(self.key(), session, csrf) \
                or choice not in {"approve", "deny"}:
            return self.error(403)
        approve = choice == "approve"
        # One decision at a time per request in this worker: a double click waits for the
        # first and then sees the request decided, instead of submitting a second decision.
        lock_key = f"{agent_id}\x00{request_id}"
        lock = self._locks.get(lock_key)
        if lock is None:
            lock = self._locks[lock_key] = asyncio.Lock()
        async with lock:
            try:
                return await self._decide(session, approve, path)
            except GatepassError as exc:
                log.warning("approval page: decision on request %s failed: %s", request_id,
                            exc.code)
                return self.error(503)

    async def _decide(self, session: Session, approve: bool, path: str) -> aioweb.Response:
        view = await self.find(session.agent_id, session.request_id)
        if view is None:
            return self.forget(self.error(404), path)
        now = datetime.now(UTC)
        if not view.pending:
            return self.forget(self.html(render_request(
                view, approver=session.approver, now=now, csrf=None, action=path)), path)
        client = await self.client()
        code = approval_code(self.key(), session.request_id, session.approver)
        since = datetime.now(UTC)
        decision = await self._blocking(lambda: client.submit(
            view, approver=session.approver, approve=approve, code=code, channel="page"))
        outcome = await self._blocking(
            lambda: client.outcome(decision, since=since, timeout=OUTCOME_TIMEOUT))
        log.info("approval page: %s by %s on request %s: %s", "approval" if approve
                 else "denial", session.approver, session.request_id, outcome.reason)
        return self.forget(self.html(render_outcome(
            view, outcome, approve=approve, approver=session.approver,
            now=datetime.now(UTC))), path)


def _guarded(handler: Callable[..., Any]) -> Callable[..., Any]:
    """Any unexpected failure becomes the generic page: aiohttp would log the request."""
    async def run(request: aioweb.Request, agent_id: str, request_id: str) -> aioweb.Response:
        try:
            response: aioweb.Response = await handler(request, agent_id, request_id)
            return response
        except Exception as exc:
            log.error("approval page failed: %s", type(exc).__name__)
            return aioweb.Response(text=render_error(500), status=500, content_type="text/html",
                                   charset="utf-8", headers=page_headers(carries_secret=True))
    return run


def install_approval_pages(app: Any, settings: Settings,
                           approval_key: Callable[[], bytes]) -> None:
    """Serve the approval page on the faust app's web server (GET and POST)."""
    pages = _Pages(settings, approval_key)
    get, post = _guarded(pages.get), _guarded(pages.post)

    class ApprovalPage(View):
        """One approval request, for one approver (see the module docstring)."""

        async def get(self, request: Any, agent_id: str = "",
                      request_id: str = "") -> Any:
            return await get(request, agent_id, request_id)

        async def post(self, request: Any, agent_id: str = "",
                       request_id: str = "") -> Any:
            return await post(request, agent_id, request_id)

    app.page(PAGE_PATH, name="approval_page")(ApprovalPage)
