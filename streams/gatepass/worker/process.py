"""Run a worker as a child process (the demo and the integration tests do), and stop it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from gatepass.config import Settings
from gatepass.errors import BrokerError

__all__ = ["WorkerProcess"]


class WorkerProcess:
    def __init__(self, settings: Settings, *, log_file: Path) -> None:
        self.settings = settings
        self.log_file = log_file
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.settings.to_env(), "PYTHONUNBUFFERED": "1"}
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gatepass", "worker"], stdout=log,
                stderr=subprocess.STDOUT, env=env, start_new_session=True)
        return self

    def readiness(self) -> dict[str, Any] | None:
        try:
            url = f"{self.settings.web_url}/readyz"  # always http on our own host and port
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310
                state: dict[str, Any] = json.loads(resp.read())
                return state
        except urllib.error.HTTPError as exc:
            try:
                failed: dict[str, Any] = json.loads(exc.read() or b"{}")
            except ValueError:  # not our JSON (say a 500 page): not ready, keep asking
                failed = {"ready": False, "http_status": exc.code}
            return failed
        except (OSError, ValueError):
            return None

    def wait_ready(self, timeout: float = 90.0) -> dict[str, Any]:
        """Wait until the worker's identity state is loaded and its agents are running."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise BrokerError(f"worker exited with {self.proc.returncode}; see "
                                  f"{self.log_file}:\n{self.tail_log()}")
            state = self.readiness()
            if state and state.get("ready"):
                return state
            time.sleep(0.2)
        raise BrokerError(f"worker not ready after {timeout:.0f}s; see {self.log_file}:\n"
                          f"{self.tail_log()}")

    def stack_dump(self, timeout: float = 20.0, *,
                   sig: signal.Signals = signal.SIGUSR1) -> str | None:
        """Ask the live worker for its thread and task stacks (SIGUSR1; SIGUSR2 does the
        same) and return the dump it writes to its log; None if it wrote none within
        `timeout` or is not running."""
        from gatepass.worker.stackdump import DUMP_END, DUMP_START

        if self.proc is None or self.proc.poll() is not None:
            return None
        before = self._log_text().count(DUMP_END)
        self.proc.send_signal(sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self._log_text()
            if text.count(DUMP_END) > before:
                end = text.rindex(DUMP_END) + len(DUMP_END)
                return text[text.rindex(DUMP_START, 0, end):end]
            time.sleep(0.2)
        return None

    def _log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def tail_log(self, lines: int = 30) -> str:
        return "\n".join(self._log_text().splitlines()[-lines:])

    def stop(self, timeout: float = 30.0, *, kill: bool = False) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)
