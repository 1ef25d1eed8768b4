"""Shared fixtures. Brokers start only when a test asks for one, so unit tests never do."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from support import broker


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap address of a Kafka broker for the whole session (see tests/support/broker.py)."""
    with broker.kafka_bootstrap() as bootstrap:
        yield bootstrap


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A worker on its own topic prefix and key store, shared by one test module."""
    from support.stack import running_stack

    with running_stack(kafka_bootstrap, tmp_path_factory.mktemp("gatepass")) as s:
        s.start_worker()
        yield s
