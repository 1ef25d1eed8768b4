"""The policy: Cedar decides what each agent may do and which actions need its owner.

A policy bundle is a set of files (relative path -> text), usually the `policies/` folder:

    schema.cedarschema   entity and action declarations (namespace Gatepass)
    scope/*.cedar        permit / forbid: what agents may do; default deny
    approval/*.cedar     a permit here means: the owner must approve first
    gatepass.toml        what Cedar cannot say: approval delegates, stateful limits
    tests/*.toml         request -> expected decision cases (`gatepass policy test`)

`CedarPolicy.from_files` parses and validates everything once; an error names the file and
line and nothing is half-loaded. Each policy carries an `@id("...")` annotation, unique in
the bundle: verdicts name the policies that decided by these ids. The version is a content
hash of every file except the tests, so every verdict says exactly which policy made it.

Evaluation is pure: the agent, its owner and the intent go in, an `Evaluation` comes out.
Cedar's own rule that an erroring policy is skipped is not enough for us: any evaluation
error makes the answer `policy_error`, never an allow. The one piece of state is a bounded
cache of prepared entity sets per (agent, owner) record pair - a memo, not a fact.

What Cedar sees (see policies/schema.cedarschema):
    principal  Gatepass::Agent::"<agent id>"   purpose, status, owner, department?, signed
               in Gatepass::Department::"<department>" when the agent has one
    owner      Gatepass::Principal::"<id>"      status (active|suspended|offboarded|unknown)
    action     Gatepass::Action::"<noun.verb>"  must be declared in the schema
    resource   Gatepass::Resource::"<resource>" (no attributes; see context)
    context    amount? (decimal), currency?, resource, audience, delegated, delegation_depth
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import cedarpy
from cedarpy import _internal as _cedar  # the handle-taking entry point, without re-wrapping

from gatepass.core.approval import ApprovalRules
from gatepass.core.limits import LimitRule, parse_limits
from gatepass.core.model import AgentRecord, Intent, PrincipalRecord, PrincipalStatus
from gatepass.errors import PolicyError

__all__ = ["CedarPolicy", "Evaluation", "PolicyFiles", "split_statements"]

PolicyFiles = Mapping[str, str]

NAMESPACE = "Gatepass"
SCHEMA_FILE = "schema.cedarschema"
SETTINGS_FILE = "gatepass.toml"
_POLICY_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
_FILE_RE = re.compile(r"^(schema\.cedarschema|gatepass\.toml|(scope|approval)/[A-Za-z0-9_.-]+"
                      r"\.cedar|tests/[A-Za-z0-9_.-]+\.toml)$")
_MAX_FILE_BYTES = 256 * 1024
_ENTITY_CACHE = 20_000


@dataclass(frozen=True, slots=True)
class Evaluation:
    """What Cedar said about one request: allowed, which policies decided, any errors."""

    allowed: bool
    policy_ids: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()

    @property
    def failed(self) -> bool:
        return bool(self.errors)


@dataclass(frozen=True, slots=True)
class _Statement:
    file: str
    line: int
    text: str


@dataclass(frozen=True, slots=True)
class _CompiledSet:
    policies: Any  # cedarpy.PolicySet
    ids: Mapping[str, str]  # Cedar's positional id (policy0...) -> our @id
    reasons: Mapping[str, str]  # @id -> @reason annotation (approval set)
    origin: Mapping[str, tuple[str, int]]  # @id -> (file, line)

    def __len__(self) -> int:
        return len(self.ids)


def split_statements(text: str, file: str) -> list[_Statement]:
    """Cut Cedar policy text into statements at top-level `;`, keeping each one's first line.

    Cedar has no `;` inside expressions, so only strings and comments need skipping.
    """
    out: list[_Statement] = []
    start, line, first_line = 0, 1, None
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
        elif c == "/" and text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        elif c == '"':
            if first_line is None:
                first_line = line
            i += 1
            while i < n and text[i] != '"':
                if text[i] == "\\":
                    i += 1
                elif text[i] == "\n":
                    line += 1
                i += 1
        elif c == ";":
            out.append(_Statement(file, first_line or line, text[start:i + 1]))
            start, first_line = i + 1, None
        elif not c.isspace() and first_line is None:
            first_line = line
        i += 1
    if text[start:].strip() and first_line is not None:
        # A policy without its closing `;`: let Cedar say what is wrong with it.
        out.append(_Statement(file, first_line, text[start:]))
    return out


def _line_of(text: str, message: str) -> int | None:
    """The schema line an error is on. Cedar's messages carry no position: a syntax error is
    found as the shortest prefix of the text that fails with the same message; for others
    (an unknown type), the first line holding the token the message quotes, as a word."""
    if message.startswith("error parsing schema"):
        lines = text.splitlines(keepends=True)
        for number in range(1, len(lines) + 1):
            try:
                cedarpy.Schema.from_str("".join(lines[:number]))
            except ValueError as exc:
                if str(exc) == message:
                    return number
        return None
    for token in re.findall(r"`([^`]+)`|: ([A-Za-z_][A-Za-z0-9_:]*)", message):
        needle = re.compile(r"(?<![A-Za-z0-9_])" + re.escape(token[0] or token[1])
                            + r"(?![A-Za-z0-9_])")
        for number, content in enumerate(text.splitlines(), 1):
            if needle.search(content.split("//")[0]):
                return number
    return None


def _compile(statements: list[_Statement], schema: Any, seen: dict[str, tuple[str, int]],
             *, approval: bool) -> _CompiledSet:
    for st in statements:
        try:
            one = cedarpy.PolicySet.from_str(st.text)
        except ValueError as exc:
            raise PolicyError(str(exc), file=st.file, line=st.line) from None
        if len(one) != 1:
            raise PolicyError("a statement must be exactly one static policy (templates are "
                              "not supported)", file=st.file, line=st.line)
    text = "\n".join(st.text for st in statements)
    policies = cedarpy.PolicySet.from_str(text)
    est = json.loads(cedarpy.policies_to_json_str(text)) if statements else {
        "staticPolicies": {}, "templates": {}}
    if est.get("templates"):
        raise PolicyError("templates are not supported", file=statements[0].file,
                          line=statements[0].line)
    ids: dict[str, str] = {}
    reasons: dict[str, str] = {}
    origin: dict[str, tuple[str, int]] = {}
    for index, st in enumerate(statements):
        body = est["staticPolicies"].get(f"policy{index}")
        if body is None:  # Cedar numbered them differently than we split: refuse, do not guess
            raise PolicyError("could not match the policy to its source", file=st.file,
                              line=st.line)
        annotations = body.get("annotations") or {}
        pid = annotations.get("id")
        if not isinstance(pid, str) or not _POLICY_ID_RE.match(pid):
            raise PolicyError('every policy needs an @id("...") annotation of 1-64 letters, '
                              "digits and ._:-", file=st.file, line=st.line)
        if pid in seen:
            where = f"{seen[pid][0]}:{seen[pid][1]}"
            raise PolicyError(f"policy id {pid!r} is already used at {where}", file=st.file,
                              line=st.line)
        if approval and body.get("effect") != "permit":
            # Approval policies say "ask the owner"; a forbid here would mean nothing there
            # and, evaluated next to the scope policies, would deny the action itself.
            raise PolicyError("approval policies must be permits", file=st.file, line=st.line)
        seen[pid] = (st.file, st.line)
        ids[f"policy{index}"] = pid
        origin[pid] = (st.file, st.line)
        if approval:
            reason = annotations.get("reason")
            reasons[pid] = reason if isinstance(reason, str) and reason else (
                f"policy {pid!r} requires the owner's approval")
    if statements:
        result = cedarpy.validate_policies(text, schema)
        if not result.validation_passed:
            def position(error: Any) -> int:
                pid = error.policy_id
                return int(pid[6:]) if pid.startswith("policy") and pid[6:].isdigit() else 0

            # The first policy with errors, and Cedar's first error for it (the most direct:
            # "unrecognized action" before what follows from it).
            first = sorted(result.errors, key=position)[0]
            index = position(first)
            st = statements[min(index, len(statements) - 1)]
            message = _named(first.error, ids)
            more = len(result.errors) - 1
            raise PolicyError(message + (f" (and {more} more)" if more else ""),
                              file=st.file, line=st.line)
    return _CompiledSet(policies=policies, ids=ids, reasons=reasons, origin=origin)


_POSITIONAL = re.compile(r"\bpolicy\d+\b")


def _named(message: str, ids: Mapping[str, str]) -> str:
    """Cedar's messages name policies by position (policy3); ours by @id."""
    return _POSITIONAL.sub(lambda m: repr(ids.get(m.group(0), m.group(0))), message).replace(
        "`'", "'").replace("'`", "'")


def _declared_actions(schema_text: str) -> frozenset[str]:
    """Action names the schema declares (`action "a.b", "c.d" appliesTo ...`)."""
    text = re.sub(r"//[^\n]*", "", schema_text)
    names: set[str] = set()
    for m in re.finditer(r"\baction\s+((?:\"[^\"]*\"|[A-Za-z_][A-Za-z0-9_]*)"
                         r"(?:\s*,\s*(?:\"[^\"]*\"|[A-Za-z_][A-Za-z0-9_]*))*)", text):
        for part in re.findall(r"\"([^\"]*)\"|([A-Za-z_][A-Za-z0-9_]*)", m.group(1)):
            names.add(part[0] or part[1])
    return frozenset(names)


@dataclass(frozen=True, slots=True)
class _Merged:
    """Scope and approval policies in one PolicySet: one Cedar call answers both questions.

    Approval policies are permits only, so next to the scope policies they can add a permit
    but never a forbid: the request is in scope when a *scope* permit applied (and no forbid,
    which would have made Cedar deny), and needs approval when an approval permit applied.
    """

    policies: Any  # cedarpy.PolicySet
    ids: Mapping[str, str]  # positional id -> @id
    approval_ids: frozenset[str]
    order: Mapping[str, int]  # @id -> source order (files sorted, then position)


@dataclass(frozen=True, slots=True, eq=False)
class CedarPolicy:
    """A loaded, validated policy bundle. Build with `from_files`; immutable after that."""

    version: str
    files: Mapping[str, str]
    schema: Any = field(repr=False)
    scope_set: _CompiledSet = field(repr=False)
    approval_set: _CompiledSet = field(repr=False)
    merged: _Merged = field(repr=False)
    actions: frozenset[str] = frozenset()
    approval: ApprovalRules = field(default_factory=ApprovalRules)
    limits: tuple[LimitRule, ...] = ()
    settings: Mapping[str, Any] = field(default_factory=dict, repr=False)
    _entities: OrderedDict[Any, Any] = field(default_factory=OrderedDict, repr=False)

    @classmethod
    def from_files(cls, files: PolicyFiles) -> CedarPolicy:
        """Parse and validate a whole bundle; PolicyError (naming file and line) if anything
        is wrong. Files under tests/ are checked for their names only."""
        for name, text in files.items():
            if not _FILE_RE.match(name):
                raise PolicyError("unexpected file in a policy bundle (expected "
                                  "schema.cedarschema, gatepass.toml, scope/*.cedar, "
                                  "approval/*.cedar, tests/*.toml)", file=name)
            if len(text.encode()) > _MAX_FILE_BYTES:
                raise PolicyError(f"file larger than {_MAX_FILE_BYTES} bytes", file=name)
        schema_text = files.get(SCHEMA_FILE)
        if schema_text is None:
            raise PolicyError("the bundle has no schema", file=SCHEMA_FILE)
        try:
            schema = cedarpy.Schema.from_str(schema_text)
        except ValueError as exc:
            raise PolicyError(str(exc), file=SCHEMA_FILE,
                              line=_line_of(schema_text, str(exc))) from None
        _check_entities_fit(schema)
        actions = _probe_actions(_declared_actions(schema_text), schema)
        if not actions:
            raise PolicyError(f"the schema declares no actions in namespace {NAMESPACE}",
                              file=SCHEMA_FILE)
        seen: dict[str, tuple[str, int]] = {}
        scope_statements = [st for name in sorted(files) if name.startswith("scope/")
                            for st in split_statements(files[name], name)]
        if not scope_statements:
            raise PolicyError("the bundle has no scope policies (everything would be denied)",
                              file="scope/")
        approval_statements = [st for name in sorted(files) if name.startswith("approval/")
                               for st in split_statements(files[name], name)]
        scope_set = _compile(scope_statements, schema, seen, approval=False)
        approval_set = _compile(approval_statements, schema, seen, approval=True)
        merged = _merge(scope_statements + approval_statements, scope_set, approval_set)
        settings = _settings(files.get(SETTINGS_FILE, ""))
        approval = ApprovalRules.from_mapping(settings.get("approval", {}),
                                              source=SETTINGS_FILE)
        limits = parse_limits(settings.get("limits"))
        digest = hashlib.sha256()
        for name in sorted(files):
            if name.startswith("tests/"):
                continue
            digest.update(json.dumps([name, files[name]]).encode() + b"\n")
        return cls(version="cedar-" + digest.hexdigest()[:16], files=dict(files),
                   schema=schema, scope_set=scope_set, approval_set=approval_set,
                   merged=merged, actions=actions, approval=approval, limits=limits,
                   settings=settings)

    # ---- evaluation ------------------------------------------------------------------------
    def check(self, agent: AgentRecord, owner: PrincipalRecord | None, intent: Intent,
              *, delegation_depth: int | None = None) -> tuple[Evaluation, Evaluation]:
        """(scope, approval) for one request, from one Cedar evaluation.

        scope: may this agent take this action (a delegating agent is checked as principal)?
        approval: `allowed` means the owner must approve (meaningful when scope allowed).
        An undeclared action is never evaluated: out of scope, nothing to approve.
        """
        if intent.action not in self.actions:
            return _NO, _NO
        depth = len(intent.delegation_chain) if delegation_depth is None else delegation_depth
        request = {
            "principal": {"type": f"{NAMESPACE}::Agent", "id": agent.agent_id},
            "action": {"type": f"{NAMESPACE}::Action", "id": intent.action},
            "resource": {"type": f"{NAMESPACE}::Resource", "id": intent.resource},
            "context": _context_json(intent, depth),
        }
        merged = self.merged
        raw = _cedar.is_authorized_batch([request], merged.policies,
                                         self._entities_for(agent, owner), None, False)[0]
        answer = json.loads(raw)
        diagnostics = answer.get("diagnostics") or {}
        errors = tuple(_named(str(e), merged.ids) for e in diagnostics.get("errors") or ())
        if errors:
            # Name the policies that failed; Cedar skipped them, we deny.
            failing = tuple(sorted({merged.ids[m] for e in diagnostics.get("errors") or ()
                                    for m in _POSITIONAL.findall(str(e)) if m in merged.ids},
                                   key=merged.order.__getitem__))
            failed = Evaluation(False, failing, errors)
            return failed, failed
        decided = sorted((merged.ids.get(p, p) for p in diagnostics.get("reason") or ()),
                         key=lambda pid: merged.order.get(pid, len(merged.order)))
        if answer.get("decision") != "Allow":
            return Evaluation(False, tuple(decided)), _NO  # the forbids, or none
        scope_ids = tuple(p for p in decided if p not in merged.approval_ids)
        approval_ids = tuple(p for p in decided if p in merged.approval_ids)
        if not scope_ids:  # only approval permits applied: nothing allows the action
            return _NO, _NO
        return Evaluation(True, scope_ids), Evaluation(bool(approval_ids), approval_ids)

    def scope(self, agent: AgentRecord, owner: PrincipalRecord | None, intent: Intent,
              *, delegation_depth: int | None = None) -> Evaluation:
        """May this agent take this action? (`check(...)[0]`)"""
        return self.check(agent, owner, intent, delegation_depth=delegation_depth)[0]

    def needs_approval(self, agent: AgentRecord, owner: PrincipalRecord | None,
                       intent: Intent) -> Evaluation:
        """Must the owner approve? (`check(...)[1]`; only asked once scope allowed.)"""
        return self.check(agent, owner, intent)[1]

    def why(self, policy_ids: tuple[str, ...], intent: Intent | None = None
            ) -> tuple[str, ...]:
        """The human reasons of the approval policies that applied. A reason may name the
        intent's {action}, {resource}, {amount} and {currency}: the approver reads them."""
        out = []
        for pid in policy_ids:
            text = self.approval_set.reasons.get(pid, pid)
            if intent is not None:
                for name, value in (("action", intent.action), ("resource", intent.resource),
                                    ("amount", intent.amount), ("currency", intent.currency)):
                    text = text.replace("{" + name + "}", "" if value is None else str(value))
            out.append(text)
        return tuple(out)

    def origin(self, policy_id: str) -> tuple[str, int] | None:
        return self.scope_set.origin.get(policy_id) or self.approval_set.origin.get(policy_id)

    def _entities_for(self, agent: AgentRecord, owner: PrincipalRecord | None) -> Any:
        key = (agent, owner)
        cache = self._entities
        handle = cache.get(key)
        if handle is not None:
            cache.move_to_end(key)
            return handle
        handle = _cedar.Entities.from_json_str(_entities_json(agent, owner), self.schema)
        cache[key] = handle
        if len(cache) > _ENTITY_CACHE:
            cache.popitem(last=False)
        return handle


_NO = Evaluation(False)


def _merge(statements: list[_Statement], scope_set: _CompiledSet,
           approval_set: _CompiledSet) -> _Merged:
    text = "\n".join(st.text for st in statements)
    policies = cedarpy.PolicySet.from_str(text)
    ordered = list(scope_set.ids.values()) + list(approval_set.ids.values())
    if len(policies) != len(ordered):
        raise PolicyError("could not combine scope and approval policies", file="approval/")
    ids = {f"policy{i}": pid for i, pid in enumerate(ordered)}
    return _Merged(policies=policies, ids=ids, approval_ids=frozenset(approval_set.ids.values()),
                   order={pid: i for i, pid in enumerate(ordered)})


def _probe_request(action: str, context: Mapping[str, Any]) -> dict[str, Any]:
    return {"principal": {"type": f"{NAMESPACE}::Agent", "id": "probe"},
            "action": {"type": f"{NAMESPACE}::Action", "id": action},
            "resource": {"type": f"{NAMESPACE}::Resource", "id": "probe"},
            "context": json.dumps(context)}


def _probe_actions(names: frozenset[str], schema: Any) -> frozenset[str]:
    """The declared names that really are actions of namespace Gatepass, each of which must
    accept the context Gatepass sends (with and without an amount), or the bundle is refused:
    a context the schema types differently would make policies compare unlike values."""
    from datetime import UTC, datetime

    now = datetime(2026, 1, 1, tzinfo=UTC)
    probe = AgentRecord(agent_id="probe", owner="owner", department="dept", purpose="p",
                        registered_at=now, status_at=now)
    owner = PrincipalRecord(principal_id="owner", status=PrincipalStatus.ACTIVE, status_at=now)
    entities = _cedar.Entities.from_json_str(_entities_json(probe, owner), schema)
    empty = cedarpy.PolicySet.from_str("")
    full = json.loads(_context_json(Intent(
        intent_id="probe", agent_id="probe", action="probe.probe", resource="probe",
        audience="probe", requested_at=now, amount=Decimal("1.5"), currency="USD"), 1))
    bare = {k: v for k, v in full.items() if k not in ("amount", "currency")}
    found: set[str] = set()
    for name in sorted(names):
        for context in (full, bare):
            raw = _cedar.is_authorized_batch([_probe_request(name, context)], empty, entities,
                                             schema, False)[0]
            errors = (json.loads(raw).get("diagnostics") or {}).get("errors") or []
            if any("does not exist" in str(e) for e in errors):
                break  # declared in another namespace (or not an action): not ours
            if errors:
                raise PolicyError(f"the schema does not fit the request context Gatepass "
                                  f"sends for action {name!r}: {errors[0]}", file=SCHEMA_FILE)
        else:
            found.add(name)
    return frozenset(found)


def _check_entities_fit(schema: Any) -> None:
    """The schema must accept the entities Gatepass sends, or every request would error."""
    from datetime import UTC, datetime

    now = datetime(2026, 1, 1, tzinfo=UTC)
    probe = AgentRecord(agent_id="probe", owner="owner", department="dept",
                        purpose="purpose", registered_at=now, status_at=now)
    owner = PrincipalRecord(principal_id="owner", status=PrincipalStatus.ACTIVE,
                            status_at=now)
    try:
        _cedar.Entities.from_json_str(_entities_json(probe, owner), schema)
        _cedar.Entities.from_json_str(_entities_json(
            AgentRecord(agent_id="probe", registered_at=now), None), schema)
    except ValueError as exc:
        raise PolicyError("the schema does not fit the entities Gatepass sends: "
                          f"{exc}", file=SCHEMA_FILE) from None


def _settings(text: str) -> Mapping[str, Any]:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = re.search(r"line (\d+)", str(exc))
        raise PolicyError(str(exc), file=SETTINGS_FILE,
                          line=int(line.group(1)) if line else None) from None
    unknown = set(doc) - {"approval", "limits"}
    if unknown:
        raise PolicyError(f"unknown top-level keys {sorted(unknown)}", file=SETTINGS_FILE)
    return doc


def _entities_json(agent: AgentRecord, owner: PrincipalRecord | None) -> str:
    agent_attrs: dict[str, Any] = {
        "purpose": agent.purpose or "",
        "status": agent.status.value,
        "signed": agent.public_key is not None,
    }
    entities: list[dict[str, Any]] = []
    if agent.owner:
        agent_attrs["owner"] = {"__entity": {"type": f"{NAMESPACE}::Principal",
                                             "id": agent.owner}}
        entities.append({"uid": {"type": f"{NAMESPACE}::Principal", "id": agent.owner},
                         "attrs": {"status": owner.status.value if owner else "unknown"},
                         "parents": []})
    parents = []
    if agent.department:
        agent_attrs["department"] = agent.department
        parents.append({"type": f"{NAMESPACE}::Department", "id": agent.department})
        entities.append({"uid": parents[0], "attrs": {}, "parents": []})
    entities.append({"uid": {"type": f"{NAMESPACE}::Agent", "id": agent.agent_id},
                     "attrs": agent_attrs, "parents": parents})
    return json.dumps(entities)


def _context_json(intent: Intent, depth: int) -> str:
    context: dict[str, Any] = {"resource": intent.resource, "audience": intent.audience,
                               "delegated": depth > 0, "delegation_depth": depth}
    if intent.amount is not None:
        context["amount"] = {"__extn": {"fn": "decimal", "arg": _decimal_arg(intent.amount)}}
    if intent.currency is not None:
        context["currency"] = intent.currency
    return json.dumps(context)


def _decimal_arg(amount: Decimal) -> str:
    """Cedar's decimal literal: digits, a point, one to four digits."""
    return f"{amount.quantize(Decimal('0.0001')):f}"
