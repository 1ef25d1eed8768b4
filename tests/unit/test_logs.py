"""Structured logs: one JSON object per line, and no secret on any leak path.

Every secret is real: a pass signed by PassIssuer with a KeyStore in tmp_path, the PEM file
that store wrote, the JWK of that same private key. Each leak path (message, arguments,
extra fields, nested extras, exception, exception cause, text format) has its own test,
run once per secret; each asserts that the secret and its base64/hex forms are absent and
that the marker carrying the secret's hash is present.
"""

from __future__ import annotations

import base64
import doctest
import hashlib
import io
import json
import logging
import re
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

import gatepass.logs
from gatepass.codec import schemas
from gatepass.codec.records import intent_to_record
from gatepass.config import Settings
from gatepass.core import (
    AgentRegistered,
    IdentityState,
    Intent,
    PrincipalStatus,
    PrincipalStatusChanged,
)
from gatepass.credentials import KeyStore, PassIssuer, PassRequest
from gatepass.credentials._jose import b64url_encode
from gatepass.errors import ConfigError
from gatepass.logs import (
    JsonFormatter,
    RedactionFilter,
    TextFormatter,
    configure_logging,
    decision_log_fields,
    faust_logging_config,
    is_secret_name,
    log_decision,
    make_handler,
    trace_id_from_context,
)
from gatepass.policy import load_policy
from gatepass.transport import partition_for
from gatepass.worker import Pipeline

NOW = datetime(2026, 3, 2, 9, 30, 15, tzinfo=UTC)
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def sha12(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def forms(raw: bytes) -> list[str]:
    """The ways raw secret bytes show up in text: hex, base64, base64url (with and without =)."""
    b64 = base64.b64encode(raw).decode()
    return [raw.hex(), b64, b64.rstrip("="), b64url_encode(raw)]


@dataclass(frozen=True)
class Secret:
    """A secret as it would be logged, what must never appear, and the marker that must."""

    name: str
    text: str
    forbidden: tuple[str, ...]
    marker: str


# ---- real secrets ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keystore(tmp_path_factory: pytest.TempPathFactory) -> KeyStore:
    return KeyStore.open(tmp_path_factory.mktemp("logs") / "keys", now=NOW)


@pytest.fixture(scope="module")
def token(keystore: KeyStore) -> str:
    issuer = PassIssuer(keystore, issuer="gatepass", ttl=timedelta(minutes=5))
    return issuer.issue(PassRequest(
        intent_id=str(uuid.uuid4()), agent_id="procure-bot", audience="procurement-api",
        action="purchase_order.create", resource="vendor:ACME", amount=Decimal("120.00"),
        currency="USD", owner="sarah", delegation_chain=(), policy_version="v1",
        issued_at=NOW)).token


def pass_forms(token: str) -> tuple[str, ...]:
    _header, payload, signature = token.split(".")
    raw_signature = base64.urlsafe_b64decode(signature + "==")
    return (token, payload, signature, f"{payload}.{signature}", *forms(raw_signature))


@pytest.fixture(scope="module")
def pem(keystore: KeyStore) -> str:
    return (keystore.path / f"{keystore.active.kid}.pem").read_text()


def pem_body(pem: str) -> str:
    return "".join(line for line in pem.splitlines() if line and not line.startswith("-----"))


@pytest.fixture(scope="module")
def raw_private(pem: str) -> bytes:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    return key.private_bytes(serialization.Encoding.Raw,
                             serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())


@pytest.fixture(scope="module")
def secrets(token: str, pem: str, raw_private: bytes, keystore: KeyStore) -> dict[str, Secret]:
    body = pem_body(pem)
    d = b64url_encode(raw_private)
    jwk = {**keystore.jwks(now=NOW)["keys"][0], "d": d}
    return {
        "pass": Secret("pass", token, pass_forms(token), f"[REDACTED:jws sha256={sha12(token)}]"),
        "pem": Secret("pem", pem, (body, *[line for line in pem.splitlines()[1:-1]],
                                   *forms(raw_private)),
                      f"[REDACTED:pem sha256={sha12(body)}]"),
        "jwk": Secret("jwk", json.dumps(jwk), (d, *forms(raw_private)),
                      f"[REDACTED:jwk sha256={sha12(d)}]"),
        "authorization": Secret("authorization", f"Authorization: Bearer {token}",
                                pass_forms(token),
                                f"Authorization: Bearer [REDACTED:bearer sha256={sha12(token)}]"),
    }


KINDS = ["pass", "pem", "jwk", "authorization"]


# ---- a logger writing to a string ------------------------------------------------------------
@dataclass
class Capture:
    log: logging.Logger
    stream: io.StringIO

    def lines(self) -> list[str]:
        return self.stream.getvalue().splitlines()

    def objects(self) -> list[dict[str, Any]]:
        parsed = [json.loads(line) for line in self.lines()]
        assert all(isinstance(p, dict) for p in parsed)
        return parsed

    def assert_clean(self, secret: Secret) -> None:
        text = self.stream.getvalue()
        leaked = [f for f in secret.forbidden if f in text]
        assert leaked == [], f"{secret.name} leaked: {leaked}"
        assert secret.marker in text
        self.objects()  # and every line still parses as one JSON object


def capture(json_lines: bool = True) -> Iterator[Capture]:
    stream = io.StringIO()
    log = logging.getLogger(f"gatepass.test.{uuid.uuid4().hex}")
    handler = make_handler(json=json_lines, stream=stream)
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.DEBUG)
    try:
        yield Capture(log, stream)
    finally:
        log.removeHandler(handler)


@pytest.fixture
def cap() -> Iterator[Capture]:
    yield from capture()


@pytest.fixture
def text_cap() -> Iterator[Capture]:
    yield from capture(json_lines=False)


# ---- one test per leak path, each run with every kind of secret -----------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_secret_in_message_is_masked(cap: Capture, secrets: dict[str, Secret], kind: str) -> None:
    secret = secrets[kind]
    cap.log.info(f"presented {secret.text} to the target")  # the secret is in msg itself
    cap.assert_clean(secret)
    assert cap.objects()[0]["message"].startswith("presented ")


@pytest.mark.parametrize("kind", KINDS)
def test_secret_in_args_is_masked_after_formatting(cap: Capture, secrets: dict[str, Secret],
                                                   kind: str) -> None:
    secret = secrets[kind]
    cap.log.warning("presented %s to %s", secret.text, "procurement-api")
    cap.assert_clean(secret)
    assert cap.objects()[0]["message"].endswith(" to procurement-api")


@pytest.mark.parametrize("kind", KINDS)
def test_secret_in_extra_field_is_masked(cap: Capture, secrets: dict[str, Secret],
                                         kind: str) -> None:
    secret = secrets[kind]
    cap.log.info("request", extra={"detail": secret.text, "agent_id": "procure-bot"})
    cap.assert_clean(secret)
    (line,) = cap.objects()
    assert secret.marker in line["detail"] and line["agent_id"] == "procure-bot"


@pytest.mark.parametrize("kind", KINDS)
def test_secret_nested_in_extra_field_is_masked(cap: Capture, secrets: dict[str, Secret],
                                                kind: str) -> None:
    secret = secrets[kind]
    cap.log.info("request", extra={"request": {"body": [secret.text], "path": "/orders"}})
    cap.assert_clean(secret)
    assert cap.objects()[0]["request"]["path"] == "/orders"


@pytest.mark.parametrize("kind", KINDS)
def test_secret_in_exception_is_masked(cap: Capture, secrets: dict[str, Secret],
                                       kind: str) -> None:
    secret = secrets[kind]
    try:
        raise ValueError(f"target refused {secret.text}")
    except ValueError:
        cap.log.exception("call failed")
    cap.assert_clean(secret)
    (line,) = cap.objects()
    assert isinstance(line["exc"], str) and "ValueError: target refused" in line["exc"]
    assert secret.marker in line["exc"]


@pytest.mark.parametrize("kind", KINDS)
def test_secret_in_exception_cause_is_masked(cap: Capture, secrets: dict[str, Secret],
                                             kind: str) -> None:
    secret = secrets[kind]
    try:
        try:
            raise KeyError(secret.text)
        except KeyError as inner:
            raise RuntimeError("lookup failed") from inner
    except RuntimeError as exc:
        cap.log.error("call failed", exc_info=exc)
    cap.assert_clean(secret)
    assert "RuntimeError: lookup failed" in cap.objects()[0]["exc"]


@pytest.mark.parametrize("kind", KINDS)
def test_secret_in_text_format_is_masked(text_cap: Capture, secrets: dict[str, Secret],
                                         kind: str) -> None:
    secret = secrets[kind]
    text_cap.log.info("presented %s", secret.text, extra={"detail": secret.text})
    text = text_cap.stream.getvalue()
    assert [f for f in secret.forbidden if f in text] == []
    assert text.count(secret.marker) == 2


def test_pem_as_bytes_repr_is_masked_with_the_same_hash(cap: Capture,
                                                        secrets: dict[str, Secret]) -> None:
    secret = secrets["pem"]
    cap.log.info("loaded %r", secret.text.encode())  # escaped newlines inside b'...'
    cap.assert_clean(secret)


def test_jwk_dict_in_extra_loses_its_private_member(cap: Capture, secrets: dict[str, Secret],
                                                     keystore: KeyStore,
                                                     raw_private: bytes) -> None:
    public = keystore.jwks(now=NOW)["keys"][0]
    cap.log.info("key loaded", extra={"jwk": {**public, "d": b64url_encode(raw_private)}})
    cap.assert_clean(secrets["jwk"])
    logged = cap.objects()[0]["jwk"]
    assert logged["x"] == public["x"] and logged["kid"] == public["kid"]  # public half kept


def test_secret_named_extras_are_masked_whole(cap: Capture, token: str) -> None:
    cap.log.info("approval", extra={
        "approval_secret": "493817", "code": 271828, "password": "hunter2",
        "authorization": f"Bearer {token}", "clientSecret": "s3cr3t-value",
        "credentials": {"user": "svc", "pass": "p@ss"}})
    (line,) = cap.objects()
    text = cap.stream.getvalue()
    for value in ("493817", "271828", "hunter2", token, "s3cr3t-value", "p@ss"):
        assert value not in text
    assert line["approval_secret"].startswith("[REDACTED:approval_secret hmac=")
    assert line["code"].startswith("[REDACTED:code hmac=")
    assert line["clientSecret"].startswith("[REDACTED:clientsecret hmac=")
    assert line["credentials"].startswith("[REDACTED:credentials hmac=")
    # a pass keeps its plain hash (correlatable), its scheme stays readable
    assert line["authorization"] == f"Bearer [REDACTED:authorization sha256={sha12(token)}]"


def test_short_secrets_get_no_guessable_hash(cap: Capture) -> None:
    # SHA-256 of a 6-digit approval code is the code (10^6 guesses): such values get an HMAC
    # under a per-process key instead, which still correlates equal values.
    cap.log.info("approval", extra={"approval_secret": "493817"})
    cap.log.info("approval granted approval_secret=493817")
    first, second = cap.objects()
    assert sha12("493817") not in cap.stream.getvalue()
    hashed = first["approval_secret"].removeprefix("[REDACTED:approval_secret hmac=")
    assert hashed.rstrip("]") in second["message"]


def test_secret_named_pairs_in_message_are_masked(cap: Capture, token: str) -> None:
    cap.log.info("config %s", {"password": "hunter2", "api_key": "k-123456", "status_code": 200})
    cap.log.info("callback https://idp.example/cb?access_token=%s&state=xyz", "opaque-abc-123")
    cap.log.info("headers %s", json.dumps({"Authorization": f"Bearer {token}", "Accept": "*/*"}))
    first, second, third = (line["message"] for line in cap.objects())
    assert "hunter2" not in first and "k-123456" not in first and "'status_code': 200" in first
    assert "opaque-abc-123" not in second and "&state=xyz" in second
    assert token not in third and f"Bearer [REDACTED:bearer sha256={sha12(token)}]" in third
    assert '"Accept": "*/*"' in third


def test_identifiers_about_secrets_are_kept(cap: Capture) -> None:
    kept = {"credential_id": "6da0eb0a-5a50-50ec-9bea-5b600c5ab0fe",
            "token_sha256": "q7Z2c1w", "kid": "abc", "error_code": "record_invalid",
            "reasons": ["allowed"], "masked_fields": ["credential.token"]}
    cap.log.info("decision", extra=kept)
    line = cap.objects()[0]
    assert {k: line[k] for k in kept} == kept


@pytest.mark.parametrize(("name", "secret"), [
    ("approval_secret", True), ("token", True), ("refresh_token", True), ("apiKey", True),
    ("private_key", True), ("Authorization", True), ("code", True), ("approval_code", True),
    ("credential_id", False), ("token_sha256", False), ("error_code", False),
    ("status_code", False), ("reasons", False), ("intent_id", False), ("trace_id", False),
    ("masked_fields", False), ("kid", False)])
def test_secret_names(name: str, secret: bool) -> None:
    assert is_secret_name(name) is secret


# ---- format ---------------------------------------------------------------------------------
def test_line_has_timestamp_level_logger_message_and_extras(cap: Capture) -> None:
    cap.log.info("decided %s", "intent-1", extra={"decision": "ALLOW", "reasons": ["allowed"],
                                                  "level": "shadowed", "amount": Decimal("1.5"),
                                                  "at": NOW})
    (line,) = cap.objects()
    assert TIMESTAMP.fullmatch(line["timestamp"])
    assert (line["level"], line["logger"], line["message"]) == ("INFO", cap.log.name,
                                                               "decided intent-1")
    assert line["decision"] == "ALLOW" and line["reasons"] == ["allowed"]
    assert line["level_"] == "shadowed"  # an extra never overwrites a core key
    assert line["amount"] == "1.5" and line["at"] == NOW.isoformat()
    assert "exc" not in line


def test_timestamp_is_utc_with_milliseconds() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    record.created, record.msecs = NOW.timestamp() + 0.0456, 45.6
    assert json.loads(JsonFormatter().format(record))["timestamp"] == \
        "2026-03-02T09:30:15.045Z"


def test_every_record_is_one_json_object_on_one_line(cap: Capture, token: str) -> None:
    cap.log.info("multi\nline\r\nmessage")
    cap.log.info("separators \u2028 \u2029 and non-ASCII: \u00e9\u6f22")
    cap.log.info("table:\n| a | b |", extra={"detail": "x\ny"})
    try:
        raise RuntimeError(f"with\nnewlines {token}")
    except RuntimeError:
        cap.log.exception("failed")
    lines = cap.lines()
    assert len(lines) == 4
    objects = cap.objects()
    assert objects[0]["message"] == "multi\nline\r\nmessage"
    assert objects[1]["message"].endswith("\u00e9\u6f22")
    assert all(line.isascii() for line in lines)  # no character can split a line for a reader


def test_unformattable_arguments_still_give_one_redacted_line(cap: Capture, token: str) -> None:
    cap.log.info("bad %d format", token)
    (line,) = cap.objects()
    assert token not in cap.stream.getvalue()
    assert "could not be formatted" in line["message"]


def test_unprintable_extras_never_raise_into_the_caller(cap: Capture) -> None:
    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("no")

    cap.log.info("odd values", extra={"thing": Broken(), "ratio": float("nan")})
    (line,) = cap.objects()
    assert line["thing"] == "[unprintable Broken]" and line["ratio"] == "nan"
    assert "NaN" not in cap.stream.getvalue()  # not JSON: strict readers refuse it


def test_redaction_runs_once_however_many_handlers(cap: Capture, token: str) -> None:
    second = io.StringIO()
    handler = make_handler(stream=second)
    cap.log.addHandler(handler)
    try:
        cap.log.info("pass %s", token)
    finally:
        cap.log.removeHandler(handler)
    assert json.loads(second.getvalue())["message"] == cap.objects()[0]["message"]
    assert token not in second.getvalue()


def test_formatter_redacts_even_without_the_filter(token: str) -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "pass %s", (token,), None)
    for formatter in (JsonFormatter(), TextFormatter()):
        assert token not in formatter.format(logging.makeLogRecord(vars(record)))


def test_handler_carries_the_redaction_filter() -> None:
    for as_json, formatter in ((True, JsonFormatter), (False, TextFormatter)):
        handler = make_handler(json=as_json, stream=io.StringIO())
        assert isinstance(handler.formatter, formatter)
        assert any(isinstance(f, RedactionFilter) for f in handler.filters)


# ---- configuration ---------------------------------------------------------------------------
@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, restored afterwards (handlers, level, warnings capture)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield root
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in handlers:
            root.addHandler(h)
        root.setLevel(level)
        logging.captureWarnings(False)


def test_configure_logging_installs_one_redacting_json_handler(root_logger: logging.Logger,
                                                               token: str) -> None:
    stream = io.StringIO()
    handler = configure_logging("info", stream=stream)
    assert root_logger.handlers == [handler] and root_logger.level == logging.INFO
    logging.getLogger("gatepass.worker").info("pass %s", token)
    logging.getLogger("gatepass.worker").debug("not shown")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn(f"deprecated, token {token}", DeprecationWarning, stacklevel=1)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["logger"] for line in lines] == ["gatepass.worker", "py.warnings"]
    assert token not in stream.getvalue()


@pytest.mark.parametrize("level", ["verbose", "", "20"])
def test_configure_logging_refuses_an_unknown_level(root_logger: logging.Logger,
                                                    level: str) -> None:
    with pytest.raises(ConfigError) as info:
        configure_logging(level, stream=io.StringIO())
    assert info.value.key == "log_level"


def test_faust_worker_setup_uses_the_redacting_handler(root_logger: logging.Logger,
                                                       token: str) -> None:
    # mode.Worker._setup_logging calls this very function with our dict on start-up.
    from mode.utils.logging import setup_logging

    stream = io.StringIO()
    setup_logging(loglevel="INFO", logfile=None, loghandlers=[],
                  logging_config=faust_logging_config("info", stream=stream))
    (handler,) = root_logger.handlers
    assert isinstance(handler.formatter, JsonFormatter)
    assert any(isinstance(f, RedactionFilter) for f in handler.filters)
    logging.getLogger("faust.transport.drivers.aiokafka").info("[^--Producer]: sent %s", token)
    logging.getLogger("gatepass.worker").warning("still on")  # existing loggers stay enabled
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["logger"] for line in lines] == ["faust.transport.drivers.aiokafka",
                                                  "gatepass.worker"]
    assert token not in stream.getvalue()


def test_faust_logging_config_text_and_level() -> None:
    config = faust_logging_config("warning", json=False)
    assert config["root"]["level"] == "WARNING" and not config["disable_existing_loggers"]
    spec = dict(config["handlers"]["gatepass"])
    handler = spec.pop("()")(**spec)
    assert isinstance(handler.formatter, TextFormatter)


@pytest.mark.parametrize(("env", "expected"), [
    ({}, "json"), ({"GATEPASS_LOG_FORMAT": "json"}, "json"),
    ({"GATEPASS_LOG_FORMAT": "text"}, "text")])
def test_log_format_from_environment(env: dict[str, str], expected: str) -> None:
    assert Settings.load(env).log_format == expected


@pytest.mark.parametrize(("key", "value"), [("GATEPASS_LOG_FORMAT", "xml"),
                                            ("GATEPASS_LOG_LEVEL", "loud")])
def test_unknown_log_settings_name_their_key(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.load({key: value})
    assert info.value.key == key.removeprefix("GATEPASS_").lower()


# ---- trace ids -------------------------------------------------------------------------------
@pytest.mark.parametrize(("context", "expected"), [
    ({"traceparent": TRACEPARENT}, TRACE),
    ({"traceparent": f"  {TRACEPARENT} "}, TRACE),
    ({"traceparent": f"01-{TRACE}-00f067aa0ba902b7-01-future"}, TRACE),  # later versions extend
    ({"trace_id": TRACE}, TRACE),
    ({"trace_id": TRACE.upper()}, TRACE),
    ({"trace_id": "f" * 32, "traceparent": TRACEPARENT}, "f" * 32),  # trace_id first
    ({"trace_id": "not-a-trace", "traceparent": TRACEPARENT}, TRACE),  # bad one ignored
    ({}, None),
    ({"ticket": "PROC-4411"}, None),
], ids=["traceparent", "padded", "future-version", "trace_id", "upper-trace_id",
        "trace_id-wins", "bad-trace_id-falls-back", "empty", "none"])
def test_trace_id_is_taken_from_the_context(context: dict[str, str], expected: str | None) -> None:
    assert trace_id_from_context(context) == expected


@pytest.mark.parametrize("traceparent", [
    f"ff-{TRACE}-00f067aa0ba902b7-01",  # version ff is forbidden
    f"00-{'0' * 32}-00f067aa0ba902b7-01",  # all-zero trace id
    f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
    f"00-{TRACE.upper()}-00f067aa0ba902b7-01",  # upper-case hex
    f"00-{TRACE[:-1]}-00f067aa0ba902b7-01",  # short trace id
    f"00-{TRACE}-00f067aa0ba902b7-01-extra",  # version 00 has exactly four fields
    f"00-{TRACE}-00f067aa0ba902b7",  # no flags
    f"00_{TRACE}_00f067aa0ba902b7_01",
    "garbage", "",
    f"00-{TRACE}-00f067aa0ba902b7-01" + "-x" * 400,  # absurdly long
], ids=["version-ff", "zero-trace", "zero-parent", "upper", "short", "v00-extra", "no-flags",
        "underscores", "garbage", "empty", "too-long"])
def test_malformed_traceparent_is_ignored(traceparent: str) -> None:
    assert trace_id_from_context({"traceparent": traceparent}) is None
    assert trace_id_from_context({"trace_id": traceparent}) is None


# ---- decision log lines -----------------------------------------------------------------------
def _decided(keystore: KeyStore, *, agent: str, context: dict[str, str]
             ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(decoded DecisionRecord, decoded Verdict) for one intent through the real pipeline."""
    identity = IdentityState()
    identity.apply(PrincipalStatusChanged(principal_id="sarah", status=PrincipalStatus.ACTIVE,
                                          event_time=NOW - timedelta(days=1), source="hr"))
    identity.apply(AgentRegistered(agent_id="procure-bot", owner="sarah", purpose="procurement",
                                   event_time=NOW - timedelta(days=1), source="okta"))
    settings = Settings()
    pipeline = Pipeline(settings=settings, schemas=schemas(), policy=load_policy(None),
                        issuer=PassIssuer(keystore, issuer="gatepass", ttl=timedelta(minutes=5)),
                        identity=identity, ready=lambda: True, worker="w:1", clock=lambda: NOW)
    intent = Intent(intent_id=str(uuid.uuid4()), agent_id=agent,
                    action="purchase_order.create", resource="vendor:ACME",
                    audience="procurement-api", amount=Decimal("120.00"), currency="USD",
                    requested_at=NOW - timedelta(seconds=1), context=context)
    out = pipeline.on_intent(agent.encode(), schemas().intent.encode(intent_to_record(intent)),
                             partition=partition_for(agent, settings.partitions), offset=0,
                             memo={})
    assert out.remember is not None
    verdict = next(schemas().verdict.decode(r.value) for r in out.records
                   if r.topic == settings.topics.verdicts)
    return schemas().decision_record.decode(out.remember[1]), verdict


def test_decision_fields_of_an_allow(keystore: KeyStore, cap: Capture) -> None:
    record, verdict = _decided(keystore, agent="procure-bot",
                               context={"traceparent": TRACEPARENT, "ticket": "PROC-4411"})
    fields = decision_log_fields(record)
    assert fields == {
        "decision_id": record["decision_id"], "intent_id": verdict["intent_id"],
        "agent_id": "procure-bot", "action": "purchase_order.create",
        "resource": "vendor:ACME", "decision": "ALLOW", "reasons": ["allowed"],
        "policy_version": record["policy_version"],
        "credential_id": verdict["credential_id"], "trace_id": TRACE}
    cap.log.info("decision", extra=fields)  # no clash with LogRecord's own attributes
    (line,) = cap.objects()
    assert {k: line[k] for k in fields} == fields  # nothing in them is mistaken for a secret


def test_decision_fields_never_hold_token_material(keystore: KeyStore, cap: Capture) -> None:
    record, verdict = _decided(keystore, agent="procure-bot", context={})
    token = verdict["credential"]
    assert token
    # even if a record ever carried the token next to its reference, it is not picked up
    record["credential"] = {**record["credential"], "token": token}
    fields = decision_log_fields(record)
    dumped = json.dumps(fields)
    for secret in pass_forms(token):
        assert secret not in dumped
    assert record["credential"]["token_sha256"] not in dumped
    assert "trace_id" not in fields
    cap.log.info("decision", extra=fields)
    assert token not in cap.stream.getvalue()


def test_decision_fields_of_a_deny_have_no_credential(keystore: KeyStore) -> None:
    record, verdict = _decided(keystore, agent="unknown-bot", context={"trace_id": "bad"})
    fields = decision_log_fields(record)
    assert (fields["decision"], fields["reasons"]) == ("DENY", ["unregistered_agent"])
    assert "credential_id" not in fields and "trace_id" not in fields
    assert verdict["credential"] is None


def test_log_decision_writes_the_same_line_as_the_plain_call(keystore: KeyStore,
                                                            cap: Capture) -> None:
    record, _ = _decided(keystore, agent="procure-bot", context={"traceparent": TRACEPARENT})
    cap.log.info("decision", extra=decision_log_fields(record))
    log_decision(cap.log, record)
    plain, fast = cap.objects()
    assert plain.pop("timestamp") and fast.pop("timestamp")
    assert fast == plain


def test_log_decision_still_redacts_what_the_intent_brought(keystore: KeyStore,
                                                            cap: Capture) -> None:
    """The decision's own fields are not scanned again; the intent's always are, also when
    it was malformed (then nothing in it passed validation)."""
    record, verdict = _decided(keystore, agent="procure-bot", context={})
    token = verdict["credential"]
    intent = record["intent"]
    intent["resource"] = f"https://erp.example/po?access_token={token}"
    intent["agent_id"] = intent["action"] = f"Bearer {token}"
    intent["intent_id"] = token
    record["policy_version"] = f"v1 password={token}"
    log_decision(cap.log, record)
    (line,) = cap.objects()
    text = cap.stream.getvalue()
    for secret in pass_forms(token):
        assert secret not in text
    assert all("[REDACTED:" in line[k]
               for k in ("resource", "agent_id", "action", "intent_id", "policy_version"))


def test_log_decision_is_silent_above_info(keystore: KeyStore, cap: Capture) -> None:
    record, _ = _decided(keystore, agent="procure-bot", context={})
    cap.log.setLevel(logging.WARNING)
    log_decision(cap.log, record)
    assert cap.lines() == []


def test_module_examples_run() -> None:
    assert doctest.testmod(gatepass.logs, raise_on_error=False).failed == 0



@pytest.mark.parametrize(("text", "secret"), [
    ("b'GET /approvals/a/r?as=sarah&code=DnSjXY3udq1kWYKx5tKQ_Q HTTP/1.1'",
     "DnSjXY3udq1kWYKx5tKQ_Q"),
    ("GET /approvals/a/r?code=DnSjXY3udq1kWYKx5tKQ_Q&as=sarah", "DnSjXY3udq1kWYKx5tKQ_Q"),
])
def test_a_code_query_parameter_is_redacted_in_free_text(text: str, secret: str) -> None:
    from gatepass.logs import redact_text

    out = redact_text(text)
    assert secret not in out and "[REDACTED:code" in out


@pytest.mark.parametrize("text", ["exit code=3", "process ended, code: 137",
                                  "kafka error code=NOT_LEADER"])
def test_a_bare_code_in_free_text_stays_readable(text: str) -> None:
    from gatepass.logs import redact_text

    assert redact_text(text) == text
