"""Can a natural-data extractor be told from the bench's benign keys at all? (issue 14)

`bench/client_attacks.py`'s natural extractor (KnockoffNets, "random" sampling) queries rows
drawn exactly as benign rows are (`Dataset.sample`). This script measures, without Bulwark and
without ART, how the extractor's cumulative coverage compares with benign keys' after as many
queries (n = 100 .. 2,000): per key, the entropy of its predicted classes, the entropy of its
(predicted class x coarse input cell) regions (cells: signs of
4 random projections), the sum over features of its octile histograms' entropy (the
detector's feature coverage), and minus the log divergence from the population's mix of its
classes, of its k-means cells (`detectors.clients.coverage.fit_cells` on standardized rows of a
5,000-row reference) and of both averaged (the detector's `region_coverage`, without values:
these datasets have no categorical feature). For each n it prints the benign keys' median and 99th
percentile and the extractors' values, and the extractors' mean rank among benign keys
(0.5: indistinguishable).

    .venv/bin/python bench/client_separation.py --seed 1 2 3 --dataset digits
    .venv/bin/python bench/client_separation.py --seed 1 --preference 1.0   # keys with tastes

`--noise-free N` also compares the keys' true mixes, as infinitely many queries would show
them: each key's expected class and cell mix (its weights over the pool, each pool row's
classes and cells under the bench's input noise), their divergence from the mean of the
`--keys` keys' mixes (the detector's population) against the extractor's, over N fresh benign
keys (a tail no pipeline run reaches). It says whether the statistic separates them at all,
apart from sampling noise and the null's tail model.

`--preference A` draws the rows of each benign key from its own mix of the pool's clusters
(Dirichlet weights over k-means clusters of the pool, averaging to their shares of it:
`client_streams.preferences`); the extractor still samples the whole pool.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bench.client_streams import load_dataset, preferences, train_model
from detectors.clients.coverage import fit_cells, nearest_cell
from detectors.clients.null import tail_p, tail_parameters

HISTORY = (100, 200, 500, 1000, 2000)
CELL_BITS = 4


def _entropy(counts: np.ndarray) -> np.ndarray:
    p = counts / np.maximum(counts.sum(axis=-1, keepdims=True), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0, -p * np.log(p), 0.0).sum(axis=-1)


def _kl(counts: np.ndarray, q: np.ndarray) -> float:
    """Minus KL(the key's mix || the population's mix q): 0 for a key like the whole."""
    p = counts / max(counts.sum(), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -float(np.where(p > 0, p * np.log(p / q), 0.0).sum())


def regions_of(
    model: object, x: np.ndarray, octiles: np.ndarray, planes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    pred = model.predict(x)  # type: ignore[attr-defined]
    cells = ((x - octiles[:, 3]) @ planes > 0) @ (1 << np.arange(CELL_BITS))
    return pred, pred * (1 << CELL_BITS) + cells


def measures(
    model: object,
    x: np.ndarray,
    octiles: np.ndarray,
    planes: np.ndarray,
    mix: tuple,
    cells: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> dict:
    """Cumulative measures of one key's queries `x` at each n in HISTORY (`cells`: the
    k-means centroids and the standardization they were fitted in)."""
    pred, region = regions_of(model, x, octiles, planes)
    class_mix, region_mix, cell_mix = mix
    centroids, centre, scale = cells
    cell = nearest_cell((x - centre) / scale, centroids)
    bins = (x[:, :, None] > octiles[None]).sum(axis=2)
    out: dict[str, list[float]] = {
        "class": [], "region": [], "features": [], "class_kl": [], "region_kl": [],
        "-log class_kl": [], "-log region_kl": [], "-log cell_kl": [], "-log mean kl": [],
    }  # fmt: skip
    for n in HISTORY:
        classes = np.bincount(pred[:n], minlength=len(class_mix))
        regions = np.bincount(region[:n], minlength=len(region_mix))
        out["class"].append(float(_entropy(classes)))
        out["region"].append(float(_entropy(regions)))
        out["class_kl"].append(_kl(classes, class_mix))
        out["region_kl"].append(_kl(regions, region_mix))
        out["-log class_kl"].append(-np.log(max(-out["class_kl"][-1], 1e-9)))
        out["-log region_kl"].append(-np.log(max(-out["region_kl"][-1], 1e-9)))
        cell_kl = -_kl(np.bincount(cell[:n], minlength=len(cell_mix)), cell_mix)
        out["-log cell_kl"].append(-np.log(max(cell_kl, 1e-9)))
        class_kl = -out["class_kl"][-1]  # (`_kl` is minus the divergence)
        mean_kl = (cell_kl + class_kl) / 2
        out["-log mean kl"].append(-np.log(max(mean_kl, 1e-9)))
        hist = np.stack([np.bincount(b, minlength=8) for b in bins[:n].T])
        out["features"].append(float(_entropy(hist).sum()))
    return out


def true_mixes(
    model: object, dataset: object, cells: tuple, weights: np.ndarray, copies: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """Keys' expected (class mix, cell mix) from their weights over the pool (keys x pool
    rows): each pool row's classes and cells over `copies` noisy draws of it, as
    `Dataset.sample` makes them."""
    pool = len(dataset.pool)  # type: ignore[attr-defined]
    rng = np.random.default_rng(0)
    rows = np.concatenate(
        [dataset.sample(rng, copies, False, np.eye(pool)[r]) for r in range(pool)]  # type: ignore[attr-defined]
    )
    of = np.repeat(np.arange(pool), copies)
    centroids, centre, scale = cells
    pred = np.asarray(model.predict(rows)).astype(int)  # type: ignore[attr-defined]
    cell = nearest_cell((rows - centre) / scale, centroids)
    by_class = np.zeros((pool, dataset.classes))  # type: ignore[attr-defined]
    by_cell = np.zeros((pool, len(centroids)))
    np.add.at(by_class, (of, pred), 1 / copies)
    np.add.at(by_cell, (of, cell), 1 / copies)
    return weights @ by_class, weights @ by_cell


def noise_free(model: object, dataset: object, cells: tuple, tastes: list, fresh: list) -> None:
    """The true divergences (mean over classes and cells) of `fresh` benign keys and of the
    natural extractor from the mean of `tastes`' mixes (see the module docstring)."""
    pool = len(dataset.pool)  # type: ignore[attr-defined]

    def weights(of: list) -> np.ndarray:
        return np.stack([np.full(pool, 1 / pool) if t is None else t for t in of])

    def divergence(mixes: tuple, population: tuple) -> np.ndarray:
        return np.mean(
            [
                -np.array([_kl(m, q) for m in part])
                for part, q in zip(mixes, population, strict=True)
            ],
            axis=0,
        )

    population = tuple(
        part.mean(axis=0) for part in true_mixes(model, dataset, cells, weights(tastes))
    )
    benign = divergence(true_mixes(model, dataset, cells, weights(fresh)), population)
    extractor = float(divergence(true_mixes(model, dataset, cells, weights([None])), population)[0])
    quantiles = ", ".join(
        f"{q:g}%: {np.quantile(benign, q / 100):.4f} ({-np.log(np.quantile(benign, q / 100)):.2f})"
        for q in (0.01, 0.1, 1, 10, 50)
    )
    print(
        f"  noise-free divergence (minus its log): extractor {extractor:.4f} "
        f"({-np.log(extractor):.2f}); {len(fresh)} benign keys' quantiles {quantiles}; "
        f"benign keys at or below the extractor: {np.mean(benign <= extractor):.1e}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, nargs="+", default=[1])
    parser.add_argument("--dataset", choices=["digits", "synthetic", "segment"], default="digits")
    parser.add_argument("--keys", type=int, default=150)
    parser.add_argument("--extractors", type=int, default=20)
    parser.add_argument("--preference", type=float, default=0.0, help="0: i.i.d. benign keys")
    parser.add_argument(
        "--noise-free", type=int, default=0, metavar="N", help="N fresh keys' true mixes (0: none)"
    )
    args = parser.parse_args()
    for seed in args.seed:
        rng = np.random.default_rng(seed)
        dataset = load_dataset(args.dataset, seed)
        model = train_model(dataset, seed)
        octiles = np.quantile(dataset.pool, np.arange(1, 8) / 8, axis=0).T
        scale = dataset.pool.std(axis=0) + 1e-9
        planes = rng.normal(size=(len(dataset.names), CELL_BITS)) / scale[:, None]
        tastes = preferences(dataset, rng, args.keys, args.preference)
        # The population's mixes, as a reference of 5,000 rows would show them (+1 smoothing).
        pred, region = regions_of(model, dataset.sample(rng, 5000, False), octiles, planes)
        class_mix = np.bincount(pred, minlength=dataset.classes) + 1.0
        region_mix = np.bincount(region, minlength=dataset.classes << CELL_BITS) + 1.0
        centre = dataset.pool.mean(axis=0)
        reference = dataset.sample(rng, 5000, False)
        centroids = fit_cells((reference - centre) / scale, np.random.default_rng(seed))
        cells = (centroids, centre, scale)
        cell_mix = (
            np.bincount(
                nearest_cell((reference - centre) / scale, centroids), minlength=len(centroids)
            )
            + 1.0
        )
        mix = (
            class_mix / class_mix.sum(),
            region_mix / region_mix.sum(),
            cell_mix / cell_mix.sum(),
        )
        n = HISTORY[-1]
        benign = [
            measures(model, dataset.sample(rng, n, False, tastes[k]), octiles, planes, mix, cells)
            for k in range(args.keys)
        ]
        thieves = [
            measures(model, dataset.sample(rng, n, False), octiles, planes, mix, cells)
            for _ in range(args.extractors)
        ]
        print(f"\nseed {seed} ({args.dataset}, preference {args.preference:g}): "
              f"{args.keys} benign keys, {args.extractors} natural extractors")  # fmt: skip
        for name in benign[0]:
            for i, h in enumerate(HISTORY):
                b = np.array([m[name][i] for m in benign])
                t = np.array([m[name][i] for m in thieves])
                rank = float(np.mean([(b < v).mean() for v in t]))
                # The detector's null (docs/query-patterns.md) fitted on these benign keys:
                # the p-value it gives the median extractor.
                u, scale = tail_parameters(b[:, None], np.array([0.02]))
                p = float(tail_p(np.median(t), u[0], scale[0]))
                above = float(np.mean(t > np.quantile(b, 0.99)))
                print(
                    f"  {name:8s} n={h:5d}: benign median {np.median(b):7.3f} "
                    f"p99 {np.quantile(b, 0.99):7.3f}; extractors median {np.median(t):7.3f}, "
                    f"mean rank {rank:.2f}, above benign p99 {above:.0%}, null p {p:.1e}"
                )
        if args.noise_free:
            fresh = preferences(
                dataset, np.random.default_rng(seed + 10**6), args.noise_free, args.preference
            )
            noise_free(model, dataset, cells, tastes, fresh)


if __name__ == "__main__":
    main()
