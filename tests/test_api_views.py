"""What the web page's views read: distributions (reference against the recent window, with
history), performance over time, the Evidently report's HTML, and the token's role."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from agent.distributions import NoColumn, distribution, psi
from agent.samples import Sample
from detectors.base import MetricPoint
from storage.db import Database
from storage.queries import Repository
from storage.unit_of_work import ReferenceInput, UnitOfWork, transaction
from tests.api_helpers import T0, Api, api_settings, serving


def _sample(n: int, seed: int, shift: float = 0.0, de_share: float = 0.5, t0: float = T0) -> Sample:
    """`amount` ~ N(10 + shift, 2); `country` DE with `de_share`, else FR; binary scores."""
    rng = np.random.default_rng(seed)
    amount = rng.normal(10 + shift, 2, n)
    country = np.where(rng.random(n) < de_share, "DE", "FR")
    p1 = rng.random(n)
    return Sample(
        ts=[t0 + i for i in range(n)],
        features=[
            {"amount": round(float(a), 3), "country": str(c), "flag": bool(i % 2)}
            for i, (a, c) in enumerate(zip(amount, country, strict=True))
        ],
        predictions=[int(p > 0.5) for p in p1],
        scores=[{"0": round(1 - float(p), 4), "1": round(float(p), 4)} for p in p1],
        score=[None] * n,
        model_versions=[None] * n,
    )


def test_numeric_distribution_and_its_history_show_the_shift() -> None:
    reference = _sample(3000, seed=1)
    # The recent window: 2,000 events as the reference, then 2,000 shifted by one std.
    recent = Sample.concat(
        [_sample(2000, 2, t0=T0 + 10_000), _sample(2000, 3, 2.0, t0=T0 + 12_000)]
    )
    d = distribution(reference, recent, "amount")
    assert d["type"] == "numeric" and len(d["bins"]) == 21
    for side in ("reference", "recent"):
        assert sum(d[side]["shares"]) == pytest.approx(1.0, abs=1e-4)
    assert d["reference"]["rows"] == 3000 and d["recent"]["rows"] == 4000
    assert d["reference"]["summary"]["mean"] == pytest.approx(10, abs=0.15)
    assert d["recent"]["summary"]["mean"] == pytest.approx(11, abs=0.15)
    assert (d["recent"]["start"], d["recent"]["end"]) == (T0 + 10_000, T0 + 13_999)
    history = d["history"]
    assert len(history) == 40 and sum(h["n"] for h in history) == 4000
    assert [h["start"] for h in history] == sorted(h["start"] for h in history)
    before, after = history[:20], history[20:]
    assert all(abs(h["shift_std"]) < 0.6 for h in before)  # ~N(0, 1/sqrt(100)) per block
    assert all(0.4 < h["shift_std"] < 1.6 for h in after)  # the 1-std shift


def test_categorical_distribution_psi_history_and_outputs() -> None:
    reference = _sample(3000, seed=4, de_share=0.5)
    recent = Sample.concat(
        [_sample(1000, 5, de_share=0.5, t0=T0 + 5000), _sample(1000, 6, de_share=0.9, t0=T0 + 6000)]
    )
    d = distribution(reference, recent, "country")
    assert d["type"] == "categorical" and d["categories"] == ["DE", "FR"]
    assert d["reference"]["shares"][0] == pytest.approx(0.5, abs=0.04)
    assert d["recent"]["shares"][0] == pytest.approx(0.7, abs=0.04)
    psis = [h["psi"] for h in d["history"]]
    assert max(psis[: len(psis) // 2]) < 0.1 < min(psis[len(psis) // 2 :])
    assert psi({"a": 0.5, "b": 0.5}, {"a": 0.5, "b": 0.5}) == 0
    # Booleans are categories under their JSON names; outputs are columns of their own.
    assert distribution(reference, recent, "flag")["categories"] == ["false", "true"]
    score = distribution(reference, recent, "score", output=True)
    assert score["type"] == "numeric" and score["output"] is True
    assert score["reference"]["summary"]["mean"] == pytest.approx(0.5, abs=0.03)  # class "1"
    classes = distribution(reference, recent, "class_proportions", output=True)
    assert classes["categories"] == ["0", "1"] or classes["categories"] == ["1", "0"]
    with pytest.raises(NoColumn):
        distribution(reference, recent, "nope")
    with pytest.raises(NoColumn):
        distribution(reference, recent, "latency", output=True)


@pytest.fixture
def api(sqlite_url: str, tmp_path: Path) -> Iterator[Api]:
    db = Database(sqlite_url)
    db.upgrade()
    repo = Repository(db)
    reference = _sample(3000, seed=1)
    recent = _sample(1000, seed=2, shift=2.0, t0=T0 + 10_000)
    repo.add_reference(
        ReferenceInput(
            model="fraud",
            model_version="",
            origin="learned",
            rows=3000,
            source_rows=3000,
            summary={},
            sample=reference.encode(),
        )
    )
    html = tmp_path / "report.html"
    html.write_text("<html><body>evidently report</body></html>")
    with transaction(db) as uow:
        uow.reports.add("fraud", (T0 + 10_000, T0 + 11_000), None, {}, str(html))
        uow.reports.add("fraud", (T0, T0 + 1), None, {}, str(tmp_path / "gone.html"))
    with db.session() as session:
        writer = UnitOfWork(session)
        writer.checkpoints.save_recent_sample(
            "fraud", "events", 0, 1000, (T0 + 10_000, T0 + 10_999), recent.encode()
        )
        writer.checkpoints.save_recent_sample(
            "nore", "events", 0, 1000, (T0, T0 + 999), recent.encode()
        )
        writer.performance.save(
            [
                MetricPoint("fraud", "", "events", 0, T0 + 3600 * k, T0 + 3600 * (k + 1),
                            "accuracy", 0.9 - 0.01 * k, 0.88 - 0.01 * k, 0.92 - 0.01 * k, 500,
                            estimated)
                for k in range(4)
                for estimated in (False, True)
            ]
        )  # fmt: skip
    with serving(api_settings(sqlite_url), db) as served:
        yield served
    db.dispose()


def test_distribution_endpoint(api: Api) -> None:
    got = api.reader.get("/api/models/fraud/distribution", params={"feature": "amount"})
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["model"] == "fraud" and body["type"] == "numeric" and body["reference_id"] >= 1
    assert body["recent"]["summary"]["mean"] == pytest.approx(12, abs=0.3)
    assert body["reference"]["summary"]["mean"] == pytest.approx(10, abs=0.2)
    output = api.reader.get("/api/models/fraud/distribution", params={"output": "score"})
    assert output.status_code == 200 and output.json()["output"] is True
    for params, status, words in [
        ({}, 400, "exactly one of feature and output"),
        ({"feature": "amount", "output": "score"}, 400, "exactly one"),
        ({"feature": "nope"}, 404, "no values"),
    ]:
        answer = api.reader.get("/api/models/fraud/distribution", params=params)
        assert answer.status_code == status and words in answer.json()["detail"], answer.text
    unknown = api.reader.get("/api/models/other/distribution", params={"feature": "amount"})
    assert unknown.status_code == 404 and "no recent predictions" in unknown.json()["detail"]
    no_ref = api.reader.get("/api/models/nore/distribution", params={"feature": "amount"})
    assert no_ref.status_code == 404 and "no reference yet" in no_ref.json()["detail"]
    assert api.anonymous.get("/api/models/fraud/distribution?feature=amount").status_code == 401


def test_performance_endpoint(api: Api) -> None:
    items = api.reader.get("/api/models/fraud/performance").json()["items"]
    assert len(items) == 8 and [i["window_start"] for i in items] == sorted(
        i["window_start"] for i in items
    )
    measured = [i for i in items if not i["estimated"]]
    assert [round(i["value"], 2) for i in measured] == [0.9, 0.89, 0.88, 0.87]
    assert measured[0]["ci_low"] == pytest.approx(0.88) and measured[0]["ci_high"] == 0.92
    late = api.reader.get(
        "/api/models/fraud/performance", params={"since": str(T0 + 3 * 3600)}
    ).json()["items"]
    assert {i["window_start"] for i in late} == {T0 + 2 * 3600, T0 + 3 * 3600}
    early = api.reader.get(
        "/api/models/fraud/performance", params={"until": "2026-01-01T00:30:00Z"}
    ).json()["items"]
    assert {i["window_start"] for i in early} == {T0}
    assert api.reader.get("/api/models/fraud/performance?since=soon").status_code == 400
    assert api.reader.get("/api/models/other/performance").json() == {"items": []}


def test_report_html_is_served_behind_the_token(api: Api) -> None:
    incident_links = api.reader.get("/api/reports/1/html")
    assert incident_links.status_code == 200
    assert incident_links.headers["content-type"].startswith("text/html")
    assert "evidently report" in incident_links.text
    assert api.anonymous.get("/api/reports/1/html").status_code == 401
    assert api.reader.get("/api/reports/2/html").status_code == 404  # its file is gone
    assert api.reader.get("/api/reports/99/html").status_code == 404
    assert api.reader.get(f"/api/reports/{2**40}/html").status_code == 404


def test_token_role(api: Api) -> None:
    assert api.admin.get("/api/token").json() == {"role": "admin"}
    assert api.reader.get("/api/token").json() == {"role": "read"}
    assert api.anonymous.get("/api/token").status_code == 401


def test_latest_event_time_is_what_relative_times_count_back_from(database: Database) -> None:
    from detectors.base import Kind
    from tests.api_helpers import finding, record

    repo = Repository(database)
    assert repo.latest_event_time() is None  # nothing yet: callers fall back to the wall clock
    record(database, [finding("fraud", Kind.FEATURE_DRIFT, "amount", T0 + 50, 1)])
    assert repo.latest_event_time() == T0 + 50  # no counted events: the latest evidence
    with database.session() as session:
        UnitOfWork(session).model_stats.bump("fraud", 10, 0, 0, T0 + 900)
        UnitOfWork(session).model_stats.bump("churn", 10, 0, 0, T0 + 400)
    assert repo.latest_event_time() == T0 + 900
