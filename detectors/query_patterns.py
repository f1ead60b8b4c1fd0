"""Suspicious clients: per-caller detection of model extraction, boundary probing and abuse.

Every query is scaled and encoded through the model's reference `InputProfile`, then appended
to its client's bounded ring of recent queries (at most `buffer_size`; at most `max_clients`
clients, the least recently seen evicted and counted). Per query, in micro-batches with numpy:

- distance to the client's earlier queries: the minimum (PRADA's statistic) and the mean to
  the `k_neighbours` nearest (Blacklight / stateful detection). Earlier queries that differ in
  at most `entity_changes` coordinates are left out of both: re-scoring the same entity, even
  with a field updated, is use, not probing;
- out of the reference's ranges (the `InputProfile` rule), and a low-margin prediction;
- a salted random-projection LSH fingerprint, looked up in one table shared by all clients,
  so near-duplicates sent under another client key within `fingerprint_horizon_seconds` are
  noticed: splitting an attack over several keys does not hide it.

Every `check_every` queries of a client (a "look"), seven statistics summarize its recent
queries: `ood_share`, `low_margin_share`, `shared_fingerprints` (shares of its ring),
`knn_distance` (mean log k-NN distance: closer than benign), `prada_normality` (Shapiro-Wilk
W of the min distances: less normal than benign), `coverage_speed` (novel queries, farther
from the client's earlier ones than a typical reference query is from its neighbours, in the
trailing `rate_window_seconds`) and `rate` (queries in that window). Each gets
peaks-over-threshold p-values (`TailPValue`) against the values benign clients showed during
calibration, the first `calibration_queries` queries after the reference.

A look's p-value is the Bonferroni minimum over detectors, valid whatever their dependence.
Looks are spent per client and per event-time day: the j-th look of a day is tested at
alpha / (j (j + 1)), which sums to alpha, so each benign client is flagged on a given day
with probability at most alpha = `false_clients_per_thousand` / 1000. Since the budget is a
share of clients, that is also the expected share of benign clients flagged, however many
are tested.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from scipy.stats import shapiro

from detectors.base import Finding, Kind, Severity
from detectors.calibration import TailPValue
from detectors.input_anomaly import (
    InputProfile,
    ProfiledDetector,
    reference_batch,
)
from streams.batch import ModelBatch

_shapiro = getattr(shapiro, "__wrapped__", shapiro)  # skip scipy's slow argument wrapper

DAY = 86_400.0
DETECTORS = (
    "ood_share",
    "low_margin_share",
    "shared_fingerprints",
    "knn_distance",
    "prada_normality",
    "coverage_speed",
    "rate",
)
MIN_CALIBRATION_VALUES = 30  # fewer benign values of a statistic: that detector stays off
CALIBRATION_LOOKS_PER_CLIENT = 8  # so that no single client shapes what "benign" means
CLEAN_P = 0.1  # a look above this is clean: a later pattern began after it
LINKED_CLIENTS = 8  # other keys remembered per client for shared fingerprints


class QueryPatternSettings(BaseModel):
    """Per-client query-pattern detection (`suspicious_client`)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    reference_size: int = Field(3000, ge=200)  # events that define the input profile
    calibration_queries: int = Field(30_000, ge=1000)  # then benign statistics are frozen
    false_clients_per_thousand: float = Field(1.0, gt=0, le=100)  # per client and day
    max_clients: int = Field(50_000, ge=10)
    buffer_size: int = Field(256, ge=32, le=4096)
    min_queries: int = Field(25, ge=10)
    check_every: int = Field(25, ge=5)
    k_neighbours: int = Field(5, ge=1, le=50)
    repeat_distance: float = Field(0.01, ge=0)  # smaller coordinate change: no change
    entity_changes: int = Field(2, ge=0)  # at most this many coordinates changed: same entity
    low_margin: float = Field(0.1, gt=0, lt=1)  # top-two score gap counted as "low margin"
    rate_window_seconds: float = Field(1800.0, gt=0)
    fingerprint_tables: int = Field(3, ge=1, le=8)
    fingerprint_projections: int = Field(6, ge=2, le=32)
    fingerprint_width: float = Field(0.05, gt=0)  # in robust (IQR) units
    fingerprint_horizon_seconds: float = Field(3600.0, gt=0)
    max_fingerprints: int = Field(65_536, ge=1024)
    fingerprint_salt: str = ""  # salts the projections: attackers cannot aim between buckets
    critical_factor: float = Field(1e-3, gt=0, le=1)  # p below threshold x this: critical
    client_id_key: SecretStr | None = None  # set: clients are known by HMAC-SHA256 only


# Columns of a client's per-query record (one row per query in its ring).
TS, OOD, LOW, SHARED, EXACT, KNN, MIN_DISTANCE = range(7)
# LOW: 1 low margin, 0 not, -1 no score. KNN: log mean distance to the k nearest earlier
# distinct queries (NaN: not enough of them). MIN_DISTANCE: NaN for repeats and the first.


@dataclass(slots=True)
class ClientState:
    """One client's recent queries (a ring of `buffer_size`) and its look bookkeeping."""

    vectors: np.ndarray  # ring of encoded queries, each as [x, |x|^2, 1]
    records: np.ndarray  # ring of per-query records (columns above)
    count: int = 0
    day: int = -1
    day_looks: int = 0
    clean_count: int = 0  # queries seen at the last clean look
    flagged_severity: str | None = None
    last_finding_look: int = 0
    linked: Counter[int] = field(default_factory=Counter)  # other clients' owner hashes

    @classmethod
    def empty(cls, size: int, dim: int) -> ClientState:
        # float32 vectors halve the state (and snapshots); distances that matter are >= 1e-2.
        return cls(np.zeros((size, dim + 2), dtype=np.float32), np.zeros((size, 7)))

    @property
    def filled(self) -> int:
        return min(self.count, len(self.records))

    def push(self, vectors: np.ndarray, records: np.ndarray) -> None:
        """Appends queries to the ring; only the newest `buffer_size` are kept."""
        size, m = len(self.records), len(records)
        if m > size:
            vectors, records = vectors[-size:], records[-size:]
            self.count += m - size
            m = size
        slots = (self.count + np.arange(m)) % size
        self.vectors[slots] = vectors
        self.records[slots] = records
        self.count += m

    def window(self) -> np.ndarray:
        """The records of the queries in the ring (in ring order, not arrival order)."""
        return self.records[: self.filled]


class QueryPatternDetector(ProfiledDetector):
    """`suspicious_client` per client; see the module docstring for the method."""

    name = "query_patterns"

    def __init__(self, model: str, settings: QueryPatternSettings | None = None) -> None:
        self.settings = settings or QueryPatternSettings()
        super().__init__(model, self.settings.reference_size)
        self.clients: OrderedDict[str, ClientState] = OrderedDict()
        self.evicted = 0
        self.anonymous = 0  # queries without a client: not attributable, not tracked
        self.owner_names: OrderedDict[int, str] = OrderedDict()  # owner hash -> client
        size = 1 << max(10, (self.settings.max_fingerprints - 1).bit_length())
        self.fp_keys = np.zeros(size, dtype=np.int64)  # the shared fingerprint table
        self.fp_owners = np.zeros(size, dtype=np.int64)
        self.fp_ts = np.full(size, -np.inf)
        self.exact_weights = np.zeros(0)
        self.calibration_left = self.settings.calibration_queries
        self.samples: dict[str, list[float]] = {d: [] for d in DETECTORS}  # benign values
        self.tails: dict[str, TailPValue] = {}
        self.projections = np.zeros((0, 0))
        self.offsets = np.zeros(0)
        self.hash_weights = np.zeros(0, dtype=np.int64)
        self.novel_knn = 0.0  # log k-NN distance of a typical reference query

    @property
    def calibrated(self) -> bool:
        return self.calibration_left <= 0 and bool(self.tails)

    # --- the hot path -------------------------------------------------------------------

    def update(self, batch: ModelBatch) -> list[Finding]:
        if not self.settings.enabled or len(batch) == 0:
            return []
        start = self._monitored_from(batch)
        if start is None:
            return []
        assert self.profile is not None
        x = self.profile.encode(batch)[start:]
        n = len(x)
        keyed = {c: self._client_key(c) for c in set(batch.clients[start:])}
        clients = [keyed[c] for c in batch.clients[start:]]
        names = sorted({c for c in clients if c is not None})
        if not names:  # no caller identified in this batch: nothing per client to judge
            self.anonymous += n
            return []
        owners = {c: _owner_hash(c) for c in names}
        owner = np.fromiter((owners.get(c, 0) for c in clients), np.int64, n)
        records = np.empty((n, 7))
        records[:, TS] = batch.ts[start:]
        records[:, OOD] = self.profile.anomalies(batch)[start:].any(axis=1)
        records[:, LOW] = _low_margin(batch, self.settings.low_margin)[start:]
        shared, linked = self._shared_fingerprints(x, records[:, TS], owner)
        records[:, SHARED] = shared
        records[:, EXACT] = x.round(6) @ self.exact_weights
        self.anonymous += int((owner == 0).sum())
        order = np.argsort(owner, kind="stable")  # each client's queries, in arrival order
        bounds = np.flatnonzero(np.diff(owner[order])) + 1
        groups = [(clients[i[0]], i) for i in np.split(order, bounds) if clients[i[0]] is not None]
        # Stored as [x, |x|^2, 1] and queried as [-2x, 1, |x|^2]: one product is then the
        # squared distance, so each client costs a single matrix product.
        norms = np.einsum("ij,ij->i", x, x)[:, None]
        ones = np.ones((n, 1))
        stored = np.hstack([x, norms, ones])
        query = np.hstack([-2.0 * x, ones, norms])
        # Squared distances of each query to its client's earlier queries (ring, then the
        # earlier ones of this batch), one row per query padded with inf; then the nearest
        # candidates of all clients are screened at once.
        states, pools = [], []
        for client, idx in groups:
            state = self._state(client, owners[client])
            states.append(state)
            pools.append(np.concatenate([state.vectors[: state.filled], stored[idx]]))
        width = max(len(pool) for pool in pools)
        d2 = np.full((n, width), np.inf, dtype=np.float32)  # ranking needs no more
        for (_, idx), state, pool in zip(groups, states, pools, strict=True):
            block = query[idx] @ pool.T
            block[:, state.filled :] += _not_earlier(len(idx))
            d2[idx, : len(pool)] = block
        cand = min(3 * self.settings.k_neighbours, width)
        chosen = np.argpartition(d2, cand - 1, axis=1)[:, :cand]
        vectors = np.empty((n, cand, x.shape[1]))
        for (_, idx), pool in zip(groups, pools, strict=True):
            vectors[idx] = pool[np.minimum(chosen[idx], len(pool) - 1), : x.shape[1]]
        nearest = np.full((n, self.settings.k_neighbours), np.inf)
        found = self._neighbours(x, vectors, d2[np.arange(n)[:, None], chosen])
        nearest[:, : found.shape[1]] = found
        closest = nearest.min(axis=1)
        records[:, MIN_DISTANCE] = np.where(np.isfinite(closest), np.sqrt(np.abs(closest)), np.nan)
        enough = np.isfinite(nearest[:, -1])
        records[:, KNN] = np.nan
        records[enough, KNN] = np.log(np.sqrt(np.maximum(nearest[enough], 0)).mean(axis=1) + 1e-6)
        findings = []
        s = self.settings
        for (client, idx), state in zip(groups, states, strict=True):
            before = state.count
            state.push(stored[idx], records[idx])
            for other in linked.get(owners[client], ()):
                state.linked[other] += 1
            if len(state.linked) > LINKED_CLIENTS:
                state.linked = Counter(dict(state.linked.most_common(LINKED_CLIENTS)))
            if state.count >= s.min_queries and (
                state.count // s.check_every > before // s.check_every
            ):
                finding = self._look(client, state, batch, start + int(idx[-1]))
                if finding is not None:
                    findings.append(finding)
        if self.calibration_left > 0:
            self.calibration_left -= n
            if self.calibration_left <= 0:
                self._freeze_calibration()
        return findings

    def _client_key(self, client: str | None) -> str | None:
        key = self.settings.client_id_key
        if client is None or key is None:
            return client
        digest = hmac.new(key.get_secret_value().encode(), client.encode(), hashlib.sha256)
        return "hmac:" + digest.hexdigest()[:32]

    def _state(self, client: str, owner: int) -> ClientState:
        state = self.clients.get(client)
        if state is None:
            if len(self.clients) >= self.settings.max_clients:
                self.clients.popitem(last=False)
                self.evicted += 1
            assert self.profile is not None
            state = ClientState.empty(self.settings.buffer_size, self.profile.dim)
            self.clients[client] = state
            self.owner_names[owner] = client
            while len(self.owner_names) > self.settings.max_clients:
                self.owner_names.popitem(last=False)
        else:
            self.clients.move_to_end(client)
        return state

    def _neighbours(self, x: np.ndarray, vectors: np.ndarray, d2: np.ndarray) -> np.ndarray:
        """Squared distances to the k nearest candidates that are not the same entity again.

        `vectors[i]` are query i's candidates (its 3k nearest earlier queries), `d2[i]` their
        squared distances. A candidate that differs from the query in at most
        `entity_changes` coordinates (by more than `repeat_distance`) is the same record
        re-scored, maybe with a field updated: that is use, not probing, and no neighbour.
        Probes (HopSkipJump, JBDA, NES) move every coordinate a little, so they stay close.
        """
        s = self.settings
        changed = (np.abs(vectors - x[:, None, :]) > s.repeat_distance).sum(axis=2)
        d2 = np.where(changed <= s.entity_changes, np.inf, d2)
        keep = min(s.k_neighbours, d2.shape[1])
        return np.partition(d2, keep - 1, axis=1)[:, :keep]

    def _shared_fingerprints(
        self, x: np.ndarray, ts: np.ndarray, owner: np.ndarray
    ) -> tuple[np.ndarray, dict[int, set[int]]]:
        """Whether each query's LSH bucket (in any table) was last hit by another client within
        the horizon, in arrival order across all clients. The table is one open-addressed
        array shared by all clients: fixed size, the newest entry of a slot wins."""
        s = self.settings
        n, tables = len(x), s.fingerprint_tables
        codes = np.floor(x @ self.projections + self.offsets).astype(np.int64)
        keys = (codes.reshape(n, tables, -1) * self.hash_weights).sum(axis=2)
        keys = keys * tables + np.arange(tables)  # (n, tables): the table is part of the key
        keys, rows = keys.ravel(), np.repeat(np.arange(n), tables)
        slots = keys & (len(self.fp_keys) - 1)
        # Within the batch, a query's predecessor in its slot is the previous query there;
        # the first of each slot is compared with what the table holds.
        order = np.lexsort((rows, slots))
        slots_o, keys_o, rows_o = slots[order], keys[order], rows[order]
        first = np.ones(len(order), dtype=bool)
        first[1:] = slots_o[1:] != slots_o[:-1]
        prev_key = np.where(first, self.fp_keys[slots_o], np.roll(keys_o, 1))
        prev_owner = np.where(first, self.fp_owners[slots_o], np.roll(owner[rows_o], 1))
        prev_ts = np.where(first, self.fp_ts[slots_o], np.roll(ts[rows_o], 1))
        hit = (
            (prev_key == keys_o)
            & (prev_owner != 0)
            & (prev_owner != owner[rows_o])
            & (ts[rows_o] - prev_ts <= s.fingerprint_horizon_seconds)
            & (owner[rows_o] != 0)
        )
        shared = np.zeros(n, dtype=bool)
        shared[rows_o[hit]] = True
        linked: dict[int, set[int]] = {}
        for mine, theirs in zip(owner[rows_o[hit]].tolist(), prev_owner[hit].tolist(), strict=True):
            linked.setdefault(mine, set()).add(theirs)
        last = np.ones(len(order), dtype=bool)
        last[:-1] = slots_o[1:] != slots_o[:-1]
        keep = last & (owner[rows_o] != 0)
        self.fp_keys[slots_o[keep]] = keys_o[keep]
        self.fp_owners[slots_o[keep]] = owner[rows_o[keep]]
        self.fp_ts[slots_o[keep]] = ts[rows_o[keep]]
        return shared, linked

    # --- looks: statistics, p-values, findings ------------------------------------------

    def _statistics(self, state: ClientState) -> dict[str, float]:
        """The client's statistics over its ring (and the trailing rate window)."""
        s = self.settings
        records = state.window()
        now = float(records[:, TS].max())
        recent = records[:, TS] >= now - s.rate_window_seconds
        scored = records[:, LOW] >= 0
        stats = {
            "ood_share": float(records[:, OOD].mean()),
            "shared_fingerprints": float(records[:, SHARED].mean()),
        }
        if scored.sum() >= s.min_queries:
            stats["low_margin_share"] = float((records[scored, LOW] == 1).mean())
        knn = records[:, KNN][np.isfinite(records[:, KNN])]
        if len(knn) >= s.min_queries:
            stats["knn_distance"] = -float(knn.mean())  # higher: closer than usual
        distances = records[:, MIN_DISTANCE][np.isfinite(records[:, MIN_DISTANCE])]
        if len(distances) >= s.min_queries and np.ptp(distances) > 0:
            w = float(_shapiro(distances)[0])
            stats["prada_normality"] = -math.log(max(w, 1e-9))  # higher: less normal
        # How fast the client covers new ground: queries in the trailing window that are
        # novel (farther from the client's earlier queries than a typical reference query is
        # from its neighbours). A batch job of similar records or a re-scorer stays low, an
        # extractor or a scraper sampling the whole input space climbs.
        stats["coverage_speed"] = float((recent & (records[:, KNN] > self.novel_knn)).sum())
        stats["rate"] = float(recent.sum())
        return stats

    def _look(
        self, client: str, state: ClientState, batch: ModelBatch, index: int
    ) -> Finding | None:
        stats = self._statistics(state)
        if not self.calibrated:
            # Each client gives at most a few values, so that no single client (a busy
            # one, or an attacker active during calibration) shapes what "benign" means.
            if self.calibration_left > 0 and state.day_looks < CALIBRATION_LOOKS_PER_CLIENT:
                state.day_looks += 1
                for name, value in stats.items():
                    self.samples[name].append(value)
            return None
        p_values = {name: tail(stats[name]) for name, tail in self.tails.items() if name in stats}
        tested = len(self.tails)
        day = int(float(batch.ts[index]) // DAY)
        if day != state.day:
            state.day, state.day_looks = day, 0
        state.day_looks += 1
        j = state.day_looks
        alpha = self.settings.false_clients_per_thousand / 1000
        threshold = alpha / (j * (j + 1))
        combined = min(1.0, tested * min(p_values.values(), default=1.0))
        if combined > CLEAN_P:
            state.clean_count = state.count
        if combined > threshold:
            return None
        critical = combined <= threshold * self.settings.critical_factor
        severity = Severity.CRITICAL if critical else Severity.WARNING
        due = state.flagged_severity is None or (
            severity == Severity.CRITICAL and state.flagged_severity != Severity.CRITICAL
        )
        if not due and j - state.last_finding_look < 20:
            return None
        state.flagged_severity = str(severity)
        state.last_finding_look = j
        return self._finding(
            client, state, batch, index, stats, p_values, tested, threshold, combined, severity
        )

    def _finding(
        self,
        client: str,
        state: ClientState,
        batch: ModelBatch,
        index: int,
        stats: dict[str, float],
        p_values: dict[str, float],
        tested: int,
        threshold: float,
        combined: float,
        severity: Severity,
    ) -> Finding:
        s = self.settings
        per_look = threshold / tested
        fired = sorted((d for d, p in p_values.items() if p <= per_look), key=p_values.get)
        records = state.window()
        ts = np.sort(records[:, TS])
        n = len(ts)
        began = float(ts[max(0, n - (state.count - state.clean_count))])
        gaps = np.diff(ts)
        burstiness = 0.0
        if len(gaps) > 1 and gaps.mean() > 0:
            burstiness = float((gaps.std() - gaps.mean()) / (gaps.std() + gaps.mean()))
        detail_stats = {
            d: {
                "value": round(stats[d], 4),
                "p_value": float(f"{p_values[d]:.3g}"),
                "benign_median": round(self.tails[d].median, 4),
                "benign_tail_start": round(self.tails[d].u, 4),
            }
            for d in p_values
        }
        confidence = -math.log10(max(combined, 1e-300))
        return Finding(
            model=self.model,
            kind=Kind.SUSPICIOUS_CLIENT,
            subject=client,
            severity=severity,
            ts=float(batch.ts[index]),
            position=batch.position(index),
            detector=self.name,
            statistic="bonferroni_min_p",
            value=float(f"{combined:.3g}"),
            threshold=float(f"{threshold:.3g}"),
            effect_size=round(confidence, 2),
            support=min(state.count, s.buffer_size),
            title=f"client {client}: {', '.join(fired) or 'combined evidence'} "
            f"(p={combined:.1e}, {state.count} queries)",
            details={
                "client": client,
                "detectors_fired": fired,
                "statistics": detail_stats,
                "queries_seen": state.count,
                "pattern_began": began,
                "look_of_day": state.day_looks,
                "linked_clients": sorted(
                    self.owner_names.get(o, "(no longer tracked)") for o in state.linked
                ),
                "unique_input_ratio": round(len(np.unique(records[:, EXACT])) / n, 4),
                "burstiness": round(burstiness, 4),
                "queries_per_minute": round(stats["rate"] * 60 / s.rate_window_seconds, 3),
                "tracked_clients": len(self.clients),
                "evicted_clients": self.evicted,
            },
        )

    # --- learning the reference and the benign population --------------------------------

    def _learn(self, numeric: dict[str, np.ndarray], categorical: dict[str, np.ndarray]) -> None:
        s = self.settings
        self.profile = InputProfile(numeric, categorical)
        dim = self.profile.dim
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
        encoded = self.profile.encode(reference_batch(numeric, categorical))
        ring, queries = encoded[: s.buffer_size], encoded[s.buffer_size :]
        d2 = (queries**2).sum(axis=1)[:, None] + (ring**2).sum(axis=1)[None, :]
        d2 -= 2 * queries @ ring.T
        cand = min(3 * s.k_neighbours, len(ring))
        chosen = np.argpartition(d2, cand - 1, axis=1)[:, :cand]
        found = self._neighbours(queries, ring[chosen], np.take_along_axis(d2, chosen, axis=1))
        nearest = np.sqrt(np.maximum(found, 0)).mean(axis=1)
        finite = nearest[np.isfinite(nearest)]
        self.novel_knn = float(np.median(np.log(finite + 1e-6))) if len(finite) else 0.0

    def _freeze_calibration(self) -> None:
        """Benign statistics -> p-value models; detectors with too few values stay off."""
        for name, values in self.samples.items():
            if len(values) >= MIN_CALIBRATION_VALUES:
                self.tails[name] = TailPValue(np.array(values), min_scale=0.05)
        self.samples = {d: [] for d in DETECTORS}
        for state in self.clients.values():
            state.day_looks = 0  # calibration looks are not tests: the budget starts now


def _low_margin(batch: ModelBatch, margin: float) -> np.ndarray:
    """1 where the top two class scores (or a single score and 0.5) are within `margin`,
    0 where they are not, -1 where the event carries no score."""
    out = np.full(len(batch), -1, dtype=np.int8)
    for i, scores in enumerate(batch.scores):
        if scores:
            top = sorted(scores.values(), reverse=True)
            gap = top[0] - top[1] if len(top) > 1 else abs(2 * top[0] - 1)
            out[i] = gap < margin
    if batch.score is not None:
        single = np.flatnonzero((out < 0) & np.isfinite(batch.score))
        out[single] = np.abs(2 * batch.score[single] - 1) < margin
    return out


def _owner_hash(client: str) -> int:
    """A stable 64-bit id for a client (never 0, which marks "no client")."""
    value = int.from_bytes(hashlib.blake2b(client.encode(), digest_size=8).digest(), "big")
    return (value >> 1) or 1


@lru_cache(maxsize=64)
def _not_earlier_cached(m: int) -> np.ndarray:
    return np.triu(np.full((m, m), np.inf))


def _not_earlier(m: int) -> np.ndarray:
    """+inf where query j of a batch is not earlier than query i (j >= i), else 0."""
    return _not_earlier_cached(m) if m <= 256 else np.triu(np.full((m, m), np.inf))
