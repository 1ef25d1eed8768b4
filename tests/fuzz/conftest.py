"""Budget and report of the fuzz suite: how many inputs each target ran and the slowest one.

GATEPASS_FUZZ_EXAMPLES sets the inputs per target (default `DEFAULT_EXAMPLES`). Every target
asserts that it ran at least its budget, so a broken strategy cannot pass by running nothing.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

DEFAULT_EXAMPLES = 1_000  # CI-sized; the full proof is GATEPASS_FUZZ_EXAMPLES=10000
T = TypeVar("T")


def fuzz_examples() -> int:
    raw = os.environ.get("GATEPASS_FUZZ_EXAMPLES", "").strip()
    return int(raw) if raw else DEFAULT_EXAMPLES


def fuzz_settings(examples: int | None = None) -> hypothesis_settings:
    """Hypothesis settings for one target: no deadline (timing is reported, not asserted)."""
    return hypothesis_settings(
        max_examples=examples or fuzz_examples(), deadline=None, database=None,
        suppress_health_check=list(HealthCheck), print_blob=True)


@dataclass
class Target:
    name: str
    inputs: int = 0
    max_seconds: float = 0.0
    slowest: Any = None
    outcomes: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)
    elapsed: float = 0.0

    def run(self, call: Callable[[], T], label: Any = None) -> T:
        """Run one input, keeping the longest time any input took."""
        t0 = time.perf_counter()
        try:
            return call()
        finally:
            took = time.perf_counter() - t0
            self.inputs += 1
            if took > self.max_seconds:
                self.max_seconds, self.slowest = took, label

    def count(self, outcome: str) -> None:
        self.outcomes[outcome] += 1


_TARGETS: list[Target] = []


@pytest.fixture
def fuzz_target(request: pytest.FixtureRequest) -> Iterator[Callable[[str], Target]]:
    made: list[Target] = []

    def make(name: str) -> Target:
        target = Target(name)
        made.append(target)
        _TARGETS.append(target)
        return target

    yield make
    for target in made:
        target.elapsed = time.monotonic() - target.started


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _TARGETS:
        return
    tr = terminalreporter
    tr.section(f"fuzz targets (budget {fuzz_examples()} inputs each)")
    for t in _TARGETS:
        outcomes = ", ".join(f"{k}={v}" for k, v in sorted(t.outcomes.items()))
        tr.write_line(f"{t.name}: {t.inputs} inputs in {t.elapsed:.1f}s, max "
                      f"{t.max_seconds * 1000:.2f} ms per input ({outcomes})")
