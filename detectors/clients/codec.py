"""The input profile and a reference being collected as plain data (for `state_codec`).

The suspicious-client detector's checkpoint must hold data only (never a pickle): these turn
the objects it holds from `detectors.input_anomaly` into dicts of lists and numpy arrays of
plain dtypes, and rebuild them. Categorical values are kept as they came (str, int, bool)."""

from __future__ import annotations

from typing import Any

import numpy as np

from detectors.input_anomaly import InputProfile, ReferenceSample


def profile_to_data(profile: InputProfile) -> dict[str, Any]:
    return {
        "numeric_names": list(profile.numeric_names),
        "median": profile.median,
        "scale": profile.scale,
        "integral": profile.integral,
        "low": profile.low,
        "high": profile.high,
        "categorical_names": list(profile.categorical_names),
        "vocabulary": {
            name: sorted(values, key=repr) for name, values in profile.vocabulary.items()
        },
        "buckets": profile.buckets,
    }


def profile_from_data(data: dict[str, Any]) -> InputProfile:
    """An `InputProfile` as `profile_to_data` described it (its bucket memo starts empty)."""
    profile = InputProfile({}, {}, buckets=int(data["buckets"]))
    profile.numeric_names = list(data["numeric_names"])
    profile.median = np.asarray(data["median"], dtype=np.float64)
    profile.scale = np.asarray(data["scale"], dtype=np.float64)
    profile.integral = np.asarray(data["integral"], dtype=bool)
    profile.low = np.asarray(data["low"], dtype=np.float64)
    profile.high = np.asarray(data["high"], dtype=np.float64)
    profile.categorical_names = list(data["categorical_names"])
    profile.vocabulary = {name: set(values) for name, values in data["vocabulary"].items()}
    profile._bucket_memo = {name: {} for name in profile.categorical_names}
    return profile


def sample_to_data(sample: ReferenceSample) -> dict[str, Any]:
    numeric, categorical = sample.columns()
    return {
        "size": sample.size,
        "count": sample.count,
        "numeric": {name: np.asarray(v, dtype=np.float64) for name, v in numeric.items()},
        "categorical": {name: list(v) for name, v in categorical.items()},
    }


def sample_from_data(data: dict[str, Any]) -> ReferenceSample:
    sample = ReferenceSample(int(data["size"]))
    sample.count = int(data["count"])
    sample.numeric = {
        name: [np.asarray(v, dtype=np.float64)] for name, v in data["numeric"].items()
    }
    sample.categorical = {
        name: [np.array(v, dtype=object)] for name, v in data["categorical"].items()
    }
    return sample
