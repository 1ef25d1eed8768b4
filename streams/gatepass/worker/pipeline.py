"""What the stream agents do with one record, minus the sending: decode, look up, decide, sign.

Kept free of faust so it can be tested without a broker. The agents in `app.py` feed it
records and send the `Outgoing` records it returns; remembered decisions live in a
changelog-backed table the agent passes in as a mapping.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from gatepass.codec.avro import SchemaSet
from gatepass.codec.lifecycle_reader import decode_lifecycle
from gatepass.codec.records import (
    _normalize,
    approval_decision_from_record,
    facts_from_record,
    facts_to_record,
    intent_from_record,
    intent_to_record,
    lifecycle_to_record,
    pending_from_record,
    pending_to_record,
)
from gatepass.config import Settings
from gatepass.core import (
    AgentRegistered,
    AgentStatus,
    CedarPolicy,
    Decision,
    DecisionResult,
    Freshness,
    IdentityFacts,
    IdentityState,
    Intent,
    PrincipalStatus,
    PrincipalStatusChanged,
    Reason,
    decide,
    usable_key_thumbprint,
)
from gatepass.core.approval import (
    ApprovalDecision,
    Finalized,
    Judgement,
    PendingApproval,
    judge,
    judge_timeout,
)
from gatepass.core.limits import MAX_WINDOW, Entry, Ledger, budget_keys
from gatepass.credentials import IssuedPass, PassApproval, PassIssuer, PassRequest
from gatepass.errors import DecodeError, GatepassError, RecordInvalidError
from gatepass.logs import redact_value
from gatepass.policy.book import PolicyBook
from gatepass.transport import partition_for

__all__ = ["ORPHAN_CHECK_CHUNK", "ApprovalOutcome", "BudgetOutcome", "IntentOutcome",
           "Outgoing", "Pipeline", "request_id_for"]

log = logging.getLogger("gatepass.worker")
_ALERT_NS = uuid.UUID("6f1d7c52-1b3e-4f59-9a0e-4c3f4a5e8d21")
# Agents named by one orphan check of an owner's deactivation (one event raises that many
# alerts back to back; a chunk stays far below a record's size limit).
ORPHAN_CHECK_CHUNK = 100
# Fixed forever: request ids and approval alert ids are derived from intent and decision ids.
_REQUEST_NS = uuid.UUID("0b7e3f0e-5d2a-4c8e-9f61-2a4d8c1e7b93")
_APPROVAL_ALERT_NS = uuid.UUID("3c9a1d47-8e2b-4f06-b5d3-7a1e9c4f2b68")


def request_id_for(intent_id: str) -> str:
    """The approval request of an intent: the same for every redelivery of that intent."""
    return str(uuid.uuid5(_REQUEST_NS, intent_id))
_MASKED = ["credential.token"]


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    key: bytes | None
    value: bytes
    partition: int | None


@dataclass(slots=True)
class IntentOutcome:
    records: list[Outgoing] = field(default_factory=list)
    remember: tuple[str, bytes] | None = None  # (intent id, decision record) for the memo table
    decision: str = ""
    reasons: tuple[str, ...] = ()
    intent_id: str | None = None
    duplicate: bool = False
    requested_at: datetime | None = None
    issued: bool = False  # a new pass was signed (not a redelivery's re-signed one)
    record: dict[str, Any] | None = None  # the DecisionRecord of a new decision (no token)
    pending: tuple[str, bytes] | None = None  # (intent id, ApprovalRequest) to keep waiting
    expires_at: datetime | None = None  # of that request
    # Stateful limits: budget ledgers to write (key -> BudgetLedger), an intent put on hold
    # for its owner/department budgets (intent id, BudgetHold), a hold that ends now.
    ledgers: dict[str, bytes] = field(default_factory=dict)
    hold: tuple[str, bytes] | None = None
    unhold: str | None = None


@dataclass(slots=True)
class ApprovalOutcome:
    """What one event on the approval-decisions topic does (all empty: nothing)."""

    records: list[Outgoing] = field(default_factory=list)
    finish: str | None = None  # intent id whose pending request ends now
    remember: tuple[str, bytes] | None = None  # (intent id, final DecisionRecord)
    final: str | None = None  # ALLOW/DENY of the final verdict, when one is sent now
    reason: str | None = None
    alert: str | None = None  # reason code of an alert raised
    record: dict[str, Any] | None = None  # the final DecisionRecord (no token)
    intent_id: str | None = None
    ledgers: dict[str, bytes] = field(default_factory=dict)  # released reservations


@dataclass(slots=True)
class BudgetOutcome:
    """What one budget-requests record does: ledger writes and the messages it sends."""

    records: list[Outgoing] = field(default_factory=list)
    ledgers: dict[str, bytes] = field(default_factory=dict)
    refused: str | None = None  # the detail, when a reservation was refused here


def _masked_context(context: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """The intent's context for records: secret-named keys and recognisable secrets in any
    value (passes, bearer tokens, keys) masked as the log redaction does; and which keys."""
    out: dict[str, str] = {}
    hidden: list[str] = []
    for key, value in context.items():
        shown = redact_value(key, value)
        out[key] = shown if isinstance(shown, str) else str(shown)
        if out[key] != value:
            hidden.append(key)
    return out, sorted(hidden)


def _plain(amount: Decimal) -> Decimal:
    """A decoded decimal(18,4) without its padding (120.0000 -> 120.00)."""
    return _normalize(amount)


def _now_ms(clock: Callable[[], datetime]) -> datetime:
    now = clock()
    # Avro timestamps are milliseconds: decide on the value that will be recorded, so that a
    # pass re-signed from the record is byte-identical to the first one.
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


class Pipeline:
    def __init__(self, *, settings: Settings, schemas: SchemaSet,
                 policy: CedarPolicy | PolicyBook,
                 issuer: PassIssuer, identity: IdentityState, ready: Callable[[], bool],
                 worker: str = "", clock: Callable[[], datetime] | None = None,
                 approval_key: Callable[[], bytes] | None = None) -> None:
        self.settings = settings
        self.topics = settings.topics
        self.schemas = schemas
        # Which policy decides an intent: the one in force at its append time (hot reload).
        self.book = policy if isinstance(policy, PolicyBook) else PolicyBook.fixed(policy)
        self.issuer = issuer
        self.identity = identity
        self.ready = ready
        self.worker = worker
        self.clock = clock or (lambda: datetime.now(UTC))
        self.freshness = Freshness(max_age=settings.intent_max_age,
                                   max_skew=settings.intent_max_skew)
        self._approval_key = approval_key

    @property
    def policy(self) -> CedarPolicy:
        """The policy deciding now, as far as this worker has read."""
        return self.book.current(self.clock())

    # ---- intents -------------------------------------------------------------------------
    def on_intent(self, key: bytes | None, value: bytes | None, *, partition: int, offset: int,
                  memo: Mapping[str, bytes],
                  appended_at: datetime | None = None,
                  ledgers: Mapping[str, bytes] | None = None,
                  holds: Mapping[str, bytes] | None = None,
                  audited: Container[str] = ()) -> IntentOutcome:
        """`appended_at`: the intent record's broker append time, which picks the policy
        (see gatepass.policy.book); None: the decision time. `audited`: intents whose audit
        record is known to be on the audit topic (a redelivery of any other re-sends it)."""
        now = _now_ms(self.clock)
        try:
            intent = intent_from_record(self.schemas.intent.decode(value))
        except (DecodeError, KeyError, ValueError, TypeError, ArithmeticError) as exc:
            return IntentOutcome(records=[self.dead_letter(
                self.topics.intents, partition, offset, key, value, exc, now)])
        out = IntentOutcome(intent_id=intent.intent_id)
        remembered = memo.get(intent.intent_id)
        if remembered is not None:
            return self._replay(remembered, partition, out,
                                resend_audit=intent.intent_id not in audited)
        if holds is not None and holds.get(intent.intent_id) is not None:
            out.duplicate = True  # waiting for its budgets: the reply answers it, once
            return out
        try:
            return self._decide(intent, key, partition, now, out, appended_at or now,
                                ledgers if ledgers is not None else {})
        except Exception as exc:  # nothing a record holds may stop the agent
            log.error("intent %s could not be answered: %s", intent.intent_id,
                      type(exc).__name__)
            return IntentOutcome(records=[self.dead_letter(
                self.topics.intents, partition, offset, key, value, exc, now)])

    def _decide(self, intent: Intent, key: bytes | None, partition: int, now: datetime,
                out: IntentOutcome, appended_at: datetime,
                ledgers: Mapping[str, bytes]) -> IntentOutcome:
        policy = self.book.for_time(appended_at)
        if policy is None:
            # A policy pushed for this moment may exist that this worker has not read.
            result = DecisionResult(
                decision=Decision.DENY, reasons=(Reason.STATE_NOT_READY,),
                policy_version=self.book.current(now).version,
                facts=IdentityFacts(state_ready=self.ready()),
                detail="the policy in force for this intent is not loaded yet")
            policy = self.book.current(now)
        else:
            result = decide(intent, self.identity, policy, now=now, freshness=self.freshness,
                            ready=self.ready(),
                            require_signed_intents=self.settings.require_signed_intents)
        misplaced = self._misplaced(intent, key, partition)
        if misplaced:
            # Per-agent state (remembered verdicts, alerts) lives in the agent's partition; a
            # record elsewhere would escape it, so it is refused whatever identity says.
            result = DecisionResult(
                decision=Decision.DENY, reasons=(Reason.INVALID_INTENT,),
                policy_version=result.policy_version, facts=result.facts, detail=misplaced)
        if result.decision is not Decision.DENY and policy.limits:
            result, held = self._reserve(intent, result, policy, now, partition, out, ledgers)
            if held:
                return out
        return self._answer(intent, result, policy, now, partition, out)

    def _answer(self, intent: Intent, result: DecisionResult, policy: CedarPolicy,
                now: datetime, partition: int, out: IntentOutcome) -> IntentOutcome:
        """The verdict of a decided intent: sign (ALLOW), ask the owner (PENDING), send."""
        issued: IssuedPass | None = None
        if result.allowed:
            try:
                issued = self.issuer.issue(self._pass_request(intent, result, now))
            except Exception as exc:  # no key, no pass: fail closed, never an unsigned allow
                log.error("signing failed for intent %s: %s", intent.intent_id,
                          type(exc).__name__)
                result = DecisionResult(
                    decision=Decision.DENY, reasons=(Reason.INTERNAL_ERROR,),
                    policy_version=result.policy_version, facts=result.facts,
                    detail="pass could not be signed")
        approval_info = None
        request: bytes | None = None
        if result.decision is Decision.PENDING:
            pending = PendingApproval(
                request_id=request_id_for(intent.intent_id), intent=intent,
                owner=result.facts.owner or "",
                approvers=policy.approval.approvers(result.facts.owner or ""),
                requested_at=now, expires_at=now + self.settings.approval_timeout,
                why=result.approval_why, policy_version=result.policy_version)
            pending_record = pending_to_record(
                pending, purpose=result.facts.purpose, department=result.facts.department,
                facts=result.facts)
            pending_record["intent"]["context"] = _masked_context(intent.context)[0]
            request = self.schemas.approval_request.encode(pending_record)
            approval_info = {"request_id": pending.request_id, "expires_at": pending.expires_at,
                             "why": list(pending.why), "approver": None, "decided_at": None,
                             "decision_id": None, "channel": None}
            out.pending, out.expires_at = (intent.intent_id, request), pending.expires_at
        record = self._decision_record(intent, result, now, issued, approval_info)
        encoded = self.schemas.decision_record.encode(record)
        key_bytes = intent.agent_id.encode()
        out.records.append(Outgoing(self.topics.verdicts, key_bytes,
                                    self._verdict_bytes(record, issued), partition))
        out.records.append(Outgoing(self.topics.audit, key_bytes, encoded, partition))
        if result.decision is Decision.DENY:
            out.records.append(Outgoing(self.topics.denials, key_bytes, encoded, partition))
        if request is not None:
            out.records.append(Outgoing(self.topics.approvals, key_bytes, request, partition))
        if result.orphaned:
            out.records.append(Outgoing(self.topics.orphan_checks, key_bytes,
                                        self._orphan_check(intent.agent_id, "intent_denied",
                                                           result.facts, now, intent.intent_id),
                                        partition))
        out.remember = (intent.intent_id, encoded)
        out.decision, out.reasons = result.decision.value, tuple(r.value for r in result.reasons)
        out.requested_at, out.issued = intent.requested_at, issued is not None
        out.record = record
        return out

    # ---- stateful limits -----------------------------------------------------------------
    def _ledger(self, view: Mapping[str, bytes], key: str) -> Ledger:
        raw = view.get(key)
        if raw is None:
            return Ledger(key)
        rec = self.schemas.budget_ledger.decode(raw)
        return Ledger(key, tuple(Entry(
            intent_id=e["intent_id"], at=e["at"], action=e["action"],
            amount=None if e["amount"] is None else _plain(e["amount"]),
            currency=e["currency"], released=e["released"]) for e in rec["entries"]))

    def _ledger_bytes(self, ledger: Ledger, policy: CedarPolicy, now: datetime) -> bytes:
        ledger = ledger.prune(policy.limits, now, self.settings.dedupe_horizon)
        return self.schemas.budget_ledger.encode({"key": ledger.key, "entries": [
            {"intent_id": e.intent_id, "at": e.at, "action": e.action, "amount": e.amount,
             "currency": e.currency, "released": e.released} for e in ledger.entries]})

    def _reserve(self, intent: Intent, result: DecisionResult, policy: CedarPolicy,
                 now: datetime, partition: int, out: IntentOutcome,
                 ledgers: Mapping[str, bytes]) -> tuple[DecisionResult, bool]:
        """Reserve the intent's spend: the agent's own limits here (its partition, in
        order), owner and department limits through their keys' partitions (the intent is
        held until they answer). Returns (the result, held)."""
        facts = result.facts
        keys = budget_keys(policy.limits, intent.action, agent=intent.agent_id,
                           owner=facts.owner, department=facts.department)
        if not keys:
            return result, False
        for key in (k for k in keys if k.startswith("agent:")):
            ledger, why = self._ledger(ledgers, key).reserve(
                policy.limits, intent_id=intent.intent_id, at=now, action=intent.action,
                amount=intent.amount, currency=intent.currency)
            if why is not None:
                return self._over_limit(result, why), False
            out.ledgers[key] = self._ledger_bytes(ledger, policy, now)
        remote = [k for k in keys if not k.startswith("agent:")]
        if not remote:
            return result, False
        record = self._decision_record(intent, result, now, None, None)
        out.hold = (intent.intent_id, self.schemas.budget_hold.encode({
            "record": self.schemas.decision_record.encode(record),
            "why": list(result.approval_why), "keys": list(keys), "held_at": now}))
        out.records.append(self._budget_message(
            "RESERVE", intent, remote[0], hops=remote, partition=partition, now=now,
            policy_version=result.policy_version))
        out.decision = "HELD"
        return result, True

    def _over_limit(self, result: DecisionResult, why: str) -> DecisionResult:
        return DecisionResult(decision=Decision.DENY, reasons=(Reason.LIMIT_EXCEEDED,),
                              policy_version=result.policy_version, facts=result.facts,
                              detail=why)

    def _budget_message(self, op: str, intent: Intent, key: str, *, hops: list[str],
                        partition: int, now: datetime, policy_version: str,
                        detail: str = "") -> Outgoing:
        """A RESERVE/RELEASE to a budget key's partition."""
        value = self.schemas.budget_message.encode({
            "op": op, "intent_id": intent.intent_id, "agent_id": intent.agent_id,
            "key": key, "hops": hops, "reply_partition": partition, "at": now,
            "action": intent.action, "amount": intent.amount, "currency": intent.currency,
            "policy_version": policy_version, "detail": detail})
        return Outgoing(self.topics.budget_requests, key.encode(), value,
                        partition_for(key, self.settings.partitions))

    def _release(self, intent: Intent, keys: list[str], policy_version: str, now: datetime,
                 partition: int, ledgers: Mapping[str, bytes],
                 written: dict[str, bytes], records: list[Outgoing]) -> None:
        """The intent ends without a pass: it consumes nothing in any of its budgets."""
        policy = self.book.by_version(policy_version) or self.book.current(now)
        for key in keys:
            if key.startswith("agent:"):
                ledger = self._ledger(ledgers, key).release(intent.intent_id, at=now,
                                                            action=intent.action)
                written[key] = self._ledger_bytes(ledger, policy, now)
            else:
                records.append(self._budget_message("RELEASE", intent, key, hops=[],
                                                    partition=partition, now=now,
                                                    policy_version=policy_version))

    def budget_keys_of(self, record: Mapping[str, Any]) -> list[str]:
        """The budget keys a recorded decision reserved in (by its policy's limits)."""
        policy = self.book.by_version(record["policy_version"])
        if policy is None or not policy.limits:
            return []
        facts = record["facts"] or {}
        return list(budget_keys(policy.limits, record["intent"]["action"],
                                agent=record["intent"]["agent_id"], owner=facts.get("owner"),
                                department=facts.get("department")))

    def on_budget(self, key: bytes | None, value: bytes | None, *, partition: int,
                  offset: int, ledgers: Mapping[str, bytes]) -> BudgetOutcome:
        """One RESERVE or RELEASE in a budget key's partition, applied in order."""
        now = _now_ms(self.clock)
        try:
            msg = self.schemas.budget_message.decode(value)
            if msg["op"] not in ("RESERVE", "RELEASE") or key != msg["key"].encode() or \
                    partition != partition_for(msg["key"], self.settings.partitions):
                raise ValueError("a budget request must be keyed by its budget key and sit "
                                 "on that key's partition")
            self._check_budget_message(msg, now)
        except (GatepassError, KeyError, ValueError, TypeError) as exc:
            return BudgetOutcome(records=[self.dead_letter(
                self.topics.budget_requests, partition, offset, key, value, exc, now)])
        try:
            return self._apply_budget(msg, now, ledgers)
        except Exception as exc:  # nothing a record holds may stop the agent
            log.error("budget request for intent %s not applied: %s", msg["intent_id"],
                      type(exc).__name__)
            return BudgetOutcome(records=[self.dead_letter(
                self.topics.budget_requests, partition, offset, key, value, exc, now)])

    def _check_budget_message(self, msg: Mapping[str, Any], now: datetime) -> None:
        """What no worker writes: refused before it can touch a ledger."""
        if not now - MAX_WINDOW - timedelta(days=2) <= msg["at"] <= now + timedelta(days=1):
            raise ValueError("the intent time is not a time a worker decided at")
        amount = msg["amount"]
        if amount is not None and (not amount.is_finite() or amount < 0
                                   or amount >= Decimal("100000000000000")):
            raise ValueError("the amount must be a finite, non-negative amount below 1e14")
        if (amount is None) != (msg["currency"] is None):
            raise ValueError("an amount needs its currency, and only an amount has one")
        reply = msg["reply_partition"]
        if reply != partition_for(msg["agent_id"], self.settings.partitions):
            raise ValueError("the reply partition must be the agent's partition")

    def _apply_budget(self, msg: Mapping[str, Any], now: datetime,
                      ledgers: Mapping[str, bytes]) -> BudgetOutcome:
        out = BudgetOutcome()
        budget = msg["key"]
        policy = self.book.by_version(msg["policy_version"]) or self.book.current(now)
        intent = Intent(intent_id=msg["intent_id"], agent_id=msg["agent_id"],
                        action=msg["action"], resource="-", audience="-",
                        requested_at=msg["at"],
                        amount=None if msg["amount"] is None else _plain(msg["amount"]),
                        currency=msg["currency"])
        ledger = self._ledger(ledgers, budget)
        if msg["op"] == "RELEASE":
            out.ledgers[budget] = self._ledger_bytes(
                ledger.release(intent.intent_id, at=msg["at"], action=intent.action),
                policy, now)
            return out
        new, why = ledger.reserve(policy.limits, intent_id=intent.intent_id, at=msg["at"],
                                  action=intent.action, amount=intent.amount,
                                  currency=intent.currency)
        hops = list(msg["hops"])
        here = hops.index(budget) if budget in hops else len(hops) - 1
        reply = msg["reply_partition"]
        if why is not None:
            out.refused = why
            for earlier in hops[:here]:  # what the chain reserved before this key
                out.records.append(self._budget_message(
                    "RELEASE", intent, earlier, hops=[], partition=reply, now=msg["at"],
                    policy_version=msg["policy_version"]))
            out.records.append(self._budget_reply("REFUSED", msg, budget, why))
            return out
        if new is not ledger:
            out.ledgers[budget] = self._ledger_bytes(new, policy, now)
        if here + 1 < len(hops):
            out.records.append(self._budget_message(
                "RESERVE", intent, hops[here + 1], hops=hops, partition=reply, now=msg["at"],
                policy_version=msg["policy_version"]))
        else:
            out.records.append(self._budget_reply("GRANTED", msg, budget, ""))
        return out

    def _budget_reply(self, op: str, msg: Mapping[str, Any], key: str,
                      detail: str) -> Outgoing:
        value = self.schemas.budget_message.encode({**msg, "op": op, "key": key,
                                                    "detail": detail})
        return Outgoing(self.topics.budget_replies, msg["agent_id"].encode(), value,
                        msg["reply_partition"])

    def budget_timeout(self, intent_id: str, agent_id: str, partition: int) -> Outgoing:
        """The timer's tick for a hold that waited too long (into the agent's partition)."""
        now = _now_ms(self.clock)
        value = self.schemas.budget_message.encode({
            "op": "TIMEOUT", "intent_id": intent_id, "agent_id": agent_id, "key": "",
            "hops": [], "reply_partition": partition, "at": now, "action": "-",
            "amount": None, "currency": None, "policy_version": "", "detail": ""})
        return Outgoing(self.topics.budget_replies, agent_id.encode(), value, partition)

    def on_budget_reply(self, key: bytes | None, value: bytes | None, *, partition: int,
                        offset: int, holds: Mapping[str, bytes], decided: Mapping[str, bytes],
                        ledgers: Mapping[str, bytes]) -> IntentOutcome:
        """GRANTED, REFUSED or TIMEOUT for a held intent, in the agent's partition: its one
        verdict now (a second answer for the same hold finds none and does nothing)."""
        now = _now_ms(self.clock)
        try:
            msg = self.schemas.budget_message.decode(value)
            if msg["op"] not in ("GRANTED", "REFUSED", "TIMEOUT") or \
                    key != msg["agent_id"].encode() or partition != partition_for(
                        msg["agent_id"], self.settings.partitions):
                raise ValueError("a budget reply must be keyed by its agent id and sit on "
                                 "the agent's partition")
        except (GatepassError, KeyError, ValueError, TypeError) as exc:
            return IntentOutcome(records=[self.dead_letter(
                self.topics.budget_replies, partition, offset, key, value, exc, now)])
        out = IntentOutcome(intent_id=msg["intent_id"])
        raw = holds.get(msg["intent_id"])
        if raw is None or decided.get(msg["intent_id"]) is not None:
            out.duplicate = True
            if raw is not None:
                out.unhold = msg["intent_id"]
            return out
        hold = self.schemas.budget_hold.decode(raw)
        record = self.schemas.decision_record.decode(hold["record"])
        intent = intent_from_record(record["intent"])
        if intent.agent_id != msg["agent_id"]:
            return IntentOutcome(records=[self.dead_letter(
                self.topics.budget_replies, partition, offset, key, value,
                ValueError("the reply names another agent's intent"), now)])
        result = DecisionResult(
            decision=Decision(record["decision"]),
            reasons=tuple(Reason(r) for r in record["reasons"]),
            policy_version=record["policy_version"], facts=facts_from_record(record["facts"]),
            detail=record["detail"], approval_why=tuple(hold["why"]),
            policy_ids=tuple(record.get("policy_ids") or ()))
        policy = self.book.by_version(result.policy_version) or self.book.current(now)
        out.unhold = intent.intent_id
        if msg["op"] != "GRANTED":
            why = msg["detail"] if msg["op"] == "REFUSED" else \
                "owner and department budgets did not answer in time"
            result = self._over_limit(result, why) if msg["op"] == "REFUSED" else \
                DecisionResult(decision=Decision.DENY, reasons=(Reason.STATE_NOT_READY,),
                               policy_version=result.policy_version, facts=result.facts,
                               detail=why)
            self._release(intent, list(hold["keys"]), result.policy_version, now, partition,
                          ledgers, out.ledgers, out.records)
        return self._answer(intent, result, policy, now, partition, out)

    def _misplaced(self, intent: Intent, key: bytes | None, partition: int) -> str | None:
        if key != intent.agent_id.encode():
            return "record key must equal agent_id"
        expected = partition_for(intent.agent_id, self.settings.partitions)
        if partition != expected:
            return (f"record is on partition {partition}, the agent's partition is {expected}: "
                    "produce with Kafka's murmur2 partitioner")
        return None

    def _replay(self, remembered: bytes, partition: int, out: IntentOutcome, *,
                resend_audit: bool = False) -> IntentOutcome:
        """Answer a redelivered intent with the verdict it already got (same credential id).

        If that verdict cannot be reproduced exactly (the record is unreadable, or its pass
        cannot be re-signed), nothing is sent: the first answer stands on the verdict topic,
        and a different second answer, or an ALLOW without a pass, would be worse.
        """
        out.duplicate = True
        try:
            record = self.schemas.decision_record.decode(remembered)
            issued = None
            ref = record.get("credential")
            if record["decision"] == "ALLOW":
                if ref is None:
                    raise ValueError("remembered ALLOW without a credential")
                intent = intent_from_record(record["intent"])
                approval = record.get("approval")
                issued = self.issuer.issue(PassRequest(
                    intent_id=intent.intent_id, agent_id=intent.agent_id,
                    audience=intent.audience, action=intent.action, resource=intent.resource,
                    amount=intent.amount, currency=intent.currency,
                    owner=record["facts"].get("owner") or "",
                    delegation_chain=intent.delegation_chain,
                    policy_version=record["policy_version"], issued_at=ref["issued_at"],
                    approval=None if approval is None else PassApproval(
                        request_id=approval["request_id"], approver=approval["approver"],
                        approved_at=approval["decided_at"]),
                    # The key the first pass was bound to, as recorded: not today's key.
                    cnf_jkt=record["facts"].get("agent_key_jkt")))
        except Exception as exc:
            log.error("redelivered intent %s not answered again (first verdict stands): %s",
                      out.intent_id, exc.code if isinstance(exc, GatepassError)
                      else type(exc).__name__)
            return out
        key = record["intent"]["agent_id"].encode()
        if resend_audit:
            # The audit record again first, when it is not known to be written (a crash after
            # the decision, before the audit topic acknowledged it): the verdict goes out only
            # after it (worker/delivery.py). A copy has the same decision id.
            out.records.append(Outgoing(self.topics.audit, key, remembered, partition))
        out.records.append(Outgoing(self.topics.verdicts, key,
                                    self._verdict_bytes(record, issued, ref), partition))
        out.decision, out.reasons = record["decision"], tuple(record["reasons"])
        return out

    def _pass_request(self, intent: Intent, result: DecisionResult,
                      now: datetime) -> PassRequest:
        facts = result.facts
        return PassRequest(
            intent_id=intent.intent_id, agent_id=intent.agent_id, audience=intent.audience,
            action=intent.action, resource=intent.resource, amount=intent.amount,
            currency=intent.currency, owner=facts.owner or "",
            delegation_chain=intent.delegation_chain, policy_version=result.policy_version,
            issued_at=now, cnf_jkt=facts.agent_key_jkt)

    def _decision_record(self, intent: Intent, result: DecisionResult, now: datetime,
                         issued: IssuedPass | None,
                         approval: Mapping[str, Any] | None = None) -> dict[str, Any]:
        # A secret an agent copies into its intent's context (an Authorization header, a
        # pass) must not land in the audit trail: masked here, named in masked_fields.
        recorded = intent_to_record(intent)
        recorded["context"], hidden = _masked_context(intent.context)
        masked = (list(_MASKED) if issued else []) + [f"intent.context.{k}" for k in hidden]
        credential = None
        if issued is not None:
            credential = {"credential_id": issued.credential_id, "token_sha256": issued.token_hash,
                          "kid": issued.kid, "issued_at": issued.issued_at,
                          "expires_at": issued.expires_at}
        return {
            "decision_id": str(uuid.uuid4()), "intent": recorded,
            "decision": result.decision.value, "reasons": [r.value for r in result.reasons],
            "detail": result.detail, "policy_version": result.policy_version,
            "policy_ids": list(result.policy_ids), "decided_at": now,
            "facts": facts_to_record(result.facts),
            "credential": credential, "masked_fields": masked,
            "worker": self.worker, "approval": approval,
        }

    def _verdict_bytes(self, record: Mapping[str, Any], issued: IssuedPass | None,
                       ref: Mapping[str, Any] | None = None) -> bytes:
        ref = ref or record.get("credential")
        return self.schemas.verdict.encode({
            "intent_id": record["intent"]["intent_id"], "agent_id": record["intent"]["agent_id"],
            "decision": record["decision"], "reasons": record["reasons"],
            "detail": record["detail"],
            "credential": issued.token if issued else None,
            "credential_id": ref["credential_id"] if ref else None,
            "expires_at": ref["expires_at"] if ref else None,
            "policy_version": record["policy_version"],
            "policy_ids": record.get("policy_ids", []), "decided_at": record["decided_at"],
            "facts": record["facts"], "approval": record.get("approval"),
        })

    # ---- approvals -----------------------------------------------------------------------
    def on_approval(self, key: bytes | None, value: bytes | None, *, partition: int,
                    offset: int, pending: Mapping[str, bytes],
                    decided: Mapping[str, bytes],
                    ledgers: Mapping[str, bytes] | None = None) -> ApprovalOutcome:
        """One approval decision, or one expiry tick of the timer, for a pending request.

        Runs in the agent's partition, in order with the intents: the first decision that
        passes every check (or the expiry) ends the request with exactly one final verdict;
        `pending` and `decided` are the changelog-backed tables of that partition.
        """
        now = _now_ms(self.clock)
        codecs = self.schemas
        try:
            if codecs.approval_timeout.accepts(value):
                tick = codecs.approval_timeout.decode(value)
                intent_id, agent_id, event = tick["intent_id"], tick["agent_id"], None
            else:
                event = approval_decision_from_record(codecs.approval_decision.decode(value))
                intent_id, agent_id = event.intent_id, event.agent_id
            if key != agent_id.encode() or partition != partition_for(
                    agent_id, self.settings.partitions):
                raise ValueError("an approval record must be keyed by its agent id and sit on "
                                 "the agent's partition")
        except (GatepassError, KeyError, ValueError, TypeError) as exc:
            return ApprovalOutcome(records=[self.dead_letter(
                self.topics.approval_decisions, partition, offset, key, value, exc, now)])
        out = ApprovalOutcome(intent_id=intent_id)
        try:
            finalized = self._finalized(decided.get(intent_id))
            raw = pending.get(intent_id)
            if finalized is not None and raw is not None:
                # A final verdict exists, so the request is over whatever `pending` says (its
                # removal may not have reached the changelog before a crash): drop it.
                out.finish, raw = intent_id, None
            request = None if raw is None else pending_from_record(
                codecs.approval_request.decode(raw))
            if event is None:
                verdict = judge_timeout(request, now=now, identity=self.identity)
            elif request is not None and not self.ready():
                # Who may approve is read from the identity view: not on a stale one.
                verdict = Judgement(alert=Reason.STATE_NOT_READY,
                                    detail="identity state is not ready; decide again shortly")
            else:
                # Delegates as the policy that asked for approval named them.
                policy = self.book.by_version(request.policy_version) if request else None
                verdict = judge(request, finalized, event, identity=self.identity,
                                rules=(policy or self.book.current(now)).approval,
                                key=self._key(), now=now)
        except Exception as exc:  # never an approval by accident: nothing changes
            log.error("approval event for intent %s not applied: %s", intent_id,
                      type(exc).__name__)
            verdict = Judgement(alert=Reason.INTERNAL_ERROR,
                                detail=f"approval event not applied: {type(exc).__name__}")
        if verdict.repeat:
            remembered = decided.get(intent_id)
            if remembered is not None:
                out.records = self._replay(remembered, partition, IntentOutcome()).records
            return out
        if verdict.final is not None and request is not None:
            self._finish(request, verdict, event, now, partition, out)
            if out.final == Decision.DENY.value and raw is not None:
                # Denied, expired, or its owner gone: the spend it reserved is given back.
                pending_record = codecs.approval_request.decode(raw)
                keys = self.budget_keys_of({"policy_version": request.policy_version,
                                            "intent": pending_record["intent"],
                                            "facts": pending_record.get("facts") or {}})
                if keys:
                    self._release(request.intent, keys, request.policy_version, now,
                                  partition, ledgers or {}, out.ledgers, out.records)
        if verdict.alert is not None and event is not None:
            out.alert = verdict.alert.value
            out.records.append(self._approval_alert(event, verdict, now, partition))
        return out

    def _key(self) -> bytes:
        if self._approval_key is None:
            raise RuntimeError("no approval key configured")
        return self._approval_key()

    def _finalized(self, remembered: bytes | None) -> Finalized | None:
        if remembered is None:
            return None
        record = self.schemas.decision_record.decode(remembered)
        if record["decision"] == Decision.PENDING.value:
            return None
        approval = record.get("approval") or {}
        return Finalized(decision=Decision(record["decision"]),
                         decision_id=approval.get("decision_id"))

    def _finish(self, request: PendingApproval, verdict: Judgement,
                event: ApprovalDecision | None, now: datetime, partition: int,
                out: ApprovalOutcome) -> None:
        """The one final verdict of a request: ALLOW with a pass naming the approver, or DENY."""
        intent = request.intent
        decision, reason, detail = verdict.final, verdict.reason, verdict.detail
        assert decision is not None and reason is not None
        approval = {"request_id": request.request_id, "expires_at": request.expires_at,
                    "why": list(request.why),
                    "approver": event.approver if event is not None and
                    reason is not Reason.APPROVAL_EXPIRED else None,
                    "decided_at": now, "decision_id": event.decision_id if event else None,
                    "channel": event.channel if event else None}
        facts = self._facts_now(intent.agent_id, now)
        issued: IssuedPass | None = None
        if decision is Decision.ALLOW:
            assert event is not None
            try:
                agent = self.identity.agent(intent.agent_id)
                if agent is not None and agent.public_key and facts.agent_key_jkt is None:
                    # Never a bearer pass for an agent with a key: bound, or none at all.
                    raise ValueError("the agent's registered public key is unusable")
                issued = self.issuer.issue(PassRequest(
                    intent_id=intent.intent_id, agent_id=intent.agent_id,
                    audience=intent.audience, action=intent.action, resource=intent.resource,
                    amount=intent.amount, currency=intent.currency, owner=facts.owner or "",
                    delegation_chain=intent.delegation_chain,
                    policy_version=request.policy_version, issued_at=now,
                    approval=PassApproval(request_id=request.request_id,
                                          approver=event.approver, approved_at=now),
                    cnf_jkt=facts.agent_key_jkt))
            except Exception as exc:  # no key, no pass: the final answer is a DENY
                log.error("signing failed for approved intent %s: %s", intent.intent_id,
                          type(exc).__name__)
                decision, reason = Decision.DENY, Reason.INTERNAL_ERROR
                detail = "approved, but the pass could not be signed"
        result = DecisionResult(decision=decision, reasons=(reason,),
                                policy_version=request.policy_version, facts=facts,
                                detail=detail)
        record = self._decision_record(intent, result, now, issued, approval)
        encoded = self.schemas.decision_record.encode(record)
        key_bytes = intent.agent_id.encode()
        out.records.append(Outgoing(self.topics.verdicts, key_bytes,
                                    self._verdict_bytes(record, issued), partition))
        out.records.append(Outgoing(self.topics.audit, key_bytes, encoded, partition))
        if decision is Decision.DENY:
            out.records.append(Outgoing(self.topics.denials, key_bytes, encoded, partition))
        out.finish = intent.intent_id
        out.remember = (intent.intent_id, encoded)
        out.final, out.reason, out.record = decision.value, reason.value, record

    def _facts_now(self, agent_id: str, now: datetime) -> IdentityFacts:
        agent = self.identity.agent(agent_id)
        if agent is None:
            return IdentityFacts(state_ready=self.ready())
        owner = self.identity.principal(agent.owner, now) if agent.owner else None
        return IdentityFacts(
            agent_registered=agent.registered, agent_status=agent.status.value,
            agent_status_at=agent.status_at, owner=agent.owner,
            owner_status=owner.status.value if owner else None,
            owner_status_at=owner.status_at if owner else None, purpose=agent.purpose,
            department=agent.department, state_ready=self.ready(),
            agent_key_jkt=usable_key_thumbprint(agent.public_key))

    def _approval_alert(self, event: ApprovalDecision, verdict: Judgement, now: datetime,
                        partition: int) -> Outgoing:
        reason = verdict.alert.value if verdict.alert else ""
        alert_id = str(uuid.uuid5(_APPROVAL_ALERT_NS, f"{event.decision_id}|{reason}"))
        log.warning("approval decision %s refused: %s", event.decision_id, reason)
        return Outgoing(self.topics.approval_alerts, event.agent_id.encode(),
                        self.schemas.approval_alert.encode({
                            "alert_id": alert_id, "reason": reason, "detail": verdict.detail,
                            "decision_id": event.decision_id, "request_id": event.request_id,
                            "intent_id": event.intent_id, "agent_id": event.agent_id,
                            "approver": event.approver,
                            "choice": "APPROVE" if event.approve else "DENY",
                            "channel": event.channel, "detected_at": now}), partition)

    # ---- orphans -------------------------------------------------------------------------
    def _orphan_check(self, agent_id: str, trigger: str, facts: IdentityFacts | None,
                      now: datetime, intent_id: str | None = None,
                      more: Sequence[str] = ()) -> bytes:
        return self.schemas.orphan_check.encode({
            "agent_id": agent_id, "more_agent_ids": list(more), "trigger": trigger,
            "intent_id": intent_id,
            "owner": facts.owner if facts else None,
            "owner_status": facts.owner_status if facts else None,
            "owner_status_at": facts.owner_status_at if facts else None,
            "requested_at": now})

    def on_lifecycle(self, key: bytes | None, value: bytes | None, *, partition: int,
                     offset: int) -> list[Outgoing]:
        """Proactive ghost detection: fan an owner's deactivation out to their agents.

        Runs once per lifecycle record in the consumer group (not in every worker), after the
        worker's identity view has applied that record, so the view says who owns what.
        """
        now = _now_ms(self.clock)
        try:
            event = decode_lifecycle(self.schemas.lifecycle, value)
        except (DecodeError, KeyError, ValueError, TypeError) as exc:
            return [self.dead_letter(self.topics.identity, partition, offset, key, value, exc,
                                     now)]
        out: list[Outgoing] = []
        winner = self.identity.needs_repair(event)
        if winner is not None:
            # This record lost to a newer one that it now follows in the log: write the
            # winner back so compaction cannot keep the loser (see IdentityState.needs_repair).
            out.append(Outgoing(self.topics.identity, key,
                                self.schemas.lifecycle.encode(lifecycle_to_record(winner)),
                                partition))
            return out
        checks: list[str] = []
        trigger = "owner_deactivated"
        if isinstance(event, PrincipalStatusChanged):
            rec = self.identity.principal(event.principal_id)
            if (rec is not None and rec.status is not PrincipalStatus.ACTIVE
                    and rec.status_at == event.event_time and rec.status == event.status):
                checks = list(self.identity.agents_owned_by(event.principal_id))
        elif isinstance(event, AgentRegistered):
            agent = self.identity.agent(event.agent_id)
            if (agent is not None and agent.registered_at == event.event_time
                    and agent.owner == event.owner
                    and not self.identity.owner_active(event.owner)):
                checks, trigger = [event.agent_id], "agent_registered"
        # Co-partitioned with the agents' intents (the worker owning them owns their alerts),
        # in chunks of agents that share a partition and their owner's facts: one event per
        # chunk instead of one per agent is what lets 1,000 alerts go out within a second.
        chunks: dict[tuple[int, IdentityFacts], list[str]] = {}
        for agent_id in checks:
            agent = self.identity.agent(agent_id)
            if agent is None or agent.status is AgentStatus.DECOMMISSIONED:
                continue
            owner = self.identity.principal(agent.owner) if agent.owner else None
            facts = IdentityFacts(owner=agent.owner,
                                  owner_status=owner.status.value if owner else None,
                                  owner_status_at=owner.status_at if owner else None)
            chunks.setdefault((partition_for(agent_id, self.settings.partitions), facts),
                              []).append(agent_id)
        for (target, facts), agents in chunks.items():
            for i in range(0, len(agents), ORPHAN_CHECK_CHUNK):
                chunk = agents[i:i + ORPHAN_CHECK_CHUNK]
                out.append(Outgoing(self.topics.orphan_checks, chunk[0].encode(),
                                    self._orphan_check(chunk[0], trigger, facts, now,
                                                       more=chunk[1:]), target))
        return out

    def on_orphan_check(self, key: bytes | None, value: bytes | None, *, partition: int,
                        offset: int, memo: Mapping[str, bytes]
                        ) -> tuple[list[Outgoing], list[tuple[str, bytes]]]:
        """One orphan alert per agent per owner deactivation, however many checks arrive.

        A check names one agent or a chunk of one owner's agents (`more_agent_ids`). Returns
        the alerts to send and what the caller writes to the `alerted` memo: one
        (agent id, alert) per alert raised, in order. Every agent named must live in this
        partition (the fan-out and the intents path write them so): the memo consulted is
        this partition's, and an agent of another partition, whose memo is elsewhere, could
        be alerted again; such a check is dead-lettered whole.
        """
        now = _now_ms(self.clock)
        try:
            check = self.schemas.orphan_check.decode(value)
            named = list(dict.fromkeys([check["agent_id"], *check.get("more_agent_ids", ())]))
            if any(partition_for(a, self.settings.partitions) != partition for a in named):
                raise RecordInvalidError("an orphan check must sit on the partition of every "
                                         "agent it names")
        except DecodeError as exc:
            return [self.dead_letter(self.topics.orphan_checks, partition, offset, key, value,
                                     exc, now)], []
        owner = check.get("owner")
        seen_at: datetime | None = check.get("owner_status_at")
        current = self.identity.principal(owner) if owner else None
        if current is not None and current.status is PrincipalStatus.ACTIVE and (
                seen_at is None or current.status_at > seen_at):
            return [], []  # the owner was reinstated after the check was raised
        if owner and check.get("owner_status") is None and current is not None:
            # Raised while the owner was unknown, and the owner is known now: its facts make
            # the finding. Active: nothing to report. Not active: the status event that says
            # so raised checks of its own for every agent the owner has (the fan-out, or the
            # agent's registration after it), which alert with the real facts; alerting here
            # too would be a second alert, naming the owner "unknown".
            return [], []
        records: list[Outgoing] = []
        alerted: list[tuple[str, bytes]] = []
        for agent_id in named:
            previous = memo.get(agent_id)
            if previous is not None:
                prev = self.schemas.orphan_alert.decode(previous)
                if prev.get("owner") == owner and prev.get("owner_status_at") == seen_at:
                    continue
            agent = self.identity.agent(agent_id)
            episode = f"{agent_id}|{owner}|{seen_at.isoformat() if seen_at else 'unknown'}"
            alert = self.schemas.orphan_alert.encode({
                "alert_id": str(uuid.uuid5(_ALERT_NS, episode)), "agent_id": agent_id,
                "owner": owner, "owner_status": check.get("owner_status"),
                "owner_status_at": seen_at, "purpose": agent.purpose if agent else None,
                "department": agent.department if agent else None,
                "contact": agent.contact if agent else None, "trigger": check["trigger"],
                "intent_id": check.get("intent_id"), "detected_at": now})
            records.append(Outgoing(self.topics.orphans, agent_id.encode(), alert, partition))
            alerted.append((agent_id, alert))
        return records, alerted

    # ---- dead letters --------------------------------------------------------------------
    def dead_letter(self, topic: str, partition: int, offset: int, key: bytes | None,
                    value: bytes | None, exc: Exception, now: datetime) -> Outgoing:
        code = exc.code if isinstance(exc, GatepassError) else "record_invalid"
        log.warning("dead-lettered %s[%d]@%d: %s", topic, partition, offset, code)
        return Outgoing(self.topics.dead_letter, key, self.schemas.dead_letter.encode({
            "source_topic": topic, "source_partition": partition, "source_offset": offset,
            "error_code": code, "error": str(exc) or type(exc).__name__, "key": key,
            "value": value, "received_at": now}), None)

