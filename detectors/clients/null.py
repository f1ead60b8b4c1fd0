"""What benign clients show *now*, at the same history length: the null of every statistic.

A client's statistics depend on how much history it has (a full ring of 256 queries has
closer neighbours than a ring of 25) and on what the whole population is doing (an input shift
or a new segment moves every client's distances together). So a client is never judged
against a frozen sample: each look compares its statistics with those of the contemporaneous
population of clients at the same history length.

- **History buckets**: a client's ring fill n (queries in its ring) falls in a geometric
  bucket (edges from `min_queries` by factors of sqrt(2), the full ring its own bucket).
- **One voice per client**: per bucket the null holds each client's latest look value
  (one row per tracked client), kept while fresher than `window` seconds. A busy client, or an
  attacker, counts once, however many queries it sends.
- **Cumulative statistics** (coverage, region coverage: over every query the client sent,
  bucketed by queries seen): each takes, besides a bucket's own fresh voices, every other
  client's from the side where its benign law is conservative. `coverage` (the features'
  plug-in entropies) only grows with history, its bias towards "narrow" wearing off: a
  bucket's pool is every client with *at least* that history, each by its fresh value there,
  else in the nearest larger bucket; a client's first n queries are themselves a client of n
  queries, so the pool lies at or above the benign law at the bucket's history. The debiased
  `region_coverage` (`coverage.RegionCoverage.statistic`) stands at minus the log of its
  segment's divergence plus noise that shrinks with history (a sampler's, near minus the log
  of its noise, rises like log n: among samplers, voices from fewer queries stand up to log 4
  lower, and the floor's share of them keeps the tail's start near its top): a bucket's pool
  is every client with *at most* that history, down to 4x fewer queries, each by its fresh
  value there, else in the nearest smaller bucket (wider noise: a heavier tail); a bucket with
  fewer than `min_clients` of them (a client behind its peers: a newcomer among long-lived
  keys) also takes the others' values in the nearest larger bucket, their deviation from its
  median widened by (largest queries there / smallest here), since the debiased value's noise
  shrinks at most as fast as 1 / queries; it never borrows a larger bucket's tail as it is
  (narrower). So a client running ahead of its peers (a natural-data extractor from the first
  hour at an ordinary rate) has a null, and the long-lived population (whose voices at a
  passed history go stale after `window`) speaks wherever it is now.
- **Tail model** (peaks over threshold, robust): u = the pool's 90th percentile, the tail
  beyond it exponential with scale b = the maximum-likelihood scale of the excesses over u
  with the pool's top 2% censored (at least one client, two from 50 voices on: each counts
  as the largest excess kept, so a few clients, the judged one's own earlier voice among
  them, cannot widen it beyond the benign voices below them; dropping them instead left the
  scale at 0.63 of an exponential tail's), and at least half the MAD, a share of the spread
  from the median to u, and a per-statistic floor. p(x) = min(1, 0.1 exp(-(x - u) / b)).
  The scale's own noise is not paid for: on an exactly exponential tail a look spends up to
  1.3 times its share at 1e-3, 1.7 times at 1e-4 (docs/query-patterns.md: paying it cost
  natural extraction). Below the threshold of any look (at most alpha / 8 per statistic and
  client-day) only this tail matters.
- **Shares at a partial ring** (out of reference, low margin, shared, probes, boundary
  pairs): a bucket's pool is its own fresh voices plus, for every other client, its fresh
  value in the nearest larger bucket, its deviation from that bucket's median widened by
  sqrt(fill there / this bucket's smallest fill); for `shared_fingerprints`, whose level
  moves with the hour, every client's latest fresh voice at or above the bucket, widened
  alike (`CONCURRENT`). A share's sampling noise shrinks as
  1 / sqrt(queries) and the spread between clients does not grow with history, so the
  widened value spreads at least as wide as the client's share would at this fill. Without
  it a partial-ring bucket (new and low-volume clients: a dozen on a day of a long-lived
  population) was judged on a dozen voices, whose tail one client can triple; a full ring's
  was borrowed as it is, narrower than this fill's noise.
- **Fallback**: a bucket with fewer than `min_clients` fresh clients (voices) borrows the nearest
  *larger* bucket that has them (more history means closer neighbours and more coverage, so
  this errs towards benign); shares, whose spread only narrows with history, then borrow the
  nearest smaller bucket, and `region_coverage` only that (its tail's start raised by the
  most a value can gain with the extra history, log of the ratio of queries); with none,
  the prior learned from the reference (`Prior`) holds: usable from the first look,
  conservative, and only for statistics that have a principled benign level without a
  population (out-of-reference, low margin, shared fingerprints, coordinate probes, distances
  against i.i.d. reference queries, boundary pairs by a Chernoff bound).
"""

from __future__ import annotations

import math

import numpy as np

STATISTICS = (
    "ood_share",
    "low_margin_share",
    "shared_fingerprints",
    "knn_distance",
    "prada_normality",
    "coordinate_probes",
    "coverage",
    "region_coverage",
    "boundary_pairs",
    "atypical_share",
)
# Smallest tail scale per statistic, in its own units (shares, log distance, -log W, ratio):
# a population that shows no spread at all (every client at 0) is not infinitely sharp.
# `boundary_pairs` 0.01: benign keys on five datasets (digits, synthetic, segment, wine,
# cancer) sent at most one pair per full ring, most none, so its tail is this floor; at 0.02
# a late HopSkipJump's line search (3 pairs in 20 queries) stood at p 6e-5, five times its
# first looks' threshold, and was flagged after 140-240 queries ("Runs of stop 42"). (Since
# stop 43 a binary search's halving steps count too: benign keys' full rings hold at most
# 0.01 of them.)
# `atypical_share` 0.03: a key's queries are atypical with its segment, so the few keys
# whose segment lies beyond the reference's cells stand far above the rest (segment 170 and
# 172: two edge keys at 0.21-0.23 of their rings where the 90th percentile stood at
# 0.02-0.03; at 0.02 they fell at p 5e-6, at 0.03 at 1.3e-4 to 1.7e-4, "Runs of stop 45").
FLOORS = np.array([0.02, 0.02, 0.02, 0.05, 0.02, 0.02, 0.03, 0.1, 0.01, 0.03])
TAIL_QUANTILE = 0.9
# The least tail scale, as a share of the spread from the median to u: a normal tail's is
# 0.37 of it. A small pool's few excesses say little about its tail, so the share grows as
# the pool shrinks: by 1.5 / sqrt(voices), or, for `region_coverage`, by the relative
# margin SMALL_POOL / voices. A fitted scale's error costs a look at level a about
# exp(L^2 var / 2) with L = log(0.1 / a), var its relative variance, which falls as
# 1 / voices: a margin of L var / 2 pays for it. 32 keeps the benign rate within alpha at
# 1e-2 to 1e-4 on `bench/client_tail_calibration.py`'s populations from 12 to 150 voices
# (1.5 / sqrt(voices) put it at 5.2 times alpha at 1e-3 with 12 voices, 1.7 times with 20,
# and 0.2-0.6 times with 150, where 32 / voices is 0.4-0.8).
SHAPE_FLOOR = 0.4
SMALL_POOL = 32.0
SMALL_POOL_SQRT = 1.5  # the other statistics' margin: SMALL_POOL_SQRT / sqrt(voices)
MAX_POOL = 4096  # clients per bucket used to estimate the tail (a stride subset beyond)
SOURCES = ("none", "population", "larger history", "reference prior", "smaller history")
PRIOR = SOURCES.index("reference prior")
SHARE_STATISTICS = [
    STATISTICS.index(name)
    for name in (
        "ood_share",
        "low_margin_share",
        "shared_fingerprints",
        "coordinate_probes",
        "boundary_pairs",
        "atypical_share",
    )
]
# Shares whose benign level moves with the hour: `shared_fingerprints` grows with how many
# keys query within the fingerprint horizon. A key's voice in a partial-ring bucket was
# recorded as it passed it, perhaps in the night; in a partial-ring bucket's null these take
# each key's latest voice (a larger bucket's widened): on wine 310 the 28-40 bucket's
# voices, recorded in the quiet hours, put an ordinary morning key at p 8e-6 ("Runs of
# stop 43"). The other shares are of a key's own queries: a voice at the bucket's own fill,
# however old, is the closer law (an extractor after an input shift, `tests/
# test_query_patterns.py`, was flagged only against the keys' own partial-ring voices).
CONCURRENT = [STATISTICS.index("shared_fingerprints")]
# Cumulative statistics (over every query the client sent, bucketed by queries seen): a
# bucket's null also takes other clients' voices, from the side where they are conservative
# (`cumulative_voices`).
CUMULATIVE_STATISTICS = [STATISTICS.index("coverage"), STATISTICS.index("region_coverage")]
REGION = STATISTICS.index("region_coverage")
# The statistics whose least tail scale grows with 1 / voices (`SMALL_POOL`).
BY_VARIANCE = np.arange(len(STATISTICS)) == REGION
REGION_VOICE = CUMULATIVE_STATISTICS.index(REGION)
# History buckets below its own a `region_coverage` voice may come from (4x fewer queries).
REGION_REACH = 4
# Where `share_bound` may split between a client's rate and its sampling noise: these
# fractions of the way from the full ring's tail start to the share.
SPLITS = np.linspace(0.0, 1.0, 33)[:-1]
# The null's tails as last refreshed, one value per (bucket, statistic): checkpointed as they
# are (`PopulationNull.fitted`).
FITTED = ("u", "b", "clients", "source", "from_bucket")


def history_edges(min_queries: int, buffer_size: int) -> np.ndarray:
    """Lower edges of the history buckets: min_queries x sqrt(2)^i below the ring size, the
    full ring, then on by sqrt(2) up to 2^24 queries (cumulative statistics: coverage)."""
    edges = [float(min_queries)]
    while edges[-1] * math.sqrt(2) < buffer_size:
        edges.append(round(edges[-1] * math.sqrt(2)))
    edges.append(float(buffer_size))
    while edges[-1] < 2**24:
        edges.append(round(edges[-1] * math.sqrt(2)))
    return np.array(edges)


def bucket_of(fill: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The history bucket of each ring fill (fills below the first edge: bucket 0)."""
    return np.maximum(np.searchsorted(edges, fill, side="right") - 1, 0)


def tail_parameters(
    pool: np.ndarray, floors: np.ndarray, by_variance: np.ndarray | bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(u, b) per column of `pool` (clients x statistics, or clients x buckets x statistics:
    each column on its own; NaN = no value), as the module docstring says; NaN where a column
    has no value. Rows with no value at all change nothing (NaN sorts last), so pools of
    several buckets can be stacked over the same rows."""
    ordered = np.sort(pool, axis=0)  # NaN last
    count = np.count_nonzero(~np.isnan(pool), axis=0)
    safe = np.maximum(count - 1, 0)[None]
    med = np.take_along_axis(ordered, safe // 2, axis=0)[0]
    u = np.take_along_axis(ordered, np.floor(TAIL_QUANTILE * safe).astype(np.int64), axis=0)[0]
    deviation = np.sort(np.abs(pool - med), axis=0)
    mad = np.take_along_axis(deviation, safe // 2, axis=0)[0]
    rank = np.arange(len(pool)).reshape(-1, *[1] * (pool.ndim - 1))
    # At least one voice, two from 50 on (the judged client's own earlier voice in its bucket
    # and a second attacker's); a smaller pool keeps its few excesses.
    drop = np.maximum(1 + (count >= 50), count // 50)
    beyond = ordered > u
    top = rank >= (count - drop)
    above = beyond & ~top
    excess = np.where(above, ordered - u, 0.0)
    n_excess = np.count_nonzero(above, axis=0)
    # Type-II censoring: each dropped voice counts as the largest kept excess, so the top
    # voices can only be as wide as the benign ones below them, and the scale is the
    # exponential's maximum-likelihood one (the kept excesses alone average 0.63 of it, 12
    # of 15).
    dropped = np.count_nonzero(beyond & top, axis=0)
    censored_at = excess.max(axis=0, initial=0.0)
    b = (excess.sum(axis=0) + dropped * censored_at) / np.maximum(n_excess, 1)
    # At least a share of the spread from the median to u, larger for fewer voices
    # (`SHAPE_FLOOR`).
    voices = np.maximum(count, 1)
    share = np.where(
        by_variance,
        SHAPE_FLOOR * (1 + SMALL_POOL / voices),
        SHAPE_FLOOR + SMALL_POOL_SQRT / np.sqrt(voices),
    )
    spread = (u - med) * share
    b = np.maximum(np.maximum(b, np.maximum(0.5 * np.nan_to_num(mad), spread)), floors)
    none = count == 0
    u[none], b[none] = np.nan, np.nan
    return u, b


def share_bound(x: np.ndarray, fill: np.ndarray, u: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A bound on P(share >= x) for a benign client's share over `fill` queries (looks x
    shares), through its rate r: for any t, P(r >= t) + P(share >= x | r < t), the first
    from the full ring's tail (u, b per share: its shares spread wider than the rates they
    measure), the second Chernoff's exp(-fill KL(x || t)) for independent queries; the least
    over t in `SPLITS` (NaN where the share or the tail is missing; 1 where the share is
    not beyond the tail's start).

    Why: a partial ring's null is the full ring's clients widened to its noise (the module
    docstring), an exponential tail that far beyond its start is much heavier than any
    client's binomial noise: 19 of 20 queries out of reference stood at p 6.7e-4 against a
    tail starting at 0.22 (`bench/client_attacks.py`, segment 147). With queries that come
    in runs of 4 alike, not independent, benign shares at 20 queries fall at or below 1e-4
    up to 1.3 times as often as 1e-4, and one seed of ten with a narrow fitted tail put
    clients with 20 of 20 at p <= 1e-5 (docs/query-patterns.md, "Runs of stop 38")."""
    out = np.where(np.isnan(x) | np.isnan(u), np.nan, 1.0)  # no value, no tail: none
    with np.errstate(invalid="ignore"):
        beyond = x > u  # elsewhere the bound is 1: most looks, whose splits are not built
    rows = np.flatnonzero(beyond.any(axis=1))
    if not len(rows):
        return out
    x, fill = x[rows], fill[rows]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        t = u[..., None] + (x - u)[..., None] * SPLITS  # looks x shares x splits
        t = np.clip(t, 1e-9, 1 - 1e-9)
        kl = bernoulli_kl(x[..., None], t)
        rates = np.minimum(1.0, 0.1 * np.exp(-(t - u[..., None]) / b[..., None]))
        bound = np.min(rates + np.exp(-fill[..., None] * np.maximum(kl, 0.0)), axis=-1)
    out[rows] = np.where(beyond[rows], np.minimum(bound, 1.0), out[rows])
    return out


def bernoulli_kl(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """KL(x || t) between Bernoulli laws (elementwise, broadcast), the exponent of
    Chernoff's bound on a share x of independent events of probability t; x is taken in
    [1e-12, 1], and x = 1 has no (1 - x) term."""
    with np.errstate(divide="ignore", invalid="ignore"):
        xs = np.clip(x, 1e-12, 1.0)
        return xs * np.log(xs / t) + np.where(
            xs < 1, (1 - xs) * np.log(np.clip(1 - xs, 1e-300, None) / (1 - t)), 0.0
        )


def tail_p(values: np.ndarray, u: np.ndarray, b: np.ndarray) -> np.ndarray:
    """min(1, 0.1 exp(-(x - u) / b)), NaN where the value or the null is missing."""
    with np.errstate(invalid="ignore", over="ignore"):
        return np.minimum(1.0, 0.1 * np.exp(-(values - u) / b))


def cumulative_voices(
    values: np.ndarray, fresh: np.ndarray, edges: np.ndarray, min_clients: int
) -> np.ndarray:
    """The cumulative statistics' voices (rows x buckets x CUMULATIVE_STATISTICS, NaN: none)
    from every client's values and their freshness (rows x buckets x STATISTICS), each on the
    side where its law is conservative (see the module docstring): `coverage` in each bucket
    by its own fresh value, else its fresh value in the nearest larger bucket; the debiased
    `region_coverage` by its own, else its fresh value in the nearest smaller bucket, from
    at most `REGION_REACH` buckets below (sqrt(2) each: 4x fewer queries). A bucket with
    fewer than `min_clients` such voices (a client behind its peers) also takes every other
    client's value in the nearest larger bucket, widened about that bucket's median by
    (largest queries there / smallest here): the debiased value's noise shrinks at most as
    fast as 1 / queries."""
    cols = CUMULATIVE_STATISTICS
    own = np.where(fresh[:, :, cols], values[:, :, cols], np.nan)
    if not len(own):
        return own
    out, sources, centres = _from_above(own)
    region = own[:, :, REGION_VOICE]
    here = np.arange(region.shape[1])
    below = np.maximum.accumulate(np.where(~np.isnan(region), here, -1), axis=1)
    taken = np.take_along_axis(region, np.maximum(below, 0), axis=1)
    at_most = np.where(below >= here - REGION_REACH, taken, np.nan)
    short = np.count_nonzero(~np.isnan(at_most), axis=0) < min_clients
    above, source = out[:, :, REGION_VOICE], sources[:, :, REGION_VOICE]
    centre = centres[:, :, REGION_VOICE]
    upper = np.append(edges[1:], 2 * edges[-1])
    widened = centre + (above - centre) * (upper[source] / edges[here])
    behind = np.isnan(at_most) & short[None, :] & (source > here)
    out[:, :, REGION_VOICE] = np.where(behind, widened, at_most)
    return out


def widened_shares(
    values: np.ndarray, fresh: np.ndarray, stamps: np.ndarray, edges: np.ndarray, ring: int
) -> np.ndarray:
    """The share statistics' voices (rows x buckets x SHARE_STATISTICS, NaN: none): in each
    bucket a client's own fresh value, else its fresh value in the nearest larger bucket
    widened about that bucket's median by sqrt(largest fill there / smallest fill here), the
    most its sampling noise can grow by (see the module docstring); for `CONCURRENT`
    shares its latest fresh value at or above the bucket (`stamps`: when each was recorded),
    widened alike. `ring`: the ring's size, the largest fill."""
    cols = SHARE_STATISTICS
    out = np.full((len(values), len(edges), len(cols)), np.nan)
    # Shares are over the ring: only buckets up to the full ring's hold any (a tenth of
    # them; with tens of thousands of clients the arrays below stay small).
    kept = int(np.searchsorted(edges, ring, side="right"))
    live = fresh[:, :kept, cols]
    own = np.where(live, values[:, :kept, cols], np.nan)
    if not len(own):
        return out
    # A bucket's own value wins over the nearest larger one's: stamped +inf, but for the
    # shares whose level moves with the hour, where the latest does.
    latest = np.isin(cols, CONCURRENT)
    when = np.where(live, np.where(latest, stamps[:, :kept, cols], np.inf), -np.inf)
    source = np.empty(own.shape, dtype=np.int64)
    source[:, -1] = kept - 1
    for bucket in range(kept - 2, -1, -1):  # a handful of buckets up to the ring's
        above = np.take_along_axis(when, source[:, bucket + 1][:, None], axis=1)[:, 0]
        source[:, bucket] = np.where(when[:, bucket] >= above, bucket, source[:, bucket + 1])
    taken = np.take_along_axis(own, source, axis=1)
    centre = _medians(own)[source, np.arange(len(cols))]
    largest_fill = np.minimum(edges[1 : kept + 1], ring)
    here = np.arange(kept)[None, :, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.where(source == here, 1.0, np.sqrt(largest_fill[source] / edges[here]))
    out[:, :kept] = centre + (taken - centre) * factor
    return out


def _medians(own: np.ndarray) -> np.ndarray:
    """Per bucket and column of `own` (clients x buckets x columns, NaN: none), the median
    over clients (the lower middle), about which a voice from more history is widened."""
    ordered = np.sort(own, axis=0)  # NaN last
    count = np.count_nonzero(~np.isnan(own), axis=0)
    return np.take_along_axis(ordered, (np.maximum(count - 1, 0) // 2)[None], axis=0)[0]


def _from_above(own: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For fresh values (clients x buckets x columns, NaN: none, at least one client): each
    client's value in the nearest bucket at or above each that has one, that bucket, and its
    median over clients (`_medians`)."""
    source = _nearest_at_or_above(~np.isnan(own), axis=1)
    taken = np.take_along_axis(own, source, axis=1)
    return taken, source, _medians(own)[source, np.arange(own.shape[2])]


def _nearest_at_or_above(has: np.ndarray, axis: int = 0) -> np.ndarray:
    """Along `axis` (buckets), the index of the nearest bucket at or above each that `has`
    a value; the last index where none does (whose entry then has none either)."""
    last = has.shape[axis] - 1
    shape = [1] * has.ndim
    shape[axis] = last + 1
    index = np.where(has, np.arange(last + 1).reshape(shape), last)
    return np.flip(np.minimum.accumulate(np.flip(index, axis), axis=axis), axis)


class PopulationNull:
    """Per tracked client (row = its ring slot) and history bucket: its latest look's
    statistics and their time; tail parameters per (bucket, statistic) refreshed from the
    fresh ones (`refresh`), with the reference prior where the population is too small."""

    def __init__(self, edges: np.ndarray, window: float, min_clients: int, ring: int) -> None:
        self.edges = edges
        self.ring = ring  # the ring's size: the largest fill of the ring statistics
        self.window = window
        self.min_clients = min_clients
        buckets, stats = len(edges), len(STATISTICS)
        self.values = np.full((0, buckets, stats), np.nan)
        self.stamps = np.full((0, buckets, stats), -np.inf)
        self.prior_u = np.full((buckets, stats), np.nan)  # NaN: no prior for that statistic
        self.prior_b = np.full((buckets, stats), np.nan)
        # The prior's laws at a look's own size n (the values a statistic is over), which
        # its per-bucket tails take at the bucket's smallest fill (`prior_at_size`): a share
        # whose tail scale is its sampling noise, `prior_noise` / sqrt(n) (NaN: none), and
        # a share bounded by Chernoff for n independent events of at most `prior_rate`.
        # Constants of the settings, not of the data: never checkpointed.
        self.prior_noise = np.full(stats, np.nan)
        self.prior_rate = np.full(stats, np.nan)
        self.u = self.prior_u.copy()
        self.b = self.prior_b.copy()
        self.clients = np.zeros((buckets, stats), dtype=np.int64)  # pool size behind (u, b)
        self.source = np.zeros((buckets, stats), dtype=np.int64)  # index into SOURCES
        self.from_bucket = np.zeros((buckets, stats), dtype=np.int64)

    @property
    def full_ring(self) -> int:
        """The bucket of a full ring."""
        return int(np.searchsorted(self.edges, self.ring, side="right")) - 1

    def reserve(self, rows: int) -> None:
        have = len(self.values)
        if rows <= have:
            return
        values = np.full((rows, *self.values.shape[1:]), np.nan)
        stamps = np.full((rows, *self.stamps.shape[1:]), -np.inf)
        values[:have], stamps[:have] = self.values, self.stamps
        self.values, self.stamps = values, stamps

    def forget(self, slot: int) -> None:
        """A slot handed to a new client: the evicted client's values leave the null."""
        self.values[slot], self.stamps[slot] = np.nan, -np.inf

    def forget_statistic(self, stat: int) -> None:
        """Every client's voices of one statistic leave the null (values of another meaning)."""
        self.values[:, :, stat], self.stamps[:, :, stat] = np.nan, -np.inf

    def keep_rows(self, slots: list[int]) -> None:
        self.values, self.stamps = self.values[slots], self.stamps[slots]

    def record(
        self, slots: np.ndarray, buckets: np.ndarray, stats: np.ndarray, ts: np.ndarray
    ) -> None:
        """Each looked-at client's statistics (looks x statistics, each in its bucket: looks x
        statistics too) as its voice."""
        cols = np.arange(stats.shape[1])
        self.values[slots[:, None], buckets, cols] = stats
        self.stamps[slots[:, None], buckets, cols] = np.where(np.isnan(stats), -np.inf, ts[:, None])

    def refresh(self, now: float, rows: int | None = None) -> None:
        """Tail parameters from the clients seen within `window` of `now`, per bucket;
        buckets short of clients borrow a larger one, then the prior. `rows`: only the
        first rows are in use."""
        buckets, stats = self.prior_u.shape
        own_u = np.full((buckets, stats), np.nan)
        own_b = np.full((buckets, stats), np.nan)
        own_n = np.zeros((buckets, stats), dtype=np.int64)
        fresh = self.stamps[:rows] >= now - self.window
        cumulative = cumulative_voices(self.values[:rows], fresh, self.edges, self.min_clients)
        shares = widened_shares(
            self.values[:rows], fresh, self.stamps[:rows], self.edges, self.ring
        )
        fresh[:, :, CUMULATIVE_STATISTICS] = ~np.isnan(cumulative)
        fresh[:, :, SHARE_STATISTICS] = ~np.isnan(shares)
        enough_rows = np.count_nonzero(fresh, axis=0) >= self.min_clients  # buckets x stats
        pooled = np.flatnonzero(enough_rows.any(axis=1))
        if len(fresh) <= MAX_POOL:
            # Every bucket's pool at once (rows x buckets x stats): a client not fresh in a
            # bucket is a row of NaN there, which changes nothing (`tail_parameters`).
            pool = np.where(fresh[:, pooled], self.values[: len(fresh), pooled], np.nan)
            pool[:, :, CUMULATIVE_STATISTICS] = cumulative[:, pooled]
            pool[:, :, SHARE_STATISTICS] = shares[:, pooled]
            count = np.count_nonzero(~np.isnan(pool), axis=0)
            u, b = tail_parameters(pool, FLOORS, BY_VARIANCE)
            enough = count >= self.min_clients
            own_u[pooled] = np.where(enough, u, np.nan)
            own_b[pooled] = np.where(enough, b, np.nan)
            own_n[pooled] = np.where(enough, count, 0)
        else:  # bucket by bucket, each pool a stride subset of its clients
            for bucket in map(int, pooled):
                used = np.flatnonzero(fresh[:, bucket].any(axis=1))
                pool = np.where(fresh[used, bucket], self.values[used, bucket], np.nan)
                pool[:, CUMULATIVE_STATISTICS] = cumulative[used, bucket]
                pool[:, SHARE_STATISTICS] = shares[used, bucket]
                if len(pool) > MAX_POOL:
                    pool = pool[:: math.ceil(len(pool) / MAX_POOL)]
                count = np.count_nonzero(~np.isnan(pool), axis=0)
                u, b = tail_parameters(pool, FLOORS, BY_VARIANCE)
                enough = count >= self.min_clients
                own_u[bucket, enough], own_b[bucket, enough] = u[enough], b[enough]
                own_n[bucket, enough] = count[enough]
        # Each bucket takes its own tail, else the nearest larger bucket's, else the prior;
        # the debiased region_coverage, whose spread only narrows with history, never a
        # larger bucket's.
        cols = np.arange(stats)
        own = ~np.isnan(own_u)
        larger = _nearest_at_or_above(own)
        here = np.arange(buckets)[:, None]
        have = own[larger, cols] & ((cols != REGION) | (larger == here))
        self.u = np.where(have, own_u[larger, cols], self.prior_u)
        self.b = np.where(have, own_b[larger, cols], self.prior_b)
        self.clients = np.where(have, own_n[larger, cols], 0)
        prior_source = np.where(np.isnan(self.prior_u), 0, 3)
        self.source = np.where(have, np.where(larger == here, 1, 2), prior_source)
        self.from_bucket = np.where(have, larger, here)
        # Shares (out of reference, low margin, shared, probes) and the debiased
        # region_coverage only get noisier with less history: a client with more history
        # than any fresh population is judged against the nearest smaller bucket's (wider)
        # spread rather than the prior. `region_coverage`'s tail start is raised by the most
        # a value can gain with history: it is at most minus the log of its noise floor,
        # which falls as 1 / queries (no faster: the weights along the spread directions
        # grow with them), so by log(n' / n) from n queries to n', n the least history among
        # the borrowed pool's voices. Unraised, voices of less history are not conservative
        # at the top: a heavy user near the population's mix at its 200th query on day 0
        # stood at 4.6 against a tail fitted to 13-16 keys of 20-80 queries (start 1.5,
        # scale 0.4: p 4e-5), and at 3.6 against start 3.5 and scale 1.5 two hours later,
        # once 150 keys had its history (wine 344).
        shares = own & np.isin(cols, [*SHARE_STATISTICS, REGION])
        smaller = np.maximum.accumulate(np.where(shares, here, -1), axis=0)
        borrow = (smaller >= 0) & ~have
        smaller = np.maximum(smaller, 0)
        borrowed_u = own_u[smaller, cols]
        lowest = self.edges[np.maximum(smaller[:, REGION] - REGION_REACH, 0)]
        borrowed_u[:, REGION] += np.log(self.edges / lowest)
        self.u = np.where(borrow, borrowed_u, self.u)
        self.b = np.where(borrow, own_b[smaller, cols], self.b)
        self.clients = np.where(borrow, own_n[smaller, cols], self.clients)
        self.source = np.where(borrow, 4, self.source)
        self.from_bucket = np.where(borrow, smaller, self.from_bucket)

    def p_values(
        self, stats: np.ndarray, buckets: np.ndarray, sizes: np.ndarray | None = None
    ) -> np.ndarray:
        """p-values of each look's statistics (looks x statistics), each in its bucket; a
        share's is also bounded through the full ring's tail (`share_bound`), and, judged
        by the prior, by the prior at the look's own size (`sizes`: looks x statistics, the
        values each statistic is over; NaN: not known), the smallest kept."""
        cols = np.arange(stats.shape[1])
        p = tail_p(stats, self.u[buckets, cols], self.b[buckets, cols])
        if sizes is not None:
            prior = self.source[buckets, cols] == PRIOR
            at_size = self.prior_at_size(stats, self.u[buckets, cols], sizes)
            p = np.where(prior, np.fmin(p, at_size), p)
        if len(stats):
            full = self.full_ring
            shares = np.array(SHARE_STATISTICS)
            fill = np.minimum(self.edges[buckets[:, shares]], self.ring)
            bound = share_bound(stats[:, shares], fill, self.u[full, shares], self.b[full, shares])
            p[:, shares] = np.fmin(p[:, shares], bound)
        return p

    def prior_judges(self, buckets: np.ndarray) -> bool:
        """Whether the reference prior judges any statistic of these looks (looks x
        statistics, each look's bucket): only then are their sizes needed."""
        return bool((self.source[buckets, np.arange(buckets.shape[1])] == PRIOR).any())

    def prior_at_size(self, stats: np.ndarray, u: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        """The prior's p-values (looks x statistics; NaN where it has no law at a size) at
        each look's own size n rather than its bucket's smallest fill: a share's noise law
        0.1 exp(-(x - u) / max(`prior_noise` / sqrt(n), floor)), and the Chernoff bound
        exp(-n KL(x || `prior_rate`)) itself rather than its tangent at the bucket's u
        (`statistics.chernoff_tail`), which lies above it far beyond u. Same assumptions,
        less slack: a warm-up HopSkipJump whose boundary pairs stood at 10 of 70 queries had
        p 4e-4 by the tangent at 57 queries, 9e-6 by the bound at 70."""
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            scale = np.maximum(self.prior_noise / np.sqrt(sizes), FLOORS)
            noise = np.minimum(1.0, 0.1 * np.exp(-(stats - u) / scale))
            rate = self.prior_rate
            chernoff = np.where(stats > rate, np.exp(-sizes * bernoulli_kl(stats, rate)), 1.0)
        at_size = np.where(np.isnan(self.prior_noise), np.nan, noise)
        at_size = np.where(np.isnan(rate), at_size, chernoff)
        return np.where(np.isnan(stats) | np.isnan(sizes), np.nan, at_size)

    def baseline(self, bucket: int, stat: int) -> dict[str, object]:
        """What a statistic of a look in `bucket` was judged against, for incident details."""
        source = int(self.source[bucket, stat])
        own = int(self.from_bucket[bucket, stat])
        last = own + 1 < len(self.edges)
        return {
            "source": SOURCES[source],
            "history": f"{int(self.edges[own])}-{int(self.edges[own + 1]) - 1}"
            if last
            else f"{int(self.edges[own])} (full ring)",
            "clients": int(self.clients[bucket, stat]),
            "tail_start": round(float(self.u[bucket, stat]), 4),
            "tail_scale": round(float(self.b[bucket, stat]), 4),
            **self._rates_tail(stat),
        }

    def _rates_tail(self, stat: int) -> dict[str, float]:
        """A share's p-value is also bounded through the full ring's tail (`share_bound`):
        that tail, for the incident details."""
        if stat not in SHARE_STATISTICS:
            return {}
        full = self.full_ring
        return {
            "full_ring_tail_start": round(float(self.u[full, stat]), 4),
            "full_ring_tail_scale": round(float(self.b[full, stat]), 4),
        }

    def state(self, rows: int) -> dict[str, object]:
        return {
            "values": self.values[:rows],
            "stamps": self.stamps[:rows],
            "prior_u": self.prior_u,
            "prior_b": self.prior_b,
            "fitted": self.fitted(),
        }

    def fitted(self) -> dict[str, np.ndarray]:
        """The tails as last refreshed: a restored detector judges with these until its next
        refresh, as the one checkpointed would have (voices recorded since the refresh,
        refitted at once, gave other p-values: the full ring's tail bounds every share's)."""
        return {name: getattr(self, name) for name in FITTED}

    def load_fitted(self, fitted: dict[str, np.ndarray]) -> None:
        """The tails of `fitted()`, one per (bucket, statistic) as the prior's (set first)."""
        if any(np.shape(fitted[name]) != self.prior_u.shape for name in FITTED):
            raise ValueError("the null's fitted tails are not one per bucket and statistic")
        for name in FITTED:
            setattr(self, name, fitted[name])
