"""The policy test-case runner: cases files in, per-case results with their differences out."""

from __future__ import annotations

import pytest

from gatepass.core.model import Decision
from gatepass.core.policy import CedarPolicy
from gatepass.errors import PolicyError
from gatepass.policy import DEFAULT_POLICY_DIR, read_bundle
from gatepass.policy.cases import (
    CaseResult,
    TestReport,
    load_cases,
    parse_cases,
    run_case,
    run_cases,
)

SCHEMA = """
namespace Gatepass {
  entity Principal = { status: String };
  entity Department;
  entity Agent in [Department] = {
    purpose: String, status: String, signed: Bool, owner?: Principal, department?: String,
  };
  entity Resource;
  type Request = {
    amount?: decimal, currency?: String, resource: String, audience: String,
    delegated: Bool, delegation_depth: Long,
  };
  action "purchase_order.create", "vendor.read"
    appliesTo { principal: Agent, resource: Resource, context: Request };
}
"""
SCOPE = """
@id("orders")
permit (principal, action == Gatepass::Action::"purchase_order.create", resource)
when { principal.purpose == "procurement" && context has amount &&
       context.amount.lessThanOrEqual(decimal("500.0000")) };

@id("reads")
permit (principal, action == Gatepass::Action::"vendor.read", resource);

@id("no-deep-chains")
forbid (principal, action, resource) when { context.delegation_depth > 1 };
"""
APPROVAL = """
@id("big")
@reason("orders above $100 need the owner")
permit (principal, action == Gatepass::Action::"purchase_order.create", resource)
when { context has amount && context.amount.greaterThan(decimal("100.0000")) };
"""
POLICY = CedarPolicy.from_files({"schema.cedarschema": SCHEMA, "scope/main.cedar": SCOPE,
                                 "approval/main.cedar": APPROVAL})
AGENT = 'agent = { id = "bot", purpose = "procurement", owner = "sarah" }'


def one(body: str, *, prelude: str = "", file: str = "tests/t.toml") -> CaseResult:
    """The result of the single case in `body` (a [[case]] table's lines)."""
    (case,) = parse_cases(f"{prelude}\n[[case]]\n{body}\n", file)
    return run_case(POLICY, case)


def test_a_passing_case() -> None:
    result = one(f"""name = "small order"
{AGENT}
action = "purchase_order.create"
resource = "vendor:acme"
amount = "50.00"
currency = "USD"
want = "ALLOW"
reasons = ["allowed"]
policy_ids = ["orders"]""")
    assert result.passed, result.differences
    assert (result.decision, result.reasons, result.policy_ids) == (
        Decision.ALLOW, ("allowed",), ("orders",))
    assert result.detail == "purchase_order.create allowed by orders"


def test_a_failing_case_says_what_differed() -> None:
    result = one(f"""name = "too big"
{AGENT}
action = "purchase_order.create"
resource = "vendor:acme"
amount = "900.00"
currency = "USD"
want = "ALLOW"
reasons = ["allowed"]
policy_ids = ["orders"]""")
    assert not result.passed
    assert result.decision is Decision.DENY
    assert result.differences == (
        "decision: want ALLOW, got DENY",
        "reasons: want [allowed], got [out_of_scope]",
        "policy_ids: want [orders], got []",
    )
    failed = result.to_json()
    assert failed["name"] == "too big"
    assert (failed["file"], failed["line"]) == ("tests/t.toml", 2)
    assert failed["want"] == {"decision": "ALLOW", "reasons": ["allowed"],
                              "policy_ids": ["orders"]}
    assert failed["got"]["decision"] == "DENY"
    assert failed["got"]["reasons"] == ["out_of_scope"]


def test_unchecked_reasons_and_ids_are_not_compared() -> None:
    result = one(f"""name = "pending"
{AGENT}
action = "purchase_order.create"
resource = "vendor:acme"
amount = "200.00"
currency = "USD"
want = "PENDING\"""")
    assert result.passed
    assert result.reasons == ("pending_approval",)
    assert result.policy_ids == ("orders", "big")


def test_reasons_and_ids_compare_as_sets() -> None:
    result = one("""name = "both"
agent = { id = "bot", purpose = "procurement", owner = "sarah", status = "suspended" }
action = "purchase_order.create"
resource = "vendor:acme"
amount = "900.00"
currency = "USD"
want = "DENY"
reasons = ["out_of_scope", "agent_inactive"]
policy_ids = []""")
    assert result.passed, result.differences
    assert result.reasons == ("agent_inactive", "out_of_scope")


def test_an_id_no_policy_has_is_named() -> None:
    result = one(f"""name = "typo"
{AGENT}
action = "vendor.read"
resource = "vendor:acme"
want = "ALLOW"
policy_ids = ["read"]""")
    assert "policy_ids: no policy in the bundle has the @id 'read'" in result.differences


def test_a_policy_error_names_the_policy_that_failed() -> None:
    faulty = CedarPolicy.from_files({
        "schema.cedarschema": SCHEMA, "scope/main.cedar": SCOPE, "approval/main.cedar": APPROVAL,
        "scope/zz.cedar": '@id("overflows")\nforbid (principal, action, resource)\n'
                          "when { context.delegation_depth + 9223372036854775807 + 1 > 0 };\n"})
    (case,) = parse_cases(f"""[[case]]
name = "faulty"
{AGENT}
action = "vendor.read"
resource = "vendor:acme"
want = "DENY"
reasons = ["policy_error"]
policy_ids = ["overflows"]""", "tests/t.toml")
    result = run_case(faulty, case)
    assert result.passed, result.differences
    assert result.policy_ids == ("overflows",)  # not "reads", which Cedar allowed by
    assert "error while evaluating policy 'overflows'" in result.detail


def test_an_identity_deny_names_no_policy() -> None:
    result = one("""name = "suspended"
agent = { id = "bot", purpose = "procurement", owner = "sarah", status = "suspended" }
action = "vendor.read"
resource = "vendor:acme"
want = "DENY"
reasons = ["agent_inactive"]
policy_ids = []""")
    assert result.passed, result.differences
    assert result.policy_ids == ()


@pytest.mark.parametrize(("owner_status", "want"), [
    ("active", "ALLOW"), ("suspended", "DENY"), ("offboarded", "DENY"), ("unknown", "DENY")])
def test_owner_status(owner_status: str, want: str) -> None:
    reasons = '["allowed"]' if want == "ALLOW" else '["owner_inactive"]'
    result = one(f"""name = "owner"
{AGENT}
owner_status = "{owner_status}"
action = "vendor.read"
resource = "vendor:acme"
want = "{want}"
reasons = {reasons}""")
    assert result.passed, result.differences


def test_a_signed_agent_signs_its_intent() -> None:
    result = one("""name = "signed"
agent = { id = "bot", purpose = "procurement", owner = "sarah", signed = true }
action = "vendor.read"
resource = "vendor:acme"
want = "ALLOW\"""")
    assert result.passed, (result.reasons, result.detail)


DELEGATES = """
[agents."helper"]
purpose = "procurement"
owner = "tom"
[agents."other"]
purpose = "procurement"
owner = "ann"
owner_status = "offboarded"
"""


def test_delegating_agents_come_from_the_agents_tables() -> None:
    deep = one(f"""name = "two delegators"
{AGENT}
action = "vendor.read"
resource = "vendor:acme"
delegation_chain = ["helper", "other"]
want = "DENY"
reasons = ["delegation_denied", "out_of_scope"]
policy_ids = ["no-deep-chains"]""", prelude=DELEGATES)
    assert deep.passed, (deep.reasons, deep.policy_ids, deep.detail)
    gone = one(f"""name = "delegator's owner offboarded"
{AGENT}
action = "vendor.read"
resource = "vendor:acme"
delegation_chain = ["other"]
want = "DENY"
reasons = ["delegation_denied"]""", prelude=DELEGATES)
    assert gone.passed, (gone.reasons, gone.detail)
    assert "owner of delegating agent 'other'" in gone.detail


def test_an_agent_may_be_named_by_its_table() -> None:
    result = one("""name = "by name"
agent = "helper"
action = "vendor.read"
resource = "vendor:acme"
want = "ALLOW\"""", prelude=DELEGATES)
    assert result.passed


def test_a_report_counts_and_lists_failures() -> None:
    cases = parse_cases(f"""
[[case]]
name = "ok"
{AGENT}
action = "vendor.read"
resource = "vendor:acme"
want = "ALLOW"

[[case]]
name = "wrong"
{AGENT}
action = "vendor.read"
resource = "vendor:acme"
want = "DENY"
""", "tests/t.toml")
    report = run_cases(POLICY, cases)
    assert not report.ok
    doc = report.to_json()
    assert (doc["version"], doc["cases"], doc["passed"]) == (POLICY.version, 2, 1)
    assert [f["name"] for f in doc["failed"]] == ["wrong"]
    assert doc["failed"][0]["line"] == 9
    assert not TestReport(POLICY.version).ok  # nothing tested is not a pass


def test_load_cases_reads_only_the_tests_folder() -> None:
    case = f'[[case]]\nname = "n"\n{AGENT}\naction = "vendor.read"\nresource = "r"\n' \
        'want = "ALLOW"\n'
    cases = load_cases({"tests/b.toml": case, "tests/a.toml": case, "gatepass.toml": "x",
                        "scope/main.cedar": SCOPE})
    assert [c.file for c in cases] == ["tests/a.toml", "tests/b.toml"]


def test_the_shipped_cases_pass() -> None:
    files = read_bundle(DEFAULT_POLICY_DIR)
    report = run_cases(CedarPolicy.from_files(files), load_cases(files))
    assert report.results
    assert report.ok, [(r.case.name, r.differences) for r in report.failed]


# ---- malformed files: the error names the file, the case and its line ---------------------
BASE = {"name": '"broken"', "agent": AGENT.split(" = ", 1)[1], "action": '"vendor.read"',
        "resource": '"vendor:acme"', "want": '"ALLOW"'}


def case_text(**changes: str | None) -> str:
    fields = {**BASE, **changes}
    body = "\n".join(f"{k} = {v}" for k, v in fields.items() if v is not None)
    return f"# first line\n\n[[case]]\n{body}\n"


@pytest.mark.parametrize(("changes", "message"), [
    ({"colour": '"blue"'}, "case 'broken': unknown keys ['colour']"),
    ({"want": None}, "case 'broken': missing keys ['want']"),
    ({"want": '"MAYBE"'}, "case 'broken': want must be one of ALLOW, DENY, PENDING"),
    ({"reasons": '["allowd"]'}, "case 'broken': unknown reason codes ['allowd']"),
    ({"agent": '{ id = "bot", purpose = "p" }'}, "case 'broken': agent: owner is required"),
    ({"agent": '{ id = "bot", purpose = "p", owner = "o", colour = "x" }'},
     "case 'broken': agent: unknown keys ['colour']"),
    ({"agent": '"nobody"'}, "case 'broken': agent 'nobody' has no [agents.\"nobody\"] table"),
    ({"delegation_chain": '["ghost"]'},
     "case 'broken': delegation_chain names 'ghost', which has no [agents.\"ghost\"] table"),
    ({"amount": "true", "currency": '"USD"'}, "case 'broken': amount must be a decimal"),
    ({"amount": '"lots"', "currency": '"USD"'}, "case 'broken': amount is not a decimal"),
    ({"currency": '"USD"'}, "case 'broken': currency given without an amount"),
    ({"owner_status": '"retired"'}, "case 'broken': owner_status must be one of"),
    ({"name": None}, "case 1: missing keys ['name']"),
])
def test_a_malformed_case_names_file_case_and_line(changes: dict[str, str | None],
                                                    message: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_cases(case_text(**changes), "tests/broken.toml")
    err = info.value
    assert (err.file, err.line) == ("tests/broken.toml", 3)
    assert err.message.startswith(message), err.message
    assert str(err).startswith("tests/broken.toml:3: ")


def test_conflicting_owner_statuses_are_refused() -> None:
    text = DELEGATES + case_text(agent='{ id = "bot", purpose = "p", owner = "ann" }',
                                 owner_status='"active"', delegation_chain='["other"]')
    with pytest.raises(PolicyError, match=r"owner 'ann' is offboarded by .* but active "
                                          r"by owner_status"):
        parse_cases(text, "tests/broken.toml")


@pytest.mark.parametrize(("text", "line", "message"), [
    ('[[case]]\nname = "x"\nname = "y"\n', 3, "Cannot overwrite a value"),
    ("title = 1\n", None, "unknown top-level keys ['title']"),
    ("# nothing here\n", None, "no [[case]] entries"),
    ('[agents."a"]\npurpose = "p"\nowner = "o"\nrole = "x"\n', None,
     "[agents.\"a\"]: unknown keys ['role']"),
    (case_text() + case_text(), 11, "case 'broken': the name is already used by case 1"),
])
def test_a_malformed_file_names_file_and_line(text: str, line: int | None,
                                              message: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_cases(text, "tests/broken.toml")
    assert (info.value.file, info.value.line) == ("tests/broken.toml", line)
    assert message in info.value.message
