"""`create_app`: the Litestar app from Settings and a Database, composed of the route groups
(health and metrics, incidents, models, reports, dead letters, the web page), the token
guard and the OpenAPI spec."""

from litestar import Litestar
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from agent.api.auth import TokenSet, auth_guard, token_routes
from agent.api.dead_letters import dead_letter_routes
from agent.api.health import ReadinessCheck, health_routes
from agent.api.incidents import incident_routes, lifecycle_error
from agent.api.models import model_routes
from agent.api.page import page_routes
from agent.api.reports import report_routes
from agent.config import Settings
from agent.incidents import lifecycle
from storage.db import Database
from storage.queries import Repository


def _openapi() -> OpenAPIConfig:
    """A new config per app: Litestar fills the config's components in as it builds the spec."""
    return OpenAPIConfig(
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


def create_app(
    settings: Settings,
    db: Database,
    readiness: dict[str, ReadinessCheck] | None = None,
) -> Litestar:
    """The API app. `readiness` adds checks to /readyz beyond the database (e.g. Kafka)."""
    repo = Repository(db)
    checks: dict[str, ReadinessCheck] = {"database": repo.ping, **(readiness or {})}
    return Litestar(
        route_handlers=[
            *health_routes(repo, checks),
            *incident_routes(settings, db, repo),
            *model_routes(repo),
            *token_routes(),
            *report_routes(repo),
            *dead_letter_routes(repo, settings.api.max_page),
            *page_routes(),
        ],
        guards=[auth_guard(TokenSet(settings))],
        exception_handlers={lifecycle.LifecycleError: lifecycle_error},
        openapi_config=_openapi(),
        debug=False,
        logging_config=None,
    )
