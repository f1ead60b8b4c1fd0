"""Values that come in clients' clusters: the design effect of a window of events.

The drift tests take a window's values as independent draws. API traffic is not: a key
serves its own segment and sends sessions of related queries, so two values from one client
are correlated (the intraclass correlation, rho) and a window in which a few clients hold
much of the traffic (a quiet hour, a heavy user busy, an attacker) varies more than its size
says. The variance of a window's sum is the independent one times the design effect (Kish)

    deff = 1 + rho * (sum_c M_c^2 / N - 1)

for N values of which client c sent M_c. With every value from its own client, or rho 0,
it is 1. `ClientWindows` measures the second factor per event over a trailing window, once
per batch for all of a detector's quantities; `IntraclassCorrelation` estimates rho per
quantity from the pairs of values one client sent within one block, centred on the block's
mean (so that a drift, which moves every client, is not taken for correlation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streams.batch import NO_CLIENT, ModelBatch, knows_clients

# rho is shrunk towards 0 by this many pairs' weight, so that the first blocks, with a few
# pairs, do not set it high by chance (one pair's product has standard deviation 1).
ICC_PRIOR_WEIGHT = 200.0


@dataclass(frozen=True, slots=True)
class ClientContext:
    """Per value of a quantity, its client's id and its event's `ClientWindows` excess."""

    ids: np.ndarray
    excess: np.ndarray
    # BlockGroups by the ids carried over from the last batch and the block size: quantities
    # present in every event share their blocks, so their groups are computed once.
    shared_groups: dict[tuple[bytes, int], BlockGroups] = field(default_factory=dict)
    shared_windows: dict[bytes, WindowClients] = field(default_factory=dict)

    @classmethod
    def of(cls, batch: ModelBatch, windows: ClientWindows) -> ClientContext:
        """A batch's events' context; the events join the windows."""
        ids = batch.client_ids()
        return cls(ids, windows.excess(ids))

    @classmethod
    def of_ids(cls, batch: ModelBatch) -> ClientContext:
        """A batch's events' clients only, for window tests, which measure each window's
        composition themselves (the excess is left 0)."""
        ids = batch.client_ids()
        return cls(ids, np.zeros(len(ids)))

    def take(self, index: np.ndarray) -> ClientContext:
        """The context of the events `index` (a quantity's non-missing values): this one
        when they are all the events."""
        if len(index) == len(self.ids):
            return self
        return ClientContext(self.ids[index], self.excess[index])

    def window(self, ids: np.ndarray) -> WindowClients:
        """The `WindowClients` of one window's ids, computed once for every quantity whose
        window holds the same events."""
        key = ids.tobytes()
        if key not in self.shared_windows:
            self.shared_windows[key] = WindowClients.of(ids)
        return self.shared_windows[key]

    def groups(self, carried: np.ndarray, width: int) -> BlockGroups:
        """The groups of the blocks that `carried` ids (a partial block) and these events'
        complete."""
        key = (carried.tobytes(), width)
        if key not in self.shared_groups:
            ids = np.concatenate([carried, self.ids])
            full = len(ids) // width
            self.shared_groups[key] = BlockGroups.of(ids[: full * width].reshape(full, width))
        return self.shared_groups[key]


class ClientWindows:
    """Per event, `sum_c M_c^2 / N - 1` over the trailing window of `length` events ending at
    it (0 while every event is from a different client). Keeps the last events' client ids,
    so that windows run across batches, and the number of events seen (the first windows
    are shorter)."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.tail = np.zeros(0, dtype=np.int64)  # the ids of the last length - 1 events
        self.seen = 0

    def state(self) -> dict[str, Any]:
        return {"length": self.length, "tail": self.tail, "seen": self.seen}

    @classmethod
    def of_state(cls, state: dict[str, Any]) -> ClientWindows:
        windows = cls(int(state["length"]))
        windows.tail = np.asarray(state["tail"], dtype=np.int64)
        windows.seen = int(state["seen"])
        return windows

    def excess(self, ids: np.ndarray) -> np.ndarray:
        """The excess of the window ending at each of these events (in order), which then
        join the tail."""
        n, length = len(ids), self.length
        # No clients: every window is independent.
        if not knows_clients(ids) and not knows_clients(self.tail):
            self.tail = np.concatenate([self.tail, ids])[-(length - 1) :][: length - 1]
            self.seen += n
            return np.zeros(n)
        every = np.concatenate([self.tail, ids])
        pairs = _window_pairs(every, length)[len(self.tail) :]
        events = np.minimum(length, self.seen + np.arange(1, n + 1))
        self.tail = every[-(length - 1) :] if length > 1 else every[:0]
        self.seen += n
        return 2.0 * pairs / events


def stored_ids(ids: np.ndarray) -> np.ndarray:
    """Client ids as a checkpoint keeps them: none at all where no value has a client (the
    usual stream without clients pays nothing for them)."""
    return ids if knows_clients(ids) else ids[:0]


def loaded_ids(stored: Any, length: int) -> np.ndarray:
    """The ids `stored_ids` kept for `length` values: zeros where it kept none (or where a
    checkpoint from before clients were counted has none)."""
    ids = np.asarray(stored if stored is not None else [], dtype=np.int64)
    return ids if len(ids) == length else np.zeros(length, dtype=np.int64)


@dataclass(frozen=True, slots=True)
class WindowClients:
    """Who sent one window's values: what its design effect and its rho need."""

    own: np.ndarray  # per value, whether it has a client
    client: np.ndarray  # per value with a client, its client's index in the window
    excess: float  # sum_c M_c^2 / N - 1 (values without a client count alone)

    @classmethod
    def of(cls, ids: np.ndarray) -> WindowClients:
        own = ids != NO_CLIENT
        _, client, counts = np.unique(ids[own], return_inverse=True, return_counts=True)
        return cls(own, client, float((counts * (counts - 1)).sum()) / max(len(ids), 1))


def _window_pairs(ids: np.ndarray, length: int) -> np.ndarray:
    """Per position j, the pairs of equal ids (`NO_CLIENT` excepted) among positions
    j - length + 1 .. j: the window's sum_c M_c (M_c - 1) / 2.

    As the window moves by one, it gains the pairs of the entering id with its earlier equals
    in the window and loses those of the leaving id with its later ones; both are counted by
    binary search in the positions sorted by id, so the whole is vectorized."""
    n = len(ids)
    if n == 0:
        return np.zeros(0)
    _, group = np.unique(ids, return_inverse=True)
    position = np.arange(n)
    key = group.astype(np.int64) * (n + 1) + position  # sorted within a group by position
    keys = np.sort(key)
    base = key - position  # the key of position 0 in the same group
    client = ids != NO_CLIENT
    earlier_from = base + np.maximum(position - length + 1, 0)
    entering = np.searchsorted(keys, key) - np.searchsorted(keys, earlier_from)
    later_to = base + np.minimum(position + length - 1, n)
    later = np.searchsorted(keys, later_to, side="right") - np.searchsorted(keys, key, "right")
    entering = np.where(client, entering, 0)
    # The id leaving as the window ends at j is the one at j - length; its later equals then
    # still in the window are those within length - 1 after it, up to j - 1.
    leaving = np.zeros(n, dtype=np.int64)
    if n > length:
        leaving[length:] = np.where(client[:-length], later[:-length], 0)
    return np.cumsum(entering - leaving).astype(np.float64)


class IntraclassCorrelation:
    """rho of one quantity, from the values one client sent within one block.

    Each (block, client) group of M >= 2 values contributes its mean pair product of values
    centred on the block mean, r = (S^2 - Q) / (M (M - 1)), weighted by M - 1: a group of 50
    (an attacker's block) weighs 49, not 2,450 pairs, so a few clients cannot set rho for
    the whole traffic. The centring's bias is undone (`centred_pairs_weight`): rho is the
    weighted sum of r + 1 / B over the weighted sum of the share of rho each group keeps."""

    def __init__(self, weighted_sum: float = 0.0, weight: float = 0.0) -> None:
        self.weighted_sum = weighted_sum
        self.weight = weight

    def state(self) -> list[float]:
        return [self.weighted_sum, self.weight]

    @property
    def value(self) -> float:
        return _shrunk(self.weighted_sum, self.weight)

    def add_categories(self, window: WindowClients, bins: np.ndarray, shares: np.ndarray) -> None:
        """Adds one window of categories (`bins`, indices into the window's `shares`), the
        categories' one-hot vectors standing for values: their pooled intraclass
        correlation is Cohen's kappa of the pairs one client sent (agreement beyond the
        window's own shares, so a drift, which moves every client, is not agreement)."""
        width, own, client = len(bins), window.own, window.client
        if width < 2 or len(client) == 0:
            return
        k = len(shares)
        counts = np.bincount(client * k + bins[own], minlength=(client.max() + 1) * k)
        counts = counts.reshape(-1, k).astype(np.float64)
        m = counts.sum(axis=1)
        grouped = m >= 2
        counts, m = counts[grouped], m[grouped]
        spread = 1.0 - float(shares @ shares)  # the one-hot vectors' total variance
        if spread <= 0 or len(m) == 0:
            return
        # Per client, the sum over its ordered pairs of the centred one-hot products.
        pairs = (
            (counts * (counts - 1)).sum(axis=1)
            - 2 * (m - 1) * (counts @ shares)
            + m * (m - 1) * (1.0 - spread)
        )
        self.weighted_sum += float((pairs / spread / m + (m - 1) / width).sum())
        self.weight += float(centred_pairs_weight(m, np.full(len(m), window.excess), width).sum())

    def through_each(self, groups: BlockGroups, centred: np.ndarray) -> np.ndarray:
        """Adds blocks (the groups of their values by client, and the values centred on each
        block's mean, one row per block) and returns rho as it stood once each block was
        added: a block is judged with what it and the blocks before it taught, however the
        stream was cut into batches. Its own pairs count too (from the first block on,
        before any history): being centred on its own mean, they do not read a drift as
        correlation.

        Centring on the block mean biases a pair's product by about -1/B for unit-variance
        values in blocks of B (each value is part of the mean), which is added back."""
        sums = np.add.reduceat(centred.ravel()[groups.order], groups.first)[groups.kept]
        squares = np.einsum("ij,ij,ij->i", groups.value_weights, centred, centred)
        weighted = (
            np.bincount(groups.rows, sums * sums / groups.sizes, minlength=len(centred))
            - squares
            + groups.bias
        )
        weight = groups.weights
        sum_through = self.weighted_sum + np.cumsum(weighted)
        weight_through = self.weight + np.cumsum(weight)
        self.weighted_sum, self.weight = float(sum_through[-1]), float(weight_through[-1])
        return _shrunk(sum_through, weight_through)


@dataclass(frozen=True, slots=True)
class BlockGroups:
    """The values of blocks (rows of client ids) grouped by (block, client): what every
    quantity with the same blocks shares, computed once per batch."""

    order: np.ndarray  # flat positions, sorted by client within each block
    first: np.ndarray  # where each group starts in that order
    kept: np.ndarray  # per group, whether it counts: two values or more, from a client
    rows: np.ndarray  # the block of each kept group
    sizes: np.ndarray  # the values in each kept group (float)
    value_weights: np.ndarray  # per value (blocks' layout), 1 / its group's size if kept
    weights: np.ndarray  # per block, what its groups tell of rho (`centred_pairs_weight`)
    bias: np.ndarray  # per block, the centring bias added back: sum of M - 1 over B
    excess: np.ndarray  # per block, its own sum_c M_c^2 / B - 1 (`WindowClients.excess`)

    @classmethod
    def of(cls, ids: np.ndarray) -> BlockGroups:
        rows, width = ids.shape
        within = np.argsort(ids, axis=1, kind="stable")
        ids_sorted = np.take_along_axis(ids, within, axis=1).ravel()
        order = (within + (np.arange(rows) * width)[:, None]).ravel()
        starts = np.ones(rows * width, dtype=bool)
        starts[1:] = ids_sorted[1:] != ids_sorted[:-1]
        starts[::width] = True  # a group never spans two blocks
        first = np.flatnonzero(starts)
        sizes = np.diff(np.append(first, rows * width))
        kept = (sizes >= 2) & (ids_sorted[first] != NO_CLIENT)
        group_rows, kept_sizes = first[kept] // width, sizes[kept].astype(np.float64)
        value_weights = np.zeros(rows * width)
        value_weights[order] = np.repeat(np.where(kept, 1.0 / sizes, 0.0), sizes)
        excess = np.bincount(group_rows, kept_sizes * (kept_sizes - 1), minlength=rows) / width
        weights = np.bincount(
            group_rows,
            centred_pairs_weight(kept_sizes, excess[group_rows], width),
            minlength=rows,
        )
        return cls(
            order,
            first,
            kept,
            group_rows,
            kept_sizes,
            value_weights.reshape(rows, width),
            weights,
            np.bincount(group_rows, kept_sizes - 1, minlength=rows) / width,
            excess,
        )


def centred_pairs_weight(sizes: np.ndarray, excess: np.ndarray, width: int) -> np.ndarray:
    """What a client's group of `sizes` values, centred on the mean of a block of `width`
    whose excess is `excess`, tells of rho: its weight M - 1 times the share of rho its
    centred pairs keep. With unit-variance values, a pair's product has expectation
    rho * (1 - 2 (M - 1) / B + excess / B) - 1 / B: the block mean holds part of the
    client's own mean, all of it in a block the client has alone (then the share is 1 / B,
    and such a block says almost nothing of rho)."""
    return (sizes - 1) * (1 - 2 * (sizes - 1) / width + excess / width)


def _shrunk(weighted_sum: Any, weight: Any) -> Any:
    """rho in [0, 1], shrunk towards 0 by `ICC_PRIOR_WEIGHT`."""
    return np.clip(weighted_sum / (weight + ICC_PRIOR_WEIGHT), 0.0, 1.0)
