"""~1,000 random requests at a real worker's own pages: no 5xx, and it still answers /healthz.

/healthz and /readyz may answer 503 by design (stalled, not ready); the worker is ready here,
so any 5xx from them, or from any other path, is a finding.
"""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fuzz.conftest import fuzz_settings
from support.stack import Stack

pytestmark = [pytest.mark.integration, pytest.mark.fuzz]
REQUESTS = 1_000
PAGES = ["/healthz", "/readyz", "/metrics", "/.well-known/jwks.json"]
ASCII = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40)


def request(stack: Stack, method: str, path: str, headers: dict[str, str],
            body: bytes | None) -> tuple[int, bytes]:
    url = urlsplit(stack.settings.web_url)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_worker_pages_survive_random_requests(stack: Stack) -> None:
    seen: dict[int, int] = {}
    paths = st.one_of(st.sampled_from(PAGES), ASCII.map(lambda p: "/" + p),
                      st.sampled_from(PAGES).flatmap(lambda p: ASCII.map(lambda q: p + q)))
    methods = st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH",
                               "TRACE", "FOO"])
    headers = st.dictionaries(st.sampled_from(["Accept", "X-Fuzz", "Authorization", "Cookie",
                                               "Range", "If-None-Match", "Accept-Encoding"]),
                              st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E),
                                      max_size=60), max_size=4)

    @fuzz_settings(REQUESTS)
    @given(methods, paths, headers, st.one_of(st.none(), st.binary(max_size=256)))
    def run(method: str, path: str, hdrs: dict[str, str], body: bytes | None) -> None:
        status, _data = request(stack, method, path, hdrs, body)
        seen[status] = seen.get(status, 0) + 1
        assert status < 500, (method, path, hdrs, body, status)

    run()
    print(f"worker pages: {sum(seen.values())} requests, statuses {sorted(seen.items())}")
    assert sum(seen.values()) >= REQUESTS * 0.9
    status, data = request(stack, "GET", "/healthz", {}, None)
    assert status == 200 and json.loads(data)["status"] == "alive"
