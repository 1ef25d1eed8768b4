"""IdentityState: the newest event wins whatever the delivery order; deactivations are reported."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatepass.core import (
    AgentRegistered,
    AgentStatus,
    AgentStatusChanged,
    Applied,
    IdentityState,
    LifecycleEvent,
    PrincipalStatus,
    PrincipalStatusChanged,
    lifecycle_key,
)

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


def principal(status: str, t: int, *, who: str = "sarah", source: str = "hr-feed",
              event_id: str = "") -> PrincipalStatusChanged:
    return PrincipalStatusChanged(principal_id=who, status=PrincipalStatus(status),
                                  event_time=at(t), source=source, source_event_id=event_id)


def registered(agent: str, owner: str, t: int, *, purpose: str = "procurement",
               event_id: str = "") -> AgentRegistered:
    return AgentRegistered(agent_id=agent, owner=owner, purpose=purpose, event_time=at(t),
                           source="okta", source_event_id=event_id)


def agent_status(agent: str, status: str, t: int) -> AgentStatusChanged:
    return AgentStatusChanged(agent_id=agent, status=AgentStatus(status), event_time=at(t),
                              source="okta")


def fold(events: list[Any]) -> IdentityState:
    state = IdentityState()
    for event in events:
        state.apply(event)
    return state


def snapshot(state: IdentityState) -> tuple[Any, ...]:
    owners = {a.owner for a in state.agents.values() if a.owner} | set(state.principals)
    return (dict(state.agents), dict(state.principals),
            {o: state.agents_owned_by(o) for o in sorted(owners)})


# ---- lifecycle_key -----------------------------------------------------------------------
@pytest.mark.parametrize(("event", "key"), [
    (registered("procure-bot", "sarah", 0), "agent:procure-bot/registration"),
    (agent_status("procure-bot", "suspended", 0), "agent:procure-bot/status"),
    (principal("offboarded", 0), "principal:sarah/status"),
])
def test_lifecycle_key_is_one_key_per_fact(event: LifecycleEvent, key: str) -> None:
    assert lifecycle_key(event) == key


def test_registration_and_status_of_one_agent_never_share_a_key() -> None:
    keys = {lifecycle_key(registered("a", "o", 0)), lifecycle_key(agent_status("a", "active", 0))}
    assert len(keys) == 2


# ---- newest wins -------------------------------------------------------------------------
def test_a_late_older_active_does_not_resurrect_an_offboarded_principal() -> None:
    state = fold([principal("active", 0), principal("offboarded", 20)])
    applied = state.apply(principal("active", 10))
    assert applied == Applied(False)
    record = state.principal("sarah")
    assert record is not None
    assert (record.status, record.status_at) == (PrincipalStatus.OFFBOARDED, at(20))


@pytest.mark.parametrize(("first", "second", "winner"), [
    ("active", "offboarded", PrincipalStatus.OFFBOARDED),
    ("offboarded", "active", PrincipalStatus.OFFBOARDED),
    ("active", "suspended", PrincipalStatus.SUSPENDED),
    ("suspended", "offboarded", PrincipalStatus.OFFBOARDED),
])
def test_equal_event_times_resolve_to_the_more_restrictive_status(first: str, second: str,
                                                                  winner: PrincipalStatus) -> None:
    state = fold([principal(first, 5), principal(second, 5)])
    record = state.principal("sarah")
    assert record is not None and record.status is winner


def test_equal_time_and_severity_break_the_tie_by_source_then_event_id() -> None:
    a = principal("suspended", 5, source="entra", event_id="z")
    b = principal("suspended", 5, source="okta", event_id="a")
    c = principal("suspended", 5, source="okta", event_id="b")
    for order in ([a, b, c], [c, b, a], [b, c, a]):
        record = fold(order).principal("sarah")
        assert record is not None and (record.source, record.source_event_id) == ("okta", "b")


def test_agent_status_ties_resolve_to_decommissioned() -> None:
    state = fold([agent_status("bot", "decommissioned", 5), agent_status("bot", "active", 5)])
    agent = state.agent("bot")
    assert agent is not None and agent.status is AgentStatus.DECOMMISSIONED


def test_status_before_registration_keeps_both_facts() -> None:
    state = fold([agent_status("bot", "suspended", 10), registered("bot", "sarah", 5)])
    agent = state.agent("bot")
    assert agent is not None
    assert agent.registered and agent.registered_at == at(5)
    assert (agent.status, agent.status_at, agent.owner) == (AgentStatus.SUSPENDED, at(10),
                                                            "sarah")


def test_a_status_alone_does_not_register_an_agent() -> None:
    agent = fold([agent_status("bot", "active", 1)]).agent("bot")
    assert agent is not None and not agent.registered and agent.owner is None


def test_redelivered_event_changes_nothing() -> None:
    state = IdentityState()
    event = principal("offboarded", 3, event_id="hr-1")
    assert state.apply(event).changed is True
    assert state.apply(event) == Applied(False)


# ---- order independence ------------------------------------------------------------------
TIMES = st.integers(min_value=0, max_value=4)  # few distinct times: ties are common
SOURCES = st.sampled_from(["okta", "hr-feed", "cli"])
EVENT_IDS = st.sampled_from(["", "e1", "e2"])
PRINCIPAL_EVENTS = st.builds(
    PrincipalStatusChanged, principal_id=st.just("sarah"),
    status=st.sampled_from(list(PrincipalStatus)), event_time=TIMES.map(at), source=SOURCES,
    source_event_id=EVENT_IDS)
AGENT_STATUS_EVENTS = st.builds(
    AgentStatusChanged, agent_id=st.sampled_from(["procure-bot", "helper-bot"]),
    status=st.sampled_from(list(AgentStatus)), event_time=TIMES.map(at), source=SOURCES,
    source_event_id=EVENT_IDS)
# Two registrations of one agent with the same (time, source, event id) would be one source
# event with two contents; real sources give every event its own id, so those are unique.
REGISTRATIONS = st.lists(st.builds(
    AgentRegistered, agent_id=st.sampled_from(["procure-bot", "helper-bot"]),
    owner=st.sampled_from(["sarah", "tom"]), purpose=st.sampled_from(["procurement", "support"]),
    event_time=TIMES.map(at), source=SOURCES, source_event_id=EVENT_IDS,
    public_key=st.sampled_from([None, None, "key-1", "key-2"])),
    unique_by=lambda e: (e.agent_id, e.event_time, e.source, e.source_event_id), max_size=6)


@given(events=st.lists(PRINCIPAL_EVENTS, max_size=12), data=st.data())
def test_principal_events_in_any_order_give_the_same_record(
        events: list[PrincipalStatusChanged], data: st.DataObject) -> None:
    shuffled = data.draw(st.permutations(events))
    assert fold(shuffled).principals == fold(events).principals


@given(principals=st.lists(PRINCIPAL_EVENTS, max_size=8),
       statuses=st.lists(AGENT_STATUS_EVENTS, max_size=6), registrations=REGISTRATIONS,
       data=st.data())
def test_any_permutation_of_lifecycle_events_gives_the_same_state(
        principals: list[Any], statuses: list[Any], registrations: list[Any],
        data: st.DataObject) -> None:
    events = principals + statuses + registrations
    shuffled = data.draw(st.permutations(events))
    assert snapshot(fold(shuffled)) == snapshot(fold(events))


@given(events=st.lists(PRINCIPAL_EVENTS, min_size=1, max_size=10),
       late_status=st.sampled_from(list(PrincipalStatus)), late_source=SOURCES,
       older_by=st.integers(min_value=1, max_value=3600))
def test_an_event_older_than_the_current_one_never_changes_state(
        events: list[Any], late_status: PrincipalStatus, late_source: str,
        older_by: int) -> None:
    state = fold(events)
    current = state.principal("sarah")
    assert current is not None
    before = snapshot(state)
    late = PrincipalStatusChanged(principal_id="sarah", status=late_status, source=late_source,
                                  event_time=current.status_at - timedelta(seconds=older_by))
    assert state.apply(late) == Applied(False)
    assert snapshot(state) == before


# ---- principal_deactivated ---------------------------------------------------------------
@pytest.mark.parametrize(("history", "event", "deactivated"), [
    ([], principal("offboarded", 1), "sarah"),  # first sight as inactive
    ([], principal("suspended", 1), "sarah"),
    ([], principal("active", 1), None),
    ([principal("active", 0)], principal("offboarded", 1), "sarah"),
    ([principal("active", 0)], principal("suspended", 1), "sarah"),
    ([principal("active", 0)], principal("active", 1, event_id="again"), None),
    ([principal("suspended", 0)], principal("offboarded", 1), None),  # already inactive
    ([principal("offboarded", 0)], principal("active", 1), None),  # reinstated
    ([principal("active", 0), principal("offboarded", 2)], principal("suspended", 1), None),
    ([principal("offboarded", 0), principal("active", 1)], principal("offboarded", 2), "sarah"),
], ids=["first offboarded", "first suspended", "first active", "active->offboarded",
        "active->suspended", "active->active", "suspended->offboarded",
        "offboarded->active", "older loses", "new episode"])
def test_principal_deactivated_exactly_when_active_turns_inactive(
        history: list[Any], event: PrincipalStatusChanged, deactivated: str | None) -> None:
    state = fold(history)
    assert state.apply(event).principal_deactivated == deactivated


@given(events=st.lists(PRINCIPAL_EVENTS, max_size=12))
def test_principal_deactivated_property(events: list[PrincipalStatusChanged]) -> None:
    state = IdentityState()
    for event in events:
        before = state.principal("sarah")
        applied = state.apply(event)
        after = state.principal("sarah")
        assert after is not None
        went_inactive = applied.changed and after.status is not PrincipalStatus.ACTIVE and (
            before is None or before.status is PrincipalStatus.ACTIVE)
        assert applied.principal_deactivated == ("sarah" if went_inactive else None)


def test_registration_to_an_inactive_or_unknown_owner_is_an_orphan() -> None:
    state = fold([principal("offboarded", 0, who="gone"), principal("active", 0)])
    assert state.apply(registered("ghost-bot", "gone", 1)).agent_registered_orphan == "ghost-bot"
    assert state.apply(registered("lost-bot", "nobody", 1)).agent_registered_orphan == "lost-bot"
    assert state.apply(registered("procure-bot", "sarah", 1)) == Applied(True)


# ---- ownership ---------------------------------------------------------------------------
def test_agents_owned_by_follows_re_registration_to_a_new_owner() -> None:
    state = fold([registered("procure-bot", "sarah", 0), registered("helper-bot", "sarah", 0)])
    assert state.agents_owned_by("sarah") == ["helper-bot", "procure-bot"]
    state.apply(registered("procure-bot", "tom", 10))
    assert state.agents_owned_by("sarah") == ["helper-bot"]
    assert state.agents_owned_by("tom") == ["procure-bot"]
    agent = state.agent("procure-bot")
    assert agent is not None and agent.owner == "tom"


def test_a_late_older_registration_does_not_move_the_agent_back() -> None:
    state = fold([registered("procure-bot", "sarah", 0), registered("procure-bot", "tom", 10)])
    assert state.apply(registered("procure-bot", "sarah", 5)) == Applied(False)
    assert state.agents_owned_by("sarah") == []
    assert state.agents_owned_by("tom") == ["procure-bot"]


# ---- a registered key is kept by registrations without one ------------------------------
def keyed(agent: str, owner: str, t: int, key: str, *, event_id: str = "") -> AgentRegistered:
    return AgentRegistered(agent_id=agent, owner=owner, purpose="procurement",
                           event_time=at(t), source="cli", source_event_id=event_id,
                           public_key=key)


def test_keyless_re_registration_keeps_the_key_and_takes_the_rest() -> None:
    """The downgrade attack: an IdP sync (or an importer) that knows nothing of keys
    re-registers a keyed agent; its signature requirement must not go with it."""
    state = fold([keyed("procure-bot", "sarah", 0, "key-1")])
    sync = registered("procure-bot", "tom", 10, purpose="support")
    assert state.apply(sync).changed
    agent = state.agents["procure-bot"]
    assert (agent.public_key, agent.owner, agent.purpose) == ("key-1", "tom", "support")


def test_a_newer_keyed_registration_replaces_the_key() -> None:
    state = fold([keyed("procure-bot", "sarah", 0, "key-1"),
                  keyed("procure-bot", "sarah", 10, "key-2")])
    assert state.agents["procure-bot"].public_key == "key-2"


def test_a_late_keyed_registration_brings_its_key_but_not_its_older_facts() -> None:
    state = fold([registered("procure-bot", "tom", 10)])
    assert state.apply(keyed("procure-bot", "sarah", 0, "key-1")).changed
    agent = state.agents["procure-bot"]
    assert (agent.public_key, agent.owner) == ("key-1", "tom")
    # the key of the newest registration that has one: a later-delivered t=5 beats t=0
    assert state.apply(keyed("procure-bot", "sarah", 5, "key-0")).changed
    assert state.agents["procure-bot"].public_key == "key-0"
    state.apply(keyed("procure-bot", "tom", 20, "key-2"))
    assert not state.apply(keyed("procure-bot", "sarah", 15, "key-9")).changed
    assert state.agents["procure-bot"].public_key == "key-2"


def test_keyless_re_registration_is_written_back_with_the_key() -> None:
    """Compaction keeps the newest record per key: the keyless one alone would lose the key
    for every worker that loads later. The fan-out writes the merged registration back."""
    first, sync = keyed("procure-bot", "sarah", 0, "key-1"), registered("procure-bot", "tom", 10)
    state = fold([first, sync])
    merged = state.needs_repair(sync)
    assert merged == AgentRegistered(agent_id="procure-bot", owner="tom", purpose="procurement",
                                     event_time=at(10), source="okta", public_key="key-1")
    assert not state.apply(merged).changed  # nothing new for a view that has both
    assert state.needs_repair(merged) is None  # and no repair loop
    compacted = fold([merged])  # what a worker loading after compaction sees
    assert compacted.agents["procure-bot"] == state.agents["procure-bot"]


def test_a_late_keyed_registration_is_written_back_merged_too() -> None:
    sync, late = registered("procure-bot", "tom", 10), keyed("procure-bot", "sarah", 0, "key-1")
    state = fold([sync, late])
    merged = state.needs_repair(late)
    assert merged is not None and (merged.owner, merged.public_key) == ("tom", "key-1")
    assert fold([merged]).agents["procure-bot"] == state.agents["procure-bot"]


def test_a_keyless_registration_equal_but_for_the_key_is_held() -> None:
    """So an importer re-importing a keyed agent publishes nothing, and the fan-out writes
    no repair for it."""
    state = fold([keyed("procure-bot", "sarah", 0, "key-1")])
    same = AgentRegistered(agent_id="procure-bot", owner="sarah", purpose="procurement",
                           event_time=at(0), source="cli")
    assert state.holds(same)
    assert not state.holds(registered("procure-bot", "tom", 10))


@given(registrations=REGISTRATIONS, data=st.data())
def test_the_compacted_topic_after_the_repair_writes_rebuilds_the_same_agents(
        registrations: list[AgentRegistered], data: st.DataObject) -> None:
    """The log as the fan-out leaves it: every record applied in log order, each repair it
    calls for appended; compaction then keeps the last record per key. A worker loading
    only those must know what a worker that saw everything knows, keys included."""
    log: list[LifecycleEvent] = list(data.draw(st.permutations(registrations)))
    live = IdentityState()
    for i in range(100):
        if i == len(log):
            break
        live.apply(log[i])
        winner = live.needs_repair(log[i])
        if winner is not None:
            log.append(winner)
    else:
        raise AssertionError("repairs did not settle")
    compacted = {lifecycle_key(e): e for e in log}
    assert fold(list(compacted.values())).agents == live.agents


def test_re_registration_keeps_the_agent_status() -> None:
    state = fold([registered("bot", "sarah", 0), agent_status("bot", "suspended", 1),
                  registered("bot", "tom", 2, purpose="support")])
    agent = state.agent("bot")
    assert agent is not None
    assert (agent.owner, agent.purpose, agent.status) == ("tom", "support",
                                                          AgentStatus.SUSPENDED)


def test_nobody_owns_anything_in_an_empty_state() -> None:
    state = IdentityState()
    assert state.agents_owned_by("sarah") == []
    assert state.agent("procure-bot") is None and state.principal("sarah") is None
    assert len(state) == 0


@pytest.mark.parametrize(("principal_id", "expected"), [
    ("sarah", True), ("gone", False), ("paused", False), ("nobody", False), (None, False),
    ("", False)])
def test_owner_active(principal_id: str | None, expected: bool) -> None:
    state = fold([principal("active", 0), principal("offboarded", 0, who="gone"),
                  principal("suspended", 0, who="paused")])
    assert state.owner_active(principal_id) is expected
    assert len(state) == 3
