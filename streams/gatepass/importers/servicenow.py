"""ServiceNow CMDB: agents recorded as configuration items, from a Table API export.

The export is what the Table API answers to, for example

    GET /api/now/table/cmdb_ci_appl?sysparm_query=...&sysparm_display_value=all
        &sysparm_fields=sys_id,name,u_purpose,owned_by.email,managed_by.email,
                        department,install_status,operational_status,life_cycle_stage,
                        sys_updated_on

saved as it came (`{"result": [...]}`), or a list of such pages, or the list of records.
A field comes as a string (`sysparm_display_value=false`, the default, or `true`), as a
reference `{"link": ..., "value": <sys_id>}`, or as `{"display_value": ..., "value": ...}`
(`all`, recommended: choice values and labels both, times in UTC). The owner is a person,
and principals are identified by e-mail address, so the owner comes from a dot-walked
e-mail field (`owned_by.email`, else `managed_by.email`): a bare reference (a sys_id) is
refused with a hint. Each CI becomes an AgentRegistered and, when it has a lifecycle field,
an AgentStatusChanged: the most restrictive of install_status, operational_status and
life_cycle_stage (retired or end of life: decommissioned; anything but installed /
operational: suspended). Facts carry the CI's `sys_updated_on`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gatepass.core.identity import AgentRegistered, AgentStatusChanged, LifecycleEvent
from gatepass.core.model import AgentStatus
from gatepass.errors import ConfigError
from gatepass.importers.base import (
    ImportBatch,
    Problems,
    agent_id_problem,
    check_as_of,
    digest,
    paged_items,
    principal_from_email,
    text,
    to_millis,
)

__all__ = ["ServiceNowConfig", "configuration_items", "map_servicenow_cis"]

_ACTIVE, _SUSPENDED, _GONE = AgentStatus.ACTIVE, AgentStatus.SUSPENDED, \
    AgentStatus.DECOMMISSIONED
# Out-of-the-box choices of cmdb_ci (value and label, lower case). Only "installed" /
# "operational" let an agent act: every other state fails closed.
INSTALL_STATUS: dict[str, AgentStatus] = {
    "1": _ACTIVE, "installed": _ACTIVE,
    "7": _GONE, "retired": _GONE,
    **dict.fromkeys(("0", "implementing", "2", "on order", "3", "in maintenance", "4",
                     "pending install", "5", "pending repair", "6", "in stock", "8",
                     "stolen", "100", "absent"), _SUSPENDED),
}
OPERATIONAL_STATUS: dict[str, AgentStatus] = {
    "1": _ACTIVE, "operational": _ACTIVE,
    "6": _GONE, "retired": _GONE,
    **dict.fromkeys(("2", "non-operational", "3", "repair in progress", "4", "dr standby",
                     "5", "ready", "7", "pipeline", "8", "catalog"), _SUSPENDED),
}
# CSDM life cycle stages (a reference to life_cycle_stage: only its display value says
# which stage, so this field needs sysparm_display_value=all or true).
LIFE_CYCLE_STAGE: dict[str, AgentStatus] = {
    "operational": _ACTIVE,
    "end of life": _GONE,
    **dict.fromkeys(("ideation", "design", "purchase", "deploy", "inventory", "missing",
                     "defective", "to be determined"), _SUSPENDED),
}
_SEVERITY = {_ACTIVE: 0, _SUSPENDED: 1, _GONE: 2}


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceNowConfig:
    """Which CI fields say what; validated on construction (errors name the key)."""

    source: str = "servicenow"
    agent_id_field: str = "name"
    purpose_field: str = "u_purpose"  # a custom field holding the scope policy's purpose
    owner_fields: tuple[str, ...] = ("owned_by.email", "managed_by.email")
    department_fields: tuple[str, ...] = ("department.name", "department")
    status_fields: Mapping[str, Mapping[str, AgentStatus]] = field(default_factory=lambda: {
        "install_status": INSTALL_STATUS, "operational_status": OPERATIONAL_STATUS,
        "life_cycle_stage": LIFE_CYCLE_STAGE})

    def __post_init__(self) -> None:
        for key in ("source", "agent_id_field", "purpose_field"):
            if not str(getattr(self, key)).strip():
                raise ConfigError(key, "must not be empty")
        if not self.owner_fields:
            raise ConfigError("owner_fields", "name at least one field")


def configuration_items(payload: Any) -> list[Mapping[str, Any]]:
    """The records of an export (one Table API answer, a list of them, or a list)."""
    return paged_items(payload, key="result", export="Table API export", unit="configuration item")


def map_servicenow_cis(payload: Any, config: ServiceNowConfig, *,
                       as_of: datetime) -> ImportBatch:
    """AgentRegistered (+ AgentStatusChanged) per CI; all rows or none.

    `as_of` (when the export was taken) dates a CI without `sys_updated_on`. Pure.
    """
    as_of = check_as_of(as_of)
    items = configuration_items(payload)
    problems = Problems(config.source)
    events: list[LifecycleEvent] = []
    seen: dict[str, int] = {}
    for n, item in enumerate(items, start=1):
        events += _map_ci(n, item, config, as_of, problems, seen)
    problems.raise_if_any()
    return ImportBatch.of(config.source, len(items), events)


def _value(raw: Any) -> str | None:
    """The stored value: a choice's code, a reference's sys_id, a time in UTC."""
    if isinstance(raw, Mapping):
        return text(raw.get("value")) or text(raw.get("display_value"))
    return text(raw)


def _display(raw: Any) -> str | None:
    """What a person reads: a reference's name, a choice's label (None: a bare sys_id)."""
    if isinstance(raw, Mapping):
        return text(raw.get("display_value"))
    return text(raw)


def _map_ci(n: int, item: Mapping[str, Any], config: ServiceNowConfig, as_of: datetime,
            problems: Problems, seen: dict[str, int]) -> list[LifecycleEvent]:
    sys_id = _value(item.get("sys_id"))
    bad = len(problems.found)
    if sys_id is None:
        problems.add(n, "sys_id", "missing")
    agent_id = _display(item.get(config.agent_id_field))
    if agent_id is None:
        problems.add(n, config.agent_id_field, "missing", sys_id)
    elif (why := agent_id_problem(agent_id)) is not None:
        problems.add(n, config.agent_id_field, f"{agent_id!r}: {why}", sys_id)
    elif agent_id in seen:
        problems.add(n, config.agent_id_field,
                     f"agent {agent_id!r} already on row {seen[agent_id]}", sys_id)
    else:
        seen[agent_id] = n
    owner = _owner(n, item, config, problems, sys_id)
    purpose = _value(item.get(config.purpose_field))
    if purpose is None:
        problems.add(n, config.purpose_field, "missing (the purpose selects the scope policy)",
                     sys_id)
    status = _status(n, item, config, problems, sys_id)
    updated = _updated(n, item, problems, sys_id) or as_of
    if len(problems.found) > bad or agent_id is None or owner is None or purpose is None:
        return []
    department = next((d for f in config.department_fields
                       if (d := _display(item.get(f))) is not None), None)
    content = (agent_id, owner, purpose, department)
    events: list[LifecycleEvent] = [AgentRegistered(
        agent_id=agent_id, owner=owner, purpose=purpose, department=department,
        event_time=updated, source=config.source,
        source_event_id=f"{sys_id}/registration/{digest(*content)}")]
    if status is not None:
        stamp = updated.isoformat().replace("+00:00", "Z")
        events.append(AgentStatusChanged(
            agent_id=agent_id, status=status, event_time=updated, source=config.source,
            source_event_id=f"{sys_id}/status/{status.value}/{stamp}"))
    return events


def _owner(n: int, item: Mapping[str, Any], config: ServiceNowConfig, problems: Problems,
           sys_id: str | None) -> str | None:
    for name in config.owner_fields:
        value = _value(item.get(name))
        if value is None:
            continue
        try:
            return principal_from_email(value)
        except ValueError as exc:
            problems.add(n, name, str(exc), sys_id)
            return None
    referenced = [f.partition(".")[0] for f in config.owner_fields
                  if _value(item.get(f.partition(".")[0])) is not None]
    hint = (f"; {referenced[0]} is a reference: export the dot-walked "
            f"{referenced[0]}.email in sysparm_fields") if referenced else ""
    problems.add(n, config.owner_fields[0], f"no owner e-mail in {', '.join(config.owner_fields)}"
                 f"{hint}", sys_id)
    return None


def _status(n: int, item: Mapping[str, Any], config: ServiceNowConfig, problems: Problems,
            sys_id: str | None) -> AgentStatus | None:
    found: list[AgentStatus] = []
    for name, choices in config.status_fields.items():
        raw = item.get(name)
        if _value(raw) is None:
            continue
        candidates = [c.lower() for c in (_value(raw), _display(raw)) if c is not None]
        status = next((choices[c] for c in candidates if c in choices), None)
        if status is None:
            problems.add(n, name, f"unknown value {candidates[0]!r} (a reference needs "
                         "sysparm_display_value=all; other values: ServiceNowConfig."
                         "status_fields)", sys_id)
            continue
        found.append(status)
    return max(found, key=_SEVERITY.__getitem__) if found else None


def _updated(n: int, item: Mapping[str, Any], problems: Problems,
             sys_id: str | None) -> datetime | None:
    value = _value(item.get("sys_updated_on"))
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.replace(" ", "T", 1))
    except ValueError:
        problems.add(n, "sys_updated_on", f"{value!r} is not 'YYYY-MM-DD HH:MM:SS'", sys_id)
        return None
    # The Table API's stored values are UTC; only a display value carries the user's zone,
    # and `_value` prefers the stored one.
    return to_millis(moment if moment.tzinfo else moment.replace(tzinfo=UTC))
