"""Shared fixtures. Brokers start only when a test asks for one, so unit tests never do."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from support import broker


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap address of a Kafka broker for the whole session (see tests/support/broker.py)."""
    with broker.kafka_bootstrap() as bootstrap:
        yield bootstrap
