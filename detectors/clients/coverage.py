"""Region coverage: how much a client's queries, taken together, look like the whole population's.

Model extraction needs labels across the model's decision regions and the input space, so an
extractor's queries, taken together, reach them the way the whole input distribution does
(Kesarwani et al. 2018, "Model Extraction Warning in MLaaS Paradigm": cumulative coverage of
the model's regions per client). A real API key serves its own customers, a segment of the
population, and its queries keep their own mix.

Each query falls in regions of three parts: its predicted class (the event's `prediction`,
else its top score, by a stable hash into `CLASS_SLOTS` slots), its input cell (the nearest of
up to `INPUT_CELLS` k-means centroids of the reference's encoded inputs: the input space's own
clusters, where customer segments are) and, per categorical feature, its value (the profile's
hashed bucket, by feature and bucket into `VALUE_SLOTS` slots: a market or a channel is a
segment that Euclidean cells see poorly). Per client, cumulative counts of all three; the
population's mix is the mean of the fresh, unflagged clients' own mixes (one voice per client,
as the null has, refreshed with it: contemporaneous, it follows an input shift), shrunk
towards a stored reference's mix by what each is worth (`shrunk_mix`: N keys' mean errs by
their spread over N, which caps a natural-data extractor's statistic; a reference stale
after a shift gets no weight), and until enough clients have looked, the traffic's (the
counts of every unflagged client's queries, decayed with a time constant of
`null_window_seconds`). The statistic is minus the log of the
mean, over the parts, of the Kullback-Leibler divergence of the client's mix from the
population's, less its plug-in bias ((slots the traffic reached - 1) / (2 n) in each part
after n queries), at least 0, plus `NOISE_FLOOR` times a sampler's sampling noise (the sd of
its plug-in divergence, sqrt(2 (reached - 1)) / (2 n) in each part). A client with its own
segment stands near minus the log of its segment's mean divergence whatever its history,
whichever part it differs in (a segment with the population's class mix but its own inputs
shows in the cells or the values); a client sampling the whole population stands at 0 plus
noise, so near minus the log of its noise, which grows like log n, on the floor about half the
time. Without the debiasing the bias hid the difference: at 200 queries it is 0.02-0.03, about
a near-segment's whole divergence (natural extractors within 2,000 queries, `client_attacks.py
--preference 1`, held-out digits seeds 61-66, 81, 82: 12 of 16 plug-in, 16 of 16 debiased).
The floor follows the noise so that a key whose debiased value dips below 0 by chance stands
where a sampler of its history stands half the time, at minus the log of half its noise, never
far out in the null's tail: a fixed floor (1e-4, minus the log 9.2) found every extractor of
seeds 61-66 too, but flagged 8 of 50 benign keys of `tests/test_causes.py`, whose keys sample
alike, each on the floor far above its null's tail. The debiased value's noise shrinks with
history, so its null takes clients with less history (`null.cumulative_voices`). Counting
every slot the traffic reached errs high for a client reaching fewer: its value errs up,
towards the extractors, in its null's voices as in itself. The mean, not the largest: the
extractor's largest sampling noise over three parts cost more than the segments' largest
divergence gained (p at 1,600 queries 5.7e-4 against 2.3e-4 on `client_attacks.py --preference
1` seed 8). (The log matters: divergences near 0 are where the extractors are, and the null's
exponential tail must see them spread out.) Judged like every statistic against the
contemporaneous population at the same number of queries seen; it tells nothing when benign
clients themselves sample the whole population alike (then they too stand near their noise,
and so does the null), nor about a benign key whose own mix is as close to the population's as
an extractor's (`bench/client_separation.py --noise-free`).

Only the directions the clients' mixes spread along count in full (`spread_directions`,
since stop 47). Keys serving segments of a few kinds differ along a few directions of a part's
16 slots; along the others every key, like a sampler, shows sampling noise alone, which a
divergence over all 16 adds to the extractor's noise floor and to the keys' alike. Per part,
the clients' covariance in the population's chi-square coordinates, less what their sampling
noise explains (Marchenko-Pastur's edge for as many clients), gives the directions and the
spread along each; a look's chi-square along them is weighted spread / (spread + 1 / n), the
likelihood ratio's weight between a key with that spread and a sampler, and off them counts
only what clears `OFF_CLEAR` sds of its noise, so a key unlike every other in a way of its own
keeps its distance.

Cells from signs of random projections, joined to the class, were tried first and dropped: on
the tuning seeds they added noise, not separation. Cells fitted to the reference's clusters
separate as well as the classes, and their mean better (`bench/client_separation.py --seed 8
--preference 1`, against the reference's mix: the median extractor's p at 1,000 queries
1.7e-5 with classes, 2.2e-5 with cells, 1.1e-5 with their mean).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

PART_SLOTS = 16  # slots of each part (equal widths: the statistic reshapes them as one array)
CLASS_SLOTS = PART_SLOTS  # predicted classes, by a stable hash of their text
INPUT_CELLS = PART_SLOTS  # k-means cells of the reference's inputs
VALUE_SLOTS = PART_SLOTS  # categorical values, by feature and hashed bucket
PARTS = 3
CELLS_START = CLASS_SLOTS
VALUES_START = CLASS_SLOTS + INPUT_CELLS
REGIONS = PARTS * PART_SLOTS  # a client's counts: class slots, input cells, values
KMEANS_ROUNDS = 30  # Lloyd iterations (the reference is at most a few thousand rows)
KMEANS_ROWS = 5000  # reference rows the cells are fitted on, at most
SMOOTHING = 0.5  # added to each slot of the traffic's mix (a slot nobody reached yet)
# Added to the debiased divergence (at least 0), in sds of a sampler's noise: a sampler of
# the population is at 0 plus noise, on this floor about half the time, and a key dipping
# below 0 by chance lands there too, not far above.
NOISE_FLOOR = 0.5
FLOOR = 1e-6  # of the divergence, under the log (a part with a single slot has no noise)
# The directions are estimated from the clients with at least MIN_SPREAD_QUERIES queries in
# a part, and only where there are at least MIN_SPREAD_CLIENTS of them and twice the slots
# they reached (a covariance of fewer is mostly its own noise: early on day 0, 15 clients
# made a heavy user at 200 queries stand out as a sampler on wine 304 and 307).
MIN_SPREAD_QUERIES = 50
MIN_SPREAD_CLIENTS = 30
OFF_CLEAR = 2.0  # sds of its noise the divergence off the directions must clear to count
MAX_LABELS = 4096  # labels whose slot is cached (a regression model has endless values)


def fit_cells(encoded: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Up to `INPUT_CELLS` centroids of the reference's encoded inputs (k-means: k-means++
    seeding, then Lloyd's iterations); fewer when the reference has fewer distinct rows."""
    x = np.unique(np.asarray(encoded, dtype=np.float64), axis=0)
    if len(x) > KMEANS_ROWS:
        x = x[rng.choice(len(x), KMEANS_ROWS, replace=False)]
    k = min(INPUT_CELLS, len(x))
    if k == 0:
        return np.zeros((0, encoded.shape[1]))
    centroids = [x[rng.integers(len(x))]]
    nearest = ((x - centroids[0]) ** 2).sum(axis=1)
    for _ in range(1, k):
        total = nearest.sum()
        if total <= 0:
            break
        centroids.append(x[rng.choice(len(x), p=nearest / total)])
        nearest = np.minimum(nearest, ((x - centroids[-1]) ** 2).sum(axis=1))
    c = np.array(centroids)
    for _ in range(KMEANS_ROUNDS):
        cell = nearest_cell(x, c)
        sums = np.zeros_like(c)
        np.add.at(sums, cell, x)
        sizes = np.bincount(cell, minlength=len(c))[:, None]
        moved = np.where(sizes > 0, sums / np.maximum(sizes, 1), c)
        if np.array_equal(moved, c):
            break
        c = moved
    return c


def nearest_cell(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """The index of each row's nearest centroid (one matrix product)."""
    return nearest_cells(x, centroids)[0]


def nearest_cells(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's nearest centroid and its squared distance to it (one matrix product)."""
    d2 = (centroids**2).sum(axis=1)[None, :] - 2 * (x @ centroids.T)
    cell = d2.argmin(axis=1)
    nearest = np.take_along_axis(d2, cell[:, None], axis=1)[:, 0]
    return cell, np.maximum(nearest + np.einsum("ij,ij->i", x, x), 0.0)


class RegionCoverage:
    """The regions of each query (class slot, input cell, categorical values), the population's
    mix (else the unflagged traffic's decayed one), and the statistic."""

    def __init__(
        self,
        time_constant: float,
        centroids: np.ndarray | None = None,
        categorical: tuple[int, int] = (0, 0),
        radius: float = math.inf,
        reference: np.ndarray | None = None,
    ) -> None:
        self.time_constant = time_constant
        # A stored reference's region counts (rows drawn apart from the keys, such as
        # training data), which the population's mix shrinks towards (`shrunk_mix`); None
        # for a reference learned from the first events (the same keys' queries).
        self.reference = reference
        self.centroids = np.zeros((0, 0)) if centroids is None else centroids
        self.radius = radius  # squared; beyond it from every cell a query is atypical
        # The profile's categorical features and hashed buckets per feature.
        self.categorical = categorical
        features, buckets = categorical
        # Each (feature, bucket)'s value slot; a missing value (no bucket set) is a value too.
        codes = np.arange(features)[:, None] * (buckets + 1) + np.arange(buckets + 1)
        self.value_slots = VALUES_START + (codes * 2654435761 % 2**32) % VALUE_SLOTS
        self.traffic = np.zeros(REGIONS)  # decayed counts of every tracked query
        self.traffic_ts = -math.inf  # event time the counts are decayed to
        # The population's mix, each client one voice (`observe_population`); None until
        # enough clients have looked, and the decayed traffic stands in.
        self.population: np.ndarray | None = None
        # Per part, the directions the clients' mixes differ along (PARTS x PART_SLOTS x
        # PART_SLOTS, in the population's chi-square coordinates, a column each) and the
        # spread along each beyond sampling noise (PARTS x PART_SLOTS; 0 for a direction
        # the noise explains): `spread_directions`. None (no part spreads beyond its
        # noise, or too few clients): the whole divergence counts.
        self.directions: np.ndarray | None = None
        self.spread: np.ndarray | None = None
        self.slots: dict[object, int] = {}

    def regions(
        self, predictions: list[object], encoded: np.ndarray, values: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each query's regions (queries x (2 + categorical features), int64): its class
        slot, its input cell (`CELLS_START` + the cell; without cells, every query in the
        first), then each categorical feature's value slot; and whether it is atypical
        (beyond `radius` from every cell). `values`: each query's bucket per categorical
        feature (queries x features; `buckets` where missing), as the detector's coverage
        histograms bin them."""
        features = self.categorical[0]
        out = np.empty((len(predictions), 2 + features), dtype=np.int64)
        out[:, 0] = self.class_slots(predictions)
        out[:, 1] = CELLS_START
        atypical = np.zeros(len(predictions), dtype=bool)
        if len(self.centroids) and len(encoded):
            cell, d2 = nearest_cells(np.asarray(encoded, dtype=np.float64), self.centroids)
            out[:, 1] += cell
            atypical = d2 > self.radius
        if features:
            out[:, 2:] = self.value_slots[np.arange(features), values]
        return out, atypical

    def class_slots(self, predictions: list[object]) -> np.ndarray:
        """Each query's class slot (int64); a missing prediction is hashed as the text
        'None'."""
        slots = self.slots
        if len(slots) > MAX_LABELS:
            slots.clear()
        for label in dict.fromkeys(predictions):
            if label not in slots:
                slots[label] = zlib.crc32(str(label).encode()) % CLASS_SLOTS
        return np.fromiter(map(slots.__getitem__, predictions), np.int64, len(predictions))

    def observe(self, regions: np.ndarray, now: float) -> None:
        """The traffic's mix, decayed to `now`, with these queries added."""
        if math.isfinite(self.traffic_ts) and now > self.traffic_ts:
            self.traffic *= math.exp(-(now - self.traffic_ts) / self.time_constant)
        self.traffic_ts = max(self.traffic_ts, now)
        self.traffic += np.bincount(regions.ravel(), minlength=REGIONS)

    def observe_population(self, counts: np.ndarray) -> None:
        """The population's mix from its clients' cumulative counts (clients x REGIONS: the
        fresh, unflagged ones): per part, the mean of each client's own mix. One voice per
        client, as the null has: a query-weighted mix is the few busiest keys' (a heavy user,
        whoever is awake), and on `client_attacks.py` it stood a KL of 0.007 from the data's
        class mix where the clients' mean stood 0.003 (seed 35), more than a natural-data
        extractor's own sampling noise after 1,600 queries (9 / 3,200)."""
        parts = counts.astype(np.float64).reshape(len(counts), PARTS, PART_SLOTS)
        n = parts.sum(axis=2, keepdims=True)
        mixes = parts / np.maximum(n, 1)
        # A slot nobody reached yet: SMOOTHING queries' worth, as the traffic's mix has.
        smoothing = SMOOTHING / np.maximum(n.sum(axis=0), 1)
        if self.reference is not None and len(mixes) > 1:
            mean = shrunk_mix(mixes, self.reference.reshape(PARTS, PART_SLOTS))
        else:
            mean = mixes.mean(axis=0)
        q = mean + smoothing
        self.population = q.ravel()
        q = q / q.sum(axis=1, keepdims=True)
        directions, spread = spread_directions(mixes, n[:, :, 0], q)
        kept = bool(np.any(spread))
        self.directions, self.spread = (directions, spread) if kept else (None, None)

    def forget_population(self) -> None:
        """Too few clients looked lately: the decayed traffic's mix stands in, whole."""
        self.population = self.directions = self.spread = None

    def statistic(self, counts: np.ndarray) -> np.ndarray:
        """Minus the log of the mean, over the parts with queries (classes, input cells,
        values), of the KL divergence of each row's mix (looks x REGIONS counts) from the
        population's (the traffic's while too few clients have looked), less the plug-in
        bias, at least 0, plus `NOISE_FLOOR` sampler's noise sds; NaN for a row without
        queries."""
        looks = len(counts)
        counts = counts.astype(np.float64).reshape(looks, PARTS, PART_SLOTS)
        if self.population is not None:
            q = self.population.reshape(PARTS, PART_SLOTS)
        else:
            q = self.traffic.reshape(PARTS, PART_SLOTS) + SMOOTHING
        q = q / q.sum(axis=1, keepdims=True)
        log_q = np.log(q)
        n = counts.sum(axis=2)  # looks x parts
        p = counts / np.maximum(n, 1)[:, :, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(p > 0, p * (np.log(p) - log_q), 0.0)
        has = n > 0
        parts = has.sum(axis=1)
        # A sampler's 2 n KL is about chi-square, its degrees of freedom the slots the
        # traffic reached less one, in each part: mean (the bias) degrees / (2 n), sd
        # sqrt(2 degrees) / (2 n).
        reached = np.count_nonzero(self.traffic.reshape(PARTS, PART_SLOTS) > 0, axis=1)
        degrees = np.maximum(reached - 1, 0)[None, :]
        twice_n = 2 * np.maximum(n, 1)
        divergence = terms.sum(axis=2) - degrees / twice_n
        variance = 2 * degrees / twice_n**2
        if self.population is not None and self.directions is not None:
            divergence, variance = self._along_spread(p, q, n, degrees, divergence, variance)
        total = np.where(has, divergence, 0.0).sum(axis=1)
        variance = np.where(has, variance, 0.0)
        noise = np.sqrt(variance.sum(axis=1)) / np.maximum(parts, 1)
        divergence = np.maximum(total / np.maximum(parts, 1), 0.0) + NOISE_FLOOR * noise + FLOOR
        return np.where(parts > 0, -np.log(divergence), np.nan)

    def _along_spread(
        self,
        p: np.ndarray,
        q: np.ndarray,
        n: np.ndarray,
        degrees: np.ndarray,
        divergence: np.ndarray,
        variance: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each look's divergence and its noise's variance per part (looks x parts), where
        the population spreads along some direction: half the chi-square of the look's mix
        along the directions, each weighted spread / (spread + 1 / n) (what a key with that
        spread shows there over what a sampler's noise does) and less its noise, plus half
        the chi-square off them where it clears `OFF_CLEAR` sds of its noise (a key unlike
        every other in a way of its own is no sampler). Elsewhere the KL as it was. `q`:
        the population's mix per part, normalized."""
        assert self.directions is not None and self.spread is not None
        y = (p - q) / np.sqrt(q)  # looks x parts x slots: chi-square coordinates
        along = np.einsum("lps,psd->lpd", y, self.directions) ** 2  # looks x parts x dirs
        inverse_n = 1 / np.maximum(n, 1)[:, :, None]
        weight = self.spread / (self.spread + inverse_n)
        spread_along = ((along - inverse_n) * weight).sum(axis=2)
        spread_variance = 2 * (weight**2 * inverse_n**2).sum(axis=2)
        kept = np.count_nonzero(self.spread, axis=1)
        off_degrees = np.maximum(degrees - kept, 0)
        inverse_n = inverse_n[:, :, 0]
        off = (y**2).sum(axis=2) - np.where(self.spread > 0, along, 0.0).sum(axis=2)
        off -= off_degrees * inverse_n + OFF_CLEAR * np.sqrt(2 * off_degrees) * inverse_n
        chi_square = spread_along + np.maximum(off, 0.0)
        use = kept > 0
        return (
            np.where(use, chi_square / 2, divergence),
            np.where(use, spread_variance / 4, variance),
        )

    def to_data(self) -> dict[str, Any]:
        return {
            "traffic": self.traffic,
            "traffic_ts": self.traffic_ts,
            "population": self.population,
            "centroids": self.centroids,
            "categorical": list(self.categorical),
            "radius": self.radius,
            "reference": self.reference,
            "directions": self.directions,
            "spread": self.spread,
        }

    @classmethod
    def from_data(cls, data: dict[str, Any], time_constant: float) -> RegionCoverage:
        features, buckets = (int(v) for v in data["categorical"])
        centroids = np.asarray(data["centroids"], dtype=np.float64)
        reference = data.get("reference")  # checkpoints before it: the clients' mean alone
        if reference is not None:
            reference = np.asarray(reference, dtype=np.float64)
        out = cls(time_constant, centroids, (features, buckets), float(data["radius"]), reference)
        out.traffic = np.asarray(data["traffic"], dtype=np.float64)
        out.traffic_ts = float(data["traffic_ts"])
        # Checkpoints before the population's mix: the traffic's until the next refresh.
        if (population := data.get("population")) is not None:
            out.population = np.asarray(population, dtype=np.float64)
        if data.get("directions") is not None:
            out.directions = np.asarray(data["directions"], dtype=np.float64)
            out.spread = np.asarray(data["spread"], dtype=np.float64)
        return out


def shrunk_mix(mixes: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The population's mix per part (PARTS x PART_SLOTS) from the clients' own mixes
    (clients x PARTS x PART_SLOTS), shrunk towards a stored reference's (its counts, same
    shape; a part without rows is left alone) by how much each is worth.

    The clients' mean errs by the spread between clients over their number (on a bench
    of 150 keys with segments of their own, a KL of about 2.5e-3 from the data they
    sample: a natural-data extractor's ceiling), the reference's by its rows' sampling
    noise and by how far the traffic has moved from it. In the chi-square scale
    (sum (a - b)^2 / b): V_clients = sum var / (N m), V_ref = sum r (1 - r) / (rows m),
    and the squared bias B = max(0, D - V_clients - V_ref) from their distance D (which
    two unbiased estimates of one mix show as V_clients + V_ref). The weight
    V_clients / (V_clients + V_ref + B) minimizes the blend's expected error: without a
    shift it is the precision-weighted mean, after a shift (B large) the clients' mean."""
    clients = len(mixes)
    mean = mixes.mean(axis=0)
    rows = reference.sum(axis=1, keepdims=True)
    r = reference / np.maximum(rows, 1)
    scale = (mean + r) / 2  # > 0 wherever either has mass
    with np.errstate(divide="ignore", invalid="ignore"):
        inverse = np.where(scale > 0, 1 / scale, 0.0)
    v_clients = (mixes.var(axis=0, ddof=1) / clients * inverse).sum(axis=1)
    v_reference = (r * (1 - r) / np.maximum(rows, 1) * inverse).sum(axis=1)
    distance = ((r - mean) ** 2 * inverse).sum(axis=1)
    bias = np.maximum(distance - v_clients - v_reference, 0.0)
    total = v_clients + v_reference + bias
    with np.errstate(divide="ignore", invalid="ignore"):
        weight = np.where((rows[:, 0] > 0) & (total > 0), v_clients / total, 0.0)
    return mean + weight[:, None] * (r - mean)


def spread_directions(
    mixes: np.ndarray, n: np.ndarray, q: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per part, the directions the clients' mixes (clients x PARTS x PART_SLOTS, of n
    queries each: clients x PARTS) spread along around the population's mix q, in its
    chi-square coordinates (p - q) / sqrt(q), and the spread along each beyond sampling
    noise: the eigenvalues of the covariance of the clients with `MIN_SPREAD_QUERIES` in
    the part, less (1 + sqrt(g))^2 x their mean 1 / n (their sampling noise per direction,
    and the largest eigenvalue a covariance of noise alone reaches over as many clients:
    Marchenko-Pastur, g = (slots reached - 1) / clients), at least 0."""
    directions = np.zeros((PARTS, PART_SLOTS, PART_SLOTS))
    spread = np.zeros((PARTS, PART_SLOTS))
    for part in range(PARTS):
        has = n[:, part] >= MIN_SPREAD_QUERIES
        clients = int(has.sum())
        slots = int(np.count_nonzero(mixes[has, part].sum(axis=0) > 0))
        if slots < 2 or clients < max(MIN_SPREAD_CLIENTS, 2 * slots):
            continue  # too few mixes for a covariance: the whole divergence counts
        root = np.sqrt(q[part])
        y = (mixes[has, part] - q[part]) / root
        y = y - y.mean(axis=0)
        noise = float(np.mean(1 / n[has, part]))
        cov = y.T @ y / (clients - 1)
        values, vectors = np.linalg.eigh(cov)
        g = (slots - 1) / clients
        edge = noise * (1 + math.sqrt(g)) ** 2
        spread[part] = np.maximum(values - edge, 0.0)
        directions[part] = vectors
    return directions, spread


def labels_of(
    predictions: Sequence[object], scores: Sequence[dict[str, float] | None], n: int
) -> list:
    """Each query's predicted class: its `prediction`, else the top class of its `scores`
    (None when it has neither)."""
    if len(predictions) == n and any(p is not None for p in predictions):
        return list(predictions)
    if len(scores) == n:
        return [None if not row else max(row, key=row.__getitem__) for row in scores]
    return [None] * n


def counts_at(
    stored: np.ndarray, labels: np.ndarray, start: np.ndarray, stop: np.ndarray
) -> np.ndarray:
    """Counts of each look: its client's stored counts (looks x REGIONS, every label of a row
    counted in the look's one row; or looks x features x bins for per-feature `labels`: rows x
    features) plus the batch's `labels[start:stop]` of that look (rows of its client before
    and at the look). One bincount over the looks' rows: cheaper than a running sum over the
    whole batch when a look sees a few rows of it."""
    lengths = stop - start
    looks = np.repeat(np.arange(len(start)), lengths)
    rows = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    rows += np.repeat(start, lengths)
    width = stored.shape[-1]
    cells = labels[rows].reshape(len(rows), -1)
    if stored.ndim == 3:  # a histogram per feature
        features = cells.shape[1]
        cells = cells + (looks[:, None] * features + np.arange(features)) * width
    else:  # one histogram per look
        cells = cells + looks[:, None] * width
    added = np.bincount(cells.ravel(), minlength=stored.size)
    return stored + added.reshape(stored.shape)
