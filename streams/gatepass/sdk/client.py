"""The agent SDK: ask Gatepass before acting, get a verdict (and on ALLOW, a pass) back.

    with GatepassClient(bootstrap="127.0.0.1:9092", agent_id="procure-bot") as gp:
        verdict = gp.authorize("purchase_order.create", "vendor:ACME",
                               amount=Decimal("120.00"), audience="procurement-api")
        if verdict.allowed:
            call_procurement_api(pass_=verdict.credential)

An agent registered with a public key (`gatepass register-agent ... --public-key
$(agent_public_key(key))`) passes its private key: every intent is then signed, and the
passes it gets are bound to the key, so a target wants a proof with each one:

    with GatepassClient(agent_id="procure-bot", audience="procurement-api",
                        agent_key=key) as gp:
        verdict = gp.authorize("purchase_order.create", "vendor:ACME", amount="120.00")
        url = "https://procurement.example/purchase-orders"
        headers = {"Authorization": f"DPoP {verdict.credential}",
                   "DPoP": gp.proof(verdict, "POST", url)}

Request/reply over Kafka correlated by intent id. No answer in time is a DENY with reason
`sdk_timeout`, never an allow. Partitions are computed explicitly with Kafka's murmur2 so
an agent's intents and verdicts share a partition whatever client produced them.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gatepass.codec.avro import schemas
from gatepass.codec.records import intent_to_record, lifecycle_to_record
from gatepass.config import DEFAULT_BOOTSTRAP, DEFAULT_TOPIC_PREFIX, Settings, TopicNames
from gatepass.core import Intent, LifecycleEvent, lifecycle_key, sign_intent
from gatepass.credentials import dpop_proof
from gatepass.credentials._jose import b64url_encode
from gatepass.errors import AuthorizationDenied, AuthorizationTimeout, BrokerError
from gatepass.transport import partition_for, watermarks

__all__ = [
    "SDK_PUBLISH_FAILED",
    "SDK_TIMEOUT",
    "GatepassClient",
    "LifecyclePublisher",
    "Verdict",
    "agent_public_key",
    "guard",
]

SDK_TIMEOUT = "sdk_timeout"
SDK_PUBLISH_FAILED = "sdk_publish_failed"
# librdkafka logs connection churn at info level to stderr, into the agent's own output;
# warnings and errors still show.
_QUIET = {"log_level": 4}
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class Verdict:
    """Gatepass's answer to one intent. `credential` is a bearer pass: handle it like one."""

    intent_id: str
    agent_id: str
    decision: str
    reasons: tuple[str, ...]
    detail: str = ""
    credential: str | None = field(default=None, repr=False)
    credential_id: str | None = None
    expires_at: datetime | None = None
    policy_version: str = ""
    # The @ids of the Cedar policies that decided (empty for a DENY no permit applied to).
    policy_ids: tuple[str, ...] = ()
    decided_at: datetime | None = None
    facts: Mapping[str, Any] = field(default_factory=dict, repr=False)
    latency_ms: float | None = None
    # Set when the intent needed its owner: the request while PENDING, who decided after.
    approval: Mapping[str, Any] | None = field(default=None, repr=False)

    @property
    def allowed(self) -> bool:
        return self.decision == "ALLOW" and self.credential is not None

    @property
    def pending(self) -> bool:
        """The owner is asked; `GatepassClient.wait_final` gives the final verdict."""
        return self.decision == "PENDING"

    @property
    def approver(self) -> str | None:
        return None if self.approval is None else self.approval.get("approver")

    @classmethod
    def from_record(cls, rec: Mapping[str, Any], latency_ms: float | None = None) -> Verdict:
        return cls(intent_id=rec["intent_id"], agent_id=rec["agent_id"],
                   decision=rec["decision"], reasons=tuple(rec["reasons"]),
                   detail=rec.get("detail", ""), credential=rec.get("credential"),
                   credential_id=rec.get("credential_id"), expires_at=rec.get("expires_at"),
                   policy_version=rec["policy_version"],
                   policy_ids=tuple(rec.get("policy_ids") or ()), decided_at=rec["decided_at"],
                   facts=rec.get("facts") or {}, latency_ms=latency_ms,
                   approval=rec.get("approval"))


def agent_public_key(key: Ed25519PrivateKey) -> str:
    """The public key to register for an agent holding `key` (RFC 8037 OKP `x`, base64url).

    >>> from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    >>> len(agent_public_key(Ed25519PrivateKey.generate()))
    43
    """
    if not isinstance(key, Ed25519PrivateKey):
        raise TypeError("an agent key is an Ed25519PrivateKey")
    return b64url_encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


def _amount(value: Decimal | int | str | None) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, float):
        raise TypeError("money is never a float: pass a Decimal or a decimal string")
    return Decimal(value)


class GatepassClient:
    """Thread-safe; one per process is enough. Use as a context manager or call close()."""

    def __init__(self, *, bootstrap: str = DEFAULT_BOOTSTRAP,
                 topic_prefix: str = DEFAULT_TOPIC_PREFIX, agent_id: str | None = None,
                 audience: str | None = None, timeout: float = 10.0,
                 raise_on_deny: bool = False,
                 agent_key: Ed25519PrivateKey | None = None) -> None:
        if agent_key is not None and not isinstance(agent_key, Ed25519PrivateKey):
            raise TypeError("agent_key must be an Ed25519PrivateKey")
        # Signs every intent and every proof of possession; never leaves this process.
        self._agent_key = agent_key
        self._topics = TopicNames(topic_prefix)
        self._bootstrap = bootstrap
        self.agent_id = agent_id
        self.audience = audience
        self.timeout = timeout
        self.raise_on_deny = raise_on_deny
        self._codecs = schemas()
        self._pending: dict[str, tuple[Future[Verdict], float]] = {}
        # intent id -> the final verdict of an intent that was answered PENDING
        self._finals: dict[str, tuple[Future[Verdict], float]] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", **_QUIET,
                                   "enable.idempotence": True, "linger.ms": 1})
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused", **_QUIET,
                                   "enable.auto.commit": False, "fetch.wait.max.ms": 10,
                                   "fetch.min.bytes": 1})
        try:
            self._partitions = self._assign_verdicts()
        except BaseException:
            self._consumer.close()
            self._producer.flush(0)
            raise
        self._thread = threading.Thread(target=self._poll, name="gatepass-verdicts", daemon=True)
        self._thread.start()

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> GatepassClient:
        return cls(bootstrap=settings.bootstrap, topic_prefix=settings.topic_prefix, **kwargs)

    def _assign_verdicts(self) -> int:
        try:
            meta = self._consumer.list_topics(timeout=10)
        except KafkaException as exc:
            raise BrokerError(f"cannot reach Kafka at {self._bootstrap}: {exc}") from exc
        intents, verdicts = meta.topics.get(self._topics.intents), \
            meta.topics.get(self._topics.verdicts)
        if not intents or not verdicts or not intents.partitions:
            raise BrokerError(f"topics {self._topics.intents}/{self._topics.verdicts} do not "
                              "exist: is a Gatepass worker running?")
        # Start at the current end of every verdict partition, fixed before any intent is sent,
        # so no reply can slip past between sending and listening.
        tps = [TopicPartition(self._topics.verdicts, p,
                              watermarks(self._consumer, self._topics.verdicts, p)[1])
               for p in sorted(verdicts.partitions)]
        self._consumer.assign(tps)
        return len(intents.partitions)


    def _poll(self) -> None:
        codec = self._codecs.verdict
        while not self._closed.is_set():
            self._producer.poll(0)
            # poll() returns as soon as one record is there; consume() would wait for the
            # whole batch or the timeout, adding its timeout to every verdict's latency.
            first = self._consumer.poll(0.05)
            if first is None:
                continue
            for msg in [first, *self._consumer.consume(num_messages=500, timeout=0)]:
                if msg.error() or msg.value() is None:
                    continue
                try:
                    rec = codec.decode(msg.value())
                except Exception:  # noqa: S112 - not ours to judge; the worker wrote it
                    continue
                with self._lock:
                    entry = self._pending.pop(rec["intent_id"], None)
                    if entry is None and rec["decision"] != "PENDING":
                        # Kept (resolved) until wait_final takes it: it may come late.
                        entry = self._finals.get(rec["intent_id"])
                        if entry is not None and entry[0].done():
                            entry = None  # a redelivered final: the first one stands
                    elif entry is not None and rec["decision"] == "PENDING":
                        # Listen for the final verdict from now on, before anyone asks.
                        self._prune_finals()
                        self._finals[rec["intent_id"]] = (Future(), entry[1])
                if entry is not None:
                    fut, sent = entry
                    fut.set_result(Verdict.from_record(
                        rec, latency_ms=(time.perf_counter() - sent) * 1000))

    def _prune_finals(self, keep: float = 3600.0) -> None:
        """Forget final verdicts nobody asked for within `keep` seconds (lock held)."""
        if len(self._finals) < 1000:
            return
        cutoff = time.perf_counter() - keep
        for intent_id in [i for i, (f, sent) in self._finals.items()
                          if f.done() and sent < cutoff]:
            del self._finals[intent_id]

    def submit(self, intent: Intent) -> Future[Verdict]:
        """Publish one intent; the future resolves with its verdict (no timeout applied).

        With an `agent_key`, an unsigned intent is signed here (one already signed is sent
        as it is).
        """
        if self._agent_key is not None and intent.signature is None:
            intent = replace(intent, signature=sign_intent(intent, self._agent_key))
        fut: Future[Verdict] = Future()
        value = self._codecs.intent.encode(intent_to_record(intent))
        with self._lock:
            self._pending[intent.intent_id] = (fut, time.perf_counter())

        def on_delivery(err: Any, _msg: Any) -> None:
            if err is None:
                return
            with self._lock:
                entry = self._pending.pop(intent.intent_id, None)
            if entry is not None:
                entry[0].set_result(Verdict(
                    intent_id=intent.intent_id, agent_id=intent.agent_id, decision="DENY",
                    reasons=(SDK_PUBLISH_FAILED,), detail=f"intent not delivered: {err}"))

        self._producer.produce(self._topics.intents, key=intent.agent_id.encode(), value=value,
                               partition=partition_for(intent.agent_id, self._partitions),
                               on_delivery=on_delivery)
        # Serve delivery callbacks without waiting: the reply is what we wait for.
        self._producer.poll(0)
        return fut

    def intent(self, action: str, resource: str, *, amount: Decimal | int | str | None = None,
               currency: str | None = None, audience: str | None = None,
               agent_id: str | None = None, context: Mapping[str, str] | None = None,
               delegation_chain: Iterable[str] = (), intent_id: str | None = None) -> Intent:
        agent = agent_id or self.agent_id
        target = audience or self.audience
        if not agent or not target:
            raise ValueError("agent_id and audience are required (here or on the client)")
        value = _amount(amount)
        return Intent(intent_id=intent_id or str(uuid.uuid4()), agent_id=agent, action=action,
                      resource=resource, audience=target, amount=value,
                      currency=(currency or "USD") if value is not None else currency,
                      context=dict(context or {}), requested_at=datetime.now(UTC),
                      delegation_chain=tuple(delegation_chain))

    def authorize(self, action: str, resource: str, *, timeout: float | None = None,
                  raise_on_deny: bool | None = None, wait_for_approval: float | None = None,
                  **kwargs: Any) -> Verdict:
        """Send one intent and wait for its verdict; a timeout is a DENY (`sdk_timeout`).

        A high-risk action is answered PENDING while its owner is asked; with
        `wait_for_approval` (seconds) this waits for the final verdict instead.
        """
        intent = self.intent(action, resource, **kwargs)
        fut = self.submit(intent)
        try:
            verdict = fut.result(timeout=self.timeout if timeout is None else timeout)
        except TimeoutError:
            with self._lock:
                self._pending.pop(intent.intent_id, None)
            verdict = Verdict(intent_id=intent.intent_id, agent_id=intent.agent_id,
                              decision="DENY", reasons=(SDK_TIMEOUT,),
                              detail="no verdict before the timeout")
            if self.raise_on_deny if raise_on_deny is None else raise_on_deny:
                raise AuthorizationTimeout(verdict.detail, verdict=verdict) from None
            return verdict
        if verdict.pending and wait_for_approval is not None:
            verdict = self.wait_final(verdict, timeout=wait_for_approval)
        if not verdict.allowed and (self.raise_on_deny if raise_on_deny is None
                                    else raise_on_deny):
            raise AuthorizationDenied(f"{action} on {resource} denied: "
                                      f"{', '.join(verdict.reasons)}", verdict=verdict)
        return verdict

    def wait_final(self, verdict: Verdict, timeout: float = 300.0) -> Verdict:
        """The final verdict of a PENDING one (the owner approved, denied, or it expired).

        No final verdict within `timeout` is a DENY `sdk_timeout` here, never an allow.
        """
        if not verdict.pending:
            return verdict
        with self._lock:
            entry = self._finals.get(verdict.intent_id)
        if entry is None:
            return Verdict(intent_id=verdict.intent_id, agent_id=verdict.agent_id,
                           decision="DENY", reasons=(SDK_TIMEOUT,),
                           detail="this client is not waiting for that intent")
        try:
            final = entry[0].result(timeout=timeout)
        except TimeoutError:
            with self._lock:
                self._finals.pop(verdict.intent_id, None)
            return Verdict(intent_id=verdict.intent_id, agent_id=verdict.agent_id,
                           decision="DENY", reasons=(SDK_TIMEOUT,),
                           detail="no final verdict before the timeout", approval=verdict.approval)
        with self._lock:
            self._finals.pop(verdict.intent_id, None)
        return final

    def proof(self, verdict_or_pass: Verdict | str, method: str, url: str) -> str:
        """A fresh DPoP proof (RFC 9449) for presenting a pass in one request.

        Send it as the `DPoP` header beside `Authorization: DPoP <pass>`; make a new one for
        every request (each is accepted once, for about a minute, for this method and URL).
        """
        if self._agent_key is None:
            raise ValueError("this client has no agent_key to prove possession with")
        token = verdict_or_pass.credential if isinstance(verdict_or_pass, Verdict) \
            else verdict_or_pass
        if not token:
            raise ValueError("no pass to make a proof for (the verdict is not an ALLOW)")
        return dpop_proof(self._agent_key, token=token, method=method, url=url)

    async def authorize_async(self, action: str, resource: str, **kwargs: Any) -> Verdict:
        """The asyncio form of `authorize` (the wait runs in a thread, not on the loop)."""
        return await asyncio.get_running_loop().run_in_executor(
            None, functools.partial(self.authorize, action, resource, **kwargs))

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=5)
        self._producer.flush(5)
        self._consumer.close()

    def __enter__(self) -> GatepassClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def guard(client: GatepassClient, action: str, *, resource: str | Callable[..., str],
          amount: Callable[..., Any] | Decimal | None = None, audience: str | None = None,
          pass_kwarg: str = "gatepass_pass") -> Callable[[F], F]:  # noqa: S107
    """Decorate a tool function: authorize before each call and hand it the pass.

        @guard(gp, "purchase_order.create", resource=lambda vendor, total: f"vendor:{vendor}",
               amount=lambda vendor, total: total, audience="procurement-api")
        def place_order(vendor, total, *, gatepass_pass): ...

    A DENY (or timeout) raises AuthorizationDenied / AuthorizationTimeout; the tool never runs.
    """
    def resolve(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, Any]:
        res = resource(*args, **kwargs) if callable(resource) else resource
        amt = amount(*args, **kwargs) if callable(amount) else amount
        return res, amt

    def decorate(fn: F) -> F:
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                res, amt = resolve(args, kwargs)
                verdict = await client.authorize_async(action, res, amount=amt,
                                                       audience=audience, raise_on_deny=True)
                return await fn(*args, **kwargs, **{pass_kwarg: verdict.credential})
            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            res, amt = resolve(args, kwargs)
            verdict = client.authorize(action, res, amount=amt, audience=audience,
                                       raise_on_deny=True)
            return fn(*args, **kwargs, **{pass_kwarg: verdict.credential})
        return wrapper  # type: ignore[return-value]
    return decorate


class LifecyclePublisher:
    """For connectors and the CLI: write lifecycle events to the compacted identity topic."""

    def __init__(self, *, bootstrap: str = DEFAULT_BOOTSTRAP,
                 topic_prefix: str = DEFAULT_TOPIC_PREFIX) -> None:
        self._topic = TopicNames(topic_prefix).identity
        self._codec = schemas().lifecycle
        self._producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", **_QUIET,
                                   "enable.idempotence": True})
        self._errors: list[str] = []
        try:
            meta = self._producer.list_topics(self._topic, timeout=10).topics.get(self._topic)
        except KafkaException as exc:
            raise BrokerError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
        if meta is None or meta.error is not None or not meta.partitions:
            raise BrokerError(f"topic {self._topic} does not exist: is a worker running?")
        self._partitions = len(meta.partitions)

    def publish(self, *events: LifecycleEvent, timeout: float = 10.0) -> None:
        """Write and wait for the broker's acknowledgement; raises BrokerError otherwise."""
        def on_delivery(err: Any, _msg: Any) -> None:
            if err is not None:
                self._errors.append(str(err))

        for event in events:
            key = lifecycle_key(event)
            self._producer.produce(self._topic, key=key.encode(),
                                   value=self._codec.encode(lifecycle_to_record(event)),
                                   partition=partition_for(key, self._partitions),
                                   on_delivery=on_delivery)
        remaining = self._producer.flush(timeout)
        if remaining or self._errors:
            errors, self._errors = self._errors, []
            raise BrokerError(f"lifecycle events not acknowledged: {errors or remaining}")
