"""The label join: labels after, before, twice, for unknown ids, and never; bounded memory."""

from __future__ import annotations

import numpy as np

from detectors.label_join import LabelJoin
from streams.batch import LabelColumns, ModelBatch

T0 = 1_767_225_600.0


def batch(
    preds: list[tuple[str | None, float]] = (),  # type: ignore[assignment]
    labels: list[tuple[str, object, float]] = (),  # type: ignore[assignment]
) -> ModelBatch:
    n = len(preds)
    b = ModelBatch(
        model="m",
        source="s",
        partition=0,
        ts=np.array([T0 + t for _, t in preds], dtype=np.float64),
        offsets=np.arange(n, dtype=np.int64),
        ids=[pid for pid, _ in preds],
        clients=[None] * n,
        model_versions=["v"] * n,
        rows=[{}] * n,
        predictions=[1] * n,
        scores=[{"0": 0.2, "1": 0.8}] * n,
    )
    if labels:
        b.labels = LabelColumns(
            ids=[lid for lid, _, _ in labels],
            values=[v for _, v, _ in labels],
            ts=np.array([T0 + t for _, _, t in labels], dtype=np.float64),
            offsets=np.arange(100, 100 + len(labels), dtype=np.int64),
        )
    return b


def test_label_after_its_prediction_is_joined_with_both_times() -> None:
    join = LabelJoin(ttl=3600, max_pending=100, max_early=100)
    assert len(join.add(batch(preds=[("a", 0), ("b", 1)]))) == 0
    joined = join.add(batch(labels=[("b", 0, 60)]))
    assert len(joined) == 1
    assert joined.labels == [0] and joined.predictions == [1]
    assert joined.pred_ts.tolist() == [T0 + 1] and joined.label_ts.tolist() == [T0 + 60]
    assert joined.at_offset.tolist() == [100]  # the label completed the pair
    assert join.counters.joined == 1 and list(join.pending) == ["a"]


def test_label_before_its_prediction_waits_and_joins_later() -> None:
    join = LabelJoin(ttl=3600, max_pending=100, max_early=100)
    assert len(join.add(batch(labels=[("x", 1, 5)]))) == 0
    assert list(join.early) == ["x"]
    joined = join.add(batch(preds=[("y", 6), ("x", 7)]))
    assert len(joined) == 1 and joined.labels == [1]
    assert joined.at_offset.tolist() == [1]  # the prediction (index 1) completed it
    assert join.counters.early == 1 and join.counters.joined == 1
    assert not join.early and list(join.pending) == ["y"]


def test_label_in_the_same_batch_as_its_prediction_is_joined() -> None:
    join = LabelJoin(ttl=3600, max_pending=100, max_early=100)
    joined = join.add(batch(preds=[("a", 0)], labels=[("a", 0, 0)]))
    assert len(joined) == 1 and join.counters.early == 0


def test_duplicate_labels_are_counted_and_the_first_wins() -> None:
    join = LabelJoin(ttl=3600, max_pending=100, max_early=100)
    join.add(batch(preds=[("a", 0)]))
    first = join.add(batch(labels=[("a", 1, 10), ("a", 0, 11)]))
    again = join.add(batch(labels=[("a", 0, 12)]))
    assert first.labels == [1] and len(again) == 0
    # Twice before the prediction, too.
    join.add(batch(labels=[("e", 1, 13), ("e", 0, 14)]))
    late = join.add(batch(preds=[("e", 15)]))
    assert late.labels == [1]
    assert join.counters.duplicates == 3
    assert join.counters.joined == 2


def test_unknown_ids_and_unlabelled_predictions_expire_after_the_ttl() -> None:
    join = LabelJoin(ttl=100, max_pending=100, max_early=100)
    join.add(batch(preds=[("never", 0)], labels=[("ghost", 1, 0)]))
    join.add(batch(preds=[("fresh", 50)]))
    assert join.counters.expired_unlabelled == 0 and join.counters.unknown_ids == 0
    join.add(batch(preds=[("later", 150)]))  # watermark 150: 0 is older than the TTL
    assert join.counters.expired_unlabelled == 1
    assert join.counters.unknown_ids == 1
    assert list(join.pending) == ["fresh", "later"] and not join.early
    # A label for an expired prediction is not joined: it waits, then counts as unknown.
    assert len(join.add(batch(labels=[("never", 1, 151)]))) == 0
    join.add(batch(preds=[("z", 400)]))
    assert join.counters.unknown_ids == 2
    assert join.counters.expired_unlabelled == 3  # fresh and later too


def test_memory_is_capped_and_evictions_are_counted() -> None:
    join = LabelJoin(ttl=1e9, max_pending=3, max_early=2)
    join.add(batch(preds=[(f"p{i}", i) for i in range(5)]))
    assert list(join.pending) == ["p2", "p3", "p4"]
    assert join.counters.evicted_predictions == 2
    join.add(batch(labels=[(f"u{i}", 1, i) for i in range(4)]))
    assert list(join.early) == ["u2", "u3"]
    assert join.counters.evicted_labels == 2


def test_predictions_without_id_are_counted_not_kept() -> None:
    join = LabelJoin(ttl=100, max_pending=10, max_early=10)
    join.add(batch(preds=[(None, 0), ("a", 1), (None, 2)]))
    assert join.counters.unidentified == 2 and join.counters.predictions == 1
    assert list(join.pending) == ["a"]
