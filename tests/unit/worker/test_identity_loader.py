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


def _loader() -> identity_loader.IdentityLoader:
    from gatepass.codec.avro import schemas
    from gatepass.config import Settings
    from gatepass.core import IdentityState

    return identity_loader.IdentityLoader(Settings(), schemas(), IdentityState())


async def _notify(loader: identity_loader.IdentityLoader) -> None:
    async with loader._progress:
        loader._progress.notify_all()


def test_wait_complete_returns_once_the_view_is_complete_past_the_moment() -> None:
    import asyncio

    async def main() -> tuple[bool, bool]:
        loader = _loader()
        waiter = asyncio.create_task(loader.wait_complete(100.0, timeout=5))
        loader.fresh_as_of = 99.0  # complete, but only up to before the moment asked for
        await _notify(loader)
        await asyncio.sleep(0.05)
        early = waiter.done()
        loader.fresh_as_of = 100.5
        await _notify(loader)
        return early, await waiter

    assert asyncio.run(main()) == (False, True)


def test_wait_complete_gives_up_after_its_timeout_and_says_so() -> None:
    import asyncio

    async def main() -> tuple[bool, bool]:
        loader = _loader()
        never = await loader.wait_complete(100.0, timeout=0.05)
        loader.fresh_as_of = 100.0
        return never, await loader.wait_complete(100.0, timeout=0.05)

    assert asyncio.run(main()) == (False, True)
