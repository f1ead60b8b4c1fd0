"""/healthz (liveness, no token), /readyz (every dependency answers) and /metrics
(Prometheus text format)."""

import logging
from collections.abc import Callable
from typing import Any

from litestar import Response, get
from litestar.handlers import HTTPRouteHandler
from sqlalchemy.exc import SQLAlchemyError

from agent.observability import metrics
from storage.queries import Repository

log = logging.getLogger("agent.api")

ReadinessCheck = Callable[[], None]  # raises (with a short message) when not ready


def health_routes(repo: Repository, checks: dict[str, ReadinessCheck]) -> list[HTTPRouteHandler]:
    @get("/healthz", opt={"public": True}, security=[{}], sync_to_thread=False)
    def healthz() -> dict[str, str]:
        """200 while the process lives; needs no token."""
        return {"status": "ok"}

    @get("/readyz", sync_to_thread=True)
    def readyz() -> Response[dict[str, Any]]:
        """200 when every dependency answers (database; Kafka for `run`), else 503."""
        results: dict[str, str] = {}
        for name, check in checks.items():
            try:
                check()
                results[name] = "ok"
            except Exception as exc:  # any failure means: not ready, and say which
                results[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                log.warning("readiness check %s failed: %s", name, results[name])
        ready = all(v == "ok" for v in results.values())
        return Response(
            {"status": "ready" if ready else "unready", "checks": results},
            status_code=200 if ready else 503,
        )

    @get("/metrics", media_type="text/plain; version=0.0.4", sync_to_thread=True)
    def prometheus() -> str:
        """Prometheus text format: this process's pipeline counters and database gauges."""
        try:
            metrics.OPEN_INCIDENTS.replace(
                {(m, k, s): float(n) for m, k, s, n in repo.open_incident_counts()}
            )
            metrics.DEAD_LETTERS_STORED.set(value=float(repo.count_dead_letters()))
        except SQLAlchemyError as exc:  # a database outage: the process's own metrics still
            log.debug("database gauges skipped: %s", exc)  # answer (and say not ready)
            metrics.OPEN_INCIDENTS.clear()
            metrics.DEAD_LETTERS_STORED.clear()
        return metrics.REGISTRY.render()

    return [healthz, readyz, prometheus]
