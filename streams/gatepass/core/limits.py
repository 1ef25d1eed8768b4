"""Stateful limits: spend and action counts per agent, owner or department, over windows.

Cedar decides each request on its own; "at most $10,000 a day" needs to know the day's other
intents. These limits come from the bundle's gatepass.toml and are enforced from stream
state, in order, so that concurrent intents can never overspend:

    [[limits]]
    name = "agent-daily-spend"      # named in the DENY's detail: limit_exceeded (name)
    scope = "agent"                 # agent | owner | department
    measure = "amount"              # amount: the sum of intent amounts; count: how many
    max = "10000.00"                # a decimal string (amount) or an integer (count)
    currency = "USD"                # amount only; an intent in another currency is denied
    window = "1d"                   # <n>s, <n>m, <n>h or <n>d
    sliding = false                 # false: tumbling, aligned to UTC midnight (epoch)
    actions = ["purchase_order.create"]   # optional: only these actions count (default all)

A `Ledger` is the state of one budget key (`agent:<id>`, `owner:<id>`, `department:<id>`):
the entries that count, each an intent id with its time and amount. `reserve` checks every
rule of that key and, only if all pass, adds the intent - so the check and the spend are one
step, in the key's partition. An intent that is then denied, or whose approval is denied or
expires, is `release`d and consumes nothing; its id stays (as released) so a late or
redelivered reservation for it is refused, never counted twice.

Pure: no I/O, no clock (the caller passes times); the worker keeps ledgers in a changelog.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from gatepass.errors import PolicyError

__all__ = ["Entry", "Ledger", "LimitRule", "budget_keys", "parse_limits"]

_SOURCE = "gatepass.toml"
_NAME_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
_WINDOW_RE = re.compile(r"^([1-9][0-9]{0,5})([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SCOPES = ("agent", "owner", "department")
MAX_WINDOW = timedelta(days=366)


@dataclass(frozen=True, slots=True)
class LimitRule:
    name: str
    scope: str
    measure: str  # amount | count
    max: Decimal
    window: timedelta
    sliding: bool = False
    currency: str | None = None
    actions: frozenset[str] | None = None  # None: every action

    def applies(self, action: str) -> bool:
        return self.actions is None or action in self.actions

    def window_start(self, at: datetime) -> datetime:
        """First moment that counts for an intent at `at`."""
        if self.sliding:
            return at - self.window
        span = self.window.total_seconds()
        start = (at - _EPOCH).total_seconds() // span * span
        return _EPOCH + timedelta(seconds=start)

    def canonical(self) -> dict[str, Any]:
        return {"name": self.name, "scope": self.scope, "measure": self.measure,
                "max": str(self.max), "window": self.window.total_seconds(),
                "sliding": self.sliding, "currency": self.currency,
                "actions": sorted(self.actions) if self.actions is not None else None}


def _window(raw: Any, where: str) -> timedelta:
    m = _WINDOW_RE.match(raw) if isinstance(raw, str) else None
    if not m:
        raise PolicyError(f"{where}.window must look like 30s, 10m, 24h or 7d", file=_SOURCE)
    window = timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])
    if window > MAX_WINDOW:
        raise PolicyError(f"{where}.window may be at most 366 days", file=_SOURCE)
    return window


def parse_limits(doc: Any) -> tuple[LimitRule, ...]:
    """The `[[limits]]` array of gatepass.toml; PolicyError naming the limit and key."""
    if doc is None:
        return ()
    if not isinstance(doc, list):
        raise PolicyError("limits must be an array of tables ([[limits]])", file=_SOURCE)
    rules: list[LimitRule] = []
    names: set[str] = set()
    for i, item in enumerate(doc):
        where = f"limits[{i}]"
        if not isinstance(item, Mapping):
            raise PolicyError(f"{where} must be a table", file=_SOURCE)
        unknown = set(item) - {"name", "scope", "measure", "max", "currency", "window",
                               "sliding", "actions"}
        if unknown:
            raise PolicyError(f"{where}: unknown keys {sorted(unknown)}", file=_SOURCE)
        name = item.get("name")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise PolicyError(f"{where}.name must be 1-64 lower-case letters, digits, ._-",
                              file=_SOURCE)
        where = f"limits.{name}"
        if name in names:
            raise PolicyError(f"{where}: the name is used twice", file=_SOURCE)
        names.add(name)
        scope = item.get("scope")
        if scope not in SCOPES:
            raise PolicyError(f"{where}.scope must be one of {', '.join(SCOPES)}",
                              file=_SOURCE)
        measure = item.get("measure")
        if measure not in ("amount", "count"):
            raise PolicyError(f"{where}.measure must be amount or count", file=_SOURCE)
        raw_max = item.get("max")
        currency = item.get("currency")
        if measure == "amount":
            try:
                if not isinstance(raw_max, str):
                    raise InvalidOperation
                limit = Decimal(raw_max)
            except InvalidOperation:
                raise PolicyError(f"{where}.max must be a decimal string like \"10000.00\"",
                                  file=_SOURCE) from None
            if not isinstance(currency, str) or not re.match(r"^[A-Z]{3}$", currency):
                raise PolicyError(f"{where}.currency must be an ISO 4217 code", file=_SOURCE)
        else:
            if not isinstance(raw_max, int) or isinstance(raw_max, bool):
                raise PolicyError(f"{where}.max must be an integer count", file=_SOURCE)
            if currency is not None:
                raise PolicyError(f"{where}.currency is for amount limits", file=_SOURCE)
            limit = Decimal(raw_max)
        if not limit.is_finite() or limit < 0:
            raise PolicyError(f"{where}.max must be a finite number >= 0", file=_SOURCE)
        sliding = item.get("sliding", False)
        if not isinstance(sliding, bool):
            raise PolicyError(f"{where}.sliding must be true or false", file=_SOURCE)
        actions = item.get("actions")
        if actions is not None and (not isinstance(actions, list) or not actions or not all(
                isinstance(a, str) and re.match(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$", a)
                for a in actions)):
            raise PolicyError(f"{where}.actions must be a non-empty list of actions",
                              file=_SOURCE)
        rules.append(LimitRule(name=name, scope=scope, measure=measure, max=limit,
                               window=_window(item.get("window"), where), sliding=sliding,
                               currency=currency,
                               actions=frozenset(actions) if actions is not None else None))
    return tuple(rules)


def budget_keys(rules: Iterable[LimitRule], action: str, *, agent: str, owner: str | None,
                department: str | None) -> tuple[str, ...]:
    """The budget keys an intent must reserve in, agent first, then owner, then department.

    An owner or department limit on an agent without one: the key `owner:` / `department:`
    (the empty id) - all such agents share it, which is the safe reading.
    """
    keys: list[str] = []
    for scope, ident in (("agent", agent), ("owner", owner or ""),
                         ("department", department or "")):
        if any(r.scope == scope and r.applies(action) for r in rules):
            keys.append(f"{scope}:{ident}")
    return tuple(keys)


@dataclass(frozen=True, slots=True)
class Entry:
    intent_id: str
    at: datetime
    action: str
    amount: Decimal | None
    currency: str | None
    released: bool = False


@dataclass(frozen=True, slots=True)
class Ledger:
    """What one budget key has reserved (and released), oldest first."""

    key: str
    entries: tuple[Entry, ...] = field(default=())

    def find(self, intent_id: str) -> Entry | None:
        for entry in self.entries:
            if entry.intent_id == intent_id:
                return entry
        return None

    def _costs(self, rule: LimitRule) -> list[tuple[datetime, Decimal]]:
        """(time, cost) of every entry that counts against `rule`, oldest first."""
        out = []
        for e in self.entries:
            if e.released or not rule.applies(e.action):
                continue
            if rule.measure == "count":
                out.append((e.at, Decimal(1)))
            elif e.amount is not None and e.currency == rule.currency:
                out.append((e.at, e.amount))
        out.sort(key=lambda item: item[0])
        return out

    def used(self, rule: LimitRule, at: datetime) -> Decimal:
        """What the window of `rule` that holds `at` has used: for a tumbling window the
        whole window (its end is known), for a sliding one [at - window, at]."""
        start = rule.window_start(at)
        end = at if rule.sliding else start + rule.window
        return sum((c for t, c in self._costs(rule)
                    if start <= t and (t <= end if rule.sliding else t < end)), Decimal(0))

    def peak(self, rule: LimitRule, at: datetime) -> Decimal:
        """The most any window that would hold an intent at `at` has used.

        Reservations can arrive out of time order (an owner's or department's budget hears
        from agents decided on different workers): a sliding window [u - window, u] holds
        `at` for every u in [at, at + window], so each of those is checked, not only the
        one ending at `at`. A tumbling window is one window, counted whole.
        """
        if not rule.sliding:
            return self.used(rule, at)
        costs = self._costs(rule)
        times = [t for t, _ in costs]
        prefix = [Decimal(0)]
        for _, c in costs:
            prefix.append(prefix[-1] + c)
        peak = Decimal(0)
        ends = [at, *(t for t in times if at < t <= at + rule.window)]
        for u in ends:
            lo = bisect.bisect_left(times, u - rule.window)
            hi = bisect.bisect_right(times, u)
            peak = max(peak, prefix[hi] - prefix[lo])
        return peak

    def reserve(self, rules: Sequence[LimitRule], *, intent_id: str, at: datetime,
                action: str, amount: Decimal | None,
                currency: str | None) -> tuple[Ledger, str | None]:
        """(new ledger, None) when every rule of this key allows the intent, else (this
        ledger unchanged, why not). Idempotent: an intent already here is answered as it was
        (a released one is refused: it must not come back)."""
        existing = self.find(intent_id)
        if existing is not None:
            return self, ("already released" if existing.released else None)
        if amount is not None and (not amount.is_finite() or amount < 0):
            return self, "the amount must be a finite amount >= 0"
        scope = self.key.split(":", 1)[0]
        for rule in rules:
            if rule.scope != scope or not rule.applies(action):
                continue
            if rule.measure == "count":
                cost = Decimal(1)
            elif amount is None:
                continue  # nothing to spend
            elif currency != rule.currency:
                return self, (f"limit {rule.name}: the amount is in {currency}, the limit "
                              f"in {rule.currency}")
            else:
                cost = amount
            used = self.peak(rule, at)
            if used + cost > rule.max:
                unit = "" if rule.measure == "count" else f" {rule.currency}"
                return self, (f"limit {rule.name}: {used}{unit} used of {rule.max}{unit} "
                              f"this {'sliding ' if rule.sliding else ''}window of "
                              f"{_human(rule.window)}, this intent needs {cost}{unit}")
        entry = Entry(intent_id=intent_id, at=at, action=action, amount=amount,
                      currency=currency)
        return replace(self, entries=(*self.entries, entry)), None

    def release(self, intent_id: str, *, at: datetime | None = None,
                action: str = "", ) -> Ledger:
        """The intent consumes nothing. Unknown ids are remembered as released, so that a
        reservation arriving after its release (a slow hop) is refused."""
        entries = list(self.entries)
        for i, e in enumerate(entries):
            if e.intent_id == intent_id:
                if e.released:
                    return self
                entries[i] = replace(e, released=True)
                return replace(self, entries=tuple(entries))
        if at is None:
            return self
        return replace(self, entries=(*entries, Entry(intent_id=intent_id, at=at,
                                                      action=action, amount=None,
                                                      currency=None, released=True)))

    def prune(self, rules: Sequence[LimitRule], now: datetime,
              keep_released: timedelta) -> Ledger:
        """Drop entries no window can count any more (released ones after `keep_released`)."""
        scope = self.key.split(":", 1)[0]
        spans = [r.window for r in rules if r.scope == scope]
        horizon = now - (max(spans) if spans else timedelta(0))
        released_horizon = now - keep_released
        kept = tuple(e for e in self.entries
                     if (e.at >= released_horizon if e.released else e.at >= horizon))
        return self if len(kept) == len(self.entries) else replace(self, entries=kept)


def _human(window: timedelta) -> str:
    seconds = int(window.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
