"""Drift and data-quality detectors on small streams: quiet when nothing changes, fast and
specific when one thing does, and every finding explained."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from agent.config import ConfigError, load_settings
from detectors.base import Kind, Severity
from detectors.categorical_drift import CategoricalDriftDetector, CategoricalMonitor
from detectors.data_quality import DataQualityDetector
from detectors.numeric_drift import NumericDriftDetector
from detectors.prediction_drift import PredictionDriftDetector
from detectors.registry import DetectorSettings, build_detectors
from streams.batch import concat_batches
from tests.drift_streams import batch, choice, chunks, run

N = 16_000
DRIFT_AT = 8000  # the reference is the first 3000 events
COUNTRIES = ["DE", "FR", "NL", "ES", "IT"]
SHARES = [0.4, 0.2, 0.15, 0.15, 0.1]


def model_stream(rng: np.random.Generator, n: int = N) -> dict:
    """Five numeric features of assorted shapes, a code, two categorical features."""
    return {
        "numeric": {
            "x": rng.normal(0, 1, n),
            "amount": rng.lognormal(3, 0.8, n),
            "wait": rng.exponential(1, n),
            "ratio": rng.uniform(0, 1, n),
            "age": rng.normal(41, 12, n).round(),
            "items": rng.choice([1.0, 2.0, 3.0, 4.0], n, p=[0.4, 0.3, 0.2, 0.1]),
        },
        "categorical": {
            "country": choice(rng, COUNTRIES, SHARES, n),
            "member": choice(rng, [True, False], [0.3, 0.7], n),
        },
    }


def all_detectors(settings: DetectorSettings | None = None) -> list:
    return build_detectors("m", settings or DetectorSettings())


def run_all(columns: dict, settings: DetectorSettings | None = None, **extra) -> list:
    whole = batch(**columns, **extra)
    return [f for d in all_detectors(settings) for f in run(d, chunks(whole))]


def test_stationary_model_is_quiet() -> None:
    rng = np.random.default_rng(1)
    columns = model_stream(rng, 40_000)
    assert run_all(columns) == []


@pytest.mark.parametrize(("feature", "shift"), [("x", 0.5), ("amount", 1.0), ("wait", -0.5)])
def test_mean_shift_is_found_within_5000_events_on_that_feature_only(
    feature: str, shift: float
) -> None:
    rng = np.random.default_rng(2)
    columns = model_stream(rng)
    values = columns["numeric"][feature]
    values[DRIFT_AT:] += shift * values[:DRIFT_AT].std()
    findings = run_all(columns)
    drift = [f for f in findings if f.kind == Kind.FEATURE_DRIFT]
    # No other feature is named; input_anomaly ("*", population-level) may see values that
    # left the reference range.
    assert {f.subject for f in findings} - {"*"} == {feature}
    first = min(drift, key=lambda f: f.ts)
    assert 0 <= first.position.offset - DRIFT_AT <= 5000
    assert first.statistic == "cusum_mean_shift"
    assert np.sign(first.effect_size) == np.sign(shift)
    assert abs(first.effect_size) >= 0.2  # the practical-significance floor
    details = first.details
    assert first.value > first.threshold > 0
    assert {"reference", "current", "events_seen", "effect_floor"} <= details.keys()
    assert details["reference"]["size"] == 3000
    assert details["events_seen"] > 0


def test_spread_change_is_found() -> None:
    rng = np.random.default_rng(3)
    columns = model_stream(rng)
    x = columns["numeric"]["x"]
    x[DRIFT_AT:] *= 2
    findings = run_all(columns)
    spread = [f for f in findings if f.statistic == "cusum_scale_change"]
    assert spread and {f.subject for f in spread} == {"x"}
    assert min(f.position.offset for f in spread) - DRIFT_AT <= 5000
    assert spread[0].effect_size > 0.2


def reweighted(rng: np.random.Generator, n: int) -> list[str]:
    # PSI of these shares against SHARES is about 0.23.
    return choice(rng, COUNTRIES, [0.25, 0.2, 0.15, 0.15, 0.25], n)


def test_category_reweighting_is_found_with_its_psi() -> None:
    rng = np.random.default_rng(4)
    columns = model_stream(rng)
    columns["categorical"]["country"][DRIFT_AT:] = reweighted(rng, N - DRIFT_AT)
    findings = run_all(columns)
    assert {f.subject for f in findings} == {"country"}
    first = min(findings, key=lambda f: f.ts)
    assert first.detector == "categorical_drift"
    assert first.statistic == "chi_square_homogeneity"
    assert 0 <= first.position.offset - DRIFT_AT <= 5000
    assert 0.15 <= first.effect_size <= 0.35
    assert first.value > first.threshold
    details = first.details
    assert details["reference"]["shares"]["DE"] == pytest.approx(0.4, abs=0.03)
    assert details["current"]["shares"]["IT"] == pytest.approx(0.25, abs=0.05)
    assert 0 < details["js_distance"] < 1


def test_small_reweighting_below_the_psi_floor_stays_quiet() -> None:
    rng = np.random.default_rng(5)
    columns = model_stream(rng, 30_000)
    # PSI about 0.02: statistically visible on this stream, practically nothing.
    columns["categorical"]["country"][DRIFT_AT:] = choice(
        rng, COUNTRIES, [0.36, 0.2, 0.15, 0.15, 0.14], 30_000 - DRIFT_AT
    )
    assert run_all(columns) == []


def test_new_and_vanished_categories_are_named() -> None:
    rng = np.random.default_rng(6)
    columns = model_stream(rng)
    country = columns["categorical"]["country"]
    country[DRIFT_AT:] = choice(
        rng, ["DE", "FR", "NL", "ES", "XX"], [0.3, 0.2, 0.15, 0.15, 0.2], N - DRIFT_AT
    )
    findings = [f for f in run_all(columns) if f.kind == Kind.FEATURE_DRIFT]
    assert {f.subject for f in findings} == {"country"}
    details = findings[0].details
    assert "XX" in details["new_categories"]
    assert details["vanished_categories"] == ["IT"]
    assert "new XX" in findings[0].title and "vanished IT" in findings[0].title


def test_a_rare_pooled_bin_keeps_its_false_alarm_rate() -> None:
    """A flag true in 0.5% of rows expects one count per 200-value window: Pearson's
    statistic on such a cell alarmed at 5.7 times alpha (1e-3). Judged by the exact test of
    its 2 x 2 table, and a rare rest beside three categories pooled with the smallest of
    them, both stay within alpha (60 references x 400 windows each)."""
    rng = np.random.default_rng(11)
    for kept in (["a"], ["a", "b", "c"]):
        values = np.array([*kept, "rare"], dtype=object)
        shares = [0.995 / len(kept)] * len(kept) + [0.005]
        alarms = 0
        for _ in range(60):
            monitor = CategoricalMonitor(rng.choice(values, 3000, p=shares), 200, 1e-3, 10.0)
            assert monitor.exact == (len(kept) == 1)
            assert len(monitor.names) == min(len(kept), 2) + 1  # "c" joins the rare rest
            alarms += len(monitor.feed(rng.choice(values, 200 * 400, p=shares)))
        assert alarms <= 2 * 1e-3 * 60 * 400


def test_a_rare_flag_that_becomes_common_is_found_by_the_exact_test() -> None:
    rng = np.random.default_rng(12)
    columns = model_stream(rng)
    flag = rng.random(N) < 0.002
    flag[DRIFT_AT:] = rng.random(N - DRIFT_AT) < 0.03
    columns["categorical"]["vip"] = flag.tolist()
    findings = [f for f in run_all(columns) if f.subject == "vip"]
    assert findings and findings[0].statistic == "exact_binomial_homogeneity"
    assert 0 <= findings[0].position.offset - DRIFT_AT <= 5000
    assert findings[0].details["test"] == "windowed_exact_binomial_two_sample"
    assert findings[0].value > findings[0].threshold


def test_numeric_codes_are_judged_by_frequency() -> None:
    rng = np.random.default_rng(7)
    columns = model_stream(rng)
    items = columns["numeric"]["items"]
    items[DRIFT_AT:] = rng.choice([1.0, 2.0, 3.0, 4.0], N - DRIFT_AT, p=[0.2, 0.2, 0.3, 0.3])
    findings = run_all(columns)
    assert {(f.detector, f.subject) for f in findings} == {("categorical_drift", "items")}
    assert findings[0].details["current"]["shares"]["4"] == pytest.approx(0.3, abs=0.05)


def test_class_proportions_score_and_regression_output_drift() -> None:
    rng = np.random.default_rng(8)
    p = rng.beta(2, 5, N)
    p[DRIFT_AT:] = rng.beta(4, 4, N - DRIFT_AT)
    whole = batch(
        numeric={"x": rng.normal(0, 1, N)},
        predictions=["1" if v > 0.5 else "0" for v in p],
        scores=[{"0": 1 - v, "1": v} for v in p],
    )
    findings = run(PredictionDriftDetector("m"), chunks(whole))
    assert {f.subject for f in findings} == {"class_proportions", "score"}
    assert all(f.kind == Kind.PREDICTION_DRIFT for f in findings)
    score = [f for f in findings if f.subject == "score"]
    assert score[0].effect_size > 0.2  # the positive class's probability went up
    assert min(f.position.offset for f in findings) - DRIFT_AT <= 5000

    y = rng.normal(100, 10, N)
    y[DRIFT_AT:] -= 10
    regression = batch(numeric={"x": rng.normal(0, 1, N)}, predictions=y.tolist())
    findings = run(PredictionDriftDetector("m"), chunks(regression))
    assert {f.subject for f in findings} == {"prediction"}
    assert findings[0].effect_size < -0.2


def multiclass(rng: np.random.Generator, n: int, drift_at: int | None = None) -> list[dict]:
    """Class a always on top (0.55-0.65); b and c share the rest, b's part Beta(2, 2), and
    Beta(5, 2) from `drift_at`: top-class probability and predicted classes unchanged."""
    top = rng.uniform(0.55, 0.65, n)
    part = rng.beta(2, 2, n)
    if drift_at is not None:
        part[drift_at:] = rng.beta(5, 2, n - drift_at)
    rest = 1 - top
    return [
        {"a": t, "b": r * u, "c": r * (1 - u)}
        for t, r, u in zip(top.tolist(), rest.tolist(), part.tolist(), strict=True)
    ]


def test_per_class_score_drift_of_a_multiclass_model() -> None:
    rng = np.random.default_rng(10)
    scores = multiclass(rng, N, drift_at=DRIFT_AT)
    whole = batch(numeric={"x": rng.normal(0, 1, N)}, predictions=["a"] * N, scores=scores)
    findings = run(PredictionDriftDetector("m"), chunks(whole))
    assert {f.subject for f in findings} == {"score:b", "score:c"}  # not "score" (the top)
    b = min((f for f in findings if f.subject == "score:b"), key=lambda f: f.position.offset)
    assert b.effect_size > 0.2 and 0 <= b.position.offset - DRIFT_AT <= 5000
    quiet = batch(
        numeric={"x": rng.normal(0, 1, 30_000)},
        predictions=["a"] * 30_000,
        scores=multiclass(rng, 30_000),
    )
    assert run(PredictionDriftDetector("m"), chunks(quiet)) == []


def test_stationary_predictions_are_quiet() -> None:
    rng = np.random.default_rng(9)
    p = rng.beta(2, 5, 30_000)
    whole = batch(
        numeric={"x": rng.normal(0, 1, 30_000)},
        predictions=["1" if v > 0.5 else "0" for v in p],
        scores=[{"0": 1 - v, "1": v} for v in p],
    )
    assert run(PredictionDriftDetector("m"), chunks(whole)) == []


def quality_stream(rng: np.random.Generator, n: int = N) -> dict:
    channel = choice(rng, ["web", "app", None], [0.6, 0.35, 0.05], n)  # 5% missing: normal
    return {
        "numeric": {"amount": rng.gamma(2, 10, n)},
        "categorical": {"channel": channel},
    }


def quality_findings(columns: dict) -> list:
    return run(DataQualityDetector("m"), chunks(batch(**columns)))


def test_data_quality_is_quiet_on_a_stationary_stream_with_missing_values() -> None:
    assert quality_findings(quality_stream(np.random.default_rng(10), 40_000)) == []


def test_missing_rate_jump_is_judged_against_the_reference() -> None:
    rng = np.random.default_rng(11)
    columns = quality_stream(rng)
    channel = columns["categorical"]["channel"]
    for i in range(DRIFT_AT, N):
        if rng.random() < 0.15:
            channel[i] = None
    findings = quality_findings(columns)
    assert {(f.subject, f.statistic) for f in findings} == {("channel", "missing_rate")}
    first = findings[0]
    assert first.details["reference"]["rate"] == pytest.approx(0.05, abs=0.015)
    assert first.details["current"]["rate"] > 0.12
    assert first.effect_size >= 0.02 and first.value > first.threshold
    assert first.position.offset - DRIFT_AT <= 2000


def test_type_violation_out_of_range_new_and_vanished_fields() -> None:
    rng = np.random.default_rng(12)
    columns = quality_stream(rng)
    amount = columns["numeric"]["amount"]
    amount[DRIFT_AT:][rng.random(N - DRIFT_AT) < 0.1] = 10_000.0  # far out of range
    whole = batch(**columns)
    # Late events: `amount` sometimes arrives as a string; `channel` disappears; a new field.
    late = whole.slice(DRIFT_AT, N)
    text = np.where(rng.random(len(late)) < 0.05, "n/a", None).astype(object)
    late.categorical = {"amount": text, "promo": np.full(len(late), "spring", dtype=object)}
    late.numeric["amount"] = np.where(np.equal(text, None), late.numeric["amount"], np.nan)
    stream = [*chunks(whole.slice(0, DRIFT_AT)), *chunks(late)]
    findings = run(DataQualityDetector("m"), stream)
    found = {(f.subject, f.statistic) for f in findings}
    assert found == {
        ("amount", "type_violation_rate"),
        ("amount", "out_of_range_rate"),
        ("channel", "field_vanished"),
        ("promo", "new_field_rate"),
    }
    by = {f.statistic: f for f in findings}
    assert by["field_vanished"].severity == Severity.CRITICAL
    assert by["out_of_range_rate"].details["reference"]["range"][1] < 10_000
    assert by["type_violation_rate"].details["reference"]["type"] == "numeric"
    first = {}
    for f in findings:
        first.setdefault(f.statistic, f.position.offset)
    assert all(0 <= offset - DRIFT_AT < 2000 for offset in first.values())


def test_stored_reference_replaces_learning_from_the_first_events() -> None:
    """A stream drifted from its very first event: learning from it sees nothing, a stored
    reference catches it; and the stored reference is used as given (its size)."""
    rng = np.random.default_rng(13)
    reference = batch(**model_stream(rng, 5000))
    columns = model_stream(rng, 12_000)
    columns["numeric"]["x"] += 1.0
    columns["categorical"]["country"] = reweighted(rng, 12_000)
    live = chunks(batch(**columns))
    learned = [f for d in all_detectors() for f in run(d, live)]
    assert learned == []
    detectors = all_detectors()
    for d in detectors:
        d.set_reference(reference)
    findings = [f for d in detectors for f in run(d, live)]
    assert {(f.detector, f.subject) for f in findings} == {
        ("numeric_drift", "x"),
        ("shape_drift", "x"),  # a 1 std shift changes where the distribution lies, too
        ("categorical_drift", "country"),
        ("multivariate_drift", "*"),  # and so the joint distribution
    }
    assert min(f.position.offset for f in findings) < 3000  # no reference to learn first
    x = next(f for f in findings if f.subject == "x")
    assert x.details["reference"]["size"] == 5000


def test_reference_spanning_batches_matches_one_big_batch() -> None:
    rng = np.random.default_rng(14)
    columns = model_stream(rng, 6000)
    columns["numeric"]["x"][4000:] += 1.0
    whole = batch(**columns)
    one = NumericDriftDetector("m")
    one.set_reference(whole.slice(0, 3000))
    split = NumericDriftDetector("m")
    # Odd batch sizes: the reference ends inside a batch.
    stream = [whole.slice(a, min(a + 700, 6000)) for a in range(0, 6000, 700)]
    assert [f.position for f in run(one, [whole.slice(3000, 6000)])] == [
        f.position for f in run(split, stream)
    ]


def test_snapshot_restore_continues_the_same_way() -> None:
    rng = np.random.default_rng(15)
    columns = model_stream(rng)
    columns["numeric"]["x"][DRIFT_AT:] += 1.0
    columns["categorical"]["country"][DRIFT_AT:] = reweighted(rng, N - DRIFT_AT)
    stream = chunks(batch(**columns))
    straight = [f for d in all_detectors() for f in run(d, stream)]
    resumed = []
    for d, fresh in zip(all_detectors(), all_detectors(), strict=True):
        run(d, stream[:6])
        assert fresh.restore(d.snapshot())
        resumed.extend(run(fresh, stream[6:]))
    assert straight and sorted(resumed, key=repr) == sorted(straight, key=repr)


def test_concat_fills_columns_missing_from_some_batches() -> None:
    a = batch(numeric={"x": [1.0, 2.0]}, categorical={"c": ["a", "b"]})
    b = batch(numeric={"y": [3.0]}, start=2)
    both = concat_batches([a, b])
    assert len(both) == 3 and list(both.offsets) == [0, 1, 2]
    assert np.isnan(both.numeric["x"][2]) and np.isnan(both.numeric["y"][0])
    assert list(both.categorical["c"]) == ["a", "b", None]


def test_budget_is_the_models_and_split_over_detectors() -> None:
    settings = DetectorSettings()
    budgeted = [d.name for d in build_detectors("m", settings) if d.name in settings.budgeted()]
    assert set(budgeted) == set(settings.budgeted())  # every budgeted detector is built
    total = sum(settings.budget_of(name) for name in budgeted)
    assert total == pytest.approx(settings.false_alarms_per_million)
    with pytest.raises(ValidationError, match="budget_share"):
        DetectorSettings.model_validate({"data_quality": {"budget_share": 0.9}})
    # A smaller budget means higher thresholds.
    rng = np.random.default_rng(16)
    ref = batch(**model_stream(rng, 3000))
    loose, strict = (
        NumericDriftDetector("m", false_alarms_per_million=1.0),
        NumericDriftDetector("m", false_alarms_per_million=0.01),
    )
    loose.set_reference(ref)
    strict.set_reference(ref)
    assert strict.monitors["x"].h > loose.monitors["x"].h


def test_sensitivity_per_model_and_per_feature(tmp_path) -> None:
    config = tmp_path / "bulwark.toml"
    config.write_text(
        "[models.m.detectors]\nfalse_alarms_per_million = 0.5\n"
        "[models.m.detectors.categorical_drift.features.country]\nmin_psi = 0.5\n"
    )
    settings = load_settings(config, environ={})
    merged = settings.detectors_for("m")
    assert merged.false_alarms_per_million == 0.5
    assert settings.detectors_for("other").false_alarms_per_million == 0.2
    rng = np.random.default_rng(17)
    columns = model_stream(rng)
    columns["categorical"]["country"][DRIFT_AT:] = reweighted(rng, N - DRIFT_AT)
    assert run_all(columns, merged) == []  # PSI ~0.23 is below this feature's floor
    assert run_all(columns) != []
    config.write_text("[models.m.detectors.categorical_drift]\nmin_psi = -1\n")
    with pytest.raises(ConfigError, match=r"models\.m\.detectors\.categorical_drift\.min_psi"):
        load_settings(config, environ={})


def test_categorical_detector_ignores_continuous_features() -> None:
    rng = np.random.default_rng(18)
    detector = CategoricalDriftDetector("m")
    detector.set_reference(batch(**model_stream(rng, 3000)))
    assert set(detector.monitors) == {"items", "country", "member"}
