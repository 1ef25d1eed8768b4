"""Scheduled principal statuses: a termination dated ahead counts from its time, not before.

Table-driven: each case folds a list of lifecycle events and asks for the principal's status
at several instants (never before the last recording: a worker cannot know a fact before it
is recorded). Times are seconds after T0; a plan is a status recorded (`rec`) before it
takes effect (`at`), a fact in force has no recording time or one at/after its time.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatepass.core import (
    AgentRegistered,
    AgentStatus,
    AgentStatusChanged,
    Applied,
    Freshness,
    IdentityState,
    Intent,
    PrincipalStatus,
    PrincipalStatusChanged,
    decide,
    lifecycle_key,
)
from gatepass.core.identity import is_scheduled
from support.policies import bundle

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def t(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def status(value: str, at: float, rec: float | None = None, *, who: str = "sarah",
           source: str = "hr-feed", event_id: str = "") -> PrincipalStatusChanged:
    return PrincipalStatusChanged(
        principal_id=who, status=PrincipalStatus(value), event_time=t(at),
        recorded_at=None if rec is None else t(rec), source=source,
        source_event_id=event_id or f"{value}@{at}/{rec}")


def fold(events: list[PrincipalStatusChanged]) -> IdentityState:
    state = IdentityState()
    for event in events:
        state.apply(event)
    return state


def status_at(state: IdentityState, now: float | None) -> str | None:
    record = state.principal("sarah", None if now is None else t(now))
    return None if record is None else record.status.value


# ---- keys --------------------------------------------------------------------------------
@pytest.mark.parametrize(("event", "key"), [
    (status("offboarded", 100, 10), "principal:sarah/scheduled-status"),
    (status("offboarded", 100, 100), "principal:sarah/status"),  # recorded as it happens
    (status("offboarded", 100, 150), "principal:sarah/status"),  # recorded afterwards
    (status("offboarded", 100), "principal:sarah/status"),  # no recording time: in force
    (AgentStatusChanged(agent_id="bot", status=AgentStatus.SUSPENDED, event_time=t(100),
                        recorded_at=t(10)), "agent:bot/status"),  # agent facts never wait
    (AgentRegistered(agent_id="bot", owner="sarah", purpose="p", event_time=t(100),
                     recorded_at=t(10)), "agent:bot/registration"),
], ids=["plan", "recorded at its time", "recorded late", "legacy", "agent status",
        "registration"])
def test_a_plan_has_its_own_key_so_compaction_keeps_the_status_in_force(event: Any,
                                                                        key: str) -> None:
    assert lifecycle_key(event) == key
    assert is_scheduled(event) is key.endswith("scheduled-status")


# ---- the status as of `now` --------------------------------------------------------------
CASES: list[tuple[str, list[PrincipalStatusChanged], dict[float | None, str | None]]] = [
    ("termination next week: active until its time, offboarded from it on",
     [status("active", 0), status("offboarded", 100, 10)],
     {50: "active", 99.999: "active", 100: "offboarded", 500: "offboarded", None: "active"}),
    ("a plan alone: unknown (fail closed) until its time",
     [status("offboarded", 100, 10)],
     {50: None, 100: "offboarded", None: None}),
    ("moved later: the plan recorded last wins",
     [status("active", 0), status("offboarded", 100, 10), status("offboarded", 200, 20)],
     {150: "active", 200: "offboarded"}),
    ("moved earlier: the plan recorded last wins even with an earlier time",
     [status("active", 0), status("offboarded", 200, 10), status("offboarded", 100, 20)],
     {99: "active", 150: "offboarded"}),
    ("the same two plans delivered the other way round",
     [status("active", 0), status("offboarded", 100, 20), status("offboarded", 200, 10)],
     {99: "active", 150: "offboarded"}),
    ("cancelled: a newer plan for the same time keeps them active",
     [status("active", 0), status("offboarded", 100, 10), status("active", 100, 20)],
     {50: "active", 150: "active"}),
    ("a fact in force newer than a due plan wins (rehired after leaving)",
     [status("active", 0), status("offboarded", 100, 10), status("active", 150)],
     {150: "active", 200: "active", None: "active"}),
    ("a fact in force older than a due plan loses to it",
     [status("offboarded", 100, 10), status("active", 50)],
     {60: "active", 100: "offboarded"}),
    ("a plan and a fact in force at the same time: the more restrictive wins",
     [status("active", 100), status("suspended", 100, 10)],
     {100: "suspended"}),
    ("a plan that took effect, then a rehire plan: gone until rehired",
     [status("active", 0), status("offboarded", 100, 10), status("active", 300, 200)],
     {250: "offboarded", None: "offboarded", 299: "offboarded", 300: "active"}),
    ("a leave, then a return planned during it",
     [status("active", 0), status("suspended", 100, 0), status("active", 200, 150)],
     {150: "suspended", 199: "suspended", 210: "active"}),
    ("a plan replaced before its time never happens",
     [status("active", 0), status("offboarded", 100, 10), status("suspended", 300, 50)],
     {150: "active", 300: "suspended"}),
]


@pytest.mark.parametrize(("events", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_status_as_of_now(events: list[PrincipalStatusChanged],
                          expected: dict[float | None, str | None]) -> None:
    state = fold(events)
    assert {now: status_at(state, now) for now in expected} == expected


def test_the_record_of_a_due_plan_names_its_time_and_source() -> None:
    plan = status("offboarded", 100, 10, event_id="hr-42")
    record = fold([status("active", 0), plan]).principal("sarah", t(101))
    assert record is not None
    assert (record.status_at, record.source, record.source_event_id) == (t(100), "hr-feed",
                                                                        "hr-42")


# ---- what applying reports ---------------------------------------------------------------
def test_a_plan_is_a_change_but_deactivates_nobody_yet() -> None:
    state = fold([status("active", 0)])
    assert state.apply(status("offboarded", 100, 10)) == Applied(True)
    assert state.owner_active("sarah")  # in force: still active
    assert state.scheduled("sarah") == status("offboarded", 100, 10)


@pytest.mark.parametrize("event", [status("offboarded", 100, 10), status("active", 0)],
                         ids=["plan", "fact in force"])
def test_a_redelivered_fact_changes_nothing_and_needs_no_repair(
        event: PrincipalStatusChanged) -> None:
    state = fold([status("active", 0), status("offboarded", 100, 10)])
    before = (dict(state.principals), state.scheduled("sarah"), state.due_promotions(t(500)))
    assert state.apply(event) == Applied(False)
    assert state.holds(event)
    assert state.needs_repair(event) is None
    assert (dict(state.principals), state.scheduled("sarah"),
            state.due_promotions(t(500))) == before


def test_a_fact_in_force_recorded_again_later_is_the_same_fact() -> None:
    first = status("offboarded", 100, 100)
    state = fold([first])
    again = replace(first, recorded_at=t(900))
    assert state.apply(again) == Applied(False)
    assert state.holds(again) and state.needs_repair(again) is None


def test_a_late_older_plan_is_answered_with_the_newer_one() -> None:
    newer, older = status("offboarded", 200, 20), status("offboarded", 100, 10)
    state = fold([newer, older])
    assert state.needs_repair(older) == newer
    assert state.needs_repair(newer) is None


# ---- promotion: a due plan written back as the status in force ---------------------------
def test_a_due_plan_is_promoted_once_and_then_in_force() -> None:
    plan = status("offboarded", 100, 10)
    state = fold([status("active", 0), plan])
    assert state.due_promotions(t(99)) == []
    [promoted] = state.due_promotions(t(100))
    assert promoted == replace(plan, recorded_at=t(100))
    assert lifecycle_key(promoted) == "principal:sarah/status"
    applied = state.apply(promoted)
    assert applied == Applied(True, principal_deactivated="sarah")
    assert status_at(state, None) == "offboarded"
    assert state.due_promotions(t(500)) == []
    assert state.apply(promoted) == Applied(False)  # a second writer's copy is a no-op
    assert state.needs_repair(promoted) is None


def test_a_plan_beaten_by_a_newer_fact_in_force_is_not_promoted() -> None:
    state = fold([status("offboarded", 100, 10), status("active", 150)])
    assert state.due_promotions(t(500)) == []


def test_a_happened_plan_replaced_before_it_was_promoted_is_still_written_back() -> None:
    gone = status("offboarded", 100, 10)
    state = fold([status("active", 0), gone, status("active", 300, 200)])
    # Not yet due by the clock (it is), nor by the latest plan: it is owed to the topic.
    assert state.due_promotions(t(250)) == [replace(gone, recorded_at=t(100))]
    state.apply(replace(gone, recorded_at=t(100)))
    assert state.due_promotions(t(250)) == []


# ---- every worker agrees, and a rebuild from the compacted topic agrees ------------------
WHO = st.sampled_from(["sarah", "tom"])
STATUS = st.sampled_from(list(PrincipalStatus))


@st.composite
def histories(draw: st.DrawFn) -> list[tuple[float, PrincipalStatusChanged | None, bool]]:
    """Steps of a wall clock: at each, maybe an event recorded then, maybe a promotion pass.

    Events are facts in force (dated at or before the clock, even far back) or plans
    (dated after it). A promotion pass may be skipped (every worker down).
    """
    steps: list[tuple[float, PrincipalStatusChanged | None, bool]] = []
    clock = 0.0
    for _ in range(draw(st.integers(min_value=1, max_value=12))):
        clock += draw(st.sampled_from([1, 5, 20, 60]))
        event = None
        if draw(st.booleans()) or not steps:
            offset = draw(st.sampled_from([-100, -5, 0, 5, 30, 100]))
            when = clock + offset
            event = PrincipalStatusChanged(
                principal_id=draw(WHO), status=draw(STATUS), event_time=t(when),
                recorded_at=t(clock), source=draw(st.sampled_from(["hr", "okta"])),
                source_event_id=f"e{len(steps)}")
        steps.append((clock, event, draw(st.booleans())))
    return steps


@settings(max_examples=300)
@given(history=histories())
def test_a_state_rebuilt_from_the_compacted_topic_answers_like_the_live_one(
        history: list[tuple[float, PrincipalStatusChanged | None, bool]]) -> None:
    log: list[PrincipalStatusChanged] = []
    live = IdentityState()

    def append(event: Any) -> None:
        log.append(event)
        live.apply(event)
        repair = live.needs_repair(event)
        if repair is not None:
            append(repair)

    for clock, event, promote in history:
        if event is not None:
            append(event)
        if promote:
            for due in live.due_promotions(t(clock)):
                append(due)
    end = history[-1][0]
    for due in live.due_promotions(t(end)):  # the fan-out catches up eventually
        append(due)
    compacted = {lifecycle_key(e): e for e in log}  # the last record per key survives
    rebuilt = IdentityState()
    for event in compacted.values():
        rebuilt.apply(event)
    for who in ("sarah", "tom"):
        for now in [end + d for d in (0, 1, 10, 50, 100, 200)]:
            assert rebuilt.principal(who, t(now)) == live.principal(who, t(now)), (who, now)
        assert rebuilt.due_promotions(t(end)) == []


@given(events=st.lists(st.builds(
    PrincipalStatusChanged, principal_id=st.just("sarah"), status=STATUS,
    event_time=st.integers(min_value=50, max_value=60).map(t),
    recorded_at=st.integers(min_value=0, max_value=40).map(t),
    source=st.sampled_from(["hr", "okta"]), source_event_id=st.sampled_from(["a", "b"])),
    max_size=6, unique_by=lambda e: (e.recorded_at, e.event_time, e.source,
                                     e.source_event_id)), data=st.data())
def test_plans_not_yet_due_when_replaced_resolve_the_same_in_any_order(
        events: list[PrincipalStatusChanged], data: st.DataObject) -> None:
    # Every plan here is recorded before any takes effect, so none can have happened.
    shuffled = data.draw(st.permutations(events))
    a, b = fold(events), fold(shuffled)
    assert a.scheduled("sarah") == b.scheduled("sarah")
    for now in (45, 50, 55, 60, 61):
        assert a.principal("sarah", t(now)) == b.principal("sarah", t(now))


# ---- the decision reads the status as of its own `now` -----------------------------------
VENDOR_READS = bundle('''
@id("procurement.vendors")
permit (principal, action == Gatepass::Action::"vendor.read", resource)
when { principal.purpose == "procurement" };
''')


def _decide_at(state: IdentityState, seconds: float, *, chain: tuple[str, ...] = ()) -> Any:
    now = t(seconds)
    intent = Intent(intent_id="7b0e4c8e-2f4e-4a53-9a57-6a3d1b1d2c11", agent_id="procure-bot",
                    action="vendor.read", resource="vendor:ACME", audience="procurement-api",
                    requested_at=now, delegation_chain=chain)
    return decide(intent, state, VENDOR_READS, now=now, ready=True,
                  freshness=Freshness(max_age=timedelta(minutes=2), max_skew=timedelta(0)))


def _world_with_plan() -> IdentityState:
    """sarah leaves at 100 (recorded at 10); she owns procure-bot and planner-bot."""
    state = fold([status("active", 0), status("active", 0, who="tom"),
                  status("offboarded", 100, 10)])
    for agent, owner in (("procure-bot", "sarah"), ("planner-bot", "sarah"),
                         ("helper-bot", "tom")):
        state.apply(AgentRegistered(agent_id=agent, owner=owner, purpose="procurement",
                                    event_time=t(0), source="okta"))
    return state


@pytest.mark.parametrize(("seconds", "decision", "reasons", "owner_status_at"), [
    (50, "ALLOW", ("allowed",), t(0)),
    (99.999, "ALLOW", ("allowed",), t(0)),
    (100, "DENY", ("owner_inactive",), t(100)),
    (3600, "DENY", ("owner_inactive",), t(100)),
])
def test_decide_denies_from_the_planned_time_on_without_any_new_record(
        seconds: float, decision: str, reasons: tuple[str, ...],
        owner_status_at: datetime) -> None:
    result = _decide_at(_world_with_plan(), seconds)
    assert (result.decision.value, tuple(r.value for r in result.reasons)) == (decision,
                                                                                reasons)
    assert result.facts.owner_status_at == owner_status_at
    assert result.orphaned is (decision == "DENY")


@pytest.mark.parametrize(("seconds", "decision"), [(50, "ALLOW"), (150, "DENY")])
def test_a_delegator_whose_owner_left_on_schedule_cannot_delegate(seconds: float,
                                                                  decision: str) -> None:
    state = _world_with_plan()
    state.apply(AgentRegistered(agent_id="procure-bot", owner="tom", purpose="procurement",
                                event_time=t(1), source="okta"))
    result = _decide_at(state, seconds, chain=("planner-bot",))
    assert result.decision.value == decision
    if decision == "DENY":
        assert [r.value for r in result.reasons] == ["delegation_denied"]
