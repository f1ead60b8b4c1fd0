"""Suspicious clients: per-caller detection of model extraction, boundary probing and abuse.

Every query is scaled and encoded through the model's reference `InputProfile`, then appended
to its client's bounded ring of recent queries (at most `buffer_size`). The rings of all
clients fit in `max_state_mb`, whatever the number of clients: the detector tracks at most
min(`max_clients`, `max_state_mb` / one ring's bytes) clients, the least recently seen evicted
and counted. Per query, in micro-batches with numpy:

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

Cost: every query is measured and every look computes every statistic (nothing is sampled),
with no numpy call per client. The batch is grouped by client once; clients' rings are rows
of shared arrays, stored in one step; runs of similar clients (`_segments`) get their
distances from one padded batched product and their nearest candidates from one
`np.partition` of the distances' bit patterns as int32 (`_smallest`); the entity check looks
at the k nearest candidates first. The looks due in a batch are computed together:
statistics as arrays over clients, Shapiro-Wilk W from cached coefficients (`_shapiro_w`),
one p-value call per statistic. OpenBLAS worker threads spinning after larger products can
double the CPU time: the agent runs with one BLAS thread (`agent/__init__.py`).
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections import Counter, OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain
from typing import Any

import numpy as np
from numpy.polynomial import polynomial
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from scipy.special import ndtri

from detectors.base import Finding, Kind, Severity
from detectors.calibration import TailPValue
from detectors.input_anomaly import (
    InputProfile,
    ProfiledDetector,
    reference_batch,
)
from streams.batch import ModelBatch

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
# A padded distance block's fixed cost (its numpy calls), in distance entries: a client group
# joins a block unless that adds more padding than this (`_segments`).
SEGMENT_OVERHEAD = 20_000


class QueryPatternSettings(BaseModel):
    """Per-client query-pattern detection (`suspicious_client`).

    Memory: `max_state_mb` bounds the per-client rings whatever the number of clients
    (config key `detectors.query_patterns.max_state_mb`); see docs/query-patterns.md."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    reference_size: int = Field(3000, ge=200)  # events that define the input profile
    calibration_queries: int = Field(30_000, ge=1000)  # then benign statistics are frozen
    false_clients_per_thousand: float = Field(1.0, gt=0, le=100)  # per client and day
    max_clients: int = Field(50_000, ge=10)
    # MiB for the rings of all tracked clients (per model and partition): at most
    # budget / (buffer_size x (4 (dim + 2) + 56)) clients are tracked (about 1,200 at the
    # default with 38 encoded features), if fewer than max_clients; beyond, the least
    # recently seen is evicted (see `_states`). Snapshots hold only the entries in use.
    max_state_mb: float = Field(64.0, ge=0.5, le=65_536)
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
_NO_RECORD = np.array([-np.inf, 0, -1, 0, 0, np.nan, np.nan])  # counts in no statistic
# LOW: 1 low margin, 0 not, -1 no score. KNN: log mean distance to the k nearest earlier
# distinct queries (NaN: not enough of them). MIN_DISTANCE: NaN for repeats and the first.


@dataclass(slots=True)
class ClientState:
    """One client's look bookkeeping; its ring of recent queries is row `slot` of the
    detector's ring arrays (one array for all clients, so a batch is stored in one step)."""

    slot: int
    count: int = 0
    day: int = -1
    day_looks: int = 0
    clean_count: int = 0  # queries seen at the last clean look
    flagged_severity: str | None = None
    last_finding_look: int = 0
    # Other clients' owner hashes; None until the first (most clients never get one).
    linked: Counter[int] | None = None


def _client_state(client: ClientState) -> list[Any]:
    """A client's bookkeeping as plain data (its links as (owner, count) pairs)."""
    linked = None if client.linked is None else list(client.linked.items())
    return [
        client.slot,
        client.count,
        client.day,
        client.day_looks,
        client.clean_count,
        client.flagged_severity,
        client.last_finding_look,
        linked,
    ]


def _client_of_state(values: list[Any]) -> ClientState:
    *fields, linked = values
    return ClientState(*fields, linked=None if linked is None else Counter(dict(linked)))


class QueryPatternDetector(ProfiledDetector):
    """`suspicious_client` per client; see the module docstring for the method."""

    name = "query_patterns"

    def __init__(self, model: str, settings: QueryPatternSettings | None = None) -> None:
        self.settings = settings or QueryPatternSettings()
        super().__init__(model, self.settings.reference_size)
        self.clients: OrderedDict[str, ClientState] = OrderedDict()
        self.evicted = 0
        self.untracked = 0  # queries of new clients beyond the cap in an over-full batch
        self.anonymous = 0  # queries without a client: not attributable, not tracked
        self.owner_names: OrderedDict[int, str] = OrderedDict()  # owner hash -> client
        # Rings of recent queries, row `slot` per client: encoded queries as [x, |x|^2, 1]
        # (float32 halves the state; distances that matter are >= 1e-2) and their records.
        # Sized in `_learn`; `tracked_cap()` rows (the memory budget) at the first client.
        self.ring_vectors = np.zeros((0, self.settings.buffer_size, 0), dtype=np.float32)
        self.ring_records = np.zeros((0, self.settings.buffer_size, 7))
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

    def tracked_cap(self) -> int:
        """How many clients can be tracked at once: `max_clients`, or fewer when their full
        rings would not fit in `max_state_mb` (at least one). Known once the encoded
        dimension is (`_learn`); before that, `max_clients`."""
        s = self.settings
        width = self.ring_vectors.shape[2]
        if width == 0:
            return s.max_clients
        per_client = s.buffer_size * (self.ring_vectors.itemsize * width + 7 * 8)
        return max(1, min(s.max_clients, int(s.max_state_mb * 2**20) // per_client))

    def state(self) -> dict[str, Any]:
        """Plain data, with only the ring entries in use: clients hold slots 0..n-1 and a
        ring fills from its start, so spare rows and the unfilled ends of rings (most of a
        ring for the many clients that send a few queries) are left out; `load_state`
        rebuilds the arrays."""
        size = self.settings.buffer_size
        fill = np.zeros(len(self.clients), dtype=np.int64)
        for client in self.clients.values():
            fill[client.slot] = min(client.count, size)
        used = np.arange(size) < fill[:, None]
        return {
            **self.profiled_state(),
            "clients": [[name, *_client_state(c)] for name, c in self.clients.items()],
            "evicted": self.evicted,
            "untracked": self.untracked,
            "anonymous": self.anonymous,
            "owner_names": list(self.owner_names.items()),
            "ring_fill": fill,
            "ring_width": self.ring_vectors.shape[2],
            "ring_vectors": self.ring_vectors[: len(fill)][used],
            "ring_records": self.ring_records[: len(fill)][used],
            "fp_keys": self.fp_keys,
            "fp_owners": self.fp_owners,
            "fp_ts": self.fp_ts,
            "exact_weights": self.exact_weights,
            "calibration_left": self.calibration_left,
            "samples": self.samples,
            "tails": {name: tail.state() for name, tail in self.tails.items()},
            "projections": self.projections,
            "offsets": self.offsets,
            "hash_weights": self.hash_weights,
            "novel_knn": self.novel_knn,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.load_profiled(state)
        self.clients = OrderedDict(
            (name, _client_of_state(values)) for name, *values in state["clients"]
        )
        self.evicted, self.untracked = state["evicted"], state["untracked"]
        self.anonymous = state["anonymous"]
        self.owner_names = OrderedDict((owner, name) for owner, name in state["owner_names"])
        fill = state["ring_fill"]
        size = self.settings.buffer_size
        used = np.arange(size) < fill[:, None]
        width = state["ring_width"]
        self.ring_vectors = np.zeros((len(fill), size, width), dtype=np.float32)
        self.ring_records = np.zeros((len(fill), size, 7))
        self.ring_vectors[used] = state["ring_vectors"]
        self.ring_records[used] = state["ring_records"]
        self.fp_keys, self.fp_owners = state["fp_keys"], state["fp_owners"]
        self.fp_ts = state["fp_ts"]
        self.exact_weights = state["exact_weights"]
        self.calibration_left = state["calibration_left"]
        self.samples = state["samples"]
        self.tails = {name: TailPValue.of_state(t) for name, t in state["tails"].items()}
        self.projections, self.offsets = state["projections"], state["offsets"]
        self.hash_weights = state["hash_weights"]
        self.novel_knn = state["novel_knn"]
        self._fit_budget()

    def _fit_budget(self) -> None:
        """Brings restored state within the budget (an older checkpoint may hold more
        clients or rows): the least recently seen clients beyond the cap are evicted and the
        rest moved to slots 0..n-1."""
        cap = self.tracked_cap()
        if len(self.ring_records) <= cap:
            return
        while len(self.clients) > cap:
            self.clients.popitem(last=False)
            self.evicted += 1
        slots = [client.slot for client in self.clients.values()]
        self.ring_vectors = self.ring_vectors[slots]
        self.ring_records = self.ring_records[slots]
        for slot, client in enumerate(self.clients.values()):
            client.slot = slot

    def window(self, state: ClientState) -> np.ndarray:
        """The records of a client's queries in its ring (ring order, not arrival order)."""
        return self.ring_records[state.slot, : min(state.count, self.settings.buffer_size)]

    # --- the hot path -------------------------------------------------------------------

    def update(self, batch: ModelBatch) -> list[Finding]:
        if not self.settings.enabled or len(batch) == 0:
            return []
        start = self._monitored_from(batch)
        if start is None:
            return []
        assert self.profile is not None
        s = self.settings
        x = self.profile.encode(batch)[start:]
        n = len(x)
        # Each distinct caller once: its index in this batch, key, owner hash and state.
        callers = batch.clients[start:]
        seen = {c: i for i, c in enumerate(dict.fromkeys(callers))}  # in order of arrival
        codes = np.fromiter(map(seen.__getitem__, callers), np.int64, len(callers))
        names = [self._client_key(c) for c in seen]
        owners = np.array([0 if c is None else _owner_hash(c) for c in names], dtype=np.int64)
        states = self._states(names, owners.tolist())
        owner = owners[codes]
        self.anonymous += int((owner == 0).sum())
        untracked = np.array([st is None for st in states]) & (owners != 0)
        self.untracked += int(untracked[codes].sum())
        if all(state is None for state in states):
            return []
        ts = batch.ts[start:]
        shared, linked = self._shared_fingerprints(x, ts, owner)
        # Tracked queries grouped by client (arrival order within), clients sorted by the
        # size class of their group (1, 2-3, 4-7, ... queries in this batch), then by how many
        # earlier queries each query is compared with (ring + this batch): `_nearest` pads
        # runs of similar clients into one block.
        filled = np.array([0 if st is None else min(st.count, s.buffer_size) for st in states])
        per_client = np.bincount(codes, minlength=len(names))
        size_class = np.frexp(per_client)[1]
        rows = np.flatnonzero(np.array([st is not None for st in states])[codes])
        row_codes = codes[rows]
        keys = (row_codes, (filled + per_client)[row_codes], size_class[row_codes])
        order = rows[np.lexsort(keys)]
        sorted_codes = codes[order]
        m = len(order)
        first = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
        sizes = np.diff(np.r_[first, m])
        group_codes = sorted_codes[first]

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
        records = np.empty((m, 7))
        records[:, TS] = ts[order]
        records[:, OOD] = self.profile.anomalies(batch)[start:].any(axis=1)[order]
        records[:, LOW] = _low_margin(batch, s.low_margin)[start:][order]
        records[:, SHARED] = shared[order]
        records[:, EXACT] = xs.round(6) @ self.exact_weights
        group_states = [states[c] for c in group_codes.tolist()]
        slots = np.array([st.slot for st in group_states])
        nearest = self._nearest(stored, query, slots, filled[group_codes], first, sizes)
        closest = nearest.min(axis=1)
        records[:, MIN_DISTANCE] = np.where(np.isfinite(closest), np.sqrt(np.abs(closest)), np.nan)
        enough = np.isfinite(nearest[:, -1])
        records[:, KNN] = np.nan
        records[enough, KNN] = np.log(np.sqrt(np.maximum(nearest[enough], 0)).mean(axis=1) + 1e-6)
        counts = np.array([st.count for st in group_states])
        self._push(stored, records, slots, counts, first, sizes)

        # Counts and links per client; the clients due for a look are then looked at together.
        due: list[tuple[str, ClientState, int]] = []
        latest = (start + order[first + sizes - 1]).tolist()  # each client's latest query
        check, least = s.check_every, s.min_queries
        for state, code, index, size in zip(
            group_states, group_codes.tolist(), latest, sizes.tolist(), strict=True
        ):
            before = state.count
            state.count = after = before + size
            if linked and (others := linked.get(int(owners[code]))):
                if state.linked is None:
                    state.linked = Counter()
                state.linked.update(others)
                if len(state.linked) > LINKED_CLIENTS:
                    state.linked = Counter(dict(state.linked.most_common(LINKED_CLIENTS)))
            if after >= least and after // check > before // check:
                due.append((names[code], state, index))
        findings = self._looks(due, batch)
        if self.calibration_left > 0:
            self.calibration_left -= n
            if self.calibration_left <= 0:
                self._freeze_calibration()
        return [finding for _, finding in sorted(findings, key=lambda pair: pair[0])]

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
        for i, name in enumerate(names):
            if name is not None and name in self.clients:
                self.clients.move_to_end(name)
                states[i] = self.clients[name]
        # Tracked clients not in this batch: the front of the LRU order, the only ones evicted.
        evictable = len(self.clients) - sum(state is not None for state in states)
        for i, name in enumerate(names):
            if name is None or states[i] is not None:
                continue
            if len(self.clients) < cap:
                slot = len(self.clients)
                self._reserve(slot + 1, cap)
            elif evictable > 0:
                _, evicted = self.clients.popitem(last=False)
                self.evicted += 1
                evictable -= 1
                slot = evicted.slot
            else:
                continue  # over-full batch: not tracked
            states[i] = self.clients[name] = ClientState(slot)
            self.owner_names[owners[i]] = name
            while len(self.owner_names) > self.settings.max_clients:
                self.owner_names.popitem(last=False)
        return states

    def _reserve(self, rows: int, cap: int) -> None:
        """Makes the ring arrays hold `rows` clients: at the first need, they are allocated
        at `cap` rows at once. np.zeros maps zero pages that take memory only once written,
        so the arrays cost the rows in use, and growing never copies (doubling did: the old
        and new arrays together took up to 1.5x the budget)."""
        have = len(self.ring_records)
        if rows <= have:
            return
        size, dim = self.settings.buffer_size, self.ring_vectors.shape[2]
        vectors = np.zeros((cap, size, dim), dtype=np.float32)
        records = np.zeros((cap, size, 7))
        vectors[:have], records[:have] = self.ring_vectors, self.ring_records
        self.ring_vectors, self.ring_records = vectors, records

    def _nearest(
        self,
        stored: np.ndarray,
        query: np.ndarray,
        slots: np.ndarray,
        filled: np.ndarray,
        first: np.ndarray,
        sizes: np.ndarray,
    ) -> np.ndarray:
        """Squared distances of each query to its k nearest earlier queries of its client
        (ring, then the earlier ones of this batch) that are not the same entity; inf when
        fewer. Rows are grouped by client (group g: rows first[g] to first[g] + sizes[g]).

        Consecutive groups of similar shape (`_segments`) form one padded block, clients x
        queries x (ring + batch) columns, from two batched products: the cost is a few numpy
        calls per block rather than per client. Padding is masked with +inf (ring columns
        beyond a client's fill, batch columns not earlier than the query) and padded query
        rows are dropped before the partition."""
        s = self.settings
        size, dim = s.buffer_size, stored.shape[1] - 2
        nearest = np.full((len(stored), s.k_neighbours), np.inf)
        flat = self.ring_vectors.reshape(-1, dim + 2)
        for group, end in _segments(filled, sizes):
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
                product = np.matmul(ring, queries.transpose(0, 2, 1))
                if int(seg_filled.min()) < rows_f:
                    unfilled = np.arange(rows_f) >= seg_filled[:, None]
                    np.copyto(product, np.inf, where=unfilled[:, :, None])
                d2[:, :rows_f] = product[client, :, nth]
            batch_part = np.matmul(queries, stored[rows].transpose(0, 2, 1))
            batch_part += _not_earlier(rows_q)
            d2[:, rows_f:] = batch_part[client, nth]
            k = min(s.k_neighbours, d2.shape[1])
            values, cols = _smallest(d2, min(3 * s.k_neighbours, d2.shape[1]))
            # Usually none of the k nearest candidates is the same entity again, and then they
            # are the answer: all the candidates are checked only for rows where one is.
            x = stored[top:bottom]
            ring_base = (seg_slots * size)[client, None]
            batch_base = seg_first[client, None] - rows_f
            vectors = _candidates(flat, stored, size, rows_f, ring_base, batch_base, cols[:, :k])
            found = values[:, :k]
            redo = np.flatnonzero(self._same_entity(x, vectors, dim).any(axis=1))
            if len(redo):
                vectors = _candidates(
                    flat, stored, size, rows_f, ring_base[redo], batch_base[redo], cols[redo]
                )
                found[redo] = self._neighbours(x[redo], vectors, values[redo], dim)
            nearest[top:bottom, :k] = found
        return nearest

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
        keep = rank >= np.repeat(sizes, sizes) - size
        row_slot = np.repeat(slots, sizes)[keep]
        position = (np.repeat(counts, sizes)[keep] + rank[keep]) % size
        self.ring_vectors[row_slot, position] = stored[keep]
        self.ring_records[row_slot, position] = records[keep]

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
        d2 = np.where(self._same_entity(x, vectors, dim), np.inf, d2)
        keep = min(self.settings.k_neighbours, d2.shape[1])
        d2.partition(keep - 1, axis=1)  # in place: d2 is a fresh array
        return d2[:, :keep]

    def _same_entity(self, x: np.ndarray, vectors: np.ndarray, dim: int) -> np.ndarray:
        """Whether each candidate `vectors[i, j]` differs from query `x[i]` in at most
        `entity_changes` of the first `dim` coordinates (by more than `repeat_distance`).
        `vectors` is overwritten (it is a fresh gather; this is the hot path)."""
        s = self.settings
        diff = np.subtract(vectors, x[:, None, :], out=vectors)
        np.abs(diff, out=diff)
        np.greater(diff, s.repeat_distance, out=diff)  # 1.0 where a coordinate changed
        counted = np.zeros(diff.shape[2], dtype=diff.dtype)
        counted[:dim] = 1.0
        return diff @ counted <= s.entity_changes  # a product is the fastest count

    def _shared_fingerprints(
        self, x: np.ndarray, ts: np.ndarray, owner: np.ndarray
    ) -> tuple[np.ndarray, dict[int, set[int]]]:
        """Whether each query's LSH bucket (in any table) was last hit by another client within
        the horizon, in arrival order across all clients. The table is one open-addressed
        array shared by all clients: fixed size, the newest entry of a slot wins."""
        s = self.settings
        n, tables = len(x), s.fingerprint_tables
        codes = np.floor(x @ self.projections + self.offsets).astype(np.int64)
        keys = (codes.reshape(n * tables, -1) @ self.hash_weights).reshape(n, tables)
        keys = keys * tables + np.arange(tables)  # (n, tables): the table is part of the key
        keys, rows = keys.ravel(), np.repeat(np.arange(n), tables)
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
        prev_key = _previous(keys_o, first, self.fp_keys[slots_o[first]])
        prev_owner = _previous(owner_o, first, self.fp_owners[slots_o[first]])
        prev_ts = _previous(ts_o, first, self.fp_ts[slots_o[first]])
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
        self.fp_keys[slots_o[keep]] = keys_o[keep]
        self.fp_owners[slots_o[keep]] = owner_o[keep]
        self.fp_ts[slots_o[keep]] = ts_o[keep]
        return shared, linked

    # --- looks: statistics, p-values, findings ------------------------------------------

    def _statistics(self, states: list[ClientState]) -> dict[str, np.ndarray]:
        """Each client's statistics over its ring (and the trailing rate window); NaN where
        one is not defined (too few values). All clients at once: one gather of their rings
        and a few array operations, instead of a dozen numpy calls per client."""
        s = self.settings
        size = s.buffer_size
        slots = np.fromiter((state.slot for state in states), np.int64, len(states))
        counts = np.fromiter((state.count for state in states), np.int64, len(states))
        n = np.minimum(counts, size)
        records = np.take(self.ring_records, slots, axis=0)
        if n.min() < size:  # a ring fills from its start: neutral values in the rest
            records[np.arange(size) >= n[:, None]] = _NO_RECORD
        ts, low, knn = records[:, :, TS], records[:, :, LOW], records[:, :, KNN]
        recent = ts >= ts.max(axis=1, keepdims=True) - s.rate_window_seconds
        stats = {
            "ood_share": np.count_nonzero(records[:, :, OOD], axis=1) / n,
            "shared_fingerprints": np.count_nonzero(records[:, :, SHARED], axis=1) / n,
        }
        scored = np.count_nonzero(low >= 0, axis=1)
        low_count = np.count_nonzero(low == 1, axis=1)
        enough = scored >= s.min_queries
        stats["low_margin_share"] = np.where(enough, low_count / np.maximum(scored, 1), np.nan)
        finite = np.isfinite(knn)
        found = np.count_nonzero(finite, axis=1)
        total = np.where(finite, knn, 0.0).sum(axis=1)
        enough = found >= s.min_queries
        stats["knn_distance"] = np.where(enough, -total / np.maximum(found, 1), np.nan)  # closer
        distances = records[:, :, MIN_DISTANCE]  # finite or NaN, and NaN sorts last
        found = np.count_nonzero(~np.isnan(distances), axis=1)
        w = _shapiro_w(np.sort(distances, axis=1), np.where(found >= s.min_queries, found, 0))
        stats["prada_normality"] = -np.log(np.maximum(w, 1e-9))  # higher: less normal
        # How fast the client covers new ground: queries in the trailing window that are
        # novel (farther from the client's earlier queries than a typical reference query is
        # from its neighbours). A batch job of similar records or a re-scorer stays low, an
        # extractor or a scraper sampling the whole input space climbs.
        novel = recent & (knn > self.novel_knn)
        stats["coverage_speed"] = np.count_nonzero(novel, axis=1).astype(np.float64)
        stats["rate"] = np.count_nonzero(recent, axis=1).astype(np.float64)
        return stats

    def _looks(
        self, due: list[tuple[str, ClientState, int]], batch: ModelBatch
    ) -> list[tuple[int, Finding]]:
        """The looks of the clients due in this batch ((client, state, index of its latest
        query)), their statistics and p-values computed for all of them at once; returns
        (index, finding) for the flagged ones."""
        if not due:
            return []
        if not self.calibrated:
            # Each client gives at most a few values, so that no single client (a busy
            # one, or an attacker active during calibration) shapes what "benign" means.
            if self.calibration_left <= 0:
                return []
            counted = [st for _, st, _ in due if st.day_looks < CALIBRATION_LOOKS_PER_CLIENT]
            if counted:
                for state in counted:
                    state.day_looks += 1
                for name, values in self._statistics(counted).items():
                    self.samples[name].extend(values[~np.isnan(values)].tolist())
            return []
        stats = self._statistics([state for _, state, _ in due])
        p_values = {name: tail.p_values(stats[name]) for name, tail in self.tails.items()}
        tested = len(self.tails)
        smallest = np.ones(len(due))
        for p in p_values.values():
            smallest = np.fmin(smallest, p)  # NaN: that statistic is not defined for a client
        combined = np.minimum(1.0, tested * smallest).tolist()
        days = (batch.ts[[index for _, _, index in due]] // DAY).astype(np.int64).tolist()
        alpha = self.settings.false_clients_per_thousand / 1000
        findings = []
        for i, (client, state, index) in enumerate(due):
            if days[i] != state.day:
                state.day, state.day_looks = days[i], 0
            state.day_looks += 1
            j = state.day_looks
            threshold = alpha / (j * (j + 1))
            if combined[i] > CLEAN_P:
                state.clean_count = state.count
            if combined[i] > threshold:
                continue
            critical = combined[i] <= threshold * self.settings.critical_factor
            severity = Severity.CRITICAL if critical else Severity.WARNING
            first_or_worse = state.flagged_severity is None or (
                severity == Severity.CRITICAL and state.flagged_severity != Severity.CRITICAL
            )
            if not first_or_worse and j - state.last_finding_look < 20:
                continue
            state.flagged_severity = str(severity)
            state.last_finding_look = j
            look_stats = {d: float(v[i]) for d, v in stats.items() if not np.isnan(v[i])}
            look_p = {d: float(p[i]) for d, p in p_values.items() if not np.isnan(p[i])}
            finding = self._finding(
                client,
                state,
                batch,
                index,
                look_stats,
                look_p,
                tested,
                threshold,
                combined[i],
                severity,
            )
            findings.append((index, finding))
        return findings

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
        records = self.window(state)
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
                    self.owner_names.get(o, "(no longer tracked)") for o in state.linked or ()
                ),
                "unique_input_ratio": round(len(np.unique(records[:, EXACT])) / n, 4),
                "burstiness": round(burstiness, 4),
                "queries_per_minute": round(stats["rate"] * 60 / s.rate_window_seconds, 3),
                "tracked_clients": len(self.clients),
                "evicted_clients": self.evicted,
                "untracked_queries": self.untracked,
            },
        )

    # --- learning the reference and the benign population --------------------------------

    def _learn(self, numeric: dict[str, np.ndarray], categorical: dict[str, np.ndarray]) -> None:
        s = self.settings
        self.profile = InputProfile(numeric, categorical)
        dim = self.profile.dim
        self.ring_vectors = np.zeros((0, s.buffer_size, dim + 2), dtype=np.float32)
        self.ring_records = np.zeros((0, s.buffer_size, 7))
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
        count = min(3 * s.k_neighbours, len(ring))
        values, chosen = _smallest(d2.astype(np.float32), count)
        found = self._neighbours(queries, ring[chosen], values, dim)
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
    n = len(batch)
    out = np.full(n, -1, dtype=np.int8)
    present = list(filter(None, batch.scores))
    widths = set(map(len, present))
    every = len(present) == n == len(batch.scores) and len(widths) == 1
    if every and (classes := widths.pop()) >= 2:
        # The usual case, every event with the same number of classes: one matrix.
        flat = chain.from_iterable(map(dict.values, batch.scores))
        top = np.fromiter(flat, np.float64, n * classes).reshape(n, classes)
        if classes == 2:
            gap = np.abs(top[:, 0] - top[:, 1])
        else:  # the two largest of each row, negated, first
            top *= -1
            top.partition(1, axis=1)
            gap = top[:, 1] - top[:, 0]
        out[:] = gap < margin
    else:
        for i, scores in enumerate(batch.scores):
            if scores:
                top = sorted(scores.values(), reverse=True)
                gap = top[0] - top[1] if len(top) > 1 else abs(2 * top[0] - 1)
                out[i] = gap < margin
    if batch.score is not None:
        single = np.flatnonzero((out < 0) & np.isfinite(batch.score))
        out[single] = np.abs(2 * batch.score[single] - 1) < margin
    return out


def _previous(values: np.ndarray, first: np.ndarray, stored: np.ndarray) -> np.ndarray:
    """Each entry's predecessor in `values`, except where `first`: there the table's entries
    (`stored`, in order). A shifted copy and one masked write: cheaper than np.roll and
    np.where over the whole batch."""
    out = np.empty_like(values)
    out[1:] = values[:-1]
    out[first] = stored
    return out


@lru_cache(maxsize=1 << 16)  # the same clients come back batch after batch
def _owner_hash(client: str) -> int:
    """A stable 64-bit id for a client (never 0, which marks "no client")."""
    value = int.from_bytes(hashlib.blake2b(client.encode(), digest_size=8).digest(), "big")
    return (value >> 1) or 1


def _segments(filled: np.ndarray, sizes: np.ndarray) -> list[tuple[int, int]]:
    """Runs [start, end) of consecutive client groups (sorted by size class, then width) that
    `_nearest` computes as one padded block. A group joins the current run unless the padding
    it adds (every client of the run padded to the longest queries and fullest ring) costs
    more than starting a block of its own, whose numpy calls have a fixed cost."""
    runs = []
    start, rows_q, rows_f, padded = 0, 0, 0, 0
    for group, (f, q) in enumerate(zip(filled.tolist(), sizes.tolist(), strict=True)):
        own = q * (f + q)
        grown_q, grown_f = max(rows_q, q), max(rows_f, f)
        grown = (group - start + 1) * grown_q * (grown_f + grown_q)
        if group > start and grown - padded - own > SEGMENT_OVERHEAD:
            runs.append((start, group))
            start, grown_q, grown_f, grown = group, q, f, own
        rows_q, rows_f, padded = grown_q, grown_f, grown
    runs.append((start, len(sizes)))
    return runs


def _candidates(
    flat: np.ndarray,
    stored: np.ndarray,
    size: int,
    filled: int,
    ring_base: np.ndarray,
    batch_base: np.ndarray,
    cols: np.ndarray,
) -> np.ndarray:
    """The vectors of candidate columns `cols` of a padded distance block: column c < `filled`
    is entry c of the ring whose first row in `flat` is `ring_base`, a later one is row
    `batch_base + c` of this batch's `stored` queries. A fresh array (callers overwrite it)."""
    vectors = np.take(flat, ring_base + np.minimum(cols, size - 1), axis=0)
    in_batch = cols >= filled
    if in_batch.any():
        rows = np.minimum(batch_base + cols, len(stored) - 1)
        vectors[in_batch] = stored[rows[in_batch]]
    return vectors


@lru_cache(maxsize=64)
def _not_earlier_cached(m: int) -> np.ndarray:
    return np.triu(np.full((m, m), np.inf, dtype=np.float32))


def _not_earlier(m: int) -> np.ndarray:
    """+inf where query j of a batch is not earlier than query i (j >= i), else 0."""
    return _not_earlier_cached(m) if m <= 256 else np.triu(np.full((m, m), np.inf, np.float32))


def _smallest(d2: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The `count` smallest entries of each row of `d2` (float32, C-contiguous) and their
    columns, ascending (equal values: the lower column first).

    A float's bit pattern, read as int32, orders non-negative floats as their values (a
    negative value, the rounding of a zero distance, sorts first, where it belongs). So one
    partition of the int32 patterns finds each row's count-th smallest value, the entries up to
    it are the row's candidates (where values tie at it, the lower columns), and only those
    are sorted, as (value, column) packed into one int64. Partitioning the block as int32 is
    ~3x faster than as packed int64 keys, and np.argpartition is slower still: this is the
    hot path.
    """
    rows, width = d2.shape
    bits = d2.view(np.int32)
    kth = bits.copy()
    kth.partition(count - 1, axis=1)
    limit = kth[:, count - 1 : count]
    chosen = bits <= limit
    if np.count_nonzero(chosen) > rows * count:  # ties at the limit: the lower columns
        tied = np.flatnonzero(np.count_nonzero(chosen, axis=1) > count)
        equal = bits[tied] == limit[tied]
        spare = count - np.count_nonzero(bits[tied] < limit[tied], axis=1)
        chosen[tied] &= ~equal | (np.cumsum(equal, axis=1) <= spare[:, None])
    flat = np.flatnonzero(chosen)  # row by row, count in each
    shift = max(1, (width - 1).bit_length())
    keys = bits.ravel()[flat].astype(np.int64)
    keys <<= shift
    keys |= flat % width
    keys = keys.reshape(rows, count)
    keys.sort(axis=1)
    columns = keys & ((1 << shift) - 1)
    keys >>= shift
    return keys.astype(np.int32).view(np.float32), columns


# Royston's (1995, AS R94) polynomial corrections of the two most extreme coefficients.
_SW_C1 = (0.0, 0.221157, -0.147981, -2.071190, 4.434685, -2.706056)
_SW_C2 = (0.0, 0.042981, -0.293762, -1.752461, 5.682633, -3.582633)


@lru_cache(maxsize=4096)  # n <= buffer_size
def _shapiro_weights(n: int) -> np.ndarray:
    """Shapiro-Wilk coefficients for n sorted values, as scipy (AS R94) computes them.

    They depend on n only, and rings are mostly full, so caching them makes W one sort and
    two dot products instead of a call into scipy (~20x faster; W agrees to 1e-9)."""
    half = n // 2
    m = ndtri((np.arange(1, half + 1) - 0.375) / (n + 0.25))
    summ2 = 2 * float(m @ m)
    ssumm2 = math.sqrt(summ2)
    rsn = 1 / math.sqrt(n)
    a1 = float(polynomial.polyval(rsn, _SW_C1)) - m[0] / ssumm2
    if n == 3:
        a = np.array([math.sqrt(0.5)])
    elif n > 5:
        a2 = float(polynomial.polyval(rsn, _SW_C2)) - m[1] / ssumm2
        fac = math.sqrt((summ2 - 2 * m[0] ** 2 - 2 * m[1] ** 2) / (1 - 2 * a1**2 - 2 * a2**2))
        a = -m / fac
        a[0], a[1] = a1, a2
    else:
        fac = math.sqrt((summ2 - 2 * m[0] ** 2) / (1 - 2 * a1**2))
        a = -m / fac
        a[0] = a1
    weights = np.zeros(n)
    weights[:half] = -a
    weights[n - half :] = a[::-1]
    return weights


def _shapiro_w(ordered: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Shapiro-Wilk W of each row's first `counts[i]` values (rows sorted ascending, the
    rest ignored): the squared correlation of the sorted values with the coefficients. NaN
    for fewer than 3 values or all equal. Rows of equal length share their coefficients, so
    many clients cost one pass over a matrix."""
    rows, width = ordered.shape
    counts = np.asarray(counts)
    inside = np.arange(width) < counts[:, None]
    values = np.where(inside, ordered, 0.0)
    weights = np.zeros((rows, width))
    for n in np.unique(counts[counts >= 3]).tolist():
        weights[counts == n, :n] = _shapiro_weights(n)
    last = values[np.arange(rows), np.maximum(counts - 1, 0)]
    spread = (counts >= 3) & (last > values[:, 0])
    centred = values - (values.sum(axis=1) / np.maximum(counts, 1))[:, None]
    centred[~inside] = 0.0
    top = np.einsum("ij,ij->i", weights, values) ** 2
    bottom = np.einsum("ij,ij->i", weights, weights) * np.einsum("ij,ij->i", centred, centred)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(spread, top / np.where(spread, bottom, 1.0), np.nan)
