"""Tells approvers about pending requests: approvals topic -> one notice per approver per channel.

Consumed in a consumer group of its own (`<app_id>-approvals-notify`), apart from the intents,
so a slow webhook never holds a decision back. Offsets are committed after every channel
took the notices of a batch (at least once; notices carry a stable idempotency key, so a
receiver sees a repeat as the same notice). A notice that cannot be delivered after the
channel's retries is logged and counted, and the request simply expires: fail closed.

The one-time code is computed here from the approval key, never read from a topic.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from aiokafka import AIOKafkaConsumer

from gatepass.approvals.notice import ApprovalNotice, Notifier
from gatepass.codec.avro import SchemaSet
from gatepass.codec.records import intent_from_record
from gatepass.config import Settings
from gatepass.core.approval import approval_code
from gatepass.errors import GatepassError
from gatepass.transport.offsets import commit_or_warn

__all__ = ["NoticeDispatcher", "approval_link", "notices_for"]

log = logging.getLogger("gatepass.approvals")


def approval_link(base_url: str, *, agent_id: str, request_id: str, approver: str,
                  code: str) -> str:
    """The approval page of one approver for one request; the code makes it a secret."""
    path = f"/approvals/{quote(agent_id, safe='')}/{quote(request_id, safe='')}"
    return f"{base_url.rstrip('/')}{path}?{urlencode({'as': approver, 'code': code})}"


def notices_for(request: Mapping[str, Any], *, key: bytes, base_url: str) -> list[ApprovalNotice]:
    """One notice per approver of a decoded ApprovalRequest record."""
    intent = request["intent"]
    amount = intent_from_record(intent).amount  # 50000.0000 on the wire -> 50000.00
    notices = []
    for approver in request["approvers"]:
        code = approval_code(key, str(request["request_id"]), approver)
        notices.append(ApprovalNotice(
            request_id=str(request["request_id"]), intent_id=intent["intent_id"],
            agent_id=intent["agent_id"], owner=str(request["owner"]), approver=approver,
            purpose=request.get("purpose"), department=request.get("department"),
            action=intent["action"], resource=intent["resource"],
            amount=None if amount is None else str(amount), currency=intent.get("currency"),
            why=list(request["why"]),
            requested_at=request["requested_at"],
            expires_at=request["expires_at"],
            code=code, link=approval_link(base_url, agent_id=intent["agent_id"],
                                          request_id=str(request["request_id"]),
                                          approver=approver, code=code)))
    return notices


class NoticeDispatcher:
    def __init__(self, settings: Settings, schemas: SchemaSet, key: Callable[[], bytes],
                 channels: Sequence[Notifier],
                 on_result: Callable[[str, bool], None] | None = None) -> None:
        self.settings = settings
        self.schemas = schemas
        self.key = key
        self.channels = list(channels)
        self.on_result = on_result or (lambda channel, ok: None)

    @property
    def group_id(self) -> str:
        return f"{self.settings.app_id}-approvals-notify"

    async def handle(self, value: bytes | None) -> None:
        """Every notice of one ApprovalRequest record, to every channel, concurrently."""
        try:
            request = self.schemas.approval_request.decode(value)
        except GatepassError as exc:
            log.warning("approval request not readable, no notice sent: %s", exc.code)
            return
        if request["expires_at"] <= datetime.now(UTC):
            return  # a backlog after downtime: the request is over, nobody can act on it
        notices = notices_for(request, key=self.key(), base_url=self.settings.approval_base_url)
        await asyncio.gather(*(self._deliver(c, n) for c in self.channels for n in notices))

    async def _deliver(self, channel: Notifier, notice: ApprovalNotice) -> None:
        try:
            await channel.deliver(notice)
        except Exception as exc:  # one channel failing must not stop the others
            log.error("approval notice for request %s not delivered by %s: %s",
                      notice.request_id, channel.name,
                      exc.code if isinstance(exc, GatepassError) else type(exc).__name__)
            self.on_result(channel.name, False)
            return
        self.on_result(channel.name, True)

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(
            self.settings.topics.approvals, bootstrap_servers=self.settings.bootstrap,
            group_id=self.group_id, client_id=self.group_id, enable_auto_commit=False,
            auto_offset_reset="earliest", max_poll_records=100)
        await consumer.start()
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=500, max_records=100)
                for messages in batch.values():
                    await asyncio.gather(*(self.handle(m.value) for m in messages))
                if batch:
                    await commit_or_warn(consumer, log, "approval notices")
        finally:
            await consumer.stop()
            for channel in self.channels:
                await channel.close()
