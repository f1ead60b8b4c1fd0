"""Suspicious clients: per-caller detection of model extraction, boundary probing and abuse.

Every query is scaled and encoded through the model's `InputProfile` (the stored reference
handed over by `set_reference`, else the model's first `reference_size` events), then
appended to its client's bounded ring of recent queries (at most `buffer_size`). The rings of
all clients fit in `max_state_mb`: at most min(`max_clients`, budget / one client's bytes)
clients are tracked, the least recently seen evicted and counted. Per query, in micro-batches
with numpy:

- distance to the client's earlier queries: the minimum (PRADA's statistic) and the mean to
  the `k_neighbours` nearest (Blacklight / stateful detection). Earlier queries that differ in
  at most `entity_changes` coordinates are left out of both: re-scoring the same entity, even
  with a field updated, is use, not probing;
- a *coordinate probe*: one of its nearest earlier queries differs in exactly one coordinate,
  by at most `probe_step` (robust units): the finite differences of ZOO-style attacks;
- out of the reference's ranges (the `InputProfile` rule), and a low-margin prediction;
- *atypical*: out of those ranges and farther from every input cell (the reference's
  k-means clusters, `detectors.clients.coverage`) than the typical reference client's
  queries are, 99% of the time, or, in range or not, farther from every reference row than
  the rows are from each other, its most extreme feature set aside
  (`detectors.clients.typicality`): out of the reference's joint picture, not at the edge
  of one feature (a user at the reference's edge is out of range; its rows still look real);
  the second rule counts while the traffic as a whole is not off the rows (`rows_traffic`,
  followed as the ranges are);
- the bin of each feature it falls in (numeric: the reference's octiles; categorical: the
  profile's hashed bucket), added to the client's cumulative per-feature histograms;
- a *boundary pair*: one of its k nearest earlier queries is closer than half the
  reference records' median spacing and predicted another class (not an entity with a field
  changed): the binary and line searches and gradient estimates of decision-based attacks;
- a salted random-projection LSH fingerprint, looked up in one table shared by all clients,
  so near-duplicates sent under another client key within `fingerprint_horizon_seconds` are
  noticed: splitting an attack over several keys does not hide it.

Every `check_every` queries of a client (a "look", at that query even mid-batch: its window
is rebuilt as it was then), ten statistics summarize its ring: `ood_share`,
`atypical_share`, `low_margin_share`, `shared_fingerprints`, `knn_distance` (minus the mean
log k-NN distance), `prada_normality` (-log Shapiro-Wilk W of the min distances),
`coordinate_probes` (share of probes, weighted by how many coordinates were probed),
`boundary_pairs` (share of boundary pairs) and
`coverage` (how fully the client's cumulative histograms cover the reference's: the sum over
features of their entropy minus the reference's; a natural-data extractor sampling the whole
population climbs to 0, a client serving its own segment stays below) and `region_coverage`
(minus the log of the mean divergence of the client's mixes of predicted classes, input cells
and categorical values from the whole traffic's: a natural-data extractor reaches the model's
decision regions and the input space's clusters as the traffic does,
`detectors.clients.coverage`).

Each statistic is judged against the *contemporaneous* benign population at the same history
length (`detectors.clients.null`): each client's latest value per history bucket (for the
coverages, every client with at least that history), one voice per client, fresher than
`null_window_seconds`; a robust peaks-over-threshold tail. A
model-wide change moves every client's statistics and so the null with them: it is input
drift, never many suspicious clients. Before enough clients exist, a conservative prior from
the reference judges what has a principled benign level, so attackers present from the first
query are found.

Two tests share alpha = `false_clients_per_thousand` / 1000, the share of benign clients
flagged per day at most (as far as the null's tail holds; derived in docs/query-patterns.md),
each spending its own share per client and per event-time day (`Spending`):

- the *ring* test, at every look: the Bonferroni minimum over the ring's seven statistics; the
  day's g-th ring of looks (`buffer_size` / `check_every` looks: a ring's worth of new
  queries) has alpha_r x 0.9 for g = 1 and alpha_r x 0.1 / ((g - 1) g) after, its i-th look
  that share x i^-1.25, normalised over the ring's looks (`Spending.ring_threshold`);
- the *cumulative* test (`coverage`, `region_coverage`: evidence that accrues over everything
  the client sent, slowly; weighted Bonferroni, `region_coverage` 0.8 and `coverage` 0.2)
  only at the client's first look of each day (from
  `CUMULATIVE_FIRST` queries seen) and at the looks where its queries seen pass
  `CUMULATIVE_FIRST` x 2^k: the day's first such look at alpha_c x 0.7, its i-th (i >= 2) at
  alpha_c x 0.3 / ((i - 1) i) (`FIRST_CUMULATIVE`).

Cost: every query is measured, with no numpy call per client; the batched neighbour search
(`segments`, `smallest`) and the Shapiro-Wilk shortcut (`shapiro_w`) are explained where
they are defined and in docs/query-patterns.md.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from detectors.base import Finding, Kind, Severity
from detectors.baseline import capped_per_client, client_voices
from detectors.clients.codec import (
    profile_from_data,
    profile_to_data,
    sample_from_data,
    sample_to_data,
)
from detectors.clients.coverage import (
    REGIONS,
    RegionCoverage,
    counts_at,
    fit_cells,
    labels_of,
    nearest_cells,
)
from detectors.clients.neighbours import candidates, not_earlier, segments, smallest
from detectors.clients.null import (
    FLOORS,
    STATISTICS,
    PopulationNull,
    bucket_of,
    history_edges,
)
from detectors.clients.ranges import TrafficRanges
from detectors.clients.spending import (
    COVERAGE,
    CUMULATIVE,
    CUMULATIVE_FIRST,
    REGION_STAT,
    RING,
    TESTED,
    Spending,
    Test,
    bonferroni,
    cumulative_looks_due,
)
from detectors.clients.statistics import chernoff_tail, entropy, low_margin, shapiro_w
from detectors.clients.typicality import TypicalRows, typical_radius
from detectors.input_anomaly import (
    InputProfile,
    ProfiledDetector,
    reference_batch,
)
from detectors.settings import QueryPatternSettings
from streams.batch import ModelBatch, client_hash, knows_clients

DAY = 86_400.0
DETECTORS = STATISTICS
CLEAN_P = 0.1  # a look above this is clean: a later pattern began after it
LINKED_CLIENTS = 8  # other keys remembered per client for shared fingerprints
LINKED_GROUP = 64  # clients named at most in a finding's linked group
PROBE_FLOOR = 1e-5  # a coordinate moved by less than this (robust units) has not moved
# Single-coordinate moves over more than `entity_changes` distinct coordinates are a walk
# (an entity re-scored changes at most that many fields); fully one this many beyond them.
PROBE_SPAN = 3
# While the reference is learned from the first events, they are kept (at most this many
# times `reference_size` in all, and this many rings per client) and judged once the profile
# exists: the learning window is not blind. (It can last hours at night; a warm-up attacker
# kept to its first ring was judged on its first 256 queries only: two of six HopSkipJumps
# busy through the window never flagged, `bench/client_attacks.py`, docs/query-patterns.md.)
WARMUP_FACTOR = 4
BINS = 8  # per feature in the coverage histograms
# The null's tails are refreshed after this much event time or this many queries, whichever
# comes first: contemporaneous within an hour, at a cost spread over thousands of queries.
NULL_REFRESH_SECONDS = 3600.0
NULL_REFRESH_QUERIES = 5_000
KNN_STAT, LOW_STAT, OOD_STAT, PAIRS_STAT, ATYPICAL_STAT = (
    STATISTICS.index(name)
    for name in (
        "knn_distance",
        "low_margin_share",
        "ood_share",
        "boundary_pairs",
        "atypical_share",
    )
)
PRIOR_CLIENTS = 24  # pseudo-clients drawn from the reference per history bucket
# The reference prior's tail scale for the out-of-reference and low-margin shares at
# `min_queries` values, narrowing as 1 / sqrt(values) (a share's sampling noise).
PRIOR_NOISE = 0.05
# Boundary pairs: a query and its nearest earlier distinct query closer than this share of the
# reference records' median distance to their nearest other record, with another class.
STRADDLE_SCALE = 0.5
# The reference prior's benign rate of boundary pairs per query (benign clients' looks on
# `bench/client_attacks.py` synthetic, seed 1: at most 0.014). Not the reference's own rate:
# a learned reference holds the warm-up attackers' capped share, pairs included.
STRADDLE_RATE = 0.02
# A binary search (HopSkipJump's and Sign-OPT's, between a point and one across the
# boundary) halves the gap at each query: each query's nearest earlier one is half as far as
# its predecessor's, exactly in any per-feature linear encoding. The distances are float32
# from |x|^2 + |y|^2 - 2 x.y, whose cancellation errs by about 1% of a gap 0.004 of the
# inputs' norm: halvings are taken within 2% (`_bisection_steps`). Benign keys' nearest
# distances are not in such ratios twice running: 0 of their looks under 100 queries on
# segment seeds 148, 169 and 171, at most 0.01 of a full ring ("Runs of stop 43"). The
# nearest query counts whatever entity it is: a search's small steps move most coordinates
# by less than `repeat_distance`, an entity with a field or two changed to `_compare`.
BISECTION_TOLERANCE = 0.02


# Columns of a client's per-query record (one row per query in its ring). OOD: the features
# the query was out of the reference on, as bits (`TrafficRanges.bits`).
TS, OOD, LOW, SHARED, EXACT, KNN, MIN_DISTANCE, PROBE, CLASS, STRADDLE, ATYPICAL = range(11)
RECORD = 11
_NO_RECORD = np.array([-np.inf, 0, -1, 0, 0, np.nan, np.nan, 0, -1, 0, 0])  # in no statistic
# LOW: 1 low margin, 0 not, -1 no score. KNN: log mean distance to the k nearest earlier
# distinct queries (NaN: not enough of them). MIN_DISTANCE: distance to the nearest earlier
# query, the same entity with a field changed included (NaN: the first, a repeat, or a move
# of one coordinate).
# PROBE: 1 + the coordinate a probe moved (by at most `probe_step`), -(2 + the coordinate) for
# an entity re-scored with one coordinate moved further, -1 for another entity re-scored, 0
# for other queries. CLASS: the predicted class's slot (`RegionCoverage.class_slots`). STRADDLE:
# 1 when one of the k nearest earlier queries is within `straddle_radius`, predicted another
# class and is not an entity with a field changed (a pair across the decision boundary,
# `boundary_pairs`). ATYPICAL: the bits of the two rules of `atypical_share`, BEYOND_CELLS
# when farther from every input cell than the reference's rows mostly are
# (`RegionCoverage.radius`; it counts only out of range), OFF_ROWS when farther from every
# reference row than the rows are from each other (`detectors.clients.typicality`).
BEYOND_CELLS, OFF_ROWS = 1, 2

# A client's integer fields as checkpointed, in the clients' order; its ring slot is not among
# them (`load_state` assigns slots afresh in that order), so equal states encode equally.
_CLIENT_FIELDS = (
    "count",
    "day",
    "day_looks",
    "cumulative_looks",
    "clean_count",
    "last_finding_look",
    "flagged_looks",
    "reported_group",
    "linked_looks",
)


@dataclass(slots=True)
class ClientState:
    """One client's look bookkeeping; its ring of recent queries is row `slot` of the
    detector's ring arrays (one array for all clients, so a batch is stored in one step)."""

    slot: int
    count: int = 0
    day: int = -1
    day_looks: int = 0  # looks this day (the ring test's)
    cumulative_looks: int = 0  # of them, looks of the cumulative test
    clean_count: int = 0  # queries seen at the last clean look
    last_finding_look: int = 0
    flagged_looks: int = 0  # looks that crossed the threshold, ever
    reported_group: int = 0  # the linked group's size in its last finding
    linked_looks: int = 0  # looks this day while sharing fingerprints with a flagged client
    flagged_severity: str | None = None
    first_flagged: float | None = None  # event time of the first flagged look
    first_seen: float | None = None  # event time of its first tracked query
    # The owner hashes of clients it shared fingerprints with (either way), and how often
    # (batches); at most LINKED_CLIENTS. None until the first (most clients never get one).
    linked: Counter[int] | None = None


class QueryPatternDetector(ProfiledDetector):
    """`suspicious_client` per client; see the module docstring for the method."""

    name = "query_patterns"
    # 2: class coverage (a statistic more, per-client class counts); 3: two tests (per-client
    # cumulative looks of the day and first query's time); 4: boundary pairs (two record
    # columns, a statistic more); 5: region coverage adds input cells and categorical values
    # (per-client counts of all three, the reference's k-means centroids); 6: atypical
    # queries (a record column, a statistic more, the cells' typical radius); 7: atypical
    # off the reference's rows too (`detectors.clients.typicality`: anchors and a radius);
    # 8: the traffic's off-rows rate followed (`rows_traffic`)
    state_version = 8

    def __init__(self, model: str, settings: QueryPatternSettings | None = None) -> None:
        self.settings = settings or QueryPatternSettings()
        super().__init__(model, self.settings.reference_size)
        s = self.settings
        self.clients: OrderedDict[str, ClientState] = OrderedDict()
        self.evicted = 0
        self.untracked = 0  # queries of new clients beyond the cap in an over-full batch
        self.anonymous = 0  # queries without a client: not attributable, not tracked
        self.owner_names: OrderedDict[int, str] = OrderedDict()  # owner hash -> client
        # Rings of recent queries, row `slot` per client: encoded queries as [x, |x|^2, 1]
        # (float32 halves the state; distances that matter are >= 1e-2) and their records.
        # Sized in `_learn`; `tracked_cap()` rows (the memory budget) at the first client.
        self.ring_vectors = np.zeros((0, s.buffer_size, 0), dtype=np.float32)
        self.ring_records = np.zeros((0, s.buffer_size, RECORD))
        self.coverage = np.zeros((0, 0, BINS), dtype=np.int32)  # client x feature x bin
        self.region_counts = np.zeros((0, REGIONS), dtype=np.int32)  # client x region
        self.regions: RegionCoverage | None = None  # learned with the profile
        self.typical: TypicalRows | None = None  # and the rule of atypical queries
        self.ranges = TrafficRanges(np.zeros(0))  # the reference's ranges the traffic left
        # Whether the traffic as a whole has moved off the reference's rows: one pseudo-feature
        # (`OFF_ROWS`), followed as the ranges are.
        self.rows_traffic = TrafficRanges(np.zeros(1))
        size = 1 << max(10, (s.max_fingerprints - 1).bit_length())
        self.fp_keys = np.zeros(size, dtype=np.int64)  # the shared fingerprint table
        self.fp_owners = np.zeros(size, dtype=np.int64)
        self.fp_ts = np.full(size, -np.inf)
        self.edges = history_edges(s.min_queries, s.buffer_size)
        # A ring's worth of new queries every buffer_size / check_every looks (rounded up).
        self.spending = Spending(
            s.false_clients_per_thousand / 1000, -(-s.buffer_size // s.check_every)
        )
        self.null = PopulationNull(
            self.edges, s.null_window_seconds, s.min_null_clients, s.buffer_size
        )
        for name in ("ood_share", "low_margin_share", "atypical_share"):
            self.null.prior_noise[STATISTICS.index(name)] = PRIOR_NOISE * math.sqrt(s.min_queries)
        self.null.prior_rate[PAIRS_STAT] = STRADDLE_RATE
        self.exact_weights = np.zeros(0)
        self.projections = np.zeros((0, 0))
        self.offsets = np.zeros(0)
        self.hash_weights = np.zeros(0, dtype=np.int64)
        self.bin_edges = np.zeros((0, BINS - 1))  # numeric features' octiles, encoded
        self.reference_entropy = 0.0  # of the reference's histograms, summed over features
        self.straddle_radius = 0.0  # boundary pairs: closer than this (`_learn_prior`)
        self.reference_taken: dict[str, int] = {}  # events per client in the reference
        self.reference_margins = [0, 0]  # its events with scores, and with low margins
        self.warmup: list[ModelBatch] = []  # events of the learning window, judged after it
        self.warmup_taken: dict[str, int] = {}  # of them per client
        self.judging_late = False  # while the learning window's events are judged
        self.last_ts = -np.inf
        self.refreshed = -np.inf  # event time of the null's last refresh
        self.since_refresh = 0  # queries since

    @property
    def calibrated(self) -> bool:
        """Whether the input profile is known (judging starts with the next query)."""
        return self.profile is not None

    def client_bytes(self) -> int:
        """Bytes of one tracked client's state: ring, histograms, null row."""
        s = self.settings
        width = self.ring_vectors.shape[2]
        ring = s.buffer_size * (self.ring_vectors.itemsize * width + RECORD * 8)
        null = len(self.edges) * (len(STATISTICS) + 1) * 8
        features = self.coverage.shape[1]
        histograms = features * BINS * 4
        ranges = features * 4 + 4  # out-of-range counts per feature, queries seen
        return ring + histograms + ranges + REGIONS * 4 + 2 * null

    def tracked_cap(self) -> int:
        """How many clients can be tracked at once: `max_clients`, or fewer when their state
        would not fit in `max_state_mb` (at least one). Known once the encoded dimension is
        (`_learn`); before that, `max_clients`."""
        s = self.settings
        if self.ring_vectors.shape[2] == 0:
            return s.max_clients
        return max(1, min(s.max_clients, int(s.max_state_mb * 2**20) // self.client_bytes()))

    # --- the reference -------------------------------------------------------------------

    def set_reference(self, reference: ModelBatch, learned: bool = False) -> None:
        """Learns the profile and the prior from the stored reference at once (no events are
        spent on it) and starts afresh: rings encoded with another profile would not compare.
        Events kept while learning from the first ones (a pipeline hands over the reference it
        learned from them, `learned`) are judged at the next update. Only a reference stored
        apart from the stream anchors the population's mix (`RegionCoverage.reference`): a
        learned one is the same keys' queries."""
        backlog = self.warmup if self.profile is None else []  # judged once learned
        self.__init__(self.model, self.settings)  # type: ignore[misc]
        self.reference = None
        self._learn(reference.numeric, reference.categorical, reference, stored=not learned)
        self.warmup = backlog

    def _monitored_from(self, batch: ModelBatch) -> int | None:
        """Collects the reference from the first events (when none was handed over), capped
        per client (`capped_per_client`: an attacker active from the first query cannot make
        its own queries the model's picture of normal); returns where in the batch monitoring
        starts (None: nothing of it is left to monitor)."""
        sample = self.reference
        if sample is None:
            return 0
        clients = batch.clients or [None] * len(batch)
        chosen, end = capped_per_client(clients, sample.count, sample.size, self.reference_taken)
        self._keep_warmup(batch, end)
        rows = np.array(chosen, dtype=np.int64)
        low = low_margin(batch, self.settings.low_margin)[rows]
        self.reference_margins[0] += int(np.count_nonzero(low >= 0))
        self.reference_margins[1] += int(np.count_nonzero(low == 1))
        sample.add(
            reference_batch(
                {name: column[rows] for name, column in batch.numeric.items()},
                {name: column[rows] for name, column in batch.categorical.items()},
            )
        )
        if not sample.full:
            return None
        numeric, categorical = sample.columns()
        self.reference, self.reference_taken = None, {}
        self._learn(numeric, categorical)
        self.reference_margins = [0, 0]
        return end if end < len(batch) else None

    def _keep_warmup(self, batch: ModelBatch, end: int) -> None:
        """Keeps the learning window's events (up to `end` in this batch) to be judged once
        the profile exists: at most `WARMUP_FACTOR` x `buffer_size` per client (its first
        rings) and `WARMUP_FACTOR` x `reference_size` in all, so a flood of queries or keys
        cannot make the backlog unbounded, nor one client crowd the others out. Only what the
        looks use is kept."""
        s = self.settings
        room = WARMUP_FACTOR * s.reference_size - sum(len(b) for b in self.warmup)
        keep = np.zeros(len(batch), dtype=bool)
        taken = self.warmup_taken
        for i, client in enumerate(batch.clients[:end]):
            if room <= 0:
                break
            if client is None or taken.get(client, 0) >= WARMUP_FACTOR * s.buffer_size:
                continue
            taken[client] = taken.get(client, 0) + 1
            keep[i] = True
            room -= 1
        if keep.any():
            self.warmup.append(_compact(batch, keep))

    def _learn(
        self,
        numeric: dict[str, np.ndarray],
        categorical: dict[str, np.ndarray],
        scored: ModelBatch | None = None,
        stored: bool = False,
    ) -> None:
        s = self.settings
        # One voice per client for the lattice, where the reference's clients are known (a
        # collection being learned): an early client's capped share cannot erase it.
        owners = scored.client_ids() if scored is not None else None
        self.profile = InputProfile(numeric, categorical, owners=owners)
        dim = self.profile.dim
        self.ring_vectors = np.zeros((0, s.buffer_size, dim + 2), dtype=np.float32)
        self.ring_records = np.zeros((0, s.buffer_size, RECORD))
        seed = int.from_bytes(
            hashlib.sha256(f"{s.fingerprint_salt}|{self.model}".encode()).digest()[:8], "big"
        )
        rng = np.random.default_rng(seed)
        width = s.fingerprint_tables * s.fingerprint_projections
        directions = rng.normal(size=(dim, width))
        directions /= np.linalg.norm(directions, axis=0, keepdims=True)
        self.projections = directions / s.fingerprint_width
        self.offsets = rng.uniform(0, 1, size=width)
        self.hash_weights = rng.integers(1, 2**31, size=s.fingerprint_projections) * 2 + 1
        self.exact_weights = rng.normal(size=dim)
        batch = scored if scored is not None else reference_batch(numeric, categorical)
        encoded = self.profile.encode(batch)
        self._learn_prior(encoded, batch, rng, stored)

    def _learn_prior(
        self, encoded: np.ndarray, batch: ModelBatch, rng: np.random.Generator, stored: bool
    ) -> None:
        """The reference's benign levels: the prior of the null, and the coverage bins.

        Conservative on purpose (it is what judges before a population exists): shares are
        flagged only far above the reference's own rate, distances only when far closer than
        queries drawn i.i.d. from the reference, which are already spread wider than any one
        client's. Coverage and normality have no prior: they need a population."""
        s = self.settings
        profile = self.profile
        assert profile is not None  # the prior is set when the profile is
        n_ref = len(encoded)
        index = {name: i for i, name in enumerate(STATISTICS)}
        buckets = len(self.edges)
        prior_u = np.full((buckets, len(STATISTICS)), np.nan)
        prior_b = np.full((buckets, len(STATISTICS)), np.nan)
        flags = profile.anomalies(batch)
        out_of_range = np.asarray(flags.any(axis=1))
        owners = batch.client_ids()
        ood_rate = typical_rate(out_of_range, owners)
        self.ranges = TrafficRanges(typical_rates(flags, owners))
        scored, low = self.reference_margins  # the first events' (a stored reference: below)
        low_rate = low / scored if scored >= 50 else 0.2
        if batch.scores or batch.score is not None:
            margins = low_margin(batch, s.low_margin)
            with_score = margins >= 0
            if np.count_nonzero(with_score) >= 50:  # as the out-of-reference rate: typical
                low_rate = typical_rate(margins[with_score] == 1, owners[with_score])
        for name in ("shared_fingerprints", "coordinate_probes"):
            prior_u[:, index[name]] = 0.05
            prior_b[:, index[name]] = 0.05
        # Distances: pseudo-clients of n i.i.d. reference queries per bucket; judged only when
        # 10x closer (log 10) than their median, with a wide tail (0.3 log units).
        knn = index["knn_distance"]
        for bucket, edge in enumerate(self.edges.tolist()):
            n = min(int(edge), n_ref)
            if edge > s.buffer_size or n <= s.k_neighbours + 1:
                continue  # distances are over the ring: no bucket beyond the full ring
            values = []
            for _ in range(PRIOR_CLIENTS):
                x = encoded[rng.choice(n_ref, n, replace=False)]
                d2 = (x**2).sum(axis=1)[:, None] + (x**2).sum(axis=1)[None, :] - 2 * x @ x.T
                np.fill_diagonal(d2, np.inf)
                d2.partition(s.k_neighbours - 1, axis=1)
                near = np.sqrt(np.maximum(d2[:, : s.k_neighbours], 0)).mean(axis=1)
                values.append(-float(np.log(near + 1e-6).mean()))
            prior_u[bucket, knn] = float(np.median(values)) + math.log(10)
            prior_b[bucket, knn] = 0.3
        self.straddle_radius = self._straddle_radius(encoded)
        pairs = index["boundary_pairs"]
        for bucket, edge in enumerate(self.edges.tolist()):
            n = min(int(edge), s.buffer_size)
            prior_u[bucket, pairs], prior_b[bucket, pairs] = chernoff_tail(n, STRADDLE_RATE)
        numerics = len(profile.numeric_names)
        quantiles = np.arange(1, BINS) / BINS
        self.bin_edges = np.quantile(encoded[:, :numerics], quantiles, axis=0).T.copy()
        features = numerics + len(profile.categorical_names)
        self.coverage = np.zeros((0, features, BINS), dtype=np.int32)
        histogram = np.zeros((features, BINS))
        bins = self._bins(encoded)
        np.add.at(histogram, (np.arange(features)[None, :], bins), 1)
        self.reference_entropy = float(entropy(histogram[None])[0])
        categorical = (len(profile.categorical_names), profile.buckets)
        cells = fit_cells(encoded, rng)  # none only for an empty reference
        nearest = nearest_cells(encoded, cells)[1] if len(cells) else np.zeros(0)
        radius = typical_radius(nearest, owners)
        self.regions = RegionCoverage(s.null_window_seconds, cells, categorical, radius)
        if stored:  # rows drawn apart from the keys the population's mix is the mean of
            category_bins = bins[:, numerics:]
            self.regions.reference = self._reference_regions(encoded, batch, category_bins)
        # Either rule flags about 1% of the reference's rows (the first, 1% of those out of
        # range), by construction.
        self.typical, far_from_rows = TypicalRows.fit(encoded, numerics, owners, rng)
        self.rows_traffic = TrafficRanges(typical_rates(far_from_rows[:, None], owners))
        atypical_rate = typical_rate(((nearest > radius) & out_of_range) | far_from_rows, owners)
        # The level carries the spread between clients (3x the typical rate + 0.05: benign
        # keys on the benches stayed below it at every look); beyond it a share's sampling
        # noise shrinks like 1 / sqrt(queries), and so does the tail's scale: 0.05 at
        # `min_queries`, down to the shares' floor (0.02 from 125 queries on the defaults).
        fill = np.minimum(self.edges, s.buffer_size)
        for name, rate in (
            ("ood_share", ood_rate),
            ("low_margin_share", low_rate),
            ("atypical_share", atypical_rate),
        ):
            share_scale = self.null.prior_noise[index[name]] / np.sqrt(fill)  # its noise law
            prior_u[:, index[name]] = min(1.0, 3 * rate + 0.05)
            prior_b[:, index[name]] = np.maximum(share_scale, FLOORS[index[name]])
        self.null.prior_u, self.null.prior_b = prior_u, prior_b
        self.null.refresh(self.last_ts)

    def _reference_regions(
        self, encoded: np.ndarray, batch: ModelBatch, values: np.ndarray
    ) -> np.ndarray:
        """A stored reference's counts per region (`REGIONS`) from its rows and their
        categorical buckets; its class part empty where it has no predictions (every row
        would stand in the slot of None)."""
        assert self.regions is not None
        labels = labels_of(batch.predictions, batch.scores, len(encoded))
        regions, _ = self.regions.regions(labels, encoded, values)
        if all(label is None for label in labels):
            regions = regions[:, 1:]
        return np.bincount(regions.ravel(), minlength=REGIONS).astype(np.float64)

    def _straddle_radius(self, encoded: np.ndarray) -> float:
        """`STRADDLE_SCALE` x the median distance of a reference record to its nearest other
        entity in the reference (0 with fewer than two)."""
        n = len(encoded)
        if n < 2:
            return 0.0
        x = encoded.astype(np.float64)
        norms = np.einsum("ij,ij->i", x, x)
        count = min(8, n - 1)
        distance = np.full(n, np.inf)
        for start in range(0, n, 512):
            rows = np.arange(start, min(n, start + 512))
            d2 = norms[rows, None] + norms[None, :] - 2 * x[rows] @ x.T
            d2[np.arange(len(rows)), rows] = np.inf
            near = np.argpartition(d2, count - 1, axis=1)[:, :count]
            real = np.ones(near.shape, dtype=bool)
            same, _, _ = self._compare(x[rows], x[near], x.shape[1], real)  # the entity rule
            found = np.where(same, np.inf, np.take_along_axis(d2, near, axis=1))
            distance[rows] = np.sqrt(np.maximum(found.min(axis=1), 0))
        finite = np.isfinite(distance)
        return STRADDLE_SCALE * float(np.median(distance[finite])) if finite.any() else 0.0

    def _bins(self, encoded: np.ndarray) -> np.ndarray:
        """Each query's bin per feature (queries x features): numeric features by the
        reference's octiles, categorical ones by their hashed bucket (missing: the next)."""
        assert self.profile is not None
        numerics = len(self.profile.numeric_names)
        out = np.empty((len(encoded), self.coverage.shape[1]), dtype=np.int64)
        # One comparison per edge (seven passes over queries x features) rather than a
        # queries x features x edges array summed over its short last axis: ~5x faster.
        counts = out[:, :numerics]
        counts[:] = 0
        for edge in self.bin_edges.T:
            counts += encoded[:, :numerics] > edge
        width = self.profile.buckets
        for j in range(len(self.profile.categorical_names)):
            block = encoded[:, numerics + j * width : numerics + (j + 1) * width]
            out[:, numerics + j] = np.where(block.any(axis=1), block.argmax(axis=1), width)
        return out

    # --- checkpoints (data only) ----------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The state as plain data, with only the ring entries in use: clients hold slots
        0..n-1 and a ring fills from its start, so spare rows and the unfilled ends of rings
        are left out; `load_state` rebuilds the arrays. (The settings, with the client id
        key as a digest only, are in the checkpoint's envelope: `Detector.snapshot`.)"""
        size = self.settings.buffer_size
        order = list(self.clients.values())
        fill = np.array([min(c.count, size) for c in order], dtype=np.int64)
        slots = np.array([c.slot for c in order], dtype=np.int64)
        used = np.arange(size) < fill[:, None]
        clients = {
            "names": list(self.clients),
            "fields": np.array(
                [[getattr(c, f) for f in _CLIENT_FIELDS] for c in order], dtype=np.int64
            ).reshape(len(order), len(_CLIENT_FIELDS)),
            "severity": [c.flagged_severity for c in order],
            "first_flagged": [c.first_flagged for c in order],
            "first_seen": [c.first_seen for c in order],
            "linked": [None if c.linked is None else dict(c.linked) for c in order],
        }
        state: dict[str, Any] = {
            "model": self.model,
            "counters": [self.evicted, self.untracked, self.anonymous],
            "last_ts": self.last_ts,
            "refreshed": [self.refreshed, self.since_refresh],
            "reference": None if self.reference is None else sample_to_data(self.reference),
            "reference_taken": self.reference_taken,
            "reference_margins": self.reference_margins,
            "warmup": [piece.to_data() for piece in self.warmup],
            "warmup_taken": self.warmup_taken,
            "profile": None if self.profile is None else profile_to_data(self.profile),
            "owner_names": [list(self.owner_names), list(self.owner_names.values())],
            "clients": clients,
            "fill": fill,
            "ring_vectors": self.ring_vectors[slots][used],
            "ring_records": self.ring_records[slots][used],
            "coverage": self.coverage[slots],
            "region_counts": self.region_counts[slots],
            "regions": None if self.regions is None else self.regions.to_data(),
            "typical": None if self.typical is None else self.typical.to_data(),
            "region_debiased": True,
            "ranges": self.ranges.state(slots),
            "rows_traffic": self.rows_traffic.state(slots),
            "null": self.null.state(0)
            | {
                "values": self.null.values[slots],
                "stamps": self.null.stamps[slots],
            },
            "fingerprints": [self.fp_keys, self.fp_owners, self.fp_ts],
            "hashing": {
                "exact_weights": self.exact_weights,
                "projections": self.projections,
                "offsets": self.offsets,
                "hash_weights": self.hash_weights,
                "bin_edges": self.bin_edges,
                "reference_entropy": self.reference_entropy,
                "straddle_radius": self.straddle_radius,
            },
        }
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        """Rebuilds what `state()` described; when the memory budget is smaller now, the most
        recently seen clients are kept."""
        s = self.settings
        self.__init__(self.model, s)  # type: ignore[misc]
        self.evicted, self.untracked, self.anonymous = state["counters"]
        self.last_ts = state["last_ts"]
        # The null's next refresh when it would have come (checkpoints before: at once).
        self.refreshed, self.since_refresh = state.get("refreshed", [-np.inf, 0])
        self.reference = (
            None if state["reference"] is None else sample_from_data(state["reference"])
        )
        self.profile = None if state["profile"] is None else profile_from_data(state["profile"])
        self.reference_taken = state["reference_taken"]
        self.reference_margins = state["reference_margins"]
        self.warmup = [ModelBatch.of_data(piece) for piece in state["warmup"]]
        self.warmup_taken = state["warmup_taken"]
        keys, names = state["owner_names"]
        self.owner_names = OrderedDict(zip(keys, names, strict=True))
        for name, value in state["hashing"].items():
            setattr(self, name, value)
        self.fp_keys, self.fp_owners, self.fp_ts = state["fingerprints"]
        if state["regions"] is not None:
            self.regions = RegionCoverage.from_data(state["regions"], s.null_window_seconds)
        if state["typical"] is not None:
            self.typical = TypicalRows.from_data(state["typical"])
        if self.profile is None:
            return
        dim = self.profile.dim
        self.ring_vectors = np.zeros((0, s.buffer_size, dim + 2), dtype=np.float32)
        self.coverage = np.zeros((0, state["coverage"].shape[1], BINS), dtype=np.int32)
        self.ranges = TrafficRanges(np.zeros(len(self.profile.feature_names)))
        self.rows_traffic = TrafficRanges(np.zeros(1))
        fill = state["fill"]
        cap = self.tracked_cap()
        kept = slice(max(0, len(fill) - cap), len(fill))  # the most recently seen fit
        rows = len(fill)
        vectors = np.zeros((rows, s.buffer_size, dim + 2), dtype=np.float32)
        records = np.zeros((rows, s.buffer_size, RECORD))
        used = np.arange(s.buffer_size) < fill[:, None]
        vectors[used], records[used] = state["ring_vectors"], state["ring_records"]
        self._reserve(len(fill[kept]), cap)
        self.ring_vectors[: len(fill[kept])] = vectors[kept]
        self.ring_records[: len(fill[kept])] = records[kept]
        self.coverage[: len(fill[kept])] = state["coverage"][kept]
        self.region_counts[: len(fill[kept])] = state["region_counts"][kept]
        null = state["null"]
        self.null.prior_u, self.null.prior_b = null["prior_u"], null["prior_b"]
        self.null.values[: len(fill[kept])] = null["values"][kept]
        self.null.stamps[: len(fill[kept])] = null["stamps"][kept]
        if not state.get("region_debiased"):
            # A checkpoint from before region_coverage was debiased: its voices are plug-in
            # values, lower by the bias, which would narrow the null until they went stale.
            self.null.forget_statistic(REGION_STAT)
        # The tails as last refreshed, where every client and voice is as it was (older
        # checkpoints hold none: refitted from the voices now).
        if "fitted" in null and state.get("region_debiased") and len(fill[kept]) == len(fill):
            self.null.load_fitted(null["fitted"])
        else:
            self.null.refresh(self.last_ts)
        # Checkpoints before hold no ranges: none is left until the next refresh, which then
        # decides at the level of a reference rate of 0 (not kept in them).
        if "ranges" in state:
            self.ranges.load(state["ranges"], kept)
        self.rows_traffic.load(state["rows_traffic"], kept)
        clients = state["clients"]
        self.evicted += len(fill) - len(fill[kept])
        for i in range(kept.start, kept.stop):
            values = clients["fields"][i].tolist()
            # Checkpoints before `reported_group` and `linked_looks` lack them (the last
            # fields): as if no group was reported yet and no linked look made today.
            values += [0] * (len(_CLIENT_FIELDS) - len(values))
            fields: dict[str, Any] = dict(zip(_CLIENT_FIELDS, values, strict=True))
            fields["slot"] = i - kept.start
            linked = clients["linked"][i]
            self.clients[clients["names"][i]] = ClientState(
                **fields,
                flagged_severity=clients["severity"][i],
                first_flagged=clients["first_flagged"][i],
                first_seen=clients["first_seen"][i],
                linked=None if linked is None else Counter(linked),
            )

    def _refresh_null(self) -> None:
        """The population's tails and region mix from the clients fresh now (hourly, or
        every `NULL_REFRESH_QUERIES`): both follow the population as it changes."""
        self.null.refresh(self.last_ts, len(self.clients))
        self.refreshed, self.since_refresh = self.last_ts, 0
        assert self.regions is not None
        # The clients with a voice in the null now (a look within the window), unflagged.
        slots = np.fromiter(
            (st.slot for st in self.clients.values() if st.flagged_severity is None), np.int64
        )
        # Each row's latest look (a reduction over the rows in use: no copy of the stamps).
        latest = self.null.stamps[: len(self.clients)].max(axis=(1, 2), initial=-np.inf)
        fresh = slots[latest[slots] >= self.last_ts - self.null.window]
        self.ranges.refresh(fresh, self.settings.min_null_clients, self.last_ts)
        self.rows_traffic.refresh(fresh, self.settings.min_null_clients, self.last_ts)
        if len(fresh) >= self.settings.min_null_clients:
            self.regions.observe_population(self.region_counts[fresh])
        else:
            self.regions.forget_population()

    def window(self, state: ClientState) -> np.ndarray:
        """The records of a client's queries in its ring (ring order, not arrival order)."""
        return self.ring_records[state.slot, : min(state.count, self.settings.buffer_size)]

    # --- the hot path -------------------------------------------------------------------

    def update(self, batch: ModelBatch) -> list[Finding]:
        if not self.settings.enabled or len(batch) == 0:
            return []
        start = self._monitored_from(batch)
        findings = self.judge_learning_window()
        if start is not None:
            findings += self._monitor(batch, start)
        return findings

    def judge_learning_window(self) -> list[Finding]:
        """Once the profile exists, the learning window's kept events are judged, in order,
        each look by what was known then (the prior, while no population); then dropped."""
        if self.profile is None or not self.warmup:
            return []
        findings: list[Finding] = []
        backlog, self.warmup, self.warmup_taken = self.warmup, [], {}
        self.judging_late = True
        try:
            for piece in backlog:
                findings += self._monitor(piece, 0)
        finally:
            self.judging_late = False
        return findings

    def _monitor(self, batch: ModelBatch, start: int) -> list[Finding]:
        """Measures and judges the batch's queries from `start` on (the profile is known)."""
        assert self.profile is not None
        s = self.settings
        numeric = self.profile.numeric_matrix(batch)  # once, for the encoding and the ranges
        x = self.profile.encode(batch, numeric)[start:]
        n = len(x)
        # Each distinct caller once: its index in this batch, key, owner hash and state.
        callers = batch.clients[start:]
        seen = {c: i for i, c in enumerate(dict.fromkeys(callers))}  # in order of arrival
        codes = np.fromiter(map(seen.__getitem__, callers), np.int64, len(callers))
        anonymous = np.fromiter((c is None for c in seen), bool, len(seen))
        # Trusted clients are not tracked, not judged and leave no fingerprints: as if anonymous.
        names = [None if c in s.trusted_clients else c for c in seen]
        # Keys as given unless they are to be known by HMAC only (no call per client then).
        if s.client_id_key is not None:
            names = [self._client_key(c) for c in names]
        owners = np.array([0 if c is None else client_hash(c) for c in names], dtype=np.int64)
        states = self._states(names, owners.tolist())
        # Per caller, in one pass over the states: its ring slot (-1: not tracked), queries
        # seen and whether it was never flagged (the arrays below index these, not the states).
        caller_slot = np.fromiter(
            (-1 if st is None else st.slot for st in states), np.int64, len(states)
        )
        caller_count = np.fromiter(
            (0 if st is None else st.count for st in states), np.int64, len(states)
        )
        caller_unflagged = np.fromiter(
            (st is not None and st.flagged_severity is None for st in states), bool, len(states)
        )
        tracked = caller_slot >= 0
        owner = owners[codes]
        self.anonymous += int(anonymous[codes].sum())
        untracked = ~tracked & (owners != 0)
        self.untracked += int(untracked[codes].sum())
        ts = batch.ts[start:]
        self.last_ts = max(self.last_ts, float(ts.max()))
        if not tracked.any():
            return []
        shared, linked = self._shared_fingerprints(x, ts, owner)
        if linked:  # usually none: no loop over the callers then
            self._link(linked)
        per_query = np.empty((n, RECORD))
        per_query[:, TS] = ts
        # The features it is out of range on; a look counts those the traffic as a whole
        # has not left then (`TrafficRanges`).
        out_of_range = self.profile.anomalies(batch, numeric)[start:]
        per_query[:, OOD] = self.ranges.bits(out_of_range)
        self.ranges.observe(caller_slot[codes], out_of_range)
        per_query[:, LOW] = low_margin(batch, s.low_margin)[start:]
        per_query[:, SHARED] = shared
        per_query[:, EXACT] = x.round(6) @ self.exact_weights
        bins = self._bins(x)
        assert self.regions is not None
        labels = labels_of(batch.predictions[start:], batch.scores[start:], n)
        values = bins[:, len(self.profile.numeric_names) :]  # the categorical features' buckets
        regions, beyond_cells = self.regions.regions(labels, x, values)  # (class, cell, ...)
        per_query[:, CLASS] = regions[:, 0]
        assert self.typical is not None  # learned with the regions
        off_rows = self.typical.atypical(x)
        per_query[:, ATYPICAL] = beyond_cells * BEYOND_CELLS + off_rows * OFF_ROWS
        self.rows_traffic.observe(caller_slot[codes], off_rows[:, None])
        voters = caller_slot[caller_unflagged]  # tracked, never flagged: each caller once
        self.ranges.leave(voters, s.min_null_clients)
        self.rows_traffic.leave(voters, s.min_null_clients)
        self.since_refresh += n
        if (
            self.last_ts >= self.refreshed + NULL_REFRESH_SECONDS
            or self.since_refresh >= NULL_REFRESH_QUERIES
        ):
            self._refresh_null()
        # Tracked queries grouped by client (arrival order within), clients sorted by the
        # size class of their group (1, 2-3, 4-7, ... queries in this batch), then by how many
        # earlier queries each query is compared with (ring + this batch): `_nearest` pads
        # runs of similar clients into one block.
        filled = np.minimum(caller_count, s.buffer_size)
        per_client = np.bincount(codes, minlength=len(names))
        size_class = np.frexp(per_client)[1]
        rows = np.flatnonzero(tracked[codes])
        row_codes = codes[rows]
        keys = (row_codes, (filled + per_client)[row_codes], size_class[row_codes])
        order = rows[np.lexsort(keys)]
        sorted_codes = codes[order]
        m = len(order)
        first = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
        sizes = np.diff(np.r_[first, m])
        group_codes = sorted_codes[first]
        regions = regions[order]

        xs = x[order]
        norms = np.einsum("ij,ij->i", xs, xs)
        dim = xs.shape[1]
        # Stored as [x, |x|^2, 1] and queried as [-2x, 1, |x|^2]: one product is then the
        # squared distance. float32, as the rings store them (written in place: no float64
        # copies to cast).
        stored = np.empty((m, dim + 2), dtype=np.float32)
        stored[:, :dim], stored[:, dim], stored[:, dim + 1] = xs, norms, 1.0
        query = np.empty((m, dim + 2), dtype=np.float32)
        np.multiply(xs, -2.0, out=query[:, :dim], casting="same_kind")
        query[:, dim], query[:, dim + 1] = 1.0, norms
        records = per_query[order]
        group_states = [states[c] for c in group_codes.tolist()]
        # The traffic's mix is the unflagged clients' (as the null's voices are): a flagged
        # attacker's queries do not shape what the whole traffic looks like.
        unflagged = caller_unflagged[group_codes]
        self.regions.observe(regions[np.repeat(unflagged, sizes)], self.last_ts)
        slots = caller_slot[group_codes]
        nearest, closest, probe, straddle = self._nearest(
            stored, query, records[:, CLASS], slots, filled[group_codes], first, sizes
        )
        records[:, STRADDLE] = straddle
        records[:, MIN_DISTANCE] = np.sqrt(np.abs(closest))  # NaN stays NaN
        enough = np.isfinite(nearest[:, -1])
        records[:, KNN] = np.nan
        records[enough, KNN] = np.log(np.sqrt(np.maximum(nearest[enough], 0)).mean(axis=1) + 1e-6)
        records[:, PROBE] = probe
        counts = caller_count[group_codes]
        bins = bins[order]
        # The looks due in this batch: each client's every check_every-th query (from
        # min_queries on), each judged on the window and histograms as of that query, built
        # before the batch is stored (the ring still holds what those windows need).
        looks = self._windows(records, bins, slots, counts, first, sizes)
        if looks is not None:  # region counts as of each look, before the batch is added
            group, row = looks[0], looks[2]
            at_look = self.region_counts[slots[group]]
            at_look = counts_at(at_look, regions, first[group], row + 1)
        self._push(stored, records, slots, counts, first, sizes)
        # Each group's bins counted into its client's histograms: one bincount (rows are
        # grouped by client, so a group's cells are offset by its index).
        features = bins.shape[1]
        row_group = np.repeat(np.arange(len(sizes)), sizes)[:, None]
        cells = bins + (row_group * features + np.arange(features)) * BINS
        added = np.bincount(cells.ravel(), minlength=len(sizes) * features * BINS)
        self.coverage[slots] += added.reshape(len(sizes), features, BINS).astype(np.int32)
        # The regions likewise (np.add.at into the client rows was ~3x slower).
        added = np.bincount((regions + row_group * REGIONS).ravel(), minlength=len(sizes) * REGIONS)
        self.region_counts[slots] += added.reshape(len(sizes), REGIONS).astype(np.int32)
        for g in np.flatnonzero(counts == 0).tolist():  # new clients: their first query's time
            group_states[g].first_seen = float(ts[order[first[g]]])
        for state, size in zip(group_states, sizes.tolist(), strict=True):
            state.count += size
        if looks is None:
            return []
        group, at_count, row, window, histograms = looks
        due = [
            (names[group_codes[g]], group_states[g], start + int(order[r]), c)
            for g, r, c in zip(group.tolist(), row.tolist(), at_count.tolist(), strict=True)
        ]
        stats = self._statistics_of(window, at_count, histograms, at_look)
        findings = self._looks(due, stats, window, batch)
        return [finding for _, finding in sorted(findings, key=lambda pair: pair[0])]

    def _windows(
        self,
        records: np.ndarray,
        bins: np.ndarray,
        slots: np.ndarray,
        counts: np.ndarray,
        first: np.ndarray,
        sizes: np.ndarray,
    ) -> tuple[np.ndarray, ...] | None:
        """The looks due among this batch's groups (rows: `records` grouped by client), as
        (group, count at the look, row of the look's query, window records looks x
        buffer_size x RECORD, histograms looks x features x BINS); None when none is due.

        A look at a client's c-th query sees its queries c - buffer_size .. c - 1: those
        before this batch from its ring (not yet overwritten), the rest from `records`."""
        s = self.settings
        size, check = s.buffer_size, s.check_every
        after = counts + sizes
        low = np.maximum(counts // check + 1, -(-s.min_queries // check))
        how_many = np.maximum(after // check - low + 1, 0)
        total = int(how_many.sum())
        if total == 0:
            return None
        group = np.repeat(np.arange(len(sizes)), how_many)
        nth = np.arange(total) - np.repeat(np.cumsum(how_many) - how_many, how_many)
        at_count = (low[group] + nth) * check
        before = counts[group]
        row = first[group] + (at_count - before - 1)
        q = at_count[:, None] - size + np.arange(size)  # the global query indices seen
        flat = self.ring_records.reshape(-1, RECORD)
        # np.take gathers whole rows ~4x faster than fancy indexing with a 2-D index.
        window = np.take(flat, (slots[group] * size)[:, None] + q % size, axis=0)
        # The batch's queries of each window: its last `fresh` entries (the look's own query
        # and those of its client before it in this batch), indexed directly rather than by
        # a looks x buffer_size mask.
        fresh = np.minimum(at_count - before, size)
        look = np.repeat(np.arange(total), fresh)
        entry = np.arange(len(look)) - np.repeat(np.cumsum(fresh) - size, fresh)
        window[look, entry] = records[(first[group] + at_count - before - size)[look] + entry]
        # Looks before the ring's first fill: their first size - count entries are empty (a
        # few looks a batch, each one slice; no looks x buffer_size mask).
        young = at_count < size
        for i, seen in zip(np.flatnonzero(young).tolist(), at_count[young].tolist(), strict=True):
            window[i, : size - seen] = _NO_RECORD
        # Histograms as of the look: before the batch, plus the batch's queries up to it.
        histograms = counts_at(self.coverage[slots[group]], bins, first[group], row + 1)
        return group, at_count, row, window, histograms

    def _ranges_left(self) -> list[str]:
        """The features whose reference range the typical client has left: their
        out-of-range queries did not count in `ood_share`."""
        assert self.profile is not None
        names = self.profile.feature_names  # the order of `InputProfile.anomalies`' columns
        return [name for name, left in zip(names, self.ranges.left.tolist(), strict=True) if left]

    def _tracked(self, owner: int) -> ClientState | None:
        """The state of the tracked client with this owner hash (None: not tracked)."""
        return self.clients.get(self.owner_names.get(owner, ""))

    def _link(self, linked: dict[int, set[int]]) -> None:
        """Records shared fingerprints on both clients (`linked`: owner -> the owners whose
        fingerprints its queries hit), once per pair and batch. Sharing is mutual, whoever
        queried first: a split attacker's key whose queries its siblings came back to, but
        which never came back to theirs, is linked to them too (held-out segment seed 158:
        one key of 8 had no link of its own, and its incident named none of its 7
        siblings)."""
        pairs = {
            (min(mine, other), max(mine, other))
            for mine, theirs in linked.items()
            for other in theirs
        }
        for one, other in pairs:
            for owner, shared_with in ((one, other), (other, one)):
                state = self._tracked(owner)
                if state is None:
                    continue
                if state.linked is None:
                    state.linked = Counter()
                links = state.linked
                if shared_with in links or len(links) < LINKED_CLIENTS:
                    links[shared_with] += 1
                    continue
                # Full: Space-Saving (Metwally et al. 2005), the newcomer takes the least
                # link's place and count + 1, so a key sharing now enters and rises (kept by
                # count alone, it lost every tie to the older links and never entered).
                least = min(links, key=links.__getitem__)
                links[shared_with] = links.pop(least) + 1

    def _linked_to_flagged(self, state: ClientState) -> bool:
        """Whether the client shares fingerprints with a tracked client flagged before."""
        for owner in state.linked or ():
            other = self._tracked(owner)
            if other is not None and other.flagged_severity is not None:
                return True
        return False

    def _linked_group(self, client: str, state: ClientState) -> list[str]:
        """The tracked clients connected to this one through shared fingerprints, directly or
        through others (a key split over many keys shares with some of its siblings only),
        itself excluded; at most `LINKED_GROUP` of them, nearest links first."""
        group: dict[str, None] = {}
        frontier = [state]
        while frontier and len(group) < LINKED_GROUP:
            linked = frontier.pop(0).linked or Counter()
            for owner, _ in linked.most_common():
                name = self.owner_names.get(owner)
                if name is None or name == client or name in group or name not in self.clients:
                    continue
                group[name] = None
                frontier.append(self.clients[name])
                if len(group) == LINKED_GROUP:
                    break
        return sorted(group)

    def _client_key(self, client: str | None) -> str | None:
        key = self.settings.client_id_key
        if client is None or key is None:
            return client
        digest = hmac.new(key.get_secret_value().encode(), client.encode(), hashlib.sha256)
        return "hmac:" + digest.hexdigest()[:32]

    def _states(self, names: list[str | None], owners: list[int]) -> list[ClientState | None]:
        """The state of each caller of the batch (None: no client, or not tracked).

        Known clients are refreshed first; a new one takes the ring of the least recently
        seen client not in this batch. When a batch has more callers than can be tracked
        (`tracked_cap`), its new callers beyond the cap are not tracked (their queries are
        counted in `untracked`): clients with a history are never evicted by a flood of new
        keys, so an attacker cannot flush its own or anyone's history that way."""
        cap = self.tracked_cap()
        states: list[ClientState | None] = [None] * len(names)
        clients = self.clients
        new: list[tuple[int, str]] = []  # callers not tracked yet
        known = 0
        for i, name in enumerate(names):
            if name is None:
                continue
            # One lookup per known caller (this runs for every client of every batch).
            if (state := clients.get(name)) is not None:
                clients.move_to_end(name)
                states[i] = state
                known += 1
            else:
                new.append((i, name))
        # Tracked clients not in this batch: the front of the LRU order, the only ones evicted.
        evictable = len(clients) - known
        for i, name in new:
            if len(self.clients) < cap:
                slot = len(self.clients)
                self._reserve(slot + 1, cap)
            elif evictable > 0:
                _, evicted = self.clients.popitem(last=False)
                self.evicted += 1
                evictable -= 1
                slot = evicted.slot
                self.coverage[slot] = 0
                self.region_counts[slot] = 0
                self.null.forget(slot)
                self.ranges.forget(slot)
                self.rows_traffic.forget(slot)
            else:
                continue  # over-full batch: not tracked
            states[i] = self.clients[name] = ClientState(slot)
            self.owner_names[owners[i]] = name
            while len(self.owner_names) > self.settings.max_clients:
                self.owner_names.popitem(last=False)
        return states

    def _reserve(self, rows: int, cap: int) -> None:
        """Makes the per-client arrays hold `rows` clients: at the first need, they are
        allocated at `cap` rows at once. np.zeros maps zero pages that take memory only once
        written, so the arrays cost the rows in use, and growing never copies (doubling did:
        the old and new arrays together took up to 1.5x the budget)."""
        have = len(self.ring_records)
        if rows <= have:
            return
        size, dim = self.settings.buffer_size, self.ring_vectors.shape[2]
        vectors = np.zeros((cap, size, dim), dtype=np.float32)
        records = np.zeros((cap, size, RECORD))
        coverage = np.zeros((cap, *self.coverage.shape[1:]), dtype=np.int32)
        region_counts = np.zeros((cap, REGIONS), dtype=np.int32)
        vectors[:have], records[:have] = self.ring_vectors, self.ring_records
        coverage[:have], region_counts[:have] = self.coverage, self.region_counts
        self.ring_vectors, self.ring_records, self.coverage = vectors, records, coverage
        self.region_counts = region_counts
        self.null.reserve(cap)
        self.ranges.reserve(cap)
        self.rows_traffic.reserve(cap)

    def _nearest(
        self,
        stored: np.ndarray,
        query: np.ndarray,
        classes: np.ndarray,
        slots: np.ndarray,
        filled: np.ndarray,
        first: np.ndarray,
        sizes: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Squared distances of each query to its k nearest earlier queries of its client
        (ring, then the earlier ones of this round) that are not the same entity; inf when
        fewer. Rows are grouped by client (group g: rows first[g] to first[g] + sizes[g]).
        Also the squared distance to the nearest earlier query whatever entity it is (NaN:
        none, this query repeats it or moves one coordinate of one; `MIN_DISTANCE`), each
        query's probe coordinate (1 + index, 0: none; `_compare`), and whether it straddles
        the decision boundary with one of its k nearest earlier queries (within
        `straddle_radius`, another predicted class; `classes`: the rows' class slots).

        Consecutive groups of similar shape (`segments`) form one padded block, clients x
        queries x (ring + batch) columns, from two batched products: the cost is a few numpy
        calls per block rather than per client. Padding is masked with +inf (ring columns
        beyond a client's fill, batch columns not earlier than the query) and padded query
        rows are dropped before the partition."""
        s = self.settings
        size, dim = s.buffer_size, stored.shape[1] - 2
        nearest = np.full((len(stored), s.k_neighbours), np.inf)
        closest = np.full(len(stored), np.nan)
        probe = np.zeros(len(stored))
        straddle = np.zeros(len(stored))
        flat = self.ring_vectors.reshape(-1, dim + 2)
        # The rings' records, one row per ring entry (a view: no copy of every ring's column).
        ring_records = self.ring_records.reshape(-1, RECORD)
        for group, end in segments(filled, sizes):
            seg_slots, seg_filled = slots[group:end], filled[group:end]
            seg_first, seg_sizes = first[group:end], sizes[group:end]
            rows_q, rows_f = int(seg_sizes.max()), int(seg_filled.max())
            top, bottom = int(seg_first[0]), int(seg_first[-1] + seg_sizes[-1])
            # Each client's queries padded to rows_q (a padded row repeats a real one; its
            # results are dropped): clients x rows_q x (dim + 2).
            lag = np.arange(rows_q)
            rows = np.minimum(seg_first[:, None] + lag, bottom - 1)
            queries = query[rows]
            # The real (client, query) pairs of the block, in row order (top to bottom).
            client, nth = np.nonzero(lag < seg_sizes[:, None])
            d2 = np.empty((bottom - top, rows_f + rows_q), dtype=np.float32)
            if rows_f:
                # Fancy indexing copies only the rows and columns used (np.take of the
                # column slice, a non-contiguous view, first copied all the rings).
                ring = self.ring_vectors[seg_slots, :rows_f]
                # Ring x queries (clients x rows_f x rows_q): the same dot products as
                # queries x ring, ~1.5x faster with a few queries per client.
                # (The queries transposed into a contiguous array: the product of a
                # transposed view runs ~1.5-3x slower with several queries per client.)
                # Written transposed (clients x rows_q x rows_f: each query's row contiguous,
                # so the real rows are gathered whole). The same products, bit for bit: BLAS
                # computes each entry as the same chain over the coordinates either way.
                product = np.empty((len(seg_slots), rows_q, rows_f), dtype=np.float32)
                np.matmul(
                    ring,
                    np.ascontiguousarray(queries.transpose(0, 2, 1)),
                    out=product.transpose(0, 2, 1),
                )
                if int(seg_filled.min()) < rows_f:
                    unfilled = np.arange(rows_f) >= seg_filled[:, None]
                    np.copyto(product, np.inf, where=unfilled[:, None, :])
                d2[:, :rows_f] = product[client, nth]
            batch_part = np.matmul(queries, np.ascontiguousarray(stored[rows].transpose(0, 2, 1)))
            batch_part += not_earlier(rows_q)
            d2[:, rows_f:] = batch_part[client, nth]
            k = min(s.k_neighbours, d2.shape[1])
            values, cols = smallest(d2, min(3 * s.k_neighbours, d2.shape[1]))
            # Usually none of the k nearest candidates is the same entity again, and then they
            # are the answer: all the candidates are checked only for rows where one is.
            x = stored[top:bottom]
            ring_base = (seg_slots * size)[client, None]
            batch_base = seg_first[client, None] - rows_f
            vectors = candidates(flat, stored, size, rows_f, ring_base, batch_base, cols[:, :k])
            found = values[:, :k]
            same, probe[top:bottom], moved = self._compare(x, vectors, dim, np.isfinite(found))
            # The nearest earlier query whatever entity it is, unless repeated (no coordinate
            # moved beyond `repeat_distance`): once a binary search's gap is small, most
            # coordinates move by less than that and `_compare` takes a step for the same
            # entity with a field or two changed (Sign-OPT's on segment seed 154), yet the
            # gaps still halve (`_bisection_steps`); every coordinate still moves a little.
            # None for a query that moves one coordinate of an earlier one (a probe, a what-if
            # on one field of a record): `coordinate_probes`' evidence, not a search's step.
            distinct = np.isfinite(found[:, 0]) & (moved[:, 0] >= 1) & (probe[top:bottom] == 0)
            closest[top:bottom] = np.where(distinct, found[:, 0], np.nan)
            # A boundary pair: one of the k nearest earlier queries within the radius, of
            # another class, and not the same entity with a field changed (1 to
            # `entity_changes` coordinates moved beyond `repeat_distance`: a changed entity
            # may change class).
            changed = (moved >= 1) & (moved <= s.entity_changes)
            # (Classes are looked up only for the pairs within the radius: few.)
            row, nth_near = np.nonzero(found < self.straddle_radius**2)  # inf: no pair
            if len(row):
                col = cols[row, nth_near]
                their = np.where(
                    col < rows_f,
                    ring_records[ring_base[row, 0] + np.minimum(col, size - 1), CLASS],
                    classes[np.clip(batch_base[row, 0] + col, 0, len(classes) - 1)],
                )
                pair = ~changed[row, nth_near] & (their != classes[top + row])
                straddle[top + row[pair]] = 1.0
            # Re-scoring an entity seen before (one of its k nearest earlier queries is that
            # entity, and no probe): marked -1, left out of the shares.
            again = same.any(axis=1)
            probe[top:bottom] = np.where((probe[top:bottom] == 0) & again, -1.0, probe[top:bottom])
            redo = np.flatnonzero(again)
            if len(redo):
                vectors = candidates(
                    flat, stored, size, rows_f, ring_base[redo], batch_base[redo], cols[redo]
                )
                found[redo] = self._neighbours(x[redo], vectors, values[redo], dim)
            nearest[top:bottom, :k] = found
        return nearest, closest, probe, straddle

    def _push(
        self,
        stored: np.ndarray,
        records: np.ndarray,
        slots: np.ndarray,
        counts: np.ndarray,
        first: np.ndarray,
        sizes: np.ndarray,
    ) -> None:
        """Appends each group's queries to its client's ring; only the newest `buffer_size`
        of a group are written (the older would be overwritten within the batch anyway)."""
        size = self.settings.buffer_size
        rank = np.arange(len(stored)) - np.repeat(first, sizes)
        # Each query's ring entry as one flat index (one index array writes ~1.5x faster).
        entry = np.repeat(slots, sizes) * size + (np.repeat(counts, sizes) + rank) % size
        if int(sizes.max()) > size:  # rarely: a group longer than the ring
            keep = rank >= np.repeat(sizes, sizes) - size
            entry, stored, records = entry[keep], stored[keep], records[keep]
        self.ring_vectors.reshape(-1, self.ring_vectors.shape[2])[entry] = stored
        self.ring_records.reshape(-1, RECORD)[entry] = records

    def _neighbours(
        self, x: np.ndarray, vectors: np.ndarray, d2: np.ndarray, dim: int
    ) -> np.ndarray:
        """Squared distances to the k nearest candidates that are not the same entity again.

        `vectors[i]` are query i's candidates (its 3k nearest earlier queries; only their
        first `dim` coordinates count, and the array is overwritten), `d2[i]` their squared
        distances. A candidate that differs from the query in at most `entity_changes`
        coordinates (by more than `repeat_distance`) is the same record re-scored, maybe with
        a field updated: that is use, not probing, and no neighbour. Probes (HopSkipJump,
        JBDA, NES) move every coordinate a little, so they stay close.
        """
        same, _, _ = self._compare(x, vectors, dim, np.isfinite(d2))
        d2 = np.where(same, np.inf, d2)
        keep = min(self.settings.k_neighbours, d2.shape[1])
        d2.partition(keep - 1, axis=1)  # in place: d2 is a fresh array
        return d2[:, :keep]

    def _compare(
        self, x: np.ndarray, vectors: np.ndarray, dim: int, real: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For each candidate `vectors[i, j]` of query `x[i]` (`real`: not padding): whether
        it is the same entity (differs in at most `entity_changes` of the first `dim`
        coordinates by more than `repeat_distance`), per query the coordinate (1 + index,
        0: none) of a *probe*: a candidate differing in exactly one coordinate, by at most
        `probe_step` (ZOO-style finite differences; re-scoring an entity with a field updated
        moves a field by a real amount, or the same field only), and per candidate how many
        coordinates moved by more than `repeat_distance`. `vectors` is overwritten."""
        s = self.settings
        diff = np.subtract(vectors, x[:, None, :], out=vectors)
        np.abs(diff, out=diff)
        counted = np.zeros(diff.shape[2], dtype=diff.dtype)
        counted[:dim] = 1.0
        # A product counts (whole numbers: exact in any order), over all candidates as one
        # matrix: a stack of queries x candidates x coordinates is one BLAS call per query.
        flat = (-1, diff.shape[2])
        moved = ((diff > s.repeat_distance).reshape(flat) @ counted).reshape(diff.shape[:2])
        same = moved <= s.entity_changes
        one_moved = ((diff > PROBE_FLOOR).reshape(flat) @ counted).reshape(diff.shape[:2]) == 1
        one_moved &= real
        probe = np.zeros(len(x))
        query, candidate = np.nonzero(one_moved)
        if len(query):
            steps = diff[query, candidate, :dim]
            coordinate = steps.argmax(axis=1)
            tiny = steps[np.arange(len(query)), coordinate] <= s.probe_step
            probe[query[~tiny]] = -(coordinate[~tiny] + 2.0)  # a tiny step wins (below)
            probe[query[tiny]] = coordinate[tiny] + 1
        return same & real, probe, moved

    def _shared_fingerprints(
        self, x: np.ndarray, ts: np.ndarray, owner: np.ndarray
    ) -> tuple[np.ndarray, dict[int, set[int]]]:
        """Whether each query's LSH bucket (in any table) was last hit by another client within
        the horizon, in arrival order across all clients. The table is one open-addressed
        array shared by all clients: fixed size, the newest entry of a slot wins."""
        s = self.settings
        n, tables = len(x), s.fingerprint_tables
        codes = np.floor(x @ self.projections + self.offsets).astype(np.int64)
        table_keys = (codes.reshape(n * tables, -1) @ self.hash_weights).reshape(n, tables)
        table_keys = table_keys * tables + np.arange(tables)  # the table is part of the key
        keys, rows = table_keys.ravel(), np.repeat(np.arange(n), tables)
        slots = keys & (len(self.fp_keys) - 1)
        # Within the batch, a query's predecessor in its slot is the previous query there;
        # the first of each slot is compared with what the table holds. (Rows ascend, so a
        # stable sort by slot keeps each slot's queries in arrival order.)
        # (Radix sort when the slots fit 16 bits, as the default table's do: ~5x faster.)
        narrow = slots.astype(np.uint16) if len(self.fp_keys) <= 1 << 16 else slots
        order = np.argsort(narrow, kind="stable")
        slots_o, keys_o, rows_o = slots[order], keys[order], rows[order]
        first = np.ones(len(order), dtype=bool)
        first[1:] = slots_o[1:] != slots_o[:-1]
        owner_o, ts_o = owner[rows_o], ts[rows_o]
        heads = slots_o[first]  # each slot's first query compares with the table's entry
        prev_key = _previous(keys_o, first, self.fp_keys[heads])
        prev_owner = _previous(owner_o, first, self.fp_owners[heads])
        prev_ts = _previous(ts_o, first, self.fp_ts[heads])
        hit = (
            (prev_key == keys_o)
            & (prev_owner != 0)
            & (prev_owner != owner_o)
            & (ts_o - prev_ts <= s.fingerprint_horizon_seconds)
            & (owner_o != 0)
        )
        shared = np.zeros(n, dtype=bool)
        shared[rows_o[hit]] = True
        linked: dict[int, set[int]] = {}
        for mine, theirs in zip(owner_o[hit].tolist(), prev_owner[hit].tolist(), strict=True):
            linked.setdefault(mine, set()).add(theirs)
        last = np.ones(len(order), dtype=bool)
        last[:-1] = slots_o[1:] != slots_o[:-1]
        keep = last & (owner_o != 0)
        written = slots_o[keep]
        self.fp_keys[written] = keys_o[keep]
        self.fp_owners[written] = owner_o[keep]
        self.fp_ts[written] = ts_o[keep]
        return shared, linked

    # --- looks: statistics, p-values, findings ------------------------------------------

    def _statistics(self, states: list[ClientState]) -> np.ndarray:
        """Each client's statistics now, over its ring (clients x `STATISTICS`)."""
        size = self.settings.buffer_size
        slots = np.fromiter((state.slot for state in states), np.int64, len(states))
        counts = np.fromiter((state.count for state in states), np.int64, len(states))
        records = np.take(self.ring_records, slots, axis=0)
        records[np.arange(size) >= np.minimum(counts, size)[:, None]] = _NO_RECORD
        coverage = np.take(self.coverage, slots, axis=0)
        return self._statistics_of(records, counts, coverage, self.region_counts[slots])

    def _statistics_of(
        self,
        records: np.ndarray,
        counts: np.ndarray,
        histograms: np.ndarray,
        region_counts: np.ndarray,
    ) -> np.ndarray:
        """Statistics of looks (looks x `STATISTICS`) from their windows (looks x ring x
        RECORD, `_NO_RECORD` where empty), queries seen and histograms; NaN where one is not
        defined (too few values). All looks at once, a few array operations in all."""
        s = self.settings
        n = np.minimum(counts, s.buffer_size)
        # The columns used, each as one contiguous looks x ring array: one strided gather,
        # after which every operation below reads contiguous memory rather than one value
        # in each record's row (~2x faster each).
        ts, ood_flag, low, shared, knn, probe, straddle, atypical = records.transpose(2, 0, 1)[
            [TS, OOD, LOW, SHARED, KNN, PROBE, STRADDLE, ATYPICAL]
        ]
        out = np.full((len(records), len(STATISTICS)), np.nan)
        # Shares over distinct inputs: an entity re-scored (PROBE -1) counts once, so a
        # re-scorer whose entities sit at the edge of the reference is not "out of it" again
        # and again. Half the window at least must be distinct.
        distinct = _distinct(ts, probe)
        kept = np.count_nonzero(distinct, axis=1)
        enough = kept >= s.min_queries // 2
        out_of_range = self.ranges.counts(ood_flag, ts) & distinct
        ood = np.count_nonzero(out_of_range, axis=1)
        out[:, 0] = np.where(enough, ood / np.maximum(kept, 1), np.nan)
        kinds = atypical.astype(np.int64)
        far_out = ((kinds & BEYOND_CELLS) > 0) & out_of_range
        # Off the rows counts while the traffic as a whole has not moved off them
        # (`rows_traffic`, its one bit: OFF_ROWS shifted to bit 0).
        off_rows = self.rows_traffic.counts(kinds >> 1, ts)
        far = np.count_nonzero((far_out | off_rows) & distinct, axis=1)
        out[:, ATYPICAL_STAT] = np.where(enough, far / np.maximum(kept, 1), np.nan)
        scored = np.count_nonzero((low >= 0) & distinct, axis=1)
        low_count = np.count_nonzero((low == 1) & distinct, axis=1)
        out[:, 1] = np.where(
            scored >= s.min_queries // 2, low_count / np.maximum(scored, 1), np.nan
        )
        out[:, 2] = np.count_nonzero(shared, axis=1) / n
        finite = np.isfinite(knn)
        found = np.count_nonzero(finite, axis=1)
        total = np.where(finite, knn, 0.0).sum(axis=1)
        # Minus the mean log k-NN distance: higher is closer.
        out[:, 3] = np.where(found >= s.min_queries, -total / np.maximum(found, 1), np.nan)
        out[:, 4] = self._prada(records) if TESTED[4] else np.nan  # reported on findings
        # Single-coordinate moves (tiny probes, or an entity with one coordinate moved further),
        # weighted by how many distinct coordinates they moved: none for up to
        # `entity_changes` (a re-scorer updating a field or two: a day older, a new amount),
        # fully from PROBE_SPAN more on: ZOO's finite differences and SimBA's steps walk
        # through the coordinates one at a time, whatever their step.
        # probe for a probe (>= 1), -probe - 1 for an entity moved further (<= -2), else 0:
        # one maximum (both are whole numbers, exact).
        moved = np.maximum(probe, -probe - 1.0)
        moves = np.count_nonzero(moved, axis=1)
        # Distinct coordinates only where something moved (most windows: nothing, and their
        # share is 0 whatever the count), one sort of those windows.
        distinct = np.zeros(len(records), dtype=np.intp)
        if (probing := np.flatnonzero(moves)).size:
            coordinates = np.sort(moved[probing], axis=1)  # 1 + the coordinate moved, 0: none
            distinct[probing] = np.count_nonzero(
                (np.diff(coordinates, axis=1) != 0) & (coordinates[:, 1:] > 0), axis=1
            )
            distinct[probing] += coordinates[:, 0] > 0
        share = moves / n
        walk = (distinct - s.entity_changes) / PROBE_SPAN
        out[:, 5] = share * np.clip(walk, 0.0, 1.0)
        out[:, COVERAGE] = entropy(histograms) - self.reference_entropy
        # Pairs across the decision boundary (`_nearest`), among distinct inputs like the
        # other shares: boundary search (binary and line searches, gradient estimates at a
        # boundary point) makes them; distinct entities of benign use rarely do.
        # A pair is no re-score (an unchanged input changing class is no use), so the share
        # is over every query of the window.
        # Bisection steps are boundary search too (`BISECTION_TOLERANCE`), whether or not
        # the class changes along the line: the searcher bisects on the model's answers.
        searching = (straddle > 0) | _bisection_steps(records[:, :, MIN_DISTANCE])
        out[:, PAIRS_STAT] = np.count_nonzero(searching, axis=1) / n
        assert self.regions is not None
        out[:, REGION_STAT] = self.regions.statistic(region_counts)
        return out

    def _prada(self, records: np.ndarray) -> np.ndarray:
        """-log Shapiro-Wilk W of each window's min distances (higher: less normal)."""
        distances = records[:, :, MIN_DISTANCE]  # finite or NaN, and NaN sorts last
        found = np.count_nonzero(~np.isnan(distances), axis=1)
        enough = np.where(found >= self.settings.min_queries, found, 0)
        w = shapiro_w(np.sort(distances, axis=1), enough)
        return -np.log(np.maximum(w, 1e-9))

    def _looks(
        self,
        due: list[tuple[str, ClientState, int, int]],
        stats: np.ndarray,
        windows: np.ndarray,
        batch: ModelBatch,
    ) -> list[tuple[int, Finding]]:
        """Decides the looks due in this batch ((client, state, index of the look's query,
        queries seen then), in order per client) from their statistics (and `windows`, the
        records each look saw, for its finding); returns (index, finding) for the flagged
        ones. Clients never flagged give their values to the null (one voice each)."""
        states = [state for _, state, _, _ in due]
        counts = np.array([count for _, _, _, count in due])
        # Ring statistics by ring fill, cumulative coverage by queries seen.
        buckets = np.repeat(
            bucket_of(np.minimum(counts, self.settings.buffer_size), self.edges)[:, None],
            len(STATISTICS),
            axis=1,
        )
        buckets[:, [COVERAGE, REGION_STAT]] = bucket_of(counts, self.edges)[:, None]
        # Judged by the prior (a new model's first hours), a look is judged at its own size.
        sizes = self._sizes(windows, counts) if self.null.prior_judges(buckets) else None
        p_values = self.null.p_values(stats, buckets, sizes)
        p_values[:, ~TESTED] = np.nan  # reported, not tested
        # Closeness alone is no evidence (a batch job of similar records is close too): it
        # counts with low margins or out-of-reference inputs, as max(p_knn, min(p_low, p_ood)),
        # a valid p-value (P(max <= a) <= P(p_knn <= a) <= a).
        support = np.fmin(p_values[:, LOW_STAT], p_values[:, OOD_STAT])
        support = np.where(np.isnan(support), 1.0, support)
        p_values[:, KNN_STAT] = np.maximum(p_values[:, KNN_STAT], support)
        ring_p = bonferroni(p_values, RING).tolist()
        cumulative_p = bonferroni(p_values, CUMULATIVE).tolist()
        cumulative_due = cumulative_looks_due(counts, self.settings.check_every).tolist()
        look_ts = batch.ts[[index for _, _, index, _ in due]]
        days = (look_ts // DAY).astype(np.int64).tolist()
        spending = self.spending
        findings = []
        voices = []
        for i, (client, state, index, count) in enumerate(due):
            first_of_day = days[i] != state.day
            if first_of_day:
                state.day, state.day_looks, state.cumulative_looks = days[i], 0, 0
                state.linked_looks = 0
            state.day_looks += 1
            j = state.day_looks
            k = 0  # the look's number in the cumulative test (0: not one of its looks)
            # Also the day's first look: a patient client's evidence is judged every day it
            # queries, at the day's largest share of alpha_c.
            if cumulative_due[i] or (first_of_day and count >= CUMULATIVE_FIRST):
                state.cumulative_looks += 1
                k = state.cumulative_looks
            # A client sharing fingerprints with a flagged one (a split attacker's quieter
            # key) is judged once more on its ring, at the 1st, 2nd, 4th, 8th, ... of its
            # looks so linked today: alpha's linked share, which a benign client spends only
            # while so linked. (Its evidence grows with the copies it sends, as a coverage's
            # with queries: a test per doubling gets each gain at one share.)
            m = 0  # the look's number in the linked test (0: not one of its looks)
            if state.flagged_severity is None and self._linked_to_flagged(state):
                state.linked_looks += 1
                if state.linked_looks & (state.linked_looks - 1) == 0:
                    m = state.linked_looks.bit_length()
            if ring_p[i] > CLEAN_P:
                state.clean_count = count
            # Most looks cross neither threshold: their tests are not built.
            flagged_now = (
                ring_p[i] <= spending.ring_threshold(j)
                or bool(k and cumulative_p[i] <= spending.cumulative_threshold(k))
                or bool(m and ring_p[i] <= spending.linked_threshold(m))
            )
            # A client flagged before is reported again, whether this look crosses or not,
            # when keys joined its linked group since its last finding: a split attacker's
            # keys mostly share fingerprints after the first of them is flagged, and its
            # incident must come to name them all. (The group is found once per look, and
            # only for flagged clients with links.)
            group = None
            if state.flagged_severity is not None and state.linked is not None:
                group = self._linked_group(client, state)
            regrouped = group is not None and len(group) > state.reported_group
            if not flagged_now and not regrouped:
                if state.flagged_severity is None:
                    voices.append(i)
                continue
            tests = [Test("ring", ring_p[i], spending.ring_threshold(j), j, count)]
            if k:
                tests.append(
                    Test("cumulative", cumulative_p[i], spending.cumulative_threshold(k), k, count)
                )
            if m:
                tests.append(Test("linked", ring_p[i], spending.linked_threshold(m), m, count))
            crossed = [test for test in tests if test.p_value <= test.threshold]
            if crossed:
                state.flagged_looks += 1
                if state.first_flagged is None:
                    state.first_flagged = float(look_ts[i])
                decided = min(crossed, key=lambda test: test.p_value / test.threshold)
                critical = decided.p_value <= decided.threshold * self.settings.critical_factor
                severity = Severity.CRITICAL if critical else Severity.WARNING
            else:  # regrouped only (so flagged before): the severity stands as reported
                assert state.flagged_severity is not None
                decided = min(tests, key=lambda test: test.p_value / test.threshold)
                severity = Severity(state.flagged_severity)
            first_or_worse = state.flagged_severity is None or (
                severity == Severity.CRITICAL and state.flagged_severity != Severity.CRITICAL
            )
            if not first_or_worse and not regrouped and j - state.last_finding_look < 20:
                continue
            state.flagged_severity = str(severity)
            state.last_finding_look = j
            if group is None:
                group = self._linked_group(client, state)
            finding = self._finding(
                client,
                state,
                batch,
                index,
                windows[i],
                stats[i],
                p_values[i],
                buckets[i],
                tests,
                decided,
                severity,
                group,
            )
            state.reported_group = len(group)
            findings.append((index, finding))
        if voices:
            slots = np.array([states[i].slot for i in voices])
            self.null.record(slots, buckets[voices], stats[voices], look_ts[voices])
        return findings

    def _sizes(self, windows: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """How many values each look's statistics are over (looks x `STATISTICS`, NaN: not
        needed), for the prior at a look's own size: the distinct inputs of its window
        for the out-of-reference share, those with scores for the low-margin share, and
        every query of it for boundary pairs (`_statistics_of`)."""
        sizes = np.full((len(windows), len(STATISTICS)), np.nan)
        if not len(windows):
            return sizes
        ts, low, probe = windows.transpose(2, 0, 1)[[TS, LOW, PROBE]]
        distinct = _distinct(ts, probe)
        sizes[:, OOD_STAT] = sizes[:, ATYPICAL_STAT] = np.count_nonzero(distinct, axis=1)
        sizes[:, LOW_STAT] = np.count_nonzero(distinct & (low >= 0), axis=1)
        sizes[:, PAIRS_STAT] = np.minimum(counts, self.settings.buffer_size)
        return sizes

    def _finding(
        self,
        client: str,
        state: ClientState,
        batch: ModelBatch,
        index: int,
        window: np.ndarray,
        stats: np.ndarray,
        p_values: np.ndarray,
        buckets: np.ndarray,
        tests: list[Test],
        decided: Test,
        severity: Severity,
        group: list[str],
    ) -> Finding:
        """The finding of a flagged look (or of a flagged client's grown linked `group`). Its
        details describe the queries the look saw (`window`: the client's last `buffer_size`
        queries up to the look's, oldest first), not the ring at the batch's end: a fast
        client may send a ring's worth after it."""
        s = self.settings
        count = decided.queries
        judged = [i for i in range(len(STATISTICS)) if not np.isnan(p_values[i])]
        fired = sorted(
            {
                STATISTICS[i]
                for test in tests
                if test.p_value <= test.threshold
                for i in judged
                if test.statistics[i] and p_values[i] <= test.per_statistic[i]
            },
            key=lambda name: p_values[STATISTICS.index(name)],
        )
        records = window[window[:, TS] > -np.inf]  # a young client's window is padded
        ts = np.sort(records[:, TS])
        n = len(ts)
        # Where the pattern began: for the cumulative test everything the client sent, for
        # the ring test the first query after its last clean look. The window holds queries
        # count - n .. count - 1, so that query (number clean_count) is at clean_count -
        # (count - n); before the window (more than a ring since the clean look), the
        # window's first is the earliest known.
        first = float(ts[0] if state.first_seen is None else state.first_seen)
        since_clean = state.clean_count - (count - n)
        # A look crossing no threshold is reported only because its linked group grew: its
        # window may be clean, so the pattern is dated by the look that first flagged it.
        group_only = not any(test.p_value <= test.threshold for test in tests)
        if group_only and state.first_flagged is not None:
            began = state.first_flagged
        elif decided.name == "cumulative" or state.clean_count == 0:
            began = first
        else:
            began = float(records[max(since_clean, 0), TS])
        began = min(began, float(batch.ts[index]))  # event times may arrive out of order
        gaps = np.diff(ts)
        burstiness = 0.0
        if len(gaps) > 1 and gaps.mean() > 0:
            burstiness = float((gaps.std() - gaps.mean()) / (gaps.std() + gaps.mean()))
        span = float(ts[-1] - ts[0]) if n > 1 else 0.0
        prada = float(self._prada(window[None])[0])
        detail_stats = {
            STATISTICS[i]: {
                "value": round(float(stats[i]), 4),
                "p_value": float(f"{p_values[i]:.3g}"),
                "baseline": self.null.baseline(int(buckets[i]), i),
            }
            for i in judged
        }
        confidence = -math.log10(max(decided.p_value, 1e-300))
        headline = (
            f"linked group grew to {len(group)} other keys"
            if group_only
            else ", ".join(fired) or "combined evidence"
        )
        return Finding(
            model=self.model,
            kind=Kind.SUSPICIOUS_CLIENT,
            subject=client,
            severity=severity,
            ts=float(batch.ts[index]),
            position=batch.position(index),
            detector=self.name,
            statistic="bonferroni_min_p",
            value=float(f"{decided.p_value:.3g}"),
            threshold=float(f"{decided.threshold:.3g}"),
            effect_size=round(confidence, 2),
            support=min(count, s.buffer_size) if decided.name != "cumulative" else count,
            title=f"client {client}: {headline} (p={decided.p_value:.1e}, {count} queries)",
            details={
                "client": client,
                "detectors_fired": fired,
                "test": decided.name,
                "tests": {test.name: test.details() for test in tests},
                "statistics": detail_stats,
                "reported": {"prada_normality": None if np.isnan(prada) else round(prada, 4)},
                "queries_seen": count,
                "judged_late": self.judging_late,  # a look of the learning window
                "pattern_began": began,
                "first_flagged": state.first_flagged,
                "flagged_looks": state.flagged_looks,
                "look_of_day": decided.look,
                "linked_clients": sorted(
                    self.owner_names.get(o, "(no longer tracked)") for o in state.linked or ()
                ),
                "linked_group": group,
                "reported_for": "linked_group" if group_only else "flagged_look",
                "unique_input_ratio": round(len(np.unique(records[:, EXACT])) / n, 4),
                "ranges_left_by_traffic": self._ranges_left(),
                "rows_left_by_traffic": bool(self.rows_traffic.left.any()),
                "burstiness": round(burstiness, 4),
                "queries_per_minute": round(60 * (n - 1) / span, 3) if span > 0 else None,
                "tracked_clients": len(self.clients),
                "evicted_clients": self.evicted,
                "untracked_queries": self.untracked,
            },
        )


def _bisection_steps(distances: np.ndarray) -> np.ndarray:
    """Per window of nearest-earlier distances (looks x ring, in arrival order; NaN: none),
    whether each query's is half its predecessor's (within `BISECTION_TOLERANCE`) and the
    predecessor's half its own: a binary search's queries from its third on. (A full ring
    read in slot order is one wrap out of arrival order: at most two steps misread.)"""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = distances[:, 1:] / distances[:, :-1]
    half = np.abs(ratio - 0.5) <= BISECTION_TOLERANCE * 0.5  # NaN: False
    out = np.zeros(distances.shape, dtype=bool)
    out[:, 2:] = half[:, 1:] & half[:, :-1]
    return out


def typical_rate(flags: np.ndarray, owners: np.ndarray) -> float:
    """How often a reference's events are flagged, as its typical client sees it: the median
    over clients of each one's share (an event without a client is a client of its own), or,
    where no event has a client (a stored reference), the share of events. The prior judges
    shares against 3x this rate + 0.05: taken over events, a collection learned while a few
    attackers were busy (five of 45 clients in the first hours of `client_attacks.py
    --quick`, 29% of the events, most out of reference) put that level at 1, and the
    uniform-random extractor among them was never flagged."""
    return float(typical_rates(flags[:, None], owners)[0])


def typical_rates(flags: np.ndarray, owners: np.ndarray) -> np.ndarray:
    """`typical_rate` of each column of `flags` (events x columns), the clients' voices
    found once for all columns."""
    if not len(flags):
        return np.zeros(flags.shape[1])
    if not knows_clients(owners):
        return flags.mean(axis=0).astype(np.float64)
    voice, sizes = client_voices(owners)
    shares = [np.bincount(voice, column, minlength=len(sizes)) / sizes for column in flags.T]
    return np.median(np.array(shares), axis=1) if shares else np.zeros(0)


def _distinct(ts: np.ndarray, probe: np.ndarray) -> np.ndarray:
    """The window records the shares are over (records' TS and PROBE columns): queries
    present, an entity re-scored counting once (PROBE -1)."""
    return (ts > -np.inf) & (probe >= 0)


def _compact(batch: ModelBatch, keep: np.ndarray) -> ModelBatch:
    """The events where `keep` holds, with only what the looks use (inputs, predictions,
    scores, client, time, position): the raw rows and records are dropped."""
    index = np.flatnonzero(keep)
    picked = index.tolist()
    n = len(picked)
    positions = [batch.position(i) for i in picked] if batch.positions is not None else None
    return ModelBatch(
        model=batch.model,
        source=batch.source,
        partition=batch.partition,
        ts=batch.ts[index],
        offsets=batch.offsets[index],
        ids=[None] * n,
        clients=[batch.clients[i] for i in picked],
        model_versions=[None] * n,
        rows=[{}] * n,
        numeric={k: v[index] for k, v in batch.numeric.items()},
        categorical={k: v[index] for k, v in batch.categorical.items()},
        predictions=[batch.predictions[i] for i in picked] if batch.predictions else [None] * n,
        scores=[batch.scores[i] for i in picked] if batch.scores else [],
        score=None if batch.score is None else batch.score[index],
        positions=positions,
    )


def _previous(values: np.ndarray, first: np.ndarray, stored: np.ndarray) -> np.ndarray:
    """Each entry's predecessor in `values`, except where `first`: there the table's entries
    (`stored`, in order). A shifted copy and one masked write: cheaper than np.roll and
    np.where over the whole batch."""
    out = np.empty_like(values)
    out[1:] = values[:-1]
    out[first] = stored
    return out
