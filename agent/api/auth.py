"""Bearer tokens: every endpoint but those marked `public` needs one; handlers marked `admin`
need an admin token. Tokens are compared in constant time and never logged."""

import hmac
from collections.abc import Callable
from typing import Any

from litestar import Request, get
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers import BaseRouteHandler, HTTPRouteHandler

from agent.api.params import text
from agent.api.shapes import Role
from agent.config import Settings

Guard = Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], None]


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


def auth_guard(tokens: TokenSet) -> Guard:
    """The app's guard: checks the token and records its role in the request's scope."""

    def guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
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


def author(request: Request[Any, Any, Any], given: str | None) -> str:
    """Who made a change: the name given, else the kind of token used."""
    name = text("author", given, 200)
    if name and name.strip():
        return name.strip()
    return f"{request.scope.get('bulwark_role', 'api')} token"


def token_routes() -> list[HTTPRouteHandler]:
    @get("/api/token", sync_to_thread=False)
    def token_role(request: Request[Any, Any, Any]) -> Role:
        """The presented token's role: `admin` (may change incidents) or `read`."""
        return {"role": str(request.scope.get("bulwark_role", "read"))}

    return [token_role]
