"""A worker restart (graceful or killed) keeps every verdict: a redelivered intent gets the
same verdict from the recovered `decided` table, never a second, different one."""

from __future__ import annotations

import time
import uuid
from decimal import Decimal
from typing import Any

import pytest

from gatepass.core import PrincipalStatus, PrincipalStatusChanged
from support.stack import running_stack, verdicts_for

pytestmark = pytest.mark.integration
AUDIENCE = "procurement-api"


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
def test_redelivery_after_a_restart_gets_the_first_verdict(kafka_bootstrap: str,
                                                           tmp_path: Any, kill: bool) -> None:
    from datetime import UTC, datetime

    with running_stack(kafka_bootstrap, tmp_path) as stack:
        agent, owner = f"restart-bot-{uuid.uuid4().hex[:6]}", f"owner-{uuid.uuid4().hex[:6]}"
        stack.register(agent, owner)
        first_worker = stack.start_worker()
        with stack.client(agent_id=agent, audience=AUDIENCE, timeout=30) as gp:
            intent = gp.intent("purchase_order.create", "vendor:ACME", amount=Decimal("75.00"))
            first = gp.submit(intent).result(30)
            assert first.decision == "ALLOW"
            if kill:
                # faust commits (and flushes the table's changelog) every second; a kill
                # inside that window is the fault suite's subject, not this test's.
                time.sleep(3)
            first_worker.stop(kill=kill)
            # Meanwhile the owner leaves: a fresh decision would now be a DENY.
            stack.publisher().publish(PrincipalStatusChanged(
                principal_id=owner, status=PrincipalStatus.OFFBOARDED,
                event_time=datetime.now(UTC), source="hr"))
            stack.start_worker()
            again = gp.submit(intent).result(60)
            fresh = gp.authorize("purchase_order.create", "vendor:ACME",
                                 amount=Decimal("75.00"))
    assert (again.decision, again.credential_id, again.credential) == \
        (first.decision, first.credential_id, first.credential)
    assert (fresh.decision, fresh.reasons) == ("DENY", ("owner_inactive",))
    verdicts = verdicts_for(stack.settings, {intent.intent_id}, at_least=2)
    assert len({(v["decision"], v["credential_id"]) for v in verdicts}) == 1


def test_an_answer_whose_table_write_was_lost_is_read_back_from_the_topic(
        kafka_bootstrap: str, tmp_path: Any) -> None:
    """A worker killed after writing a verdict but before the `decided` table's changelog
    write landed: the redelivered intent must get the same answer, not a fresh decision."""
    from datetime import UTC, datetime

    from confluent_kafka import Producer

    from gatepass.transport import partition_for

    with running_stack(kafka_bootstrap, tmp_path) as stack:
        agent, owner = f"lost-bot-{uuid.uuid4().hex[:6]}", f"owner-{uuid.uuid4().hex[:6]}"
        stack.register(agent, owner)
        worker = stack.start_worker()
        with stack.client(agent_id=agent, audience=AUDIENCE, timeout=30) as gp:
            intent = gp.intent("purchase_order.create", "vendor:ACME", amount=Decimal("75.00"))
            first = gp.submit(intent).result(30)
            assert first.decision == "ALLOW"
            time.sleep(3)  # committed, and the table write is on the changelog
            worker.stop()
            # Make the table forget the answer, as if its write had never landed.
            partition = partition_for(agent, stack.settings.partitions)
            producer = Producer({"bootstrap.servers": stack.settings.bootstrap})
            producer.produce(f"{stack.settings.app_id}-decided-changelog",
                             key=intent.intent_id.encode(), value=None, partition=partition)
            assert producer.flush(10) == 0
            # Identity changes: a fresh decision would now be a DENY.
            stack.publisher().publish(PrincipalStatusChanged(
                principal_id=owner, status=PrincipalStatus.OFFBOARDED,
                event_time=datetime.now(UTC), source="hr"))
            stack.start_worker()
            again = gp.submit(intent).result(60)  # the same intent delivered once more
    assert (again.decision, again.credential_id) == (first.decision, first.credential_id)
    verdicts = verdicts_for(stack.settings, {intent.intent_id}, at_least=2)
    assert {(v["decision"], v["credential_id"]) for v in verdicts} == {
        ("ALLOW", first.credential_id)}
