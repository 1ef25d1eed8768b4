"""The worker's probes answer before its consumer thread has started, as they do after.

A probe that came first used to hit faust's ConsumerNotStarted: a 500 page instead of the
answer "not ready", which a supervisor polling /readyz could not read (it happened in a
restart test on a slow machine).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from gatepass.config import Settings
from gatepass.worker.app import create_app


def _page(tmp_path: Path, path: str) -> Any:
    app, _rt = create_app(Settings(home=tmp_path, bootstrap="127.0.0.1:1",
                                   topic_prefix="test-probes."))
    assert app.consumer is not None and app.consumer._thread._consumer is None  # not started
    return asyncio.run(app.web.views[path].get(None))


def test_readyz_says_not_ready_before_the_consumer_starts(tmp_path: Path) -> None:
    resp = _page(tmp_path, "/readyz")
    body = json.loads(resp.body)
    assert resp.status == 503
    assert body["ready"] is False and body["assigned_partitions"] == 0


@pytest.mark.parametrize("path", ["/healthz", "/metrics"])
def test_health_and_metrics_answer_before_the_consumer_starts(tmp_path: Path,
                                                             path: str) -> None:
    assert _page(tmp_path, path).status == 200
