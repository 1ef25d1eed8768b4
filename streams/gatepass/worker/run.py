"""Starts one worker process: create topics, build the app, run until SIGTERM/SIGINT."""

from __future__ import annotations

import logging

from gatepass.config import Settings
from gatepass.transport import ensure_topics

__all__ = ["run_worker"]

log = logging.getLogger("gatepass.worker")


def run_worker(settings: Settings) -> None:
    from faust.worker import Worker

    from gatepass.worker.app import create_app

    (settings.home / "worker").mkdir(parents=True, exist_ok=True)
    created = ensure_topics(settings)
    if created:
        log.info("created topics: %s", ", ".join(sorted(created)))
    app, _runtime = create_app(settings)
    worker = Worker(app, loglevel=settings.log_level.upper(), quiet=True,
                    redirect_stdouts=False)
    worker.execute_from_commandline()
