"""SIGUSR1/SIGUSR2 to a live worker: a stack dump of threads and tasks, no values, and the
worker goes on deciding (mode's own handlers print local variables and open a debugger)."""

from __future__ import annotations

import signal
import time
import uuid
from decimal import Decimal
from typing import Any

import pytest

pytestmark = pytest.mark.integration


def _wait_for_dumps(log: Any, count: int, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if text.count("==== end of stack dump ====") >= count:
            return text
        time.sleep(0.2)
    raise AssertionError(f"{count} stack dumps not in the worker log:\n{text[-3000:]}")


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGUSR2], ids=["usr1", "usr2"])
def test_a_signal_dumps_stacks_without_values_and_the_worker_goes_on(
        stack: Any, sig: signal.Signals) -> None:
    worker = stack.workers[0]
    before = worker.log_file.read_text(errors="replace").count("==== end of stack dump ====")
    worker.proc.send_signal(sig)
    text = _wait_for_dumps(worker.log_file, before + 1)
    dump = text.rsplit("==== gatepass stack dump: threads ====", 1)[1]
    assert "asyncio tasks ====" in dump
    assert "-- task " in dump and "awaiting:" in dump
    assert "LOCAL VARIABLES" not in text  # mode's own dump, which prints them, is not used
    agent, owner = f"sig-bot-{uuid.uuid4().hex[:6]}", f"owner-{uuid.uuid4().hex[:6]}"
    stack.register(agent, owner)
    with stack.client(agent_id=agent, audience="procurement-api", timeout=30) as gp:
        verdict = gp.authorize("purchase_order.create", "vendor:ACME", amount=Decimal("5"))
    assert verdict.decision == "ALLOW"
    assert worker.proc.poll() is None
