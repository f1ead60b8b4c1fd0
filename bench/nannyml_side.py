"""NannyML's half of bench/nannyml_compare.py: runs in the side virtual environment
(bench/.venv-nannyml, NannyML installed), never in Bulwark's.

For each dataset NannyML ships it writes the reference and analysis frames (analysis with its
targets joined) as CSV, with a JSON description of their columns, so that the Bulwark side can
turn them into events; then runs NannyML at its defaults (univariate drift, multivariate PCA
data reconstruction, CBPE or DLE, realized performance) and writes, per method, which
analysis chunks it flagged.

    bench/.venv-nannyml/bin/python bench/nannyml_side.py OUT_DIR
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("NML_DISABLE_USAGE_LOGGING", "1")  # no network calls from the bench

import nannyml as nml
import pandas as pd


def _load(name: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    loaders = {
        "car_loan": nml.load_synthetic_car_loan_dataset,
        "work_from_home": nml.load_synthetic_binary_classification_dataset,
        "multiclass": nml.load_synthetic_multiclass_classification_dataset,
        "car_price": nml.load_synthetic_car_price_dataset,
        "census_employment": nml.load_us_census_ma_employment_data,
        "california_housing": nml.load_modified_california_housing_dataset,
        "car_loan_missing": nml.load_synthetic_car_loan_data_quality_dataset,
    }
    return loaders[name]()


DATASETS = [
    "car_loan",
    "work_from_home",
    "multiclass",
    "car_price",
    "census_employment",
    "california_housing",
    "car_loan_missing",
]
# Columns that are neither model inputs nor outputs.
NOT_FEATURES = {"timestamp", "id", "period", "year", "y_true", "y_pred", "prediction"}
TARGETS = ("y_true", "repaid", "work_home_actual", "employed", "clf_target")


def describe(name: str, reference: pd.DataFrame, analysis: pd.DataFrame) -> dict[str, Any]:
    """Which columns are features, outputs and the target, and the problem type."""
    target = next(c for c in TARGETS if c in reference.columns)
    scores = [
        c for c in reference.columns if c.startswith("y_pred_proba") or c == "predicted_probability"
    ]
    prediction = "y_pred" if "y_pred" in reference.columns else "prediction"
    problem = (
        "regression"
        if not scores
        else "classification_multiclass"
        if len(scores) > 1
        else "classification_binary"
    )
    features = [
        c for c in reference.columns if c not in NOT_FEATURES and c != target and c not in scores
    ]
    classes = {c: c.removeprefix("y_pred_proba_") for c in scores} if len(scores) > 1 else {}
    return {
        "dataset": name,
        "problem": problem,
        "features": features,
        "categorical": [c for c in features if not pd.api.types.is_numeric_dtype(reference[c])],
        "target": target,
        "prediction": prediction,
        "scores": scores,
        "classes": classes,
        "reference_rows": len(reference),
        "analysis_rows": len(analysis),
    }


def flagged(result: Any, method: str | None = None) -> dict[str, list[bool]]:
    """Per column (or metric), whether each analysis chunk raised NannyML's alert."""
    frame = result.filter(period="analysis").to_df()
    out: dict[str, list[bool]] = {}
    for column in frame.columns:
        if column[-1] != "alert":
            continue
        key = column[0] if method is None or column[1] == method else None
        if len(column) == 3 and method is not None and column[1] != method:
            continue
        out[str(column[0] if key is None else key)] = [bool(v) for v in frame[column]]
    return out


def chunks_of(result: Any) -> list[list[int]]:
    """Each analysis chunk's first and last row (0 = the analysis frame's first)."""
    frame = result.filter(period="analysis").to_df()
    start = next(c for c in frame.columns if c[0] == "chunk" and c[-1] == "start_index")
    end = next(c for c in frame.columns if c[0] == "chunk" and c[-1] == "end_index")
    return [[int(a), int(b)] for a, b in zip(frame[start], frame[end], strict=True)]


def run(name: str, out_dir: Path) -> dict[str, Any]:
    reference, analysis, targets = _load(name)
    info = describe(name, reference, analysis)
    if info["target"] not in analysis.columns:
        analysis = analysis.merge(targets, on="id", how="left", validate="one_to_one")
    reference.to_csv(out_dir / f"{name}.reference.csv", index=False)
    analysis.to_csv(out_dir / f"{name}.analysis.csv", index=False)

    features, target = info["features"], info["target"]
    univariate = nml.UnivariateDriftCalculator(column_names=features).fit(reference)
    uni = univariate.calculate(analysis)
    pca = nml.DataReconstructionDriftCalculator(column_names=features).fit(reference)
    multi = pca.calculate(analysis)
    if info["problem"] == "regression":
        metrics = ["mae", "rmse"]
        estimator = nml.DLE(
            feature_column_names=features, y_pred=info["prediction"], y_true=target, metrics=metrics
        )
        scores: Any = None
    else:
        metrics = ["roc_auc", "f1", "accuracy"]
        scores = info["scores"][0] if len(info["scores"]) == 1 else info["classes"]
        scores = {cls: col for col, cls in info["classes"].items()} if info["classes"] else scores
        estimator = nml.CBPE(
            y_pred_proba=scores,
            y_pred=info["prediction"],
            y_true=target,
            metrics=metrics,
            problem_type=info["problem"],
        )
    estimated = estimator.fit(reference).estimate(analysis)
    realized = (
        nml.PerformanceCalculator(
            y_pred=info["prediction"],
            y_true=target,
            metrics=metrics,
            problem_type=info["problem"],
            **({} if scores is None else {"y_pred_proba": scores}),
        )
        .fit(reference)
        .calculate(analysis)
    )
    return {
        **info,
        "chunks": chunks_of(uni),
        "univariate": flagged(uni),
        "multivariate": flagged(multi),
        "estimated": flagged(estimated),
        "realized": flagged(realized),
        "method": {
            "univariate": "UnivariateDriftCalculator at its defaults",
            "multivariate": "DataReconstructionDriftCalculator at its defaults",
            "estimated": ("DLE" if scores is None else "CBPE") + f" {metrics}",
            "realized": f"PerformanceCalculator {metrics}",
        },
    }


def main() -> None:
    out_dir = Path(sys.argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {"nannyml_version": nml.__version__, "datasets": {}}
    for name in sys.argv[2:] or DATASETS:
        print(f"nannyml: {name}", file=sys.stderr, flush=True)
        results["datasets"][name] = run(name, out_dir)
    (out_dir / "nannyml.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
