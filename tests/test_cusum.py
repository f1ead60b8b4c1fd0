"""The shared CUSUM (detectors/stats/cusum.py): its docstring examples, River's Page-Hinkley
as the reference implementation of its two-sided running-mean form, and its state."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import numpy as np
import pytest
from river.drift import PageHinkley

import detectors.stats
from detectors.stats.cusum import Cusum, drifts


@pytest.mark.parametrize(
    "module", [m.name for m in pkgutil.iter_modules(detectors.stats.__path__, "detectors.stats.")]
)
def test_the_docstring_examples_hold(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, module


def test_the_cusum_module_has_examples() -> None:
    assert doctest.testmod(importlib.import_module("detectors.stats.cusum")).attempted >= 4


def stream(seed: int, n: int = 4000) -> np.ndarray:
    """N(0,1) with a rise, a fall and a widening: something for both sides to find."""
    rng = np.random.default_rng(seed)
    values = rng.normal(size=n)
    values[n // 4 : n // 2] += 0.8
    values[n // 2 : 3 * n // 4] -= 0.6
    values[3 * n // 4 :] *= 2.0
    return values


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("k", "h"), [(0.25, 4.0), (0.9, 8.5), (0.05, 20.0)])
def test_the_two_sided_running_mean_form_is_rivers_page_hinkley(
    seed: int, k: float, h: float
) -> None:
    """Same alarms at the same values, same statistic (River computes it as a sum minus its
    extreme, we by Page's recursion: equal up to rounding)."""
    values = stream(seed)
    ours = drifts(Cusum(k, h, two_sided=True, running_mean=True), values)
    river = PageHinkley(min_instances=1, delta=k, threshold=h, alpha=1.0)
    theirs = []
    for i, x in enumerate(values.tolist()):
        river.update(x)
        if river.drift_detected:
            up = river._sum_increase - river._min_increase
            down = river._max_decrease - river._sum_decrease
            theirs.append((i, max(up, down)))
    assert len(ours) >= 3
    assert [i for i, _ in ours] == [i for i, _ in theirs]
    assert [v for _, v in ours] == pytest.approx([v for _, v in theirs], rel=1e-9)


def test_the_one_sided_form_is_pages_recursion_restarted_at_each_alarm() -> None:
    values, k, h = stream(7), 0.5, 5.0
    expected, s = [], 0.0
    for i, x in enumerate(values.tolist()):
        s = max(0.0, s + x - k)
        if s > h:
            expected.append((i, s))
            s = 0.0
    found = drifts(Cusum(k, h), values)
    assert found == expected and len(found) >= 2


@pytest.mark.parametrize("form", [{}, {"two_sided": True, "running_mean": True}])
def test_a_restored_state_goes_on_identically(form: dict[str, bool]) -> None:
    values = stream(3)
    for cut in (0, 1, 1234, 2100, len(values)):
        whole = Cusum(0.3, 6.0, **form)
        first = drifts(whole, values[:cut])
        twin = Cusum(0.3, 6.0, **form).load_state(whole.state())
        assert drifts(twin, values[cut:]) == drifts(whole, values[cut:])
        assert twin.state() == whole.state()
        assert all(isinstance(v, int | float) for v in whole.state().values())
        assert first == [(i, v) for i, v in drifts(Cusum(0.3, 6.0, **form), values) if i < cut]


def test_a_drift_is_reported_until_the_next_value_restarts_the_test() -> None:
    test = Cusum(0.0, 1.0).update(3.0)
    assert test.drift_detected and test.statistic == 3.0
    assert test.state() == {"up": 0.0}  # what the next update continues from
    assert not test.update(-1.0).drift_detected and test.statistic == 0.0
