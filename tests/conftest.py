"""Shared fixtures. Brokers start only when a test asks for one, so unit tests never do."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import settings as hypothesis_settings

from support import broker

# CI runs every property and fuzz test on the same derived examples (a red CI run can be
# reproduced; a green one is not luck), without per-example deadlines on a shared machine.
# Locally, Hypothesis explores new examples on each run.
hypothesis_settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")


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
