"""Entra Agent ID: agent identities with sponsors to registrations and statuses."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gatepass.core import AgentRegistered, AgentStatus, AgentStatusChanged
from gatepass.errors import ConfigError, RecordInvalidError
from gatepass.importers import EntraConfig, map_entra_agents

FIXTURES = Path(__file__).parent / "fixtures"
AS_OF = datetime(2026, 3, 3, 8, 0, tzinfo=UTC)
PROCURE = "1b7313c4-05d0-4a08-88e3-7b76c003a0a2"
RESEARCH = "2c8424d5-16e1-4b19-99f4-8c87d114b1b3"
SUPPORT = "3d9535e6-27f2-4c2a-8a05-9d98e225c2c4"


def export() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / "entra_agent_identities.json").read_text())
    return data


def mapped(payload: Any = None, **config: Any) -> dict[tuple[str, str], Any]:
    batch = map_entra_agents(export() if payload is None else payload, EntraConfig(**config),
                             as_of=AS_OF)
    return {(e.agent_id, type(e).__name__): e for e in batch.events}


def test_each_identity_is_registered_to_its_sponsor_with_its_status() -> None:
    events = mapped(default_purpose="support")
    procure = events[(PROCURE, "AgentRegistered")]
    assert isinstance(procure, AgentRegistered)
    assert (procure.owner, procure.purpose, procure.department, procure.contact,
            procure.created_by) == ("sarah.connor@contoso.com", "procurement", "finance",
                                    None, "00001111-aaaa-2222-bbbb-3333cccc4444")
    assert (procure.event_time, procure.source) == (AS_OF, "entra")
    assert procure.source_event_id.startswith(f"{PROCURE}/registration/")
    research = events[(RESEARCH, "AgentRegistered")]
    # Several user sponsors: the first by e-mail owns it, the others are its contacts.
    assert (research.owner, research.contact) == ("amy.pond@contoso.com",
                                                  "tom.hardy@contoso.com")
    statuses = {agent: e.status for (agent, kind), e in events.items()
                if kind == "AgentStatusChanged"}
    assert statuses == {PROCURE: AgentStatus.ACTIVE, RESEARCH: AgentStatus.SUSPENDED,
                        SUPPORT: AgentStatus.SUSPENDED}  # disabled; blocked by Microsoft
    assert events[(SUPPORT, "AgentRegistered")].purpose == "support"  # the default


def test_owners_by_user_principal_name_when_configured() -> None:
    events = mapped(principal_attribute="userPrincipalName", default_purpose="x")
    assert events[(PROCURE, "AgentRegistered")].owner == "sarah.connor@contoso.onmicrosoft.com"


def test_a_sponsor_change_is_a_new_fact_the_same_export_is_the_same_fact() -> None:
    first = mapped(default_purpose="x")[(PROCURE, "AgentRegistered")]
    assert mapped(default_purpose="x")[(PROCURE, "AgentRegistered")] == first
    changed = export()
    changed["value"][0]["sponsors"][0]["mail"] = "tom.hardy@contoso.com"
    other = mapped(changed, default_purpose="x")[(PROCURE, "AgentRegistered")]
    assert other.owner == "tom.hardy@contoso.com"
    assert other.source_event_id != first.source_event_id


def test_an_identity_without_account_enabled_gets_no_status() -> None:
    payload = export()
    del payload["value"][0]["accountEnabled"]
    events = mapped(payload, default_purpose="x")
    assert (PROCURE, "AgentStatusChanged") not in events
    assert (PROCURE, "AgentRegistered") in events


@pytest.mark.parametrize("shape", ["page", "pages", "list"])
def test_export_shapes(shape: str) -> None:
    page = export()
    payload = {"page": page, "pages": [{"value": page["value"][:1]}, {"value": page["value"][1:]}],
               "list": page["value"]}[shape]
    assert len(mapped(payload, default_purpose="x")) == 6


@pytest.mark.parametrize("payload", [{"items": []}, "agents", [1, 2], {"value": [1]}])
def test_not_an_export_is_refused(payload: Any) -> None:
    with pytest.raises(RecordInvalidError):
        map_entra_agents(payload, EntraConfig(), as_of=AS_OF)


def _break(change: Any) -> dict[str, Any]:
    payload = copy.deepcopy(export())
    change(payload["value"][1])
    return payload


@pytest.mark.parametrize(("change", "field", "message"), [
    (lambda a: a.pop("sponsors"), "sponsors", "$expand=sponsors"),
    (lambda a: a.update(sponsors=[{"@odata.type": "#microsoft.graph.group", "id": "g"}]),
     "sponsors", "no user sponsor"),
    (lambda a: a.update(sponsors=[]), "sponsors", "no user sponsor"),
    (lambda a: a["sponsors"][0].pop("mail"), "sponsors[0].mail", "missing"),
    (lambda a: a["sponsors"][1].update(mail="amy"), "sponsors[1].mail", "not an e-mail"),
    (lambda a: a.update({"@odata.type": "#microsoft.graph.agentIdentityBlueprintPrincipal"}),
     "@odata.type", "not an agent identity"),
    (lambda a: a.update(tags=[]), "tags", "no gatepass:purpose="),
    (lambda a: a.pop("id"), "id", "missing"),
    (lambda a: a.update(id="has spaces"), "id", "no spaces"),
    (lambda a: a.update(id=PROCURE), "id", "already on row 1"),
    (lambda a: a.update(accountEnabled="false"), "accountEnabled", "true or false"),
], ids=["sponsors not expanded", "only a group", "no sponsor", "no mail", "bad mail",
        "not an agent identity", "no purpose", "no id", "bad id", "duplicate id",
        "enabled as a string"])
def test_a_bad_identity_is_named_and_nothing_is_imported(change: Any, field: str,
                                                         message: str) -> None:
    with pytest.raises(RecordInvalidError) as info:
        map_entra_agents(_break(change), EntraConfig(), as_of=AS_OF)
    found = [p for p in info.value.problems if p.row == 2]
    assert [p.field for p in found] == [field], info.value.problems
    assert message in found[0].message
    # The third identity has no purpose tag and no default is configured: named too.
    assert [p.row for p in info.value.problems if p.row != 2] == [3]


def test_a_sponsor_without_a_type_annotation_counts_when_it_has_a_upn() -> None:
    payload = _break(lambda a: [s.pop("@odata.type") for s in a["sponsors"]])
    events = mapped(payload, default_purpose="x")
    assert events[(RESEARCH, "AgentRegistered")].owner == "amy.pond@contoso.com"


@pytest.mark.parametrize(("config", "key"), [
    ({"principal_attribute": "displayName"}, "principal_attribute"),
    ({"agent_id_attribute": ""}, "agent_id_attribute"), ({"source": ""}, "source"),
    ({"default_purpose": " "}, "default_purpose")])
def test_bad_configuration_names_its_key(config: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        EntraConfig(**config)
    assert info.value.key == key


def test_statuses_follow_account_enabled() -> None:
    events = mapped(default_purpose="x")
    status = events[(RESEARCH, "AgentStatusChanged")]
    assert isinstance(status, AgentStatusChanged)
    assert status.source_event_id == f"{RESEARCH}/status/suspended"
