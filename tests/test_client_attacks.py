"""A real ART evasion attack on a logged scikit-learn model, judged by Bulwark end to end.

A small stream (a new model's first day: 30 benign keys with daily sessions) and one
HopSkipJump attacker from ART, whose every query went through the logged model, are replayed
through the pipeline with default settings, the model's reference stored before launch as an
operator does (`bulwark reference set`). The attacker's key must be flagged as
`suspicious_client` within 100 of its queries; no benign key may be (issue 14: no blind
warm-up, no false alarms). Without a stored reference the first events are learned from the
traffic itself and judged once the profile exists (docs/query-patterns.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("art", reason="adversarial-robustness-toolbox (the bench extra) is needed")
pytest.importorskip("sklearn", reason="scikit-learn (the bench extra) is needed")

from bench.client_streams import (
    T0,
    Attack,
    Clock,
    LoggedModel,
    benign_traffic,
    judge,
    load_dataset,
    reference_events,
    replay,
    run_attack,
    set_reference,
    train_model,
    write_jsonl,
)
from storage.db import Database


def test_hop_skip_jump_attacker_is_flagged_and_benign_keys_are_not(tmp_path: Path) -> None:
    seed = 5
    rng = np.random.default_rng(seed)
    np.random.seed(seed)  # ART samples with numpy's global generator
    dataset = load_dataset("digits", seed)
    served = LoggedModel(train_model(dataset, seed), dataset)
    benign = benign_traffic(served, rng, clients=30, days=1.0)
    attack = Attack(
        "HopSkipJump", "HopSkipJump", "evasion", ["attacker"], T0 + 9 * 3600, budget=300, gap=5.0
    )
    assert run_attack(served, attack, rng) == 300  # every query it sent was answered and logged

    lines, clients, _ = served.events()
    stream = tmp_path / "stream.jsonl"
    write_jsonl(lines, stream)
    url = f"sqlite:///{tmp_path / 'bulwark.db'}"
    Database(url).upgrade()
    reference = tmp_path / "reference.jsonl"
    write_jsonl(reference_events(served, rng), reference)
    set_reference(reference, url)
    events, _ = replay(stream, url)
    assert events == len(lines)  # nothing became a dead letter
    verdicts, _ = judge(url, clients)

    attacker = verdicts["attacker"]
    assert attacker.sent == 300
    assert attacker.flagged_after is not None, "the HopSkipJump key was never flagged"
    assert attacker.flagged_after <= 100
    flagged = [k for k in benign.keys if verdicts[k].flagged_after is not None]
    assert flagged == [], f"benign keys flagged: {flagged}"


def test_a_per_feature_box_keeps_the_global_range_on_constant_features() -> None:
    """The schema-aware attacker's box (`--box per-feature`) on digits, whose corner pixels
    are constant in the data: ART refuses a box with min >= max, so those features keep the
    global range and the others their own."""
    dataset = load_dataset("digits", 5)
    constant = dataset.high <= dataset.low
    assert constant.any() and not constant.all()
    served = LoggedModel(train_model(dataset, 5), dataset, box="per-feature")
    clock = Clock(np.random.default_rng(5), T0)
    clf = served.art_classifier(["attacker"], clock, budget=1)
    low, high = clf.clip_values
    assert (low < high).all()
    assert np.allclose(low[~constant], dataset.low[~constant])
    assert np.allclose(high[~constant], dataset.high[~constant])
    assert np.allclose(high[constant], dataset.high.max())
