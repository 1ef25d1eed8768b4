"""When to forget a decided intent: a per-partition index of table keys by write time.

The `decided` table answers redelivered intents; past the dedupe horizon a redelivery is
necessarily stale and its pass expired, so the entry can go. Deletions must be written to
the changelog partition the key lives in, which faust only allows while an event of that
partition is being processed, so the agent asks this index for the expired keys of the
partition of the event in hand. Times come from the changelog records on recovery and from
the clock on live writes, so nothing has to be decoded to expire it.
"""

from __future__ import annotations

from collections import deque

__all__ = ["ExpiryIndex"]


class ExpiryIndex:
    def __init__(self, horizon_seconds: float, *, sweep_every: float = 10.0,
                 max_per_sweep: int = 5000) -> None:
        self.horizon = horizon_seconds
        self.sweep_every = sweep_every
        self.max_per_sweep = max_per_sweep
        self._keys: dict[int, deque[tuple[float, bytes]]] = {}
        self._last_sweep: dict[int, float] = {}

    def add(self, partition: int, key: bytes, written_at: float) -> None:
        self._keys.setdefault(partition, deque()).append((written_at, key))

    def forget_partition(self, partition: int) -> None:
        self._keys.pop(partition, None)
        self._last_sweep.pop(partition, None)

    def due(self, partition: int, now: float) -> list[bytes]:
        """Keys of `partition` older than the horizon, at most every `sweep_every` seconds."""
        if now - self._last_sweep.get(partition, 0.0) < self.sweep_every:
            return []
        self._last_sweep[partition] = now
        queue = self._keys.get(partition)
        expired: list[bytes] = []
        cutoff = now - self.horizon
        while queue and queue[0][0] < cutoff and len(expired) < self.max_per_sweep:
            expired.append(queue.popleft()[1])
        return expired

    def __len__(self) -> int:
        return sum(len(q) for q in self._keys.values())
