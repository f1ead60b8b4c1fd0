"""The HTTP API over real HTTP: auth, filters, pagination, lifecycle, auto-resolve, metrics."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from agent.config import AlertSettings, RetentionSettings, load_settings
from agent.demo import demo_scenario
from agent.incidents import lifecycle, retention
from agent.runtime.pipeline import Pipeline
from agent.runtime.replay import memory_batches, replay_batches
from detectors.base import Kind, Severity
from storage.db import Database
from storage.models import Report
from storage.queries import Repository
from storage.unit_of_work import UnitOfWork
from tests.api_helpers import ADMIN, T0, Api, api_settings, finding, record, serving

MODELS = ("fraud", "churn", "price")
KINDS = (Kind.FEATURE_DRIFT, Kind.PREDICTION_DRIFT, Kind.DATA_QUALITY)
SEVERITIES = (Severity.INFO, Severity.WARNING, Severity.CRITICAL)


@pytest.fixture
def api(db_url: str) -> Iterator[Api]:
    db = Database(db_url)
    with serving(api_settings(db_url), db) as served:
        yield served
    db.dispose()


def seed(db: Database, n: int = 18) -> None:
    """n incidents over 3 models, 3 kinds, 3 severities, an hour apart in event time; two
    share the newest last_seen so pagination must break ties by id."""
    findings = [
        finding(
            MODELS[k % 3],
            KINDS[(k // 3) % 3],
            f"f{k}",
            T0 + 3600 * min(k, n - 2),
            offset=k,
            severity=SEVERITIES[(k // 9) % 3 if k % 2 else 1],
        )
        for k in range(n)
    ]
    record(db, findings)


def test_auth(api: Api) -> None:
    seed(api.db, 3)
    anonymous = api.anonymous
    assert anonymous.get("/healthz").status_code == 200
    for path in (
        "/api/incidents",
        "/api/incidents/1",
        "/api/models",
        "/api/dead-letters",
        "/metrics",
        "/readyz",
        "/schema/openapi.json",
    ):
        missing = anonymous.get(path)
        assert missing.status_code == 401, path
        assert missing.json() == {"status_code": 401, "detail": "Unauthorized"}
        wrong = anonymous.get(path, headers={"Authorization": f"Bearer {ADMIN}x"})
        assert wrong.status_code == 401, path
        basic = anonymous.get(path, headers={"Authorization": f"Basic {ADMIN}"})
        assert basic.status_code == 401, path
    assert api.reader.get("/api/incidents").status_code == 200
    denied = api.reader.post("/api/incidents/1/acknowledge")
    assert denied.status_code == 403
    assert api.reader.post("/api/incidents/1/notes", json={"text": "hi"}).status_code == 403
    assert api.admin.get("/api/incidents/1").json()["status"] == "open"  # nothing changed
    assert api.admin.post("/api/incidents/1/acknowledge").status_code == 200
    # The page shell holds no data; what it shows comes from the token-protected API.
    page = anonymous.get("/")
    assert page.status_code == 200 and "<svg" in page.text


def test_filters(api: Api) -> None:
    seed(api.db)
    everything = Repository(api.db).list_incidents()
    assert len(everything) == 18

    def ids(**params: object) -> list[int]:
        response = api.reader.get("/api/incidents", params={"limit": 500, **params})
        assert response.status_code == 200, response.text
        return [item["id"] for item in response.json()["items"]]

    def expected(keep) -> list[int]:  # type: ignore[no-untyped-def]
        return [i.id for i in everything if keep(i)]

    assert ids() == [i.id for i in everything]
    assert ids(model="churn") == expected(lambda i: i.model == "churn")
    assert ids(kind="prediction_drift") == expected(lambda i: i.kind == "prediction_drift")
    assert ids(subject="f4") == expected(lambda i: i.subject == "f4")
    assert ids(severity="critical") == expected(lambda i: i.severity == "critical")
    assert ids(status="open") == expected(lambda i: True)
    assert ids(status="resolved") == []
    since, until = T0 + 3600 * 5, T0 + 3600 * 9
    assert ids(since=since) == expected(lambda i: i.last_seen >= since)
    iso = "2026-01-01T09:00:00+00:00"
    assert ids(since=since, until=iso) == expected(lambda i: since <= i.last_seen <= until)
    assert ids(model="fraud", severity="warning") == expected(
        lambda i: i.model == "fraud" and i.severity == "warning"
    )
    assert 0 < len(ids(model="fraud", severity="warning")) < 6
    # roots=true: what `incidents list` shows by default (incidents attributed to none).
    with api.db.session() as session:
        for incident in UnitOfWork(session).incidents.unresolved_incidents("churn")[1:]:
            incident.parent_id = everything[-1].id
    everything = Repository(api.db).list_incidents()
    assert ids(roots="true") == expected(lambda i: i.parent_id is None)
    assert 0 < len(ids(roots="true")) < len(ids(roots="false")) == len(ids()) == 18
    first = api.reader.get("/api/incidents").json()["items"][0]
    assert set(first) >= {
        "id",
        "model",
        "kind",
        "subject",
        "severity",
        "status",
        "title",
        "first_seen",
        "last_seen",
        "count",
        "details",
    }


def test_pagination_newest_first_without_gaps_or_repeats(api: Api) -> None:
    seed(api.db)
    seen: list[dict] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 4, **({"cursor": cursor} if cursor else {})}
        body = api.reader.get("/api/incidents", params=params).json()
        seen.extend(body["items"])
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 5
    assert len({i["id"] for i in seen}) == 18
    keys = [(i["last_seen"], i["id"]) for i in seen]
    assert keys == sorted(keys, reverse=True)
    # A filtered pagination stays inside its filter.
    body = api.reader.get("/api/incidents", params={"limit": 2, "model": "price"}).json()
    rest = api.reader.get(
        "/api/incidents", params={"limit": 500, "model": "price", "cursor": body["next_cursor"]}
    ).json()
    assert [i["model"] for i in body["items"] + rest["items"]] == ["price"] * 6


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/api/incidents?status=closed", 400, "status"),
        ("/api/incidents?severity=high", 400, "severity"),
        ("/api/incidents?since=yesterday", 400, "since must be epoch seconds or ISO-8601"),
        ("/api/incidents?until=nan", 400, "until must be a finite number"),
        ("/api/incidents?limit=0", 400, "limit"),
        ("/api/incidents?limit=100000", 400, "limit"),
        ("/api/incidents?limit=ten", 400, "limit"),
        ("/api/incidents?cursor=not-a-cursor", 400, "cursor is not one this API returned"),
        ("/api/incidents?cursor=WzEsMl0", 400, "cursor"),  # [1,2]: wrong types
        ("/api/incidents?model=a%00b", 400, "NUL"),
        ("/api/incidents/999", 404, "no incident with id 999"),
        ("/api/incidents/0", 404, "no incident with id 0"),
        ("/api/incidents/99999999999999999999", 404, "no incident"),
        ("/api/incidents/abc", 404, ""),
        ("/api/dead-letters?cursor=%%%", 400, "cursor"),
    ],
)
def test_bad_input_is_a_clear_4xx(api: Api, path: str, status: int, message: str) -> None:
    response = api.reader.get(path)
    assert response.status_code == status, response.text
    assert message in response.text


def test_lifecycle_transitions_and_notes(api: Api) -> None:
    record(api.db, [finding("fraud", Kind.FEATURE_DRIFT, "amount", T0, 1)])
    (incident,) = Repository(api.db).list_incidents()
    base = f"/api/incidents/{incident.id}"

    acked = api.admin.post(f"{base}/acknowledge", json={"author": "alice", "note": "on it"})
    assert acked.status_code == 200 and acked.json()["status"] == "acknowledged"
    again = api.admin.post(f"{base}/acknowledge")
    assert again.status_code == 409 and "is acknowledged" in again.json()["detail"]
    note = api.admin.post(f"{base}/notes", json={"text": "upstream schema change", "author": "bob"})
    assert note.status_code == 201, note.text
    assert api.admin.post(f"{base}/notes", json={"text": "  "}).status_code == 400
    resolved = api.admin.post(f"{base}/resolve", json={"note": "rolled back"})
    assert resolved.json()["status"] == "resolved"
    assert api.admin.post(f"{base}/resolve").status_code == 409
    assert api.admin.post(f"{base}/reopen").json()["status"] == "open"
    assert api.admin.post(f"{base}/resolve").status_code == 200
    assert api.admin.post("/api/incidents/12345/resolve").status_code == 404

    shown = api.reader.get(base).json()
    assert shown["status"] == "resolved" and shown["resolved_at"] is not None
    notes = [(n["author"], n["action"], n["text"]) for n in shown["notes"]]
    assert notes == [
        ("alice", "acknowledged", "on it"),
        ("bob", "note", "upstream schema change"),
        ("admin token", "resolved", "rolled back"),
        ("admin token", "reopened", "reopened"),
        ("admin token", "resolved", "resolved"),
    ]
    assert all(abs(n["created_at"] - time.time()) < 120 for n in shown["notes"])
    assert len(shown["evidence"]) == 1 and shown["evidence"][0]["ts"] == T0

    # New evidence on the resolved key opens a new incident linked to the old one...
    record(api.db, [finding("fraud", Kind.FEATURE_DRIFT, "amount", T0 + 600, 2)])
    newest = api.reader.get("/api/incidents", params={"model": "fraud"}).json()["items"][0]
    assert newest["id"] != incident.id and newest["previous_id"] == incident.id
    assert newest["status"] == "open" and newest["count"] == 1
    detail = api.reader.get(f"/api/incidents/{newest['id']}").json()
    assert detail["links"]["previous"] == base
    # ...and the old one cannot be reopened beside it.
    conflict = api.admin.post(f"{base}/reopen")
    assert conflict.status_code == 409 and "newer incident" in conflict.json()["detail"]
    assert api.reader.get(base).json()["status"] == "resolved"


def test_auto_resolve_in_event_time(api: Api) -> None:
    day = 86400.0
    record(
        api.db,
        [
            finding("fraud", Kind.FEATURE_DRIFT, "amount", T0, 1),
            finding("fraud", Kind.FEATURE_DRIFT, "age", T0 + 0.9 * day, 2),
            finding("churn", Kind.FEATURE_DRIFT, "tenure", T0, 3),  # churn never counted
        ],
    )
    with api.db.session() as session:
        UnitOfWork(session).model_stats.bump("fraud", 10, 0, 0, T0 + 1.5 * day)
    ids = {i.subject: i.id for i in Repository(api.db).list_incidents()}

    # Fraud's event time says amount has been quiet 1.5 days, age 0.6 days; churn has no
    # event time, so the wall clock (years after T0) decides.
    resolved = lifecycle.auto_resolve(
        api.db, AlertSettings(), quiet_for=day, wall_now=T0 + 400 * day
    )
    assert sorted(resolved) == sorted([ids["amount"], ids["tenure"]])
    amount = api.reader.get(f"/api/incidents/{ids['amount']}").json()
    assert amount["status"] == "resolved"
    (note,) = amount["notes"]
    assert note["author"] == "bulwark" and note["action"] == "resolved"
    assert "auto-resolved" in note["text"] and "1.5d of event time" in note["text"]
    tenure_note = api.reader.get(f"/api/incidents/{ids['tenure']}").json()["notes"][0]["text"]
    assert "wall-clock time" in tenure_note
    assert api.reader.get(f"/api/incidents/{ids['age']}").json()["status"] == "open"
    # Running it again changes nothing; zero disables it.
    assert (
        lifecycle.auto_resolve(api.db, AlertSettings(), quiet_for=day, wall_now=T0 + 400 * day)
        == []
    )
    assert lifecycle.auto_resolve(api.db, AlertSettings(), quiet_for=0) == []


def _metrics(client: httpx.Client) -> dict[str, float]:
    text = client.get("/metrics").text
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_metrics_and_summary_after_a_replay(api: Api, db_url: str) -> None:
    response = api.reader.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    before = _metrics(api.reader)
    scenario = demo_scenario(events_per_model=6000)
    settings = load_settings(environ={"BULWARK_DB_URL": db_url})
    pipeline = Pipeline(settings, api.db, consumer="test")
    replay_batches(pipeline, memory_batches(scenario.lines, "demo", 2000))
    after = _metrics(api.reader)

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    for model in ("fraud", "churn", "price"):
        key = f'bulwark_events_processed_total{{model="{model}",type="prediction"}}'
        assert delta(key) == 6000
        assert delta(f'bulwark_detector_seconds_total{{model="{model}"}}') > 0
    assert delta("bulwark_dead_letters_total") == scenario.malformed
    assert delta("bulwark_batches_total") == -(-len(scenario.lines) // 2000)
    assert after["bulwark_dead_letters_stored"] == scenario.malformed

    # Open-incident gauges are the database's counts.
    open_counts = Counter(
        (i.model, i.kind, i.severity) for i in Repository(api.db).list_incidents()
    )
    assert open_counts, "the demo scenario injects drifts"
    gauges = {
        tuple(re.findall(r'="([^"]*)"', k)): v
        for k, v in after.items()
        if k.startswith("bulwark_open_incidents{")
    }
    assert gauges == {k: float(n) for k, n in open_counts.items()}

    summary = {m["model"]: m for m in api.reader.get("/api/models").json()["items"]}
    assert set(summary) == {"fraud", "churn", "price"}
    assert summary["fraud"]["events_seen"]["predictions"] == 6000
    assert summary["fraud"]["last_event_ts"] >= scenario_last_ts(scenario.lines, "fraud")
    by_kind = Counter()
    for (model, kind, _severity), n in open_counts.items():
        if model == "fraud":
            by_kind[kind] += n
    assert summary["fraud"]["open_incidents"] == dict(by_kind)
    named = sum(m["dead_letters"] for m in summary.values())
    assert 0 < named < scenario.malformed  # some malformed lines name no model

    letters = api.reader.get("/api/dead-letters", params={"limit": 3}).json()
    assert len(letters["items"]) == 3 and letters["next_cursor"]
    rest = api.reader.get(
        "/api/dead-letters", params={"limit": 100, "cursor": letters["next_cursor"]}
    ).json()
    ids = [d["id"] for d in letters["items"] + rest["items"]]
    assert len(ids) == scenario.malformed and ids == sorted(ids, reverse=True)


def scenario_last_ts(lines: list[bytes], model: str) -> float:
    import orjson

    best = 0.0
    for line in lines:
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(event, dict) and event.get("model") == model:
            ts = event.get("ts")
            if isinstance(ts, int | float):
                best = max(best, float(ts))
    return best


def test_readiness_checks_are_pluggable(db_url: str) -> None:
    db = Database(db_url)

    def kafka() -> None:
        raise ConnectionError("no broker at 127.0.0.1:1")

    with serving(api_settings(db_url), db, readiness={"kafka": kafka}) as api:
        response = api.reader.get("/readyz")
        assert response.status_code == 503
        assert response.json()["checks"] == {
            "database": "ok",
            "kafka": "ConnectionError: no broker at 127.0.0.1:1",
        }
    with serving(api_settings(db_url), db, readiness={"kafka": lambda: None}) as api:
        assert api.reader.get("/readyz").status_code == 200
    db.dispose()
    unreachable = Database("postgresql+psycopg://nobody@127.0.0.1:1/none")
    with serving(api_settings(db_url), unreachable) as api:
        response = api.reader.get("/readyz")
        assert response.status_code == 503 and response.json()["checks"]["database"] != "ok"
        assert api.anonymous.get("/healthz").status_code == 200


def test_retention_never_prunes_open_incidents(database: Database, tmp_path) -> None:  # type: ignore[no-untyped-def]
    record(
        database,
        [
            finding("fraud", Kind.FEATURE_DRIFT, "amount", T0, 1),
            finding("fraud", Kind.FEATURE_DRIFT, "age", T0, 2),
        ],
    )
    amount, age = sorted(Repository(database).list_incidents(), key=lambda i: i.subject)[::-1]
    lifecycle.change_status(database, AlertSettings(), amount.id, lifecycle.RESOLVE, "test")
    from storage.unit_of_work import DeadLetterInput

    with database.session() as session:
        UnitOfWork(session).dead_letters.add(
            [
                DeadLetterInput("f", 0, 1, "bad", b"x", received_at=time.time() - 40 * 86400),
                DeadLetterInput("f", 0, 2, "bad", b"y", received_at=time.time()),
            ]
        )
    later = time.time() + 100 * 86400  # everything is old by then
    html = tmp_path / "report.html"
    html.write_text("<html></html>")
    with database.session() as session:
        session.add(
            Report(
                model="fraud", window_start=T0, window_end=T0 + 60, summary={}, html_path=str(html)
            )
        )
    keep = RetentionSettings(evidence=0, dead_letters=0, reports=0)
    assert retention.prune(database, keep, now=later) == {
        "evidence": 0,
        "dead_letters": 0,
        "reports": 0,
    }
    assert html.exists()
    pruned = retention.prune(database, RetentionSettings(), now=later)
    assert pruned == {"evidence": 1, "dead_letters": 2, "reports": 1}
    assert not html.exists()  # the report's HTML goes with its row
    repo = Repository(database)
    assert repo.evidence_of(amount.id) == [] and len(repo.evidence_of(age.id)) == 1
    assert repo.get_incident(amount.id) is not None  # the incident itself stays
    assert retention.prune(database, RetentionSettings(dead_letters=30 * 86400)) == {
        "evidence": 0,
        "dead_letters": 0,
        "reports": 0,
    }


def test_api_config_from_file_and_environment(tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "bulwark.toml"
    config.write_text(
        '[api]\nport = 9000\nauto_resolve_after = "6h"\njson_logs = true\n'
        '[api.tokens]\nread_only = ["r1", "r2"]\nadmin = ["file-admin"]\n'
        '[api.retention]\ndead_letters = "7d"\n'
    )
    settings = load_settings(config, environ={"BULWARK_API_TOKEN": "env-admin"})
    api = settings.api
    assert (api.port, api.auto_resolve_after, api.json_logs) == (9000, 6 * 3600, True)
    assert api.retention.dead_letters == 7 * 86400
    assert [t.get_secret_value() for t in api.tokens.admin] == ["env-admin"]
    assert [t.get_secret_value() for t in api.tokens.read_only] == ["r1", "r2"]
    assert "env-admin" not in repr(settings) and "r1" not in repr(settings)
    config.write_text('[api]\nauto_resolve_after = "soon"\n')
    from agent.config import ConfigError

    with pytest.raises(ConfigError, match=r"api\.auto_resolve_after"):
        load_settings(config, environ={})
