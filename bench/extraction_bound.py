"""How often can any test tell the bench's natural-data extractor from its benign keys? (issue 14)

`bench/client_attacks.py --preference A` draws each benign key's rows from its own mix of the
pool's segments (k-means clusters, as many as classes: `client_streams.clusters`), the mix
drawn from Dirichlet(A x k x each segment's share of the pool); the natural-data extractor
samples the whole pool. Within a segment both draw rows alike, so a key's segment counts
carry everything that tells them apart, and the most powerful test of "this key samples the
pool" against "this is a benign key" at a given false-alarm rate is the likelihood ratio of
those counts (Neyman-Pearson): Multinomial(n, the pool's shares) against the benign keys'
Dirichlet-multinomial.

This script computes that test's power on the generator itself, with more knowledge than any
detector has: the segments and the Dirichlet law are known, and the benign keys' law at n
queries is known exactly. Two cases:

- *known centre*: the pool's shares are known too;
- *centre from N keys*: the centre is the mean of `--keys` benign keys' mixes (noise-free:
  as infinitely many queries would show them), which is the best the detector's population
  mix can be (`detectors/clients/coverage.py`), re-drawn for each of `--populations`
  populations; the test's threshold is the benign keys' own quantile under that centre.

`--fitted-tail` adds what the detector's own way of judging does on the same counts: the
debiased chi-square divergence from the centre of 150 keys (`region_coverage`'s, on the
segments rather than its classes and cells), each key judged by the exponential tail that
`detectors.clients.null.tail_parameters` fits to minus its log over the 150 keys: the
share of extractors at p <= the false-alarm rate, and the share of fresh benign keys there
against that rate (1: as promised; above 1, the fitted tail is lighter than the true one).

A detector can do no better than this, so where the power is low, no calibration of
`region_coverage` reaches the issue's target (natural extraction flagged within 2,000 of its
queries) at the false-alarm budget. `--false-alarm` defaults to what `region_coverage` spends
at a client's first cumulative look of a day, the largest share any of its looks has: alpha
1e-3 x the cumulative test's half x the first look's 0.7 x `region_coverage`'s weight 0.8 =
2.8e-4 (`detectors/clients/spending.py`).

    .venv/bin/python bench/extraction_bound.py                      # five datasets
    .venv/bin/python bench/extraction_bound.py --dataset segment --seed 141 142
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from scipy.special import gammaln

from bench.client_streams import clusters, load_dataset
from detectors.clients.spending import (
    CUMULATIVE_SHARE,
    CUMULATIVE_WEIGHTS,
    FIRST_CUMULATIVE,
)

DATASETS = ("digits", "synthetic", "segment", "wine", "cancer")
FIRST_LOOK = 1e-3 * CUMULATIVE_SHARE * FIRST_CUMULATIVE * CUMULATIVE_WEIGHTS["region_coverage"]


@dataclass(frozen=True)
class Trial:
    """One setting of the comparison: benign mixes Dirichlet(`concentration` x k x each
    segment's share), everyone judged at `queries` queries at `false_alarm` per look; the
    centre from `keys` keys, re-drawn for each of `populations` populations."""

    concentration: float
    queries: int
    keys: int
    false_alarm: float
    benign_draws: int
    extractors: int
    populations: int

    def prior(self, shares: np.ndarray) -> np.ndarray:
        """The benign keys' Dirichlet parameters (they average to `shares`)."""
        return self.concentration * len(shares) * shares


def log_dirichlet_multinomial(counts: np.ndarray, a: np.ndarray) -> np.ndarray:
    """log P(counts | Dirichlet-multinomial(a)) less the multinomial coefficient (which the
    ratio against a multinomial cancels)."""
    n = counts.sum(axis=-1)
    return gammaln(a.sum()) - gammaln(a.sum() + n) + (gammaln(a + counts) - gammaln(a)).sum(axis=-1)


def ratio(counts: np.ndarray, centre: np.ndarray, a: np.ndarray) -> np.ndarray:
    """The log likelihood ratio of a pool sampler (Multinomial at `centre`) against a benign
    key (Dirichlet-multinomial(a)): large for an extractor."""
    return (counts * np.log(centre)).sum(axis=-1) - log_dirichlet_multinomial(counts, a)


def power(shares: np.ndarray, trial: Trial, rng: np.random.Generator) -> tuple[float, float]:
    """(known centre, centre from the trial's keys): the share of extractors at n queries
    whose ratio exceeds the benign keys' 1 - false-alarm quantile at n queries."""
    a = trial.prior(shares)
    n = trial.queries
    benign = rng.multinomial(n, rng.dirichlet(a, size=trial.benign_draws))
    extractor = rng.multinomial(n, shares, size=trial.extractors)
    threshold = np.quantile(ratio(benign, shares, a), 1 - trial.false_alarm)
    oracle = float(np.mean(ratio(extractor, shares, a) > threshold))
    found = []
    for _ in range(trial.populations):
        centre = rng.dirichlet(a, size=trial.keys).mean(axis=0)
        threshold = np.quantile(ratio(benign, centre, a), 1 - trial.false_alarm)
        found.append(np.mean(ratio(extractor, centre, a) > threshold))
    return oracle, float(np.mean(found))


def divergence_statistic(counts: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Minus the log of the chi-square divergence (halved: the KL's scale) of each row's
    mix from `centre`, less its sampling bias (k - 1) / (2 n), at least 0, plus half a
    sampler's noise sd: `region_coverage`'s form (`detectors/clients/coverage.py`)."""
    n = counts.sum(axis=-1)
    k = len(centre)
    chi2 = (((counts / n[:, None] - centre) ** 2) / centre).sum(axis=-1) / 2
    noise = np.sqrt(2 * (k - 1)) / (2 * n)
    return -np.log(np.maximum(chi2 - (k - 1) / (2 * n), 0.0) + 0.5 * noise)


def fitted_tail(shares: np.ndarray, trial: Trial, rng: np.random.Generator) -> tuple[float, float]:
    """(extractors found, fresh benign keys at p <= the false-alarm rate / that rate) when
    each population's keys fit the null's exponential tail (`tail_parameters`) to
    `divergence_statistic` about their own mean mix."""
    from detectors.clients.null import BY_VARIANCE, FLOORS, REGION, tail_p, tail_parameters

    a = trial.prior(shares)
    n, alarm = trial.queries, trial.false_alarm
    found, benign = [], []
    for _ in range(trial.populations):
        mixes = rng.dirichlet(a, size=trial.keys)
        centre = mixes.mean(axis=0)
        voices = np.full((trial.keys, len(FLOORS)), np.nan)
        voices[:, REGION] = divergence_statistic(rng.multinomial(n, mixes), centre)
        u, b = tail_parameters(voices, FLOORS, BY_VARIANCE)
        extractor = divergence_statistic(rng.multinomial(n, shares, size=trial.extractors), centre)
        fresh_keys = trial.benign_draws // trial.populations
        fresh = rng.multinomial(n, rng.dirichlet(a, size=fresh_keys))
        found.append(np.mean(tail_p(extractor, u[REGION], b[REGION]) <= alarm))
        p = tail_p(divergence_statistic(fresh, centre), u[REGION], b[REGION])
        benign.append(np.mean(p <= alarm))
    return float(np.mean(found)), float(np.mean(benign)) / alarm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=DATASETS, nargs="+", default=list(DATASETS))
    parser.add_argument("--seed", type=int, nargs="+", default=[1])
    parser.add_argument("--preference", type=float, default=1.0, help="the bench's A (1)")
    parser.add_argument("--keys", type=int, default=150, help="benign keys in the population")
    parser.add_argument("--queries", type=int, nargs="+", default=[500, 1000, 2000])
    parser.add_argument("--false-alarm", type=float, default=FIRST_LOOK)
    parser.add_argument("--benign-draws", type=int, default=400_000)
    parser.add_argument("--populations", type=int, default=50)
    parser.add_argument(
        "--fitted-tail", action="store_true", help="also the detector's exponential tail"
    )
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(
        f"false-alarm rate per look {args.false_alarm:.2g}; benign mixes Dirichlet("
        f"{args.preference:g} x k x shares); centre from {args.keys} keys; "
        f"{args.populations} populations"
    )
    header = (
        f"{'dataset':9s} {'seed':>5s} {'k':>3s} {'least share':>11s} {'queries':>7s}  "
        f"{'known centre':>12s}  {'centre from keys':>16s}"
    )
    if args.fitted_tail:
        header += f"  {'fitted tail':>11s}  {'benign x rate':>13s}"
    print(header)
    for name in args.dataset:
        for seed in args.seed:
            labels = clusters(load_dataset(name, seed))
            shares = np.bincount(labels) / len(labels)
            for n in args.queries:
                trial = Trial(
                    args.preference,
                    n,
                    args.keys,
                    args.false_alarm,
                    args.benign_draws,
                    2000,
                    args.populations,
                )
                oracle, estimated = power(shares, trial, rng)
                line = (
                    f"{name:9s} {seed:5d} {len(shares):3d} {shares.min():11.3f} {n:7d}  "
                    f"{oracle:12.2f}  {estimated:16.2f}"
                )
                if args.fitted_tail:
                    found, benign = fitted_tail(shares, trial, rng)
                    line += f"  {found:11.2f}  {benign:13.2f}"
                print(line)


if __name__ == "__main__":
    main()
