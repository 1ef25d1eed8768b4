"""The one HTTP receiver that mounts the enabled connectors, with /healthz and /metrics.

    receiver = Receiver(connector_settings, publisher, scim_store=store)
    await receiver.start()          # validate -> start every connector -> listen
    ...
    await receiver.stop()           # stop listening -> stop connectors -> flush

`run_receiver` is what `gatepass connectors` runs: Kafka publisher, SCIM store on its topic,
until SIGINT/SIGTERM. `serve_in_background` runs a receiver on a thread of its own (tests,
or a program that embeds it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime

from aiohttp import web

from gatepass.config import Settings
from gatepass.connectors.base import (
    METRICS_CONTENT_TYPE,
    Connector,
    ConnectorContext,
    ConnectorMetrics,
    LifecycleSink,
    Publisher,
)
from gatepass.connectors.config import ConnectorSettings
from gatepass.connectors.entra import EntraConnector, GraphClient
from gatepass.connectors.okta import OktaConnector
from gatepass.connectors.scim import KafkaScimStore, ScimConnector, ScimStore
from gatepass.errors import ConfigError

__all__ = ["Receiver", "run_receiver", "serve_in_background"]

log = logging.getLogger("gatepass.connectors")


class Receiver:
    """Owns the aiohttp application, the lifecycle sink and the connectors' lifecycle."""

    def __init__(self, settings: ConnectorSettings, publisher: Publisher, *,
                 scim_store: ScimStore | None = None, graph: GraphClient | None = None,
                 now: Callable[[], datetime] | None = None) -> None:
        self.settings = settings
        self.metrics = ConnectorMetrics()
        self.sink = LifecycleSink(publisher, timeout=settings.publish_timeout,
                                  dedupe_size=settings.dedupe_size, metrics=self.metrics)
        ctx = ConnectorContext(sink=self.sink, metrics=self.metrics,
                               max_clock_skew=settings.max_clock_skew,
                               now=now or (lambda: datetime.now(UTC)),
                               public_url=settings.public_url,
                               max_body_bytes=settings.max_body_bytes)
        self.connectors: list[Connector] = []
        if settings.okta is not None:
            self.connectors.append(OktaConnector(settings.okta, ctx))
        if settings.scim is not None:
            if scim_store is None:
                raise ConfigError("scim", "the SCIM connector needs a user store")
            self.connectors.append(ScimConnector(settings.scim, ctx, scim_store))
        if settings.entra is not None:
            self.connectors.append(EntraConnector(settings.entra, ctx, graph,
                                                  principals_cached=settings.dedupe_size))
        for connector in self.connectors:
            connector.validate()
        self.app = web.Application(client_max_size=settings.max_body_bytes,
                                   middlewares=[_internal_errors])
        for connector in self.connectors:
            connector.mount(self.app)
        self.app.router.add_get("/healthz", self._healthz, allow_head=False)
        self.app.router.add_get("/metrics", self._metrics, allow_head=False)
        self._runner: web.AppRunner | None = None
        self._started: list[Connector] = []
        self.port: int | None = None

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive",
                                  "connectors": [c.name for c in self.connectors]})

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.exposition(),
                            headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def start(self, host: str | None = None, port: int | None = None) -> int:
        """Start the connectors, then listen; returns the port (0 picks a free one)."""
        try:
            for connector in self.connectors:
                await connector.start()
                self._started.append(connector)
            self._runner = web.AppRunner(self.app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, host or self.settings.host,
                               self.settings.port if port is None else port)
            await site.start()
        except BaseException:
            await self.stop()
            raise
        addresses = self._runner.addresses if self._runner is not None else []
        self.port = int(addresses[0][1]) if addresses else (port or self.settings.port)
        log.info("connector receiver listening", extra={
            "host": host or self.settings.host, "port": self.port,
            "connectors": [c.name for c in self.connectors]})
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for connector in reversed(self._started):
            try:
                await connector.stop()
            except Exception:  # one connector failing to stop must not keep the others up
                log.exception("connector did not stop cleanly",
                              extra={"connector": connector.name})
        self._started.clear()
        self.sink.close()


@web.middleware
async def _internal_errors(request: web.Request,
                           handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                           ) -> web.StreamResponse:
    """An unexpected failure is a JSON 500 with a stable code, never a stack trace."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception:
        log.exception("connector request failed", extra={"method": request.method,
                                                          "path": request.path})
        return web.json_response({"error": "internal_error",
                                  "detail": "the request could not be handled"}, status=500)


def run_receiver(settings: Settings, connectors: ConnectorSettings) -> int:
    """`gatepass connectors`: serve until SIGINT/SIGTERM; needs Kafka at start."""
    from gatepass.sdk import LifecyclePublisher
    from gatepass.transport import ensure_topics

    ensure_topics(settings)
    publisher = LifecyclePublisher(bootstrap=settings.bootstrap,
                                   topic_prefix=settings.topic_prefix)
    store = KafkaScimStore(settings, timeout=connectors.publish_timeout.total_seconds()) \
        if connectors.scim is not None else None
    receiver = Receiver(connectors, publisher, scim_store=store)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        await receiver.start()
        try:
            await stop.wait()
        finally:
            await receiver.stop()

    asyncio.run(serve())
    return 0


@contextlib.contextmanager
def serve_in_background(receiver: Receiver, host: str = "127.0.0.1",
                        port: int = 0) -> Iterator[str]:
    """Run the receiver on a thread with its own event loop; yield its base URL."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(receiver.start(host, port))
        except BaseException as exc:
            failure.append(exc)
            loop.close()
            started.set()
            return
        started.set()
        loop.run_forever()
        loop.run_until_complete(receiver.stop())
        loop.close()

    thread = threading.Thread(target=run, name="gatepass-connectors", daemon=True)
    thread.start()
    started.wait(60)
    if failure:
        thread.join(5)
        raise failure[0]
    try:
        yield f"http://{host}:{receiver.port}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
