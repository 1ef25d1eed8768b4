"""The worker's own log file, after real decisions: JSON lines only, no pass, no key material."""

from __future__ import annotations

import base64
import json
import time
import uuid
from decimal import Decimal
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from gatepass.codec.avro import schemas
from gatepass.credentials._jose import b64url_encode
from support.stack import Stack, read_topic

pytestmark = pytest.mark.integration
AUDIENCE = "procurement-api"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
# The confluent-kafka clients the worker uses (key sync, admin calls) have librdkafka write
# its log lines to stderr itself, past Python's logging: "%4|<time>|<FAC>|<client>| text".
# They are tolerated here (and still searched for secrets below); every other line must be
# one JSON object from our formatter.


def _forms(raw: bytes) -> list[str]:
    b64 = base64.b64encode(raw).decode()
    return [raw.hex(), b64.rstrip("="), b64url_encode(raw)]


def _key_material(stack: Stack) -> list[str]:
    """Every private key in the worker's key store, as PEM body lines and raw-key encodings."""
    found: list[str] = []
    pems = sorted((stack.settings.home / "keys").glob("*.pem"))
    assert pems, "the worker has no key store"
    for path in pems:
        pem = path.read_bytes()
        found += [line.decode() for line in pem.splitlines() if not line.startswith(b"-----")]
        key = serialization.load_pem_private_key(pem, password=None)
        found += _forms(key.private_bytes(serialization.Encoding.Raw,
                                          serialization.PrivateFormat.Raw,
                                          serialization.NoEncryption()))
    return found


def _pass_material(token: str) -> list[str]:
    _header, payload, signature = token.split(".")
    return [token, payload, signature,
            *_forms(base64.urlsafe_b64decode(signature + "=="))]


def _log_lines(stack: Stack) -> list[str]:
    worker = stack.workers[0]
    return worker.log_file.read_text(errors="replace").splitlines()


def _objects(lines: list[str]) -> list[dict[str, Any]]:
    """The JSON objects; fails on any line that is not one (librdkafka logs via Python)."""
    bad = []
    objects = []
    for number, line in enumerate(lines, 1):
        try:
            value = json.loads(line)
        except ValueError:
            bad.append(f"{number}: {line[:200]}")
            continue
        if not isinstance(value, dict):
            bad.append(f"{number}: {line[:200]}")
            continue
        objects.append(value)
    assert bad == [], "lines that are not one JSON object:\n" + "\n".join(bad[:20])
    return objects


@pytest.fixture(scope="module")
def decided(stack: Stack) -> dict[str, Any]:
    """An ALLOW, an ALLOW whose context carries a pass, and a dead-lettered record with one."""
    agent, owner = f"log-bot-{uuid.uuid4().hex[:6]}", f"owner-{uuid.uuid4().hex[:6]}"
    stack.register(agent, owner)
    with stack.client(agent_id=agent, audience=AUDIENCE, timeout=20) as gp:
        allowed = gp.authorize("purchase_order.create", "vendor:ACME", amount=Decimal("120.00"))
        assert allowed.decision == "ALLOW", allowed
        token = allowed.credential or ""
        assert token.count(".") == 2
        # An agent that copies its outgoing headers into the intent's context.
        echoed = gp.authorize("vendor.read", "vendor:ACME", context={
            "authorization": f"Bearer {token}", "note": token,
            "traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"})
        assert echoed.decision == "ALLOW", echoed
    garbage = b"\x00not avro " + token.encode()
    stack.produce_raw(stack.settings.topics.intents, agent.encode(), garbage)
    read_topic(stack.settings, stack.settings.topics.dead_letter, schemas().dead_letter,
               lambda rs: any(r["value"] == garbage for r in rs))
    time.sleep(1.0)  # the worker logs the dead letter as it sends it; let the line land
    return {"agent": agent, "token": token, "tokens": [token, echoed.credential or ""],
            "intent_ids": [allowed.intent_id, echoed.intent_id]}


def test_every_worker_log_line_is_one_json_object(stack: Stack, decided: dict[str, Any]) -> None:
    objects = _objects(_log_lines(stack))
    assert len(objects) > 10  # faust's start-up lines are in the same format
    for obj in objects:
        assert {"timestamp", "level", "logger", "message"} <= obj.keys(), obj
    loggers = {obj["logger"] for obj in objects}
    assert any(name.startswith("faust") for name in loggers), loggers  # faust's own records
    assert "gatepass.worker" in loggers
    assert any(obj["message"].startswith("dead-lettered") for obj in objects)


def test_worker_log_holds_no_pass(stack: Stack, decided: dict[str, Any]) -> None:
    text = "\n".join(_log_lines(stack))
    for token in decided["tokens"]:
        leaked = [s for s in _pass_material(token) if s in text]
        assert leaked == []


def test_worker_log_holds_no_private_key_material(stack: Stack,
                                                  decided: dict[str, Any]) -> None:
    text = "\n".join(_log_lines(stack))
    assert "PRIVATE KEY" not in text
    leaked = [s for s in _key_material(stack) if s in text]
    assert leaked == []


def test_one_decision_line_per_decision(stack: Stack, decided: dict[str, Any]) -> None:
    objects = _objects(_log_lines(stack))
    lines = {o["intent_id"]: o for o in objects
             if o["message"] == "decision" and o.get("intent_id") in decided["intent_ids"]}
    assert set(lines) == set(decided["intent_ids"])
    first, echoed = (lines[i] for i in decided["intent_ids"])
    assert (first["agent_id"], first["decision"], first["reasons"]) == \
        (decided["agent"], "ALLOW", ["allowed"])
    assert first["credential_id"] and first["policy_version"] and first["decision_id"]
    assert "trace_id" not in first and echoed["trace_id"] == TRACE
