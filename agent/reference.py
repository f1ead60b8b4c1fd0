"""Reference data per model: loaded from a file (`bulwark reference set`) or learned from the
first events the pipeline sees, stored in the database, handed to detectors.

Accepted files (by suffix):

- `.jsonl` / `.ndjson` / `.json`: prediction events of the contract, one per line. Lines of
  other models and label events are skipped; a malformed line fails the whole load.
- `.csv` / `.parquet` / `.pq`: training data, one row per example. Every column is a feature
  except these reserved ones: `prediction` (the model's output), `score` (a single score),
  `scores.<class>` (per-class probabilities), `ts`, `model_version` (taken as given), and
  `id`, `label` (ignored: the label is not an input of the model).

At most `max_rows` rows are kept: a uniform random sample without replacement (seeded, so the
same file gives the same reference), in the file's order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from agent.samples import Sample
from streams.batch import ModelBatch, PartitionKey
from streams.decode import DEFAULT_MAX_RECORD_BYTES, UNJUDGED_LIMITS, InvalidEvent, decode_record
from streams.events import Position, Prediction
from streams.files import FileSource

SAMPLE_SEED = 20260101
JSONL_SUFFIXES = {".jsonl", ".ndjson", ".json"}
CSV_SUFFIXES = {".csv"}
PARQUET_SUFFIXES = {".parquet", ".pq"}
IGNORED_COLUMNS = {"id", "label"}


class ReferenceFileError(ValueError):
    """A reference file that cannot be used; the message is one line naming the file."""


@dataclass(slots=True)
class LoadedReference:
    sample: Sample
    source_rows: int  # rows of the model in the file, before sampling
    model_version: str | None  # the one version all rows carry, if they do


@dataclass(slots=True)
class ActiveReference:
    """A stored reference as the pipeline uses it, with its detector batch built once."""

    id: int
    model: str
    model_version: str
    sample: Sample
    # Learned from the stream: per source partition, the offset after the events it took.
    learned_until: dict[PartitionKey, int] = field(default_factory=dict)
    _batch: ModelBatch | None = None

    @property
    def learned(self) -> bool:
        """Learned from the stream's first events (else stored from a file)."""
        return bool(self.learned_until)

    def batch(self) -> ModelBatch:
        if self._batch is None:
            self._batch = self.sample.to_batch(self.model)
        return self._batch

    def judged_from(self, batch: ModelBatch) -> int:
        """Index of the batch's first prediction to judge against this reference: 0, except
        where a partition is read again from before the reference was learned (its state was
        not checkpointed when the process that learned it stopped). The events the reference
        took, and those before them, are then skipped, as the learning process skipped them,
        so that the detectors see the same events in the same blocks."""
        if not self.learned_until or not len(batch):
            return 0
        if batch.offsets.min() >= max(self.learned_until.values()):
            return 0  # the usual case, every batch once past the reference: no per-event work
        if batch.positions is None:
            until = self.learned_until.get((batch.source, batch.partition))
            return 0 if until is None else int(np.searchsorted(batch.offsets, until))
        before = [
            i
            for i, p in enumerate(batch.positions)
            if p.offset < self.learned_until.get((p.source, p.partition), 0)
        ]
        return before[-1] + 1 if before else 0


def encode_learned_until(taken_until: dict[PartitionKey, int]) -> dict[str, int]:
    """As stored (JSON keys are strings): "partition:source" -> offset."""
    return {f"{partition}:{source}": offset for (source, partition), offset in taken_until.items()}


def decode_learned_until(stored: dict[str, int] | None) -> dict[PartitionKey, int]:
    out: dict[PartitionKey, int] = {}
    for key, offset in (stored or {}).items():
        partition, source = key.split(":", 1)
        out[source, int(partition)] = int(offset)
    return out


def load_reference_file(path: str | Path, model: str, max_rows: int) -> LoadedReference:
    path = Path(path)
    if path.is_dir():
        raise ReferenceFileError(f"{path} is a directory, not a file")
    if not path.is_file():
        raise ReferenceFileError(f"no such file: {path}")
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return _load_jsonl(path, model, max_rows)
    if suffix in CSV_SUFFIXES | PARQUET_SUFFIXES:
        return _load_table(path, model, max_rows, parquet=suffix in PARQUET_SUFFIXES)
    raise ReferenceFileError(
        f"{path}: unknown reference file type {suffix or '(none)'!r}; "
        "use .jsonl (prediction events), .csv or .parquet (training data)"
    )


def _load_jsonl(path: Path, model: str, max_rows: int) -> LoadedReference:
    """Reservoir-samples the model's prediction events while validating every line."""
    rng = np.random.default_rng(SAMPLE_SEED)
    kept: list[tuple[int, Prediction]] = []
    seen = 0
    for records, _ in FileSource(str(path)).batches():
        for record in records:
            try:
                event = decode_record(
                    record.value, record.position, DEFAULT_MAX_RECORD_BYTES, UNJUDGED_LIMITS
                )
            except InvalidEvent as exc:
                raise ReferenceFileError(
                    f"{path}: line {record.position.offset + 1}: {exc}"
                ) from None
            if not isinstance(event, Prediction) or event.model != model:
                continue
            if seen < max_rows:
                kept.append((seen, event))
            else:
                j = int(rng.integers(0, seen + 1))
                if j < max_rows:
                    kept[j] = (seen, event)
            seen += 1
    if seen == 0:
        raise ReferenceFileError(f"{path}: no prediction events of model {model!r}")
    kept.sort(key=lambda item: item[0])
    sample = Sample.of_events([event for _, event in kept])
    return LoadedReference(sample, seen, _single_version(sample))


def _load_table(path: Path, model: str, max_rows: int, parquet: bool) -> LoadedReference:
    import pandas as pd

    kind = "Parquet" if parquet else "CSV"
    try:
        frame = pd.read_parquet(path) if parquet else pd.read_csv(path)
    except Exception as exc:  # pandas/pyarrow raise many types; all mean "not readable"
        raise ReferenceFileError(f"{path}: cannot read as {kind}: {_first_line(exc)}") from None
    if len(frame) == 0:
        raise ReferenceFileError(f"{path}: no rows")
    names = [str(c) for c in frame.columns]
    if len(set(names)) != len(names):
        raise ReferenceFileError(f"{path}: duplicate column names")
    frame.columns = names
    features = [
        c
        for c in names
        if c not in IGNORED_COLUMNS | {"prediction", "score", "ts", "model_version"}
        and not c.startswith("scores.")
    ]
    if not features:
        raise ReferenceFileError(f"{path}: no feature columns (only reserved ones)")
    source_rows = len(frame)
    if source_rows > max_rows:
        rng = np.random.default_rng(SAMPLE_SEED)
        frame = frame.iloc[np.sort(rng.choice(source_rows, max_rows, replace=False))]
    for column in names:
        kind_ = frame[column].dtype.kind
        if kind_ not in "biufOSUb" and str(frame[column].dtype) not in ("string", "boolean"):
            raise ReferenceFileError(
                f"{path}: column {column!r} has unsupported type {frame[column].dtype}; "
                "features must be numbers, strings or booleans"
            )
        if kind_ == "f" and np.isinf(frame[column].to_numpy()).any():
            raise ReferenceFileError(f"{path}: column {column!r} holds infinite values")
    records = _python_records(frame)
    events = []
    for i, row in enumerate(records):
        event: dict[str, Any] = {
            "type": "prediction",
            "model": model,
            "ts": row.get("ts", 0.0) if row.get("ts") is not None else 0.0,
            "features": {c: row[c] for c in features},
        }
        for key in ("prediction", "score", "model_version"):
            if row.get(key) is not None:
                event[key] = row[key]
        scores = {c[7:]: row[c] for c in row if c.startswith("scores.") and row[c] is not None}
        if scores:
            event["scores"] = scores
        try:
            decoded = decode_record(
                orjson.dumps(event), Position(str(path), 0, i), limits=UNJUDGED_LIMITS
            )
        except (InvalidEvent, TypeError) as exc:
            raise ReferenceFileError(f"{path}: row {i + 1}: {exc}") from None
        assert isinstance(decoded, Prediction)
        events.append(decoded)
    sample = Sample.of_events(events)
    return LoadedReference(sample, source_rows, _single_version(sample))


def _python_records(frame: Any) -> list[dict[str, Any]]:
    """Rows as dicts of plain Python values, missing values as None."""
    columns: dict[str, list[Any]] = {}
    for name in frame.columns:
        values = frame[name].astype(object).tolist()
        columns[name] = [None if _is_missing(v) else _plain(v) for v in values]
    return [dict(zip(columns, row, strict=True)) for row in zip(*columns.values(), strict=True)]


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    try:
        import pandas as pd

        return value is pd.NA or value is pd.NaT
    except ImportError:  # pragma: no cover - pandas is a dependency
        return False


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _single_version(sample: Sample) -> str | None:
    versions = set(sample.model_versions)
    if len(versions) == 1:
        return next(iter(versions))
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
