"""Starts one worker process: create topics, build the app, run until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import sys

from gatepass.config import Settings
from gatepass.logs import configure_logging, faust_logging_config
from gatepass.transport import ensure_topics

__all__ = ["run_worker"]

log = logging.getLogger("gatepass.worker")

def run_worker(settings: Settings) -> None:
    as_json = settings.log_format == "json"
    configure_logging(settings.log_level, json=as_json)  # before anything logs

    from faust.worker import Worker

    from gatepass.worker.app import create_app
    from gatepass.worker.stackdump import dump_stacks

    class _Worker(Worker):
        """faust's Worker, but SIGUSR1 and SIGUSR2 write a stack dump without values."""

        def _on_sigusr1(self) -> None:
            dump_stacks(sys.stderr, self.loop)

        def _on_sigusr2(self) -> None:
            dump_stacks(sys.stderr, self.loop)

    (settings.home / "worker").mkdir(parents=True, exist_ok=True)
    created = ensure_topics(settings)
    if created:
        log.info("created topics: %s", ", ".join(sorted(created)))
    app, _runtime = create_app(settings)
    # mode's Worker clears the root handlers when it starts and applies `logging_config`
    # instead of its colour handler, so faust's and aiokafka's records take the same
    # redacting handler as ours.
    worker = _Worker(app, loglevel=settings.log_level.upper(), quiet=True,
                     redirect_stdouts=False,
                     logging_config=faust_logging_config(settings.log_level, json=as_json))
    # Its terminal spinner would print control characters to stdout (our log file) at
    # levels above INFO; the log line "Ready" replaces it.
    worker.spinner = None
    worker.execute_from_commandline()
