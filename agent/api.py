"""The HTTP API (contract section 6): incident history, lifecycle, health, metrics, a web page.

`create_app` builds a Litestar app from Settings and a Database, so tests and the daemon can
serve it wherever they like (`ApiServer` runs it in a thread). Every endpoint but /healthz and
the static web page shell needs a bearer token; admin tokens may change incidents, read-only
tokens may only read. Tokens are compared in constant time and never logged.

No `from __future__ import annotations` here: Litestar reads the handlers' annotations at
runtime to validate parameters and to write the OpenAPI spec.
"""

import base64
import binascii
import hmac
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypedDict

import uvicorn
from litestar import Litestar, MediaType, Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.exceptions import (
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
    ValidationException,
)
from litestar.handlers import BaseRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from sqlalchemy.exc import SQLAlchemyError

from agent import distributions, metrics
from agent.config import Settings
from agent.incidents import lifecycle
from agent.samples import Sample
from storage.contract import EvidenceJSON as EvidenceOut
from storage.contract import IncidentOut, incident_out
from storage.contract import NoteJSON as NoteOut
from storage.db import Database
from storage.models import Incident
from storage.queries import IncidentFilter, Repository
from streams.decode import InvalidEvent, parse_ts

log = logging.getLogger(__name__)

WEB_PAGE = Path(__file__).resolve().parent / "web" / "index.html"
MAX_ID = 2**31 - 1  # larger ids cannot exist (and overflow the database's integer)
MAX_TEXT = 500  # longest filter value worth looking up

ReadinessCheck = Callable[[], None]  # raises (with a short message) when not ready

Status = Literal["open", "acknowledged", "resolved"]
SeverityName = Literal["info", "warning", "critical"]


# --- response shapes (for the OpenAPI spec; the handlers return plain dicts of these) -------


class IncidentPage(TypedDict):
    items: list[IncidentOut]
    next_cursor: str | None


class IncidentDetail(IncidentOut):
    resolved_at: float | None
    evidence: list[EvidenceOut]
    notes: list[NoteOut]
    links: dict[str, Any]


class ModelSummary(TypedDict):
    model: str
    open_incidents: dict[str, int]
    last_event_ts: float | None
    events_seen: dict[str, int]
    dead_letters: int


class ModelList(TypedDict):
    items: list[ModelSummary]


class DeadLetterOut(TypedDict):
    id: int
    received_at: float
    source: str
    partition: int
    offset: int
    reason: str
    payload: str


class Role(TypedDict):
    role: str


class PerformancePoint(TypedDict):
    model: str
    model_version: str
    window_start: float
    window_end: float
    metric: str
    estimated: bool
    value: float
    ci_low: float | None
    ci_high: float | None
    n: int


class PerformancePage(TypedDict):
    items: list[PerformancePoint]


class DeadLetterPage(TypedDict):
    items: list[DeadLetterOut]
    next_cursor: str | None


@dataclass
class StatusChangeBody:
    """Optional body of acknowledge / resolve / reopen."""

    author: str | None = None  # who did it; default: the kind of token used
    note: str | None = None  # why; recorded as the note of the change


@dataclass
class NoteBody:
    text: str
    author: str | None = None


# --- auth ---------------------------------------------------------------------------------


class TokenSet:
    """The configured tokens, as bytes for `hmac.compare_digest`."""

    def __init__(self, settings: Settings) -> None:
        tokens = settings.api.tokens
        self.admin = [t.get_secret_value().encode() for t in tokens.admin]
        self.read_only = [t.get_secret_value().encode() for t in tokens.read_only]

    def role(self, presented: bytes) -> str | None:
        """'admin', 'read' or None. Compares against every token so the time taken does not
        say which (or whether any) token matched."""
        role = None
        for token in self.read_only:
            if hmac.compare_digest(presented, token):
                role = "read"
        for token in self.admin:
            if hmac.compare_digest(presented, token):
                role = "admin"
        return role


def _unauthorized() -> NotAuthorizedException:
    return NotAuthorizedException(detail="Unauthorized", headers={"WWW-Authenticate": "Bearer"})


def _auth_guard(tokens: TokenSet) -> Callable[[ASGIConnection, BaseRouteHandler], None]:
    def guard(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
        if handler.opt.get("public"):
            return
        header = connection.headers.get("authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise _unauthorized()
        role = tokens.role(presented.strip().encode("utf-8", "surrogateescape"))
        if role is None:
            raise _unauthorized()
        if handler.opt.get("admin") and role != "admin":
            raise PermissionDeniedException(detail="this token may only read; use an admin token")
        connection.scope["bulwark_role"] = role  # type: ignore[typeddict-unknown-key]

    return guard


# --- input --------------------------------------------------------------------------------


def _text(name: str, value: str | None, limit: int = MAX_TEXT) -> str | None:
    """A query or body string: bounded, and without NUL (PostgreSQL text cannot hold it)."""
    if value is None:
        return None
    if "\x00" in value:
        raise ValidationException(detail=f"{name} must not contain NUL characters")
    if len(value) > limit:
        raise ValidationException(detail=f"{name} is longer than {limit} characters")
    return value


def _time(name: str, value: str | None) -> float | None:
    """Epoch seconds or ISO-8601 with a zone, like event `ts`."""
    if value is None or value == "":
        return None
    try:
        ts = float(value)
    except ValueError:
        try:
            ts = parse_ts(value)
        except InvalidEvent:
            raise ValidationException(
                detail=f"{name} must be epoch seconds or ISO-8601 with a zone, not {value!r:.60}"
            ) from None
    if not math.isfinite(ts):
        raise ValidationException(detail=f"{name} must be a finite number")
    return ts


def encode_cursor(*parts: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(parts).encode()).decode().rstrip("=")


def _decode_cursor(value: str | None, shape: tuple[type, ...]) -> list[Any] | None:
    if value is None or value == "":
        return None
    try:
        padded = value + "=" * (-len(value) % 4)
        parts = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        ok = isinstance(parts, list) and len(parts) == len(shape)
        ok = ok and all(
            isinstance(p, t) and not isinstance(p, bool) for p, t in zip(parts, shape, strict=False)
        )
        if ok and all(math.isfinite(p) for p in parts):
            return parts
    except (ValueError, UnicodeError, binascii.Error, TypeError, OverflowError):
        pass
    raise ValidationException(detail="cursor is not one this API returned")


def _incident_id(value: int) -> int:
    if not 1 <= value <= MAX_ID:
        raise NotFoundException(detail=f"no incident with id {value}")
    return value


def _incident_json(incident: Incident) -> IncidentOut:
    return incident_out(incident)


def _author(request: Request, given: str | None) -> str:
    author = _text("author", given, 200)
    if author and author.strip():
        return author.strip()
    return f"{request.scope.get('bulwark_role', 'api')} token"


# --- the app ------------------------------------------------------------------------------


def create_app(
    settings: Settings,
    db: Database,
    readiness: dict[str, ReadinessCheck] | None = None,
) -> Litestar:
    """The API app. `readiness` adds checks to /readyz beyond the database (e.g. Kafka)."""
    repo = Repository(db)
    checks: dict[str, ReadinessCheck] = {"database": repo.ping, **(readiness or {})}
    max_page = settings.api.max_page

    def lifecycle_error(_request: Request, exc: Exception) -> Response:
        status = 404 if isinstance(exc, lifecycle.NotFound) else 409
        if type(exc) is lifecycle.LifecycleError:
            status = 400
        return Response({"status_code": status, "detail": str(exc)}, status_code=status)

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

    @get("/api/incidents", sync_to_thread=True)
    def list_incidents(
        model: FromQuery[str | None] = None,
        kind: FromQuery[str | None] = None,
        subject: FromQuery[str | None] = None,
        status: FromQuery[Status | None] = None,
        severity: FromQuery[SeverityName | None] = None,
        since: Annotated[
            str | None, QueryParameter(description="latest evidence at or after (epoch s or ISO)")
        ] = None,
        until: Annotated[
            str | None, QueryParameter(description="first evidence at or before (epoch s or ISO)")
        ] = None,
        roots: Annotated[
            bool,
            QueryParameter(
                description="true: only root incidents (parent_id null), as `incidents list`"
            ),
        ] = False,
        limit: Annotated[int, QueryParameter(ge=1, le=max_page)] = 100,
        cursor: Annotated[
            str | None, QueryParameter(description="next_cursor of the previous page")
        ] = None,
    ) -> IncidentPage:
        """Incidents, newest (latest evidence) first, a page at a time."""
        where = IncidentFilter(
            model=_text("model", model),
            kind=_text("kind", kind),
            subject=_text("subject", subject),
            status=status,
            severity=severity,
            since=_time("since", since),
            until=_time("until", until),
            roots_only=roots,
        )
        after = _decode_cursor(_text("cursor", cursor), (float, int))
        rows = repo.list_incidents(
            where, limit=limit + 1, after=(float(after[0]), int(after[1])) if after else None
        )
        page = rows[:limit]
        next_cursor = encode_cursor(page[-1].last_seen, page[-1].id) if len(rows) > limit else None
        return {"items": [_incident_json(i) for i in page], "next_cursor": next_cursor}

    @get("/api/incidents/{incident_id:int}", sync_to_thread=True)
    def show_incident(incident_id: FromPath[int]) -> IncidentDetail:
        """One incident with its evidence timeline, notes and links."""
        incident = repo.get_incident(_incident_id(incident_id))
        if incident is None:
            raise NotFoundException(detail=f"no incident with id {incident_id}")
        links: dict[str, Any] = {"self": f"/api/incidents/{incident.id}"}
        if incident.previous_id is not None:
            links["previous"] = f"/api/incidents/{incident.previous_id}"
        reports = repo.reports_of_incident(incident.id)
        if reports:
            links["reports"] = [
                {
                    "id": r.id,
                    "window": {"start": r.window_start, "end": r.window_end},
                    "html_path": r.html_path,
                    "html": f"/api/reports/{r.id}/html" if r.html_path else None,
                }
                for r in reports
            ]
        return {
            **_incident_json(incident),
            "resolved_at": incident.resolved_at.timestamp() if incident.resolved_at else None,
            "evidence": [e.to_contract() for e in repo.evidence_of(incident.id)],
            "notes": [n.to_contract() for n in repo.notes_of(incident.id)],
            "links": links,
        }

    def status_handler(name: str, transition: lifecycle.Transition) -> Any:
        def change(
            request: Request,
            incident_id: FromPath[int],
            data: JSONBody[StatusChangeBody | None] = None,
        ) -> IncidentOut:
            body = data or StatusChangeBody()
            incident = lifecycle.change_status(
                db,
                settings.alerts,
                _incident_id(incident_id),
                transition,
                _author(request, body.author),
                _text("note", body.note, lifecycle.NOTE_LIMIT) or "",
            )
            return _incident_json(incident)

        change.__doc__ = (
            f"Marks the incident {transition.action} (admin token); the updated incident."
        )
        return post(
            f"/api/incidents/{{incident_id:int}}/{name}",
            name=name,
            opt={"admin": True},
            sync_to_thread=True,
            status_code=200,
            operation_id=f"{name}Incident",
        )(change)

    @post("/api/incidents/{incident_id:int}/notes", opt={"admin": True}, sync_to_thread=True)
    def add_note(request: Request, incident_id: FromPath[int], data: JSONBody[NoteBody]) -> NoteOut:
        """Adds a note (admin token); answers the note with who wrote it and when."""
        text = _text("text", data.text, lifecycle.NOTE_LIMIT) or ""
        note = lifecycle.add_note(
            db, _incident_id(incident_id), _author(request, data.author), text
        )
        return note.to_contract()

    @get("/api/models", sync_to_thread=True)
    def models() -> ModelList:
        """Per model: open incidents by kind, last event time, events seen, dead letters."""
        summary: dict[str, dict[str, Any]] = {}

        def entry(model: str) -> dict[str, Any]:
            return summary.setdefault(
                model,
                {
                    "model": model,
                    "open_incidents": {},
                    "last_event_ts": None,
                    "events_seen": {"predictions": 0, "labels": 0},
                    "dead_letters": 0,
                },
            )

        for row in repo.model_stats():
            item = entry(row.model)
            item["last_event_ts"] = row.last_event_ts
            item["events_seen"] = {"predictions": row.predictions, "labels": row.labels}
            item["dead_letters"] = row.dead_letters
        for model, kind, _severity, count in repo.open_incident_counts():
            kinds = entry(model)["open_incidents"]
            kinds[kind] = kinds.get(kind, 0) + count
        return {"items": [summary[m] for m in sorted(summary)]}

    @get("/api/token", sync_to_thread=False)
    def token_role(request: Request) -> Role:
        """The presented token's role: `admin` (may change incidents) or `read`."""
        return {"role": str(request.scope.get("bulwark_role", "read"))}

    @get("/api/models/{model:str}/distribution", sync_to_thread=True)
    def distribution(
        model: FromPath[str],
        feature: Annotated[
            str | None, QueryParameter(description="a feature of the model's events")
        ] = None,
        output: Annotated[
            Literal["prediction", "class_proportions", "score"] | None,
            QueryParameter(description="or one of the model's outputs"),
        ] = None,
    ) -> dict[str, Any]:
        """One column's distribution, the stored reference against the recent window (shares
        on common bins or categories, summaries), and its history over the recent window."""
        if (feature is None) == (output is None):
            raise ValidationException(detail="give exactly one of feature and output")
        name = _text("model", model)
        assert name is not None
        recent = Sample.concat(
            [Sample.decode(r.sample) for r in repo.recent_samples(name)]
        ).sorted_by_time()
        if not len(recent):
            raise NotFoundException(detail=f"no recent predictions of model {model!r} stored")
        versions = {v for v in recent.model_versions if v is not None}
        row = repo.find_reference(name, versions.pop() if len(versions) == 1 else None)
        if row is None:
            raise NotFoundException(detail=f"model {model!r} has no reference yet")
        column = _text("feature", feature) if feature is not None else output
        assert column is not None
        try:
            found = distributions.distribution(
                Sample.decode(row.sample), recent, column, output=output is not None
            )
        except distributions.NoColumn as exc:
            raise NotFoundException(detail=str(exc)) from None
        return {"model": name, "reference_id": row.id, **found}

    @get("/api/models/{model:str}/performance", sync_to_thread=True)
    def performance(
        model: FromPath[str],
        metric: FromQuery[str | None] = None,
        since: Annotated[
            str | None, QueryParameter(description="windows ending at or after (event time)")
        ] = None,
        until: Annotated[
            str | None, QueryParameter(description="windows starting at or before (event time)")
        ] = None,
    ) -> PerformancePage:
        """The model's measured and estimated metrics per event-time window, oldest first,
        with confidence intervals where one partition holds the whole window."""
        rows = repo.performance_history(
            _text("model", model) or "",
            metric=_text("metric", metric),
            since=_time("since", since),
            until=_time("until", until),
        )
        return {"items": rows}  # type: ignore[typeddict-item]

    @get("/api/reports/{report_id:int}/html", media_type=MediaType.HTML, sync_to_thread=True)
    def report_html(report_id: FromPath[int]) -> Response[bytes]:
        """The Evidently report's HTML, as written by the report job (same token as the API)."""
        report = repo.get_report(report_id) if 1 <= report_id <= MAX_ID else None
        path = Path(report.html_path) if report is not None and report.html_path else None
        if path is None or not path.is_file():
            raise NotFoundException(detail=f"no report HTML with id {report_id}")
        return Response(path.read_bytes(), media_type=MediaType.HTML)

    @get("/api/dead-letters", sync_to_thread=True)
    def dead_letters(
        limit: Annotated[int, QueryParameter(ge=1, le=max_page)] = 100,
        source: FromQuery[str | None] = None,
        cursor: FromQuery[str | None] = None,
    ) -> DeadLetterPage:
        """Records that could not be decoded, newest first, with the reason."""
        after = _decode_cursor(_text("cursor", cursor), (int,))
        rows = repo.list_dead_letters_page(
            limit + 1, before_id=int(after[0]) if after else None, source=_text("source", source)
        )
        page = rows[:limit]
        next_cursor = encode_cursor(page[-1].id) if len(rows) > limit else None
        return {"items": [r.to_contract() for r in page], "next_cursor": next_cursor}

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

    @get(
        ["/", "/ui"],
        opt={"public": True},
        security=[],
        media_type=MediaType.HTML,
        include_in_schema=False,
        sync_to_thread=False,
    )
    def web_page() -> str:
        """The read-only web page: static, holds no data; its script calls the API with a
        token the user gives it."""
        return WEB_PAGE.read_text()

    openapi = OpenAPIConfig(
        title="Bulwark API",
        version="1",
        description="Incident history and operations of Bulwark. Bearer token on every "
        "endpoint but /healthz; admin tokens for changes.",
        components=Components(
            security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer")}
        ),
        security=[{"bearer": []}],
        path="/schema",
    )
    return Litestar(
        route_handlers=[
            healthz,
            readyz,
            list_incidents,
            show_incident,
            status_handler("acknowledge", lifecycle.ACKNOWLEDGE),
            status_handler("resolve", lifecycle.RESOLVE),
            status_handler("reopen", lifecycle.REOPEN),
            add_note,
            models,
            token_role,
            distribution,
            performance,
            report_html,
            dead_letters,
            prometheus,
            web_page,
        ],
        guards=[_auth_guard(TokenSet(settings))],
        exception_handlers={lifecycle.LifecycleError: lifecycle_error},
        openapi_config=openapi,
        debug=False,
        logging_config=None,
    )


class ApiServer:
    """Runs the app with uvicorn in a background thread (tests, and the daemon's API)."""

    def __init__(self, app: Litestar, host: str, port: int) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="bulwark-api", daemon=True)

    def start(self, timeout: float = 10.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the API server did not start")
            time.sleep(0.02)

    @property
    def port(self) -> int:
        sockets = self.server.servers[0].sockets
        return int(sockets[0].getsockname()[1])

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
