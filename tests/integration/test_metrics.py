"""/metrics and /healthz of a real worker after a known sequence of intents."""

from __future__ import annotations

import urllib.request
import uuid
from decimal import Decimal

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gatepass.core import PrincipalStatus, PrincipalStatusChanged
from support.stack import Stack, read_topic

pytestmark = pytest.mark.integration
AUDIENCE = "procurement-api"


def scrape(stack: Stack, path: str = "/metrics") -> tuple[int, str, str]:
    url = f"{stack.settings.web_url}{path}"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_count_what_the_worker_did(stack: Stack) -> None:
    from datetime import UTC, datetime

    agent, owner = f"metered-{uuid.uuid4().hex[:6]}", f"owner-{uuid.uuid4().hex[:6]}"
    stack.register(agent, owner)
    with stack.client(agent_id=agent, audience=AUDIENCE, timeout=20) as gp:
        intent = gp.intent("purchase_order.create", "vendor:ACME", amount=Decimal("10.00"))
        assert gp.submit(intent).result(20).decision == "ALLOW"
        assert gp.submit(intent).result(20).decision == "ALLOW"  # a redelivery
        assert gp.authorize("cloud.provision", "gpu").reasons == ("out_of_scope",)
        stack.produce_raw(stack.settings.topics.intents, agent.encode(), b"garbage")
        read_topic(stack.settings, stack.settings.topics.dead_letter, None,
                   lambda rs: len(rs) >= 1)
        stack.publisher().publish(PrincipalStatusChanged(
            principal_id=owner, status=PrincipalStatus.OFFBOARDED,
            event_time=datetime.now(UTC), source="hr"))
        read_topic(stack.settings, stack.settings.topics.orphans, None, lambda rs: len(rs) >= 1)
        assert gp.authorize("vendor.read", "vendor:ACME").reasons == ("owner_inactive",)

    status, content_type, text = scrape(stack)
    assert status == 200 and content_type.startswith("text/plain")
    got = samples(text)

    def value(name: str, **labels: str) -> float:
        return got.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("gatepass_decisions_total", decision="ALLOW", reason="allowed") == 1
    assert value("gatepass_decisions_total", decision="DENY", reason="out_of_scope") == 1
    assert value("gatepass_decisions_total", decision="DENY", reason="owner_inactive") == 1
    assert value("gatepass_redelivered_intents_total") == 1
    assert value("gatepass_passes_issued_total") == 1
    assert value("gatepass_dead_letters_total", topic=stack.settings.topics.intents) == 1
    assert value("gatepass_orphan_alerts_total", trigger="owner_deactivated") == 1
    assert value("gatepass_decision_latency_seconds_count") == 3
    assert value("gatepass_identity_ready") == 1
    assert value("gatepass_identity_state_size") >= 2
    assert value("gatepass_remembered_intents") == 3
    assert 0 <= value("gatepass_signing_key_age_seconds") < 3600
    lags = [v for (name, _), v in got.items() if name == "gatepass_consumer_lag"]
    assert len(lags) == stack.settings.partitions and all(v == 0 for v in lags)
    # nothing secret is ever a metric label or value
    assert "eyJ" not in text

    status, _, body = scrape(stack, "/healthz")
    assert status == 200 and '"alive"' in body
