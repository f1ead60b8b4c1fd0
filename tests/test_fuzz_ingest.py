"""Fuzzing the way in: whatever bytes arrive, no exception escapes the decoder or the storage
layer, every rejected record is a dead letter with a reason, and every dead letter (payload
with NUL, invalid UTF-8, anything) is stored, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import itertools
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import Settings
from agent.runtime.pipeline import Pipeline
from storage.db import Database
from storage.queries import Repository
from storage.unit_of_work import DeadLetterInput, UnitOfWork
from streams.decode import decode_batch
from streams.events import Position, RawRecord
from streams.watermark import StreamClocks

T = 1767225600.0
TEXT = st.text(
    alphabet=st.characters(codec=None, exclude_categories=()), max_size=12
) | st.sampled_from(["", "\x00", "a\x00b", "\ud800", "fraud", "m", "\\u0000", "é"])
NUMBERS = st.one_of(
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, 1, 0.5, T, T * 1000, 1e300, -1.0, 10**30]),
)
JSON = st.recursive(
    st.none() | st.booleans() | NUMBERS | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
FIELDS = ["type", "model", "ts", "id", "features", "prediction", "scores", "score", "label"]


@st.composite
def event_like(draw: st.DrawFn) -> bytes:
    """A plausible event with a few fields replaced by any JSON value (or dropped)."""
    kind = draw(st.sampled_from(["prediction", "label"]))
    event: dict[str, Any] = {
        "type": kind,
        "model": draw(st.sampled_from(["fraud", "churn"])),
        "ts": T + draw(st.integers(0, 10**6)),
        "id": f"p-{draw(st.integers(0, 5))}",
    }
    if kind == "prediction":
        p = draw(st.floats(0, 1))
        event.update(features={"amount": 1.5, "country": "DE"}, scores={"0": 1 - p, "1": p})
    else:
        event["label"] = draw(st.sampled_from([0, 1, "spam"]))
    spoilt = draw(st.sampled_from([None, None, "model", "id", "client", "country", "key"]))
    if spoilt == "country" and kind == "prediction":
        event["features"] = {**event["features"], "country": "D\x00E"}
    elif spoilt == "key" and kind == "prediction":
        event["features"] = {**event["features"], "a\x00": 1}
    elif spoilt in ("model", "id", "client"):
        event[spoilt] = "x\x00"
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=3)):
        if draw(st.booleans()):
            event[name] = draw(JSON)
        else:
            event.pop(name, None)
    # ensure_ascii escapes NUL and lone surrogates as \uXXXX, as a producer's JSON would.
    return json.dumps(event).encode()


RECORDS = st.lists(
    st.one_of(event_like(), st.binary(max_size=60), JSON.map(lambda v: json.dumps(v).encode())),
    min_size=1,
    max_size=12,
)


def _raw(values: list[bytes], source: str = "fuzz") -> list[RawRecord]:
    return [RawRecord(v, Position(source, 0, i)) for i, v in enumerate(values)]


@settings(max_examples=400, deadline=None)
@given(values=RECORDS, wall=st.none() | st.just(T + 1e5))
def test_decoder_accounts_for_every_record(values: list[bytes], wall: float | None) -> None:
    clocks = StreamClocks(max_future_skew=3600.0, max_clock_skew=60.0)
    batch = decode_batch(_raw(values), clocks=clocks, wall_now=wall)
    accepted = [p for g in (*batch.prediction_groups, *batch.label_groups) for p in g.positions]
    rejected = [d.position for d in batch.dead_letters]
    assert sorted(accepted + rejected) == [Position("fuzz", 0, i) for i in range(len(values))]
    assert all(d.reason.strip() for d in batch.dead_letters)
    assert len(batch.predictions) + len(batch.labels) == len(accepted)
    # Without the stream checks, the batch accepts what the per-record decoder accepts.
    plain = decode_batch(_raw(values))
    alone = [decode_batch(_raw([v])) for v in values]
    assert [(d.position.offset, d.reason) for d in plain.dead_letters] == [
        (i, a.dead_letters[0].reason) for i, a in enumerate(alone) if a.dead_letters
    ]


_sources = itertools.count()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(values=RECORDS)
def test_the_pipeline_stores_any_batch(database: Database, values: list[bytes]) -> None:
    source = f"fuzz-{next(_sources)}"
    pipeline = Pipeline(Settings(database_url=database.url), database, consumer=source)
    pipeline.process(_raw(values, source))  # no exception, whatever the backend
    pipeline.checkpoint({(source, 0): len(values)})  # model totals, detector state
    stored = [d for d in Repository(database).list_dead_letters(limit=10_000) if d.source == source]
    assert len(stored) == pipeline.stats.dead_letters
    assert pipeline.stats.predictions + pipeline.stats.labels + len(stored) == len(values)
    assert all(d.reason for d in stored)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(payload=st.binary(max_size=200), reason=TEXT, source=TEXT)
def test_any_dead_letter_is_storable(
    database: Database, payload: bytes, reason: str, source: str
) -> None:
    offset = next(_sources)
    letter = DeadLetterInput(source, 0, offset, reason or "?", payload, T)
    with database.session() as session:
        UnitOfWork(session).dead_letters.add([letter])
    (row,) = [d for d in Repository(database).list_dead_letters(limit=10_000) if d.offset == offset]
    assert "\x00" not in row.payload + row.reason + row.source
    if b"\x00" not in payload:
        assert row.payload == payload.decode("utf-8", "replace")
