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

Two ways of being stuck are judged apart. A rebalance, a table recovery or a starting
worker's first identity load (intents are held meanwhile, up to `ready_wait`, which may be
longer than `stall_exit`) is expected to take a while, so the worker is not judged stuck
during one unless it makes no progress: the same generation, the same phase, not one
changelog or identity record applied for `stall_exit` (a recovery that waited four
minutes for changelog records that never came was seen once).
And the intents waiting are counted without faust's consumer thread (whose wedge is one of
the things to catch): the broker's high watermarks, asked for on a connection of our own,
minus the next offset the agent is to handle (`waiting_intents`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping

from gatepass.worker.metrics import WorkerMetrics

__all__ = ["EXIT_STALLED", "StallWatchdog", "waiting_intents"]

log = logging.getLogger("gatepass.worker")

EXIT_STALLED = 70  # EX_SOFTWARE
# Intents waiting this long with none decided are logged (with the worker's own account of
# its state), again every as long, well before the watchdog exits: a stall that ends
# without an exit, or one the watchdog cannot judge, still leaves a trace.
NOTE_AFTER = 30.0


def waiting_intents(highs: Mapping[int, int], next_offsets: Mapping[int, int | None]
                    ) -> int | None:
    """Intents written to these partitions and not handled: each partition's high watermark
    minus the next offset the agent is to handle. None if that is known for none of them."""
    known = [(highs[p], n) for p, n in next_offsets.items() if n is not None and p in highs]
    if not known:
        return None
    return sum(max(0, high - n) for high, n in known)


class StallWatchdog:
    def __init__(self, metrics: WorkerMetrics, after: float, *,
                 lag: Callable[[], Awaitable[int | None]],
                 broker_answers: Callable[[], Awaitable[bool]],
                 busy: Callable[[], bool],
                 dump: Callable[[], None],
                 exit: Callable[[int], None],
                 progress: Callable[[], Hashable | None] = lambda: None,
                 describe: Callable[[], str] = lambda: "",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.metrics = metrics
        self.after = after  # seconds; 0: never
        self._lag = lag  # intents waiting on our partitions; None: not known now
        self._broker_answers = broker_answers
        self._busy = busy  # rebalancing or recovering tables: no decisions are expected
        # While busy: a mark that changes as the rebalance or recovery moves on; None: not
        # known (then the worker is never judged stuck while busy).
        self._progress = progress
        self._describe = describe  # the worker's state in a line, for the notes
        self._dump = dump
        self._exit = exit
        self._clock = clock
        self._busy_since: float | None = None
        self._busy_mark: Hashable | None = None
        self._noted_at: float | None = None

    async def check(self) -> bool:
        """One look (the worker calls it every few seconds); True if it exited. With
        `after` 0 it never exits, but still notes long waits."""
        now = self._clock()
        if self._busy():
            # no decisions are expected now: the wait for one starts again afterwards
            self.metrics.stalled(0, after=self.after, now=now)
            return await self._check_busy(now)
        self._busy_since = None
        lag = await self._lag()
        if lag is None:
            return False
        stalled = self.metrics.stalled(lag, after=self.after, now=now)
        waited = self.metrics.waiting_for(now)
        if waited >= NOTE_AFTER:
            self._note(now, f"{lag} intents wait, none decided for {waited:.0f}s")
        if not stalled or self.after <= 0:
            return False
        if not await self._broker_answers():
            return False  # the broker is away: restarting would not help
        self._stop(f"no intent decided for {self.after:.0f}s while {lag} wait on this "
                   "worker's partitions and the broker answers")
        return True

    async def _check_busy(self, now: float) -> bool:
        mark = self._progress()
        if mark is None or self._busy_since is None or mark != self._busy_mark:
            self._busy_since, self._busy_mark = now, mark
            return False
        still = now - self._busy_since
        if still < NOTE_AFTER:
            return False
        lag = await self._lag()
        # noted whatever waits: a rebalance or recovery not moving for this long is news
        self._note(now, f"rebalancing or recovering with no progress for {still:.0f}s while "
                        f"{'an unknown number of' if lag is None else lag} intents wait")
        if self.after <= 0 or still <= self.after:
            return False
        if not lag or not await self._broker_answers():
            return False  # nobody waits, or the broker is away: a restart would not help
        self._stop(f"rebalancing or recovering tables with no progress for {self.after:.0f}s "
                   f"while {lag} intents wait on this worker's partitions and the broker "
                   "answers")
        return True

    def _note(self, now: float, what: str) -> None:
        if self._noted_at is not None and now - self._noted_at < NOTE_AFTER:
            return
        self._noted_at = now
        try:
            state = self._describe()
        except Exception as exc:  # a note must never stop the watchdog
            state = f"(state not readable: {type(exc).__name__})"
        log.warning("%s; %s", what, state)

    def _stop(self, why: str) -> None:
        log.error("%s: stuck; writing stacks to stderr and exiting (%d) to be started again",
                  why, EXIT_STALLED)
        self._dump()
        for handler in logging.getLogger().handlers:
            handler.flush()
        self._exit(EXIT_STALLED)
