"""Compaction safety: a losing lifecycle record is answered by writing the winner back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gatepass.core import (
    AgentRegistered,
    AgentStatus,
    AgentStatusChanged,
    IdentityState,
    PrincipalStatus,
    PrincipalStatusChanged,
    lifecycle_key,
)

T = datetime(2026, 1, 1, tzinfo=UTC)


def test_a_late_older_event_is_answered_with_the_newer_one() -> None:
    state = IdentityState()
    newer = PrincipalStatusChanged(principal_id="sarah", status=PrincipalStatus.OFFBOARDED,
                                   event_time=T + timedelta(hours=1), source="hr",
                                   source_event_id="e2")
    older = PrincipalStatusChanged(principal_id="sarah", status=PrincipalStatus.ACTIVE,
                                   event_time=T, source="okta", source_event_id="e1")
    state.apply(newer)
    state.apply(older)
    assert state.needs_repair(older) == newer
    assert state.needs_repair(newer) is None  # the winner itself needs nothing
    # Writing the winner back changes nothing for any reader (no repair loop).
    assert state.apply(newer).changed is False


def test_a_rebuilt_state_from_the_survivors_keeps_the_newest_facts() -> None:
    """Simulate compaction: keep the last record per key, in log order, and reload."""
    log = []
    reg = AgentRegistered(agent_id="bot", owner="sarah", purpose="procurement",
                          department="finance", contact="c", created_by="u", event_time=T,
                          source="idp", source_event_id="r1")
    suspend = AgentStatusChanged(agent_id="bot", status=AgentStatus.SUSPENDED,
                                 event_time=T + timedelta(minutes=5), source="idp")
    late_active = AgentStatusChanged(agent_id="bot", status=AgentStatus.ACTIVE,
                                     event_time=T + timedelta(minutes=1), source="idp")
    live = IdentityState()
    for event in (reg, suspend, late_active):
        log.append(event)
        live.apply(event)
        repair = live.needs_repair(event)
        if repair is not None:
            log.append(repair)
    compacted = {lifecycle_key(e): e for e in log}  # last record per key wins
    rebuilt = IdentityState()
    for event in compacted.values():
        rebuilt.apply(event)
    assert rebuilt.agent("bot") == live.agent("bot")
    assert rebuilt.agent("bot").status is AgentStatus.SUSPENDED  # type: ignore[union-attr]


def test_registration_is_rebuilt_exactly() -> None:
    state = IdentityState()
    reg = AgentRegistered(agent_id="bot", owner="tom", purpose="research", department=None,
                          contact=None, created_by=None, event_time=T, source="idp",
                          source_event_id="x")
    state.apply(reg)
    assert state.winning_event(lifecycle_key(reg)) == reg
    assert state.winning_event("agent:nobody/registration") is None
    assert state.winning_event("unknown-kind") is None


def test_a_registration_with_a_key_is_rebuilt_with_it() -> None:
    """The written-back winner must keep the key, or a repair would unbind the agent."""
    state = IdentityState()
    keyed = AgentRegistered(agent_id="bot", owner="tom", purpose="research",
                            public_key="11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
                            event_time=T + timedelta(minutes=1), source="idp",
                            source_event_id="k")
    older = AgentRegistered(agent_id="bot", owner="tom", purpose="research", event_time=T,
                            source="idp", source_event_id="o")
    state.apply(keyed)
    state.apply(older)
    assert state.agent("bot").public_key == keyed.public_key  # type: ignore[union-attr]
    assert state.needs_repair(older) == keyed
    assert state.holds(keyed)
