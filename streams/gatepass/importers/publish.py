"""The one impure step of an import: skip the facts the topic holds, publish the rest.

The identity topic is read to its end and folded like a worker would (`IdentityState`);
an event whose fact is held already (the same file imported again, a redelivery) is
skipped and counted. What is left is published in one call that waits for the broker's
acknowledgement of every record (`LifecyclePublisher.publish`). Skipping is a courtesy (it
spares the topic and the fan-out): publishing a held fact again would change nothing either,
because the fold treats an identical fact as no change.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from gatepass.codec.avro import schemas
from gatepass.codec.lifecycle_reader import decode_lifecycle
from gatepass.config import Settings
from gatepass.core.identity import IdentityState, LifecycleEvent
from gatepass.errors import DecodeError
from gatepass.importers.base import ImportBatch

__all__ = ["PublishSummary", "held_identity", "publish_batch"]

log = logging.getLogger("gatepass.importers")
_READ_TIMEOUT = 300.0


@dataclass(frozen=True, slots=True)
class PublishSummary:
    source: str
    rows: int
    events: int
    published: int
    skipped_duplicates: int  # repeated in the file, or already held by the topic
    dry_run: bool = False


def held_identity(settings: Settings, *, timeout: float = _READ_TIMEOUT) -> IdentityState:
    """The identity topic folded from its beginning to its end as seen now."""
    from gatepass.transport import read_topics

    codec = schemas().lifecycle
    state = IdentityState()
    for record in read_topics(settings.bootstrap, [settings.topics.identity],
                              group="gatepass-import", timeout=timeout):
        if record.value is None:
            continue
        try:
            state.apply(decode_lifecycle(codec, record.value))
        except (DecodeError, KeyError, ValueError, TypeError):
            continue  # dead-lettered by the workers; not ours to judge here
    return state


def publish_batch(settings: Settings, batch: ImportBatch, *,
                  held: IdentityState | None = None,
                  publish: Callable[[Iterable[LifecycleEvent]], None] | None = None
                  ) -> PublishSummary:
    """Publish the batch's events that the topic does not hold yet; all acknowledged or
    BrokerError. `held` and `publish` default to reading and writing `settings`' topic."""
    if held is None or publish is None:
        from gatepass.sdk import LifecyclePublisher
        from gatepass.transport import ensure_topics

        ensure_topics(settings)
        held = held_identity(settings) if held is None else held
        if publish is None:
            publisher = LifecyclePublisher(bootstrap=settings.bootstrap,
                                           topic_prefix=settings.topic_prefix)
            publish = lambda events: publisher.publish(*events)  # noqa: E731
    fresh = [e for e in batch.events if not held.holds(e)]
    if fresh:
        publish(fresh)
    log.info("%s: %d rows, %d events, %d published", batch.source, batch.rows,
             len(batch.events), len(fresh))
    return PublishSummary(source=batch.source, rows=batch.rows,
                          events=len(batch.events) + batch.duplicates, published=len(fresh),
                          skipped_duplicates=batch.duplicates + len(batch.events) - len(fresh))
