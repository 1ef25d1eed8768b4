"""The bare echo processor: the worker's framework and settings, no decision.

A faust app configured like the Gatepass worker (same broker options, commit cadence,
producer linger and acks, at-least-once) with one agent: for each intent it writes one
verdict-sized record to the verdict topic, the intent id copied into a fixed verdict (built
by the parent from a real ALLOW verdict with its pass). The SDK reads it like any verdict.

    python -m benchmarks.echo      # settings from GATEPASS_* like a worker;
                                   # BENCH_ECHO_TEMPLATE = path of the verdict bytes
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import REPO
from gatepass.config import Settings
from gatepass.transport.faust_consumer import use_short_fetch_wait
from gatepass.worker.process import WorkerProcess

TEMPLATE_ENV = "BENCH_ECHO_TEMPLATE"
ID_AT = 11  # where the intent id starts in an intent or verdict record


def create_echo_app(settings: Settings, template: bytes) -> Any:
    import faust

    # Avro single-object encoding: a 10-byte header (marker, schema fingerprint), then the
    # first field, the intent id: a 36-character string, length byte 0x48 (zigzag 72).
    if template[ID_AT - 1] != 0x48:
        raise ValueError("the verdict template must start with a 36-character intent id")
    head, tail = template[:ID_AT], template[ID_AT + 36:]
    t = settings.topics
    app = faust.App(
        f"{settings.app_id}",
        broker=",".join(f"kafka://{h}" for h in settings.bootstrap.split(",")),
        store="memory://", topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication, key_serializer="raw",
        value_serializer="raw", processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest", broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0, broker_commit_every=1000, broker_commit_interval=1.0,
        producer_linger_ms=0, producer_acks=-1, web_enabled=True, web_bind=settings.web_host,
        web_host=settings.web_host, web_port=settings.web_port,
        datadir=str(settings.home / "echo" / settings.app_id), autodiscover=False,
        table_standby_replicas=0)
    use_short_fetch_wait(app)  # as the worker does
    intents = app.topic(t.intents, partitions=settings.partitions, key_type=bytes,
                        value_type=bytes, key_serializer="raw", value_serializer="raw")

    @app.agent(intents)
    async def echo(stream: Any) -> None:
        async for event in stream.events():
            msg = event.message
            out = head + msg.value[ID_AT:ID_AT + 36] + tail
            await app.producer.send(t.verdicts, msg.key, out, msg.partition, None, None)

    @app.page("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        assigned = len(app.consumer.assignment()) if app.consumer else 0
        ready = assigned > 0 and not app.rebalancing
        return web.json({"ready": ready, "assigned_partitions": assigned},
                        status=200 if ready else 503)

    return app


class EchoProcess(WorkerProcess):
    """The echo app as a child process; readiness, waiting and stopping as for a worker."""

    def __init__(self, settings: Settings, *, log_file: Path, template_file: Path) -> None:
        super().__init__(settings, log_file=log_file)
        self.template_file = template_file

    def start(self) -> EchoProcess:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.settings.to_env(), "PYTHONUNBUFFERED": "1",
               TEMPLATE_ENV: str(self.template_file)}
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.echo"], stdout=log,
                stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=REPO)
        return self


def main() -> None:
    from faust.worker import Worker

    settings = Settings.load()
    template = Path(os.environ[TEMPLATE_ENV]).read_bytes()
    (settings.home / "echo").mkdir(parents=True, exist_ok=True)
    app = create_echo_app(settings, template)
    worker = Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False)
    worker.spinner = None
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
