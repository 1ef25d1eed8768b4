"""A worker that has stopped deciding exits, so that its supervisor starts it again.

Intents wait on the worker's partitions, none has been decided for `stall_exit`, the broker
answers, and the worker is neither rebalancing nor recovering its tables: it is stuck, and
a stuck worker answers nothing until someone restarts it (its agents' SDKs give up with
DENY `sdk_timeout`). The watchdog writes every thread's and task's stack to stderr (what a
stuck worker was waiting on), logs why, and exits with `EXIT_STALLED` without a graceful
shutdown (that could wait on the very thing that is stuck). What it had decided is on the
`decided` table's changelog and the verdicts topic; its partitions go to the other workers
or to itself when restarted, and every intent still waiting is answered then (one too old
by then: DENY `stale_intent`), so no intent goes without an answer and none gets two.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from gatepass.worker.metrics import WorkerMetrics

__all__ = ["EXIT_STALLED", "StallWatchdog"]

log = logging.getLogger("gatepass.worker")

EXIT_STALLED = 70  # EX_SOFTWARE


class StallWatchdog:
    def __init__(self, metrics: WorkerMetrics, after: float, *,
                 lag: Callable[[], Awaitable[int | None]],
                 broker_answers: Callable[[], Awaitable[bool]],
                 busy: Callable[[], bool],
                 dump: Callable[[], None],
                 exit: Callable[[int], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.metrics = metrics
        self.after = after  # seconds; 0: never
        self._lag = lag  # intents waiting on our partitions; None: not known now
        self._broker_answers = broker_answers
        self._busy = busy  # rebalancing or recovering tables: no decisions are expected
        self._dump = dump
        self._exit = exit
        self._clock = clock

    async def check(self) -> bool:
        """One look (the worker calls it every few seconds); True if it exited."""
        if self.after <= 0:
            return False
        if self._busy():
            # no decisions are expected now: the wait starts again afterwards
            self.metrics.stalled(0, after=self.after, now=self._clock())
            return False
        lag = await self._lag()
        if lag is None or not self.metrics.stalled(lag, after=self.after,
                                                   now=self._clock()):
            return False
        if not await self._broker_answers():
            return False  # the broker is away: restarting would not help
        log.error("no intent decided for %.0fs while %d wait on this worker's partitions and "
                  "the broker answers: stuck; writing stacks to stderr and exiting (%d) to be "
                  "started again", self.after, lag, EXIT_STALLED)
        self._dump()
        for handler in logging.getLogger().handlers:
            handler.flush()
        self._exit(EXIT_STALLED)
        return True
