"""Stateful limits: table-driven ledger cases (cases/limits.toml), the `[[limits]]` parser,
budget keys, pruning, a no-overspend property and the bundle's gatepass.toml."""

from __future__ import annotations

import tomllib
from collections import defaultdict
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatepass.core.limits import Entry, Ledger, LimitRule, budget_keys, parse_limits
from gatepass.errors import PolicyError
from support.policies import bundle

DOC = tomllib.loads((Path(__file__).parent / "cases" / "limits.toml").read_text())
CASES: list[dict[str, Any]] = DOC["case"]
INVALID: list[dict[str, Any]] = DOC["invalid"]
DEFAULT_KEY = "agent:procure-bot"
DEFAULT_ACTION = "purchase_order.create"
T = datetime(2026, 11, 29, 10, 0, 0, tzinfo=UTC)


def rule(**fields: Any) -> LimitRule:
    """One rule through the parser, from gatepass.toml-like fields."""
    (parsed,) = parse_limits([fields])
    return parsed


SPEND = rule(name="spend", scope="agent", measure="amount", max="100.00", currency="USD",
             window="1d")


# ---- the case corpus ------------------------------------------------------------------------

def _reserve(ledger: Ledger, rules: tuple[LimitRule, ...], op: dict[str, Any],
             where: str) -> Ledger:
    amount = Decimal(op["amount"]) if "amount" in op else None
    currency = op.get("currency", "USD" if amount is not None else None)
    after, why = ledger.reserve(rules, intent_id=op["reserve"], at=op["at"],
                                action=op.get("action", DEFAULT_ACTION), amount=amount,
                                currency=currency)
    if "refused" in op:
        assert why is not None, f"{where}: granted, want refused ({op['refused']})"
        assert op["refused"] in why, f"{where}: reason {why!r}"
        assert after is ledger, f"{where}: a refusal changed the ledger"
    elif op["want"] == "granted":
        assert why is None, f"{where}: refused: {why}"
        assert after.entries == (*ledger.entries, Entry(
            intent_id=op["reserve"], at=op["at"], action=op.get("action", DEFAULT_ACTION),
            amount=amount, currency=currency)), where
        assert after.key == ledger.key
    elif op["want"] == "unchanged":
        assert why is None, f"{where}: refused: {why}"
        assert after is ledger, f"{where}: a repeated reservation changed the ledger"
    else:
        raise AssertionError(f"{where}: unknown want {op['want']!r}")
    return after


def _release(ledger: Ledger, op: dict[str, Any], where: str) -> Ledger:
    after = ledger.release(op["release"], at=op.get("at"),
                           action=op.get("action", DEFAULT_ACTION))
    if op.get("want") == "unchanged":
        assert after is ledger, where
    else:
        assert "want" not in op, f"{where}: unknown want {op['want']!r}"
        entry = after.find(op["release"])
        if entry is not None:
            assert entry.released, where
    return after


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_limit_case(case: dict[str, Any]) -> None:
    rules = parse_limits(case["limits"])
    by_name = {r.name: r for r in rules}
    ledger = Ledger(key=case.get("key", DEFAULT_KEY))
    for i, op in enumerate(case["op"]):
        where = f"op {i} {op}"
        if "reserve" in op:
            ledger = _reserve(ledger, rules, op, where)
        elif "release" in op:
            ledger = _release(ledger, op, where)
        elif "used" in op:
            assert ledger.used(by_name[op["used"]], op["at"]) == Decimal(op["want"]), where
        else:
            raise AssertionError(f"unknown operation {op}")


def test_case_names_are_unique() -> None:
    names = [c["name"] for c in CASES] + [c["name"] for c in INVALID]
    assert len(names) == len(set(names))


def test_cases_cover_both_measures_window_kinds_and_scopes() -> None:
    rules = [r for c in CASES for r in parse_limits(c["limits"])]
    assert {r.measure for r in rules} == {"amount", "count"}
    assert {r.sliding for r in rules} == {True, False}
    assert {r.scope for r in rules} == {"agent", "owner", "department"}
    assert any(r.actions for r in rules)
    outcomes = {("refused" if "refused" in op else op.get("want")) for c in CASES
                for op in c["op"] if "reserve" in op}
    assert outcomes == {"granted", "unchanged", "refused"}


# ---- parse_limits: invalid configuration --------------------------------------------------

BASES: dict[str, dict[str, Any]] = {
    "amount": {"name": "spend", "scope": "agent", "measure": "amount", "max": "10000.00",
               "currency": "USD", "window": "1d"},
    "count": {"name": "rate", "scope": "agent", "measure": "count", "max": 10, "window": "1m"},
}


@pytest.mark.parametrize("case", INVALID, ids=[c["name"] for c in INVALID])
def test_invalid_limit(case: dict[str, Any]) -> None:
    base = BASES[case.get("base", "amount")]
    parse_limits([base])  # the base is valid: the error is the change's
    item = {k: v for k, v in base.items() if k not in case.get("drop", [])}
    item.update(case.get("set", {}))
    with pytest.raises(PolicyError) as err:
        parse_limits([item])
    assert err.value.file == "gatepass.toml"
    assert str(err.value).startswith("gatepass.toml: ")
    for text in case["error"]:
        assert text in err.value.message


@pytest.mark.parametrize("doc", [{"name": "spend"}, "spend", 3, {}])
def test_limits_must_be_an_array(doc: Any) -> None:
    with pytest.raises(PolicyError, match=r"limits must be an array of tables") as err:
        parse_limits(doc)
    assert err.value.file == "gatepass.toml"


@pytest.mark.parametrize("item", ["spend", 1, ["spend"], None])
def test_each_limit_must_be_a_table(item: Any) -> None:
    with pytest.raises(PolicyError, match=r"limits\[1\] must be a table"):
        parse_limits([BASES["amount"], item])


def test_a_name_used_twice() -> None:
    with pytest.raises(PolicyError, match=r"limits\.spend: the name is used twice"):
        parse_limits([BASES["amount"], {**BASES["count"], "name": "spend"}])


def test_an_error_in_a_later_limit_names_its_index_or_name() -> None:
    with pytest.raises(PolicyError, match=r"limits\[2\]\.name"):
        parse_limits([BASES["amount"], BASES["count"], {**BASES["count"], "name": "Bad"}])
    with pytest.raises(PolicyError, match=r"limits\.later\.window"):
        parse_limits([BASES["amount"], {**BASES["count"], "name": "later", "window": "1w"}])


def test_no_limits() -> None:
    assert parse_limits(None) == ()
    assert parse_limits([]) == ()


# ---- parse_limits: valid configuration ----------------------------------------------------

def test_an_amount_limit_parses_to_its_rule() -> None:
    parsed = parse_limits([{"name": "agent-daily-spend", "scope": "agent",
                            "measure": "amount", "max": "10000.00", "currency": "USD",
                            "window": "1d", "sliding": False,
                            "actions": ["purchase_order.create"]}])
    assert parsed == (LimitRule(name="agent-daily-spend", scope="agent", measure="amount",
                                max=Decimal("10000.00"), window=timedelta(days=1),
                                sliding=False, currency="USD",
                                actions=frozenset({"purchase_order.create"})),)
    assert str(parsed[0].max) == "10000.00"  # the places are kept (the DENY detail shows them)
    assert parsed[0].canonical() == {
        "name": "agent-daily-spend", "scope": "agent", "measure": "amount",
        "max": "10000.00", "window": 86400.0, "sliding": False, "currency": "USD",
        "actions": ["purchase_order.create"]}


def test_a_count_limit_parses_with_defaults() -> None:
    parsed = parse_limits([{"name": "owner.rate_2", "scope": "owner", "measure": "count",
                            "max": 0, "window": "30s"}])
    assert parsed == (LimitRule(name="owner.rate_2", scope="owner", measure="count",
                                max=Decimal(0), window=timedelta(seconds=30)),)
    (r,) = parsed
    assert r.sliding is False and r.currency is None and r.actions is None
    assert r.applies("anything.at_all")
    assert r.canonical()["actions"] is None and r.canonical()["currency"] is None


def test_several_limits_keep_their_order() -> None:
    parsed = parse_limits([
        {**BASES["amount"], "name": "b", "scope": "department", "sliding": True},
        {**BASES["count"], "name": "a", "actions": ["payment.send", "invoice.read"]},
    ])
    assert [r.name for r in parsed] == ["b", "a"]
    assert parsed[0].sliding and parsed[0].scope == "department"
    assert parsed[1].actions == frozenset({"payment.send", "invoice.read"})
    assert parsed[1].canonical()["actions"] == ["invoice.read", "payment.send"]
    assert parsed[1].applies("payment.send") and not parsed[1].applies("vendor.read")


@pytest.mark.parametrize(("raw", "want"), [
    ("1s", timedelta(seconds=1)), ("30s", timedelta(seconds=30)),
    ("10m", timedelta(minutes=10)), ("90m", timedelta(minutes=90)),
    ("24h", timedelta(days=1)), ("7d", timedelta(days=7)), ("366d", timedelta(days=366)),
    ("8784h", timedelta(days=366)), ("527040m", timedelta(days=366)),
    ("999999s", timedelta(seconds=999999)),
])
def test_windows(raw: str, want: timedelta) -> None:
    assert rule(**{**BASES["count"], "window": raw}).window == want


@pytest.mark.parametrize("raw", ["0", "1e3", "10000", "0.00", "1234.5678"])
def test_amount_max_is_any_non_negative_decimal_string(raw: str) -> None:
    assert rule(**{**BASES["amount"], "max": raw}).max == Decimal(raw)


# ---- window_start -------------------------------------------------------------------------

@pytest.mark.parametrize(("window", "at", "start"), [
    ("1d", datetime(2026, 11, 29, 23, 59, 59, 999999, tzinfo=UTC),
     datetime(2026, 11, 29, tzinfo=UTC)),
    ("1d", datetime(2026, 11, 30, tzinfo=UTC), datetime(2026, 11, 30, tzinfo=UTC)),
    ("1h", datetime(2026, 11, 29, 10, 59, 59, tzinfo=UTC),
     datetime(2026, 11, 29, 10, tzinfo=UTC)),
    ("90m", datetime(2026, 11, 29, 10, 29, 59, tzinfo=UTC),
     datetime(2026, 11, 29, 9, tzinfo=UTC)),
    ("7d", datetime(2026, 11, 25, 12, tzinfo=UTC), datetime(2026, 11, 19, tzinfo=UTC)),
    ("1m", datetime(2026, 11, 29, 10, 0, 59, tzinfo=UTC),
     datetime(2026, 11, 29, 10, tzinfo=UTC)),
])
def test_tumbling_windows_are_aligned_to_the_epoch(window: str, at: datetime,
                                                   start: datetime) -> None:
    assert rule(**{**BASES["count"], "window": window}).window_start(at) == start


def test_tumbling_window_start_is_the_same_instant_in_any_time_zone() -> None:
    at = datetime(2026, 11, 30, 1, 30, tzinfo=UTC)
    local = at.astimezone(timezone(timedelta(hours=-5)))
    r = rule(**{**BASES["count"], "window": "1d"})
    assert r.window_start(local) == r.window_start(at) == datetime(2026, 11, 30, tzinfo=UTC)


def test_a_sliding_window_starts_one_window_before() -> None:
    r = rule(**{**BASES["count"], "window": "1h", "sliding": True})
    assert r.window_start(T) == T - timedelta(hours=1)


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
                    timezones=st.just(UTC)),
       st.sampled_from(["1s", "7s", "1m", "90m", "1h", "1d", "7d", "366d"]))
def test_a_tumbling_window_holds_its_time(at: datetime, window: str) -> None:
    r = rule(**{**BASES["count"], "window": window})
    start = r.window_start(at)
    assert start <= at < start + r.window
    assert r.window_start(start) == start


# ---- budget_keys --------------------------------------------------------------------------

AGENT_R = rule(name="a", scope="agent", measure="count", max=1, window="1m")
OWNER_R = rule(name="o", scope="owner", measure="count", max=1, window="1m")
DEPT_R = rule(name="d", scope="department", measure="count", max=1, window="1m")
OWNER_PAY = rule(name="op", scope="owner", measure="count", max=1, window="1m",
                 actions=["payment.send"])


def test_budget_keys_are_agent_then_owner_then_department() -> None:
    keys = budget_keys([DEPT_R, OWNER_R, AGENT_R], "vendor.read", agent="bot", owner="sarah",
                       department="finance")
    assert keys == ("agent:bot", "owner:sarah", "department:finance")


def test_budget_keys_only_for_scopes_with_a_rule() -> None:
    assert budget_keys([OWNER_R], "vendor.read", agent="bot", owner="sarah",
                       department="finance") == ("owner:sarah",)
    assert budget_keys([DEPT_R, AGENT_R], "vendor.read", agent="bot", owner="sarah",
                       department="finance") == ("agent:bot", "department:finance")
    assert budget_keys([], "vendor.read", agent="bot", owner="sarah",
                       department="finance") == ()


def test_budget_keys_only_for_rules_applying_to_the_action() -> None:
    rules = [AGENT_R, OWNER_PAY]
    assert budget_keys(rules, "vendor.read", agent="bot", owner="sarah",
                       department=None) == ("agent:bot",)
    assert budget_keys(rules, "payment.send", agent="bot", owner="sarah",
                       department=None) == ("agent:bot", "owner:sarah")


def test_a_scope_with_several_rules_is_one_key() -> None:
    rules = [OWNER_R, OWNER_PAY, rule(name="o2", scope="owner", measure="count", max=3,
                                      window="1h")]
    assert budget_keys(rules, "payment.send", agent="bot", owner="sarah",
                       department=None) == ("owner:sarah",)


@pytest.mark.parametrize("missing", [None, ""])
def test_a_missing_owner_or_department_is_the_shared_empty_key(missing: str | None) -> None:
    keys = budget_keys([AGENT_R, OWNER_R, DEPT_R], "vendor.read", agent="bot", owner=missing,
                       department=missing)
    assert keys == ("agent:bot", "owner:", "department:")


# ---- prune --------------------------------------------------------------------------------

def _entry(intent_id: str, at: datetime, *, released: bool = False) -> Entry:
    return Entry(intent_id=intent_id, at=at, action=DEFAULT_ACTION, amount=Decimal("1.00"),
                 currency="USD", released=released)


PRUNE_RULES = (
    rule(name="hourly", scope="agent", measure="count", max=5, window="1h", sliding=True),
    rule(name="daily", scope="agent", measure="amount", max="100.00", currency="USD",
         window="1d"),
    rule(name="owner-weekly", scope="owner", measure="count", max=5, window="7d"),
)


def test_prune_drops_entries_older_than_the_longest_window_of_the_key_s_scope() -> None:
    day = timedelta(days=1)
    ledger = Ledger(key="agent:bot", entries=(
        _entry("too-old", T - day - timedelta(microseconds=1)),
        _entry("day-old", T - day),
        _entry("hour-old", T - timedelta(hours=1)),
        _entry("now", T),
        _entry("ahead", T + timedelta(seconds=5)),
    ))
    pruned = ledger.prune(PRUNE_RULES, T, keep_released=timedelta(days=30))
    # the owner's 7d window is not this key's: it does not keep the agent's entries
    assert [e.intent_id for e in pruned.entries] == ["day-old", "hour-old", "now", "ahead"]
    assert pruned.key == "agent:bot"


def test_prune_keeps_released_entries_for_keep_released_only() -> None:
    keep = timedelta(days=3)
    ledger = Ledger(key="agent:bot", entries=(
        _entry("released-long-ago", T - keep - timedelta(microseconds=1), released=True),
        _entry("released-3d", T - keep, released=True),
        _entry("released-2d", T - timedelta(days=2), released=True),
        _entry("released-now", T - timedelta(minutes=1), released=True),
        _entry("reserved-2d", T - timedelta(days=2)),
    ))
    pruned = ledger.prune(PRUNE_RULES, T, keep_released=keep)
    # released entries outlive the windows (they refuse a late reservation), reserved do not
    assert [e.intent_id for e in pruned.entries] == ["released-3d", "released-2d",
                                                     "released-now"]
    # a keep_released shorter than the windows drops released entries early: they count
    # nothing anyway
    short = ledger.prune(PRUNE_RULES, T, keep_released=timedelta(seconds=90))
    assert [e.intent_id for e in short.entries] == ["released-now"]


def test_a_released_intent_pruned_away_may_be_reserved_again() -> None:
    ledger = Ledger(key="agent:bot").release("late", at=T - timedelta(days=2))
    assert ledger.reserve([SPEND], intent_id="late", at=T, action=DEFAULT_ACTION,
                          amount=Decimal("1.00"), currency="USD")[1] == "already released"
    pruned = ledger.prune([SPEND], T, keep_released=timedelta(days=1))
    assert pruned.entries == ()
    assert pruned.reserve([SPEND], intent_id="late", at=T, action=DEFAULT_ACTION,
                          amount=Decimal("1.00"), currency="USD")[1] is None


def test_prune_without_rules_for_the_scope_keeps_only_the_present_and_future() -> None:
    ledger = Ledger(key="department:", entries=(
        _entry("past", T - timedelta(microseconds=1)), _entry("now", T),
        _entry("ahead", T + timedelta(seconds=1)),
    ))
    pruned = ledger.prune(PRUNE_RULES, T, keep_released=timedelta(days=1))
    assert [e.intent_id for e in pruned.entries] == ["now", "ahead"]


def test_prune_with_nothing_to_drop_is_the_same_ledger() -> None:
    ledger = Ledger(key="agent:bot", entries=(_entry("a", T), _entry("b", T, released=True)))
    assert ledger.prune(PRUNE_RULES, T, keep_released=timedelta(hours=1)) is ledger
    empty = Ledger(key="agent:bot")
    assert empty.prune(PRUNE_RULES, T, keep_released=timedelta(0)) is empty


# ---- properties ----------------------------------------------------------------------------

BASE = datetime(2026, 11, 29, tzinfo=UTC)
ACTIONS = ("purchase_order.create", "vendor.read")
IDS = tuple(f"i{n}" for n in range(12))


@st.composite
def rule_docs(draw: st.DrawFn) -> list[dict[str, Any]]:
    docs = []
    for n in range(draw(st.integers(1, 2))):
        doc: dict[str, Any] = {"name": f"r{n}", "scope": "agent",
                               "window": draw(st.sampled_from(["10s", "30s", "1m", "2m"])),
                               "sliding": draw(st.booleans())}
        if draw(st.booleans()):
            doc.update(measure="amount", currency="USD", max=draw(st.one_of(
                st.sampled_from(["0.00", "50.00", "100.00", "150.00"]),
                st.integers(0, 30000).map(lambda c: f"{c // 100}.{c % 100:02d}"))))
        else:
            doc.update(measure="count", max=draw(st.sampled_from([0, 1, 1, 2, 2, 3, 4])))
        if draw(st.booleans()):
            doc["actions"] = ["purchase_order.create"]
        docs.append(doc)
    # a rule of another scope, which the agent's key must ignore
    docs.append({"name": "owner-none", "scope": "owner", "measure": "count", "max": 0,
                 "window": "1m"})
    return docs


amounts = st.one_of(
    st.none(),
    st.sampled_from(["25.00", "50.00", "50.01", "75.00", "99.99", "100.00"]).map(Decimal),
    st.integers(0, 15000).map(lambda c: Decimal(c).scaleb(-2)))


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[tuple[Any, ...]]]:
    """Rules, and reservations and releases at times within three windows of one rule, in
    any order: mostly on a grid of a quarter window (give or take a microsecond), so that
    windows fill up and entries sit on each other's boundaries."""
    docs = draw(rule_docs())
    window = parse_limits([draw(st.sampled_from(docs))])[0].window
    quarter = window / 4
    grid = st.tuples(st.integers(0, 12), st.sampled_from([0, 0, -1, 1])).map(
        lambda k: max(k[0] * quarter + timedelta(microseconds=k[1]), timedelta(0)))
    anywhere = st.integers(0, int(3 * window.total_seconds() * 1_000_000)).map(
        lambda us: timedelta(microseconds=us))
    times = st.one_of(grid, grid, anywhere)
    reserve = st.tuples(st.just("reserve"), st.sampled_from(IDS), times,
                        st.sampled_from(ACTIONS), amounts,
                        st.sampled_from(["USD", "USD", "USD", "EUR"]))
    release = st.tuples(st.just("release"), st.sampled_from(IDS), times, st.booleans())
    size = draw(st.integers(0, 30))  # not Hypothesis' list sizes: they are mostly tiny
    ops = draw(st.lists(st.one_of(reserve, reserve, reserve, release), min_size=size,
                        max_size=size))
    return docs, ops


def _counts(r: LimitRule, e: Entry) -> bool:
    return (not e.released and r.applies(e.action)
            and (r.measure == "count" or (e.amount is not None and e.currency == r.currency)))


def _cost(r: LimitRule, e: Entry) -> Decimal:
    return Decimal(1) if r.measure == "count" else Decimal(e.amount or 0)


def assert_no_overspend(ledger: Ledger, rules: tuple[LimitRule, ...]) -> None:
    """No window of any rule holds more than its max: for a tumbling rule each aligned
    window; for a sliding one every closed span of one window (the fullest ends at an
    entry's time, the same closed span `used` counts)."""
    for r in rules:
        if r.scope != "agent":
            continue
        counted = [e for e in ledger.entries if _counts(r, e)]
        if r.sliding:
            for last in counted:
                total = sum((_cost(r, e) for e in counted
                             if last.at - r.window <= e.at <= last.at), Decimal(0))
                assert total <= r.max, (r, last.at, total)
        else:
            totals: dict[datetime, Decimal] = defaultdict(Decimal)
            for e in counted:
                totals[r.window_start(e.at)] += _cost(r, e)
            for start, total in totals.items():
                assert total <= r.max, (r, start, total)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_no_overspend_whatever_the_order(
        scenario: tuple[list[dict[str, Any]], list[tuple[Any, ...]]]) -> None:
    """Reservations and releases in any time order (budgets shared across workers): at
    every step, for every rule, `used` at any reservation's time stays within the max, and
    so does every window; a refused or repeated reservation leaves the very same ledger."""
    docs, ops = scenario
    rules = parse_limits(docs)
    mine = [r for r in rules if r.scope == "agent"]
    ledger = Ledger(key="agent:bot")
    seen: list[datetime] = []
    for kind, intent_id, offset, *rest in ops:
        at = BASE + offset
        if kind == "release":
            (timed,) = rest
            before = ledger.find(intent_id)
            ledger = ledger.release(intent_id, at=at if timed else None)
            entry = ledger.find(intent_id)
            if before is None and not timed:
                assert entry is None  # an unknown id without a time is not remembered
            else:
                assert entry is not None and entry.released
        else:
            action, amount, currency = rest
            seen.append(at)
            known = ledger.find(intent_id)
            next_ledger, why = ledger.reserve(rules, intent_id=intent_id, at=at,
                                              action=action, amount=amount, currency=currency)
            if why is not None or known is not None:
                # refused, or answered as before: nothing changes
                assert next_ledger is ledger
                assert (why == "already released") == (known is not None and known.released)
                if why is not None and known is None:
                    assert why.startswith("limit r")
            else:
                assert len(next_ledger.entries) == len(ledger.entries) + 1
            ledger = next_ledger
        for r in mine:
            for t in seen:
                assert ledger.used(r, t) <= r.max, (r, t)
        assert_no_overspend(ledger, rules)


offsets = st.integers(0, 360_000_000).map(lambda us: timedelta(microseconds=us))


@settings(max_examples=200)
@given(rule_docs(), st.lists(st.tuples(st.sampled_from(IDS), offsets, st.booleans(), amounts),
                             max_size=20),
       offsets, st.integers(0, 3 * 86400))
def test_prune_changes_no_count_from_now_on(docs: list[dict[str, Any]],
                                            entries: list[tuple[str, timedelta, bool,
                                                                Decimal | None]],
                                            now: timedelta, later_s: int) -> None:
    rules = parse_limits(docs)
    ledger = Ledger(key="agent:bot", entries=tuple(
        Entry(intent_id=i, at=BASE + off, action=DEFAULT_ACTION, amount=amount,
              currency="USD", released=released)
        for i, off, released, amount in entries))
    pruned = ledger.prune(rules, BASE + now, keep_released=timedelta(hours=1))
    at = BASE + now + timedelta(seconds=later_s)
    for r in rules:
        if r.scope != "agent":
            continue  # another key's rule: its windows do not keep this key's entries
        for t in (BASE + now, at):
            assert pruned.used(r, t) == ledger.used(r, t)
            assert pruned.peak(r, t) == ledger.peak(r, t)


# ---- peak ---------------------------------------------------------------------------------

HOURLY = rule(name="hourly", scope="agent", measure="amount", max="100.00", currency="USD",
              window="1h", sliding=True)


def _spent(*entries: tuple[str, datetime, str]) -> Ledger:
    return Ledger(key="agent:bot", entries=tuple(
        Entry(intent_id=i, at=at, action=DEFAULT_ACTION, amount=Decimal(amount),
              currency="USD") for i, at, amount in entries))


def test_peak_of_a_tumbling_window_is_the_whole_window() -> None:
    ledger = _spent(("a", T.replace(hour=1), "10.00"), ("b", T.replace(hour=23), "20.00"),
                    ("next-day", T + timedelta(days=1), "40.00"))
    assert ledger.peak(SPEND, T) == ledger.used(SPEND, T) == Decimal("30.00")


def test_peak_of_a_sliding_window_covers_the_windows_ending_up_to_one_window_later() -> None:
    hour = timedelta(hours=1)
    ledger = _spent(("before", T - hour, "10.00"), ("after", T + hour, "20.00"),
                    ("too-late", T + hour + timedelta(microseconds=1), "40.00"))
    assert ledger.used(HOURLY, T) == Decimal("10.00")
    # [T, T + 1h] holds `after`; the window ending at `too-late` does not hold T
    assert ledger.peak(HOURLY, T) == Decimal("20.00")
    assert ledger.peak(HOURLY, T + timedelta(microseconds=1)) == Decimal("60.00")


def test_peak_ignores_released_other_actions_and_other_currencies() -> None:
    ledger = Ledger(key="agent:bot", entries=(
        Entry(intent_id="r", at=T, action=DEFAULT_ACTION, amount=Decimal(50), currency="USD",
              released=True),
        Entry(intent_id="e", at=T, action=DEFAULT_ACTION, amount=Decimal(50), currency="EUR"),
        Entry(intent_id="n", at=T, action=DEFAULT_ACTION, amount=None, currency=None),
        Entry(intent_id="ok", at=T, action="vendor.read", amount=Decimal(7), currency="USD"),
    ))
    assert ledger.peak(HOURLY, T) == Decimal(7)
    po_only = rule(name="po", scope="agent", measure="count", max=5, window="1h",
                   sliding=True, actions=["purchase_order.create"])
    assert ledger.peak(po_only, T) == 2  # e and n: a count counts whatever the amount


# ---- the bundle's gatepass.toml -------------------------------------------------------------

SCOPE = """
@id("procurement.orders")
permit (principal, action == Gatepass::Action::"purchase_order.create", resource);
"""
LIMITS_TOML = """
[approval.delegates]
sarah = ["cfo"]

[[limits]]
name = "agent-daily-spend"
scope = "agent"
measure = "amount"
max = "10000.00"
currency = "USD"
window = "1d"
actions = ["purchase_order.create"]

[[limits]]
name = "owner-rate"
scope = "owner"
measure = "count"
max = 100
window = "1h"
sliding = true
"""


def test_a_bundle_exposes_its_limits() -> None:
    policy = bundle(SCOPE, settings=LIMITS_TOML)
    assert policy.limits == (
        LimitRule(name="agent-daily-spend", scope="agent", measure="amount",
                  max=Decimal("10000.00"), window=timedelta(days=1), currency="USD",
                  actions=frozenset({"purchase_order.create"})),
        LimitRule(name="owner-rate", scope="owner", measure="count", max=Decimal(100),
                  window=timedelta(hours=1), sliding=True),
    )
    assert budget_keys(policy.limits, "purchase_order.create", agent="bot", owner="sarah",
                       department=None) == ("agent:bot", "owner:sarah")


def test_a_bundle_without_limits_has_none() -> None:
    assert bundle(SCOPE).limits == ()
    assert bundle(SCOPE, settings='[approval.delegates]\nsarah = ["cfo"]\n').limits == ()


def test_the_limits_are_part_of_the_policy_version() -> None:
    tighter = LIMITS_TOML.replace('max = "10000.00"', 'max = "5000.00"')
    assert bundle(SCOPE, settings=LIMITS_TOML).version != bundle(SCOPE,
                                                                 settings=tighter).version


@pytest.mark.parametrize(("settings_text", "message"), [
    (LIMITS_TOML.replace('window = "1d"', 'window = "1w"'),
     r"limits\.agent-daily-spend\.window"),
    (LIMITS_TOML.replace('max = "10000.00"', "max = 10000.00"),
     r"limits\.agent-daily-spend\.max must be a decimal string"),
    (LIMITS_TOML.replace('sliding = true', 'sliding = "yes"'),
     r"limits\.owner-rate\.sliding"),
    (LIMITS_TOML.replace('name = "owner-rate"', 'name = "agent-daily-spend"'),
     r"limits\.agent-daily-spend: the name is used twice"),
    ('[limits]\nname = "x"\n', r"limits must be an array"),
    ('[[limit]]\nname = "x"\n', r"unknown top-level keys \['limit'\]"),
])
def test_a_bundle_with_invalid_limits_is_refused(settings_text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message) as err:
        bundle(SCOPE, settings=settings_text)
    assert err.value.file == "gatepass.toml"
