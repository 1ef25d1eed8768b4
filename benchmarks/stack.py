"""A Gatepass under test: its own topic prefix and key store, the registered population, the
worker processes (one, then two of the same app), and the agent SDK client that drives it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import Broker, Progress, bench_settings, free_ports
from benchmarks.population import (
    IntentMix,
    Population,
    build_population,
    register,
    simple_intent,
)
from gatepass.config import Settings
from gatepass.errors import BrokerError
from gatepass.sdk import GatepassClient
from gatepass.transport import ensure_topics
from gatepass.worker.process import WorkerProcess


@dataclass
class GatepassStack:
    settings: Settings
    pop: Population
    mix: IntentMix
    client: GatepassClient
    workers: list[WorkerProcess] = field(default_factory=list)
    start_seconds: list[float] = field(default_factory=list)

    def start_worker(self, progress: Progress) -> WorkerProcess:
        (port,) = free_ports(1)
        n = len(self.workers)
        log = self.settings.home / "logs" / f"worker-{n}.log"
        started = time.monotonic()
        worker = WorkerProcess(self.settings.with_(web_port=port), log_file=log).start()
        self.workers.append(worker)
        worker.wait_ready(timeout=180)
        self.wait_all_ready()
        self.start_seconds.append(round(time.monotonic() - started, 2))
        progress.note(f"worker {n + 1} ready (pid {worker.proc.pid if worker.proc else '?'}, "
                      f"{self.start_seconds[-1]} s)")
        return worker

    def wait_all_ready(self, timeout: float = 120.0) -> None:
        """Every worker owns partitions and none is rebalancing (after a scale-out)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = [w.readiness() for w in self.workers]
            if all(s and s.get("ready") for s in states):
                return
            time.sleep(0.2)
        raise BrokerError(f"workers not all ready after {timeout:.0f}s")

    def stop_worker(self, worker: WorkerProcess) -> None:
        worker.stop(timeout=30)
        self.workers.remove(worker)

    def pids(self) -> dict[str, int | None]:
        return {f"worker_{i + 1}": w.proc.pid if w.proc else None
                for i, w in enumerate(self.workers)}

    def readiness(self) -> list[dict[str, Any] | None]:
        return [w.readiness() for w in self.workers]

    def warm_up(self, seconds: float) -> None:
        """A few intents through every partition, so the first measured ones find the
        consumers fetching and the producers connected."""
        deadline = time.monotonic() + seconds
        n = 0
        while time.monotonic() < deadline:
            futs = [self.client.submit(self.mix.make(n + k)) for k in range(20)]
            n += 20
            for f in futs:
                f.result(timeout=120)
        for agent in (a for _o, a in self.pop.revoke_pairs[:1]):
            self.client.submit(simple_intent(agent)).result(timeout=60)


@contextlib.contextmanager
def gatepass_stack(broker: Broker, home: Path, *, agents: int, orphan_agents: int,
                   revoke_repeats: int, progress: Progress) -> Iterator[GatepassStack]:
    settings = bench_settings(broker.bootstrap, home, "gatepass")
    ensure_topics(settings)
    pop, events = build_population(agents, orphan_agents, revoke_repeats)
    progress.note(f"registering {pop.registered:,} agents ({len(events):,} lifecycle records)"
                  f" on {settings.topic_prefix}*")
    register(settings, events)
    client = GatepassClient.from_settings(settings, timeout=120)
    stack = GatepassStack(settings, pop, IntentMix(pop), client)
    try:
        stack.start_worker(progress)
        yield stack
    finally:
        client.close()
        for worker in list(stack.workers):
            worker.stop(timeout=30)
