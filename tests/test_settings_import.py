"""The configuration loads without the numeric stack: every detector's settings live in
detectors/settings.py (pydantic only), Kafka's in streams/kafka_settings.py."""

from __future__ import annotations

import subprocess
import sys

import pytest

NUMERIC_STACK = ("numpy", "scipy", "river", "kafka", "sklearn", "pandas")


@pytest.mark.parametrize("module", ["agent.config", "detectors.settings"])
def test_importing_the_configuration_loads_no_numeric_library(module: str) -> None:
    code = f"import sys, {module}\nprint(','.join(m for m in sys.argv[1:] if m in sys.modules))\n"
    out = subprocess.run(
        [sys.executable, "-c", code, *NUMERIC_STACK], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ""


def test_a_full_configuration_validates_without_the_detectors() -> None:
    """Defaults and a per-model override, validated and merged with no detector imported."""
    code = (
        "import sys\n"
        "from agent.config import Settings\n"
        "s = Settings.model_validate({'models': {'m': {'detectors': "
        "{'numeric_drift': {'min_effect_size': 0.5}}}}, 'kafka': {'topics': 'a,b'}})\n"
        "assert s.detectors_for('m').numeric_drift.min_effect_size == 0.5\n"
        "assert s.kafka.topics == ['a', 'b']\n"
        "print(','.join(m for m in sys.modules if m.startswith('detectors.')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "detectors.settings"
