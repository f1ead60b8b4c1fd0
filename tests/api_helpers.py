"""Helpers for the API tests: a server on a free port, and findings to seed incidents with."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

from agent.api import ApiServer, create_app
from agent.config import Settings, load_settings
from agent.incidents.manager import IncidentManager
from detectors.base import Finding, Kind, Severity
from storage.db import Database
from storage.unit_of_work import UnitOfWork
from streams.events import Position

ADMIN = "admin-token-for-tests"
READER = "read-only-token-for-tests"
T0 = 1_767_225_600.0


def api_settings(db_url: str, **api: object) -> Settings:
    settings = load_settings(environ={"BULWARK_DB_URL": db_url, "BULWARK_API_TOKEN": ADMIN})
    tokens = settings.api.tokens.model_copy(update={"read_only": [READER]})
    tokens = type(tokens).model_validate({"admin": [ADMIN], "read_only": [READER]})
    return settings.model_copy(
        update={"api": settings.api.model_copy(update={"tokens": tokens, **api})}
    )


@dataclass
class Api:
    url: str
    db: Database
    admin: httpx.Client
    reader: httpx.Client
    anonymous: httpx.Client


@contextmanager
def serving(settings: Settings, db: Database, readiness: dict | None = None) -> Iterator[Api]:
    server = ApiServer(create_app(settings, db, readiness), "127.0.0.1", 0)
    server.start()
    url = f"http://127.0.0.1:{server.port}"
    clients = [
        httpx.Client(base_url=url, headers=h, timeout=30)
        for h in ({"Authorization": f"Bearer {ADMIN}"}, {"Authorization": f"Bearer {READER}"}, {})
    ]
    try:
        yield Api(url, db, *clients)
    finally:
        for client in clients:
            client.close()
        server.stop()


def finding(
    model: str,
    kind: Kind,
    subject: str,
    ts: float,
    offset: int,
    severity: Severity = Severity.WARNING,
    value: float = 5.0,
) -> Finding:
    return Finding(
        model=model,
        kind=kind,
        subject=subject,
        severity=severity,
        ts=ts,
        position=Position("seed", 0, offset),
        detector="numeric_drift",
        statistic="cusum",
        value=value,
        threshold=4.0,
        effect_size=0.5,
        support=100,
        title=f"{kind} on {model}.{subject}",
    )


def record(db: Database, findings: list[Finding]) -> None:
    """Findings through the incident manager, as the pipeline records them."""
    with db.session() as session:
        IncidentManager().apply(UnitOfWork(session), findings)
