"""Where a worker's time goes under load: py-spy samples of its threads, summed by stage.

    py-spy record --pid <worker> --duration S --format raw --threads --idle

Each sample is one stack of one thread (py-spy shortens file names to their last parts,
e.g. `worker/pipeline.py`); a sample whose innermost frame waits (selectors, a thread pool's
queue, threading) is idle. faust runs its agents, the identity loader and the fan-out on
the main thread's event loop: its busy samples are attributed to the first stage (in the
order below) with a marker in the stack, so the pipeline called from faust counts as
pipeline. Other threads are reported by busy share only.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

# (stage, markers in a collapsed stack): the first stage with a marker wins.
IDLE_LEAVES = ("selectors.py", "concurrent/futures/thread.py", "threading.py", "queue.py")
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("pipeline: signing the pass", ("credentials/",)),
    ("pipeline: Avro decode/encode", ("codec/avro.py", "fastavro")),
    ("pipeline: decide", ("core/",)),
    ("pipeline: other (records, memo)", ("worker/pipeline.py",)),
    ("decision log line", ("logging/", "gatepass/logs.py", "(logs.py")),
    ("sending: DeliveryGuard/aiokafka producer", ("worker/delivery.py", "aiokafka/producer")),
    ("aiokafka consumer/fetcher", ("aiokafka/consumer",)),
    ("aiokafka other (connection, protocol)", ("aiokafka/",)),
    ("identity loader / fan-out", ("identity_loader.py", "lifecycle_fanout.py")),
    ("faust stream/agent machinery", ("faust/", "mode/")),
    ("asyncio event loop", ("asyncio/",)),
]


def py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def start(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    """Start py-spy on `pid` for `seconds` (its messages go to out.log); None: no py-spy."""
    exe = py_spy()
    if exe is None:
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".log"), "wb") as log:
        return subprocess.Popen(
            [exe, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate",
             "100", "--format", "raw", "--output", str(out), "--nonblocking", "--threads",
             "--idle"], stdout=log, stderr=subprocess.STDOUT)


def summarize(raw: Path) -> dict[str, Any]:
    threads: dict[str, Counter[str]] = {}
    stages: Counter[str] = Counter()
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        name = frames[0].split(": ", 1)[-1] if frames[0].startswith("thread") else "?"
        idle = any(m in frames[-1] for m in IDLE_LEAVES)
        threads.setdefault(name, Counter())["idle" if idle else "busy"] += n
        if name == "MainThread" and not idle:
            stage = next((s for s, markers in STAGES if any(m in stack for m in markers)),
                         "other")
            stages[stage] += n
    main = threads.get("MainThread", Counter())
    busy = main["busy"]
    ticks = main["busy"] + main["idle"]
    return {
        "main_thread_busy_share": round(busy / ticks, 3) if ticks else None,
        "main_thread_busy_by_stage": {k: round(v / busy, 3) for k, v in stages.most_common()}
        if busy else {},
        "other_threads_busy_share": {
            k: round(c["busy"] / (c["busy"] + c["idle"]), 3)
            for k, c in sorted(threads.items()) if k != "MainThread" and c["busy"]},
        "samples": sum(sum(c.values()) for c in threads.values()),
        "note": "py-spy --threads --idle --nonblocking at 100 Hz; shares of the main "
                "thread's samples (faust's event loop)",
    }
