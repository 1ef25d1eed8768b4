"""SIGUSR1/SIGUSR2 to a live worker: a stack dump of threads and tasks, no values, and the
worker goes on deciding (mode's own handlers print local variables and open a debugger)."""

from __future__ import annotations

import signal
import uuid
from decimal import Decimal
from typing import Any

import pytest

from gatepass.worker.stackdump import DUMP_END, DUMP_START

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGUSR2], ids=["usr1", "usr2"])
def test_a_signal_dumps_stacks_without_values_and_the_worker_goes_on(
        stack: Any, sig: signal.Signals) -> None:
    worker = stack.workers[0]
    dump = worker.stack_dump(30, sig=sig)
    assert dump is not None, f"no stack dump after {sig.name}"
    assert dump.startswith(DUMP_START) and dump.endswith(DUMP_END)
    text = worker.log_file.read_text(errors="replace")
    assert "asyncio tasks ====" in dump
    assert "-- task " in dump and "awaiting:" in dump
    assert "LOCAL VARIABLES" not in text  # mode's own dump, which prints them, is not used
    agent, owner = f"sig-bot-{uuid.uuid4().hex[:6]}", f"owner-{uuid.uuid4().hex[:6]}"
    stack.register(agent, owner)
    with stack.client(agent_id=agent, audience="procurement-api", timeout=30) as gp:
        verdict = gp.authorize("purchase_order.create", "vendor:ACME", amount=Decimal("5"))
    assert verdict.decision == "ALLOW"
    assert worker.proc.poll() is None
