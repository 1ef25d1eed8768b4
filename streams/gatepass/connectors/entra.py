"""Microsoft Graph change notifications for users (Entra ID): a change is read back from Graph.

    POST /entra/notifications?validationToken=...   subscription handshake: echo the token
    POST /entra/notifications                        {"value": [changeNotification, ...]}

A notification carries no user data, only the user's id and the change type, so the
connector asks Graph for the user (`GraphClient`): `accountEnabled` false -> the configured
inactive status (default suspended), true -> active; `changeType` deleted, or a user Graph
no longer knows -> offboarded. Each notification must carry the subscription's clientState
(compared in constant time) and, when a tenant is configured, that tenant's id; the others
are dropped and counted. Notifications have no event time: the event time is when the
notification was received, read before Graph is asked, so a later notification always
carries a later time and a state at least as new.

Redelivery: Graph retries a notification that was not answered 2xx within 3 seconds for up
to 4 hours. The connector publishes a principal's status only when it differs from the last
status it published for that principal (`LifecycleSink`, dedupe by state).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Protocol
from urllib.parse import quote

import aiohttp
from aiohttp import web

from gatepass.connectors.base import (
    ConnectorContext,
    RecentEvents,
    error_response,
    principal_id,
    read_json,
)
from gatepass.connectors.config import EntraSettings, Secret
from gatepass.connectors.errors import (
    ConnectorError,
    GraphUnavailableError,
    PayloadInvalidError,
    UnauthenticatedError,
)
from gatepass.core import PrincipalStatus, PrincipalStatusChanged
from gatepass.errors import ConfigError

__all__ = ["EntraConnector", "GraphClient", "GraphUser", "HttpGraphClient"]

log = logging.getLogger("gatepass.connectors.entra")
SOURCE = "entra"
PATH = "/entra/notifications"
MAX_NOTIFICATIONS = 1000
MAX_VALIDATION_TOKEN = 4096
GRAPH_CONCURRENCY = 8  # Graph calls in flight per notification batch
USER_TYPE = "#microsoft.graph.user"
_GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
_RESOURCE_RE = re.compile(r"^/?users/(?P<id>[^/?#]+)$", re.IGNORECASE)
_SELECT = "id,accountEnabled,userPrincipalName,mail"


@dataclass(frozen=True, slots=True)
class GraphUser:
    """What the connector needs of a Graph user resource."""

    id: str
    account_enabled: bool | None
    user_principal_name: str | None = None
    mail: str | None = None

    @classmethod
    def from_json(cls, body: Any) -> GraphUser:
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            raise GraphUnavailableError("Graph answered with something that is not a user")
        enabled = body.get("accountEnabled")
        upn, mail = body.get("userPrincipalName"), body.get("mail")
        return cls(id=body["id"], account_enabled=enabled if isinstance(enabled, bool) else None,
                   user_principal_name=upn if isinstance(upn, str) else None,
                   mail=mail if isinstance(mail, str) else None)

    def attribute(self, name: str) -> str | None:
        return {"id": self.id, "userPrincipalName": self.user_principal_name,
                "mail": self.mail}[name]


class GraphClient(Protocol):
    """Reads users from Microsoft Graph; raises GraphUnavailableError when it cannot."""

    async def get_user(self, user_id: str) -> GraphUser | None:
        """The user, or None when Graph does not know it (404)."""

    async def get_deleted_user(self, user_id: str) -> GraphUser | None:
        """The soft-deleted user (directory/deletedItems), or None."""

    async def close(self) -> None: ...


class HttpGraphClient:
    """Graph over HTTPS with an app-only token (OAuth 2.0 client credentials).

    The application needs the User.Read.All application permission. Tokens are cached until
    a minute before they expire and dropped on a 401.
    """

    def __init__(self, *, tenant_id: str, client_id: str, client_secret: Secret,
                 graph_url: str, login_url: str, timeout: float) -> None:
        self._tenant_id = tenant_id
        self._client_id = client_id
        self._client_secret = client_secret
        self._graph_url = graph_url.rstrip("/")
        self._login_url = login_url.rstrip("/")
        origin = re.match(r"^https?://[^/]+", self._graph_url)
        self._scope = f"{origin.group(0) if origin else self._graph_url}/.default"
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._token: Secret | None = None
        self._token_until = 0.0

    def __repr__(self) -> str:
        return f"HttpGraphClient(tenant_id={self._tenant_id!r}, client_id={self._client_id!r})"

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def _access_token(self) -> str:
        if self._token is not None and time.monotonic() < self._token_until:
            return self._token.reveal()
        url = f"{self._login_url}/{quote(self._tenant_id, safe='')}/oauth2/v2.0/token"
        form = {"client_id": self._client_id, "client_secret": self._client_secret.reveal(),
                "scope": self._scope, "grant_type": "client_credentials"}
        try:
            async with self._http().post(url, data=form) as resp:
                body = await resp.json(content_type=None)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise GraphUnavailableError(f"token endpoint unreachable: "
                                        f"{type(exc).__name__}") from None
        token = body.get("access_token") if isinstance(body, dict) else None
        if status != 200 or not isinstance(token, str):
            # The error body names the error code, never the secret we sent.
            code = body.get("error") if isinstance(body, dict) else None
            raise GraphUnavailableError(f"no Graph token (HTTP {status}, {code})")
        expires = body.get("expires_in", 300)
        self._token = Secret(token)
        self._token_until = time.monotonic() + max(0.0, float(expires) - 60.0)
        return token

    async def _get(self, path: str) -> GraphUser | None:
        for attempt in (1, 2):
            token = await self._access_token()
            try:
                async with self._http().get(
                        f"{self._graph_url}{path}",
                        headers={"Authorization": f"Bearer {token}",
                                 "Accept": "application/json"}) as resp:
                    status = resp.status
                    body = await resp.json(content_type=None) if status == 200 else None
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                raise GraphUnavailableError(f"Graph unreachable: "
                                            f"{type(exc).__name__}") from None
            if status == 200:
                return GraphUser.from_json(body)
            if status == 404:
                return None
            if status == 401 and attempt == 1:
                self._token = None  # expired or revoked early: fetch a new one once
                continue
            raise GraphUnavailableError(f"Graph answered HTTP {status} for {path}")
        raise GraphUnavailableError("Graph refused the token")  # pragma: no cover

    async def get_user(self, user_id: str) -> GraphUser | None:
        return await self._get(f"/users/{quote(user_id, safe='')}?$select={_SELECT}")

    async def get_deleted_user(self, user_id: str) -> GraphUser | None:
        return await self._get(f"/directory/deletedItems/{quote(user_id, safe='')}"
                               f"/microsoft.graph.user?$select={_SELECT}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


@dataclass(frozen=True, slots=True)
class _Work:
    user_id: str
    change_type: str
    source_event_id: str
    received_at: datetime


def _event_id(notification: dict[str, Any]) -> str:
    given = notification.get("id")
    if isinstance(given, str) and given and len(given) <= 128:
        return given
    # No id: a digest of what identifies the change (never the clientState).
    ident = {k: notification.get(k) for k in ("subscriptionId", "changeType", "resource",
                                              "subscriptionExpirationDateTime")}
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()
    return f"graph-{digest[:32]}"


def deleted_upn(user: GraphUser) -> GraphUser:
    """A soft-deleted user's UPN is prefixed with its object id (no hyphens): remove it."""
    upn = user.user_principal_name
    prefix = user.id.replace("-", "").lower()
    if upn and upn.lower().startswith(prefix):
        return GraphUser(id=user.id, account_enabled=user.account_enabled,
                         user_principal_name=upn[len(prefix):], mail=user.mail)
    return user


class EntraConnector:
    """The Graph notification URL: handshake, clientState, read-back, publishing."""

    name: ClassVar[str] = "entra"

    def __init__(self, settings: EntraSettings, ctx: ConnectorContext,
                 graph: GraphClient | None = None, *, principals_cached: int = 10_000
                 ) -> None:
        self.settings = settings
        self.ctx = ctx
        self.graph = graph
        # Graph id -> principal id of users seen before: a deleted user may be gone for good.
        self._principals = RecentEvents(principals_cached)

    def validate(self) -> None:
        if self.graph is None and not self.settings.has_graph_credentials:
            raise ConfigError("entra.client_secret",
                              "entra needs tenant_id, client_id and client_secret to read "
                              "changed users from Microsoft Graph")

    async def start(self) -> None:
        if self.graph is None:
            assert self.settings.client_secret is not None
            self.graph = HttpGraphClient(
                tenant_id=self.settings.tenant_id or "", client_id=self.settings.client_id or "",
                client_secret=self.settings.client_secret, graph_url=self.settings.graph_url,
                login_url=self.settings.login_url,
                timeout=self.settings.graph_timeout.total_seconds())

    async def stop(self) -> None:
        if self.graph is not None:
            await self.graph.close()

    def mount(self, app: web.Application) -> None:
        app.router.add_post(PATH, self.notify)
        app.router.add_get(PATH, self.notify, allow_head=False)

    def _refuse(self, request: web.Request, exc: ConnectorError) -> web.Response:
        self.ctx.metrics.rejected.labels(self.name, exc.code).inc()
        log.warning("entra request refused", extra={
            "code": exc.code, "detail": str(exc), "remote": request.remote})
        return error_response(exc)

    async def notify(self, request: web.Request) -> web.StreamResponse:
        if "validationToken" in request.query:
            return self._handshake(request)
        if request.method != "POST":
            return self._refuse(request, PayloadInvalidError(
                "expected a notification POST or a validationToken"))
        try:
            work = self._authentic(await read_json(request))
            events = await self._resolve_all(work)
            await self.ctx.sink.publish(self.name, events, dedupe="state")
        except ConnectorError as exc:
            return self._refuse(request, exc)
        return web.Response(status=202)

    def _handshake(self, request: web.Request) -> web.Response:
        token = request.query["validationToken"]
        if not token or len(token) > MAX_VALIDATION_TOKEN or not token.isprintable():
            return self._refuse(request, PayloadInvalidError("malformed validationToken"))
        log.info("graph subscription validation answered")
        # text/plain and nosniff: the echo can never be rendered as a page.
        return web.Response(text=token, content_type="text/plain",
                            headers={"X-Content-Type-Options": "nosniff"})

    def _authentic(self, body: Any) -> list[_Work]:
        """The notifications carrying our clientState (and tenant), validated, in order."""
        items = body.get("value") if isinstance(body, dict) else None
        if not isinstance(items, list) or not items:
            raise PayloadInvalidError("value must be a non-empty list of notifications")
        if len(items) > MAX_NOTIFICATIONS:
            raise PayloadInvalidError(f"more than {MAX_NOTIFICATIONS} notifications")
        authentic: list[tuple[int, dict[str, Any]]] = []
        for i, n in enumerate(items):
            if not isinstance(n, dict):
                raise PayloadInvalidError(f"value[{i}] must be an object")
            state = n.get("clientState")
            if not self.settings.client_state.matches(state if isinstance(state, str)
                                                      else None):
                self.ctx.metrics.rejected.labels(self.name, "client_state").inc()
                log.warning("graph notification with a wrong clientState dropped",
                            extra={"index": i, "subscription_id": n.get("subscriptionId")})
                continue
            tenant = self.settings.tenant_id
            if tenant and str(n.get("tenantId", "")).lower() != tenant.lower():
                self.ctx.metrics.rejected.labels(self.name, "tenant").inc()
                log.warning("graph notification for another tenant dropped",
                            extra={"index": i})
                continue
            authentic.append((i, n))
        if not authentic:
            raise UnauthenticatedError("no notification carries the configured clientState")
        self.ctx.metrics.received.labels(self.name).inc(len(authentic))
        now = self.ctx.now()
        work: list[_Work] = []
        for i, n in authentic:
            where = f"value[{i}]"
            lifecycle = n.get("lifecycleEvent")
            if lifecycle is not None:
                # reauthorizationRequired / subscriptionRemoved / missed: the subscription
                # needs attention (renew it, or resynchronise after `missed`).
                self.ctx.metrics.ignored.labels(self.name, "lifecycle_notification").inc()
                log.warning("graph lifecycle notification", extra={
                    "lifecycle_event": str(lifecycle)[:64],
                    "subscription_id": n.get("subscriptionId")})
                continue
            change = n.get("changeType")
            if change not in {"created", "updated", "deleted"}:
                raise PayloadInvalidError(f"{where}.changeType must be created, updated "
                                          "or deleted")
            data = n.get("resourceData")
            if not isinstance(data, dict):
                raise PayloadInvalidError(f"{where}.resourceData must be an object")
            odata_type = data.get("@odata.type")
            if odata_type is not None and str(odata_type).lower() != USER_TYPE:
                self.ctx.metrics.ignored.labels(self.name, "unrelated_type").inc()
                continue
            user_id = data.get("id")
            if user_id is None:
                m = _RESOURCE_RE.match(str(n.get("resource", "")))
                user_id = m.group("id") if m else None
            if not isinstance(user_id, str) or not _GUID_RE.fullmatch(user_id):
                # It goes into a Graph URL: only an object id (a GUID) may.
                raise PayloadInvalidError(f"{where}.resourceData.id must be a user's "
                                          "object id")
            work.append(_Work(user_id.lower(), change, _event_id(n), now))
        return work

    def _principal_of(self, user: GraphUser) -> str | None:
        value = user.attribute(self.settings.principal_attribute)
        if value is None:
            return None
        try:
            principal = principal_id(value, self.settings.principal_attribute)
        except PayloadInvalidError:
            return None
        self._principals.put(user.id.lower(), principal)
        return principal

    async def _gone_principal(self, user_id: str) -> str | None:
        if self.settings.principal_attribute == "id":
            return user_id
        known = self._principals.get(user_id)
        if isinstance(known, str):
            return known
        assert self.graph is not None
        deleted = await self.graph.get_deleted_user(user_id)
        return self._principal_of(deleted_upn(deleted)) if deleted is not None else None

    async def _resolve_all(self, work: list[_Work]) -> list[PrincipalStatusChanged]:
        """Ask Graph about every user of a batch, a few at a time, keeping their order."""
        gate = asyncio.Semaphore(GRAPH_CONCURRENCY)

        async def one(w: _Work) -> PrincipalStatusChanged | None:
            async with gate:
                return await self._resolve(w)

        results = await asyncio.gather(*(one(w) for w in work), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return [r for r in results if isinstance(r, PrincipalStatusChanged)]

    async def _resolve(self, w: _Work) -> PrincipalStatusChanged | None:
        assert self.graph is not None
        principal: str | None
        if w.change_type == "deleted":
            status, principal = PrincipalStatus.OFFBOARDED, await self._gone_principal(w.user_id)
        else:
            user = await self.graph.get_user(w.user_id)
            if user is None:  # deleted since the notification was sent
                status = PrincipalStatus.OFFBOARDED
                principal = await self._gone_principal(w.user_id)
            elif user.account_enabled is None:
                raise GraphUnavailableError("Graph did not say whether the account is enabled")
            else:
                status = PrincipalStatus.ACTIVE if user.account_enabled \
                    else self.settings.inactive_status
                principal = self._principal_of(user)
        if principal is None:
            # A retry cannot help: Graph no longer knows which principal this was.
            self.ctx.metrics.ignored.labels(self.name, "principal_unknown").inc()
            log.error("graph user without a principal id; not published", extra={
                "graph_user_id": w.user_id, "change_type": w.change_type,
                "principal_attribute": self.settings.principal_attribute})
            return None
        return PrincipalStatusChanged(principal_id=principal, status=status,
                                      event_time=w.received_at, source=SOURCE,
                                      source_event_id=w.source_event_id)
