"""The soak scenario of tests/test_soak.py with 60-second outages (issue 16's figures): one
daemon consuming a stream with injected drifts, SIGKILLed three times, with PostgreSQL, the
Kafka broker and the webhook receiver each down for 60 s. Prints the timeline and the
verdicts; exits 1 if any fails. Takes about six minutes: run it with `nice -n 10`.

    .venv/bin/python bench/soak.py [--outage 60]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.soak import run_soak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outage", type=float, default=60.0, help="seconds per outage")
    parser.add_argument("--events", type=int, default=4000, help="predictions per model")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bulwark-soak-") as work:
        result = run_soak(Path(work), outage=args.outage, events_per_model=args.events)
    print("\n".join(result.timeline))
    per_change = Counter((incident, key, reason) for _, incident, key, reason, _ in result.outbox)
    verdicts = {
        "never exited on its own": not result.exited_on_its_own,
        "SIGTERM exit 0": result.final_exit_code == 0,
        "incidents equal a clean replay's": result.daemon == result.replayed,
        "paused for the database outage, then resumed": "consumption paused" in result.logs
        and "consumption resumed" in result.logs,
        "every notification delivered": {s for *_, s in result.outbox} == {"delivered"},
        "one outbox row per incident change": max(per_change.values(), default=1) == 1,
        "one delivery per incident, dedup key and reason": set(result.received) == set(per_change)
        and all(len(ids) == 1 for ids in result.received.values()),
    }
    incidents = result.replayed["incidents"]
    print(f"incidents: {len(incidents)}; notifications: {len(result.outbox)}")  # type: ignore[arg-type]
    for name, ok in verdicts.items():
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    return 0 if all(verdicts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
