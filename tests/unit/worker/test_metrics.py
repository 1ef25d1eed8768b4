"""WorkerMetrics: counting decisions and judging a stalled consumer."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from prometheus_client.parser import text_string_to_metric_families

from gatepass.worker.metrics import WorkerMetrics


def test_each_reason_of_a_decision_is_counted_and_latency_observed() -> None:
    m = WorkerMetrics()
    m.observe_decision("DENY", ("agent_inactive", "owner_inactive"),
                       datetime.now(UTC) - timedelta(milliseconds=20), issued=False)
    m.observe_decision("ALLOW", ("allowed",), datetime.now(UTC), issued=True)
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value
           for f in text_string_to_metric_families(m.exposition().decode()) for s in f.samples}
    assert got[("gatepass_decisions_total", (("decision", "DENY"),
                                             ("reason", "owner_inactive")))] == 1
    assert got[("gatepass_decisions_total", (("decision", "DENY"),
                                             ("reason", "agent_inactive")))] == 1
    assert got[("gatepass_passes_issued_total", ())] == 1
    assert got[("gatepass_decision_latency_seconds_count", ())] == 2
    assert got[("gatepass_decision_latency_seconds_sum", ())] >= 0.02


def test_stalled_only_when_records_wait_and_nothing_moved() -> None:
    m = WorkerMetrics()
    t0 = time.monotonic()
    assert not m.stalled(0, after=30.0, now=t0)  # idle is not stalled
    assert not m.stalled(5, after=30.0, now=t0 + 1)  # records wait: the clock starts
    assert not m.stalled(5, after=30.0, now=t0 + 30)
    assert m.stalled(5, after=30.0, now=t0 + 31.5)  # waiting 30.5 s, nothing decided
    m.observe_decision("ALLOW", ("allowed",), None, issued=True)
    assert not m.stalled(5, after=30.0, now=time.monotonic() + 1)  # progress resets it


def test_the_first_intent_after_a_long_idle_spell_is_not_a_stall() -> None:
    m = WorkerMetrics()
    m.last_progress = time.monotonic() - 3600  # an hour without intents
    now = time.monotonic()
    assert not m.stalled(1, after=30.0, now=now)
    assert not m.stalled(0, after=30.0, now=now + 0.1)  # decided (lag back to 0)
    assert not m.stalled(1, after=30.0, now=now + 40)  # a new wait starts its own clock
    assert m.stalled(1, after=30.0, now=now + 71)


def test_a_busy_worker_that_keeps_deciding_is_never_stalled() -> None:
    m = WorkerMetrics()
    now = time.monotonic()
    for i in range(10):
        m.last_progress = now + 40 * i - 1  # a decision a second before each look
        assert not m.stalled(500, after=30.0, now=now + 40 * i)


def test_an_intent_handled_without_a_new_decision_still_counts_as_moving() -> None:
    # A replay of redelivered intents answers from memory: no new decision, but no stall.
    m = WorkerMetrics()
    now = time.monotonic()
    m.last_progress = now - 3600
    assert not m.stalled(9, after=30.0, now=now)
    m.handled()
    assert not m.stalled(9, after=30.0, now=time.monotonic() + 31)
