"""The read-only web page at / and /ui (agent/web/index.html)."""

from pathlib import Path

from litestar import MediaType, get
from litestar.handlers import HTTPRouteHandler

WEB_PAGE = Path(__file__).resolve().parent.parent / "web" / "index.html"


def page_routes() -> list[HTTPRouteHandler]:
    # Made per app, like every route group: Litestar binds a handler to the app it joins.
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

    return [web_page]
