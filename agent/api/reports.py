"""/api/reports/{id}/html: a stored Evidently report's HTML, behind the API's token."""

from pathlib import Path

from litestar import MediaType, Response, get
from litestar.exceptions import NotFoundException
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath

from agent.api.params import MAX_ID
from storage.queries import Repository


def report_routes(repo: Repository) -> list[HTTPRouteHandler]:
    @get("/api/reports/{report_id:int}/html", media_type=MediaType.HTML, sync_to_thread=True)
    def report_html(report_id: FromPath[int]) -> Response[bytes]:
        """The Evidently report's HTML, as written by the report job (same token as the API)."""
        report = repo.get_report(report_id) if 1 <= report_id <= MAX_ID else None
        path = Path(report.html_path) if report is not None and report.html_path else None
        if path is None or not path.is_file():
            raise NotFoundException(detail=f"no report HTML with id {report_id}")
        return Response(path.read_bytes(), media_type=MediaType.HTML)

    return [report_html]
