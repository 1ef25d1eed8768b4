"""The approver's side over Kafka: find requests, submit a decision, learn what it did.

Used by `gatepass approvals ...` and by the approval page. It never decides anything: it
writes one ApprovalDecision (with a proof made from the approver's code, never the code
itself) to the agent's partition of the approval-decisions topic, and reads back what the
processor made of it: the final verdict's audit record, or an approval alert.

Requests are looked up in the recent past only (their lifetime plus a margin, found with
Kafka's offsets-for-times), so a lookup costs the same however long the topics are.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from gatepass.codec.avro import schemas
from gatepass.codec.records import approval_decision_to_record
from gatepass.config import Settings
from gatepass.core.approval import ApprovalDecision, decision_proof
from gatepass.errors import BrokerError, GatepassError, RecordInvalidError
from gatepass.transport import partition_for, watermarks
from gatepass.transport.topics import KAFKA_LOG

__all__ = ["ApprovalsClient", "Outcome", "RequestView"]

_MARGIN = timedelta(minutes=2)


@dataclass(frozen=True, slots=True)
class RequestView:
    """One approval request and where it stands."""

    request: Mapping[str, Any] = field(repr=False)
    status: str  # pending | expired (not yet settled) | ALLOW | DENY
    final: Mapping[str, Any] | None = field(default=None, repr=False)  # DecisionRecord

    @property
    def request_id(self) -> str:
        return str(self.request["request_id"])

    @property
    def intent(self) -> Mapping[str, Any]:
        return self.request["intent"]

    @property
    def agent_id(self) -> str:
        return str(self.intent["agent_id"])

    @property
    def pending(self) -> bool:
        return self.status == "pending"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the processor made of one submitted decision."""

    accepted: bool  # it ended the request (ALLOW or DENY)
    decision: str | None  # final ALLOW/DENY when accepted (or when the request expired)
    reason: str  # approved, approval_denied, or the alert's reason code, or timeout
    detail: str = ""


class ApprovalsClient:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topics = settings.topics
        self.codecs = schemas()
        conf = {"bootstrap.servers": settings.bootstrap, "logger": KAFKA_LOG}
        self._producer = Producer({**conf, "acks": "all", "enable.idempotence": True})
        self._conf = {**conf, "group.id": "gatepass-approvals", "enable.auto.commit": False}
        try:
            meta = self._producer.list_topics(self.topics.approvals, timeout=10)
        except KafkaException as exc:
            raise BrokerError(f"cannot reach Kafka at {settings.bootstrap}: {exc}") from exc
        topic = meta.topics.get(self.topics.approvals)
        if topic is None or topic.error is not None or not topic.partitions:
            raise BrokerError(f"topic {self.topics.approvals} does not exist: "
                              "is a worker running?")
        self.partitions = len(topic.partitions)

    def close(self) -> None:
        self._producer.flush(5)

    def __enter__(self) -> ApprovalsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- reading -------------------------------------------------------------------------
    def _read(self, topic: str, partitions: list[int], since: datetime,
              timeout: float = 20.0) -> Iterator[tuple[int, int, bytes | None]]:
        """(partition, offset, value) of every record written since `since`, up to the end."""
        consumer = Consumer(self._conf)
        try:
            wanted = [TopicPartition(topic, p, int(since.timestamp() * 1000)) for p in partitions]
            starts = consumer.offsets_for_times(wanted, timeout=10)
            ends = {p: watermarks(consumer, topic, p)[1] for p in partitions}
            assign = [TopicPartition(topic, tp.partition, tp.offset) for tp in starts
                      if tp.offset >= 0 and tp.offset < ends[tp.partition]]
            if not assign:
                return
            consumer.assign(assign)
            left = {tp.partition for tp in assign}
            deadline = time.monotonic() + timeout
            while left:
                if time.monotonic() > deadline:
                    raise BrokerError(f"reading {topic} took over {timeout:.0f}s")
                msg = consumer.poll(0.2)
                if msg is None or msg.error():
                    continue
                p, off = msg.partition() or 0, msg.offset() or 0
                if off + 1 >= ends[p]:
                    left.discard(p)
                if off < ends[p]:
                    yield p, off, msg.value()
        except KafkaException as exc:
            raise BrokerError(f"cannot read {topic}: {exc}") from exc
        finally:
            consumer.close()

    def _window_start(self, now: datetime) -> datetime:
        return now - self.settings.approval_timeout - _MARGIN

    def _requests(self, partitions: list[int], now: datetime) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for _, _, value in self._read(self.topics.approvals, partitions, self._window_start(now)):
            try:
                rec = self.codecs.approval_request.decode(value)
            except GatepassError:
                continue
            found[rec["intent"]["intent_id"]] = rec
        return found

    def _finals(self, partitions: list[int], since: datetime,
                intent_ids: set[str]) -> dict[str, dict[str, Any]]:
        finals: dict[str, dict[str, Any]] = {}
        for _, _, value in self._read(self.topics.audit, partitions, since):
            try:
                rec = self.codecs.decision_record.decode(value)
            except GatepassError:
                continue
            iid = rec["intent"]["intent_id"]
            if iid in intent_ids and rec["decision"] != "PENDING" and iid not in finals:
                finals[iid] = rec  # the first final is the final: the processor writes one
        return finals

    def requests(self, *, agent_id: str | None = None,
                 now: datetime | None = None) -> list[RequestView]:
        """Recent requests (of one agent, or all), oldest first, each with its status."""
        now = now or datetime.now(UTC)
        partitions = ([partition_for(agent_id, self.partitions)] if agent_id
                      else list(range(self.partitions)))
        found = self._requests(partitions, now)
        if agent_id:
            found = {k: v for k, v in found.items() if v["intent"]["agent_id"] == agent_id}
        finals = self._finals(partitions, self._window_start(now), set(found))
        views = []
        for iid, rec in found.items():
            final = finals.get(iid)
            status = (final["decision"] if final else
                      "pending" if rec["expires_at"] > now else "expired")
            views.append(RequestView(request=rec, status=status, final=final))
        return sorted(views, key=lambda v: v.request["requested_at"])

    def find(self, *, intent_id: str | None = None, request_id: str | None = None,
             agent_id: str | None = None) -> RequestView | None:
        for view in self.requests(agent_id=agent_id):
            if (intent_id and view.intent["intent_id"] == intent_id) or \
                    (request_id and view.request_id == request_id):
                return view
        return None

    # ---- deciding ------------------------------------------------------------------------
    def submit(self, view: RequestView, *, approver: str, approve: bool, code: str,
               channel: str, decision_id: str | None = None) -> ApprovalDecision:
        """Write one decision (acknowledged by the broker) and return it."""
        decision_id = decision_id or str(uuid.uuid4())
        intent_id = str(view.intent["intent_id"])
        decision = ApprovalDecision(
            decision_id=decision_id, request_id=view.request_id, intent_id=intent_id,
            agent_id=view.agent_id, approver=approver, approve=approve, channel=channel,
            proof=decision_proof(code, request_id=view.request_id, intent_id=intent_id,
                                 agent_id=view.agent_id, approver=approver, approve=approve,
                                 decision_id=decision_id))
        try:
            value = self.codecs.approval_decision.encode(
                approval_decision_to_record(decision, submitted_at=datetime.now(UTC)))
        except RecordInvalidError:
            raise
        errors: list[str] = []
        self._producer.produce(
            self.topics.approval_decisions, key=view.agent_id.encode(), value=value,
            partition=partition_for(view.agent_id, self.partitions),
            on_delivery=lambda err, _msg: errors.append(str(err)) if err else None)
        if self._producer.flush(10) or errors:
            raise BrokerError(f"decision not acknowledged: {errors or 'timeout'}")
        return decision

    def outcome(self, decision: ApprovalDecision, *, since: datetime,
                timeout: float = 15.0) -> Outcome:
        """Wait for what the processor made of `decision`: a final verdict or an alert."""
        partition = partition_for(decision.agent_id, self.partitions)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for _, _, value in self._read(self.topics.approval_alerts, [partition], since):
                try:
                    alert = self.codecs.approval_alert.decode(value)
                except GatepassError:
                    continue
                if alert["decision_id"] == decision.decision_id and \
                        alert["reason"] != "approval_expired":
                    return Outcome(False, None, alert["reason"], alert["detail"])
            final = self._finals([partition], since, {decision.intent_id}).get(
                decision.intent_id)
            if final is not None:
                approval = final.get("approval") or {}
                mine = approval.get("decision_id") == decision.decision_id
                return Outcome(mine, final["decision"], final["reasons"][0],
                               final.get("detail", ""))
            time.sleep(0.2)
        return Outcome(False, None, "timeout", "no answer from the processor in time")
