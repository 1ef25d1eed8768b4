"""The `gatepass` command line as scripts use it: real subprocesses, a real broker and worker.

README's CLI section is the contract: commands, flags, exit codes (0 success, 1 DENY or
invalid pass, 2 usage/configuration/broker error as `gatepass: error [<code>]: ...`) and
output shapes. Every command runs as `python -m gatepass` with explicit global flags against
the module's `stack` (its own topic prefix, key store and worker).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from gatepass.codec.avro import schemas
from gatepass.config import Settings
from support.broker import free_ports
from support.stack import Stack, read_topic

pytestmark = pytest.mark.integration
AUDIENCE = "procurement-api"
# Every field `intent --json` promises (README, CLI table).
INTENT_JSON_FIELDS = {"intent_id", "agent_id", "decision", "reasons", "detail", "credential",
                      "credential_id", "expires_at", "policy_version", "decided_at",
                      "latency_ms", "approval"}
# Private JWK members (RFC 7517/7518); none may ever be printed.
PRIVATE_JWK_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "k"}


def _env() -> dict[str, str]:
    """The caller's environment without GATEPASS_* settings: only the flags count."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("GATEPASS_") or k == "GATEPASS_SCHEMAS_DIR"}


def cli(settings: Settings, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gatepass", "--bootstrap", settings.bootstrap,
         "--topic-prefix", settings.topic_prefix, "--home", str(settings.home), *args],
        capture_output=True, text=True, timeout=timeout, env=_env())


def _agent(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


def _json_line(run: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    lines = run.stdout.splitlines()
    assert len(lines) == 1 and run.stdout.endswith("\n"), run.stdout
    parsed = json.loads(lines[0])
    assert isinstance(parsed, dict)
    return parsed


def _segment(token: str, index: int) -> dict[str, Any]:
    part = token.split(".")[index]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return decoded


def _record_count(settings: Settings, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": settings.bootstrap, "group.id": "test-count"})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        total = 0
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            total += high - low
        return total
    finally:
        consumer.close()


@dataclass
class Story:
    agent: str
    owner: str
    registered: subprocess.CompletedProcess[str]
    activated: subprocess.CompletedProcess[str]
    allow_run: subprocess.CompletedProcess[str]
    allow: dict[str, Any]
    deny_run: subprocess.CompletedProcess[str]
    deny: dict[str, Any]

    @property
    def token(self) -> str:
        token = self.allow["credential"]
        assert isinstance(token, str)
        return token


@pytest.fixture(scope="module")
def story(stack: Stack) -> Story:
    """principal --status active, register-agent, then an ALLOW and a DENY intent (--json).

    The owner comes first, as in the demo: an agent whose owner is still unknown a moment
    after its registration gets an orphan alert (trigger agent_registered, owner status
    unknown), and the offboarding alert below would then be the second line of
    `tail orphans`.
    """
    s = stack.settings
    agent, owner = _agent("cli-bot"), _agent("cli-owner")
    activated = cli(s, "principal", owner, "--status", "active")
    registered = cli(s, "register-agent", agent, "--owner", owner, "--purpose", "procurement",
                     "--department", "finance", "--contact", "ops@example.com")
    allow_run = cli(s, "intent", "--agent", agent, "--action", "purchase_order.create",
                    "--resource", "vendor:ACME", "--amount", "120.00", "--currency", "USD",
                    "--audience", AUDIENCE, "--json")
    deny_run = cli(s, "intent", "--agent", agent, "--action", "cloud.provision",
                   "--resource", "gpu-cluster", "--audience", AUDIENCE, "--json")
    return Story(agent=agent, owner=owner, registered=registered, activated=activated,
                 allow_run=allow_run, allow=_json_line(allow_run), deny_run=deny_run,
                 deny=_json_line(deny_run))


def verify(stack: Stack, token: str, *, audience: str = AUDIENCE, amount: str = "120.00",
           jwks: bool = True) -> subprocess.CompletedProcess[str]:
    args = ["verify", "--audience", audience, "--action", "purchase_order.create",
            "--resource", "vendor:ACME", "--amount", amount, "--currency", "USD"]
    if jwks:
        args += ["--jwks", f"{stack.settings.web_url}/.well-known/jwks.json"]
    return cli(stack.settings, *args, token)


# ---- register, principal, intent --------------------------------------------------------

def test_lifecycle_commands_confirm_what_they_wrote(story: Story) -> None:
    assert (story.registered.returncode, story.registered.stdout) == (
        0, f"registered {story.agent}: owner={story.owner} purpose=procurement\n")
    assert (story.activated.returncode, story.activated.stdout) == (
        0, f"principal {story.owner}: active\n")


def test_an_allowed_intent_prints_one_json_line_and_exits_0(story: Story) -> None:
    assert story.allow_run.returncode == 0, story.allow_run.stderr
    v = story.allow
    assert INTENT_JSON_FIELDS <= set(v), INTENT_JSON_FIELDS - set(v)
    assert (v["decision"], v["reasons"], v["agent_id"]) == ("ALLOW", ["allowed"], story.agent)
    assert str(uuid.UUID(v["intent_id"])) == v["intent_id"]
    assert isinstance(v["credential"], str) and v["credential"].count(".") == 2
    assert _segment(v["credential"], 1)["jti"] == v["credential_id"]
    assert _segment(v["credential"], 1)["intent_id"] == v["intent_id"]
    assert datetime.fromisoformat(v["expires_at"]) > datetime.fromisoformat(v["decided_at"])
    assert v["policy_version"] and isinstance(v["latency_ms"], int | float)


def test_an_out_of_scope_intent_is_a_deny_that_exits_1(story: Story) -> None:
    assert story.deny_run.returncode == 1, (story.deny_run.stdout, story.deny_run.stderr)
    v = story.deny
    assert INTENT_JSON_FIELDS <= set(v)
    assert (v["decision"], v["reasons"]) == ("DENY", ["out_of_scope"])
    assert v["credential"] is None and v["credential_id"] is None and v["expires_at"] is None
    assert "cloud.provision" in v["detail"]


def test_intent_without_json_prints_the_verdict_readably(stack: Stack, story: Story) -> None:
    run = cli(stack.settings, "intent", "--agent", story.agent, "--action", "vendor.read",
              "--resource", "vendor:ACME", "--audience", AUDIENCE)
    assert run.returncode == 0, run.stderr
    first, *rest = run.stdout.splitlines()
    assert first.startswith("ALLOW allowed  intent ")
    assert any(line.strip().count(".") == 2 for line in rest)  # the pass, on its own line


# ---- verify ------------------------------------------------------------------------------

def test_verify_accepts_the_pass_with_the_workers_jwks(stack: Stack, story: Story) -> None:
    run = verify(stack, story.token)
    assert run.returncode == 0, (run.stdout, run.stderr)
    assert run.stdout.startswith("valid: ")
    for part in (story.allow["credential_id"], story.agent, f"owner {story.owner}",
                 f"intent {story.allow['intent_id']}"):
        assert part in run.stdout


def test_verify_compares_amounts_by_value(stack: Stack, story: Story) -> None:
    run = verify(stack, story.token, amount="120")
    assert run.returncode == 0 and run.stdout.startswith("valid: "), run.stdout


def test_verify_rejects_another_amount_as_scope_mismatch(stack: Stack, story: Story) -> None:
    run = verify(stack, story.token, amount="121.00")
    assert run.returncode == 1
    assert run.stdout.startswith("invalid: scope_mismatch"), run.stdout


def test_verify_rejects_another_audience(stack: Stack, story: Story) -> None:
    run = verify(stack, story.token, audience="payments-api")
    assert run.returncode == 1
    assert run.stdout.startswith("invalid: audience_mismatch"), run.stdout


def test_verify_without_jwks_uses_the_local_key_store(stack: Stack, story: Story) -> None:
    """--home points at the worker's key store (stack.settings.home/keys), so its keys verify."""
    assert (stack.settings.home / "keys").is_dir()
    run = verify(stack, story.token, jwks=False)
    assert run.returncode == 0, (run.stdout, run.stderr)
    assert run.stdout.startswith("valid: ")


def test_verify_with_another_key_store_fails_on_the_unknown_key(stack: Stack, story: Story,
                                                              tmp_path: Any) -> None:
    other = stack.settings.with_(home=tmp_path)
    missing = cli(other, "jwks")  # reading public keys never creates a signing key
    assert missing.returncode == 2 and "[keystore_error]" in missing.stderr, missing.stderr
    assert not (tmp_path / "keys").exists()
    assert cli(other, "keys", "rotate").returncode == 0  # a key store with another key
    assert cli(other, "jwks").returncode == 0
    run = cli(other, "verify", "--audience", AUDIENCE, "--action", "purchase_order.create",
              "--resource", "vendor:ACME", "--amount", "120.00", "--currency", "USD",
              story.token)
    assert run.returncode == 1
    assert run.stdout.startswith("invalid: kid_unknown"), run.stdout


def test_a_second_cli_verify_of_the_same_pass_is_not_a_replay(stack: Stack,
                                                             story: Story) -> None:
    """Single use is per verifier: each `gatepass verify` is a new process with a new, empty
    in-memory ReplayCache, so presenting the same pass to the CLI twice is valid twice. A
    target system that keeps one PassVerifier (like the demo's procurement API) rejects the
    second presentation as `replayed` (test_pipeline.test_the_demo_story)."""
    first, second = verify(stack, story.token), verify(stack, story.token)
    assert (first.returncode, second.returncode) == (0, 0), (first.stdout, second.stdout)
    assert first.stdout.startswith("valid: ") and second.stdout.startswith("valid: ")


# ---- jwks --------------------------------------------------------------------------------

def test_jwks_prints_only_public_keys_and_the_signing_kid(stack: Stack, story: Story) -> None:
    run = cli(stack.settings, "jwks")
    assert run.returncode == 0, run.stderr
    jwks = _json_line(run)
    assert jwks["keys"]
    for key in jwks["keys"]:
        assert not PRIVATE_JWK_MEMBERS & set(key), key
        assert (key["kty"], key["crv"]) == ("OKP", "Ed25519")
    header = _segment(story.token, 0)
    assert header["kid"] in {k["kid"] for k in jwks["keys"]}
    assert (header["alg"], header["typ"]) == ("EdDSA", "gatepass-pass+jwt")
    # The CLI's view of the key store is the worker's.
    with urllib.request.urlopen(f"{stack.settings.web_url}/.well-known/jwks.json",
                                timeout=10) as resp:
        published = json.loads(resp.read())
    assert {k["kid"] for k in published["keys"]} == {k["kid"] for k in jwks["keys"]}


# ---- agent-status --------------------------------------------------------------------------

def test_a_suspended_agent_is_denied_agent_inactive(stack: Stack) -> None:
    s, agent, owner = stack.settings, _agent("susp-bot"), _agent("susp-owner")
    assert cli(s, "principal", owner, "--status", "active").returncode == 0
    assert cli(s, "register-agent", agent, "--owner", owner,
               "--purpose", "procurement").returncode == 0
    ask = ("intent", "--agent", agent, "--action", "vendor.read", "--resource", "vendor:ACME",
           "--audience", AUDIENCE, "--json")
    before = cli(s, *ask)
    assert (before.returncode, _json_line(before)["decision"]) == (0, "ALLOW"), before.stdout
    suspended = cli(s, "agent-status", agent, "--status", "suspended")
    assert (suspended.returncode, suspended.stdout) == (0, f"agent {agent}: suspended\n")
    after = cli(s, *ask)
    v = _json_line(after)
    assert after.returncode == 1
    assert (v["decision"], v["reasons"], v["credential"]) == ("DENY", ["agent_inactive"], None)


# ---- tail ----------------------------------------------------------------------------------

def _wait_for_audit(stack: Stack, intent_ids: set[str]) -> None:
    """The worker writes audit/denials right after the verdict, without awaiting each ack."""
    read_topic(stack.settings, stack.settings.topics.audit, schemas().decision_record,
               lambda rs: intent_ids <= {r["intent"]["intent_id"] for r in rs})


@pytest.mark.parametrize("topic", ["verdicts", "denials", "audit"])
@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_tail_prints_one_line_per_record_and_never_the_pass(stack: Stack, story: Story,
                                                             topic: str, as_json: bool) -> None:
    _wait_for_audit(stack, {story.allow["intent_id"], story.deny["intent_id"]})
    s = stack.settings
    name = {"verdicts": s.topics.verdicts, "denials": s.topics.denials,
            "audit": s.topics.audit}[topic]
    before = _record_count(s, name)
    run = cli(s, "tail", topic, *(["--json"] if as_json else []))
    after = _record_count(s, name)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert before == after and len(lines) == before > 0, (before, after, len(lines))
    assert story.token not in run.stdout and story.token not in run.stderr
    assert story.token.split(".")[2] not in run.stdout  # not even the signature
    allow_id, deny_id = story.allow["intent_id"], story.deny["intent_id"]
    if as_json:
        records = [json.loads(line) for line in lines]
        assert all("credential" not in r or not isinstance(r["credential"], str)
                   for r in records)
        ids = {r["intent_id"] if topic == "verdicts" else r["intent"]["intent_id"]
               for r in records}
        assert deny_id in ids
        assert (allow_id in ids) == (topic != "denials")
        if topic == "verdicts":
            (mine,) = [r for r in records if r["intent_id"] == allow_id]
            assert mine["credential_id"] == story.allow["credential_id"]
    elif topic == "verdicts":
        assert any(f"intent={allow_id} pass={story.allow['credential_id']}" in line
                   and " ALLOW " in line for line in lines)
        assert any(f"intent={deny_id}" in line and "[out_of_scope]" in line for line in lines)
    else:
        assert any(f"{story.agent} cloud.provision gpu-cluster [out_of_scope]" in line
                   for line in lines)
        allowed = [line for line in lines
                   if f"{story.agent} purchase_order.create vendor:ACME 120 USD [allowed]"
                   in line]
        assert len(allowed) == (0 if topic == "denials" else 1)


def test_tail_max_stops_after_n_records(stack: Stack, story: Story) -> None:
    _wait_for_audit(stack, {story.allow["intent_id"], story.deny["intent_id"]})
    assert _record_count(stack.settings, stack.settings.topics.audit) >= 2
    run = cli(stack.settings, "tail", "audit", "--max", "1")
    assert run.returncode == 0
    assert len(run.stdout.splitlines()) == 1


def test_tail_keeps_one_line_per_record_for_hostile_input(stack: Stack) -> None:
    s, agent, owner = stack.settings, _agent("evil-bot"), _agent("evil-owner")
    assert cli(s, "principal", owner, "--status", "active").returncode == 0
    assert cli(s, "register-agent", agent, "--owner", owner,
               "--purpose", "procurement").returncode == 0
    forged = "12:00:00.000 ALLOW forged-bot purchase_order.create vendor:EVIL [allowed]"
    run = cli(s, "intent", "--agent", agent, "--action", "vendor.read",
              "--resource", f"vendor:ACME\n{forged}", "--audience", AUDIENCE, "--json")
    v = _json_line(run)
    assert (run.returncode, v["decision"], v["reasons"]) == (1, "DENY", ["invalid_intent"])
    _wait_for_audit(stack, {v["intent_id"]})
    for topic, name in (("denials", s.topics.denials), ("audit", s.topics.audit)):
        count = _record_count(s, name)
        out = cli(s, "tail", topic).stdout
        assert not any(line.startswith(forged) for line in out.splitlines()), \
            f"tail {topic} printed the agent's forged line as a record of its own"
        assert len(out.splitlines()) == count, f"tail {topic}: {count} records, " \
            f"{len(out.splitlines())} lines"


def test_tail_dead_letter_shows_a_garbage_intent(stack: Stack) -> None:
    s = stack.settings
    stack.produce_raw(s.topics.intents, b"garbage-bot", b"\x00not avro " + uuid.uuid4().bytes)
    lines: list[str] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        run = cli(s, "tail", "dead-letter")
        assert run.returncode == 0, run.stderr
        lines = [line for line in run.stdout.splitlines() if "DEAD-LETTER" in line]
        if lines:
            break
        time.sleep(0.3)
    assert len(lines) == 1, lines
    assert f" DEAD-LETTER {s.topics.intents}[" in lines[0]
    assert "decode_error" in lines[0]


def test_offboarding_the_owner_shows_an_orphan_alert_in_tail(stack: Stack,
                                                             story: Story) -> None:
    s = stack.settings
    run = cli(s, "principal", story.owner, "--status", "offboarded")
    assert (run.returncode, run.stdout) == (0, f"principal {story.owner}: offboarded\n")
    lines: list[str] = []
    deadline = time.monotonic() + 20  # the alert is asynchronous: fan-out, check, alert
    while time.monotonic() < deadline:
        tail = cli(s, "tail", "orphans", "--max", "1")
        assert tail.returncode == 0, tail.stderr
        lines = tail.stdout.splitlines()
        if lines:
            break
        time.sleep(0.3)
    assert len(lines) == 1, lines
    assert " ORPHAN " in lines[0] and story.agent in lines[0]
    assert f"owner={story.owner} (offboarded)" in lines[0]
    assert "trigger=owner_deactivated" in lines[0]
    # ... and the agent is now denied on use.
    ghost = cli(s, "intent", "--agent", story.agent, "--action", "vendor.read",
                "--resource", "vendor:ACME", "--audience", AUDIENCE, "--json")
    assert ghost.returncode == 1
    assert _json_line(ghost)["reasons"] == ["owner_inactive"]


# ---- errors --------------------------------------------------------------------------------

def test_intent_against_missing_topics_is_a_broker_error(stack: Stack) -> None:
    missing = stack.settings.with_(topic_prefix=f"missing{uuid.uuid4().hex[:8]}.")
    run = cli(missing, "intent", "--agent", "any-bot", "--action", "vendor.read",
              "--resource", "vendor:ACME", "--audience", AUDIENCE, "--json")
    assert run.returncode == 2
    assert run.stdout == ""
    assert "gatepass: error [broker_unavailable]" in run.stderr, run.stderr


def test_tail_of_missing_topics_is_a_broker_error(stack: Stack) -> None:
    missing = stack.settings.with_(topic_prefix=f"missing{uuid.uuid4().hex[:8]}.")
    run = cli(missing, "tail", "verdicts")
    assert run.returncode == 2
    assert "gatepass: error [broker_unavailable]" in run.stderr, run.stderr


def test_intent_against_an_unreachable_broker_is_a_broker_error(stack: Stack) -> None:
    (port,) = free_ports(1)  # nobody listens there
    down = stack.settings.with_(bootstrap=f"127.0.0.1:{port}")
    run = cli(down, "intent", "--agent", "any-bot", "--action", "vendor.read",
              "--resource", "vendor:ACME", "--audience", AUDIENCE)
    assert run.returncode == 2
    assert "gatepass: error [broker_unavailable]" in run.stderr, run.stderr[-500:]


def test_no_worker_is_an_sdk_timeout_deny(stack: Stack) -> None:
    lonely = stack.settings.with_(topic_prefix=f"noworker{uuid.uuid4().hex[:8]}.")
    # register-agent creates the topics (it publishes to the identity topic); nobody decides.
    assert cli(lonely, "register-agent", "lonely-bot", "--owner", "nobody",
               "--purpose", "procurement").returncode == 0
    run = cli(lonely, "intent", "--agent", "lonely-bot", "--action", "vendor.read",
              "--resource", "vendor:ACME", "--audience", AUDIENCE, "--timeout", "1", "--json")
    assert run.returncode == 1
    v = _json_line(run)
    assert (v["decision"], v["reasons"], v["credential"]) == ("DENY", ["sdk_timeout"], None)


def test_an_invalid_setting_is_a_config_error(stack: Stack) -> None:
    run = cli(stack.settings, "--partitions", "0", "jwks")
    assert run.returncode == 2
    assert "gatepass: error [config_invalid]" in run.stderr, run.stderr
