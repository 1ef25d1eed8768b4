"""Structured logs: one JSON object per line, with every record redacted before it is written.

`configure_logging` puts one handler on the root logger. Its filter (`RedactionFilter`) runs
on every record first: it formats the message with its arguments, then masks passes (compact
JWS), PEM private keys, JWK private members, Authorization/Bearer values and values of
secret-named fields, in the message, the `extra=` fields, the exception and the stack text.
A masked value becomes a marker an operator can correlate without the secret:

    [REDACTED:jws sha256=3f1c0d9a4b2e]     (first 12 hex of SHA-256 of the value)
    [REDACTED:approval_secret hmac=9e0b7c21d4f8]

Structured secrets (JWS, PEM, JWK) are hashed with plain SHA-256, so `sha256sum` of a pass
finds its lines. Anything else (an approval code, a password, a non-JWS bearer value) may be
short enough to guess from a plain hash, so it gets an HMAC under a key drawn at process start:
equal values correlate within one process, and the marker reveals nothing outside it.

>>> import io, json, logging
>>> out = io.StringIO()
>>> handler = make_handler(stream=out)
>>> log = logging.getLogger("gatepass.doctest")
>>> log.addHandler(handler); log.propagate = False
>>> log.warning("presented %s", "Authorization: Bearer aaaaaaaaaa.bbbbbbbbbb.cccccccccccccccccccc")
>>> json.loads(out.getvalue())["message"]
'presented Authorization: Bearer [REDACTED:bearer sha256=d5b604085898]'
>>> log.removeHandler(handler)
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import itertools
import json as _json
import logging
import math
import re
import secrets
import sys
import time
from collections.abc import Callable, Mapping
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import IO, Any

from gatepass.errors import ConfigError

__all__ = [
    "JsonFormatter",
    "RedactionFilter",
    "TextFormatter",
    "configure_logging",
    "decision_log_fields",
    "faust_logging_config",
    "is_secret_name",
    "log_decision",
    "make_handler",
    "redact_record",
    "redact_text",
    "redact_value",
    "trace_id_from_context",
]

_LEVELS = ("debug", "info", "warning", "error", "critical")
# LogRecord's own attributes: everything else on a record came in through `extra=`.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}
_DONE = "_gatepass_redacted"
_HMAC_KEY = secrets.token_bytes(32)
_MAX_DEPTH = 6

# ---- what a secret looks like ------------------------------------------------------------
_B64 = r"[A-Za-z0-9_-]"
_PEM = re.compile(r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY-----(?P<body>.*?)"
                  r"(?:-----END[A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.S)
# A JWT with a short or empty signature is still a bearer of claims; the general form covers
# any compact JWS (a pass's signature alone is 86 characters), plus JWE's two extra segments.
_JWS = (rf"(?:eyJ{_B64}{{5,}}\.eyJ{_B64}{{5,}}\.{_B64}*"
        rf"|{_B64}{{10,}}\.{_B64}{{10,}}\.{_B64}{{20,}})(?:\.{_B64}+){{0,2}}")
_JWS_RE = re.compile(rf"(?<![A-Za-z0-9_.-]){_JWS}(?![A-Za-z0-9_-])")
_JWS_FULL = re.compile(_JWS)
_JWK_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "k"})
_JWK_PRIVATE = re.compile(r"""(?P<q>["'])(?:d|p|q|dp|dq|qi|k)(?P=q)\s*:\s*(?P<vq>["'])"""
                          r"(?P<value>[A-Za-z0-9_+/=-]{16,})(?P=vq)")
_AUTH_HEADER = re.compile(
    r"(?i)(?<![A-Za-z0-9_-])(?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?"
    r"(?:(?P<scheme>bearer|basic|digest|dpop|token|negotiate|gnap)\s+)?"
    r"(?P<value>[^\s\"',;\[][^\s\"',;]*)")
_BEARER = re.compile(r"(?i)(?<![A-Za-z0-9_-])(?P<scheme>bearer|dpop)\s+"
                     r"(?P<value>[A-Za-z0-9._~+/-]{16,}=*)")
# name: value / name=value / "name": "value" in free text (reprs, JSON, query strings)
_KEY_VALUE = re.compile(
    r"(?<![A-Za-z0-9_-])(?P<kq>[\"']?)(?P<name>[A-Za-z_][A-Za-z0-9_-]{0,63})(?P=kq)"
    r"\s*[:=]\s*(?P<value>\"(?:[^\"\\\n]|\\.)*\"|'(?:[^'\\\n]|\\.)*'"  # quoted, or
    r"|[^\s,;&?{}()\[\]\"'][^\s,;&?}\])\"']*)")  # up to a separator; never a bracket
# Cheap first look at the lower-cased text (case-insensitive alternations are 4x slower):
# text with none of these and no dot cannot match any rule above.
_HINTS = re.compile(r"-----begin|authorization|bearer|dpop|secret|passw|passphrase|pwd"
                    r"|token|credential|key|code|cookie|otp|[\"'](?:d|p|q|dp|dq|qi|k)[\"']")
_KV_HINTS = re.compile(r"secret|passw|passphrase|pwd|token|credential|key|code|cookie|otp")

_SECRET_WORDS = frozenset({
    "secret", "secrets", "token", "tokens", "credential", "credentials", "password",
    "passwords", "passwd", "passphrase", "pwd", "authorization", "cookie", "apikey",
    "privatekey", "otp", "code", "codes"})
_SECRET_PAIRS = frozenset({"apikey", "privatekey", "accesskey", "signingkey", "secretkey"})
# Identifiers, hashes and metadata *about* a secret are not the secret (credential_id,
# token_sha256, secret_ttl...).
_SAFE_LAST = frozenset({"id", "ids", "sha256", "hash", "hashes", "kid", "type", "types", "ttl",
                        "count", "len", "length", "expires", "expiry", "at", "url", "uri",
                        "path", "file", "name", "names", "fields", "masked"})
_SAFE_CODE_PREFIX = frozenset({"error", "reason", "status", "exit", "http", "response",
                               "return", "result", "country", "currency", "language", "lang",
                               "event", "postal", "zip", "area", "op"})
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")

# W3C Trace Context: version-traceid-parentid-flags, lowercase hex.
_TRACEPARENT = re.compile(r"(?P<version>[0-9a-f]{2})-(?P<trace>[0-9a-f]{32})-"
                          r"(?P<parent>[0-9a-f]{16})-(?P<flags>[0-9a-f]{2})(?P<rest>-.*)?")
_TRACE_ID = re.compile(r"[0-9a-f]{32}")


@functools.lru_cache(maxsize=4096)  # field names repeat: decide each once
def is_secret_name(name: str, *, bare_code: bool = True) -> bool:
    """Whether a field called `name` holds a secret (`approval_secret`, `apiKey`, `code`...).

    `bare_code=False` treats a lone "code" as harmless, for free text where "code: 3" is
    far more often an error code than an approval code.
    """
    words = [w for w in re.split(r"[^a-z0-9]+", _CAMEL.sub("_", name).lower()) if w]
    if not words or words[-1] in _SAFE_LAST:
        return False
    pairs = {a + b for a, b in itertools.pairwise(words)}
    if pairs & _SECRET_PAIRS:
        return True
    hits = [i for i, w in enumerate(words) if w in _SECRET_WORDS]
    if not hits:
        return False
    if all(words[i] in {"code", "codes"} for i in hits):
        if len(words) == 1:
            return bare_code
        return not any(i > 0 and words[i - 1] in _SAFE_CODE_PREFIX for i in hits)
    return True


def _marker(kind: str, secret: str) -> str:
    data = secret.encode("utf-8", "surrogatepass")
    if kind in {"jws", "pem", "jwk"} or _JWS_FULL.fullmatch(secret):
        return f"[REDACTED:{kind} sha256={hashlib.sha256(data).hexdigest()[:12]}]"
    digest = hmac.new(_HMAC_KEY, data, hashlib.sha256).hexdigest()[:12]
    return f"[REDACTED:{kind} hmac={digest}]"


_SCHEME_VALUE = re.compile(r"(?i)(?P<scheme>bearer|dpop|basic|token)\s+(?P<value>\S+)")


def _mask_named(kind: str, text: str) -> str:
    """The whole value of a secret-named field, masked; an auth scheme in front stays readable."""
    m = _SCHEME_VALUE.fullmatch(text.strip())
    if m is None:
        return _marker(kind, text)
    return f"{m['scheme']} {_marker(kind, m['value'])}"


def _kind(name: str) -> str:
    return re.sub(r"[^a-z0-9_]", "_", name.lower())[:40] or "secret"


def _replace_pem(m: re.Match[str]) -> str:
    # Hash the base64 body alone, so a repr'd PEM ("\\n") and a real one give the same marker.
    return _marker("pem", re.sub(r"\\[nr]|\s", "", m["body"]))


def _replace_value(m: re.Match[str], kind: str) -> str:
    start, end = m.span("value")
    whole = m[0]
    offset = m.start()
    return whole[:start - offset] + _marker(kind, m["value"]) + whole[end - offset:]


def _replace_key_value(m: re.Match[str]) -> str:
    name = m["name"]
    # A lone "code" in free text is usually an error code; as a URL query parameter
    # (`?code=` / `&code=`, e.g. an approval link in a request line) it is a secret.
    in_query = m.start() > 0 and m.string[m.start() - 1] in "?&"
    # Authorization is handled (with its scheme) by _AUTH_HEADER.
    if name.lower().endswith("authorization") or not is_secret_name(name,
                                                                    bare_code=in_query):
        return m[0]
    value = m["value"]
    quote = value[0] if value[:1] in {'"', "'"} else ""
    inner = value[1:-1] if quote else value
    if not inner or inner.startswith("[REDACTED:"):
        return m[0]
    head = m[0][:m.start("value") - m.start()]
    return f"{head}{quote}{_marker(_kind(name), inner)}{quote}"


def redact_text(text: str) -> str:
    """`text` with every secret it recognisably contains replaced by a marker."""
    dotted, lowered = "." in text, text.lower()
    if not dotted and not _HINTS.search(lowered):
        return text
    if "-----BEGIN" in text:
        text = _PEM.sub(_replace_pem, text)
    if "'" in text or '"' in text:
        text = _JWK_PRIVATE.sub(lambda m: _replace_value(m, "jwk"), text)
    if "authorization" in lowered:
        text = _AUTH_HEADER.sub(lambda m: _replace_value(m, (m["scheme"] or "authorization")
                                                         .lower()), text)
    if "bearer" in lowered or "dpop" in lowered:
        text = _BEARER.sub(lambda m: _replace_value(m, m["scheme"].lower()), text)
    if _KV_HINTS.search(lowered):
        text = _KEY_VALUE.sub(_replace_key_value, text)
    if dotted:
        text = _JWS_RE.sub(lambda m: _marker("jws", m[0]), text)
    return text


def redact_value(name: str, value: Any, _depth: int = 0) -> Any:
    """A JSON-ready copy of the field `name`: secret-named values masked whole, text scanned.

    Mappings and sequences are walked (a JWK's private members are masked by name); other
    objects are turned into text first, so nothing reaches the log unscanned.
    """
    secret = bool(name) and is_secret_name(name)
    if isinstance(value, str):  # the common case first: this runs for every field
        return _mask_named(_kind(name), value) if secret else redact_text(value)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        if secret:
            return _marker(_kind(name), str(value))
        return value if math.isfinite(value) else str(value)  # NaN is not JSON
    if secret:
        return _mask_named(_kind(name), _json.dumps(_plain(value), default=str,
                                                    sort_keys=True))
    if _depth >= _MAX_DEPTH:
        return redact_text(str(value))
    if isinstance(value, Mapping):
        jwk = "kty" in value
        return {redact_text(str(k)): (_marker("jwk", str(v)) if jwk and k in
                                     _JWK_PRIVATE_MEMBERS
                                     else redact_value(str(k), v, _depth + 1))
                for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_value("", v, _depth + 1) for v in value]
    return redact_text(_text(value))


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    return value


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Enum):
        return _text(value.value)
    return str(value)


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:  # a bad format string must not turn into a raw, unredacted stderr dump
        return f"{record.msg!s} [log arguments could not be formatted: {record.args!r}]"


def redact_record(record: logging.LogRecord) -> logging.LogRecord:
    """Mask secrets in a record in place: message (formatted with its args), extras, exception.

    Idempotent: a record already redacted (seen by another handler) is left as it is. The
    exception is rendered to text here and `exc_info` dropped, so no later formatter can
    render the original exception again.
    """
    if getattr(record, _DONE, False):
        return record
    record.msg, record.args = redact_text(_message(record)), None
    for key in [k for k in vars(record) if k not in _RECORD_ATTRS and not k.startswith("_")]:
        value = getattr(record, key)
        try:
            setattr(record, key, redact_value(key, value))
        except Exception:  # a filter that raises would raise into the code that logged
            setattr(record, key, f"[unprintable {type(value).__name__}]")
    if record.exc_info:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.exc_info = None
    if record.exc_text:
        record.exc_text = redact_text(record.exc_text)
    if record.stack_info:
        record.stack_info = redact_text(record.stack_info)
    setattr(record, _DONE, True)
    return record


class RedactionFilter(logging.Filter):
    """Handler filter that redacts every record before any formatter sees it; drops none."""

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record)
        return True


def _timestamp(record: logging.LogRecord) -> str:
    """RFC 3339 UTC with milliseconds, e.g. 2026-03-02T09:30:15.123Z."""
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items()
            if k not in _RECORD_ATTRS and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per record on one line: timestamp, level, logger, message, extras, exc.

    Redacts the record itself if no `RedactionFilter` ran before. Non-ASCII is escaped, so
    no character (U+2028 included) can split a line for any reader.
    """

    _CORE = ("timestamp", "level", "logger", "message", "exc", "stack")

    def format(self, record: logging.LogRecord) -> str:
        redact_record(record)
        entry: dict[str, Any] = {"timestamp": _timestamp(record), "level": record.levelname,
                                 "logger": record.name, "message": record.getMessage()}
        for key, value in _extras(record).items():
            entry[key + "_" if key in self._CORE else key] = value
        if record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return _json.dumps(entry, ensure_ascii=True, separators=(",", ":"), default=str)


class TextFormatter(logging.Formatter):
    """For humans (GATEPASS_LOG_FORMAT=text): `<timestamp> LEVEL logger: message k=v ...`."""

    def format(self, record: logging.LogRecord) -> str:
        redact_record(record)
        line = f"{_timestamp(record)} {record.levelname} {record.name}: {record.getMessage()}"
        for key, value in _extras(record).items():
            shown = value if isinstance(value, str) and value and " " not in value \
                else _json.dumps(value, ensure_ascii=False, default=str)
            line += f" {key}={shown}"
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + record.stack_info
        return line


def make_handler(*, json: bool = True, stream: IO[str] | None = None) -> logging.Handler:
    """A stream handler (default: the current sys.stderr) with the redaction filter on it."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if json else TextFormatter())
    handler.addFilter(RedactionFilter())
    return handler


def _level(level: str) -> str:
    name = str(level).strip().lower()
    if name == "warn":
        name = "warning"
    if name not in _LEVELS:
        raise ConfigError("log_level", f"must be one of {', '.join(_LEVELS)}, not {level!r}")
    return name.upper()


def configure_logging(level: str, *, json: bool = True,
                      stream: IO[str] | None = None) -> logging.Handler:
    """Make the root logger write through one redacting handler (JSON lines by default).

    Replaces the root logger's handlers (not those of other loggers), routes `warnings` to
    logging, and returns the handler. A bad level raises ConfigError naming `log_level`.
    """
    handler = make_handler(json=json, stream=stream)
    _skip_unused_record_fields()
    root = logging.getLogger()
    root.setLevel(_level(level))
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    logging.captureWarnings(True)
    return handler


def _skip_unused_record_fields() -> None:
    """Neither formatter prints the caller's file and line, thread or process, which
    `logging` otherwise looks up for every record (a stack walk: about a fifth of the cost
    of a decision log line). The logging documentation's own "Optimization" advice."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def faust_logging_config(level: str, *, json: bool = True,
                         stream: IO[str] | None = None) -> dict[str, Any]:
    """A `logging.config.dictConfig` dict for faust/mode's Worker(logging_config=...).

    mode's worker clears the root handlers and applies this at start-up instead of its own
    colour handler, so faust's and aiokafka's records go through the same redacting handler.
    A fresh dict each call: dictConfig and mode both mutate what they are given.
    """
    factory: Callable[..., logging.Handler] = make_handler
    return {
        "version": 1,
        "disable_existing_loggers": False,  # module-level loggers (ours, aiokafka's) stay on
        "handlers": {"gatepass": {"()": factory, "json": json, "stream": stream}},
        "root": {"level": _level(level), "handlers": ["gatepass"]},
    }


# ---- decision log lines -------------------------------------------------------------------
def trace_id_from_context(context: Mapping[str, str] | None) -> str | None:
    """The W3C trace id (32 lowercase hex, not all zero) an intent's context carries, if any.

    `trace_id` is taken as is when it has that form (upper-case hex is lower-cased);
    otherwise the trace id of a valid `traceparent` (version ff, all-zero ids, a version-00
    header with trailing fields are invalid). Anything malformed is ignored, not logged.
    """
    if not context:
        return None
    raw = context.get("trace_id")
    if isinstance(raw, str):
        candidate = raw.strip().lower()
        if _TRACE_ID.fullmatch(candidate) and candidate != "0" * 32:
            return candidate
    header = context.get("traceparent")
    if not isinstance(header, str) or len(header) > 512:
        return None
    m = _TRACEPARENT.fullmatch(header.strip())
    if (m is None or m["version"] == "ff" or (m["version"] == "00" and m["rest"])
            or m["trace"] == "0" * 32 or m["parent"] == "0" * 16):
        return None
    return m["trace"]


def decision_log_fields(record: Mapping[str, Any]) -> dict[str, Any]:
    """The `extra=` fields of the decision log line for one decoded DecisionRecord.

    decision_id, intent_id, agent_id, action, resource, decision, reasons, policy_version,
    credential_id (on ALLOW; the pass itself is never in a DecisionRecord nor here) and
    trace_id (when the intent's context carries a valid one). No name clashes with
    LogRecord's attributes, so `log.info("decision", extra=...)` is always accepted.
    """
    intent: Mapping[str, Any] = record.get("intent") or {}
    fields: dict[str, Any] = {
        "decision_id": record.get("decision_id"),
        "intent_id": intent.get("intent_id"),
        "agent_id": intent.get("agent_id"),
        "action": intent.get("action"),
        "resource": intent.get("resource"),
        "decision": record.get("decision"),
        "reasons": list(record.get("reasons") or ()),
        "policy_version": record.get("policy_version"),
    }
    credential = record.get("credential")
    if credential:
        fields["credential_id"] = credential.get("credential_id")
    trace_id = trace_id_from_context(intent.get("context"))
    if trace_id is not None:
        fields["trace_id"] = trace_id
    return fields


# Fields of a decision line whose values come from the agent's intent (or the pushed policy):
# scanned like any logged value. The others are the decision's own (ids it generated, the
# verdict, reason codes, a trace id `trace_id_from_context` accepted only as 32 hex).
_DECISION_FIELDS_SCANNED = ("intent_id", "agent_id", "action", "resource", "policy_version")


def log_decision(logger: logging.Logger, record: Mapping[str, Any]) -> None:
    """`logger.info("decision", extra=decision_log_fields(record))`, cheaper: every decision
    logs one, so the fields are redacted here, only those that can hold outside text, and
    the record marked done so the handler's filter does not scan all of them again."""
    if not logger.isEnabledFor(logging.INFO):
        return
    fields: dict[str, Any] = decision_log_fields(record)
    for key in _DECISION_FIELDS_SCANNED:
        fields[key] = redact_value(key, fields[key])
    fields[_DONE] = True
    logger.info("decision", extra=fields)
