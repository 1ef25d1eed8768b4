"""No commit past an answer that was not written: every send is checked before offsets move.

faust (at least once) flushes the producer before it commits the offsets of processed
records, and a flush waits until every batch is *resolved* - including batches that failed.
A verdict whose batch failed (a broker restart at the wrong moment) would then be lost while
its intent's offset is committed: an intent without an answer. This guard keeps the
delivery future of every record the agents send, and makes the flush that precedes a commit
wait until each of them succeeded, sending failed ones again (with backoff, as long as it
takes). So a commit never covers a record that is not on its topic.

A resent record may be written twice (the first attempt may have landed after all): the
copies are byte-identical, and every reader matches verdicts by intent id.

`send_after` holds a record back until another one is acknowledged: a verdict goes out only
once its audit record is on the audit topic, so an unwritable audit topic stops the answers
(the agent's SDK gives up: DENY sdk_timeout) instead of letting decisions go unrecorded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from gatepass.worker.pipeline import Outgoing

__all__ = ["DeliveryGuard"]

log = logging.getLogger("gatepass.worker")

SendFn = Callable[[Outgoing], Awaitable[Awaitable[Any]]]


class DeliveryGuard:
    def __init__(self, send: SendFn, flush: Callable[[], Awaitable[None]], *,
                 max_backoff: float = 5.0,
                 on_resend: Callable[[int], None] = lambda n: None) -> None:
        self._send = send  # queues one record, returns its delivery future
        self._flush = flush  # the producer's own flush
        self._tracked: list[tuple[Outgoing, Awaitable[Any]]] = []
        self._held: set[asyncio.Future[None]] = set()
        self.max_backoff = max_backoff
        self.on_resend = on_resend

    async def send(self, record: Outgoing) -> Awaitable[Any]:
        fut = await self._send(record)
        self._tracked.append((record, fut))
        return fut

    def send_after(self, record: Outgoing, first: Outgoing, delivered: Awaitable[Any]) -> None:
        """Send `record` once `first` (already sent, `delivered` its future) is acknowledged;
        `first` is written again for as long as it fails. A flush waits for both."""
        task = asyncio.ensure_future(self._after(record, first, delivered))
        self._held.add(task)
        task.add_done_callback(self._held.discard)

    async def _after(self, record: Outgoing, first: Outgoing, delivered: Awaitable[Any]) -> None:
        delay = 0.1
        while True:
            try:
                await delivered
                break
            except Exception as exc:
                log.warning("a record for %s was not acknowledged (%s); holding the record "
                            "for %s until it is", first.topic, type(exc).__name__, record.topic)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)
                delivered = await self._resend(first)
                self.on_resend(1)
        self._tracked.append((record, await self._resend(record)))

    @property
    def in_flight(self) -> int:
        return len(self._tracked) + len(self._held)

    async def flush(self) -> None:
        """Return only once every record sent before the call is acknowledged (records held
        by `send_after` included: they are sent first)."""
        while self._held:
            await asyncio.gather(*list(self._held), return_exceptions=True)
        batch, self._tracked = self._tracked, []
        delay = 0.1
        while True:
            await self._flush()
            failed: list[Outgoing] = []
            for record, fut in batch:
                try:
                    await fut
                except Exception as exc:  # every failure of that write: write it again
                    failed.append(record)
                    log.warning("a record for %s was not acknowledged (%s); sending it again",
                                record.topic, type(exc).__name__)
            if not failed:
                return
            batch = []
            for record in failed:
                batch.append((record, await self._resend(record)))
            self.on_resend(len(failed))
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_backoff)

    async def _resend(self, record: Outgoing) -> Awaitable[Any]:
        delay = 0.1
        while True:
            try:
                return await self._send(record)
            except Exception as exc:  # the producer refuses for now: wait and try again
                log.warning("could not queue a record for %s again (%s); retrying in %.1fs",
                            record.topic, type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)
