"""Is the null's tail calibrated for `region_coverage`, and what would a looser one cost? (issue 14)

Synthetic populations of benign keys, each sampling its own segment (a Dirichlet mix around
the traffic's over k slots, concentration `conc` x k), judged as the detector judges them:
the tail (`tail_parameters`) is fitted on a pool of keys at n queries, then 4,000 fresh keys
of the same population are judged by it (their share at p <= alpha, over alpha: at most 1 for
a calibrated test) and 20 keys sampling the whole traffic (their median p): a natural-data
extractor, or a benign key serving every segment (an aggregator). The two are the same on
this statistic, so a population may hold a few such benign keys among its voices (a
population's fifth field), and the tail must leave them unflagged. Variants of the fit: the
quantile the scale is fitted from (the tail is always anchored at the 90th percentile) and
the shape floor, the least scale as a share of (u - median), and how that share grows for a
small pool: shape x (1 + c / voices) (the detector since stop 48: 0.9, 0.4 and c = 32,
`null.SMALL_POOL`), or shape + c / sqrt(voices) (before, and still the other statistics':
1.5).

    PYTHONPATH=. .venv/bin/python bench/client_tail_calibration.py     (about two minutes)
"""

from __future__ import annotations

import numpy as np

from detectors.clients.coverage import REGIONS, RegionCoverage
from detectors.clients.null import FLOORS, REGION, SMALL_POOL, tail_p, tail_parameters

DAY = 86400.0
REGION_FLOOR = FLOORS[[REGION]]  # region_coverage's floor, as the detector has it
# (scale fitted from the quantile, shape floor, small-pool coefficient, its form: "1/n" for
# shape x (1 + c / voices), "1/sqrt" for shape + c / sqrt(voices)); the detector's first.
VARIANTS = [
    (0.9, 0.4, SMALL_POOL, "1/n"),
    (0.9, 0.4, 16.0, "1/n"),
    (0.9, 0.4, 1.5, "1/sqrt"),
    (0.9, 0.4, 0.75, "1/sqrt"),
    (0.9, 0.4, 0.0, "1/sqrt"),
    (0.9, 0.0, 1.5, "1/sqrt"),
    (0.8, 0.4, 1.5, "1/sqrt"),
    (0.8, 0.0, 1.5, "1/sqrt"),
]
SEEDS = 20
POPULATIONS = [  # slots, concentration, queries seen, voices, whole-traffic keys among them
    (10, 1.0, 1600, 150, 0),
    (10, 3.0, 1600, 150, 0),
    (10, 1.0, 400, 40, 0),
    (3, 1.0, 400, 40, 0),
    (3, 1.0, 400, 20, 0),
    (6, 1.0, 400, 12, 0),  # the smallest pool the null fits (`min_null_clients`)
    (16, 1.0, 2000, 80, 0),
    (6, 1.0, 1600, 150, 0),
    (3, 1.0, 1600, 150, 0),  # few degrees of freedom: the heaviest tail here
    (10, 1.0, 1600, 150, 2),
    (10, 1.0, 1600, 150, 4),
]


def fit(
    pool: np.ndarray,
    fit_quantile: float,
    shape: float,
    small: float,
    form: str,
    floor: float = float(REGION_FLOOR[0]),
) -> tuple:
    """`detectors.clients.null.tail_parameters` for one column, with the scale fitted from
    `fit_quantile`, the shape floor `shape` and the small-pool coefficient `small` of `form`
    (the detector: 0.9, 0.4, 32, "1/n")."""
    pool = np.sort(pool)
    voices = len(pool)
    median = pool[(voices - 1) // 2]  # the lower middle, as the detector takes it
    u = pool[int(np.floor(0.9 * (voices - 1)))]
    start = pool[int(np.floor(fit_quantile * (voices - 1)))]
    drop = max(1 + (voices >= 50), voices // 50)
    kept = pool[: voices - drop]
    excess = kept[kept > start] - start
    dropped = np.count_nonzero(pool[voices - drop :] > start)  # censored at the largest kept
    b = (excess.sum() + dropped * excess.max()) / len(excess) if len(excess) else 0.0
    mad = np.sort(np.abs(pool - median))[(voices - 1) // 2]
    share = shape * (1 + small / voices) if form == "1/n" else shape + small / np.sqrt(voices)
    return u, max(b, 0.5 * mad, (u - median) * share, floor)


def key(rng, coverage, slots, mix, n, own=None, conc=1.0) -> float:
    own = rng.dirichlet(mix * slots * conc) if own is None else own
    counts = np.bincount(rng.choice(slots, size=n, p=own), minlength=REGIONS)
    return float(coverage.statistic(counts[None])[0])


def main() -> None:
    for slots, conc, n, voices, whole in POPULATIONS:
        rates = {v: {1e-2: [], 1e-3: [], 1e-4: []} for v in VARIANTS}
        sampler = {v: [] for v in VARIANTS}
        for seed in range(SEEDS):
            rng = np.random.default_rng(1000 + seed)
            coverage = RegionCoverage(DAY)
            mix = rng.dirichlet(np.full(slots, 3.0))
            coverage.observe(rng.choice(slots, size=100_000, p=mix), 0.0)
            pool = np.array(
                [key(rng, coverage, slots, mix, n, conc=conc) for _ in range(voices - whole)]
                + [key(rng, coverage, slots, mix, n, own=mix) for _ in range(whole)]
            )
            fresh = np.array([key(rng, coverage, slots, mix, n, conc=conc) for _ in range(4000)])
            samplers = np.array([key(rng, coverage, slots, mix, n, own=mix) for _ in range(20)])
            # The detector's variant is the detector's fit, not a copy drifting from it.
            detector = np.ravel(tail_parameters(pool[:, None], REGION_FLOOR, True))
            assert np.allclose(fit(pool, *VARIANTS[0]), detector)
            for v in VARIANTS:
                u, b = fit(pool, *v)
                p = tail_p(fresh, u, b)
                for alpha, got in rates[v].items():
                    got.append(np.mean(p <= alpha))
                sampler[v].append(np.median(tail_p(samplers, u, b)))
        print(
            f"{slots} slots, concentration {conc:g}, {n} queries, {voices} voices "
            f"({whole} of them whole-traffic keys):"
        )
        for v in VARIANTS:
            ratio = ", ".join(f"{np.mean(x) / a:.2f} at {a:g}" for a, x in rates[v].items())
            print(
                f"  scale from the {v[0]:.0%} quantile, shape floor {v[1]:.1f}, small-pool "
                f"{v[2]:g} x {v[3]}: benign rate / "
                f"alpha {ratio}; whole-traffic key's median p {np.median(sampler[v]):.1e}"
            )


if __name__ == "__main__":
    main()
