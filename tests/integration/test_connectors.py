"""The identity connectors on the real broker with a real worker: deprovisioning stops agents.

An Okta deactivation, a SCIM `active=false` (Entra's form) and a Graph notification for a
disabled account each make the owner inactive, so the owner's agent gets an orphan alert and
its next intent is denied `owner_inactive`. The receiver runs in-process with the real
LifecyclePublisher and the SCIM store on its Kafka topic; only Graph is recorded.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from gatepass.codec.avro import schemas
from gatepass.connectors import ConnectorSettings, KafkaScimStore, Receiver, serve_in_background
from gatepass.transport import read_topics
from support.broker import free_ports
from support.stack import Stack, read_topic
from unit.connectors.support import (
    CLIENT_STATE,
    OKTA_AUTH,
    SCIM_TOKEN,
    TENANT,
    RecordedGraph,
    fixture,
)

pytestmark = pytest.mark.integration
AUDIENCE = "procurement-api"
SCIM = {"Authorization": f"Bearer {SCIM_TOKEN}", "Content-Type": "application/scim+json"}


def _settings() -> ConnectorSettings:
    return ConnectorSettings.load(env={
        "GATEPASS_CONNECTOR_ENABLED": "okta,scim,entra",
        "GATEPASS_CONNECTOR_OKTA_AUTHORIZATION": OKTA_AUTH,
        "GATEPASS_CONNECTOR_SCIM_TOKEN": SCIM_TOKEN,
        "GATEPASS_CONNECTOR_ENTRA_CLIENT_STATE": CLIENT_STATE,
        "GATEPASS_CONNECTOR_ENTRA_TENANT_ID": TENANT})


def _receiver(stack: Stack, graph: RecordedGraph) -> Receiver:
    return Receiver(_settings(), stack.publisher(), scim_store=KafkaScimStore(stack.settings),
                    graph=graph)


@pytest.fixture(scope="module")
def graph() -> RecordedGraph:
    return RecordedGraph()


@pytest.fixture(scope="module")
def receiver_url(stack: Stack, graph: RecordedGraph) -> Iterator[str]:
    with serve_in_background(_receiver(stack, graph)) as url:
        yield url


def _call(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
          params: dict[str, str] | None = None) -> tuple[int, Any]:
    if params:
        url = f"{url}?{urllib.parse.urlencode(params)}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={
        "Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=20) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    return status, json.loads(raw) if raw else None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _tag() -> str:
    return uuid.uuid4().hex[:8]


def _assert_owner_inactive(stack: Stack, agent: str, owner: str, status: str) -> None:
    alerts = read_topic(stack.settings, stack.settings.topics.orphans, schemas().orphan_alert,
                        lambda rs: any(r["agent_id"] == agent for r in rs), timeout=30)
    mine = [a for a in alerts if a["agent_id"] == agent]
    assert len(mine) == 1, alerts
    assert (mine[0]["owner"], mine[0]["owner_status"], mine[0]["trigger"]) == \
        (owner, status, "owner_deactivated")
    with stack.client(agent_id=agent, audience=AUDIENCE, timeout=20) as gp:
        denied = gp.authorize("vendor.read", "vendor:ACME")
    assert (denied.decision, denied.reasons) == ("DENY", ("owner_inactive",)), denied


def _assert_allowed(stack: Stack, agent: str) -> None:
    with stack.client(agent_id=agent, audience=AUDIENCE, timeout=20) as gp:
        allowed = gp.authorize("vendor.read", "vendor:ACME")
    assert allowed.decision == "ALLOW", allowed


def test_okta_deactivation_denies_the_owners_agent(stack: Stack, receiver_url: str) -> None:
    owner, agent = f"sarah.{_tag()}@acme.example", f"okta-bot-{_tag()}"
    stack.register(agent, owner)
    _assert_allowed(stack, agent)
    body = copy.deepcopy(fixture("okta_deactivate.json"))
    event = body["data"]["events"][0]
    event.update(uuid=str(uuid.uuid4()), published=_now())
    event["target"][0]["alternateId"] = owner
    for _ in range(2):  # Okta retries: the redelivery changes nothing
        status, answer = _call("POST", f"{receiver_url}/okta/events", body,
                               {"Authorization": OKTA_AUTH})
        assert status == 204, answer
    _assert_owner_inactive(stack, agent, owner, "offboarded")


def test_scim_active_false_denies_the_owners_agent(stack: Stack, receiver_url: str,
                                                   graph: RecordedGraph) -> None:
    owner, agent = f"omar.{_tag()}@contoso.example", f"scim-bot-{_tag()}"
    create = fixture("scim_entra_create_user.json")
    create["userName"] = owner
    status, user = _call("POST", f"{receiver_url}/scim/v2/Users", create, SCIM)
    assert status == 201, user
    stack.register(agent, owner)
    _assert_allowed(stack, agent)
    status, patched = _call("PATCH", f"{receiver_url}/scim/v2/Users/{user['id']}",
                            fixture("scim_entra_disable_string.json"), SCIM)
    assert status == 200 and patched["active"] is False, patched
    _assert_owner_inactive(stack, agent, owner, "suspended")

    # The store is the compacted topic: a new receiver reads it back and answers the same.
    with serve_in_background(_receiver(stack, graph)) as other:
        status, again = _call("GET", f"{other}/scim/v2/Users/{user['id']}", headers=SCIM)
        _, found = _call("GET", f"{other}/scim/v2/Users", headers=SCIM,
                         params={"filter": f'userName eq "{owner}"'})
    assert status == 200
    assert {k: v for k, v in again.items() if k != "meta"} == \
        {k: v for k, v in patched.items() if k != "meta"}
    assert found["totalResults"] == 1
    raw = [r.value for r in read_topics(stack.settings.bootstrap,
                                        [f"{stack.settings.topic_prefix}scim-users"],
                                        timeout=30)]
    assert raw and all(b"password" not in (v or b"") for v in raw)


def test_graph_notification_for_a_disabled_account_denies_the_owners_agent(
        stack: Stack, receiver_url: str, graph: RecordedGraph) -> None:
    owner, agent = f"adele.{_tag()}@contoso.example", f"entra-bot-{_tag()}"
    object_id = str(uuid.uuid4())
    stack.register(agent, owner)
    _assert_allowed(stack, agent)
    user: dict[str, Any] = fixture("graph_user_disabled.json")
    user.update(id=object_id, userPrincipalName=owner, mail=owner)
    graph.users[object_id] = user
    body = fixture("graph_notification_user_updated.json")
    note = body["value"][0]
    note.update(resource=f"Users/{object_id}", subscriptionId=str(uuid.uuid4()))
    note["resourceData"].update(id=object_id, **{"@odata.id": f"Users/{object_id}"})
    status, answer = _call("POST", f"{receiver_url}/entra/notifications", body)
    assert status == 202, answer
    _assert_owner_inactive(stack, agent, owner, "suspended")


def test_the_cli_serves_until_terminated(stack: Stack) -> None:
    (port,) = free_ports(1)
    env = {**os.environ, **stack.settings.to_env(),
           "GATEPASS_CONNECTOR_ENABLED": "okta,scim", "GATEPASS_CONNECTOR_PORT": str(port),
           "GATEPASS_CONNECTOR_OKTA_AUTHORIZATION": OKTA_AUTH,
           "GATEPASS_CONNECTOR_SCIM_TOKEN": SCIM_TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "gatepass", "connectors"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status, health = _call("GET", f"{base}/healthz")
                break
            except OSError:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "the receiver did not start"
                time.sleep(0.2)
        assert (status, health["connectors"]) == (200, ["okta", "scim"])
        status, answer = _call("GET", f"{base}/okta/events", headers={
            "Authorization": OKTA_AUTH, "X-Okta-Verification-Challenge": "abc"})
        assert (status, answer) == (200, {"verification": "abc"})
        create = {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                  "userName": f"cli.{_tag()}@acme.example"}
        status, _ = _call("POST", f"{base}/scim/v2/Users", create, SCIM)
        assert status == 201
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    assert OKTA_AUTH.encode() not in err and SCIM_TOKEN.encode() not in err
