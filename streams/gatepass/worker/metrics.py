"""What a worker exposes at /metrics (Prometheus text format) and how it judges its health.

One registry per worker (not the process-global default), so what is exposed is exactly
what this module declares. Names follow Prometheus conventions: `gatepass_` prefix, base
units (seconds), `_total` for counters.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["CONTENT_TYPE", "WorkerMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4"  # the exposition format; its text is ASCII
# Decision latency buckets (seconds): a verdict is expected in milliseconds.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0)


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.decisions = Counter(
            "gatepass_decisions", "Verdicts decided, by decision and reason code.",
            ["decision", "reason"], registry=r)
        self.redelivered = Counter(
            "gatepass_redelivered_intents", "Intents answered again from remembered verdicts.",
            registry=r)
        self.decision_latency = Histogram(
            "gatepass_decision_latency_seconds",
            "From the intent's requested_at to its verdict being handed to the producer.",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.dead_letters = Counter(
            "gatepass_dead_letters", "Records sent to the dead-letter topic, by source topic.",
            ["topic"], registry=r)
        self.passes_issued = Counter(
            "gatepass_passes_issued", "Signed passes issued (redeliveries not counted).",
            registry=r)
        self.orphan_alerts = Counter(
            "gatepass_orphan_alerts", "Orphan alerts raised, by trigger.", ["trigger"],
            registry=r)
        self.identity_records = Gauge(
            "gatepass_identity_state_size", "Agents and principals in this worker's view.",
            registry=r)
        self.identity_ready = Gauge(
            "gatepass_identity_ready", "1 once the identity view has loaded, else 0.",
            registry=r)
        self.key_age = Gauge(
            "gatepass_signing_key_age_seconds", "Age of the active signing key.", registry=r)
        self.remembered = Gauge(
            "gatepass_remembered_intents", "Decided intents kept for redelivery.", registry=r)
        self.lag = Gauge(
            "gatepass_consumer_lag", "Intents not yet handled, per assigned partition.",
            ["topic", "partition"], registry=r)
        self.approvals_pending = Gauge(
            "gatepass_approvals_pending", "Requests waiting for their owner on this worker.",
            registry=r)
        self.approval_outcomes = Counter(
            "gatepass_approval_outcomes", "Final verdicts of approval requests, by reason.",
            ["decision", "reason"], registry=r)
        self.approval_alerts = Counter(
            "gatepass_approval_alerts", "Approval decision events refused, by reason.",
            ["reason"], registry=r)
        self.approval_notices = Counter(
            "gatepass_approval_notices", "Approval notices handed to a channel, by result.",
            ["channel", "result"], registry=r)
        self.records_resent = Counter(
            "gatepass_records_resent", "Records written again because the first write was "
            "not acknowledged before a commit.", registry=r)
        self.skipped_recovered = Counter(
            "gatepass_skipped_intents_recovered", "Intents the consumer skipped that the "
            "worker read and answered itself.", registry=r)
        self.skipped_records = Counter(
            "gatepass_skipped_records_recovered", "Records of any input topic the consumer "
            "skipped that the worker read and handled itself.", ["topic"], registry=r)
        self.limits_refused = Counter(
            "gatepass_limit_reservations_refused", "Owner and department budget reservations "
            "refused (limit_exceeded), by budget scope.", ["scope"], registry=r)
        self.budget_holds = Gauge(
            "gatepass_budget_holds", "Intents waiting for their owner/department budgets on "
            "this worker.", registry=r)
        self.last_progress = time.monotonic()
        self._waiting_since: float | None = None

    def observe_decision(self, decision: str, reasons: tuple[str, ...],
                         requested_at: datetime | None, issued: bool) -> None:
        for reason in reasons:
            self.decisions.labels(decision=decision, reason=reason).inc()
        if requested_at is not None:
            self.decision_latency.observe(
                max(0.0, (datetime.now(UTC) - requested_at).total_seconds()))
        if issued:
            self.passes_issued.inc()
        self.last_progress = time.monotonic()

    def handled(self) -> None:
        """An intent was handled (decided, answered again, held or dead-lettered): the
        stream moves, whatever the outcome."""
        self.last_progress = time.monotonic()

    def stalled(self, total_lag: int, *, after: float, now: float | None = None) -> bool:
        """Records have waited on assigned partitions for `after` seconds, as seen by the
        calls to this method, and none was handled (`handled`) or decided meanwhile.

        A consumer that stopped fetching (a known faust failure mode) looks alive otherwise.
        Measured from the first call that saw the wait, not from the last decision: after an
        hour without intents, the first one to arrive is not a stall of an hour.
        """
        now = time.monotonic() if now is None else now
        if total_lag <= 0:
            self._waiting_since = None
            return False
        if self._waiting_since is None or self.last_progress > self._waiting_since:
            self._waiting_since = now
        return now - self._waiting_since > after

    def waiting_for(self, now: float | None = None) -> float:
        """Seconds intents have waited with none handled, as last judged by `stalled`."""
        now = time.monotonic() if now is None else now
        if self._waiting_since is None or self.last_progress > self._waiting_since:
            return 0.0
        return now - self._waiting_since

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
