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
    assert not m.stalled(0, after=0.0)  # idle is not stalled
    m.last_progress = time.monotonic() - 60
    assert m.stalled(5, after=30.0)
    m.observe_decision("ALLOW", ("allowed",), None, issued=True)
    assert not m.stalled(5, after=30.0)  # progress resets it
