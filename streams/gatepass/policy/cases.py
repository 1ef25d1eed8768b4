"""Policy test cases: `tests/*.toml` of a bundle, each case an intent and the verdict it must get.

A case runs through the real `gatepass.core.decide` against an identity state built for it
alone (the agent's registration and status, its owner's status, any delegating agents), so
a case checks the whole decision - identity checks first, then Cedar - exactly as the worker
makes it. Pure: the files come in as text (a bundle's `files`), results come out.

    [agents."buyer-bot"]            # optional: agents named by delegation_chain (or by
    purpose = "procurement"         # `agent = "buyer-bot"` in a case); same keys as a case's
    owner = "tom"                   # agent table without `id`, plus owner_status
    owner_status = "active"

    [[case]]
    name = "procurement order within the ceiling"
    agent = { id = "procure-bot", purpose = "procurement", department = "finance",
              status = "active", owner = "sarah", signed = false }
    owner_status = "active"          # active | suspended | offboarded | unknown
    action = "purchase_order.create"
    resource = "vendor:acme"
    audience = "procurement-api"     # optional, default "test"
    amount = "120.00"                # optional, with currency
    currency = "USD"
    delegation_chain = []            # optional: agent ids, each with an [agents] table
    want = "ALLOW"                   # ALLOW | DENY | PENDING
    reasons = ["allowed"]            # optional: exactly these reason codes (any order)
    policy_ids = ["procurement.orders"]  # optional: exactly these @ids decided (any order)

A malformed file or case is a `PolicyError` naming the file, the case and, when it can be
found, the line of the case's `[[case]]` header.
"""

from __future__ import annotations

import base64
import re
import tomllib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gatepass.core.decide import Freshness, decide
from gatepass.core.identity import (
    AgentRegistered,
    AgentStatusChanged,
    IdentityState,
    PrincipalStatusChanged,
)
from gatepass.core.model import (
    AgentStatus,
    Decision,
    DecisionResult,
    Intent,
    PrincipalStatus,
    Reason,
)
from gatepass.core.policy import CedarPolicy
from gatepass.core.signing import sign_intent
from gatepass.errors import PolicyError

__all__ = [
    "NOW",
    "AgentSpec",
    "Case",
    "CaseResult",
    "TestReport",
    "load_cases",
    "parse_cases",
    "run_case",
    "run_cases",
]

# Every case is decided at this instant, requested at it, by identity facts a day older.
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
_FACTS_AT = NOW - timedelta(days=1)
_FRESHNESS = Freshness(max_age=timedelta(minutes=5), max_skew=timedelta(seconds=30))
# Agents with `signed = true` are registered with this key and their intents signed with it:
# a fixed test key, so a case decides the same way on every run.
_TEST_KEY_SEED = b"gatepass-policy-test-agent-key!!"
_UNKNOWN = "unknown"
_OWNER_STATUSES = ("active", "suspended", "offboarded", _UNKNOWN)
_CASE_NAMESPACE = uuid.UUID("5b0c61a4-3c1e-4f43-9d0b-5a3cbf3b7d2e")

_CASE_KEYS = frozenset({
    "name", "agent", "owner_status", "action", "resource", "audience", "amount", "currency",
    "delegation_chain", "want", "reasons", "policy_ids"})
_REQUIRED_CASE_KEYS = ("name", "agent", "action", "resource", "want")
_AGENT_KEYS = frozenset({"id", "purpose", "department", "status", "owner", "signed"})
_AGENT_TABLE_KEYS = (_AGENT_KEYS - {"id"}) | {"owner_status"}
_FILE_KEYS = frozenset({"case", "agents"})
_CASE_HEADER_RE = re.compile(r"^[ \t]*\[\[[ \t]*case[ \t]*\]\]", re.MULTILINE)


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentSpec:
    """An agent as a case registers it (`owner_status` None: not said, counts as active)."""

    agent_id: str
    purpose: str
    owner: str
    department: str | None = None
    status: AgentStatus = AgentStatus.ACTIVE
    signed: bool = False
    owner_status: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Case:
    """One request and the verdict it must get. `reasons`/`policy_ids` None: not checked."""

    file: str
    line: int | None
    index: int  # 1-based position in its file
    name: str
    agent: AgentSpec
    owner_status: str | None
    action: str
    resource: str
    audience: str = "test"
    amount: Decimal | None = None
    currency: str | None = None
    delegation_chain: tuple[AgentSpec, ...] = ()
    want: Decision
    reasons: tuple[str, ...] | None = None
    policy_ids: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CaseResult:
    """What `decide` said about one case, and every way that differs from what it wants."""

    case: Case
    decision: Decision
    reasons: tuple[str, ...]
    policy_ids: tuple[str, ...]
    detail: str
    differences: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return not self.differences

    def to_json(self) -> dict[str, Any]:
        want: dict[str, Any] = {"decision": self.case.want.value}
        if self.case.reasons is not None:
            want["reasons"] = list(self.case.reasons)
        if self.case.policy_ids is not None:
            want["policy_ids"] = list(self.case.policy_ids)
        return {"file": self.case.file, "line": self.case.line, "name": self.case.name,
                "want": want,
                "got": {"decision": self.decision.value, "reasons": list(self.reasons),
                        "policy_ids": list(self.policy_ids), "detail": self.detail},
                "differences": list(self.differences)}


@dataclass(frozen=True, slots=True)
class TestReport:
    """Every case of a bundle run against its policy version."""

    __test__ = False  # not a pytest test class, whatever its name

    version: str
    results: tuple[CaseResult, ...] = field(default=())

    @property
    def passed(self) -> int:
        return sum(1 for r in self.results if r.passed)

    @property
    def failed(self) -> tuple[CaseResult, ...]:
        return tuple(r for r in self.results if not r.passed)

    @property
    def ok(self) -> bool:
        return bool(self.results) and not self.failed

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "cases": len(self.results), "passed": self.passed,
                "failed": [r.to_json() for r in self.failed]}


# ---- reading ---------------------------------------------------------------------------------
def load_cases(files: Mapping[str, str]) -> list[Case]:
    """The cases of every `tests/*.toml` of a bundle's files, in file order, then case order."""
    cases: list[Case] = []
    for name in sorted(files):
        if name.startswith("tests/") and name.endswith(".toml"):
            cases.extend(parse_cases(files[name], name))
    return cases


def parse_cases(text: str, file: str) -> list[Case]:
    """The cases of one cases file; PolicyError naming the file (and case) if it is wrong."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"line (\d+)", str(exc))
        raise PolicyError(str(exc), file=file,
                          line=int(found.group(1)) if found else None) from None
    unknown = set(doc) - _FILE_KEYS
    if unknown:
        raise PolicyError(f"unknown top-level keys {sorted(unknown)} (a cases file holds "
                          "[[case]] entries and [agents.\"<id>\"] tables)", file=file)
    agents = _agent_tables(doc.get("agents", {}), file)
    raw_cases = doc.get("case")
    if not isinstance(raw_cases, list) or not raw_cases:
        raise PolicyError("no [[case]] entries", file=file)
    # tomllib keeps no positions: the n-th `[[case]]` header is the n-th case, when every
    # case is written that way (not as an inline array).
    headers = [text.count("\n", 0, m.start()) + 1 for m in _CASE_HEADER_RE.finditer(text)]
    lines: Sequence[int | None] = headers if len(headers) == len(raw_cases) else \
        [None] * len(raw_cases)
    cases = [_case(raw, file, index, lines[index - 1], agents)
             for index, raw in enumerate(raw_cases, 1)]
    seen: dict[str, Case] = {}
    for case in cases:
        if case.name in seen:
            raise PolicyError(f"case {case.name!r}: the name is already used by case "
                              f"{seen[case.name].index}", file=file, line=case.line)
        seen[case.name] = case
    return cases


def _agent_tables(raw: Any, file: str) -> dict[str, AgentSpec]:
    if not isinstance(raw, Mapping):
        raise PolicyError('agents must be tables: [agents."<id>"]', file=file)
    agents: dict[str, AgentSpec] = {}
    for agent_id, table in raw.items():
        what = f'[agents."{agent_id}"]'
        if not isinstance(table, Mapping):
            raise PolicyError(f"{what} must be a table", file=file)
        unknown = set(table) - _AGENT_TABLE_KEYS
        if unknown:
            raise PolicyError(f"{what}: unknown keys {sorted(unknown)} (expected "
                              f"{sorted(_AGENT_TABLE_KEYS)})", file=file)
        try:
            agents[agent_id] = _agent_spec(agent_id, table)
        except ValueError as exc:
            raise PolicyError(f"{what}: {exc}", file=file) from None
    return agents


def _agent_spec(agent_id: str, table: Mapping[str, Any]) -> AgentSpec:
    purpose = _string(table, "purpose", required=True)
    owner = _string(table, "owner", required=True)
    status = _choice(table, "status", [s.value for s in AgentStatus]) or "active"
    signed = table.get("signed", False)
    if not isinstance(signed, bool):
        raise ValueError("signed must be true or false")
    assert purpose is not None and owner is not None
    return AgentSpec(agent_id=agent_id, purpose=purpose, owner=owner,
                     department=_string(table, "department"), status=AgentStatus(status),
                     signed=signed, owner_status=_choice(table, "owner_status",
                                                         _OWNER_STATUSES))


def _case(raw: Any, file: str, index: int, line: int | None,
          agents: Mapping[str, AgentSpec]) -> Case:
    if not isinstance(raw, Mapping):
        raise PolicyError(f"case {index}: must be a table", file=file, line=line)
    name = raw.get("name")
    label = f"case {name!r}" if isinstance(name, str) and name else f"case {index}"

    def fail(message: str) -> PolicyError:
        return PolicyError(f"{label}: {message}", file=file, line=line)

    unknown = set(raw) - _CASE_KEYS
    if unknown:
        raise fail(f"unknown keys {sorted(unknown)} (expected {sorted(_CASE_KEYS)})")
    missing = [k for k in _REQUIRED_CASE_KEYS if k not in raw]
    if missing:
        raise fail(f"missing keys {missing}")
    try:
        agent = _case_agent(raw["agent"], agents)
        chain = []
        chain_ids = raw.get("delegation_chain", [])
        if not isinstance(chain_ids, list) or not all(isinstance(a, str) for a in chain_ids):
            raise ValueError("delegation_chain must be a list of agent ids")
        for agent_id in chain_ids:
            if agent_id not in agents:
                raise ValueError(f"delegation_chain names {agent_id!r}, which has no "
                                 f'[agents."{agent_id}"] table in this file')
            chain.append(agents[agent_id])
        _choice(raw, "want", [d.value for d in Decision])
        want = Decision(raw["want"])  # required, and just checked
        amount = _amount(raw.get("amount"))
        currency = _string(raw, "currency")
        if amount is None and "currency" in raw:
            raise ValueError("currency given without an amount")
        reasons = _strings(raw, "reasons")
        if reasons is not None:
            known = {r.value for r in Reason}
            bad = [r for r in reasons if r not in known]
            if bad:
                raise ValueError(f"unknown reason codes {bad} (known: {sorted(known)})")
        case = Case(
            file=file, line=line, index=index, name=_string(raw, "name", required=True) or "",
            agent=agent, owner_status=_choice(raw, "owner_status", _OWNER_STATUSES),
            action=_string(raw, "action", required=True) or "",
            resource=_string(raw, "resource", required=True) or "",
            audience=_string(raw, "audience") or "test", amount=amount, currency=currency,
            delegation_chain=tuple(chain), want=want, reasons=reasons,
            policy_ids=_strings(raw, "policy_ids"))
        _principal_statuses(case)  # two different statuses for one owner: say so now
    except ValueError as exc:
        raise fail(str(exc)) from None
    return case


def _case_agent(raw: Any, agents: Mapping[str, AgentSpec]) -> AgentSpec:
    if isinstance(raw, str):
        if raw not in agents:
            raise ValueError(f'agent {raw!r} has no [agents."{raw}"] table in this file')
        return agents[raw]
    if not isinstance(raw, Mapping):
        raise ValueError('agent must be a table { id = ..., purpose = ..., owner = ... } or '
                         'the id of an [agents."<id>"] table')
    unknown = set(raw) - _AGENT_KEYS
    if unknown:
        raise ValueError(f"agent: unknown keys {sorted(unknown)} (expected "
                         f"{sorted(_AGENT_KEYS)})")
    agent_id = _string(raw, "id", required=True)
    assert agent_id is not None
    try:
        return _agent_spec(agent_id, raw)
    except ValueError as exc:
        raise ValueError(f"agent: {exc}") from None


def _string(table: Mapping[str, Any], key: str, *, required: bool = False) -> str | None:
    value = table.get(key)
    if value is None:
        if required:
            raise ValueError(f"{key} is required")
        return None
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} must be a non-empty string")
    return value


def _strings(table: Mapping[str, Any], key: str) -> tuple[str, ...] | None:
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{key} must be a list of strings")
    return tuple(value)


def _choice(table: Mapping[str, Any], key: str, allowed: Sequence[str]) -> str | None:
    value = table.get(key)
    if value is None:
        return None
    if value not in allowed:
        raise ValueError(f"{key} must be one of {', '.join(allowed)} (not {value!r})")
    return str(value)


def _amount(value: Any) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError('amount must be a decimal string such as "120.00"')
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"amount is not a decimal number: {value!r}") from None
    if not amount.is_finite():
        raise ValueError(f"amount is not a finite number: {value!r}")
    return amount


# ---- running ---------------------------------------------------------------------------------
def run_cases(policy: CedarPolicy, cases: Sequence[Case]) -> TestReport:
    """Decide every case under `policy`."""
    return TestReport(policy.version, tuple(run_case(policy, case) for case in cases))


def run_case(policy: CedarPolicy, case: Case) -> CaseResult:
    """Decide one case with the real `decide` and compare the verdict with what it wants."""
    key = Ed25519PrivateKey.from_private_bytes(_TEST_KEY_SEED)
    state = _identity(case, _public_key(key))
    intent = Intent(
        intent_id=str(uuid.uuid5(_CASE_NAMESPACE, f"{case.file}\x00{case.name}")),
        agent_id=case.agent.agent_id, action=case.action, resource=case.resource,
        audience=case.audience, requested_at=NOW, amount=case.amount, currency=case.currency,
        delegation_chain=tuple(a.agent_id for a in case.delegation_chain))
    if case.agent.signed:
        intent = replace(intent, signature=sign_intent(intent, key))
    result = decide(intent, state, policy, now=NOW, freshness=_FRESHNESS, ready=True)
    return CaseResult(case=case, decision=result.decision,
                      reasons=tuple(r.value for r in result.reasons),
                      policy_ids=result.policy_ids, detail=result.detail,
                      differences=_differences(case, result, policy))


def _public_key(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _principal_statuses(case: Case) -> dict[str, str]:
    """Each owner's status in the case's world: said explicitly (once), or active."""
    said: dict[str, str] = {}
    owners: list[tuple[str, str | None, str]] = [
        (a.owner, a.owner_status, f"[agents.{a.agent_id!r}] owner_status")
        for a in case.delegation_chain]
    acting = case.owner_status if case.owner_status is not None else case.agent.owner_status
    owners.append((case.agent.owner, acting, "owner_status"))
    where: dict[str, str] = {}
    for owner, status, source in owners:
        if status is None:
            continue
        if owner in said and said[owner] != status:
            raise ValueError(f"owner {owner!r} is {said[owner]} by {where[owner]} but "
                             f"{status} by {source}")
        said[owner], where[owner] = status, source
    return {owner: said.get(owner, "active") for owner, _, _ in owners}


def _identity(case: Case, public_key: str) -> IdentityState:
    state = IdentityState()
    for principal, status in _principal_statuses(case).items():
        if status != _UNKNOWN:  # unknown: no lifecycle record at all
            state.apply(PrincipalStatusChanged(principal_id=principal,
                                               status=PrincipalStatus(status),
                                               event_time=_FACTS_AT, source="test"))
    for agent in (case.agent, *case.delegation_chain):
        state.apply(AgentRegistered(agent_id=agent.agent_id, owner=agent.owner,
                                    purpose=agent.purpose, department=agent.department,
                                    public_key=public_key if agent.signed else None,
                                    event_time=_FACTS_AT, source="test"))
        state.apply(AgentStatusChanged(agent_id=agent.agent_id, status=agent.status,
                                       event_time=_FACTS_AT, source="test"))
    return state


def _differences(case: Case, result: DecisionResult, policy: CedarPolicy) -> tuple[str, ...]:
    out: list[str] = []
    if result.decision is not case.want:
        out.append(f"decision: want {case.want.value}, got {result.decision.value}")
    got_reasons = tuple(r.value for r in result.reasons)
    if case.reasons is not None and sorted(case.reasons) != sorted(got_reasons):
        out.append(f"reasons: want {_list(case.reasons)}, got {_list(got_reasons)}")
    if case.policy_ids is not None:
        if sorted(case.policy_ids) != sorted(result.policy_ids):
            out.append(f"policy_ids: want {_list(case.policy_ids)}, got "
                       f"{_list(result.policy_ids)}")
        unknown = [p for p in case.policy_ids if policy.origin(p) is None]
        if unknown:
            out.append(f"policy_ids: no policy in the bundle has the @id "
                       f"{', '.join(map(repr, unknown))}")
    return tuple(out)


def _list(items: Sequence[str]) -> str:
    return "[" + ", ".join(items) + "]"
