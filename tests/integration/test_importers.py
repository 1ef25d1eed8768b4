"""Importers on a real broker and worker: a termination dated ahead, and the same file twice.

The HR scenario is the one issue #5 asks for: a termination effective ~3 s after import.
Before that time the owner's agent is allowed; from it on it is denied `owner_inactive`
with no record published in between (the worker reads the scheduled status as of its own
clock), and the SOC gets exactly one orphan alert.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from gatepass.codec.avro import schemas
from gatepass.codec.records import lifecycle_from_record
from gatepass.config import Settings
from gatepass.importers import HrConfig, map_hr_rows, parse_hr_file, publish_batch
from support.stack import Stack, read_topic

pytestmark = pytest.mark.integration
AUDIENCE = "procurement-api"
FIXTURES = Path(__file__).parents[1] / "unit" / "importers" / "fixtures"
AHEAD = timedelta(seconds=3)


def _tag() -> str:
    return uuid.uuid4().hex[:6]


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("GATEPASS_") or k == "GATEPASS_SCHEMAS_DIR"}
    return subprocess.run(
        [sys.executable, "-m", "gatepass", "--bootstrap", settings.bootstrap,
         "--topic-prefix", settings.topic_prefix, "--home", str(settings.home), *args],
        capture_output=True, text=True, timeout=120, env=env)


def _identity_records(settings: Settings, key: str) -> list[tuple[int, Any]]:
    """(broker timestamp in ms, event) of every record under `key`, read independently."""
    topic = settings.topics.identity
    consumer = Consumer({"bootstrap.servers": settings.bootstrap, "group.id": "test-reader",
                         "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        ends = {}
        for p in meta.partitions:
            ends[p] = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
        consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
        found: list[tuple[int, Any]] = []
        done = {p for p, end in ends.items() if end == 0}
        deadline = time.monotonic() + 20
        while len(done) < len(ends) and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            if msg.offset() + 1 >= ends[msg.partition()]:
                done.add(msg.partition())
            if msg.key() == key.encode():
                event = lifecycle_from_record(schemas().lifecycle.decode(msg.value()))
                found.append((msg.timestamp()[1], event))
        return found
    finally:
        consumer.close()


def test_a_termination_dated_ahead_takes_effect_at_its_time(stack: Stack,
                                                            tmp_path: Path) -> None:
    agent, owner = f"procure-bot-{_tag()}", f"sarah.{_tag()}@example.com"
    idle = f"idle-bot-{_tag()}"  # never asks: only the fan-out can report it
    stack.register(agent, owner)
    stack.register(idle, owner)
    effective = datetime.now(UTC) + AHEAD
    feed = tmp_path / "terminations.csv"
    feed.write_text("employee_id,email,status,effective_date\n"
                    f"E-{owner},{owner},terminated,{_iso(effective)}\n")
    as_of = datetime.now(UTC)
    batch = map_hr_rows(parse_hr_file(feed.read_text(), "csv"), HrConfig(), as_of=as_of)
    summary = publish_batch(stack.settings, batch)
    assert (summary.rows, summary.published) == (1, 1)
    status_key = f"principal:{owner}/status"
    written_before = _identity_records(stack.settings, status_key)

    with stack.client(agent_id=agent, audience=AUDIENCE, timeout=20) as gp:
        before = gp.authorize("vendor.read", "vendor:ACME")
        assert before.decided_at is not None and before.decided_at < effective, \
            "the machine was too slow to ask before the termination's time"
        assert before.decision == "ALLOW", before
        assert before.facts["owner_status"] == "active"

        time.sleep(max(0.0, (effective - datetime.now(UTC)).total_seconds()) + 0.05)
        after = gp.authorize("vendor.read", "vendor:ACME")
    assert (after.decision, after.reasons) == ("DENY", ("owner_inactive",)), after
    assert after.facts["owner_status"] == "offboarded"
    assert after.facts["owner_status_at"] == batch.events[0].event_time
    assert after.decided_at is not None and after.decided_at >= effective

    # Nothing was published under the status key between the import and the DENY: the
    # worker denied on its own clock. Later the fan-out writes the status back as in force.
    deadline = time.monotonic() + 20
    new: list[tuple[int, Any]] = []
    while not new and time.monotonic() < deadline:
        new = _identity_records(stack.settings, status_key)[len(written_before):]
    assert new, "the due termination was never written back as in force"
    decided_ms = after.decided_at.timestamp() * 1000
    assert all(ts > decided_ms for ts, _ in new), (new, decided_ms)
    assert {(e.status.value, e.event_time) for _, e in new} == {
        ("offboarded", batch.events[0].event_time)}

    read_topic(stack.settings, stack.settings.topics.orphans, schemas().orphan_alert,
               lambda rs: {agent, idle} <= {r["agent_id"] for r in rs}, timeout=20)
    time.sleep(3)  # room for a second alert, which must not come
    alerts = read_topic(stack.settings, stack.settings.topics.orphans, schemas().orphan_alert,
                        timeout=3)
    for bot in (agent, idle):
        mine = [a for a in alerts if a["agent_id"] == bot]
        assert len(mine) == 1, mine
        assert (mine[0]["owner"], mine[0]["owner_status"], mine[0]["owner_status_at"]) == (
            owner, "offboarded", batch.events[0].event_time)
    # The idle agent was reported by the fan-out of the written-back status, not by a use.
    assert [a["trigger"] for a in alerts if a["agent_id"] == idle] == ["owner_deactivated"]

    # The same file again, through the command line: nothing new is published.
    again = _cli(stack.settings, "import", "hr", str(feed), "--json",
                 "--as-of", _iso(as_of))
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == {"source": "hr-feed", "rows": 1, "events": 1,
                                        "published": 0, "skipped_duplicates": 1,
                                        "dry_run": False}


def test_an_entra_export_registers_agents_to_their_sponsors(stack: Stack,
                                                            tmp_path: Path) -> None:
    tag = _tag()
    export = json.loads((FIXTURES / "entra_agent_identities.json").read_text())
    for identity in export["value"]:
        identity["id"] = f"{identity['id'][:-7]}-{tag}"
        for sponsor in identity["sponsors"]:
            if "mail" in sponsor:
                sponsor["mail"] = sponsor["mail"].replace("@", f"+{tag}@")
    path = tmp_path / "agents.json"
    path.write_text(json.dumps(export))
    sarah = f"sarah.connor+{tag}@contoso.com"
    stack.register(f"other-{tag}", sarah)  # sarah is an active principal (HR knows her)
    run = _cli(stack.settings, "import", "entra-agents", str(path), "--json",
               "--default-purpose", "support")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["published"] == 6
    procure, _, support = (i["id"] for i in export["value"])

    with stack.client(agent_id=procure, audience=AUDIENCE, timeout=20) as gp:
        allowed = gp.authorize("vendor.read", "vendor:ACME")
        assert allowed.decision == "ALLOW", allowed
        assert allowed.facts["owner"] == sarah
    with stack.client(agent_id=support, audience=AUDIENCE, timeout=20) as gp:
        blocked = gp.authorize("ticket.update", "ticket:1")
        assert blocked.decision == "DENY" and "agent_inactive" in blocked.reasons, blocked

    again = _cli(stack.settings, "import", "entra-agents", str(path), "--json",
                 "--default-purpose", "support")
    assert json.loads(again.stdout)["published"] == 0, again.stdout
