"""Table-driven approval cases (cases/approval.toml) plus the rules, codes and timer."""

from __future__ import annotations

import tomllib
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatepass.core import (
    AgentRegistered,
    AgentStatus,
    AgentStatusChanged,
    CedarPolicy,
    Decision,
    Evaluation,
    IdentityState,
    Intent,
    PrincipalStatus,
    PrincipalStatusChanged,
    Reason,
)
from gatepass.core.approval import (
    ApprovalDecision,
    ApprovalRules,
    Finalized,
    PendingApproval,
    approvable,
    approval_code,
    decision_proof,
    judge,
    judge_timeout,
    proof_valid,
)
from gatepass.errors import PolicyError
from support.policies import bundle

CASES = tomllib.loads((Path(__file__).parent / "cases" / "approval.toml").read_text())["case"]
KEY = bytes(range(32))
REQUESTED = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)
T0 = REQUESTED - timedelta(days=1)
INTENT = Intent(intent_id="7b0e4c8e-2f4e-4a53-9a57-6a3d1b1d2c11", agent_id="procure-bot",
                action="purchase_order.create", resource="vendor:ACME",
                audience="procurement-api", amount=Decimal("50000.00"), currency="USD",
                requested_at=REQUESTED - timedelta(seconds=1))
PENDING = PendingApproval(request_id="req-1", intent=INTENT, owner="sarah",
                          approvers=("sarah", "cfo"), requested_at=REQUESTED,
                          expires_at=REQUESTED + timedelta(seconds=300),
                          why=("amount above the threshold",), policy_version="scope-x")
# Procurement orders up to 100000.00 USD, the owner's approval above 10000.00 USD, and cfo
# approving in sarah's stead (gatepass.toml: who may approve is not Cedar's to say).
SCOPE = """
@id("procurement.orders")
permit (principal, action == Gatepass::Action::"purchase_order.create", resource)
when {
  principal.purpose == "procurement" &&
  context has amount && context has currency && context.currency == "USD" &&
  context.amount.lessThanOrEqual(decimal("100000.00"))
};
"""
APPROVAL = """
@id("approval.large-order")
@reason("purchase orders above 10000.00 USD need the owner's approval")
permit (principal, action == Gatepass::Action::"purchase_order.create", resource)
when { context has amount && context.amount.greaterThan(decimal("10000.00")) };
"""
SETTINGS = """
[approval.delegates]
sarah = ["cfo"]
"""
POLICY = bundle(SCOPE, APPROVAL, SETTINGS)
RULES = POLICY.approval


def world(events: list[dict[str, Any]]) -> IdentityState:
    state = IdentityState()
    for who, status in [("sarah", "active"), ("cfo", "active"), ("tom", "active"),
                        ("gone", "offboarded")]:
        state.apply(PrincipalStatusChanged(principal_id=who, status=PrincipalStatus(status),
                                           event_time=T0, source="hr"))
    state.apply(AgentRegistered(agent_id="procure-bot", owner="sarah", purpose="procurement",
                                event_time=T0, source="idp"))
    for doc in events:
        at = T0 + timedelta(hours=1)
        if doc["kind"] == "principal_status":
            state.apply(PrincipalStatusChanged(principal_id=doc["principal"],
                                               status=PrincipalStatus(doc["status"]),
                                               event_time=at, source="case"))
        elif doc["kind"] == "agent_status":
            state.apply(AgentStatusChanged(agent_id=doc["agent"],
                                           status=AgentStatus(doc["status"]), event_time=at,
                                           source="case"))
        elif doc["kind"] == "agent_registered":
            state.apply(AgentRegistered(agent_id=doc["agent"], owner=doc["owner"],
                                        purpose=doc["purpose"], event_time=at, source="case"))
        else:
            raise AssertionError(doc)
    return state


def decision_from(doc: dict[str, Any]) -> ApprovalDecision:
    approver = doc.get("approver", "sarah")
    approve = doc.get("approve", True)
    fields = {"decision_id": "dec-1", "request_id": "req-1", "intent_id": INTENT.intent_id,
              "agent_id": INTENT.agent_id, "approver": approver, "approve": approve}
    if "intent" in doc:
        fields["intent_id"] = doc["intent"]
    if "agent" in doc:
        fields["agent_id"] = doc["agent"]
    code = approval_code(KEY, doc.get("code_request", "req-1"), doc.get("code_of", approver))
    proof = decision_proof(code, request_id=str(fields["request_id"]),
                           intent_id=str(fields["intent_id"]),
                           agent_id=str(fields["agent_id"]), approver=approver,
                           approve=doc.get("proof_approve", approve), decision_id="dec-1")
    if doc.get("proof") == "garbage":
        proof = "A" * 43
    return ApprovalDecision(proof=proof, channel="test", **fields)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_approval_case(case: dict[str, Any]) -> None:
    state = case.get("state", "pending")
    pending = PENDING if state == "pending" else None
    finalized = {"finalized_same": Finalized(decision=Decision.ALLOW, decision_id="dec-1"),
                 "finalized_other": Finalized(decision=Decision.ALLOW,
                                              decision_id="dec-0")}.get(state)
    now = REQUESTED + timedelta(seconds=case.get("at", 60))
    got = judge(pending, finalized, decision_from(case.get("decision", {})),
                identity=world(case.get("events", [])), rules=RULES, key=KEY, now=now)
    if case["want"] == "repeat":
        assert got.repeat and got.final is None
    elif case["want"] == "none":
        assert got.final is None and not got.repeat, got.detail
    else:
        assert got.final is Decision(case["want"]), got.detail
        assert got.reason is Reason(case["reason"])
    assert (got.alert.value if got.alert else "none") == case["alert"], got.detail
    assert got.detail


def test_cases_cover_every_approval_reason() -> None:
    covered = {c.get("reason") for c in CASES} | {c["alert"] for c in CASES}
    assert covered >= {"approved", "approval_denied", "approval_expired", "approval_forged",
                       "approval_replayed", "approval_unknown", "approver_inactive"}


# ---- the timer ------------------------------------------------------------------------------
@pytest.mark.parametrize(("seconds", "expired"), [(0, False), (299.999, False), (300, True),
                                                  (3600, True)])
def test_timer_expires_a_request_only_once_it_is_due(seconds: float, expired: bool) -> None:
    got = judge_timeout(PENDING, now=REQUESTED + timedelta(seconds=seconds))
    assert (got.final is Decision.DENY and got.reason is Reason.APPROVAL_EXPIRED) is expired
    assert got.final is not None or not expired


@pytest.mark.parametrize(("events", "reason"), [
    ([{"kind": "principal_status", "principal": "sarah", "status": "offboarded"}],
     Reason.OWNER_INACTIVE),
    ([{"kind": "principal_status", "principal": "sarah", "status": "suspended"}],
     Reason.OWNER_INACTIVE),
    ([{"kind": "agent_status", "agent": "procure-bot", "status": "suspended"}],
     Reason.AGENT_INACTIVE),
    ([], None),
    ([{"kind": "principal_status", "principal": "cfo", "status": "offboarded"}], None),
])
def test_timer_ends_a_request_nobody_can_approve_any_more(
        events: list[dict[str, Any]], reason: Reason | None) -> None:
    got = judge_timeout(PENDING, now=REQUESTED + timedelta(seconds=1), identity=world(events))
    assert got.reason is reason
    assert (got.final is Decision.DENY) is (reason is not None)
    assert approvable("procure-bot", world(events)) is (reason is None)


def test_timer_for_a_finished_request_does_nothing() -> None:
    assert judge_timeout(None, now=REQUESTED + timedelta(hours=1)).final is None


# ---- codes and proofs -----------------------------------------------------------------------
def test_codes_differ_per_request_approver_and_key() -> None:
    base = approval_code(KEY, "req-1", "sarah")
    assert len(base) == 22
    assert base != approval_code(KEY, "req-2", "sarah")
    assert base != approval_code(KEY, "req-1", "cfo")
    assert base != approval_code(bytes(32), "req-1", "sarah")
    # no ambiguity between the parts: ("req-1", "x") and ("req-1x", "") differ
    assert approval_code(KEY, "a", "bc") != approval_code(KEY, "ab", "c")


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError):
        approval_code(b"short", "req-1", "sarah")


def test_proof_binds_every_field_of_the_decision() -> None:
    good = decision_from({})
    assert proof_valid(KEY, good)
    for change in ({"decision_id": "dec-2"}, {"request_id": "req-2"},
                   {"intent_id": "9d3c1b1e-0000-4000-8000-000000000001"},
                   {"agent_id": "other"}, {"approver": "cfo"}, {"approve": False}):
        assert not proof_valid(KEY, replace(good, **change)), change


def test_non_ascii_proof_is_refused_not_an_error() -> None:
    assert not proof_valid(KEY, replace(decision_from({}), proof="é" * 43))


def test_the_proof_is_not_in_the_repr() -> None:
    d = decision_from({})
    assert d.proof not in repr(d)


class _Exploding:
    def agent(self, agent_id: str) -> Any:
        raise RuntimeError("identity store corrupted")

    def principal(self, principal_id: str, now: datetime | None = None) -> Any:
        raise RuntimeError("identity store corrupted")


def test_an_erroring_lookup_never_approves() -> None:
    got = judge(PENDING, None, decision_from({}), identity=_Exploding(), rules=RULES, key=KEY,
                now=REQUESTED)
    assert got.final is None and got.alert is Reason.INTERNAL_ERROR


@given(approver=st.sampled_from(["sarah", "cfo", "tom", "gone", "nobody"]),
       code_of=st.sampled_from(["sarah", "cfo", "tom"]), approve=st.booleans(),
       at=st.integers(min_value=-10, max_value=400),
       offboard=st.sets(st.sampled_from(["sarah", "cfo"])),
       state=st.sampled_from(["pending", "none", "finalized_other"]))
def test_allow_only_when_every_check_passes(approver: str, code_of: str, approve: bool,
                                             at: int, offboard: set[str], state: str) -> None:
    events = [{"kind": "principal_status", "principal": p, "status": "offboarded"}
              for p in sorted(offboard)]
    got = judge(PENDING if state == "pending" else None,
                Finalized(decision=Decision.ALLOW, decision_id="x")
                if state == "finalized_other" else None,
                decision_from({"approver": approver, "code_of": code_of, "approve": approve}),
                identity=world(events), rules=RULES, key=KEY,
                now=REQUESTED + timedelta(seconds=at))
    if got.final is Decision.ALLOW:
        assert state == "pending" and approve and at < 300
        assert approver == code_of and approver in ("sarah", "cfo")
        assert "sarah" not in offboard and approver not in offboard  # owner, approver active
    if got.final is not None:
        assert state == "pending"  # only a pending request ever ends


# ---- the rules ------------------------------------------------------------------------------
# Which intents need approval is Cedar's now (approval/*.cedar); what was validated in the old
# TOML rules (undefined classes, thresholds without a currency, unknown keys) is a bundle
# loading test in test_policy.py. Here: the delegates, and what the approval set decides.
def test_the_approval_policy_decides_which_orders_wait_for_the_owner() -> None:
    state = world([])
    agent, owner = state.agent("procure-bot"), state.principal("sarah", REQUESTED)
    assert agent is not None
    for amount, required in (("10000.00", False), ("10000.0001", True), ("50000.00", True)):
        got = POLICY.needs_approval(agent, owner, replace(INTENT, amount=Decimal(amount)))
        assert got.allowed is required, amount
        assert got.policy_ids == (("approval.large-order",) if required else ())
    assert POLICY.why(("approval.large-order",)) == (
        "purchase orders above 10000.00 USD need the owner's approval",)


def test_only_what_scope_allows_is_sent_for_approval() -> None:
    # Scope and approval come from one Cedar evaluation; above the ceiling the approval
    # permit applies, but an approval permit allows nothing, so there is nothing to ask.
    state = world([])
    agent, owner = state.agent("procure-bot"), state.principal("sarah", REQUESTED)
    assert agent is not None
    above = replace(INTENT, amount=Decimal("100000.01"))
    assert POLICY.check(agent, owner, above) == (Evaluation(False), Evaluation(False))
    at = replace(INTENT, amount=Decimal("100000.00"))
    assert POLICY.check(agent, owner, at) == (Evaluation(True, ("procurement.orders",)),
                                              Evaluation(True, ("approval.large-order",)))


def test_an_approval_policy_must_be_a_permit() -> None:
    forbid = '@id("approval.never")\nforbid (principal, action, resource);\n'
    with pytest.raises(PolicyError) as info:
        bundle(SCOPE, APPROVAL + forbid)
    assert (info.value.file, info.value.line) == ("approval/test.cedar", 6)
    assert info.value.message == "approval policies must be permits"


def test_an_approval_policy_without_a_reason_gets_a_generic_one() -> None:
    policy = bundle(SCOPE, '@id("approval.all")\npermit (principal, action, resource);\n')
    assert policy.why(("approval.all",)) == ("policy 'approval.all' requires the owner's "
                                             "approval",)


@pytest.mark.parametrize(("label", "change"), [
    ("an approval policy added", {"approval/more.cedar": '@id("approval.all")\n'
                                  "permit (principal, action, resource);\n"}),
    ("a delegate added", {"gatepass.toml": SETTINGS + 'tom = ["cfo"]\n'}),
    ("a delegate removed", {"gatepass.toml": "[approval.delegates]\n"}),
    ("a threshold changed", {"approval/test.cedar": APPROVAL.replace("10000.00", "9999.99")}),
])
def test_approval_rules_change_the_policy_version(label: str, change: dict[str, str]) -> None:
    files = {**POLICY.files, **change}
    assert CedarPolicy.from_files(files).version != POLICY.version


def test_delegates_come_from_gatepass_toml() -> None:
    assert POLICY.approval == ApprovalRules(delegates={"sarah": ("cfo",)})
    assert bundle(SCOPE, APPROVAL).approval == ApprovalRules()


@pytest.mark.parametrize(("label", "doc", "message"), [
    ("not a table", [], "approval must be a table"),
    ("delegates not a table", {"delegates": ["cfo"]}, "approval.delegates must be a table"),
    ("delegates not a list", {"delegates": {"sarah": "cfo"}}, "approval.delegates.sarah"),
    ("delegate not an id", {"delegates": {"sarah": ["c f o"]}}, "approval.delegates.sarah"),
    ("owner not an id", {"delegates": {"": ["cfo"]}}, "approval.delegates."),
    ("old threshold keys", {"always": ["x"], "classes": {"x": ["a.b"]}},
     "unknown keys ['always', 'classes']"),
])
def test_delegates_are_validated(label: str, doc: Any, message: str) -> None:
    with pytest.raises(PolicyError) as info:
        ApprovalRules.from_mapping(doc, source="gatepass.toml")
    assert info.value.file == "gatepass.toml"
    assert message in info.value.message


def test_approvers_are_the_owner_then_delegates() -> None:
    assert RULES.approvers("sarah") == ("sarah", "cfo")
    assert RULES.approvers("tom") == ("tom",)


def test_a_scheduled_termination_stops_approvals_from_its_time_on() -> None:
    state = world([])
    state.apply(PrincipalStatusChanged(
        principal_id="sarah", status=PrincipalStatus.OFFBOARDED, source="hr-file",
        event_time=REQUESTED + timedelta(seconds=30), recorded_at=REQUESTED - timedelta(hours=1)))
    before = judge(PENDING, None, decision_from({}), identity=state, rules=RULES, key=KEY,
                   now=REQUESTED + timedelta(seconds=29))
    after = judge(PENDING, None, decision_from({}), identity=state, rules=RULES, key=KEY,
                  now=REQUESTED + timedelta(seconds=30))
    assert before.final is Decision.ALLOW
    assert after.final is None and after.alert is Reason.APPROVER_INACTIVE
    timer = judge_timeout(PENDING, now=REQUESTED + timedelta(seconds=31), identity=state)
    assert timer.final is Decision.DENY and timer.reason is Reason.OWNER_INACTIVE


def test_a_reason_names_the_intents_amount_for_the_approver() -> None:
    """`@reason` may name {action}, {resource}, {amount} and {currency}: the shipped bundle's
    large-order reason tells the owner how much."""
    from gatepass.policy import load_policy

    shipped = load_policy(None)
    big = replace(INTENT, amount=Decimal("50000.00"))
    assert shipped.why(("approval.large-order",), big) == (
        "amount 50000.00 USD is above the approval threshold of 10000.00 USD",)
    assert shipped.why(("approval.large-order",)) == (
        "amount {amount} {currency} is above the approval threshold of 10000.00 USD",)
