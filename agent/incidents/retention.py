"""The retention job: prunes what piles up, never anything of an open incident."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from agent.config import RetentionSettings
from storage.db import Database
from storage.unit_of_work import UnitOfWork, run

log = logging.getLogger(__name__)


def prune(db: Database, retention: RetentionSettings, now: float | None = None) -> dict[str, int]:
    """Deletes evidence of resolved incidents, dead letters and reports (rows and HTML files)
    older than their configured ages (wall clock: retention is about storage, not about what
    the events say). Open incidents are never touched."""
    now = time.time() if now is None else now

    def cutoff(age: float) -> float | None:
        return now - age if age > 0 else None

    deleted, html_paths = run(
        db,
        lambda uow: _prune(
            uow,
            cutoff(retention.evidence),
            cutoff(retention.dead_letters),
            cutoff(retention.reports),
        ),
    )
    for path in html_paths:
        Path(path).unlink(missing_ok=True)
    if any(deleted.values()):
        log.info("retention pruned %s", deleted)
    return deleted


def _prune(
    uow: UnitOfWork,
    evidence_before: float | None,
    dead_letters_before: float | None,
    reports_before: float | None,
) -> tuple[dict[str, int], list[str]]:
    """One transaction: the counts deleted and the HTML paths of the deleted reports (None
    keeps that kind)."""
    deleted: dict[str, int] = {"evidence": 0, "dead_letters": 0, "reports": 0}
    html_paths: list[str] = []
    if evidence_before is not None:
        deleted["evidence"] = uow.incidents.prune_evidence(evidence_before)
    if dead_letters_before is not None:
        deleted["dead_letters"] = uow.dead_letters.prune(dead_letters_before)
    if reports_before is not None:
        deleted["reports"], html_paths = uow.reports.prune(reports_before)
    return deleted, html_paths
