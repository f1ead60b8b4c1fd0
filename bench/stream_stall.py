"""stream_stalled: false stalls on quiet-but-normal streams (a daily cycle, batch-job bursts,
API keys' sessions with quiet nights) and how long a silence at noon must be to be found.
Seeds 300-319, 400-419 and 600-649, not used to choose the defaults. Run:
PYTHONPATH=. .venv/bin/python bench/stream_stall.py (about two minutes)."""

from __future__ import annotations

from detectors.stream_stall import StreamStallDetector, StreamStallSettings
from tests.test_stream_stall import DAY, START, _run, bursty, daily_cycle, sessions

fa = 0
days = 0
thresholds = []
for seed in range(300, 320):
    for gen in (daily_cycle, bursty):
        d = StreamStallDetector("m", StreamStallSettings())
        fa += len(_run(d, gen(seed, 30)))
        days += 29
        thresholds.append((gen.__name__, d.threshold()))
print("false stalls", fa, "over", days, "stream-days")
fa, days, highest = 0, 0, []
for seed in range(600, 650):  # 10 days each, judged from day 2
    d = StreamStallDetector("m", StreamStallSettings())
    fa += sum(not f.resolves for f in _run(d, sessions(seed, 10)))
    days += 8
    highest.append(d.threshold())
print(
    f"sessions: false stalls {fa} over {days} stream-days, final thresholds "
    f"{min(highest) / 60:.0f}-{max(highest) / 60:.0f} min"
)
print("thresholds", sorted(set((n, round(t)) for n, t in thresholds))[:3], "...")
for gap_h in (0.25, 0.5, 1, 2):
    found = 0
    for seed in range(400, 420):
        ts = daily_cycle(seed, 5)
        g0 = START + 3 * DAY + 12 * 3600
        g1 = g0 + gap_h * 3600
        ts = ts[(ts < g0) | (ts >= g1)]
        d = StreamStallDetector("m", StreamStallSettings())
        found += any(not f.resolves for f in _run(d, ts))
    print(f"noon gap {gap_h} h: found in {found}/20")
