"""A Kafka broker for tests: an external one, a Docker container, or a LocalKafka on free ports.

Order of preference:
  1. GATEPASS_TEST_BOOTSTRAP, used as is (nothing is started or stopped);
  2. a Docker engine that answers: apache/kafka in a container via testcontainers;
  3. otherwise a LocalKafka (Java + Maven, jars cached under GATEPASS_HOME or <repo>/.gatepass)
     on two free loopback ports; its broker directory is removed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from gatepass.errors import BrokerError
from gatepass.kafka_local import KAFKA_VERSION, LocalKafka

if TYPE_CHECKING:
    from testcontainers.core.container import DockerContainer

__all__ = ["free_ports", "gatepass_home", "kafka_bootstrap"]

REPO_ROOT = Path(__file__).resolve().parents[2]
BOOTSTRAP_ENV = "GATEPASS_TEST_BOOTSTRAP"
KAFKA_IMAGE = f"apache/kafka:{KAFKA_VERSION}"
CONTAINER_PORT = 9092
START_TIMEOUT = 120.0


@contextlib.contextmanager
def kafka_bootstrap() -> Iterator[str]:
    """Yield a bootstrap address of a running broker; stop whatever was started on exit."""
    external = os.environ.get(BOOTSTRAP_ENV, "").strip()
    if external:
        yield external
    elif _docker_answers():
        with _container_broker() as bootstrap:
            yield bootstrap
    else:
        with _local_broker() as bootstrap:
            yield bootstrap


def gatepass_home() -> Path:
    """Where the Kafka jars are cached: $GATEPASS_HOME, else the repo's own .gatepass."""
    return Path(os.environ.get("GATEPASS_HOME") or REPO_ROOT / ".gatepass")


def free_ports(count: int) -> list[int]:
    """Distinct loopback ports nobody listens on right now."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind(("127.0.0.1", 0))  # held open until all are picked, so they differ
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@contextlib.contextmanager
def _local_broker() -> Iterator[str]:
    port, controller_port = free_ports(2)
    broker = LocalKafka(home=gatepass_home(), port=port, controller_port=controller_port)
    try:
        yield broker.up().bootstrap
    finally:
        broker.down()
        shutil.rmtree(broker.broker_dir, ignore_errors=True)


def _docker_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # no SDK, no socket, engine down: all mean "no Docker"
        return False


@contextlib.contextmanager
def _container_broker() -> Iterator[str]:
    # testcontainers' KafkaContainer drives Confluent images; the apache/kafka image is
    # configured with env vars instead. The advertised address needs the mapped port, known
    # only once the container runs, so the container waits for a start script we copy in.
    from testcontainers.core.container import DockerContainer

    script = "/tmp/gatepass-start.sh"
    container = (
        DockerContainer(KAFKA_IMAGE)
        .with_exposed_ports(CONTAINER_PORT)
        .with_envs(
            KAFKA_NODE_ID="1",
            KAFKA_PROCESS_ROLES="broker,controller",
            KAFKA_CONTROLLER_QUORUM_VOTERS="1@localhost:9094",
            KAFKA_LISTENERS="PLAINTEXT://:9092,BROKER://:9093,CONTROLLER://:9094",
            KAFKA_LISTENER_SECURITY_PROTOCOL_MAP=(
                "PLAINTEXT:PLAINTEXT,BROKER:PLAINTEXT,CONTROLLER:PLAINTEXT"
            ),
            KAFKA_INTER_BROKER_LISTENER_NAME="BROKER",
            KAFKA_CONTROLLER_LISTENER_NAMES="CONTROLLER",
            KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR="1",
            KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR="1",
            KAFKA_TRANSACTION_STATE_LOG_MIN_ISR="1",
            KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS="0",
            KAFKA_AUTO_CREATE_TOPICS_ENABLE="false",
        )
        .with_command(["sh", "-c", f"while [ ! -f {script} ]; do sleep 0.1; done; . {script}"])
    )
    with container:
        host = container.get_container_host_ip()
        port = container.get_exposed_port(CONTAINER_PORT)
        start = (
            f"export KAFKA_ADVERTISED_LISTENERS=PLAINTEXT://{host}:{port},BROKER://localhost:9093\n"
            "exec /etc/kafka/docker/run\n"
        )
        container.copy_into_container(start.encode(), script)
        bootstrap = f"{host}:{port}"
        _wait_for_log(container, "Kafka Server started", START_TIMEOUT)
        yield bootstrap


def _wait_for_log(container: DockerContainer, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stdout, stderr = container.get_logs()
        if text.encode() in stdout or text.encode() in stderr:
            return
        time.sleep(0.2)
    raise BrokerError(f"{KAFKA_IMAGE} did not log {text!r} within {timeout:g} s")
