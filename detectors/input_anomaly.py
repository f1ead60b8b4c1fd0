"""Input anomalies: the model's reference picture of its inputs, and a population-level alarm
when the share of inputs outside it rises well above its reference rate.

`InputProfile` is the one place that knows what a model's inputs look like in its reference:
per numeric feature the median and IQR (robust scaling), a central quantile range and whether
it takes whole numbers (`LATTICE_SHARE` of its values at least), per categorical feature the
values seen. An input is anomalous when some numeric feature falls outside its range or off
its integer lattice, or some categorical feature takes a value never seen in the reference
(missing values are data quality's business, not anomalies). The query-pattern detector
reuses the same profile to scale and encode each query.

`InputAnomalyDetector` counts anomalous inputs in blocks of `block_size` events and runs a
one-sided CUSUM on a variance-stabilized block count (2*sqrt(x + 3/8) is close to N(0, 1)
shifted for Poisson-like counts), with the threshold derived from the false-alarm budget like
the drift detectors (`detectors.stats.calibration`). The reference rate is cross-fitted: ranges
from half the reference, rate measured on the other half, so it is not biased to zero by
judging the reference against itself, and the CUSUM assumes an upper confidence bound of it
(an underestimated in-control rate would multiply false alarms).
"""

from __future__ import annotations

import math
import zlib
from abc import abstractmethod
from typing import Any

import numpy as np

from detectors.base import Detector, Finding, Kind, Severity
from detectors.baseline import Baseline, ReferenceSample, client_voices
from detectors.settings import InputAnomalySettings
from detectors.state_codec import set_items
from detectors.stats.calibration import cusum_threshold, steps_budget
from detectors.stats.cusum import Cusum
from streams.batch import ModelBatch, knows_clients

CATEGORY_CACHE = 10_000  # per feature: value -> bucket memo, bounded
# A numeric feature is on an integer lattice when at least this share of its reference values
# are whole numbers, not all of them: in a reference learned from the first events, a few
# early clients sending fractional queries (each capped at twice the mean client's share,
# `detectors.baseline.capped_per_client`) would otherwise erase the lattice for everyone. A
# measured quantity (prices, rates) has few whole values.
LATTICE_SHARE = 0.9
# ... and when more of its values besides the most common one are whole than not. A feature
# that is mostly one value says nothing about its lattice by that value: an amount that is
# 0 in 90% of rows and fractional otherwise is no count (as a "lattice" every refund would
# be out of reference), where a pixel that is mostly 0 keeps its whole values besides.
LATTICE_SHARE_BESIDES_MODE = 0.5


class InputProfile:
    """Robust scaling, categorical encoding and plausible ranges learned from a reference."""

    def __init__(
        self,
        numeric: dict[str, np.ndarray],
        categorical: dict[str, np.ndarray],
        tail_quantile: float = 0.0025,
        buckets: int = 4,
        lattice_of: InputProfile | None = None,
        owners: np.ndarray | None = None,
    ) -> None:
        """`lattice_of`: a profile whose lattice decisions to take rather than make (the
        full reference's, for a profile of half of it measuring the in-control rate: the
        rate must be the one of the rule that monitors). `owners`: per reference row, its
        client's id (`ModelBatch.client_ids`, `NO_CLIENT` for none), where known: then the
        lattice is decided by one voice per client (`_on_lattice`)."""
        self.numeric_names = sorted(n for n, v in numeric.items() if np.isfinite(v).any())
        self.median = np.zeros(len(self.numeric_names))
        self.scale = np.ones(len(self.numeric_names))
        self.integral = np.zeros(len(self.numeric_names), dtype=bool)
        self.low = np.full(len(self.numeric_names), -np.inf)
        self.high = np.full(len(self.numeric_names), np.inf)
        for i, name in enumerate(self.numeric_names):
            present = np.isfinite(numeric[name])
            values = numeric[name][present]
            q = np.quantile(values, [tail_quantile, 0.25, 0.5, 0.75, 1 - tail_quantile])
            self.low[i], self.median[i], self.high[i] = q[0], q[2], q[4]
            spread = q[3] - q[1]
            if spread <= 0:  # a mostly constant feature: fall back to the std, then to 1
                spread = float(np.std(values)) or 1.0
            self.scale[i] = spread
            # Counts, ages, hours, pixels: a feature whose reference values are whole numbers.
            # Synthetic queries (interpolated, perturbed, sampled from ranges) fall between.
            if lattice_of is not None:
                self.integral[i] = lattice_of.on_lattice(name)
            else:
                self.integral[i] = _on_lattice(values, None if owners is None else owners[present])
        self.categorical_names = sorted(categorical)
        self.vocabulary = {
            name: {v for v in categorical[name] if v is not None} for name in self.categorical_names
        }
        self.buckets = buckets
        self._bucket_memo: dict[str, dict[object, int]] = {n: {} for n in self.categorical_names}

    def state(self) -> dict[str, Any]:
        """Plain data: what was learned (the bucket memo is a cache, left out)."""
        return {
            "numeric_names": self.numeric_names,
            "median": self.median,
            "scale": self.scale,
            "integral": self.integral,
            "low": self.low,
            "high": self.high,
            "categorical_names": self.categorical_names,
            "vocabulary": {name: set_items(v) for name, v in self.vocabulary.items()},
            "buckets": self.buckets,
        }

    @classmethod
    def of_state(cls, state: dict[str, Any]) -> InputProfile:
        profile = cls.__new__(cls)
        profile.numeric_names = state["numeric_names"]
        profile.median, profile.scale = state["median"], state["scale"]
        profile.integral = state["integral"]
        profile.low, profile.high = state["low"], state["high"]
        profile.categorical_names = state["categorical_names"]
        profile.vocabulary = {name: set(v) for name, v in state["vocabulary"].items()}
        profile.buckets = state["buckets"]
        profile._bucket_memo = {n: {} for n in profile.categorical_names}
        return profile

    def on_lattice(self, name: str) -> bool:
        """Whether numeric feature `name` was judged to be on an integer lattice."""
        return name in self.numeric_names and bool(self.integral[self.numeric_names.index(name)])

    @property
    def dim(self) -> int:
        return len(self.numeric_names) + self.buckets * len(self.categorical_names)

    def numeric_matrix(self, batch: ModelBatch) -> np.ndarray:
        """The batch's numeric features as events x `numeric_names` (missing: NaN); `encode`
        and `anomalies` take it when a caller needs both (built once)."""
        n = len(batch)
        matrix = np.full((n, len(self.numeric_names)), np.nan)
        for i, name in enumerate(self.numeric_names):
            column = batch.numeric.get(name)
            if column is not None:
                matrix[:, i] = column
        return matrix

    def encode(self, batch: ModelBatch, numeric: np.ndarray | None = None) -> np.ndarray:
        """Each event as a vector: robust-scaled numerics (missing: the median), then one
        hashed one-hot block per categorical feature (missing: all zeros)."""
        n = len(batch)
        out = np.zeros((n, self.dim), dtype=np.float64)
        k = len(self.numeric_names)
        if k:
            if numeric is None:
                numeric = self.numeric_matrix(batch)
            scaled = (numeric - self.median) / self.scale
            out[:, :k] = np.nan_to_num(scaled, nan=0.0, posinf=1e6, neginf=-1e6)
        for j, name in enumerate(self.categorical_names):
            column = batch.categorical.get(name)
            if column is None:
                continue
            buckets = self._buckets(name, column)
            present = np.flatnonzero(buckets >= 0)
            out[present, k + j * self.buckets + buckets[present]] = 1.0
        return out

    def _buckets(self, name: str, column: np.ndarray) -> np.ndarray:
        """Each value's hashed bucket (-1: missing). Hashing is memoized per distinct value
        (bounded), so a batch costs one dictionary lookup per value, done in C by map()."""
        memo = self._bucket_memo[name]
        new = {v: self._bucket(name, v) for v in set(column).difference(memo)}
        if len(memo) + len(new) <= CATEGORY_CACHE:
            memo.update(new)
            lookup = memo
        else:  # the memo is full: values new to it are hashed for this batch only
            lookup = {**memo, **new}
        return np.fromiter(map(lookup.__getitem__, column), dtype=np.int64, count=len(column))

    def _bucket(self, name: str, value: object) -> int:
        if value is None:
            return -1
        return zlib.crc32(f"{name}={value}".encode()) % self.buckets

    def anomalies(self, batch: ModelBatch, numeric: np.ndarray | None = None) -> np.ndarray:
        """Per event and feature (numeric, then categorical): outside the reference's picture."""
        n = len(batch)
        if numeric is None:
            numeric = self.numeric_matrix(batch)
        with np.errstate(invalid="ignore"):
            out_numeric = (numeric < self.low) | (numeric > self.high)
            out_numeric |= self.integral & (numeric != np.round(numeric)) & np.isfinite(numeric)
        out_categorical = np.zeros((n, len(self.categorical_names)), dtype=bool)
        for j, name in enumerate(self.categorical_names):
            column = batch.categorical.get(name)
            if column is None:
                continue
            # Usually every value is known: one set() of the column shows it, three times
            # cheaper than a lookup per value (which is left for the values that are new).
            values = column.tolist()
            unknown = set(values).difference(self.vocabulary[name])
            unknown.discard(None)
            if unknown:
                out_categorical[:, j] = np.fromiter(map(unknown.__contains__, values), bool, n)
        return np.hstack([out_numeric, out_categorical])

    @property
    def feature_names(self) -> list[str]:
        return self.numeric_names + self.categorical_names


class ProfiledDetector(Detector):
    """A detector judging inputs against the model's `InputProfile`, built from the reference
    handed over, else from the first events (`detectors.baseline`)."""

    baseline = Baseline.REFERENCE

    def __init__(self, model: str, reference_size: int) -> None:
        self.model = model
        self.reference: ReferenceSample | None = ReferenceSample(reference_size)
        self.profile: InputProfile | None = None

    def _monitored_from(self, batch: ModelBatch) -> int | None:
        """Feeds the reference while it fills (learning from it once full); returns where in
        the batch monitoring starts, or None when nothing of the batch is left to monitor."""
        start = 0
        if self.reference is not None:
            start = self.reference.add(batch)
            if not self.reference.full:
                return None
            numeric, categorical = self.reference.columns()
            self.reference = None
            self._learn(numeric, categorical)
        return start if start < len(batch) else None

    def profiled_state(self) -> dict[str, Any]:
        """The reference being collected, or the profile learned from it, as plain data."""
        return {
            "reference": None if self.reference is None else self.reference.state(),
            "profile": None if self.profile is None else self.profile.state(),
        }

    def load_profiled(self, state: dict[str, Any]) -> None:
        reference, profile = state["reference"], state["profile"]
        self.reference = None if reference is None else ReferenceSample.of_state(reference)
        self.profile = None if profile is None else InputProfile.of_state(profile)

    @abstractmethod
    def _learn(self, numeric: dict[str, np.ndarray], categorical: dict[str, np.ndarray]) -> None:
        """Builds the profile (and whatever else the detector needs) from the reference."""


class InputAnomalyDetector(ProfiledDetector):
    """`input_anomaly` (subject `*`): see the module docstring for the method."""

    name = "input_anomaly"

    def __init__(
        self,
        model: str,
        settings: InputAnomalySettings | None = None,
        reference_size: int | None = None,
        false_alarms_per_million: float | None = None,
    ) -> None:
        """`reference_size` and `false_alarms_per_million`, when given, override the settings'
        own: the model-wide reference size and this detector's share of the model's budget."""
        self.settings = settings or InputAnomalySettings()
        updates = {
            "reference_size": reference_size,
            "false_alarms_per_million": false_alarms_per_million,
        }
        updates = {key: value for key, value in updates.items() if value is not None}
        if updates:
            self.settings = InputAnomalySettings.model_validate(
                {**self.settings.model_dump(), **updates}
            )
        super().__init__(model, self.settings.reference_size)
        self._start()

    def _start(self) -> None:
        """Nothing measured yet: the state of a detector without a profile."""
        self.measured_rate = 0.0  # out-of-reference share, cross-fitted on the reference
        self.rate = 0.0  # its upper confidence bound: the in-control rate the CUSUM assumes
        self.cusum = Cusum(0.0, 0.0)
        self.pending = np.zeros((0, 0), dtype=bool)  # per event x feature, not yet in a block
        self.window_hits = 0  # anomalous events since the CUSUM last left zero
        self.window_count = 0
        self.window_features: np.ndarray = np.zeros(0)
        self.seen = 0

    def set_reference(self, reference: ModelBatch, learned: bool = False) -> None:
        """Builds the profile from the reference at once and starts afresh (shares judged
        against another profile would not compare)."""
        self._start()
        self.reference = None
        self._learn(reference.numeric, reference.categorical)

    def state(self) -> dict[str, Any]:
        return {
            **self.profiled_state(),
            "measured_rate": self.measured_rate,
            "rate": self.rate,
            "k": self.cusum.k,
            "h": self.cusum.h,
            "cusum": self.cusum.state()["up"],
            "pending": self.pending,
            "window_hits": self.window_hits,
            "window_count": self.window_count,
            "window_features": self.window_features,
            "seen": self.seen,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.load_profiled(state)
        self.measured_rate, self.rate = state["measured_rate"], state["rate"]
        self.cusum = Cusum(state["k"], state["h"])
        self.cusum.load_state({"up": state["cusum"]})
        self.pending = state["pending"]
        self.window_hits, self.window_count = state["window_hits"], state["window_count"]
        self.window_features = state["window_features"]
        self.seen = state["seen"]

    def update(self, batch: ModelBatch) -> list[Finding]:
        if not self.settings.enabled or len(batch) == 0:
            return []
        start = self._monitored_from(batch)
        if start is None:
            return []
        assert self.profile is not None
        flags = self.profile.anomalies(batch)[start:]
        return self._feed(batch, start, flags)

    def _learn(self, numeric: dict[str, np.ndarray], categorical: dict[str, np.ndarray]) -> None:
        s = self.settings
        even = (
            {n: v[0::2] for n, v in numeric.items()},
            {n: v[0::2] for n, v in categorical.items()},
        )
        self.profile = InputProfile(numeric, categorical, tail_quantile=s.tail_quantile)
        half = InputProfile(*even, tail_quantile=s.tail_quantile, lattice_of=self.profile)
        odd = reference_batch(
            {n: v[1::2] for n, v in numeric.items()}, {n: v[1::2] for n, v in categorical.items()}
        )
        self.measured_rate = float(half.anomalies(odd).any(axis=1).mean()) if len(odd) else 0.0
        # The CUSUM's false-alarm rate is very sensitive to an underestimated in-control rate,
        # and this one is estimated: judge against an upper confidence bound. Two sampling
        # errors of about the same size: the cross-fitted measurement (binomial, on the odd
        # half) and the full profile's own ranges, whose true exceedance differs from the
        # half-profile's; hence twice the binomial variance. Without it, 500 stationary
        # streams gave 0.2 false alarms per million events against a budget of 0.02.
        spread = math.sqrt(2 * self.measured_rate * (1 - self.measured_rate) / max(len(odd), 1))
        self.rate = max(self.measured_rate + RATE_BOUND_Z * spread, 1.0 / s.reference_size)
        expected = s.block_size * self.rate
        k = _stabilized(s.min_rate_ratio * expected, expected) / 2
        h = cusum_threshold(k, steps_budget(s.block_size, 1, s.false_alarms_per_million))
        self.cusum = Cusum(k, h)
        self.pending = np.zeros((0, len(self.profile.feature_names)), dtype=bool)
        self.window_features = np.zeros(len(self.profile.feature_names))

    def _feed(self, batch: ModelBatch, start: int, flags: np.ndarray) -> list[Finding]:
        s = self.settings
        carried = len(self.pending)
        rows = np.vstack([self.pending, flags])
        full = len(rows) // s.block_size
        cut = full * s.block_size
        self.pending = rows[cut:]
        findings = []
        expected = s.block_size * self.rate
        for b in range(full):
            block = rows[b * s.block_size : (b + 1) * s.block_size]
            hits = int(block.any(axis=1).sum())
            self.seen += s.block_size
            if self.cusum.drift_detected or self.cusum.statistic == 0.0:
                self.window_hits, self.window_count = 0, 0
                self.window_features[:] = 0
            self.cusum.update(_stabilized(hits, expected))
            self.window_hits += hits
            self.window_count += s.block_size
            self.window_features += block.sum(axis=0)
            if self.cusum.drift_detected:
                index = start + (b + 1) * s.block_size - 1 - carried
                finding = self._finding(batch, index)
                if finding is not None:
                    findings.append(finding)
        return findings

    def _finding(self, batch: ModelBatch, index: int) -> Finding | None:
        s = self.settings
        assert self.profile is not None
        share = self.window_hits / self.window_count
        if share - self.rate < s.min_excess_share:
            return None
        ratio = share / self.rate
        severity = Severity.CRITICAL if ratio >= s.critical_rate_ratio else Severity.WARNING
        order = np.argsort(-self.window_features)[:5]
        top = {
            self.profile.feature_names[i]: round(
                float(self.window_features[i] / self.window_count), 4
            )
            for i in order
            if self.window_features[i] > 0
        }
        return Finding(
            model=self.model,
            kind=Kind.INPUT_ANOMALY,
            subject="*",
            severity=severity,
            ts=float(batch.ts[index]),
            position=batch.position(index),
            detector=self.name,
            statistic="cusum_anomalous_share",
            value=round(self.cusum.statistic, 4),
            threshold=round(self.cusum.h, 4),
            effect_size=round(ratio, 3),
            support=self.window_count,
            title=f"{share:.1%} of inputs out of reference range ({ratio:.1f}x the usual "
            f"{self.rate:.2%})",
            details={
                "anomalous_share": round(share, 4),
                "reference_share": round(self.rate, 4),
                "reference_share_measured": round(self.measured_rate, 4),
                "share_by_feature": top,
                "events_since_change": self.window_count,
                "block_size": s.block_size,
                "k": round(self.cusum.k, 4),
                "events_seen": self.seen,
            },
        )


# How many standard errors above the measured reference rate the in-control rate is taken.
RATE_BOUND_Z = 2.0


def _stabilized(hits: float, expected: float) -> float:
    """Anscombe's transform of a Poisson-like count minus its value at the expectation."""
    return 2 * (math.sqrt(hits + 0.375) - math.sqrt(expected + 0.375))


def reference_batch(
    numeric: dict[str, np.ndarray], categorical: dict[str, np.ndarray]
) -> ModelBatch:
    """A feature-only batch over reference columns, so the profile code reads them as usual."""
    n = len(next(iter(numeric.values()), next(iter(categorical.values()), np.empty(0))))
    return ModelBatch(
        model="",
        source="",
        partition=0,
        ts=np.zeros(n),
        offsets=np.zeros(n, dtype=np.int64),
        ids=[],
        clients=[],
        model_versions=[],
        rows=[],
        numeric=numeric,
        categorical=categorical,
    )


def _on_lattice(values: np.ndarray, owners: np.ndarray | None = None) -> bool:
    """Whether a numeric feature's reference values lie on the integer lattice: more than two
    distinct values, at least `LATTICE_SHARE` of them whole, and more of those besides the
    most common value whole than not (`LATTICE_SHARE_BESIDES_MODE`).

    With `owners` (each value's client id, `NO_CLIENT` for none) the shares are of clients,
    not of values: each client's values weigh 1 / its count (a value without a client weighs
    1). A reference learned from the first events gives each client up to twice the mean
    client's share, and more while few clients have spoken: on `client_attacks.py --quick`
    a uniform-random extractor of the first hour held 24% of the learned reference, enough
    to erase the lattice of all 64 pixels, so its own queries were in reference and it was
    never flagged; as one voice of 43 it leaves the lattice standing."""
    weights = np.ones(len(values))
    if owners is not None and knows_clients(owners):
        voice, sizes = client_voices(owners)
        weights = 1.0 / sizes[voice]
    distinct, index = np.unique(values, return_inverse=True)
    if len(distinct) <= 2:
        return False
    counts = np.bincount(index, weights, minlength=len(distinct))
    whole = distinct == np.round(distinct)
    besides = np.ones(len(distinct), dtype=bool)
    besides[np.argmax(counts)] = False
    return bool(
        counts[whole].sum() >= LATTICE_SHARE * counts.sum()
        and counts[whole & besides].sum() >= LATTICE_SHARE_BESIDES_MODE * counts[besides].sum()
    )
