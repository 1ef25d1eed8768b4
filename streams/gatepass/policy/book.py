"""Which policy decides an intent: the activation in force at the intent's append time.

`gatepass policy push` writes a bundle and an activation (`effective_at` = push time plus the
rollout delay) to the policy topic. Every worker reads that topic into a PolicyBook and asks
it for the policy of each intent by the intent's broker append time - so all workers switch
at the same point of every partition, and a redelivered intent gets the version it got the
first time. The book answers None when it cannot know yet (it has not read the topic up to
a moment that covers that time): the caller waits for the loader, then denies.

Pure: the loader (worker/policy_loader.py) feeds it; tests drive it directly.
"""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from gatepass.core.policy import CedarPolicy

__all__ = ["Activation", "PolicyBook"]

log = logging.getLogger("gatepass.policy")
# Pusher and workers read different clocks; a push is trusted to be at least this much
# later than its pushed_at says, minus this margin.
CLOCK_MARGIN = timedelta(seconds=1)


@dataclass(frozen=True, slots=True, order=True)
class Activation:
    effective_at: datetime
    activation_id: str
    version: str


class PolicyBook:
    def __init__(self, initial: CedarPolicy, *, rollout_delay: timedelta,
                 complete_as_of: datetime | None = None) -> None:
        """`initial`: the local bundle, in force until the first activation. A book built
        with `complete_as_of=None` answers nothing until `mark_complete` is called."""
        self.initial = initial
        self.rollout_delay = rollout_delay
        self._bundles: dict[str, CedarPolicy] = {initial.version: initial}
        self._activations: list[Activation] = []
        self._complete_as_of = complete_as_of
        self._forever = False
        self.refused: dict[str, str] = {}  # version -> why it could not be loaded

    @classmethod
    def fixed(cls, policy: CedarPolicy) -> PolicyBook:
        """One policy for all time (tests, offline tools)."""
        book = cls(policy, rollout_delay=timedelta(seconds=1))
        book._forever = True
        return book

    # ---- fed by the loader ---------------------------------------------------------------
    def add_bundle(self, policy: CedarPolicy) -> None:
        self._bundles.setdefault(policy.version, policy)

    def refuse_bundle(self, version: str, why: str) -> None:
        self.refused[version] = why

    def add_activation(self, activation: Activation) -> None:
        if activation not in self._activations:
            bisect.insort(self._activations, activation)

    def mark_complete(self, as_of: datetime) -> None:
        """The loader has read every record written to the policy topic before `as_of`."""
        if self._complete_as_of is None or as_of > self._complete_as_of:
            self._complete_as_of = as_of

    # ---- asked by the pipeline -----------------------------------------------------------
    def knows(self, at: datetime) -> bool:
        """Whether every activation that could be in force at `at` has been read."""
        if self._forever:
            return True
        if self._complete_as_of is None:
            return False
        return at <= self._complete_as_of + self.rollout_delay - CLOCK_MARGIN

    def for_time(self, at: datetime) -> CedarPolicy | None:
        """The policy in force at `at` (an intent's append time); None: not known yet."""
        return self._in_force(at) if self.knows(at) else None

    def current(self, now: datetime) -> CedarPolicy:
        """What decides now, as far as this worker has read (for /readyz and the CLI)."""
        return self._in_force(now)

    def by_version(self, version: str) -> CedarPolicy | None:
        return self._bundles.get(version)

    def versions(self) -> list[str]:
        return sorted(self._bundles)

    def activations(self) -> list[Activation]:
        return list(self._activations)

    def _in_force(self, at: datetime) -> CedarPolicy:
        # The newest activation at or before `at` whose bundle loaded; a refused bundle's
        # activation is passed over and the last good policy keeps deciding.
        index = bisect.bisect_right([a.effective_at for a in self._activations], at)
        for activation in reversed(self._activations[:index]):
            policy = self._bundles.get(activation.version)
            if policy is not None:
                return policy
        return self.initial
