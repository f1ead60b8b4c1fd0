"""The built-in demo scenario: three models, two injected drifts, some malformed lines.

Deterministic for a seed, generated in memory, one event per second per model in event time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import orjson

START_TS = 1_767_225_600.0  # 2026-01-01T00:00:00Z


@dataclass(frozen=True, slots=True)
class InjectedDrift:
    model: str
    feature: str
    at_event: int  # index among the model's predictions
    description: str


@dataclass(frozen=True, slots=True)
class Scenario:
    lines: list[bytes]
    drifts: list[InjectedDrift]
    malformed: int


MALFORMED = [
    b"this is not json",
    b'{"type": "prediction", "ts": 1767225600, "features": {"x": 1}}',
    b'{"type": "prediction", "model": "fraud", "ts": "yesterday", "features": {}}',
    b'{"type": "prediction", "model": "fraud", "ts": 1767225600, "features": {"amount": NaN}}',
    b'{"type": "prediction", "model": "fraud", "ts": 1767225600, "features": [1, 2]}',
    b'{"type": "label", "model": "fraud", "ts": 1767225600, "label": 1}',
    b"[1, 2, 3]",
    b'{"type": "prediction", "model": "fraud", "ts": 1767225600, "features": {"age": {"v": 1}}}',
]


def demo_scenario(events_per_model: int = 20_000, seed: int = 7) -> Scenario:
    rng = np.random.default_rng(seed)
    fraud_drift = int(events_per_model * 0.6)
    price_drift = int(events_per_model * 0.7)
    streams = [
        _fraud(rng, events_per_model, fraud_drift),
        _churn(rng, events_per_model),
        _price(rng, events_per_model, price_drift),
    ]
    lines: list[bytes] = []
    for i in range(events_per_model):
        for stream in streams:
            lines.extend(stream[i])
    step = len(lines) // (len(MALFORMED) + 1)
    for k, bad in enumerate(MALFORMED, start=1):
        lines.insert(k * step, bad)
    drifts = [
        InjectedDrift("fraud", "amount", fraud_drift, "mean of amount up by 1 std"),
        InjectedDrift("price", "distance_km", price_drift, "spread of distance_km x2"),
    ]
    return Scenario(lines=lines, drifts=drifts, malformed=len(MALFORMED))


def _fraud(rng: np.random.Generator, n: int, drift_at: int) -> list[list[bytes]]:
    amount = rng.lognormal(3.0, 0.8, n)
    amount_std = float(np.std(amount))
    amount[drift_at:] += amount_std  # the injected drift: +1 std
    age = rng.normal(41, 12, n).clip(18, 90).round()
    tenure = rng.gamma(2.0, 300.0, n)
    countries = rng.choice(["DE", "FR", "NL", "ES", "IT"], n, p=[0.4, 0.2, 0.15, 0.15, 0.1])
    channels = rng.choice(
        np.array(["web", "app", "pos", None], dtype=object), n, p=[0.45, 0.35, 0.15, 0.05]
    )
    logit = -3 + 0.004 * amount - 0.01 * (age - 41)
    p1 = 1 / (1 + np.exp(-logit))
    out = []
    for i in range(n):
        pid = f"f-{i:07d}"
        event = {
            "type": "prediction",
            "model": "fraud",
            "model_version": "3.1",
            "id": pid,
            "ts": START_TS + i,
            "client": f"key-{rng.integers(0, 40)}",
            "features": {
                "amount": round(float(amount[i]), 2),
                "age": int(age[i]),
                "tenure_days": round(float(tenure[i]), 1),
                "country": str(countries[i]),
                "channel": channels[i],
            },
            "prediction": int(p1[i] > 0.5),
            "scores": {"0": round(1 - float(p1[i]), 4), "1": round(float(p1[i]), 4)},
            "latency_ms": round(float(rng.gamma(2, 3)), 2),
        }
        lines = [orjson.dumps(event)]
        if i % 2 == 0:
            label = {
                "type": "label",
                "model": "fraud",
                "id": pid,
                "label": int(rng.random() < p1[i]),
                "ts": START_TS + i + 3600,
            }
            lines.append(orjson.dumps(label))
        out.append(lines)
    return out


def _churn(rng: np.random.Generator, n: int) -> list[list[bytes]]:
    sessions = rng.poisson(12, n)
    spend = rng.gamma(3, 20, n)
    support = rng.normal(0, 1, n)
    plan = rng.choice(["free", "pro", "team"], n, p=[0.6, 0.3, 0.1])
    out = []
    for i in range(n):
        event = {
            "type": "prediction",
            "model": "churn",
            "id": f"c-{i:07d}",
            "ts": START_TS + i,
            "features": {
                "sessions_30d": int(sessions[i]),
                "monthly_spend": round(float(spend[i]), 2),
                "support_score": round(float(support[i]), 3),
                "plan": str(plan[i]),
            },
            "prediction": 0,
            "score": round(float(rng.random()), 4),
        }
        out.append([orjson.dumps(event)])
    return out


def _price(rng: np.random.Generator, n: int, drift_at: int) -> list[list[bytes]]:
    sqft = rng.normal(900, 250, n).clip(200)
    distance = rng.gamma(4, 2.5, n)
    mean_distance = 10.0
    distance[drift_at:] = mean_distance + 2 * (distance[drift_at:] - mean_distance)
    distance = distance.clip(0.1)
    out = []
    for i in range(n):
        price = 150 * sqft[i] - 2000 * distance[i] + rng.normal(0, 5000)
        event = {
            "type": "prediction",
            "model": "price",
            "id": f"r-{i:07d}",
            "ts": START_TS + i,
            "features": {
                "sqft": round(float(sqft[i]), 1),
                "distance_km": round(float(distance[i]), 2),
            },
            "prediction": round(float(price), 2),
        }
        out.append([orjson.dumps(event)])
    return out
