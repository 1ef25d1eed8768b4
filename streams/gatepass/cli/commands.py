"""One function per `gatepass` command: parse nothing here, do the work, print the result."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from gatepass.cli.main import dumps
from gatepass.config import Settings
from gatepass.core import (
    AgentRegistered,
    AgentStatus,
    AgentStatusChanged,
    PrincipalStatus,
    PrincipalStatusChanged,
)
from gatepass.errors import ConfigError, CredentialError

__all__ = [
    "cmd_agent_status",
    "cmd_demo",
    "cmd_export",
    "cmd_intent",
    "cmd_jwks",
    "cmd_kafka",
    "cmd_keys",
    "cmd_principal",
    "cmd_register_agent",
    "cmd_tail",
    "cmd_verify",
    "cmd_worker",
]


def cmd_worker(ns: argparse.Namespace, settings: Settings) -> int:
    from gatepass.worker.run import run_worker

    run_worker(settings)
    return 0


def cmd_kafka(ns: argparse.Namespace, settings: Settings) -> int:
    from gatepass.kafka_local import LocalKafka

    broker = LocalKafka(home=settings.home, port=ns.port, controller_port=ns.controller_port)
    if ns.action == "up":
        status = broker.up()
        print(f"kafka {status.version} running on {status.bootstrap} (pid {status.pid}); "
              f"logs: {status.log_file}")
    elif ns.action == "down":
        stopped = broker.down()
        print("kafka stopped" if stopped else "kafka was not running")
    else:
        status = broker.status()
        state = f"running (pid {status.pid})" if status.running else "not running"
        print(f"kafka {status.version} on {status.bootstrap}: {state}; logs: {status.log_file}")
        return 0 if status.running else 1
    return 0


def cmd_demo(ns: argparse.Namespace, settings: Settings) -> int:
    from gatepass.demo.scenario import run_demo

    return run_demo(settings, keep_running=ns.keep_running,
                    approve_by_hand=ns.approve_by_hand)


def _publish(settings: Settings, event: Any) -> None:
    from gatepass.sdk import LifecyclePublisher
    from gatepass.transport import ensure_topics

    ensure_topics(settings)
    LifecyclePublisher(bootstrap=settings.bootstrap,
                       topic_prefix=settings.topic_prefix).publish(event)


def cmd_register_agent(ns: argparse.Namespace, settings: Settings) -> int:
    event = AgentRegistered(agent_id=ns.agent, owner=ns.owner, purpose=ns.purpose,
                            department=ns.department, contact=ns.contact,
                            created_by=ns.created_by, public_key=ns.public_key,
                            event_time=datetime.now(UTC), source="cli")
    _publish(settings, event)
    keyed = " (signed intents, key-bound passes)" if ns.public_key else ""
    print(f"registered {ns.agent}: owner={ns.owner} purpose={ns.purpose}{keyed}")
    return 0


def cmd_principal(ns: argparse.Namespace, settings: Settings) -> int:
    _publish(settings, PrincipalStatusChanged(principal_id=ns.principal,
                                              status=PrincipalStatus(ns.status),
                                              event_time=datetime.now(UTC), source=ns.source))
    print(f"principal {ns.principal}: {ns.status}")
    return 0


def cmd_agent_status(ns: argparse.Namespace, settings: Settings) -> int:
    _publish(settings, AgentStatusChanged(agent_id=ns.agent, status=AgentStatus(ns.status),
                                          event_time=datetime.now(UTC), source=ns.source))
    print(f"agent {ns.agent}: {ns.status}")
    return 0


def verdict_json(v: Any) -> dict[str, Any]:
    return {"intent_id": v.intent_id, "agent_id": v.agent_id, "decision": v.decision,
            "reasons": list(v.reasons), "detail": v.detail, "credential": v.credential,
            "credential_id": v.credential_id, "expires_at": v.expires_at,
            "policy_version": v.policy_version, "decided_at": v.decided_at,
            "latency_ms": None if v.latency_ms is None else round(v.latency_ms, 3),
            "approval": None if v.approval is None else dict(v.approval)}


def _agent_key(path: Any) -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError("agent_key", f"{path}: not a readable unencrypted PEM private key "
                                       f"({type(exc).__name__})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError("agent_key", f"{path}: not an Ed25519 key")
    return key


def cmd_intent(ns: argparse.Namespace, settings: Settings) -> int:
    from gatepass.sdk import GatepassClient

    key = _agent_key(ns.agent_key) if ns.agent_key else None
    with GatepassClient.from_settings(settings, timeout=ns.timeout, agent_key=key) as client:
        verdict = client.authorize(ns.action, ns.resource, amount=ns.amount,
                                   currency=ns.currency, audience=ns.audience,
                                   agent_id=ns.agent, delegation_chain=ns.delegated_by)
        if verdict.pending and ns.wait_approval:
            if not ns.json:
                print(f"PENDING pending_approval  intent {verdict.intent_id}\n  {verdict.detail}"
                      f"\n  waiting up to {ns.wait_approval:.0f}s for the owner's decision",
                      flush=True)
            verdict = client.wait_final(verdict, timeout=ns.wait_approval)
    if ns.json:
        print(dumps(verdict_json(verdict)))
    else:
        print(f"{verdict.decision} {', '.join(verdict.reasons)}  intent {verdict.intent_id}")
        if verdict.detail:
            print(f"  {verdict.detail}")
        if verdict.credential:
            print(f"  pass {verdict.credential_id} expires "
                  f"{verdict.expires_at:%Y-%m-%d %H:%M:%S}Z")
            print(f"  {verdict.credential}")
        if verdict.approver:
            print(f"  approved by {verdict.approver}")
    return 0 if verdict.allowed else 1


def cmd_jwks(ns: argparse.Namespace, settings: Settings) -> int:
    from gatepass.credentials import KeyStore

    # Reading public keys must never create a signing key as a side effect.
    store = KeyStore.open(settings.keystore_dir, create=False)
    print(dumps(store.jwks(now=datetime.now(UTC))))
    return 0


ROTATION_LEEWAY = timedelta(seconds=60)


def cmd_keys(ns: argparse.Namespace, settings: Settings) -> int:
    from gatepass.config import MAX_PASS_TTL
    from gatepass.credentials import KeyStore

    store = KeyStore.open(settings.keystore_dir)
    now = datetime.now(UTC)
    # Grace covers the longest pass any worker may issue plus the verifiers' leeway.
    kid = store.rotate(now=now, grace=MAX_PASS_TTL + ROTATION_LEEWAY)
    store.write_jwks(settings.jwks_file, now=now)
    print(f"new signing key {kid}; retired keys stay published until their passes expire. "
          "Restart workers to sign with it.")
    return 0


def cmd_verify(ns: argparse.Namespace, settings: Settings) -> int:
    from gatepass.credentials import KeyStore, PassVerifier, load_jwks

    if ns.jwks:
        jwks = load_jwks(ns.jwks)
    else:
        jwks = KeyStore.open(settings.keystore_dir, create=False).jwks(now=datetime.now(UTC))
    if ns.dpop and not (ns.method and ns.url):
        raise ConfigError("dpop", "--dpop needs --method and --url (the request it was made for)")
    verifier = PassVerifier(jwks, audience=ns.audience, issuer=settings.issuer)
    try:
        verified = verifier.verify(ns.token, action=ns.action, resource=ns.resource,
                                   amount=ns.amount, currency=ns.currency, dpop=ns.dpop,
                                   method=ns.method, url=ns.url)
    except CredentialError as exc:
        print(f"invalid: {exc.code}: {exc}")
        return 1
    bound = f", bound to key {verified.key_thumbprint}" if verified.key_thumbprint else ""
    print(f"valid: pass {verified.credential_id} for {verified.agent_id} "
          f"(owner {verified.owner}, intent {verified.intent_id}{bound}) "
          f"expires {verified.expires_at:%Y-%m-%d %H:%M:%S}Z")
    return 0


def cmd_tail(ns: argparse.Namespace, settings: Settings) -> int:
    from gatepass.cli.tail import tail

    count = tail(settings, ns.topic, follow=ns.follow, limit=ns.max, as_json=ns.json,
                 out=sys.stdout)
    if not count and not ns.json:
        print(f"(no records in {ns.topic})", file=sys.stderr)
    return 0


def cmd_export(ns: argparse.Namespace, settings: Settings) -> int:
    from gatepass.export.reader import export_ocsf, export_topic

    count = export_ocsf(settings, ns.source, follow=ns.follow, limit=ns.max,
                        to_topic=ns.to_topic, out=sys.stdout)
    if ns.to_topic:
        print(f"wrote {count} event{'' if count == 1 else 's'} to {export_topic(settings)}",
              file=sys.stderr)
    return 0
