"""docker-compose.yml is valid for every compose client installed (no Docker engine needed).

CI must have one (Debian: `apt-get install -y --no-install-recommends docker-compose`), so
there a missing client fails the test; elsewhere it is skipped.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
INSTALL_HINT = "apt-get install -y --no-install-recommends docker-compose"


def _compose_clients() -> list[list[str]]:
    clients = []
    if shutil.which("docker-compose"):
        clients.append(["docker-compose"])
    if shutil.which("docker"):
        plugin = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, text=True, timeout=30
        )
        if plugin.returncode == 0:
            clients.append(["docker", "compose"])
    return clients


@functools.cache
def _installed_clients() -> list[list[str]]:
    return _compose_clients()


def _clients_or_skip() -> list[list[str]]:
    """The installed clients; none is a failure in CI (a test failure, not an error)."""
    clients = _installed_clients()
    if not clients:
        reason = f"no compose client (docker-compose or the docker compose plugin); {INSTALL_HINT}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    return clients


def _compose(client: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*client, "-f", str(COMPOSE_FILE), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_compose_file_is_valid() -> None:
    for client in _clients_or_skip():
        result = _compose(client, "config", "-q")
        assert result.returncode == 0, f"{' '.join(client)} config -q:\n{result.stderr}"


def test_compose_defines_the_broker_and_a_scalable_worker() -> None:
    for client in _clients_or_skip():
        result = _compose(client, "config")
        assert result.returncode == 0, result.stderr
        services = _compose(client, "config", "--services").stdout.split()
        assert sorted(services) == ["kafka", "worker"]
        worker = result.stdout.split("\n  worker:\n", 1)[1]
        # `--scale worker=2` needs a worker without a fixed name or published host port.
        assert "container_name:" not in worker
        assert "ports:" not in worker
        assert "GATEPASS_BOOTSTRAP: kafka:29092" in worker
        assert "condition: service_healthy" in worker
