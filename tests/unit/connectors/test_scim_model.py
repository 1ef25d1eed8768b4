"""The SCIM User model without HTTP: normalisation, filters, the PATCH forms IdPs send."""

from __future__ import annotations

from typing import Any

import pytest

from gatepass.connectors.scim_model import (
    ENTERPRISE_URN,
    PATCH_URN,
    USER_URN,
    ScimError,
    apply_patch,
    matches,
    normalize_user,
    parse_filter,
    project,
)
from unit.connectors.support import fixture


def _patch(*ops: dict[str, Any]) -> dict[str, Any]:
    return {"schemas": [PATCH_URN], "Operations": list(ops)}


def _omar() -> dict[str, Any]:
    return normalize_user(fixture("scim_entra_create_user.json"))


def test_okta_create_request_drops_password_and_groups() -> None:
    user = normalize_user(fixture("scim_okta_create_user.json"))
    assert "password" not in user and "groups" not in user
    assert user["userName"] == "sarah.lee@acme.example"
    assert user["externalId"] == "00u5sarahQ1w2e3r4t5"
    assert user["active"] is True
    assert user["emails"] == [{"primary": True, "value": "sarah.lee@acme.example",
                               "type": "work"}]


def test_entra_create_request_keeps_the_enterprise_extension_it_knows() -> None:
    user = _omar()
    assert user[ENTERPRISE_URN] == {"employeeNumber": "701984", "department": "Procurement"}
    assert "meta" not in user and "roles" not in user


def test_attribute_names_are_case_insensitive() -> None:
    user = normalize_user({"schemas": [USER_URN], "USERNAME": "a@b.example",
                           "Active": "false", "NAME": {"GivenName": "A"}})
    assert user == {"userName": "a@b.example", "active": False, "name": {"givenName": "A"}}


@pytest.mark.parametrize("body", [
    [], {"userName": "x"}, {"schemas": [USER_URN]}, {"schemas": [USER_URN], "userName": ""},
    {"schemas": [USER_URN], "userName": 5}, {"schemas": [USER_URN], "userName": "x",
                                              "active": "maybe"},
    {"schemas": [USER_URN], "userName": "x", "emails": {"value": "x"}},
    {"schemas": [USER_URN], "userName": "x", "name": "X"},
    {"schemas": [USER_URN], "userName": "x" * 3000},
    {"schemas": [USER_URN], "userName": "x", ENTERPRISE_URN: "x"},
])
def test_invalid_users_are_refused_with_400(body: Any) -> None:
    with pytest.raises(ScimError) as err:
        normalize_user(body)
    assert err.value.status == 400
    assert err.value.body()["schemas"] == ["urn:ietf:params:scim:api:messages:2.0:Error"]


@pytest.mark.parametrize(("text", "expected"), [
    ('userName eq "OMAR.HADDAD@contoso.example"', True),  # caseExact false
    ('userName eq "someone@else"', False),
    ('externalId eq "3f6a1c5e-2b7d-4e90-8c41-7a2e5b9d0f13"', True),
    ('externalId eq "3F6A1C5E-2B7D-4E90-8C41-7A2E5B9D0F13"', False),  # caseExact true
    ("active eq true", True),
    ('emails[type eq "work" and value co "contoso"]', True),
    ('emails.value sw "omar"', True),
    ('name.familyName eq "Haddad" and not (active eq false)', True),
    (f'{ENTERPRISE_URN}:department eq "Procurement"', True),
    ('title pr or userName ew ".example"', True),
    ("title pr", False),
    ('displayName eq null', True),
])
def test_filters(text: str, expected: bool) -> None:
    assert matches(parse_filter(text), _omar()) is expected


@pytest.mark.parametrize("text", ['userName eq', 'userName foo "x"', '(userName eq "x"',
                                  'userName eq "x" )', "active gt true", '"x" eq userName',
                                  "userName eq 'x'"])
def test_invalid_filters(text: str) -> None:
    with pytest.raises(ScimError) as err:
        matches(parse_filter(text), _omar())
    assert err.value.scim_type == "invalidFilter"


@pytest.mark.parametrize("name", ["scim_okta_deactivate.json", "scim_entra_disable_string.json",
                                  "scim_entra_disable_boolean.json"])
def test_every_documented_deactivation_form_sets_active_false(name: str) -> None:
    assert apply_patch(_omar(), fixture(name))["active"] is False


def test_entra_attribute_updates() -> None:
    user = apply_patch(_omar(), fixture("scim_entra_update_attributes.json"))
    assert user["emails"] == [{"primary": True, "type": "work",
                               "value": "omar.h@contoso.example"}]
    assert user["name"]["givenName"] == "Omar K." and user["name"]["familyName"] == "Haddad"
    assert user["phoneNumbers"] == [{"type": "mobile", "value": "+1 555 0100"}]
    assert user[ENTERPRISE_URN] == {"employeeNumber": "701984", "department": "Finance"}


def test_patch_add_remove_and_whole_extension() -> None:
    user = apply_patch(_omar(), _patch(
        {"op": "add", "path": "emails", "value": [{"value": "o@home.example", "type": "home"}]},
        {"op": "remove", "path": 'emails[type eq "work"]'},
        {"op": "remove", "path": "name.formatted"},
        {"op": "replace", "path": ENTERPRISE_URN, "value": {"costCenter": "42"}},
        {"op": "add", "value": {"nickName": "O", f"{ENTERPRISE_URN}:division": "EMEA"}}))
    assert user["emails"] == [{"value": "o@home.example", "type": "home"}]
    assert "formatted" not in user["name"]
    assert user[ENTERPRISE_URN] == {"employeeNumber": "701984", "department": "Procurement",
                                    "costCenter": "42", "division": "EMEA"}
    assert user["nickName"] == "O"
    assert "urn" not in str(apply_patch(user, _patch({"op": "remove",
                                                      "path": ENTERPRISE_URN})).keys())


@pytest.mark.parametrize(("body", "scim_type"), [
    ({"Operations": [{"op": "replace", "value": {"active": False}}]}, "invalidSyntax"),
    (_patch(), "invalidSyntax"),
    (_patch({"op": "merge", "path": "active", "value": False}), "invalidSyntax"),
    (_patch({"op": "remove"}), "noTarget"),
    (_patch({"op": "replace", "value": False}), "invalidValue"),
    (_patch({"op": "replace", "path": "active", "value": "nope"}), "invalidValue"),
    (_patch({"op": "replace", "path": "id", "value": "x"}), "mutability"),
    (_patch({"op": "replace", "path": "meta", "value": {}}), "mutability"),
    (_patch({"op": "remove", "path": "userName"}), "invalidValue"),
    (_patch({"op": "replace", "path": 'emails[value co "zzz"].type', "value": "x"}),
     "noTarget"),
    (_patch({"op": "replace", "path": "userName[x eq 1]", "value": "x"}), "invalidPath"),
    (_patch({"op": "replace", "path": "emails[type eq", "value": "x"}), "invalidPath"),
])
def test_invalid_patches(body: dict[str, Any], scim_type: str) -> None:
    with pytest.raises(ScimError) as err:
        apply_patch(_omar(), body)
    assert (err.value.status, err.value.scim_type) == (400, scim_type)


def test_patch_does_not_change_its_input() -> None:
    user = _omar()
    before = repr(user)
    apply_patch(user, fixture("scim_entra_update_attributes.json"))
    assert repr(user) == before


def test_projection() -> None:
    rendered = {"schemas": [USER_URN, ENTERPRISE_URN], "id": "1", **_omar(),
                "meta": {"resourceType": "User"}}
    only = project(rendered, "userName,name.givenName," + ENTERPRISE_URN + ":department",
                   None)
    assert only == {"schemas": [USER_URN, ENTERPRISE_URN], "id": "1",
                    "userName": "omar.haddad@contoso.example", "name": {"givenName": "Omar"},
                    ENTERPRISE_URN: {"department": "Procurement"}}
    without = project(rendered, None, "emails,id,name.familyName")
    assert "emails" not in without and without["id"] == "1"
    assert without["name"] == {"formatted": "Omar Haddad", "givenName": "Omar"}
