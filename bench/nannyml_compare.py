"""Bulwark and NannyML side by side on the datasets NannyML ships.

NannyML runs in a side virtual environment (it is never a dependency of Bulwark):

    python3 -m venv bench/.venv-nannyml
    bench/.venv-nannyml/bin/pip install nannyml==0.13.1 statsmodels "pandas<3"
    PYTHONPATH=. .venv/bin/python bench/nannyml_compare.py            # all seven datasets
    PYTHONPATH=. .venv/bin/python bench/nannyml_compare.py --datasets car_price,multiclass

bench/nannyml_side.py (in the side environment) loads each dataset from the package, writes
its reference and analysis frames as CSV and NannyML's results at its defaults as JSON:
univariate drift, PCA data reconstruction, CBPE (classification) or DLE (regression) and the
realized performance, each per chunk of the analysis frame. This script turns the frames into
Bulwark events (one per row, one second apart, the analysis row's label right after its
prediction), stores the reference with `bulwark reference set`, runs `bulwark replay` at the
default settings on a fresh SQLite file, and prints per dataset and feature (or metric)
where each tool first flagged after the change and how often it flagged before it.

The synthetic datasets change halfway through the analysis frame (NannyML's documentation);
the first half is reference-like, and every flag there is a false alarm. The census and
California housing frames have no known change point: they are counted as drifted throughout.
A NannyML flag is available at the end of its chunk; its row is the chunk's last row.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
from scipy.stats import ks_2samp

from detectors.categorical_drift import stability_index

ROOT = Path(__file__).resolve().parent.parent
SIDE_PYTHON = ROOT / "bench" / ".venv-nannyml" / "bin" / "python"
SIDE_SCRIPT = ROOT / "bench" / "nannyml_side.py"
START_TS = 1_767_225_600.0  # 2026-01-01 UTC; row i of the analysis frame is at START_TS + i
DATASETS = [
    "car_loan",
    "work_from_home",
    "multiclass",
    "car_price",
    "census_employment",
    "california_housing",
    "car_loan_missing",
]
# Where the analysis frame changes (NannyML's documentation of its synthetic data sets);
# None: no reference-like part.
CHANGE_AT = {
    "car_loan": 25_000,
    "work_from_home": 25_000,
    "multiclass": 30_000,
    "car_price": 30_000,
    "census_employment": None,
    "california_housing": None,
    "car_loan_missing": 25_000,
}


def _value(v: Any) -> Any:
    if isinstance(v, float | np.floating):
        return None if math.isnan(v) else float(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return None if v is None or v is pd.NA else v


def events(frame: pd.DataFrame, info: dict[str, Any], labels: bool) -> list[bytes]:
    """One prediction event per row (and its label right after it when `labels`)."""
    model, features = info["dataset"], info["features"]
    out = []
    columns = {c: frame[c].tolist() for c in frame.columns}
    for i in range(len(frame)):
        ts = START_TS + i
        event: dict[str, Any] = {
            "type": "prediction",
            "model": model,
            "id": f"{model}-{i}",
            "ts": ts,
            "features": {f: _value(columns[f][i]) for f in features},
            "prediction": _value(columns[info["prediction"]][i]),
        }
        if info["problem"] == "classification_binary":
            p = float(columns[info["scores"][0]][i])
            event["prediction"] = int(event["prediction"])
            event["scores"] = {"0": 1 - p, "1": p}
        elif info["problem"] == "classification_multiclass":
            scores = {cls: float(columns[col][i]) for col, cls in info["classes"].items()}
            total = sum(scores.values())
            event["scores"] = {cls: p / total for cls, p in scores.items()}
        out.append(orjson.dumps(event))
        if labels:
            label = _value(columns[info["target"]][i])
            if label is not None:
                if info["problem"] == "classification_binary":
                    label = int(label)
                out.append(
                    orjson.dumps(
                        {
                            "type": "label",
                            "model": model,
                            "id": f"{model}-{i}",
                            "label": label,
                            "ts": ts + 0.5,
                        }
                    )
                )
    return out


def bulwark(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "agent", *args], capture_output=True, text=True, cwd=ROOT
    )
    if done.returncode != 0:
        sys.exit(f"bulwark {' '.join(args)} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def run_bulwark(name: str, info: dict[str, Any], out_dir: Path, reuse: bool) -> list[dict]:
    """Every incident `bulwark replay` opens on the analysis frame, reference stored first
    (with `reuse`, those of an earlier run's database when there is one)."""
    db_file = out_dir / f"{name}.db"
    db = f"sqlite:///{db_file}"
    if not (reuse and db_file.exists()):
        reference = pd.read_csv(out_dir / f"{name}.reference.csv")
        analysis = pd.read_csv(out_dir / f"{name}.analysis.csv")
        ref_file = out_dir / f"{name}.reference.jsonl"
        analysis_file = out_dir / f"{name}.events.jsonl"
        ref_file.write_bytes(b"\n".join(events(reference, info, labels=False)) + b"\n")
        analysis_file.write_bytes(b"\n".join(events(analysis, info, labels=True)) + b"\n")
        db_file.unlink(missing_ok=True)
        bulwark("reference", "set", name, str(ref_file), "--db", db)
        bulwark("replay", str(analysis_file), "--db", db)
    return json.loads(bulwark("incidents", "list", "--all", "--format", "json", "--db", db))


@dataclass
class Row:
    subject: str
    nannyml: str  # NannyML's method
    nannyml_first: int | None  # row of its first flag after the change
    nannyml_false: int  # flags before the change
    bulwark: str  # Bulwark's incident kind(s)
    bulwark_first: int | None
    bulwark_false: int


def _nannyml_flags(
    flags: list[bool], chunks: list[list[int]], change: int
) -> tuple[int | None, int]:
    """First flagged chunk's last row from the change on, and flags in chunks before it."""
    after = [end for (start, end), f in zip(chunks, flags, strict=True) if f and start >= change]
    before = sum(f for (start, end), f in zip(chunks, flags, strict=True) if f and end < change)
    return (min(after) if after else None), before


def _bulwark_flags(incidents: list[dict[str, Any]], change: int) -> tuple[int | None, int]:
    rows = sorted(int(i["first_seen"] - START_TS) for i in incidents)
    after = [r for r in rows if r >= change]
    return (after[0] if after else None), sum(r < change for r in rows)


SUBJECT_OF_METRIC = {"classification": "accuracy", "regression": "mae"}


def compare(name: str, nml: dict[str, Any], incidents: list[dict[str, Any]]) -> list[Row]:
    change = CHANGE_AT[name] or 0
    chunks = nml["chunks"]
    rows = []
    for feature in nml["features"]:
        flags = nml["univariate"].get(feature, [False] * len(chunks))
        mine = [
            i
            for i in incidents
            if i["subject"] == feature and i["kind"] in ("feature_drift", "data_quality")
        ]
        kinds = ",".join(sorted({i["kind"] for i in mine})) or "feature_drift"
        rows.append(
            Row(
                feature,
                "univariate",
                *_nannyml_flags(flags, chunks, change),
                kinds,
                *_bulwark_flags(mine, change),
            )
        )
    multi_flags = next(iter(nml["multivariate"].values()), [False] * len(chunks))
    rows.append(
        Row(
            "* (joint)",
            "PCA reconstruction",
            *_nannyml_flags(multi_flags, chunks, change),
            "multivariate_drift",
            *_bulwark_flags([i for i in incidents if i["kind"] == "multivariate_drift"], change),
        )
    )
    outputs = [i for i in incidents if i["kind"] == "prediction_drift"]
    rows.append(Row("outputs", "-", None, 0, "prediction_drift", *_bulwark_flags(outputs, change)))
    # Bulwark's label-free estimates are the accuracy_drop subjects named estimated_*.
    performance = [i for i in incidents if i["kind"] == "accuracy_drop"]
    estimated = [i for i in performance if i["subject"].startswith("estimated")]
    measured = [i for i in performance if not i["subject"].startswith("estimated")]
    for label, part, results in (
        (f"{nml['method']['estimated'].split()[0]} (estimated)", estimated, nml["estimated"]),
        ("realized", measured, nml["realized"]),
    ):
        subjects = ",".join(sorted({i["subject"] for i in part}))
        for metric, flags in results.items():
            rows.append(
                Row(
                    metric,
                    label,
                    *_nannyml_flags(flags, chunks, change),
                    f"accuracy_drop ({subjects})" if part else "accuracy_drop",
                    *_bulwark_flags(part, change),
                )
            )
    return rows


def _cell(first: int | None, change: int) -> str:
    return "-" if first is None else f"{first:,} (+{first - change:,})"


def print_table(name: str, nml: dict[str, Any], rows: list[Row]) -> None:
    change = CHANGE_AT[name]
    print(
        f"\n## {name} ({nml['problem']}; reference {nml['reference_rows']:,} rows, analysis "
        f"{nml['analysis_rows']:,}; "
        + (f"change at analysis row {change:,})" if change else "no known change point)")
    )
    print(
        "| subject | NannyML method | NannyML first flag, row (+after change) | NannyML false | "
        "Bulwark kind | Bulwark first flag | Bulwark false |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r.subject} | {r.nannyml} | {_cell(r.nannyml_first, change or 0)} | "
            f"{r.nannyml_false} | {r.bulwark} | {_cell(r.bulwark_first, change or 0)} | "
            f"{r.bulwark_false} |"
        )


def quoted_figures(out_dir: Path, names: list[str]) -> None:
    """The effect sizes the issue quoted, measured on the same frames."""
    print("\n## Effect sizes the issue quoted (drifted half of the analysis vs the reference)")
    if "multiclass" in names:
        ref = pd.read_csv(out_dir / "multiclass.reference.csv")
        ana = pd.read_csv(out_dir / "multiclass.analysis.csv")[CHANGE_AT["multiclass"] :]
        ratio = ana["app_behavioral_score"].std() / ref["app_behavioral_score"].std()
        print(f"multiclass app_behavioral_score std ratio {ratio:.3f}")
    if "car_price" in names:
        ref = pd.read_csv(out_dir / "car_price.reference.csv")
        analysis = pd.read_csv(out_dir / "car_price.analysis.csv")
        ana = analysis[CHANGE_AT["car_price"] :]
        half = len(ref) // 2
        for feature in ("km_driven", "car_age"):
            ks = ks_2samp(ref[feature], ana[feature]).statistic
            within = ks_2samp(ref[feature][:half], ref[feature][half:]).statistic
            shift = (ana[feature].mean() - ref[feature].mean()) / ref[feature].std()
            per_chunk = [
                ks_2samp(ref[feature], ana[feature][a : a + 6000]).statistic
                for a in range(0, len(ana), 6000)
            ]
            print(
                f"car_price {feature}: KS {ks:.3f} (between the reference's halves {within:.3f}; "
                f"per 6,000-row chunk {min(per_chunk):.3f}-{max(per_chunk):.3f}), "
                f"standardized mean shift {shift:+.3f}"
            )
        shares = pd.concat(
            [
                ref["transmission"].value_counts(normalize=True),
                ana["transmission"].value_counts(normalize=True),
            ],
            axis=1,
        ).fillna(0.0)
        psi = stability_index(shares.iloc[:, 0].to_numpy(), shares.iloc[:, 1].to_numpy())
        print(f"car_price transmission PSI {psi:.3f}")
        stationary = analysis[: CHANGE_AT["car_price"]]
        for label, part in (
            ("reference", ref),
            ("analysis before the change", stationary),
            ("analysis after the change", ana),
        ):
            mae = (part["y_pred"] - part["y_true"]).abs().mean()
            print(f"car_price MAE, {label}: {mae:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", help="comma-separated, default all: " + ",".join(DATASETS))
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "nannyml"))
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="reuse NannyML's results and Bulwark's databases of an earlier run",
    )
    args = parser.parse_args()
    names = args.datasets.split(",") if args.datasets else DATASETS
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results_file = out_dir / "nannyml.json"
    if not (args.reuse and results_file.exists()):
        if not SIDE_PYTHON.exists():
            sys.exit(
                f"no NannyML environment at {SIDE_PYTHON.parent.parent}; create it with: "
                "python3 -m venv bench/.venv-nannyml && "
                "bench/.venv-nannyml/bin/pip install nannyml==0.13.1 statsmodels 'pandas<3'"
            )
        subprocess.run([str(SIDE_PYTHON), str(SIDE_SCRIPT), str(out_dir), *names], check=True)
    results = json.loads(results_file.read_text())
    print(f"{__doc__.splitlines()[0]} (NannyML {results['nannyml_version']}, defaults both sides)")
    totals = {"stationary rows": 0, "NannyML false": 0, "Bulwark false": 0}
    for name in names:
        nml = results["datasets"][name]
        print(f"bulwark: {name}", file=sys.stderr, flush=True)
        incidents = run_bulwark(name, nml, out_dir, args.reuse)
        rows = compare(name, nml, incidents)
        print_table(name, nml, rows)
        if CHANGE_AT[name]:
            totals["stationary rows"] += CHANGE_AT[name] or 0
            totals["NannyML false"] += sum(r.nannyml_false for r in rows)
            totals["Bulwark false"] += sum(r.bulwark_false for r in rows)
    print(
        f"\nreference-like analysis rows: {totals['stationary rows']:,}; flags there: "
        f"NannyML {totals['NannyML false']}, Bulwark {totals['Bulwark false']}"
    )
    quoted_figures(out_dir, names)


if __name__ == "__main__":
    main()
