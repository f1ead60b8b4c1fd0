"""Accuracy-drop detection: delay and false alarms, measured and estimated.

    PYTHONPATH=. python bench/accuracy.py [--seeds 5] [--million 3]

A calibrated binary classifier (accuracy 0.87, see tests/accuracy_streams.py) runs at one
prediction per second; labels arrive 500 events later. After `CHANGE_AT` predictions its
accuracy drops by 3, 5, 10 or 20 points in one of two ways:

- covariate: inputs move towards the decision boundary, the scores show it, so the measured
  test (labels) and the estimated one (CBPE, scores only) can both see it;
- concept: labels flip, scores stay the same, so only labels can tell.

Delays are counted in labelled events after the change for measured detections (the test
the issue bounds at 3,000 for a 10-point drop) and in predictions after the change for
estimated ones. False alarms: findings on stationary streams of one million labelled events
(the budget is at most one per model per million). Figures, not assertions.

The regression part (`--dle-seeds`, `--dle-million`) runs a heteroscedastic regressor
(tests/accuracy_streams.py: it errs more where x1 is high, and on category "c") whose x1 moves
by -1 to +1 std after prediction 10,000, labels 2,000 events late: delays of the label-free
estimate (direct loss estimation) against the measured test, the realized and estimated MAE
change, and false alarms of all six regression tests on stationary million-event streams
(seeds 3000 on; the tests were written on seeds 1-11). `--dle-replica` checks the estimated
tests' calibration alone on more streams (seeds 4000 on): each fits its own reference, then
its two CUSUMs get one million fresh stationary predictions, with the default budget and with
budgets of 10 and 100 per million, where raw alarms (before the 10% floor) are frequent
enough to count against what the budget allows them (2 of the 6 tests: a third of it).
`--dle-cost` measures the estimate's CPU: the accuracy detector with and without it on the
same stationary regression stream, after its reference, as a ratio (median of the rounds).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from detectors.accuracy import AccuracyDetector
from detectors.accuracy.blocks import BlockCusum, budget_threshold
from detectors.base import Finding
from detectors.settings import AccuracySettings
from tests.accuracy_streams import (
    START,
    accuracy_of_spread,
    classification_batches,
    heteroscedastic_regression_batches,
    regression_batches,
    spread_for_accuracy,
)

CHANGE_AT = 10_000
AFTER = 20_000
DELAY = 500
DROPS = (0.03, 0.05, 0.10, 0.20)
SPREAD = 2.0


def run(batches, detector: AccuracyDetector) -> list[Finding]:
    found: list[Finding] = []
    for batch in batches:
        found.extend(detector.update(batch))
        detector.metrics()  # drained as the pipeline does
    return found


def delays(findings: list[Finding]) -> tuple[int | None, int | None]:
    """(labelled events, predictions) after the change at the first measured / estimated
    finding; None if there was none."""
    measured = estimated = None
    for f in findings:
        event = int(f.ts - START)
        if f.details.get("estimated"):
            if estimated is None:
                estimated = event - CHANGE_AT + 1  # prediction time: predictions since change
        elif measured is None:
            measured = event - DELAY - CHANGE_AT + 1  # label time: labelled events since
    return measured, estimated


def summary(values: list[int | None]) -> str:
    hits = [v for v in values if v is not None]
    if not hits:
        return f"{'missed':>22}"
    early = sum(1 for v in hits if v <= 0)
    text = f"median {statistics.median(hits):>6,.0f} max {max(hits):>6,}"
    missed = len(values) - len(hits)
    return text + (f" ({missed} missed)" if missed else "") + (f" ({early} early)" if early else "")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--million", type=int, default=3, help="stationary 1M-event runs")
    parser.add_argument("--dle-seeds", type=int, default=5, help="regression shifts, per shift")
    parser.add_argument("--dle-million", type=int, default=3, help="stationary 1M regression")
    parser.add_argument(
        "--dle-replica", type=int, default=20, help="1M-prediction runs of the estimated tests"
    )
    parser.add_argument(
        "--dle-cost", type=int, default=3, help="rounds of the estimate's CPU cost, on vs off"
    )
    parser.add_argument("--only-dle", action="store_true", help="the regression part only")
    args = parser.parse_args()
    if not args.only_dle:
        classification(args)
    if args.dle_seeds:
        dle(args)
    if args.dle_million:
        dle_stationary(args.dle_million)
    if args.dle_replica:
        dle_replica(args.dle_replica)
    if args.dle_cost:
        dle_cost(args.dle_cost)


def classification(args: argparse.Namespace) -> None:
    base = accuracy_of_spread(SPREAD)
    print(
        f"reference accuracy {base:.3f}; change after prediction {CHANGE_AT:,}; labels "
        f"{DELAY} events late; {args.seeds} seeds; default settings (margin 0.02)\n"
    )
    print(
        f"{'drop':>5} {'scenario':>10} | {'measured: labelled events after change':>40} | "
        f"{'estimated: predictions after change':>38}"
    )
    for drop in DROPS:
        spread_after = spread_for_accuracy(base - drop)
        flip = drop / (2 * base - 1)
        for scenario in ("covariate", "concept"):
            measured, estimated = [], []
            for seed in range(args.seeds):
                kwargs = (
                    {"spread_after": spread_after} if scenario == "covariate" else {"flip": flip}
                )
                findings = run(
                    classification_batches(
                        CHANGE_AT + AFTER,
                        change_at=CHANGE_AT,
                        delay=DELAY,
                        seed=seed,
                        spread=SPREAD,
                        **kwargs,
                    ),
                    AccuracyDetector("m"),
                )
                m, e = delays(findings)
                measured.append(m)
                estimated.append(e)
            print(
                f"{100 * drop:>4.0f}p {scenario:>10} | {summary(measured):>40} | "
                f"{summary(estimated):>38}"
            )

    print("\nstationary streams, 1,000,000 labelled events each:")
    total_m = total_e = 0
    started, cpu = time.perf_counter(), time.process_time()
    for seed in range(args.million):
        findings = run(
            classification_batches(1_000_000, delay=DELAY, seed=1000 + seed, spread=SPREAD),
            AccuracyDetector("m"),
        )
        m = sum(1 for f in findings if not f.details.get("estimated"))
        e = len(findings) - m
        total_m += m
        total_e += e
        print(f"  seed {1000 + seed}: {m} measured, {e} estimated findings")
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    runs = max(args.million, 1)
    print(
        f"  false alarms per million labelled events: measured {total_m / runs:.2f}, "
        f"estimated {total_e / runs:.2f} (default budget: 0.1 for the detector, all its tests)"
    )
    events = 2 * args.million * 1e6
    print(
        f"  throughput: {events / seconds:,.0f} events/s wall, {events / cpu_seconds:,.0f} per "
        "CPU second (predictions + labels, detector only, stream generation included)"
    )

    print("\nregression, bias shift of 0.25 / 0.5 / 1 residual std after prediction 10,000:")
    for shift in (0.25, 0.5, 1.0):
        values = []
        for seed in range(args.seeds):
            findings = run(
                regression_batches(
                    CHANGE_AT + AFTER, change_at=CHANGE_AT, bias_after=shift, delay=DELAY, seed=seed
                ),
                AccuracyDetector("r"),
            )
            first = next((f for f in findings if f.subject == "bias"), None)
            values.append(None if first is None else int(first.ts - START) - DELAY - CHANGE_AT + 1)
        print(f"  shift {shift:>4}: {summary(values)}")
    stationary = run(regression_batches(1_000_000, delay=DELAY, seed=77), AccuracyDetector("r"))
    print(f"  stationary 1M: {len(stationary)} findings")


DLE_DELAY = 2000
DLE_SHIFTS = (0.25, 0.5, 1.0, -0.5, -1.0)


def dle(args: argparse.Namespace) -> None:
    """Label-free MAE (DLE) on a heteroscedastic regressor: delays, estimates, false alarms."""
    print(
        f"\nregression, label-free estimate (DLE): x1 moves after prediction {CHANGE_AT:,}, labels "
        f"{DLE_DELAY:,} events late, {args.dle_seeds} seeds, default settings"
    )
    print(
        f"{'x1 shift':>8} {'realized':>9} | {'estimated: change at 1st finding':>33} | "
        f"{'estimated: predictions after change':>44} | {'measured: labelled after':>36}"
    )
    for shift in DLE_SHIFTS:
        up = shift > 0
        estimated, measured, changes, realized = [], [], [], []
        for seed in range(args.dle_seeds):
            batches = list(
                heteroscedastic_regression_batches(
                    CHANGE_AT + AFTER,
                    change_at=CHANGE_AT,
                    x1_shift=shift,
                    delay=DLE_DELAY,
                    seed=seed,
                )
            )
            findings = run(batches, AccuracyDetector("h"))
            est = [
                f
                for f in findings
                if f.subject == ("estimated_mae" if up else "estimated_mae_improved")
            ]
            meas = [f for f in findings if f.subject == ("mae" if up else "mae_improved")]
            estimated.append(None if not est else int(est[0].ts - START) - CHANGE_AT + 1)
            measured.append(
                None if not meas else int(meas[0].ts - START) - DLE_DELAY - CHANGE_AT + 1
            )
            if est:
                changes.append(est[0].details["relative_change"])
            realized.append(_realized_change(batches))
        change = f"{100 * statistics.median(changes):+.0f}% (median)" if changes else "-"
        print(
            f"{shift:>+8.2f} {100 * statistics.median(realized):>+8.0f}% | {change:>33} | "
            f"{summary(estimated):>44} | {summary(measured):>36}"
        )


def dle_stationary(runs: int) -> None:
    """All six regression tests on stationary million-event streams: false alarms."""
    print("\nstationary regression streams, 1,000,000 labelled events each (six tests):")
    totals = {"estimated": 0, "measured": 0}
    gaps = []
    started, cpu = time.perf_counter(), time.process_time()
    for seed in range(3000, 3000 + runs):
        detector = AccuracyDetector("h")
        findings, gap = _run_with_history(
            heteroscedastic_regression_batches(1_000_000, delay=DELAY, seed=seed), detector
        )
        e = sum(1 for f in findings if f.details.get("estimated"))
        totals["estimated"] += e
        totals["measured"] += len(findings) - e
        gaps.append(gap)
        print(
            f"  seed {seed}: {len(findings) - e} measured, {e} estimated findings; loss model "
            f"explains {detector.loss_model.explained:.2f} of the |error| variance"  # type: ignore[union-attr]
        )
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    print(
        f"  false alarms per million: measured {totals['measured'] / runs:.2f}, estimated "
        f"{totals['estimated'] / runs:.2f} (default budget: 0.1 for the detector, all its tests)"
    )
    print(f"  estimated - realized MAE over each whole stream: {', '.join(gaps)}")
    print(f"  {2e6 * runs / cpu_seconds:,.0f} events per CPU second ({seconds:.0f} s wall)")


def _realized_change(batches: list) -> float:
    """The realized relative MAE change: labels against predictions, after vs before (the
    predictions whose label came within the stream)."""
    truth = {}
    for b in batches:
        if b.labels is not None:
            truth.update(zip(b.labels.ids, b.labels.values, strict=True))
    before, after = [], []
    for b in batches:
        for i, p in zip(b.ids, b.predictions, strict=True):
            if i in truth:
                (before if int(i.rsplit("-", 1)[1]) < CHANGE_AT else after).append(
                    abs(p - truth[i])
                )
    return statistics.fmean(after) / statistics.fmean(before) - 1


def dle_replica(runs: int) -> None:
    """Raw alarms of the two estimated-MAE CUSUMs on stationary predictions, per budget."""
    budgets = (0.1, 10.0, 100.0)
    alarms = {b: 0 for b in budgets}
    findings = 0
    print(f"\nestimated-MAE tests alone, {runs} stationary runs of 1,000,000 predictions:")
    for seed in range(4000, 4000 + runs):
        detector = AccuracyDetector("h")
        stream = heteroscedastic_regression_batches(1_007_000, batch_size=7000, seed=seed)
        run([next(stream)], detector)  # 7,000 predictions, labels 500 late: reference fitted
        model, ref = detector.loss_model, detector.reference
        assert model is not None and ref is not None
        base = detector.loss_tests
        tests = {
            b: {
                name: BlockCusum(
                    "mean",
                    t.block_size,
                    t.k,
                    budget_threshold(t.k, t.block_size, model.rows, 6, b),
                    mean=t.mean,
                    std=t.std,
                    skew=t.skew,
                )
                for name, t in base.items()
            }
            for b in budgets
        }
        for batch in stream:
            if not len(batch):
                break
            est, _ = model.estimate(batch.numeric, batch.categorical, np.array(batch.predictions))
            for b in budgets:
                for name, test in tests[b].items():
                    sign = -1.0 if name.endswith("improved") else 1.0
                    raised = test.feed(sign * est)
                    alarms[b] += len(raised)
                    if b == 0.1:
                        findings += sum(
                            1 for a in raised if abs(sign * a.mean / ref.estimated - 1) >= 0.1
                        )
    for b in budgets:
        print(
            f"  budget {b:>5} per million: {alarms[b] / runs:.3f} raw alarms per million "
            f"predictions (the two tests' share of the budget: {b / 3:.3f})"
        )
    print(f"  findings at the default budget: {findings} in {runs} million predictions")


def dle_cost(rounds: int, events: int = 200_000, warm: int = 20_000) -> None:
    """CPU seconds of the accuracy detector on a stationary regression stream (4 inputs,
    batches of 2,000, labels 500 late) with the label-free estimate and without it, back to
    back per round (the stream generated beforehand), after the first `warm` events (the
    reference and the loss model's one-off fit): the estimate's steady cost as a ratio."""
    batches = list(heteroscedastic_regression_batches(events, seed=5000))
    first = warm // 2000
    ratios: list[float] = []
    seconds: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(rounds):
        for estimate in (False, True):
            detector = AccuracyDetector("h", AccuracySettings(estimate=estimate))
            run(batches[:first], detector)
            cpu = time.process_time()
            run(batches[first:], detector)
            seconds[estimate].append(time.process_time() - cpu)
        ratios.append(seconds[True][-1] / seconds[False][-1])
    timed = events - first * 2000
    print(
        f"\naccuracy detector, {timed:,} regression events after {warm:,}, {rounds} rounds: "
        f"{1e6 * statistics.median(seconds[False]) / timed:.2f} us per event without the "
        f"estimate, {1e6 * statistics.median(seconds[True]) / timed:.2f} with it; ratio "
        f"{statistics.median(ratios):.2f} (median; {min(ratios):.2f}-{max(ratios):.2f})"
    )


def _run_with_history(batches, detector: AccuracyDetector) -> tuple[list[Finding], str]:
    """`run`, plus the estimated minus the measured MAE over the windows where both speak of
    every prediction (the latest point of each window, as the performance table keeps)."""
    found: list[Finding] = []
    points = {}
    for batch in batches:
        found.extend(detector.update(batch))
        for p in detector.metrics():
            points[(p.window_start, p.metric, p.estimated)] = p
    sums = {True: [0.0, 0], False: [0.0, 0]}
    for (start, metric, estimated), p in points.items():
        graded = (start, "mae_estimate_error", False) in points
        if metric == "mae" and graded:
            sums[estimated][0] += p.value * p.n
            sums[estimated][1] += p.n
    if not sums[False][1]:
        return found, "-"
    est, real = (sums[e][0] / sums[e][1] for e in (True, False))
    return found, f"{100 * est / real - 100:+.1f}%"


if __name__ == "__main__":
    main()
