"""Recovery and memory: how long a fresh worker process takes to be ready (/readyz 200: the
identity view loaded, keys published, partitions owned) behind a large identity topic, and
its resident memory per identity.

The identity topic is written first (see population.bulk_identities). The worker group's
lifecycle fan-out offsets are committed at the topic's end, as after a restart of a running
deployment: a brand-new group would also fan every old record out once (orphan checks),
which is a one-off of a new deployment, not of recovery. Memory per identity is the RSS
of that worker minus the RSS of the same worker ready on an (almost) empty identity topic,
divided by the identities it holds.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from benchmarks.common import Broker, Progress, bench_settings, cpu_seconds, rss_bytes
from benchmarks.population import build_population, bulk_identities, register
from gatepass.config import Settings
from gatepass.transport import ensure_topics
from gatepass.worker.process import WorkerProcess

SETTLE = 3.0  # seconds after ready before RSS is read


def _commit_fanout_at_end(settings: Settings) -> None:
    # The group of gatepass.worker.lifecycle_fanout.LifecycleFanout.group_id.
    consumer = Consumer({"bootstrap.servers": settings.bootstrap,
                         "group.id": f"{settings.app_id}-lifecycle",
                         "enable.auto.commit": False, "log_level": 4})
    try:
        topic = settings.topics.identity
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        ends = [TopicPartition(topic, p, consumer.get_watermark_offsets(
            TopicPartition(topic, p), timeout=10)[1]) for p in meta.partitions]
        deadline = time.monotonic() + 30
        while True:
            try:
                consumer.commit(offsets=ends, asynchronous=False)
                return
            except KafkaException:  # a fresh broker creates __consumer_offsets on first use
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        consumer.close()


def _start_and_time(settings: Settings, log: Path, progress: Progress, label: str,
                    timeout: float) -> tuple[WorkerProcess, float, dict[str, Any]]:
    worker = WorkerProcess(settings, log_file=log)
    seen: dict[str, Any] = {}
    started = time.monotonic()
    worker.start()

    def status() -> str:
        return (f"{seen.get('identities', 0):,} identities loaded, "
                f"{time.monotonic() - started:.0f} s")

    with progress.ticker(label, status):
        while True:
            if worker.proc is not None and worker.proc.poll() is not None:
                raise RuntimeError(f"worker exited:\n{worker.tail_log()}")
            state = worker.readiness()
            if state:
                seen.update(state)
            if state and state.get("ready"):
                break
            if time.monotonic() - started > timeout:
                worker.stop(kill=True)
                raise RuntimeError(f"worker not ready after {timeout:.0f}s:\n"
                                   f"{worker.tail_log()}")
            time.sleep(0.1)
    seen["cpu_seconds_to_ready"] = cpu_seconds(worker.proc.pid if worker.proc else None)
    return worker, time.monotonic() - started, seen


def recovery(broker: Broker, home: Path, identities: int, progress: Progress, *,
             settle: float = SETTLE) -> dict[str, Any]:
    # The same worker on a nearly empty identity topic: what memory costs without identities.
    empty = bench_settings(broker.bootstrap, home, "recovery-empty")
    ensure_topics(empty)
    _pop, events = build_population(5, 0, 0)
    register(empty, events)
    worker, empty_ready, empty_state = _start_and_time(
        empty, empty.home / "worker.log", progress, "empty worker", 180)
    time.sleep(settle)
    rss_empty = rss_bytes(worker.proc.pid if worker.proc else None)
    worker.stop(timeout=30)
    progress.note(f"empty worker ready in {empty_ready:.1f} s, RSS {(rss_empty or 0) >> 20} MiB")

    settings = bench_settings(broker.bootstrap, home, "recovery")
    ensure_topics(settings)
    written: dict[str, int] = {"n": 0}
    with progress.ticker(f"writing {identities:,} identities",
                         lambda: f"{written['n']:,} queued"):
        bulk = bulk_identities(settings, identities,
                               on_progress=lambda n: written.__setitem__("n", n))
    progress.note(f"{identities:,} identity records written in {bulk['produce_seconds']} s")
    _commit_fanout_at_end(settings)
    log = settings.home / "worker.log"
    worker, ready_s, state = _start_and_time(settings, log, progress,
                                             f"worker loading {identities:,} identities", 1800)
    time.sleep(settle)
    rss_full = rss_bytes(worker.proc.pid if worker.proc else None)
    worker.stop(timeout=30)
    text = log.read_text(errors="replace") if log.exists() else ""
    load = re.search(r"identity state ready: (\d+) identities in ([\d.]+)s", text)
    held = int(state.get("identities") or 0)
    per_identity = ((rss_full - rss_empty) / held
                    if rss_full is not None and rss_empty is not None and held else None)
    return {
        "identities_written": identities, "identities_held": held, "bulk": bulk,
        "ready_seconds": round(ready_s, 2),
        # CPU the worker process used from its start until ready (every thread): what the
        # load costs whatever else ran on the machine meanwhile.
        "worker_cpu_seconds_to_ready": state.get("cpu_seconds_to_ready"),
        "empty_worker_cpu_seconds_to_ready": empty_state.get("cpu_seconds_to_ready"),
        "loader_seconds": float(load.group(2)) if load else None,
        "loader_records_per_s": (round(int(load.group(1)) / float(load.group(2)))
                                 if load and float(load.group(2)) else None),
        "empty_worker_ready_seconds": round(empty_ready, 2),
        "empty_worker_identities": empty_state.get("identities"),
        "rss_empty_bytes": rss_empty, "rss_loaded_bytes": rss_full,
        "bytes_per_identity": round(per_identity) if per_identity is not None else None,
        "fanout": "group offsets committed at the end (a restart, not a new deployment)",
    }
