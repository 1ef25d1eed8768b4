"""Producer settings of the worker's faust app that decisions depend on."""

from __future__ import annotations

from pathlib import Path

from gatepass.config import Settings
from gatepass.worker.app import create_app


def test_the_worker_producer_sends_at_once_and_waits_for_every_replica(tmp_path: Path) -> None:
    """No linger: an answer is two produce hops (audit record, then verdict), and a 2 ms
    linger on each was 4 ms of every intent's latency at low load (docs/benchmarks.md).
    Under load, one request in flight per broker batches what waits behind it anyway."""
    app, _rt = create_app(Settings(home=tmp_path, bootstrap="127.0.0.1:1",
                                   topic_prefix="test-settings."))
    sent_with = app.producer._settings_default()  # what faust hands to aiokafka
    assert sent_with["linger_ms"] == 0
    assert sent_with["acks"] == -1
