"""Install, start, stop and inspect a single-node KRaft Kafka broker on this machine.

The broker is fetched once from Maven Central (Java and Maven are the only prerequisites) into
``<dist_dir>/<version>/libs`` and run as a detached ``java kafka.Kafka`` process whose files
live under ``<home>/brokers/<port>/``, so brokers on different ports never disturb each other.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from gatepass.errors import BrokerError, ConfigError, KafkaInstallError

__all__ = ["KAFKA_VERSION", "BrokerStatus", "LocalKafka"]

KAFKA_VERSION = "3.9.1"
"""Pinned broker version: the 3.9 line still speaks the old protocol versions aiokafka uses."""

HOST = "127.0.0.1"
DEFAULT_HEAP = "768m"
MIN_HEAP = "256m"
INSTALL_TIMEOUT = 900.0
FORMAT_TIMEOUT = 120.0
LOG_TAIL_LINES = 30
POLL_INTERVAL = 0.1
PROBE_TIMEOUT = 1.0

# The broker's main class: /proc/<pid>/cmdline must contain it (and our config file) before
# we believe a pid file, since pids are reused.
BROKER_MAIN_CLASS = "kafka.Kafka"
_SCALA_BINARY = "2.13"

_HEAP_RE = re.compile(r"^([1-9][0-9]*)([kKmMgG]?)$")
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_VERSION_RE = re.compile(r"^[0-9]+(\.[0-9]+)*(-[0-9A-Za-z.]+)?$")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_PACKAGE = "gatepass.kafka_local"  # where pom.xml and log4j.properties ship

# Brokers started by this Python process, so any LocalKafka for the same port can reap
# the child on down() instead of leaving a zombie behind.
_STARTED: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class BrokerStatus:
    """What a LocalKafka knows about its broker; `running` means it answered a metadata request."""

    running: bool
    pid: int | None
    bootstrap: str
    version: str
    home: Path
    log_file: Path
    data_dir: Path


class LocalKafka:
    """One local broker, identified by its home and PLAINTEXT port.

    Example::

        kafka = LocalKafka(home=Path("~/.gatepass"), port=9092)
        kafka.up()          # installs on first use, then starts and waits until it answers
        kafka.status()      # BrokerStatus(running=True, bootstrap="127.0.0.1:9092", ...)
        kafka.down()
    """

    def __init__(
        self,
        *,
        home: Path,
        port: int = 9092,
        controller_port: int = 9093,
        version: str = KAFKA_VERSION,
        heap: str = DEFAULT_HEAP,
        dist_dir: Path | None = None,
    ) -> None:
        for key, value in (("port", port), ("controller_port", controller_port)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
                raise ConfigError(key, f"must be a TCP port between 1 and 65535, got {value!r}")
        if port == controller_port:
            raise ConfigError("controller_port", f"must differ from port ({port})")
        if not _VERSION_RE.match(version):
            raise ConfigError("version", f"not a Kafka version: {version!r}")
        if not _HEAP_RE.match(heap):
            raise ConfigError("heap", f"expected a JVM size such as 512m or 1g, got {heap!r}")
        self.home = Path(home).expanduser().resolve()
        self.port = port
        self.controller_port = controller_port
        self.version = version
        self.heap = heap
        self.dist_dir = (
            Path(dist_dir).expanduser().resolve() if dist_dir is not None else self.home / "dist"
        )

    def __repr__(self) -> str:
        return f"LocalKafka(home={str(self.home)!r}, port={self.port}, version={self.version!r})"

    # -- where things live ---------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def libs_dir(self) -> Path:
        """The cached jars; shared by every broker that uses the same dist_dir and version."""
        return self.dist_dir / self.version / "libs"

    @property
    def broker_dir(self) -> Path:
        return self.home / "brokers" / str(self.port)

    @property
    def config_file(self) -> Path:
        return self.broker_dir / "server.properties"

    @property
    def log4j_file(self) -> Path:
        return self.broker_dir / "log4j.properties"

    @property
    def data_dir(self) -> Path:
        return self.broker_dir / "data"

    @property
    def logs_dir(self) -> Path:
        return self.broker_dir / "logs"

    @property
    def log_file(self) -> Path:
        return self.logs_dir / "server.log"

    @property
    def stdout_file(self) -> Path:
        """The JVM's own stdout/stderr: start-up failures that happen before log4j is set up."""
        return self.logs_dir / "stdout.log"

    @property
    def pid_file(self) -> Path:
        return self.broker_dir / "kafka.pid"

    # -- install ---------------------------------------------------------------------------

    def install(self) -> Path:
        """Fetch the broker's jars into the shared cache unless they are already there."""
        if self._installed():
            return self.libs_dir
        missing = [tool for tool in ("java", "mvn") if shutil.which(tool) is None]
        if missing:
            raise KafkaInstallError(_missing_tools_message(missing, self.version))
        version_dir = self.libs_dir.parent
        version_dir.mkdir(parents=True, exist_ok=True)
        with _locked(version_dir / ".install.lock"):
            if self._installed():  # another process finished while we waited for the lock
                return self.libs_dir
            # Holding the lock, any staging dir left is from an interrupted install.
            for leftover in version_dir.glob(".staging-*"):
                shutil.rmtree(leftover, ignore_errors=True)
            staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=version_dir))
            try:
                self._fetch(staging)
                if self.libs_dir.exists():  # damaged cache (its Kafka jar is gone): replace it
                    shutil.rmtree(self.libs_dir)
                # One rename publishes the complete set of jars: no half-installed cache.
                os.replace(staging / "libs", self.libs_dir)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return self.libs_dir

    def _installed(self) -> bool:
        return (self.libs_dir / f"kafka_{_SCALA_BINARY}-{self.version}.jar").is_file()

    def _fetch(self, staging: Path) -> None:
        pom = staging / "pom.xml"
        pom.write_bytes(resources.files(_PACKAGE).joinpath("pom.xml").read_bytes())
        libs = staging / "libs"
        command = [
            "mvn", "-q", "-B", "-Dstyle.color=never", "-f", str(pom),
            f"-Dkafka.version={self.version}",
            "dependency:copy-dependencies", f"-DoutputDirectory={libs}", "-DincludeScope=runtime",
        ]  # fmt: skip
        try:
            done = subprocess.run(
                command,
                cwd=staging,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=INSTALL_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            output = _tail_text(_as_text(exc.output), 40)
            raise KafkaInstallError(
                f"fetching Kafka {self.version} with Maven took more than {INSTALL_TIMEOUT:.0f} s;"
                f" last Maven output:\n{output}"
            ) from exc
        output = _tail_text(_as_text(done.stdout), 40)
        if done.returncode != 0:
            raise KafkaInstallError(
                f"Maven could not fetch Kafka {self.version} (exit code {done.returncode});"
                f" check the network and the version. Last Maven output:\n{output}"
            )
        if not (libs / f"kafka_{_SCALA_BINARY}-{self.version}.jar").is_file():
            raise KafkaInstallError(
                f"Maven finished but kafka_{_SCALA_BINARY}-{self.version}.jar is missing from"
                f" {libs}. Maven output:\n{output}"
            )

    # -- configuration -------------------------------------------------------------------------

    def server_properties(self) -> dict[str, str]:
        """The broker configuration: one combined broker+controller node, loopback only."""
        return {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{HOST}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{HOST}:{self.port},CONTROLLER://{HOST}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # Topics are created on purpose (with their partition counts), never by a typo.
            "auto.create.topics.enable": "false",
        }

    def write_config(self) -> Path:
        """Write server.properties and log4j.properties into the broker dir; return the former."""
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lines = [f"# Written by gatepass.kafka_local for {self!r}; rewritten on every up()."]
        properties = self.server_properties()
        lines += [f"{key}={_escape_property(value)}" for key, value in properties.items()]
        _write_atomic(self.config_file, "\n".join(lines) + "\n")
        log4j = resources.files(_PACKAGE).joinpath("log4j.properties").read_text("utf-8")
        _write_atomic(self.log4j_file, log4j)
        return self.config_file

    # -- lifecycle -----------------------------------------------------------------------------

    def status(self) -> BrokerStatus:
        """Report whether this broker runs and answers; never changes anything."""
        pid = self._read_pid()
        if pid is not None and not self._is_our_broker(pid):
            pid = None  # stale pid file: the process is gone or the pid now belongs to another
        running = pid is not None and _probe_metadata(HOST, self.port, PROBE_TIMEOUT) is True
        return self._status(running=running, pid=pid)

    def up(self, *, timeout: float = 90) -> BrokerStatus:
        """Start the broker (installing it first if needed) and wait until it answers.

        Idempotent: a broker that already runs is left alone and its status returned.
        """
        self.broker_dir.mkdir(parents=True, exist_ok=True)
        with _locked(self.broker_dir / ".lock"):
            pid = self._read_pid()
            if pid is not None and self._is_our_broker(pid):
                # Running, or still starting after another up(): wait for it, never start twice.
                return self._wait_until_ready(pid, timeout, started_here=False)
            self.pid_file.unlink(missing_ok=True)
            self._check_ports_free()
            self.install()
            java = shutil.which("java")
            if java is None:
                raise KafkaInstallError(_missing_tools_message(["java"], self.version))
            self.write_config()
            if not (self.data_dir / "meta.properties").is_file():
                self._format_storage(java)
            pid = self._start(java)
            return self._wait_until_ready(pid, timeout, started_here=True)

    def down(self, *, timeout: float = 30) -> bool:
        """Stop the broker: SIGTERM for a controlled shutdown, SIGKILL after `timeout` seconds.

        Returns whether a broker was stopped; calling it again is harmless.
        """
        if not self.broker_dir.is_dir():
            return False
        with _locked(self.broker_dir / ".lock"):
            pid = self._read_pid()
            stopped = False
            if pid is not None and self._is_our_broker(pid):
                self._stop(pid, timeout)
                stopped = True
            self.pid_file.unlink(missing_ok=True)
            return stopped

    # -- internals -----------------------------------------------------------------------------

    def _status(self, *, running: bool, pid: int | None) -> BrokerStatus:
        return BrokerStatus(
            running=running,
            pid=pid,
            bootstrap=self.bootstrap,
            version=self.version,
            home=self.home,
            log_file=self.log_file,
            data_dir=self.data_dir,
        )

    def _java_options(self) -> list[str]:
        return [
            f"-Dlog4j.configuration={self.log4j_file.as_uri()}",
            f"-Dkafka.logs.dir={self.logs_dir}",
            "-Djava.awt.headless=true",
            "-cp",
            # Java expands "dir/*" to every jar in dir itself; no shell involved.
            f"{self.libs_dir}{os.sep}*",
        ]

    def _format_storage(self, java: str) -> None:
        command = [
            java, "-Xmx256m", *self._java_options(), "kafka.tools.StorageTool",
            "format", "-t", _random_cluster_id(), "-c", str(self.config_file),
        ]  # fmt: skip
        try:
            done = subprocess.run(
                command,
                cwd=self.broker_dir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=FORMAT_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise BrokerError(
                f"formatting the KRaft storage in {self.data_dir} took more than"
                f" {FORMAT_TIMEOUT:.0f} s"
            ) from exc
        if done.returncode != 0:
            raise BrokerError(
                f"formatting the KRaft storage in {self.data_dir} failed (exit code"
                f" {done.returncode}):\n{_tail_text(_as_text(done.stdout), LOG_TAIL_LINES)}"
            )

    def _start(self, java: str) -> int:
        command = [
            java, f"-Xms{_min_heap(self.heap)}", f"-Xmx{self.heap}", "-XX:+ExitOnOutOfMemoryError",
            *self._java_options(), BROKER_MAIN_CLASS, str(self.config_file),
        ]  # fmt: skip
        with self.stdout_file.open("ab") as out:
            out.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S%z')} starting {self!r}\n".encode())
            out.flush()
            # A new session: the broker outlives this process and ignores its terminal's ^C.
            process = subprocess.Popen(
                command,
                cwd=self.broker_dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _STARTED[process.pid] = process
        _write_atomic(self.pid_file, f"{process.pid}\n")
        return process.pid

    def _wait_until_ready(self, pid: int, timeout: float, *, started_here: bool) -> BrokerStatus:
        deadline = time.monotonic() + timeout
        while True:
            if not self._is_our_broker(pid):
                self.pid_file.unlink(missing_ok=True)
                code = _reap(pid)
                how = f"exited with code {code}" if code is not None else "exited"
                raise BrokerError(
                    f"the Kafka broker for {self.bootstrap} {how} before it answered."
                    f"{self._log_tails()}"
                )
            if _probe_metadata(HOST, self.port, PROBE_TIMEOUT) is True:
                return self._status(running=True, pid=pid)
            if time.monotonic() >= deadline:
                break
            time.sleep(POLL_INTERVAL)
        if started_here:
            self._stop(pid, 10)
            self.pid_file.unlink(missing_ok=True)
            action = "it was stopped"
        else:
            action = f"it is still running as pid {pid}; stop it with down()"
        raise BrokerError(
            f"the Kafka broker for {self.bootstrap} did not answer within {timeout:g} s;"
            f" {action}.{self._log_tails()}"
        )

    def _stop(self, pid: int, timeout: float) -> None:
        _signal(pid, signal.SIGTERM)
        if _wait_gone(pid, timeout, self._is_our_broker):
            return
        _signal(pid, signal.SIGKILL)
        if not _wait_gone(pid, 10, self._is_our_broker):
            raise BrokerError(f"the Kafka broker (pid {pid}) survived SIGKILL")

    def _read_pid(self) -> int | None:
        try:
            text = self.pid_file.read_text().strip()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return int(text) if text.isdigit() and int(text) > 0 else None

    def _is_our_broker(self, pid: int) -> bool:
        """True if `pid` is alive and is the kafka.Kafka process reading our config file.

        A broker this process started is known by its handle: alive is enough. Its command
        line in /proc was seen to read back without the main class while the JVM went on
        starting; up() then took the broker for dead, dropped its pid file and left it
        running untracked (and a caller cleaning up removed the data under it).
        """
        process = _STARTED.get(pid)
        if process is not None and process.poll() is None:
            return True
        command = _live_command_line(pid)
        return (
            command is not None
            and BROKER_MAIN_CLASS in command.split()
            and str(self.config_file) in command
        )

    def _check_ports_free(self) -> None:
        for key, port in (("port", self.port), ("controller_port", self.controller_port)):
            if _port_is_free(HOST, port):
                continue
            if _probe_metadata(HOST, port, PROBE_TIMEOUT) is True:
                who = f"a Kafka broker that {self.pid_file} does not track"
            else:
                who = "another process"
            raise BrokerError(
                f"{HOST}:{port} ({key}) is already in use by {who}; stop it or choose another"
                f" {key}."
            )

    def _log_tails(self) -> str:
        parts = []
        for path in (self.log_file, self.stdout_file):
            tail = _tail_file(path, LOG_TAIL_LINES)
            if tail.strip():
                parts.append(f"\n--- last lines of {path}:\n{tail}")
        return "".join(parts) or f"\n(no output in {self.logs_dir})"


# -- helpers -------------------------------------------------------------------------------------


def _missing_tools_message(missing: list[str], version: str) -> str:
    hints = {
        "java": "java (a Java 17+ runtime, e.g. `apt-get install openjdk-17-jre-headless`"
        " or `brew install openjdk@17`) runs the broker",
        "mvn": f"mvn (Apache Maven, e.g. `apt-get install maven` or `brew install maven`)"
        f" fetches Kafka {version} from Maven Central once",
    }
    listed = "; ".join(hints[tool] for tool in missing)
    return (
        f"cannot install the local Kafka broker: {' and '.join(missing)} not found on PATH."
        f" {listed}. Alternatively run Kafka yourself (e.g. `docker compose up kafka`)"
        " and point Gatepass at its bootstrap address."
    )


def _random_cluster_id() -> str:
    """A KRaft cluster id as `kafka-storage random-uuid` prints it, without starting a JVM."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        if not text.startswith("-"):  # Kafka rejects ids that look like a command-line flag
            return text


def _min_heap(heap: str) -> str:
    """-Xms: the usual 256m, but never above -Xmx (the JVM refuses to start then)."""
    return heap if _heap_bytes(heap) < _heap_bytes(MIN_HEAP) else MIN_HEAP


def _heap_bytes(heap: str) -> int:
    match = _HEAP_RE.match(heap)
    if match is None:
        raise ValueError(heap)
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def _escape_property(value: str) -> str:
    # java.util.Properties treats a backslash as an escape (Windows paths, odd home dirs).
    return value.replace("\\", "\\\\")


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock: concurrent up()/down()/install() take turns."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _live_command_line(pid: int) -> str | None:
    """The command line of a live (non-zombie) process, or None if there is none."""
    proc = Path("/proc") / str(pid)
    if Path("/proc/self").is_dir():
        try:
            for attempt in range(3):
                stat = (proc / "stat").read_text()
                if stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
                    return None
                cmdline = (proc / "cmdline").read_bytes()
                if cmdline or attempt == 2:
                    return cmdline.replace(b"\0", b" ").decode(errors="replace")
                time.sleep(0.02)  # a live process reads back empty only in passing
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return None
    # No procfs (macOS): ask ps.
    try:
        done = subprocess.run(
            ["ps", "-o", "stat=,command=", "-p", str(pid)],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    state, _, command = done.stdout.strip().partition(" ")
    if done.returncode != 0 or not state or state.startswith("Z"):
        return None
    return command


def _signal(pid: int, signum: signal.Signals) -> None:
    # The broker leads its own session (start_new_session), so signal its whole group.
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)


def _wait_gone(pid: int, timeout: float, alive: Callable[[int], bool]) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        _reap(pid)
        if not alive(pid):
            _reap(pid)
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_INTERVAL)


def _reap(pid: int) -> int | None:
    """Collect a broker this process started once it has exited; its exit code, if known."""
    process = _STARTED.get(pid)
    if process is None:
        return None
    code = process.poll()
    if code is not None:
        del _STARTED[pid]
    return code


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Like the broker's own listener: ignore TIME_WAIT leftovers of a previous run.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _probe_metadata(host: str, port: int, timeout: float) -> bool | None:
    """Send a Kafka Metadata request (v4, no topics) and check the answer.

    None: nothing accepts connections there; False: something does, but no Kafka answer
    arrived (not Kafka, or a broker still starting); True: a Kafka broker answered.
    A hand-written request keeps the manager free of client threads and log noise.
    """
    correlation_id = 0x6761_7465  # "gate"
    client_id = b"gatepass-kafka-local"
    body = struct.pack(">hhih", 3, 4, correlation_id, len(client_id)) + client_id
    body += struct.pack(">ib", 0, 0)  # topics: empty array; allow_auto_topic_creation: false
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError:
        return None
    try:
        with sock:
            sock.sendall(struct.pack(">i", len(body)) + body)
            header = _recv_exactly(sock, 4)
            (size,) = struct.unpack(">i", header)
            if not 12 <= size <= 1 << 20:
                return False
            payload = _recv_exactly(sock, size)
    except OSError:
        return False
    # Response: correlation_id, throttle_time_ms, brokers array length (at least our node).
    answered_id, _throttle, broker_count = struct.unpack_from(">iii", payload)
    return answered_id == correlation_id and broker_count >= 1


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("connection closed mid-response")
        chunks += chunk
    return bytes(chunks)


def _as_text(output: bytes | str | None) -> str:
    if output is None:
        return ""
    text = output if isinstance(output, str) else output.decode("utf-8", errors="replace")
    return _ANSI_RE.sub("", text)  # Maven colours some lines even in batch mode


def _tail_text(text: str, lines: int) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _tail_file(path: Path, lines: int) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            return _tail_text(handle.read().decode("utf-8", errors="replace"), lines)
    except OSError:
        return ""
