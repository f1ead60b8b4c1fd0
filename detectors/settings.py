"""Every detector's settings: the `[detectors]` section of the config file.

Pydantic models only, so the configuration (agent/config.py, and all that imports it) loads
without numpy, scipy or River; each detector module imports its settings from here.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)


class ReferenceDetectorSettings(BaseModel):
    """What every reference-based detector's settings have: its share of the model's
    false-alarm budget, and per-feature overrides of its other settings, e.g.
    `features = {amount = {min_effect_size = 0.5}}`."""

    model_config = ConfigDict(extra="forbid")

    budget_share: float = Field(0.2, ge=0, le=1)
    features: dict[str, dict[str, float]] = Field(default_factory=dict)

    def of(self, feature: str, key: str) -> float:
        """A setting for one feature: its override if any, else the detector's value."""
        return self.features.get(feature, {}).get(key, getattr(self, key))


class NumericDriftSettings(ReferenceDetectorSettings):
    """Sensitivity of numeric drift detection; per-feature overrides of min_detectable_shift,
    min_effect_size, min_log_scale_change and critical_effect_size."""

    budget_share: float = Field(0.2, ge=0, le=1)  # of the model's false-alarm budget
    block_size: int = Field(50, ge=10)
    min_detectable_shift: float = Field(0.25, gt=0)  # in reference standard deviations
    min_effect_size: float = Field(0.2, ge=0)  # practical-significance floor (std units)
    min_log_scale_change: float = Field(0.2, ge=0)  # floor for spread: |log(std ratio)|
    critical_effect_size: float = Field(1.0, gt=0)


class ShapeDriftSettings(ReferenceDetectorSettings):
    """Sensitivity of shape drift; per-feature overrides of min_ks and critical_ks."""

    budget_share: float = Field(0.05, ge=0, le=1)
    windows: list[int] = Field(default_factory=lambda: [1000, 5000])  # window sizes, values
    min_ks: float = Field(0.05, ge=0, le=1)  # practical floor: KS distance
    critical_ks: float = Field(0.25, gt=0, le=1)

    @field_validator("windows")
    @classmethod
    def _windows_valid(cls, windows: list[int]) -> list[int]:
        if not windows or min(windows) < 100 or len(set(windows)) != len(windows):
            raise ValueError("windows must be distinct sizes of at least 100 values")
        return sorted(windows)


class MultivariateDriftSettings(ReferenceDetectorSettings):
    """Sensitivity of the multivariate test (`features` overrides are not used: one test)."""

    budget_share: float = Field(0.05, ge=0, le=1)
    window: int = Field(1000, ge=200)  # events per tumbling window
    explained_variance: float = Field(0.65, gt=0, lt=1)  # kept by the components (NannyML's)
    min_relative_change: float = Field(0.05, ge=0)  # floor: |window error / reference - 1|
    critical_relative_change: float = Field(0.25, gt=0)


class CategoricalDriftSettings(ReferenceDetectorSettings):
    """Sensitivity of categorical drift; per-feature overrides of min_psi and critical_psi."""

    window: int = Field(1000, ge=100)
    min_expected: float = Field(10.0, ge=1)  # rarer reference categories are pooled
    min_psi: float = Field(0.05, ge=0)  # practical-significance floor
    critical_psi: float = Field(0.25, gt=0)


class PredictionDriftSettings(ReferenceDetectorSettings):
    """Sensitivity of prediction drift (the floors mean what they mean for features);
    per-subject overrides under `features`, e.g. `features = {score = {min_effect_size = 0.5}}`."""

    block_size: int = Field(50, ge=10)
    min_detectable_shift: float = Field(0.25, gt=0)
    min_effect_size: float = Field(0.2, ge=0)
    min_log_scale_change: float = Field(0.2, ge=0)
    critical_effect_size: float = Field(1.0, gt=0)
    window: int = Field(1000, ge=100)
    min_expected: float = Field(10.0, ge=1)
    min_psi: float = Field(0.1, ge=0)
    critical_psi: float = Field(0.25, gt=0)


class DataQualitySettings(ReferenceDetectorSettings):
    """Sensitivity of data-quality checks; per-field overrides (under `features`) of
    min_rate_increase and critical_rate_increase."""

    window: int = Field(1000, ge=100)
    min_rate_increase: float = Field(0.02, gt=0)  # practical-significance floor
    critical_rate_increase: float = Field(0.2, gt=0)


class InputAnomalySettings(BaseModel):
    """Population-level `input_anomaly`: share of out-of-reference inputs in a model's traffic."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    reference_size: int = Field(3000, ge=200)
    tail_quantile: float = Field(0.0025, gt=0, lt=0.1)  # each numeric range: central 99.5%
    block_size: int = Field(200, ge=20)
    min_rate_ratio: float = Field(3.0, gt=1)  # the rise (x reference rate) tuned to catch fast
    min_excess_share: float = Field(0.01, ge=0)  # practical floor: share above reference rate
    critical_rate_ratio: float = Field(10.0, gt=1)
    # Used standalone; in a model, the registry passes `budget_share` of the model's budget.
    false_alarms_per_million: float = Field(0.1, gt=0)
    budget_share: float = Field(0.1, ge=0, le=1)  # of the model's false-alarm budget


class QueryPatternSettings(BaseModel):
    """Per-client query-pattern detection (`suspicious_client`).

    Memory: `max_state_mb` bounds the per-client state whatever the number of clients
    (config key `detectors.query_patterns.max_state_mb`); see docs/query-patterns.md."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    reference_size: int = Field(3000, ge=200)  # events that define the input profile
    false_clients_per_thousand: float = Field(1.0, gt=0, le=100)  # per client and day
    max_clients: int = Field(50_000, ge=10)
    # MiB for the per-client state of all tracked clients (per model and partition), rings
    # mostly: at most budget / (buffer_size x (4 (dim + 2) + 64) + 1,100) clients are tracked
    # (about 1,100 at the default with 38 encoded features), if fewer than max_clients; beyond,
    # the least recently seen is evicted. Snapshots hold only the entries in use.
    max_state_mb: float = Field(64.0, ge=0.5, le=65_536)
    buffer_size: int = Field(256, ge=32, le=4096)
    min_queries: int = Field(20, ge=10)
    check_every: int = Field(10, ge=1)
    k_neighbours: int = Field(5, ge=1, le=50)
    repeat_distance: float = Field(0.01, ge=0)  # smaller coordinate change: no change
    entity_changes: int = Field(2, ge=0)  # at most this many coordinates changed: same entity
    probe_step: float = Field(0.05, gt=0)  # one coordinate moved by at most this: a probe
    low_margin: float = Field(0.1, gt=0, lt=1)  # top-two score gap counted as "low margin"
    # The benign null: clients' latest look values fresher than this, at least this many.
    null_window_seconds: float = Field(24 * 3600.0, gt=0)
    min_null_clients: int = Field(12, ge=5)
    fingerprint_tables: int = Field(3, ge=1, le=8)
    fingerprint_projections: int = Field(6, ge=2, le=32)
    fingerprint_width: float = Field(0.05, gt=0)  # in robust (IQR) units
    fingerprint_horizon_seconds: float = Field(3600.0, gt=0)
    max_fingerprints: int = Field(65_536, ge=1024)
    fingerprint_salt: str = ""  # salts the projections: attackers cannot aim between buckets
    critical_factor: float = Field(1e-3, gt=0, le=1)  # p below threshold x this: critical
    client_id_key: SecretStr | None = None  # set: clients are known by HMAC-SHA256 only
    # Client ids (as sent, before any HMAC) of known tools whose queries are not judged: a
    # review queue scoring only borderline cases looks like uncertainty-sampling extraction.
    trusted_clients: frozenset[str] = frozenset()


class AccuracySettings(BaseModel):
    """The label join, the performance windows and the accuracy-drop tests."""

    model_config = ConfigDict(extra="forbid")

    task: Literal["auto", "classification", "regression"] = "auto"
    positive_class: str = "1"  # binary precision/recall/F1, and what a lone `score` is for
    negative_class: str = "0"
    label_ttl_seconds: float = Field(3 * 86400.0, gt=0)  # event time a prediction waits
    max_pending: int = Field(200_000, ge=1)  # unlabelled predictions kept per partition
    max_early_labels: int = Field(50_000, ge=0)  # labels kept waiting for their prediction
    window_seconds: float = Field(3600.0, gt=0)  # performance history granularity
    reference_size: int = Field(5000, ge=200)  # labelled events fixing the reference level
    block_size: int = Field(200, ge=20)  # labelled events per test step
    margin: float = Field(0.02, gt=0, lt=1)  # smallest accuracy drop worth reporting
    warning_drop: float = Field(0.05, gt=0, lt=1)  # below: info; at or above: warning
    critical_drop: float = Field(0.10, gt=0, lt=1)
    regression_margin: float = Field(0.10, gt=0)  # MAE +10%, or bias of 0.1 reference RMSE
    regression_critical: float = Field(0.5, gt=0)
    min_detectable_shift: float = Field(0.25, gt=0)  # regression tests, std units
    estimate: bool = True  # label-free estimates: CBPE (class scores), DLE (regression inputs)
    calibration_bins: int = Field(20, ge=2, le=200)
    false_alarms_per_million: float = Field(0.1, gt=0)  # per model, per million labelled

    @model_validator(mode="after")
    def _ordered(self) -> AccuracySettings:
        if not self.margin <= self.warning_drop <= self.critical_drop:
            raise ValueError("need margin <= warning_drop <= critical_drop")
        return self


class StreamStallSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    factor: float = Field(5.0, gt=1)  # a stall is this many times the stream's long gaps
    quantile: float = Field(0.999, gt=0.5, lt=1)  # which gaps count as "long but usual"
    min_gaps: int = Field(1000, ge=20)  # gaps seen before judging
    min_span: float = Field(2 * 86400.0, ge=0)  # seconds of event time seen before judging
    # A silence must also exceed the longest gap seen at least twice by this factor.
    recurring_margin: float = Field(1.5, ge=1)
    # ... and the quantile by this many times the mean excess over it of the gaps beyond it:
    # for gaps exponential there (arrivals at random in the quiet hours), e^-16 per such gap.
    tail_margin: float = Field(16.0, ge=0)
    min_stall: float = Field(300.0, gt=0)  # seconds: shorter silences are never a stall


class DetectorSettings(BaseModel):
    """Settings of every detector; `[detectors]` in the config file, per model under
    `[models.NAME.detectors]`."""

    model_config = ConfigDict(extra="forbid")

    # Events of the model learned as its reference when none is stored.
    reference_size: int = Field(3000, ge=200)
    # Expected false incidents per million events, the whole model. The ceiling is 1;
    # the default keeps a margin for what the approximations (Siegmund, chi-square tails)
    # leave uncovered.
    false_alarms_per_million: float = Field(0.2, gt=0, le=1000)
    numeric_drift: NumericDriftSettings = Field(default_factory=NumericDriftSettings)
    shape_drift: ShapeDriftSettings = Field(default_factory=ShapeDriftSettings)
    multivariate_drift: MultivariateDriftSettings = Field(default_factory=MultivariateDriftSettings)
    categorical_drift: CategoricalDriftSettings = Field(default_factory=CategoricalDriftSettings)
    prediction_drift: PredictionDriftSettings = Field(default_factory=PredictionDriftSettings)
    data_quality: DataQualitySettings = Field(default_factory=DataQualitySettings)

    accuracy: AccuracySettings = Field(default_factory=AccuracySettings)
    query_patterns: QueryPatternSettings = Field(default_factory=QueryPatternSettings)
    input_anomaly: InputAnomalySettings = Field(default_factory=InputAnomalySettings)
    stream_stall: StreamStallSettings = Field(default_factory=StreamStallSettings)

    @model_validator(mode="after")
    def _shares_fit(self) -> DetectorSettings:
        total = sum(s.budget_share for s in self.budgeted().values())
        if total > 1 + 1e-9:
            raise ValueError(
                f"the detectors' budget_share values add up to {total:g}; they must not "
                "exceed 1 (they split the model's false_alarms_per_million)"
            )
        return self

    def budgeted(self) -> dict[str, Any]:
        """The detectors sharing the model's event-based false-alarm budget (accuracy budgets
        labelled events, query patterns benign clients: each on its own)."""
        return {
            "numeric_drift": self.numeric_drift,
            "shape_drift": self.shape_drift,
            "multivariate_drift": self.multivariate_drift,
            "categorical_drift": self.categorical_drift,
            "prediction_drift": self.prediction_drift,
            "data_quality": self.data_quality,
            "input_anomaly": self.input_anomaly,
        }

    def budget_of(self, detector: str) -> float:
        """A detector's false alarms per million events: its share of the model's budget."""
        return self.false_alarms_per_million * self.budgeted()[detector].budget_share

    def merged(self, overrides: dict[str, Any]) -> DetectorSettings:
        """These settings with a model's overrides applied on top, validated again."""
        data = self.model_dump()
        for section, values in overrides.items():
            if isinstance(values, dict) and isinstance(data.get(section), dict):
                data[section] = {**data[section], **values}
            else:
                data[section] = values
        return DetectorSettings.model_validate(data)
