"""The worker's faust consumer fetches with a short wait (see gatepass.transport.faust_consumer)."""

from __future__ import annotations

import asyncio

import faust
import pytest

from gatepass.transport.faust_consumer import FETCH_MAX_WAIT_MS, use_short_fetch_wait


def _app(name: str) -> faust.App:
    return faust.App(name, broker="kafka://127.0.0.1:1", autodiscover=False,
                     web_enabled=False)


def _fetch_wait(app: faust.App) -> int:
    async def build() -> int:  # aiokafka's consumer is made inside a running loop
        thread = app.consumer._new_consumer_thread()
        consumer = thread._create_worker_consumer(app.transport)
        return int(consumer._fetch_max_wait_ms)

    return asyncio.run(build())


def test_faust_alone_waits_a_second_and_a_half() -> None:
    """What the patch is for: if faust ever makes this configurable, use that instead."""
    assert _fetch_wait(_app("gatepass-test-plain")) == 1500


def test_the_worker_consumer_waits_briefly() -> None:
    app = _app("gatepass-test-short")
    use_short_fetch_wait(app)
    assert _fetch_wait(app) == FETCH_MAX_WAIT_MS < 1500


def test_too_late_once_the_consumer_exists() -> None:
    app = _app("gatepass-test-late")
    assert app.consumer is not None
    with pytest.raises(RuntimeError):
        use_short_fetch_wait(app)
