"""LocalKafka without a broker: configuration, pid files, missing tools and start-up failures.

A fake `java` (a shell script on a private PATH) stands in for the JVM where a process is
needed, and a fake jar stands in for the Maven cache, so nothing here touches the network.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gatepass.errors import BrokerError, ConfigError, KafkaInstallError
from gatepass.kafka_local import KAFKA_VERSION, BrokerStatus, LocalKafka


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def kafka(home: Path) -> LocalKafka:
    return LocalKafka(home=home, port=_free_port(), controller_port=_free_port())


@pytest.fixture
def empty_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test spawns; killed afterwards whatever happened."""
    spawned: list[subprocess.Popen[bytes]] = []
    yield spawned
    for process in spawned:
        if process.poll() is None:
            process.kill()
        process.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _fake_cache(kafka: LocalKafka) -> None:
    kafka.libs_dir.mkdir(parents=True)
    (kafka.libs_dir / f"kafka_2.13-{kafka.version}.jar").write_bytes(b"")


def _fake_java(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broker_script: str) -> None:
    """Put a `java` on an otherwise empty PATH: StorageTool succeeds, kafka.Kafka runs the script.

    Each StorageTool run leaves a line in tmp_path/"storage-tool-runs".
    """
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    java = bin_dir / "java"
    java.write_text(
        "#!/bin/sh\n"
        'case "$*" in\n'
        f'  *StorageTool*) echo "$*" >> "{tmp_path / "storage-tool-runs"}"; exit 0 ;;\n'
        f"  *kafka.Kafka*) {broker_script} ;;\n"
        "esac\n"
        "exit 64\n"
    )
    java.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))


def _read_properties(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {key: value for key, value in pairs if not key.startswith("#")}


# -- configuration ------------------------------------------------------------------------------


def test_server_properties_configure_a_loopback_kraft_node(home: Path) -> None:
    kafka = LocalKafka(home=home, port=19092, controller_port=19093)

    properties = _read_properties(kafka.write_config())

    assert properties == kafka.server_properties()
    assert properties["process.roles"] == "broker,controller"
    assert properties["node.id"] == "1"
    assert properties["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert properties["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert properties["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert properties["controller.listener.names"] == "CONTROLLER"
    assert properties["inter.broker.listener.name"] == "PLAINTEXT"
    assert properties["log.dirs"] == str(home.resolve() / "brokers" / "19092" / "data")
    assert properties["offsets.topic.replication.factor"] == "1"
    assert properties["transaction.state.log.replication.factor"] == "1"
    assert properties["transaction.state.log.min.isr"] == "1"
    assert properties["group.initial.rebalance.delay.ms"] == "0"
    assert properties["auto.create.topics.enable"] == "false"


def test_log4j_config_writes_to_the_reported_log_file(kafka: LocalKafka) -> None:
    kafka.write_config()

    log4j = _read_properties(kafka.log4j_file)

    assert log4j["log4j.appender.file.File"] == "${kafka.logs.dir}/server.log"
    assert kafka.log_file == kafka.logs_dir / "server.log"
    assert kafka.status().log_file == kafka.log_file


def test_brokers_on_different_ports_share_the_jar_cache_but_nothing_else(home: Path) -> None:
    demo = LocalKafka(home=home, port=9092, controller_port=9093)
    test = LocalKafka(home=home, port=41234, controller_port=41235)

    assert demo.libs_dir == test.libs_dir == home.resolve() / "dist" / KAFKA_VERSION / "libs"
    assert demo.broker_dir == home.resolve() / "brokers" / "9092"
    assert test.broker_dir == home.resolve() / "brokers" / "41234"
    assert demo.data_dir != test.data_dir and demo.pid_file != test.pid_file


def test_dist_dir_moves_only_the_jar_cache(home: Path, tmp_path: Path) -> None:
    kafka = LocalKafka(home=home, dist_dir=tmp_path / "jars")

    assert kafka.libs_dir == tmp_path / "jars" / KAFKA_VERSION / "libs"
    assert kafka.broker_dir == home.resolve() / "brokers" / "9092"


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"port": 0}, "port"),
        ({"port": 70000}, "port"),
        ({"controller_port": -1}, "controller_port"),
        ({"port": 9092, "controller_port": 9092}, "controller_port"),
        ({"heap": "lots"}, "heap"),
        ({"heap": "0m"}, "heap"),
        ({"version": "../../etc"}, "version"),
    ],
)
def test_invalid_settings_name_their_key(home: Path, kwargs: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        LocalKafka(home=home, **kwargs)  # type: ignore[arg-type]

    assert caught.value.key == key
    assert caught.value.code == "config_invalid"


# -- status and pid files -----------------------------------------------------------------------


def test_status_of_a_never_started_broker(kafka: LocalKafka, home: Path) -> None:
    status = kafka.status()

    assert status == BrokerStatus(
        running=False,
        pid=None,
        bootstrap=f"127.0.0.1:{kafka.port}",
        version=KAFKA_VERSION,
        home=home.resolve(),
        log_file=home.resolve() / "brokers" / str(kafka.port) / "logs" / "server.log",
        data_dir=home.resolve() / "brokers" / str(kafka.port) / "data",
    )
    assert not home.exists(), "status() must not create anything"


def test_down_of_a_never_started_broker_stops_nothing(kafka: LocalKafka) -> None:
    assert kafka.down() is False
    assert kafka.down() is False


def test_stale_pid_file_of_an_exited_process(kafka: LocalKafka) -> None:
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    kafka.broker_dir.mkdir(parents=True)
    kafka.pid_file.write_text(f"{exited.pid}\n")

    assert kafka.status().running is False
    assert kafka.status().pid is None
    assert kafka.down() is False
    assert not kafka.pid_file.exists()


def test_pid_reused_by_a_non_java_process_is_neither_trusted_nor_killed(
    kafka: LocalKafka, processes: list[subprocess.Popen[bytes]]
) -> None:
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    processes.append(stranger)
    kafka.broker_dir.mkdir(parents=True)
    kafka.pid_file.write_text(str(stranger.pid))

    assert kafka.status().pid is None
    assert kafka.down() is False
    assert stranger.poll() is None, "down() must not signal a process that is not our broker"
    assert not kafka.pid_file.exists()


def test_pid_of_another_brokers_process_is_not_ours(
    kafka: LocalKafka, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    other_config = tmp_path / "other" / "server.properties"
    other = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "kafka.Kafka", str(other_config)]
    )
    processes.append(other)
    kafka.broker_dir.mkdir(parents=True)
    kafka.pid_file.write_text(str(other.pid))

    assert kafka.status().pid is None
    assert kafka.down() is False
    assert other.poll() is None


def test_a_silent_broker_process_is_reported_not_running_and_down_stops_it(
    kafka: LocalKafka, processes: list[subprocess.Popen[bytes]]
) -> None:
    # Same command-line shape as a real broker for this config, but it never listens.
    silent = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "kafka.Kafka", str(kafka.config_file)]
    )
    processes.append(silent)
    kafka.broker_dir.mkdir(parents=True)
    kafka.pid_file.write_text(str(silent.pid))

    status = kafka.status()
    assert status.running is False
    assert status.pid == silent.pid

    assert kafka.down(timeout=5) is True
    assert silent.wait(timeout=5) is not None
    assert not kafka.pid_file.exists()
    assert kafka.down() is False


# -- missing tools --------------------------------------------------------------------------------


@pytest.mark.usefixtures("empty_path")
def test_install_without_java_and_maven_says_what_to_install(kafka: LocalKafka) -> None:
    with pytest.raises(KafkaInstallError) as caught:
        kafka.install()

    message = str(caught.value)
    assert "java and mvn not found on PATH" in message
    assert "Java 17" in message and "Maven" in message
    assert caught.value.code == "kafka_install_failed"
    assert isinstance(caught.value, BrokerError)
    assert not kafka.libs_dir.exists()


@pytest.mark.usefixtures("empty_path")
def test_up_without_java_and_maven_fails_before_starting_anything(kafka: LocalKafka) -> None:
    with pytest.raises(KafkaInstallError, match="not found on PATH"):
        kafka.up(timeout=5)

    assert not kafka.pid_file.exists()
    assert kafka.status().running is False


def test_install_without_maven_names_only_maven(
    kafka: LocalKafka, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_java(tmp_path, monkeypatch, "exit 1")

    with pytest.raises(KafkaInstallError) as caught:
        kafka.install()

    assert "mvn not found on PATH" in str(caught.value)
    assert "java and" not in str(caught.value)


@pytest.mark.usefixtures("empty_path")
def test_install_is_a_no_op_when_the_cache_is_complete(kafka: LocalKafka) -> None:
    _fake_cache(kafka)

    assert kafka.install() == kafka.libs_dir  # no Maven needed, none on PATH


@pytest.mark.usefixtures("empty_path")
def test_up_with_cached_jars_but_no_java(kafka: LocalKafka) -> None:
    _fake_cache(kafka)

    with pytest.raises(KafkaInstallError, match="java not found on PATH"):
        kafka.up(timeout=5)


# -- start-up failures ----------------------------------------------------------------------------


def test_port_taken_by_another_process_is_reported(home: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        busy = listener.getsockname()[1]
        kafka = LocalKafka(home=home, port=busy, controller_port=_free_port())

        with pytest.raises(BrokerError, match=rf"127\.0\.0\.1:{busy} \(port\) is already in use"):
            kafka.up(timeout=5)

    assert not kafka.pid_file.exists()


def test_broker_that_dies_at_start_raises_with_its_output(
    kafka: LocalKafka, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_cache(kafka)
    _fake_java(tmp_path, monkeypatch, 'echo "FATAL cannot start; args: $*" >&2; exit 3')

    with pytest.raises(BrokerError) as caught:
        kafka.up(timeout=30)

    message = str(caught.value)
    assert "exited with code 3 before it answered" in message
    assert "FATAL cannot start" in message
    assert "-Xmx768m" in message and "-Xms256m" in message
    assert str(kafka.stdout_file) in message
    assert not kafka.pid_file.exists()
    formats = (tmp_path / "storage-tool-runs").read_text().splitlines()
    assert len(formats) == 1 and "format -t" in formats[0] and str(kafka.config_file) in formats[0]
    assert kafka.status().running is False


def test_small_heap_lowers_the_initial_heap_too(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kafka = LocalKafka(home=home, port=_free_port(), controller_port=_free_port(), heap="128m")
    _fake_cache(kafka)
    _fake_java(tmp_path, monkeypatch, 'echo "args: $*" >&2; exit 1')

    with pytest.raises(BrokerError, match="-Xms128m -Xmx128m"):
        kafka.up(timeout=30)


def test_broker_that_never_answers_is_stopped_after_the_timeout(
    kafka: LocalKafka, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    child_pid_file = _fake_silent_broker(kafka, tmp_path, monkeypatch)

    with pytest.raises(
        BrokerError, match=r"did not answer within 0\.5 s; it was stopped"
    ) as caught:
        kafka.up(timeout=0.5)

    assert "still starting..." in str(caught.value)
    assert not kafka.pid_file.exists()
    assert kafka.down() is False
    child = int(child_pid_file.read_text())
    assert _gone_soon(child), "the broker's whole process group must be stopped"


def _fake_silent_broker(kafka: LocalKafka, tmp_path: Path,
                        monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `java` whose broker prints a line and runs a child that never listens; returns the
    file that will hold the child's pid."""
    sleep = shutil.which("sleep")
    assert sleep is not None
    child_pid_file = tmp_path / "child.pid"
    _fake_cache(kafka)
    _fake_java(
        tmp_path,
        monkeypatch,
        f'echo "still starting..."; {sleep} 60 & echo $! > "{child_pid_file}"; wait',
    )
    return child_pid_file


def _gone_soon(pid: int, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return True
        if stat.rsplit(")", 1)[-1].split()[0] == "Z":  # killed, waiting for init to reap it
            return True
        time.sleep(0.05)
    return False


def test_storage_is_formatted_only_once(
    kafka: LocalKafka, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_cache(kafka)
    _fake_java(tmp_path, monkeypatch, "exit 1")
    kafka.data_dir.mkdir(parents=True)
    (kafka.data_dir / "meta.properties").write_text("cluster.id=kept\n")

    with pytest.raises(BrokerError):
        kafka.up(timeout=30)

    assert (kafka.data_dir / "meta.properties").read_text() == "cluster.id=kept\n"
    assert not (tmp_path / "storage-tool-runs").exists()


def test_a_starting_broker_whose_command_line_reads_back_empty_is_still_ours(
    kafka: LocalKafka, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Seen in the fault suite: /proc/<pid>/cmdline of a starting JVM read back without the
    # main class; up() took the live broker for dead, dropped its pid file and left it
    # running untracked. The process up() started is known by its handle instead.
    import gatepass.kafka_local.manager as manager

    child_pid_file = _fake_silent_broker(kafka, tmp_path, monkeypatch)
    monkeypatch.setattr(manager, "_live_command_line", lambda pid: None)

    with pytest.raises(BrokerError, match=r"did not answer within 1 s; it was stopped"):
        kafka.up(timeout=1)

    assert not kafka.pid_file.exists()
    assert _gone_soon(int(child_pid_file.read_text())), "the started broker must be stopped"
