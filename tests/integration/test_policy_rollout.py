"""Hot reload on a real broker: a pushed policy takes over on every worker at its activation
time (the intents' broker append time), survives restarts, and a bundle that cannot load is
refused while the last good policy keeps deciding."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from gatepass.codec.avro import schemas
from gatepass.core.policy import CedarPolicy
from gatepass.policy import DEFAULT_POLICY_DIR, load_policy, read_bundle
from gatepass.policy.topic import push, read_policy_topic
from support.stack import Stack, read_topic, running_stack

pytestmark = pytest.mark.integration
DELAY = timedelta(seconds=2)
CLOUD_READ = '''
@id("procurement.cloud-read")
permit (principal, action == Gatepass::Action::"cloud.read", resource)
when { principal.purpose == "procurement" };
'''


@pytest.fixture(scope="module")
def rollout(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(kafka_bootstrap, tmp_path_factory.mktemp("rollout"),
                       policy_rollout_delay=DELAY) as s:
        s.start_worker()
        yield s


def candidate(tmp: Path) -> CedarPolicy:
    folder = tmp / "candidate"
    shutil.copytree(DEFAULT_POLICY_DIR, folder)
    (folder / "scope" / "cloud.cedar").write_text(CLOUD_READ)
    return CedarPolicy.from_files(read_bundle(folder))


def readyz(stack: Stack) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"{stack.settings.web_url}/readyz", timeout=5) as r:
            return dict(json.loads(r.read()))
    except urllib.error.HTTPError as exc:  # 503 while not ready still has the body
        return dict(json.loads(exc.read()))


def wait_past(moment: datetime) -> None:
    while datetime.now(UTC) <= moment + timedelta(milliseconds=300):
        time.sleep(0.1)


def test_a_pushed_policy_decides_from_its_activation_time(rollout: Stack,
                                                          tmp_path: Path) -> None:
    agent, owner = f"procure-{uuid.uuid4().hex[:6]}", f"sarah-{uuid.uuid4().hex[:6]}"
    rollout.register(agent, owner)
    local = load_policy(None)
    new = candidate(tmp_path)
    assert new.version != local.version
    with rollout.client(agent_id=agent, audience="cloud-api", timeout=20) as gp:
        before = gp.authorize("cloud.read", "vm-1")
        assert (before.decision, before.reasons) == ("DENY", ("out_of_scope",))
        assert before.policy_version == local.version and before.policy_ids == ()

        activation, previous = push(rollout.settings, schemas(), new)
        assert previous is None and activation.version == new.version
        # Appended before the activation time: still the old policy, on every worker.
        early = gp.authorize("cloud.read", "vm-2")
        assert datetime.now(UTC) < activation.effective_at, "the test was too slow"
        assert (early.decision, early.policy_version) == ("DENY", local.version)

        wait_past(activation.effective_at)
        after = gp.authorize("cloud.read", "vm-3")
        assert (after.decision, after.reasons) == ("ALLOW", ("allowed",))
        assert after.policy_version == new.version
        assert after.policy_ids == ("procurement.cloud-read",)
        # What else the new bundle says is unchanged.
        order = gp.authorize("cloud.provision", "gpu-1")
        assert (order.decision, order.reasons) == ("DENY", ("out_of_scope",))
    assert readyz(rollout)["policy_version"] == new.version
    history = read_policy_topic(rollout.settings, schemas())
    assert new.version in history.bundles
    assert [a.version for a in history.activations] == [new.version]

    # Rolling back is one more push of the old bundle.
    back, previous = push(rollout.settings, schemas(), local)
    assert previous == new.version
    wait_past(back.effective_at)
    with rollout.client(agent_id=agent, audience="cloud-api", timeout=20) as gp:
        again = gp.authorize("cloud.read", "vm-4")
    assert (again.decision, again.policy_version) == ("DENY", local.version)


def test_a_restarted_worker_decides_with_the_pushed_policy(rollout: Stack,
                                                           tmp_path: Path) -> None:
    new = candidate(tmp_path)
    activation, _ = push(rollout.settings, schemas(), new)
    wait_past(activation.effective_at)
    for worker in rollout.workers:
        worker.stop()
    rollout.workers.clear()
    rollout.start_worker()  # starts from the local bundle, then reads the topic
    agent, owner = f"procure-{uuid.uuid4().hex[:6]}", f"sarah-{uuid.uuid4().hex[:6]}"
    rollout.register(agent, owner)
    with rollout.client(agent_id=agent, audience="cloud-api", timeout=30) as gp:
        verdict = gp.authorize("cloud.read", "vm-9")
    assert (verdict.decision, verdict.policy_version) == ("ALLOW", new.version)


def test_a_bundle_the_worker_cannot_load_is_refused_and_the_last_good_decides(
        rollout: Stack, tmp_path: Path) -> None:
    good = candidate(tmp_path)
    activation, _ = push(rollout.settings, schemas(), good)
    wait_past(activation.effective_at)
    # Written around `push` (which validates): a bundle whose policy does not parse.
    broken_files = dict(good.files)
    broken_files["scope/cloud.cedar"] = '@id("x") permit (principal, action, resource) when {'
    bad_version = "cedar-" + "0" * 16
    now = datetime.now(UTC).replace(microsecond=0)
    codec = schemas()
    topic = rollout.settings.topics.policies
    rollout.produce_raw(topic, f"bundle:{bad_version}".encode(), codec.policy_bundle.encode({
        "version": bad_version, "files": broken_files, "pushed_at": now, "pushed_by": "t"}),
        partition=0)
    effective = now + DELAY
    rollout.produce_raw(topic, b"activation:" + uuid.uuid4().hex.encode(),
                        codec.policy_activation.encode({
                            "activation_id": str(uuid.uuid4()), "version": bad_version,
                            "effective_at": effective, "pushed_at": now, "pushed_by": "t",
                            "previous_version": good.version}), partition=0)
    wait_past(effective)
    agent, owner = f"procure-{uuid.uuid4().hex[:6]}", f"sarah-{uuid.uuid4().hex[:6]}"
    rollout.register(agent, owner)
    with rollout.client(agent_id=agent, audience="cloud-api", timeout=20) as gp:
        verdict = gp.authorize("cloud.read", "vm-5")
    assert (verdict.decision, verdict.policy_version) == ("ALLOW", good.version)
    status = readyz(rollout)
    assert status["policy_refused"] == [bad_version]
    assert status["policy_version"] == good.version


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEPASS_")}
    env["GATEPASS_POLICY_ROLLOUT_DELAY_SECONDS"] = str(int(DELAY.total_seconds()))
    s = stack.settings
    return subprocess.run(
        [sys.executable, "-m", "gatepass", "--bootstrap", s.bootstrap, "--topic-prefix",
         s.topic_prefix, "--home", str(s.home), *args],
        capture_output=True, text=True, timeout=120, env=env)


def test_push_and_replay_from_the_command_line(rollout: Stack, tmp_path: Path) -> None:
    """`policy push` puts the shipped bundle back in force; `policy replay` of it over its
    own decisions reports zero changes, and a candidate's diff names what it changes."""
    local = load_policy(None)
    pushed = cli(rollout, "policy", "push", str(DEFAULT_POLICY_DIR), "--json")
    assert pushed.returncode == 0, pushed.stderr
    body = json.loads(pushed.stdout)
    assert body["pushed"] is True and body["version"] == local.version
    wait_past(datetime.fromisoformat(body["effective_at"]))
    since = datetime.now(UTC)
    agent, owner = f"procure-{uuid.uuid4().hex[:6]}", f"sarah-{uuid.uuid4().hex[:6]}"
    rollout.register(agent, owner)
    with rollout.client(agent_id=agent, audience="api", timeout=20) as gp:
        decided = [gp.authorize("cloud.read", "vm-7"),
                   gp.authorize("purchase_order.create", "vendor:ACME", amount=Decimal("120")),
                   gp.authorize("vendor.read", "vendor:ACME")]
    assert [v.policy_version for v in decided] == [local.version] * 3
    ids = {v.intent_id for v in decided}
    read_topic(rollout.settings, rollout.settings.topics.audit, schemas().decision_record,
               lambda rs: ids <= {r["intent"]["intent_id"] for r in rs})

    same = cli(rollout, "policy", "replay", "--candidate", str(DEFAULT_POLICY_DIR),
               "--since", since.isoformat(), "--json", "--out", str(tmp_path / "same.json"))
    assert same.returncode == 0, same.stderr
    report = json.loads(same.stdout)
    assert (report["replayed"], report["changed"], report["unchanged"]) == (3, 0, 3)
    assert json.loads((tmp_path / "same.json").read_text()) == report

    folder = tmp_path / "freeze"
    shutil.copytree(DEFAULT_POLICY_DIR, folder)
    (folder / "scope" / "freeze.cedar").write_text(
        '@id("freeze.vendors") forbid (principal, action == Gatepass::Action::"vendor.read", '
        "resource);")
    diff = cli(rollout, "policy", "replay", "--candidate", str(folder), "--since",
               since.isoformat(), "--out", str(tmp_path / "diff.json"))
    assert diff.returncode == 1, diff.stderr
    assert "ALLOW -> DENY" in diff.stdout and "freeze.vendors" in diff.stdout
    written = json.loads((tmp_path / "diff.json").read_text())
    assert written["changes"] == {"ALLOW -> DENY": 1}
    assert written["examples"][0]["action"] == "vendor.read"
    # Replay emitted nothing: the audit topic holds only the three decisions since then.
    audit = read_topic(rollout.settings, rollout.settings.topics.audit,
                       schemas().decision_record,
                       lambda rs: ids <= {r["intent"]["intent_id"] for r in rs})
    assert len([r for r in audit if r["decided_at"] >= since]) == 3


def test_push_refuses_an_invalid_bundle_or_failing_cases(rollout: Stack,
                                                         tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    shutil.copytree(DEFAULT_POLICY_DIR, folder)
    (folder / "scope" / "freeze.cedar").write_text(
        '@id("freeze.all") forbid (principal, action, resource);')
    before = read_policy_topic(rollout.settings, schemas())
    failing = cli(rollout, "policy", "push", str(folder))
    assert failing.returncode == 1 and "not pushed" in failing.stderr
    (folder / "scope" / "freeze.cedar").write_text("permit (principal, action, resource);")
    invalid = cli(rollout, "policy", "push", str(folder))
    assert invalid.returncode == 1 and "scope/freeze.cedar:1" in invalid.stderr
    after = read_policy_topic(rollout.settings, schemas())
    assert after.activations == before.activations and after.bundles == before.bundles
