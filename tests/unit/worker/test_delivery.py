"""DeliveryGuard: the flush before a commit returns only when every earlier record is written."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gatepass.worker.delivery import DeliveryGuard
from gatepass.worker.pipeline import Outgoing


class FlakyProducer:
    """Queues records; the broker 'loses' the first `fail` writes of each listed topic."""

    def __init__(self, fail: dict[str, int] | None = None, refuse_queue: int = 0) -> None:
        self.fail = dict(fail or {})
        self.refuse_queue = refuse_queue
        self.written: list[bytes] = []
        self.futures: list[asyncio.Future[Any]] = []
        self.flushes = 0

    async def send(self, record: Outgoing) -> asyncio.Future[Any]:
        if self.refuse_queue:
            self.refuse_queue -= 1
            raise TimeoutError("buffer full")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.futures.append(fut)
        left = self.fail.get(record.topic, 0)
        if left:
            self.fail[record.topic] = left - 1
            fut.set_exception(ConnectionError("broker went away"))
        else:
            self.written.append(record.value)
            fut.set_result("ok")
        return fut

    async def flush(self) -> None:
        self.flushes += 1


def rec(topic: str, value: bytes) -> Outgoing:
    return Outgoing(topic, b"k", value, 0)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_a_clean_flush_flushes_once() -> None:
    async def go() -> FlakyProducer:
        p = FlakyProducer()
        g = DeliveryGuard(p.send, p.flush)
        await g.send(rec("verdicts", b"v1"))
        await g.flush()
        return p

    p = run(go())
    assert p.written == [b"v1"] and p.flushes == 1


def test_failed_writes_are_sent_again_before_the_flush_returns() -> None:
    resent: list[int] = []

    async def go() -> tuple[FlakyProducer, int]:
        p = FlakyProducer(fail={"verdicts": 2})
        g = DeliveryGuard(p.send, p.flush, max_backoff=0.01, on_resend=resent.append)
        await g.send(rec("verdicts", b"v1"))
        await g.send(rec("audit", b"a1"))
        await g.flush()
        return p, g.in_flight

    p, in_flight = run(go())
    assert sorted(p.written) == [b"a1", b"v1"]  # written in the end, despite two failures
    assert resent == [1, 1] and p.flushes == 3 and in_flight == 0


def test_a_producer_that_refuses_for_a_while_is_retried() -> None:
    async def go() -> FlakyProducer:
        p = FlakyProducer(fail={"verdicts": 1})
        g = DeliveryGuard(p.send, p.flush, max_backoff=0.01)
        await g.send(rec("verdicts", b"v1"))
        p.refuse_queue = 3  # the re-send cannot even be queued three times
        await g.flush()
        return p

    assert run(go()).written == [b"v1"]


def test_records_sent_during_a_flush_belong_to_the_next_one() -> None:
    async def go() -> tuple[int, int]:
        p = FlakyProducer()
        gate = asyncio.Event()

        async def slow_flush() -> None:
            await gate.wait()

        g = DeliveryGuard(p.send, slow_flush)
        await g.send(rec("verdicts", b"v1"))
        flushing = asyncio.create_task(g.flush())
        await asyncio.sleep(0)
        await g.send(rec("verdicts", b"v2"))  # an agent keeps going meanwhile
        gate.set()
        await flushing
        return g.in_flight, len(p.written)

    assert run(go()) == (1, 2)


def test_an_error_in_the_producers_own_flush_propagates() -> None:
    async def broken() -> None:
        raise RuntimeError("producer stopped")

    async def go() -> None:
        p = FlakyProducer()
        g = DeliveryGuard(p.send, broken)
        await g.send(rec("verdicts", b"v1"))
        await g.flush()

    with pytest.raises(RuntimeError):
        run(go())


def test_a_held_record_goes_out_only_after_the_first_is_acknowledged() -> None:
    """A verdict waits for its audit record: while the audit topic refuses, no verdict is
    written; the flush returns once both are, audit first."""
    async def go() -> FlakyProducer:
        p = FlakyProducer(fail={"audit": 3})
        g = DeliveryGuard(p.send, p.flush, max_backoff=0.01)
        first = rec("audit", b"a1")
        g.send_after(rec("verdicts", b"v1"), first, await g.send(first))
        await asyncio.sleep(0.02)
        assert b"v1" not in p.written  # the audit record still fails: no answer yet
        await g.flush()
        assert g.in_flight == 0
        return p

    p = run(go())
    assert p.written.index(b"a1") < p.written.index(b"v1")
    assert p.written.count(b"v1") == 1


def test_a_flush_waits_for_held_records() -> None:
    async def go() -> tuple[FlakyProducer, bool]:
        p = FlakyProducer()
        g = DeliveryGuard(p.send, p.flush)
        slow: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        g.send_after(rec("verdicts", b"v1"), rec("audit", b"a1"), slow)
        flushing = asyncio.ensure_future(g.flush())
        await asyncio.sleep(0.01)
        waiting = not flushing.done()
        slow.set_result("ok")
        await flushing
        return p, waiting

    p, waiting = run(go())
    assert waiting and p.written == [b"v1"]
