"""Identity state folded from lifecycle events: the newest event time wins, whatever the order.

Lifecycle events can arrive out of order (several sources, retries, replays). Each fact of a
subject (an agent's registration, an agent's status, a principal's status) keeps the event
with the greatest order key (event time, then severity so a tie fails closed, then source and
source event id so every worker resolves the same tie the same way). An older event never
overwrites a newer one, so a late "active" cannot resurrect an offboarded principal.

A principal's status can also be *scheduled*: a fact recorded before the time it takes effect
(`recorded_at` < `event_time`, say a termination dated next Friday). It lives in a fact of its
own (`principal:<id>/scheduled-status`), so compaction keeps the status in force beside it,
and it counts only from its event time on: `principal(id, now=...)` answers as of `now`.
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
    "is_scheduled",
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
    # When the source recorded the fact (None: at its event time, as every writer did before
    # facts could be scheduled). Only a principal status uses it: see `is_scheduled`.
    recorded_at: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentRegistered(_Source):
    agent_id: str
    owner: str
    purpose: str
    department: str | None = None
    contact: str | None = None
    created_by: str | None = None
    # RFC 8037 OKP `x` of the agent's Ed25519 public key (base64url, 32 bytes), if it has one.
    public_key: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentStatusChanged(_Source):
    agent_id: str
    status: AgentStatus


@dataclass(frozen=True, slots=True, kw_only=True)
class PrincipalStatusChanged(_Source):
    principal_id: str
    status: PrincipalStatus


LifecycleEvent = AgentRegistered | AgentStatusChanged | PrincipalStatusChanged


def is_scheduled(event: LifecycleEvent) -> bool:
    """A principal status recorded before it takes effect (a termination dated ahead).

    Agent facts are never scheduled: their event time is when the source saw the change.
    """
    return (isinstance(event, PrincipalStatusChanged) and event.recorded_at is not None
            and event.event_time > event.recorded_at)


def lifecycle_key(event: LifecycleEvent) -> str:
    """The compacted topic's key: one key per independently changing fact of a subject.

    Compaction keeps the last record per key, so a subject's registration and its status
    need separate keys or a status change would erase the registration; likewise a scheduled
    status has its own key, or it would erase the status in force until its time.
    """
    if isinstance(event, AgentRegistered):
        return f"agent:{event.agent_id}/registration"
    if isinstance(event, AgentStatusChanged):
        return f"agent:{event.agent_id}/status"
    if is_scheduled(event):
        return f"principal:{event.principal_id}/scheduled-status"
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
_PlanKey = tuple[datetime, datetime, int, str, str]


def _order(event: _Source, rank: int) -> _OrderKey:
    return (event.event_time, rank, event.source, event.source_event_id)


def _status_order(event: PrincipalStatusChanged) -> _OrderKey:
    return _order(event, _PRINCIPAL_RANK[event.status])


def _plan_order(event: PrincipalStatusChanged) -> _PlanKey:
    # Scheduled facts are plans: the one recorded last is the plan (it may move a date
    # earlier or cancel a termination), then the usual order for plans recorded together.
    assert event.recorded_at is not None
    return (event.recorded_at, *_status_order(event))


def _in_force(event: PrincipalStatusChanged) -> PrincipalStatusChanged:
    """A scheduled fact as the status it becomes at its time (keyed `principal:<id>/status`).

    Deterministic, so every worker that writes it writes the same bytes.
    """
    return replace(event, recorded_at=event.event_time)


def _record(event: PrincipalStatusChanged) -> PrincipalRecord:
    return PrincipalRecord(principal_id=event.principal_id, status=event.status,
                           status_at=event.event_time, source=event.source,
                           source_event_id=event.source_event_id)


def _same_fact(a: LifecycleEvent, b: LifecycleEvent) -> bool:
    """Equal as facts: a fact in force is the same whenever it was recorded."""
    if is_scheduled(a) or is_scheduled(b):
        return a == b
    return replace(a, recorded_at=None) == replace(b, recorded_at=None)


class IdentityState:
    """All agents and principals, folded from the lifecycle topic. Not thread-safe."""

    __slots__ = ("_agent_key_order", "_agent_reg_order", "_agent_status_order", "_owned",
                 "_principal_events", "_scheduled", "_unwritten", "agents", "principals")

    def __init__(self) -> None:
        self.agents: dict[str, AgentRecord] = {}
        # The status in force per principal (from `principal:<id>/status`); scheduled
        # facts are kept apart and count only from their time (see `principal`).
        self.principals: dict[str, PrincipalRecord] = {}
        self._owned: dict[str, set[str]] = {}
        self._agent_reg_order: dict[str, _OrderKey] = {}
        # Per keyed agent: the order of the registration its key came from. A key is kept
        # by registrations without one (see `_apply_registration`).
        self._agent_key_order: dict[str, _OrderKey] = {}
        self._agent_status_order: dict[str, _OrderKey] = {}
        self._principal_events: dict[str, PrincipalStatusChanged] = {}
        self._scheduled: dict[str, PrincipalStatusChanged] = {}
        # Scheduled facts that took effect and were then replaced by a newer plan: folded
        # into the status in force here, but not yet written under its key (see
        # `due_promotions`), so a state rebuilt from the compacted topic would miss them.
        self._unwritten: dict[str, PrincipalStatusChanged] = {}

    def __len__(self) -> int:
        return len(self.agents) + len(self.principals)

    def agent(self, agent_id: str) -> AgentRecord | None:
        return self.agents.get(agent_id)

    def principal(self, principal_id: str, now: datetime | None = None
                  ) -> PrincipalRecord | None:
        """The principal's status in force, as of `now` when given.

        With `now`, a scheduled fact whose time has come counts (no record needs to arrive
        at that moment); without it, only what is in force on the topic (facts recorded in
        force, and scheduled ones once a worker has written them back as in force).
        """
        current = self.principals.get(principal_id)
        if now is None:
            return current
        plan = self._scheduled.get(principal_id)
        if plan is None or plan.event_time > now:
            return current
        held = self._principal_events.get(principal_id)
        if held is not None and _status_order(plan) <= _status_order(held):
            return current
        return _record(plan)

    def scheduled(self, principal_id: str) -> PrincipalStatusChanged | None:
        """The principal's scheduled status (the latest plan), whether its time came or not."""
        return self._scheduled.get(principal_id)

    def agents_owned_by(self, principal_id: str) -> list[str]:
        return sorted(self._owned.get(principal_id, ()))

    def owner_active(self, principal_id: str | None) -> bool:
        if not principal_id:
            return False
        rec = self.principals.get(principal_id)
        return rec is not None and rec.status is PrincipalStatus.ACTIVE

    def due_promotions(self, now: datetime) -> list[PrincipalStatusChanged]:
        """Scheduled facts in effect by `now` that the topic does not yet hold as in force.

        A worker writes each back under `principal:<id>/status` (the lifecycle fan-out does,
        one worker per identity partition): from then on the fact survives any later plan,
        and the usual fan-out raises the orphan checks of an offboarding. Sorted by key.
        """
        due = list(self._unwritten.items())
        for pid, plan in self._scheduled.items():
            if plan.event_time > now:
                continue
            held = self._principal_events.get(pid)
            if held is None or _status_order(plan) > _status_order(held):
                due.append((pid, _in_force(plan)))
        return [event for _, event in sorted(due, key=lambda d: (d[0], _status_order(d[1])))]

    def winning_event(self, key: str) -> LifecycleEvent | None:
        """The event that currently holds the fact behind a lifecycle key (None: unknown).

        Rebuilt exactly (same event time, source and source event id), so writing it back
        under its key is a no-op for every reader; see `needs_repair`.
        """
        subject, _, fact = key.rpartition("/")
        kind, _, ident = subject.partition(":")
        if kind == "principal" and fact == "status":
            return self._principal_events.get(ident)
        if kind == "principal" and fact == "scheduled-status":
            return self._scheduled.get(ident)
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
                                   public_key=agent.public_key, event_time=order[0],
                                   source=order[2], source_event_id=order[3])
        return None

    def holds(self, event: LifecycleEvent) -> bool:
        """Whether the fact behind `event`'s key is `event` already (a redelivery), or
        applying it would change nothing (a registration without a key, the rest equal)."""
        winner = self.winning_event(lifecycle_key(event))
        if (isinstance(event, AgentRegistered) and isinstance(winner, AgentRegistered)
                and event.public_key is None):
            event = replace(event, public_key=winner.public_key)
        return winner is not None and _same_fact(winner, event)

    def needs_repair(self, event: LifecycleEvent) -> LifecycleEvent | None:
        """The newer event to write back when `event` lost to it, else None.

        Compaction keeps the record with the highest *offset* per key. A late, older event
        written after a newer one would be the survivor, and a worker rebuilding its state
        from the compacted topic would resurrect, say, an offboarded principal. Writing the
        winner back under the same key makes the newest event the last record again.
        """
        winner = self.winning_event(lifecycle_key(event))
        return winner if winner is not None and not _same_fact(winner, event) else None

    def apply(self, event: LifecycleEvent) -> Applied:
        if isinstance(event, AgentRegistered):
            return self._apply_registration(event)
        if isinstance(event, AgentStatusChanged):
            return self._apply_agent_status(event)
        if is_scheduled(event):
            return self._apply_plan(event)
        return self._apply_principal_status(event)

    def _apply_registration(self, ev: AgentRegistered) -> Applied:
        """The newest registration's facts; the key of the newest registration with a key.

        A registration without a public key keeps the agent's key: an IdP connector or an
        importer that knows nothing of keys re-registering an agent must not switch off its
        signature requirement (a downgrade). A key is replaced by a newer registration with
        another key, never removed. Order-independent: a keyed registration delivered after
        a newer keyless one still brings its key. The fan-out writes the merged registration
        back (`needs_repair`), so compaction cannot keep the keyless record alone.
        """
        key = _order(ev, 0)
        prev = self._agent_reg_order.get(ev.agent_id)
        if prev is not None and key <= prev:
            # Its facts lost; its key counts if no newer registration brought one (ties, as
            # between a merged write-back and a late key, go to the greater key: a total
            # order, so every view and the repairs agree).
            if ev.public_key is None:
                return Applied(False)
            agent = self.agents[ev.agent_id]
            key_from = self._agent_key_order.get(ev.agent_id)
            if key_from is not None and agent.public_key is not None and (
                    (key, ev.public_key) <= (key_from, agent.public_key)):
                return Applied(False)
            self._agent_key_order[ev.agent_id] = key
            if agent.public_key == ev.public_key:
                return Applied(False)  # the same key, now known from a newer record
            self.agents[ev.agent_id] = replace(agent, public_key=ev.public_key)
            return Applied(True)
        self._agent_reg_order[ev.agent_id] = key
        old = self.agents.get(ev.agent_id)
        public_key = ev.public_key
        if public_key is not None:
            self._agent_key_order[ev.agent_id] = key
        elif old is not None:
            public_key = old.public_key
        if old is not None and old.owner and old.owner != ev.owner:
            self._owned.get(old.owner, set()).discard(ev.agent_id)
        self._owned.setdefault(ev.owner, set()).add(ev.agent_id)
        if old is None:  # built in one go: a large view loads mostly new agents, and
            # `replace` of a blank record costs twice as much
            self.agents[ev.agent_id] = AgentRecord(
                agent_id=ev.agent_id, owner=ev.owner, purpose=ev.purpose,
                department=ev.department, contact=ev.contact, created_by=ev.created_by,
                public_key=public_key, registered_at=ev.event_time)
        else:
            self.agents[ev.agent_id] = replace(
                old, owner=ev.owner, purpose=ev.purpose, department=ev.department,
                contact=ev.contact, created_by=ev.created_by, public_key=public_key,
                registered_at=ev.event_time)
        orphan = None if self.owner_active(ev.owner) else ev.agent_id
        return Applied(True, agent_registered_orphan=orphan)

    def _apply_agent_status(self, ev: AgentStatusChanged) -> Applied:
        key = _order(ev, _AGENT_RANK[ev.status])
        prev = self._agent_status_order.get(ev.agent_id)
        if prev is not None and key <= prev:
            return Applied(False)
        self._agent_status_order[ev.agent_id] = key
        old = self.agents.get(ev.agent_id)
        self.agents[ev.agent_id] = (
            AgentRecord(agent_id=ev.agent_id, status=ev.status, status_at=ev.event_time)
            if old is None else replace(old, status=ev.status, status_at=ev.event_time))
        return Applied(True)

    def _apply_principal_status(self, ev: PrincipalStatusChanged) -> Applied:
        key = _status_order(ev)
        pending = self._unwritten.get(ev.principal_id)
        if pending is not None and key >= _status_order(pending):
            del self._unwritten[ev.principal_id]  # the topic now holds it, or a newer fact
        held = self._principal_events.get(ev.principal_id)
        if held is not None and key <= _status_order(held):
            return Applied(False)
        was_active = self.owner_active(ev.principal_id)
        self._principal_events[ev.principal_id] = ev
        self.principals[ev.principal_id] = _record(ev)
        deactivated = ev.principal_id if was_active and ev.status is not PrincipalStatus.ACTIVE \
            else None
        # A principal first seen as inactive also orphans any agent already registered to it.
        if held is None and ev.status is not PrincipalStatus.ACTIVE:
            deactivated = ev.principal_id
        return Applied(True, principal_deactivated=deactivated)

    def _apply_plan(self, ev: PrincipalStatusChanged) -> Applied:
        """A scheduled status: the plan recorded last wins its key.

        The plan it displaces (or that a late, older plan loses to) is dropped, unless its
        time had come when the newer plan was recorded: then it happened, and it joins the
        status in force (to be written back, see `due_promotions`), or a new plan would
        undo a termination that already took effect.
        """
        plan = self._scheduled.get(ev.principal_id)
        if plan is None or _plan_order(ev) > _plan_order(plan):
            self._scheduled[ev.principal_id] = ev
            loser, winner, changed = plan, ev, True
        else:
            loser, winner, changed = ev, plan, False
        assert winner.recorded_at is not None
        if loser is None or loser == winner or loser.event_time > winner.recorded_at:
            return Applied(changed)
        happened = _in_force(loser)
        applied = self._apply_principal_status(happened)
        if applied.changed:
            self._unwritten[ev.principal_id] = happened
        return Applied(changed or applied.changed,
                       principal_deactivated=applied.principal_deactivated)
