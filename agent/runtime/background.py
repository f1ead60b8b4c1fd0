"""What a long-running process (`run`, `serve`) runs beside its main work: the scheduled jobs
(Evidently reports, auto-resolve, retention) and the alert dispatcher that drains the outbox.

Any number of processes may run these against one database: jobs are idempotent and the
dispatcher claims outbox rows with a lease, so nothing is sent twice.
"""

from __future__ import annotations

import logging

from agent.alerts.dispatcher import BackgroundDispatcher, Dispatcher
from agent.config import Settings
from agent.runtime.scheduler import build_scheduler
from storage.db import Database

log = logging.getLogger(__name__)


class Background:
    def __init__(self, settings: Settings, db: Database) -> None:
        self.scheduler = build_scheduler(settings, db)
        self.dispatcher = (
            BackgroundDispatcher(Dispatcher(db, settings.alerts))
            if settings.alerts.channels
            else None
        )

    def start(self) -> Background:
        self.scheduler.start()
        if self.dispatcher is not None:
            self.dispatcher.start()
        log.info(
            "background: %d scheduled job(s), alert dispatcher %s",
            len(self.scheduler.get_jobs()),
            "on" if self.dispatcher is not None else "off (no channel configured)",
        )
        return self

    def stop(self) -> None:
        self.scheduler.shutdown(wait=False)
        if self.dispatcher is not None:
            self.dispatcher.stop()
