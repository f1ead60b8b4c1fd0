"""Evidently reports: a model's reference against its recent window.

The window comes from the recent predictions the pipeline writes with its checkpoints
(`recent_samples`), so a report can be built in any process. Each report stores a compact JSON
summary in the database (table `reports`), writes Evidently's HTML next to it on disk, and is
linked (table `incident_reports`) to every incident of the model that has evidence inside the
window, in event time.

Evidently takes seconds to import, so it is imported here only, inside `_run_evidently`.
"""

from __future__ import annotations

import logging
import re
import uuid
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from sqlalchemy.engine import make_url

from agent.config import Settings
from agent.samples import Sample
from storage.db import Database, data_dir
from storage.models import Report
from storage.queries import Repository
from storage.unit_of_work import run

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

_WINDOW = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|events?)?\s*$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# Evidently drift methods whose score is a p-value: drift when the score is *below* threshold.
_P_VALUE_METHODS = ("p_value", "Anderson-Darling", "Mann-Whitney", "t_test", "g_test", "Fisher")


class ReportError(ValueError):
    """A report that cannot be built (no reference, no recent data); one line."""


@dataclass(frozen=True, slots=True)
class Window:
    """The last `seconds` of event time, or the last `events` predictions (None: all kept)."""

    seconds: float | None = None
    events: int | None = None

    def describe(self) -> str:
        if self.seconds is not None:
            return f"last {self.seconds:g}s"
        if self.events is not None:
            return f"last {self.events} events"
        return "all recent events"


def parse_window(text: str) -> Window:
    """`1h`, `30m`, `2d`, `90s` (event time) or `5000` / `5000 events`."""
    match = _WINDOW.match(text)
    if not match or float(match[1]) <= 0:
        raise ReportError(
            f"--window must be a duration like 1h, 30m, 2d or a count like 5000: {text!r}"
        )
    unit = match[2]
    if unit in _SECONDS:
        return Window(seconds=float(match[1]) * _SECONDS[unit])
    if not float(match[1]).is_integer():
        raise ReportError(f"--window event count must be a whole number: {text!r}")
    return Window(events=int(float(match[1])))


@dataclass(frozen=True, slots=True)
class ReportOutcome:
    report: Report
    incident_ids: list[int]


def reports_dir(settings: Settings, db: Database) -> Path:
    """The configured directory, else `reports/` next to the SQLite file, else the data dir."""
    if settings.reports.dir is not None:
        return Path(settings.reports.dir).expanduser()
    if db.is_sqlite:
        database = make_url(db.url).database
        if database and database != ":memory:":
            return Path(database).expanduser().resolve().parent / "reports"
    return data_dir() / "reports"


def recent_window(repository: Repository, model: str, window: Window) -> Sample:
    """The model's stored recent predictions (all partitions), cut to the window."""
    parts = [Sample.decode(row.sample) for row in repository.recent_samples(model)]
    sample = Sample.concat(parts).sorted_by_time()
    if len(sample) == 0:
        raise ReportError(
            f"no recent predictions of model {model!r} are stored yet "
            "(the pipeline writes them with its checkpoints)"
        )
    if window.events is not None:
        return sample.take(range(max(0, len(sample) - window.events), len(sample)))
    if window.seconds is not None:
        end = sample.ts[-1]
        return sample.take(np.flatnonzero(np.asarray(sample.ts) >= end - window.seconds))
    return sample


def build_report(
    settings: Settings,
    db: Database,
    model: str,
    window: Window = Window(),
    out: Path | None = None,
    skip_if_unchanged: bool = False,
) -> ReportOutcome | None:
    """Builds, stores and links one report; None when `skip_if_unchanged` and no prediction
    arrived since the model's latest report."""
    repository = Repository(db)
    current = db.retrying(lambda: recent_window(repository, model, window))
    start, end = min(current.ts), max(current.ts)
    if skip_if_unchanged:
        latest = db.retrying(lambda: repository.list_reports(model, limit=1))
        if latest and latest[0].window_end >= end:
            return None
    versions = {v for v in current.model_versions if v is not None}
    version = versions.pop() if len(versions) == 1 else None
    row = db.retrying(lambda: repository.find_reference(model, version))
    if row is None:
        raise ReportError(
            f"model {model!r} has no reference yet: set one with 'bulwark reference set' "
            "or let the pipeline learn it from the first events"
        )
    reference = Sample.decode(row.sample)
    path = out or reports_dir(settings, db) / _file_name(model, end)
    path.parent.mkdir(parents=True, exist_ok=True)
    summary = _run_evidently(reference, current, path)
    summary["reference"] = {
        "id": row.id,
        "model_version": row.model_version or None,
        "origin": row.origin,
    }
    summary["window"] = {
        "start": start,
        "end": end,
        "events": len(current),
        "requested": window.describe(),
    }
    report, incident_ids = run(
        db, lambda uow: uow.reports.add(model, (start, end), row.id, summary, str(path.resolve()))
    )
    return ReportOutcome(report, incident_ids)


def run_scheduled_reports(settings: Settings, db: Database) -> list[ReportOutcome]:
    """One report per model with new recent predictions; a failing model does not stop the
    others (the scheduler job)."""
    outcomes = []
    for model in db.retrying(Repository(db).models_with_recent_samples):
        try:
            outcome = build_report(settings, db, model, skip_if_unchanged=True)
        except ReportError as exc:
            log.info("no report for model %s: %s", model, exc)
            continue
        except Exception:
            log.exception("report for model %s failed", model)
            continue
        if outcome is not None:
            outcomes.append(outcome)
    return outcomes


def _file_name(model: str, end: float) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", model)[:80]
    when = datetime.fromtimestamp(end, UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{safe}_{when}_{uuid.uuid4().hex[:8]}.html"


def _run_evidently(reference: Sample, current: Sample, html: Path) -> dict[str, Any]:
    """Runs the data drift and data summary presets, saves the HTML, returns the summary."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset, DataSummaryPreset

    ref_frame, cur_frame, numeric, categorical = _aligned_frames(reference, current)
    if not numeric and not categorical:
        raise ReportError("reference and window share no column with values")
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    # Evidently's correlations divide by zero on constant columns; its warnings are noise here.
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        snapshot = Report([DataDriftPreset(), DataSummaryPreset()]).run(
            Dataset.from_pandas(cur_frame, data_definition=definition),
            Dataset.from_pandas(ref_frame, data_definition=definition),
        )
        snapshot.save_html(str(html))
    summary = _json_safe(_summarize(snapshot.dict()["metrics"]))
    summary["rows"] = {"reference": len(ref_frame), "current": len(cur_frame)}
    return summary


def _aligned_frames(
    reference: Sample, current: Sample
) -> tuple[pd.DataFrame, pd.DataFrame, list[str], list[str]]:
    """Both samples over the union of their columns, each column numeric or categorical.

    A column is numeric when every value on both sides is a number (booleans excluded);
    anything else is categorical, its values as JSON text (`"DE"`, `true`, `1`) so that the
    string "1" and the number 1 stay distinct categories.
    """
    ref, cur = reference.to_frame(), current.to_frame()
    columns = list(dict.fromkeys([*ref.columns, *cur.columns]))
    ref, cur = ref.reindex(columns=columns), cur.reindex(columns=columns)
    numeric, categorical = [], []
    for column in columns:
        values = [v for v in (*ref[column].tolist(), *cur[column].tolist()) if not _missing(v)]
        if not values:
            continue
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            numeric.append(column)
            ref[column] = ref[column].astype(float)
            cur[column] = cur[column].astype(float)
        else:
            categorical.append(column)
            ref[column] = [None if _missing(v) else _category(v) for v in ref[column]]
            cur[column] = [None if _missing(v) else _category(v) for v in cur[column]]
    keep = numeric + categorical
    return ref[keep], cur[keep], numeric, categorical


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _category(value: Any) -> str:
    return orjson.dumps(value.item() if isinstance(value, np.generic) else value).decode()


def _json_safe(value: Any) -> Any:
    """NaN and infinities (Evidently's std of one value, for instance) as null: strict JSON
    columns (PostgreSQL) reject them."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _summarize(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """The parts of Evidently's snapshot worth keeping in the database."""
    drift: dict[str, Any] = {"columns": {}}
    columns: dict[str, dict[str, Any]] = {}
    stat_names = {
        "MeanValue": "mean",
        "StdValue": "std",
        "MinValue": "min",
        "MaxValue": "max",
    }
    for metric in metrics:
        config = metric.get("config", {})
        kind = str(config.get("type", "")).rsplit(":", 1)[-1]
        value: Any = metric.get("value")  # its shape depends on the metric's kind
        column = config.get("column")
        if kind == "DriftedColumnsCount":
            drift["drifted_columns"] = int(value["count"])
            drift["drifted_share"] = round(float(value["share"]), 6)
        elif kind == "ValueDrift" and column is not None:
            method, threshold = str(config.get("method")), float(config.get("threshold"))
            p_value = any(m in method for m in _P_VALUE_METHODS)
            drift["columns"][column] = {
                "method": method,
                "threshold": threshold,
                "score": float(value),
                "drifted": bool(value < threshold if p_value else value >= threshold),
            }
        elif kind in stat_names and column is not None:
            columns.setdefault(column, {})[stat_names[kind]] = float(value)
        elif kind == "MissingValueCount" and column is not None:
            columns.setdefault(column, {})["missing_share"] = round(float(value["share"]), 6)
        elif kind == "UniqueValueCount" and column is not None:
            shares = sorted(value["shares"].items(), key=lambda kv: -kv[1])[:10]
            columns.setdefault(column, {})["top"] = {k: round(float(v), 6) for k, v in shares}
        elif kind == "RowCount":
            drift["current_rows"] = int(value)
    return {"drift": drift, "columns": columns}
