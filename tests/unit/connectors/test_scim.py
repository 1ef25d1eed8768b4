"""The SCIM service provider over HTTP: lifecycle mapping, auth, errors, store, idempotence."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from gatepass.connectors import MemoryScimStore
from gatepass.connectors.scim_model import ERROR_URN, PATCH_URN, USER_URN
from gatepass.core import PrincipalStatus
from gatepass.errors import BrokerError
from unit.connectors.support import (
    SCIM_TOKEN,
    RecordingPublisher,
    fixture,
    receiver,
    serve,
)

AUTH = {"Authorization": f"Bearer {SCIM_TOKEN}"}
SCIM_JSON = {**AUTH, "Content-Type": "application/scim+json"}


async def _create(http: aiohttp.ClientSession, name: str = "scim_okta_create_user.json"
                  ) -> dict[str, Any]:
    resp = await http.post("/scim/v2/Users", json=fixture(name), headers=SCIM_JSON)
    assert resp.status == 201, await resp.text()
    body: dict[str, Any] = await resp.json()
    assert resp.headers["Location"] == body["meta"]["location"]
    return body


def _statuses(pub: RecordingPublisher) -> list[tuple[str, PrincipalStatus]]:
    return pub.statuses()


@pytest.mark.parametrize("deactivation", ["scim_okta_deactivate.json",
                                          "scim_entra_disable_string.json",
                                          "scim_entra_disable_boolean.json"])
def test_create_deactivate_delete_map_to_lifecycle(deactivation: str) -> None:
    pub = RecordingPublisher()

    async def scenario() -> None:
        async with serve(receiver(pub)) as http:
            user = await _create(http)
            assert user["active"] is True and "password" not in user
            url = f"/scim/v2/Users/{user['id']}"
            resp = await http.patch(url, json=fixture(deactivation), headers=SCIM_JSON)
            assert resp.status == 200 and (await resp.json())["active"] is False
            resp = await http.delete(url, headers=AUTH)
            assert resp.status == 204
            resp = await http.get(url, headers=AUTH)
            assert resp.status == 404
            assert (await resp.json())["schemas"] == [ERROR_URN]
    asyncio.run(scenario())
    assert _statuses(pub) == [("sarah.lee@acme.example", PrincipalStatus.ACTIVE),
                              ("sarah.lee@acme.example", PrincipalStatus.SUSPENDED),
                              ("sarah.lee@acme.example", PrincipalStatus.OFFBOARDED)]
    assert all(e.source == "scim" for e in pub.events)
    ids = [e.source_event_id for e in pub.events]
    assert len(set(ids)) == 3 and ids[0].endswith("/1") and ids[1].endswith("/2")


def test_inactive_status_can_be_offboarded_and_reactivation_is_active() -> None:
    pub = RecordingPublisher()

    async def scenario() -> None:
        async with serve(receiver(pub, GATEPASS_CONNECTOR_SCIM_INACTIVE_STATUS="offboarded")
                         ) as http:
            user = await _create(http, "scim_entra_create_user.json")
            url = f"/scim/v2/Users/{user['id']}"
            for active in (False, True):
                resp = await http.patch(url, headers=SCIM_JSON, json={
                    "schemas": [PATCH_URN],
                    "Operations": [{"op": "replace", "path": "active", "value": active}]})
                assert resp.status == 200
    asyncio.run(scenario())
    assert [s for _, s in _statuses(pub)] == [PrincipalStatus.ACTIVE,
                                              PrincipalStatus.OFFBOARDED,
                                              PrincipalStatus.ACTIVE]


def test_repeated_deactivation_and_attribute_updates_publish_nothing_more() -> None:
    pub = RecordingPublisher()

    async def scenario() -> None:
        async with serve(receiver(pub)) as http:
            user = await _create(http, "scim_entra_create_user.json")
            url = f"/scim/v2/Users/{user['id']}"
            for name in ("scim_entra_disable_string.json", "scim_entra_disable_string.json",
                         "scim_entra_update_attributes.json"):
                resp = await http.patch(url, json=fixture(name), headers=SCIM_JSON)
                assert resp.status == 200
            body = await resp.json()
            assert body["emails"][0]["value"] == "omar.h@contoso.example"
    asyncio.run(scenario())
    assert [s for _, s in _statuses(pub)] == [PrincipalStatus.ACTIVE,
                                              PrincipalStatus.SUSPENDED]


def test_principal_can_be_the_external_id() -> None:
    pub = RecordingPublisher()

    async def scenario() -> None:
        async with serve(receiver(pub, GATEPASS_CONNECTOR_SCIM_PRINCIPAL_ATTRIBUTE="externalId")
                         ) as http:
            await _create(http)
            body = {"schemas": [USER_URN], "userName": "no.external@acme.example"}
            resp = await http.post("/scim/v2/Users", json=body, headers=SCIM_JSON)
            assert resp.status == 400
            assert (await resp.json())["scimType"] == "invalidValue"
    asyncio.run(scenario())
    assert _statuses(pub) == [("00u5sarahQ1w2e3r4t5", PrincipalStatus.ACTIVE)]


def test_filter_by_username_and_pagination() -> None:
    async def scenario() -> None:
        async with serve(receiver()) as http:
            for i in range(5):
                body = {"schemas": [USER_URN], "userName": f"user{i}@acme.example"}
                resp = await http.post("/scim/v2/Users", json=body, headers=SCIM_JSON)
                assert resp.status == 201
            resp = await http.get("/scim/v2/Users", headers=AUTH, params={
                "filter": 'userName eq "USER3@acme.example"', "startIndex": "1",
                "count": "100"})
            found = await resp.json()
            assert found["totalResults"] == 1
            assert found["Resources"][0]["userName"] == "user3@acme.example"
            resp = await http.get("/scim/v2/Users", headers=AUTH, params={
                "filter": 'userName eq "nobody@acme.example"'})
            empty = await resp.json()
            assert (resp.status, empty["totalResults"], empty["Resources"]) == (200, 0, [])
            resp = await http.get("/scim/v2/Users", headers=AUTH,
                                  params={"startIndex": "2", "count": "2",
                                          "attributes": "userName"})
            page = await resp.json()
            assert (page["totalResults"], page["startIndex"], page["itemsPerPage"]) == (5, 2, 2)
            assert [set(r) for r in page["Resources"]] == [{"schemas", "id", "userName"}] * 2
            assert [r["userName"] for r in page["Resources"]] == \
                ["user1@acme.example", "user2@acme.example"]
            resp = await http.get("/scim/v2/Users", headers=AUTH, params={"count": "0"})
            assert (await resp.json())["Resources"] == []
            resp = await http.get("/scim/v2/Users", headers=AUTH,
                                  params={"filter": "userName zz 1"})
            assert resp.status == 400 and (await resp.json())["scimType"] == "invalidFilter"
            resp = await http.get("/scim/v2/Users", headers=AUTH, params={"count": "ten"})
            assert resp.status == 400
    asyncio.run(scenario())


@pytest.mark.parametrize("auth", [{}, {"Authorization": SCIM_TOKEN},
                                  {"Authorization": f"Bearer {SCIM_TOKEN[:-1]}"},
                                  {"Authorization": f"Basic {SCIM_TOKEN}"}])
def test_every_endpoint_needs_the_bearer_token(auth: dict[str, str]) -> None:
    pub = RecordingPublisher()

    async def scenario() -> None:
        async with serve(receiver(pub)) as http:
            for method, path in [("GET", "/Users"), ("POST", "/Users"), ("GET", "/Users/x"),
                                 ("PATCH", "/Users/x"), ("DELETE", "/Users/x"),
                                 ("GET", "/Schemas"), ("GET", "/ServiceProviderConfig"),
                                 ("GET", "/nowhere")]:
                resp = await http.request(method, f"/scim/v2{path}", headers=auth,
                                          json=fixture("scim_okta_create_user.json"))
                assert resp.status == 401, (method, path)
                body = await resp.json()
                assert body["schemas"] == [ERROR_URN] and body["status"] == "401"
                assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    asyncio.run(scenario())
    assert pub.calls == 0


@pytest.mark.parametrize(("body", "status", "scim_type"), [
    (b"{", 400, "invalidSyntax"),
    (b'{"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"]}', 400, "invalidValue"),
    (b'{"userName": "x@y"}', 400, "invalidSyntax"),
    (b'{"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "a",'
     b' "userName": "b"}', 400, "invalidSyntax"),
])
def test_malformed_bodies_are_scim_errors_and_publish_nothing(body: bytes, status: int,
                                                               scim_type: str) -> None:
    pub = RecordingPublisher()

    async def scenario() -> None:
        async with serve(receiver(pub)) as http:
            resp = await http.post("/scim/v2/Users", data=body, headers=SCIM_JSON)
            assert resp.status == status
            error = await resp.json()
            assert error["schemas"] == [ERROR_URN] and error["scimType"] == scim_type
            assert error["status"] == str(status)
            resp = await http.post("/scim/v2/Users", data=b"userName=x",
                                   headers={**AUTH, "Content-Type": "text/plain"})
            assert resp.status == 415
    asyncio.run(scenario())
    assert pub.calls == 0


def test_duplicate_username_is_a_conflict() -> None:
    pub = RecordingPublisher()

    async def scenario() -> None:
        async with serve(receiver(pub)) as http:
            await _create(http)
            dup = fixture("scim_okta_create_user.json")
            dup["userName"] = dup["userName"].upper()
            resp = await http.post("/scim/v2/Users", json=dup, headers=SCIM_JSON)
            assert resp.status == 409 and (await resp.json())["scimType"] == "uniqueness"
    asyncio.run(scenario())
    assert len(pub.events) == 1


def test_kafka_down_is_503_and_nothing_is_stored() -> None:
    pub, store = RecordingPublisher(), MemoryScimStore()

    async def scenario() -> None:
        async with serve(receiver(pub, store=store)) as http:
            pub.kafka_down()
            resp = await http.post("/scim/v2/Users", json=fixture("scim_okta_create_user.json"),
                                   headers=SCIM_JSON)
            assert resp.status == 503 and (await resp.json())["status"] == "503"
            resp = await http.get("/scim/v2/Users", headers=AUTH)
            assert (await resp.json())["totalResults"] == 0
            pub.fail = None
            user = await _create(http)
            store.fail = BrokerError("store topic down")
            resp = await http.patch(f"/scim/v2/Users/{user['id']}", headers=SCIM_JSON,
                                    json=fixture("scim_okta_deactivate.json"))
            assert resp.status == 503
            resp = await http.get(f"/scim/v2/Users/{user['id']}", headers=AUTH)
            assert (await resp.json())["active"] is True  # the write did not happen
    asyncio.run(scenario())
    assert store.users and all(u["active"] is True for u in store.users.values())


def test_a_restarted_receiver_answers_the_same_from_its_store() -> None:
    store = MemoryScimStore()
    public = "https://gatepass.acme.example"

    async def first() -> dict[str, Any]:
        async with serve(receiver(store=store, GATEPASS_CONNECTOR_PUBLIC_URL=public)) as http:
            user = await _create(http)
            resp = await http.patch(f"/scim/v2/Users/{user['id']}", headers=SCIM_JSON,
                                    json=fixture("scim_okta_deactivate.json"))
            body: dict[str, Any] = await resp.json()
            return body

    async def second(before: dict[str, Any]) -> None:
        async with serve(receiver(store=store, GATEPASS_CONNECTOR_PUBLIC_URL=public)) as http:
            resp = await http.get(f"/scim/v2/Users/{before['id']}", headers=AUTH)
            assert resp.status == 200
            assert before["meta"]["location"] == \
                f"https://gatepass.acme.example/scim/v2/Users/{before['id']}"
            assert await resp.json() == before
            dup = await http.post("/scim/v2/Users", json=fixture("scim_okta_create_user.json"),
                                  headers=SCIM_JSON)
            assert dup.status == 409

    before = asyncio.run(first())
    asyncio.run(second(before))
    assert "password" not in repr(store.users)


def test_put_replaces_and_maps_active() -> None:
    pub = RecordingPublisher()

    async def scenario() -> None:
        async with serve(receiver(pub)) as http:
            user = await _create(http)
            replacement = fixture("scim_okta_create_user.json")
            replacement["active"] = False
            replacement["displayName"] = "S. Lee"
            resp = await http.put(f"/scim/v2/Users/{user['id']}", json=replacement,
                                  headers=SCIM_JSON)
            body = await resp.json()
            assert resp.status == 200 and body["active"] is False
            assert body["displayName"] == "S. Lee"
            assert body["meta"]["created"] == user["meta"]["created"]
            resp = await http.put("/scim/v2/Users/unknown", json=replacement,
                                  headers=SCIM_JSON)
            assert resp.status == 404
    asyncio.run(scenario())
    assert [s for _, s in _statuses(pub)] == [PrincipalStatus.ACTIVE,
                                              PrincipalStatus.SUSPENDED]


def test_discovery_documents() -> None:
    async def scenario() -> None:
        async with serve(receiver()) as http:
            spc = await (await http.get("/scim/v2/ServiceProviderConfig", headers=AUTH)).json()
            assert spc["patch"] == {"supported": True}
            assert spc["bulk"]["supported"] is False
            assert spc["authenticationSchemes"][0]["type"] == "oauthbearertoken"
            types = await (await http.get("/scim/v2/ResourceTypes", headers=AUTH)).json()
            assert [t["id"] for t in types["Resources"]] == ["User"]
            schemas = await (await http.get("/scim/v2/Schemas", headers=AUTH)).json()
            assert USER_URN in {s["id"] for s in schemas["Resources"]}
            resp = await http.get(f"/scim/v2/Schemas/{USER_URN}", headers=AUTH)
            assert (await resp.json())["name"] == "User"
            resp = await http.post("/scim/v2/Schemas", headers=AUTH)
            assert resp.status == 405 and (await resp.json())["status"] == "405"
    asyncio.run(scenario())


def test_an_unexpected_failure_is_a_scim_500_without_details() -> None:
    store = MemoryScimStore()
    store.fail = RuntimeError("disk on fire at /secret/path")

    async def scenario() -> None:
        async with serve(receiver(store=store)) as http:
            resp = await http.post("/scim/v2/Users", json=fixture("scim_okta_create_user.json"),
                                   headers=SCIM_JSON)
            assert resp.status == 500
            body = await resp.json()
            assert body == {"schemas": [ERROR_URN], "status": "500", "detail": "internal error"}
    asyncio.run(scenario())
