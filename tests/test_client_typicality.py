"""`atypical_share`'s rule against the reference's rows (`detectors.clients.typicality`), on
the UCI wine data (178 rows, 13 features; bundled with scikit-learn): a fresh row is seldom
off the rows, a uniform draw in the data's per-feature box mostly is, and one feature far
out alone is `ood_share`'s business."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_wine

from detectors.base import Kind
from detectors.clients.detector import QueryPatternDetector
from detectors.clients.typicality import TypicalRows
from detectors.settings import QueryPatternSettings
from streams.batch import ModelBatch

WINE = load_wine().data
NAMES = [f"f{j}" for j in range(WINE.shape[1])]


def scaled(x: np.ndarray) -> np.ndarray:
    """As the input profile encodes numerics: centred on the median, in interquartile ranges."""
    q1, median, q3 = np.percentile(WINE, [25, 50, 75], axis=0)
    return (x - median) / (q3 - q1)


def split(seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(len(WINE))
    return scaled(WINE[order[:120]]), scaled(WINE[order[120:]])


def uniform_in_box(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(WINE.min(axis=0), WINE.max(axis=0), size=(n, WINE.shape[1]))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fresh_rows_are_seldom_off_the_rows_and_uniform_draws_in_their_box_mostly_are(
    seed: int,
) -> None:
    """Calibrated on the reference's own rows, each measured as a fresh query (its own anchor
    left out): rows it never saw are off the rows about as seldom (1% by construction; 58
    rows here), while uniform draws within every feature's range, most of them in range on
    all 13, are off the rows 84% of the time on the whole data."""
    reference, fresh = split(seed)
    no_clients = np.zeros(len(reference), dtype=np.int64)
    rule, own = TypicalRows.fit(reference, WINE.shape[1], no_clients, np.random.default_rng(0))
    assert own.mean() <= 0.02
    assert rule.atypical(fresh).mean() <= 0.1
    assert rule.atypical(scaled(uniform_in_box(2000, seed))).mean() >= 0.6


def test_one_feature_far_out_is_set_aside_two_are_not() -> None:
    """A real row with one feature far beyond the data (an edge user, out of range: that is
    `ood_share`'s) stays near its row; with two, it is off the rows."""
    reference, _ = split(4)
    rule, _ = TypicalRows.fit(
        reference, WINE.shape[1], np.zeros(len(reference), dtype=np.int64),
        np.random.default_rng(0),
    )  # fmt: skip
    rows = reference[:40].copy()
    assert not rule.atypical(rows).any()
    rows[:, 3] += 50.0
    assert not rule.atypical(rows).any()
    rows[:, 7] += 50.0
    assert rule.atypical(rows).all()


def test_repeated_reference_rows_are_measured_as_fresh_queries() -> None:
    """A learned reference holds the same row many times (a popular input, a resampled pool):
    a row is not its own neighbour, so the radius is the distinct rows' own."""
    reference, _ = split(5)
    no_clients = np.zeros(3 * len(reference), dtype=np.int64)
    once, _ = TypicalRows.fit(reference, WINE.shape[1], no_clients[:120], np.random.default_rng(0))
    thrice, _ = TypicalRows.fit(
        np.repeat(reference, 3, axis=0), WINE.shape[1], no_clients, np.random.default_rng(0)
    )
    assert once.radius > 0
    assert thrice.radius == pytest.approx(once.radius, rel=0.1)


def wine_batch(x: np.ndarray, clients: list[str | None], start: int) -> ModelBatch:
    n = len(x)
    p = 1 / (1 + np.exp(-scaled(x)[:, 0]))
    return ModelBatch(
        model="m",
        source="test",
        partition=0,
        ts=(start + np.arange(n)) * 2.0,
        offsets=np.arange(start, start + n, dtype=np.int64),
        ids=[None] * n,
        clients=clients,
        model_versions=[None] * n,
        rows=[],
        numeric={name: x[:, j].copy() for j, name in enumerate(NAMES)},
        categorical={},
        scores=[{"0": 1 - float(v), "1": float(v)} for v in p],
    )


@pytest.mark.parametrize("seed", [6, 7])
def test_a_uniform_extractor_within_the_wines_ranges_is_flagged_by_atypical_share(
    seed: int,
) -> None:
    """40 keys send wine rows (a little noise, as a bench's resampled pool); an extractor
    draws uniformly within each feature's range, mostly in range on every feature (the
    case two wine seeds of `client_attacks.py` missed before this rule): flagged by
    `atypical_share` within 60 queries, no benign key."""
    rng = np.random.default_rng(seed)
    # As `client_attacks.py` learns it: 3,000 events of a 178-row pool, whose 0.25-99.75%
    # ranges are the data's whole box, so the extractor is in range on every feature.
    detector = QueryPatternDetector("m", QueryPatternSettings(reference_size=3000))
    names = [f"c{i}" for i in range(40)]
    spread = np.subtract(*np.percentile(WINE, [75, 25], axis=0))
    offset = 0

    def benign(n: int) -> tuple[np.ndarray, list[str | None]]:
        rows = WINE[rng.integers(len(WINE), size=n)]
        return rows + rng.normal(0, 0.02, size=rows.shape) * spread, [
            names[i] for i in rng.integers(len(names), size=n)
        ]

    for _ in range(40):
        x, who = benign(400)
        assert detector.update(wine_batch(x, who, offset)) == []
        offset += len(x)
    attack = uniform_in_box(200, seed)
    findings = []
    for i in range(0, 200, 10):
        x, who = benign(40)
        x = np.concatenate([x, attack[i : i + 10]])
        who = who + ["extractor"] * 10
        findings += detector.update(wine_batch(x, who, offset))
        offset += len(x)
    flagged = {f.subject: f for f in findings if f.kind == Kind.SUSPICIOUS_CLIENT}
    assert set(flagged) == {"extractor"}
    details = flagged["extractor"].details
    assert details["queries_seen"] <= 60
    assert "atypical_share" in details["detectors_fired"]
