"""What a connector can refuse or fail at, each with a stable code used in HTTP error bodies.

The classes live with every other error in `gatepass.errors` (under GatepassError); this
module names the connector part of that family:

    ConnectorError                  connector_error
    ├── UnauthenticatedError        unauthenticated
    ├── PayloadInvalidError         payload_invalid
    ├── PublishFailedError          publish_failed
    └── GraphUnavailableError       graph_unavailable

Each becomes an HTTP answer (its `status`, its `code` in the body). Configuration errors are
`gatepass.errors.ConfigError` (code config_invalid), naming the key.
"""

from __future__ import annotations

from gatepass.errors import (
    ConnectorError,
    GraphUnavailableError,
    PayloadInvalidError,
    PublishFailedError,
    UnauthenticatedError,
)

__all__ = [
    "ConnectorError",
    "GraphUnavailableError",
    "PayloadInvalidError",
    "PublishFailedError",
    "UnauthenticatedError",
]
