"""Categorical feature drift: windowed two-sample chi-square tests, PSI as the effect size.

Per feature, non-missing values are counted over tumbling windows of `window` values, and
each window's frequencies are compared with the reference's by the chi-square test of
homogeneity of a 2 x K table (reference counts, window counts). Being a two-sample test, it
accounts for the reference's own sampling error, so its p-value is valid for every window.

Categories too rare to keep the test's expected counts >= `min_expected` in a window are
pooled into one `other` bin, and so are categories never seen in the reference: a new
category shows up as mass moving into `other`, and the finding names it. A reference category
that disappears shows up as an empty bin, named as vanished. The pooled bin needs the
expected counts too (a cell expecting about one count makes Pearson's statistic
anti-conservative in the tail: 2 to 5 times alpha, computed exactly, for pooled shares of
0.2% to 0.9%): while it falls short, the smallest kept category joins it. A feature left
with one kept category and a rare rest (a flag true in 0.1% of rows) is judged by the exact
conditional test of its 2 x 2 table instead (the rest's count given both samples' total is
binomial), two-sided, as `data_quality` judges rates.

The false-alarm budget is spent per window: with W-value windows there are 1e6 / W tests per
feature per million values, so each test runs at alpha = budget / (features * 1e6 / W). That
is a union bound, valid however the windows are correlated (they share the reference).

A significant window becomes a finding only when its population stability index (PSI) against
the reference reaches `min_psi` (default 0.05, about a binary feature's share moving from 0.5
to 0.39, in line with the KS floor of 0.05 for numeric shapes; ten times the PSI of a
stationary window; the credit-scoring convention's 0.1 missed real changes, such as a 0.054
shift of a car-price model's `transmission` that NannyML and Evidently flagged). From
`critical_psi` (0.25, that convention's "major") the finding is critical.
The Jensen-Shannon distance is reported alongside.

Numeric features with fewer than `MIN_DISTINCT_VALUES` distinct reference values (codes,
flags, small counts) are judged here rather than by numeric drift.

Where events carry a `client`, a window that a few keys filled (each keeps its own mix of
categories: a tenant's country) counts as its size over its design effect, from the
window's own composition and the feature's kappa within keys (`detectors.stats.clustering`;
Rao and Scott's first-order correction): its counts are scaled before either test.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import numpy as np
from scipy.special import chdtri, rel_entr  # not scipy.stats: ~50 MB less to import

from detectors.base import Finding, Kind, Severity, Verdict
from detectors.reference import (
    ReferenceDetector,
    category_values,
    is_continuous,
    is_none,
    numeric_values,
    present_numbers,
    reference_type,
    watch,
)
from detectors.settings import CategoricalDriftSettings
from detectors.state_codec import set_items
from detectors.stats.binomial import conditional_binomial_tails
from detectors.stats.calibration import window_alpha
from detectors.stats.clustering import (
    ClientContext,
    IntraclassCorrelation,
    loaded_ids,
    stored_ids,
)
from streams.batch import ModelBatch, knows_clients

OTHER = "__other__"
PSEUDO_COUNT = 0.5  # added to every bin for PSI and JS, so an empty bin has a finite share
TOP = 8  # categories shown in a finding's summaries


@dataclass(slots=True)
class CategoricalAlarm:
    index: int  # index, among the values fed, of the window's last value
    statistic: float  # the chi-square statistic
    threshold: float
    df: int
    window: Counter[Any]  # the window's raw category counts
    bins: np.ndarray  # the window's counts per bin
    exact: bool = False  # the exact 2 x 2 test decided (statistic -log10 p, threshold alpha's)
    design_effect: float = 1.0  # of the window's clients: it counted as size / this values
    intraclass_correlation: float = 0.0  # the rho (kappa) that was computed with


@dataclass(frozen=True, slots=True)
class PsiFloors:
    min_psi: float
    critical_psi: float


class CategoricalMonitor:
    """One categorical quantity's reference bins and its tumbling window.

    Shared by feature drift and prediction drift (class proportions, discrete scores)."""

    def __init__(
        self, reference: np.ndarray, window: int, alpha: float, min_expected: float
    ) -> None:
        counts = Counter(reference.tolist())
        n = len(reference)
        kept = [c for c, k in counts.most_common() if k * window / n >= min_expected]
        pooled = n - sum(counts[c] for c in kept)
        while 0 < pooled * window / n < min_expected and len(kept) >= 2:
            pooled += counts[kept.pop()]  # the smallest kept category joins the rest
        # One category and a rare rest: the exact test of the 2 x 2 table (see above).
        self.exact = len(kept) == 1 and 0 < pooled * window / n < min_expected
        self.bins = {category: i for i, category in enumerate(kept)}
        self.names = [*(_label(c) for c in kept), OTHER]
        self.ref_counts = np.array([counts[c] for c in kept] + [pooled], dtype=np.float64)
        self.ref_size = n
        self.known = set(counts)
        self.window_size = window
        self.alpha = alpha
        self.current: Counter[Any] = Counter()
        self.current_ids = np.zeros(0, dtype=np.int64)  # the window's clients, per value
        self.current_bins = np.zeros(0, dtype=np.int64)  # its bins (where it has clients)
        self.icc = IntraclassCorrelation()
        self.filled = 0
        self.seen = 0
        self._thresholds: dict[int, float] = {}

    def state(self) -> dict[str, Any]:
        """Plain data: the reference bins (categories in bin order) and counts, and the
        current window's counts in the order its categories came."""
        return {
            "bins": list(self.bins),
            "names": self.names,
            "ref_counts": self.ref_counts,
            "ref_size": self.ref_size,
            "known": set_items(self.known),
            "window_size": self.window_size,
            "alpha": self.alpha,
            "exact": self.exact,
            "current": [[category, count] for category, count in self.current.items()],
            "current_ids": stored_ids(self.current_ids),
            "current_bins": self.current_bins
            if knows_clients(self.current_ids)
            else self.current_bins[:0],
            "icc": self.icc.state(),
            "filled": self.filled,
            "seen": self.seen,
        }

    @classmethod
    def of_state(cls, state: dict[str, Any]) -> CategoricalMonitor:
        monitor = cls.__new__(cls)
        monitor.bins = {category: i for i, category in enumerate(state["bins"])}
        monitor.names = state["names"]
        monitor.ref_counts = state["ref_counts"]
        monitor.ref_size = state["ref_size"]
        monitor.known = set(state["known"])
        monitor.window_size = state["window_size"]
        monitor.alpha = state["alpha"]
        monitor.exact = state.get("exact", False)  # a checkpoint from before the exact test
        monitor.current = Counter(dict(state["current"]))
        monitor.current_ids = loaded_ids(state.get("current_ids"), state["filled"])
        monitor.current_bins = loaded_ids(state.get("current_bins"), state["filled"])
        monitor.icc = IntraclassCorrelation(*state.get("icc", [0.0, 0.0]))
        monitor.filled = state["filled"]
        monitor.seen = state["seen"]
        monitor._thresholds = {}
        return monitor

    def feed(
        self, values: np.ndarray, clients: ClientContext | None = None
    ) -> list[CategoricalAlarm]:
        """Adds values (in arrival order, with their `clients`); returns the alarms of the
        windows they complete."""
        items = values.tolist()
        ids = clients.ids if clients is not None else np.zeros(len(items), dtype=np.int64)
        other = len(self.names) - 1
        alarms = []
        i = 0
        while i < len(items):
            take = min(self.window_size - self.filled, len(items) - i)
            chunk = items if take == len(items) else items[i : i + take]
            self.current.update(chunk)
            chunk_ids = ids[i : i + take]
            # Bins per value only where a client may pair them (none: no cost).
            bins = (
                np.fromiter(map(self.bins.get, chunk, repeat(other)), np.int64, len(chunk))
                if knows_clients(chunk_ids)
                else np.zeros(take, dtype=np.int64)
            )
            self.current_ids = np.concatenate([self.current_ids, chunk_ids])
            self.current_bins = np.concatenate([self.current_bins, bins])
            self.filled += take
            i += take
            if self.filled == self.window_size:
                alarm = self._test(i - 1, clients)
                if alarm is not None:
                    alarms.append(alarm)
                self.seen += self.filled
                self.current, self.filled = Counter(), 0
                self.current_ids = np.zeros(0, dtype=np.int64)
                self.current_bins = np.zeros(0, dtype=np.int64)
        return alarms

    def _test(self, index: int, clients: ClientContext | None) -> CategoricalAlarm | None:
        window = np.zeros(len(self.names))
        other = len(self.names) - 1
        for category, count in self.current.items():
            window[self.bins.get(category, other)] += count
        # Clients' clusters: the window counts as size / deff independent values (its
        # counts scaled alike, the reference's as they are; Rao and Scott's first-order
        # correction of the two-sample test). rho is what this window and those before
        # taught (its own pairs agree beyond its own shares: no drift reads as agreement).
        rho, deff = self.icc.value, 1.0
        if clients is not None and knows_clients(self.current_ids):
            senders = clients.window(self.current_ids)
            self.icc.add_categories(senders, self.current_bins, window / window.sum())
            rho = self.icc.value
            deff = 1.0 + rho * senders.excess
        effective = window / deff
        if self.exact:
            p = exact_two_sided(
                self.ref_counts[-1], round(effective[-1]), self.ref_size, round(effective.sum())
            )
            if p > self.alpha:
                return None
            statistic, threshold = -math.log10(max(p, 1e-300)), -math.log10(self.alpha)
            alarm = CategoricalAlarm(index, statistic, threshold, 1, self.current, window, True)
        else:
            statistic, df = chi_square_homogeneity(self.ref_counts, effective)
            if df == 0:
                return None
            threshold = self._threshold(df)
            if statistic <= threshold:
                return None
            alarm = CategoricalAlarm(index, statistic, threshold, df, self.current, window)
        alarm.design_effect, alarm.intraclass_correlation = deff, rho
        return alarm

    def _threshold(self, df: int) -> float:
        if df not in self._thresholds:
            self._thresholds[df] = float(chdtri(df, self.alpha))
        return self._thresholds[df]

    def judge(self, name: str, alarm: CategoricalAlarm, floors: PsiFloors) -> Verdict | None:
        """The alarm as evidence, or None when its PSI is below the practical floor."""
        p = _shares(self.ref_counts)
        q = _shares(alarm.bins)
        psi = stability_index(p, q)
        if psi < floors.min_psi:
            return None
        new = Counter({c: k for c, k in alarm.window.items() if c not in self.known})
        vanished = [
            _label(c) for c, i in self.bins.items() if alarm.bins[i] == 0 and self.ref_counts[i]
        ]
        m = float(alarm.bins.sum())
        changes = []
        if new:
            changes.append(f"new {', '.join(_label(c) for c, _ in new.most_common(3))}")
        if vanished:
            changes.append(f"vanished {', '.join(vanished[:3])}")
        moved = f" ({'; '.join(changes)})" if changes else ""
        return Verdict(
            statistic="exact_binomial_homogeneity" if alarm.exact else "chi_square_homogeneity",
            value=round(alarm.statistic, 4),
            threshold=round(alarm.threshold, 4),
            effect_size=round(psi, 4),
            severity=Severity.CRITICAL if psi >= floors.critical_psi else Severity.WARNING,
            support=int(m),
            title=f"{name}: category frequencies shifted, PSI {psi:.2f}{moved}",
            details={
                "test": "windowed_exact_binomial_two_sample"
                if alarm.exact
                else "windowed_chi_square_two_sample",
                "effect_measure": "population stability index (PSI)",
                "effect_floor": floors.min_psi,
                "psi": round(psi, 4),
                "js_distance": round(js_distance(p, q), 4),
                "df": alarm.df,
                "alpha": self.alpha,
                "window": self.window_size,
                "reference": {
                    "size": self.ref_size,
                    "shares": self._top(self.ref_counts, self.ref_size),
                },
                "current": {"size": int(m), "shares": self._top(alarm.bins, m)},
                "new_categories": {_label(c): k for c, k in new.most_common(TOP)},
                "vanished_categories": vanished[:TOP],
                "events_seen": self.seen + self.filled,
                # Clients' clusters: the window counted as window / design_effect values.
                "design_effect": round(alarm.design_effect, 4),
                "intraclass_correlation": round(alarm.intraclass_correlation, 4),
            },
        )

    def _top(self, counts: np.ndarray, total: float) -> dict[str, float]:
        order = np.argsort(-counts)[:TOP]
        return {self.names[i]: round(float(counts[i] / total), 4) for i in order if counts[i]}


def chi_square_homogeneity(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    """Pearson's statistic of the 2 x K table (a, b) and its degrees of freedom (bins with
    any count, minus one)."""
    used = (a + b) > 0
    a, b = a[used], b[used]
    n, m = a.sum(), b.sum()
    total = a + b
    expected_a = total * n / (n + m)
    expected_b = total * m / (n + m)
    statistic = float(
        np.sum((a - expected_a) ** 2 / expected_a + (b - expected_b) ** 2 / expected_b)
    )
    return statistic, int(used.sum()) - 1


def exact_two_sided(a: float, b: float, n: float, m: float) -> float:
    """The two-sided p-value of the exact conditional test of a 2 x 2 table: `a` of `n`
    reference values and `b` of `m` window values in one bin."""
    upper, lower = conditional_binomial_tails(int(b), int(m), a, int(n))
    return min(1.0, 2 * min(upper, lower))


def stability_index(p: np.ndarray, q: np.ndarray) -> float:
    """The PSI of shares `q` against reference shares `p` (both without zeros)."""
    return float(np.sum((q - p) * np.log(q / p)))


def _shares(counts: np.ndarray) -> np.ndarray:
    smoothed = counts + PSEUDO_COUNT
    return smoothed / smoothed.sum()


def _label(category: object) -> str:
    if isinstance(category, float) and category.is_integer():
        return str(int(category))
    return str(category)


def discrete_features(reference: ModelBatch) -> dict[str, np.ndarray]:
    """Features judged by frequency: categorical ones, and numeric codes (few distinct
    values), each with its non-missing reference values."""
    out = {}
    for name in sorted(reference.feature_names()):
        kind = reference_type(reference, name)
        if kind == "categorical":
            out[name] = category_values(reference, name)
        elif kind == "numeric":
            values = numeric_values(reference, name)
            if not is_continuous(values):
                out[name] = values
    return out


class CategoricalDriftDetector(ReferenceDetector):
    """`feature_drift` on categorical and discrete numeric features (module docstring)."""

    name = "categorical_drift"

    settings_type = CategoricalDriftSettings
    settings: CategoricalDriftSettings
    monitors: dict[str, CategoricalMonitor]
    numeric_codes: set[str]

    def build(self, reference: ModelBatch) -> None:
        s = self.settings
        features = {n: v for n, v in discrete_features(reference).items() if len(v) >= 100}
        alpha = window_alpha(self.budget, s.window, len(features))
        self.monitors = {
            name: CategoricalMonitor(values, s.window, alpha, s.min_expected)
            for name, values in features.items()
        }
        self.numeric_codes = {n for n, v in features.items() if v.dtype != object}

    def built_state(self) -> dict[str, Any]:
        return {
            "monitors": {name: m.state() for name, m in self.monitors.items()},
            "numeric_codes": sorted(self.numeric_codes),
        }

    def load_built(self, state: dict[str, Any]) -> None:
        self.monitors = {n: CategoricalMonitor.of_state(m) for n, m in state["monitors"].items()}
        self.numeric_codes = set(state["numeric_codes"])

    def monitor(self, batch: ModelBatch) -> list[Finding]:
        findings: list[Finding] = []
        clients = ClientContext.of_ids(batch)
        for name, monitor in self.monitors.items():
            if name in self.numeric_codes:
                values, valid = present_numbers(batch, name)
            else:
                values, valid = _categories(batch.categorical.get(name))
            if len(valid) == 0:
                continue
            floors = PsiFloors(
                self.settings.of(name, "min_psi"), self.settings.of(name, "critical_psi")
            )
            findings += watch(
                self.name,
                Kind.FEATURE_DRIFT,
                name,
                monitor,
                floors,
                batch,
                values,
                valid,
                clients.take(valid),
            )
        return findings


def _categories(column: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """A categorical column's non-missing values and their indices in the batch.

    Columns usually have no missing value, and a list's own None check is several times
    cheaper than numpy's elementwise comparison on objects: that is checked first.
    """
    if column is None:
        return np.empty(0, dtype=object), np.empty(0, dtype=np.intp)
    if None not in column.tolist():
        return column, np.arange(len(column))
    valid = np.flatnonzero(~is_none(column))
    return column[valid], valid


def js_distance(p: np.ndarray, q: np.ndarray) -> float:
    """The Jensen-Shannon distance (base 2) between two distributions (shares summing to 1)."""
    m = (p + q) / 2
    divergence = (rel_entr(p, m).sum() + rel_entr(q, m).sum()) / (2 * math.log(2))
    return math.sqrt(max(float(divergence), 0.0))
