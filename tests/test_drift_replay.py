"""End to end: drift and data-quality incidents from `bulwark replay`, as a user sees them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import orjson

from tests.conftest import run_cli

N = 9000
DRIFT_AT = 5000
START = 1_767_225_600.0


def events(rng: np.random.Generator, model: str, drifted: bool) -> list[dict]:
    late = np.arange(N) >= DRIFT_AT if drifted else np.zeros(N, dtype=bool)
    u = rng.random(N)
    # DE/FR/IT shares 0.6/0.3/0.1, and 0.3/0.3/0.4 after the drift.
    de_cut = np.where(late, 0.3, 0.6)
    country = np.where(u < de_cut, "DE", np.where(u < de_cut + 0.3, "FR", "IT"))
    amount = rng.lognormal(3, 0.8, N).round(2)
    age = rng.integers(18, 80, N)
    channel = rng.choice(["web", "app"], N)
    missing = rng.random(N) < 0.05
    p = rng.beta(2, 5, N)
    out = []
    for i in range(N):
        features = {
            "amount": "unknown" if late[i] and i % 3 == 0 else float(amount[i]),  # type errors
            "age": int(age[i]),
            "country": str(country[i]),
            "channel": None if missing[i] else str(channel[i]),
        }
        out.append(
            {
                "type": "prediction",
                "model": model,
                "id": f"{model}-{i}",
                "ts": START + i,
                "features": features,
                "prediction": int(p[i] > 0.5),
                "scores": {"0": 1 - float(p[i]), "1": float(p[i])},
            }
        )
    return out


def test_replay_names_only_the_drifted_feature_of_the_drifted_model(tmp_path: Path) -> None:
    rng = np.random.default_rng(21)
    steady, shop = events(rng, "steady", False), events(rng, "shop", True)
    path = tmp_path / "events.jsonl"
    path.write_bytes(
        b"\n".join(orjson.dumps(e) for pair in zip(steady, shop, strict=True) for e in pair)
    )
    db = f"sqlite:///{tmp_path / 'bulwark.db'}"
    result = run_cli("replay", str(path), "--db", db)
    assert result.returncode == 0, result.stderr
    listed = run_cli("incidents", "list", "--db", db, "--format", "json")
    incidents = json.loads(listed.stdout)
    found = {(i["model"], i["kind"], i["subject"]) for i in incidents}
    assert found == {
        ("shop", "feature_drift", "country"),
        ("shop", "data_quality", "amount"),
    }
    drift = next(i for i in incidents if i["kind"] == "feature_drift")
    assert START + DRIFT_AT <= drift["first_seen"] <= START + DRIFT_AT + 5000
    details = drift["details"]
    assert details["statistic"] == "chi_square_homogeneity"
    assert details["value"] > details["threshold"]
    assert details["effect_size"] >= 0.1
    assert details["reference"]["shares"]["DE"] > 0.5
    assert details["current"]["shares"]["IT"] > 0.3
    assert details["events_seen"] >= 1000
    quality = next(i for i in incidents if i["kind"] == "data_quality")
    assert quality["details"]["statistic"] == "type_violation_rate"
    assert quality["details"]["current"]["rate"] > 0.25
