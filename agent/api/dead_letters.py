"""/api/dead-letters: records that could not be decoded, newest first, a page at a time."""

from typing import Annotated

from litestar import get
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromQuery, QueryParameter

from agent.api.params import decode_cursor, encode_cursor, text
from agent.api.shapes import DeadLetterPage
from storage.queries import Repository


def dead_letter_routes(repo: Repository, max_page: int) -> list[HTTPRouteHandler]:
    @get("/api/dead-letters", sync_to_thread=True)
    def dead_letters(
        limit: Annotated[int, QueryParameter(ge=1, le=max_page)] = 100,
        source: FromQuery[str | None] = None,
        cursor: FromQuery[str | None] = None,
    ) -> DeadLetterPage:
        """Records that could not be decoded, newest first, with the reason."""
        after = decode_cursor(text("cursor", cursor), (int,))
        rows = repo.list_dead_letters_page(
            limit + 1, before_id=int(after[0]) if after else None, source=text("source", source)
        )
        page = rows[:limit]
        next_cursor = encode_cursor(page[-1].id) if len(rows) > limit else None
        return {"items": [r.to_contract() for r in page], "next_cursor": next_cursor}

    return [dead_letters]
