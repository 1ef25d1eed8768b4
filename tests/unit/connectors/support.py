"""Shared test doubles for the connector tests: a recording publisher, a recorded Graph."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from gatepass.connectors import (
    ConnectorSettings,
    GraphUser,
    MemoryScimStore,
    Receiver,
)
from gatepass.core import LifecycleEvent, PrincipalStatus, PrincipalStatusChanged
from gatepass.errors import BrokerError, GraphUnavailableError

FIXTURES = Path(__file__).parent / "fixtures"
OKTA_AUTH = "okta-hook-secret-0123456789abcdef"
SCIM_TOKEN = "scim-token-0123456789abcdef-ghijkl"
CLIENT_STATE = "graph-client-state-0123456789abcd"
TENANT = "84bd8158-6d4d-4958-8b9f-9d6445542f95"
# The recorded payloads are from 2019-2024; "now" is pinned after all of them.
NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


class RecordingPublisher:
    """Stands in for LifecyclePublisher: remembers what was published; can fail like Kafka."""

    def __init__(self) -> None:
        self.events: list[LifecycleEvent] = []
        self.calls = 0
        self.fail: BaseException | None = None

    def publish(self, *events: LifecycleEvent, timeout: float = 10.0) -> None:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        self.events.extend(events)

    def statuses(self) -> list[tuple[str, PrincipalStatus]]:
        return [(e.principal_id, e.status) for e in self.events
                if isinstance(e, PrincipalStatusChanged)]

    def kafka_down(self) -> None:
        self.fail = BrokerError("lifecycle events not acknowledged: [broker down]")


class RecordedGraph:
    """A GraphClient answering from recorded Graph user resources, by object id."""

    def __init__(self, users: Mapping[str, Any] | None = None,
                 deleted: Mapping[str, Any] | None = None) -> None:
        self.users = dict(users or {})
        self.deleted = dict(deleted or {})
        self.calls: list[tuple[str, str]] = []
        self.down = False

    async def get_user(self, user_id: str) -> GraphUser | None:
        self.calls.append(("user", user_id))
        if self.down:
            raise GraphUnavailableError("Graph answered HTTP 503 for /users")
        body = self.users.get(user_id)
        return None if body is None else GraphUser.from_json(body)

    async def get_deleted_user(self, user_id: str) -> GraphUser | None:
        self.calls.append(("deleted", user_id))
        body = self.deleted.get(user_id)
        return None if body is None else GraphUser.from_json(body)

    async def close(self) -> None:
        return None


def settings(**env: str) -> ConnectorSettings:
    base = {"GATEPASS_CONNECTOR_ENABLED": "okta,scim,entra",
            "GATEPASS_CONNECTOR_OKTA_AUTHORIZATION": OKTA_AUTH,
            "GATEPASS_CONNECTOR_SCIM_TOKEN": SCIM_TOKEN,
            "GATEPASS_CONNECTOR_ENTRA_CLIENT_STATE": CLIENT_STATE,
            "GATEPASS_CONNECTOR_ENTRA_TENANT_ID": TENANT}
    base.update(env)
    return ConnectorSettings.load(env=base)


def receiver(publisher: RecordingPublisher | None = None, *,
             store: MemoryScimStore | None = None, graph: RecordedGraph | None = None,
             now: datetime = NOW, **env: str) -> Receiver:
    return Receiver(settings(**env), publisher or RecordingPublisher(),
                    scim_store=store if store is not None else MemoryScimStore(),
                    graph=graph or RecordedGraph(), now=lambda: now)


@asynccontextmanager
async def serve(rx: Receiver) -> AsyncIterator[aiohttp.ClientSession]:
    port = await rx.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}") as http:
            yield http
    finally:
        await rx.stop()
