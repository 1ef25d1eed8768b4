"""Settings for every Gatepass process, parsed once at the edge (environment, then flags).

A bad value fails at start-up with the key's name (ConfigError.key), never later.
Environment keys are the field names upper-cased with a GATEPASS_ prefix, e.g.
GATEPASS_BOOTSTRAP, GATEPASS_TOPIC_PREFIX, GATEPASS_PASS_TTL_SECONDS.
"""

from __future__ import annotations

import hmac
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from gatepass.errors import ConfigError

__all__ = [
    "DEFAULT_BOOTSTRAP",
    "DEFAULT_PASS_TTL",
    "MAX_PASS_TTL",
    "Secret",
    "Settings",
    "TopicNames",
]

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_TOPIC_PREFIX = "gatepass."
DEFAULT_PARTITIONS = 4
DEFAULT_PASS_TTL = timedelta(minutes=5)
MAX_PASS_TTL = timedelta(hours=1)  # hard limit: no configuration may exceed it
DEFAULT_INTENT_MAX_AGE = timedelta(minutes=2)
DEFAULT_INTENT_MAX_SKEW = timedelta(seconds=30)
DEFAULT_WEB_PORT = 6066
DEFAULT_READY_WAIT = timedelta(seconds=15)
DEFAULT_IDENTITY_MAX_AGE = timedelta(seconds=60)
DEFAULT_STALL_EXIT = timedelta(seconds=120)
DEFAULT_APPROVAL_TIMEOUT = timedelta(minutes=5)
# A pushed policy decides intents appended this long after the push: time for every worker
# to read it first (a worker that has not is not guessing: it waits, then denies).
DEFAULT_POLICY_ROLLOUT_DELAY = timedelta(seconds=5)
MAX_APPROVAL_TIMEOUT = timedelta(hours=1)
_PREFIX_RE = re.compile(r"^[A-Za-z0-9._-]{0,100}$")
_BOOLS = {"1": True, "true": True, "yes": True, "on": True,
          "0": False, "false": False, "no": False, "off": False}


@dataclass(frozen=True, slots=True)
class TopicNames:
    """Every topic Gatepass reads or writes, derived from one prefix."""

    prefix: str

    @property
    def intents(self) -> str:
        return f"{self.prefix}intents"

    @property
    def identity(self) -> str:
        return f"{self.prefix}identity"

    @property
    def verdicts(self) -> str:
        return f"{self.prefix}verdicts"

    @property
    def denials(self) -> str:
        return f"{self.prefix}denials"

    @property
    def orphans(self) -> str:
        return f"{self.prefix}orphan-alerts"

    @property
    def audit(self) -> str:
        return f"{self.prefix}audit"

    @property
    def dead_letter(self) -> str:
        return f"{self.prefix}dead-letter"

    @property
    def keys(self) -> str:
        return f"{self.prefix}keys"

    @property
    def orphan_checks(self) -> str:
        return f"{self.prefix}orphan-checks"

    @property
    def approvals(self) -> str:
        return f"{self.prefix}approvals"

    @property
    def approval_decisions(self) -> str:
        return f"{self.prefix}approval-decisions"

    @property
    def approval_alerts(self) -> str:
        return f"{self.prefix}approval-alerts"

    @property
    def policies(self) -> str:
        return f"{self.prefix}policies"

    @property
    def budget_requests(self) -> str:
        return f"{self.prefix}budget-requests"

    @property
    def budget_replies(self) -> str:
        return f"{self.prefix}budget-replies"


class Secret:
    """A configured secret: compared in constant time, never shown by repr, str or pickle.

    `matches` compares a candidate in constant time; `reveal` is for the one place that
    must use it (an HMAC key, a header to send). Whoever reads it from configuration checks
    that it is not empty, naming the key.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("a Secret holds a string")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def matches(self, candidate: str | None) -> bool:
        if candidate is None:
            return False
        return hmac.compare_digest(candidate.encode("utf-8", "surrogateescape"),
                                   self._value.encode("utf-8", "surrogateescape"))

    def __len__(self) -> int:
        return len(self._value)

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and self.matches(other._value)

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> Any:
        raise TypeError("a Secret cannot be pickled")


@dataclass(frozen=True, kw_only=True)
class Settings:
    """One frozen view of the configuration; build it with `Settings.load()`."""

    bootstrap: str = DEFAULT_BOOTSTRAP
    topic_prefix: str = DEFAULT_TOPIC_PREFIX
    partitions: int = DEFAULT_PARTITIONS
    replication: int = 1
    home: Path = Path(".gatepass")
    app_id: str = "gatepass-worker"
    web_host: str = "127.0.0.1"
    web_port: int = DEFAULT_WEB_PORT
    issuer: str = "gatepass"
    pass_ttl: timedelta = DEFAULT_PASS_TTL
    intent_max_age: timedelta = DEFAULT_INTENT_MAX_AGE
    intent_max_skew: timedelta = DEFAULT_INTENT_MAX_SKEW
    # The Cedar policy bundle a worker starts with (default: the repository's policies/);
    # a bundle pushed to the policy topic replaces it at its activation time.
    policy_dir: Path | None = None
    policy_rollout_delay: timedelta = DEFAULT_POLICY_ROLLOUT_DELAY
    # How long a starting worker holds intents while its identity view loads, before it
    # answers them state_not_ready (a worker joining the group takes partitions at once).
    ready_wait: timedelta = DEFAULT_READY_WAIT
    # A worker decides only on an identity view known to hold every lifecycle record written
    # this long ago; an older view (identity consumer stalled, broker unreachable) is DENY
    # state_not_ready. A bulk import that keeps the view behind longer denies meanwhile.
    identity_max_age: timedelta = DEFAULT_IDENTITY_MAX_AGE
    # A worker whose intents have waited this long with none decided, while the broker
    # answers, writes its stacks and exits (code 70) for its supervisor to start it again:
    # a stuck worker answers nothing, a restarted one answers every intent still waiting
    # (late ones stale_intent). 0 keeps a stuck worker running (and /healthz 503).
    stall_exit: timedelta = DEFAULT_STALL_EXIT
    log_level: str = "info"
    log_format: str = "json"  # json lines (default) or text for humans
    # Human approval: how long an owner has; where the approval page is reached from outside
    # (default: this worker's web_url); the signed webhook that tells approvers (optional).
    approval_timeout: timedelta = DEFAULT_APPROVAL_TIMEOUT
    approval_url: str | None = None
    approval_webhook_url: str | None = None
    approval_webhook_secret: Secret | None = None
    # Every agent must sign its intents, also those registered without a public key (which
    # are then denied intent_signature_invalid). Agents with a key must sign regardless.
    require_signed_intents: bool = False
    extra: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.bootstrap.strip():
            raise ConfigError("bootstrap", "must name at least one host:port")
        if not _PREFIX_RE.fullmatch(self.topic_prefix):
            raise ConfigError("topic_prefix", "only letters, digits, '.', '_' and '-' allowed")
        if not 1 <= self.partitions <= 1024:
            raise ConfigError("partitions", "must be between 1 and 1024")
        if not 1 <= self.replication <= 32:
            raise ConfigError("replication", "must be between 1 and 32")
        if not 1 <= self.web_port <= 65535:
            raise ConfigError("web_port", "must be a TCP port")
        if not timedelta(0) < self.pass_ttl <= MAX_PASS_TTL:
            raise ConfigError("pass_ttl", f"must be > 0 and at most {MAX_PASS_TTL}")
        if self.intent_max_age <= timedelta(0):
            raise ConfigError("intent_max_age", "must be positive")
        if self.intent_max_skew < timedelta(0):
            raise ConfigError("intent_max_skew", "must not be negative")
        if self.log_level.lower() not in {"debug", "info", "warning", "error", "critical"}:
            raise ConfigError("log_level", "must be debug, info, warning, error or critical")
        if self.log_format not in {"json", "text"}:
            raise ConfigError("log_format", "must be json or text")
        if not timedelta(0) <= self.ready_wait <= timedelta(minutes=10):
            raise ConfigError("ready_wait", "must be between 0 and 10 minutes")
        if not timedelta(seconds=1) <= self.identity_max_age <= timedelta(hours=1):
            raise ConfigError("identity_max_age", "must be between 1 second and 1 hour")
        if self.stall_exit != timedelta(0) and not (
                timedelta(seconds=10) <= self.stall_exit <= timedelta(hours=1)):
            raise ConfigError("stall_exit", "must be 0 (never) or between 10 seconds and 1 hour")
        if not timedelta(seconds=1) <= self.approval_timeout <= MAX_APPROVAL_TIMEOUT:
            raise ConfigError("approval_timeout", "must be between 1 second and 1 hour")
        if not timedelta(seconds=1) <= self.policy_rollout_delay <= timedelta(hours=1):
            raise ConfigError("policy_rollout_delay", "must be between 1 second and 1 hour")
        for key in ("approval_url", "approval_webhook_url"):
            url = getattr(self, key)
            if url is not None and not re.match(r"^https?://[^\s/]+", url):
                raise ConfigError(key, "must be an http(s) URL")
        if not isinstance(self.require_signed_intents, bool):
            raise ConfigError("require_signed_intents", "must be true or false")
        if (self.approval_webhook_url is None) != (self.approval_webhook_secret is None):
            raise ConfigError("approval_webhook_secret",
                              "the approval webhook needs both a URL and a secret")

    @property
    def topics(self) -> TopicNames:
        return TopicNames(self.topic_prefix)

    @property
    def keystore_dir(self) -> Path:
        return self.home / "keys"

    @property
    def jwks_file(self) -> Path:
        return self.home / "jwks.json"

    @property
    def dedupe_horizon(self) -> timedelta:
        """How long a decided intent id is remembered.

        Past it a redelivered intent is necessarily stale (older than intent_max_age plus
        skew) and any pass issued for it has expired, so forgetting it cannot turn a DENY
        into an ALLOW.
        """
        return (self.pass_ttl + self.intent_max_age + self.intent_max_skew
                + self.approval_timeout + timedelta(minutes=5))

    @property
    def approval_base_url(self) -> str:
        return (self.approval_url or self.web_url).rstrip("/")

    @property
    def approval_inbox(self) -> Path:
        """The CLI channel: one 0600 JSON Lines file per approver."""
        return self.home / "approvals" / "inbox"

    @property
    def web_url(self) -> str:
        return f"http://{self.web_host}:{self.web_port}"

    def to_env(self) -> dict[str, str]:
        """The environment that makes `Settings.load()` in a child process equal this one."""
        env: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "extra" or value is None:
                continue
            (key, kind), = _env_keys(f.name)
            if isinstance(value, Secret):
                env[key] = value.reveal()
            else:
                env[key] = str(value.total_seconds()) if kind == "seconds" else str(value)
        return env

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Environment first, then explicit overrides (from CLI flags); None means unset."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "extra":
                continue
            for env_key, convert in _env_keys(f.name):
                raw = env.get(env_key)
                if raw is not None and raw != "":
                    values[f.name] = _convert(f.name, raw, convert)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _env_keys(name: str) -> list[tuple[str, str]]:
    if name in {"pass_ttl", "intent_max_age", "intent_max_skew", "ready_wait",
                "approval_timeout", "identity_max_age", "policy_rollout_delay", "stall_exit"}:
        return [(f"GATEPASS_{name.upper()}_SECONDS", "seconds")]
    kinds = {"partitions": "int", "replication": "int", "web_port": "int",
             "home": "path", "policy_dir": "path", "approval_webhook_secret": "secret",
             "require_signed_intents": "bool"}
    return [(f"GATEPASS_{name.upper()}", kinds.get(name, "str"))]


def _convert(key: str, raw: str, kind: str) -> Any:
    try:
        if kind == "int":
            return int(raw)
        if kind == "seconds":
            seconds = float(raw)
            if not math.isfinite(seconds):
                raise ValueError(raw)
            return timedelta(seconds=seconds)
        if kind == "path":
            return Path(raw)
        if kind == "secret":
            return Secret(raw)  # never empty: an empty variable counts as unset
        if kind == "bool":
            word = raw.strip().lower()
            if word not in _BOOLS:
                raise ValueError(raw)
            return _BOOLS[word]
    except (ValueError, OverflowError) as exc:
        raise ConfigError(key, f"not a valid {kind}: {raw!r}") from exc
    return raw
