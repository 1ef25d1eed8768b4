"""faust's Kafka consumer with a short fetch wait.

faust-streaming 0.15 builds its aiokafka consumer with `fetch_max_wait_ms=1500` and no
setting to change it. aiokafka keeps at most one fetch request in flight per broker, and a
partition whose buffered records were just handed to the app joins only the *next* request:
while the one in flight is parked at the broker (up to the wait, for partitions with no new
data) the records arriving in that partition wait with it. With many intents in flight this
convoy held each intent about 1.6 s in a faust echo that had CPU to spare (docs/benchmarks.md,
*What changed*). A short wait bounds that; the cost is a fetch request per wait while idle.

Example::

    app = faust.App(...)
    use_short_fetch_wait(app)      # before the app's consumer is first used
"""

from __future__ import annotations

from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka

__all__ = ["FETCH_MAX_WAIT_MS", "use_short_fetch_wait"]

FETCH_MAX_WAIT_MS = 100


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # AIOKafkaConsumer(fetch_max_wait_ms=...) stores it here and hands it to its fetcher
        # when it starts, which is after this.
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


def use_short_fetch_wait(app: Any) -> None:
    """Make `app`'s stream consumer (not yet created) fetch with FETCH_MAX_WAIT_MS."""
    if app._consumer is not None:
        raise RuntimeError("the app's consumer exists already")
    app.transport.Consumer = _Consumer
