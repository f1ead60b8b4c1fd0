"""Cost of `suspicious_client` now against a git revision, in one process on the same stream.

The revision's `detectors` package is exported to a temporary directory under another name
(`detectors_<rev>`, its imports renamed), so both versions run in this process on the same
batches of `bench/clients.py`'s traffic, alternating (`--rounds`), each timed by
`time.process_time` around `update` only. Prints per seed the median microseconds per query of
each version and their ratio (this / before): on a shared machine the ratio, measured side by
side, means more than either figure.

    PYTHONPATH=. .venv/bin/python bench/clients_ab.py --before HEAD~1 --seeds 103 104 105
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.clients import batches, traffic  # noqa: E402
from detectors.clients.detector import QueryPatternDetector  # noqa: E402


def export(rev: str, into: Path) -> str:
    """The revision's `detectors` as package `detectors_<rev>` under `into`; its name."""
    name = "detectors_" + "".join(c if c.isalnum() else "_" for c in rev)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "detectors"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    (into / "detectors").rename(into / name)
    for path in (into / name).rglob("*.py"):
        text = path.read_text()
        text = text.replace("from detectors.", f"from {name}.").replace(
            "import detectors.", f"import {name}."
        )
        text = text.replace("from detectors import", f"from {name} import")
        path.write_text(text)
    return name


def cost(detector_class: type, model_batches: list, queries: int) -> float:
    detector = detector_class("fraud")
    busy = 0.0
    for b in model_batches:
        t0 = time.process_time()
        detector.update(b)
        busy += time.process_time() - t0
    return busy / queries * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="HEAD", help="git revision to compare with")
    parser.add_argument("--seeds", type=int, nargs="+", default=[103, 104, 105])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        name = export(args.before, Path(tmp))
        sys.path.insert(0, tmp)
        # The detector's module before and after the clients/ package split.
        module = (
            "clients.detector"
            if (Path(tmp) / name / "clients" / "detector.py").exists()
            else "query_patterns"
        )
        old = importlib.import_module(f"{name}.{module}").QueryPatternDetector
        for seed in args.seeds:
            queries, _, _ = traffic(seed)
            model_batches = batches(queries)
            now, before = [], []
            for _ in range(args.rounds):
                before.append(cost(old, model_batches, len(queries)))
                now.append(cost(QueryPatternDetector, model_batches, len(queries)))
            a, b = float(np.median(now)), float(np.median(before))
            print(
                f"seed {seed}: {len(queries)} queries; this {a:.2f} us/query, "
                f"{args.before} {b:.2f} us/query (medians of {args.rounds}); ratio {a / b:.3f}"
            )


if __name__ == "__main__":
    main()
