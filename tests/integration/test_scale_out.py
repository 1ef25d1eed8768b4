"""Two workers in one group share the partitions; a third joining and leaving (a rebalance)
never gives an intent two different verdicts or none."""

from __future__ import annotations

import uuid
from concurrent.futures import Future
from typing import Any

import pytest

from support.broker import free_ports
from support.stack import running_stack, verdicts_for

pytestmark = pytest.mark.integration
AUDIENCE = "procurement-api"


def test_two_workers_share_the_load_through_a_rebalance(kafka_bootstrap: str,
                                                        tmp_path: Any) -> None:
    with running_stack(kafka_bootstrap, tmp_path) as stack:
        agents = [f"fleet-{i}-{uuid.uuid4().hex[:4]}" for i in range(24)]
        for agent in agents:
            stack.register(agent, f"owner-of-{agent}")
        first = stack.start_worker()
        second = stack.start_worker(web_port=free_ports(1)[0])
        assignment = [first.readiness(), second.readiness()]
        assert all(state and state["assigned_partitions"] > 0 for state in assignment), \
            assignment
        pending: list[tuple[str, Future[Any]]] = []
        with stack.client(audience=AUDIENCE, timeout=60) as gp:
            for round_ in range(3):
                for i, agent in enumerate(agents):
                    action = "cloud.provision" if i % 5 == 0 else "vendor.read"
                    intent = gp.intent(action, "vendor:ACME", agent_id=agent)
                    pending.append((intent.intent_id, gp.submit(intent)))
                if round_ == 0:
                    second.stop()  # a rebalance while intents are in flight
                if round_ == 1:
                    stack.start_worker(web_port=free_ports(1)[0], wait=False)
            answers = {iid: fut.result(90) for iid, fut in pending}
        ids = set(answers)
        verdicts = verdicts_for(stack.settings, ids, timeout=30)
    assert len(ids) == 3 * len(agents)
    by_id: dict[str, set[tuple[str, str | None]]] = {}
    for v in verdicts:
        by_id.setdefault(v["intent_id"], set()).add((v["decision"], v["credential_id"]))
    assert set(by_id) == ids  # none without an answer
    assert all(len(outcomes) == 1 for outcomes in by_id.values())  # never two different ones
    for verdict in answers.values():
        assert verdict.decision in {"ALLOW", "DENY"}
        assert (verdict.decision == "DENY") == (verdict.reasons == ("out_of_scope",)), verdict
