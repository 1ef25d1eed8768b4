"""What every importer shares: the batch it maps a file to, its error, and value checks.

A mapping is all or nothing: every row is checked, every problem is collected, and one
RecordInvalidError (`record_invalid`) naming each bad row and field is raised before
anything is published (`rows_invalid`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gatepass.core.identity import LifecycleEvent, lifecycle_key
from gatepass.errors import ConfigError, RecordInvalidError

__all__ = ["ImportBatch", "RowProblem", "rows_invalid"]

# The ids decide accepts for agents (see core/decide.py): an agent id it would refuse in an
# intent is refused here, where the row can still be named.
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_MAX_PROBLEMS_SHOWN = 20


@dataclass(frozen=True, slots=True)
class RowProblem:
    """One thing wrong with one row; `row` counts data rows from 1 (a CSV header is not one)."""

    row: int
    field: str
    message: str
    ident: str | None = None  # the row's own id when it has one (employee id, sys_id...)

    def __str__(self) -> str:
        who = f" ({self.ident})" if self.ident else ""
        return f"row {self.row}{who}, field {self.field!r}: {self.message}"


def rows_invalid(source: str, problems: Sequence[RowProblem]) -> RecordInvalidError:
    """The error of a file whose rows do not all map: `record_invalid`, every problem named
    in the message and kept, as RowProblems, in its `problems` attribute."""
    shown = "; ".join(str(p) for p in problems[:_MAX_PROBLEMS_SHOWN])
    more = len(problems) - _MAX_PROBLEMS_SHOWN
    tail = f"; and {more} more" if more > 0 else ""
    count = len(problems)
    error = RecordInvalidError(f"{source}: {count} problem{'' if count == 1 else 's'}, "
                               f"nothing imported: {shown}{tail}")
    error.problems = tuple(problems)  # type: ignore[attr-defined]
    return error


@dataclass(frozen=True, slots=True)
class ImportBatch:
    """The lifecycle events of one import file, in row order, each fact once."""

    source: str
    rows: int
    events: tuple[LifecycleEvent, ...]
    duplicates: int = 0  # events that repeated an earlier row of the same file

    @classmethod
    def of(cls, source: str, rows: int, events: Iterable[LifecycleEvent]) -> ImportBatch:
        seen: set[tuple[str, LifecycleEvent]] = set()
        kept: list[LifecycleEvent] = []
        duplicates = 0
        for event in events:
            mark = (lifecycle_key(event), event)
            if mark in seen:
                duplicates += 1
                continue
            seen.add(mark)
            kept.append(event)
        return cls(source=source, rows=rows, events=tuple(kept), duplicates=duplicates)


class Problems:
    """Collects the problems of a mapping; `raise_if_any` ends it all or nothing."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.found: list[RowProblem] = []

    def add(self, row: int, field: str, message: str, ident: str | None = None) -> None:
        self.found.append(RowProblem(row, field, message, ident))

    def raise_if_any(self) -> None:
        if self.found:
            raise rows_invalid(self.source, self.found)


def to_millis(value: datetime) -> datetime:
    """UTC, truncated to the milliseconds the topic keeps, so a re-read event is equal."""
    value = value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def zone_of(name: str, key: str = "zone") -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(key, f"unknown IANA time zone {name!r}") from exc


def check_as_of(as_of: datetime) -> datetime:
    if as_of.tzinfo is None or as_of.utcoffset() is None:
        raise ConfigError("as_of", "must carry a time zone")
    return to_millis(as_of)


def parse_instant(text: str, zone: ZoneInfo) -> datetime:
    """An ISO 8601 date (start of that day in `zone`) or date-time with an offset.

    A date-time without an offset is refused: which zone it meant is a guess.
    """
    text = text.strip()
    if len(text) == 10:
        day = date.fromisoformat(text)
        return to_millis(datetime.combine(day, time(0), tzinfo=zone))
    moment = datetime.fromisoformat(text.replace(" ", "T", 1))
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("a date-time needs a time zone offset (Z, +01:00...), or give a date")
    return to_millis(moment)


def agent_id_problem(value: str) -> str | None:
    if not _ID_RE.match(value):
        return "an agent id must be 1-128 characters of letters, digits and ._:@- (no spaces)"
    return None


def principal_from_email(value: str) -> str:
    """Principals are identified by their e-mail address, lower case (see docs/importers.md)."""
    email = value.strip().lower()
    if len(email) > 254 or not _EMAIL_RE.match(email):
        raise ValueError(f"{value!r} is not an e-mail address")
    return email


def digest(*parts: Any) -> str:
    """A short, stable digest of a fact's content, for source event ids."""
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def text(value: Any) -> str | None:
    """A non-empty, stripped string, or None."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def paged_items(payload: Any, *, key: str, export: str, unit: str) -> list[Mapping[str, Any]]:
    """The objects of an API export: one page `{key: [...]}`, a list of pages, or a plain
    list of objects; anything else is refused with what was expected."""
    pages = payload if isinstance(payload, list) else [payload]
    if pages and all(isinstance(p, Mapping) and key in p for p in pages):
        items: list[Any] = [item for page in pages for item in (page[key] or [])]
    elif isinstance(payload, list):
        items = payload
    else:
        raise RecordInvalidError(f"not a {export}: expected {{\"{key}\": [...]}}, a list of "
                                 f"such pages, or a list of {unit}s")
    if not all(isinstance(item, Mapping) for item in items):
        raise RecordInvalidError(f"every {unit} must be a JSON object")
    return items
