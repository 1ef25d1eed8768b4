"""`gatepass connectors`: the HTTP receiver for identity providers (Okta, SCIM, Entra).

    gatepass connectors [--host 127.0.0.1] [--port 8070] [--config FILE]

Settings come from FILE (TOML) and GATEPASS_CONNECTOR_* variables (see docs/connectors.md);
the flags win. Runs until SIGINT/SIGTERM; exit 2 on a configuration or broker error.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gatepass.config import Settings

__all__ = ["cmd_connectors", "register"]


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a port: {text!r}") from exc
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError("must be between 1 and 65535")
    return value


def register(sub: Any) -> None:
    c = sub.add_parser("connectors", help="receive identity lifecycle from Okta, SCIM, Entra")
    c.add_argument("--host", help="interface to listen on (GATEPASS_CONNECTOR_HOST, "
                                  "default 127.0.0.1)")
    c.add_argument("--port", type=_port, help="TCP port (GATEPASS_CONNECTOR_PORT, "
                                              "default 8070)")
    c.add_argument("--config", type=Path, metavar="FILE",
                   help="TOML file with the connector settings")
    c.set_defaults(handler=cmd_connectors)


def cmd_connectors(ns: argparse.Namespace, settings: Settings) -> int:
    from gatepass.connectors import ConnectorSettings, run_receiver
    from gatepass.logs import configure_logging

    connectors = ConnectorSettings.load(file=ns.config, host=ns.host, port=ns.port)
    configure_logging(settings.log_level, json=settings.log_format == "json")
    return run_receiver(settings, connectors)
