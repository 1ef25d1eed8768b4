"""How the worker's supervisor reads /readyz (gatepass.worker.process.WorkerProcess)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from gatepass.config import Settings
from gatepass.worker.process import WorkerProcess


@contextmanager
def _serving(status: int, body: bytes) -> Iterator[int]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("status", "body", "expected"), [
    (200, b'{"ready": true}', {"ready": True}),
    (503, b'{"ready": false, "identity_loaded": false}',
     {"ready": False, "identity_loaded": False}),
    (500, b"500 Internal Server Error\n\nServer got itself in trouble",
     {"ready": False, "http_status": 500}),
    (503, b"", {}),
], ids=["ready", "not-ready", "error-page", "empty"])
def test_readiness_reads_every_answer_without_raising(tmp_path: Path, status: int,
                                                      body: bytes, expected: dict) -> None:
    with _serving(status, body) as port:
        worker = WorkerProcess(Settings(home=tmp_path, web_port=port),
                               log_file=tmp_path / "worker.log")
        assert worker.readiness() == expected


def test_readiness_is_none_when_nothing_listens(tmp_path: Path) -> None:
    with _serving(200, b"{}") as port:
        pass  # the server is gone again: its port refuses
    worker = WorkerProcess(Settings(home=tmp_path, web_port=port),
                           log_file=tmp_path / "worker.log")
    assert worker.readiness() is None
