"""Scope policy: parsing, content-hash versions, and every invalid policy naming its path."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path

import pytest

from gatepass.core import ActionRule, ScopePolicy
from gatepass.errors import ConfigError
from gatepass.worker.policy import DEFAULT_SCOPE_FILE, load_scope_policy

POLICY = """
# what each purpose may do
[purposes.procurement."purchase_order.create"]
max_amount = "5000.00"
currency = "USD"

[purposes.procurement."vendor.read"]

[purposes.research."dataset.read"]
"""

# The same content: other order, other quoting, inline tables, comments and blank lines.
SAME_CONTENT = """
[purposes.research]
"dataset.read" = {}

[purposes.procurement]
"vendor.read" = {}   # read-only
"purchase_order.create" = { currency = "USD", max_amount = "5000.00" }
"""


def test_valid_policy_is_parsed() -> None:
    policy = ScopePolicy.from_toml(POLICY)
    assert set(policy.purposes) == {"procurement", "research"}
    assert policy.purposes["procurement"]["purchase_order.create"] == ActionRule(
        max_amount=Decimal("5000.00"), currency="USD")
    assert policy.purposes["procurement"]["vendor.read"] == ActionRule()
    assert policy.purposes["research"] == {"dataset.read": ActionRule()}
    assert re.fullmatch(r"scope-[0-9a-f]{16}", policy.version)


@pytest.mark.parametrize(("purpose", "action", "amount", "currency", "problem"), [
    ("procurement", "purchase_order.create", Decimal("5000.00"), "USD", None),
    ("procurement", "purchase_order.create", Decimal("0"), "USD", None),
    ("procurement", "purchase_order.create", Decimal("5000.01"), "USD", "exceeds the ceiling"),
    ("procurement", "purchase_order.create", Decimal("10"), "EUR", "ceiling is in USD"),
    ("procurement", "purchase_order.create", None, None, "needs an amount"),
    ("procurement", "vendor.read", None, None, None),
    ("procurement", "vendor.read", Decimal("1e9"), "JPY", None),  # no ceiling, any amount
    ("procurement", "dataset.read", None, None, "not allowed for purpose 'procurement'"),
    ("marketing", "vendor.read", None, None, "purpose 'marketing' has no allowed actions"),
    (None, "vendor.read", None, None, "purpose None has no allowed actions"),
])
def test_check_explains_what_is_out_of_scope(purpose: str | None, action: str,
                                             amount: Decimal | None, currency: str | None,
                                             problem: str | None) -> None:
    result = ScopePolicy.from_toml(POLICY).check(purpose, action, amount, currency)
    if problem is None:
        assert result is None
    else:
        assert result is not None and problem in result


def test_version_is_a_content_hash_independent_of_formatting_and_order() -> None:
    assert ScopePolicy.from_toml(SAME_CONTENT).version == ScopePolicy.from_toml(POLICY).version


def test_version_is_stable_across_loads() -> None:
    assert {ScopePolicy.from_toml(POLICY).version for _ in range(3)} == {
        ScopePolicy.from_toml(POLICY).version}


@pytest.mark.parametrize(("label", "old", "new"), [
    ("different ceiling", 'max_amount = "5000.00"', 'max_amount = "5000.01"'),
    ("different currency", 'currency = "USD"', 'currency = "EUR"'),
    ("renamed action", '"vendor.read"', '"vendor.list"'),
    ("renamed purpose", "purposes.research.", "purposes.science."),
])
def test_a_content_change_changes_the_version(label: str, old: str, new: str) -> None:
    assert old in POLICY
    assert ScopePolicy.from_toml(POLICY.replace(old, new)).version != ScopePolicy.from_toml(
        POLICY).version


def test_an_added_action_changes_the_version() -> None:
    more = POLICY + '\n[purposes.research."dataset.list"]\n'
    assert ScopePolicy.from_toml(more).version != ScopePolicy.from_toml(POLICY).version


def test_an_empty_purpose_is_allowed_and_allows_nothing() -> None:
    policy = ScopePolicy.from_toml(POLICY + "\n[purposes.frozen]\n")
    assert policy.purposes["frozen"] == {}
    assert policy.check("frozen", "vendor.read", None, None) is not None
    assert policy.version != ScopePolicy.from_toml(POLICY).version


RULE = 'purposes.procurement.purchase_order.create'
INVALID: list[tuple[str, str, str]] = [
    ("float max_amount", '[purposes.procurement."purchase_order.create"]\n'
     'max_amount = 5000.0\ncurrency = "USD"\n', f"{RULE}: max_amount must be a decimal string"),
    ("integer max_amount", '[purposes.procurement."purchase_order.create"]\n'
     'max_amount = 5000\ncurrency = "USD"\n', f"{RULE}: max_amount must be a decimal string"),
    ("missing currency", '[purposes.procurement."purchase_order.create"]\n'
     'max_amount = "5000.00"\n', f"{RULE}: currency must be an ISO 4217 code"),
    ("lower-case currency", '[purposes.procurement."purchase_order.create"]\n'
     'max_amount = "5000.00"\ncurrency = "usd"\n', f"{RULE}: currency must be an ISO 4217"),
    ("currency too long", '[purposes.procurement."purchase_order.create"]\n'
     'max_amount = "5000.00"\ncurrency = "DOLLAR"\n', f"{RULE}: currency must be an ISO 4217"),
    ("currency not a string", '[purposes.procurement."purchase_order.create"]\n'
     'max_amount = "5000.00"\ncurrency = 840\n', f"{RULE}: currency must be an ISO 4217"),
    ("currency without ceiling", '[purposes.procurement."purchase_order.create"]\n'
     'currency = "USD"\n', f"{RULE}: currency without max_amount"),
    ("max_amount not a number", '[purposes.procurement."purchase_order.create"]\n'
     'max_amount = "lots"\ncurrency = "USD"\n', f"{RULE}: max_amount 'lots' is not a decimal"),
    ("negative max_amount", '[purposes.procurement."purchase_order.create"]\n'
     'max_amount = "-1"\ncurrency = "USD"\n', f"{RULE}: max_amount must be a finite amount"),
    ("NaN max_amount", '[purposes.procurement."purchase_order.create"]\n'
     'max_amount = "NaN"\ncurrency = "USD"\n', f"{RULE}: max_amount must be a finite amount"),
    ("infinite max_amount", '[purposes.procurement."purchase_order.create"]\n'
     'max_amount = "Infinity"\ncurrency = "USD"\n', f"{RULE}: max_amount must be a finite"),
    ("unknown key", '[purposes.procurement."purchase_order.create"]\n'
     'max_amount = "5000.00"\ncurrency = "USD"\nmax_ammount = "1"\n',
     f"{RULE}: unknown keys ['max_ammount']"),
    ("unknown keys listed sorted", '[purposes.procurement."vendor.read"]\nz = 1\na = 2\n',
     "purposes.procurement.vendor.read: unknown keys ['a', 'z']"),
    ("action without a dot", '[purposes.procurement.purchase_order]\n',
     "purposes.procurement.purchase_order: action must look like noun.verb"),
    ("action in upper case", '[purposes.procurement."PurchaseOrder.Create"]\n',
     "purposes.procurement.PurchaseOrder.Create: action must look like noun.verb"),
    ("action with a space", '[purposes.procurement."purchase order.create"]\n',
     "purposes.procurement.purchase order.create: action must look like noun.verb"),
    ("rule not a table", '[purposes.procurement]\n"vendor.read" = true\n',
     "purposes.procurement.vendor.read: must be a table"),
    ("purpose not a table", '[purposes]\nprocurement = "everything"\n',
     "purposes.procurement must be a table"),
    ("empty purposes", "[purposes]\n", "needs a non-empty [purposes] table"),
    ("no purposes at all", "", "needs a non-empty [purposes] table"),
    ("purposes not a table", 'purposes = ["procurement"]\n',
     "needs a non-empty [purposes] table"),
    ("TOML syntax error", '[purposes.procurement."vendor.read"\n', "line 1"),
    ("duplicate table", '[purposes.p."a.b"]\n[purposes.p."a.b"]\n', "line 2"),
]


@pytest.mark.parametrize(("label", "text", "message"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_policy_names_the_offending_path(label: str, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        ScopePolicy.from_toml(text, source="ops/scopes.toml")
    assert info.value.key == "scope_file"
    assert info.value.code == "config_invalid"
    assert str(info.value).startswith("scope_file: ops/scopes.toml: ")
    assert message in str(info.value)


def test_syntax_error_keeps_the_toml_cause() -> None:
    with pytest.raises(ConfigError) as info:
        ScopePolicy.from_toml("[purposes")
    assert info.value.__cause__ is not None
    assert "scope policy" in str(info.value)  # the default source name


def test_unknown_top_level_table_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        ScopePolicy.from_toml(POLICY + '\n[purpose.support."ticket.update"]\n')
    assert "purpose" in str(info.value)


# ---- the shipped default policy ----------------------------------------------------------
def test_default_policy_ships_with_the_package_and_loads() -> None:
    policy = load_scope_policy(None)
    assert DEFAULT_SCOPE_FILE.name == "scopes.toml" and DEFAULT_SCOPE_FILE.is_file()
    assert policy == ScopePolicy.from_toml(DEFAULT_SCOPE_FILE.read_text())
    assert set(policy.purposes) == {"procurement", "infrastructure", "support"}
    assert policy.purposes["procurement"]["purchase_order.create"] == ActionRule(
        max_amount=Decimal("100000.00"), currency="USD")
    assert policy.approval.thresholds[("procurement", "purchase_order.create")].above == \
        Decimal("10000.00")
    assert policy.approval.always == {"infrastructure", "customer_data"}
    assert policy.purposes["infrastructure"]["cloud.provision"] == ActionRule(
        max_amount=Decimal("2000.00"), currency="USD")
    assert policy.check("procurement", "purchase_order.create", Decimal("120.00"), "USD") is None
    assert policy.check("procurement", "cloud.provision", Decimal("1"), "USD") is not None
    assert re.fullmatch(r"scope-[0-9a-f]{16}", policy.version)


def test_load_scope_policy_reads_a_given_file(tmp_path: Path) -> None:
    path = tmp_path / "scopes.toml"
    path.write_text(POLICY)
    assert load_scope_policy(path) == ScopePolicy.from_toml(POLICY)


def test_load_scope_policy_names_the_file_in_errors(tmp_path: Path) -> None:
    path = tmp_path / "scopes.toml"
    path.write_text('[purposes.p."a.b"]\nmax_amount = 1.5\n')
    with pytest.raises(ConfigError) as info:
        load_scope_policy(path)
    assert info.value.key == "scope_file"
    assert str(path) in str(info.value)


def test_missing_scope_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_scope_policy(missing)
    assert info.value.key == "scope_file"
    assert str(missing) in str(info.value)
