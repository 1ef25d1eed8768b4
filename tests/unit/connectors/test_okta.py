"""Okta Event Hooks: verification, authentication, the mapping, redelivery, reordering, outages."""

from __future__ import annotations

import asyncio
import copy
from datetime import timedelta
from typing import Any

import pytest

from gatepass.connectors.errors import PayloadInvalidError
from gatepass.connectors.okta import OKTA_STATUS, map_delivery
from gatepass.core import IdentityState, PrincipalStatus, PrincipalStatusChanged
from unit.connectors.support import (
    NOW,
    OKTA_AUTH,
    RecordingPublisher,
    fixture,
    receiver,
    serve,
)

HEADERS = {"Authorization": OKTA_AUTH, "Content-Type": "application/json"}
SKEW = timedelta(minutes=5)


def _map(body: Any, field: str = "alternateId") -> Any:
    return map_delivery(body, principal_field=field, now=NOW, max_skew=SKEW)


def test_documented_deactivation_maps_to_offboarded() -> None:
    delivery = _map(fixture("okta_deactivate.json"))
    (event,) = delivery.events
    assert event == PrincipalStatusChanged(
        principal_id="sarah.lee@acme.example", status=PrincipalStatus.OFFBOARDED,
        event_time=event.event_time, source="okta",
        source_event_id="9b1c7e2a-0850-11ef-9a2c-3f5d8e7b6a01")
    assert event.event_time.isoformat() == "2024-05-02T09:14:02.871000+00:00"
    assert delivery.ignored == ()


def test_every_lifecycle_type_of_a_batch_is_mapped_and_the_rest_ignored() -> None:
    delivery = _map(fixture("okta_lifecycle_batch.json"))
    got = [(e.principal_id, e.status) for e in delivery.events]
    assert got == [("bob@acme.example", PrincipalStatus.SUSPENDED),
                   ("carol@acme.example", PrincipalStatus.ACTIVE),
                   ("dan@acme.example", PrincipalStatus.ACTIVE),
                   ("erin@acme.example", PrincipalStatus.ACTIVE),
                   ("frank@acme.example", PrincipalStatus.OFFBOARDED)]
    assert [(t, r) for _, t, r in delivery.ignored] == [
        ("user.session.start", "unrelated_type"),
        ("group.user_membership.add", "unrelated_type"),
        ("user.lifecycle.deactivate", "outcome_not_success"),
        ("user.lifecycle.create", "unrelated_type")]
    assert delivery.received == 9


def test_the_mapping_table() -> None:
    assert OKTA_STATUS == {
        "user.lifecycle.activate": PrincipalStatus.ACTIVE,
        "user.lifecycle.reactivate": PrincipalStatus.ACTIVE,
        "user.lifecycle.unsuspend": PrincipalStatus.ACTIVE,
        "user.lifecycle.suspend": PrincipalStatus.SUSPENDED,
        "user.lifecycle.deactivate": PrincipalStatus.OFFBOARDED,
        "user.lifecycle.delete.initiated": PrincipalStatus.OFFBOARDED,
        "user.lifecycle.delete.completed": PrincipalStatus.OFFBOARDED,
    }


def test_principal_can_be_the_okta_user_id() -> None:
    (event,) = _map(fixture("okta_deactivate.json"), field="id").events
    assert event.principal_id == "00u5sarahQ1w2e3r4t5"


def _deactivation() -> dict[str, Any]:
    return copy.deepcopy(fixture("okta_deactivate.json"))


def _event(body: dict[str, Any]) -> dict[str, Any]:
    event: dict[str, Any] = body["data"]["events"][0]
    return event


@pytest.mark.parametrize(("break_it", "message"), [
    (lambda b: b.pop("eventType"), "eventType"),
    (lambda b: b.update(data={}), "data.events"),
    (lambda b: b["data"].update(events=[]), "data.events"),
    (lambda b: b["data"].update(events=["x"]), "must be an object"),
    (lambda b: _event(b).pop("uuid"), "uuid"),
    (lambda b: _event(b).pop("published"), "published"),
    (lambda b: _event(b).update(published="yesterday"), "published"),
    (lambda b: _event(b).update(published="2024-05-02T09:14:02"), "time zone"),
    (lambda b: _event(b).update(published="2099-01-01T00:00:00Z"), "future"),
    (lambda b: _event(b).update(target=[]), "exactly one User"),
    (lambda b: _event(b).update(target=[{"type": "User"}, {"type": "User"}]),
     "exactly one User"),
    (lambda b: _event(b)["target"][0].update(alternateId=""), "alternateId"),
    (lambda b: _event(b)["target"][0].update(alternateId="a\nb"), "characters"),
    (lambda b: _event(b)["target"][0].update(alternateId="x" * 300), "longer"),
])
def test_malformed_deliveries_are_refused(break_it: Any, message: str) -> None:
    body = _deactivation()
    break_it(body)
    with pytest.raises(PayloadInvalidError, match=message):
        _map(body)


def test_verification_echoes_the_challenge() -> None:
    async def scenario() -> None:
        async with serve(receiver()) as http:
            resp = await http.get("/okta/events", headers={
                "Authorization": OKTA_AUTH, "X-Okta-Verification-Challenge": "chAll3nge"})
            assert resp.status == 200
            assert await resp.json() == {"verification": "chAll3nge"}
            resp = await http.get("/okta/events", headers={"Authorization": OKTA_AUTH})
            assert resp.status == 400
    asyncio.run(scenario())


@pytest.mark.parametrize("auth", [None, "", OKTA_AUTH[:-1], OKTA_AUTH + "x",
                                  f"Bearer {OKTA_AUTH}"])
def test_callers_without_the_configured_header_are_refused(auth: str | None) -> None:
    pub = RecordingPublisher()

    async def scenario() -> None:
        headers = {"Content-Type": "application/json"}
        if auth is not None:
            headers["Authorization"] = auth
        async with serve(receiver(pub)) as http:
            resp = await http.post("/okta/events", json=fixture("okta_deactivate.json"),
                                   headers=headers)
            assert resp.status == 401
            assert (await resp.json())["error"] == "unauthenticated"
            verify = await http.get("/okta/events", headers={
                **headers, "X-Okta-Verification-Challenge": "c"})
            assert verify.status == 401
    asyncio.run(scenario())
    assert pub.events == [] and pub.calls == 0


@pytest.mark.parametrize("body", [b"", b"{", b"[]", b'{"eventType": "com.okta.event_hook"}',
                                  b'{"a": 1, "a": 2}', b"NaN"])
def test_malformed_bodies_get_400_and_nothing_is_published(body: bytes) -> None:
    pub = RecordingPublisher()

    async def scenario() -> None:
        async with serve(receiver(pub)) as http:
            resp = await http.post("/okta/events", data=body, headers=HEADERS)
            assert resp.status == 400
            assert (await resp.json())["error"] == "payload_invalid"
    asyncio.run(scenario())
    assert pub.calls == 0


def test_one_bad_lifecycle_event_refuses_the_whole_delivery() -> None:
    pub = RecordingPublisher()
    body = fixture("okta_lifecycle_batch.json")
    body["data"]["events"][4]["target"] = []

    async def scenario() -> None:
        async with serve(receiver(pub)) as http:
            resp = await http.post("/okta/events", json=body, headers=HEADERS)
            assert resp.status == 400
    asyncio.run(scenario())
    assert pub.calls == 0


def test_delivery_is_acknowledged_after_publishing_and_redelivery_has_no_effect() -> None:
    pub = RecordingPublisher()
    rx = receiver(pub)

    async def scenario() -> None:
        async with serve(rx) as http:
            for _ in range(3):
                resp = await http.post("/okta/events", json=fixture("okta_deactivate.json"),
                                       headers=HEADERS)
                assert resp.status == 204
    asyncio.run(scenario())
    assert len(pub.events) == 1
    metrics = rx.metrics.exposition().decode()
    assert 'gatepass_connector_events_published_total{connector="okta"} 1.0' in metrics
    assert 'gatepass_connector_events_duplicate_total{connector="okta"} 2.0' in metrics


def test_out_of_order_delivery_resolves_to_the_newest_event() -> None:
    """A late 'activate' that happened before the deactivation never resurrects Sarah."""
    pub = RecordingPublisher()
    late = copy.deepcopy(fixture("okta_deactivate.json"))
    event = _event(late)
    event.update(eventType="user.lifecycle.activate", uuid="0f0f0f0f-0850-11ef-9a2c-000000000000",
                 published="2024-05-01T08:00:00.000Z")

    async def scenario() -> None:
        async with serve(receiver(pub)) as http:
            for body in (fixture("okta_deactivate.json"), late):
                resp = await http.post("/okta/events", json=body, headers=HEADERS)
                assert resp.status == 204
    asyncio.run(scenario())
    assert [s for _, s in pub.statuses()] == [PrincipalStatus.OFFBOARDED,
                                              PrincipalStatus.ACTIVE]
    state = IdentityState()
    for e in pub.events:
        state.apply(e)
    assert not state.owner_active("sarah.lee@acme.example")
    rec = state.principal("sarah.lee@acme.example")
    assert rec is not None and rec.status is PrincipalStatus.OFFBOARDED


def test_kafka_down_is_503_and_the_retry_publishes() -> None:
    pub = RecordingPublisher()
    pub.kafka_down()

    async def scenario() -> None:
        async with serve(receiver(pub)) as http:
            resp = await http.post("/okta/events", json=fixture("okta_deactivate.json"),
                                   headers=HEADERS)
            assert resp.status == 503
            assert (await resp.json())["error"] == "publish_failed"
            pub.fail = None
            resp = await http.post("/okta/events", json=fixture("okta_deactivate.json"),
                                   headers=HEADERS)
            assert resp.status == 204
    asyncio.run(scenario())
    assert len(pub.events) == 1


def test_a_delivery_of_only_unrelated_events_is_acknowledged_and_publishes_nothing() -> None:
    pub = RecordingPublisher()
    body = fixture("okta_lifecycle_batch.json")
    body["data"]["events"] = body["data"]["events"][5:7]

    async def scenario() -> None:
        async with serve(receiver(pub)) as http:
            resp = await http.post("/okta/events", json=body, headers=HEADERS)
            assert resp.status == 204
    asyncio.run(scenario())
    assert pub.events == []
