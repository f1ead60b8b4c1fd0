"""Synthetic event streams for tests: numeric features of mixed shapes, optional mean shift."""

from __future__ import annotations

import numpy as np
import orjson

START = 1_767_225_600.0

SHAPES = {
    "normal": lambda rng, n: rng.normal(50, 10, n),
    "lognormal": lambda rng, n: rng.lognormal(2, 0.7, n),
    "uniform": lambda rng, n: rng.uniform(0, 1, n),
    "gamma": lambda rng, n: rng.gamma(2, 3, n),
    "student": lambda rng, n: rng.standard_t(4, n),
}


def numeric_columns(n: int, rng: np.random.Generator, features: int = 5) -> dict[str, np.ndarray]:
    names = list(SHAPES)
    return {
        f"x{i}_{names[i % len(names)]}": SHAPES[names[i % len(names)]](rng, n)
        for i in range(features)
    }


def prediction_lines(
    n: int,
    model: str = "m",
    features: int = 5,
    seed: int = 0,
    shift: tuple[str, int, float] | None = None,  # (feature, at event, size in std)
) -> list[bytes]:
    rng = np.random.default_rng(seed)
    columns = numeric_columns(n, rng, features)
    if shift is not None:
        name, at, size = shift
        columns[name][at:] += size * np.std(columns[name][:at])
    categories = rng.choice(["a", "b", "c"], n)
    lines = []
    for i in range(n):
        row = {name: round(float(col[i]), 4) for name, col in columns.items()}
        row["segment"] = str(categories[i])
        lines.append(
            orjson.dumps(
                {
                    "type": "prediction",
                    "model": model,
                    "id": f"{model}-{i}",
                    "ts": START + i,
                    "features": row,
                    "prediction": 0,
                }
            )
        )
    return lines
