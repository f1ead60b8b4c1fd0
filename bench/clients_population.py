"""Suspicious clients over several days: false alarms per 1,000 client-days and attack delays.

Three scenarios on the fraud model of `bench/clients.py` (its records, scores and batches):

- `shift`: 60 long-lived keys drawing i.i.d. from one distribution, 120,000 predictions over
  4 days, the amount feature's distribution shifting halfway (a model-wide input change);
- `daily`: 150 clients with daily sessions on a diurnal profile, each serving its own
  segment, one of them a heavy user at 10x, over 4 days;
- `mixed`: `daily`'s clients with benign oddities among them, over 4 days: 300 short-lived
  device keys (one session of 20-80 queries on one day each), 3 health-check canaries (one
  fixed record every minute), 2 clients that retry every query, 2 clients that move to
  another market on day 2, and a review queue (an analyst's key scoring borderline cases,
  model score between 0.35 and 0.65).

Attackers in both: a uniform-random extractor and a boundary walker from the first hour (while
the detector is still learning what benign looks like), a ZOO-style coordinate prober on day 2
(the same point, one coordinate moved by tiny symmetric steps), and a natural-data extractor
drawing real-looking records from the whole population at an ordinary client's rate from day 2.

    PYTHONPATH=. python bench/clients_population.py --scenario shift --seeds 1 2 3
    PYTHONPATH=. python bench/clients_population.py --scenario daily --stored-reference
    PYTHONPATH=. python bench/clients_population.py --scenario mixed --trusted review-queue

Without `--stored-reference` the detector learns its input profile from the first 3,000
events (each client capped to its share) and judges what it kept of them once the profile
exists (`details.judged_late`); with it, it judges from the first query.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

from bench.clients import (
    CHANNELS,
    COUNTRIES,
    COUNTRY_P,
    NUMERIC,
    Population,
    Query,
    batches,
    boundary_walk,
    diurnal_times,
    model_score,
    reference_ranges,
)
from detectors.clients.detector import QueryPatternDetector
from detectors.settings import QueryPatternSettings
from streams.batch import concat_batches

DAY = 86_400.0
DAYS = 4
BATCH = 2000


def _queries(rng, client, pop, ts) -> list[Query]:
    numeric, country, channel = pop.sample(rng, len(ts))
    return [Query(t, client, numeric[i], country[i], channel[i]) for i, t in enumerate(ts)]


def shift_benign(rng: np.random.Generator) -> list[Query]:
    """60 keys, i.i.d. from one population, 120,000 queries over 4 days; from day 2 the
    amount's distribution moves up (log-mean +0.7) for every key."""
    pop = Population(COUNTRY_P, 1.0, 0.0)
    out: list[Query] = []
    for c in range(60):
        ts = np.sort(rng.uniform(0, DAYS * DAY, 2000))
        out += _queries(rng, f"key-{c:02d}", pop, ts)
    for q in out:
        if q.ts >= DAYS * DAY / 2:
            q.numeric[0] *= 2.0
    return out


def daily_benign(rng: np.random.Generator) -> list[Query]:
    """150 segment clients with diurnal sessions, one heavy user at 10x the volume."""
    out: list[Query] = []
    for c in range(150):
        pop = Population.random(rng)
        daily = 120 * rng.lognormal(0, 0.5) * (10 if c == 0 else 1)
        for day in range(DAYS):
            for start in diurnal_times(rng, max(1, rng.poisson(daily / 8))):
                length = rng.geometric(1 / 8)
                ts = day * DAY + start + np.cumsum(rng.exponential(15, length))
                out += _queries(rng, f"client-{c:03d}", pop, ts)
    return out


def mixed_benign(rng: np.random.Generator) -> list[Query]:
    """`daily_benign`'s clients and the benign oddities of the `mixed` scenario."""
    out = daily_benign(rng)
    for c in range(300):  # devices: one session on one day, each its own segment
        pop = Population.random(rng)
        start = rng.integers(DAYS) * DAY + diurnal_times(rng, 1)[0]
        ts = start + np.cumsum(rng.exponential(15, rng.integers(20, 81)))
        out += _queries(rng, f"device-{c:03d}", pop, ts)
    whole = Population(COUNTRY_P, 1.0, 0.0)
    for c in range(3):  # health checks: one fixed record every minute
        numeric, country, channel = whole.sample(rng, 1)
        ts = rng.uniform(0, 60) + np.arange(0, DAYS * DAY, 60.0)
        out += [Query(t, f"canary-{c}", numeric[0], country[0], channel[0]) for t in ts]
    for c in range(2):  # clients whose every query is retried 1-3 s later
        pop = Population.random(rng)
        for day in range(DAYS):
            for start in diurnal_times(rng, rng.poisson(15)):
                ts = day * DAY + start + np.cumsum(rng.exponential(15, rng.geometric(1 / 8)))
                for q in _queries(rng, f"retrier-{c}", pop, ts):
                    again = Query(
                        q.ts + rng.uniform(1, 3), q.client, q.numeric, q.country, q.channel
                    )
                    out += [q, again]
    for c in range(2):  # a merchant entering another market on day 2
        before, after = Population.random(rng), Population.random(rng)
        for day in range(DAYS):
            pop = before if day < DAYS // 2 else after
            for start in diurnal_times(rng, rng.poisson(15)):
                ts = day * DAY + start + np.cumsum(rng.exponential(15, rng.geometric(1 / 8)))
                out += _queries(rng, f"mover-{c}", pop, ts)
    # A review queue: an analyst's key scoring the borderline cases of the whole population.
    numeric, country, channel = whole.sample(rng, 200_000)
    score = model_score(numeric, country, channel)
    borderline = np.flatnonzero((score > 0.35) & (score < 0.65))
    daytime = np.concatenate(
        [day * DAY + 9 * 3600 + np.sort(rng.uniform(0, 8 * 3600, 200)) for day in range(DAYS)]
    )
    for t, i in zip(daytime, rng.choice(borderline, len(daytime), replace=False), strict=True):
        out.append(Query(t, "review-queue", numeric[i], country[i], channel[i]))
    return sorted(out, key=lambda q: q.ts)


def attackers(rng: np.random.Generator, ordinary_daily: float) -> dict[str, list[Query]]:
    out: dict[str, list[Query]] = {}
    low, high = reference_ranges(rng)
    ts = rng.uniform(0, 3600) + np.cumsum(rng.exponential(20, 1500))
    numeric = rng.uniform(low, high, size=(1500, len(NUMERIC)))
    out["warm-up uniform extractor"] = [
        Query(t, "atk-uniform", numeric[i], str(rng.choice(COUNTRIES)), str(rng.choice(CHANNELS)))
        for i, t in enumerate(ts)
    ]
    walk = boundary_walk(rng, 1500)
    ts = rng.uniform(0, 3600) + np.cumsum(rng.exponential(10, 1500))
    out["warm-up boundary walker"] = [Query(t, "atk-walk", *walk[i]) for i, t in enumerate(ts)]
    # ZOO: symmetric finite differences, one coordinate at a time, then a small step.
    pop = Population(COUNTRY_P, 1.0, 0.0)
    x, country, channel = pop.sample(rng, 1)
    point, zoo = x[0], []
    scale = np.array([40.0, 13, 700, 1.4, 7, 0.16])
    while len(zoo) < 1000:
        for i in rng.permutation(len(NUMERIC)):
            h = np.zeros(len(NUMERIC))
            h[i] = 1e-3 * scale[i]
            zoo += [point + h, point - h]
        point = point + rng.normal(0, 0.05, len(NUMERIC)) * scale
    ts = DAY * 1.3 + np.cumsum(rng.exponential(5, len(zoo)))
    out["ZOO coordinate prober"] = [
        Query(t, "atk-zoo", zoo[i], country[0], channel[0]) for i, t in enumerate(ts)
    ]
    # Natural-data extraction: real-looking records of the whole population, ordinary rate.
    n = int(2 * ordinary_daily)
    ts = DAY * 1.1 + np.sort(rng.uniform(0, 2 * DAY, n))
    out["natural-data extractor"] = _queries(rng, "atk-natural", pop, ts)
    return out


def run(
    scenario: str, seed: int, settings: QueryPatternSettings, stored: bool
) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    benign = {"shift": shift_benign, "daily": daily_benign, "mixed": mixed_benign}[scenario](rng)
    days = np.array([q.ts // DAY for q in benign])
    clients = np.array([q.client for q in benign])
    client_days = len({(c, d) for c, d in zip(clients.tolist(), days.tolist(), strict=True)})
    # An ordinary client's daily volume: the long-lived keys' (not devices, canaries, ...).
    regular = [c.startswith(("key-", "client-")) for c in clients.tolist()]
    ordinary = sum(regular) / len(set(clients[regular].tolist())) / DAYS
    attacks = attackers(rng, ordinary)
    queries = benign + [q for qs in attacks.values() for q in qs]
    queries = sorted((q for q in queries if q.ts < DAYS * DAY), key=lambda q: q.ts)
    detector = QueryPatternDetector("fraud", settings)
    if stored:  # a vetted reference (`bulwark reference set`): 3,000 benign records
        pop = Population(COUNTRY_P, 1.0, 0.0)
        ref = _queries(rng, "reference", pop, np.zeros(settings.reference_size))
        detector.set_reference(concat_batches(batches(ref)))
    findings = []
    busy = 0.0
    for b in batches(queries):
        t0 = time.process_time()
        findings += detector.update(b)
        busy += time.process_time() - t0
    own: dict[int, int] = {}
    seen: dict[str, int] = {}
    for offset, q in enumerate(queries):
        seen[q.client] = seen.get(q.client, 0) + 1
        own[offset] = seen[q.client]
    first: dict[str, tuple[int, object]] = {}
    flagged_days = set()
    benign_names = set(clients.tolist())
    for f in findings:
        first.setdefault(f.subject, (own[f.position.offset], f))
        if f.subject in benign_names:
            flagged_days.add((f.subject, int(f.ts // DAY)))
    return {
        "scenario": scenario,
        "stored": stored,
        "seed": seed,
        "client_days": client_days,
        "flagged_client_days": len(flagged_days),
        "flagged": sorted({c for c, _ in flagged_days}),
        "first": first,
        "attacks": attacks,
        "us_per_query": busy / len(queries) * 1e6,
        "queries": len(queries),
    }


def report(result: dict[str, object]) -> None:
    print(
        f"\n{result['scenario']} seed {result['seed']}{' (stored reference)' * result['stored']}: "
        f"{result['queries']} queries, "
        f"{result['us_per_query']:.1f} us/query"
    )
    first = result["first"]
    for name, qs in result["attacks"].items():
        key = qs[0].client
        sent = sum(1 for q in qs if q.ts < DAYS * DAY)
        if key in first:
            n, f = first[key]
            fired = ", ".join(f.details["detectors_fired"])
            print(f"  {name:28s} flagged after {n:5d} of {sent} queries by {fired}")
        else:
            print(f"  {name:28s} NOT flagged ({sent} queries)")
    per_thousand = 1000 * result["flagged_client_days"] / result["client_days"]
    print(
        f"  benign: {result['flagged_client_days']} flagged client-days of "
        f"{result['client_days']} ({per_thousand:.2f} per 1,000); clients {result['flagged']}"
    )
    for c in result["flagged"]:
        print(f"    {c}: {first[c][1].title}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=["shift", "daily", "mixed"], default="shift")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument(
        "--stored-reference",
        action="store_true",
        help="hand the detector a vetted reference first (else: learned from the first events)",
    )
    parser.add_argument(
        "--trusted",
        nargs="*",
        default=[],
        help="client ids to leave unjudged (`trusted_clients`), e.g. review-queue",
    )
    args = parser.parse_args()
    settings = QueryPatternSettings(trusted_clients=frozenset(args.trusted))
    totals = [0, 0]
    for seed in args.seeds:
        result = run(args.scenario, seed, settings, args.stored_reference)
        report(result)
        totals[0] += result["flagged_client_days"]
        totals[1] += result["client_days"]
    print(
        f"\nall seeds: {totals[0]} flagged benign client-days of {totals[1]} "
        f"({1000 * totals[0] / max(totals[1], 1):.2f} per 1,000; budget 1)"
    )


if __name__ == "__main__":
    main()
