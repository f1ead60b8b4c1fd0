"""What every Bulwark process loads: the import floor is part of the memory budget."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from detectors.categorical_drift import js_distance

# Evidently, and what it pulls in, only for reports; the web framework only when serving.
HEAVY = ("sklearn", "pandas", "scipy.stats", "evidently", "litestar", "uvicorn")


def test_the_agent_and_its_default_detectors_do_not_import_heavy_libraries() -> None:
    """River's drift package would pull in scikit-learn and pandas (~150 MB resident); the
    API's framework costs every command ~0.15 s."""
    code = (
        "import sys, agent.cli, agent.runtime.daemon, detectors.registry\n"
        "from detectors.numeric_drift import PageHinkley\n"
        "print(','.join(m for m in sys.argv[1:] if m in sys.modules))\n"
        "print(PageHinkley.__module__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *HEAVY], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out == ["", "river.drift.page_hinkley"]


def test_page_hinkley_is_rivers_own_class_whichever_way_it_is_imported() -> None:
    from river.base import DriftDetector
    from river.drift import PageHinkley as usual

    from detectors.numeric_drift import PageHinkley

    assert PageHinkley is usual
    assert issubclass(PageHinkley, DriftDetector)


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
