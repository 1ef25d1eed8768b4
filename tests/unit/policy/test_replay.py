"""`replay`: re-deciding recorded decisions under a candidate policy, purely."""

from __future__ import annotations

import shutil
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from gatepass.codec.records import facts_to_record, intent_to_record
from gatepass.core import (
    AgentRegistered,
    AgentStatus,
    AgentStatusChanged,
    Freshness,
    IdentityState,
    Intent,
    PrincipalStatus,
    PrincipalStatusChanged,
    decide,
)
from gatepass.core.policy import CedarPolicy
from gatepass.policy import DEFAULT_POLICY_DIR, load_policy, read_bundle
from gatepass.policy.replay import replay

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
FRESH = Freshness(max_age=timedelta(minutes=2), max_skew=timedelta(seconds=30))


def world() -> IdentityState:
    state = IdentityState()
    for owner, status in (("sarah", PrincipalStatus.ACTIVE), ("gone", PrincipalStatus.OFFBOARDED)):
        state.apply(PrincipalStatusChanged(principal_id=owner, status=status, event_time=T0,
                                           source="hr"))
    for agent, owner, purpose in (("procure-bot", "sarah", "procurement"),
                                  ("ghost-bot", "gone", "procurement"),
                                  ("infra-bot", "sarah", "infrastructure"),
                                  ("paused-bot", "sarah", "support")):
        state.apply(AgentRegistered(agent_id=agent, owner=owner, purpose=purpose,
                                    department="finance", event_time=T0, source="entra"))
    state.apply(AgentStatusChanged(agent_id="paused-bot", status=AgentStatus.SUSPENDED,
                                   event_time=T0, source="entra"))
    return state


def record(policy: CedarPolicy, state: IdentityState, agent: str, action: str,
           amount: str | None = None, minute: int = 0, **intent_fields: Any) -> dict[str, Any]:
    at = T0 + timedelta(hours=1, minutes=minute)
    intent = Intent(intent_id=str(uuid.uuid4()), agent_id=agent, action=action,
                    resource="r-1", audience="api", requested_at=at,
                    amount=None if amount is None else Decimal(amount),
                    currency=None if amount is None else "USD", **intent_fields)
    result = decide(intent, state, policy, now=at, freshness=FRESH, ready=True)
    return {"intent": intent_to_record(intent), "decision": result.decision.value,
            "reasons": [r.value for r in result.reasons], "policy_version": policy.version,
            "policy_ids": list(result.policy_ids), "decided_at": at,
            "facts": facts_to_record(result.facts)}


def history(policy: CedarPolicy) -> list[dict[str, Any]]:
    state = world()
    return [
        record(policy, state, "procure-bot", "purchase_order.create", "120.00", 0),
        record(policy, state, "procure-bot", "purchase_order.create", "20000.00", 1),
        record(policy, state, "procure-bot", "cloud.read", None, 2),
        record(policy, state, "ghost-bot", "vendor.read", None, 3),
        record(policy, state, "infra-bot", "cloud.read", None, 4),
        record(policy, state, "paused-bot", "ticket.update", None, 5),
        record(policy, state, "procure-bot", "nothing.declared", None, 6),
    ]


def edited(tmp_path: Path, name: str, text: str) -> CedarPolicy:
    folder = tmp_path / "candidate"
    shutil.copytree(DEFAULT_POLICY_DIR, folder)
    (folder / name).write_text(text)
    return CedarPolicy.from_files(read_bundle(folder))


def test_the_current_policy_over_its_own_history_changes_nothing() -> None:
    policy = load_policy(None)
    report = replay(history(policy), policy)
    assert report.replayed == 7 and report.changed == 0 and report.unchanged == 7
    assert report.other_policies == 0 and not report.examples
    assert report.by_version == {policy.version: 7}


def test_a_new_permit_shows_up_as_deny_to_allow(tmp_path: Path) -> None:
    policy = load_policy(None)
    candidate = edited(tmp_path, "scope/cloud.cedar", '''
@id("procurement.cloud-read")
permit (principal, action == Gatepass::Action::"cloud.read", resource)
when { principal.purpose == "procurement" };''')
    report = replay(history(policy), candidate)
    assert report.changes == {"DENY -> ALLOW": 1}
    (example,) = report.examples
    assert example["action"] == "cloud.read" and example["agent_id"] == "procure-bot"
    assert example["before"]["reasons"] == ["out_of_scope"]
    assert example["after"] == {"decision": "ALLOW", "reasons": ["allowed"],
                                "policy_ids": ["procurement.cloud-read"],
                                "detail": example["after"]["detail"]}
    # The ghost agent stays denied whatever the policy says: identity checks come first.
    assert report.unchanged == 6


def test_a_lower_approval_threshold_turns_allows_into_pending(tmp_path: Path) -> None:
    policy = load_policy(None)
    spend = (DEFAULT_POLICY_DIR / "approval" / "spend.cedar").read_text().replace(
        'decimal("10000.0000")', 'decimal("100.0000")')
    report = replay(history(policy), edited(tmp_path, "approval/spend.cedar", spend))
    assert report.changes == {"ALLOW -> PENDING": 1}
    assert report.examples[0]["after"]["policy_ids"] == ["procurement.orders",
                                                         "approval.large-order"]


def test_a_forbid_shows_up_as_allow_to_deny_and_pending_to_deny(tmp_path: Path) -> None:
    policy = load_policy(None)
    candidate = edited(tmp_path, "scope/freeze.cedar", '''
@id("freeze.orders")
forbid (principal, action == Gatepass::Action::"purchase_order.create", resource);''')
    report = replay(history(policy), candidate)
    assert report.changes == {"ALLOW -> DENY": 1, "PENDING -> DENY": 1}
    assert all(e["after"]["policy_ids"] == ["freeze.orders"] for e in report.examples)
    assert all(e["after"]["reasons"] == ["out_of_scope"] for e in report.examples)


def test_records_the_policy_did_not_decide_are_counted_not_replayed() -> None:
    policy = load_policy(None)
    recs = history(policy)
    stale = dict(recs[0], reasons=["stale_intent"], decision="DENY")
    final = dict(recs[1], reasons=["approved"], decision="ALLOW",
                 decided_at=recs[1]["decided_at"] + timedelta(minutes=1))
    orphan_final = dict(recs[0], intent=dict(recs[0]["intent"], intent_id=str(uuid.uuid4())),
                        reasons=["approval_expired"], decision="DENY")
    chained = record(policy, world(), "procure-bot", "vendor.read", None, 9,
                     delegation_chain=("infra-bot",))
    limited = dict(recs[2], intent=dict(recs[2]["intent"], intent_id=str(uuid.uuid4())),
                   reasons=["limit_exceeded"], decision="DENY")
    report = replay([stale, recs[1], final, orphan_final, chained, limited], policy)
    assert report.replayed == 1 and report.unchanged == 1  # the PENDING, not its final
    assert report.skipped == {"not decided by policy": 1, "final approval outcome only": 1,
                              "delegation chain": 1, "stateful limit": 1}


@pytest.mark.parametrize(("since", "until", "replayed"), [
    (None, None, 7), (T0 + timedelta(hours=1, minutes=3), None, 4),
    (None, T0 + timedelta(hours=1, minutes=1), 2),
    (T0 + timedelta(hours=1, minutes=2), T0 + timedelta(hours=1, minutes=2), 1),
])
def test_since_and_until_bound_the_decision_times(since: datetime | None,
                                                  until: datetime | None,
                                                  replayed: int) -> None:
    policy = load_policy(None)
    assert replay(history(policy), policy, since=since, until=until).replayed == replayed


def test_the_report_renders_and_serializes(tmp_path: Path) -> None:
    policy = load_policy(None)
    candidate = edited(tmp_path, "scope/freeze.cedar",
                       '@id("freeze.all") forbid (principal, action, resource);')
    report = replay(history(policy), candidate)
    data = report.to_json()
    # Denied for other reasons before, now also out_of_scope: a change of reasons counts.
    assert report.changes == {"ALLOW -> DENY": 2, "PENDING -> DENY": 1, "DENY -> DENY": 2}
    assert data["changed"] == report.changed == 5
    assert data["candidate"] == candidate.version
    text = report.render()
    assert "ALLOW -> DENY" in text and "freeze.all" in text
