"""What every connector shares: the plugin contract, the lifecycle sink, metrics, HTTP helpers.

A connector is a part with a `validate() -> start() -> stop()` lifecycle that mounts its
routes on the one receiver. It never talks to Kafka itself: it maps a provider's payload to
lifecycle events and hands them to the `LifecycleSink`, which skips redeliveries it has
seen recently, publishes the rest in a worker thread and returns only once Kafka
acknowledged them (or raises PublishFailedError, which the connector answers with 503).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, generate_latest

from gatepass.connectors.errors import ConnectorError, PayloadInvalidError, PublishFailedError
from gatepass.core import LifecycleEvent, PrincipalStatusChanged, lifecycle_key
from gatepass.credentials._jose import loads_strict

__all__ = [
    "MAX_PRINCIPAL_LENGTH",
    "Connector",
    "ConnectorContext",
    "ConnectorMetrics",
    "LifecycleSink",
    "Publisher",
    "RecentEvents",
    "error_response",
    "parse_event_time",
    "principal_id",
    "read_json",
]

log = logging.getLogger("gatepass.connectors")
MAX_PRINCIPAL_LENGTH = 256
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4"
_WHITESPACE_EDGE = re.compile(r"^\s|\s$")


class Publisher(Protocol):
    """Writes lifecycle events and blocks until Kafka acknowledged them (LifecyclePublisher)."""

    def publish(self, *events: LifecycleEvent, timeout: float = 10.0) -> None: ...


class Connector(Protocol):
    """The plugin contract: validate the configuration, then start, serve, stop."""

    name: ClassVar[str]

    def validate(self) -> None:
        """Raise ConfigError (naming the key) if the connector cannot work as configured."""

    def mount(self, app: web.Application) -> None:
        """Add this connector's routes to the receiver's application."""

    async def start(self) -> None:
        """Load what the connector needs before the first request (called once)."""

    async def stop(self) -> None:
        """Release what `start` acquired (called once, also after a failed start)."""


class ConnectorMetrics:
    """Counters per connector, in a registry of their own (what /metrics exposes)."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.received = Counter(
            "gatepass_connector_events_received",
            "Provider events received (before mapping), by connector.", ["connector"],
            registry=r)
        self.published = Counter(
            "gatepass_connector_events_published",
            "Lifecycle events acknowledged by Kafka, by connector.", ["connector"], registry=r)
        self.duplicates = Counter(
            "gatepass_connector_events_duplicate",
            "Redelivered events not published again, by connector.", ["connector"],
            registry=r)
        self.ignored = Counter(
            "gatepass_connector_events_ignored",
            "Events that map to no lifecycle change (unrelated types...), by reason.",
            ["connector", "reason"], registry=r)
        self.rejected = Counter(
            "gatepass_connector_requests_rejected",
            "Requests refused (nothing published), by connector and error code.",
            ["connector", "code"], registry=r)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class RecentEvents:
    """A bounded memory of what was published recently: least recently used goes first."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[Hashable, object] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable) -> object | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: Hashable, value: object = True) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)


class LifecycleSink:
    """Skips recent duplicates, publishes the rest, returns after Kafka's acknowledgement.

    Two kinds of redelivery detection:
    - by event id (`dedupe="event"`): a provider event id already published is skipped
      (Okta: each event's uuid);
    - by state (`dedupe="state"`): a principal status equal to the last one this receiver
      published for that principal from that source is skipped (Graph notifications carry
      no event id; what changed is read from Graph each time).
    The memory is bounded and not persistent: past it, a redelivery is published again, and
    the identity fold makes an identical event a no-op and resolves order by event time.

    Publishing runs in one worker thread, so the producer's acknowledgement bookkeeping is
    never shared between two requests.
    """

    def __init__(self, publisher: Publisher, *, timeout: timedelta, dedupe_size: int,
                 metrics: ConnectorMetrics) -> None:
        self._publisher = publisher
        self._timeout = timeout.total_seconds()
        self._recent = RecentEvents(dedupe_size)
        self._metrics = metrics
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gatepass-pub")

    def _key(self, event: LifecycleEvent, dedupe: str) -> tuple[Hashable, object]:
        if dedupe == "state" and isinstance(event, PrincipalStatusChanged):
            return ("state", event.source, lifecycle_key(event)), event.status
        if dedupe == "event" and event.source_event_id:
            return ("event", event.source, event.source_event_id), True
        return ("none", id(event)), object()  # never equal: always published

    async def publish(self, connector: str, events: Sequence[LifecycleEvent], *,
                      dedupe: str = "event") -> int:
        """Publish what is new; return how many were published. Raises PublishFailedError."""
        fresh: list[tuple[LifecycleEvent, Hashable, object]] = []
        batch: dict[Hashable, object] = {}
        for event in events:
            key, value = self._key(event, dedupe)
            if self._recent.get(key) == value or batch.get(key) == value:
                self._metrics.duplicates.labels(connector).inc()
                log.info("redelivered event skipped", extra={
                    "connector": connector, "source_event_id": event.source_event_id,
                    "key": lifecycle_key(event)})
                continue
            batch[key] = value
            fresh.append((event, key, value))
        if not fresh:
            return 0
        loop = asyncio.get_running_loop()
        call = functools.partial(self._publisher.publish, *(e for e, _, _ in fresh),
                                 timeout=self._timeout)
        try:
            await asyncio.wait_for(loop.run_in_executor(self._executor, call),
                                   timeout=self._timeout + 1.0)
        except Exception as exc:  # BrokerError, a timeout, librdkafka refusing to queue...
            # Whatever was queued may still reach Kafka later; the provider's retry then
            # republishes an identical event, which the identity fold ignores.
            log.warning("lifecycle events not acknowledged", extra={
                "connector": connector, "events": len(fresh), "error": str(exc)})
            raise PublishFailedError(f"Kafka did not acknowledge {len(fresh)} lifecycle "
                                     "event(s); retry later") from exc
        for event, key, value in fresh:
            self._recent.put(key, value)
            log.info("lifecycle event published", extra={
                "connector": connector, "key": lifecycle_key(event),
                "source_event_id": event.source_event_id,
                "event_time": event.event_time.isoformat(),
                "status": getattr(event, "status", None)})
        self._metrics.published.labels(connector).inc(len(fresh))
        return len(fresh)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=False)

    async def run_blocking(self, fn: Callable[[], Any]) -> Any:
        """Run another blocking Kafka call (a SCIM store write) on the publishing thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)


@dataclass(frozen=True, slots=True)
class ConnectorContext:
    """What the receiver hands every connector."""

    sink: LifecycleSink
    metrics: ConnectorMetrics
    max_clock_skew: timedelta
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    public_url: str | None = None
    max_body_bytes: int = 1024 * 1024


def error_response(exc: ConnectorError, *, headers: dict[str, str] | None = None
                   ) -> web.Response:
    """A JSON error body naming the stable code; never the request's secrets."""
    return web.json_response({"error": exc.code, "detail": str(exc)}, status=exc.status,
                             headers=headers)


def loads(raw: bytes) -> Any:
    """UTF-8 JSON with no duplicate member names and no NaN/Infinity (two readers of the
    same body must never see different values); PayloadInvalidError otherwise."""
    try:
        return loads_strict(raw)
    except ValueError as exc:
        raise PayloadInvalidError(f"the body is not valid JSON: {exc}") from None


async def read_json(request: web.Request) -> Any:
    """The request body as JSON; PayloadInvalidError when it is not JSON.

    The body size is bounded by the application's client_max_size (413 past it).
    """
    content_type = request.content_type.lower()
    if content_type and "json" not in content_type:
        raise PayloadInvalidError(f"expected a JSON body, not {content_type}")
    raw = await request.read()
    if not raw:
        raise PayloadInvalidError("the body is empty")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadInvalidError("the body is not UTF-8") from exc
    return loads(raw)


def parse_event_time(value: Any, where: str, *, now: datetime, max_skew: timedelta) -> datetime:
    """An RFC 3339 timestamp with a zone, not further in the future than `max_skew`."""
    if not isinstance(value, str) or len(value) > 64:
        raise PayloadInvalidError(f"{where} must be an RFC 3339 timestamp")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise PayloadInvalidError(f"{where} is not an RFC 3339 timestamp") from exc
    if parsed.tzinfo is None:
        raise PayloadInvalidError(f"{where} has no time zone")
    parsed = parsed.astimezone(UTC)
    if parsed > now + max_skew:
        # A time in the future would win over every real change until then.
        raise PayloadInvalidError(f"{where} is in the future ({parsed.isoformat()})")
    if parsed.year < 2000:
        raise PayloadInvalidError(f"{where} is implausibly old ({parsed.isoformat()})")
    return parsed


def principal_id(value: Any, where: str) -> str:
    """A principal id as Gatepass keeps it: a short printable string without edge spaces."""
    if not isinstance(value, str) or not value:
        raise PayloadInvalidError(f"{where} must be a non-empty string")
    if len(value) > MAX_PRINCIPAL_LENGTH:
        raise PayloadInvalidError(f"{where} is longer than {MAX_PRINCIPAL_LENGTH} characters")
    if not value.isprintable() or _WHITESPACE_EDGE.search(value):
        raise PayloadInvalidError(f"{where} holds characters a principal id cannot have")
    return value


def text(value: Any, where: str, *, max_length: int = 1024, required: bool = True
         ) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value):
        raise PayloadInvalidError(f"{where} must be a non-empty string")
    if len(value) > max_length:
        raise PayloadInvalidError(f"{where} is longer than {max_length} characters")
    return value
