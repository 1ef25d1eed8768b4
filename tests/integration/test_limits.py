"""Stateful limits on a real broker: concurrent intents never overspend (agent and
department budgets, the agents on different partitions), windows roll over, and a restarted
worker keeps what was spent (changelog-backed state)."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from gatepass.core import AgentRegistered, PrincipalStatus, PrincipalStatusChanged
from gatepass.policy import DEFAULT_POLICY_DIR
from gatepass.transport import partition_for
from support.stack import Stack, running_stack

pytestmark = pytest.mark.integration
LIMITS = '''
[approval.delegates]

[[limits]]
name = "agent-daily-spend"
scope = "agent"
measure = "amount"
max = "1000.00"
currency = "USD"
window = "1d"

[[limits]]
name = "department-daily-spend"
scope = "department"
measure = "amount"
max = "2000.00"
currency = "USD"
window = "1d"
actions = ["purchase_order.create"]

[[limits]]
name = "agent-reads"
scope = "agent"
measure = "count"
max = 3
window = "10s"
actions = ["vendor.read"]
'''


@pytest.fixture(scope="module")
def limited(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("limits")
    folder = home / "policies"
    shutil.copytree(DEFAULT_POLICY_DIR, folder)
    (folder / "gatepass.toml").write_text(LIMITS)
    with running_stack(kafka_bootstrap, home, policy_dir=folder) as s:
        s.start_worker()
        yield s


def team(stack: Stack, n: int) -> tuple[list[str], str]:
    """n agents of one department (spread over the partitions), each with its own owner."""
    tag = uuid.uuid4().hex[:6]
    department = f"dept-{tag}"
    agents = [f"buyer-{tag}-{i}" for i in range(n)]
    now = datetime.now(UTC)
    events: list[object] = []
    for agent in agents:
        owner = f"owner-{agent}"
        events.append(PrincipalStatusChanged(principal_id=owner, status=PrincipalStatus.ACTIVE,
                                             event_time=now, source="test"))
        events.append(AgentRegistered(agent_id=agent, owner=owner, purpose="procurement",
                                      department=department, event_time=now, source="test"))
    stack.publisher().publish(*events)  # type: ignore[arg-type]
    assert n == 1 or len({partition_for(a, stack.settings.partitions) for a in agents}) > 1
    return agents, department


def test_concurrent_orders_never_overspend_the_department(limited: Stack) -> None:
    agents, _ = team(limited, 4)
    time.sleep(1.5)  # the registrations reach the worker's identity view
    with limited.client(audience="procurement-api", timeout=60) as gp:
        # All 20 in flight at once: 5 orders of 300 per agent (1,500 each, 6,000 in all).
        futures = [gp.submit(gp.intent("purchase_order.create", f"po-{i}", amount="300.00",
                                       agent_id=agent))
                   for i in range(5) for agent in agents]
        verdicts = [f.result(timeout=90) for f in futures]
    assert len({v.intent_id for v in verdicts}) == 20
    allowed = [v for v in verdicts if v.decision == "ALLOW"]
    spent = Decimal("300") * len(allowed)
    # The department's 2,000: six orders fit, a seventh would not; no agent above 1,000.
    assert spent == Decimal("1800"), [(v.agent_id, v.decision, v.detail) for v in verdicts]
    for agent in agents:
        assert sum(1 for v in allowed if v.agent_id == agent) <= 3
    for v in verdicts:
        if v.decision == "DENY":
            assert v.reasons == ("limit_exceeded",) and v.credential is None
            assert "agent-daily-spend" in v.detail or "department-daily-spend" in v.detail
        else:
            assert v.credential is not None


def test_a_count_window_rolls_over(limited: Stack) -> None:
    agents, _ = team(limited, 1)
    time.sleep(1.5)
    # Start just after a 10-second boundary, so four reads land in one window.
    while time.time() % 10 > 1:
        time.sleep(0.1)
    window_end = (time.time() // 10 + 1) * 10
    with limited.client(agent_id=agents[0], audience="vendor-api", timeout=30) as gp:
        first = [gp.authorize("vendor.read", f"v-{i}") for i in range(4)]
        assert time.time() < window_end, "the test was too slow for one window"
        assert [v.decision for v in first] == ["ALLOW"] * 3 + ["DENY"]
        assert "agent-reads" in first[3].detail
        while time.time() < window_end + 0.2:  # the next window
            time.sleep(0.1)
        assert gp.authorize("vendor.read", "v-next").decision == "ALLOW"


def test_a_restarted_worker_remembers_what_was_spent(limited: Stack) -> None:
    agents, _ = team(limited, 1)
    time.sleep(1.5)
    with limited.client(agent_id=agents[0], audience="procurement-api", timeout=60) as gp:
        assert gp.authorize("purchase_order.create", "po-a", amount="900.00").allowed
    for worker in limited.workers:
        worker.stop()
    limited.workers.clear()
    limited.start_worker()
    with limited.client(agent_id=agents[0], audience="procurement-api", timeout=60) as gp:
        again = gp.authorize("purchase_order.create", "po-b", amount="200.00")
        assert (again.decision, again.reasons) == ("DENY", ("limit_exceeded",)), again
        assert "900" in again.detail
        assert gp.authorize("purchase_order.create", "po-c", amount="100.00").allowed
