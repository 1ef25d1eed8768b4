"""The agent SDK against a real worker: async authorize and the tool guard."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import pytest

from gatepass.errors import AuthorizationDenied
from gatepass.sdk import guard
from support.stack import Stack

pytestmark = pytest.mark.integration
AUDIENCE = "procurement-api"


def test_authorize_async_gets_the_verdict(stack: Stack) -> None:
    agent = f"async-bot-{uuid.uuid4().hex[:6]}"
    stack.register(agent, f"owner-{agent}")
    with stack.client(agent_id=agent, audience=AUDIENCE, timeout=20) as gp:
        async def both() -> list[str]:
            verdicts = await asyncio.gather(
                gp.authorize_async("vendor.read", "vendor:ACME"),
                gp.authorize_async("cloud.provision", "gpu"))
            return [v.decision for v in verdicts]

        assert asyncio.run(both()) == ["ALLOW", "DENY"]


def test_guard_hands_the_pass_to_the_tool_and_blocks_denied_calls(stack: Stack) -> None:
    agent = f"tool-bot-{uuid.uuid4().hex[:6]}"
    stack.register(agent, f"owner-{agent}")
    calls: list[tuple[str, Decimal, str]] = []
    with stack.client(agent_id=agent, timeout=20) as gp:
        @guard(gp, "purchase_order.create", resource=lambda vendor, total: f"vendor:{vendor}",
               amount=lambda vendor, total: total, audience=AUDIENCE)
        def place_order(vendor: str, total: Decimal, *, gatepass_pass: str) -> str:
            calls.append((vendor, total, gatepass_pass))
            return "ordered"

        assert place_order("ACME", Decimal("42.00")) == "ordered"
        with pytest.raises(AuthorizationDenied) as denied:
            place_order("ACME", Decimal("150000.00"))  # above the 100,000 USD ceiling
    assert denied.value.verdict.reasons == ("out_of_scope",)
    assert len(calls) == 1 and calls[0][2].count(".") == 2  # the tool got a compact JWS
