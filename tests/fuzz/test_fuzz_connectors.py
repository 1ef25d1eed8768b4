"""Fuzz the connectors receiver (Okta Event Hooks, SCIM 2.0 Users, Graph notifications) over HTTP.

The real `Receiver` with every connector enabled runs on a loopback port (its own thread and
event loop, as `serve_in_background` runs it); a recording publisher stands in for Kafka, a
memory store for the SCIM users topic and recorded Graph users for Graph. Two targets:

* without credentials (no, wrong or mutated Authorization headers and Okta secrets, Graph
  notifications with a wrong clientState): never a 5xx, and nothing is published, stored or
  looked up in Graph. A 2xx only where the protocol has a public answer: /healthz, /metrics,
  Graph's validationToken handshake, and Graph notification POSTs (acknowledged with 202
  so Graph does not retry; the unauthentic ones are dropped).
* with the right credentials and random or mutated bodies, paths and headers: never a 5xx,
  and a 4xx publishes and stores nothing.
"""

from __future__ import annotations

import copy
import http.client
import json
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fuzz.conftest import Target, fuzz_examples, fuzz_settings
from gatepass.connectors import MemoryScimStore
from gatepass.connectors.receiver import serve_in_background
from unit.connectors.support import (
    CLIENT_STATE,
    OKTA_AUTH,
    SCIM_TOKEN,
    RecordedGraph,
    RecordingPublisher,
    fixture,
    receiver,
)

pytestmark = pytest.mark.fuzz

EXAMPLES = fuzz_examples()
ADELE = "a1f2c3d4-5e6f-4a7b-8c9d-0e1f2a3b4c5d"
JOHANNA = "b2e3d4c5-6f7a-4b8c-9d0e-1f2a3b4c5d6e"
OKTA, SCIM, ENTRA = "/okta/events", "/scim/v2", "/entra/notifications"
SCIM_PATHS = ["/Users", "/Users/.search", "/.search", "/ServiceProviderConfig",
              "/ResourceTypes", "/ResourceTypes/User", "/Schemas",
              "/Schemas/urn:ietf:params:scim:schemas:core:2.0:User"]
PATHS = [OKTA, ENTRA, "/healthz", "/metrics", SCIM, *(SCIM + p for p in SCIM_PATHS)]
FIXTURES = {name: fixture(name) for name in [
    "okta_deactivate.json", "okta_lifecycle_batch.json", "scim_okta_create_user.json",
    "scim_entra_create_user.json", "scim_okta_deactivate.json",
    "scim_entra_disable_boolean.json", "scim_entra_disable_string.json",
    "scim_entra_update_attributes.json", "graph_notification_user_updated.json",
    "graph_notification_user_deleted.json", "graph_notification_lifecycle_missed.json"]}
PUBLIC = {("GET", "/healthz"), ("GET", "/metrics")}


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, RecordingPublisher, MemoryScimStore, RecordedGraph]]:
    publisher, store = RecordingPublisher(), MemoryScimStore()
    graph = RecordedGraph(users={ADELE: fixture("graph_user_disabled.json")},
                          deleted={JOHANNA: fixture("graph_deleted_user.json")})
    rx = receiver(publisher, store=store, graph=graph)
    with serve_in_background(rx) as base:
        yield base, publisher, store, graph


def call(base: str, method: str, path: str, headers: dict[str, str],
         body: bytes | None) -> tuple[int, bytes]:
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=20)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


# ---- inputs ------------------------------------------------------------------------------
def json_values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                        st.text(max_size=20), st.sampled_from(
                            ["", "active", "false", "False", "true", "2024-05-02T09:14:03Z",
                             "9999-12-31T23:59:59Z", "user.lifecycle.deactivate", "replace",
                             "remove", "add", "active eq true", "\x00", "\u202e", "a" * 300]))
    return st.recursive(scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
        max_leaves=8)


@st.composite
def mutated_json(draw: Any, documents: list[Any]) -> Any:
    """A provider's documented payload with a few members dropped, replaced or retyped."""
    doc = copy.deepcopy(draw(st.sampled_from(documents)))
    for _ in range(draw(st.integers(1, 4))):
        node, path = doc, []
        while isinstance(node, dict | list) and node and draw(st.integers(0, 3)):
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            k = draw(st.sampled_from(keys))
            path.append((node, k))
            node = node[k]
        if not path:
            return draw(json_values())
        parent, k = path[-1]
        if draw(st.booleans()):
            parent[k] = draw(json_values())
        elif isinstance(parent, dict):
            del parent[k]
        else:
            parent.pop(k)
    return doc


def bodies(documents: list[Any]) -> st.SearchStrategy[bytes | None]:
    encoded = [json.dumps(d).encode() for d in documents]

    @st.composite
    def flipped(draw: Any) -> bytes:
        data = bytearray(draw(st.sampled_from(encoded)))
        for pos in draw(st.lists(st.integers(0, 10**6), min_size=1, max_size=6)):
            data[pos % len(data)] = draw(st.integers(0, 255))
        return bytes(data)

    return st.one_of(
        st.none(), st.binary(max_size=200), json_values().map(lambda v: json.dumps(v).encode()),
        mutated_json(documents).map(lambda v: json.dumps(v).encode()),
        mutated_json(documents).map(lambda v: json.dumps(v).encode()),
        st.sampled_from(encoded), flipped(),
        st.sampled_from([b"{", b"[]", b"null", b"\xff\xfe{}", b"[" * 5000, b'{"a":' * 3000,
                         b'{"value":[' + b'{},' * 2000 + b'{}]}', b" " * 70000]))


def near_secret(secret: str) -> st.SearchStrategy[str]:
    return st.one_of(
        st.just(secret[:-1]), st.just(secret + "x"), st.just(secret.upper()),
        st.just(secret[::-1]),  # (surrounding blanks are trimmed by SCIM: not a wrong secret)
        st.integers(0, len(secret) - 1).map(lambda i: secret[:i] + "!" + secret[i + 1:]))


def wrong_authorizations() -> st.SearchStrategy[str | None]:
    header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)
    return st.one_of(
        st.none(), header_text, near_secret(OKTA_AUTH),
        near_secret(SCIM_TOKEN).map(lambda t: f"Bearer {t}"),
        st.sampled_from(["", "Bearer", "Bearer ", f"Basic {SCIM_TOKEN}", SCIM_TOKEN,
                         f"Bearer {OKTA_AUTH}", f"Bearer {CLIENT_STATE}", CLIENT_STATE]))


def query() -> st.SearchStrategy[str]:
    pair = st.tuples(st.sampled_from(["filter", "startIndex", "count", "attributes",
                                      "validationToken", "x", "excludedAttributes"]),
                     st.one_of(st.text(max_size=30), st.sampled_from(
                         ['userName eq "sarah"', "-1", "0", "99999999999999999999", "abc"])))
    return st.lists(pair, max_size=3).map(
        lambda ps: ("?" + "&".join(f"{quote(k)}={quote(v)}" for k, v in ps)) if ps else "")


def paths() -> st.SearchStrategy[str]:
    random_tail = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30)
    return st.tuples(st.one_of(st.sampled_from(PATHS), st.sampled_from(PATHS),
                               st.builds(lambda p, t: p + "/" + quote(t), st.sampled_from(
                                   [SCIM + "/Users", OKTA, ENTRA]), random_tail),
                               random_tail.map(lambda t: "/" + quote(t, safe="/"))),
                     query()).map("".join)


METHODS = st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
CONTENT_TYPES = st.one_of(st.none(), st.sampled_from(
    ["application/json", "application/scim+json", "text/plain", "application/x-www-form-urlencoded",
     "application/json; charset=latin-1", "multipart/form-data; boundary=x", ";;;"]))


def without_client_state(doc: Any) -> Any:
    """A Graph notification whose clientState is not ours (someone else's subscription)."""
    doc = copy.deepcopy(doc)
    for n in doc.get("value", []):
        n["clientState"] = "not-" + CLIENT_STATE
    return doc


# ---- the oracle --------------------------------------------------------------------------
def state(publisher: RecordingPublisher, store: MemoryScimStore,
          graph: RecordedGraph) -> tuple[int, int, str, int]:
    return (len(publisher.events), publisher.calls, json.dumps(store.users, sort_keys=True),
            len(graph.calls))


def test_fuzz_connectors_without_credentials(
        served: tuple[str, RecordingPublisher, MemoryScimStore, RecordedGraph],
        fuzz_target: Callable[[str], Target]) -> None:
    base, publisher, store, graph = served
    documents = [without_client_state(d) if "graph_notification" in name else d
                 for name, d in FIXTURES.items()]
    target = fuzz_target("connectors receiver, no credentials (HTTP)")
    before = state(publisher, store, graph)

    @fuzz_settings()
    @given(METHODS, paths(), wrong_authorizations(), CONTENT_TYPES, bodies(documents),
           st.one_of(st.none(), st.text(st.characters(min_codepoint=0x20,
                                                      max_codepoint=0x7E), max_size=80)))
    def run(method: str, path: str, authorization: str | None, content_type: str | None,
            body: bytes | None, challenge: str | None) -> None:
        headers = {}
        if authorization is not None:
            headers["Authorization"] = authorization
        if content_type is not None:
            headers["Content-Type"] = content_type
        if challenge is not None:
            headers["X-Okta-Verification-Challenge"] = challenge
        status, _ = target.run(lambda: call(base, method, path, headers, body),
                               label=(method, path, headers, body))
        assert status < 500, (method, path, headers, body, status)
        assert state(publisher, store, graph) == before, (method, path, headers, body)
        route = path.split("?")[0]
        if 200 <= status < 300:
            public = (method, route) in PUBLIC or (route == ENTRA and (
                method == "POST" or "validationToken=" in path))
            assert public, (method, path, headers, body, status)
        target.count(str(status))

    run()
    assert target.inputs >= EXAMPLES
    assert sum(v for k, v in target.outcomes.items() if k.startswith("4")) > EXAMPLES // 2


def test_fuzz_connectors_with_credentials(
        served: tuple[str, RecordingPublisher, MemoryScimStore, RecordedGraph],
        fuzz_target: Callable[[str], Target]) -> None:
    base, publisher, store, graph = served
    documents = list(FIXTURES.values())
    target = fuzz_target("connectors receiver, with credentials (HTTP)")
    auth = {OKTA: OKTA_AUTH, SCIM: f"Bearer {SCIM_TOKEN}", ENTRA: None}
    user_paths = st.one_of(st.just("/Users"), st.sampled_from(SCIM_PATHS),
                           st.builds(lambda u: f"/Users/{quote(u, safe='')}", st.one_of(
                               st.text(max_size=40), st.sampled_from(list(store.users) or
                                                                     ["00u5sarah"]))))

    body_strategy = bodies(documents)  # built once: a new composite per example is slow

    @st.composite
    def requests(draw: Any) -> tuple[str, str, dict[str, str], bytes | None]:
        connector = draw(st.sampled_from([OKTA, SCIM, SCIM, ENTRA]))
        path = connector + (draw(user_paths) if connector == SCIM else "") + draw(query())
        method = draw(st.sampled_from(["POST", "POST", "GET"]) if connector != SCIM
                      else METHODS)
        headers: dict[str, str] = {}
        if auth[connector] is not None:
            headers["Authorization"] = auth[connector]
        content_type = draw(st.one_of(st.just("application/json"),
                                      st.just("application/scim+json"), CONTENT_TYPES))
        if content_type is not None:
            headers["Content-Type"] = content_type
        return method, path, headers, draw(body_strategy)

    @fuzz_settings()
    @given(requests())
    def run(request: tuple[str, str, dict[str, str], bytes | None]) -> None:
        method, path, headers, body = request
        before = state(publisher, store, graph)
        status, data = target.run(lambda: call(base, method, path, headers, body),
                                  label=request)
        assert status < 500, (request, status, data[:300])
        after = state(publisher, store, graph)
        if status >= 400:
            assert after[:3] == before[:3], (request, status)  # nothing published or stored
        target.count(str(status))

    run()
    assert target.inputs >= EXAMPLES
    assert sum(v for k, v in target.outcomes.items() if k.startswith("2")) > 0
