"""`gatepass demo`: the procure-bot story on a real broker, printed as a timeline.

Sarah registers procure-bot (purpose procurement). It orders $120 of supplies: ALLOW, and
the procurement API accepts the pass once and rejects its replay. It tries to provision
cloud infrastructure: DENY out_of_scope. A $50,000 order needs Sarah's approval: PENDING;
she opens the link from her notice and clicks Approve on the approval page (the demo drives
the page over HTTP, like her browser would): ALLOW naming her as approver, and the API takes
the pass. A second large order is pending when Sarah is offboarded: an orphan alert for
procure-bot reaches the SOC topic, the pending order ends DENY owner_inactive, and her click
on the page she still had open is refused (approver_inactive). Its next order: DENY
owner_inactive.
"""

from __future__ import annotations

import html
import http.cookiejar
import json
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from gatepass.approvals.inbox import read_inbox
from gatepass.codec.avro import schemas
from gatepass.config import Settings
from gatepass.core import AgentRegistered, PrincipalStatus, PrincipalStatusChanged
from gatepass.credentials import load_jwks
from gatepass.demo.procurement_api import AUDIENCE, ProcurementApi
from gatepass.sdk import GatepassClient, LifecyclePublisher, Verdict
from gatepass.transport import ensure_topics, watermarks
from gatepass.worker.process import WorkerProcess

__all__ = ["run_demo"]

AGENT, OWNER = "procure-bot", "sarah"
_PROPAGATION_S = 1.0  # identity changes reach every worker's view well within this


class Timeline:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def say(self, what: str) -> None:
        print(f"\n[{time.perf_counter() - self.t0:7.3f}s] {what}", flush=True)

    def result(self, text: str) -> None:
        print(f"           -> {text}", flush=True)

    def verdict(self, v: Verdict) -> None:
        latency = f"{v.latency_ms:.1f} ms" if v.latency_ms is not None else "-"
        self.result(f"{v.decision} [{', '.join(v.reasons)}] in {latency}"
                    + (f"  pass {v.credential_id}" if v.credential_id else ""))
        if v.policy_ids:
            self.result("Cedar policies: " + ", ".join(v.policy_ids))
        if v.detail:
            self.result(v.detail)


def _broker_answers(bootstrap: str) -> bool:
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except (OSError, ValueError):
        return False


def _post(url: str, token: str | None, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(  # noqa: S310 - our own http URL
        f"{url}/purchase-orders", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


class _Browser:
    """What the owner's browser does on the approval page: open the link from her notice
    (the page moves the secret out of the address bar into a cookie), then click a button."""

    def __init__(self) -> None:
        self._opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        self.url = ""
        self.page = ""

    def _fetch(self, req: urllib.request.Request) -> str:
        with self._opener.open(req, timeout=30) as resp:
            self.url = resp.geturl()
            self.page = resp.read().decode("utf-8")
        return self.page

    def open(self, link: str) -> str:
        return self._fetch(urllib.request.Request(link))  # noqa: S310 - our own http URL

    def click(self, decision: str) -> str:
        token = re.search(r'name="csrf" value="([^"]+)"', self.page)
        if token is None:
            raise RuntimeError("the page shows no form (the request is not pending)")
        body = urllib.parse.urlencode({"csrf": html.unescape(token.group(1)),
                                       "decision": decision}).encode()
        return self._fetch(urllib.request.Request(  # noqa: S310
            self.url, data=body, method="POST",
            headers={"Content-Type": "application/x-www-form-urlencoded"}))

    def says(self) -> str:
        """The page's heading and status line, as text."""
        parts = [re.search(r"<h1>(.*?)</h1>", self.page, re.S),
                 re.search(r'<p class="status[^"]*"[^>]*>(.*?)</p>', self.page, re.S)]
        return " - ".join(html.unescape(re.sub(r"<[^>]+>", "", m.group(1))).strip()
                          for m in parts if m)


def _notice_link(settings: Settings, approver: str, request_id: str,
                 timeout: float = 15.0) -> str | None:
    """The approval link the owner's inbox (the CLI channel) received for this request."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if settings.approval_inbox.exists():
            for notice in read_inbox(settings.approval_inbox, approver):
                if notice.get("request_id") == request_id:
                    return str(notice["link"])
        time.sleep(0.1)
    return None


def _final(gp: GatepassClient, pending: Verdict, human: float) -> Verdict | None:
    """The final verdict, if it came within `human` seconds (a person deciding)."""
    if human <= 0:
        return None
    final = gp.wait_final(pending, timeout=human)
    return None if "sdk_timeout" in final.reasons else final


def _try_code(settings: Settings, approver: str, pending: Verdict) -> str:
    """Decide with the approver's code from her inbox, as `gatepass approvals approve` does."""
    from gatepass.approvals.client import ApprovalsClient

    request_id = pending.approval["request_id"] if pending.approval else ""
    codes = [n["code"] for n in read_inbox(settings.approval_inbox, approver)
             if n.get("request_id") == request_id]
    if not codes:
        return "no code in her inbox"
    with ApprovalsClient(settings) as client:
        view = client.find(intent_id=pending.intent_id, agent_id=pending.agent_id)
        if view is None:
            return "request not found"
        since = datetime.now(UTC)
        decision = client.submit(view, approver=approver, approve=True, code=codes[0],
                                 channel="cli")
        outcome = client.outcome(decision, since=since, timeout=15)
    if outcome.accepted:
        return f"{outcome.decision} [{outcome.reason}]"
    return f"refused [{outcome.reason}]: {outcome.detail}"


class _OrphanWatch:
    """Listens on the orphan-alerts topic from its current end."""

    def __init__(self, settings: Settings) -> None:
        topic = settings.topics.orphans
        self._codec = schemas().orphan_alert
        self._consumer = Consumer({"bootstrap.servers": settings.bootstrap,
                                   "group.id": "gatepass-demo", "enable.auto.commit": False})
        meta = self._consumer.list_topics(topic, timeout=10).topics[topic]
        tps = []
        for p in meta.partitions:
            tps.append(TopicPartition(topic, p, watermarks(self._consumer, topic, p)[1]))
        self._consumer.assign(tps)

    def wait_for(self, agent: str, timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self._consumer.poll(0.05)
            if msg is None or msg.error():
                continue
            alert = self._codec.decode(msg.value())
            if alert["agent_id"] == agent:
                return alert
        return None

    def close(self) -> None:
        self._consumer.close()


def run_demo(settings: Settings, *, keep_running: bool = False,
             approve_by_hand: float = 0.0) -> int:
    tl = Timeline()
    broker = None
    tl.say(f"Kafka at {settings.bootstrap}")
    if not _broker_answers(settings.bootstrap):
        from gatepass.kafka_local import LocalKafka

        host, _, port = settings.bootstrap.partition(":")
        if host not in {"127.0.0.1", "localhost"}:
            print(f"gatepass: no broker answers at {settings.bootstrap}")
            return 2
        broker = LocalKafka(home=settings.home, port=int(port or 9092),
                            controller_port=int(port or 9092) + 1)
        status = broker.up()
        tl.result(f"started local Kafka {status.version} (pid {status.pid}); "
                  f"logs in {status.log_file}")
    else:
        tl.result("a broker is already running; using it")
    ensure_topics(settings)

    worker = WorkerProcess(settings, log_file=settings.home / "logs" / "worker.log")
    api: ProcurementApi | None = None
    watch: _OrphanWatch | None = None
    try:
        tl.say("starting the Gatepass worker")
        worker.start()
        state = worker.wait_ready()
        tl.result(f"ready: {state['identities']} identities loaded, Cedar policy "
                  f"{state['policy_version']} (policies/: gatepass policy validate "
                  f"policies); logs in {worker.log_file}")

        jwks_url = f"{settings.web_url}/.well-known/jwks.json"
        api = ProcurementApi(lambda: load_jwks(jwks_url), issuer=settings.issuer).start()
        tl.say(f"procurement API (a target system) at {api.url}, trusting {jwks_url}")

        publisher = LifecyclePublisher(bootstrap=settings.bootstrap,
                                       topic_prefix=settings.topic_prefix)
        now = datetime.now(UTC)
        tl.say(f"HR: {OWNER} is an active employee; she registers {AGENT} "
               "(purpose procurement: purchase orders up to $100,000, above $10,000 "
               "only with her approval)")
        publisher.publish(
            PrincipalStatusChanged(principal_id=OWNER, status=PrincipalStatus.ACTIVE,
                                   event_time=now, source="hr-demo"),
            AgentRegistered(agent_id=AGENT, owner=OWNER, purpose="procurement",
                            department="finance", contact=f"{OWNER}@example.com",
                            created_by=OWNER, event_time=now, source="idp-demo"))
        time.sleep(_PROPAGATION_S)

        with GatepassClient.from_settings(settings, agent_id=AGENT, audience=AUDIENCE) as gp:
            order = {"vendor": "ACME", "amount": "120.00", "currency": "USD"}
            tl.say(f"{AGENT} asks: purchase_order.create vendor:ACME $120.00")
            allowed = gp.authorize("purchase_order.create", "vendor:ACME",
                                   amount=Decimal("120.00"), currency="USD")
            tl.verdict(allowed)

            tl.say("procurement API receives the order with the pass")
            t = time.perf_counter()
            code, body = _post(api.url, allowed.credential, order)
            tl.result(f"HTTP {code} {body.get('order_id') or body.get('error')} "
                      f"(verified offline in {(time.perf_counter() - t) * 1000:.1f} ms)")

            tl.say("the same pass is presented again")
            code, body = _post(api.url, allowed.credential, order)
            tl.result(f"HTTP {code} {body.get('error')}: {body.get('message', '')}")

            tl.say(f"{AGENT} asks: cloud.provision gpu-cluster")
            tl.verdict(gp.authorize("cloud.provision", "gpu-cluster"))

            tl.say(f"{AGENT} asks: purchase_order.create vendor:GLOBEX $50,000.00 "
                   "(above the $10,000 approval threshold)")
            big = gp.authorize("purchase_order.create", "vendor:GLOBEX",
                               amount=Decimal("50000.00"), currency="USD")
            tl.verdict(big)
            approved: Verdict | None = None
            if big.pending and big.approval:
                link = _notice_link(settings, OWNER, big.approval["request_id"])
                tl.say(f"{OWNER}'s approval notice (her inbox; a webhook gets the same):")
                print(f"           {link}", flush=True)
                if approve_by_hand > 0:
                    tl.result(f"open it in a browser: the demo waits {approve_by_hand:.0f}s "
                              "for your click before clicking Approve itself")
                approved = _final(gp, big, approve_by_hand)
                if approved is None and link:
                    sarah = _Browser()
                    sarah.open(link)
                    tl.say(f"{OWNER} opens the page: {sarah.says() or 'the request'}")
                    tl.result(f"the secret left the address bar: {sarah.url}")
                    tl.say(f"{OWNER} clicks Approve")
                    sarah.click("approve")
                    tl.result(sarah.says())
                    approved = gp.wait_final(big, timeout=30)
                if approved is not None:
                    tl.say("the final verdict reaches the agent")
                    tl.verdict(approved)
                    if approved.approver:
                        tl.result(f"the pass names the approver: {approved.approver}")
                    code, body = _post(api.url, approved.credential,
                                       {"vendor": "GLOBEX", "amount": "50000.00",
                                        "currency": "USD"})
                    tl.result(f"procurement API: HTTP {code} "
                              f"{body.get('order_id') or body.get('error')}")

            tl.say(f"{AGENT} asks: purchase_order.create vendor:INITECH $75,000.00")
            second = gp.authorize("purchase_order.create", "vendor:INITECH",
                                  amount=Decimal("75000.00"), currency="USD")
            tl.verdict(second)
            still_open: _Browser | None = None
            if second.pending and second.approval:
                link = _notice_link(settings, OWNER, second.approval["request_id"])
                if link:
                    still_open = _Browser()
                    still_open.open(link)
                    tl.result(f"{OWNER} opens its approval page, but does not click yet")

            watch = _OrphanWatch(settings)
            tl.say(f"HR: {OWNER} leaves the company (offboarded)")
            t = time.perf_counter()
            publisher.publish(PrincipalStatusChanged(
                principal_id=OWNER, status=PrincipalStatus.OFFBOARDED,
                event_time=datetime.now(UTC), source="hr-demo"))
            alert = watch.wait_for(AGENT, timeout=15)
            if alert:
                tl.result(f"ORPHAN ALERT {alert['agent_id']}: owner {alert['owner']} is "
                          f"{alert['owner_status']} (trigger {alert['trigger']}), "
                          f"{(time.perf_counter() - t) * 1000:.0f} ms after the HR event")
            else:
                tl.result("no orphan alert within 15 s (see the worker log)")

            second_final = gp.wait_final(second, timeout=30) if second.pending else second
            tl.say("the pending $75,000 order, now that nobody can approve it")
            tl.verdict(second_final)
            refused = ""
            if still_open is not None:
                tl.say(f"{OWNER} clicks Approve on the page she still had open")
                try:
                    still_open.click("approve")
                except RuntimeError as exc:
                    tl.result(str(exc))
                else:
                    tl.result(still_open.says())
            if second.approval:
                tl.say(f"{OWNER} tries her one-time code on the command line "
                       "(gatepass approvals approve ...)")
                refused = _try_code(settings, OWNER, second)
                tl.result(refused)

            tl.say(f"{AGENT} asks again: purchase_order.create vendor:ACME $120.00")
            denied = gp.authorize("purchase_order.create", "vendor:ACME",
                                  amount=Decimal("120.00"), currency="USD")
            tl.verdict(denied)

        # Kafka clients end with their last reference; drop them before the broker stops,
        # or librdkafka reports the closed port on stderr.
        del gp, publisher
        ok = (allowed.allowed and denied.decision == "DENY"
              and "owner_inactive" in denied.reasons and alert is not None
              and big.pending and approved is not None and approved.allowed
              and approved.approver == OWNER
              and second_final.decision == "DENY" and "approver_inactive" in refused)
        tl.say("done. " + ("Every step behaved as expected." if ok else "UNEXPECTED RESULT."))
        print("\nSee every record: gatepass tail audit | denials | orphans | verdicts")
        return 0 if ok else 1
    finally:
        if watch:
            watch.close()
        if api:
            api.stop()
        if not keep_running:
            worker.stop()
            if broker is not None:
                broker.down()
        else:
            print(f"\nworker and broker left running: web {settings.web_url}, "
                  f"stop with `gatepass kafka down` and kill {worker.proc and worker.proc.pid}")


