"""`gatepass approvals list|approve|deny`: the command-line channel of human approval.

    gatepass approvals list [--as PRINCIPAL] [--all] [--json]
    gatepass approvals approve INTENT --as PRINCIPAL --code CODE [--json]
    gatepass approvals deny    INTENT --as PRINCIPAL --code CODE [--json]

`list` shows pending requests (with --all, the recent settled ones too); with --as, only
those PRINCIPAL may decide, with the one-time code from PRINCIPAL's inbox when this machine
holds it. `approve`/`deny` write one decision and print what the processor made of it.
Exit codes: 0 the decision ended the request as asked (or `list` worked), 1 it was refused
(the reason code is printed: approval_forged, approver_inactive, ...), 2 an error.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

from gatepass.config import Settings

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser("approvals", help="list and decide pending approval requests")
    actions = p.add_subparsers(dest="approvals_action", required=True, metavar="ACTION")
    ls = actions.add_parser("list", help="pending requests (newest last)")
    ls.add_argument("--as", dest="principal", help="only requests this principal may decide")
    ls.add_argument("--all", action="store_true", help="also recently settled requests")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    ls.set_defaults(handler=cmd_list)
    for name, approve in (("approve", True), ("deny", False)):
        d = actions.add_parser(name, help=f"{name} one pending request")
        d.add_argument("intent", metavar="INTENT", help="the intent id of the request")
        d.add_argument("--as", dest="principal", required=True, help="who decides")
        d.add_argument("--code", required=True, help="the one-time approval code")
        d.add_argument("--timeout", type=float, default=15.0)
        d.add_argument("--json", action="store_true", help="one JSON object on one line")
        d.set_defaults(handler=cmd_decide, approve=approve)


def _row(view: Any, codes: dict[str, str]) -> dict[str, Any]:
    from gatepass.codec.records import intent_from_record

    req, intent = view.request, view.intent
    amount = intent_from_record(intent).amount  # 50000.0000 on the wire -> 50000.00
    row = {"intent_id": intent["intent_id"], "request_id": view.request_id,
           "agent_id": intent["agent_id"], "owner": req["owner"],
           "approvers": list(req["approvers"]), "purpose": req.get("purpose"),
           "action": intent["action"], "resource": intent["resource"],
           "amount": None if amount is None else str(amount),
           "currency": intent.get("currency"), "why": list(req["why"]),
           "requested_at": req["requested_at"], "expires_at": req["expires_at"],
           "status": view.status}
    if view.final is not None:
        row["approver"] = (view.final.get("approval") or {}).get("approver")
        row["reasons"] = list(view.final["reasons"])
    if view.request_id in codes:
        row["code"] = codes[view.request_id]
    return row


def cmd_list(ns: argparse.Namespace, settings: Settings) -> int:
    from gatepass.approvals.client import ApprovalsClient
    from gatepass.approvals.inbox import read_inbox
    from gatepass.cli.main import dumps

    now = datetime.now(UTC)
    with ApprovalsClient(settings) as client:
        views = client.requests(now=now)
    if not ns.all:
        views = [v for v in views if v.pending]
    codes: dict[str, str] = {}
    if ns.principal:
        views = [v for v in views if ns.principal in v.request["approvers"]]
        if settings.approval_inbox.exists():
            codes = {n["request_id"]: n["code"]
                     for n in read_inbox(settings.approval_inbox, ns.principal)}
    rows = [_row(v, codes) for v in views]
    if ns.json:
        for row in rows:
            print(dumps(row))
        return 0
    if not rows:
        print("no pending approval requests" if not ns.all else "no recent approval requests")
        return 0
    for row in rows:
        amount = f" {row['amount']} {row['currency']}" if row["amount"] else ""
        left = (row["expires_at"] - now).total_seconds()
        when = f"expires in {left:.0f}s" if row["status"] == "pending" else row["status"]
        print(f"{row['intent_id']}  {row['agent_id']}: {row['action']} {row['resource']}"
              f"{amount}  owner {row['owner']}  [{when}]")
        print(f"    why: {'; '.join(row['why'])}")
        if "code" in row:
            print(f"    code for {ns.principal}: {row['code']}")
    return 0


def cmd_decide(ns: argparse.Namespace, settings: Settings) -> int:
    from gatepass.approvals.client import ApprovalsClient
    from gatepass.cli.main import dumps

    with ApprovalsClient(settings) as client:
        view = client.find(intent_id=ns.intent)
        if view is None:
            print(f"gatepass: error [approval_unknown]: no recent approval request for intent "
                  f"{ns.intent}", file=sys.stderr)
            return 2
        since = datetime.now(UTC)
        decision = client.submit(view, approver=ns.principal, approve=ns.approve,
                                 code=ns.code.strip(), channel="cli")
        outcome = client.outcome(decision, since=since, timeout=ns.timeout)
    wanted = "ALLOW" if ns.approve else "DENY"
    ok = outcome.accepted and outcome.decision == wanted
    if ns.json:
        print(dumps({"intent_id": ns.intent, "decision_id": decision.decision_id,
                     "accepted": outcome.accepted, "decision": outcome.decision,
                     "reason": outcome.reason, "detail": outcome.detail}))
    elif ok:
        print(f"{outcome.decision} {ns.intent}: {outcome.reason} ({outcome.detail})")
    else:
        print(f"refused [{outcome.reason}]: {outcome.detail}"
              + (f" (the request ended {outcome.decision})" if outcome.decision else ""))
    return 0 if ok else 1
