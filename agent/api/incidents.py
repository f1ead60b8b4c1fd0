"""/api/incidents: the history a page at a time, one incident with its timeline, and the
lifecycle (acknowledge / resolve / reopen, notes) for admin tokens."""

from typing import Annotated, Any

from litestar import Request, Response, get, post
from litestar.exceptions import NotFoundException
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from agent.api.auth import author
from agent.api.params import decode_cursor, encode_cursor, event_time, text, valid_id
from agent.api.shapes import (
    IncidentDetail,
    IncidentOut,
    IncidentPage,
    NoteBody,
    NoteOut,
    SeverityName,
    Status,
    StatusChangeBody,
)
from agent.config import Settings
from agent.incidents import lifecycle
from storage.contract import incident_out
from storage.db import Database
from storage.models import Incident
from storage.queries import IncidentFilter, Repository


def incident_json(incident: Incident) -> IncidentOut:
    return incident_out(incident)


def lifecycle_error(_request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """A refused change: 404 for an unknown incident, 400 for a bad request, else 409."""
    status = 404 if isinstance(exc, lifecycle.NotFound) else 409
    if type(exc) is lifecycle.LifecycleError:
        status = 400
    return Response({"status_code": status, "detail": str(exc)}, status_code=status)


def incident_routes(settings: Settings, db: Database, repo: Repository) -> list[HTTPRouteHandler]:
    max_page = settings.api.max_page

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
            model=text("model", model),
            kind=text("kind", kind),
            subject=text("subject", subject),
            status=status,
            severity=severity,
            since=event_time("since", since),
            until=event_time("until", until),
            roots_only=roots,
        )
        after = decode_cursor(text("cursor", cursor), (float, int))
        rows = repo.list_incidents(
            where, limit=limit + 1, after=(float(after[0]), int(after[1])) if after else None
        )
        page = rows[:limit]
        next_cursor = encode_cursor(page[-1].last_seen, page[-1].id) if len(rows) > limit else None
        return {"items": [incident_json(i) for i in page], "next_cursor": next_cursor}

    @get("/api/incidents/{incident_id:int}", sync_to_thread=True)
    def show_incident(incident_id: FromPath[int]) -> IncidentDetail:
        """One incident with its evidence timeline, notes and links."""
        incident = repo.get_incident(valid_id(incident_id))
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
            **incident_json(incident),
            "resolved_at": incident.resolved_at.timestamp() if incident.resolved_at else None,
            "evidence": [e.to_contract() for e in repo.evidence_of(incident.id)],
            "notes": [n.to_contract() for n in repo.notes_of(incident.id)],
            "links": links,
        }

    def status_handler(name: str, transition: lifecycle.Transition) -> HTTPRouteHandler:
        def change(
            request: Request[Any, Any, Any],
            incident_id: FromPath[int],
            data: JSONBody[StatusChangeBody | None] = None,
        ) -> IncidentOut:
            body = data or StatusChangeBody()
            incident = lifecycle.change_status(
                db,
                settings.alerts,
                valid_id(incident_id),
                transition,
                author(request, body.author),
                text("note", body.note, lifecycle.NOTE_LIMIT) or "",
            )
            return incident_json(incident)

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
    def add_note(
        request: Request[Any, Any, Any], incident_id: FromPath[int], data: JSONBody[NoteBody]
    ) -> NoteOut:
        """Adds a note (admin token); answers the note with who wrote it and when."""
        note_text = text("text", data.text, lifecycle.NOTE_LIMIT) or ""
        note = lifecycle.add_note(
            db, valid_id(incident_id), author(request, data.author), note_text
        )
        return note.to_contract()

    return [
        list_incidents,
        show_incident,
        status_handler("acknowledge", lifecycle.ACKNOWLEDGE),
        status_handler("resolve", lifecycle.RESOLVE),
        status_handler("reopen", lifecycle.REOPEN),
        add_note,
    ]
