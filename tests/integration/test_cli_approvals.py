"""`gatepass intent` on a high-risk action and `gatepass approvals list|approve|deny`, as a
person at the command line uses them, against a real broker and worker."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from integration.test_cli import cli
from support.stack import Stack

pytestmark = pytest.mark.integration
AUDIENCE = "procurement-api"


def _big_order(stack: Stack, agent: str) -> dict[str, object]:
    run = cli(stack.settings, "intent", "--agent", agent, "--action", "purchase_order.create",
              "--resource", "vendor:ACME", "--amount", "50000.00", "--currency", "USD",
              "--audience", AUDIENCE, "--timeout", "20", "--json")
    assert run.returncode == 1, run.stderr  # not an ALLOW (yet)
    verdict: dict[str, object] = json.loads(run.stdout)
    assert verdict["decision"] == "PENDING", verdict
    assert verdict["reasons"] == ["pending_approval"]
    assert isinstance(verdict["approval"], dict) and verdict["credential"] is None
    return verdict


def _listed(stack: Stack, owner: str, intent_id: object) -> dict[str, object]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        run = cli(stack.settings, "approvals", "list", "--as", owner, "--json")
        assert run.returncode == 0, run.stderr
        rows = [json.loads(line) for line in run.stdout.splitlines()]
        mine = [r for r in rows if r["intent_id"] == intent_id]
        if mine and "code" in mine[0]:
            return mine[0]
        time.sleep(0.5)
    raise AssertionError("the request never showed up with a code in the owner's inbox")


def test_approve_on_the_command_line(stack: Stack) -> None:
    agent, owner = f"cli-bot-{uuid.uuid4().hex[:6]}", f"sarah-{uuid.uuid4().hex[:6]}"
    stack.register(agent, owner)
    time.sleep(1.0)  # the registration reaches the worker's identity view
    verdict = _big_order(stack, agent)
    row = _listed(stack, owner, verdict["intent_id"])
    assert row["status"] == "pending" and row["approvers"] == [owner]
    assert row["amount"] == "50000.00" and row["agent_id"] == agent
    # somebody else cannot list the owner's code
    other = cli(stack.settings, "approvals", "list", "--as", "mallory", "--json")
    assert verdict["intent_id"] not in other.stdout
    run = cli(stack.settings, "approvals", "approve", str(verdict["intent_id"]), "--as", owner,
              "--code", str(row["code"]))
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith("ALLOW ") and "approved" in run.stdout
    # the same code once more: the first decision won
    again = cli(stack.settings, "approvals", "deny", str(verdict["intent_id"]), "--as", owner,
                "--code", str(row["code"]), "--json")
    assert again.returncode == 1
    assert json.loads(again.stdout)["reason"] == "approval_replayed"
    settled = cli(stack.settings, "approvals", "list", "--all", "--json")
    rows = [json.loads(line) for line in settled.stdout.splitlines()]
    (mine,) = [r for r in rows if r["intent_id"] == verdict["intent_id"]]
    assert mine["status"] == "ALLOW" and mine["approver"] == owner


def test_a_wrong_code_is_refused_with_its_reason(stack: Stack) -> None:
    agent, owner = f"cli-bot-{uuid.uuid4().hex[:6]}", f"sarah-{uuid.uuid4().hex[:6]}"
    stack.register(agent, owner)
    time.sleep(1.0)  # the registration reaches the worker's identity view
    verdict = _big_order(stack, agent)
    _listed(stack, owner, verdict["intent_id"])
    run = cli(stack.settings, "approvals", "approve", str(verdict["intent_id"]), "--as", owner,
              "--code", "not-the-code")
    assert run.returncode == 1
    assert run.stdout.startswith("refused [approval_forged]")


def test_deciding_an_unknown_intent_is_an_error(stack: Stack) -> None:
    run = cli(stack.settings, "approvals", "approve", str(uuid.uuid4()), "--as", "sarah",
              "--code", "x")
    assert run.returncode == 2 and "[approval_unknown]" in run.stderr
