"""Denials and orphan alerts as OCSF events in a CloudEvents envelope, for SIEMs.

Pure functions of a decoded record (no Kafka, no clock): the same record always maps to the
same event, and its CloudEvent id derives from the record's own id, so a SIEM can drop a
re-exported duplicate. A `DecisionRecord` never holds a bearer pass; as a second line of
defence every string of an exported event that looks like a compact JWS is redacted.

Target: OCSF 1.3.0. Attributes, requirements and enums were read from the schema files:
  - github.com/ocsf/ocsf-schema: events/application/api_activity.json (class uid 3 in
    category 6 -> 6003), events/findings/finding.json and detection_finding.json (2004),
    events/base_event.json, objects/actor.json, objects/authorization.json,
    objects/policy.json, objects/metadata.json;
  - the compiled OCSF 1.3.0 schema export (schema.ocsf.io/export/schema, stored in
    github.com/frenchy64/ocsf-schema-export resources/flanders/ocsf-1.3.0-export.json),
    which pins every requirement below to the released 1.3.0 version.
In 1.3.0 API Activity does not take the `security_control` profile, so the class has no
event-level `authorizations`: the verdict goes into `actor.authorizations` (an Authorization
Result with `decision` and `policy`), where the actor object defines it.
CloudEvents: spec 1.0.2 (github.com/cloudevents/spec cloudevents/spec.md, JSON format in
cloudevents/formats/json-format.md): required `id`, `source`, `specversion` "1.0", `type`;
here also `time`, `subject`, `datacontenttype` and `dataschema`.

Mapping choices, in one place:
  - the agent is the client application that acted: `actor.app_uid` / `actor.app_name`;
    its accountable owner (a human principal) is `actor.user`, the user context the agent
    acts in, so "activity of an offboarded user" rules in the SIEM see ghost agents too.
    No owner known (e.g. an invalid intent): no `actor.user`.
  - action -> `api.operation` (its verb picks `activity_id`), audience -> `api.service.name`
    and `dst_endpoint.svc_name`, resource -> `resources[]`, intent id -> `api.request.uid`
    and `metadata.correlation_uid` (an orphan alert revealed by a denied intent carries the
    same correlation uid). Intents arrive over Kafka, without a network address: the source
    endpoint is named after the agent.
  - reason codes: first one in `status_code`, all in `unmapped.reasons` and in the policy's
    `desc`; the human detail in `status_detail`; everything else Gatepass-specific (facts,
    amount, context, delegation chain, worker) in `unmapped`, timestamps as epoch ms.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from gatepass.errors import ConfigError, RecordInvalidError

__all__ = [
    "API_ACTIVITY_CLASS_UID",
    "DENIAL_EVENT_TYPE",
    "DETECTION_FINDING_CLASS_UID",
    "OCSF_VERSION",
    "ORPHAN_ALERT_EVENT_TYPE",
    "PRODUCT_VERSION",
    "denial_to_ocsf",
    "orphan_to_ocsf",
    "to_cloudevent",
]

OCSF_VERSION = "1.3.0"
API_ACTIVITY_CLASS_UID = 6003  # category 6 Application Activity
DETECTION_FINDING_CLASS_UID = 2004  # category 2 Findings
DENIAL_EVENT_TYPE = "dev.gatepass.v1.denial"
ORPHAN_ALERT_EVENT_TYPE = "dev.gatepass.v1.orphan_alert"
PRODUCT_NAME = "Gatepass"
REDACTED = "[redacted]"


def _product_version() -> str:
    try:
        return version("gatepass")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "0+unknown"


PRODUCT_VERSION = _product_version()

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
# A fixed namespace: changing it would change every exported event id (and break dedupe).
_EVENT_NS = uuid.UUID("5b0f3c9e-7d1a-4e0b-9a57-3c2d8e6f4a10")
_CLASS_NAMES = {API_ACTIVITY_CLASS_UID: "api_activity",
                DETECTION_FINDING_CLASS_UID: "detection_finding"}

# A compact JWS: a base64url JSON header (so it starts with "eyJ"), a payload and a signature
# (empty for an unsecured JWS). Passes are never in these records; this catches one an agent
# pasted into a resource, a context value or a detail.
_COMPACT_JWS = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")

# OCSF enum captions (1.3.0) for the ids used here.
_SEVERITY = {0: "Unknown", 1: "Informational", 2: "Low", 3: "Medium", 4: "High"}
_API_ACTIVITY = {0: "Unknown", 1: "Create", 2: "Read", 3: "Update", 4: "Delete", 99: "Other"}
_CONFIDENCE = {0: "Unknown", 1: "Low", 2: "Medium", 3: "High"}

# Severity of a denial, by reason; the event takes the highest of its reasons.
#   3 Medium: the agent's identity does not hold (ghost, inactive, unknown, escalation,
#             or nobody proved the agent sent the intent: a bad or missing signature);
#   2 Low: it asked for something it may not do, or asked badly;
#   1 Informational: Gatepass could not decide (loading, failure), not the agent's doing.
_REASON_SEVERITY = {
    "owner_inactive": 3, "agent_inactive": 3, "unregistered_agent": 3, "delegation_denied": 3,
    "intent_signature_invalid": 3,
    "out_of_scope": 2, "invalid_intent": 2, "stale_intent": 2, "limit_exceeded": 2,
    "state_not_ready": 1, "internal_error": 1, "policy_error": 1,
}
# Reasons decided before the policy is looked at: its content was not applied.
_BEFORE_POLICY = {"invalid_intent", "stale_intent", "state_not_ready", "internal_error",
                  "intent_signature_invalid"}

_ACTION = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")
_VERBS = {
    1: {"create", "add", "new", "insert", "provision", "submit", "upload", "launch", "issue",
        "post"},
    2: {"read", "get", "list", "view", "search", "query", "describe", "fetch", "download",
        "export"},
    3: {"update", "modify", "edit", "set", "patch", "change", "approve", "assign", "rename",
        "move"},
    4: {"delete", "remove", "destroy", "cancel", "revoke", "terminate", "purge", "drop"},
}


def denial_to_ocsf(record: Mapping[str, Any], *,
                   product_version: str = PRODUCT_VERSION) -> dict[str, Any]:
    """An OCSF 1.3.0 API Activity (6003) event for a decoded DENY `DecisionRecord`.

    Raises RecordInvalidError for an ALLOW or a record missing what the mapping needs.
    """
    if _get(record, "decision", "DecisionRecord") != "DENY":
        raise RecordInvalidError(f"DecisionRecord {record.get('decision_id')!r}: "
                                 "only DENY records are exported")
    intent = _get(record, "intent", "DecisionRecord")
    facts: Mapping[str, Any] = record.get("facts") or {}
    reasons = [str(r) for r in _get(record, "reasons", "DecisionRecord")]
    agent_id = str(_get(intent, "agent_id", "DecisionRecord.intent"))
    action = str(_get(intent, "action", "DecisionRecord.intent"))
    resource = str(_get(intent, "resource", "DecisionRecord.intent"))
    audience = str(_get(intent, "audience", "DecisionRecord.intent"))
    intent_id = str(_get(intent, "intent_id", "DecisionRecord.intent"))
    policy_version = str(_get(record, "policy_version", "DecisionRecord"))
    decided_ms = _ms(_get(record, "decided_at", "DecisionRecord"), "decided_at")
    detail = str(record.get("detail") or "")
    activity_id, activity_name = _api_activity(action)
    severity_id = max((_REASON_SEVERITY.get(r, 0) for r in reasons), default=0)

    actor: dict[str, Any] = {"app_name": agent_id, "app_uid": agent_id}
    if facts.get("owner"):
        actor["user"] = _user(str(facts["owner"]))
    actor["authorizations"] = [{
        "decision": "Deny",
        "policy": {"name": "Gatepass policy", "uid": policy_version, "version": policy_version,
                   "is_applied": not _BEFORE_POLICY.intersection(reasons),
                   "desc": "denied: " + ", ".join(reasons) + (
                       " by " + ", ".join(str(p) for p in record.get("policy_ids") or ())
                       if record.get("policy_ids") else "")},
    }]
    event: dict[str, Any] = {
        "class_uid": API_ACTIVITY_CLASS_UID, "class_name": "API Activity",
        "category_uid": 6, "category_name": "Application Activity",
        "activity_id": activity_id, "activity_name": activity_name,
        "type_uid": API_ACTIVITY_CLASS_UID * 100 + activity_id,
        "type_name": f"API Activity: {_API_ACTIVITY[activity_id]}",
        "time": decided_ms, "timezone_offset": 0,
        "severity_id": severity_id, "severity": _SEVERITY[severity_id],
        "status_id": 2, "status": "Failure",
        "status_code": reasons[0] if reasons else "denied",
        "status_detail": detail or ", ".join(reasons),
        "message": (f"Gatepass denied {action}" + (f" on {resource}" if resource else "")
                    + f" for agent {agent_id}: " + ", ".join(reasons)),
        "actor": actor,
        "api": {"operation": action, "service": {"name": audience},
                "request": {"uid": intent_id}},
        "src_endpoint": {"name": agent_id},
        "dst_endpoint": {"svc_name": audience},
    }
    if resource:
        event["resources"] = [{"uid": resource, "name": resource}]
    event["metadata"] = _metadata(product_version, uid=str(_get(record, "decision_id",
                                                                  "DecisionRecord")),
                                  correlation_uid=intent_id, log_name="denials",
                                  original_ms=decided_ms)
    event["unmapped"] = _denial_unmapped(record, intent, facts, reasons, detail,
                                         policy_version)
    return _redacted(event)


def orphan_to_ocsf(alert: Mapping[str, Any], *,
                   product_version: str = PRODUCT_VERSION) -> dict[str, Any]:
    """An OCSF 1.3.0 Detection Finding (2004) for a decoded `OrphanAlert`.

    Severity: owner offboarded High, suspended or unknown Medium; confidence High when the
    identity provider reported the status, Medium for an owner it never reported.
    """
    alert_id = str(_get(alert, "alert_id", "OrphanAlert"))
    agent_id = str(_get(alert, "agent_id", "OrphanAlert"))
    trigger = str(_get(alert, "trigger", "OrphanAlert"))
    detected_ms = _ms(_get(alert, "detected_at", "OrphanAlert"), "detected_at")
    owner = alert.get("owner")
    status = alert.get("owner_status")
    shown = status or "unknown"
    severity_id = 4 if status == "offboarded" else 3
    confidence_id = 3 if status in ("offboarded", "suspended") else 2
    whose = f"owner {owner}" if owner else "its owner"
    resource: dict[str, Any] = {"uid": agent_id, "name": agent_id, "type": "AI Agent"}
    if owner:
        resource["owner"] = _user(str(owner))
    event: dict[str, Any] = {
        "class_uid": DETECTION_FINDING_CLASS_UID, "class_name": "Detection Finding",
        "category_uid": 2, "category_name": "Findings",
        "activity_id": 1, "activity_name": "Create",
        "type_uid": DETECTION_FINDING_CLASS_UID * 100 + 1,
        "type_name": "Detection Finding: Create",
        "time": detected_ms, "timezone_offset": 0,
        "severity_id": severity_id, "severity": _SEVERITY[severity_id],
        "status_id": 1, "status": "New",
        "confidence_id": confidence_id, "confidence": _CONFIDENCE[confidence_id],
        "message": (f"Orphaned AI agent {agent_id}: {whose} is {shown} "
                    f"(revealed by {trigger})"),
        "finding_info": {
            "uid": alert_id,
            "title": f"Orphaned AI agent: owner {shown}",
            "desc": (f"Agent {agent_id} is registered to {whose}, "
                     + (f"who is {status}" if status else "whom no identity source reported")
                     + ". Gatepass denies its actions (owner_inactive); reassign or "
                       "decommission it."),
            "types": ["Orphaned AI Agent"],
            "created_time": detected_ms,
            "analytic": {"name": "Gatepass owner lifecycle check", "uid": "gatepass.orphan",
                         "type_id": 1, "type": "Rule"},
        },
        "resources": [resource],
    }
    event["metadata"] = _metadata(product_version, uid=alert_id,
                                  correlation_uid=alert.get("intent_id"),
                                  log_name="orphan-alerts", original_ms=detected_ms)
    event["unmapped"] = {
        "alert_id": alert_id, "agent_id": agent_id, "owner": owner, "owner_status": status,
        "owner_status_at": _ms_or_none(alert.get("owner_status_at"), "owner_status_at"),
        "purpose": alert.get("purpose"), "department": alert.get("department"),
        "contact": alert.get("contact"), "trigger": trigger,
        "intent_id": alert.get("intent_id"),
    }
    return _redacted(event)


def to_cloudevent(ocsf: Mapping[str, Any], *, source: str, type: str,
                  subject: str) -> dict[str, Any]:
    """A CloudEvents 1.0 JSON envelope around an OCSF event from this module.

    The id is a UUIDv5 of the class and the source record's id (`metadata.uid`), never
    random: exporting the same record twice gives the same id, and CloudEvents consumers
    treat equal `source` + `id` as duplicates.
    """
    if not source:
        raise ConfigError("source", "a CloudEvent needs a non-empty source")
    if not type:
        raise ConfigError("type", "a CloudEvent needs a non-empty type")
    metadata = ocsf.get("metadata") or {}
    record_uid, class_uid, at = metadata.get("uid"), ocsf.get("class_uid"), ocsf.get("time")
    if not record_uid or not isinstance(class_uid, int) or not isinstance(at, int):
        raise RecordInvalidError("OCSF event without metadata.uid, class_uid or time")
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": str(uuid.uuid5(_EVENT_NS, f"ocsf/{class_uid}/{record_uid}")),
        "source": source,
        "type": type,
        "subject": subject,
        "time": _rfc3339(at),
        "datacontenttype": "application/json",
    }
    name = _CLASS_NAMES.get(class_uid)
    if name:
        event["dataschema"] = (f"https://schema.ocsf.io/{metadata.get('version', OCSF_VERSION)}"
                               f"/classes/{name}")
    event["data"] = dict(ocsf)
    return event


# ---- helpers -------------------------------------------------------------------------------

def _get(record: Mapping[str, Any], key: str, where: str) -> Any:
    try:
        value = record[key]
    except (KeyError, TypeError) as exc:
        raise RecordInvalidError(f"{where}: missing {key}") from exc
    if value is None:
        raise RecordInvalidError(f"{where}: {key} is null")
    return value


def _ms(value: Any, name: str) -> int:
    """Epoch milliseconds (OCSF timestamp_t) of a decoded timestamp-millis (naive = UTC)."""
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return (aware - _EPOCH) // _MS
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise RecordInvalidError(f"{name} is not a timestamp: {type(value).__name__}")


def _ms_or_none(value: Any, name: str) -> int | None:
    return None if value is None else _ms(value, name)


def _rfc3339(ms: int) -> str:
    return (_EPOCH + ms * _MS).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _user(principal: str) -> dict[str, Any]:
    return {"uid": principal, "name": principal, "type_id": 1, "type": "User"}


def _api_activity(action: str) -> tuple[int, str]:
    """CRUD activity of an action's verb (its last segment); 99 Other keeps the verb."""
    if not _ACTION.fullmatch(action):
        return 0, _API_ACTIVITY[0]
    verb = action.rsplit(".", 1)[1]
    for activity_id, verbs in _VERBS.items():
        if verb in verbs:
            return activity_id, _API_ACTIVITY[activity_id]
    return 99, verb


def _metadata(product_version: str, *, uid: str, correlation_uid: Any, log_name: str,
              original_ms: int) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "version": OCSF_VERSION,
        "product": {"name": PRODUCT_NAME, "vendor_name": PRODUCT_NAME,
                    "version": product_version},
        "uid": uid,
    }
    if correlation_uid:
        metadata["correlation_uid"] = str(correlation_uid)
    metadata.update(log_name=log_name, log_provider="gatepass",
                    original_time=_rfc3339(original_ms))
    return metadata


def _denial_unmapped(record: Mapping[str, Any], intent: Mapping[str, Any],
                     facts: Mapping[str, Any], reasons: list[str], detail: str,
                     policy_version: str) -> dict[str, Any]:
    amount = intent.get("amount")
    unmapped: dict[str, Any] = {
        "decision_id": record.get("decision_id"), "intent_id": intent.get("intent_id"),
        "decision": "DENY", "reasons": reasons, "detail": detail,
        "policy_version": policy_version,
        "policy_ids": [str(p) for p in record.get("policy_ids") or ()],
        "amount": None if amount is None else _decimal(amount),
        "currency": intent.get("currency"),
        "requested_at": _ms_or_none(intent.get("requested_at"), "requested_at"),
        "delegation_chain": list(intent.get("delegation_chain") or []),
        "context": dict(intent.get("context") or {}),
        "facts": {k: (_ms_or_none(v, k) if k.endswith("_at") else v)
                  for k, v in facts.items()},
        "worker": record.get("worker") or "",
        "masked_fields": list(record.get("masked_fields") or []),
    }
    credential = record.get("credential")
    if credential:  # by reference only: id, hash and key id; a DENY has none anyway
        unmapped["credential"] = {k: credential.get(k)
                                  for k in ("credential_id", "token_sha256", "kid")}
    return unmapped


def _decimal(amount: Any) -> str:
    value = amount if isinstance(amount, Decimal) else Decimal(str(amount))
    return format(value.normalize(), "f") if value.is_finite() else str(value)


def _redacted(event: dict[str, Any]) -> dict[str, Any]:
    """Replace anything shaped like a compact JWS; name the redacted paths in `unmapped`."""
    paths: list[str] = []
    clean: dict[str, Any] = _scrub(event, "", paths)
    if paths:
        clean.setdefault("unmapped", {})["redacted_fields"] = paths
    return clean


def _scrub(value: Any, path: str, paths: list[str]) -> Any:
    if isinstance(value, str):
        if _COMPACT_JWS.search(value):
            paths.append(path)
            return _COMPACT_JWS.sub(REDACTED, value)
        return value
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            clean_key = _scrub(str(key), f"{path}.<key>" if path else "<key>", paths)
            out[clean_key] = _scrub(item, f"{path}.{clean_key}" if path else clean_key, paths)
        return out
    if isinstance(value, list | tuple):
        return [_scrub(item, f"{path}[{i}]", paths) for i, item in enumerate(value)]
    return value
