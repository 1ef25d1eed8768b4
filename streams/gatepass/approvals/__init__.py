"""Human approval of high-risk actions: notifying owners, the approval page, the CLI side.

The decision itself (which actions need approval, whether a decision event is valid) lives
in the pure core (`gatepass.core.approval`); this package is the I/O around it:

    notice.py    ApprovalNotice, the Notifier interface
    webhook.py   the signed webhook channel (and verify_signature for receivers)
    inbox.py     the CLI channel: a 0600 JSON Lines inbox per approver
    dispatch.py  approvals topic -> notices, in a consumer group of its own
    client.py    the approver's side over Kafka: find requests, submit decisions
    page.py      the approval page the worker serves
"""

from gatepass.approvals.client import ApprovalsClient, Outcome, RequestView
from gatepass.approvals.inbox import InboxNotifier, read_inbox
from gatepass.approvals.notice import ApprovalNotice, Notifier
from gatepass.approvals.webhook import WebhookNotifier, verify_signature

__all__ = [
    "ApprovalNotice",
    "ApprovalsClient",
    "InboxNotifier",
    "Notifier",
    "Outcome",
    "RequestView",
    "WebhookNotifier",
    "read_inbox",
    "verify_signature",
]
