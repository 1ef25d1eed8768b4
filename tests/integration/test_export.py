"""`gatepass export ocsf` against a real broker and worker, run as scripts run it.

A denial and an orphan alert are produced through the module's worker (the procure-bot story:
an out-of-scope intent, then the owner offboarded), then the CLI runs as a subprocess. Every
stdout line must be a CloudEvent with an OCSF body of the class its type names; `--to-topic`
must write the same events, keyed by event id, to `<prefix>ocsf-events`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from gatepass.codec.avro import schemas
from gatepass.config import Settings
from support.stack import Stack, read_topic

pytestmark = pytest.mark.integration
AUDIENCE = "procurement-api"
CLASS_OF_TYPE = {"dev.gatepass.v1.denial": 6003, "dev.gatepass.v1.orphan_alert": 2004}


def _env() -> dict[str, str]:
    """The caller's environment without GATEPASS_* settings: only the flags count."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("GATEPASS_") or k == "GATEPASS_SCHEMAS_DIR"}


def _argv(settings: Settings, *args: str) -> list[str]:
    return [sys.executable, "-m", "gatepass", "--bootstrap", settings.bootstrap,
            "--topic-prefix", settings.topic_prefix, "--home", str(settings.home), *args]


def cli(settings: Settings, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_argv(settings, *args), capture_output=True, text=True,
                          timeout=timeout, env=_env())


def _events(run: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout == "" or run.stdout.endswith("\n")
    events = [json.loads(line) for line in run.stdout.splitlines()]
    assert all(isinstance(e, dict) for e in events)
    return events


def _wait_for(settings: Settings, topic: str, kind: str,
              found: Callable[[dict[str, Any]], bool]) -> None:
    codec = schemas().decision_record if kind == "denial" else schemas().orphan_alert
    records = read_topic(settings, topic, codec, lambda rs: any(found(r) for r in rs),
                         timeout=30)
    assert any(found(r) for r in records), f"no matching record on {topic}"


@dataclass
class Story:
    agent: str
    owner: str
    token: str
    deny_intent: str


@pytest.fixture(scope="module")
def story(stack: Stack) -> Story:
    """An ALLOW (for its pass), an out-of-scope DENY, then the owner offboarded (an alert)."""
    s = stack.settings
    agent, owner = f"siem-bot-{uuid.uuid4().hex[:6]}", f"siem-owner-{uuid.uuid4().hex[:6]}"
    assert cli(s, "principal", owner, "--status", "active").returncode == 0
    assert cli(s, "register-agent", agent, "--owner", owner,
               "--purpose", "procurement").returncode == 0
    allow = cli(s, "intent", "--agent", agent, "--action", "purchase_order.create",
                "--resource", "vendor:ACME", "--amount", "120.00", "--currency", "USD",
                "--audience", AUDIENCE, "--json")
    assert allow.returncode == 0, allow.stdout + allow.stderr
    deny = cli(s, "intent", "--agent", agent, "--action", "cloud.provision",
               "--resource", "gpu-cluster", "--audience", AUDIENCE, "--json")
    assert deny.returncode == 1, deny.stdout + deny.stderr
    deny_intent = json.loads(deny.stdout)["intent_id"]
    assert cli(s, "principal", owner, "--status", "offboarded").returncode == 0
    _wait_for(s, s.topics.denials, "denial", lambda r: r["intent"]["intent_id"] == deny_intent)
    _wait_for(s, s.topics.orphans, "orphan",
              lambda r: r["agent_id"] == agent and r["owner_status"] == "offboarded")
    return Story(agent=agent, owner=owner, token=json.loads(allow.stdout)["credential"],
                 deny_intent=deny_intent)


def test_every_line_is_a_cloudevent_with_an_ocsf_body_of_its_class(stack: Stack,
                                                                   story: Story) -> None:
    run = cli(stack.settings, "export", "ocsf")
    events = _events(run)
    assert events
    for event in events:
        assert event["specversion"] == "1.0"
        assert all(isinstance(event[k], str) and event[k] for k in ("id", "source", "type"))
        assert event["datacontenttype"] == "application/json"
        data = event["data"]
        assert data["class_uid"] == CLASS_OF_TYPE[event["type"]]
        assert data["type_uid"] == data["class_uid"] * 100 + data["activity_id"]
        assert data["metadata"]["version"] == "1.3.0"
        assert event["subject"]
    (denial,) = [e for e in events if e["data"].get("api", {}).get("request", {}).get("uid")
                 == story.deny_intent]
    body = denial["data"]
    assert denial["subject"] == story.agent
    assert (body["class_uid"], body["status_code"], body["api"]["operation"]) == (
        6003, "out_of_scope", "cloud.provision")
    assert body["actor"]["app_uid"] == story.agent
    assert body["actor"]["user"]["uid"] == story.owner
    (grant,) = body["actor"]["authorizations"]
    assert grant["decision"] == "Deny" and grant["policy"]["version"].startswith("cedar-")
    findings = [e for e in events if e["type"] == "dev.gatepass.v1.orphan_alert"
                and e["subject"] == story.agent]
    assert findings, "no finding for the offboarded owner's agent"
    finding = findings[0]["data"]
    assert (finding["class_uid"], finding["severity"]) == (2004, "High")
    assert finding["resources"][0]["owner"]["uid"] == story.owner


def test_the_bearer_pass_is_never_exported(stack: Stack, story: Story) -> None:
    run = cli(stack.settings, "export", "ocsf")
    assert run.returncode == 0
    assert story.token not in run.stdout and story.token.split(".")[2] not in run.stdout


def test_from_selects_the_topic_and_max_stops(stack: Stack, story: Story) -> None:
    s = stack.settings
    denials = _events(cli(s, "export", "ocsf", "--from", "denials"))
    orphans = _events(cli(s, "export", "ocsf", "--from", "orphans"))
    assert denials and {e["data"]["class_uid"] for e in denials} == {6003}
    assert orphans and {e["data"]["class_uid"] for e in orphans} == {2004}
    assert len(_events(cli(s, "export", "ocsf", "--max", "1"))) == 1


def test_re_exporting_gives_the_same_event_ids(stack: Stack, story: Story) -> None:
    first = {e["id"]: e for e in _events(cli(stack.settings, "export", "ocsf"))}
    again = {e["id"]: e for e in _events(cli(stack.settings, "export", "ocsf"))}
    assert set(first) <= set(again)  # later records may have arrived in between
    assert all(again[i] == first[i] for i in first)


def _export_topic_records(settings: Settings, at_least: int) -> list[tuple[str, str, dict]]:
    """(key, value, headers) of every record on <prefix>ocsf-events, read by a plain consumer."""
    topic = f"{settings.topic_prefix}ocsf-events"
    consumer = Consumer({"bootstrap.servers": settings.bootstrap, "group.id": "test-export",
                         "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
        records: list[tuple[str, str, dict]] = []
        deadline = time.monotonic() + 20
        while len(records) < at_least and time.monotonic() < deadline:
            msg = consumer.poll(0.1)
            if msg is None or msg.error():
                continue
            records.append((msg.key().decode(), msg.value().decode(),
                            dict(msg.headers() or [])))
        return records
    finally:
        consumer.close()


def test_to_topic_writes_the_same_events_keyed_by_id(stack: Stack, story: Story) -> None:
    s = stack.settings
    run = cli(s, "export", "ocsf", "--to-topic")
    lines = run.stdout.splitlines()
    events = _events(run)
    plural = "" if len(events) == 1 else "s"
    assert f"wrote {len(events)} event{plural} to {s.topic_prefix}ocsf-events" in run.stderr
    records = _export_topic_records(s, len(events))
    assert sorted((k, v) for k, v, _ in records) == sorted(
        (e["id"], line) for e, line in zip(events, lines, strict=True))
    assert all(h["content-type"].startswith(b"application/cloudevents+json")
               for _, _, h in records)
    # The topic exists now; a second export appends the same events with the same keys.
    again = _events(cli(s, "export", "ocsf", "--to-topic"))
    keys = Counter(k for k, _, _ in _export_topic_records(s, len(events) + len(again)))
    assert all(keys[e["id"]] == 2 for e in events), keys


def test_follow_prints_a_denial_that_arrives_later(stack: Stack, story: Story) -> None:
    s = stack.settings
    before = len(_events(cli(s, "export", "ocsf", "--from", "denials")))
    proc = subprocess.Popen(_argv(s, "export", "ocsf", "--from", "denials", "--follow",
                                  "--max", str(before + 1)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env())
    try:
        late = cli(s, "intent", "--agent", story.agent, "--action", "vendor.read",
                   "--resource", "vendor:LATE", "--audience", AUDIENCE, "--json")
        late_intent = json.loads(late.stdout)["intent_id"]  # owner offboarded: a DENY
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-2000:]
    events = [json.loads(line) for line in out.splitlines()]
    assert len(events) == before + 1
    (mine,) = [e for e in events if e["data"]["api"]["request"]["uid"] == late_intent]
    assert mine["data"]["status_code"] == "owner_inactive"


def test_missing_topics_are_a_broker_error(stack: Stack) -> None:
    missing = stack.settings.with_(topic_prefix=f"missing{uuid.uuid4().hex[:8]}.")
    run = cli(missing, "export", "ocsf")
    assert run.returncode == 2 and run.stdout == ""
    assert "gatepass: error [broker_unavailable]" in run.stderr, run.stderr
