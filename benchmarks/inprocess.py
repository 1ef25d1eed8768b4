"""What is measured without a broker: the pass verifier, and the worker's pipeline alone.

Verifier: `PassVerifier.verify` on valid, distinct passes (a fresh verifier with its own
replay cache per round, so no pass is refused as a replay), single-threaded: verifications
per second of one core, wall clock and CPU time.

Identity fold: what the worker's identity loader does per lifecycle record (decode, convert,
`IdentityState.apply`) on principals and agents like the recovery section's, without
Kafka: the ceiling of loading the identity view on one core.

Pipeline: `Pipeline.on_intent` (decode, look up, decide, sign, encode the verdict and the
audit record) on the benchmark's intent mix, as the worker calls it but without faust and
Kafka around it: the ceiling of one worker process if the stream machinery cost nothing.
It also yields a real ALLOW verdict, the template of the echo baseline's records.
"""

from __future__ import annotations

import gc
import json
import statistics
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from benchmarks.common import AUDIENCE
from benchmarks.population import IntentMix, build_population
from gatepass.codec.avro import schemas
from gatepass.codec.lifecycle_reader import decode_lifecycle
from gatepass.codec.records import intent_to_record, lifecycle_from_record, lifecycle_to_record
from gatepass.config import Settings
from gatepass.core import (
    AgentRecord,
    AgentRegistered,
    IdentityState,
    Intent,
    PrincipalRecord,
    PrincipalStatus,
    PrincipalStatusChanged,
)
from gatepass.credentials import KeyStore, PassIssuer, PassRequest, PassVerifier, ReplayCache
from gatepass.credentials._jose import b64url_decode
from gatepass.policy import load_policy
from gatepass.transport import partition_for
from gatepass.worker.pipeline import Pipeline


def verifier(home: Path, passes: int, rounds: int = 3) -> dict[str, Any]:
    now = datetime.now(UTC)
    store = KeyStore.open(home / "verifier-keys", now=now)
    issuer = PassIssuer(store, issuer="gatepass", ttl=timedelta(minutes=5))
    tokens = [issuer.issue(PassRequest(
        intent_id=str(uuid.uuid4()), agent_id="agent-7", audience=AUDIENCE,
        action="purchase_order.create", resource="vendor:ACME", amount=Decimal("120.00"),
        currency="USD", owner="alice", delegation_chain=(), policy_version="bench",
        issued_at=now)).token for _ in range(passes)]
    jwks = store.jwks(now=now)
    walls, cpus = [], []
    for _ in range(rounds):
        v = PassVerifier(jwks, audience=AUDIENCE, issuer="gatepass",
                         replay_cache=ReplayCache(max_entries=passes + 1))
        w0, c0 = time.perf_counter(), time.process_time()
        for token in tokens:
            v.verify(token, action="purchase_order.create", resource="vendor:ACME",
                     amount=Decimal("120.00"), currency="USD")
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    # The Ed25519 check alone, on the same tokens: the share the rest (parsing, claims,
    # scope hash, replay cache) adds to it.
    key = Ed25519PublicKey.from_public_bytes(b64url_decode(jwks["keys"][0]["x"]))
    signed = [(t.rsplit(".", 1)[0].encode(), b64url_decode(t.rsplit(".", 1)[1]))
              for t in tokens]
    c0 = time.process_time()
    for message, signature in signed:
        key.verify(signature, message)
    sig_cpu = time.process_time() - c0
    return {"passes_per_round": passes, "rounds": rounds, "token_bytes": len(tokens[0]),
            "per_s_wall": round(passes / wall), "per_s_cpu": round(passes / cpu),
            "us_per_verify_cpu": round(cpu / passes * 1e6, 1),
            "us_ed25519_alone_cpu": round(sig_cpu / passes * 1e6, 1),
            "note": "one thread; per_s_cpu = verifications per CPU-second of one core"}


def pipeline_alone(home: Path, intents: int = 4000) -> tuple[dict[str, Any], bytes]:
    """(figures, an ALLOW verdict's bytes as the worker writes them)."""
    settings = Settings(home=home / "pipeline", topic_prefix="bench-pipeline.")
    codec = schemas()
    store = KeyStore.open(settings.keystore_dir)
    identity = IdentityState()
    pop, events = build_population(2000, 0, 0)
    for event in events:
        identity.apply(event)
    pipeline = Pipeline(settings=settings, schemas=codec,
                        policy=load_policy(None),
                        issuer=PassIssuer(store, issuer=settings.issuer, ttl=settings.pass_ttl),
                        identity=identity, ready=lambda: True, worker="bench")
    mix = IntentMix(pop)
    encoded = [(i.agent_id.encode(), codec.intent.encode(intent_to_record(i)),
                partition_for(i.agent_id, settings.partitions))
               for i in (mix.make(n) for n in range(intents))]
    memo: dict[str, bytes] = {}
    template = b""
    by_kind: dict[str, list[float]] = {"ALLOW": [], "DENY": []}
    outcomes: Counter[str] = Counter()
    c0 = time.process_time()
    for n, (key, value, partition) in enumerate(encoded):
        t = time.perf_counter()
        out = pipeline.on_intent(key, value, partition=partition, offset=n, memo=memo)
        by_kind.setdefault(out.decision, []).append(time.perf_counter() - t)
        outcomes[f"{out.decision}/{out.reasons[0] if out.reasons else ''}"] += 1
        if not template and out.decision == "ALLOW":
            template = out.records[0].value
    cpu = time.process_time() - c0
    return ({"intents": intents, "us_per_intent_cpu": round(cpu / intents * 1e6, 1),
             "ceiling_per_s": round(intents / cpu),
             "us_per_allow": round(statistics.mean(by_kind["ALLOW"]) * 1e6, 1),
             "us_per_deny": round(statistics.mean(by_kind["DENY"]) * 1e6, 1),
             "verdict_bytes_allow": len(template), "outcomes": dict(outcomes),
             "note": "Pipeline.on_intent without faust/Kafka (partition checks aside, the "
                     "records are not sent)"},
            template)


def identity_fold_alone(records: int = 50_000, rounds: int = 3) -> dict[str, Any]:
    """The identity loader's work per record, in process: the loader's path (the direct
    lifecycle reader) and, side by side, the general one (fastavro to a dict, then
    `lifecycle_from_record`), alternating, each round into a fresh view with automatic
    collection paused as the loader pauses it; the median round of each."""
    codec = schemas().lifecycle
    at = datetime.now(UTC) - timedelta(hours=1)
    values = []
    for i in range(records // 2):
        values.append(codec.encode(lifecycle_to_record(PrincipalStatusChanged(
            principal_id=f"fold-p-{i:08d}", status=PrincipalStatus.ACTIVE, event_time=at,
            source="bulk-import"))))
        values.append(codec.encode(lifecycle_to_record(AgentRegistered(
            agent_id=f"fold-a-{i:08d}", owner=f"fold-p-{i:08d}", purpose="procurement",
            event_time=at, source="bulk-import"))))

    def direct(value: bytes) -> Any:
        return decode_lifecycle(codec, value)

    def general(value: bytes) -> Any:
        return lifecycle_from_record(codec.decode(value))

    cpu: dict[str, list[float]] = {"direct": [], "general": []}
    for _ in range(rounds):
        for name, read in (("direct", direct), ("general", general)):
            state = IdentityState()
            gc.collect()
            gc.disable()
            try:
                c0 = time.process_time()
                for value in values:
                    state.apply(read(value))
                cpu[name].append(time.process_time() - c0)
            finally:
                gc.enable()
            del state
    mine, base = statistics.median(cpu["direct"]), statistics.median(cpu["general"])
    return {"records": len(values), "us_per_record_cpu": round(mine / len(values) * 1e6, 1),
            "records_per_s_cpu": round(len(values) / mine),
            "seconds_for_1m_at_this_rate": round(mine / len(values) * 1_000_000, 1),
            "baseline_fastavro_us_per_record_cpu": round(base / len(values) * 1e6, 1),
            "ratio_to_baseline": round(mine / base, 2),
            "note": "decode_lifecycle + IdentityState.apply (the loader's path), one core, "
                    "no Kafka, automatic collection paused as in the loader; baseline: "
                    "fastavro decode + lifecycle_from_record + apply, rounds alternating"}


def policy_eval(calls: int = 20_000, agents: int = 2000) -> dict[str, Any]:
    """Cedar evaluation per decision (CedarPolicy.check: scope and approval in one Cedar
    call, as `decide` makes it), with the PolicySet parsed once and entity sets prepared once
    per agent, next to a plain-Python baseline doing the old allow-list's work (dict
    lookups, a ceiling and a threshold compare) on the same requests; and, as evidence of
    what bounds it, cedarpy's own call on a request built beforehand and the time cedarpy
    reports for building the request and for authorizing. Wall-clock per call, one core."""
    policy = load_policy(None)
    now = datetime.now(UTC)
    owner = PrincipalRecord(principal_id="alice", status=PrincipalStatus.ACTIVE, status_at=now)
    records = [AgentRecord(agent_id=f"pe-{i:05d}", owner="alice", department="finance",
                           purpose="procurement", registered_at=now, status_at=now)
               for i in range(agents)]
    actions = [("purchase_order.create", Decimal("120.00")), ("vendor.read", None),
               ("purchase_order.create", Decimal("25000.00")), ("cloud.provision", None)]
    intents = [Intent(intent_id=str(uuid.uuid4()), agent_id=records[n % agents].agent_id,
                      action=actions[n % 4][0], resource="vendor:ACME", audience=AUDIENCE,
                      requested_at=now, amount=actions[n % 4][1],
                      currency="USD" if actions[n % 4][1] is not None else None)
               for n in range(calls)]

    def timed(fn: Any) -> list[float]:
        out = []
        for n, intent in enumerate(intents):
            t = time.perf_counter()
            fn(records[n % agents], intent)
            out.append(time.perf_counter() - t)
        return sorted(out)

    def cedar(agent: AgentRecord, intent: Intent) -> None:
        policy.check(agent, owner, intent)

    allow_list: dict[str, dict[str, tuple[Decimal, str] | None]] = {
        "procurement": {"purchase_order.create": (Decimal("100000"), "USD"),
                        "vendor.read": None, "invoice.read": None}}
    thresholds = {("procurement", "purchase_order.create"): Decimal("10000")}

    def baseline(agent: AgentRecord, intent: Intent) -> None:
        actions = allow_list.get(agent.purpose or "", {})
        if intent.action not in actions:
            return
        rule = actions[intent.action]
        if rule is not None and (intent.amount is None or intent.currency != rule[1]
                                 or intent.amount > rule[0]):
            return
        above = thresholds.get((agent.purpose or "", intent.action))
        _ = above is not None and intent.amount is not None and intent.amount > above

    # First call per agent builds its entity set (cold); the timed run after is warm.
    first = []
    policy._entities.clear()
    for n in range(agents):
        t = time.perf_counter()
        cedar(records[n], intents[n])
        first.append(time.perf_counter() - t)
    warm = timed(cedar)
    base = timed(baseline)

    def q(xs: list[float], f: float) -> float:
        return round(xs[min(len(xs) - 1, int(len(xs) * f))] * 1e6, 1)

    first.sort()
    # The engine alone: the same requests, built beforehand, straight into cedarpy.
    from gatepass.core import policy as core_policy
    prepared = [({"principal": {"type": "Gatepass::Agent", "id": records[n % agents].agent_id},
                  "action": {"type": "Gatepass::Action", "id": intent.action},
                  "resource": {"type": "Gatepass::Resource", "id": intent.resource},
                  "context": core_policy._context_json(intent, 0)},
                 policy._entities_for(records[n % agents], owner))
                for n, intent in enumerate(intents[:5000])]
    engine, build_us, authz_us = [], [], []
    for request, entities in prepared:
        t = time.perf_counter()
        raw = core_policy._cedar.is_authorized_batch([request], policy.merged.policies,
                                                     entities, None, False)[0]
        engine.append(time.perf_counter() - t)
        metrics = json.loads(raw).get("metrics") or {}
        build_us.append(metrics.get("build_request_duration_micros", 0))
        authz_us.append(metrics.get("authz_duration_micros", 0))
    engine.sort()
    return {"calls": calls, "agents": agents, "policy_version": policy.version,
            "engine_us_median": q(engine, 0.5),
            "engine_reported_build_request_us_median": statistics.median(build_us),
            "engine_reported_authorize_us_median": statistics.median(authz_us),
            "us_median": q(warm, 0.5), "us_p99": q(warm, 0.99), "us_max": q(warm, 1.0),
            "us_median_first_call_per_agent": q(first, 0.5),
            "baseline_us_median": q(base, 0.5), "baseline_us_p99": q(base, 0.99),
            "ratio_median_vs_baseline": round(q(warm, 0.5) / max(q(base, 0.5), 0.1), 1),
            "note": "CedarPolicy.check per request (a mix: 2 of 4 allowed, 1 needs approval, "
                    "1 out of scope); entity sets cached per (agent, owner); engine: "
                    "cedarpy's call alone on prepared requests, and the times cedarpy "
                    "reports inside it; baseline: the old TOML allow-list's dict lookups "
                    "and compares"}
