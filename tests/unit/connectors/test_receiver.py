"""The receiver: plugin lifecycle, health and metrics pages, the CLI, secrets kept out of logs."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gatepass.cli.main import build_parser
from gatepass.connectors import ConnectorSettings, MemoryScimStore, Receiver
from gatepass.errors import ConfigError
from unit.connectors.support import (
    CLIENT_STATE,
    OKTA_AUTH,
    SCIM_TOKEN,
    RecordingPublisher,
    fixture,
    receiver,
    serve,
)


def test_health_and_metrics_pages() -> None:
    rx = receiver()

    async def scenario() -> None:
        async with serve(rx) as http:
            resp = await http.get("/healthz")
            assert await resp.json() == {"status": "alive",
                                         "connectors": ["okta", "scim", "entra"]}
            await http.post("/okta/events", json={}, headers={"Authorization": "nope"})
            resp = await http.get("/metrics")
            text = await resp.text()
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            assert 'gatepass_connector_requests_rejected_total{code="unauthenticated",' \
                   'connector="okta"} 1.0' in text
    asyncio.run(scenario())


def test_only_enabled_connectors_are_mounted() -> None:
    settings = ConnectorSettings.load(env={"GATEPASS_CONNECTOR_ENABLED": "okta",
                                           "GATEPASS_CONNECTOR_OKTA_AUTHORIZATION": OKTA_AUTH})
    rx = Receiver(settings, RecordingPublisher())

    async def scenario() -> None:
        async with serve(rx) as http:
            assert (await http.get("/scim/v2/Users")).status == 404
            assert (await http.post("/entra/notifications")).status == 404
    asyncio.run(scenario())


def test_entra_without_graph_credentials_fails_validation() -> None:
    settings = ConnectorSettings.load(env={
        "GATEPASS_CONNECTOR_ENABLED": "entra",
        "GATEPASS_CONNECTOR_ENTRA_CLIENT_STATE": CLIENT_STATE})
    with pytest.raises(ConfigError) as err:
        Receiver(settings, RecordingPublisher())
    assert err.value.key == "entra.client_secret"


def test_scim_without_a_store_is_a_configuration_error() -> None:
    settings = ConnectorSettings.load(env={"GATEPASS_CONNECTOR_ENABLED": "scim",
                                           "GATEPASS_CONNECTOR_SCIM_TOKEN": SCIM_TOKEN})
    with pytest.raises(ConfigError):
        Receiver(settings, RecordingPublisher())


def test_a_connector_failing_to_start_stops_the_others() -> None:
    class BrokenStore(MemoryScimStore):
        def load(self) -> dict[str, dict[str, object]]:
            raise RuntimeError("no store")

    rx = receiver(store=BrokenStore())
    with pytest.raises(RuntimeError):
        asyncio.run(rx.start("127.0.0.1", 0))


def test_secrets_never_reach_the_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    pub = RecordingPublisher()
    wrong = OKTA_AUTH[:-2] + "zz"

    async def scenario() -> None:
        async with serve(receiver(pub)) as http:
            await http.post("/okta/events", json=fixture("okta_deactivate.json"),
                            headers={"Authorization": wrong})
            await http.post("/okta/events", json=fixture("okta_deactivate.json"),
                            headers={"Authorization": OKTA_AUTH})
            await http.get("/scim/v2/Users", headers={"Authorization": f"Bearer {wrong}"})
            await http.post("/scim/v2/Users", json=fixture("scim_okta_create_user.json"),
                            headers={"Authorization": f"Bearer {SCIM_TOKEN}"})
            body = fixture("graph_notification_user_updated.json")
            body["value"][0]["clientState"] = wrong
            await http.post("/entra/notifications", json=body)
    asyncio.run(scenario())
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "okta request refused" in logged and "scim request refused" in logged
    for secret in (OKTA_AUTH, SCIM_TOKEN, CLIENT_STATE, wrong, "t3mp-Pa55word!"):
        assert secret not in logged


def test_cli_registers_the_connectors_command() -> None:
    ns = build_parser().parse_args(["connectors", "--port", "8099", "--config", "c.toml"])
    assert ns.command == "connectors" and ns.port == 8099 and str(ns.config) == "c.toml"
    assert ns.handler.__name__ == "cmd_connectors"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["connectors", "--port", "0"])
