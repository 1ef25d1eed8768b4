"""What every section shares: the run profile, the progress display, the broker, and the small
measurements (percentiles, a process's CPU seconds and resident memory, the machine).
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

from gatepass.config import Settings
from gatepass.errors import BrokerError
from gatepass.kafka_local import KAFKA_VERSION, LocalKafka

REPO = Path(__file__).resolve().parents[1]
AUDIENCE = "procurement-api"


@dataclass(frozen=True)
class Profile:
    """How much of each section a run does. `full` is what `make bench` runs."""

    name: str
    agents: int  # registered agents the intent mix is drawn from
    window: int  # closed loop: intents in flight
    warmup: float  # seconds run before a measured window, not counted
    throughput_seconds: float  # measured window of each closed loop
    latency_rate: float  # the offered open-loop rate (the target's 1,000/s)
    latency_seconds: float  # Gatepass open-loop runs
    sustainable_fraction: float  # second open-loop run at this share of the 1-worker maximum
    baseline_latency_seconds: float  # echo and raw open-loop runs (same rates, shorter)
    revoke_repeats: int
    orphan_agents: int  # agents of the one owner offboarded for the orphan alert figure
    verifier_passes: int  # distinct passes per verifier round
    identities: int  # lifecycle records behind the recovery worker
    profile_seconds: float  # py-spy profile of the worker under load (0: none)
    drain_seconds: float  # how long answers are awaited after the offered-rate run
    max_latency_rate: float | None = None  # cap on the sustainable rate (smoke only)


PROFILES = {
    "full": Profile("full", agents=10_000, window=1000, warmup=5, throughput_seconds=30,
                    latency_rate=1000, latency_seconds=60, sustainable_fraction=0.5,
                    baseline_latency_seconds=30, revoke_repeats=20, orphan_agents=1000,
                    verifier_passes=20_000, identities=1_000_000, profile_seconds=20,
                    drain_seconds=60),
    "quick": Profile("quick", agents=10_000, window=1000, warmup=3, throughput_seconds=15,
                     latency_rate=1000, latency_seconds=30, sustainable_fraction=0.5,
                     baseline_latency_seconds=15, revoke_repeats=10, orphan_agents=1000,
                     verifier_passes=10_000, identities=100_000, profile_seconds=10,
                     drain_seconds=30),
    # CI: every section runs once with tiny counts; the figures mean nothing.
    "smoke": Profile("smoke", agents=60, window=40, warmup=0.3, throughput_seconds=1.0,
                     latency_rate=60, latency_seconds=1.5, sustainable_fraction=0.5,
                     baseline_latency_seconds=1.0, revoke_repeats=2, orphan_agents=20,
                     verifier_passes=200, identities=2000, profile_seconds=0,
                     drain_seconds=30, max_latency_rate=30),
}


def profile_dict(profile: Profile) -> dict[str, Any]:
    return asdict(profile)


# -- progress --------------------------------------------------------------------------------

class Progress:
    """Section headers and timestamped notes on stderr; a live status line during a phase
    (rewritten in place on a terminal, a line every few seconds otherwise)."""

    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = self.stream.isatty()
        self.started = time.monotonic()

    def _stamp(self) -> str:
        s = int(time.monotonic() - self.started)
        return f"{s // 60:02d}:{s % 60:02d}"

    def _write(self, text: str) -> None:
        if not self.quiet:
            self.stream.write(text)
            self.stream.flush()

    def section(self, title: str) -> None:
        self._write(f"\n[{self._stamp()}] == {title}\n")

    def note(self, text: str) -> None:
        self._write(f"[{self._stamp()}]    {text}\n")

    @contextlib.contextmanager
    def ticker(self, label: str, status: Callable[[], str]) -> Iterator[None]:
        stop = threading.Event()
        every = 0.5 if self.tty else 5.0

        def run() -> None:
            while not stop.wait(every):
                line = f"[{self._stamp()}]    {label}: {status()}"
                self._write(f"\r{line}\x1b[K" if self.tty else line + "\n")

        thread = threading.Thread(target=run, name="bench-progress", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            if self.tty:
                self._write("\r\x1b[K")


# -- figures ---------------------------------------------------------------------------------

def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) by the nearest-rank method; None for no values."""
    if not sorted_values:
        return None
    rank = max(1, int(-(-q * len(sorted_values) // 100)))  # ceil without floats drifting
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize_ms(values_ms: Sequence[float], unanswered: int = 0) -> dict[str, Any]:
    """Percentiles in ms. `unanswered`: how many of the values are only lower bounds (an
    intent never answered counts with the time waited for it); when any is, every figure
    from the smallest such value up is a lower bound too."""
    ordered = sorted(values_ms)

    def r(v: float | None) -> float | None:
        return None if v is None else round(v, 2)

    return {"count": len(ordered), "unanswered": unanswered,
            "figures_may_be_lower_bounds": unanswered > 0,
            "p50_ms": r(percentile(ordered, 50)),
            "p90_ms": r(percentile(ordered, 90)), "p99_ms": r(percentile(ordered, 99)),
            "p99_9_ms": r(percentile(ordered, 99.9)),
            "max_ms": r(ordered[-1] if ordered else None),
            "mean_ms": r(sum(ordered) / len(ordered) if ordered else None)}


def cdf_points(values_ms: Sequence[float], points: int = 400) -> list[tuple[float, float]]:
    """(latency ms, fraction <=) at up to `points` quantiles, for the plot and the JSON."""
    ordered = sorted(values_ms)
    if not ordered:
        return []
    n = len(ordered)
    idx = sorted({min(n - 1, int(i * n / points)) for i in range(points)} | {n - 1})
    return [(round(ordered[i], 3), round((i + 1) / n, 6)) for i in idx]


# -- processes -------------------------------------------------------------------------------

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | None, *, reaped_children: bool = False) -> float | None:
    """User + system CPU seconds a process has used so far (None: unknown or gone); with
    `reaped_children`, also those of its children it has waited for (workers it stopped)."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    used = int(fields[11]) + int(fields[12])
    if reaped_children:
        used += int(fields[13]) + int(fields[14])
    return used / _TICKS


def rss_bytes(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def machine_cpu_seconds() -> tuple[float, float] | None:
    """(busy, stolen) CPU seconds of the whole machine so far, all cores, from /proc/stat:
    busy = user..softirq of every process; stolen = time the hypervisor ran others."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6]  # user nice system irq softirq
    steal = fields[7] if len(fields) > 7 else 0
    return busy / _TICKS, steal / _TICKS


def cpu_pressure_seconds() -> float | None:
    """Seconds some runnable task waited for a CPU (Linux PSI, /proc/pressure/cpu)."""
    try:
        some = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        return int(some.rsplit("total=", 1)[1]) / 1e6
    except (OSError, ValueError, IndexError):
        return None


class CpuMeter:
    """CPU cores used by named processes between start() and stop(), and the noise around
    them: `others` (busy cores of the whole machine minus ours: other processes), `steal`
    (cores' worth of time the hypervisor gave to other machines) and `cpu_wait_share` (the
    share of the time some runnable task waited for a CPU)."""

    def __init__(self, pids: dict[str, int | None], *,
                 with_reaped_children: frozenset[str] = frozenset()) -> None:
        self.pids = pids
        # names whose processes' reaped children count as theirs (see `cpu_seconds`)
        self.with_children = with_reaped_children
        self._start: dict[str, float | None] = {}
        self._machine: tuple[float, float] | None = None
        self._pressure: float | None = None
        self._t0 = 0.0

    def start(self) -> CpuMeter:
        self._t0 = time.monotonic()
        self._start = {name: cpu_seconds(pid, reaped_children=name in self.with_children)
                       for name, pid in self.pids.items()}
        self._machine = machine_cpu_seconds()
        self._pressure = cpu_pressure_seconds()
        return self

    def stop(self) -> dict[str, float | None]:
        elapsed = time.monotonic() - self._t0
        out: dict[str, float | None] = {}
        for name, pid in self.pids.items():
            before = self._start.get(name)
            after = cpu_seconds(pid, reaped_children=name in self.with_children)
            out[name] = (None if before is None or after is None or elapsed <= 0
                         else round((after - before) / elapsed, 3))
        ours = sum(v for v in out.values() if v is not None)
        now, pressure = machine_cpu_seconds(), cpu_pressure_seconds()
        if now is not None and self._machine is not None and elapsed > 0:
            busy = (now[0] - self._machine[0]) / elapsed
            out["machine_busy"] = round(busy, 3)
            out["others"] = round(max(0.0, busy - ours), 3)
            out["steal"] = round((now[1] - self._machine[1]) / elapsed, 3)
        if pressure is not None and self._pressure is not None and elapsed > 0:
            out["cpu_wait_share"] = round((pressure - self._pressure) / elapsed, 3)
        return out


def free_ports(count: int) -> list[int]:
    """Distinct loopback ports nobody listens on right now."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


# -- the broker and the settings ---------------------------------------------------------------

@dataclass
class Broker:
    bootstrap: str
    pid: int | None  # None: an external broker (its CPU is not measured)
    kafka_version: str


@contextlib.contextmanager
def own_broker(bootstrap: str | None, progress: Progress) -> Iterator[Broker]:
    """An external broker as given, or a LocalKafka of this run on free ports in a temporary
    home (jars from the shared cache, <repo>/.gatepass/dist or $GATEPASS_HOME/dist)."""
    if bootstrap:
        progress.note(f"using the broker at {bootstrap} (not started here)")
        yield Broker(bootstrap, None, "external")
        return
    dist = Path(os.environ.get("GATEPASS_HOME") or REPO / ".gatepass") / "dist"
    for attempt in (1, 2):  # a second try on other ports: a free port can be taken meanwhile
        home = Path(tempfile.mkdtemp(prefix="gatepass-bench-kafka-"))
        port, controller_port = free_ports(2)
        kafka = LocalKafka(home=home, port=port, controller_port=controller_port, heap="1g",
                           dist_dir=dist)
        progress.note(f"starting Kafka {KAFKA_VERSION} on 127.0.0.1:{port} (home {home})")
        try:
            status = kafka.up(timeout=180)
            break
        except BrokerError as exc:
            kafka.down(timeout=30)
            shutil.rmtree(home, ignore_errors=True)
            if attempt == 2:
                raise
            progress.note(f"the broker did not start ({str(exc).splitlines()[0]}); again")
    try:
        progress.note(f"broker up, pid {status.pid}")
        yield Broker(status.bootstrap, status.pid, KAFKA_VERSION)
    finally:
        progress.note("stopping the broker")
        kafka.down(timeout=60)
        shutil.rmtree(home, ignore_errors=True)


def bench_settings(bootstrap: str, home: Path, tag: str, **overrides: Any) -> Settings:
    """A Settings of its own for one section: topic prefix, app id, key store, web port."""
    run = uuid.uuid4().hex[:6]
    (web_port,) = free_ports(1)
    values: dict[str, Any] = {"bootstrap": bootstrap, "topic_prefix": f"bench-{tag}-{run}.",
                              "partitions": 4, "home": home / tag,
                              "app_id": f"bench-{tag}-{run}", "web_port": web_port}
    values.update(overrides)
    return Settings(**values)


# -- the machine -------------------------------------------------------------------------------

def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine(kafka_version: str) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_total = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = int(line.split()[1]) * 1024
    return {
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "memory_bytes": mem_total,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "kafka": kafka_version,
        "libraries": {d: _version(d) for d in ("faust-streaming", "aiokafka",
                                               "confluent-kafka", "fastavro", "cryptography")},
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "note": "broker, workers and load generator share this machine",
    }
