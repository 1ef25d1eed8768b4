"""HR feeds (CSV or JSON): who leaves, goes on leave or comes back, and from when.

One row per status change: an employee id and/or e-mail address, a status (terminated,
leave, active and their usual synonyms) and the effective date, either a date (the start of
that day in the configured zone, UTC by default) or a date-time with an offset. A row dated
after the time it was recorded (the file's `recorded_at` column, else the export's time) is
a scheduled status: it takes effect at its date, not at import (see core/identity.py).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from gatepass.core.identity import PrincipalStatusChanged, is_scheduled
from gatepass.core.model import PrincipalStatus
from gatepass.errors import ConfigError, RecordInvalidError
from gatepass.importers.base import (
    ImportBatch,
    Problems,
    agent_id_problem,
    check_as_of,
    parse_instant,
    principal_from_email,
    text,
    zone_of,
)

__all__ = ["HrConfig", "map_hr_rows", "parse_hr_file"]

HrFormat = Literal["csv", "json"]

# Column names as HR systems spell them, after lower-casing and turning ' ' and '-' into '_'.
COLUMNS: dict[str, tuple[str, ...]] = {
    "employee_id": ("employee_id", "employeeid", "emp_id", "employee_number", "worker_id"),
    "email": ("email", "work_email", "email_address", "mail"),
    "status": ("status", "employment_status", "worker_status"),
    "effective": ("effective_date", "effective_at", "effective", "effective_from",
                  "effective_time"),
    "recorded_at": ("recorded_at", "updated_at", "last_modified", "modified_at"),
    "event_id": ("event_id", "record_id", "change_id", "source_event_id"),
}
STATUSES: dict[str, PrincipalStatus] = {
    **dict.fromkeys(("terminated", "termination", "offboarded", "separated", "left",
                     "inactive"), PrincipalStatus.OFFBOARDED),
    **dict.fromkeys(("leave", "on_leave", "leave_of_absence", "loa", "suspended"),
                    PrincipalStatus.SUSPENDED),
    **dict.fromkeys(("active", "rehired", "returned", "hired", "reinstated"),
                    PrincipalStatus.ACTIVE),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class HrConfig:
    """How to read one HR feed; validated on construction (errors name the key)."""

    source: str = "hr-feed"
    zone: str = "UTC"  # the zone a bare date is the start of a day in
    principal_field: Literal["email", "employee_id"] = "email"

    def __post_init__(self) -> None:
        zone_of(self.zone)
        if not self.source.strip():
            raise ConfigError("source", "must not be empty")
        if self.principal_field not in ("email", "employee_id"):
            raise ConfigError("principal_field", "must be email or employee_id")


def _column(name: str) -> str:
    return name.strip().lower().replace(" ", "_").replace("-", "_")


def parse_hr_file(data: str, fmt: HrFormat) -> list[dict[str, Any]]:
    """The rows of a feed: CSV with a header row, or JSON (a list of objects, or an object
    whose `records`, `employees` or `value` member is that list)."""
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(data.lstrip("\ufeff")))
        if reader.fieldnames is None:
            return []
        rows = []
        for row in reader:
            if None in row:
                raise RecordInvalidError(f"CSV line {reader.line_num}: more cells than "
                                         "the header has columns")
            rows.append(dict(row))
        return rows
    try:
        doc = json.loads(data)
    except json.JSONDecodeError as exc:
        raise RecordInvalidError(f"not JSON: {exc}") from exc
    if isinstance(doc, Mapping):
        doc = next((doc[k] for k in ("records", "employees", "value") if k in doc), None)
    if not isinstance(doc, list) or not all(isinstance(r, Mapping) for r in doc):
        raise RecordInvalidError("JSON feed must be a list of objects, or an object with a "
                                 "'records' list")
    return [dict(r) for r in doc]


def map_hr_rows(rows: Sequence[Mapping[str, Any]], config: HrConfig, *,
                as_of: datetime) -> ImportBatch:
    """One PrincipalStatusChanged per row; raises RecordInvalidError naming every bad row.

    `as_of` is when the feed was exported: a row without its own `recorded_at` was recorded
    then, so a row dated later is scheduled. Pure: no clock, no I/O.
    """
    as_of = check_as_of(as_of)
    zone = zone_of(config.zone)
    problems = Problems(config.source)
    mapped: list[tuple[int, PrincipalStatusChanged]] = []
    for n, raw in enumerate(rows, start=1):
        row = {_column(k): v for k, v in raw.items() if isinstance(k, str)}
        got = {name: next((str(row[a]).strip() for a in aliases if text(row.get(a))), None)
               for name, aliases in COLUMNS.items()}
        event = _map_row(n, got, config, zone, as_of, problems)
        if event is not None:
            mapped.append((n, event))
    _one_plan_each(mapped, problems)
    problems.raise_if_any()
    return ImportBatch.of(config.source, len(rows), (event for _, event in mapped))


def _map_row(n: int, got: Mapping[str, str | None], config: HrConfig, zone: Any,
             as_of: datetime, problems: Problems) -> PrincipalStatusChanged | None:
    ident = got["employee_id"] or got["email"]
    bad = len(problems.found)
    principal = ""
    if config.principal_field == "email":
        if got["email"] is None:
            problems.add(n, "email", "missing (principals are identified by e-mail)", ident)
        else:
            try:
                principal = principal_from_email(got["email"])
            except ValueError as exc:
                problems.add(n, "email", str(exc), ident)
    elif got["employee_id"] is None:
        problems.add(n, "employee_id", "missing", ident)
    else:
        principal = got["employee_id"]
        if agent_id_problem(principal):
            problems.add(n, "employee_id", "must be letters, digits and ._:@-", ident)
    status = STATUSES.get(_column(got["status"] or ""))
    if status is None:
        problems.add(n, "status", f"unknown status {got['status']!r} (terminated, leave or "
                     "active)" if got["status"] else "missing", ident)
    effective = _instant(n, "effective_date", got["effective"], zone, problems, ident,
                         required=True)
    recorded = _instant(n, "recorded_at", got["recorded_at"], zone, problems, ident,
                        required=False)
    if len(problems.found) > bad or status is None or effective is None:
        return None
    when = effective.isoformat().replace("+00:00", "Z")
    event_id = got["event_id"] or f"{ident}/{status.value}/{when}"
    return PrincipalStatusChanged(principal_id=principal, status=status, event_time=effective,
                                  recorded_at=recorded or as_of, source=config.source,
                                  source_event_id=event_id)


def _instant(n: int, field: str, value: str | None, zone: Any, problems: Problems,
             ident: str | None, *, required: bool) -> datetime | None:
    if value is None:
        if required:
            problems.add(n, field, "missing", ident)
        return None
    try:
        return parse_instant(value, zone)
    except ValueError as exc:
        problems.add(n, field, f"{value!r}: {exc}", ident)
        return None


def _one_plan_each(mapped: Sequence[tuple[int, PrincipalStatusChanged]],
                   problems: Problems) -> None:
    """The topic holds one scheduled status per principal (the plan recorded last), so two
    different ones dated ahead in one file would silently drop one: refused instead."""
    firsts: dict[str, tuple[int, PrincipalStatusChanged]] = {}
    for n, event in mapped:
        if not is_scheduled(event):
            continue
        m, first = firsts.setdefault(event.principal_id, (n, event))
        if m != n and (first.event_time, first.status) != (event.event_time, event.status):
            problems.add(n, "effective_date",
                         f"a second status dated ahead for {event.principal_id} (row {m} "
                         f"has {first.status.value} at {first.event_time.isoformat()}): one "
                         "scheduled status per principal; import this row once row "
                         f"{m} took effect", event.principal_id)
