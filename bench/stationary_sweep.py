"""Stationary streams with awkward feature types: every incident is a false alarm.

`bench/drift.py`'s stationary stream has well-behaved features. Real models have worse, and
the held-out streams Bulwark is judged on may too. Each scenario draws one fixed
distribution (a few ordinary features beside the awkward ones, one event per second) and
runs every detector at its defaults, a reference learned from the first 3,000 events:

- `zipf`, `powerlaw50k`, `uniform5k`: categorical ids with long tails (unseen values forever);
- `missing`: 20% NaN in a numeric feature, 30% None in a categorical one;
- `heavy`: Cauchy, Pareto (a = 1.2) and log-normal (sigma 3) features;
- `fewlevel`: flags at 3% and 50%, a 3-level ordinal, Poisson(0.3), a 30-level price lattice;
- `multiclass30`, `multiclass15`: skewed class priors (the rarest well under 0.1%);
- `regression`: a regressor's float predictions, no scores;
- `wide`: 200 numeric features of ten shapes;
- `boolrare`: a boolean true in 0.1% of rows;
- `zeroinfl`: amounts that are 0 in 90%, 97% and 99.5% of rows, log-normal otherwise;
- `weird`: infinities, constant columns, ints and strings in one categorical, 99% NaN;
- `control`: `bench/drift.py`'s stationary stream.

It prints, per scenario and seed, the incidents (distinct kind and subject) with examples,
and appends every run to `--out` as a JSON line. `--budget` and `--no-floors` stress the
calibration: with an inflated budget and no effect floors every alarm of a test is a
finding, and the findings per detector can be set against the budget's expectation (printed).

    PYTHONPATH=. python bench/stationary_sweep.py --seeds 1,2,3 --events 400000
    PYTHONPATH=. python bench/stationary_sweep.py --scenarios zeroinfl --budget 20 --no-floors
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.drift import BATCH, Stream, _choice, _continuous, _score, stationary
from detectors.base import Finding
from detectors.registry import DetectorSettings, build_detectors
from streams.batch import ModelBatch

ORDINARY = ["x_normal", "amount", "ratio"]


@dataclass
class SweepStream(Stream):
    """Stream plus the output mode: binary (score), multiclass (probs, classes), regression."""

    mode: str = "binary"
    probs: np.ndarray | None = None
    classes: list[str] | None = None
    prediction: np.ndarray | None = None


def _base(rng: np.random.Generator, n: int) -> SweepStream:
    s = SweepStream(n)
    for name in ORDINARY:
        s.numeric[name] = _continuous(rng, name, n)
    s.categorical["plan"] = _choice(rng, ["free", "pro", "team"], [0.6, 0.3, 0.1], n)
    return s


def _binary(s: SweepStream, extra: np.ndarray | float = 0.0) -> SweepStream:
    """A binary classifier's scores: `bench/drift.py`'s model, plus `extra` log-odds."""
    _score(s, extra)
    s.mode = "binary"
    return s


def _ids(draw: np.ndarray, prefix: str = "id") -> np.ndarray:
    out = np.empty(len(draw), dtype=object)
    out[:] = [f"{prefix}{int(v)}" for v in draw]
    return out


# --- scenarios -----------------------------------------------------------------------------


def sc_zipf(rng: np.random.Generator, n: int) -> SweepStream:
    s = _base(rng, n)
    s.categorical["merchant"] = _ids(rng.zipf(1.3, n))
    return _binary(s)


def sc_powerlaw50k(rng: np.random.Generator, n: int) -> SweepStream:
    s = _base(rng, n)
    k = np.arange(1, 50_001)
    p = k**-1.0
    p /= p.sum()
    s.categorical["merchant"] = _ids(rng.choice(50_000, n, p=p))
    return _binary(s)


def sc_uniform5k(rng: np.random.Generator, n: int) -> SweepStream:
    s = _base(rng, n)
    s.categorical["merchant"] = _ids(rng.integers(0, 5000, n))
    return _binary(s)


def sc_missing(rng: np.random.Generator, n: int) -> SweepStream:
    s = _base(rng, n)
    x = rng.gamma(2.0, 300.0, n)
    x[rng.random(n) < 0.2] = np.nan
    s.numeric["income"] = x
    c = _choice(rng, ["web", "app", "pos"], [0.5, 0.35, 0.15], n)
    c[rng.random(n) < 0.3] = None
    s.categorical["channel"] = c
    return _binary(s, 0.0003 * np.nan_to_num(x, nan=600.0))


def sc_heavy(rng: np.random.Generator, n: int) -> SweepStream:
    s = _base(rng, n)
    s.numeric["cauchy"] = rng.standard_cauchy(n)
    s.numeric["pareto"] = rng.pareto(1.2, n) + 1.0
    s.numeric["lognorm3"] = rng.lognormal(0.0, 3.0, n)
    return _binary(s, 0.2 * np.tanh(s.numeric["cauchy"]) + 0.05 * np.log(s.numeric["lognorm3"]))


def sc_fewlevel(rng: np.random.Generator, n: int) -> SweepStream:
    s = _base(rng, n)
    s.numeric["flag_rare"] = (rng.random(n) < 0.03).astype(float)
    s.numeric["flag_half"] = (rng.random(n) < 0.5).astype(float)
    s.numeric["ordinal3"] = rng.choice([1.0, 2.0, 3.0], n, p=[0.6, 0.3, 0.1])
    s.numeric["poisson"] = rng.poisson(0.3, n).astype(float)
    levels = np.array([4.99 + 5 * i for i in range(30)])
    pmf = 1.0 / (np.arange(1, 31) ** 1.5)
    pmf /= pmf.sum()
    s.numeric["price"] = rng.choice(levels, n, p=pmf)
    return _binary(
        s, 0.8 * s.numeric["flag_rare"] + 0.2 * s.numeric["poisson"] - 0.01 * s.numeric["price"]
    )


def _multiclass(rng: np.random.Generator, n: int, k: int) -> SweepStream:
    s = _base(rng, n)
    prior = 1.0 / np.arange(1, k + 1) ** 2.0  # skewed: the rarest classes well under 0.1%
    prior /= prior.sum()
    w = rng.normal(0, 0.5, (k, 3))
    x = np.column_stack(
        [s.numeric["x_normal"], np.log(s.numeric["amount"]) - 3.0, s.numeric["ratio"] - 0.5]
    )
    logits = np.log(prior)[None, :] + x @ w.T
    logits += 0.3 * (s.categorical["plan"] == "free")[:, None] * (np.arange(k) % 2)[None, :]
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    s.probs = p
    s.classes = [f"c{i:02d}" for i in range(k)]
    # the label is drawn from p; the model predicts the argmax
    s.mode = "multiclass"
    return s


def sc_multiclass30(rng: np.random.Generator, n: int) -> SweepStream:
    return _multiclass(rng, n, 30)


def sc_multiclass15(rng: np.random.Generator, n: int) -> SweepStream:
    return _multiclass(rng, n, 15)


def sc_regression(rng: np.random.Generator, n: int) -> SweepStream:
    s = _base(rng, n)
    s.numeric["x2"] = rng.normal(0, 1, n)
    s.prediction = (
        50
        + 10 * s.numeric["x_normal"]
        + 5 * s.numeric["x2"]
        + 3 * np.log(s.numeric["amount"])
        + 2 * (s.categorical["plan"] == "pro")
    )
    s.mode = "regression"
    return s


WIDE_SHAPES: list[Callable[[np.random.Generator, int], np.ndarray]] = [
    lambda r, n: r.normal(0, 1, n),
    lambda r, n: r.lognormal(3.0, 0.8, n),
    lambda r, n: r.gamma(2.0, 300.0, n),
    lambda r, n: r.normal(41, 12, n).clip(18, 90).round(),
    lambda r, n: r.uniform(0, 1, n),
    lambda r, n: r.standard_t(3, n),
    lambda r, n: r.exponential(1.0, n),
    lambda r, n: r.beta(2, 5, n),
    lambda r, n: r.poisson(4.0, n).astype(float),
    lambda r, n: np.where(r.random(n) < 0.7, 0.0, r.exponential(50.0, n)),  # zero-inflated
]


def sc_wide(rng: np.random.Generator, n: int) -> SweepStream:
    s = _base(rng, n)
    for j in range(197):
        s.numeric[f"f{j:03d}"] = WIDE_SHAPES[j % len(WIDE_SHAPES)](rng, n)
    return _binary(s, 0.1 * s.numeric["f000"])


def sc_boolrare(rng: np.random.Generator, n: int) -> SweepStream:
    s = _base(rng, n)
    b = np.empty(n, dtype=object)
    b[:] = (rng.random(n) < 0.001).tolist()
    s.categorical["is_vip"] = b
    b2 = np.empty(n, dtype=object)
    b2[:] = (rng.random(n) < 0.3).tolist()
    s.categorical["member"] = b2
    return _binary(s, 0.5 * np.array(b.tolist(), dtype=float))


def sc_zeroinfl(rng: np.random.Generator, n: int) -> SweepStream:
    """Mostly-zero amounts: 97% zeros (judged as a continuous feature: 90 others in 3,000?
    borderline), 99.5% zeros (a code: categorical), a refund count with rare large values."""
    s = _base(rng, n)
    for name, p0 in (("refund97", 0.97), ("refund995", 0.995), ("refund90", 0.90)):
        x = rng.lognormal(3.0, 1.0, n)
        x[rng.random(n) < p0] = 0.0
        s.numeric[name] = x
    return _binary(s, 0.01 * np.log1p(s.numeric["refund97"]))


def sc_weird(rng: np.random.Generator, n: int) -> SweepStream:
    """Infinities in a ratio, a constant numeric and categorical, ints and strings mixed in
    one categorical column, a numeric column that is NaN 99% of the time."""
    s = _base(rng, n)
    ratio = rng.normal(1.0, 0.5, n) / rng.exponential(1.0, n)
    u = rng.random(n)
    ratio[u < 0.001] = np.inf
    ratio[(u >= 0.001) & (u < 0.0015)] = -np.inf
    s.numeric["ratio_inf"] = ratio
    s.numeric["const"] = np.zeros(n)
    c = np.empty(n, dtype=object)
    c[:] = "x"
    s.categorical["const_cat"] = c
    zips = rng.integers(0, 40, n)
    mixed = np.empty(n, dtype=object)
    mixed[:] = [int(z) if z % 2 else f"{z:05d}" for z in zips]
    s.categorical["zip_mixed"] = mixed
    sparse = rng.normal(0, 1, n)
    sparse[rng.random(n) < 0.99] = np.nan
    s.numeric["sparse"] = sparse
    return _binary(s)


def sc_control(rng: np.random.Generator, n: int) -> SweepStream:
    base = stationary(rng, n)
    s = SweepStream(n)
    s.numeric, s.categorical, s.score = base.numeric, base.categorical, base.score
    s.mode = "binary"
    return s


SCENARIOS: dict[str, Callable[[np.random.Generator, int], SweepStream]] = {
    "zipf": sc_zipf,
    "powerlaw50k": sc_powerlaw50k,
    "uniform5k": sc_uniform5k,
    "missing": sc_missing,
    "heavy": sc_heavy,
    "fewlevel": sc_fewlevel,
    "multiclass30": sc_multiclass30,
    "multiclass15": sc_multiclass15,
    "regression": sc_regression,
    "wide": sc_wide,
    "boolrare": sc_boolrare,
    "zeroinfl": sc_zeroinfl,
    "weird": sc_weird,
    "control": sc_control,
}


def batches(s: SweepStream, start_ts: float = 1_767_225_600.0) -> Iterator[ModelBatch]:
    for a in range(0, s.n, BATCH):
        b = min(a + BATCH, s.n)
        m = b - a
        if s.mode == "binary":
            score = s.score[a:b]
            predictions = ["1" if p > 0.5 else "0" for p in score]
            scores = [{"0": 1 - p, "1": p} for p in score.tolist()]
        elif s.mode == "multiclass":
            assert s.probs is not None and s.classes is not None
            p = s.probs[a:b]
            cls = s.classes
            predictions = [cls[i] for i in p.argmax(axis=1)]
            scores = [dict(zip(cls, row, strict=True)) for row in p.tolist()]
        else:
            assert s.prediction is not None
            predictions = s.prediction[a:b].tolist()
            scores = [None] * m
        yield ModelBatch(
            model="bench",
            source="bench",
            partition=0,
            ts=start_ts + np.arange(a, b, dtype=np.float64),
            offsets=np.arange(a, b, dtype=np.int64),
            ids=[None] * m,
            clients=[None] * m,
            model_versions=[None] * m,
            rows=[],
            numeric={k: v[a:b] for k, v in s.numeric.items()},
            categorical={k: v[a:b] for k, v in s.categorical.items()},
            predictions=predictions,
            scores=scores,
        )


def _trim(obj: object, limit: int = 600) -> str:
    text = json.dumps(obj, default=str)
    return text if len(text) <= limit else text[:limit] + "..."


def run(name: str, seed: int, events: int, settings: DetectorSettings) -> dict:
    rng = np.random.default_rng(seed)
    s = SCENARIOS[name](rng, events)
    detectors = build_detectors("bench", settings)
    findings: list[Finding] = []
    started = time.process_time()
    error = None
    try:
        for batch in batches(s):
            for detector in detectors:
                findings.extend(detector.update(batch))
    except Exception:  # a crash is a finding of this sweep too
        error = traceback.format_exc()
    seconds = time.process_time() - started
    incidents: dict[tuple[str, str], list[Finding]] = {}
    for f in findings:
        incidents.setdefault((str(f.kind), f.subject), []).append(f)
    by_kind = Counter(k for k, _ in incidents)
    alarms_by_detector = Counter(f.detector for f in findings)
    alarms_by_subject = Counter(f"{f.detector}:{f.subject}" for f in findings)
    monitored = (events - settings.reference_size) / 1e6
    expected = {
        name: round(settings.budget_of(name) * monitored, 3) for name in settings.budgeted()
    }
    out = {
        "scenario": name,
        "seed": seed,
        "events": events,
        "cpu_s": round(seconds, 1),
        "incidents": len(incidents),
        "by_kind": dict(by_kind),
        "findings": len(findings),
        "alarms_by_detector": dict(alarms_by_detector),
        "alarms_by_subject": dict(alarms_by_subject.most_common(15)),
        "expected_by_detector": expected,
        "error": error,
        "detail": [
            {
                "kind": kind,
                "subject": subject,
                "n_findings": len(fs),
                "examples": [
                    {
                        "offset": int(f.position.offset),
                        "detector": f.detector,
                        "statistic": f.statistic,
                        "value": f.value,
                        "threshold": f.threshold,
                        "effect_size": f.effect_size,
                        "severity": str(f.severity),
                        "title": f.title,
                        "details": _trim(f.details),
                    }
                    for f in fs[:3]
                ],
            }
            for (kind, subject), fs in incidents.items()
        ],
    }
    return out


def stress_settings(budget: float | None, no_floors: bool) -> DetectorSettings:
    """Default settings, or an inflated budget and no effect floors: then every alarm of a
    test is a finding, and alarms per detector can be set against budget x share x events."""
    data: dict = {}
    if budget is not None:
        data["false_alarms_per_million"] = budget
    if no_floors:
        data["numeric_drift"] = {"min_effect_size": 0.0, "min_log_scale_change": 0.0}
        data["shape_drift"] = {"min_ks": 0.0}
        data["multivariate_drift"] = {"min_relative_change": 0.0}
        data["categorical_drift"] = {"min_psi": 0.0}
        data["prediction_drift"] = {
            "min_psi": 0.0,
            "min_effect_size": 0.0,
            "min_log_scale_change": 0.0,
        }
        data["data_quality"] = {"min_rate_increase": 1e-9}
        data["input_anomaly"] = {"min_excess_share": 0.0}
    return DetectorSettings.model_validate(data)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--events", type=int, default=400_000)
    p.add_argument("--out", default="bench/out/stationary_sweep.jsonl")
    p.add_argument("--budget", type=float, help="false_alarms_per_million (stress: inflated)")
    p.add_argument("--no-floors", action="store_true", help="effect floors at 0 (stress)")
    args = p.parse_args()
    settings = stress_settings(args.budget, args.no_floors)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    for name in args.scenarios.split(","):
        for seed in (int(x) for x in args.seeds.split(",")):
            r = run(name, seed, args.events, settings)
            with open(args.out, "a") as fh:
                fh.write(json.dumps(r, default=str) + "\n")
            rate = (args.events - 3000) / r["incidents"] if r["incidents"] else float("inf")
            print(
                f"{name:<13} seed {seed}: {r['incidents']} incidents {r['by_kind']} "
                f"(events/incident {rate:,.0f}) cpu {r['cpu_s']}s"
                + ("  ERROR" if r["error"] else ""),
                flush=True,
            )
            if r["error"]:
                print(r["error"], flush=True)
            if args.budget or args.no_floors:
                print(f"   findings by detector {r['alarms_by_detector']}", flush=True)
                print(f"   expected (union bound) {r['expected_by_detector']}", flush=True)
                print(f"   top subjects {r['alarms_by_subject']}", flush=True)
                continue
            for d in r["detail"]:
                print(f"   {d['kind']} {d['subject']}: {d['n_findings']} findings", flush=True)
                for e in d["examples"][:2]:
                    print(
                        f"      @{e['offset']} {e['statistic']} value={e['value']:.4g} "
                        f"thr={e['threshold']:.4g} eff={e['effect_size']} | {e['title'][:150]}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
