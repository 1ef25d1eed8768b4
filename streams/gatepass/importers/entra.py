"""Microsoft Entra Agent ID: agent identities and their sponsors, from a Graph export.

The export is what Microsoft Graph answers to

    GET /v1.0/servicePrincipals/microsoft.graph.agentIdentity
        ?$expand=sponsors($select=id,mail,userPrincipalName)

saved as it came (`{"value": [...]}`), or a list of such pages, or the list of agent
identities itself. Each agentIdentity becomes an AgentRegistered whose owner is its sponsor
(a user, identified like every principal by e-mail address: `mail`, or `userPrincipalName`
when so configured) and an AgentStatusChanged from `accountEnabled` (false: suspended).
Graph has no per-object change time here, so every fact carries the export's time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

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
)

__all__ = ["EntraConfig", "agent_identities", "map_entra_agents"]

AGENT_IDENTITY_TYPE = "#microsoft.graph.agentIdentity"
USER_TYPE = "#microsoft.graph.user"
# disabledByMicrosoftStatus values that are not a block (null is the default).
_NOT_DISABLED = {None, "", "NotDisabled"}


@dataclass(frozen=True, slots=True, kw_only=True)
class EntraConfig:
    """How to map agent identities; validated on construction (errors name the key)."""

    source: str = "entra"
    principal_attribute: Literal["mail", "userPrincipalName"] = "mail"
    agent_id_attribute: str = "id"  # the object id, or appId if agents present that
    purpose_tag: str = "gatepass:purpose="  # tags like "gatepass:purpose=procurement"
    department_tag: str = "gatepass:department="
    default_purpose: str | None = None  # for identities without a purpose tag

    def __post_init__(self) -> None:
        if self.principal_attribute not in ("mail", "userPrincipalName"):
            raise ConfigError("principal_attribute", "must be mail or userPrincipalName")
        if not self.agent_id_attribute.strip():
            raise ConfigError("agent_id_attribute", "must not be empty")
        if not self.source.strip():
            raise ConfigError("source", "must not be empty")
        if self.default_purpose is not None and not self.default_purpose.strip():
            raise ConfigError("default_purpose", "must not be empty when given")


def agent_identities(payload: Any) -> list[Mapping[str, Any]]:
    """The agent identity objects of an export (one Graph page, a list of pages, or a list)."""
    return paged_items(payload, key="value", export="Graph export", unit="agent identity")


def map_entra_agents(payload: Any, config: EntraConfig, *, as_of: datetime) -> ImportBatch:
    """AgentRegistered (+ AgentStatusChanged) per agent identity; all rows or none.

    `as_of` is when the export was taken: the time of every fact. Pure: no clock, no I/O.
    """
    as_of = check_as_of(as_of)
    items = agent_identities(payload)
    problems = Problems(config.source)
    events: list[LifecycleEvent] = []
    seen: dict[str, int] = {}
    for n, item in enumerate(items, start=1):
        events += _map_identity(n, item, config, as_of, problems, seen)
    problems.raise_if_any()
    return ImportBatch.of(config.source, len(items), events)


def _map_identity(n: int, item: Mapping[str, Any], config: EntraConfig, as_of: datetime,
                  problems: Problems, seen: dict[str, int]) -> list[LifecycleEvent]:
    object_id = text(item.get("id"))
    bad = len(problems.found)
    kind = item.get("@odata.type")
    if kind is not None and kind != AGENT_IDENTITY_TYPE:
        problems.add(n, "@odata.type", f"{kind!r} is not an agent identity", object_id)
    agent_id = text(item.get(config.agent_id_attribute))
    if agent_id is None:
        problems.add(n, config.agent_id_attribute, "missing", object_id)
    elif (why := agent_id_problem(agent_id)) is not None:
        problems.add(n, config.agent_id_attribute, why, object_id)
    elif agent_id in seen:
        problems.add(n, config.agent_id_attribute,
                     f"agent {agent_id!r} already on row {seen[agent_id]}", object_id)
    else:
        seen[agent_id] = n
    owners = _sponsors(n, item, config, problems, object_id)
    tags = [t for t in item.get("tags") or [] if isinstance(t, str)]
    purpose = _tag(tags, config.purpose_tag) or config.default_purpose
    if purpose is None:
        problems.add(n, "tags", f"no {config.purpose_tag}<purpose> tag and no default purpose",
                     object_id)
    enabled = item.get("accountEnabled")
    if enabled is not None and not isinstance(enabled, bool):
        problems.add(n, "accountEnabled", "must be true or false", object_id)
    if len(problems.found) > bad or agent_id is None or purpose is None or not owners:
        return []
    department = _tag(tags, config.department_tag)
    content = (agent_id, owners[0], purpose, department, owners[1:],
               text(item.get("createdByAppId")))
    events: list[LifecycleEvent] = [AgentRegistered(
        agent_id=agent_id, owner=owners[0], purpose=purpose, department=department,
        contact=", ".join(owners[1:]) or None, created_by=text(item.get("createdByAppId")),
        event_time=as_of, source=config.source,
        source_event_id=f"{object_id}/registration/{digest(*content)}")]
    if enabled is not None:
        blocked = item.get("disabledByMicrosoftStatus") not in _NOT_DISABLED
        status = AgentStatus.ACTIVE if enabled and not blocked else AgentStatus.SUSPENDED
        events.append(AgentStatusChanged(
            agent_id=agent_id, status=status, event_time=as_of, source=config.source,
            source_event_id=f"{object_id}/status/{status.value}"))
    return events


def _sponsors(n: int, item: Mapping[str, Any], config: EntraConfig, problems: Problems,
              object_id: str | None) -> list[str]:
    """The user sponsors' principal ids, sorted: the first is the owner. Groups are skipped:
    a group cannot be offboarded, so it cannot be the accountable owner."""
    sponsors = item.get("sponsors")
    if not isinstance(sponsors, Sequence) or isinstance(sponsors, str):
        problems.add(n, "sponsors", "missing: export with $expand=sponsors", object_id)
        return []
    owners: set[str] = set()
    for i, sponsor in enumerate(sponsors):
        if not isinstance(sponsor, Mapping) or not _is_user(sponsor):
            continue
        field = f"sponsors[{i}].{config.principal_attribute}"
        value = text(sponsor.get(config.principal_attribute))
        if value is None:
            problems.add(n, field, "missing (select it in the $expand)", object_id)
            continue
        try:
            owners.add(principal_from_email(value))
        except ValueError as exc:
            problems.add(n, field, str(exc), object_id)
    if not owners and not any(p.row == n and p.field.startswith("sponsors")
                              for p in problems.found):
        problems.add(n, "sponsors", "no user sponsor: an agent needs an accountable human",
                     object_id)
    return sorted(owners)


def _is_user(sponsor: Mapping[str, Any]) -> bool:
    kind = sponsor.get("@odata.type")
    if kind is not None:
        return bool(kind == USER_TYPE)
    return "userPrincipalName" in sponsor  # without the annotation, only users have a UPN


def _tag(tags: list[str], prefix: str) -> str | None:
    for tag in sorted(tags):
        if tag.startswith(prefix) and tag[len(prefix):].strip():
            return tag[len(prefix):].strip()
    return None
