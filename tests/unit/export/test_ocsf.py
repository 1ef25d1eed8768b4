"""OCSF mapping against recorded expectations (tests/unit/export/cases/*.json).

A case holds a DENY `DecisionRecord` or an `OrphanAlert` as its topic carries it (timestamps as
ISO 8601, amounts as strings), the OCSF event we expect and the CloudEvent envelope around it.
The record goes through the real Avro codec first, so the mapping sees exactly what
`gatepass export ocsf` decodes. Every produced event is also checked by a small validator
whose attribute lists are copied from the OCSF 1.3.0 schema (see OCSF_SOURCE).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import gatepass.export
from gatepass.cli.main import build_parser
from gatepass.codec.avro import schemas
from gatepass.errors import ConfigError, RecordInvalidError
from gatepass.export import (
    DENIAL_EVENT_TYPE,
    OCSF_VERSION,
    ORPHAN_ALERT_EVENT_TYPE,
    denial_to_ocsf,
    orphan_to_ocsf,
    to_cloudevent,
)

CASES = sorted((Path(__file__).parent / "cases").glob("*.json"))
PRODUCT_VERSION = "0.1.0"  # pinned, so the recorded events do not move with the package
SOURCES = {"denial": "urn:gatepass:topic:gatepass.denials",
           "orphan": "urn:gatepass:topic:gatepass.orphan-alerts"}
TYPES = {"denial": DENIAL_EVENT_TYPE, "orphan": ORPHAN_ALERT_EVENT_TYPE}


# ---- cases -----------------------------------------------------------------------------------

def _revive(value: Any, key: str = "") -> Any:
    """JSON case input -> what the codec writes: *_at as datetimes, amount as Decimal."""
    if isinstance(value, dict):
        return {k: _revive(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_revive(v) for v in value]
    if value is not None and key.endswith("_at"):
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value is not None and key == "amount":
        return Decimal(value)
    return value


def decoded(kind: str, record: dict[str, Any]) -> dict[str, Any]:
    """The record as the export reads it: encoded and decoded by the topic's codec."""
    codec = schemas().decision_record if kind == "denial" else schemas().orphan_alert
    return codec.decode(codec.encode(_revive(record)))


def export(kind: str, record: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(OCSF event, CloudEvent) for one case record."""
    rec = decoded(kind, record)
    mapper = denial_to_ocsf if kind == "denial" else orphan_to_ocsf
    ocsf = mapper(rec, product_version=PRODUCT_VERSION)
    subject = rec["intent"]["agent_id"] if kind == "denial" else rec["agent_id"]
    return ocsf, to_cloudevent(ocsf, source=SOURCES[kind], type=TYPES[kind], subject=subject)


def load(path: Path) -> dict[str, Any]:
    case: dict[str, Any] = json.loads(path.read_text())
    return case


@pytest.fixture(params=CASES, ids=lambda p: p.stem)
def case(request: pytest.FixtureRequest) -> dict[str, Any]:
    return load(request.param)


# ---- a tiny OCSF 1.3.0 validator ---------------------------------------------------------------
# OCSF_SOURCE: attribute names, requirements, types, enums and `at_least_one` constraints below are
# copied from the compiled OCSF 1.3.0 schema (schema.ocsf.io/export/schema for 1.3.0, stored as
# github.com/frenchy64/ocsf-schema-export resources/flanders/ocsf-1.3.0-export.json), sections
# base_event, classes.api_activity, classes.detection_finding and objects.*; cross-read with
# github.com/ocsf/ocsf-schema events/application/api_activity.json,
# events/findings/detection_finding.json, objects/actor.json, objects/authorization.json,
# objects/policy.json and objects/metadata.json. Profile-only attributes (cloud, osint,
# security_control, host, ...) are left out: the exported events apply no profile.

INT, STR, DICT, LIST, BOOL = int, str, dict, list, bool

BASE_REQUIRED = {"activity_id": INT, "category_uid": INT, "class_uid": INT, "metadata": DICT,
                 "severity_id": INT, "time": INT, "type_uid": INT}
SEVERITY = {0: "Unknown", 1: "Informational", 2: "Low", 3: "Medium", 4: "High",
            5: "Critical", 6: "Fatal", 99: "Other"}

CLASSES: dict[int, dict[str, Any]] = {
    6003: {  # API Activity, category 6 Application Activity
        "name": "API Activity", "category_uid": 6, "category_name": "Application Activity",
        "required": {"actor": DICT, "api": DICT, "src_endpoint": DICT},
        "attributes": {"activity_id", "activity_name", "actor", "api", "category_name",
                       "category_uid", "class_name", "class_uid", "count", "dst_endpoint",
                       "duration", "end_time", "enrichments", "http_request", "message",
                       "metadata", "observables", "raw_data", "resources", "severity",
                       "severity_id", "src_endpoint", "start_time", "status", "status_code",
                       "status_detail", "status_id", "time", "timezone_offset", "type_name",
                       "type_uid", "unmapped"},
        "enums": {"activity_id": {0: "Unknown", 1: "Create", 2: "Read", 3: "Update",
                                  4: "Delete", 99: "Other"},
                  "status_id": {0: "Unknown", 1: "Success", 2: "Failure", 99: "Other"}},
        "objects": {"metadata": "metadata", "metadata.product": "product", "actor": "actor",
                    "actor.user": "user", "actor.authorizations[]": "authorization",
                    "actor.authorizations[].policy": "policy", "api": "api",
                    "api.service": "service", "api.request": "request",
                    "src_endpoint": "network_endpoint", "dst_endpoint": "network_endpoint",
                    "resources[]": "resource_details", "resources[].owner": "user"},
    },
    2004: {  # Detection Finding, category 2 Findings
        "name": "Detection Finding", "category_uid": 2, "category_name": "Findings",
        "required": {"finding_info": DICT},
        "attributes": {"activity_id", "activity_name", "category_name", "category_uid",
                       "class_name", "class_uid", "comment", "confidence", "confidence_id",
                       "confidence_score", "count", "duration", "end_time", "enrichments",
                       "evidences", "finding_info", "impact", "impact_id", "impact_score",
                       "message", "metadata", "observables", "raw_data", "remediation",
                       "resources", "risk_details", "risk_level", "risk_level_id", "risk_score",
                       "severity", "severity_id", "start_time", "status", "status_code",
                       "status_detail", "status_id", "time", "timezone_offset", "type_name",
                       "type_uid", "unmapped", "vulnerabilities"},
        "enums": {"activity_id": {0: "Unknown", 1: "Create", 2: "Update", 3: "Close",
                                  99: "Other"},
                  "status_id": {0: "Unknown", 1: "New", 2: "In Progress", 3: "Suppressed",
                                4: "Resolved", 99: "Other"},
                  "confidence_id": {0: "Unknown", 1: "Low", 2: "Medium", 3: "High",
                                    99: "Other"}},
        "objects": {"metadata": "metadata", "metadata.product": "product",
                    "finding_info": "finding_info", "finding_info.analytic": "analytic",
                    "resources[]": "resource_details", "resources[].owner": "user"},
    },
}

# object -> (attributes, required {name: type}, at_least_one, enums {attr: allowed ids})
OBJECTS: dict[str, tuple[set[str], dict[str, type], tuple[str, ...], dict[str, set[int]]]] = {
    "metadata": ({"correlation_uid", "event_code", "extension", "extensions", "labels",
                  "log_level", "log_name", "log_provider", "log_version", "logged_time",
                  "loggers", "modified_time", "original_time", "processed_time", "product",
                  "profiles", "sequence", "tenant_uid", "uid", "version"},
                 {"product": DICT, "version": STR}, (), {}),
    "product": ({"cpe_name", "feature", "lang", "name", "path", "uid", "url_string",
                 "vendor_name", "version"}, {"vendor_name": STR}, ("name", "uid"), {}),
    "actor": ({"app_name", "app_uid", "authorizations", "idp", "invoked_by", "process",
               "session", "user"}, {},
              ("app_name", "app_uid", "invoked_by", "process", "session", "user"), {}),
    "user": ({"account", "credential_uid", "domain", "email_addr", "full_name", "groups",
              "ldap_person", "name", "org", "risk_level", "risk_level_id", "risk_score", "type",
              "type_id", "uid", "uid_alt"}, {}, ("account", "name", "uid"),
             {"type_id": {0, 1, 2, 3, 99}}),
    "authorization": ({"decision", "policy"}, {}, (), {}),
    "policy": ({"desc", "group", "is_applied", "name", "uid", "version"}, {}, ("name", "uid"),
               {}),
    "api": ({"group", "operation", "request", "response", "service", "version"},
            {"operation": STR}, (), {}),
    "service": ({"labels", "name", "uid", "version"}, {}, ("name", "uid"), {}),
    "request": ({"containers", "data", "flags", "uid"}, {"uid": STR}, (), {}),
    "network_endpoint": ({"agent_list", "autonomous_system", "domain", "hostname", "hw_info",
                          "instance_uid", "interface_name", "interface_uid", "intermediate_ips",
                          "ip", "location", "mac", "name", "os", "owner", "port",
                          "proxy_endpoint", "subnet_uid", "svc_name", "type", "type_id", "uid",
                          "vlan_uid", "vpc_uid", "zone"}, {},
                         ("hostname", "instance_uid", "interface_name", "interface_uid", "ip",
                          "name", "svc_name", "uid"), {}),
    "resource_details": ({"agent_list", "criticality", "data", "group", "labels", "name",
                          "namespace", "owner", "type", "uid", "version"}, {}, ("name", "uid"),
                         {}),
    "finding_info": ({"analytic", "attacks", "created_time", "data_sources", "desc",
                      "first_seen_time", "kill_chain", "last_seen_time", "modified_time",
                      "product_uid", "related_analytics", "related_events", "src_url", "title",
                      "types", "uid"}, {"uid": STR, "title": STR}, (), {}),
    "analytic": ({"category", "desc", "name", "related_analytics", "type", "type_id", "uid",
                  "version"}, {"type_id": INT}, ("name", "uid"),
                 {"type_id": {*range(12), 99}}),
}
TIMESTAMPS = {"time", "created_time"}  # timestamp_t: epoch milliseconds


def _at(value: Any, path: str) -> Iterator[Any]:
    """Values at a path like `actor.authorizations[].policy` (absent: nothing)."""
    head, _, rest = path.partition(".")
    many = head.endswith("[]")
    key = head.removesuffix("[]")
    if not isinstance(value, dict) or key not in value:
        return
    children = value[key] if many else [value[key]]
    assert isinstance(children, list), f"{key} must be an array"
    for child in children:
        if rest:
            yield from _at(child, rest)
        else:
            yield child


def _typed(value: Any, kind: type) -> bool:
    return isinstance(value, kind) and not (kind is INT and isinstance(value, bool))


def ocsf_problems(event: dict[str, Any]) -> list[str]:
    """Everything in an event that breaks the OCSF 1.3.0 rules copied above."""
    problems: list[str] = []
    spec = CLASSES.get(event.get("class_uid"))  # type: ignore[arg-type]
    if spec is None:
        return [f"class_uid {event.get('class_uid')} is not one we export"]
    for name, kind in {**BASE_REQUIRED, **spec["required"]}.items():
        if not _typed(event.get(name), kind):
            problems.append(f"required {name} missing or not {kind.__name__}")
    problems += [f"{name} is not an attribute of {spec['name']}"
                 for name in set(event) - spec["attributes"]]
    if event.get("category_uid") != spec["category_uid"]:
        problems.append(f"category_uid {event.get('category_uid')} != {spec['category_uid']}")
    if event.get("class_name", spec["name"]) != spec["name"]:
        problems.append("class_name does not match class_uid")
    if event.get("category_name", spec["category_name"]) != spec["category_name"]:
        problems.append("category_name does not match category_uid")
    activity = event.get("activity_id")
    if isinstance(activity, int) and event.get("type_uid") != event["class_uid"] * 100 + activity:
        problems.append("type_uid != class_uid * 100 + activity_id")
    for name, allowed in {**spec["enums"], "severity_id": SEVERITY}.items():
        if name in event and event[name] not in allowed:
            problems.append(f"{name} {event[name]} not in {sorted(allowed)}")
        sibling = name.removesuffix("_id") if name != "activity_id" else "activity_name"
        caption = allowed.get(event.get(name)) if isinstance(allowed, dict) else None
        if sibling in event and caption and caption != "Other" and event[sibling] != caption:
            problems.append(f"{sibling} {event[sibling]!r} is not the caption of {name}")
    if "type_name" in event and isinstance(activity, int):
        caption = spec["enums"]["activity_id"].get(activity)
        if event["type_name"] != f"{spec['name']}: {caption}":
            problems.append(f"type_name {event['type_name']!r} does not match type_uid")
    for name in TIMESTAMPS & set(event):
        if not _typed(event[name], INT) or event[name] < 10**12:
            problems.append(f"{name} is not epoch milliseconds")
    if not isinstance(event.get("unmapped", {}), dict):
        problems.append("unmapped must be an object")
    for path, object_name in spec["objects"].items():
        attributes, required, at_least_one, enums = OBJECTS[object_name]
        for obj in _at(event, path):
            if not isinstance(obj, dict):
                problems.append(f"{path} is not an object")
                continue
            problems += [f"{path}.{k} is not an attribute of {object_name}"
                         for k in set(obj) - attributes]
            problems += [f"{path}.{k} required, missing or not {t.__name__}"
                         for k, t in required.items() if not _typed(obj.get(k), t)]
            if at_least_one and not any(obj.get(k) for k in at_least_one):
                problems.append(f"{path} needs at least one of {', '.join(at_least_one)}")
            problems += [f"{path}.{k} {obj[k]} out of range" for k, ids in enums.items()
                         if k in obj and obj[k] not in ids]
            problems += [f"{path}.{k} is not epoch milliseconds"
                         for k in TIMESTAMPS & set(obj) if not _typed(obj[k], INT)]
    return problems


# CloudEvents 1.0.2 (github.com/cloudevents/spec cloudevents/spec.md): required context
# attributes, and attribute names of lower-case letters and digits (at most 20 characters).
CE_REQUIRED = ("id", "source", "specversion", "type")
CE_NAME = re.compile(r"[a-z0-9]{1,20}")


def cloudevent_problems(event: dict[str, Any]) -> list[str]:
    problems = [f"{name} missing or empty" for name in CE_REQUIRED
                if not isinstance(event.get(name), str) or not event[name]]
    if event.get("specversion") != "1.0":
        problems.append("specversion must be 1.0")
    problems += [f"bad attribute name {k!r}" for k in event if not CE_NAME.fullmatch(k)]
    try:
        datetime.fromisoformat(str(event.get("time")).replace("Z", "+00:00"))
    except ValueError:
        problems.append("time is not RFC 3339")
    if event.get("datacontenttype") != "application/json" or not isinstance(event.get("data"),
                                                                            dict):
        problems.append("data must be a JSON object with datacontenttype application/json")
    return problems


# "Looks like a compact JWS": three base64url segments (the signature may be empty) whose first
# one decodes to a JSON object, the JOSE header; whole or inside a longer string. Requiring the
# header keeps version numbers and dotted action names from looking like passes.
SEGMENTS = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]*)")


def _header_like(segment: str) -> bool:
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)).startswith(b"{")
    except ValueError:
        return False


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


def jws_like(value: Any) -> list[str]:
    return [s for s in strings(value)
            if any(_header_like(m.group(1)) for m in SEGMENTS.finditer(s))]


# ---- the recorded cases ------------------------------------------------------------------------

def test_there_are_cases_for_each_required_situation() -> None:
    names = {p.stem for p in CASES}
    assert {"denial_out_of_scope", "denial_owner_inactive", "denial_invalid_intent_no_facts",
            "denial_state_not_ready", "orphan_offboarded", "orphan_unknown_owner"} <= names


def test_mapping_matches_the_recorded_event(case: dict[str, Any]) -> None:
    ocsf, _ = export(case["kind"], case["record"])
    assert ocsf == case["expected_ocsf"]


def test_envelope_matches_the_recorded_cloudevent(case: dict[str, Any]) -> None:
    ocsf, event = export(case["kind"], case["record"])
    assert {k: v for k, v in event.items() if k != "data"} == case["expected_cloudevent"]
    assert event["data"] == ocsf


def test_recorded_events_satisfy_the_ocsf_schema(case: dict[str, Any]) -> None:
    assert ocsf_problems(case["expected_ocsf"]) == []


def test_exported_events_satisfy_ocsf_and_cloudevents(case: dict[str, Any]) -> None:
    ocsf, event = export(case["kind"], case["record"])
    assert ocsf_problems(ocsf) == []
    assert cloudevent_problems(event) == []
    assert ocsf["metadata"]["version"] == OCSF_VERSION
    assert event["dataschema"].startswith(f"https://schema.ocsf.io/{OCSF_VERSION}/classes/")


def test_the_event_id_is_stable_across_exports(case: dict[str, Any]) -> None:
    first = export(case["kind"], case["record"])[1]
    again = export(case["kind"], json.loads(json.dumps(case["record"])))[1]
    assert first == again
    record_id = case["record"]["decision_id" if case["kind"] == "denial" else "alert_id"]
    assert first["data"]["metadata"]["uid"] == record_id


def test_no_value_looks_like_a_pass(case: dict[str, Any]) -> None:
    _, event = export(case["kind"], case["record"])
    assert jws_like(event) == []
    assert "eyJ" not in json.dumps(event)


def test_events_are_one_json_line(case: dict[str, Any]) -> None:
    _, event = export(case["kind"], case["record"])
    line = json.dumps(event, separators=(",", ":"))
    assert "\n" not in line and json.loads(line) == event


# ---- what the validator and the mapping refuse ---------------------------------------------

def test_a_pass_in_the_record_is_redacted_and_named() -> None:
    case = load(Path(__file__).parent / "cases" / "denial_pass_pasted_into_intent.json")
    assert jws_like(case["record"]), "the case must carry a pass-shaped value"
    ocsf, _ = export("denial", case["record"])
    assert ocsf["unmapped"]["redacted_fields"] == [
        "message", "resources[0].uid", "resources[0].name", "unmapped.context.authorization"]


def test_the_pass_detector_tells_a_pass_from_versions_and_actions() -> None:
    header = base64.urlsafe_b64encode(b'{"alg":"EdDSA"}').rstrip(b"=").decode()
    passes = [f"{header}.e30.c2lnbmF0dXJl", f"{header}.e30.", f"Bearer {header}.e30.c2ln x"]
    assert jws_like(passes) == passes
    assert jws_like(["1.3.0", "cloud.vm.create", "vendor:ACME", "a.b.c", "2025-03-03T10:15"]) == []


def test_validator_catches_broken_events() -> None:
    case = load(Path(__file__).parent / "cases" / "denial_out_of_scope.json")
    good = case["expected_ocsf"]
    assert ocsf_problems({**good, "type_uid": 600302}) == [
        "type_uid != class_uid * 100 + activity_id"]
    assert ocsf_problems({k: v for k, v in good.items() if k != "api"})[0].startswith(
        "required api")
    assert "severity_id 7 not in" in ocsf_problems({**good, "severity_id": 7})[0]
    assert ocsf_problems({**good, "actor": {"authorizations": []}}) == [
        "actor needs at least one of app_name, app_uid, invoked_by, process, session, user"]
    assert ocsf_problems({**good, "category_uid": 2})[0] == "category_uid 2 != 6"
    assert ocsf_problems({**good, "authorizations": []}) == [
        "authorizations is not an attribute of API Activity"]


def test_an_allow_is_not_exported_as_a_denial() -> None:
    record = decoded("denial", load(Path(__file__).parent / "cases" /
                                    "denial_out_of_scope.json")["record"])
    with pytest.raises(RecordInvalidError, match="only DENY"):
        denial_to_ocsf({**record, "decision": "ALLOW", "reasons": ["allowed"]})


@pytest.mark.parametrize(("kind", "field"), [("denial", "decided_at"), ("denial", "intent"),
                                             ("orphan", "alert_id"), ("orphan", "detected_at")])
def test_a_record_missing_a_needed_field_is_invalid(kind: str, field: str) -> None:
    name = "denial_out_of_scope.json" if kind == "denial" else "orphan_offboarded.json"
    record = decoded(kind, load(Path(__file__).parent / "cases" / name)["record"])
    del record[field]
    mapper = denial_to_ocsf if kind == "denial" else orphan_to_ocsf
    with pytest.raises(RecordInvalidError, match=field):
        mapper(record)


def test_an_envelope_needs_a_source_and_a_mapped_event() -> None:
    ocsf, _ = export("orphan", load(Path(__file__).parent / "cases" /
                                    "orphan_offboarded.json")["record"])
    with pytest.raises(ConfigError) as error:
        to_cloudevent(ocsf, source="", type=ORPHAN_ALERT_EVENT_TYPE, subject="procure-bot")
    assert error.value.key == "source"
    with pytest.raises(RecordInvalidError):
        to_cloudevent({"class_uid": 2004}, source="urn:x", type="t", subject="s")


# ---- the public surface --------------------------------------------------------------------

def test_the_package_exports_exactly_its_public_names() -> None:
    public = {name for name, value in vars(gatepass.export).items()
              if not name.startswith("_") and not isinstance(value, type(gatepass))}
    assert set(gatepass.export.__all__) == public
    assert len(gatepass.export.__all__) == len(set(gatepass.export.__all__))


def test_the_cli_parses_export_ocsf_with_its_defaults() -> None:
    ns = build_parser().parse_args(["export", "ocsf"])
    assert (ns.command, ns.format, ns.source, ns.follow, ns.max, ns.to_topic) == (
        "export", "ocsf", "both", False, 0, False)
    ns = build_parser().parse_args(["export", "ocsf", "--from", "orphans", "--follow",
                                    "--max", "3", "--to-topic"])
    assert (ns.source, ns.follow, ns.max, ns.to_topic) == ("orphans", True, 3, True)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["export", "ocsf", "--from", "audit"])


def test_a_denial_names_the_cedar_policies_that_decided() -> None:
    case = json.loads((Path(__file__).parent / "cases" / "denial_out_of_scope.json")
                      .read_text())
    record = {**case["record"], "policy_ids": ["freeze.orders"]}
    ocsf, _ = export("denial", record)
    policy = ocsf["actor"]["authorizations"][0]["policy"]
    assert policy["desc"] == "denied: out_of_scope by freeze.orders"
    assert ocsf["unmapped"]["policy_ids"] == ["freeze.orders"]
    assert ocsf_problems(ocsf) == []


@pytest.mark.parametrize(("reason", "severity"), [("limit_exceeded", 2), ("policy_error", 1)])
def test_policy_reasons_have_a_severity(reason: str, severity: int) -> None:
    case = json.loads((Path(__file__).parent / "cases" / "denial_out_of_scope.json")
                      .read_text())
    ocsf, _ = export("denial", {**case["record"], "reasons": [reason]})
    assert ocsf["severity_id"] == severity
