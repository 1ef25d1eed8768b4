"""A small target system for the demo: a procurement API that accepts only valid passes.

    POST /purchase-orders   Authorization: Bearer <pass>
    {"vendor": "ACME", "amount": "120.00", "currency": "USD"}

201 with the order when the pass verifies for exactly this action, vendor and amount;
401 with {"error": <code>, "message": ...} otherwise (a replayed pass is `replayed`);
400 for a malformed body. It verifies offline with the worker's published JWKS.
A pass bound to the agent's key (cnf.jkt) comes as `Authorization: DPoP <pass>` with a
`DPoP: <proof>` header made for POST <this API's URL>/purchase-orders (RFC 9449); without
the proof it is refused `dpop_missing`.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from gatepass.credentials import PassVerifier, ReplayCache
from gatepass.errors import CredentialError, KeyUnknownError

__all__ = ["AUDIENCE", "ProcurementApi"]

AUDIENCE = "procurement-api"
_MAX_BODY = 16 * 1024


class ProcurementApi:
    def __init__(self, jwks: Callable[[], dict[str, Any]], *, issuer: str = "gatepass",
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self._jwks = jwks
        self._issuer = issuer
        self._replay = ReplayCache()  # survives JWKS refreshes: a jti is single-use for good
        self._verifier = self._new_verifier()
        self.orders: list[dict[str, Any]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # no bearer tokens in logs
                return

            def do_POST(self) -> None:
                length = self.headers.get("Content-Length", "")
                if not length.isdigit() or int(length) > _MAX_BODY:
                    # Never read "to the end" or past our limit on a client's say-so.
                    self.reply(400, {"error": "bad_request",
                                     "message": f"Content-Length must be 0-{_MAX_BODY}"})
                    return
                self.reply(*api.handle(self.path, self.headers.get("Authorization", ""),
                                       self.rfile.read(int(length)),
                                       dpop=self.headers.get("DPoP")))

            def not_allowed(self) -> None:
                self.reply(405, {"error": "method_not_allowed", "message": "POST only"})

            do_GET = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = not_allowed

            def reply(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 405:
                    self.send_header("Allow", "POST")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _new_verifier(self) -> PassVerifier:
        return PassVerifier(self._jwks(), audience=AUDIENCE, issuer=self._issuer,
                            replay_cache=self._replay)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> ProcurementApi:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def handle(self, path: str, authorization: str, raw: bytes,
               dpop: str | None = None) -> tuple[int, dict[str, Any]]:
        if path != "/purchase-orders":
            return 404, {"error": "not_found", "message": "POST /purchase-orders"}
        try:
            body = json.loads(raw)
            vendor, currency = str(body["vendor"]), str(body["currency"])
            amount = Decimal(str(body["amount"]))
        except (ValueError, KeyError, TypeError, InvalidOperation, RecursionError):
            return 400, {"error": "bad_request",
                         "message": "body must be JSON with vendor, amount, currency"}
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() not in ("bearer", "dpop") or not token:
            return 401, {"error": "pass_required",
                         "message": "Authorization: Bearer <pass> (or DPoP <pass> with a proof)"}
        kwargs = {"action": "purchase_order.create", "resource": f"vendor:{vendor}",
                  "amount": amount, "currency": currency, "dpop": dpop, "method": "POST",
                  "url": self.url + path}
        try:
            try:
                verified = self._verifier.verify(token, **kwargs)  # type: ignore[arg-type]
            except KeyUnknownError:
                self._verifier = self._new_verifier()  # keys rotated? refresh once
                verified = self._verifier.verify(token, **kwargs)  # type: ignore[arg-type]
        except CredentialError as exc:
            return 401, {"error": exc.code, "message": str(exc)}
        order = {"order_id": str(uuid.uuid4()), "vendor": vendor, "amount": str(amount),
                 "currency": currency, "agent": verified.agent_id,
                 "credential_id": verified.credential_id}
        self.orders.append(order)
        return 201, order
