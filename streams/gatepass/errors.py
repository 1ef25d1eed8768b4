"""The one error family of Gatepass: every failure a caller can see, each with a stable code.

The codes are part of the contract: they appear in verdict reasons, dead-letter records,
CLI output and HTTP error bodies, so scripts can match on them. Never reuse or rename one.

    GatepassError
    ├── ConfigError                 config_invalid
    ├── DecodeError                 decode_error
    │   ├── UnknownSchemaError      schema_unknown
    │   └── RecordInvalidError      record_invalid
    ├── CredentialError             credential_invalid
    │   ├── KeyStoreError           keystore_error
    │   ├── JwksError               jwks_invalid
    │   ├── TokenMalformedError     token_malformed
    │   ├── TokenTooLargeError      token_too_large
    │   ├── AlgorithmNotAllowedError alg_not_allowed
    │   ├── HeaderNotAllowedError   header_not_allowed
    │   ├── TypeInvalidError        typ_invalid
    │   ├── KeyUnknownError         kid_unknown
    │   ├── SignatureInvalidError   signature_invalid
    │   ├── ClaimMissingError       claim_missing
    │   ├── ClaimInvalidError       claim_invalid
    │   ├── TokenExpiredError       expired
    │   ├── TokenNotYetValidError   not_yet_valid
    │   ├── LifetimeExceededError   ttl_exceeded
    │   ├── AudienceMismatchError   audience_mismatch
    │   ├── ScopeMismatchError      scope_mismatch
    │   ├── TokenReplayedError      replayed
    │   ├── ReplayCacheFullError    replay_cache_full
    │   ├── ProofMissingError       dpop_missing
    │   ├── ProofInvalidError       dpop_invalid
    │   └── ProofReplayedError      dpop_replayed
    ├── PolicyError                 policy_invalid
    ├── NotificationError           notification_failed
    ├── ConnectorError              connector_error
    │   ├── UnauthenticatedError    unauthenticated
    │   ├── PayloadInvalidError     payload_invalid
    │   ├── PublishFailedError      publish_failed
    │   └── GraphUnavailableError   graph_unavailable
    ├── BrokerError                 broker_unavailable
    │   └── KafkaInstallError       kafka_install_failed
    └── AuthorizationError          authorization_error
        ├── AuthorizationDenied     denied
        └── AuthorizationTimeout    timeout
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AlgorithmNotAllowedError",
    "AudienceMismatchError",
    "AuthorizationDenied",
    "AuthorizationError",
    "AuthorizationTimeout",
    "BrokerError",
    "ClaimInvalidError",
    "ClaimMissingError",
    "ConfigError",
    "ConnectorError",
    "CredentialError",
    "DecodeError",
    "GatepassError",
    "GraphUnavailableError",
    "HeaderNotAllowedError",
    "JwksError",
    "KafkaInstallError",
    "KeyStoreError",
    "KeyUnknownError",
    "LifetimeExceededError",
    "NotificationError",
    "PayloadInvalidError",
    "PolicyError",
    "ProofInvalidError",
    "ProofMissingError",
    "ProofReplayedError",
    "PublishFailedError",
    "RecordInvalidError",
    "ReplayCacheFullError",
    "ScopeMismatchError",
    "SignatureInvalidError",
    "TokenExpiredError",
    "TokenMalformedError",
    "TokenNotYetValidError",
    "TokenReplayedError",
    "TokenTooLargeError",
    "TypeInvalidError",
    "UnauthenticatedError",
    "UnknownSchemaError",
]


class GatepassError(Exception):
    """Root of every error Gatepass raises on purpose."""

    code = "gatepass_error"


class ConfigError(GatepassError):
    """A configuration value is missing or invalid; `key` names it."""

    code = "config_invalid"

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


class PolicyError(GatepassError):
    """A policy bundle cannot be used; `file` and `line` say where (when known)."""

    code = "policy_invalid"

    def __init__(self, message: str, *, file: str | None = None,
                 line: int | None = None) -> None:
        where = file or ""
        if file and line:
            where = f"{file}:{line}"
        super().__init__(f"{where}: {message}" if where else message)
        self.file, self.line, self.message = file, line, message


class DecodeError(GatepassError):
    """A record's bytes could not be turned into a typed record."""

    code = "decode_error"


class UnknownSchemaError(DecodeError):
    """The record names a schema fingerprint this reader does not know."""

    code = "schema_unknown"


class RecordInvalidError(DecodeError):
    """The record does not fit its schema (wrong type, missing field, bad value)."""

    code = "record_invalid"


class CredentialError(GatepassError):
    """A pass could not be issued or does not verify."""

    code = "credential_invalid"


class KeyStoreError(CredentialError):
    """The signing key store is unreadable, unsafe or empty."""

    code = "keystore_error"


class JwksError(CredentialError):
    """The trusted key set (JWKS) could not be loaded or is not a valid key set."""

    code = "jwks_invalid"


class TokenMalformedError(CredentialError):
    """The token is not a well-formed compact JWS with JSON header and payload."""

    code = "token_malformed"


class TokenTooLargeError(CredentialError):
    """The token is longer than any pass we issue; rejected before decoding."""

    code = "token_too_large"


class AlgorithmNotAllowedError(CredentialError):
    """The header names an algorithm other than EdDSA."""

    code = "alg_not_allowed"


class HeaderNotAllowedError(CredentialError):
    """The header carries members we refuse (jku, x5u, jwk, x5c, unknown crit...)."""

    code = "header_not_allowed"


class TypeInvalidError(CredentialError):
    """The `typ` header is not the pass media type."""

    code = "typ_invalid"


class KeyUnknownError(CredentialError):
    """The `kid` is absent, malformed or not in the trusted key set."""

    code = "kid_unknown"


class SignatureInvalidError(CredentialError):
    """The signature does not verify under the named key."""

    code = "signature_invalid"


class ClaimMissingError(CredentialError):
    """A claim every pass must carry is absent."""

    code = "claim_missing"


class ClaimInvalidError(CredentialError):
    """A claim has the wrong type or an impossible value."""

    code = "claim_invalid"


class TokenExpiredError(CredentialError):
    """The pass's `exp` has passed (beyond the leeway)."""

    code = "expired"


class TokenNotYetValidError(CredentialError):
    """The pass's `nbf` (or `iat`) is in the future (beyond the leeway)."""

    code = "not_yet_valid"


class LifetimeExceededError(CredentialError):
    """The pass lives longer than the hard maximum lifetime."""

    code = "ttl_exceeded"


class AudienceMismatchError(CredentialError):
    """The pass was issued for another target system."""

    code = "audience_mismatch"


class ScopeMismatchError(CredentialError):
    """The pass does not cover the action, resource or amount being executed."""

    code = "scope_mismatch"


class TokenReplayedError(CredentialError):
    """The pass's `jti` was already presented (passes are single-use)."""

    code = "replayed"


class ReplayCacheFullError(CredentialError):
    """The replay cache is full of unexpired passes; refused rather than risk a replay."""

    code = "replay_cache_full"


class ProofMissingError(CredentialError):
    """The pass is bound to a key (cnf.jkt), or the verifier demands DPoP, and no proof came."""

    code = "dpop_missing"


class ProofInvalidError(CredentialError):
    """The DPoP proof is malformed, not made with the pass's key, stale, or for another call."""

    code = "dpop_invalid"


class ProofReplayedError(CredentialError):
    """The DPoP proof's `jti` was already presented (each proof is single-use)."""

    code = "dpop_replayed"


class NotificationError(GatepassError):
    """An approval notice could not be delivered to its channel (after the channel's retries)."""

    code = "notification_failed"


class ConnectorError(GatepassError):
    """An identity connector refused a request or could not complete it."""

    code = "connector_error"
    status = 500  # the HTTP status the receiver answers with


class UnauthenticatedError(ConnectorError):
    """The caller did not prove it is the configured identity provider."""

    code = "unauthenticated"
    status = 401


class PayloadInvalidError(ConnectorError):
    """The body is not what the provider documents; nothing was published."""

    code = "payload_invalid"
    status = 400


class PublishFailedError(ConnectorError):
    """Kafka did not acknowledge the lifecycle events in time; the provider should retry."""

    code = "publish_failed"
    status = 503


class GraphUnavailableError(ConnectorError):
    """Microsoft Graph could not be asked about the changed user; the provider should retry."""

    code = "graph_unavailable"
    status = 503


class BrokerError(GatepassError):
    """Kafka could not be reached or managed."""

    code = "broker_unavailable"


class KafkaInstallError(BrokerError):
    """The local Kafka distribution could not be fetched or started."""

    code = "kafka_install_failed"


class AuthorizationError(GatepassError):
    """The agent SDK could not obtain an ALLOW for an action."""

    code = "authorization_error"

    def __init__(self, message: str, *, verdict: Any = None) -> None:
        super().__init__(message)
        self.verdict = verdict


class AuthorizationDenied(AuthorizationError):
    """The action was denied; `verdict.reasons` says why."""

    code = "denied"


class AuthorizationTimeout(AuthorizationError):
    """No verdict arrived in time; treated as a denial, never an allow."""

    code = "timeout"
