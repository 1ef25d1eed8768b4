"""Okta Event Hooks: Okta pushes System Log events; user lifecycle ones become principal status.

    GET  /okta/events   one-time verification: X-Okta-Verification-Challenge -> {"verification"}
    POST /okta/events   event delivery {"eventType": "com.okta.event_hook", "data": {"events"}}

Both must carry the Authorization header value configured on the hook (compared in constant
time). Each System Log event has a `uuid` (our source_event_id), a `published` time (our
event time) and `target[]`, whose entry of type User names the principal: its `alternateId`
(the Okta login, usually the email) or, configured, its `id`. Events of other types, and
events whose outcome is not SUCCESS, are counted and ignored. The mapping is pure
(`map_delivery`); the connector only authenticates, maps and publishes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar

from aiohttp import web

from gatepass.connectors.base import (
    ConnectorContext,
    error_response,
    parse_event_time,
    principal_id,
    read_json,
    text,
)
from gatepass.connectors.config import OktaSettings
from gatepass.connectors.errors import (
    ConnectorError,
    PayloadInvalidError,
    UnauthenticatedError,
)
from gatepass.core import PrincipalStatus, PrincipalStatusChanged

__all__ = ["OKTA_STATUS", "OktaConnector", "OktaDelivery", "map_delivery"]

log = logging.getLogger("gatepass.connectors.okta")
SOURCE = "okta"
PATH = "/okta/events"
ENVELOPE_TYPE = "com.okta.event_hook"
MAX_EVENTS = 1000
MAX_CHALLENGE_LENGTH = 512

# Okta's event type catalog (System Log), user lifecycle: what each means for a principal.
# Not mapped on purpose: user.lifecycle.create (the user is STAGED until activated),
# user.account.lock/unlock (a temporary lock-out after failed sign-ins, not a lifecycle
# change), user.lifecycle.password_mode.change and every non-user event.
OKTA_STATUS: dict[str, PrincipalStatus] = {
    "user.lifecycle.activate": PrincipalStatus.ACTIVE,
    "user.lifecycle.reactivate": PrincipalStatus.ACTIVE,
    "user.lifecycle.unsuspend": PrincipalStatus.ACTIVE,
    "user.lifecycle.suspend": PrincipalStatus.SUSPENDED,
    "user.lifecycle.deactivate": PrincipalStatus.OFFBOARDED,
    "user.lifecycle.delete.initiated": PrincipalStatus.OFFBOARDED,
    "user.lifecycle.delete.completed": PrincipalStatus.OFFBOARDED,
}


@dataclass(frozen=True, slots=True)
class OktaDelivery:
    """What one delivery maps to: events to publish, and (uuid, type, reason) ignored."""

    events: tuple[PrincipalStatusChanged, ...]
    ignored: tuple[tuple[str, str, str], ...]
    received: int


def _user_target(event: dict[str, Any], where: str, field: str) -> str:
    targets = event.get("target")
    if not isinstance(targets, list):
        raise PayloadInvalidError(f"{where}.target must be a list")
    users = [t for t in targets if isinstance(t, dict) and t.get("type") == "User"]
    if len(users) != 1:
        raise PayloadInvalidError(f"{where}.target must name exactly one User "
                                  f"(found {len(users)})")
    return principal_id(users[0].get(field), f"{where}.target[type=User].{field}")


def map_delivery(body: Any, *, principal_field: str, now: datetime,
                 max_skew: timedelta) -> OktaDelivery:
    """Validate a whole delivery and map it; PayloadInvalidError if any part is invalid."""
    if not isinstance(body, dict):
        raise PayloadInvalidError("the body must be a JSON object")
    if body.get("eventType") != ENVELOPE_TYPE:
        raise PayloadInvalidError(f"eventType must be {ENVELOPE_TYPE!r}")
    data = body.get("data")
    events = data.get("events") if isinstance(data, dict) else None
    if not isinstance(events, list) or not events:
        raise PayloadInvalidError("data.events must be a non-empty list")
    if len(events) > MAX_EVENTS:
        raise PayloadInvalidError(f"data.events holds more than {MAX_EVENTS} events")
    mapped: list[PrincipalStatusChanged] = []
    ignored: list[tuple[str, str, str]] = []
    for i, event in enumerate(events):
        where = f"data.events[{i}]"
        if not isinstance(event, dict):
            raise PayloadInvalidError(f"{where} must be an object")
        event_type = text(event.get("eventType"), f"{where}.eventType", max_length=256) or ""
        uuid = text(event.get("uuid"), f"{where}.uuid", max_length=128) or ""
        status = OKTA_STATUS.get(event_type)
        if status is None:
            ignored.append((uuid, event_type, "unrelated_type"))
            continue
        outcome = event.get("outcome")
        result = outcome.get("result") if isinstance(outcome, dict) else None
        if outcome is not None and result != "SUCCESS":
            # A failed deactivation changed nothing in Okta; it must change nothing here.
            ignored.append((uuid, event_type, "outcome_not_success"))
            continue
        mapped.append(PrincipalStatusChanged(
            principal_id=_user_target(event, where, principal_field), status=status,
            event_time=parse_event_time(event.get("published"), f"{where}.published",
                                        now=now, max_skew=max_skew),
            source=SOURCE, source_event_id=uuid))
    return OktaDelivery(tuple(mapped), tuple(ignored), len(events))


class OktaConnector:
    """The Event Hook endpoint: verification, authentication, mapping, publishing."""

    name: ClassVar[str] = "okta"

    def __init__(self, settings: OktaSettings, ctx: ConnectorContext) -> None:
        self.settings = settings
        self.ctx = ctx

    def validate(self) -> None:
        """The settings validated themselves when parsed; nothing else is needed."""

    def mount(self, app: web.Application) -> None:
        app.router.add_get(PATH, self.verify, allow_head=False)
        app.router.add_post(PATH, self.deliver)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def _authenticate(self, request: web.Request) -> None:
        if not self.settings.authorization.matches(request.headers.get("Authorization")):
            raise UnauthenticatedError("the Authorization header does not match the "
                                       "value configured for the Okta event hook")

    def _refuse(self, request: web.Request, exc: ConnectorError) -> web.Response:
        self.ctx.metrics.rejected.labels(self.name, exc.code).inc()
        log.warning("okta request refused", extra={
            "code": exc.code, "detail": str(exc), "remote": request.remote})
        return error_response(exc)

    async def verify(self, request: web.Request) -> web.Response:
        try:
            self._authenticate(request)
            challenge = request.headers.get("X-Okta-Verification-Challenge")
            if not challenge or len(challenge) > MAX_CHALLENGE_LENGTH \
                    or not challenge.isprintable():
                raise PayloadInvalidError("missing or malformed "
                                          "X-Okta-Verification-Challenge header")
        except ConnectorError as exc:
            return self._refuse(request, exc)
        log.info("okta event hook verified")
        return web.json_response({"verification": challenge})

    async def deliver(self, request: web.Request) -> web.Response:
        try:
            self._authenticate(request)
            delivery = map_delivery(await read_json(request),
                                    principal_field=self.settings.principal_field,
                                    now=self.ctx.now(), max_skew=self.ctx.max_clock_skew)
            self.ctx.metrics.received.labels(self.name).inc(delivery.received)
            for uuid, event_type, reason in delivery.ignored:
                self.ctx.metrics.ignored.labels(self.name, reason).inc()
                log.info("okta event ignored", extra={
                    "source_event_id": uuid, "event_type": event_type, "reason": reason})
            await self.ctx.sink.publish(self.name, delivery.events, dedupe="event")
        except ConnectorError as exc:
            return self._refuse(request, exc)
        return web.Response(status=204)
