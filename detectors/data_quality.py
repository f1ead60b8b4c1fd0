"""Data quality: missing values, type violations, out-of-range values, new and vanished fields,
each judged against the reference rather than against absolute limits.

Over tumbling windows of `window` events, every field of the reference gets three counts:
missing values (null or absent), values of the wrong type (strings where the reference had
numbers, or numbers where it had strings or booleans), and numbers outside the reference's
[min, max]. Fields absent from the reference are counted too (new fields).

Each count is compared with the reference's by an exact one-sided test: given the total
t = a + b of the reference count a (of n) and the window count b (of m), b is
Binomial(t, m / (n + m)) when both come from the same rate. The test is exact for rare events
(a missing rate of 0.1% as much as 30%) and accounts for the reference's own sampling error.
Out-of-range values have no reference count (the reference lies inside its own range by
construction); a new value falls outside the range of n exchangeable ones with probability
2 / (n + 1), so the reference counts 2 such values.

The budget is spent per window, as for categorical drift: 3 tests per field plus one for new
fields, alpha = budget / (tests * 1e6 / window), by the union bound. A significant window is
a finding only if the rate rose by at least `min_rate_increase` (default 0.02: two more
events in a hundred), so a stable 0.1% of nulls that becomes 0.3% is not an incident.
"""

from __future__ import annotations

import math
from dataclasses import astuple, dataclass, field
from typing import Any

import numpy as np

from detectors.base import Finding, Kind, Severity, Verdict
from detectors.reference import (
    ReferenceDetector,
    is_none,
    numeric_values,
    reference_type,
)
from detectors.settings import DataQualitySettings
from detectors.stats.binomial import conditional_binomial_tails
from detectors.stats.calibration import window_alpha
from streams.batch import ModelBatch

RANGE_PSEUDO_COUNT = 2  # expected reference values outside the reference's own range

# The counts kept per field and window, in this order.
MISSING, VIOLATION, VALID, OUT_OF_RANGE, PRESENT = range(5)


@dataclass(slots=True)
class FieldReference:
    kind: str  # "numeric" or "categorical"
    events: int
    missing: int
    violations: int
    values: int  # values of the reference type
    low: float = math.nan
    high: float = math.nan

    def summary(self) -> dict[str, object]:
        out: dict[str, object] = {
            "type": self.kind,
            "events": self.events,
            "missing_rate": round(self.missing / self.events, 6),
            "type_violation_rate": round(self.violations / self.events, 6),
        }
        if self.kind == "numeric":
            out["range"] = [self.low, self.high]
        return out


@dataclass(slots=True)
class RateTest:
    """One exact conditional binomial comparison of a window rate with the reference's."""

    statistic: str
    ref_count: float
    ref_size: int
    count: int
    size: int

    @property
    def increase(self) -> float:
        return self.count / self.size - self.ref_count / self.ref_size

    def p_value(self) -> float:
        """One-sided: a rate that rose."""
        return conditional_binomial_tails(self.count, self.size, self.ref_count, self.ref_size)[0]


@dataclass(slots=True)
class _Window:
    counts: dict[str, np.ndarray] = field(default_factory=dict)  # field -> the 5 counts
    new: dict[str, int] = field(default_factory=dict)  # new field -> events having it


class DataQualityDetector(ReferenceDetector):
    """`data_quality` findings per field; see the module docstring for the method."""

    name = "data_quality"

    settings_type = DataQualitySettings
    settings: DataQualitySettings
    fields: dict[str, FieldReference]
    alpha: float
    reference_events: int

    def build(self, reference: ModelBatch) -> None:
        self.fields = {}
        for name in sorted(reference.feature_names()):
            kind = reference_type(reference, name)
            if kind is None:
                continue  # never had a value: nothing to compare with
            self.fields[name] = FieldReference(kind, len(reference), 0, 0, 0)
        counts = _Flags.of(reference, self.fields).counts(0, len(reference))
        for ref, row in zip(self.fields.values(), counts.tolist(), strict=True):
            ref.missing, ref.violations, ref.values = row[MISSING], row[VIOLATION], row[VALID]
        for name, ref in self.fields.items():
            if ref.kind == "numeric":
                values = numeric_values(reference, name)
                ref.low, ref.high = float(values.min()), float(values.max())
        self.reference_events = len(reference)
        tests = 3 * len(self.fields) + 1
        self.alpha = window_alpha(self.budget, self.settings.window, tests)
        self.window, self.filled, self.seen = _Window(), 0, 0

    def built_state(self) -> dict[str, Any]:
        """Per field its reference figures (in the fields' order, which the counts follow),
        and the current window."""
        return {
            "fields": [[name, *astuple(ref)] for name, ref in self.fields.items()],
            "reference_events": self.reference_events,
            "alpha": self.alpha,
            "window": {"counts": self.window.counts, "new": self.window.new},
            "filled": self.filled,
            "seen": self.seen,
        }

    def load_built(self, state: dict[str, Any]) -> None:
        self.fields = {name: FieldReference(*values) for name, *values in state["fields"]}
        self.reference_events = state["reference_events"]
        self.alpha = state["alpha"]
        self.window = _Window(state["window"]["counts"], state["window"]["new"])
        self.filled, self.seen = state["filled"], state["seen"]

    def monitor(self, batch: ModelBatch) -> list[Finding]:
        n = len(batch)
        if n == 0:
            return []
        flags = _Flags.of(batch, self.fields)
        new = {name: _present(batch, name) for name in batch.feature_names() - self.fields.keys()}
        findings: list[Finding] = []
        size = self.settings.window
        start = 0
        while start < n:
            stop = min(start + size - self.filled, n)
            for name, counts in zip(self.fields, flags.counts(start, stop), strict=True):
                previous = self.window.counts.get(name)
                self.window.counts[name] = counts if previous is None else previous + counts
            for name, present in new.items():
                count = int(np.count_nonzero(present[start:stop]))
                self.window.new[name] = self.window.new.get(name, 0) + count
            self.filled += stop - start
            start = stop
            if self.filled == size:
                findings.extend(self._judge(batch, stop - 1))
                self.seen += size
                self.window, self.filled = _Window(), 0
        return findings

    def _judge(self, batch: ModelBatch, index: int) -> list[Finding]:
        size = self.settings.window
        findings = []
        for name, ref in self.fields.items():
            counts = self.window.counts[name].tolist()
            floor = self.settings.of(name, "min_rate_increase")
            tests = [
                RateTest("missing_rate", ref.missing, ref.events, counts[MISSING], size),
                RateTest(
                    "type_violation_rate", ref.violations, ref.events, counts[VIOLATION], size
                ),
            ]
            if ref.kind == "numeric" and counts[VALID] > 0:
                tests.append(
                    RateTest(
                        "out_of_range_rate",
                        RANGE_PSEUDO_COUNT,
                        ref.values,
                        counts[OUT_OF_RANGE],
                        counts[VALID],
                    )
                )
            for test in tests:
                if test.increase < floor:
                    continue  # the usual case, settled without the verdict's work
                verdict = self._verdict(name, test, self.alpha, ref, vanished=not counts[PRESENT])
                if verdict is not None:
                    findings.append(
                        verdict.finding(self.name, Kind.DATA_QUALITY, name, batch, index)
                    )
        new = {name: count for name, count in self.window.new.items() if count}
        for name, count in new.items():
            test = RateTest("new_field_rate", 0, self.reference_events, count, size)
            verdict = self._verdict(name, test, self.alpha / len(new), None, vanished=False)
            if verdict is not None:
                findings.append(verdict.finding(self.name, Kind.DATA_QUALITY, name, batch, index))
        return findings

    def _verdict(
        self,
        name: str,
        test: RateTest,
        alpha: float,
        ref: FieldReference | None,
        vanished: bool,
    ) -> Verdict | None:
        floor = self.settings.of(name, "min_rate_increase")
        if test.increase < floor:
            return None  # checked first: it is cheap, and usually settles it
        p = test.p_value()
        if p > alpha:
            return None
        rate, ref_rate = test.count / test.size, test.ref_count / test.ref_size
        statistic = test.statistic
        if statistic == "missing_rate" and vanished:
            statistic = "field_vanished"
        critical = vanished or test.increase >= self.settings.of(name, "critical_rate_increase")
        title = {
            "missing_rate": f"{name}: missing rate {ref_rate:.1%} -> {rate:.1%}",
            "field_vanished": f"{name}: field vanished (no value in the last {test.size} events)",
            "type_violation_rate": (
                f"{name}: {rate:.1%} of values are not "
                f"{'numbers' if ref and ref.kind == 'numeric' else 'strings or booleans'}"
            ),
            "out_of_range_rate": (
                f"{name}: {rate:.1%} of values outside the reference range"
                + (f" [{ref.low:g}, {ref.high:g}]" if ref else "")
            ),
            "new_field_rate": f"{name}: new field, in {rate:.1%} of events",
        }[statistic]
        return Verdict(
            statistic=statistic,
            value=round(_minus_log10(p), 4),
            threshold=round(_minus_log10(alpha), 4),
            effect_size=round(test.increase, 6),
            severity=Severity.CRITICAL if critical else Severity.WARNING,
            support=test.size,
            title=title,
            details={
                "test": "exact_conditional_binomial",
                "value_meaning": "-log10 p-value; fires above -log10 alpha",
                "p_value": p,
                "alpha": alpha,
                "effect_measure": "rate increase over the reference rate",
                "effect_floor": self.settings.of(name, "min_rate_increase"),
                "reference": {
                    "rate": round(ref_rate, 6),
                    "count": test.ref_count,
                    "size": test.ref_size,
                    **(ref.summary() if ref else {"type": None}),
                },
                "current": {"rate": round(rate, 6), "count": test.count, "size": test.size},
                "window": self.settings.window,
                "events_seen": self.seen + self.filled,
            },
        )


@dataclass(slots=True)
class _Flags:
    """What each field of the reference holds in each event of a batch, as (fields x events)
    boolean matrices, so that a window's counts for all fields are a few numpy calls."""

    number: np.ndarray  # a number
    category: np.ndarray  # a string or boolean
    out_of_range: np.ndarray  # a number outside the reference range (numeric fields)
    numeric: np.ndarray  # per field: its reference type is numeric

    @classmethod
    def of(cls, batch: ModelBatch, fields: dict[str, FieldReference]) -> _Flags:
        shape = (len(fields), len(batch))
        number, category = np.zeros(shape, bool), np.zeros(shape, bool)
        out_of_range = np.zeros(shape, bool)
        rows = [(i, batch.numeric[n]) for i, n in enumerate(fields) if n in batch.numeric]
        if rows:
            which = [i for i, _ in rows]
            values = np.stack([column for _, column in rows])
            refs = list(fields.values())
            # A field of categorical reference type has no range (NaN): nothing is outside it.
            low = np.array([refs[i].low for i in which])
            high = np.array([refs[i].high for i in which])
            number[which] = ~np.isnan(values)
            with np.errstate(invalid="ignore"):
                out_of_range[which] = (values < low[:, None]) | (values > high[:, None])
        rows = [(i, batch.categorical[n]) for i, n in enumerate(fields) if n in batch.categorical]
        if rows:
            category[[i for i, _ in rows]] = ~is_none(np.stack([c for _, c in rows]))
        numeric = np.array([ref.kind == "numeric" for ref in fields.values()], dtype=bool)
        return cls(number, category, out_of_range, numeric)

    def counts(self, start: int, stop: int) -> np.ndarray:
        """Per field, the 5 counts (MISSING, VIOLATION, VALID, OUT_OF_RANGE, PRESENT) of the
        events in [start, stop)."""
        numbers = np.count_nonzero(self.number[:, start:stop], axis=1)
        categories = np.count_nonzero(self.category[:, start:stop], axis=1)
        present = np.count_nonzero(
            self.number[:, start:stop] | self.category[:, start:stop], axis=1
        )
        out = np.empty((len(self.numeric), 5), dtype=np.int64)
        out[:, MISSING] = (stop - start) - present
        out[:, VIOLATION] = np.where(self.numeric, categories, numbers)
        out[:, VALID] = np.where(self.numeric, numbers, categories)
        out[:, OUT_OF_RANGE] = np.count_nonzero(self.out_of_range[:, start:stop], axis=1)
        out[:, PRESENT] = present
        return out


def _present(batch: ModelBatch, name: str) -> np.ndarray:
    """Per event, whether the field has a value: a key with null values only counts as absent
    (it carries nothing)."""
    present = np.zeros(len(batch), dtype=bool)
    if name in batch.numeric:
        present |= ~np.isnan(batch.numeric[name])
    if name in batch.categorical:
        present |= ~is_none(batch.categorical[name])
    return present


def _minus_log10(p: float) -> float:
    return -math.log10(max(p, 1e-300))
