"""Identity state folded from lifecycle events: the newest event time wins, whatever the order.

Lifecycle events can arrive out of order (several sources, retries, replays). Each fact of a
subject (an agent's registration, an agent's status, a principal's status) keeps the event
with the greatest order key (event time, then severity so a tie fails closed, then source and
source event id so every worker resolves the same tie the same way). An older event never
overwrites a newer one, so a late "active" cannot resurrect an offboarded principal.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from gatepass.core.model import AgentRecord, AgentStatus, PrincipalRecord, PrincipalStatus

__all__ = [
    "AgentRegistered",
    "AgentStatusChanged",
    "Applied",
    "IdentityState",
    "LifecycleEvent",
    "PrincipalStatusChanged",
    "lifecycle_key",
]

# Higher rank wins a tie on event time: ties resolve towards the more restrictive state.
_AGENT_RANK = {AgentStatus.ACTIVE: 0, AgentStatus.SUSPENDED: 1, AgentStatus.DECOMMISSIONED: 2}
_PRINCIPAL_RANK = {PrincipalStatus.ACTIVE: 0, PrincipalStatus.SUSPENDED: 1,
                   PrincipalStatus.OFFBOARDED: 2}


@dataclass(frozen=True, slots=True, kw_only=True)
class _Source:
    event_time: datetime
    source: str = ""
    source_event_id: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentRegistered(_Source):
    agent_id: str
    owner: str
    purpose: str
    department: str | None = None
    contact: str | None = None
    created_by: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentStatusChanged(_Source):
    agent_id: str
    status: AgentStatus


@dataclass(frozen=True, slots=True, kw_only=True)
class PrincipalStatusChanged(_Source):
    principal_id: str
    status: PrincipalStatus


LifecycleEvent = AgentRegistered | AgentStatusChanged | PrincipalStatusChanged


def lifecycle_key(event: LifecycleEvent) -> str:
    """The compacted topic's key: one key per independently changing fact of a subject.

    Compaction keeps the last record per key, so a subject's registration and its status
    need separate keys or a status change would erase the registration.
    """
    if isinstance(event, AgentRegistered):
        return f"agent:{event.agent_id}/registration"
    if isinstance(event, AgentStatusChanged):
        return f"agent:{event.agent_id}/status"
    return f"principal:{event.principal_id}/status"


@dataclass(frozen=True, slots=True)
class Applied:
    """What applying one event changed; the worker turns these into orphan checks."""

    changed: bool
    # Principal id when this event moved a principal from active to inactive.
    principal_deactivated: str | None = None
    # Agent id when this event (re-)registered an agent whose owner is already inactive.
    agent_registered_orphan: str | None = None


_OrderKey = tuple[datetime, int, str, str]


def _order(event: _Source, rank: int) -> _OrderKey:
    return (event.event_time, rank, event.source, event.source_event_id)


class IdentityState:
    """All agents and principals, folded from the lifecycle topic. Not thread-safe."""

    __slots__ = ("_agent_reg_order", "_agent_status_order", "_owned", "_principal_order",
                 "agents", "principals")

    def __init__(self) -> None:
        self.agents: dict[str, AgentRecord] = {}
        self.principals: dict[str, PrincipalRecord] = {}
        self._owned: dict[str, set[str]] = {}
        self._agent_reg_order: dict[str, _OrderKey] = {}
        self._agent_status_order: dict[str, _OrderKey] = {}
        self._principal_order: dict[str, _OrderKey] = {}

    def __len__(self) -> int:
        return len(self.agents) + len(self.principals)

    def agent(self, agent_id: str) -> AgentRecord | None:
        return self.agents.get(agent_id)

    def principal(self, principal_id: str) -> PrincipalRecord | None:
        return self.principals.get(principal_id)

    def agents_owned_by(self, principal_id: str) -> list[str]:
        return sorted(self._owned.get(principal_id, ()))

    def owner_active(self, principal_id: str | None) -> bool:
        if not principal_id:
            return False
        rec = self.principals.get(principal_id)
        return rec is not None and rec.status is PrincipalStatus.ACTIVE

    def winning_event(self, key: str) -> LifecycleEvent | None:
        """The event that currently holds the fact behind a lifecycle key (None: unknown).

        Rebuilt exactly (same event time, source and source event id), so writing it back
        under its key is a no-op for every reader; see `needs_repair`.
        """
        subject, _, fact = key.rpartition("/")
        kind, _, ident = subject.partition(":")
        if kind == "principal" and fact == "status":
            rec, order = self.principals.get(ident), self._principal_order.get(ident)
            if rec is None or order is None:
                return None
            return PrincipalStatusChanged(principal_id=ident, status=rec.status,
                                          event_time=order[0], source=order[2],
                                          source_event_id=order[3])
        if kind != "agent":
            return None
        agent = self.agents.get(ident)
        if agent is None:
            return None
        if fact == "status":
            order = self._agent_status_order.get(ident)
            if order is None:
                return None
            return AgentStatusChanged(agent_id=ident, status=agent.status, event_time=order[0],
                                      source=order[2], source_event_id=order[3])
        if fact == "registration":
            order = self._agent_reg_order.get(ident)
            if order is None or agent.owner is None:
                return None
            return AgentRegistered(agent_id=ident, owner=agent.owner,
                                   purpose=agent.purpose or "", department=agent.department,
                                   contact=agent.contact, created_by=agent.created_by,
                                   event_time=order[0], source=order[2],
                                   source_event_id=order[3])
        return None

    def needs_repair(self, event: LifecycleEvent) -> LifecycleEvent | None:
        """The newer event to write back when `event` lost to it, else None.

        Compaction keeps the record with the highest *offset* per key. A late, older event
        written after a newer one would be the survivor, and a worker rebuilding its state
        from the compacted topic would resurrect, say, an offboarded principal. Writing the
        winner back under the same key makes the newest event the last record again.
        """
        winner = self.winning_event(lifecycle_key(event))
        return winner if winner is not None and winner != event else None

    def apply(self, event: LifecycleEvent) -> Applied:
        if isinstance(event, AgentRegistered):
            return self._apply_registration(event)
        if isinstance(event, AgentStatusChanged):
            return self._apply_agent_status(event)
        return self._apply_principal_status(event)

    def _apply_registration(self, ev: AgentRegistered) -> Applied:
        key = _order(ev, 0)
        prev = self._agent_reg_order.get(ev.agent_id)
        if prev is not None and key <= prev:
            return Applied(False)
        self._agent_reg_order[ev.agent_id] = key
        old = self.agents.get(ev.agent_id) or AgentRecord(agent_id=ev.agent_id)
        if old.owner and old.owner != ev.owner:
            self._owned.get(old.owner, set()).discard(ev.agent_id)
        self._owned.setdefault(ev.owner, set()).add(ev.agent_id)
        self.agents[ev.agent_id] = replace(
            old, owner=ev.owner, purpose=ev.purpose, department=ev.department,
            contact=ev.contact, created_by=ev.created_by, registered_at=ev.event_time)
        orphan = None if self.owner_active(ev.owner) else ev.agent_id
        return Applied(True, agent_registered_orphan=orphan)

    def _apply_agent_status(self, ev: AgentStatusChanged) -> Applied:
        key = _order(ev, _AGENT_RANK[ev.status])
        prev = self._agent_status_order.get(ev.agent_id)
        if prev is not None and key <= prev:
            return Applied(False)
        self._agent_status_order[ev.agent_id] = key
        old = self.agents.get(ev.agent_id) or AgentRecord(agent_id=ev.agent_id)
        self.agents[ev.agent_id] = replace(old, status=ev.status, status_at=ev.event_time)
        return Applied(True)

    def _apply_principal_status(self, ev: PrincipalStatusChanged) -> Applied:
        key = _order(ev, _PRINCIPAL_RANK[ev.status])
        prev = self._principal_order.get(ev.principal_id)
        if prev is not None and key <= prev:
            return Applied(False)
        was_active = self.owner_active(ev.principal_id)
        self._principal_order[ev.principal_id] = key
        self.principals[ev.principal_id] = PrincipalRecord(
            principal_id=ev.principal_id, status=ev.status, status_at=ev.event_time,
            source=ev.source, source_event_id=ev.source_event_id)
        deactivated = ev.principal_id if was_active and ev.status is not PrincipalStatus.ACTIVE \
            else None
        # A principal first seen as inactive also orphans any agent already registered to it.
        if prev is None and ev.status is not PrincipalStatus.ACTIVE:
            deactivated = ev.principal_id
        return Applied(True, principal_deactivated=deactivated)
