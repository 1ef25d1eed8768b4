"""ServiceNow CMDB: configuration items to agent registrations and statuses."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gatepass.core import AgentRegistered, AgentStatus
from gatepass.errors import ConfigError, RecordInvalidError
from gatepass.importers import ServiceNowConfig, map_servicenow_cis

FIXTURES = Path(__file__).parent / "fixtures"
AS_OF = datetime(2026, 3, 3, 8, 0, tzinfo=UTC)


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"servicenow_cmdb_ci_{name}.json").read_text())
    return data


def mapped(payload: Any, **config: Any) -> dict[tuple[str, str], Any]:
    batch = map_servicenow_cis(payload, ServiceNowConfig(**config), as_of=AS_OF)
    return {(e.agent_id, type(e).__name__): e for e in batch.events}


def test_display_value_all_export() -> None:
    events = mapped(load("all"))
    procure = events[("procure-bot", "AgentRegistered")]
    assert isinstance(procure, AgentRegistered)
    assert (procure.owner, procure.purpose, procure.department, procure.source) == (
        "sarah.connor@example.com", "procurement", "Finance", "servicenow")
    # sys_updated_on's stored value is UTC (the display value is the user's zone).
    assert procure.event_time == datetime(2026, 3, 2, 9, 50, 31, tzinfo=UTC)
    assert procure.source_event_id.startswith("01a9ec0d3790200044e0bfc8bcbe5dc3/registration/")
    helpdesk = events[("helpdesk-bot", "AgentRegistered")]
    assert (helpdesk.owner, helpdesk.department) == ("amy.pond@example.com", None)
    statuses = {a: e.status for (a, kind), e in events.items() if kind == "AgentStatusChanged"}
    assert statuses == {"procure-bot": AgentStatus.ACTIVE,
                        "legacy-bot": AgentStatus.DECOMMISSIONED,
                        "helpdesk-bot": AgentStatus.SUSPENDED}


def test_default_export_with_dot_walked_fields() -> None:
    events = mapped(load("default"))
    procure = events[("procure-bot", "AgentRegistered")]
    assert (procure.owner, procure.purpose, procure.department) == (
        "sarah.connor@example.com", "procurement", "Finance")  # department.name
    status = events[("procure-bot", "AgentStatusChanged")]
    assert status.status is AgentStatus.SUSPENDED  # installed but non-operational
    assert status.source_event_id == \
        "01a9ec0d3790200044e0bfc8bcbe5dc3/status/suspended/2026-03-02T09:50:31Z"


def ci(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"sys_id": "abc", "name": "bot", "u_purpose": "procurement",
                            "owned_by.email": "sarah@example.com",
                            "sys_updated_on": "2026-03-02 09:50:31"}
    return {k: v for k, v in (base | fields).items() if v is not None}


@pytest.mark.parametrize(("install", "operational", "stage", "expected"), [
    ("1", "1", "Operational", "active"),
    ("Installed", None, None, "active"),
    ({"display_value": "Installed", "value": "1"}, None, None, "active"),
    ("7", None, None, "decommissioned"),
    ("retired", "1", None, "decommissioned"),
    (None, "6", None, "decommissioned"),
    ("1", "1", {"display_value": "End of Life", "value": "3b4d"}, "decommissioned"),
    ("3", "1", None, "suspended"),  # in maintenance
    ("6", None, None, "suspended"),  # in stock: not in service
    ("8", None, None, "suspended"),  # stolen
    ("1", "2", None, "suspended"),  # non-operational
    ("1", "5", None, "suspended"),  # ready, not yet in production
    ("1", "4", None, "suspended"),  # DR standby
    (None, None, {"display_value": "Missing", "value": "x"}, "suspended"),
    ("", "", "", None),  # no lifecycle field: a registration only
])
def test_lifecycle_fields_to_agent_status_most_restrictive_wins(
        install: Any, operational: Any, stage: Any, expected: str | None) -> None:
    events = mapped({"result": [ci(install_status=install, operational_status=operational,
                                   life_cycle_stage=stage)]})
    status = events.get(("bot", "AgentStatusChanged"))
    assert (status.status.value if status else None) == expected
    assert ("bot", "AgentRegistered") in events


@pytest.mark.parametrize(("fields", "field", "message"), [
    ({"owned_by.email": None}, "owned_by.email", "no owner e-mail"),
    ({"owned_by.email": None, "owned_by": {"link": "https://x/sys_user/8a82", "value": "8a82"}},
     "owned_by.email", "export the dot-walked owned_by.email"),
    ({"owned_by.email": "Sarah Connor"}, "owned_by.email", "not an e-mail"),
    ({"u_purpose": ""}, "u_purpose", "missing"),
    ({"name": "Procurement Bot"}, "name", "no spaces"),
    ({"name": None}, "name", "missing"),
    ({"sys_id": None}, "sys_id", "missing"),
    ({"install_status": "42"}, "install_status", "unknown value '42'"),
    ({"life_cycle_stage": {"link": "https://x/life_cycle_stage/2a3c", "value": "2a3c"}},
     "life_cycle_stage", "sysparm_display_value=all"),
    ({"sys_updated_on": "02/03/2026"}, "sys_updated_on", "not 'YYYY-MM-DD HH:MM:SS'"),
], ids=["no owner", "owner is a bare reference", "owner is a name", "no purpose",
        "name with spaces", "no name", "no sys_id", "unknown install status",
        "stage without display value", "bad update time"])
def test_a_bad_ci_is_named_and_nothing_is_imported(fields: dict[str, Any], field: str,
                                                   message: str) -> None:
    payload = {"result": [ci(sys_id="good", name="good-bot"), ci(**fields)]}
    with pytest.raises(RecordInvalidError) as info:
        map_servicenow_cis(payload, ServiceNowConfig(), as_of=AS_OF)
    [problem] = info.value.problems
    assert (problem.row, problem.field) == (2, field)
    assert message in problem.message


def test_two_cis_with_one_agent_name_are_refused() -> None:
    payload = {"result": [ci(sys_id="a"), ci(sys_id="b")]}
    with pytest.raises(RecordInvalidError, match="already on row 1"):
        map_servicenow_cis(payload, ServiceNowConfig(), as_of=AS_OF)


def test_configurable_fields() -> None:
    payload = {"result": [ci(u_purpose=None, short_description="research", name=None,
                             u_agent_id="bot-7", **{"owned_by.email": None,
                                                    "managed_by.email": "ops@example.com"})]}
    events = mapped(payload, purpose_field="short_description", agent_id_field="u_agent_id")
    reg = events[("bot-7", "AgentRegistered")]
    assert (reg.purpose, reg.owner) == ("research", "ops@example.com")


def test_a_ci_without_update_time_carries_the_export_time() -> None:
    events = mapped({"result": [ci(sys_updated_on=None)]})
    assert events[("bot", "AgentRegistered")].event_time == AS_OF


@pytest.mark.parametrize("payload", [{"records": []}, [1], {"result": ["x"]}, "x"])
def test_not_an_export_is_refused(payload: Any) -> None:
    with pytest.raises(RecordInvalidError):
        map_servicenow_cis(payload, ServiceNowConfig(), as_of=AS_OF)


def test_export_shapes() -> None:
    page = load("all")
    pages = [{"result": page["result"][:2]}, {"result": page["result"][2:]}]
    assert mapped(pages) == mapped(page) == mapped(copy.deepcopy(page["result"]))


@pytest.mark.parametrize(("config", "key"), [({"purpose_field": ""}, "purpose_field"),
                                             ({"owner_fields": ()}, "owner_fields"),
                                             ({"agent_id_field": " "}, "agent_id_field")])
def test_bad_configuration_names_its_key(config: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        ServiceNowConfig(**config)
    assert info.value.key == key
