"""Commits of the worker's own consumer groups: a rebalance is a warning, not a crash."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiokafka.errors import CommitFailedError
from confluent_kafka import KafkaError as RdKafkaError
from confluent_kafka import KafkaException

from gatepass.errors import BrokerError
from gatepass.transport.offsets import HighWatermarks, commit_or_warn


class Refusing:
    async def commit(self) -> None:
        raise CommitFailedError("the group has already rebalanced")


class Accepting:
    async def commit(self) -> None:
        return None


def test_a_commit_refused_by_a_rebalance_is_a_warning_not_an_error(
        caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test.commits")
    with caplog.at_level(logging.WARNING, "test.commits"):
        assert asyncio.run(commit_or_warn(Refusing(), log, "fan-out")) is False
        assert asyncio.run(commit_or_warn(Accepting(), log, "fan-out")) is True
    assert [r.getMessage() for r in caplog.records] == [
        "fan-out: offsets not committed (CommitFailedError); those records will be handled "
        "again"]


class Client:
    """A stand-in librdkafka consumer: answers, or stays stuck (every look-up fails)."""

    made: list[Client] = []

    def __init__(self, config: dict[str, object]) -> None:
        self.stuck = False
        self.closed = False
        Client.made.append(self)

    def get_watermark_offsets(self, tp: object, timeout: float) -> tuple[int, int]:
        if self.stuck:
            raise KafkaException(RdKafkaError(RdKafkaError._TRANSPORT))
        return 0, 7

    def close(self) -> None:
        self.closed = True


def test_a_stuck_client_is_dropped_and_the_next_look_up_starts_a_new_one() -> None:
    Client.made.clear()
    ends = HighWatermarks({}, factory=Client)
    assert ends.highs("t", [0, 1], timeout=0.01) == {0: 7, 1: 7}
    assert ends.highs("t", [0], timeout=0.01) == {0: 7}
    assert len(Client.made) == 1  # one client while it answers
    Client.made[0].stuck = True
    with pytest.raises(BrokerError):
        ends.highs("t", [0], timeout=0.01)
    assert Client.made[0].closed
    assert ends.highs("t", [0], timeout=0.01) == {0: 7}
    assert len(Client.made) == 2
    ends.close()
    assert Client.made[1].closed
