"""The identity loader's handling of the cyclic collector while the view first loads."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from gatepass.worker import identity_loader
from gatepass.worker.identity_loader import _LoadCollector


@pytest.fixture(autouse=True)
def _restore_gc() -> Iterator[None]:
    enabled = gc.isenabled()
    yield
    gc.unfreeze()
    if enabled:
        gc.enable()
    else:
        gc.disable()


def test_paused_while_loading_then_frozen_and_resumed() -> None:
    gc.enable()
    collector = _LoadCollector()
    collector.pause()
    assert not gc.isenabled()
    collector.pause()  # a second batch while loading changes nothing
    assert not gc.isenabled()
    before = gc.get_freeze_count()
    view = [{"identity": i} for i in range(1000)]  # what a load leaves behind
    collector.settle()
    assert gc.isenabled()
    assert gc.get_freeze_count() >= before + len(view)


def test_a_load_that_ends_early_resumes_collection_without_freezing() -> None:
    gc.enable()
    collector = _LoadCollector()
    collector.pause()
    collector.resume()  # the loader stopped (an error, a shutdown) before it was ready
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0
    collector.settle()  # nothing paused: nothing to do
    assert gc.get_freeze_count() == 0


def test_collection_left_off_by_someone_else_stays_off() -> None:
    gc.disable()
    collector = _LoadCollector()
    collector.pause()
    collector.settle()
    assert not gc.isenabled()


def test_young_generations_collected_while_paused(monkeypatch: pytest.MonkeyPatch) -> None:
    gc.enable()
    calls: list[int] = []
    monkeypatch.setattr(identity_loader.gc, "collect", lambda gen=2: calls.append(gen) or 0)
    clock = [100.0]
    monkeypatch.setattr(identity_loader.time, "monotonic", lambda: clock[0])
    collector = _LoadCollector()
    collector.tick()  # not paused: nothing
    collector.pause()
    collector.tick()
    assert calls == []
    clock[0] += identity_loader._YOUNG_COLLECT_EVERY_S
    collector.tick()
    assert calls == [1]
    collector.tick()  # not again until the interval has passed once more
    assert calls == [1]
