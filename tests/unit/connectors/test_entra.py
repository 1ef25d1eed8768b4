"""Microsoft Graph change notifications: handshake, clientState, read-back, mapping, retries."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from gatepass.config import Secret
from gatepass.connectors import HttpGraphClient
from gatepass.core import PrincipalStatus
from gatepass.errors import GraphUnavailableError
from unit.connectors.support import (
    TENANT,
    RecordedGraph,
    RecordingPublisher,
    fixture,
    receiver,
    serve,
)

ADELE = "a1f2c3d4-5e6f-4a7b-8c9d-0e1f2a3b4c5d"
JOHANNA = "b2e3d4c5-6f7a-4b8c-9d0e-1f2a3b4c5d6e"
PATH = "/entra/notifications"


def _graph(enabled: bool = False) -> RecordedGraph:
    user = fixture("graph_user_enabled.json" if enabled else "graph_user_disabled.json")
    return RecordedGraph(users={ADELE: user},
                         deleted={JOHANNA: fixture("graph_deleted_user.json")})


def _statuses(pub: RecordingPublisher) -> list[tuple[str, PrincipalStatus]]:
    return pub.statuses()


def test_validation_handshake_echoes_the_token_as_text() -> None:
    token = "Validation: Testing client application reachability for subscription Request-Id: 1"

    async def scenario() -> None:
        async with serve(receiver()) as http:
            resp = await http.post(PATH, params={"validationToken": token})
            assert resp.status == 200
            assert resp.content_type == "text/plain"
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            assert await resp.text() == token
            resp = await http.post(PATH, params={"validationToken": "x" * 5000})
            assert resp.status == 400
    asyncio.run(scenario())


def test_disabled_account_is_suspended_and_reenabled_is_active() -> None:
    pub, graph = RecordingPublisher(), _graph()

    async def scenario() -> None:
        async with serve(receiver(pub, graph=graph)) as http:
            resp = await http.post(PATH, json=fixture("graph_notification_user_updated.json"))
            assert resp.status == 202
            graph.users[ADELE] = fixture("graph_user_enabled.json")
            resp = await http.post(PATH, json=fixture("graph_notification_user_updated.json"))
            assert resp.status == 202
    asyncio.run(scenario())
    assert _statuses(pub) == [("adele.vance@contoso.example", PrincipalStatus.SUSPENDED),
                              ("adele.vance@contoso.example", PrincipalStatus.ACTIVE)]
    assert graph.calls == [("user", ADELE), ("user", ADELE)]
    assert all(e.source == "entra" and e.source_event_id.startswith("graph-")
               for e in pub.events)


def test_inactive_status_offboarded_and_principal_attribute_id() -> None:
    pub = RecordingPublisher()

    async def scenario() -> None:
        async with serve(receiver(pub, graph=_graph(),
                                  GATEPASS_CONNECTOR_ENTRA_INACTIVE_STATUS="offboarded",
                                  GATEPASS_CONNECTOR_ENTRA_PRINCIPAL_ATTRIBUTE="id")) as http:
            resp = await http.post(PATH, json=fixture("graph_notification_user_updated.json"))
            assert resp.status == 202
    asyncio.run(scenario())
    assert _statuses(pub) == [(ADELE, PrincipalStatus.OFFBOARDED)]


def test_deleted_user_is_offboarded_with_the_upn_graph_remembers() -> None:
    pub, graph = RecordingPublisher(), _graph()

    async def scenario() -> None:
        async with serve(receiver(pub, graph=graph)) as http:
            resp = await http.post(PATH, json=fixture("graph_notification_user_deleted.json"))
            assert resp.status == 202
    asyncio.run(scenario())
    # The deleted user's UPN carries its object id as a prefix; it is removed.
    assert _statuses(pub) == [("johanna.lorenz@contoso.example", PrincipalStatus.OFFBOARDED)]
    assert graph.calls == [("deleted", JOHANNA)]


def test_user_gone_since_the_notification_is_offboarded_via_the_id_seen_before() -> None:
    pub, graph = RecordingPublisher(), _graph(enabled=True)

    async def scenario() -> None:
        async with serve(receiver(pub, graph=graph)) as http:
            assert (await http.post(PATH, json=fixture(
                "graph_notification_user_updated.json"))).status == 202
            del graph.users[ADELE]  # hard-deleted: not even in deletedItems
            assert (await http.post(PATH, json=fixture(
                "graph_notification_user_updated.json"))).status == 202
    asyncio.run(scenario())
    assert _statuses(pub) == [("adele.vance@contoso.example", PrincipalStatus.ACTIVE),
                              ("adele.vance@contoso.example", PrincipalStatus.OFFBOARDED)]


def test_unknown_principal_is_counted_not_published() -> None:
    pub = RecordingPublisher()
    rx = receiver(pub, graph=RecordedGraph())

    async def scenario() -> None:
        async with serve(rx) as http:
            resp = await http.post(PATH, json=fixture("graph_notification_user_deleted.json"))
            assert resp.status == 202
    asyncio.run(scenario())
    assert pub.events == []
    assert 'reason="principal_unknown"} 1.0' in rx.metrics.exposition().decode()


@pytest.mark.parametrize("state", [None, "", "graph-client-state-0123456789abcX",
                                   "graph-client-state-0123456789abc", 42])
def test_wrong_client_state_is_refused_and_nothing_is_fetched(state: Any) -> None:
    pub, graph = RecordingPublisher(), _graph()
    body = fixture("graph_notification_user_updated.json")
    body["value"][0]["clientState"] = state

    async def scenario() -> None:
        async with serve(receiver(pub, graph=graph)) as http:
            resp = await http.post(PATH, json=body)
            assert resp.status == 401
            assert (await resp.json())["error"] == "unauthenticated"
    asyncio.run(scenario())
    assert pub.calls == 0 and graph.calls == []


def test_only_authentic_notifications_of_a_batch_are_processed() -> None:
    pub, graph = RecordingPublisher(), _graph()
    body = fixture("graph_notification_user_updated.json")
    forged = copy.deepcopy(body["value"][0])
    forged["clientState"] = "guess"
    forged["resourceData"]["id"] = forged["resourceData"]["id"][:-1] + "f"
    other_tenant = copy.deepcopy(body["value"][0])
    other_tenant["tenantId"] = "00000000-0000-0000-0000-000000000000"
    body["value"] = [forged, body["value"][0], other_tenant]

    async def scenario() -> None:
        async with serve(receiver(pub, graph=graph)) as http:
            assert (await http.post(PATH, json=body)).status == 202
    asyncio.run(scenario())
    assert graph.calls == [("user", ADELE)]
    assert len(pub.events) == 1


def _break(body: dict[str, Any], **changes: Any) -> dict[str, Any]:
    body["value"][0].update(changes)
    return body


@pytest.mark.parametrize("body", [
    {"value": []}, {"value": "x"}, {}, [], {"value": ["x"]},
    _break(fixture("graph_notification_user_updated.json"), changeType="renamed"),
    _break(fixture("graph_notification_user_updated.json"), resourceData="x"),
    _break(fixture("graph_notification_user_updated.json"),
           resourceData={"id": "../../me/messages"}),
    _break(fixture("graph_notification_user_updated.json"),
           resourceData={}, resource="Users/not-a-guid"),
])
def test_malformed_notifications_are_400_and_publish_nothing(body: Any) -> None:
    pub, graph = RecordingPublisher(), _graph()

    async def scenario() -> None:
        async with serve(receiver(pub, graph=graph)) as http:
            resp = await http.post(PATH, json=body)
            assert resp.status == 400, await resp.text()
            assert (await resp.json())["error"] == "payload_invalid"
    asyncio.run(scenario())
    assert pub.calls == 0 and graph.calls == []


def test_redelivered_notification_has_no_second_effect() -> None:
    pub = RecordingPublisher()
    rx = receiver(pub, graph=_graph())

    async def scenario() -> None:
        async with serve(rx) as http:
            for _ in range(3):
                resp = await http.post(PATH, json=fixture(
                    "graph_notification_user_updated.json"))
                assert resp.status == 202
    asyncio.run(scenario())
    assert len(pub.events) == 1
    assert 'gatepass_connector_events_duplicate_total{connector="entra"} 2.0' in \
        rx.metrics.exposition().decode()


def test_graph_or_kafka_down_is_503_so_graph_retries() -> None:
    pub, graph = RecordingPublisher(), _graph()

    async def scenario() -> None:
        async with serve(receiver(pub, graph=graph)) as http:
            graph.down = True
            resp = await http.post(PATH, json=fixture("graph_notification_user_updated.json"))
            assert (resp.status, (await resp.json())["error"]) == (503, "graph_unavailable")
            graph.down = False
            pub.kafka_down()
            resp = await http.post(PATH, json=fixture("graph_notification_user_updated.json"))
            assert (resp.status, (await resp.json())["error"]) == (503, "publish_failed")
            pub.fail = None
            resp = await http.post(PATH, json=fixture("graph_notification_user_updated.json"))
            assert resp.status == 202
    asyncio.run(scenario())
    assert len(pub.events) == 1


def test_lifecycle_notifications_are_ignored() -> None:
    pub = RecordingPublisher()
    rx = receiver(pub, graph=_graph())

    async def scenario() -> None:
        async with serve(rx) as http:
            resp = await http.post(PATH, json=fixture(
                "graph_notification_lifecycle_missed.json"))
            assert resp.status == 202
    asyncio.run(scenario())
    assert pub.events == []
    assert 'reason="lifecycle_notification"} 1.0' in rx.metrics.exposition().decode()


# ---- the real Graph client against recorded responses -----------------------------------

@asynccontextmanager
async def _recorded_graph(users: dict[str, Any], *, expire_first_token: bool = False
                          ) -> AsyncIterator[tuple[str, list[str]]]:
    seen: list[str] = []
    tokens = iter(["first-token", "second-token"])

    async def token(request: web.Request) -> web.Response:
        form = await request.post()
        assert request.match_info["tenant"] == TENANT
        assert form["grant_type"] == "client_credentials"
        assert form["scope"] == f"http://{request.host}/.default"
        assert form["client_secret"] == "app-secret-0123456789abcdef"
        body = fixture("graph_token.json")
        body["access_token"] = next(tokens)
        seen.append("token")
        return web.json_response(body)

    async def user(request: web.Request) -> web.Response:
        seen.append(f"{request.path}?{request.query_string}")
        auth = request.headers.get("Authorization")
        if expire_first_token and auth == "Bearer first-token":
            return web.json_response({"error": {"code": "InvalidAuthenticationToken"}},
                                     status=401)
        assert auth in {"Bearer first-token", "Bearer second-token"}
        body = users.get(request.match_info["id"])
        if body is None:
            return web.json_response(fixture("graph_error_not_found.json"), status=404)
        if body == "throttled":
            return web.json_response({"error": {"code": "TooManyRequests"}}, status=429)
        return web.json_response(body)

    app = web.Application()
    app.router.add_post("/{tenant}/oauth2/v2.0/token", token)
    app.router.add_get("/v1.0/users/{id}", user)
    app.router.add_get("/v1.0/directory/deletedItems/{id}/microsoft.graph.user", user)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


def _client(base: str) -> HttpGraphClient:
    return HttpGraphClient(tenant_id=TENANT, client_id="5c1a2b3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
                           client_secret=Secret("app-secret-0123456789abcdef"),
                           graph_url=f"{base}/v1.0", login_url=base, timeout=2.0)


def test_http_graph_client_reads_users_with_one_cached_token() -> None:
    async def scenario() -> None:
        users = {ADELE: fixture("graph_user_disabled.json"), "throttled-id": "throttled"}
        async with _recorded_graph(users) as (base, seen):
            graph = _client(base)
            try:
                adele = await graph.get_user(ADELE)
                assert adele is not None and adele.account_enabled is False
                assert adele.user_principal_name == "adele.vance@contoso.example"
                assert await graph.get_user(JOHANNA) is None
                with pytest.raises(GraphUnavailableError, match="429"):
                    await graph.get_user("throttled-id")
            finally:
                await graph.close()
            assert seen[0] == "token" and seen.count("token") == 1
            assert seen[1] == (f"/v1.0/users/{ADELE}"
                               "?$select=id,accountEnabled,userPrincipalName,mail")
            assert "app-secret" not in repr(graph)
    asyncio.run(scenario())


def test_http_graph_client_renews_a_rejected_token_once() -> None:
    async def scenario() -> None:
        users = {JOHANNA: fixture("graph_deleted_user.json")}
        async with _recorded_graph(users, expire_first_token=True) as (base, seen):
            graph = _client(base)
            try:
                gone = await graph.get_deleted_user(JOHANNA)
            finally:
                await graph.close()
            assert gone is not None and gone.mail == "johanna.lorenz@contoso.example"
            assert seen.count("token") == 2
    asyncio.run(scenario())


def test_http_graph_client_unreachable_is_graph_unavailable() -> None:
    async def scenario() -> None:
        graph = _client("http://127.0.0.1:9")  # discard port: nothing listens
        try:
            with pytest.raises(GraphUnavailableError):
                await graph.get_user(ADELE)
        finally:
            await graph.close()
    asyncio.run(scenario())


def test_a_batch_is_resolved_concurrently_and_published_in_order() -> None:
    pub = RecordingPublisher()
    users, notes = {}, []
    template = fixture("graph_notification_user_updated.json")["value"][0]
    for i in range(20):
        object_id = f"a1f2c3d4-5e6f-4a7b-8c9d-{i:012d}"
        users[object_id] = {"id": object_id, "accountEnabled": i % 2 == 0,
                            "userPrincipalName": f"user{i}@contoso.example"}
        note = copy.deepcopy(template)
        note["resourceData"]["id"] = object_id
        notes.append(note)

    async def scenario() -> None:
        async with serve(receiver(pub, graph=RecordedGraph(users))) as http:
            assert (await http.post(PATH, json={"value": notes})).status == 202
    asyncio.run(scenario())
    assert _statuses(pub) == [
        (f"user{i}@contoso.example",
         PrincipalStatus.ACTIVE if i % 2 == 0 else PrincipalStatus.SUSPENDED)
        for i in range(20)]
