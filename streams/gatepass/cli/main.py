"""`gatepass` commands: run the worker and the local broker, feed identity, ask, verify, tail.

Exit codes: 0 success (for `intent`: ALLOW; for `verify`: a valid pass), 1 a DENY or an
invalid pass, 2 a usage, configuration or broker error (message on stderr with its code).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from gatepass.config import Settings
from gatepass.errors import GatepassError

__all__ = ["main"]

Handler = Callable[[argparse.Namespace, Settings], int]


def _decimal(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation as exc:
        raise argparse.ArgumentTypeError(f"not a decimal amount: {text!r}") from exc
    if not value.is_finite():
        raise argparse.ArgumentTypeError(f"not a finite amount: {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from exc
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _public_key(text: str) -> str:
    from gatepass.credentials._jose import ed25519_public_key

    try:
        ed25519_public_key(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"not an Ed25519 public key as an OKP JWK x value (base64url, 32 bytes): {exc}"
        ) from exc
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gatepass", description=(
        "Runtime authorization for AI agents: every action checked when it happens."))
    p.add_argument("--bootstrap", help="Kafka bootstrap servers (env GATEPASS_BOOTSTRAP)")
    p.add_argument("--topic-prefix", help="topic name prefix (env GATEPASS_TOPIC_PREFIX)")
    p.add_argument("--partitions", type=int, help="partitions per topic (GATEPASS_PARTITIONS)")
    p.add_argument("--home", type=Path, help="state folder: keys, broker (GATEPASS_HOME)")
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    w = sub.add_parser("worker", help="run the stream processor")
    w.add_argument("--web-port", type=int, help="HTTP port for JWKS and health")
    w.add_argument("--app-id", help="consumer group / application id")
    w.add_argument("--policy-dir", type=Path,
                   help="Cedar policy bundle to start with (env GATEPASS_POLICY_DIR)")

    k = sub.add_parser("kafka", help="the local single-node Kafka broker")
    k.add_argument("action", choices=["up", "down", "status"])
    k.add_argument("--port", type=int, default=9092)
    k.add_argument("--controller-port", type=int, default=9093)

    d = sub.add_parser("demo", help="play the procure-bot story end to end")
    d.add_argument("--keep-running", action="store_true",
                   help="leave the broker and worker running afterwards")
    d.add_argument("--approve-by-hand", type=float, default=0.0, metavar="SECONDS",
                   help="wait this long for you to approve the $50,000 order on the page "
                        "before the demo clicks Approve itself (default 0)")

    r = sub.add_parser("register-agent", help="register an agent and its owner")
    r.add_argument("agent")
    r.add_argument("--owner", required=True)
    r.add_argument("--purpose", required=True)
    r.add_argument("--department")
    r.add_argument("--contact")
    r.add_argument("--created-by")
    r.add_argument("--public-key", type=_public_key, metavar="X",
                   help="the agent's Ed25519 public key (OKP JWK x, base64url): its intents "
                        "must then be signed and its passes are bound to it; write "
                        "--public-key=X (a key may start with '-')")

    pr = sub.add_parser("principal", help="set a principal's status (e.g. offboard someone)")
    pr.add_argument("principal")
    pr.add_argument("--status", required=True, choices=["active", "suspended", "offboarded"])
    pr.add_argument("--source", default="cli")

    a = sub.add_parser("agent-status", help="set an agent's status")
    a.add_argument("agent")
    a.add_argument("--status", required=True, choices=["active", "suspended", "decommissioned"])
    a.add_argument("--source", default="cli")

    i = sub.add_parser("intent", help="send one intent and print its verdict")
    i.add_argument("--agent", required=True)
    i.add_argument("--action", required=True)
    i.add_argument("--resource", required=True)
    i.add_argument("--amount", type=_decimal)
    i.add_argument("--currency")
    i.add_argument("--audience", required=True)
    i.add_argument("--delegated-by", action="append", default=[], metavar="AGENT",
                   help="an agent in the delegation chain (repeat, originator first)")
    i.add_argument("--timeout", type=float, default=10.0)
    i.add_argument("--wait-approval", type=float, default=0.0, metavar="SECONDS",
                   help="if the owner must approve (PENDING), wait this long for the final "
                        "verdict (default: print PENDING and exit 1)")
    i.add_argument("--json", action="store_true", help="one JSON object on one line")
    i.add_argument("--agent-key", type=Path, metavar="PEM",
                   help="the agent's Ed25519 private key (PKCS#8 PEM): signs the intent")

    sub.add_parser("jwks", help="print the public keys (JWKS) of the local key store")
    kr = sub.add_parser("keys", help="manage the signing keys")
    kr.add_argument("action", choices=["rotate"])

    v = sub.add_parser("verify", help="verify a pass as a target system would")
    v.add_argument("--audience", required=True)
    v.add_argument("--action", required=True)
    v.add_argument("--resource", required=True)
    v.add_argument("--amount", type=_decimal)
    v.add_argument("--currency")
    v.add_argument("--jwks", help="JWKS file or URL (default: the local key store)")
    v.add_argument("--dpop", metavar="PROOF",
                   help="the DPoP proof presented with a key-bound pass (needs --method, --url)")
    v.add_argument("--method", help="the HTTP method the pass is presented with (for --dpop)")
    v.add_argument("--url", help="the URL the pass is presented at (for --dpop)")
    v.add_argument("token")

    t = sub.add_parser("tail", help="print records of a topic readably")
    t.add_argument("topic", choices=["verdicts", "denials", "orphans", "audit", "dead-letter"])
    t.add_argument("--follow", "-f", action="store_true", help="keep waiting for new records")
    t.add_argument("--max", type=_count, default=0, help="stop after N records (0: all)")
    t.add_argument("--json", action="store_true", help="one JSON object per line")

    x = sub.add_parser("export", help="print denials and orphan alerts for a SIEM (JSON Lines)")
    x.add_argument("format", choices=["ocsf"], help="OCSF events in CloudEvents envelopes")
    x.add_argument("--from", dest="source", choices=["denials", "orphans", "both"],
                   default="both", help="which records to export (default: both)")
    x.add_argument("--follow", "-f", action="store_true", help="keep waiting for new records")
    x.add_argument("--max", type=_count, default=0, help="stop after N events (0: all)")
    x.add_argument("--to-topic", action="store_true",
                   help="also write the events to <prefix>ocsf-events (JSON, created if missing)")

    # Command groups that live in modules of their own register here; each sets
    # `handler` on its parsers (see _handler).
    for register in _EXTENSIONS:
        register(sub)
    return p


# Each: (subparsers) -> None, adding parsers with set_defaults(handler=...).
_EXTENSIONS: list[Callable[[Any], None]] = []
_EXTENSIONS.append(__import__("gatepass.cli.imports", fromlist=["register"]).register)
from gatepass.cli.connectors import register as register_connectors  # noqa: E402

_EXTENSIONS.append(register_connectors)
from gatepass.cli.approvals import register as register_approvals  # noqa: E402

_EXTENSIONS.append(register_approvals)
_EXTENSIONS.append(__import__("gatepass.cli.policy", fromlist=["register"]).register)


def _settings(ns: argparse.Namespace) -> Settings:
    return Settings.load(bootstrap=ns.bootstrap, topic_prefix=ns.topic_prefix,
                         partitions=ns.partitions, home=ns.home,
                         web_port=getattr(ns, "web_port", None),
                         app_id=getattr(ns, "app_id", None),
                         policy_dir=getattr(ns, "policy_dir", None))


def _handler(ns: argparse.Namespace) -> Handler:
    own: Handler | None = getattr(ns, "handler", None)
    if own is not None:
        return own
    from gatepass.cli import commands

    found: Handler = getattr(commands, "cmd_" + ns.command.replace("-", "_"))
    return found


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if ns.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler: Handler = _handler(ns)
    try:
        return handler(ns, _settings(ns))
    except GatepassError as exc:
        print(f"gatepass: error [{exc.code}]: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def to_json(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return value


def dumps(value: Any) -> str:
    return json.dumps(to_json(value), separators=(",", ":"), sort_keys=False)
