"""What an approver is told about one pending request, and the interface every channel has."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

__all__ = ["NOTICE_TYPE", "ApprovalNotice", "Notifier", "notice_id", "notice_payload"]

NOTICE_TYPE = "gatepass.approval.requested"


@dataclass(frozen=True, slots=True, kw_only=True)
class ApprovalNotice:
    """One request, addressed to one approver (the owner, or a configured delegate).

    `code` is the one-time approval secret of this approver for this request, and `link`
    the approval page URL that carries it: only the approver's channel may see either, so
    neither appears in the repr.
    """

    request_id: str
    intent_id: str
    agent_id: str
    owner: str
    approver: str
    purpose: str | None
    department: str | None
    action: str
    resource: str
    amount: str | None  # a decimal string, never a float
    currency: str | None
    why: Sequence[str]
    requested_at: datetime
    expires_at: datetime
    code: str = field(repr=False)
    link: str = field(repr=False)


class Notifier(Protocol):
    """A channel to approvers. `deliver` returns once the channel has the notice, or raises
    `gatepass.errors.NotificationError` after its own retries; the caller retries later
    (so a channel must tolerate the same notice twice: it carries an idempotency key)."""

    name: str

    async def deliver(self, notice: ApprovalNotice) -> None: ...

    async def close(self) -> None: ...


def notice_id(notice: ApprovalNotice) -> str:
    """The notice's stable id (one request, one approver): every channel's idempotency key.

    A digest rather than the raw ids, so it is safe in an HTTP header or a file whatever
    characters the approver id holds; the same request and approver always give the same id.
    """
    material = json.dumps([notice.request_id, notice.approver], ensure_ascii=False)
    return "apn_" + hashlib.sha256(material.encode("utf-8")).hexdigest()[:32]


def notice_payload(notice: ApprovalNotice) -> dict[str, Any]:
    """The notice as a JSON object, the same for every channel (it includes `code` and `link`).

    Times are RFC 3339 in UTC with a `Z`; a naive datetime is a bug and raises ValueError.
    """
    return {
        "type": NOTICE_TYPE,
        "id": notice_id(notice),
        "request_id": notice.request_id,
        "intent_id": notice.intent_id,
        "agent_id": notice.agent_id,
        "owner": notice.owner,
        "approver": notice.approver,
        "purpose": notice.purpose,
        "department": notice.department,
        "action": notice.action,
        "resource": notice.resource,
        "amount": notice.amount,
        "currency": notice.currency,
        "why": list(notice.why),
        "requested_at": _rfc3339(notice.requested_at, "requested_at"),
        "expires_at": _rfc3339(notice.expires_at, "expires_at"),
        "code": notice.code,
        "link": notice.link,
    }


def _rfc3339(value: datetime, name: str) -> str:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
