"""Load drivers: a closed loop (a fixed number of intents in flight, each answer sends the next)
and an open loop (intents on a fixed schedule, whatever the answers do), plus the raw
confluent-kafka round trip that has the SDK's `submit(intent) -> Future` shape.

Latency in the open loop is taken from each intent's *scheduled* send time to the moment
its answer resolves the future in the client, so a sender that falls behind cannot hide
queueing (no coordinated omission); the SDK's own figure (from the actual send) is kept too.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from benchmarks.common import Progress, summarize_ms
from gatepass.codec.avro import schemas
from gatepass.codec.records import intent_to_record
from gatepass.core import Intent
from gatepass.transport import partition_for, watermarks

Submit = Callable[[Intent], "Future[Any]"]
MakeIntent = Callable[[int], Intent]


def classify(result: Any) -> str:
    decision = getattr(result, "decision", None)
    if decision is None:
        return "echoed"
    reasons = getattr(result, "reasons", ())
    return f"{decision}/{reasons[0] if reasons else ''}"


@dataclass
class ClosedLoopResult:
    window: int
    seconds: float
    answered: int  # in the measured window
    rate: float
    outcomes: dict[str, int]
    sent_total: int
    unanswered_after_drain: int
    latency: dict[str, Any]  # answer latency in the measured window (closed loop: queueing)

    def to_json(self) -> dict[str, Any]:
        return {"window": self.window, "seconds": round(self.seconds, 2),
                "answered": self.answered, "per_s": round(self.rate, 1),
                "outcomes": self.outcomes, "sent_total": self.sent_total,
                "unanswered_after_drain": self.unanswered_after_drain,
                "latency_in_loop": self.latency}


def closed_loop(submit: Submit, make: MakeIntent, *, window: int, warmup: float,
                seconds: float, progress: Progress, label: str,
                drain_timeout: float = 60.0) -> ClosedLoopResult:
    slots = threading.Semaphore(window)
    lock = threading.Lock()
    done_at: list[float] = []
    latencies: list[tuple[float, float]] = []
    outcomes: Counter[str] = Counter()
    state = {"sent": 0}
    t_start = time.perf_counter()
    t_measure, t_end = t_start + warmup, t_start + warmup + seconds

    def on_done(sent: float, fut: Future[Any]) -> None:
        now = time.perf_counter()
        try:
            kind = classify(fut.result())
        except Exception as exc:  # a failed future is an outcome too
            kind = f"error/{type(exc).__name__}"
        with lock:
            done_at.append(now)
            latencies.append((now, (now - sent) * 1000))
            outcomes[kind] += 1
        slots.release()

    def status() -> str:
        now = time.perf_counter()
        with lock:
            recent = sum(1 for t in done_at[-20000:] if t > now - 2.0) / 2.0
            answered = len(done_at)
        phase = "warm-up" if now < t_measure else "measuring"
        return (f"{phase}, {answered:,} answered, {recent:,.0f}/s now, "
                f"{state['sent'] - answered:,} in flight")

    with progress.ticker(label, status):
        n = 0
        while True:
            now = time.perf_counter()
            if now >= t_end:
                break
            if not slots.acquire(timeout=0.05):
                continue
            sent = time.perf_counter()
            fut = submit(make(n))
            fut.add_done_callback(functools.partial(on_done, sent))
            n += 1
            state["sent"] = n
        deadline = time.monotonic() + drain_timeout
        while time.monotonic() < deadline:
            with lock:
                if len(done_at) >= n:
                    break
            time.sleep(0.05)
    with lock:
        answered = sum(1 for t in done_at if t_measure <= t < t_end)
        in_window = [ms for t, ms in latencies if t_measure <= t < t_end]
        unanswered = n - len(done_at)
        counts = dict(outcomes)
    return ClosedLoopResult(window=window, seconds=seconds, answered=answered,
                            rate=answered / seconds, outcomes=counts, sent_total=n,
                            unanswered_after_drain=unanswered,
                            latency=summarize_ms(in_window))


@dataclass
class OpenLoopResult:
    rate: float
    seconds: float
    warmup: float
    sent: int
    answered: int
    unanswered_after_drain: int
    latencies_ms: list[float]  # scheduled send -> answer (or end of the wait), after warm-up
    sdk_latencies_ms: list[float]  # actual send -> answer (the SDK's Verdict.latency_ms)
    backlog: list[tuple[float, int, int]]  # (seconds since start, sent, answered)
    sender_behind_max_ms: float
    drain_seconds: float
    outcomes: dict[str, int] = field(default_factory=dict)

    @property
    def achieved_answer_rate(self) -> float:
        """Answers per second over the sending period (below the offered rate: a backlog)."""
        end = next((a for t, _s, a in self.backlog if t >= self.seconds), None)
        if end is None and self.backlog:
            end = self.backlog[-1][2]
        return (end or 0) / self.seconds if self.seconds else 0.0

    def to_json(self) -> dict[str, Any]:
        at_end = [b for b in self.backlog if b[0] <= self.seconds + 0.5]
        peak = max((s - a for _t, s, a in at_end), default=0)
        return {"offered_per_s": round(self.rate, 1), "seconds": self.seconds,
                "warmup_excluded_s": self.warmup, "sent": self.sent,
                "answered": self.answered,
                "unanswered_after_drain": self.unanswered_after_drain,
                "answered_per_s_while_sending": round(self.achieved_answer_rate, 1),
                "backlog_at_end_of_sending": peak,
                "drain_seconds_after_sending": round(self.drain_seconds, 2),
                "sender_behind_schedule_max_ms": round(self.sender_behind_max_ms, 2),
                "latency": summarize_ms(self.latencies_ms, self.unanswered_after_drain),
                "latency_from_actual_send": summarize_ms(self.sdk_latencies_ms,
                                                         self.unanswered_after_drain),
                "backlog_samples": [{"t_s": round(t, 1), "sent": s, "answered": a,
                                     "outstanding": s - a} for t, s, a in self.backlog],
                "outcomes": self.outcomes}


def open_loop(submit: Submit, make: MakeIntent, *, rate: float, seconds: float,
              warmup: float, progress: Progress, label: str,
              drain_timeout: float | None = None) -> OpenLoopResult:
    total = max(1, int(rate * seconds))
    scheduled = [0.0] * total
    sent_at = [0.0] * total
    answered_at = [0.0] * total
    lock = threading.Lock()
    outcomes: Counter[str] = Counter()
    counts = {"sent": 0, "answered": 0}
    backlog: list[tuple[float, int, int]] = []
    behind_max = 0.0
    start = time.perf_counter() + 0.05

    def on_done(i: int, fut: Future[Any]) -> None:
        now = time.perf_counter()
        try:
            kind = classify(fut.result())
        except Exception as exc:
            kind = f"error/{type(exc).__name__}"
        answered_at[i] = now
        with lock:
            counts["answered"] += 1
            outcomes[kind] += 1

    stop_sampling = threading.Event()

    def sample() -> None:
        while not stop_sampling.wait(1.0):
            with lock:
                backlog.append((time.perf_counter() - start, counts["sent"],
                                counts["answered"]))

    def status() -> str:
        with lock:
            s, a = counts["sent"], counts["answered"]
        return f"{s:,}/{total:,} sent at {rate:,.0f}/s, {a:,} answered, {s - a:,} outstanding"

    sampler = threading.Thread(target=sample, name="bench-backlog", daemon=True)
    with progress.ticker(label, status):
        sampler.start()
        i = 0
        while i < total:
            now = time.perf_counter()
            due = min(total, int((now - start) * rate) + 1)
            if i < due:
                behind_max = max(behind_max, (now - (start + i / rate)) * 1000)
            while i < due:
                scheduled[i] = start + i / rate
                sent_at[i] = time.perf_counter()
                fut = submit(make(i))
                fut.add_done_callback(functools.partial(on_done, i))
                i += 1
                with lock:
                    counts["sent"] = i
            pause = start + i / rate - time.perf_counter()
            if pause > 0:
                time.sleep(min(pause, 0.01))
        finished = time.perf_counter()
        with lock:
            outstanding = counts["sent"] - counts["answered"]
        limit = drain_timeout if drain_timeout is not None else max(30.0, outstanding / 200)
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            with lock:
                if counts["answered"] >= total:
                    break
            time.sleep(0.05)
        drained = time.perf_counter() - finished
        stop_sampling.set()
        sampler.join()
    with lock:
        backlog.append((time.perf_counter() - start, counts["sent"], counts["answered"]))
        answered = counts["answered"]
    first = int(warmup * rate)
    # An intent still unanswered when the wait ended counts with the time waited so far:
    # the percentiles it reaches are then lower bounds (`unanswered` in the summary).
    gave_up = time.perf_counter()
    lat = [((answered_at[k] or gave_up) - scheduled[k]) * 1000 for k in range(first, total)]
    sdk = [((answered_at[k] or gave_up) - sent_at[k]) * 1000 for k in range(first, total)]
    return OpenLoopResult(rate=rate, seconds=seconds, warmup=warmup, sent=total,
                          answered=answered, unanswered_after_drain=total - answered,
                          latencies_ms=lat, sdk_latencies_ms=sdk, backlog=backlog,
                          sender_behind_max_ms=behind_max,
                          drain_seconds=drained, outcomes=dict(outcomes))


class RawRoundTrip:
    """confluent-kafka produce -> consume of the encoded intent on one topic, nothing between.

    The producer and consumer are configured like the SDK's, and the intent is encoded the
    same way, so the difference to Gatepass is the processor (and one more hop).
    """

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self._codec = schemas().intent
        self._pending: dict[str, Future[float]] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        quiet = {"log_level": 4}
        self._producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", **quiet,
                                   "enable.idempotence": True, "linger.ms": 1})
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused",
                                   **quiet, "enable.auto.commit": False,
                                   "fetch.wait.max.ms": 10, "fetch.min.bytes": 1})
        meta = self._consumer.list_topics(topic, timeout=10).topics[topic]
        self._partitions = len(meta.partitions)
        self._consumer.assign([TopicPartition(topic, p, watermarks(self._consumer, topic, p)[1])
                               for p in sorted(meta.partitions)])
        self._thread = threading.Thread(target=self._poll, name="raw-roundtrip", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(0)
            first = self._consumer.poll(0.05)
            if first is None:
                continue
            for msg in [first, *self._consumer.consume(num_messages=500, timeout=0)]:
                value = msg.value()
                if msg.error() or value is None:
                    continue
                # The intent id is the record's first field, after the 10-byte header and
                # its length byte (see echo.ID_AT).
                with self._lock:
                    fut = self._pending.pop(value[11:47].decode(), None)
                if fut is not None:
                    fut.set_result(time.perf_counter())

    def submit(self, intent: Intent) -> Future[float]:
        fut: Future[float] = Future()
        value = self._codec.encode(intent_to_record(intent))
        with self._lock:
            self._pending[intent.intent_id] = fut
        self._producer.produce(self.topic, key=intent.agent_id.encode(), value=value,
                               partition=partition_for(intent.agent_id, self._partitions))
        self._producer.poll(0)
        return fut

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=5)
        self._producer.flush(5)
        self._consumer.close()

    def __enter__(self) -> RawRoundTrip:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
