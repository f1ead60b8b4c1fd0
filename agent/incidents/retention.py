"""The retention job: prunes what piles up, never anything of an open incident."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from agent.config import RetentionSettings
from storage.db import Database
from storage.queries import Repository

log = logging.getLogger(__name__)


def prune(db: Database, retention: RetentionSettings, now: float | None = None) -> dict[str, int]:
    """Deletes evidence of resolved incidents, dead letters and reports (rows and HTML files)
    older than their configured ages (wall clock: retention is about storage, not about what
    the events say). Open incidents are never touched."""
    now = time.time() if now is None else now

    def cutoff(age: float) -> float | None:
        return now - age if age > 0 else None

    deleted, html_paths = db.retrying(
        lambda: Repository(db).prune(
            cutoff(retention.evidence), cutoff(retention.dead_letters), cutoff(retention.reports)
        )
    )
    for path in html_paths:
        Path(path).unlink(missing_ok=True)
    if any(deleted.values()):
        log.info("retention pruned %s", deleted)
    return deleted
