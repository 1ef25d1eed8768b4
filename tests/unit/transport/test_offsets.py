"""Commits of the worker's own consumer groups: a rebalance is a warning, not a crash."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiokafka.errors import CommitFailedError

from gatepass.transport.offsets import commit_or_warn


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
