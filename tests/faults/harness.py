"""Pieces of the fault suite: an own broker it may kill, a paced intent stream, an independent
verdict reader, and the reconciliation of what the topics hold afterwards.

Nothing here goes through the worker's code paths: intents are written and verdicts, audit
records and orphan alerts read with plain confluent-kafka clients.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import signal
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from gatepass.codec.avro import RecordCodec, schemas
from gatepass.codec.records import intent_to_record
from gatepass.config import Settings
from gatepass.core import Intent
from gatepass.kafka_local import LocalKafka
from gatepass.transport import partition_for, watermarks
from gatepass.worker.process import WorkerProcess
from support.broker import free_ports, gatepass_home

KAFKA_LOG = logging.getLogger("gatepass.faults.kafka")  # librdkafka's lines, captured by pytest
AUDIENCE = "procurement-api"


# -- the broker this suite owns --------------------------------------------------------------

class FaultBroker:
    """A LocalKafka on free ports in a temporary home (jars from the shared cache).

    Every broker process it starts is remembered, so close() stops each one by its process
    group whatever the pid file says, and removes the data only once none of them is left
    (a data directory removed under a live broker makes it halt: "all log dirs failed").
    """

    def __init__(self, home: Path) -> None:
        port, controller_port = free_ports(2)
        self.kafka = LocalKafka(home=home, port=port, controller_port=controller_port,
                                heap="512m", dist_dir=gatepass_home() / "dist")
        self.pids: list[int] = []

    @property
    def bootstrap(self) -> str:
        return self.kafka.bootstrap

    def up(self) -> None:
        status = self.kafka.up(timeout=120)
        if status.pid is not None and status.pid not in self.pids:
            self.pids.append(status.pid)

    def hard_kill(self) -> None:
        """SIGKILL the broker's process group (no controlled shutdown) and wait until gone."""
        pid = self.kafka.status().pid
        assert pid is not None, "fault broker not running"
        _kill_group(pid)

    def clean_restart(self) -> None:
        assert self.kafka.down(timeout=60), "fault broker was not running"
        self.up()

    def close(self) -> None:
        try:
            self.kafka.down(timeout=30)
        finally:
            for pid in self.pids:
                if self._runs_here(pid):
                    _kill_group(pid)  # a broker the pid file lost track of, if any
            alive = [pid for pid in self.pids if self._runs_here(pid)]
            if alive:
                KAFKA_LOG.error("fault broker processes %s survived SIGKILL; its data in %s "
                                "is kept", alive, self.kafka.data_dir)
            else:
                # The data goes; the broker's logs stay with the test's tmp_path.
                shutil.rmtree(self.kafka.data_dir, ignore_errors=True)

    def _runs_here(self, pid: int) -> bool:
        """Whether `pid` is still a live broker process of this home (not a reused pid)."""
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        zombie = stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X")
        return not zombie and str(self.kafka.config_file).encode() in cmdline


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)  # our child: reap it so no zombie is left


# -- workers -----------------------------------------------------------------------------------

@dataclass
class Fleet:
    """The workers of one app id; every process ever started is stopped by close()."""

    settings: Settings
    started: list[WorkerProcess] = field(default_factory=list)

    def start(self, *, web_port: int | None = None, wait: float = 120.0) -> WorkerProcess:
        settings = self.settings.with_(web_port=web_port) if web_port else self.settings
        log = self.settings.home / "logs" / f"worker-{len(self.started)}.log"
        worker = WorkerProcess(settings, log_file=log).start()
        self.started.append(worker)
        worker.wait_ready(timeout=wait)
        return worker

    def close(self) -> None:
        for worker in self.started:
            worker.stop(timeout=10, kill=True)


# -- the intent stream ----------------------------------------------------------------------

@dataclass(frozen=True)
class Agent:
    agent_id: str
    owner: str


def make_agents(count: int, per_owner: int, tag: str) -> list[Agent]:
    return [Agent(f"fa-{tag}-{i}", f"fo-{tag}-{i // per_owner}") for i in range(count)]


class IntentStream(threading.Thread):
    """Writes `total` intents at `rate` per second, round robin over the agents.

    Every fifth intent asks for an action outside the procurement scope (DENY), the rest for
    a purchase order within it (ALLOW while the owner is active).
    """

    def __init__(self, settings: Settings, agents: list[Agent], total: int, rate: float) -> None:
        super().__init__(name="fault-intents", daemon=True)
        self.settings, self.agents, self.total, self.rate = settings, agents, total, rate
        self.agent_of: dict[str, str] = {}
        self.acked: set[str] = set()
        self.failed: dict[str, str] = {}
        self.produced = 0
        self.finished_at: float | None = None
        self._lock = threading.Lock()
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        codec = schemas().intent
        n_part = self.settings.partitions
        producer = Producer({"bootstrap.servers": self.settings.bootstrap, "acks": "all",
                             "enable.idempotence": True, "linger.ms": 5,
                             "logger": KAFKA_LOG})

        def delivered(intent_id: str, err: Any, _msg: Any) -> None:
            with self._lock:
                if err is None:
                    self.acked.add(intent_id)
                else:
                    self.failed[intent_id] = str(err)

        start = time.monotonic()
        for n in range(self.total):
            if self._halt.is_set():
                break
            delay = start + n / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            agent = self.agents[n % len(self.agents)]
            denied = n % 5 == 0
            intent = Intent(intent_id=str(uuid.uuid4()),
                            agent_id=agent.agent_id,
                            action="cloud.provision" if denied else "purchase_order.create",
                            resource="vendor:ACME", audience=AUDIENCE,
                            amount=None if denied else Decimal("120.00"),
                            currency=None if denied else "USD", requested_at=datetime.now(UTC))
            self.agent_of[intent.intent_id] = agent.agent_id
            producer.produce(self.settings.topics.intents, key=agent.agent_id.encode(),
                             value=codec.encode(intent_to_record(intent)),
                             partition=partition_for(agent.agent_id, n_part),
                             on_delivery=functools.partial(delivered, intent.intent_id))
            producer.poll(0)
            self.produced = n + 1
        producer.flush(120)
        self.finished_at = time.monotonic()


# -- the independent reader --------------------------------------------------------------------

@dataclass(frozen=True)
class SeenVerdict:
    decision: str
    credential_id: str | None
    reasons: tuple[str, ...]
    decided_at: datetime


STUCK_S = 10.0


class VerdictReader(threading.Thread):
    """Reads every verdict partition from the beginning for as long as it runs."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="fault-verdicts", daemon=True)
        self.settings = settings
        self.verdicts: dict[str, list[SeenVerdict]] = defaultdict(list)
        self.records = 0
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self.error: BaseException | None = None

    def answered(self) -> int:
        with self._lock:
            return len(self.verdicts)

    def answered_ids(self) -> set[str]:
        with self._lock:
            return set(self.verdicts)

    def stop(self) -> None:
        self._halt.set()
        self.join(30)

    def run(self) -> None:
        try:
            self._read()
        except BaseException as exc:  # surfaced by the test, not lost in the thread
            self.error = exc

    def _read(self) -> None:
        topic = self.settings.topics.verdicts
        codec = schemas().verdict
        # next offset per partition, so a consumer that stops fetching can be replaced
        positions = dict.fromkeys(range(self.settings.partitions), OFFSET_BEGINNING)
        while not self._halt.is_set():
            self._read_until_stuck(topic, codec, positions)

    def _read_until_stuck(self, topic: str, codec: RecordCodec,
                          positions: dict[int, int]) -> None:
        """Read until halted, or until records wait on the topic but none arrive for
        STUCK_S (seen once after a clean broker restart: librdkafka never fetched again);
        then the caller starts a fresh consumer at the same positions."""
        consumer = Consumer({"bootstrap.servers": self.settings.bootstrap,
                             "group.id": f"fault-reader-{uuid.uuid4().hex[:6]}",
                             "enable.auto.commit": False, "logger": KAFKA_LOG})
        try:
            consumer.assign([TopicPartition(topic, p, o) for p, o in positions.items()])
            quiet_since = time.monotonic()
            while not self._halt.is_set():
                batch = consumer.consume(500, timeout=0.2)
                for msg in batch:
                    if msg.error() or msg.value() is None:
                        continue
                    positions[msg.partition() or 0] = (msg.offset() or 0) + 1
                    rec = codec.decode(msg.value())
                    seen = SeenVerdict(rec["decision"], rec["credential_id"],
                                       tuple(rec["reasons"]), rec["decided_at"])
                    with self._lock:
                        self.verdicts[rec["intent_id"]].append(seen)
                        self.records += 1
                if batch:
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since > STUCK_S:
                    quiet_since = time.monotonic()
                    try:
                        behind = [p for p, o in positions.items()
                                  if watermarks(consumer, topic, p)[1] > max(o, 0)]
                    except Exception as exc:  # this client cannot even ask: start over
                        KAFKA_LOG.warning("verdict reader cannot read end offsets (%s); "
                                          "reconnecting", type(exc).__name__)
                        return
                    if behind:
                        KAFKA_LOG.warning("verdict reader stuck behind on %s; "
                                          "reconnecting", behind)
                        return
        finally:
            consumer.close()


def read_to_end(settings: Settings, topic: str, codec: RecordCodec,
                timeout: float = 60.0) -> list[dict[str, Any]]:
    """Every record of a topic up to the end offsets seen now (bounded by `timeout`)."""
    consumer = Consumer({"bootstrap.servers": settings.bootstrap,
                         "group.id": f"fault-audit-{uuid.uuid4().hex[:6]}",
                         "enable.auto.commit": False, "logger": KAFKA_LOG})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        ends = {p: watermarks(consumer, topic, p)[1] for p in meta.partitions}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        positions = dict.fromkeys(ends, 0)
        records: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while any(positions[p] < ends[p] for p in ends) and time.monotonic() < deadline:
            for msg in consumer.consume(1000, timeout=0.2):
                if msg.error():
                    continue
                positions[msg.partition()] = (msg.offset() or 0) + 1
                if msg.value() is not None:
                    records.append(codec.decode(msg.value()))
        missing = {p: ends[p] - positions[p] for p in ends if positions[p] < ends[p]}
        assert not missing, f"{topic}: could not read to the end within {timeout}s: {missing}"
        return records
    finally:
        consumer.close()


# -- reconciliation -------------------------------------------------------------------------

@dataclass
class Offboarding:
    owner: str
    event_time: datetime   # the LifecycleEvent's event time
    acked_at: datetime     # when the broker acknowledged it (LifecyclePublisher.publish returned)


@dataclass
class Reconciliation:
    streamed: int
    answered: int
    verdict_records: int
    lost: list[str]
    duplicates: int                  # verdict records repeating the intent's first answer
    contradicting: dict[str, list[SeenVerdict]]
    late_allows: list[str]           # ALLOW decided past an owner's offboarding + bound
    inactive_allows: list[str]       # ALLOW audit records whose facts say owner not active
    alerts_per_event: dict[tuple[str, str, Any], int]  # alert records per (agent, owner event)
    # distinct raises per (agent, owner event): an alert's `detected_at` is set when it is
    # raised, so a byte-identical copy (a write resent after a broker error) is one raise
    raises_per_event: dict[tuple[str, str, Any], set[Any]]
    unalerted_agents: list[str]
    unexpected_alerts: list[str]

    @property
    def repeated_alerts(self) -> dict[tuple[str, str, Any], int]:
        """(agent, owner event) pairs alerted more than once (not copies of one alert)."""
        return {k: len(r) for k, r in self.raises_per_event.items() if len(r) > 1}

    @property
    def alert_copies(self) -> int:
        """Alert records that repeat an alert byte for byte (same id, same detection time)."""
        return sum(self.alerts_per_event.values()) - \
            sum(len(r) for r in self.raises_per_event.values())


def reconcile(*, acked: set[str], agent_of: dict[str, str], verdicts: dict[str, list[SeenVerdict]],
              audit: list[dict[str, Any]], alerts: list[dict[str, Any]], agents: list[Agent],
              offboarded: dict[str, Offboarding], bound_s: float) -> Reconciliation:
    """Compare what was streamed with what the topics hold (pure: no Kafka, no clock)."""
    owner_of = {a.agent_id: a.owner for a in agents}
    ours = {iid: v for iid, v in verdicts.items() if iid in agent_of}
    lost = sorted(acked - set(ours))
    contradicting = {iid: vs for iid, vs in ours.items()
                     if len({(v.decision, v.credential_id) for v in vs}) > 1}
    duplicates = sum(len(vs) - 1 for iid, vs in ours.items() if iid not in contradicting)

    def too_late(agent: str, decided_at: datetime) -> bool:
        off = offboarded.get(owner_of.get(agent, ""))
        return off is not None and (decided_at - off.acked_at).total_seconds() > bound_s

    late = {iid for iid, vs in ours.items() for v in vs
            if v.decision == "ALLOW" and too_late(agent_of[iid], v.decided_at)}
    inactive = []
    for rec in audit:
        if rec["decision"] != "ALLOW":
            continue
        iid, agent = rec["intent"]["intent_id"], rec["intent"]["agent_id"]
        if rec["facts"].get("owner_status") != "active":
            inactive.append(iid)
        if too_late(agent, rec["decided_at"]):
            late.add(iid)

    per_event: dict[tuple[str, str, Any], int] = defaultdict(int)
    raises: dict[tuple[str, str, Any], set[Any]] = defaultdict(set)
    alerted_agents, unexpected = set(), []
    for alert in alerts:
        owner = owner_of.get(alert["agent_id"])
        if owner is None:
            continue  # not one of this run's agents
        if owner not in offboarded:
            unexpected.append(alert["agent_id"])
            continue
        key = (alert["agent_id"], alert["owner"], alert["owner_status_at"])
        per_event[key] += 1
        # what tells one raise from another: when, from which check (a copy repeats them all)
        raises[key].add((alert["alert_id"], alert["detected_at"], alert.get("trigger"),
                         alert.get("intent_id")))
        if alert["owner_status"] == "offboarded":
            alerted_agents.add(alert["agent_id"])
    should = {a.agent_id for a in agents if a.owner in offboarded}
    return Reconciliation(
        streamed=len(acked), answered=len(acked) - len(lost),
        verdict_records=sum(len(vs) for vs in ours.values()), lost=lost,
        duplicates=duplicates, contradicting=contradicting, late_allows=sorted(late),
        inactive_allows=sorted(inactive), alerts_per_event=dict(per_event),
        raises_per_event=dict(raises),
        unalerted_agents=sorted(should - alerted_agents), unexpected_alerts=sorted(unexpected))
