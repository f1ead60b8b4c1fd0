"""Synthetic prediction streams for the reference-data and report tests."""

from __future__ import annotations

import numpy as np
import orjson

from agent.config import ReferenceSettings, Settings
from agent.runtime.pipeline import Pipeline
from agent.runtime.replay import memory_batches, replay_batches
from detectors.registry import DetectorSettings
from storage.db import Database

START = 1_767_225_600.0


def events(
    n: int,
    seed: int,
    model: str = "fraud",
    shift: float = 0.0,
    start: float = START,
    version: str | None = None,
) -> list[bytes]:
    """`n` predictions, one per second: numeric `amount` (shifted by `shift` std) and `age`,
    categorical `country`, a class prediction with scores."""
    rng = np.random.default_rng(seed)
    amount = rng.normal(10 + 2 * shift, 2, n)
    age = rng.normal(40, 10, n)
    country = rng.choice(["DE", "FR", "NL"], n, p=[0.5, 0.3, 0.2])
    p1 = rng.uniform(0, 1, n)
    lines = []
    for i in range(n):
        event = {
            "type": "prediction",
            "model": model,
            "id": f"{model}-{seed}-{i}",
            "ts": start + i,
            "features": {
                "amount": round(float(amount[i]), 4),
                "age": round(float(age[i]), 2),
                "country": str(country[i]),
            },
            "prediction": int(p1[i] > 0.5),
            "scores": {"0": round(1 - float(p1[i]), 4), "1": round(float(p1[i]), 4)},
        }
        if version is not None:
            event["model_version"] = version
        lines.append(orjson.dumps(event))
    return lines


def settings_for(url: str, learn_events: int = 2000, recent_events: int = 3000) -> Settings:
    return Settings(
        database_url=url,
        batch_size=500,
        detectors=DetectorSettings(reference_size=learn_events),
        reference=ReferenceSettings(recent_events=recent_events),
    )


def replay(settings: Settings, db: Database, lines: list[bytes], consumer: str, name: str):
    """Runs lines through a fresh pipeline (as a new process would) and checkpoints."""
    pipeline = Pipeline(settings, db, consumer=consumer)
    replay_batches(pipeline, memory_batches(lines, name, settings.batch_size))
    return pipeline
