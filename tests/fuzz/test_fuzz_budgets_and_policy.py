"""Fuzz the budget-requests, budget-replies and policy topics of the worker.

Inputs are arbitrary bytes, mutations of valid Avro records (see `fuzz.test_fuzz_topics`)
and valid-shaped records with hostile fields: RESERVE/RELEASE on the requests topic (wrong
keys and partitions, replies sent to it, huge and negative amounts, other currencies, unknown
policy versions, hops without the key, times far in the past and future), GRANTED/REFUSED/
TIMEOUT on the replies topic (with and without a hold, for decided intents, for another
agent's hold), and PolicyBundle/PolicyActivation records with broken, swapped or forged
contents (a version written again, after it was refused or loaded, among them). Pipelines
run with the limits of `unit.worker.test_pipeline_limits`.

* budget-requests (`Pipeline.on_budget`): nothing raises and the ledgers table is not
  written by the pipeline; an undecodable or misplaced record, or one no worker writes (its
  `at` outside [now - 368 days, now + 1 day], its amount negative or >= 1e14, an amount
  without a currency or a currency without one, a reply partition that is not its agent's),
  is exactly one dead letter and no ledger write; a RESERVE is granted exactly when an
  independent oracle says every window of every rule of its key stays within its max (and
  never for a released intent), and a granted ledger's `used()` never exceeds a rule's max;
  a RELEASE adds no spend. A sequence target applies many messages in order and checks the
  same after each.
* budget-replies (`Pipeline.on_budget_reply`): nothing raises, the tables are not written;
  undecodable or misplaced is one dead letter, and so is a reply for another agent's held
  intent; a verdict only for a held, undecided intent of the reply's agent (the held
  decision on GRANTED - the topic is internal, a GRANTED always finalizes -, DENY on
  REFUSED/TIMEOUT with its spend released); at most one verdict per intent over any
  sequence; an ALLOW's pass verifies.
* policies (`PolicyLoader._apply`): nothing raises; a bundle that does not load or whose
  content does not hash to its claimed version is refused and never decides, until the
  version is written again with files that load and hash to it (then it loads and is no
  longer refused); a loaded version is never replaced; the policy in force at any time is
  the initial one or one loaded from a valid bundle, picked by the latest activation whose
  version loaded (activations of unknown versions are passed over).

The bugs these targets found (and that are fixed) are kept as ordinary tests at the end.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fuzz.conftest import Target, fuzz_examples, fuzz_settings
from fuzz.test_fuzz_approval_decisions import routing
from fuzz.test_fuzz_topics import (
    NOW,
    POLICY,
    SCHEMAS,
    SETTINGS,
    amounts,
    assert_dead_letter,
    mutations,
    raw_encode,
    texts,
    timestamps,
    unscaled,
)
from gatepass.codec.records import intent_from_record
from gatepass.core.limits import MAX_WINDOW, Entry, Ledger, LimitRule
from gatepass.core.policy import CedarPolicy
from gatepass.credentials import KeyStore, PassVerifier
from gatepass.errors import DecodeError, GatepassError, PolicyError
from gatepass.policy import DEFAULT_POLICY_DIR, read_bundle
from gatepass.policy.book import Activation, PolicyBook
from gatepass.transport import partition_for
from gatepass.worker import IntentOutcome, Pipeline
from gatepass.worker.pipeline import BudgetOutcome
from gatepass.worker.policy_loader import PolicyLoader
from unit.worker.test_pipeline import intent_bytes
from unit.worker.test_pipeline_limits import AGENTS as LIMIT_AGENTS
from unit.worker.test_pipeline_limits import LIMITS, make_bus

pytestmark = pytest.mark.fuzz

EXAMPLES = fuzz_examples()
TOPICS = SETTINGS.topics
N = SETTINGS.partitions
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MS = timedelta(milliseconds=1)
# Above $10,000 the owner must approve: with these budgets a held intent can be PENDING.
BIG_LIMITS = LIMITS.replace('"1500.00"', '"50000.00"').replace(
    '"2500.00"', '"60000.00"').replace('"1000.00"', '"50000.00"')
BUDGET_KEYS = ["owner:sarah", "owner:tom", "owner:zed", "department:finance",
               "department:ops", "owner:", "department:"]
HOSTILE_KEYS = [*BUDGET_KEYS, "agent:a1", "agent:z1", "other:x", "", "owner"]
REQUEST_OPS, REPLY_OPS = ("RESERVE", "RELEASE"), ("GRANTED", "REFUSED", "TIMEOUT")
ALL_OPS = [*REQUEST_OPS, *REPLY_OPS]
# The times a budget message may carry (pipeline.Pipeline._check_budget_message): the
# pipelines' clocks stand at NOW.
EARLIEST_AT = NOW - MAX_WINDOW - timedelta(days=2)
LATEST_AT = NOW + timedelta(days=1)
MAX_AMOUNT = Decimal("100000000000000")  # 1e14, as validate_intent


def limits_policy(root: Path, toml: str) -> CedarPolicy:
    """The default bundle with `toml` as its gatepass.toml (as test_pipeline_limits does)."""
    folder = root / "policies"
    shutil.copytree(DEFAULT_POLICY_DIR, folder)
    (folder / "gatepass.toml").write_text(toml)
    return CedarPolicy.from_files(read_bundle(folder))


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Pipeline, CedarPolicy]:
    """A pipeline with LIMITS: owner $1,500/day, department $2,500/30 days sliding."""
    policy = limits_policy(tmp_path_factory.mktemp("fuzz-limits"), LIMITS)
    return make_bus(tmp_path_factory.mktemp("fuzz-limits-bus"), policy).pipeline, policy


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[Pipeline, KeyStore]:
    """A pipeline with BIG_LIMITS (holds can be ALLOW or PENDING) and its key store."""
    policy = limits_policy(tmp_path_factory.mktemp("fuzz-big-limits"), BIG_LIMITS)
    root = tmp_path_factory.mktemp("fuzz-big-bus")
    pipeline = make_bus(root, policy).pipeline
    return pipeline, KeyStore.open(root / "keys", now=NOW)


# ---- the ledger oracle -------------------------------------------------------------------
def ledger_of(raw: bytes | None, key: str) -> Ledger:
    if raw is None:
        return Ledger(key)
    rec = SCHEMAS.budget_ledger.decode(raw)
    assert rec["key"] == key, (rec["key"], key)
    return Ledger(key, tuple(Entry(intent_id=e["intent_id"], at=e["at"], action=e["action"],
                                   amount=e["amount"], currency=e["currency"],
                                   released=e["released"]) for e in rec["entries"]))


def costs(entries: Iterable[Entry], rule: LimitRule) -> list[tuple[datetime, Decimal]]:
    out = []
    for e in entries:
        if e.released or (rule.actions is not None and e.action not in rule.actions):
            continue
        if rule.measure == "count":
            out.append((e.at, Decimal(1)))
        elif e.amount is not None and e.currency == rule.currency:
            out.append((e.at, e.amount))
    return out


def over_limit(key: str, entries: Iterable[Entry], rules: Iterable[LimitRule]) -> list[str]:
    """Every window of every rule of the key's scope that holds more than the rule's max.

    Independent of Ledger: tumbling windows are whole multiples of the window from the
    epoch; a sliding window [u - window, u] is checked for every u where its sum can change
    upwards (an entry arrives: u = t; an entry leaves: u = t + window + 1 ms)."""
    scope = key.split(":", 1)[0]
    entries = list(entries)
    bad = []
    for rule in rules:
        if rule.scope != scope:
            continue
        spent = costs(entries, rule)
        if rule.sliding:
            for u in {t for t, _ in spent} | {t + rule.window + MS for t, _ in spent}:
                total = sum((c for t, c in spent if u - rule.window <= t <= u), Decimal(0))
                if total > rule.max:
                    bad.append(f"{rule.name}: {total} in the window ending {u}")
        else:
            windows: dict[int, Decimal] = defaultdict(Decimal)
            for t, c in spent:
                windows[(t - EPOCH) // rule.window] += c
            bad += [f"{rule.name}: {total} in window {w}" for w, total in windows.items()
                    if total > rule.max]
    return bad


def assert_used_within(ledger: Ledger, rules: Iterable[LimitRule]) -> None:
    """The brief's literal property: `used()` at every entry never exceeds a rule's max."""
    scope = ledger.key.split(":", 1)[0]
    for rule in rules:
        if rule.scope != scope:
            continue
        for e in ledger.entries:
            if not e.released and rule.applies(e.action):
                assert ledger.used(rule, e.at) <= rule.max, (rule.name, e, ledger)


def should_grant(old: Ledger, msg: Mapping[str, Any], rules: Iterable[LimitRule]) -> bool:
    """Whether a RESERVE must be granted on `old`, from the rules alone."""
    existing = old.find(msg["intent_id"])
    if existing is not None:
        return not existing.released  # idempotent; a released intent never comes back
    scope = msg["key"].split(":", 1)[0]
    for rule in rules:
        if rule.scope == scope and rule.applies(msg["action"]) and rule.measure == "amount" \
                and msg["amount"] is not None and msg["currency"] != rule.currency:
            return False
    entry = Entry(intent_id=msg["intent_id"], at=msg["at"], action=msg["action"],
                  amount=msg["amount"], currency=msg["currency"])
    return not over_limit(msg["key"], (*old.entries, entry), rules)


def unreleased(ledger: Ledger) -> set[tuple[str, datetime, str, Decimal | None, str | None]]:
    return {(e.intent_id, e.at, e.action, e.amount, e.currency)
            for e in ledger.entries if not e.released}


def decoded_message(value: bytes | None) -> dict[str, Any] | None:
    try:
        return SCHEMAS.budget_message.decode(value)
    except (GatepassError, DecodeError, KeyError, ValueError, TypeError):
        return None


def invalid_request(msg: Mapping[str, Any]) -> str | None:
    """Why no worker could have written this RESERVE/RELEASE (it is dead-lettered), or None."""
    if not EARLIEST_AT <= msg["at"] <= LATEST_AT:
        return "at"
    amount = msg["amount"]
    if amount is not None and (not amount.is_finite() or amount < 0 or amount >= MAX_AMOUNT):
        return "amount"
    if (amount is None) != (msg["currency"] is None):
        return "currency"
    if msg["reply_partition"] != partition_for(msg["agent_id"], N):
        return "reply_partition"
    return None


# ---- budget-requests inputs --------------------------------------------------------------
RESERVED_ID, RELEASED_ID, DEPT_ID, FRESH_ID = (str(uuid.UUID(int=i, version=4))
                                               for i in (11, 12, 13, 14))
SEED_AMOUNTS = [Decimal("100.00"), Decimal("200.00"), Decimal("199.99"), Decimal("200.01"),
                Decimal("300.00"), Decimal("1500.00"), Decimal("0"), Decimal("0.0001"),
                Decimal("99999999999999.9999"), Decimal("2500.00")]


def message(op: str, intent_id: str, key: str, *, agent: str = "a1",
            at: datetime = NOW, amount: Decimal | None = Decimal("100.00"),
            currency: str | None = "USD", hops: list[str] | None = None,
            action: str = "purchase_order.create", version: str = "",
            reply_partition: int | None = None, detail: str = "") -> dict[str, Any]:
    return {"op": op, "intent_id": intent_id, "agent_id": agent, "key": key,
            "hops": [key] if hops is None else hops,
            "reply_partition": partition_for(agent, N) if reply_partition is None
            else reply_partition,
            "at": at, "action": action, "amount": amount, "currency": currency,
            "policy_version": version, "detail": detail}


def seeded_ledgers(pipeline: Pipeline) -> dict[str, bytes]:
    """Ledgers as genuine traffic leaves them: owner:sarah at 1,300 of 1,500 today with one
    intent released, department:finance at 2,200 of 2,500 over the sliding 30 days."""
    ledgers: dict[str, bytes] = {}
    version = pipeline.policy.version
    for msg in [
            message("RESERVE", RESERVED_ID, "owner:sarah", amount=Decimal("400.00"),
                    at=NOW - timedelta(hours=1)),
            message("RESERVE", str(uuid.uuid4()), "owner:sarah", agent="a2",
                    amount=Decimal("900.00")),
            message("RESERVE", RELEASED_ID, "owner:sarah", agent="a3", amount=Decimal("50"),
                    at=NOW - timedelta(minutes=1)),
            message("RELEASE", RELEASED_ID, "owner:sarah", agent="a3", hops=[]),
            message("RESERVE", DEPT_ID, "department:finance", amount=Decimal("400.00"),
                    at=NOW - timedelta(days=29)),
            message("RESERVE", str(uuid.uuid4()), "department:finance", agent="t1",
                    amount=Decimal("1000.00"), at=NOW - timedelta(days=10)),
            message("RESERVE", str(uuid.uuid4()), "department:finance", agent="a2",
                    amount=Decimal("800.00"), at=NOW - timedelta(hours=1))]:
        msg["policy_version"] = version
        out = pipeline.on_budget(msg["key"].encode(), SCHEMAS.budget_message.encode(msg),
                                 partition=partition_for(msg["key"], N), offset=0,
                                 ledgers=ledgers)
        assert out.refused is None and len(out.ledgers) == 1, out
        ledgers.update(out.ledgers)
    return ledgers


def weighted(*branches: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """Each strategy `weight` times in `sum of weights` (st.one_of drops repeated branches)."""
    return st.sampled_from([s for weight, s in branches for _ in range(weight)]).flatmap(
        lambda s: s)


def mostly(*known: str) -> st.SearchStrategy[str]:
    """One of `known` two times in three, else any text (texts() alone rarely picks them)."""
    return weighted((2, st.sampled_from(known)), (1, texts(*known)))


def near(span: timedelta) -> st.SearchStrategy[datetime]:
    ms = int(span.total_seconds() * 1000)
    return st.integers(-ms, ms).map(lambda d: NOW + timedelta(milliseconds=d))


# The edges of the times a budget message may carry, and a millisecond beyond them.
AT_EDGES = st.sampled_from([EARLIEST_AT, LATEST_AT]).flatmap(
    lambda t: st.integers(-3, 3).map(lambda ms: t + ms * MS))
HERE = "\x00here"  # stands for the message's own key in a hops template


def budget_records(ops: list[str], keys: list[str], agents: list[str],
                   intent_ids: list[str], *,
                   hostile: bool = True) -> st.SearchStrategy[dict[str, Any]]:
    """Valid-shaped BudgetMessages. `hostile`: any field may also be odd (else only values a
    sequence can stay honest about: known keys, near times, amounts a worker writes).

    The field strategies are built once here: building them per draw costs more than the
    pipeline does."""
    other = st.sampled_from(keys)
    hops_templates = st.one_of(
        st.just([HERE]), st.builds(lambda o: [HERE, o], other),
        st.builds(lambda o: [o, HERE], other),
        st.just([]), st.builds(lambda o: [o], other),  # hops without the key
        st.lists(st.sampled_from(keys), max_size=4),
        *([st.lists(texts(*keys), max_size=3)] if hostile else []))
    op = st.sampled_from(ops)
    if hostile:
        fields = st.fixed_dictionaries({
            "op": op, "key": mostly(*keys), "hops": hops_templates, "agent": mostly(*agents),
            "at": weighted((2, near(timedelta(hours=2))), (1, near(timedelta(days=40))),
                           (1, st.just(NOW)), (1, timestamps()), (1, AT_EDGES)),
            "amount": st.one_of(st.sampled_from([None, *SEED_AMOUNTS]),
                                st.sampled_from(SEED_AMOUNTS), amounts()),
            "currency": st.one_of(st.sampled_from([None, "USD", "USD", "USD", "EUR", "usd"]),
                                  mostly("USD")),
            # mostly the agent's partition (None), else another one or no partition at all
            "reply": weighted((12, st.none()), (2, st.integers(0, N - 1)), (1, st.sampled_from(
                [-1, N, 2**31 - 1, -(2**31)]))),
            "version": st.one_of(st.sampled_from(["", "cedar-0000000000000000",
                                                  POLICY.version]), texts()),
            "intent_id": weighted((3, st.sampled_from(intent_ids)),
                                  (1, st.uuids().map(str)), (1, texts())),
            "action": mostly("purchase_order.create", "purchase_order.create", "vendor.read",
                             "invoice.read"),
            "detail": texts(""), "paired": st.integers(0, 3)})
    else:
        fields = st.fixed_dictionaries({
            "op": op, "key": st.sampled_from(keys), "hops": hops_templates,
            "agent": st.sampled_from(agents),
            "at": st.one_of(near(timedelta(minutes=10)), st.integers(
                -40 * 86_400_000, 86_400_000).map(lambda ms: NOW + ms * MS)),
            "amount": st.sampled_from([None, *SEED_AMOUNTS]),
            "currency": st.sampled_from(["USD", "USD", "USD", "EUR"]),
            "reply": st.none(), "version": st.just(""),
            "intent_id": st.sampled_from(intent_ids),
            "action": st.sampled_from(["purchase_order.create", "purchase_order.create",
                                       "vendor.read"]), "detail": st.just("")})

    def build(f: dict[str, Any]) -> dict[str, Any]:
        currency = f["currency"]
        if not hostile or f["paired"]:  # mostly an amount and its currency, as workers write
            currency = None if f["amount"] is None else currency or "USD"
        return message(f["op"], f["intent_id"], f["key"], agent=f["agent"], at=f["at"],
                       amount=f["amount"], currency=currency,
                       hops=[f["key"] if h == HERE else h for h in f["hops"]],
                       action=f["action"], version=f["version"], reply_partition=f["reply"],
                       detail=f["detail"])

    return fields.map(build)


def encode_message(record: Mapping[str, Any]) -> bytes:
    """raw_encode, turning Decimals into the decimal's bytes (amounts() already gives bytes)."""
    rec = dict(record)
    if isinstance(rec["amount"], Decimal):
        rec["amount"] = unscaled(int(rec["amount"].scaleb(4)))
    return raw_encode(SCHEMAS.budget_message, rec)


HOSTILE_REQUESTS = budget_records(
    [*["RESERVE"] * 6, *["RELEASE"] * 3, *REPLY_OPS],
    ["owner:sarah", "department:finance", *BUDGET_KEYS], list(LIMIT_AGENTS),  # the seeded
    [RESERVED_ID, RELEASED_ID, DEPT_ID])


@st.composite
def request_inputs(draw: Any) -> tuple[bytes | None, bytes, int]:
    record = draw(HOSTILE_REQUESTS)
    key, partition = record_routing(draw, record["key"])
    return key, encode_message(record), partition


def record_routing(draw: Any, routed_by: str) -> tuple[bytes | None, int]:
    """Mostly keyed by `routed_by` and on its partition; else a wrong key or partition."""
    key: bytes | None = routed_by.encode()
    partition = partition_for(routed_by, N)
    wrong = draw(st.integers(0, 9))
    if wrong == 0:
        key = draw(st.one_of(st.none(), st.binary(max_size=12)))
    elif wrong == 1:
        key = draw(st.sampled_from([k.encode() for k in HOSTILE_KEYS]))
    elif wrong == 2:
        partition = draw(st.integers(0, N - 1))
    return key, partition


REQUEST_SEEDS = [SCHEMAS.budget_message.encode(m) for m in (
    message("RESERVE", str(uuid.UUID(int=21, version=4)), "owner:sarah"),
    message("RESERVE", RELEASED_ID, "owner:sarah", hops=["owner:sarah", "department:finance"]),
    message("RESERVE", str(uuid.UUID(int=22, version=4)), "department:finance",
            hops=["owner:sarah", "department:finance"], amount=Decimal("250.00")),
    message("RELEASE", RESERVED_ID, "owner:sarah", hops=[]),
    message("RESERVE", str(uuid.UUID(int=23, version=4)), "owner:tom", agent="t1",
            amount=None, currency=None, action="vendor.read"),
    message("GRANTED", RESERVED_ID, "owner:sarah"))]


def routed_by_key(value: bytes) -> tuple[bytes, bytes, int]:
    key = SCHEMAS.budget_message.decode(value)["key"]
    return key.encode(), value, partition_for(key, N)


def request_cases() -> st.SearchStrategy[tuple[bytes | None, bytes | None, int]]:
    seeds = st.sampled_from(REQUEST_SEEDS)
    mutated = st.tuples(st.sampled_from([b"owner:sarah", b"department:finance", None]),
                        mutations(seeds, SCHEMAS.budget_message), st.integers(0, N - 1))
    # the right partition for the key half the time, so mutations can reach the ledger
    mutated = mutated.map(lambda t: (t[0], t[1], partition_for(t[0] or b"", N)
                                     if t[2] % 2 else t[2]))
    # the RESERVE/RELEASE seeds as they are, routed by their key (a RESERVE of a released
    # intent among them: the fuzz rarely builds one that reaches its ledger)
    routed = st.sampled_from(REQUEST_SEEDS[:-1]).map(routed_by_key)
    return weighted((3, request_inputs()), (2, mutated), (2, routed),
                    (1, st.tuples(st.none(), st.none(), st.just(0))))


def check_request(pipeline: Pipeline, rules: tuple[LimitRule, ...], out: BudgetOutcome,
                  key: bytes | None, value: bytes | None, partition: int, offset: int,
                  ledgers: Mapping[str, bytes], target: Target) -> dict[str, Any] | None:
    """Every property of one on_budget call; returns the message when it was applied."""
    msg = decoded_message(value)
    why: str | None = None  # the dead letter's cause, when it must be one
    if msg is None:
        why = ""
    elif msg["op"] not in REQUEST_OPS or key != msg["key"].encode() or \
            partition != partition_for(msg["key"], N):
        why = ":misplaced"
    elif (invalid := invalid_request(msg)) is not None:
        why = f":{invalid}"
    if why is not None:
        code = assert_dead_letter(out.records, TOPICS.budget_requests, key, value, offset)
        assert out.ledgers == {} and out.refused is None
        assert code == "record_invalid" or msg is None, code  # decoded: refused by a check
        target.count(f"dead_letter:{code}{why}")
        return None
    assert msg is not None
    budget = msg["key"]
    old = ledger_of(ledgers.get(budget), budget)
    for r in out.records:
        assert r.topic in (TOPICS.budget_requests, TOPICS.budget_replies), r.topic
        assert r.partition is not None and 0 <= r.partition < N, r
    if msg["op"] == "RELEASE":
        assert out.records == [] and out.refused is None and list(out.ledgers) == [budget]
        new = ledger_of(out.ledgers[budget], budget)
        assert unreleased(new) <= unreleased(old) - {
            u for u in unreleased(old) if u[0] == msg["intent_id"]}, "a release added spend"
        kept = new.find(msg["intent_id"])
        existing = old.find(msg["intent_id"])
        at = existing.at if existing is not None else msg["at"]
        assert (kept is not None and kept.released) == \
            (at >= NOW - SETTINGS.dedupe_horizon), (kept, at)  # remembered while it matters
        target.count("release" if kept is not None else "release:pruned")
        return msg
    replies = [SCHEMAS.budget_message.decode(r.value) for r in out.records
               if r.topic == TOPICS.budget_replies]
    forwards = [SCHEMAS.budget_message.decode(r.value) for r in out.records
                if r.topic == TOPICS.budget_requests]
    for r in out.records:
        routed = msg["agent_id"] if r.topic == TOPICS.budget_replies else \
            SCHEMAS.budget_message.decode(r.value)["key"]
        assert r.key == routed.encode()
        if r.topic == TOPICS.budget_requests:
            assert r.partition == partition_for(routed, N)
        else:
            assert r.partition == msg["reply_partition"]
    for m in replies + forwards:
        assert (m["intent_id"], m["agent_id"]) == (msg["intent_id"], msg["agent_id"])
    expected = should_grant(old, msg, rules)
    hops = list(msg["hops"])
    here = hops.index(budget) if budget in hops else len(hops) - 1
    if out.refused is not None:
        assert not expected, ("refused what the rules allow", msg, out.refused)
        assert out.ledgers == {}, "a refusal wrote a ledger"
        assert [m["op"] for m in replies] == ["REFUSED"] and replies[0]["key"] == budget
        assert [(m["op"], m["key"]) for m in forwards] == [("RELEASE", k)
                                                           for k in hops[:max(here, 0)]]
        released = old.find(msg["intent_id"])
        target.count("refused:released" if released is not None and released.released
                     else "refused")
        return msg
    assert expected, ("granted over the limit", msg, over_limit(budget, old.entries, rules))
    existing = old.find(msg["intent_id"])
    assert existing is None or not existing.released, "a released intent was re-reserved"
    if existing is None:
        assert list(out.ledgers) == [budget]
        new = ledger_of(out.ledgers[budget], budget)
        assert_used_within(new, rules)
        assert unreleased(new) <= unreleased(old) | {(
            msg["intent_id"], msg["at"], msg["action"], msg["amount"], msg["currency"])}
    else:
        assert out.ledgers == {}, "an idempotent reservation rewrote the ledger"
    if here + 1 < len(hops):
        assert replies == [] and [(m["op"], m["key"]) for m in forwards] == [
            ("RESERVE", hops[here + 1])]
        target.count("granted:forwarded")
    else:
        assert forwards == [] and [(m["op"], m["key"]) for m in replies] == [
            ("GRANTED", budget)]
        target.count("granted:idempotent" if existing is not None else "granted")
    return msg


def test_fuzz_budget_requests(small: tuple[Pipeline, CedarPolicy],
                              fuzz_target: Callable[[str], Target]) -> None:
    pipeline, policy = small
    ledgers = seeded_ledgers(pipeline)
    for k, raw in ledgers.items():
        assert not over_limit(k, ledger_of(raw, k).entries, policy.limits)
    frozen = dict(ledgers)
    target = fuzz_target("budget-requests (Pipeline.on_budget)")

    @fuzz_settings()
    @given(request_cases())
    def run(case: tuple[bytes | None, bytes | None, int]) -> None:
        key, value, partition = case
        out: BudgetOutcome = target.run(lambda: pipeline.on_budget(
            key, value, partition=partition, offset=31, ledgers=ledgers), label=case)
        assert ledgers == frozen
        check_request(pipeline, policy.limits, out, key, value, partition, 31, ledgers,
                      target)

    run()
    assert target.inputs >= EXAMPLES
    for outcome in ("granted", "granted:forwarded", "refused", "refused:released", "release",
                    "dead_letter:record_invalid", "dead_letter:record_invalid:misplaced",
                    "dead_letter:record_invalid:at", "dead_letter:record_invalid:amount",
                    "dead_letter:record_invalid:currency",
                    "dead_letter:record_invalid:reply_partition"):
        assert target.outcomes[outcome] > 0, f"no input reached {outcome}: strategy broken"


SEQUENCE_IDS = [RESERVED_ID, RELEASED_ID, DEPT_ID,
                *(str(uuid.UUID(int=i, version=4)) for i in range(31, 36))]


def test_fuzz_budget_request_sequences(small: tuple[Pipeline, CedarPolicy],
                                       fuzz_target: Callable[[str], Target]) -> None:
    """Hostile RESERVE/RELEASE messages in order, as one key's partition applies them: after
    each, no ledger holds more than a rule allows, and a released intent stays released."""
    pipeline, policy = small
    seeded = seeded_ledgers(pipeline)
    target = fuzz_target("budget-requests sequences (Pipeline.on_budget, in order)")
    records = budget_records([*REQUEST_OPS, "RESERVE"], BUDGET_KEYS[:5], list(LIMIT_AGENTS),
                             SEQUENCE_IDS, hostile=False)

    @fuzz_settings()
    @given(st.lists(records, min_size=1, max_size=8))
    def run(sequence: list[dict[str, Any]]) -> None:
        ledgers = dict(seeded)
        for i, record in enumerate(sequence):
            key = record["key"]
            value = SCHEMAS.budget_message.encode(record)
            out: BudgetOutcome = target.run(partial(
                pipeline.on_budget, key.encode(), value, partition=partition_for(key, N),
                offset=i, ledgers=ledgers), label=sequence)
            msg = check_request(pipeline, policy.limits, out, key.encode(), value,
                                partition_for(key, N), i, ledgers, target)
            assert msg is not None
            ledgers.update(out.ledgers)
            for k, raw in out.ledgers.items():  # the others did not change
                assert not over_limit(k, ledger_of(raw, k).entries, policy.limits), k

    run()
    assert target.inputs >= EXAMPLES
    for outcome in ("granted", "refused", "refused:released", "release", "release:pruned"):
        assert target.outcomes[outcome] > 0, f"no input reached {outcome}: strategy broken"


# ---- budget-replies ----------------------------------------------------------------------
ALLOW_ID, PENDING_ID, DECIDED_ID, TOM_ID = (str(uuid.UUID(int=i, version=4))
                                            for i in (41, 42, 43, 44))
UNHELD_ID = str(uuid.UUID(int=45, version=4))
HELD = {ALLOW_ID: ("a1", "400.00"), PENDING_ID: ("a2", "20000.00"),
        DECIDED_ID: ("a3", "400.00"), TOM_ID: ("t1", "120.00")}
REPLY_IDS = [*HELD, UNHELD_ID]


def holding(pipeline: Pipeline) -> tuple[dict[str, bytes], dict[str, bytes],
                                          dict[str, bytes]]:
    """(holds, decided, ledgers): four intents waiting for their owner and department
    budgets (one of them already decided, as after a crash between the two writes)."""
    holds: dict[str, bytes] = {}
    ledgers: dict[str, bytes] = {}
    for intent_id, (agent, amount) in HELD.items():
        out = pipeline.on_intent(agent.encode(), intent_bytes(
            intent_id=intent_id, agent_id=agent, action="purchase_order.create",
            amount=Decimal(amount), currency="USD", context={},
            requested_at=NOW - timedelta(seconds=1)),
            partition=partition_for(agent, N), offset=0, memo={}, ledgers=ledgers,
            holds=holds)
        assert out.decision == "HELD" and out.hold is not None, out.reasons
        holds[out.hold[0]] = out.hold[1]
        ledgers.update(out.ledgers)
    decided = {DECIDED_ID: SCHEMAS.budget_hold.decode(holds[DECIDED_ID])["record"]}
    return holds, decided, ledgers


def held_record(holds: Mapping[str, bytes], intent_id: str) -> dict[str, Any]:
    return SCHEMAS.decision_record.decode(SCHEMAS.budget_hold.decode(holds[intent_id])["record"])


REPLY_FIELDS = st.fixed_dictionaries({
    "op": st.sampled_from([*REPLY_OPS, *REPLY_OPS, *REPLY_OPS, *REQUEST_OPS]),
    "intent_id": weighted((3, st.sampled_from(REPLY_IDS)), (1, texts())),
    "agent": weighted((4, st.none()), (1, st.sampled_from(list(LIMIT_AGENTS))), (1, texts())),
    "key": st.one_of(st.sampled_from(["owner:sarah", "department:finance", ""]), texts()),
    "at": st.one_of(st.just(NOW), timestamps()),
    "amount": st.sampled_from([None, Decimal("400.00"), Decimal("1")]),
    "hops": st.lists(st.sampled_from(BUDGET_KEYS), max_size=2),
    "version": st.one_of(st.just(""), texts()), "detail": texts("limit x"),
    "reply": st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1))})


@st.composite
def reply_inputs(draw: Any) -> tuple[bytes | None, bytes, int]:
    """A valid-shaped reply: mostly from the agent of its hold, sometimes another's."""
    f = draw(REPLY_FIELDS)
    agent = f["agent"] if f["agent"] is not None else HELD.get(f["intent_id"], ("a1", ""))[0]
    record = message(f["op"], f["intent_id"], f["key"], agent=agent, at=f["at"],
                     amount=f["amount"], hops=f["hops"], version=f["version"],
                     detail=f["detail"], reply_partition=f["reply"])
    key, partition = routing(draw, agent)
    return key, encode_message(record), partition


def reply_cases(pipeline: Pipeline) -> st.SearchStrategy[tuple[bytes | None, bytes | None,
                                                               int]]:
    seeds = st.sampled_from([
        *(SCHEMAS.budget_message.encode(message(op, i, "owner:sarah", agent=HELD[i][0]))
          for op in ("GRANTED", "REFUSED") for i in (ALLOW_ID, PENDING_ID)),
        pipeline.budget_timeout(ALLOW_ID, "a1", partition_for("a1", N)).value,
        pipeline.budget_timeout(UNHELD_ID, "a1", partition_for("a1", N)).value])
    mutated = st.tuples(st.sampled_from([b"a1", b"a2", None]),
                        mutations(seeds, SCHEMAS.budget_message), st.integers(0, N - 1))
    mutated = mutated.map(lambda t: (t[0], t[1], partition_for(t[0] or b"", N)
                                     if t[2] % 2 else t[2]))
    return weighted((3, reply_inputs()), (2, mutated),
                    (1, st.tuples(st.none(), st.none(), st.just(0))))


def check_reply(out: IntentOutcome, key: bytes | None, value: bytes | None, partition: int,
                offset: int, holds: Mapping[str, bytes], decided: Mapping[str, bytes],
                keystore: KeyStore, target: Target) -> str | None:
    """Every property of one on_budget_reply call; returns the intent it gave a verdict."""
    msg = decoded_message(value)
    why: str | None = None  # the dead letter's cause, when it must be one
    if msg is None:
        why = ""
    elif msg["op"] not in REPLY_OPS or key != msg["agent_id"].encode() or \
            partition != partition_for(msg["agent_id"], N):
        why = ":misplaced"
    elif msg["intent_id"] in holds and msg["intent_id"] not in decided and intent_from_record(
            held_record(holds, msg["intent_id"])["intent"]).agent_id != msg["agent_id"]:
        why = ":other_agent"  # a reply may only settle its own agent's hold
    if why is not None:
        code = assert_dead_letter(out.records, TOPICS.budget_replies, key, value, offset)
        assert (out.remember, out.hold, out.unhold, out.pending, out.decision) == (
            None, None, None, None, "") and out.ledgers == {}
        assert code == "record_invalid" or msg is None, code
        target.count(f"dead_letter:{code}{why}")
        return None
    assert msg is not None
    intent_id = msg["intent_id"]
    assert out.hold is None
    if intent_id not in holds or intent_id in decided:
        # no hold (a GRANTED for nothing changes nothing), or already decided: no verdict
        assert out.records == [] and out.ledgers == {} and out.duplicate
        assert (out.remember, out.pending, out.decision) == (None, None, "")
        assert out.unhold == (intent_id if intent_id in holds else None)
        target.count(f"no_hold:{msg['op']}" if intent_id not in holds else "decided")
        return None
    held = held_record(holds, intent_id)
    hold = SCHEMAS.budget_hold.decode(holds[intent_id])
    intent = intent_from_record(held["intent"])
    assert intent.agent_id == msg["agent_id"]
    verdicts = [SCHEMAS.verdict.decode(r.value) for r in out.records
                if r.topic == TOPICS.verdicts]
    assert len(verdicts) == 1, out.records
    verdict = verdicts[0]
    assert verdict["intent_id"] == intent_id == out.unhold
    assert out.remember is not None and out.remember[0] == intent_id
    assert all(r.partition == partition for r in out.records
               if r.topic != TOPICS.budget_requests)
    if msg["op"] == "GRANTED":
        # the topic is internal: a GRANTED finalizes the hold with the decision it held
        assert verdict["decision"] == held["decision"] and held["decision"] in ("ALLOW",
                                                                                "PENDING")
        assert out.ledgers == {} and all(r.topic != TOPICS.budget_requests
                                         for r in out.records)
        assert (out.pending is not None) == (verdict["decision"] == "PENDING")
    else:
        assert verdict["decision"] == "DENY" and verdict["credential"] is None
        assert verdict["reasons"] == (["limit_exceeded"] if msg["op"] == "REFUSED"
                                      else ["state_not_ready"])
        local = [k for k in hold["keys"] if k.startswith("agent:")]
        assert sorted(out.ledgers) == sorted(local)
        for k in local:
            entry = ledger_of(out.ledgers[k], k).find(intent_id)
            assert entry is not None and entry.released, (k, entry)
        releases = [SCHEMAS.budget_message.decode(r.value) for r in out.records
                    if r.topic == TOPICS.budget_requests]
        assert [(m["op"], m["key"]) for m in releases] == [
            ("RELEASE", k) for k in hold["keys"] if not k.startswith("agent:")]
    if verdict["decision"] == "ALLOW":
        verifier = PassVerifier(keystore.jwks(now=NOW), audience=intent.audience,
                                issuer="gatepass", now=NOW.timestamp)
        checked = verifier.verify(verdict["credential"], action=intent.action,
                                  resource=intent.resource, amount=intent.amount,
                                  currency=intent.currency)
        assert (checked.agent_id, checked.intent_id) == (intent.agent_id, intent_id)
    else:
        assert verdict["credential"] is None
    target.count(f"verdict:{msg['op']}:{verdict['decision']}")
    return intent_id


def test_fuzz_budget_replies(big: tuple[Pipeline, KeyStore],
                             fuzz_target: Callable[[str], Target]) -> None:
    pipeline, keystore = big
    holds, decided, ledgers = holding(pipeline)
    frozen = (dict(holds), dict(decided), dict(ledgers))
    target = fuzz_target("budget-replies (Pipeline.on_budget_reply)")

    @fuzz_settings()
    @given(reply_cases(pipeline))
    def run(case: tuple[bytes | None, bytes | None, int]) -> None:
        key, value, partition = case
        out: IntentOutcome = target.run(lambda: pipeline.on_budget_reply(
            key, value, partition=partition, offset=53, holds=holds, decided=decided,
            ledgers=ledgers), label=case)
        assert (holds, decided, ledgers) == frozen
        check_reply(out, key, value, partition, 53, holds, decided, keystore, target)

    run()
    assert target.inputs >= EXAMPLES
    for outcome in ("verdict:GRANTED:ALLOW", "verdict:GRANTED:PENDING", "verdict:REFUSED:DENY",
                    "verdict:TIMEOUT:DENY", "no_hold:GRANTED", "decided",
                    "dead_letter:record_invalid:other_agent"):
        assert target.outcomes[outcome] > 0, f"no input reached {outcome}: strategy broken"


def test_fuzz_budget_reply_sequences(big: tuple[Pipeline, KeyStore],
                                     fuzz_target: Callable[[str], Target]) -> None:
    """Replies in any order and number, the tables kept as the worker keeps them: at most one
    verdict per intent, and only for an intent that was held and not decided (a reply from
    another agent than the hold's is a dead letter and leaves the hold waiting)."""
    pipeline, keystore = big
    start = holding(pipeline)
    target = fuzz_target("budget-replies sequences (Pipeline.on_budget_reply, in order)")
    reply = st.builds(lambda op, i, agent: (op, i, agent), st.sampled_from(REPLY_OPS),
                      st.sampled_from(REPLY_IDS),
                      st.sampled_from([None, None, None, "a1", "t1"]))

    @fuzz_settings()
    @given(st.lists(reply, min_size=1, max_size=10))
    def run(sequence: list[tuple[str, str, str | None]]) -> None:
        holds, decided, ledgers = (dict(t) for t in start)
        answered: Counter[str] = Counter()
        for i, (op, intent_id, agent) in enumerate(sequence):
            agent = agent or HELD.get(intent_id, ("a1", ""))[0]
            value = (pipeline.budget_timeout(intent_id, agent, partition_for(agent, N)).value
                     if op == "TIMEOUT" else SCHEMAS.budget_message.encode(
                         message(op, intent_id, "owner:sarah", agent=agent, detail="x")))
            partition = partition_for(agent, N)
            out: IntentOutcome = target.run(partial(
                pipeline.on_budget_reply, agent.encode(), value, partition=partition,
                offset=i, holds=holds, decided=decided, ledgers=ledgers), label=sequence)
            verdict_for = check_reply(out, agent.encode(), value, partition, i, holds,
                                      decided, keystore, target)
            if verdict_for is not None:
                answered[verdict_for] += 1
            # as finish_budgets keeps the tables
            ledgers.update(out.ledgers)
            if out.remember is not None:
                decided[out.remember[0]] = out.remember[1]
            if out.unhold is not None:
                holds.pop(out.unhold, None)
        assert all(n == 1 for n in answered.values()), answered
        assert set(answered) <= {ALLOW_ID, PENDING_ID, TOM_ID}, answered

    run()
    assert target.inputs >= EXAMPLES
    for outcome in ("verdict:GRANTED:ALLOW", "verdict:REFUSED:DENY", "verdict:TIMEOUT:DENY",
                    "decided", "dead_letter:record_invalid:other_agent"):
        assert target.outcomes[outcome] > 0, f"no input reached {outcome}: strategy broken"


# ---- policies ----------------------------------------------------------------------------
DEFAULT_FILES = read_bundle(DEFAULT_POLICY_DIR)
FILES_A = {**DEFAULT_FILES, "gatepass.toml": DEFAULT_FILES["gatepass.toml"] + "\n# fuzz A\n"}
FILES_B = {**DEFAULT_FILES, "gatepass.toml": LIMITS}
FILES_T = {**DEFAULT_FILES, "tests/cases.toml": "# not hashed\n"}  # the initial version
FORGED = "cedar-0123456789abcdef"
TOMLS = ["", "[approval]\ndelegates = 5\n", "[approval.delegates]\nsarah = [1]\n",
         "[[limits]]\nname = 'x'\n", "limits = 3\n", "[other]\n", "x = \n",
         "[[limits]]\nname = \"x\"\nscope = \"owner\"\nmeasure = \"amount\"\nmax = \"NaN\"\n"
         "currency = \"USD\"\nwindow = \"1d\"\n",
         "[[limits]]\nname = \"x\"\nscope = \"agent\"\nmeasure = \"count\"\nmax = -1\n"
         "window = \"1d\"\n",
         "[[limits]]\nname = \"x\"\nscope = \"agent\"\nmeasure = \"count\"\nmax = 1\n"
         "window = \"999999d\"\n", "[[limits]]\nname = \"x\"\nactions = []\n"]


def content_hash(files: Mapping[str, str]) -> str:
    """The version a bundle's content hashes to, computed here (tests/ files not hashed)."""
    digest = hashlib.sha256()
    for name in sorted(files):
        if not name.startswith("tests/"):
            digest.update(json.dumps([name, files[name]]).encode() + b"\n")
    return "cedar-" + digest.hexdigest()[:16]


def bundle_record(version: str, files: Mapping[str, str]) -> tuple[bytes, bytes]:
    return f"bundle:{version}".encode(), SCHEMAS.policy_bundle.encode({
        "version": version, "files": dict(files), "pushed_at": NOW, "pushed_by": "me@host"})


class LoadCache:
    """CedarPolicy.from_files, remembered by content: loading is pure and takes ~10 ms, and
    the fuzz sends the same few valid bundles again and again. Only PolicyError is
    remembered; anything else propagates (a crash the fuzz must see)."""

    def __init__(self) -> None:
        self.real = CedarPolicy.from_files
        self.done: dict[tuple[tuple[str, str], ...], CedarPolicy | PolicyError] = {}

    def __call__(self, files: Mapping[str, str]) -> CedarPolicy:
        key = tuple(sorted(files.items()))
        if key not in self.done:
            try:
                self.done[key] = self.real(files)
            except PolicyError as exc:
                self.done[key] = exc
        result = self.done[key]
        if isinstance(result, PolicyError):
            raise PolicyError(str(result))
        return result


HOW = st.sampled_from(["as is", "as is", "drop", "add", "replace", "insert", "truncate",
                       "toml", "comment", "big", "tests"])
SEED_FILES = st.sampled_from([FILES_A, FILES_B, FILES_T])
POSITION = st.integers(0, 10**6)
FILE_NAMES = texts("scope/x.cedar", "other.txt", "scope/../x.cedar", "approval/y.cedar",
                   "tests/z.toml")
ANY_TEXT = texts("")
SNIPPET = st.text(min_size=1, max_size=8)
COMMENT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters=(
    "\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")), max_size=12)


@st.composite
def bundle_files(draw: Any) -> dict[str, str]:
    """Valid bundles, and bundles broken (or harmlessly changed) one file at a time."""
    files = dict(draw(SEED_FILES))
    how = draw(HOW)
    names = sorted(files)
    name = names[draw(POSITION) % len(names)]
    text = files[name]
    if how == "drop":
        del files[name]
    elif how == "add":
        files[draw(FILE_NAMES)] = draw(ANY_TEXT)
    elif how == "replace":
        files[name] = draw(ANY_TEXT)
    elif how == "insert":
        pos = draw(POSITION) % (len(text) + 1)
        files[name] = text[:pos] + draw(SNIPPET) + text[pos:]
    elif how == "truncate":
        files[name] = text[:draw(POSITION) % max(len(text), 1)]
    elif how == "toml":
        files["gatepass.toml"] = draw(st.sampled_from(TOMLS))
    elif how == "comment":  # still valid, a new version
        cedars = [n for n in names if n.endswith(".cedar")]
        files[cedars[draw(POSITION) % len(cedars)]] += "\n// " + draw(COMMENT) + "\n"
    elif how == "big":
        files[name] = "//" + "x" * (256 * 1024) + "\n"
    elif how == "tests":
        files["tests/cases.toml"] = draw(ANY_TEXT)
    return files


KNOWN_VERSIONS = st.sampled_from([content_hash(FILES_A), content_hash(FILES_B), POLICY.version,
                                  FORGED])
BUNDLE_KEYS = st.sampled_from([b"bundle:", b"activation:x"]) | st.binary(max_size=12)


@st.composite
def bundle_records(draw: Any) -> tuple[bytes | None, bytes | None]:
    files = draw(bundle_files())
    honest = content_hash(files)
    version = draw(weighted((2, st.just(honest)), (2, KNOWN_VERSIONS), (1, ANY_TEXT)))
    value = raw_encode(SCHEMAS.policy_bundle, {
        "version": version, "files": files, "pushed_at": draw(TIMES),
        "pushed_by": draw(ANY_TEXT)})
    key = f"bundle:{version}".encode() if draw(POSITION) % 4 else draw(BUNDLE_KEYS)
    return key, value


ACTIVATION_IDS = [str(uuid.UUID(int=i, version=4)) for i in (51, 52)]
VERSIONS = [content_hash(FILES_A), content_hash(FILES_B), POLICY.version, FORGED,
            "cedar-ffffffffffffffff", ""]
TIMES = timestamps()
ACTIVATION_FIELDS = st.fixed_dictionaries({
    # ids at the top of unicode: test_an_activation_at_the_top_of_unicode
    "activation_id": st.one_of(st.sampled_from([*ACTIVATION_IDS, "\U0010ffff",
                                                "\U0010ffff\U0010ffff"]),
                               st.uuids().map(str), texts()),
    "version": weighted((2, st.sampled_from(VERSIONS)), (1, texts())),
    "effective_at": weighted((2, near(timedelta(minutes=5))), (1, TIMES)),
    "pushed_at": TIMES, "pushed_by": texts("me@host"),
    "previous_version": st.one_of(st.none(), st.sampled_from(VERSIONS))})
ACTIVATION_KEYS = st.sampled_from([b"activation:", b"bundle:x", None]) | st.binary(max_size=12)


@st.composite
def activation_records(draw: Any) -> tuple[bytes | None, bytes | None]:
    fields = draw(ACTIVATION_FIELDS)
    value = raw_encode(SCHEMAS.policy_activation, fields)
    key = f"activation:{fields['activation_id']}".encode() if draw(POSITION) % 4 else \
        draw(ACTIVATION_KEYS)
    return key, value


POLICY_SEEDS = [
    SCHEMAS.policy_bundle.encode({"version": content_hash(FILES_A), "files": FILES_A,
                                  "pushed_at": NOW, "pushed_by": "me@host"}),
    SCHEMAS.policy_activation.encode({"activation_id": ACTIVATION_IDS[0],
                                      "version": content_hash(FILES_A), "effective_at": NOW,
                                      "pushed_at": NOW, "pushed_by": "me@host",
                                      "previous_version": POLICY.version})]


def policy_records() -> st.SearchStrategy[tuple[bytes | None, bytes | None]]:
    bundle_seed, activation_seed = (st.just(s) for s in POLICY_SEEDS)
    mutated = st.one_of(
        st.tuples(st.just(f"bundle:{content_hash(FILES_A)}".encode()),
                  mutations(bundle_seed, SCHEMAS.policy_bundle)),
        st.tuples(st.just(f"activation:{ACTIVATION_IDS[0]}".encode()),
                  mutations(activation_seed, SCHEMAS.policy_activation)))
    # genuine pushes, so that a version refused earlier in a sequence is written again
    pushes = st.sampled_from([bundle_record(content_hash(f), f) for f in (FILES_A, FILES_B)])
    return weighted((2, bundle_records()), (2, activation_records()), (1, mutated),
                    (2, pushes),
                    (1, st.tuples(st.sampled_from([b"bundle:x", b"activation:y", None]),
                                  st.none())))


class PolicyModel:
    """What the book must hold after each record, derived from the records alone."""

    def __init__(self, cache: LoadCache) -> None:
        self.cache = cache
        self.files: dict[str, dict[str, str]] = {}  # version -> its latest bundle's files
        self.refused: set[str] = set()
        self.good: dict[str, Mapping[str, str]] = {POLICY.version: POLICY.files}
        self.activations: list[Activation] = []

    def apply(self, key: bytes | None, value: bytes | None, target: Target) -> None:
        if key is None or value is None:
            target.count("ignored")
            return
        try:
            if key.startswith(b"bundle:"):
                bundle = SCHEMAS.policy_bundle.decode(value)
            elif key.startswith(b"activation:"):
                a = SCHEMAS.policy_activation.decode(value)
                activation = Activation(a["effective_at"], a["activation_id"], a["version"])
                if activation not in self.activations:
                    self.activations.append(activation)
                target.count("activation")
                return
            else:
                target.count("unreadable")
                return
        except (DecodeError, GatepassError):
            target.count("unreadable")
            return
        version, files = bundle["version"], dict(bundle["files"])
        before = self.files.get(version)
        self.files[version] = files
        if version in self.good:  # a loaded version stays as it loaded
            target.count("bundle:loaded_already")
            return
        if before == files:  # the same files again: refused as before, not tried again
            target.count("bundle:again")
            return
        try:
            loads = self.cache(files) is not None
        except PolicyError:
            loads = False
        if loads and content_hash(files) == version:
            self.good[version] = files
            target.count("bundle:reloaded" if version in self.refused else "bundle:good")
            self.refused.discard(version)
        else:
            self.refused.add(version)
            target.count("bundle:refused:" + ("hash" if loads else "load") + (
                ":again" if before is not None else ""))

    def in_force(self, at: datetime) -> str:
        due = sorted(a for a in self.activations if a.effective_at <= at)
        for activation in reversed(due):
            if activation.version in self.good:
                return activation.version
        return POLICY.version


def moved(t: datetime, by: timedelta) -> datetime | None:
    try:
        return t + by
    except OverflowError:
        return None


def check_book(book: PolicyBook, model: PolicyModel) -> None:
    assert set(book.refused) == model.refused, (book.refused, model.refused)
    assert set(book.versions()) == set(model.good), (book.versions(), set(model.good))
    for version in model.refused:
        assert book.by_version(version) is None, f"refused bundle {version} is in the book"
    probes = {NOW, datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC)}
    for a in model.activations:
        probes |= {a.effective_at}
        probes |= {t for t in (moved(a.effective_at, -MS), moved(a.effective_at, MS)) if t}
    for t in probes:
        policy = book.current(t)
        assert policy.version == model.in_force(t), (t, policy.version, model.in_force(t))
        assert policy is POLICY or (policy.version in model.good and content_hash(
            policy.files) == policy.version and dict(policy.files) == dict(
                model.good[policy.version])), f"{policy.version} did not load from a bundle"


def test_fuzz_policy_topic(monkeypatch: pytest.MonkeyPatch,
                           fuzz_target: Callable[[str], Target]) -> None:
    cache = LoadCache()
    monkeypatch.setattr(CedarPolicy, "from_files", cache)
    target = fuzz_target("policies (PolicyLoader._apply)")

    @fuzz_settings()
    @given(st.lists(policy_records(), min_size=1, max_size=6))
    def run(sequence: list[tuple[bytes | None, bytes | None]]) -> None:
        book = PolicyBook(POLICY, rollout_delay=timedelta(seconds=5))
        loader = PolicyLoader(SETTINGS, SCHEMAS, book)
        model = PolicyModel(cache)
        for key, value in sequence:
            target.run(partial(loader._apply, key, value), label=sequence)
            model.apply(key, value, target)
            check_book(book, model)
        if any(a.version not in model.good for a in model.activations):
            target.count("sequence:unknown_activation")

    run()
    assert target.inputs >= EXAMPLES
    for outcome in ("bundle:good", "bundle:reloaded", "bundle:refused:hash",
                    "bundle:refused:load", "bundle:again", "bundle:loaded_already",
                    "activation", "unreadable", "sequence:unknown_activation"):
        assert target.outcomes[outcome] > 0, f"no input reached {outcome}: strategy broken"


# ---- bugs found by these targets, fixed -------------------------------------------------
def apply_requests(pipeline: Pipeline, messages: list[dict[str, Any]],
                   ledgers: dict[str, bytes]) -> list[BudgetOutcome]:
    outs = []
    for msg in messages:
        msg = {**msg, "policy_version": pipeline.policy.version}
        out = pipeline.on_budget(msg["key"].encode(), SCHEMAS.budget_message.encode(msg),
                                 partition=partition_for(msg["key"], N), offset=0,
                                 ledgers=ledgers)
        ledgers.update(out.ledgers)
        outs.append(out)
    return outs


def assert_dead_lettered(pipeline: Pipeline, out: BudgetOutcome,
                         msg: Mapping[str, Any]) -> None:
    """One dead letter for the request (as apply_requests sent it), nothing written."""
    value = SCHEMAS.budget_message.encode({**msg, "policy_version": pipeline.policy.version})
    code = assert_dead_letter(out.records, TOPICS.budget_requests, msg["key"].encode(), value,
                              0)
    assert code == "record_invalid" and out.ledgers == {} and out.refused is None, out


@pytest.mark.parametrize(("key", "at"), [
    ("owner:sarah", datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)),  # tumbling 1d
    ("department:finance", datetime(1, 1, 1, tzinfo=UTC)),  # sliding 30d
    ("owner:sarah", LATEST_AT + MS), ("department:finance", EARLIEST_AT - MS)])
def test_a_reservation_at_the_end_of_time(small: tuple[Pipeline, CedarPolicy], key: str,
                                          at: datetime) -> None:
    """Was: OverflowError from the windows' arithmetic escaped on_budget (the agent
    crashed). Now a time no worker decides at is a dead letter before any window is built."""
    pipeline, _ = small
    msg = message("RESERVE", FRESH_ID, key, at=at)
    (out,) = apply_requests(pipeline, [msg], {})
    assert_dead_lettered(pipeline, out, msg)


@pytest.mark.parametrize("at", [EARLIEST_AT, LATEST_AT])
def test_a_reservation_at_the_edges_of_time_is_applied(small: tuple[Pipeline, CedarPolicy],
                                                       at: datetime) -> None:
    pipeline, _ = small
    ledgers: dict[str, bytes] = {}
    (out,) = apply_requests(pipeline, [message("RESERVE", FRESH_ID, "department:finance",
                                               at=at)], ledgers)
    assert out.refused is None and list(out.ledgers) == ["department:finance"], out
    (reply,) = out.records
    assert reply.topic == TOPICS.budget_replies
    assert SCHEMAS.budget_message.decode(reply.value)["op"] == "GRANTED"
    entry = ledger_of(ledgers["department:finance"], "department:finance").find(FRESH_ID)
    # a year old it is out of every window, and no longer kept
    assert entry.at == at if entry is not None else at < NOW - SETTINGS.dedupe_horizon


@pytest.mark.parametrize("amount", ["10000000000000000", "100000000000000",
                                    "999999999999999.9"])
def test_a_reservation_beyond_the_amount_schema(small: tuple[Pipeline, CedarPolicy],
                                                amount: str) -> None:
    """Was: granted on a key with no amount rule for its action, then the ledger did not
    encode (decimal(18,4)) and  escaped on_budget. Now an amount of 1e14
    or more is a dead letter, as an intent's is refused by validate_intent."""
    pipeline, _ = small
    msg = message("RESERVE", FRESH_ID, "owner:tom", agent="t1", action="vendor.read",
                  amount=Decimal(amount))
    (out,) = apply_requests(pipeline, [msg], {})
    assert_dead_lettered(pipeline, out, msg)


def test_the_largest_amount_is_reserved(small: tuple[Pipeline, CedarPolicy]) -> None:
    """Just below 1e14 (18 digits with 4 decimals) still fits the ledger's schema."""
    pipeline, _ = small
    ledgers: dict[str, bytes] = {}
    (out,) = apply_requests(pipeline, [message(
        "RESERVE", FRESH_ID, "owner:tom", agent="t1", action="vendor.read",
        amount=Decimal("99999999999999.9999"))], ledgers)
    assert out.refused is None and list(out.ledgers) == ["owner:tom"], out
    entry = ledger_of(ledgers["owner:tom"], "owner:tom").find(FRESH_ID)
    assert entry is not None and entry.amount == Decimal("99999999999999.9999")


@pytest.mark.parametrize("reply_partition", [-1, N, 2**31 - 1, "another"])
def test_a_reservation_with_a_reply_partition_that_does_not_exist(
        small: tuple[Pipeline, CedarPolicy], reply_partition: int | str) -> None:
    """Was: the reply went to the partition as given (an Outgoing the producer rejects, the
    agent crashed). Now a reply partition other than the agent's is a dead letter."""
    pipeline, _ = small
    if reply_partition == "another":
        reply_partition = (partition_for("t1", N) + 1) % N
    assert isinstance(reply_partition, int)
    msg = message("RESERVE", FRESH_ID, "owner:tom", agent="t1",
                  reply_partition=reply_partition)
    (out,) = apply_requests(pipeline, [msg], {})
    assert_dead_lettered(pipeline, out, msg)


@pytest.mark.parametrize(("amount", "currency"), [(Decimal("100.00"), None), (None, "USD")])
def test_an_amount_and_its_currency_come_together(small: tuple[Pipeline, CedarPolicy],
                                                  amount: Decimal | None,
                                                  currency: str | None) -> None:
    pipeline, _ = small
    msg = message("RESERVE", FRESH_ID, "owner:tom", agent="t1", amount=amount,
                  currency=currency)
    (out,) = apply_requests(pipeline, [msg], {})
    assert_dead_lettered(pipeline, out, msg)


@pytest.mark.parametrize("case", ["released credit", "sliding credit"])
def test_a_negative_reservation_is_a_credit(small: tuple[Pipeline, CedarPolicy],
                                            case: str) -> None:
    """Was: a negative RESERVE was booked as a credit, and the ledger later held more than
    its max (released: 2500 of 1500 a day; sliding: 3500 of 2500 in 30 days). Now it is a
    dead letter and the spend after it is refused as the max says."""
    pipeline, policy = small
    ids = [str(uuid.UUID(int=i, version=4)) for i in range(61, 64)]
    if case == "released credit":
        key, agent, times = "owner:tom", "t1", [NOW, NOW, NOW]
        amounts_ = ["-1000", "1500", "1000"]
        tail = [message("RELEASE", ids[0], key, agent=agent, hops=[])]
    else:
        key, agent, times = "department:ops", "z1", [NOW - timedelta(days=10), NOW, NOW]
        amounts_ = ["-1000", "2500", "1000"]
        tail = []
    ledgers: dict[str, bytes] = {}
    requests = [message("RESERVE", i, key, agent=agent, at=t, amount=Decimal(a))
                for i, t, a in zip(ids, times, amounts_, strict=True)]
    outs = apply_requests(pipeline, requests + tail, ledgers)
    assert_dead_lettered(pipeline, outs[0], requests[0])
    assert [o.refused is None for o in outs[1:3]] == [True, False], outs
    ledger = ledger_of(ledgers[key], key)
    assert {u[0] for u in unreleased(ledger)} == {ids[1]}, ledger
    assert not over_limit(key, ledger.entries, policy.limits), \
        over_limit(key, ledger.entries, policy.limits)


@pytest.mark.parametrize("amount", ["-0.0001", "-1000", "NaN", "sNaN", "Infinity",
                                    "-Infinity"])
def test_the_ledger_refuses_an_amount_no_intent_has(small: tuple[Pipeline, CedarPolicy],
                                                    amount: str) -> None:
    _, policy = small
    for key, action in [("owner:tom", "purchase_order.create"), ("owner:tom", "vendor.read"),
                        ("department:ops", "purchase_order.create")]:
        ledger = Ledger(key)
        new, why = ledger.reserve(policy.limits, intent_id=FRESH_ID, at=NOW, action=action,
                                  amount=Decimal(amount), currency="USD")
        assert new is ledger and why == "the amount must be a finite amount >= 0", (key, why)
    new, why = Ledger("owner:tom").reserve(policy.limits, intent_id=FRESH_ID, at=NOW,
                                           action="vendor.read", amount=Decimal("0"),
                                           currency="USD")
    assert why is None and new.find(FRESH_ID) is not None


@pytest.mark.parametrize("activation_id", ["\U0010ffff", "\U0010ffff\U0010ffffx"])
def test_an_activation_at_the_top_of_unicode(activation_id: str) -> None:
    """Was: _in_force bisected with Activation(at, '\\U0010ffff', ''), which sorts before an
    activation effective at `at` whose id is (or starts with) U+10FFFF: at its own time it
    was not in force. Now only effective_at is compared."""
    book = PolicyBook(POLICY, rollout_delay=timedelta(seconds=5))
    loader = PolicyLoader(SETTINGS, SCHEMAS, book)
    version = content_hash(FILES_A)
    loader._apply(f"bundle:{version}".encode(), POLICY_SEEDS[0])
    loader._apply(f"activation:{activation_id}".encode(), SCHEMAS.policy_activation.encode({
        "activation_id": activation_id, "version": version, "effective_at": NOW,
        "pushed_at": NOW, "pushed_by": "", "previous_version": None}))
    assert book.current(NOW - MS).version == POLICY.version
    assert book.current(NOW).version == version
    assert book.current(NOW + MS).version == version


BROKEN_A = {**FILES_A, sorted(n for n in FILES_A if n.endswith(".cedar"))[0]: "permit(("}


@pytest.mark.parametrize("first", ["does not load", "hashes to another version"])
def test_a_bundle_written_again_after_it_was_refused_loads(first: str) -> None:
    """Was: a version refused once was never tried again, so a valid bundle written later
    under the same version was ignored and its activation passed over for good."""
    book = PolicyBook(POLICY, rollout_delay=timedelta(seconds=5))
    loader = PolicyLoader(SETTINGS, SCHEMAS, book)
    version = content_hash(FILES_A)
    loader._apply(*bundle_record(version, BROKEN_A if first == "does not load" else FILES_B))
    loader._apply(f"activation:{ACTIVATION_IDS[0]}".encode(), POLICY_SEEDS[1])
    assert version in book.refused and book.by_version(version) is None
    assert book.current(NOW).version == POLICY.version  # passed over
    loader._apply(*bundle_record(version, BROKEN_A if first == "does not load" else FILES_B))
    assert loader.load_failures == 1  # the same files again are not tried again
    loader._apply(*bundle_record(version, FILES_A))
    assert version not in book.refused and book.current(NOW).version == version
    loaded = book.by_version(version)
    assert loaded is not None and dict(loaded.files) == FILES_A
    # once loaded, a version keeps its policy whatever is written under its name later
    loader._apply(*bundle_record(version, BROKEN_A))
    loader._apply(*bundle_record(version, FILES_B))
    assert book.refused == {} and book.by_version(version) is loaded
    assert loader.load_failures == 1 and book.current(NOW) is loaded


@pytest.mark.parametrize("op", REPLY_OPS)
def test_a_reply_for_another_agents_hold_is_a_dead_letter(big: tuple[Pipeline, KeyStore],
                                                          op: str) -> None:
    """Was: a reply keyed and placed as agent t1's settled a1's hold (a verdict for a1's
    intent from t1's partition). Now it is a dead letter and the hold waits for its own."""
    pipeline, keystore = big
    holds, decided, ledgers = holding(pipeline)
    assert held_record(holds, ALLOW_ID)["intent"]["agent_id"] == "a1"
    value = (pipeline.budget_timeout(ALLOW_ID, "t1", partition_for("t1", N)).value
             if op == "TIMEOUT" else SCHEMAS.budget_message.encode(
                 message(op, ALLOW_ID, "owner:sarah", agent="t1", detail="x")))
    out = pipeline.on_budget_reply(b"t1", value, partition=partition_for("t1", N), offset=7,
                                   holds=holds, decided=decided, ledgers=ledgers)
    assert assert_dead_letter(out.records, TOPICS.budget_replies, b"t1", value, 7) == \
        "record_invalid"
    assert (out.remember, out.hold, out.unhold, out.pending, out.ledgers) == (
        None, None, None, None, {}), out
    target = Target("own agent")
    value = SCHEMAS.budget_message.encode(message("GRANTED", ALLOW_ID, "owner:sarah"))
    out = pipeline.on_budget_reply(b"a1", value, partition=partition_for("a1", N), offset=8,
                                   holds=holds, decided=decided, ledgers=ledgers)
    assert check_reply(out, b"a1", value, partition_for("a1", N), 8, holds, decided, keystore,
                       target) == ALLOW_ID
    assert target.outcomes == {"verdict:GRANTED:ALLOW": 1}


def test_a_push_after_a_refused_record_of_its_version_is_loaded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from gatepass.policy import topic

    version = content_hash(FILES_A)
    on_topic: list[tuple[bytes, bytes]] = [bundle_record(version, BROKEN_A)]
    book = PolicyBook(POLICY, rollout_delay=timedelta(seconds=5))
    loader = PolicyLoader(SETTINGS, SCHEMAS, book)
    loader._apply(*on_topic[0])
    assert version in book.refused

    def read(settings: Any, schemas: Any, *, timeout: float = 30.0) -> Any:
        history = topic.PolicyHistory()
        for key, value in on_topic:
            topic.apply_record(history, schemas, key, value)
        return history

    monkeypatch.setattr(topic, "ensure_topics", lambda *args, **kwargs: None)
    monkeypatch.setattr(topic, "read_policy_topic", read)
    monkeypatch.setattr(topic, "_produce", lambda settings, name, records, timeout:
                        on_topic.extend(records))
    activation, _ = topic.push(SETTINGS, SCHEMAS, CedarPolicy.from_files(FILES_A),
                               pushed_by="me@host", now=NOW, delay=timedelta(seconds=5))
    for key, value in on_topic[1:]:
        loader._apply(key, value)
    assert activation.version == version and activation in book.activations()
    assert book.by_version(version) is not None, [k for k, _ in on_topic]
    assert book.current(activation.effective_at).version == version
