"""`gatepass tail`: read a topic from the beginning and print each record on one line."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, TextIO

from gatepass.cli.main import dumps
from gatepass.codec.avro import RecordCodec, schemas
from gatepass.config import Settings
from gatepass.errors import DecodeError
from gatepass.transport.reader import read_topics

__all__ = ["tail"]


def _printable(line: str) -> str:
    """One record, one line: control characters an agent put in a field are escaped, so a
    resource like "x\\n<forged line>" cannot pass for a record of its own."""
    if line.isprintable():
        return line
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in line)


def _t(value: datetime | None) -> str:
    return value.strftime("%H:%M:%S.%f")[:-3] if value else "-"


def _amount(intent: dict[str, Any]) -> str:
    return f" {intent['amount'].normalize():f} {intent['currency']}" \
        if intent.get("amount") is not None else ""


def _verdict(r: dict[str, Any]) -> str:
    cred = f" pass={r['credential_id']}" if r.get("credential_id") else ""
    return (f"{_t(r['decided_at'])} {r['decision']:<5} {r['agent_id']} "
            f"[{','.join(r['reasons'])}] intent={r['intent_id']}{cred}")


def _decision(r: dict[str, Any]) -> str:
    i = r["intent"]
    return (f"{_t(r['decided_at'])} {r['decision']:<5} {i['agent_id']} {i['action']} "
            f"{i['resource']}{_amount(i)} [{','.join(r['reasons'])}] {r['detail']}")


def _orphan(r: dict[str, Any]) -> str:
    return (f"{_t(r['detected_at'])} ORPHAN {r['agent_id']} owner={r['owner']} "
            f"({r['owner_status'] or 'unknown'}) trigger={r['trigger']} purpose={r['purpose']}")


def _dead(r: dict[str, Any]) -> str:
    return (f"{_t(r['received_at'])} DEAD-LETTER {r['source_topic']}[{r['source_partition']}]"
            f"@{r['source_offset']} {r['error_code']}: {r['error']}")


def _views(settings: Settings) -> dict[str, tuple[str, RecordCodec, Callable[..., str]]]:
    t, s = settings.topics, schemas()
    return {"verdicts": (t.verdicts, s.verdict, _verdict),
            "denials": (t.denials, s.decision_record, _decision),
            "audit": (t.audit, s.decision_record, _decision),
            "orphans": (t.orphans, s.orphan_alert, _orphan),
            "dead-letter": (t.dead_letter, s.dead_letter, _dead)}


def tail(settings: Settings, which: str, *, follow: bool, limit: int, as_json: bool,
         out: TextIO, idle_timeout: float = 1.0) -> int:
    topic, codec, fmt = _views(settings)[which]
    count = 0
    records = read_topics(settings.bootstrap, [topic], follow=follow,
                          idle_timeout=idle_timeout, group="gatepass-tail")
    for raw in records:
        try:
            rec = codec.decode(raw.value)
        except DecodeError as exc:
            out.write(f"(undecodable record at {topic}[{raw.partition}]@{raw.offset}: "
                      f"{exc.code})\n")
            continue
        if as_json:
            if which == "verdicts":
                rec.pop("credential", None)  # a bearer pass is not for terminals and logs
            out.write(dumps(rec) + "\n")
        else:
            out.write(_printable(fmt(rec)) + "\n")
        out.flush()
        count += 1
        if limit and count >= limit:
            records.close()  # stops the reader and closes its consumer
            break
    return count
