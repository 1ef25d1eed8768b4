"""HR feeds: rows to principal statuses, dated ahead means scheduled, all rows or none."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gatepass.codec import schemas
from gatepass.codec.records import lifecycle_from_record, lifecycle_to_record
from gatepass.core import IdentityState, PrincipalStatus, PrincipalStatusChanged, lifecycle_key
from gatepass.core.identity import is_scheduled
from gatepass.errors import ConfigError, RecordInvalidError
from gatepass.importers import HrConfig, map_hr_rows, parse_hr_file

FIXTURES = Path(__file__).parent / "fixtures"
AS_OF = datetime(2026, 3, 3, 8, 0, tzinfo=UTC)  # when the feed was exported


def rows(fmt: str = "csv") -> list[dict[str, Any]]:
    return parse_hr_file((FIXTURES / f"hr_terminations.{fmt}").read_text(), fmt)  # type: ignore[arg-type]


def row(**cells: str) -> dict[str, str]:
    base = {"employee_id": "E1", "email": "sarah@example.com", "status": "terminated",
            "effective_date": "2026-03-01"}
    return {k: v for k, v in (base | cells).items() if v is not None}


def one(cells: dict[str, str], **config: Any) -> PrincipalStatusChanged:
    [event] = map_hr_rows([cells], HrConfig(**config), as_of=AS_OF).events
    assert isinstance(event, PrincipalStatusChanged)
    return event


def problems(cells: list[dict[str, str]], **config: Any) -> list[tuple[int, str, str]]:
    with pytest.raises(RecordInvalidError) as info:
        map_hr_rows(cells, HrConfig(**config), as_of=AS_OF)
    assert info.value.code == "record_invalid"
    return [(p.row, p.field, p.message) for p in info.value.problems]


# ---- the fixtures ------------------------------------------------------------------------
def test_csv_feed_maps_each_row_and_drops_the_repeated_one() -> None:
    batch = map_hr_rows(rows("csv"), HrConfig(), as_of=AS_OF)
    assert (batch.source, batch.rows, len(batch.events), batch.duplicates) == (
        "hr-feed", 4, 3, 1)
    sarah, tom, amy = batch.events
    assert isinstance(sarah, PrincipalStatusChanged)
    assert (sarah.principal_id, sarah.status, sarah.event_time, sarah.recorded_at) == (
        "sarah.connor@example.com", PrincipalStatus.OFFBOARDED,
        datetime(2026, 3, 6, tzinfo=UTC), AS_OF)
    assert lifecycle_key(sarah) == "principal:sarah.connor@example.com/scheduled-status"
    assert sarah.source_event_id == "E1001/offboarded/2026-03-06T00:00:00Z"
    assert isinstance(tom, PrincipalStatusChanged) and not is_scheduled(tom)
    assert (tom.status, tom.event_time) == (PrincipalStatus.SUSPENDED,
                                            datetime(2026, 3, 2, 8, tzinfo=UTC))
    assert isinstance(amy, PrincipalStatusChanged) and amy.status is PrincipalStatus.ACTIVE


def test_json_feed_uses_its_event_ids_and_recording_times() -> None:
    batch = map_hr_rows(rows("json"), HrConfig(source="workday"), as_of=AS_OF)
    ids = [e.source_event_id for e in batch.events]
    assert ids == ["HR-77001", "HR-77002", "HR-77003"]
    amy = batch.events[2]
    assert amy.recorded_at == datetime(2026, 1, 25, 10, tzinfo=UTC)  # its own column
    assert {e.source for e in batch.events} == {"workday"}


# ---- one row at a time -------------------------------------------------------------------
@pytest.mark.parametrize(("cells", "config", "expected"), [
    (row(), {}, ("sarah@example.com", "offboarded", "2026-03-01T00:00:00+00:00")),
    (row(email="  Sarah@Example.COM "), {}, ("sarah@example.com", "offboarded",
                                             "2026-03-01T00:00:00+00:00")),
    (row(effective_date="2026-03-01"), {"zone": "Europe/Paris"},
     ("sarah@example.com", "offboarded", "2026-02-28T23:00:00+00:00")),
    (row(effective_date="2026-07-01"), {"zone": "America/New_York"},  # summer time
     ("sarah@example.com", "offboarded", "2026-07-01T04:00:00+00:00")),
    (row(effective_date="2026-03-01T17:30:00+01:00"), {"zone": "America/New_York"},
     ("sarah@example.com", "offboarded", "2026-03-01T16:30:00+00:00")),  # zone given wins
    (row(effective_date="2026-03-01T17:30:00.123456Z"), {},
     ("sarah@example.com", "offboarded", "2026-03-01T17:30:00.123000+00:00")),  # millis
    (row(effective_date="2026-03-01 17:30:00Z"), {},
     ("sarah@example.com", "offboarded", "2026-03-01T17:30:00+00:00")),
    (row(status="Leave of Absence"), {}, ("sarah@example.com", "suspended",
                                          "2026-03-01T00:00:00+00:00")),
    (row(status="on-leave"), {}, ("sarah@example.com", "suspended",
                                  "2026-03-01T00:00:00+00:00")),
    (row(status="REHIRED"), {}, ("sarah@example.com", "active", "2026-03-01T00:00:00+00:00")),
    (row(status="Active"), {}, ("sarah@example.com", "active", "2026-03-01T00:00:00+00:00")),
    (row(), {"principal_field": "employee_id"}, ("E1", "offboarded",
                                                 "2026-03-01T00:00:00+00:00")),
    ({"Employee ID": "E1", "Work Email": "sarah@example.com", "Employment Status": "Terminated",
      "Effective Date": "2026-03-01"}, {}, ("sarah@example.com", "offboarded",
                                            "2026-03-01T00:00:00+00:00")),
], ids=["date is start of day UTC", "email normalized", "date in Paris", "date in New York",
        "offset wins over zone", "microseconds cut to millis", "space separator", "leave",
        "on-leave", "rehired", "active", "by employee id", "column spellings"])
def test_a_row_maps_to_one_principal_status(cells: dict[str, str], config: dict[str, Any],
                                            expected: tuple[str, str, str]) -> None:
    event = one(cells, **config)
    assert (event.principal_id, event.status.value, event.event_time.isoformat()) == expected


@pytest.mark.parametrize(("effective", "recorded", "scheduled"), [
    ("2026-03-06", None, True),  # dated after the export: scheduled
    ("2026-03-03T08:00:00Z", None, False),  # exactly at the export: in force
    ("2026-03-03T08:00:00.001Z", None, True),
    ("2026-02-01", None, False),  # backdated: in force
    ("2026-03-06", "2026-03-07T00:00:00Z", False),  # recorded after it happened
    ("2026-03-06", "2026-03-01T00:00:00Z", True),
])
def test_a_row_dated_after_its_recording_is_scheduled(effective: str, recorded: str | None,
                                                      scheduled: bool) -> None:
    cells = row(effective_date=effective)
    if recorded:
        cells["recorded_at"] = recorded
    event = one(cells)
    assert is_scheduled(event) is scheduled
    assert event.recorded_at == (datetime.fromisoformat(recorded) if recorded else AS_OF)


@pytest.mark.parametrize(("cells", "field", "message"), [
    (row(email=""), "email", "missing"),
    ({"employee_id": "E1", "status": "terminated", "effective_date": "2026-03-01"}, "email",
     "missing"),
    (row(email="sarah"), "email", "not an e-mail address"),
    (row(status="fired"), "status", "unknown status 'fired'"),
    (row(status=""), "status", "missing"),
    (row(effective_date=""), "effective_date", "missing"),
    (row(effective_date="01/03/2026"), "effective_date", "'01/03/2026'"),
    (row(effective_date="2026-03-01T17:00:00"), "effective_date", "needs a time zone"),
    (row(effective_date="2026-02-30"), "effective_date", "'2026-02-30'"),
    (row(recorded_at="yesterday"), "recorded_at", "'yesterday'"),
], ids=["empty email", "no email column", "not an email", "unknown status", "no status",
        "no date", "ambiguous date", "naive date-time", "impossible date", "bad recorded_at"])
def test_a_bad_row_is_named_with_its_field(cells: dict[str, str], field: str,
                                           message: str) -> None:
    [(n, got_field, got_message)] = problems([cells])
    assert (n, got_field) == (1, field)
    assert message in got_message


def test_a_missing_employee_id_is_named_when_principals_are_employee_ids() -> None:
    assert problems([row(employee_id="")], principal_field="employee_id") == [
        (1, "employee_id", "missing")]


def test_one_bad_row_imports_nothing_and_every_bad_row_is_named() -> None:
    feed = [row(), row(email="nope"), row(employee_id="E2", email="tom@example.com"),
            row(employee_id="E3", status="fired", effective_date="soon")]
    with pytest.raises(RecordInvalidError) as info:
        map_hr_rows(feed, HrConfig(), as_of=AS_OF)
    assert [(p.row, p.field, p.ident) for p in info.value.problems] == [
        (2, "email", "E1"), (4, "status", "E3"), (4, "effective_date", "E3")]
    assert "row 2 (E1), field 'email'" in str(info.value)


def test_two_different_statuses_dated_ahead_for_one_principal_are_refused() -> None:
    feed = [row(status="leave", effective_date="2026-03-10"),
            row(status="terminated", effective_date="2026-04-01")]
    [(n, field, message)] = problems(feed)
    assert (n, field) == (2, "effective_date")
    assert "one scheduled status per principal" in message and "row 1" in message


def test_the_same_plan_twice_and_a_plan_beside_facts_in_force_are_fine() -> None:
    feed = [row(effective_date="2026-03-10"), row(effective_date="2026-03-10"),
            row(status="leave", effective_date="2026-02-10"),
            row(status="active", effective_date="2026-02-20")]
    batch = map_hr_rows(feed, HrConfig(), as_of=AS_OF)
    assert (len(batch.events), batch.duplicates) == (3, 1)


def test_rows_out_of_order_resolve_by_effective_time() -> None:
    feed = [row(status="terminated", effective_date="2026-03-01"),
            row(status="leave", effective_date="2026-01-10"),
            row(status="active", effective_date="2026-02-01")]
    state = IdentityState()
    for event in map_hr_rows(feed, HrConfig(), as_of=AS_OF).events:
        state.apply(event)
    record = state.principal("sarah@example.com", AS_OF)
    assert record is not None and record.status is PrincipalStatus.OFFBOARDED


# ---- determinism: the same file, the same events, the same bytes ------------------------
def test_mapping_the_same_feed_twice_gives_identical_events_and_bytes() -> None:
    first = map_hr_rows(rows(), HrConfig(), as_of=AS_OF)
    second = map_hr_rows(rows(), HrConfig(), as_of=AS_OF)
    assert first == second
    codec = schemas().lifecycle
    assert [codec.encode(lifecycle_to_record(e)) for e in first.events] == \
        [codec.encode(lifecycle_to_record(e)) for e in second.events]


def test_events_survive_the_topic_unchanged() -> None:
    codec = schemas().lifecycle
    for event in map_hr_rows(rows("json"), HrConfig(zone="Asia/Kolkata"), as_of=AS_OF).events:
        assert lifecycle_from_record(codec.decode(codec.encode(lifecycle_to_record(event)))) \
            == event


# ---- parsing and configuration -----------------------------------------------------------
@pytest.mark.parametrize(("data", "fmt", "count"), [
    ("\ufeffemail,status,effective_date\na@example.com,active,2026-01-01\n", "csv", 1),
    ("email,status,effective_date\n", "csv", 0),
    ("", "csv", 0),
    ('[{"email": "a@example.com"}]', "json", 1),
    ('{"employees": [{"email": "a@example.com"}, {"email": "b@example.com"}]}', "json", 2),
    ('{"value": []}', "json", 0),
])
def test_feed_shapes(data: str, fmt: Any, count: int) -> None:
    assert len(parse_hr_file(data, fmt)) == count


@pytest.mark.parametrize(("data", "fmt", "message"), [
    ("email,status\na@example.com,active,extra\n", "csv", "CSV line 2"),
    ("{not json", "json", "not JSON"),
    ('{"people": []}', "json", "list of objects"),
    ('[1, 2]', "json", "list of objects"),
])
def test_unreadable_feeds_are_refused(data: str, fmt: Any, message: str) -> None:
    with pytest.raises(RecordInvalidError, match=message):
        parse_hr_file(data, fmt)


@pytest.mark.parametrize(("config", "key"), [
    ({"zone": "Mars/Olympus"}, "zone"), ({"source": " "}, "source"),
    ({"principal_field": "name"}, "principal_field")])
def test_bad_configuration_names_its_key(config: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        HrConfig(**config)
    assert info.value.key == key


def test_the_export_time_must_carry_a_zone() -> None:
    with pytest.raises(ConfigError) as info:
        map_hr_rows([row()], HrConfig(), as_of=datetime(2026, 3, 3, 8, 0))
    assert info.value.key == "as_of"


def test_a_feed_without_rows_is_an_empty_batch() -> None:
    batch = map_hr_rows([], HrConfig(), as_of=AS_OF)
    assert (batch.rows, batch.events, batch.duplicates) == (0, (), 0)


def test_scheduled_event_time_is_later_than_recorded() -> None:
    event = one(row(effective_date="2026-03-06"))
    assert event.recorded_at is not None
    assert event.event_time - event.recorded_at == timedelta(days=2, hours=16)
