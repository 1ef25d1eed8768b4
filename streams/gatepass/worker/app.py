"""The faust application: three thin agents around the pipeline, plus JWKS and health pages.

    intents        --decide_intents-->      verdicts, audit, denials, orphan-checks, approvals
    approval-decisions --settle_approvals--> verdicts, audit, denials, approval-alerts
    (timer)        --expire_approvals-->    approval-decisions (expiry ticks, in order)
    approvals      --NoticeDispatcher-->    webhook, approver inboxes (own consumer group)
    orphan-checks  --raise_orphan_alerts--> orphan-alerts      (one per agent per episode)
    identity       --IdentityLoader-->      this worker's full identity view (every record)
    identity       --LifecycleFanout-->     orphan-checks (owner offboarded -> agents), repairs

Each agent is a loop: read, call the pipeline, send what it returns. Produce calls are not
awaited for acknowledgement one by one; faust flushes the producer before it commits offsets,
and the DeliveryGuard (worker/delivery.py) makes that flush wait until every record sent
succeeded, re-sending failed ones. So a crash re-delivers anything not yet written (at least
once), and the `decided` table turns a re-delivery into the same verdict.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import socket
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import faust
from aiokafka.errors import KafkaError
from faust.exceptions import ConsumerNotStarted, ProducerSendError

from gatepass.approvals.dispatch import NoticeDispatcher
from gatepass.approvals.inbox import InboxNotifier
from gatepass.approvals.notice import Notifier
from gatepass.approvals.page import install_approval_pages
from gatepass.approvals.webhook import WebhookNotifier
from gatepass.codec.avro import SchemaSet, schemas
from gatepass.config import Settings
from gatepass.core import CedarPolicy, IdentityState
from gatepass.core.approval import approvable
from gatepass.credentials import KeyStore, PassIssuer
from gatepass.errors import BrokerError
from gatepass.logs import log_decision
from gatepass.policy import load_policy
from gatepass.policy.book import PolicyBook
from gatepass.transport.faust_consumer import use_short_fetch_wait
from gatepass.transport.offsets import HighWatermarks
from gatepass.transport.topics import KAFKA_LOG, admin_client
from gatepass.worker.delivery import DeliveryGuard
from gatepass.worker.identity_loader import IdentityLoader
from gatepass.worker.keys import sync_public_keys
from gatepass.worker.lifecycle_fanout import LifecycleFanout
from gatepass.worker.memo import (
    ApprovalTimer,
    AuditedIndex,
    ExpiryIndex,
    SkipGuard,
    refetch_stranded_records,
)
from gatepass.worker.metrics import CONTENT_TYPE, WorkerMetrics
from gatepass.worker.pipeline import IntentOutcome, Outgoing, Pipeline
from gatepass.worker.policy_loader import PolicyLoader
from gatepass.worker.readback import Overlay, Recovered, read_back, read_range
from gatepass.worker.stackdump import dump_stacks
from gatepass.worker.watchdog import StallWatchdog, waiting_intents

__all__ = ["STALL_AFTER_SECONDS", "Runtime", "create_app"]

STALL_AFTER_SECONDS = 30.0  # intents waiting, none handled this long: /healthz says stalled
POLICY_WAIT_SECONDS = 5.0  # an intent waits this long for the policy topic, then is denied
BUDGET_WAIT_SECONDS = 30.0  # a held intent waits this long for its budgets, then is denied
# An orphan alert naming an owner this worker's view does not know is raised only once the
# view holds every lifecycle record written up to this long after the check: an agent and
# its owner are keyed apart, their records sit on different partitions read in no set
# order, and a connector may write the owner just after the agent. The wait is bounded;
# after it the alert goes out on what is known (alerting is the safe side).
UNKNOWN_OWNER_GRACE_SECONDS = 2.0
UNKNOWN_OWNER_WAIT_SECONDS = 10.0
# Records fetched but never handed to the agent (SkipGuard.stranded) are fetched again once
# their partition has been still this long with nothing buffered; checked this often.
STRANDED_AFTER_SECONDS = 5.0
STRANDED_CHECK_SECONDS = 2.5

log = logging.getLogger("gatepass.worker")


class _BytesKeyed(Mapping[str, bytes]):
    """A str-keyed read view of a faust table whose keys are raw bytes (as after recovery)."""

    def __init__(self, table: Any) -> None:
        self._table = table

    def __getitem__(self, key: str) -> bytes:
        value = self._table.get(key.encode())
        if value is None:
            raise KeyError(key)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        value = self._table.get(key.encode())
        return default if value is None else value

    def __iter__(self) -> Any:
        return (k.decode() for k in self._table.keys())

    def __len__(self) -> int:
        return len(self._table)


class Runtime:
    """Everything prepared once per worker: schemas, policy, keys, identity view, pipeline."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.schemas: SchemaSet = schemas()
        # The local bundle decides until a pushed one takes over (gatepass policy push).
        self.book = PolicyBook(load_policy(settings.policy_dir),
                               rollout_delay=settings.policy_rollout_delay)
        self.policy_loader = PolicyLoader(settings, self.schemas, self.book)
        self.keystore = KeyStore.open(settings.keystore_dir)
        self._approval_key = self.keystore.approval_key()
        self.issuer = PassIssuer(self.keystore, issuer=settings.issuer, ttl=settings.pass_ttl)
        self.identity = IdentityState()
        self.loader = IdentityLoader(settings, self.schemas, self.identity)
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.pipeline = Pipeline(settings=settings, schemas=self.schemas, policy=self.book,
                                 issuer=self.issuer, identity=self.identity,
                                 ready=self.identity_ready, worker=self.name,
                                 approval_key=self.approval_key)
        self.metrics = WorkerMetrics()
        self.keys_published = False

    def approval_key(self) -> bytes:
        return self._approval_key

    @property
    def policy(self) -> CedarPolicy:
        """The policy deciding now, as far as this worker has read the policy topic."""
        return self.book.current(datetime.now(UTC))

    def identity_ready(self) -> bool:
        """Loaded and not older than the allowed maximum: only then is anything decided."""
        return self.loader.fresh(self.settings.identity_max_age.total_seconds())

    def channels(self) -> list[Notifier]:
        """Where approvers hear of requests: their inbox (the CLI) and the webhook if set."""
        channels: list[Notifier] = [InboxNotifier(self.settings.approval_inbox)]
        url, secret = self.settings.approval_webhook_url, self.settings.approval_webhook_secret
        if url is not None and secret is not None:
            channels.append(WebhookNotifier(url, secret.reveal()))
        return channels


def create_app(settings: Settings) -> tuple[faust.App, Runtime]:
    rt = Runtime(settings)
    t = settings.topics
    app = faust.App(
        settings.app_id,
        broker=",".join(f"kafka://{h}" for h in settings.bootstrap.split(",")),
        store="memory://",  # tables are rebuilt from their changelog topics on start
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication,
        key_serializer="raw",
        value_serializer="raw",
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        # A killed worker's partitions move after 10 s, not faust's default minute: intents
        # of its agents wait that long for an answer.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
        broker_commit_every=1000,
        broker_commit_interval=1.0,
        # Send at once: an answer is two produce hops in a row (audit record, then verdict),
        # and a linger on each adds to every intent's latency. Under load, aiokafka's one
        # request in flight per broker batches whatever queues behind it anyway.
        producer_linger_ms=0,
        producer_acks=-1,
        web_enabled=True,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        web_port=settings.web_port,
        datadir=str(settings.home / "worker" / settings.app_id),
        autodiscover=False,
        table_standby_replicas=0,
    )
    use_short_fetch_wait(app)

    def raw_topic(name: str) -> Any:
        return app.topic(name, partitions=settings.partitions, key_type=bytes,
                         value_type=bytes, key_serializer="raw", value_serializer="raw")

    intents, orphan_checks = raw_topic(t.intents), raw_topic(t.orphan_checks)
    approval_decisions = raw_topic(t.approval_decisions)
    # intent id -> DecisionRecord of its verdict; agent id -> last OrphanAlert (raw Avro)
    expiry = ExpiryIndex(settings.dedupe_horizon.total_seconds())

    async def index_recovered(event: Any) -> None:
        msg = event.message
        if msg.value is not None:
            expiry.add(msg.partition, msg.key, msg.timestamp)

    decided = app.Table("decided", default=None, partitions=settings.partitions,
                        key_type=bytes, value_type=bytes, on_changelog_event=index_recovered)
    alerted = app.Table("alerted", default=None, partitions=settings.partitions,
                        key_type=bytes, value_type=bytes)
    decided_view, alerted_view = _BytesKeyed(decided), _BytesKeyed(alerted)

    # What the output topics say was answered, read back when a partition is taken (see
    # worker/readback.py); agents hold a partition's records until it is read.
    recovered = Recovered()
    gates: dict[int, asyncio.Event] = {}
    reading: set[asyncio.Future[None]] = set()

    def prefer_final(mine: bytes, theirs: bytes) -> bytes:
        """The table says PENDING but the audit topic has the final record: the final."""
        try:
            if rt.schemas.decision_record.decode(mine)["decision"] == "PENDING":
                return theirs
        except Exception:  # an unreadable table value: the topic's record
            return theirs
        return mine

    def prefer_latest(mine: bytes, theirs: bytes) -> bytes:
        try:
            a, b = (rt.schemas.orphan_alert.decode(v)["detected_at"] for v in (mine, theirs))
        except Exception:
            return theirs
        return theirs if b > a else mine

    # Intents whose audit record this worker saw acknowledged (or read back): a redelivery
    # of one of them does not write its audit record again.
    audited = AuditedIndex()

    def audited_in(partition: int) -> Any:
        return audited.view(partition, recovered.decided.get(partition, {}))

    def decided_in(partition: int) -> Mapping[str, bytes]:
        return Overlay(decided_view, recovered.decided.get(partition, {}), prefer_final)

    def alerted_in(partition: int) -> Mapping[str, bytes]:
        return Overlay(alerted_view, recovered.alerted.get(partition, {}), prefer_latest)

    async def gate(partition: int) -> None:
        ready = gates.get(partition)
        if ready is not None and not ready.is_set():
            await ready.wait()

    async def read_back_partition(partition: int, ready: asyncio.Event) -> None:
        delay = 0.5
        while True:
            try:
                decided_p, alerted_p, next_intent = \
                    await asyncio.get_running_loop().run_in_executor(
                        None, read_back, settings, rt.schemas, partition)
                break
            except Exception as exc:  # the broker is away: the partition waits, as it would
                log.warning("reading back partition %d failed (%s); retrying in %.1fs",
                            partition, type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        recovered.decided[partition], recovered.alerted[partition] = decided_p, alerted_p
        if next_intent is not None:
            intent_guard.offsets.expect(partition, next_intent)
        ready.set()
        log.info("partition %d read back: %d answers, %d alerts", partition, len(decided_p),
                 len(alerted_p))

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def read_back_answers(app: Any, assigned: Any, **kwargs: Any) -> None:
        for tp in assigned:
            if tp.topic == t.intents and tp.partition not in gates:
                ready = gates[tp.partition] = asyncio.Event()
                task = asyncio.ensure_future(read_back_partition(tp.partition, ready))
                reading.add(task)
                task.add_done_callback(reading.discard)

    # intent id -> ApprovalRequest while it waits for its owner; `due` knows when each expires
    due = ApprovalTimer()

    async def index_pending(event: Any) -> None:
        msg = event.message
        if msg.value is None:
            due.discard(msg.key)
            return
        try:
            request = rt.schemas.approval_request.decode(msg.value)
        except Exception:  # written by a worker: if unreadable it cannot expire
            log.error("unreadable pending approval in the changelog, partition %d",
                      msg.partition)
            return
        due.add(msg.key, request["expires_at"].timestamp(), request["intent"]["agent_id"],
                msg.partition)

    pending = app.Table("pending-approvals", default=None, partitions=settings.partitions,
                        key_type=bytes, value_type=bytes, on_changelog_event=index_pending)
    pending_view = _BytesKeyed(pending)

    # Stateful limits (gatepass.core.limits): budget key -> BudgetLedger, written only in the
    # key's partition (agent keys by the intents agent, owner/department keys by the budget
    # agent); intent id -> BudgetHold while its owner/department budgets answer.
    ledgers = app.Table("budget-ledgers", default=None, partitions=settings.partitions,
                        key_type=bytes, value_type=bytes)
    ledgers_view = _BytesKeyed(ledgers)
    held = ApprovalTimer()

    async def index_holds(event: Any) -> None:
        msg = event.message
        if msg.value is None:
            held.discard(msg.key)
            return
        try:
            hold = rt.schemas.budget_hold.decode(msg.value)
            agent_id = rt.schemas.decision_record.decode(hold["record"])["intent"]["agent_id"]
        except Exception:
            log.error("unreadable budget hold in the changelog, partition %d", msg.partition)
            return
        held.add(msg.key, hold["held_at"].timestamp() + BUDGET_WAIT_SECONDS, agent_id,
                 msg.partition)

    holds = app.Table("budget-holds", default=None, partitions=settings.partitions,
                      key_type=bytes, value_type=bytes, on_changelog_event=index_holds)
    holds_view = _BytesKeyed(holds)

    def write_ledgers(updates: Mapping[str, bytes]) -> None:
        for budget, value in updates.items():
            ledgers[budget.encode()] = value

    def keep_answer(out: IntentOutcome, partition: int, agent: bytes | None) -> None:
        """The decision in the `decided` table; a PENDING request in `pending-approvals`."""
        if out.remember is not None:
            memo_key = out.remember[0].encode()
            decided[memo_key] = out.remember[1]
            expiry.add(partition, memo_key, time.time())
        if out.pending is not None and out.expires_at is not None:
            memo_key = out.pending[0].encode()
            pending[memo_key] = out.pending[1]
            due.add(memo_key, out.expires_at.timestamp(), (agent or b"").decode(), partition)

    metrics = rt.metrics

    async def send(records: list[Outgoing], source: str = "") -> Any:
        """Everything but the verdicts first; a verdict only once its decision's audit
        record is acknowledged (fail closed: no answer goes out unrecorded). Returns the
        audit record's delivery future, if there was one."""
        audit: tuple[Outgoing, Any] | None = None
        for r in records:
            if r.topic == t.dead_letter:
                metrics.dead_letters.labels(topic=source).inc()
            if r.topic == t.verdicts:
                continue
            delivered = await send_one(r)
            if r.topic == t.audit:
                audit = (r, delivered)
        for r in records:
            if r.topic != t.verdicts:
                continue
            if audit is None:
                await send_one(r)
            else:
                guard.send_after(r, *audit)
        return audit[1] if audit is not None else None

    async def queue(r: Outgoing) -> Any:
        return await app.producer.send(r.topic, r.key, r.value, r.partition, None, None)

    guard = DeliveryGuard(queue, lambda: _producer_flush(), on_resend=metrics.records_resent.inc)
    producer_flush: list[Any] = []

    async def _producer_flush() -> None:
        await producer_flush[0]()

    def guard_commits() -> None:
        """faust flushes the producer before each commit: make that flush the guard's."""
        if not producer_flush:
            producer_flush.append(app.producer.flush)
            app.producer.flush = guard.flush  # type: ignore[method-assign]

    async def send_one(r: Outgoing) -> Any:
        """Retry until the record is queued: while the broker is away the agent waits.

        An exception here would crash the agent, and faust would resume it *after* the
        event in hand and the events it had buffered, and later commit past them: intents
        without an answer (seen in the fault suite during a hard broker restart). Whether
        the queued record is then acknowledged is the DeliveryGuard's business.
        """
        guard_commits()
        delay = 0.1
        while True:
            try:
                return await guard.send(r)
            except (KafkaError, ProducerSendError, TimeoutError) as exc:
                log.warning("could not queue a record for %s (%s); retrying in %.1fs",
                            r.topic, type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    hold_until = time.monotonic() + settings.ready_wait.total_seconds()

    async def read_skipped(topic: str, partition: int, start: int, end: int
                           ) -> list[tuple[int, bytes | None, bytes | None, float | None]]:
        """Records the consumer skipped (see SkipGuard), read directly; the broker may be
        away: wait, never skip."""
        log.error("the consumer skipped records %d..%d of %s partition %d; reading them "
                  "directly", start, end - 1, topic, partition)
        delay = 0.5
        while True:
            try:
                return await asyncio.get_running_loop().run_in_executor(
                    None, read_range, settings, topic, partition, start, end)
            except Exception as exc:
                log.warning("reading skipped records failed (%s); retrying in %.1fs",
                            type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    def repaired(topic: str, n: int) -> None:
        metrics.skipped_records.labels(topic=topic).inc(n)
        if topic == t.intents:
            metrics.skipped_recovered.inc(n)

    intent_guard = SkipGuard(t.intents, read_skipped, repaired)
    approval_guard = SkipGuard(t.approval_decisions, read_skipped, repaired)
    request_guard = SkipGuard(t.budget_requests, read_skipped, repaired)
    reply_guard = SkipGuard(t.budget_replies, read_skipped, repaired)
    orphan_guard = SkipGuard(t.orphan_checks, read_skipped, repaired)
    guards = (intent_guard, approval_guard, request_guard, reply_guard, orphan_guard)

    async def answer_intent(key: bytes | None, value: bytes | None, partition: int,
                            offset: int, timestamp: float | None) -> None:
        # The broker's append time picks the policy (the intents topic is LogAppendTime).
        appended_at = datetime.fromtimestamp(timestamp, UTC) if timestamp else None
        if appended_at is not None and not rt.book.knows(appended_at):
            # A push for this moment may be on its way: wait for the policy topic, then the
            # pipeline denies state_not_ready if it still cannot tell.
            await rt.policy_loader.wait_until_known(appended_at, POLICY_WAIT_SECONDS)
        out = rt.pipeline.on_intent(key, value, partition=partition, offset=offset,
                                    memo=decided_in(partition), appended_at=appended_at,
                                    ledgers=ledgers_view, holds=holds_view,
                                    audited=audited_in(partition))
        write_ledgers(out.ledgers)
        if out.hold is not None:
            hold_key = out.hold[0].encode()
            holds[hold_key] = out.hold[1]
            held.add(hold_key, time.time() + BUDGET_WAIT_SECONDS, (key or b"").decode(),
                     partition)
        keep_answer(out, partition, key)
        for old in expiry.due(partition, time.time()):
            if old in decided:
                del decided[old]  # a tombstone in this partition's changelog
        delivered = await send(out.records, t.intents)
        if delivered is not None and out.intent_id is not None:
            audited.note(partition, out.intent_id, delivered)
        if out.record is not None:
            log_decision(log, out.record)
        if out.duplicate:
            metrics.redelivered.inc()
        elif out.intent_id is not None and out.hold is None:
            metrics.observe_decision(out.decision, out.reasons, out.requested_at, out.issued)

    @app.agent(intents)
    async def decide_intents(stream: Any) -> None:
        async for event in stream.events():
            msg = event.message
            if not rt.loader.ready and time.monotonic() < hold_until:
                # Just started: hold (not deny) while identity loads, up to ready_wait.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(rt.loader.wait_ready(),
                                           hold_until - time.monotonic())
            await gate(msg.partition)
            await intent_guard.handle(msg.key, msg.value, msg.partition, msg.offset,
                                      msg.timestamp, answer_intent)
            metrics.handled()

    async def settle_approval(key: bytes | None, value: bytes | None, partition: int,
                              offset: int, timestamp: float | None) -> None:
        out = rt.pipeline.on_approval(key, value, partition=partition, offset=offset,
                                      pending=pending_view, decided=decided_in(partition),
                                      ledgers=ledgers_view)
        # Every state change before any await: no other event can see one without another.
        write_ledgers(out.ledgers)
        if out.remember is not None:
            memo_key = out.remember[0].encode()
            decided[memo_key] = out.remember[1]
            expiry.add(partition, memo_key, time.time())
        if out.finish is not None:
            pending_key = out.finish.encode()
            if pending_key in pending:
                del pending[pending_key]
            due.discard(pending_key)
        await send(out.records, t.approval_decisions)
        if out.record is not None:
            log_decision(log, out.record)
        if out.final is not None and out.reason is not None:
            metrics.approval_outcomes.labels(decision=out.final, reason=out.reason).inc()
            metrics.observe_decision(out.final, (out.reason,), None, out.final == "ALLOW")
        if out.alert is not None:
            metrics.approval_alerts.labels(reason=out.alert).inc()

    @app.agent(approval_decisions)
    async def settle_approvals(stream: Any) -> None:
        async for event in stream.events():
            msg = event.message
            await rt.loader.wait_ready()  # who may approve is read from the identity view
            await gate(msg.partition)
            await approval_guard.handle(msg.key, msg.value, msg.partition, msg.offset,
                                        msg.timestamp, settle_approval)

    budget_requests, budget_replies = raw_topic(t.budget_requests), raw_topic(t.budget_replies)

    async def settle_budget(key: bytes | None, value: bytes | None, partition: int,
                            offset: int, timestamp: float | None) -> None:
        out = rt.pipeline.on_budget(key, value, partition=partition, offset=offset,
                                    ledgers=ledgers_view)
        write_ledgers(out.ledgers)
        if out.refused is not None:
            metrics.limits_refused.labels(scope=(key or b"").decode().split(":")[0]).inc()
        await send(out.records, t.budget_requests)

    @app.agent(budget_requests)
    async def settle_budgets(stream: Any) -> None:
        """Owner and department budgets: reservations applied in order in the key's partition."""
        async for event in stream.events():
            msg = event.message
            await request_guard.handle(msg.key, msg.value, msg.partition, msg.offset,
                                       msg.timestamp, settle_budget)

    async def finish_budget(key: bytes | None, value: bytes | None, partition: int,
                            offset: int, timestamp: float | None) -> None:
        out = rt.pipeline.on_budget_reply(key, value, partition=partition, offset=offset,
                                          holds=holds_view, decided=decided_in(partition),
                                          ledgers=ledgers_view)
        write_ledgers(out.ledgers)
        keep_answer(out, partition, key)
        if out.unhold is not None:
            hold_key = out.unhold.encode()
            if hold_key in holds:
                del holds[hold_key]
            held.discard(hold_key)
        await send(out.records, t.budget_replies)
        if out.record is not None:
            log_decision(log, out.record)
        if out.intent_id is not None and not out.duplicate and out.decision:
            metrics.observe_decision(out.decision, out.reasons, out.requested_at, out.issued)

    @app.agent(budget_replies)
    async def finish_budgets(stream: Any) -> None:
        """A held intent's budgets answered (or the timer gave up): its one verdict now."""
        async for event in stream.events():
            msg = event.message
            await gate(msg.partition)
            await reply_guard.handle(msg.key, msg.value, msg.partition, msg.offset,
                                     msg.timestamp, finish_budget)

    @app.timer(interval=1.0)
    async def expire_holds() -> None:
        """A hold whose budgets did not answer in time is denied (and its spend released)."""
        for key, agent_id, partition, _ in held.take_due(time.time()):
            await send_one(rt.pipeline.budget_timeout(key.decode(), agent_id, partition))

    @app.timer(interval=1.0)
    async def expire_approvals() -> None:
        """Requests expire on the processor's own clock, even if nothing else arrives, and end
        at once when their agent or its owner is no longer active: a tick goes into the
        agent's partition, so it is ordered with the decisions there."""
        now = datetime.now(UTC)

        def still_approvable(agent_id: str) -> bool:
            return approvable(agent_id, rt.identity, now)

        for key, agent_id, partition, expires_at in due.take_due(time.time(),
                                                                 still_approvable):
            tick = rt.schemas.approval_timeout.encode({
                "request_id": "", "intent_id": key.decode(), "agent_id": agent_id,
                "expires_at": datetime.fromtimestamp(expires_at, UTC),
                "raised_at": datetime.now(UTC)})
            await send_one(Outgoing(t.approval_decisions, agent_id.encode(), tick, partition))

    dispatcher = NoticeDispatcher(
        settings, rt.schemas, rt.approval_key, rt.channels(),
        on_result=lambda channel, ok: metrics.approval_notices.labels(
            channel=channel, result="delivered" if ok else "failed").inc())

    @app.task
    async def notify_approvers() -> None:
        await dispatcher.run()

    async def raise_orphan_alert(key: bytes | None, value: bytes | None, partition: int,
                                 offset: int, timestamp: float | None) -> None:
        received = time.monotonic()
        records, remember = rt.pipeline.on_orphan_check(key, value, partition=partition,
                                                        offset=offset,
                                                        memo=alerted_in(partition))
        if remember and owner_unknown(remember[0][1]):
            # Measured from when the check was written (a backlog of checks shares one
            # wait), never from later than its arrival.
            age = max(0.0, time.time() - timestamp) if timestamp else 0.0
            since = received - age + UNKNOWN_OWNER_GRACE_SECONDS
            if not await rt.loader.wait_complete(
                    since, max(0.0, since - received) + UNKNOWN_OWNER_WAIT_SECONDS):
                log.warning("orphan check %s[%d]@%d: identity view not complete within %.0fs; "
                            "alerting on what it holds", t.orphan_checks, partition, offset,
                            UNKNOWN_OWNER_WAIT_SECONDS)
            records, remember = rt.pipeline.on_orphan_check(key, value, partition=partition,
                                                            offset=offset,
                                                            memo=alerted_in(partition))
        for agent_id, alert in remember:
            alerted[agent_id.encode()] = alert
        if remember:  # one check, one trigger
            trigger = rt.schemas.orphan_alert.decode(remember[0][1])["trigger"]
            metrics.orphan_alerts.labels(trigger=trigger).inc(len(remember))
        await send(records, t.orphan_checks)

    def owner_unknown(alert: bytes) -> bool:
        owner = rt.schemas.orphan_alert.decode(alert).get("owner")
        return isinstance(owner, str) and bool(owner) and rt.identity.principal(owner) is None

    @app.agent(orphan_checks)
    async def raise_orphan_alerts(stream: Any) -> None:
        async for event in stream.events():
            msg = event.message
            await rt.loader.wait_ready()
            await gate(msg.partition)
            await orphan_guard.handle(msg.key, msg.value, msg.partition, msg.offset,
                                      msg.timestamp, raise_orphan_alert)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def forget_revoked(app: Any, revoked: Any, **kwargs: Any) -> None:
        for tp in revoked:
            if tp.topic == t.intents:
                expiry.forget_partition(tp.partition)
            if tp.topic == t.approval_decisions:
                due.forget_partition(tp.partition)
            if tp.topic == t.budget_replies:
                held.forget_partition(tp.partition)
            if tp.topic == t.intents:
                audited.forget(tp.partition)
                gates.pop(tp.partition, None)  # read back again if it comes back
                recovered.forget(tp.partition)
            for guard in guards:
                if tp.topic == guard.topic:
                    guard.offsets.forget(tp.partition)

    @app.task
    async def load_identity() -> None:
        await rt.loader.run()

    @app.task
    async def follow_policy() -> None:
        await rt.policy_loader.run()

    async def flush() -> None:
        await app.producer.flush()

    async def send_lifecycle(records: list[Outgoing]) -> None:
        await send(records, t.identity)

    fanout = LifecycleFanout(settings, rt.loader, rt.pipeline, send_lifecycle, flush)

    @app.task
    async def fan_out_lifecycle() -> None:
        await fanout.run()

    async def sync_keys() -> None:
        """JWKS file and keys topic follow the key store (retired keys leave after grace)."""
        try:
            await asyncio.get_running_loop().run_in_executor(
                None, sync_public_keys, settings, rt.schemas, rt.keystore, datetime.now(UTC))
        except BrokerError as exc:  # the next tick retries; until then /readyz says not ready
            log.warning("public keys not synced: %s", exc)
            return
        rt.keys_published = True

    app.task(sync_keys)
    app.timer(interval=60.0)(sync_keys)

    @app.page("/.well-known/jwks.json")
    async def jwks(web: Any, request: Any) -> Any:
        return web.json(rt.keystore.jwks(now=datetime.now(UTC)))

    def assigned() -> set[Any]:
        """The stream consumer's partitions; none until its thread has started (a probe can
        come first: it then got a 500 instead of the answer "not ready")."""
        consumer = app.consumer
        try:
            return set(consumer.assignment()) if consumer else set()
        except ConsumerNotStarted:
            return set()

    def assigned_intents() -> list[Any]:
        """Our partitions of the intents topic, in partition order."""
        return sorted((tp for tp in assigned() if tp.topic == t.intents),
                      key=lambda tp: tp.partition)

    async def intent_lag() -> dict[int, int]:
        """Intents on our partitions not yet handled. Counted from the last one handled, not
        from the fetch position: records fetched into faust's buffers and never handled (a
        stream that stopped while its consumer thread went on fetching) still count."""
        lag: dict[int, int] = {}
        consumer = app.consumer
        for tp in assigned_intents():
            position = await consumer.position(tp)
            highwater = consumer.highwater(tp)
            handled = intent_guard.offsets.next_offset(tp.partition)
            if handled is not None and (position is None or handled < position):
                position = handled
            if position is not None and highwater is not None:
                lag[tp.partition] = max(0, highwater - position)
        return lag

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        metrics.identity_records.set(len(rt.identity))
        metrics.identity_ready.set(1 if rt.loader.ready else 0)
        metrics.remembered.set(len(expiry))
        metrics.approvals_pending.set(len(due))
        metrics.budget_holds.set(len(held))
        metrics.key_age.set((datetime.now(UTC) - rt.keystore.active_since).total_seconds())
        metrics.lag.clear()
        for partition, lag in (await intent_lag()).items():
            metrics.lag.labels(topic=t.intents, partition=str(partition)).set(lag)
        return web.bytes(metrics.exposition(), content_type=CONTENT_TYPE)

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        """Alive, unless intents wait on our partitions and none was decided for a while."""
        lag = sum((await intent_lag()).values())
        if metrics.stalled(lag, after=STALL_AFTER_SECONDS):
            return web.json({"status": "stalled", "worker": rt.name, "lag": lag}, status=503)
        return web.json({"status": "alive", "worker": rt.name, "lag": lag})

    guard_of = {g.topic: g for g in guards}

    def buffered(tp: Any) -> int | None:
        """Records of `tp` waiting in the stream's buffer (faust's conductor index; None if
        that cannot be read)."""
        try:
            index: Any = getattr(app.topics, "_tp_index")  # noqa: B009 (private: faust 0.15)
            return sum(ch.queue.qsize() for ch in index.get(tp, ()))
        except Exception:
            return None

    def settling() -> bool:
        """Rebalancing or recovering tables: no record is expected to reach the agents."""
        return bool(app.rebalancing or getattr(app, "in_recovery", False))

    @app.timer(interval=STRANDED_CHECK_SECONDS)
    async def refetch_stranded() -> None:
        """Records the consumer fetched but the agents never got, at the end of a partition
        (see SkipGuard.stranded): seek the consumer back to the first of them."""
        if settling():
            return
        await refetch_stranded_records(
            guard_of, assigned(), buffered=buffered,
            position=lambda tp: asyncio.wait_for(app.consumer.position(tp), 5.0),
            seek=app.consumer.seek, still_for=STRANDED_AFTER_SECONDS, on_refetch=repaired)

    ends = HighWatermarks({"bootstrap.servers": settings.bootstrap,
                           "group.id": settings.app_id, "enable.auto.commit": False,
                           "logger": KAFKA_LOG})
    atexit.register(ends.close)

    async def waiting() -> int | None:
        """Intents on our partitions not yet handled, for the watchdog: the broker's end
        offsets (our own connection) minus the agent's next offset, so that neither goes
        through faust's consumer thread."""
        partitions = [tp.partition for tp in assigned_intents()]
        if not partitions:
            return 0
        handled = {p: intent_guard.offsets.next_offset(p) for p in partitions}
        try:
            highs = await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(
                None, ends.highs, t.intents, [p for p, n in handled.items() if n is not None]),
                15.0)
        except Exception:  # not known now (the broker is away): judge later
            return None
        return waiting_intents(highs, handled)

    def holding() -> bool:
        """Just started, identity still loading: intents are held on purpose (ready_wait)."""
        return not rt.loader.ready and time.monotonic() < hold_until

    def busy() -> bool:
        """No intent is expected to be decided now (the watchdog waits for progress)."""
        return settling() or holding()

    def busy_progress() -> Any:
        """Changes while a rebalance, a table recovery or the first identity load moves on
        (see StallWatchdog)."""
        try:
            recovery = app.tables.recovery  # type: ignore[attr-defined]
            return (app.consumer_generation_id, bool(app.rebalancing),
                    bool(getattr(app, "in_recovery", False)),
                    sum(v for v in recovery.active_offsets.values() if v is not None),
                    sum(v for v in recovery.standby_offsets.values() if v is not None),
                    rt.loader.ready, rt.loader.loaded_records + rt.loader.rejected_records)
        except Exception:  # not readable (faust changed): never judged stuck while busy
            return None

    def describe() -> str:
        """The worker's own account of why intents might not be reaching the agents."""
        paused = {(tp.topic, tp.partition)
                  for tp in getattr(app.consumer, "_paused_partitions", ())}  # faust 0.15
        parts = ", ".join(
            f"{tp.partition}: next {intent_guard.offsets.next_offset(tp.partition)}, "
            f"buffered {buffered(tp)}, still {intent_guard.offsets.still_for(tp.partition):.0f}s"
            + (", paused" if (tp.topic, tp.partition) in paused else "")
            for tp in assigned_intents())
        return (f"rebalancing={bool(app.rebalancing)} "
                f"in_recovery={bool(getattr(app, 'in_recovery', False))} "
                f"holding={holding()} flow={'on' if app.flow_control.is_active() else 'off'} "
                f"generation={app.consumer_generation_id} paused={len(paused)} "
                f"intents partitions: [{parts}]")

    async def broker_answers() -> bool:
        def ask() -> bool:
            meta = admin_client(settings).list_topics(t.intents, timeout=10)
            return t.intents in meta.topics and meta.topics[t.intents].error is None

        try:
            return await asyncio.get_running_loop().run_in_executor(None, ask)
        except Exception:
            return False

    watchdog = StallWatchdog(
        metrics, settings.stall_exit.total_seconds(), lag=waiting,
        broker_answers=broker_answers,
        busy=busy, progress=busy_progress, describe=describe,
        dump=lambda: dump_stacks(sys.stderr, asyncio.get_running_loop()), exit=os._exit)

    @app.timer(interval=5.0)
    async def watch_for_a_stall() -> None:
        await watchdog.check()

    @app.page("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        # Ready = identity loaded and this worker owns partitions (it is deciding).
        owned = len(assigned())
        fresh = rt.identity_ready()
        ready = fresh and rt.keys_published and owned > 0 and not app.rebalancing
        body = {"ready": ready, "identity_loaded": rt.loader.ready, "identity_fresh": fresh,
                "keys_published": rt.keys_published,
                "assigned_partitions": owned, "identities": len(rt.identity),
                "policy_version": rt.policy.version,
                "policy_known": rt.book.knows(datetime.now(UTC)),
                "policy_refused": sorted(rt.book.refused),
                "remembered_intents": len(expiry)}
        return web.json(body, status=200 if ready else 503)

    install_approval_pages(app, settings, rt.approval_key)
    return app, rt
