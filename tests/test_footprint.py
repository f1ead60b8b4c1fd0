"""What every Bulwark process loads: the import floor is part of the memory budget."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from detectors.categorical_drift import js_distance

# Evidently, and what it pulls in, only for reports; the web framework only when serving.
# River: its drift package would pull in scikit-learn and pandas, and the detectors' CUSUM is
# their own (detectors/stats/cusum.py; tests/test_cusum.py checks it against River's).
HEAVY = ("sklearn", "pandas", "scipy.stats", "evidently", "litestar", "uvicorn", "river")


def test_the_agent_and_its_default_detectors_do_not_import_heavy_libraries() -> None:
    """scikit-learn and pandas cost ~150 MB resident; the API's framework costs every
    command ~0.15 s."""
    code = (
        "import sys, agent.cli, agent.runtime.daemon, detectors.registry\n"
        "print(','.join(m for m in sys.argv[1:] if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *HEAVY], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out == [""]


@pytest.mark.parametrize(
    ("p", "q", "expected"),
    [([0.5, 0.5], [0.5, 0.5], 0.0), ([1.0, 0.0], [0.0, 1.0], 1.0)],
)
def test_js_distance_bounds(p: list[float], q: list[float], expected: float) -> None:
    assert js_distance(np.array(p), np.array(q)) == pytest.approx(expected, abs=1e-12)


def test_js_distance_matches_its_definition() -> None:
    p, q = np.array([0.2, 0.3, 0.5]), np.array([0.6, 0.3, 0.1])
    m = (p + q) / 2
    kl = lambda a, b: float(np.sum(a * np.log2(a / b)))  # noqa: E731
    assert js_distance(p, q) == pytest.approx(np.sqrt((kl(p, m) + kl(q, m)) / 2), rel=1e-12)
