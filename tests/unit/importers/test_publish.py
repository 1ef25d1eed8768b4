"""Redelivery: the same file twice has no second effect, in the publish step and in the fold."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gatepass.codec import schemas
from gatepass.codec.records import lifecycle_from_record, lifecycle_to_record
from gatepass.config import Settings
from gatepass.core import Applied, IdentityState, LifecycleEvent
from gatepass.importers import (
    EntraConfig,
    HrConfig,
    ImportBatch,
    ServiceNowConfig,
    map_entra_agents,
    map_hr_rows,
    map_servicenow_cis,
    parse_hr_file,
    publish_batch,
)

FIXTURES = Path(__file__).parent / "fixtures"
AS_OF = datetime(2026, 3, 3, 8, 0, tzinfo=UTC)


def batches() -> dict[str, ImportBatch]:
    read = (FIXTURES / "hr_terminations.csv").read_text()
    return {
        "hr": map_hr_rows(parse_hr_file(read, "csv"), HrConfig(), as_of=AS_OF),
        "entra": map_entra_agents(json.loads(
            (FIXTURES / "entra_agent_identities.json").read_text()),
            EntraConfig(default_purpose="support"), as_of=AS_OF),
        "servicenow": map_servicenow_cis(json.loads(
            (FIXTURES / "servicenow_cmdb_ci_all.json").read_text()), ServiceNowConfig(),
            as_of=AS_OF),
    }


class Topic:
    """The identity topic as a list of Avro records, read back like a worker would."""

    def __init__(self) -> None:
        self.records: list[bytes] = []

    def publish(self, events: Iterable[LifecycleEvent]) -> None:
        codec = schemas().lifecycle
        self.records += [codec.encode(lifecycle_to_record(e)) for e in events]

    def state(self) -> IdentityState:
        state = IdentityState()
        for value in self.records:
            state.apply(lifecycle_from_record(schemas().lifecycle.decode(value)))
        return state


@pytest.mark.parametrize("source", ["hr", "entra", "servicenow"])
def test_importing_the_same_file_twice_publishes_nothing_the_second_time(source: str) -> None:
    topic = Topic()
    batch = batches()[source]
    first = publish_batch(Settings(), batch, held=topic.state(), publish=topic.publish)
    assert first.published == len(batch.events) > 0
    assert first.skipped_duplicates == batch.duplicates
    assert first.events == first.published + first.skipped_duplicates
    written = len(topic.records)
    again = publish_batch(Settings(), batches()[source], held=topic.state(),
                          publish=topic.publish)
    assert (again.published, again.skipped_duplicates) == (0, first.events)
    assert len(topic.records) == written


@pytest.mark.parametrize("source", ["hr", "entra", "servicenow"])
def test_the_fold_treats_a_redelivered_file_as_no_change(source: str) -> None:
    topic = Topic()
    topic.publish(batches()[source].events)
    state = topic.state()
    before = (dict(state.agents), dict(state.principals),
              {p: state.scheduled(p) for p in state.principals})
    for event in batches()[source].events:
        assert state.apply(event) == Applied(False)
        assert state.needs_repair(event) is None  # no write-back either
    assert (dict(state.agents), dict(state.principals),
            {p: state.scheduled(p) for p in state.principals}) == before


def test_only_the_new_rows_of_a_grown_file_are_published() -> None:
    topic = Topic()
    rows = parse_hr_file((FIXTURES / "hr_terminations.csv").read_text(), "csv")
    publish_batch(Settings(), map_hr_rows(rows[:2], HrConfig(), as_of=AS_OF),
                  held=topic.state(), publish=topic.publish)
    grown = publish_batch(Settings(), map_hr_rows(rows, HrConfig(), as_of=AS_OF),
                          held=topic.state(), publish=topic.publish)
    assert (grown.rows, grown.published, grown.skipped_duplicates) == (4, 1, 3)


def test_nothing_to_publish_makes_no_call() -> None:
    calls: list[Any] = []
    empty = ImportBatch.of("hr-feed", 0, [])
    summary = publish_batch(Settings(), empty, held=IdentityState(), publish=calls.append)
    assert calls == [] and summary.published == 0
