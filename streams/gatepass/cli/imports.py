"""`gatepass import hr|entra-agents|servicenow FILE`: an identity export onto the topic.

Maps the whole file first (a bad row stops everything, nothing is published), then publishes
what the identity topic does not hold yet and prints a summary: rows read, events, published,
skipped duplicates. `--dry-run` prints the mapped events instead and needs no broker.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gatepass.config import Settings
from gatepass.errors import ConfigError, RecordInvalidError

__all__ = ["register"]

# An export's time cannot lie in the future; this much clock skew between hosts is allowed.
_SKEW = timedelta(minutes=5)


def register(sub: Any) -> None:
    p = sub.add_parser("import", help="import an identity export (HR feed, Entra Agent ID, "
                       "ServiceNow CMDB)", description=(
                           "Map an identity export to lifecycle events and publish the ones "
                           "the identity topic does not hold yet; a bad row stops the whole "
                           "file. See docs/importers.md."))
    kinds = p.add_subparsers(dest="import_source", required=True, metavar="SOURCE")

    hr = kinds.add_parser("hr", help="HR feed: terminations, leaves, returns (CSV or JSON)")
    _common(hr, "hr-feed")
    hr.add_argument("--format", choices=["csv", "json"],
                    help="file format (default: from the file name's extension)")
    hr.add_argument("--zone", default="UTC",
                    help="IANA zone a bare date is the start of a day in (default UTC)")
    hr.add_argument("--principal-field", choices=["email", "employee_id"], default="email",
                    help="which column identifies the principal (default email)")
    hr.set_defaults(handler=cmd_import_hr)

    en = kinds.add_parser("entra-agents", help="Entra Agent ID: agent identities with "
                          "sponsors (Graph JSON)")
    _common(en, "entra")
    en.add_argument("--principal-attribute", choices=["mail", "userPrincipalName"],
                    default="mail", help="sponsor attribute that is the owner's principal id")
    en.add_argument("--agent-id-attribute", default="id",
                    help="agent identity attribute that is the agent id (default id)")
    en.add_argument("--default-purpose", help="purpose of identities without a "
                    "gatepass:purpose= tag (default: such identities are refused)")
    en.set_defaults(handler=cmd_import_entra)

    sn = kinds.add_parser("servicenow", help="ServiceNow CMDB: agents as configuration "
                          "items (Table API JSON)")
    _common(sn, "servicenow")
    sn.add_argument("--purpose-field", default="u_purpose",
                    help="CI field holding the purpose (default u_purpose)")
    sn.add_argument("--agent-id-field", default="name",
                    help="CI field that is the agent id (default name)")
    sn.add_argument("--owner-field", action="append", metavar="FIELD",
                    help="field holding the owner's e-mail, first non-empty wins (repeat; "
                    "default owned_by.email, then managed_by.email)")
    sn.set_defaults(handler=cmd_import_servicenow)


def _common(p: argparse.ArgumentParser, source: str) -> None:
    p.add_argument("file", type=Path, metavar="FILE")
    p.add_argument("--dry-run", action="store_true",
                   help="print the mapped events, publish nothing (no broker needed)")
    p.add_argument("--json", action="store_true", help="JSON lines instead of text")
    p.add_argument("--source", default=source,
                   help=f"source name recorded with every event (default {source})")
    p.add_argument("--as-of", help="when the export was taken, ISO 8601 with an offset "
                   "(default: the file's modification time)")


def _read(ns: argparse.Namespace) -> tuple[str, datetime]:
    """The file's text and the export's time; a path or time problem is a ConfigError."""
    path: Path = ns.file
    try:
        data = path.read_text(encoding="utf-8")
        mtime = datetime.fromtimestamp(os.stat(path).st_mtime, UTC)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("file", f"cannot read {path}: {exc}") from exc
    as_of = mtime
    if ns.as_of:
        try:
            as_of = datetime.fromisoformat(ns.as_of.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ConfigError("as_of", f"not an ISO 8601 date-time: {ns.as_of!r}") from exc
        if as_of.tzinfo is None:
            raise ConfigError("as_of", "needs a time zone offset (Z, +01:00...)")
    if as_of > datetime.now(UTC) + _SKEW:
        # A future export time would make statuses dated before it count at once.
        raise ConfigError("as_of", f"{as_of.isoformat()} is in the future")
    return data, as_of


def _json(data: str) -> Any:
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        raise RecordInvalidError(f"not JSON: {exc}") from exc


def cmd_import_hr(ns: argparse.Namespace, settings: Settings) -> int:
    from gatepass.importers import HrConfig, map_hr_rows, parse_hr_file
    from gatepass.importers.hr import HrFormat

    config = HrConfig(source=ns.source, zone=ns.zone, principal_field=ns.principal_field)
    data, as_of = _read(ns)
    fmt: HrFormat = "json" if (ns.format or ns.file.suffix.lower().lstrip(".")) == "json" \
        else "csv"
    return _finish(ns, settings, map_hr_rows(parse_hr_file(data, fmt), config, as_of=as_of))


def cmd_import_entra(ns: argparse.Namespace, settings: Settings) -> int:
    from gatepass.importers import EntraConfig, map_entra_agents

    config = EntraConfig(source=ns.source, principal_attribute=ns.principal_attribute,
                         agent_id_attribute=ns.agent_id_attribute,
                         default_purpose=ns.default_purpose)
    data, as_of = _read(ns)
    return _finish(ns, settings, map_entra_agents(_json(data), config, as_of=as_of))


def cmd_import_servicenow(ns: argparse.Namespace, settings: Settings) -> int:
    from gatepass.importers import ServiceNowConfig, map_servicenow_cis

    config = ServiceNowConfig(source=ns.source, purpose_field=ns.purpose_field,
                              agent_id_field=ns.agent_id_field)
    if ns.owner_field:
        config = replace(config, owner_fields=tuple(ns.owner_field))
    data, as_of = _read(ns)
    return _finish(ns, settings, map_servicenow_cis(_json(data), config, as_of=as_of))


def _finish(ns: argparse.Namespace, settings: Settings, batch: Any) -> int:
    from gatepass.cli.main import dumps
    from gatepass.importers import PublishSummary, publish_batch

    if ns.dry_run:
        for event in batch.events:
            print(dumps(_event_json(event)) if ns.json else _event_line(event))
        summary = PublishSummary(source=batch.source, rows=batch.rows,
                                 events=len(batch.events) + batch.duplicates, published=0,
                                 skipped_duplicates=batch.duplicates, dry_run=True)
    else:
        summary = publish_batch(settings, batch)
    if ns.json:
        print(dumps({"source": summary.source, "rows": summary.rows, "events": summary.events,
                     "published": summary.published,
                     "skipped_duplicates": summary.skipped_duplicates,
                     "dry_run": summary.dry_run}))
    else:
        done = "would publish" if summary.dry_run else "published"
        count = len(batch.events) if summary.dry_run else summary.published
        print(f"{summary.source}: {summary.rows} rows read, {summary.events} events: "
              f"{count} {done}, {summary.skipped_duplicates} skipped as duplicates")
    sys.stdout.flush()
    return 0


def _event_json(event: Any) -> dict[str, Any]:
    from gatepass.codec.records import lifecycle_to_record
    from gatepass.core import lifecycle_key

    record = lifecycle_to_record(event)
    kind, body = record.pop("event")
    return {"key": lifecycle_key(event), "type": kind.rsplit(".", 1)[-1], **record, **body}


def _event_line(event: Any) -> str:
    from gatepass.core import lifecycle_key

    record = _event_json(event)
    what = " ".join(f"{k}={v}" for k, v in record.items()
                    if k not in ("key", "type", "event_time", "recorded_at", "source",
                                 "source_event_id") and v is not None)
    at = event.event_time.isoformat().replace("+00:00", "Z")
    return f"{lifecycle_key(event)}  {record['type']} {what} at {at} [{event.source_event_id}]"
