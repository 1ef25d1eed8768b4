"""Human approval end to end on a real broker: pending -> owner decides -> one final verdict.

Approvers get their one-time code through the inbox channel (the CLI's), exactly as a person
at the command line would; decisions go through ApprovalsClient, like `gatepass approvals`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from gatepass.approvals.client import ApprovalsClient, RequestView
from gatepass.approvals.inbox import read_inbox
from gatepass.codec.avro import schemas
from gatepass.core import PrincipalStatus, PrincipalStatusChanged
from gatepass.credentials import PassVerifier, load_jwks
from gatepass.sdk import GatepassClient, Verdict
from support.stack import Stack, read_topic, running_stack, verdicts_for

pytestmark = pytest.mark.integration
AUDIENCE = "procurement-api"
TIMEOUT = timedelta(seconds=12)  # the owner's time to decide, short for the tests
BIG = Decimal("50000.00")  # above the policy's approval threshold of 10,000 USD


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(kafka_bootstrap, tmp_path_factory.mktemp("approvals"),
                       approval_timeout=TIMEOUT) as s:
        s.start_worker()
        yield s


def _names() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:6]
    return f"procure-bot-{tag}", f"sarah-{tag}"


def _pending(gp: GatepassClient, amount: Decimal = BIG) -> Verdict:
    verdict = gp.authorize("purchase_order.create", "vendor:ACME", amount=amount)
    assert verdict.decision == "PENDING", verdict
    assert verdict.reasons == ("pending_approval",)
    assert verdict.credential is None and verdict.approval is not None
    return verdict


def _code(stack: Stack, approver: str, request_id: str, timeout: float = 20.0) -> str:
    """The approver's one-time code, as their inbox received it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stack.settings.approval_inbox.exists():
            for notice in read_inbox(stack.settings.approval_inbox, approver):
                if notice["request_id"] == request_id:
                    assert notice["link"].startswith(stack.settings.approval_base_url)
                    return str(notice["code"])
        time.sleep(0.2)
    raise AssertionError(f"no notice for {approver} within {timeout}s")


def _view(client: ApprovalsClient, intent_id: str) -> RequestView:
    view = client.find(intent_id=intent_id)
    assert view is not None, f"no approval request for {intent_id}"
    return view


def _decide(stack: Stack, verdict: Verdict, approver: str, *, approve: bool = True,
            code: str | None = None, decision_id: str | None = None) -> Any:
    with ApprovalsClient(stack.settings) as client:
        view = _view(client, verdict.intent_id)
        since = datetime.now(UTC)
        decision = client.submit(view, approver=approver, approve=approve,
                                 code=code or _code(stack, approver, view.request_id),
                                 channel="test", decision_id=decision_id)
        return decision, client.outcome(decision, since=since, timeout=30)


def _finals(stack: Stack, intent_id: str, at_least: int = 2) -> list[dict[str, Any]]:
    records = verdicts_for(stack.settings, {intent_id}, at_least=at_least, timeout=20)
    return [r for r in records if r["decision"] != "PENDING"]


def test_the_owner_approves_and_the_pass_names_them(stack: Stack) -> None:
    agent, owner = _names()
    stack.register(agent, owner)
    with stack.client(agent_id=agent, audience=AUDIENCE, timeout=20) as gp:
        pending = _pending(gp)
        assert pending.approval is not None
        assert pending.approval["why"] == [
            "amount 50000.00 USD is above the approval threshold of 10000.00 USD"]
        _, outcome = _decide(stack, pending, owner)
        assert outcome.accepted and outcome.decision == "ALLOW" and outcome.reason == "approved"
        final = gp.wait_final(pending, timeout=30)
    assert final.decision == "ALLOW" and final.reasons == ("approved",)
    assert final.approver == owner
    verifier = PassVerifier(load_jwks(f"{stack.settings.web_url}/.well-known/jwks.json"),
                            audience=AUDIENCE, issuer="gatepass")
    checked = verifier.verify(final.credential or "", action="purchase_order.create",
                              resource="vendor:ACME", amount=BIG, currency="USD")
    assert checked.approver == owner
    assert checked.claims["approval"]["request_id"] == pending.approval["request_id"]
    audit = read_topic(stack.settings, stack.settings.topics.audit, schemas().decision_record,
                       lambda rs: sum(r["intent"]["intent_id"] == pending.intent_id
                                      for r in rs) >= 2)
    mine = [r for r in audit if r["intent"]["intent_id"] == pending.intent_id]
    assert [r["decision"] for r in mine] == ["PENDING", "ALLOW"]
    assert mine[1]["approval"]["approver"] == owner
    assert mine[1]["approval"]["decided_at"] is not None


def test_the_owner_denies(stack: Stack) -> None:
    agent, owner = _names()
    stack.register(agent, owner)
    with stack.client(agent_id=agent, audience=AUDIENCE, timeout=20) as gp:
        pending = _pending(gp)
        _, outcome = _decide(stack, pending, owner, approve=False)
        final = gp.wait_final(pending, timeout=30)
    assert outcome.accepted and outcome.decision == "DENY"
    assert final.decision == "DENY" and final.reasons == ("approval_denied",)
    assert final.credential is None and final.approver == owner


def test_a_request_expires_on_the_processors_timer_without_traffic(stack: Stack) -> None:
    agent, owner = _names()
    stack.register(agent, owner)
    with stack.client(agent_id=agent, audience=AUDIENCE, timeout=20) as gp:
        pending = _pending(gp)
        # Nothing else is sent for this agent: only the worker's own timer can end it.
        final = gp.wait_final(pending, timeout=TIMEOUT.total_seconds() + 30)
    assert final.decision == "DENY" and final.reasons == ("approval_expired",)
    assert final.approver is None


def test_a_forged_decision_changes_nothing_and_alerts(stack: Stack) -> None:
    agent, owner = _names()
    stack.register(agent, owner)
    with stack.client(agent_id=agent, audience=AUDIENCE, timeout=20) as gp:
        pending = _pending(gp)
        forged, outcome = _decide(stack, pending, owner, code="A" * 22)
        assert not outcome.accepted and outcome.reason == "approval_forged"
        # someone else, with a code of their own, in the owner's name: also forged
        _, mallory = _decide(stack, pending, "mallory", code="B" * 22)
        assert mallory.reason == "approval_forged"
        # the request is still pending: the owner's real decision still counts
        _, outcome = _decide(stack, pending, owner)
        assert outcome.accepted and outcome.decision == "ALLOW"
        assert gp.wait_final(pending, timeout=30).decision == "ALLOW"
    alerts = read_topic(stack.settings, stack.settings.topics.approval_alerts,
                        schemas().approval_alert,
                        lambda rs: any(r["decision_id"] == forged.decision_id for r in rs))
    alert = next(r for r in alerts if r["decision_id"] == forged.decision_id)
    assert alert["reason"] == "approval_forged" and alert["agent_id"] == agent


def test_a_replayed_decision_cannot_flip_the_verdict(stack: Stack) -> None:
    agent, owner = _names()
    stack.register(agent, owner)
    with stack.client(agent_id=agent, audience=AUDIENCE, timeout=20) as gp:
        pending = _pending(gp)
        first, outcome = _decide(stack, pending, owner)
        assert outcome.accepted and outcome.decision == "ALLOW"
    code = _code(stack, owner, first.request_id)
    # a second decision with the owner's own, valid code: the first decision won
    _, second = _decide(stack, pending, owner, approve=False, code=code)
    assert not second.accepted and second.reason == "approval_replayed"
    # the winning decision delivered again: the same final verdict again, no alert
    _decide(stack, pending, owner, code=code, decision_id=first.decision_id)
    finals = _finals(stack, pending.intent_id, at_least=3)
    assert len(finals) == 2
    assert {(f["decision"], f["credential_id"]) for f in finals} == {
        ("ALLOW", finals[0]["credential_id"])}


def test_an_offboarded_owner_can_no_longer_approve(stack: Stack) -> None:
    agent, owner = _names()
    stack.register(agent, owner)
    with stack.client(agent_id=agent, audience=AUDIENCE, timeout=20) as gp:
        pending = _pending(gp)
        code = _code(stack, owner, pending.approval["request_id"] if pending.approval else "")
        stack.publisher().publish(PrincipalStatusChanged(
            principal_id=owner, status=PrincipalStatus.OFFBOARDED,
            event_time=datetime.now(UTC), source="hr-test"))
        # Nobody can approve for a departed owner: the processor ends the request at once,
        # well before its expiry, without any other event for this agent.
        final = gp.wait_final(pending, timeout=TIMEOUT.total_seconds() - 2)
        assert final.decision == "DENY" and final.reasons == ("owner_inactive",), final
        # Her approval afterwards is refused, and the SOC is told who tried.
        _, outcome = _decide(stack, pending, owner, code=code)
        assert not outcome.accepted and outcome.reason == "approver_inactive"
    assert all(v["decision"] != "ALLOW" for v in _finals(stack, pending.intent_id))


def test_approvals_list_shows_the_pending_request(stack: Stack) -> None:
    agent, owner = _names()
    stack.register(agent, owner)
    with stack.client(agent_id=agent, audience=AUDIENCE, timeout=20) as gp:
        pending = _pending(gp)
    with ApprovalsClient(stack.settings) as client:
        view = _view(client, pending.intent_id)
        assert view.pending and view.request["owner"] == owner
        assert list(view.request["approvers"]) == [owner]
        assert view.request["intent"]["amount"] == BIG


def test_a_pending_request_survives_a_killed_worker(kafka_bootstrap: str,
                                                    tmp_path: Path) -> None:
    with running_stack(kafka_bootstrap, tmp_path, approval_timeout=timedelta(seconds=90)) \
            as stack:
        agent, owner = _names()
        stack.register(agent, owner)
        first = stack.start_worker()
        with stack.client(agent_id=agent, audience=AUDIENCE, timeout=30) as gp:
            pending = _pending(gp)
            code = _code(stack, owner, pending.approval["request_id"]
                         if pending.approval else "")
            time.sleep(3)  # past faust's commit interval: the state is in the changelog
            first.stop(kill=True)
            stack.start_worker()  # recovers the pending request from the changelog
            _, outcome = _decide(stack, pending, owner, code=code)
            assert outcome.accepted and outcome.decision == "ALLOW"
            assert gp.wait_final(pending, timeout=30).decision == "ALLOW"
        finals = _finals(stack, pending.intent_id)
        assert len({(f["decision"], f["credential_id"]) for f in finals}) == 1


def test_the_owner_hears_through_the_signed_webhook(kafka_bootstrap: str,
                                                    tmp_path: Path) -> None:
    """A worker configured with a webhook POSTs a signed notice; its code approves."""
    import http.server
    import json
    import threading

    from gatepass.approvals.webhook import SIGNATURE_HEADER, verify_signature
    from gatepass.config import Secret

    received: list[tuple[dict[str, str], bytes]] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(({k: v for k, v in self.headers.items()}, body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    secret = "whsec-test-" + uuid.uuid4().hex
    url = f"http://127.0.0.1:{server.server_address[1]}/hooks/gatepass"
    try:
        with running_stack(kafka_bootstrap, tmp_path, approval_webhook_url=url,
                           approval_webhook_secret=Secret(secret)) as stack:
            stack.start_worker()
            agent, owner = _names()
            stack.register(agent, owner)
            with stack.client(agent_id=agent, audience=AUDIENCE, timeout=20) as gp:
                pending = _pending(gp)
                deadline = time.monotonic() + 30
                while not received and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert received, "no webhook call"
                headers, body = received[0]
                assert verify_signature(secret.encode(), headers[SIGNATURE_HEADER], body,
                                        now=time.time())
                notice = json.loads(body)
                assert notice["type"] == "gatepass.approval.requested"
                assert (notice["intent_id"], notice["approver"]) == (pending.intent_id, owner)
                assert notice["amount"] == "50000.00" and headers["Idempotency-Key"]
                _, outcome = _decide(stack, pending, owner, code=notice["code"])
                assert outcome.accepted and gp.wait_final(pending, 30).decision == "ALLOW"
            log = stack.workers[0].log_file.read_text()
            assert secret not in log and notice["code"] not in log
    finally:
        server.shutdown()
