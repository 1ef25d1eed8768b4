"""Connector settings, parsed once at the edge: a TOML file, then GATEPASS_CONNECTOR_* variables.

Every key has one dotted name (`okta.authorization`) used in the file, in error messages
(ConfigError.key) and, upper-cased with dots as underscores and a GATEPASS_CONNECTOR_ prefix,
as its environment variable (GATEPASS_CONNECTOR_OKTA_AUTHORIZATION). The environment wins
over the file. A secret can also be read from a file named by `<key>_file` (for mounted
secrets). Unknown keys are errors, so a typo fails at start-up instead of leaving a
connector half configured. Secrets are `Secret` values: they never show in a repr, a log
line or an exception.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from gatepass.config import Secret
from gatepass.core import PrincipalStatus
from gatepass.errors import ConfigError

__all__ = [
    "CONNECTOR_NAMES",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "ENV_PREFIX",
    "ConnectorSettings",
    "EntraSettings",
    "OktaSettings",
    "ScimSettings",
    "Secret",
]

ENV_PREFIX = "GATEPASS_CONNECTOR_"
CONNECTOR_NAMES = ("okta", "scim", "entra")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8070
DEFAULT_PUBLISH_TIMEOUT = timedelta(seconds=5)
DEFAULT_DEDUPE_SIZE = 10_000
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
# An event time further ahead than this is refused: it would win every later change.
DEFAULT_MAX_CLOCK_SKEW = timedelta(minutes=5)
DEFAULT_GRAPH_URL = "https://graph.microsoft.com/v1.0"
DEFAULT_LOGIN_URL = "https://login.microsoftonline.com"
DEFAULT_GRAPH_TIMEOUT = timedelta(seconds=2)
MIN_SECRET_LENGTH = 16
_INACTIVE = {"suspended": PrincipalStatus.SUSPENDED, "offboarded": PrincipalStatus.OFFBOARDED}
_GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
_URL_RE = re.compile(r"^https?://[^\s/?#]+(/[^\s?#]*)?$")


@dataclass(frozen=True, kw_only=True)
class OktaSettings:
    """Okta Event Hooks: the Authorization header value Okta sends, and the principal field."""

    authorization: Secret
    # Which field of the event's User target is the Gatepass principal id: `alternateId`
    # (the Okta login, usually the email) or `id` (Okta's user id, 00u...).
    principal_field: str = "alternateId"

    def __post_init__(self) -> None:
        _check_secret("okta.authorization", self.authorization)
        if self.principal_field not in {"alternateId", "id"}:
            raise ConfigError("okta.principal_field", "must be alternateId or id")


@dataclass(frozen=True, kw_only=True)
class ScimSettings:
    """SCIM 2.0 service provider: the bearer token clients present and the mapping."""

    token: Secret
    # Which User attribute is the Gatepass principal id: userName (default) or externalId.
    principal_attribute: str = "userName"
    # What active=false means; DELETE is always offboarded.
    inactive_status: PrincipalStatus = PrincipalStatus.SUSPENDED
    max_results: int = 200

    def __post_init__(self) -> None:
        _check_secret("scim.token", self.token)
        if self.principal_attribute not in {"userName", "externalId"}:
            raise ConfigError("scim.principal_attribute", "must be userName or externalId")
        if self.inactive_status is PrincipalStatus.ACTIVE:
            raise ConfigError("scim.inactive_status", "must be suspended or offboarded")
        if not 1 <= self.max_results <= 10_000:
            raise ConfigError("scim.max_results", "must be between 1 and 10000")


@dataclass(frozen=True, kw_only=True)
class EntraSettings:
    """Microsoft Graph change notifications for users, and how to read the changed user."""

    client_state: Secret
    tenant_id: str | None = None
    client_id: str | None = None
    client_secret: Secret | None = field(default=None)
    # Which Graph user property is the Gatepass principal id.
    principal_attribute: str = "userPrincipalName"
    inactive_status: PrincipalStatus = PrincipalStatus.SUSPENDED
    graph_url: str = DEFAULT_GRAPH_URL
    login_url: str = DEFAULT_LOGIN_URL
    graph_timeout: timedelta = DEFAULT_GRAPH_TIMEOUT

    def __post_init__(self) -> None:
        _check_secret("entra.client_state", self.client_state)
        if len(self.client_state) > 128:
            raise ConfigError("entra.client_state", "Graph accepts at most 128 characters")
        if self.tenant_id is not None and not _GUID_RE.fullmatch(self.tenant_id):
            raise ConfigError("entra.tenant_id", "must be the directory (tenant) id, a GUID")
        if self.client_id is not None and not _GUID_RE.fullmatch(self.client_id):
            raise ConfigError("entra.client_id", "must be the application (client) id, a GUID")
        if self.principal_attribute not in {"userPrincipalName", "mail", "id"}:
            raise ConfigError("entra.principal_attribute",
                              "must be userPrincipalName, mail or id")
        if self.inactive_status is PrincipalStatus.ACTIVE:
            raise ConfigError("entra.inactive_status", "must be suspended or offboarded")
        for key, url in (("entra.graph_url", self.graph_url),
                         ("entra.login_url", self.login_url)):
            if not _URL_RE.fullmatch(url):
                raise ConfigError(key, f"not an http(s) URL: {url!r}")
        if not timedelta(0) < self.graph_timeout <= timedelta(seconds=30):
            raise ConfigError("entra.graph_timeout_seconds", "must be > 0 and at most 30")

    @property
    def has_graph_credentials(self) -> bool:
        return bool(self.tenant_id and self.client_id and self.client_secret)


@dataclass(frozen=True, kw_only=True)
class ConnectorSettings:
    """Everything the connector receiver needs; build it with `ConnectorSettings.load()`."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    # The URL identity providers use to reach the receiver (SCIM meta.location); by
    # default taken from each request.
    public_url: str | None = None
    publish_timeout: timedelta = DEFAULT_PUBLISH_TIMEOUT
    dedupe_size: int = DEFAULT_DEDUPE_SIZE
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_clock_skew: timedelta = DEFAULT_MAX_CLOCK_SKEW
    okta: OktaSettings | None = None
    scim: ScimSettings | None = None
    entra: EntraSettings | None = None

    def __post_init__(self) -> None:
        if not self.host.strip():
            raise ConfigError("host", "must name an interface")
        if not 1 <= self.port <= 65535:
            raise ConfigError("port", "must be a TCP port")
        if self.public_url is not None and not _URL_RE.fullmatch(self.public_url):
            raise ConfigError("public_url", f"not an http(s) URL: {self.public_url!r}")
        if not timedelta(0) < self.publish_timeout <= timedelta(seconds=60):
            raise ConfigError("publish_timeout_seconds", "must be > 0 and at most 60")
        if not 1 <= self.dedupe_size <= 10_000_000:
            raise ConfigError("dedupe_size", "must be between 1 and 10000000")
        if not 1024 <= self.max_body_bytes <= 64 * 1024 * 1024:
            raise ConfigError("max_body_bytes", "must be between 1 KiB and 64 MiB")
        if not timedelta(0) <= self.max_clock_skew <= timedelta(hours=1):
            raise ConfigError("max_clock_skew_seconds", "must be between 0 and 1 hour")
        if not self.enabled:
            raise ConfigError("enabled", f"enable at least one of {', '.join(CONNECTOR_NAMES)}")

    @property
    def enabled(self) -> tuple[str, ...]:
        return tuple(n for n in CONNECTOR_NAMES if getattr(self, n) is not None)

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, file: Path | None = None,
             **overrides: Any) -> ConnectorSettings:
        """The file (if any), then the environment, then explicit overrides (None: unset)."""
        env = os.environ if env is None else env
        raw: dict[str, Any] = {}
        if file is not None:
            raw.update(_read_file(file))
        known = {_env_name(k): k for k in _KEYS}
        for name, value in env.items():
            if not name.startswith(ENV_PREFIX) or value == "":
                continue
            key = known.get(name)
            if key is None:
                raise ConfigError(name.removeprefix(ENV_PREFIX).lower(),
                                  f"unknown setting {name}")
            raw[key] = value
        raw.update({k: v for k, v in overrides.items() if v is not None})
        return _build(raw)


# Every key: its kind. Sections hold the connectors' own keys.
_KEYS: dict[str, str] = {
    "enabled": "list",
    "host": "str",
    "port": "int",
    "public_url": "str",
    "publish_timeout_seconds": "seconds",
    "dedupe_size": "int",
    "max_body_bytes": "int",
    "max_clock_skew_seconds": "seconds",
    "okta.authorization": "secret",
    "okta.authorization_file": "path",
    "okta.principal_field": "str",
    "scim.token": "secret",
    "scim.token_file": "path",
    "scim.principal_attribute": "str",
    "scim.inactive_status": "inactive",
    "scim.max_results": "int",
    "entra.client_state": "secret",
    "entra.client_state_file": "path",
    "entra.tenant_id": "str",
    "entra.client_id": "str",
    "entra.client_secret": "secret",
    "entra.client_secret_file": "path",
    "entra.principal_attribute": "str",
    "entra.inactive_status": "inactive",
    "entra.graph_url": "str",
    "entra.login_url": "str",
    "entra.graph_timeout_seconds": "seconds",
}
_FIELD = {"publish_timeout_seconds": "publish_timeout", "max_clock_skew_seconds":
          "max_clock_skew", "graph_timeout_seconds": "graph_timeout"}


def _env_name(key: str) -> str:
    return ENV_PREFIX + key.replace(".", "_").upper()


def _check_secret(key: str, secret: Secret) -> None:
    if not isinstance(secret, Secret):
        raise ConfigError(key, "must be a Secret")
    value = secret.reveal()
    if len(value) < MIN_SECRET_LENGTH:
        raise ConfigError(key, f"must be at least {MIN_SECRET_LENGTH} characters "
                               f"(set {_env_name(key)} or {key} in the file)")
    if value != value.strip() or not value.isprintable():
        raise ConfigError(key, "must not contain spaces at its ends or control characters")


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{path} is not valid TOML: {exc}") from exc
    flat: dict[str, Any] = {}
    for name, value in data.items():
        if name in CONNECTOR_NAMES and isinstance(value, dict):
            for sub, inner in value.items():
                flat[f"{name}.{sub}"] = inner
        else:
            flat[name] = value
    for key in flat:
        if key not in _KEYS:
            raise ConfigError(key, f"unknown setting in {path}")
    return flat


def _convert(key: str, value: Any) -> Any:
    kind = _KEYS[key]
    try:
        if kind == "list":
            items = value.split(",") if isinstance(value, str) else list(value)
            names = [str(i).strip().lower() for i in items if str(i).strip()]
            unknown = sorted(set(names) - set(CONNECTOR_NAMES))
            if unknown:
                raise ConfigError(key, f"unknown connector(s) {', '.join(unknown)}; "
                                       f"known: {', '.join(CONNECTOR_NAMES)}")
            return names
        if kind == "int":
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if kind == "seconds":
            seconds = float(value)
            if not math.isfinite(seconds):
                raise ValueError(value)
            return timedelta(seconds=seconds)
        if kind == "secret":
            if not isinstance(value, str):
                raise ConfigError(key, "must be a string")
            return Secret(value)
        if kind == "path":
            return Path(str(value))
        if kind == "inactive":
            status = _INACTIVE.get(str(value).strip().lower())
            if status is None:
                raise ConfigError(key, "must be suspended or offboarded")
            return status
    except (TypeError, ValueError, OverflowError) as exc:
        # Never echo the value: it may be a misplaced secret.
        raise ConfigError(key, f"not a valid {kind}") from exc
    if not isinstance(value, str):
        raise ConfigError(key, "must be a string")
    return value


def _secret_from_file(key: str, path: Path) -> Secret:
    try:
        return Secret(path.read_text(encoding="utf-8").strip())
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{key}_file", f"cannot read the secret file {path}") from exc


def _build(raw: Mapping[str, Any]) -> ConnectorSettings:
    values = {k: _convert(k, v) for k, v in raw.items()}
    for key in [k for k in values if k.endswith("_file")]:
        secret_key = key.removesuffix("_file")
        if secret_key in values:
            raise ConfigError(secret_key, f"set either {secret_key} or {key}, not both")
        values[secret_key] = _secret_from_file(secret_key, values.pop(key))
    enabled = values.pop("enabled", [])
    sections: dict[str, dict[str, Any]] = {n: {} for n in CONNECTOR_NAMES}
    top: dict[str, Any] = {}
    for key, value in values.items():
        section, _, name = key.rpartition(".")
        target = sections[section] if section else top
        target[_FIELD.get(name, name)] = value
    for name in CONNECTOR_NAMES:
        if name not in enabled:
            continue
        secret_key = {"okta": "authorization", "scim": "token",
                      "entra": "client_state"}[name]
        if secret_key not in sections[name]:
            raise ConfigError(f"{name}.{secret_key}",
                              f"required when {name} is enabled "
                              f"(set {_env_name(f'{name}.{secret_key}')})")
    okta = OktaSettings(**sections["okta"]) if "okta" in enabled else None
    scim = ScimSettings(**sections["scim"]) if "scim" in enabled else None
    entra = EntraSettings(**sections["entra"]) if "entra" in enabled else None
    return ConnectorSettings(**top, okta=okta, scim=scim, entra=entra)
