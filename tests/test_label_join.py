"""The label join: labels after, before, twice, for unknown ids, and never; bounded memory."""

from __future__ import annotations

import math
import random
from collections import OrderedDict

import numpy as np
import pytest

from detectors import state_codec
from detectors.accuracy.join import JoinCounters, Joined, LabelJoin
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
    assert [p.offset for p in joined.at_position] == [100]  # the label completed the pair
    assert join.counters.joined == 1 and list(join.pending) == ["a"]


def test_label_before_its_prediction_waits_and_joins_later() -> None:
    join = LabelJoin(ttl=3600, max_pending=100, max_early=100)
    assert len(join.add(batch(labels=[("x", 1, 5)]))) == 0
    assert list(join.early) == ["x"]
    joined = join.add(batch(preds=[("y", 6), ("x", 7)]))
    assert len(joined) == 1 and joined.labels == [1]
    assert [p.offset for p in joined.at_position] == [1]  # the prediction (index 1) completed it
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


# ---------------------------------------------------------------------------------------------
# The columnar join against a straightforward one (OrderedDicts of tuples, record by record),
# over random interleavings: repeated ids in and across batches, labels before, twice and for
# unknown ids, ids missing, both caps, TTL expiry, odd scores, and checkpoints mid-stream.


def checkpointed(join: LabelJoin) -> LabelJoin:
    """The join after a checkpoint and a restart: its state as data-only bytes, read back."""
    state = state_codec.decode(state_codec.encode(join.state()))
    return LabelJoin.of_state(state, join.ttl, join.max_pending, join.max_early)


class ReferenceJoin:
    """The join's documented behaviour, one record at a time."""

    def __init__(self, ttl: float, max_pending: int, max_early: int) -> None:
        self.ttl, self.max_pending, self.max_early = ttl, max_pending, max_early
        self.pending: OrderedDict[str, tuple] = OrderedDict()
        self.early: OrderedDict[str, tuple[object, float]] = OrderedDict()
        self.done: OrderedDict[str, float] = OrderedDict()
        self.watermark = -math.inf
        self.counters = JoinCounters()

    def add(self, b: ModelBatch) -> list[tuple]:
        c, out = self.counters, []
        score = [None] * len(b) if b.score is None else b.score.tolist()
        last: dict[str, int] = {}  # id -> its last row, in the order of first appearance
        for i, pid in enumerate(b.ids):
            if pid is None:
                c.unidentified += 1
                continue
            c.predictions += 1
            c.duplicate_predictions += pid in last
            last[pid] = i

        def row(i: int) -> tuple:
            lone = None if score[i] is None or math.isnan(score[i]) else score[i]
            return (float(b.ts[i]), b.model_versions[i], b.predictions[i], b.scores[i], lone)

        for pid in sorted((p for p in last if p in self.early), key=last.__getitem__):
            label, label_ts = self.early.pop(pid)
            i = last.pop(pid)
            out.append((row(i), label, label_ts, float(b.ts[i]), int(b.offsets[i])))
            self.done[pid] = label_ts
            c.early += 1
            c.joined += 1
        for pid, i in last.items():
            c.duplicate_predictions += pid in self.pending
            self.pending[pid] = row(i)
        while len(self.pending) > self.max_pending:
            self.pending.popitem(last=False)
            c.evicted_predictions += 1
        if len(b):
            self.watermark = max(self.watermark, float(b.ts.max()))
        if b.labels is not None and b.labels.ids:
            labels = b.labels
            times, offsets = labels.ts.tolist(), labels.offsets.tolist()
            for lid, value, label_ts, offset in zip(
                labels.ids, labels.values, times, offsets, strict=True
            ):
                c.labels += 1
                pred = self.pending.pop(lid, None)
                if pred is not None:
                    out.append((pred, value, label_ts, label_ts, offset))
                    self.done[lid] = label_ts
                    c.joined += 1
                elif lid in self.done or lid in self.early:
                    c.duplicates += 1
                else:
                    self.early[lid] = (value, label_ts)
            while len(self.early) > self.max_early:
                self.early.popitem(last=False)
                c.evicted_labels += 1
            self.watermark = max(self.watermark, float(labels.ts.max()))
        cutoff = self.watermark - self.ttl
        while self.pending and next(iter(self.pending.values()))[0] < cutoff:
            self.pending.popitem(last=False)
            c.expired_unlabelled += 1
        while self.early and next(iter(self.early.values()))[1] < cutoff:
            self.early.popitem(last=False)
            c.unknown_ids += 1
        while self.done and next(iter(self.done.values())) < cutoff:
            self.done.popitem(last=False)
        while len(self.done) > self.max_pending:
            self.done.popitem(last=False)
        return out


def random_scores(rng: random.Random) -> dict[str, float] | None:
    x = rng.random()
    return rng.choice(
        [
            None,
            {"0": x, "1": 1 - x},
            {"1": x, "0": 1 - x},  # the same classes in another order
            {"a": x, "b": 0.5, "c": -0.0},
            {"0": 1, "1": 0},  # integers: must come back as integers
            {"0": True, "1": 0.5},
            {"0": math.nan, "1": x},
            {str(k): x for k in range(20)},  # too many classes for a float row
            {f"class-{rng.randrange(50)}": x},
        ]
    )


def random_batch(rng: random.Random, t: float, pool: list[str]) -> ModelBatch:
    n = rng.choice([0, 1, 3, 8, 20])
    same = rng.random() < 0.5  # the usual batch: every prediction with the same two classes
    xs = [rng.random() for _ in range(n)]
    b = ModelBatch(
        model="m",
        source="s",
        partition=0,
        ts=np.array([T0 + t + rng.uniform(-20, 20) for _ in range(n)]),
        offsets=np.array([rng.randrange(10**6) for _ in range(n)], dtype=np.int64),
        ids=[None if rng.random() < 0.05 else rng.choice(pool) for _ in range(n)],
        clients=[None] * n,
        model_versions=[rng.choice(["v1", "v2", None]) for _ in range(n)],
        rows=[{}] * n,
        predictions=[rng.choice([0, 1, "cat", 2.5, None]) for _ in range(n)],
        scores=[{"0": x, "1": 1 - x} for x in xs] if same else [random_scores(rng) for _ in xs],
        score=None if rng.random() < 0.5 else np.array([rng.choice([math.nan, *xs]) for _ in xs]),
    )
    m = rng.choice([0, 0, 1, 4, 12])
    if m:
        b.labels = LabelColumns(
            ids=[rng.choice(pool) for _ in range(m)],
            values=[rng.choice([0, 1, "cat"]) for _ in range(m)],
            ts=np.array([T0 + t + rng.uniform(-20, 20) for _ in range(m)]),
            offsets=np.array([rng.randrange(10**6) for _ in range(m)], dtype=np.int64),
        )
    return b


def assert_same_pairs(joined: Joined, expected: list[tuple]) -> None:
    preds = [p for p, *_ in expected]
    assert joined.pred_ts.dtype == np.float64
    assert joined.pred_ts.tolist() == [p[0] for p in preds]
    assert joined.label_ts.tolist() == [e[2] for e in expected]
    assert joined.at_ts.tolist() == [e[3] for e in expected]
    assert [p.offset for p in joined.at_position] == [e[4] for e in expected]
    assert joined.labels == [e[1] for e in expected]
    for got, want in (
        (joined.versions, [p[1] for p in preds]),
        (joined.predictions, [p[2] for p in preds]),
        (joined.score, [p[4] for p in preds]),
    ):
        assert got == want and list(map(type, got)) == list(map(type, want))
    for got, want in zip(joined.scores, (p[3] for p in preds), strict=True):
        if want is None:
            assert got is None
            continue
        # Rebuilt or not: the same classes in the same order, equal values of the same types
        # (NaN, equal only to itself, compared as NaN: a checkpoint copies it).
        assert list(got) == list(want)
        assert [v if v == v else "nan" for v in got.values()] == [
            v if v == v else "nan" for v in want.values()
        ]
        assert list(map(type, got.values())) == list(map(type, want.values()))


@pytest.mark.parametrize("seed", range(12))
def test_join_matches_a_straightforward_one_across_random_interleavings(seed: int) -> None:
    rng = random.Random(seed)
    ttl, cap, early_cap = rng.choice([30, 300, 1e9]), rng.choice([1, 5, 40]), rng.choice([0, 3])
    pool = [f"p{i}" for i in range(rng.choice([8, 60, 400]))]
    join, reference = LabelJoin(ttl, cap, early_cap), ReferenceJoin(ttl, cap, early_cap)
    t = 0.0
    for step in range(300):
        t += rng.uniform(-2, 6)
        b = random_batch(rng, t, pool)
        assert_same_pairs(join.add(b), reference.add(b))
        assert join.counters == reference.counters, step
        assert list(join.pending) == list(reference.pending)
        assert list(join.early) == list(reference.early)
        assert join.watermark == reference.watermark
        if step % 37 == 36:  # a checkpoint and a restart: the restored join must go on exactly
            join = checkpointed(join)
    # Whatever is still pending comes out with its own values.
    flush = batch(labels=[(pid, 1, t) for pid in reference.pending])
    assert_same_pairs(join.add(flush), reference.add(flush))
    assert join.counters == reference.counters


def test_a_restored_join_keeps_thousands_of_pending_predictions_with_their_values() -> None:
    join = LabelJoin(ttl=1e9, max_pending=5000, max_early=10)
    n = 6000
    join.add(batch(preds=[(f"p{i}", i) for i in range(n)]))  # 1000 evicted at the cap
    restored = checkpointed(join)
    assert list(restored.pending) == [f"p{i}" for i in range(1000, n)]
    joined = restored.add(batch(labels=[("p5999", 1, n), ("p1000", 0, n)]))
    assert joined.pred_ts.tolist() == [T0 + 5999, T0 + 1000]
    assert joined.scores == [{"0": 0.2, "1": 0.8}] * 2 and joined.versions == ["v", "v"]
    assert restored.counters.evicted_predictions == 1000 and restored.counters.joined == 2


def test_scores_come_back_equal_to_the_given_ones_even_with_nan() -> None:
    """NaN equals only itself: a rebuilt dict would not equal the given one, so such scores
    must come back as given; the others compare equal, their classes in the same order."""
    join = LabelJoin(ttl=1e9, max_pending=100, max_early=10)
    usual = [{"0": 0.25, "1": 0.75}, {"0": math.nan, "1": 0.5}]  # same classes, same order
    other = [{"1": 0.5, "0": 0.5}]
    for at, (pids, scores) in enumerate(((["a", "b"], usual), (["c"], other))):
        b = batch(preds=[(pid, at) for pid in pids])
        b.scores = scores
        join.add(b)
    joined = join.add(batch(labels=[("c", 1, 5), ("b", 1, 5), ("a", 0, 5)]))
    assert joined.scores == [other[0], usual[1], usual[0]]
    assert [list(s) for s in joined.scores] == [["1", "0"], ["0", "1"], ["0", "1"]]
