"""The OpenAPI spec is valid, and a bounded schemathesis fuzz of every operation finds no 500
and no successful answer that does not match the spec."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from openapi_spec_validator import validate

from storage.db import Database
from tests.api_helpers import ADMIN, T0, Api, api_settings, finding, record, serving

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.generation.modes import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import response_schema_conformance  # noqa: E402

EXAMPLES_PER_OPERATION = 15


@pytest.fixture
def api(sqlite_url: str) -> Iterator[Api]:
    db = Database(sqlite_url)
    from detectors.base import Kind

    record(db, [finding("fraud", Kind.FEATURE_DRIFT, f"f{k}", T0 + k, k) for k in range(5)])
    with serving(api_settings(sqlite_url), db) as served:
        yield served
    db.dispose()


def test_openapi_spec_is_valid(api: Api) -> None:
    spec = api.reader.get("/schema/openapi.json").json()
    validate(spec)
    paths = spec["paths"]
    for path in (
        "/healthz",
        "/readyz",
        "/api/incidents",
        "/api/incidents/{incident_id}",
        "/api/incidents/{incident_id}/acknowledge",
        "/api/incidents/{incident_id}/resolve",
        "/api/incidents/{incident_id}/reopen",
        "/api/incidents/{incident_id}/notes",
        "/api/models",
        "/api/dead-letters",
        "/api/models/{model}/distribution",
        "/api/models/{model}/performance",
        "/api/reports/{report_id}/html",
        "/api/token",
        "/metrics",
    ):
        assert path in paths, path
    filters = {p["name"] for p in paths["/api/incidents"]["get"]["parameters"]}
    assert filters == {
        "model", "kind", "subject", "status", "severity", "since", "until", "roots", "limit",
        "cursor",
    }  # fmt: skip
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert paths["/healthz"]["get"]["security"] == [{}]  # no token needed


def test_fuzz_finds_no_server_error(api: Api) -> None:
    headers = {"Authorization": f"Bearer {ADMIN}"}
    schema = schemathesis.openapi.from_url(f"{api.url}/schema/openapi.json", headers=headers)
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)  # valid input, and invalid
    for operation, mode in itertools.product(operations, modes):

        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def fuzz(case) -> None:  # type: ignore[no-untyped-def]
            response = case.call(base_url=api.url, headers=headers, timeout=30)
            where = f"{case.method} {case.formatted_path} {case.query} {case.body!r:.200}"
            if response.status_code >= 500:
                failures.append(f"{where}: {response.status_code} {response.text[:200]}")
            elif response.status_code < 300:
                try:  # what the API answers is what its spec says
                    case.validate_response(response, checks=[response_schema_conformance])
                except Exception as exc:  # schemathesis raises its own failure types
                    failures.append(f"{where}: answer does not match the spec: {exc!s:.300}")

        try:
            fuzz()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE  # nothing to break in a parameterless call
    assert not failures, "\n".join(failures[:10])
    # The fuzz changed incidents through the admin token, yet the API still answers.
    assert httpx.get(f"{api.url}/healthz").status_code == 200
