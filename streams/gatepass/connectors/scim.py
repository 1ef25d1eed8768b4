"""SCIM 2.0 service provider for Users (RFC 7643/7644) at /scim/v2: provisioning as lifecycle.

Okta, Microsoft Entra (and anything that speaks SCIM) create, update, deactivate and delete
users here with a bearer token. Each write that changes a user's principal status publishes
a PrincipalStatusChanged: created or `active=true` -> active, `active=false` -> the
configured inactive status (default suspended), DELETE -> offboarded. The principal id is
the user's `userName` (or, configured, `externalId`). SCIM requests carry no event time, so
the event time is when Gatepass accepted the write; the source event id is
`<scim id>/<version>`.

What SCIM must answer later (GET by id, filters) is kept in a store: in production the
compacted topic `<prefix>scim-users` (key = SCIM id, value = the stored user as JSON, a
tombstone on delete), read back whole at start, so a restarted receiver answers the same.
A write is acknowledged (2xx) only after Kafka acknowledged both the lifecycle event and
the stored user; if Kafka is down the client gets 503 and retries. One receiver owns the
store: a second receiver would not see the first one's writes until it restarts.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import secrets
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, ClassVar, Protocol

from aiohttp import web
from confluent_kafka import KafkaException, Producer

from gatepass.config import Settings
from gatepass.connectors.base import ConnectorContext, loads, principal_id
from gatepass.connectors.config import ScimSettings
from gatepass.connectors.errors import ConnectorError, PayloadInvalidError
from gatepass.connectors.scim_model import (
    ENTERPRISE_URN,
    LIST_URN,
    SCHEMA,
    SEARCH_URN,
    USER_URN,
    ScimError,
    apply_patch,
    invalid,
    matches,
    normalize_user,
    parse_filter,
    project,
)
from gatepass.core import PrincipalStatus, PrincipalStatusChanged
from gatepass.errors import BrokerError
from gatepass.transport import TopicSpec, ensure_topics, read_topics
from gatepass.transport.topics import KAFKA_LOG

__all__ = ["KafkaScimStore", "MemoryScimStore", "ScimConnector", "ScimStore",
           "scim_users_topic"]

log = logging.getLogger("gatepass.connectors.scim")
SOURCE = "scim"
BASE = "/scim/v2"
CONTENT_TYPE = "application/scim+json"
_DAY_MS = 24 * 3600 * 1000


class ScimStore(Protocol):
    """Where SCIM users live between requests and restarts. Blocking calls."""

    def load(self) -> dict[str, dict[str, Any]]:
        """Every stored user by SCIM id."""

    def put(self, user_id: str, user: Mapping[str, Any] | None) -> None:
        """Store (None: delete) and return once durable; BrokerError otherwise."""

    def close(self) -> None: ...


class MemoryScimStore:
    """For tests and for trying the connector out: nothing survives a restart."""

    def __init__(self) -> None:
        self.users: dict[str, dict[str, Any]] = {}
        self.fail: BaseException | None = None  # set by tests to simulate a broker outage

    def load(self) -> dict[str, dict[str, Any]]:
        return copy.deepcopy(self.users)

    def put(self, user_id: str, user: Mapping[str, Any] | None) -> None:
        if self.fail is not None:
            raise self.fail
        if user is None:
            self.users.pop(user_id, None)
        else:
            self.users[user_id] = copy.deepcopy(dict(user))

    def close(self) -> None:
        return None


def scim_users_topic(settings: Settings) -> TopicSpec:
    # One partition: the store is small and read whole; compaction keeps each user's last
    # state and drops deleted users after their tombstone.
    return TopicSpec(f"{settings.topic_prefix}scim-users", 1,
                     {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1",
                      "segment.ms": str(_DAY_MS), "delete.retention.ms": str(_DAY_MS)},
                     False)


class KafkaScimStore:
    """The compacted `<prefix>scim-users` topic; created on first use."""

    def __init__(self, settings: Settings, *, timeout: float = 10.0) -> None:
        self._settings = settings
        self._spec = scim_users_topic(settings)
        self._timeout = timeout
        self._producer: Producer | None = None

    @property
    def topic(self) -> str:
        return self._spec.name

    def load(self) -> dict[str, dict[str, Any]]:
        ensure_topics(self._settings, specs=[self._spec])
        users: dict[str, dict[str, Any]] = {}
        for record in read_topics(self._settings.bootstrap, [self.topic],
                                  group="gatepass-scim-store", timeout=120.0):
            key = (record.key or b"").decode("utf-8", "replace")
            if record.value is None:
                users.pop(key, None)
                continue
            try:
                users[key] = json.loads(record.value)
            except ValueError:
                log.error("unreadable SCIM store record skipped", extra={
                    "topic": self.topic, "offset": record.offset})
        self._producer = Producer({"bootstrap.servers": self._settings.bootstrap,
                                   "acks": "all", "enable.idempotence": True,
                                   "logger": KAFKA_LOG})
        return users

    def put(self, user_id: str, user: Mapping[str, Any] | None) -> None:
        if self._producer is None:
            raise BrokerError("the SCIM store was not loaded")
        errors: list[str] = []

        def on_delivery(err: Any, _msg: Any) -> None:
            if err is not None:
                errors.append(str(err))

        value = None if user is None else json.dumps(user, separators=(",", ":")).encode()
        try:
            self._producer.produce(self.topic, key=user_id.encode(), value=value,
                                   partition=0, on_delivery=on_delivery)
        except (KafkaException, BufferError) as exc:
            raise BrokerError(f"SCIM store write refused: {exc}") from exc
        remaining = self._producer.flush(self._timeout)
        if remaining or errors:
            raise BrokerError(f"SCIM store write not acknowledged: {errors or remaining}")

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(5)


def _version(user: Mapping[str, Any]) -> int:
    meta = user.get("meta") or {}
    return int(meta.get("version", 0)) if isinstance(meta, dict) else 0


def _iso(when: datetime) -> str:
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ScimConnector:
    """The SCIM Users endpoint, its discovery documents, and the lifecycle mapping."""

    name: ClassVar[str] = "scim"

    def __init__(self, settings: ScimSettings, ctx: ConnectorContext,
                 store: ScimStore) -> None:
        self.settings = settings
        self.ctx = ctx
        self.store = store
        self.users: dict[str, dict[str, Any]] = {}
        self._by_name: dict[str, str] = {}
        self._lock = asyncio.Lock()

    # -- lifecycle --------------------------------------------------------------------

    def validate(self) -> None:
        """The settings validated themselves when parsed; nothing else is needed."""

    async def start(self) -> None:
        self._lock = asyncio.Lock()
        users = await self.ctx.sink.run_blocking(self.store.load)
        self.users = users
        self._by_name = {str(u.get("userName", "")).lower(): uid for uid, u in users.items()}
        log.info("scim users loaded", extra={"users": len(users)})

    async def stop(self) -> None:
        await self.ctx.sink.run_blocking(self.store.close)

    def mount(self, app: web.Application) -> None:
        sub = web.Application(middlewares=[self._middleware],
                              client_max_size=self.ctx.max_body_bytes)
        r = sub.router
        r.add_get("/ServiceProviderConfig", self.service_provider_config, allow_head=False)
        r.add_get("/ResourceTypes", self.resource_types, allow_head=False)
        r.add_get("/ResourceTypes/{id}", self.resource_type, allow_head=False)
        r.add_get("/Schemas", self.schemas, allow_head=False)
        r.add_get("/Schemas/{id}", self.schema, allow_head=False)
        r.add_get("/Users", self.list_users, allow_head=False)
        r.add_post("/Users", self.create_user)
        r.add_post("/Users/.search", self.search_users)
        r.add_post("/.search", self.search_users)
        r.add_get("/Users/{id}", self.get_user, allow_head=False)
        r.add_put("/Users/{id}", self.replace_user)
        r.add_patch("/Users/{id}", self.patch_user)
        r.add_delete("/Users/{id}", self.delete_user)
        app.add_subapp(BASE, sub)

    # -- HTTP plumbing ----------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request,
                          handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        try:
            self._authenticate(request)
            response: web.StreamResponse = await handler(request)
            return response
        except ScimError as exc:
            return self._error(request, exc)
        except ConnectorError as exc:
            scim_type = "invalidSyntax" if isinstance(exc, PayloadInvalidError) else None
            return self._error(request, ScimError(exc.status, str(exc), scim_type),
                               code=exc.code)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            detail = {404: "no such endpoint or resource", 405: "method not allowed",
                      413: "the body is too large"}.get(exc.status, exc.reason)
            return self._error(request, ScimError(exc.status, detail),
                               headers={"Allow": exc.headers["Allow"]}
                               if "Allow" in exc.headers else None)
        except Exception:
            log.exception("scim request failed", extra={"method": request.method,
                                                        "path": request.path})
            return self._error(request, ScimError(500, "internal error"))

    def _authenticate(self, request: web.Request) -> None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not self.settings.token.matches(token.strip()):
            raise ScimError(401, "a valid bearer token is required")

    def _error(self, request: web.Request, exc: ScimError, *, code: str | None = None,
               headers: Mapping[str, str] | None = None) -> web.Response:
        if exc.status >= 500 or exc.status in {400, 401, 409, 413}:
            self.ctx.metrics.rejected.labels(self.name, code or (
                "unauthenticated" if exc.status == 401 else exc.scim_type or str(exc.status)
            )).inc()
            log.warning("scim request refused", extra={
                "method": request.method, "path": request.path, "status": exc.status,
                "scim_type": exc.scim_type, "detail": exc.detail, "remote": request.remote})
        extra = dict(headers or {})
        if exc.status == 401:
            extra["WWW-Authenticate"] = 'Bearer realm="gatepass-scim"'
        return self._json(exc.body(), status=exc.status, headers=extra)

    @staticmethod
    def _json(body: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
              ) -> web.Response:
        return web.Response(text=json.dumps(body, separators=(",", ":")), status=status,
                            content_type=CONTENT_TYPE, charset="utf-8",
                            headers=dict(headers or {}))

    def _base_url(self, request: web.Request) -> str:
        if self.ctx.public_url:
            return self.ctx.public_url.rstrip("/") + BASE
        return f"{request.scheme}://{request.host}{BASE}"

    async def _body(self, request: web.Request) -> Any:
        content_type = request.content_type.lower()
        if content_type and "json" not in content_type:
            raise ScimError(415, f"expected application/scim+json, not {content_type}")
        raw = await request.read()
        if not raw:
            raise invalid("the body is empty", "invalidSyntax")
        try:
            return loads(raw)
        except PayloadInvalidError as exc:
            raise invalid(str(exc), "invalidSyntax") from exc

    # -- discovery --------------------------------------------------------------------

    def _meta(self, request: web.Request, kind: str, path: str) -> dict[str, Any]:
        return {"resourceType": kind, "location": f"{self._base_url(request)}{path}"}

    async def service_provider_config(self, request: web.Request) -> web.Response:
        return self._json({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
            "documentationUri": "https://github.com/gatepass/gatepass/blob/main/docs/"
                                "connectors.md",
            "patch": {"supported": True},
            "bulk": {"supported": False, "maxOperations": 0, "maxPayloadSize": 0},
            "filter": {"supported": True, "maxResults": self.settings.max_results},
            "changePassword": {"supported": False},
            "sort": {"supported": False},
            "etag": {"supported": False},
            "authenticationSchemes": [{
                "type": "oauthbearertoken", "name": "OAuth Bearer Token",
                "description": "The static bearer token configured as scim.token.",
                "primary": True}],
            "meta": self._meta(request, "ServiceProviderConfig", "/ServiceProviderConfig"),
        })

    def _resource_type(self, request: web.Request) -> dict[str, Any]:
        return {
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
            "id": "User", "name": "User", "endpoint": "/Users",
            "description": "User Account", "schema": USER_URN,
            "schemaExtensions": [{"schema": ENTERPRISE_URN, "required": False}],
            "meta": self._meta(request, "ResourceType", "/ResourceTypes/User"),
        }

    def _list(self, resources: list[dict[str, Any]], *, total: int | None = None,
              start: int = 1) -> web.Response:
        return self._json({"schemas": [LIST_URN],
                           "totalResults": len(resources) if total is None else total,
                           "startIndex": start, "itemsPerPage": len(resources),
                           "Resources": resources})

    async def resource_types(self, request: web.Request) -> web.Response:
        return self._list([self._resource_type(request)])

    async def resource_type(self, request: web.Request) -> web.Response:
        if request.match_info["id"] != "User":
            raise ScimError(404, f"no resource type {request.match_info['id']!r}")
        return self._json(self._resource_type(request))

    def _schema_docs(self, request: web.Request) -> list[dict[str, Any]]:
        from gatepass.connectors._scim_schemas import SCHEMAS

        return [{**s, "meta": self._meta(request, "Schema", f"/Schemas/{s['id']}")}
                for s in SCHEMAS]

    async def schemas(self, request: web.Request) -> web.Response:
        return self._list(self._schema_docs(request))

    async def schema(self, request: web.Request) -> web.Response:
        wanted = request.match_info["id"]
        for doc in self._schema_docs(request):
            if doc["id"] == wanted:
                return self._json(doc)
        raise ScimError(404, f"no schema {wanted!r}")

    # -- users: reading ---------------------------------------------------------------

    def _render(self, request: web.Request, user: Mapping[str, Any]) -> dict[str, Any]:
        uid = user["id"]
        out: dict[str, Any] = {"schemas": [USER_URN] + ([ENTERPRISE_URN]
                                                        if ENTERPRISE_URN in user else []),
                               "id": uid}
        out.update({k: copy.deepcopy(v) for k, v in user.items() if k not in {"id", "meta"}})
        meta = user.get("meta") or {}
        out["meta"] = {"resourceType": "User", "created": meta.get("created"),
                       "lastModified": meta.get("lastModified"),
                       "location": f"{self._base_url(request)}/Users/{uid}",
                       "version": f'W/"{_version(user)}"'}
        return out

    def _user(self, request: web.Request) -> dict[str, Any]:
        user = self.users.get(request.match_info["id"])
        if user is None:
            raise ScimError(404, f"no user {request.match_info['id']!r}")
        return user

    @staticmethod
    def _projection(params: Mapping[str, Any]) -> tuple[str | None, str | None]:
        attributes, excluded = params.get("attributes"), params.get("excludedAttributes")
        for name, value in (("attributes", attributes), ("excludedAttributes", excluded)):
            if isinstance(value, list):
                if not all(isinstance(v, str) for v in value):
                    raise invalid(f"{name} must list attribute names")
                value = ",".join(value)
            if value is not None and not isinstance(value, str):
                raise invalid(f"{name} must be a string")
            if name == "attributes":
                attributes = value
            else:
                excluded = value
        if attributes and excluded:
            raise invalid("attributes and excludedAttributes exclude each other")
        return attributes, excluded

    async def get_user(self, request: web.Request) -> web.Response:
        attributes, excluded = self._projection(request.query)
        return self._json(project(self._render(request, self._user(request)),
                                  attributes, excluded))

    async def list_users(self, request: web.Request) -> web.Response:
        return self._query(request, dict(request.query))

    async def search_users(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if not isinstance(body, dict) or SEARCH_URN.lower() not in \
                {s.lower() for s in body.get("schemas") or [] if isinstance(s, str)}:
            raise invalid(f"schemas must list {SEARCH_URN}", "invalidSyntax")
        return self._query(request, body)

    def _query(self, request: web.Request, params: Mapping[str, Any]) -> web.Response:
        start = self._int(params.get("startIndex"), "startIndex", 1)
        count = self._int(params.get("count"), "count", self.settings.max_results)
        start, count = max(start, 1), min(max(count, 0), self.settings.max_results)
        attributes, excluded = self._projection(params)
        text = params.get("filter")
        if text is not None and not isinstance(text, str):
            raise invalid("filter must be a string", "invalidFilter")
        node = parse_filter(text) if text else None
        hits = [u for u in self.users.values() if node is None or matches(node, u)]
        page = hits[start - 1:start - 1 + count]
        return self._list([project(self._render(request, u), attributes, excluded)
                           for u in page], total=len(hits), start=start)

    @staticmethod
    def _int(value: Any, name: str, default: int) -> int:
        if value is None or value == "":
            return default
        if isinstance(value, bool):
            raise invalid(f"{name} must be an integer")
        try:
            return int(value)
        except (TypeError, ValueError) as exc:
            raise invalid(f"{name} must be an integer") from exc

    # -- users: writing ---------------------------------------------------------------

    def _principal(self, user: Mapping[str, Any]) -> str:
        attr = self.settings.principal_attribute
        try:
            return principal_id(user.get(attr), attr)
        except PayloadInvalidError as exc:
            raise invalid(f"{exc} (it is the Gatepass principal id)") from exc

    def _status(self, user: Mapping[str, Any]) -> PrincipalStatus:
        return PrincipalStatus.ACTIVE if user.get("active", True) is not False \
            else self.settings.inactive_status

    def _check_unique(self, user: Mapping[str, Any], own_id: str | None) -> None:
        holder = self._by_name.get(str(user["userName"]).lower())
        if holder is not None and holder != own_id:
            raise ScimError(409, f"userName {user['userName']!r} is already taken",
                            "uniqueness")

    async def _commit(self, uid: str, old: Mapping[str, Any] | None,
                      new: dict[str, Any] | None, status: PrincipalStatus | None) -> None:
        """Publish the status change (if any), store the user, then remember it."""
        now = self.ctx.now()
        events = []
        self.ctx.metrics.received.labels(self.name).inc()
        if status is not None:
            source = new or old or {}
            version = _version(new) if new is not None else _version(old or {}) + 1
            events.append(PrincipalStatusChanged(
                principal_id=self._principal(source), status=status, event_time=now,
                source=SOURCE, source_event_id=f"{uid}/{version}"))
        else:
            self.ctx.metrics.ignored.labels(self.name, "no_status_change").inc()
        await self.ctx.sink.publish(self.name, events, dedupe="none")
        try:
            await self.ctx.sink.run_blocking(lambda: self.store.put(uid, new))
        except BrokerError as exc:
            log.warning("scim store write failed", extra={"error": str(exc)})
            raise ScimError(503, "the user store did not acknowledge the write; "
                                 "retry later") from exc
        if old is not None:
            self._by_name.pop(str(old.get("userName", "")).lower(), None)
        if new is None:
            self.users.pop(uid, None)
        else:
            self.users[uid] = new
            self._by_name[str(new["userName"]).lower()] = uid

    def _stamp(self, uid: str, attrs: dict[str, Any], old: Mapping[str, Any] | None
               ) -> dict[str, Any]:
        now = _iso(self.ctx.now())
        created = (old or {}).get("meta", {}).get("created", now) if old else now
        return {"id": uid, **attrs, "meta": {"created": created, "lastModified": now,
                                             "version": _version(old or {}) + 1}}

    def _change(self, old: Mapping[str, Any] | None, new: Mapping[str, Any]
                ) -> PrincipalStatus | None:
        """The status to publish: on create, or when the principal or its status changed."""
        status = self._status(new)
        if old is None or self._principal(old) != self._principal(new) \
                or self._status(old) is not status:
            return status
        return None

    async def create_user(self, request: web.Request) -> web.Response:
        attrs = normalize_user(await self._body(request))
        self._principal(attrs)
        async with self._lock:
            self._check_unique(attrs, None)
            uid = str(uuid.UUID(bytes=secrets.token_bytes(16), version=4))
            user = self._stamp(uid, attrs, None)
            await self._commit(uid, None, user, self._change(None, user))
        body = self._render(request, user)
        return self._json(body, status=201, headers={"Location": body["meta"]["location"]})

    async def replace_user(self, request: web.Request) -> web.Response:
        attrs = normalize_user(await self._body(request))
        self._principal(attrs)
        async with self._lock:
            old = self._user(request)
            self._check_unique(attrs, old["id"])
            user = self._stamp(old["id"], attrs, old)
            await self._commit(old["id"], old, user, self._change(old, user))
        return self._json(self._render(request, user))

    async def patch_user(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        async with self._lock:
            old = self._user(request)
            attrs = apply_patch({k: v for k, v in old.items() if k not in {"id", "meta"}},
                                body, SCHEMA)
            self._principal(attrs)
            self._check_unique(attrs, old["id"])
            user = self._stamp(old["id"], attrs, old)
            await self._commit(old["id"], old, user, self._change(old, user))
        attributes, excluded = self._projection(request.query)
        return self._json(project(self._render(request, user), attributes, excluded))

    async def delete_user(self, request: web.Request) -> web.Response:
        async with self._lock:
            old = self._user(request)
            await self._commit(old["id"], old, None, PrincipalStatus.OFFBOARDED)
        return web.Response(status=204)
