"""The Cedar policy: the corpus (cases/policy.toml), bundle loading, versions, the shipped bundle.

The corpus runs every request twice: through `CedarPolicy.check` (scope and approval from one
Cedar evaluation: what Cedar says) and through `decide` (what Gatepass does with it). Every
malformed bundle is refused at load with a PolicyError naming the file and, where there is
one, the line.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from gatepass.core import (
    AgentRecord,
    AgentRegistered,
    AgentStatus,
    AgentStatusChanged,
    CedarPolicy,
    Decision,
    Evaluation,
    Freshness,
    IdentityState,
    Intent,
    PrincipalRecord,
    PrincipalStatus,
    PrincipalStatusChanged,
    Reason,
    decide,
    sign_intent,
)
from gatepass.core.policy import split_statements
from gatepass.errors import PolicyError
from gatepass.policy import DEFAULT_POLICY_DIR, load_policy, read_bundle
from gatepass.sdk import agent_public_key
from support.policies import TEST_ACTIONS, TEST_SCHEMA, bundle, bundle_files, schema_with

CORPUS = tomllib.loads((Path(__file__).parent / "cases" / "policy.toml").read_text())
CASES: list[dict[str, Any]] = CORPUS["case"]
SHIPPED = load_policy(None)
BUNDLES: dict[str, CedarPolicy] = {
    name: bundle(doc["scope"], doc.get("approval", ""), doc.get("settings", ""))
    for name, doc in CORPUS["bundles"].items()}
BUNDLES["shipped"] = SHIPPED

NOW = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)
T0 = NOW - timedelta(days=1)
FRESHNESS = Freshness(max_age=timedelta(seconds=120), max_skew=timedelta(seconds=30))
KEY = Ed25519PrivateKey.from_private_bytes(bytes([1]) * 32)
INTENT_ID = "7b0e4c8e-2f4e-4a53-9a57-6a3d1b1d2c11"


# ---- the corpus -----------------------------------------------------------------------------
@dataclass(frozen=True)
class World:
    """One corpus request: the identity state `decide` reads and the intent it judges."""

    state: IdentityState
    intent: Intent

    @property
    def agent(self) -> AgentRecord:
        agent = self.state.agent(self.intent.agent_id)
        assert agent is not None
        return agent

    @property
    def owner(self) -> PrincipalRecord | None:
        return self.state.principal(self.agent.owner or "", NOW)


def world(agent: dict[str, Any], owner: str, intent: dict[str, Any]) -> World:
    """agent-1 of owner "owner" (status `owner`, or no record: "unknown"); its delegators
    (`depth` of them) belong to "lead", who is active, and share its purpose and department."""
    state = IdentityState()
    if owner != "unknown":
        state.apply(PrincipalStatusChanged(principal_id="owner", status=PrincipalStatus(owner),
                                           event_time=T0, source="hr"))
    state.apply(PrincipalStatusChanged(principal_id="lead", status=PrincipalStatus.ACTIVE,
                                       event_time=T0, source="hr"))
    signed = agent.get("signed", False)
    purpose, department = agent.get("purpose", "procurement"), agent.get("department")
    state.apply(AgentRegistered(agent_id="agent-1", owner="owner", purpose=purpose,
                                department=department,
                                public_key=agent_public_key(KEY) if signed else None,
                                event_time=T0, source="idp"))
    status = AgentStatus(agent.get("status", "active"))
    if status is not AgentStatus.ACTIVE:
        state.apply(AgentStatusChanged(agent_id="agent-1", status=status, event_time=T0,
                                       source="idp"))
    chain = tuple(f"delegator-{i}" for i in range(1, intent.get("depth", 0) + 1))
    for delegator in chain:
        state.apply(AgentRegistered(agent_id=delegator, owner="lead", purpose=purpose,
                                    department=department, event_time=T0, source="idp"))
    amount = intent.get("amount")
    built = Intent(intent_id=INTENT_ID, agent_id="agent-1",
                   action=intent.get("action", "purchase_order.create"),
                   resource=intent.get("resource", "vendor:ACME"), audience="test-api",
                   amount=None if amount is None else Decimal(amount),
                   currency=intent.get("currency", "USD") if amount is not None else None,
                   delegation_chain=chain, requested_at=NOW - timedelta(seconds=1))
    if signed:
        built = _signed(built)
    return World(state, built)


def _signed(intent: Intent) -> Intent:
    return replace(intent, signature=sign_intent(intent, KEY))


def outcome(evaluation: Evaluation, *, yes: str, no: str) -> str:
    return "error" if evaluation.failed else yes if evaluation.allowed else no


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_policy_case(case: dict[str, Any]) -> None:
    policy = BUNDLES[case["bundle"]]
    w = world(case.get("agent", {}), case.get("owner", "active"), case.get("intent", {}))

    scope, approval = policy.check(w.agent, w.owner, w.intent)
    assert policy.scope(w.agent, w.owner, w.intent) == scope
    assert policy.needs_approval(w.agent, w.owner, w.intent) == approval
    assert outcome(scope, yes="allow", no="deny") == case["scope"], scope
    assert list(scope.policy_ids) == case.get("scope_ids", []), scope
    if "approval" in case:
        assert outcome(approval, yes="required", no="none") == case["approval"], approval
        assert list(approval.policy_ids) == case.get("approval_ids", []), approval
    # One evaluation: an error fails both answers alike; a denied action needs no approval.
    if scope.failed:
        assert approval == scope and scope.policy_ids and not scope.allowed
        assert not any(re.search(r"\bpolicy\d+\b", e) for e in scope.errors), scope
    elif not scope.allowed:
        assert approval == Evaluation(False)

    result = decide(w.intent, w.state, policy, now=NOW, freshness=FRESHNESS, ready=True)
    assert result.decision is Decision(case["decision"]), result.detail
    assert [r.value for r in result.reasons] == case["reasons"], result.detail
    if "ids" in case:
        assert list(result.policy_ids) == case["ids"], result.detail
    assert result.policy_version == policy.version
    assert result.orphaned is (case.get("owner", "active") != "active")
    if case["scope"] == "error" or case.get("approval") == "error":
        assert result.decision is Decision.DENY
        assert Reason.POLICY_ERROR in result.reasons
        assert "policy evaluation failed" in result.detail


def test_the_corpus_covers_what_it_must() -> None:
    outcomes = {(c["scope"], c.get("approval")) for c in CASES}
    assert {"allow", "deny", "error"} <= {scope for scope, _ in outcomes}
    assert "error" in {approval for _, approval in outcomes}
    assert {c["bundle"] for c in CASES} == set(BUNDLES)
    assert {r for c in CASES for r in c["reasons"]} >= {
        "allowed", "pending_approval", "out_of_scope", "policy_error", "delegation_denied",
        "owner_inactive", "agent_inactive"}


def test_an_undeclared_action_is_never_evaluated() -> None:
    # Not even a policy that would error: the answer is out of scope, without errors.
    w = world({}, "active", {"action": "rocket.launch"})
    got = BUNDLES["faulty"].scope(w.agent, w.owner, w.intent, delegation_depth=1)
    assert got == Evaluation(False)
    assert "rocket.launch" not in BUNDLES["everything"].actions


def test_an_action_declared_in_another_namespace_is_not_a_gatepass_action() -> None:
    schema = TEST_SCHEMA + ('namespace Other {\n  entity Thing;\n  action "rocket.launch" '
                            "appliesTo { principal: Thing, resource: Thing };\n}\n")
    policy = bundle(BUNDLES["everything"].files["scope/test.cedar"], schema=schema)
    assert "rocket.launch" not in policy.actions
    assert policy.actions == BUNDLES["everything"].actions
    w = world({}, "active", {"action": "rocket.launch"})
    assert policy.check(w.agent, w.owner, w.intent) == (Evaluation(False), Evaluation(False))
    result = decide(w.intent, w.state, policy, now=NOW, freshness=FRESHNESS, ready=True)
    assert (result.decision, result.reasons, result.policy_ids) == (
        Decision.DENY, (Reason.OUT_OF_SCOPE,), ())
    # A Gatepass action of the same bundle is still evaluated (and allowed by the permit).
    declared = world({}, "active", {"action": "vendor.read"})
    assert policy.scope(declared.agent, declared.owner, declared.intent) == Evaluation(
        True, ("allow.everything",))


def test_the_delegation_depth_can_be_given_explicitly() -> None:
    w = world({}, "active", {"amount": "120.00"})
    policy = BUNDLES["orders"]
    assert policy.scope(w.agent, w.owner, w.intent).allowed
    forbidden = policy.scope(w.agent, w.owner, w.intent, delegation_depth=3)
    assert forbidden == Evaluation(False, ("guardrail.delegation-depth",))


def test_a_policy_error_says_what_failed() -> None:
    w = world({}, "active", {"action": "cloud.read"})
    got = BUNDLES["faulty"].scope(w.agent, w.owner, w.intent)
    assert got.failed and not got.allowed
    assert "integer overflow" in got.errors[0]


def test_an_evaluation_error_names_the_failing_policy_by_its_id() -> None:
    w = world({}, "active", {"action": "cloud.read"})
    scope, approval = BUNDLES["faulty"].check(w.agent, w.owner, w.intent)
    assert scope == approval
    assert scope.policy_ids == ("guardrail.broken",)  # not the permit Cedar allowed by
    (error,) = scope.errors
    assert "'guardrail.broken'" in error and "integer overflow" in error
    assert not re.search(r"\bpolicy\d+\b", error), error  # never Cedar's positional id
    result = decide(w.intent, w.state, BUNDLES["faulty"], now=NOW, freshness=FRESHNESS,
                    ready=True)
    assert result.reasons == (Reason.POLICY_ERROR,)
    assert result.policy_ids == ("guardrail.broken",)
    assert "'guardrail.broken'" in result.detail


ALWAYS_ERRS = 'permit (principal, action, resource)\nwhen { 9223372036854775807 + 1 > 0 };\n'


def test_every_failing_policy_is_named_in_source_order() -> None:
    # Files given out of order: the order is the files' names, then the position in a file.
    files = {"approval/a.cedar": f'@id("approval.err")\n{ALWAYS_ERRS}',
             "scope/b.cedar": f'@id("b.err")\n{ALWAYS_ERRS}@id("b.ok")\n'
                              "permit (principal, action, resource);\n",
             "scope/a.cedar": f'@id("a.err")\n{ALWAYS_ERRS}',
             "schema.cedarschema": TEST_SCHEMA}
    policy = CedarPolicy.from_files(files)
    w = world({}, "active", {"action": "vendor.read"})
    for _ in range(10):
        scope, approval = policy.check(w.agent, w.owner, w.intent)
        assert scope == approval and not scope.allowed
        assert scope.policy_ids == ("a.err", "b.err", "approval.err")
        # one error per failing policy, each naming it by @id (in whatever order Cedar says)
        assert sorted(re.findall(r"'([^']+)'", e)[0] for e in scope.errors) == sorted(
            scope.policy_ids)
    result = decide(w.intent, w.state, policy, now=NOW, freshness=FRESHNESS, ready=True)
    assert result.policy_ids == ("a.err", "b.err", "approval.err")


def test_policy_ids_come_in_source_order() -> None:
    # Permits in two scope files and two approval files, given to the loader out of order.
    permits = "".join(f'@id("p{k}")\npermit (principal, action, resource);\n' for k in range(6))
    asks = "".join(f'@id("ask{k}")\npermit (principal, action, resource);\n' for k in range(4))
    files = {"approval/z.cedar": asks, "approval/a.cedar": asks.replace("ask", "first"),
             "scope/z.cedar": permits.replace('"p', '"z'), "scope/a.cedar": permits,
             "schema.cedarschema": TEST_SCHEMA}
    want_scope = (*(f"p{k}" for k in range(6)), *(f"z{k}" for k in range(6)))
    want_approval = (*(f"first{k}" for k in range(4)), *(f"ask{k}" for k in range(4)))
    w = world({}, "active", {"action": "vendor.read"})
    for _ in range(5):  # a fresh load each time: no order may come from a hash set
        policy = CedarPolicy.from_files(files)
        for _ in range(10):
            assert policy.check(w.agent, w.owner, w.intent) == (
                Evaluation(True, want_scope), Evaluation(True, want_approval))
        result = decide(w.intent, w.state, policy, now=NOW, freshness=FRESHNESS, ready=True)
        assert result.policy_ids == want_scope + want_approval


# ---- loading: every malformed bundle is refused, naming file and line -----------------------
SCOPE = '''// what procurement may do
@id("procurement.vendors")
permit (principal, action == Gatepass::Action::"vendor.read", resource)
when { principal.purpose == "procurement" };

@id("procurement.orders")
permit (principal, action == Gatepass::Action::"purchase_order.create", resource)
when { context has amount && context.amount.lessThanOrEqual(decimal("5000.00")) };
'''
APPROVAL = '''@id("approval.large-order")
@reason("large orders need the owner")
permit (principal, action == Gatepass::Action::"purchase_order.create", resource)
when { context has amount && context.amount.greaterThan(decimal("1000.00")) };
'''
SETTINGS = '[approval.delegates]\nsarah = ["cfo"]\n'
BASE = {**bundle_files(SCOPE, APPROVAL, SETTINGS), "tests/orders.toml": "[[case]]\n"}
GOOD = ('@id("extra.vendors")\n'
        'permit (principal, action == Gatepass::Action::"vendor.read", resource);\n')


def _when(condition: str, *, pid: str = "broken",
          action: str = "purchase_order.create") -> str:
    """A valid first policy, a blank line, then (from line 4) one with this condition."""
    return (GOOD + f'\n@id("{pid}")\npermit (principal, action == '
            f'Gatepass::Action::"{action}", resource)\nwhen {{ {condition} }};\n')


def _schema(old: str, new: str) -> str:
    assert old in TEST_SCHEMA
    return TEST_SCHEMA.replace(old, new)


_CONTEXT_FIT = "the schema does not fit the request context Gatepass sends"
# (label, changes to BASE (None removes a file), file, line, fragment of the message)
REFUSED: list[Any] = [
    ("syntax error: the line of the failing statement",
     {"scope/more.cedar": _when("principal.purpose == ")}, "scope/more.cedar", 4,
     "unexpected token"),
    ("a policy without its closing semicolon",
     {"scope/more.cedar": GOOD + '\n@id("open")\npermit (principal, action, resource)\n'},
     "scope/more.cedar", 4, "unexpected end of input"),
    ("a stray semicolon", {"scope/more.cedar": GOOD + "\n;\n"}, "scope/more.cedar", 4,
     "unexpected token"),
    ("missing @id", {"scope/more.cedar": GOOD + "\npermit (principal, action, resource);\n"},
     "scope/more.cedar", 4, 'every policy needs an @id("...")'),
    ("only a @reason, no @id", {"approval/more.cedar": '@reason("why")\n'
                                "permit (principal, action, resource);\n"},
     "approval/more.cedar", 1, 'every policy needs an @id("...")'),
    ("@id with a space", {"scope/more.cedar": '@id("two words")\n'
                          "permit (principal, action, resource);\n"},
     "scope/more.cedar", 1, "1-64 letters, digits and ._:-"),
    ("@id too long", {"scope/more.cedar": f'@id("{"x" * 65}")\n'
                      "permit (principal, action, resource);\n"},
     "scope/more.cedar", 1, "1-64 letters"),
    ("two @id annotations", {"scope/more.cedar": '@id("a")\n@id("b")\n'
                             "permit (principal, action, resource);\n"},
     "scope/more.cedar", 1, "duplicate annotation"),
    ("duplicate @id across scope files",
     {"scope/z.cedar": "\n\n" + GOOD.replace("extra.vendors", "procurement.vendors")},
     "scope/z.cedar", 3, "'procurement.vendors' is already used at scope/test.cedar:2"),
    ("duplicate @id across scope and approval",
     {"approval/test.cedar": APPROVAL.replace("approval.large-order", "procurement.orders")},
     "approval/test.cedar", 1, "'procurement.orders' is already used at scope/test.cedar:6"),
    ("an attribute the schema does not declare",
     {"scope/more.cedar": _when('principal.team == "finance"')}, "scope/more.cedar", 4,
     "attribute `team` on entity type `Gatepass::Agent` not found"),
    ("an optional attribute read without `has`",
     {"scope/more.cedar": _when('principal.department == "finance"')}, "scope/more.cedar", 4,
     "optional attribute `department`"),
    ("an optional context attribute read without `has`",
     {"approval/more.cedar": _when('context.amount.greaterThan(decimal("1.00"))',
                                   pid="approval.all")},
     "approval/more.cedar", 4, "optional attribute `amount`"),
    ("`has` on the wrong side of ||",
     {"scope/more.cedar": _when('context has amount || '
                                'context.amount.lessThan(decimal("1.00"))')},
     "scope/more.cedar", 4, "optional attribute `amount`"),
    ("an extension call on a non-literal",
     {"scope/more.cedar": _when("ip(context.resource).isLoopback()")}, "scope/more.cedar", 4,
     "non-literal"),
    ("a decimal literal out of Cedar's range",
     {"scope/more.cedar": _when('context has amount && '
                                'context.amount.lessThan(decimal("922337203685477.5808"))')},
     "scope/more.cedar", 4, "failed to parse as a decimal"),
    ("a decimal literal with five places",
     {"scope/more.cedar": _when('context has amount && '
                                'context.amount.lessThan(decimal("1.00001"))')},
     "scope/more.cedar", 4, "failed to parse as a decimal"),
    ("a type error", {"scope/more.cedar": _when("context.delegation_depth == true")},
     "scope/more.cedar", 4, "are not compatible"),
    ("a policy for an undeclared action",
     {"scope/more.cedar": _when("true", action="rocket.launch")}, "scope/more.cedar", 4,
     "for policy 'broken', "),
    ("a policy for an undeclared action: the message names the action",
     {"scope/more.cedar": _when("true", action="rocket.launch")}, "scope/more.cedar", 4,
     'unrecognized action `Gatepass::Action::"rocket.launch"`'),
    ("a forbid among the approval policies",
     {"approval/more.cedar": GOOD.replace("extra.vendors", "approval.ok") + '\n@id("approval.no")'
                             "\nforbid (principal, action, resource);\n"},
     "approval/more.cedar", 4, "approval policies must be permits"),
    ("a template", {"scope/more.cedar": '@id("t")\n'
                    "permit (principal == ?principal, action, resource);\n"},
     "scope/more.cedar", 1, "templates are not supported"),
    ("no schema", {"schema.cedarschema": None}, "schema.cedarschema", None,
     "the bundle has no schema"),
    # The schema's line is a guess (`_line_of`: the first line holding, as a whole token, one
    # the message quotes), and a wrong one when that token also occurs earlier: see the xfail.
    ("a schema syntax error",
     {"schema.cedarschema": _schema("entity Department;", "entity Department; bogus")},
     "schema.cedarschema", 6, "unexpected token `bogus`"),
    # Found as the shortest prefix of the schema failing with the same message.
    ("a schema syntax error: the line of the mistake",
     {"schema.cedarschema": _schema("purpose: String", "purpose String")},
     "schema.cedarschema", 9, "error parsing schema"),
    # `Strin` is matched as a whole token, never as the prefix of line 3's `String`.
    ("a schema naming an unknown type: the line of the mistake",
     {"schema.cedarschema": _schema("purpose: String", "purpose: Strin")},
     "schema.cedarschema", 9, "failed to resolve type: Strin"),
    ("a schema without actions",
     {"schema.cedarschema": TEST_SCHEMA[:TEST_SCHEMA.index("  action")] + "}\n"},
     "schema.cedarschema", None, "the schema declares no actions"),
    ("schema: an agent attribute Gatepass does not send",
     {"schema.cedarschema": _schema("signed: Bool,", "signed: Bool,\n    team: String,")},
     "schema.cedarschema", None, "does not fit the entities Gatepass sends"),
    ("schema: an agent attribute of another type",
     {"schema.cedarschema": _schema("signed: Bool", "signed: String")},
     "schema.cedarschema", None, "does not fit the entities Gatepass sends"),
    ("schema: an owner without a status",
     {"schema.cedarschema": _schema("entity Principal = {\n    status: String,\n  };",
                                    "entity Principal;")},
     "schema.cedarschema", None, "does not fit the entities Gatepass sends"),
    # A schema making the department required would let `principal.department` pass
    # validation without `has`: refused, since an agent without one would not fit it.
    ("schema: a department every agent must have",
     {"schema.cedarschema": _schema("department?: String", "department: String")},
     "schema.cedarschema", None, "does not fit the entities Gatepass sends"),
    ("schema: agents in no department",
     {"schema.cedarschema": _schema("entity Agent in [Department]", "entity Agent")},
     "schema.cedarschema", None, "does not fit the entities Gatepass sends"),
    ("schema: another namespace",
     {"schema.cedarschema": _schema("namespace Gatepass", "namespace Other")},
     "schema.cedarschema", None, "does not fit the entities Gatepass sends"),
    ("schema: actions only in another namespace",
     {"schema.cedarschema": TEST_SCHEMA[:TEST_SCHEMA.index("  action")] + "}\n"
      'namespace Other {\n  entity Thing;\n  action "vendor.read", "purchase_order.create" '
      "appliesTo { principal: Thing, resource: Thing };\n}\n"},
     "schema.cedarschema", None, "the schema declares no actions in namespace Gatepass"),
    # Every Gatepass action is probed with the context Gatepass sends (with and without an
    # amount): a context typed otherwise would make policies compare unlike values.
    ("schema: `delegated` not a Bool",
     {"schema.cedarschema": _schema("delegated: Bool", "delegated: String")},
     "schema.cedarschema", None, _CONTEXT_FIT),
    ("schema: `delegation_depth` not a Long",
     {"schema.cedarschema": _schema("delegation_depth: Long", "delegation_depth: String")},
     "schema.cedarschema", None, _CONTEXT_FIT),
    ("schema: `amount` not a decimal",
     {"schema.cedarschema": _schema("amount?: decimal", "amount?: Long")},
     "schema.cedarschema", None, _CONTEXT_FIT),
    ("schema: an `amount` every request must have",
     {"schema.cedarschema": _schema("amount?: decimal", "amount: decimal")},
     "schema.cedarschema", None, _CONTEXT_FIT),
    ("schema: a context attribute Gatepass does not send",
     {"schema.cedarschema": _schema("audience: String,", "audience: String,\n    team: String,")},
     "schema.cedarschema", None, _CONTEXT_FIT),
    ("schema: a context without an attribute Gatepass sends",
     {"schema.cedarschema": _schema("    audience: String,\n", "")},
     "schema.cedarschema", None, _CONTEXT_FIT),
    ("schema: one action with a context of its own",
     {"schema.cedarschema": _schema("    appliesTo { principal: Agent, resource: Resource, "
                                    "context: Request };",
                                    "    appliesTo { principal: Agent, resource: Resource, "
                                    "context: Request };\n  action \"odd.one\" appliesTo { "
                                    "principal: Agent, resource: Resource, context: {} };")},
     "schema.cedarschema", None, f"{_CONTEXT_FIT} for action 'odd.one'"),
    ("no scope policies", {"scope/test.cedar": None}, "scope/", None,
     "the bundle has no scope policies"),
    ("scope files holding only comments", {"scope/test.cedar": "// nothing here yet\n"},
     "scope/", None, "the bundle has no scope policies"),
    ("an unexpected file at the top", {"README.md": "hello"}, "README.md", None,
     "unexpected file in a policy bundle"),
    ("a policy with another suffix", {"scope/orders.txt": GOOD}, "scope/orders.txt", None,
     "unexpected file"),
    ("a policy in a subfolder", {"scope/sub/orders.cedar": GOOD}, "scope/sub/orders.cedar",
     None, "unexpected file"),
    ("a policy outside scope/ and approval/", {"orders.cedar": GOOD}, "orders.cedar", None,
     "unexpected file"),
    ("a path that climbs out", {"scope/../orders.cedar": GOOD}, "scope/../orders.cedar", None,
     "unexpected file"),
    ("a test case that is not TOML by name", {"tests/orders.json": "{}"}, "tests/orders.json",
     None, "unexpected file"),
    ("a file above the size limit", {"scope/big.cedar": GOOD + "//" + "x" * 300_000},
     "scope/big.cedar", None, "file larger than"),
    ("gatepass.toml: a TOML error names its line",
     {"gatepass.toml": '[approval.delegates]\nsarah = "cfo"\ntom = \n'}, "gatepass.toml", 3,
     "Invalid value"),
    ("gatepass.toml: a table declared twice",
     {"gatepass.toml": "[approval]\n[approval]\n"}, "gatepass.toml", 2, "twice"),
    ("gatepass.toml: an unknown top-level key (a typo would drop the delegates)",
     {"gatepass.toml": '[aproval.delegates]\nsarah = ["cfo"]\n'}, "gatepass.toml", None,
     "unknown top-level keys ['aproval']"),
    ("gatepass.toml: delegates not a list",
     {"gatepass.toml": '[approval.delegates]\nsarah = "cfo"\n'}, "gatepass.toml", None,
     "approval.delegates.sarah must be a list of principal ids"),
    ("gatepass.toml: a delegate that is not an id",
     {"gatepass.toml": '[approval.delegates]\nsarah = ["c f o"]\n'}, "gatepass.toml", None,
     "approval.delegates.sarah"),
    ("gatepass.toml: delegates not a table",
     {"gatepass.toml": '[approval]\ndelegates = ["cfo"]\n'}, "gatepass.toml", None,
     "approval.delegates must be a table"),
    # The old TOML rules' keys (always / classes / thresholds): approval classes are Cedar
    # policies now, so an `always` naming a class, defined or not, is an unknown key.
    ("gatepass.toml: the old `always` classes",
     {"gatepass.toml": '[approval]\nalways = ["nope"]\n'}, "gatepass.toml", None,
     "approval: unknown keys ['always']"),
    ("gatepass.toml: the old class table",
     {"gatepass.toml": '[approval]\nclasses.x = ["a.b"]\n'}, "gatepass.toml", None,
     "approval: unknown keys ['classes']"),
    ("gatepass.toml: the old purposes table",
     {"gatepass.toml": '[purposes.procurement."vendor.read"]\n'}, "gatepass.toml", None,
     "unknown top-level keys ['purposes']"),
]


@pytest.mark.parametrize(("label", "changes", "file", "line", "message"), REFUSED,
                         ids=[c.values[0] if hasattr(c, "values") else c[0] for c in REFUSED])
def test_a_malformed_bundle_is_refused(label: str, changes: dict[str, str | None], file: str,
                                       line: int | None, message: str) -> None:
    files = dict(BASE)
    for name, text in changes.items():
        if text is None:
            files.pop(name)
        else:
            files[name] = text
    with pytest.raises(PolicyError) as info:
        CedarPolicy.from_files(files)
    assert (info.value.file, info.value.line) == (file, line), str(info.value)
    assert message in info.value.message, str(info.value)
    assert info.value.code == "policy_invalid"
    where = f"{file}:{line}" if line else file
    assert str(info.value).startswith(f"{where}: ")


def test_the_base_bundle_of_the_refusals_loads() -> None:
    policy = CedarPolicy.from_files(BASE)
    assert policy.origin("procurement.orders") == ("scope/test.cedar", 6)
    assert policy.origin("approval.large-order") == ("approval/test.cedar", 1)
    assert policy.origin("nope") is None
    assert policy.approval.approvers("sarah") == ("sarah", "cfo")


def test_a_bundle_without_approval_policies_or_settings_loads() -> None:
    policy = CedarPolicy.from_files(bundle_files(SCOPE))
    w = world({}, "active", {"amount": "4000.00"})
    assert policy.needs_approval(w.agent, w.owner, w.intent) == Evaluation(False)
    assert policy.approval.approvers("sarah") == ("sarah",)


def test_a_schema_whose_context_does_not_fit_what_gatepass_sends_is_refused() -> None:
    # Loaded, this forbid would compare Gatepass's Bool to a string and silently never apply.
    schema = _schema("delegated: Bool", "delegated: String")
    files = bundle_files('@id("allow")\npermit (principal, action, resource);\n'
                         '@id("no-delegation")\nforbid (principal, action, resource)\n'
                         'when { context.delegated == "true" };\n', schema=schema)
    with pytest.raises(PolicyError) as info:
        CedarPolicy.from_files(files)
    assert (info.value.file, info.value.line) == ("schema.cedarschema", None)
    assert info.value.message.startswith(f"{_CONTEXT_FIT} for action ")
    assert "delegated" in info.value.message


# ---- statements and lines -------------------------------------------------------------------
def test_statements_split_at_top_level_semicolons_only() -> None:
    text = ('// a comment; with a semicolon\n'
            '@id("a") @reason("one; two \\" three;")\n'
            'permit (principal, action, resource)\n'
            'when { context.resource == "x;y" };  // trailing; comment\n'
            '\n'
            '@id("b")\nforbid (principal, action, resource);\n'
            '// the end; nothing more\n')
    got = split_statements(text, "scope/x.cedar")
    assert [(s.file, s.line) for s in got] == [("scope/x.cedar", 2), ("scope/x.cedar", 6)]
    assert got[0].text.rstrip().endswith('"x;y" };')
    assert '@reason("one; two \\" three;")' in got[0].text


def test_a_multi_line_string_keeps_the_line_count() -> None:
    got = split_statements('@id("a")\n@reason("two\nlines")\npermit (principal, action, '
                           'resource);\n@id("b")\npermit (principal, action, resource);',
                           "f")
    assert [s.line for s in got] == [1, 5]


# ---- versions -------------------------------------------------------------------------------
VERSION = CedarPolicy.from_files(BASE).version


def test_version_is_a_content_hash() -> None:
    assert re.fullmatch(r"cedar-[0-9a-f]{16}", VERSION)
    # The same files in another order, loaded again: the same version.
    assert CedarPolicy.from_files(dict(reversed(list(BASE.items())))).version == VERSION


@pytest.mark.parametrize(("label", "changes"), [
    ("a schema change", {"schema.cedarschema": schema_with((*TEST_ACTIONS, "extra.action"))}),
    ("a comment in the schema", {"schema.cedarschema": "// note\n" + TEST_SCHEMA}),
    ("a scope change", {"scope/test.cedar": SCOPE.replace("5000.00", "5000.01")}),
    ("a comment in a scope file", {"scope/test.cedar": SCOPE + "// note\n"}),
    ("a scope file added", {"scope/more.cedar": GOOD}),
    ("a scope file renamed", {"scope/test.cedar": None, "scope/renamed.cedar": SCOPE}),
    ("an approval change", {"approval/test.cedar": APPROVAL.replace("1000.00", "999.99")}),
    ("an approval reason reworded", {"approval/test.cedar": APPROVAL.replace(
        "large orders need the owner", "large orders need their owner")}),
    ("approval policies removed", {"approval/test.cedar": None}),
    ("a delegate added", {"gatepass.toml": SETTINGS + 'tom = ["cfo"]\n'}),
    ("gatepass.toml removed", {"gatepass.toml": None}),
])
def test_any_change_outside_tests_changes_the_version(label: str,
                                                      changes: dict[str, str | None]) -> None:
    files = dict(BASE)
    for name, text in changes.items():
        if text is None:
            files.pop(name)
        else:
            files[name] = text
    assert CedarPolicy.from_files(files).version != VERSION


@pytest.mark.parametrize(("label", "changes"), [
    ("a test case changed", {"tests/orders.toml": "[[case]]\nname = 'x'\n"}),
    ("a test file added", {"tests/more.toml": ""}),
    ("the test files removed", {"tests/orders.toml": None}),
])
def test_a_change_under_tests_keeps_the_version(label: str,
                                                changes: dict[str, str | None]) -> None:
    files = dict(BASE)
    for name, text in changes.items():
        if text is None:
            files.pop(name)
        else:
            files[name] = text
    assert CedarPolicy.from_files(files).version == VERSION


# ---- the shipped bundle ---------------------------------------------------------------------
SHIPPED_IDS = {"guardrail.spend-delegation-depth", "infrastructure.provision",
               "infrastructure.read", "procurement.orders", "procurement.read",
               "support.tickets", "support.customers"}
SHIPPED_APPROVAL_IDS = {"approval.large-order", "approval.infrastructure",
                        "approval.customer-data"}


def test_the_shipped_bundle_loads_from_the_repository() -> None:
    assert DEFAULT_POLICY_DIR.is_dir() and (DEFAULT_POLICY_DIR / "schema.cedarschema").is_file()
    assert re.fullmatch(r"cedar-[0-9a-f]{16}", SHIPPED.version)
    assert CedarPolicy.from_files(read_bundle(DEFAULT_POLICY_DIR)).version == SHIPPED.version
    assert set(SHIPPED.scope_set.ids.values()) == SHIPPED_IDS
    assert set(SHIPPED.approval_set.ids.values()) == SHIPPED_APPROVAL_IDS
    assert SHIPPED.origin("procurement.orders") == ("scope/procurement.cedar", 4)


def test_every_shipped_approval_policy_says_why() -> None:
    for pid in SHIPPED_APPROVAL_IDS:
        (why,) = SHIPPED.why((pid,))
        assert "approval" in why and pid not in why


def test_the_shipped_bundle_declares_the_actions_its_policies_name() -> None:
    named = set(re.findall(r'Action::"([^"]+)"', " ".join(
        text for name, text in SHIPPED.files.items() if name.endswith(".cedar"))))
    assert named <= SHIPPED.actions


def test_load_policy_reads_a_given_folder(tmp_path: Path) -> None:
    for name, text in BASE.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / ".editor.swp").write_text("junk")
    (tmp_path / "scope" / "notes.md").write_text("not read: no policy suffix")
    assert load_policy(tmp_path).version == VERSION


def test_load_policy_names_the_file_of_an_error(tmp_path: Path) -> None:
    for name, text in BASE.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "scope" / "bad.cedar").write_text("\n\npermit (principal, action, resource);\n")
    with pytest.raises(PolicyError) as info:
        load_policy(tmp_path)
    assert (info.value.file, info.value.line) == ("scope/bad.cedar", 3)


def test_load_policy_refuses_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy(tmp_path / "nope")
    assert info.value.file == str(tmp_path / "nope")


def test_load_policy_refuses_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    for name, text in BASE.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "scope" / "latin1.cedar").write_bytes(b"// caf\xe9\n")
    with pytest.raises(PolicyError) as info:
        load_policy(tmp_path)
    assert info.value.file == "scope/latin1.cedar"


# ---- property: an error or a missing fact never allows --------------------------------------
POOL = list(BUNDLES)
ACTIONS = [*TEST_ACTIONS, "rocket.launch", "spaceship.fly"]
AMOUNTS = st.one_of(
    st.none(),
    st.sampled_from(["0", "120.00", "1000.00", "1000.0001", "2000.0000", "2000.0001",
                     "5000.0000", "5000.0001", "10000.0000", "10000.0001", "100000.0000",
                     "100000.0001", "99999999999999.9999"]).map(Decimal),
    st.decimals(min_value=0, max_value=Decimal("99999999999999.9999"), places=4,
                allow_nan=False, allow_infinity=False))


@settings(max_examples=400, deadline=None)
@given(name=st.sampled_from(POOL), registered=st.booleans(),
       agent_status=st.sampled_from(list(AgentStatus)),
       owner_status=st.sampled_from([*PrincipalStatus, None]),
       purpose=st.sampled_from(["procurement", "research", "infrastructure", "support", "",
                                "astrology"]),
       department=st.sampled_from([None, "finance", "sales"]), signed=st.booleans(),
       action=st.sampled_from(ACTIONS), amount=AMOUNTS,
       currency=st.sampled_from(["USD", "EUR"]), resource=st.sampled_from(
           ["vendor:ACME", "vendor:BLOCKED"]), depth=st.integers(min_value=0, max_value=4),
       delegator_status=st.sampled_from(list(AgentStatus)), ready=st.booleans())
def test_an_error_or_a_missing_fact_never_allows(
        name: str, registered: bool, agent_status: AgentStatus,
        owner_status: PrincipalStatus | None, purpose: str, department: str | None,
        signed: bool, action: str, amount: Decimal | None, currency: str, resource: str,
        depth: int, delegator_status: AgentStatus, ready: bool) -> None:
    policy = BUNDLES[name]
    state = IdentityState()
    if owner_status is not None:
        state.apply(PrincipalStatusChanged(principal_id="owner", status=owner_status,
                                           event_time=T0, source="hr"))
    state.apply(PrincipalStatusChanged(principal_id="lead", status=PrincipalStatus.ACTIVE,
                                       event_time=T0, source="hr"))
    if registered:
        state.apply(AgentRegistered(agent_id="agent-1", owner="owner", purpose=purpose,
                                    department=department,
                                    public_key=agent_public_key(KEY) if signed else None,
                                    event_time=T0, source="idp"))
    state.apply(AgentStatusChanged(agent_id="agent-1", status=agent_status, event_time=T0,
                                   source="idp"))
    chain = tuple(f"delegator-{i}" for i in range(1, depth + 1))
    for delegator in chain:
        state.apply(AgentRegistered(agent_id=delegator, owner="lead", purpose=purpose,
                                    department=department, event_time=T0, source="idp"))
    if chain:
        state.apply(AgentStatusChanged(agent_id=chain[-1], status=delegator_status,
                                       event_time=T0, source="idp"))
    intent = Intent(intent_id=INTENT_ID, agent_id="agent-1", action=action, resource=resource,
                    audience="test-api", amount=amount,
                    currency=currency if amount is not None else None,
                    delegation_chain=chain, requested_at=NOW - timedelta(seconds=1))
    if signed:
        intent = _signed(intent)

    result = decide(intent, state, policy, now=NOW, freshness=FRESHNESS, ready=ready)

    agent = state.agent("agent-1")
    owner = state.principal("owner", NOW)
    scope = policy.scope(agent, owner, intent) if agent and agent.registered else None
    approval = policy.needs_approval(agent, owner, intent) if agent and agent.registered \
        else None
    missing = not ready or agent is None or not agent.registered or owner is None
    if missing or (scope is not None and scope.failed):
        assert result.decision is Decision.DENY, result
    if ready and scope is not None and scope.failed:
        assert Reason.POLICY_ERROR in result.reasons, result
    if approval is not None and approval.failed:
        assert result.decision is Decision.DENY, result
    if result.decision is Decision.DENY:
        # A DENY names the policies that failed or forbade, never one that permitted.
        if {Reason.POLICY_ERROR, Reason.OUT_OF_SCOPE} & set(result.reasons):
            assert scope is not None and result.policy_ids == scope.policy_ids, result
            assert not scope.allowed
        else:
            assert result.policy_ids == (), result
        return
    # ALLOW or PENDING: every fact was there and every check passed, without any error.
    assert ready and agent is not None and agent.registered, result
    assert agent.status is AgentStatus.ACTIVE
    assert owner is not None and owner.status is PrincipalStatus.ACTIVE
    assert scope is not None and approval is not None
    assert scope.allowed and not scope.errors and intent.action in policy.actions
    assert not approval.errors
    assert approval.allowed is (result.decision is Decision.PENDING)
    # in source order: the scope permits, then the approval permits
    assert result.policy_ids == scope.policy_ids + (
        approval.policy_ids if approval.allowed else ())
    for delegator in chain:
        record = state.agent(delegator)
        assert record is not None and record.status is AgentStatus.ACTIVE
        assert policy.scope(record, state.principal("lead", NOW), intent).allowed
