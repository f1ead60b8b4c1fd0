"""Direct loss estimation for regressors: MAE estimated from the inputs before labels come."""

from __future__ import annotations

import numpy as np

from detectors import state_codec
from detectors.accuracy import AccuracyDetector
from detectors.accuracy.estimate import FeatureStore, LossModel, fit_loss_model
from detectors.base import Finding, MetricPoint
from detectors.settings import AccuracySettings
from tests.accuracy_streams import (
    START,
    error_scale,
    heteroscedastic_regression_batches,
    regression_batches,
)

CHANGE_AT = 10_000
LATE = 5000  # labels this many events late: the reference (2,000) is complete at 7,000
AFTER = 5000  # predictions after the change: none of them is labelled within the run


def run(batches, detector: AccuracyDetector) -> tuple[list[Finding], list[MetricPoint]]:
    findings: list[Finding] = []
    points: list[MetricPoint] = []
    for batch in batches:
        findings.extend(detector.update(batch))
        points.extend(detector.metrics())
    return findings, points


def latest(points: list[MetricPoint]) -> dict[tuple[float, str, bool], MetricPoint]:
    """The last point of each (window, metric, estimated), as the performance table keeps."""
    return {(p.window_start, p.metric, p.estimated): p for p in points}


def sample(n: int, seed: int, shift: float = 0.0):
    rng = np.random.default_rng(seed)
    x1 = rng.normal(shift, 1, n)
    x2 = rng.normal(0, 1, n)
    c = rng.choice(np.array(["a", "b", "c"], dtype=object), n, p=[0.5, 0.3, 0.2])
    predicted = 50 + 10 * x1 + 5 * x2
    error = rng.normal(0, 1, n) * error_scale(x1, c)
    return {"x1": x1, "x2": x2}, {"c": c}, predicted, error


def test_the_loss_model_finds_where_the_model_errs() -> None:
    model = fit_loss_model(*sample(5000, seed=41))
    assert model is not None and model.explained > 0.1
    numeric, categorical, predicted, error = sample(100_000, seed=42)
    estimated, square = model.estimate(numeric, categorical, predicted)
    for region in (numeric["x1"] < 0, numeric["x1"] > 1, categorical["c"] == "c"):
        realized = float(np.abs(error[region]).mean())
        assert abs(estimated[region].mean() - realized) < 0.08 * realized
    rmse = float(np.sqrt(np.mean(error**2)))
    assert abs(np.sqrt(square.mean()) - rmse) < 0.05 * rmse


def test_inputs_that_say_nothing_about_the_error_give_no_model() -> None:
    numeric, categorical, predicted, _ = sample(5000, seed=43)
    # Twenty more inputs of pure noise: trees fit noise on the rows they train on, so the
    # skill that counts is measured on the held-out rows.
    rng = np.random.default_rng(44)
    numeric |= {f"z{i}": rng.normal(0, 1, 5000) for i in range(20)}
    noise = rng.normal(0, 1, 5000)  # same error everywhere
    assert fit_loss_model(numeric, categorical, predicted, noise) is None


def interaction_sample(n: int, seed: int, together: float):
    """A model that errs three times more where x1 and x2 have the same sign: neither input
    alone says anything about the error while they are independent. With `together` > 0,
    x2 follows x1's sign more often (its marginal unchanged): the MAE rises."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(0, 1, n), rng.normal(0, 1, n)
    x2 = np.where(rng.random(n) < together, np.sign(x1) * np.abs(x2), x2)
    predicted = 50 + 10 * x1 + 5 * x2
    error = rng.normal(0, 1, n) * np.where(x1 * x2 > 0, 3.0, 1.0)
    return {"x1": x1, "x2": x2}, {}, predicted, error


def test_an_interaction_the_main_effects_cannot_see_is_estimated() -> None:
    model = fit_loss_model(*interaction_sample(5000, seed=45, together=0.0))
    assert model is not None and model.explained > 0.1
    numeric, categorical, predicted, error = interaction_sample(50_000, seed=46, together=0.6)
    estimated, _ = model.estimate(numeric, categorical, predicted)
    realized = float(np.abs(error).mean())
    before = float(np.abs(interaction_sample(50_000, seed=47, together=0.0)[3]).mean())
    assert realized > 1.25 * before  # the change is large ...
    assert abs(float(estimated.mean()) - realized) < 0.05 * realized  # ... and estimated


def test_the_model_is_data_and_estimates_flat_beyond_the_reference() -> None:
    model = fit_loss_model(*sample(5000, seed=48))
    assert model is not None
    state = state_codec.decode(state_codec.encode(model.state()))  # refuses any object
    restored = LossModel.of_state(state)
    numeric, categorical, predicted, _ = sample(2000, seed=49)
    for got, expected in zip(
        restored.estimate(numeric, categorical, predicted),
        model.estimate(numeric, categorical, predicted),
        strict=True,
    ):
        assert np.array_equal(got, expected)
    # Trees do not extrapolate: x1 (and the prediction with it) far beyond the reference's
    # range is estimated as at the range's edge.
    edge, far = ({"x1": np.full(3, v), "x2": np.zeros(3)} for v in (4.0, 40.0))
    c = {"c": np.array(["a", "b", "c"], dtype=object)}
    at_edge, _ = model.estimate(edge, c, 50 + 10 * edge["x1"])
    beyond, _ = model.estimate(far, c, 50 + 10 * far["x1"])
    assert np.array_equal(at_edge, beyond)
    # A missing input and an unseen category are estimated too (codes of their own).
    unseen = {"c": np.array([None, "zzz", "c"], dtype=object)}
    gaps, _ = model.estimate({"x1": np.array([np.nan, 0.0, 1.0])}, unseen, np.full(3, 50.0))
    assert np.all(np.isfinite(gaps)) and np.all(gaps >= 0)


def test_the_estimate_sees_a_covariate_shift_before_any_label() -> None:
    findings, points = run(
        heteroscedastic_regression_batches(
            CHANGE_AT + AFTER, change_at=CHANGE_AT, x1_shift=0.75, delay=LATE, seed=5
        ),
        detector := AccuracyDetector("h", AccuracySettings(reference_size=2000)),
    )
    assert detector.loss_model is not None
    estimated = [f for f in findings if f.subject == "estimated_mae"]
    assert estimated, [f.title for f in findings]
    first = estimated[0]
    assert CHANGE_AT <= first.ts - START < CHANGE_AT + 1000
    assert first.severity == "warning" and first.details["estimated"] is True
    # x1 + 0.75: the realized MAE rises by about 45%; the first finding (one block of 200
    # predictions after the change) says so within its noise.
    assert 0.25 < first.details["relative_change"] < 0.65
    assert not [f for f in findings if not f.details.get("estimated")]  # no labels yet
    # The history has the estimated MAE of every window, before the labels.
    after = [
        p.value
        for (start, metric, est), p in latest(points).items()
        if metric == "mae" and est and start >= START + CHANGE_AT
    ]
    assert after and min(after) > 1.25 * detector.reference.level  # type: ignore[union-attr]


def test_without_the_estimator_nothing_is_seen_before_the_labels() -> None:
    findings, _ = run(
        heteroscedastic_regression_batches(
            CHANGE_AT + AFTER, change_at=CHANGE_AT, x1_shift=0.75, delay=LATE, seed=5
        ),
        AccuracyDetector("h", AccuracySettings(reference_size=2000, estimate=False)),
    )
    assert findings == []


def test_an_estimated_improvement_is_info() -> None:
    findings, _ = run(
        heteroscedastic_regression_batches(
            CHANGE_AT + AFTER, change_at=CHANGE_AT, x1_shift=-1.0, delay=LATE, seed=6
        ),
        AccuracyDetector("h", AccuracySettings(reference_size=2000)),
    )
    assert findings and {f.subject for f in findings} == {"estimated_mae_improved"}
    found = findings[0]
    assert CHANGE_AT <= found.ts - START < CHANGE_AT + 1000
    assert found.severity == "info" and found.statistic == "cusum_estimated_abs_error_down"
    assert found.details["direction"] == "improved" and found.details["relative_change"] < -0.1


def test_a_stationary_stream_raises_nothing_and_the_estimate_agrees_with_the_labels() -> None:
    detector = AccuracyDetector("h", AccuracySettings(window_seconds=20_000))
    findings, points = run(heteroscedastic_regression_batches(200_000, seed=9), detector)
    assert detector.loss_model is not None and len(detector.loss_tests) == 2
    assert findings == []
    errors = [p for p in latest(points).values() if p.metric == "mae_estimate_error"]
    assert len(errors) >= 8
    # The estimate's error, graded by the labels window by window: a few percent. (Its level
    # comes from 5,000 reference pairs, whose MAE is itself 1.3% off the population's, 1 SE.)
    level = detector.reference.level  # type: ignore[union-attr]
    assert abs(float(np.mean([p.value for p in errors]))) < 0.06 * level
    assert all(abs(p.value) < 0.08 * level for p in errors)


def test_concept_drift_is_left_to_the_labels() -> None:
    findings, _ = run(
        heteroscedastic_regression_batches(
            CHANGE_AT + 8000, change_at=CHANGE_AT, noise_after=1.5, delay=500, seed=7
        ),
        AccuracyDetector("h", AccuracySettings(reference_size=2000)),
    )
    subjects = {f.subject for f in findings}
    assert "mae" in subjects and not any(s.startswith("estimated") for s in subjects)


def test_a_model_without_informative_inputs_keeps_its_four_tests() -> None:
    detector = AccuracyDetector("r")
    _, points = run(regression_batches(12_000, seed=4), detector)
    assert detector.loss_model is None and detector.loss_tests == {}
    assert len(detector.tests) == 4 and detector.store is None
    assert not [p for p in points if p.estimated]


def test_a_restart_from_a_snapshot_gives_the_same_estimates() -> None:
    settings = AccuracySettings(reference_size=2000)

    def stream():
        return heteroscedastic_regression_batches(
            CHANGE_AT + 6000, change_at=CHANGE_AT, x1_shift=0.75, delay=3000, seed=11
        )

    whole = AccuracyDetector("h", settings)
    expected = run(stream(), whole)
    for cut in (1, 3, 6):  # while the inputs are kept, just after the fit, later
        first = AccuracyDetector("h", settings)
        batches = list(stream())
        found, points = run(batches[:cut], first)
        restored = AccuracyDetector("h", settings)
        restored.load_state(state_codec.decode(state_codec.encode(first.state())))
        more, more_points = run(batches[cut:], restored)
        assert [f.title for f in found + more] == [f.title for f in expected[0]]
        assert latest(points + more_points) == latest(expected[1])
    assert whole.loss_model is not None


def test_the_store_keeps_the_latest_inputs_of_an_id_and_stops_at_its_cap() -> None:
    batches = list(heteroscedastic_regression_batches(3000, batch_size=1000, seed=12))
    store = FeatureStore(cap=2500)
    for batch in batches:
        store.add(batch)
    assert store.rows == 2500
    rows = store.take(["h-0", "h-2499", "h-2500", "h-0"])
    assert rows.tolist() == [0, 2499, -1, -1]
    numeric, categorical = store.columns(rows[:2])
    first, third = batches[0], batches[2]
    assert numeric["x1"].tolist() == [first.numeric["x1"][0], third.numeric["x1"][499]]
    assert categorical["c"].tolist() == [first.categorical["c"][0], third.categorical["c"][499]]
