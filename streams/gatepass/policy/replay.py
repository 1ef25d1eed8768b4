"""What would a candidate policy have decided? Re-decide recorded intents, report the diff.

`gatepass policy replay --candidate DIR` reads decision records from the audit topic and runs
each recorded intent through `decide()` again, with the candidate policy and the identity
facts that decision recorded (agent status, owner and owner status, purpose, department),
at the recorded decision time. Nothing is emitted and no state changes: the report is
printed and written as JSON.

Not every record is the policy's to change; these are counted, never re-decided:
  * answers that did not depend on the policy: invalid_intent, stale_intent,
    state_not_ready, intent_signature_invalid, internal_error;
  * final approval outcomes (approved, approval_denied, approval_expired, ...): the owner
    decided those; the intent's first record (PENDING) is replayed instead;
  * intents with a delegation chain: the delegating agents' facts are not recorded;
  * limit_exceeded answers: the budget ledgers of then are not recorded. Limits are not
    re-evaluated at all: a candidate is judged on its Cedar policies.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from gatepass.codec.records import facts_from_record, intent_from_record
from gatepass.core import (
    AgentRecord,
    AgentStatus,
    Freshness,
    IdentityFacts,
    PrincipalRecord,
    PrincipalStatus,
    decide,
)
from gatepass.core.policy import CedarPolicy

__all__ = ["NOT_POLICY", "ReplayReport", "replay"]

NOT_POLICY = frozenset({"invalid_intent", "stale_intent", "state_not_ready",
                        "intent_signature_invalid", "internal_error"})
FINAL_APPROVAL = frozenset({"approved", "approval_denied", "approval_expired",
                            "approval_forged", "approval_replayed", "approval_unknown",
                            "approver_inactive"})
_ANY_AGE = Freshness(max_age=timedelta(days=36500), max_skew=timedelta(days=36500))
MAX_EXAMPLES = 20


@dataclass(slots=True)
class ReplayReport:
    candidate: str
    since: datetime | None = None
    until: datetime | None = None
    replayed: int = 0
    unchanged: int = 0
    changes: Counter[str] = field(default_factory=Counter)  # "DENY -> ALLOW" -> count
    other_policies: int = 0  # same decision and reasons, other deciding policy ids
    skipped: Counter[str] = field(default_factory=Counter)
    by_version: Counter[str] = field(default_factory=Counter)  # recorded policy versions
    examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def changed(self) -> int:
        return sum(self.changes.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "replayed": self.replayed, "unchanged": self.unchanged, "changed": self.changed,
            "changes": dict(sorted(self.changes.items())),
            "other_policy_ids": self.other_policies,
            "skipped": dict(sorted(self.skipped.items())),
            "recorded_versions": dict(sorted(self.by_version.items())),
            "examples": self.examples,
        }

    def render(self) -> str:
        span = f"{self.since.isoformat() if self.since else 'the beginning'} .. " \
               f"{self.until.isoformat() if self.until else 'now'}"
        lines = [f"replayed {self.replayed} decisions ({span}) under {self.candidate}",
                 f"unchanged {self.unchanged}, changed {self.changed}, same outcome by other "
                 f"policies {self.other_policies}, not replayable {sum(self.skipped.values())}"]
        for change, count in sorted(self.changes.items()):
            lines.append(f"  {change:<24} {count}")
        for cause, count in sorted(self.skipped.items()):
            lines.append(f"  skipped ({cause}): {count}")
        if self.examples:
            lines.append("examples:")
            for e in self.examples:
                lines.append(
                    f"  {e['intent_id']} {e['agent_id']} {e['action']}: "
                    f"{e['before']['decision']}({','.join(e['before']['reasons'])}) -> "
                    f"{e['after']['decision']}({','.join(e['after']['reasons'])}) "
                    f"[{', '.join(e['after']['policy_ids'])}]")
        return "\n".join(lines)


class _RecordedIdentity:
    """The identity view as one decision record saw it (agent and owner only)."""

    def __init__(self, agent_id: str, facts: IdentityFacts, at: datetime) -> None:
        self._agent = None
        if facts.agent_registered:
            self._agent = AgentRecord(
                agent_id=agent_id, owner=facts.owner, department=facts.department,
                purpose=facts.purpose, registered_at=facts.agent_status_at or at,
                status=AgentStatus(facts.agent_status or "active"),
                status_at=facts.agent_status_at)
        self._owner = None
        if facts.owner and facts.owner_status:
            self._owner = PrincipalRecord(principal_id=facts.owner,
                                          status=PrincipalStatus(facts.owner_status),
                                          status_at=facts.owner_status_at or at)

    def agent(self, agent_id: str) -> AgentRecord | None:
        return self._agent if self._agent and self._agent.agent_id == agent_id else None

    def principal(self, principal_id: str, now: datetime | None = None
                  ) -> PrincipalRecord | None:
        return self._owner if self._owner and self._owner.principal_id == principal_id else None


def _first_records(records: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """One record per intent: its first decision (a PENDING rather than its final)."""
    first: dict[str, Mapping[str, Any]] = {}
    for rec in records:
        intent_id = rec["intent"]["intent_id"]
        if set(rec["reasons"]) & FINAL_APPROVAL:
            first.setdefault(intent_id, {"_final_only": True, **rec})
            continue
        if intent_id not in first or first[intent_id].get("_final_only") or \
                rec["decided_at"] < first[intent_id]["decided_at"]:
            first[intent_id] = rec
    return list(first.values())


def replay(records: Iterable[Mapping[str, Any]], candidate: CedarPolicy, *,
           since: datetime | None = None, until: datetime | None = None) -> ReplayReport:
    """Re-decide every recorded decision in [since, until] under `candidate`. Pure."""
    report = ReplayReport(candidate=candidate.version, since=since, until=until)
    chosen = [r for r in records if (since is None or r["decided_at"] >= since)
              and (until is None or r["decided_at"] <= until)]
    for rec in sorted(_first_records(chosen), key=lambda r: r["decided_at"]):
        reasons = tuple(rec["reasons"])
        if rec.get("_final_only"):
            report.skipped["final approval outcome only"] += 1
            continue
        if set(reasons) & NOT_POLICY:
            report.skipped["not decided by policy"] += 1
            continue
        if "limit_exceeded" in reasons:
            report.skipped["stateful limit"] += 1  # the ledgers of then are not recorded
            continue
        if rec["intent"].get("delegation_chain"):
            report.skipped["delegation chain"] += 1
            continue
        intent = intent_from_record(rec["intent"])
        facts = facts_from_record(rec["facts"])
        at = rec["decided_at"]
        result = decide(intent, _RecordedIdentity(intent.agent_id, facts, at), candidate,
                        now=at, freshness=_ANY_AGE, ready=True)
        report.replayed += 1
        report.by_version[rec["policy_version"]] += 1
        after = (result.decision.value, tuple(r.value for r in result.reasons))
        if after == (rec["decision"], reasons):
            report.unchanged += 1
            if tuple(rec.get("policy_ids") or ()) != result.policy_ids and \
                    rec["policy_version"].startswith("cedar-"):
                report.other_policies += 1
            continue
        report.changes[f"{rec['decision']} -> {result.decision.value}"] += 1
        if len(report.examples) < MAX_EXAMPLES:
            report.examples.append({
                "intent_id": intent.intent_id, "agent_id": intent.agent_id,
                "action": intent.action, "resource": intent.resource,
                "amount": None if intent.amount is None else str(intent.amount),
                "currency": intent.currency, "decided_at": at.isoformat(),
                "before": {"decision": rec["decision"], "reasons": list(reasons),
                           "policy_version": rec["policy_version"],
                           "policy_ids": list(rec.get("policy_ids") or ())},
                "after": {"decision": result.decision.value,
                          "reasons": [r.value for r in result.reasons],
                          "policy_ids": list(result.policy_ids), "detail": result.detail},
            })
    return report


def report_json(report: ReplayReport) -> str:
    return json.dumps(report.to_json(), indent=2, sort_keys=True)
