"""The soak test (bounded: about three minutes): one daemon, three SIGKILLs, a database
outage, a broker outage and a failing webhook receiver, each outage 15 s (bench/soak.py runs
the same scenario with 60 s outages). See tests/soak.py for the scenario."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from tests.pg_server import pg_bin

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.soak,
    pytest.mark.skipif(
        bool(os.environ.get("BULWARK_TEST_KAFKA_BOOTSTRAP")), reason="kills its own broker"
    ),
    pytest.mark.skipif(pg_bin() is None, reason="no PostgreSQL server binaries to run privately"),
]

OUTAGE_SECONDS = 15.0


def test_soak_kills_and_outages_change_nothing(tmp_path: Path) -> None:
    from tests.soak import run_soak

    result = run_soak(tmp_path, outage=OUTAGE_SECONDS)
    timeline = "\n".join(result.timeline)

    assert result.exited_on_its_own == [], timeline
    assert result.final_exit_code == 0, timeline
    assert result.daemon == result.replayed, timeline
    # The database outage was ridden out (paused, then resumed), not slept through.
    assert "consumption paused" in result.logs and "consumption resumed" in result.logs
    assert len(result.replayed["incidents"]) >= 2  # type: ignore[arg-type]
    assert len(result.outbox) >= 2, result.outbox  # the incidents were notified
    # Every notification was delivered, none twice in the outbox...
    assert {state for *_, state in result.outbox} == {"delivered"}, result.outbox
    per_change = Counter((incident, key, reason) for _, incident, key, reason, _ in result.outbox)
    assert max(per_change.values()) == 1, per_change
    # ...and the receiver got exactly one notification per incident, dedup key and reason
    # (an at-least-once resend after a SIGKILL carries the same notification id).
    assert set(result.received) == set(per_change), (result.received, per_change)
    assert all(len(ids) == 1 for ids in result.received.values()), result.received
