"""What the cause rules (agent/incidents/causes.py) measure on the data, added to findings' details.

- `client_shares`: for a population-level finding, the share of the events behind it (its
  support, at most `CLIENT_WINDOW` events up to the one that fired) sent by each of the
  busiest clients and by each flagged client among them, named as `suspicious_client`
  incidents name them (`client_subject`): a flagged client (with the keys linked to it) is
  the cause only of what its own queries make.
- `unusual_client_shares` (with `unusual_events`): for a finding on one feature, the shares
  (of the `TOP_UNUSUAL_CLIENTS` busiest senders) among the events behind it whose value the
  reference never had (a category it
  lacks; for a numeric feature with few levels a level it lacks, else a value outside its
  range): a few keys sending values nobody else sends can move a feature while being a
  small share of its events (an attack split over many keys, flagged after its first
  queries), and they are then the cause of what those values did.
- `attribution`: for a drift of the model's numeric output (score or regression
  prediction), how much of the output's mean shift each numeric feature's change reproduces
  through a linear surrogate of the output fitted on the reference (the model itself is not
  available to Bulwark). A feature's share is beta_j * (current mean - reference mean) of the
  standardized feature over the observed shift of the output; `r2` says how much of the
  output's reference variance the surrogate explains, so a reader can weigh the shares.

Neither changes what the detectors detect; both only describe findings that fired.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from typing import Any

import numpy as np

CLIENT_WINDOW = 5000  # events of a model kept for client shares
MIN_EVENTS = 100  # fewest events a share or an attribution is measured on
MIN_UNUSUAL = 10  # fewest unusual events their shares are measured on
MAX_LEVELS = 32  # a numeric feature with at most this many values in the reference: levels
TOP_CLIENTS = 3
# Senders of unusual values named: enough for a client split over many keys to be named
# whole while the keys are not flagged yet (a drift they make can fire before their flags).
TOP_UNUSUAL_CLIENTS = 16
TOP_FEATURES = 5


def client_subject(client: str, key: str | None) -> str:
    """The name a client goes by in incidents: the id as given, or with
    `detectors.query_patterns.client_id_key` set, its HMAC-SHA256 (as the query-pattern
    detector names it; tests/test_causes.py holds the two together), so that no raw id is
    stored when the key says not to."""
    if key is None:
        return client
    digest = hmac.new(key.encode(), client.encode(), hashlib.sha256)
    return "hmac:" + digest.hexdigest()[:32]


def client_shares(
    clients: Sequence[str | None],
    name: Callable[[str], str] = str,
    flagged: Collection[str] = (),
    least: int = MIN_EVENTS,
    top: int = TOP_CLIENTS,
) -> dict[str, float]:
    """The shares of the given events (None: no client given) of the `top` busiest clients
    and of every `flagged` one among them, keyed by `name(client)`; none with fewer than
    `least` events. The flagged: a client split over many keys sends a little from each,
    and the cause rule adds its linked keys' shares up (agent/incidents/causes.py)."""
    if len(clients) < least:
        return {}
    counts = Counter(c for c in clients if c is not None)
    named = [c for c, _ in counts.most_common(top)]
    if flagged:  # (`name` may be an HMAC: called only when there are flagged clients)
        named += [c for c in counts if c not in named and name(c) in flagged]
    return {name(c): round(counts[c] / len(clients), 4) for c in named}


class KnownValues:
    """What values of one feature the reference had, to tell a value it never had: its
    categories, or a numeric feature's levels (at most `MAX_LEVELS`) or else its range."""

    def __init__(self, reference: np.ndarray) -> None:
        self.numeric = reference.dtype.kind == "f"
        if self.numeric:
            finite = reference[np.isfinite(reference)]
            levels = np.unique(finite)
            self.levels = levels if len(levels) <= MAX_LEVELS else None
            self.low = float(finite.min()) if len(finite) else np.inf
            self.high = float(finite.max()) if len(finite) else -np.inf
        else:
            self.categories = {v for v in reference.tolist() if v is not None}

    def unusual(self, values: np.ndarray) -> np.ndarray:
        """Per value, whether the reference never had it (a missing value never is)."""
        if self.numeric:
            present = ~np.isnan(values)
            if self.levels is not None:
                return present & ~np.isin(values, self.levels)
            return present & ((values < self.low) | (values > self.high))
        known = self.categories
        return np.fromiter((v is not None and v not in known for v in values.tolist()), bool)


def output_shift_attribution(
    reference: dict[str, np.ndarray],
    reference_output: np.ndarray,
    current: dict[str, np.ndarray],
    current_output: np.ndarray,
) -> dict[str, Any] | None:
    """Per numeric feature, the share of the output's mean shift its change reproduces.

    `reference` / `current`: numeric feature columns (NaN: missing) aligned with the output
    arrays (NaN: no output). None when there is too little to fit or no shift to explain.
    """
    ref_ok, cur_ok = ~np.isnan(reference_output), ~np.isnan(current_output)
    if ref_ok.sum() < MIN_EVENTS or cur_ok.sum() < MIN_EVENTS:
        return None
    names, ref_cols, shifts = [], [], []
    for name, column in sorted(reference.items()):
        other = current.get(name)
        if other is None:
            continue
        valid = column[~np.isnan(column)]
        valid_now = other[~np.isnan(other)]
        if len(valid) < MIN_EVENTS or len(valid_now) < MIN_EVENTS:
            continue
        mean, std = float(valid.mean()), float(valid.std())
        if std <= 0:
            continue
        names.append(name)
        ref_cols.append((np.where(np.isnan(column), mean, column) - mean) / std)
        shifts.append((float(valid_now.mean()) - mean) / std)
    if not names:
        return None
    x = np.column_stack([np.ones(len(reference_output)), *ref_cols])[ref_ok]
    y = reference_output[ref_ok]
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    fitted = x @ beta
    total = float(np.sum((y - y.mean()) ** 2))
    r2 = 1 - float(np.sum((y - fitted) ** 2)) / total if total > 0 else 0.0
    observed = float(current_output[cur_ok].mean() - y.mean())
    if observed == 0:
        return None
    reproduced = {n: float(b * s) for n, b, s in zip(names, beta[1:], shifts, strict=True)}
    top = sorted(reproduced, key=lambda n: -reproduced[n] / observed)[:TOP_FEATURES]
    return {
        "method": "linear surrogate of the output fitted on the reference",
        "observed_shift": round(observed, 6),
        "reproduced_shift": round(sum(reproduced.values()), 6),
        "r2": round(r2, 4),
        "shares": {n: round(reproduced[n] / observed, 4) for n in top},
    }
