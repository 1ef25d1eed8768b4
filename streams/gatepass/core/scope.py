"""Which actions each agent purpose may take: a per-purpose allow-list with amount ceilings.

The policy is a TOML document, parsed and validated once; its version is a hash of its
content, so every verdict names exactly which policy made it. Anything not listed is out
of scope (default deny).

    [purposes.procurement."purchase_order.create"]
    max_amount = "5000.00"   # optional ceiling, a decimal string (never a float)
    currency = "USD"         # required with max_amount: amounts in other currencies are denied
    approval_above = "1000.00"  # optional: above this the owner must approve (same currency)

    [approval]               # optional: see gatepass.core.approval
    always = ["infrastructure"]                       # classes that always need approval
    classes.infrastructure = ["cloud.provision"]      # action classes
    delegates."sarah@example.com" = ["cfo@example.com"]  # may approve for that owner
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from gatepass.core.approval import ApprovalRules, Threshold, parse_threshold, policy_amount
from gatepass.errors import ConfigError

__all__ = ["ActionRule", "ScopePolicy"]

_ACTION_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
_CURRENCY_RE = re.compile(r"^[A-Z]{3}$")


@dataclass(frozen=True, slots=True)
class ActionRule:
    max_amount: Decimal | None = None
    currency: str | None = None


@dataclass(frozen=True, slots=True)
class ScopePolicy:
    version: str
    purposes: Mapping[str, Mapping[str, ActionRule]]
    approval: ApprovalRules = field(default_factory=ApprovalRules)

    @classmethod
    def from_toml(cls, text: str, *, source: str = "scope policy") -> ScopePolicy:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("scope_file", f"{source}: {exc}") from exc
        return cls.from_mapping(doc, source=source)

    @classmethod
    def from_mapping(cls, doc: Mapping[str, Any], *, source: str = "scope policy") -> ScopePolicy:
        unknown = set(doc) - {"purposes", "approval"}
        if unknown:
            # A typo such as [purpose.x] would otherwise silently drop those actions.
            raise ConfigError("scope_file", f"{source}: unknown top-level keys {sorted(unknown)}")
        purposes_doc = doc.get("purposes")
        if not isinstance(purposes_doc, Mapping) or not purposes_doc:
            raise ConfigError("scope_file", f"{source}: needs a non-empty [purposes] table")
        purposes: dict[str, dict[str, ActionRule]] = {}
        canonical: dict[str, dict[str, dict[str, str | None]]] = {}
        thresholds: dict[tuple[str, str], Threshold] = {}
        for purpose, actions in purposes_doc.items():
            if not isinstance(actions, Mapping):
                raise ConfigError("scope_file", f"{source}: purposes.{purpose} must be a table")
            purposes[purpose] = {}
            canonical[purpose] = {}
            for action, rule_doc in actions.items():
                where = f"{source}: purposes.{purpose}.{action}"
                if not _ACTION_RE.match(action):
                    raise ConfigError("scope_file", f"{where}: action must look like noun.verb")
                if not isinstance(rule_doc, Mapping):
                    raise ConfigError("scope_file", f"{where}: must be a table")
                rule = _rule(rule_doc, where)
                purposes[purpose][action] = rule
                canonical[purpose][action] = {
                    "max_amount": None if rule.max_amount is None else str(rule.max_amount),
                    "currency": rule.currency}
                threshold = parse_threshold(rule_doc, where)
                if threshold is not None:
                    thresholds[(purpose, action)] = threshold
        approval_doc = doc.get("approval", {})
        if not isinstance(approval_doc, Mapping):
            raise ConfigError("scope_file", f"{source}: approval must be a table")
        approval = ApprovalRules.from_mapping(approval_doc, thresholds, source=source)
        payload = {"purposes": canonical, "approval": approval.canonical()}
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        version = "scope-" + hashlib.sha256(blob).hexdigest()[:16]
        return cls(version=version, purposes=purposes, approval=approval)

    def check(self, purpose: str | None, action: str, amount: Decimal | None,
              currency: str | None) -> str | None:
        """None when in scope, else a human explanation of why not."""
        actions = self.purposes.get(purpose or "")
        if actions is None:
            return f"purpose {purpose!r} has no allowed actions"
        rule = actions.get(action)
        if rule is None:
            return f"action {action!r} is not allowed for purpose {purpose!r}"
        if rule.max_amount is None:
            return None
        if amount is None:
            return f"action {action!r} needs an amount (ceiling {rule.max_amount} {rule.currency})"
        if currency != rule.currency:
            return f"amount in {currency}, ceiling is in {rule.currency}"
        if amount > rule.max_amount:
            return f"amount {amount} exceeds the ceiling {rule.max_amount} {rule.currency}"
        return None


def _rule(doc: Mapping[str, Any], where: str) -> ActionRule:
    unknown = set(doc) - {"max_amount", "currency", "approval_above"}
    if unknown:
        raise ConfigError("scope_file", f"{where}: unknown keys {sorted(unknown)}")
    raw_max, currency = doc.get("max_amount"), doc.get("currency")
    if raw_max is None:
        if currency is not None and "approval_above" not in doc:
            raise ConfigError("scope_file", f"{where}: currency without max_amount")
        return ActionRule()
    max_amount = policy_amount(raw_max, where, "max_amount")
    if not isinstance(currency, str) or not _CURRENCY_RE.match(currency):
        raise ConfigError("scope_file", f"{where}: currency must be an ISO 4217 code")
    return ActionRule(max_amount=max_amount, currency=currency)
