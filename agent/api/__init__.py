"""The HTTP API (contract section 6): incident history, lifecycle, health, metrics, a web page.

`create_app` builds a Litestar app from Settings and a Database, so tests and the daemon can
serve it wherever they like (`ApiServer` runs it in a thread). Every endpoint but /healthz and
the static web page shell needs a bearer token (`auth`); admin tokens may change incidents,
read-only tokens may only read. One module per route group; `shapes` holds what the OpenAPI
spec says they answer.
"""

from agent.api.app import create_app
from agent.api.health import ReadinessCheck
from agent.api.server import ApiServer

__all__ = ["ApiServer", "ReadinessCheck", "create_app"]
