"""Causes: one root incident per cause, the others linked to it, one notification per cause.

End to end on generated streams (pipeline -> incidents -> outbox -> local receivers), and the
rule of agent/incidents/causes.py on constructed incidents where a stream cannot pin a case down.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import orjson
import pytest
from alembic.config import Config
from sqlalchemy import inspect
from sqlalchemy.exc import IntegrityError

from agent.alerts.dispatcher import Dispatcher
from agent.alerts.outbox import enqueue_changes
from agent.alerts.wording import headline
from agent.config import CauseSettings, Settings
from agent.incidents import attribution, causes, lifecycle
from agent.incidents.manager import IncidentManager
from agent.runtime.pipeline import Pipeline
from agent.runtime.replay import memory_batches
from alembic import command
from detectors.clients.detector import QueryPatternDetector
from detectors.settings import QueryPatternSettings
from storage.db import MIGRATIONS_DIR, Database
from storage.models import Incident
from storage.queries import IncidentFilter, Repository
from storage.unit_of_work import UnitOfWork
from streams.events import Position, RawRecord
from tests.alerts_helpers import Clock, alert_settings, finding, outbox
from tests.conftest import run_cli
from tests.receivers import Receiver
from tests.refdata import replay, settings_for
from tests.test_query_patterns import FEATURES, Stream, _probability, boundary_probe
from tests.test_reference import _client_stream

START = 1_767_225_600.0
ROUTING_KEY = "R0UT1NGKEYR0UT1NGKEYR0UT1NGKEY12"


@pytest.fixture
def receivers() -> Iterator[dict[str, Receiver]]:
    made = {
        "slack": Receiver("slack"),
        "pagerduty": Receiver("pagerduty", routing_key=ROUTING_KEY),
        "webhook": Receiver("webhook", secret="hm4c-s3cret-value"),
    }
    yield made
    for r in made.values():
        r.close()


def shifted_stream(n: int, shift_at: int, seed: int, age_too: bool = False) -> list[bytes]:
    """A classifier whose score follows `utilization`; from `shift_at` on, utilization's
    mean moves from 0.28 to 0.50 (+1.3 reference std); nothing else changes, unless
    `age_too`: then age's mean moves by +1.5 std at the same event (one upstream change)."""
    rng = np.random.default_rng(seed)
    utilization = rng.normal(0.28, 0.17, n)
    utilization[shift_at:] += 0.22
    load = rng.gamma(2.0, 3.0, n)
    age = rng.normal(40, 10, n)
    if age_too:
        age[shift_at:] += 15
    region = rng.choice(["eu", "us", "apac"], n, p=[0.5, 0.3, 0.2])
    p = 1 / (1 + np.exp(-(-1.0 + 5.0 * (utilization - 0.28) + 0.05 * (load - 6))))
    lines = []
    for i in range(n):
        event = {
            "type": "prediction",
            "model": "svc",
            "id": f"e-{i}",
            "ts": START + i,
            "client": f"key-{rng.integers(0, 50)}",
            "features": {
                "utilization": round(float(utilization[i]), 4),
                "load": round(float(load[i]), 3),
                "age": round(float(age[i]), 1),
                "region": str(region[i]),
            },
            "prediction": int(p[i] > 0.5),
            "scores": {"0": round(1 - float(p[i]), 4), "1": round(float(p[i]), 4)},
        }
        lines.append(orjson.dumps(event))
    return lines


def run(
    lines: list[bytes], database: Database, settings: Settings, clock: Clock | None = None
) -> None:
    """Replays lines with notifications on; with a clock, the dispatcher runs after every
    batch (as the daemon's would while the stream goes on)."""
    pipeline = Pipeline(settings, database, consumer="test", notify=True)
    dispatcher = Dispatcher(database, settings.alerts, clock=clock) if clock else None
    for records, _ in memory_batches(lines, "events.jsonl", settings.batch_size):
        pipeline.process(records)
        if dispatcher is not None and clock is not None:
            clock.now = max(clock.now, time.time())
            dispatcher.run_once()
    if dispatcher is not None:
        dispatcher.close()


def everything(database: Database) -> list[dict[str, Any]]:
    return [i.to_contract() for i in Repository(database).list_incidents(limit=10_000)]


@pytest.mark.parametrize("seed", [3, 11])
def test_one_input_shift_is_one_root_and_one_notification(
    sqlite_url: str, receivers: dict[str, Receiver], seed: int
) -> None:
    database = Database(sqlite_url)
    database.upgrade()
    settings = Settings(alerts=alert_settings(receivers, group_wait=0))
    clock = Clock()
    run(shifted_stream(12_000, 6_000, seed), database, settings, clock)

    incidents = everything(database)
    roots = [i for i in incidents if i["parent_id"] is None]
    assert [(r["kind"], r["subject"]) for r in roots] == [("feature_drift", "utilization")]
    root = roots[0]
    others = [i for i in incidents if i["parent_id"] is not None]
    kinds = {i["kind"] for i in others}
    assert "prediction_drift" in kinds  # the score followed the input: linked, not paging
    assert all(i["parent_id"] == root["id"] for i in others)
    assert root["related_ids"] == sorted(i["id"] for i in others)
    assert root["related"] == root["related_ids"]  # the contract's name (shared/CONTRACT.md)
    assert all(i["related_ids"] == [] for i in others)
    assert START + 6_000 <= root["first_seen"] <= START + 7_500

    # The output's drift is explained by the drifted feature, measured on the data.
    score = next(i for i in others if (i["kind"], i["subject"]) == ("prediction_drift", "score"))
    cause = score["details"]["cause"]
    assert cause["incident_id"] == root["id"]
    assert [f["feature"] for f in cause["features"]] == ["utilization"]
    shares = score["details"]["attribution"]["shares"]
    assert max(shares, key=shares.get) == "utilization"
    assert shares["utilization"] > 0.5
    explained = {(e["kind"], e["subject"]) for e in root["details"]["explains"]}
    assert ("prediction_drift", "score") in explained

    # `incidents list` by default: the root only; --all: every incident.
    listed = Repository(database).list_incidents(IncidentFilter(roots_only=True))
    assert [i.id for i in listed] == [root["id"]]
    shown = run_cli("incidents", "list", "--db", sqlite_url, "--format", "json")
    assert shown.returncode == 0, shown.stderr
    assert [(i["id"], i["related_ids"]) for i in orjson.loads(shown.stdout)] == [
        (root["id"], root["related_ids"])
    ]
    shown = run_cli("incidents", "list", "--all", "--db", sqlite_url, "--format", "json")
    assert sorted(i["id"] for i in orjson.loads(shown.stdout)) == sorted(i["id"] for i in incidents)

    # One notification per cause on every channel, listing the related incidents.
    for r in receivers.values():
        assert r.invalid == []
    (event,) = receivers["pagerduty"].accepted
    assert event.body["dedup_key"].startswith(f"bulwark-{root['id']}-")
    summary = event.body["payload"]["summary"]
    assert "utilization: mean 0.28" in summary and "std) since 2026-01-01" in summary
    related = event.body["payload"]["custom_details"]["related"]
    assert {r["id"] for r in related} <= set(root["related_ids"])
    assert any(r["kind"] == "prediction_drift" for r in related)
    (message,) = receivers["slack"].accepted
    assert message.body["blocks"][0]["text"]["text"].startswith("svc: utilization: mean 0.28")
    section = message.body["blocks"][1]["text"]["text"]
    assert "Related (" in section and "prediction_drift" in section
    assert "<https://bulwark.example/incidents/" in section
    (hook,) = receivers["webhook"].accepted
    (note,) = hook.body["notifications"]
    assert note["incident"]["id"] == root["id"]
    assert note["headline"].startswith("utilization: mean 0.28 -> 0.5")
    assert "related" not in note["incident"] and note["related"]
    database.dispose()


def test_features_that_drift_together_are_one_root_and_one_notification(
    sqlite_url: str, receivers: dict[str, Receiver]
) -> None:
    """One change moves two inputs at the same event: the drift that began first is the root,
    the other goes under it, and every channel gets one notification."""
    database = Database(sqlite_url)
    database.upgrade()
    settings = Settings(alerts=alert_settings(receivers, group_wait=0))
    run(shifted_stream(12_000, 6_000, 5, age_too=True), database, settings, Clock())

    incidents = everything(database)
    drifts = {i["subject"]: i for i in incidents if i["kind"] == "feature_drift"}
    assert {"utilization", "age"} <= set(drifts)
    roots = [i for i in incidents if i["parent_id"] is None]
    assert len(roots) == 1 and roots[0]["kind"] == "feature_drift"
    root = roots[0]
    (other,) = [d for d in drifts.values() if d is not root]
    assert other["parent_id"] == root["id"] and other["first_seen"] >= root["first_seen"]
    assert other["first_seen"] - root["first_seen"] <= settings.causes.window
    rule = other["details"]["cause"]["rule"]
    assert (
        rule == f"{other['subject']} began to drift with {root['subject']}: one change moved both"
    )
    assert all(i["parent_id"] == root["id"] for i in incidents if i is not root)
    for r in receivers.values():
        assert r.invalid == []
    (event,) = receivers["pagerduty"].accepted
    assert event.body["dedup_key"].startswith(f"bulwark-{root['id']}-")
    database.dispose()


def attacked_stream(seed: int, benign: int = 6000, mixed: int = 6000, keys: int = 2) -> list[bytes]:
    """Benign clients (tests.test_query_patterns.Stream), then an attacker probing the
    decision boundary with a third of the traffic, round-robin over `keys` keys: its queries
    move the population's feature distributions."""
    stream = Stream(seed)
    x0, c0 = stream.benign(benign)
    attacks = mixed // 3
    x1, c1 = stream.benign(mixed - attacks)
    probe = boundary_probe(stream.rng, attacks)
    who = [f"attacker-{1 + k % keys}" for k in range(attacks)]
    order = stream.rng.permutation(mixed)
    x = np.vstack([x0, np.vstack([x1, probe])[order]])
    clients = c0 + [(c1 + who)[i] for i in order]
    return prediction_lines(x, clients)


def prediction_lines(
    x: np.ndarray, clients: list[str | None], extra: list[dict[str, str]] | None = None
) -> list[bytes]:
    """Prediction events of the test model, one every 2 s from START: the features `x`
    (and `extra` ones per event), the client, the model's class and scores."""
    p = _probability(x)
    return [
        orjson.dumps(
            {
                "type": "prediction",
                "model": "m",
                "id": f"p{i}",
                "ts": START + 2.0 * i,
                "client": clients[i],
                "features": {f: round(float(x[i, j]), 4) for j, f in enumerate(FEATURES)}
                | (extra[i] if extra else {}),
                "prediction": int(p[i] > 0.5),
                "scores": {"0": round(1 - float(p[i]), 4), "1": round(float(p[i]), 4)},
            }
        )
        for i in range(len(x))
    ]


def test_attackers_driving_the_population_are_the_roots_of_its_drift(
    sqlite_url: str, receivers: dict[str, Receiver]
) -> None:
    """The population drifts the attackers' queries make open before the attackers are
    flagged; once flagged, each drift is linked to the attacker behind enough of its events,
    and the notifications (sent after group_wait, as `replay --alerts` does) are one per
    attacker: its six keys are one. (Over two keys, a third of the traffic is two clients'
    clusters: the drift tests' design effect discounts it, and no drift opens at all.)"""
    database = Database(sqlite_url)
    database.upgrade()
    settings = Settings.model_validate(
        {
            "batch_size": 500,
            "detectors": {"query_patterns": {"reference_size": 300}},
            # The linking rule alone: with the flagged clients' later queries kept out of the
            # population (the default, tested below), these attackers, flagged within tens
            # of queries, move no population statistic at all.
            "causes": {"exclude_flagged_clients": False},
        }
    )
    settings.alerts = alert_settings(receivers)
    keys = [f"attacker-{k}" for k in range(1, 7)]
    run(attacked_stream(8, keys=len(keys)), database, settings)
    clock = Clock()
    clock.advance(settings.alerts.group_wait + 1)
    dispatcher = Dispatcher(database, settings.alerts, clock=clock)
    for _ in range(3):
        dispatcher.run_once()
    dispatcher.close()

    incidents = everything(database)
    roots = [i for i in incidents if i["parent_id"] is None]
    # The keys probe the boundary round-robin (one attacker over six keys): they share
    # queries, so the later flagged keys go under the first one's incident.
    assert len(roots) == 1 and roots[0]["kind"] == "suspicious_client"
    attacker = roots[0]
    siblings = [i for i in incidents if i["kind"] == "suspicious_client" and i is not attacker]
    assert sorted([attacker["subject"]] + [i["subject"] for i in siblings]) == keys
    for sibling in siblings:
        assert sibling["parent_id"] == attacker["id"]
        assert "shares queries with client" in sibling["details"]["cause"]["rule"]
    population = [i for i in incidents if i["kind"] != "suspicious_client"]
    assert population and {i["kind"] for i in population} <= {
        "feature_drift",
        "prediction_drift",
        "input_anomaly",
        "data_quality",
    }
    by_id = {i["id"]: i for i in incidents}
    for item in population:
        root = by_id[item["parent_id"]]
        shares = item["details"]["client_shares"]
        # Linked to an attacker behind at least min_client_share of its events when linked
        # (the most among those flagged by then; links only grow, so one flagged later with
        # a larger share does not take it over).
        rule = item["details"]["cause"]["rule"]
        assert root is attacker
        assert f"of the events behind it came from client {attacker['subject']}" in rule
        # Their shares together: the keys are one client.
        together = sum(shares.get(key, 0.0) for key in keys)
        assert int(rule.split("%")[0]) >= 10 and together >= 0.1
        assert item["id"] in root["related_ids"]
    for r in receivers.values():
        assert r.invalid == []
    triggered = sorted(e.body["dedup_key"].split("-")[1] for e in receivers["pagerduty"].accepted)
    assert triggered == sorted(str(r["id"]) for r in roots)
    database.dispose()


def flagged_then_flooding_stream(seed: int) -> tuple[list[bytes], float]:
    """Benign clients (6,000 queries); two attackers probing the decision boundary with 8% of
    the traffic, enough to be flagged but not to move the population (3,000); the attackers
    flooding out-of-range inputs with 40% of the traffic (4,000); the same, while the benign
    clients' feature `a` moves by +1.5 (4,000). Returns the lines and the event time the
    benign shift starts at."""
    stream = Stream(seed)
    rng = stream.rng

    def flood(n: int) -> np.ndarray:
        return rng.uniform(-12, 12, size=(n, len(FEATURES)))

    def mixed(n: int, share: float, attack: Any) -> tuple[np.ndarray, list[str | None]]:
        k = int(n * share)
        bx, bc = stream.benign(n - k)
        who: list[str | None] = [f"attacker-{1 + j % 2}" for j in range(k)]
        order = rng.permutation(n)
        return np.vstack([bx, attack(k)])[order], [(bc + who)[i] for i in order]

    parts = [
        stream.benign(6000),
        mixed(3000, 0.08, lambda k: boundary_probe(rng, k)),
        mixed(4000, 0.4, flood),
    ]
    shifted, clients = mixed(4000, 0.4, flood)
    benign = np.array([not str(c).startswith("attacker") for c in clients])
    shifted[benign, 0] += 1.5
    parts.append((shifted, clients))
    x = np.vstack([part[0] for part in parts])
    who = [c for part in parts for c in part[1]]
    return prediction_lines(x, who), START + 2.0 * 13_000


@pytest.mark.parametrize("seed", [8, 21])
def test_a_flagged_clients_later_queries_move_no_population_statistic(
    tmp_path: Any, seed: int
) -> None:
    """Once the attackers are flagged, their flood opens no population incident, across a
    restart (the flagged set comes from the database); without the exclusion the same flood
    opens drift, data-quality and anomaly incidents. The benign clients' own shift is still
    found, as a root of its own."""
    lines, benign_shift = flagged_then_flooding_stream(seed)
    opened: dict[bool, list[dict[str, Any]]] = {}
    for exclude in (True, False):
        database = Database(f"sqlite:///{tmp_path}/{exclude}.db")
        database.upgrade()
        settings = Settings.model_validate(
            {
                "batch_size": 500,
                "causes": {"exclude_flagged_clients": exclude},
                "detectors": {"query_patterns": {"reference_size": 300}},
            }
        )
        run(lines[:11_000], database, settings)
        restarted = Pipeline(settings, database, consumer="test")  # mid-flood, no checkpoint
        for start in range(11_000, len(lines), 500):
            chunk = lines[start : start + 500]
            restarted.process(
                [
                    RawRecord(line, Position("events.jsonl", 0, start + i))
                    for i, line in enumerate(chunk)
                ]
            )
            monitor = restarted.monitors[("events.jsonl", 0)]["m"]
            assert monitor.flagged.keys() == ({"attacker-1", "attacker-2"} if exclude else set())
        incidents = everything(database)
        flags = [i for i in incidents if i["kind"] == "suspicious_client"]
        assert {i["subject"] for i in flags} == {"attacker-1", "attacker-2"}
        flagged_at = max(i["first_seen"] for i in flags)
        opened[exclude] = [
            i
            for i in incidents
            if i["kind"] != "suspicious_client" and i["first_seen"] > flagged_at
        ]
        if exclude:  # resolving a flag lets its client's queries count again, from the next write
            (one,) = [i["id"] for i in flags if i["subject"] == "attacker-1"]
            lifecycle.set_status(database, settings.alerts, one, "resolved", "alice")
            restarted.process([RawRecord(b"not json", Position("events.jsonl", 0, len(lines)))])
            assert monitor.flagged.keys() == {"attacker-2"}
        database.dispose()

    during_flood = [i for i in opened[False] if i["first_seen"] < benign_shift]
    assert {i["kind"] for i in during_flood} >= {"feature_drift", "data_quality", "input_anomaly"}
    assert all(i["first_seen"] >= benign_shift for i in opened[True])
    for item in opened[True]:
        assert not any(c.startswith("attacker") for c in item["details"].get("client_shares", {}))
    # The benign shift of `a` is found, with what it explains, and nothing else opens.
    roots = {(i["kind"], i["subject"]) for i in opened[True] if i["parent_id"] is None}
    assert ("feature_drift", "a") in roots
    assert {i["subject"] for i in opened[True]} <= {"a", "score", "class_proportions", "*"}


def test_a_bots_queries_before_the_look_that_flags_it_open_no_population_incident(
    tmp_path: Any,
) -> None:
    """A bot sends 60 out-of-range queries among benign traffic and is flagged at its 20th
    query. Its queries are kept out of the population from when its pattern began (the
    detector's `pattern_began`), not from the flagging look: before, its first 19 opened a
    spread drift of their own on every seed tried (61 to 63)."""
    lines = [orjson.loads(line) for line in _client_stream(9000, seed=61)]
    rng = np.random.default_rng(61)
    for i in range(5000, 5120, 2):
        lines[i]["client"] = "bot"
        lines[i]["features"].update(items=rng.uniform(0, 40), amount=rng.uniform(-30, 50))
    url = f"sqlite:///{tmp_path}/bot.db"
    Database(url).upgrade()
    replay(settings_for(url), Database(url), [orjson.dumps(e) for e in lines], "c", "s")
    (flag,) = Repository(Database(url)).list_incidents(IncidentFilter())
    assert (flag.kind, flag.subject) == ("suspicious_client", "bot")
    assert flag.details["pattern_began"] == START + 5000


def test_client_shares_name_clients_as_their_incidents_do() -> None:
    """With a client-id key, shares (and the flagged set) use the incident's HMAC name: the
    cause rule can match them, and no raw id is stored."""
    key = "k3y-for-client-ids"
    detector = QueryPatternDetector("m", QueryPatternSettings(client_id_key=key))
    for client in ("alice", "key-42", "ünïcode"):
        assert attribution.client_subject(client, key) == detector._client_key(client)
        assert attribution.client_subject(client, None) == client
    shares = attribution.client_shares(
        ["alice"] * 60 + ["bob"] * 40, lambda c: attribution.client_subject(c, key)
    )
    assert shares == {detector._client_key("alice"): 0.6, detector._client_key("bob"): 0.4}


def test_accuracy_drop_with_stable_inputs_stays_its_own_root(sqlite_url: str) -> None:
    """Labels flip after event 12,000 (concept drift): inputs and scores do not move."""
    rng = np.random.default_rng(5)
    n, change = 24_000, 12_000
    x = rng.normal(0, 2.0, n)
    p = 1 / (1 + np.exp(-2 * x))
    label = (rng.random(n) < p) ^ ((np.arange(n) >= change) & (rng.random(n) < 0.3))
    lines = []
    for i in range(n):
        lines.append(
            orjson.dumps(
                {
                    "type": "prediction",
                    "model": "m",
                    "id": f"p-{i}",
                    "ts": START + i,
                    "features": {"x": round(float(x[i]), 4)},
                    "prediction": int(p[i] > 0.5),
                    "scores": {"0": round(1 - float(p[i]), 4), "1": round(float(p[i]), 4)},
                }
            )
        )
        lines.append(
            orjson.dumps(
                {
                    "type": "label",
                    "model": "m",
                    "id": f"p-{i}",
                    "label": int(label[i]),
                    "ts": START + i + 60,
                }
            )
        )
    database = Database(sqlite_url)
    database.upgrade()
    run(lines, database, Settings())
    incidents = everything(database)
    drops = [i for i in incidents if (i["kind"], i["subject"]) == ("accuracy_drop", "accuracy")]
    assert len(drops) == 1
    assert drops[0]["parent_id"] is None
    assert not [i for i in incidents if i["kind"] in ("feature_drift", "prediction_drift")]
    database.dispose()


# --- the rule on constructed incidents ------------------------------------------------------

_ids = iter(range(1, 10**6))


def incident(kind: str, subject: str, first: float, last: float | None = None, **details: Any):
    return Incident(
        id=next(_ids),
        model="m",
        kind=kind,
        subject=subject,
        severity="warning",
        status="open",
        title=f"{kind} {subject}",
        first_seen=first,
        last_seen=first if last is None else last,
        count=1,
        details=details,
        parent_id=None,
        related=[],
    )


def test_a_flagged_client_is_the_cause_of_the_population_changes_its_queries_make() -> None:
    """Two attackers send a third of the traffic: their flag is the root of the population
    drift their own queries make; a drift the attackers do not make stays its own root."""
    settings = CauseSettings()
    client = incident("suspicious_client", "attacker-1", 1000, 5000)
    other = incident("suspicious_client", "attacker-2", 1000, 5000)
    made = {"attacker-1": 0.2, "attacker-2": 0.13, "key-7": 0.02}
    feature = incident("feature_drift", "amount", 1500, 4000, client_shares=made, effect_size=1.1)
    score = incident("prediction_drift", "score", 1600, 4000, client_shares=made)
    estimate = incident("accuracy_drop", "estimated_accuracy", 2000, client_shares=made)
    quality = incident(
        "data_quality", "amount", 2100, statistic="out_of_range_rate", client_shares=made
    )
    benign = {"key-1": 0.03, "key-2": 0.03}
    unrelated = incident("feature_drift", "age", 2500, client_shares=benign)
    measured = incident("accuracy_drop", "accuracy", 2600, client_shares=made)
    missing = incident("data_quality", "amount", 2700, statistic="missing_rate", client_shares=made)
    everything_ = [client, other, feature, score, estimate, quality, unrelated, measured, missing]

    links = causes.link_incidents(everything_, settings)

    linked = {link.child.id: link.root.id for link in links}
    assert linked == {
        feature.id: client.id,  # the larger share of the two flagged clients
        score.id: client.id,
        estimate.id: client.id,
        quality.id: client.id,
    }
    for root in (client, other, unrelated, measured, missing):
        assert root.parent_id is None
    assert sorted(i.id for i in client.related) == sorted(linked)
    assert (
        "20% of the events behind it came from client attacker-1"
        in feature.details["cause"]["rule"]
    )
    assert client.to_contract()["related_ids"] == sorted(linked)
    assert score.to_contract()["parent_id"] == client.id


def test_a_client_split_over_linked_keys_is_one_root_with_their_drift() -> None:
    """One attacker over three keys that share queries (each key's `linked_group` names the
    others): the earliest key's incident is the root, the later keys go under it, and the
    drift their queries make together goes under it too, though no key alone sends
    `min_client_share` of its events. A flagged client not linked to them stays a root."""
    settings = CauseSettings()
    keys = ["split-0", "split-1", "split-2"]
    split = [
        incident(
            "suspicious_client", key, 1000 + i, 5000, linked_group=[k for k in keys if k != key]
        )
        for i, key in enumerate(keys)
    ]
    alone = incident("suspicious_client", "prober", 1100, 5000, linked_group=["key-3"])
    made = {"split-0": 0.05, "split-1": 0.04, "split-2": 0.04, "key-3": 0.06}
    drift = incident("feature_drift", "amount", 1500, 4000, client_shares=made)
    benign = {"split-0": 0.02, "split-1": 0.02, "key-3": 0.07}
    other = incident("feature_drift", "age", 1600, 4000, client_shares=benign)
    late = incident("suspicious_client", "split-late", 1000 + 3600 + 5000 + 1, linked_group=keys)

    links = causes.link_incidents([*split, alone, drift, other, late], settings)

    root = split[0]
    assert {link.child.id: link.root.id for link in links} == {
        split[1].id: root.id,
        split[2].id: root.id,
        drift.id: root.id,
    }
    assert "shares queries with client split-0" in split[1].details["cause"]["rule"]
    rule = drift.details["cause"]["rule"]
    assert rule.startswith("13% of the events") and rule.endswith("split-0 and 2 keys linked to it")
    for root_ in (root, alone, other, late):  # 4% from the split keys; beyond the span
        assert root_.parent_id is None
    # Without the link, no key alone sends a tenth of the drift's events.
    unlinked = [incident("suspicious_client", key, 1000, 5000) for key in keys]
    drift_again = incident("feature_drift", "amount", 1500, 4000, client_shares=made)
    assert causes.link_incidents([*unlinked, drift_again], settings) == []


def test_a_split_attackers_leaked_queries_page_once_under_it(sqlite_url: str) -> None:
    """One attacker over 8 keys, 3% of the traffic, probes the boundary with a channel no
    benign client uses. Each key is flagged at its first look (its 20th query), and the
    queries before it reach the population: a drift of the channel, with the keys a small
    share of its events but every one of its unusual values. It goes under the attacker's
    incident instead of paging as a root of its own."""
    stream = Stream(21)
    x0, c0 = stream.benign(3000)
    x1, c1 = stream.benign(6000)
    probe = boundary_probe(stream.rng, 240)
    split: list[str | None] = [f"split-{k % 8}" for k in range(240)]
    order = stream.rng.permutation(6240)  # the attack spread over the later events
    x = np.vstack([x0, np.vstack([x1, probe])[order]])
    clients = c0 + [(c1 + split)[i] for i in order]
    web = stream.rng.random(len(x)) < 0.7
    channels = [
        {"channel": "debug" if str(c).startswith("split-") else "web" if w else "app"}
        for c, w in zip(clients, web.tolist(), strict=True)
    ]
    lines = prediction_lines(x, clients, channels)
    database = Database(sqlite_url)
    database.upgrade()
    settings = Settings.model_validate(
        {"batch_size": 500, "detectors": {"query_patterns": {"reference_size": 300}}}
    )
    run(lines, database, settings)

    incidents = everything(database)
    by_id = {i["id"]: i for i in incidents}
    flagged = [i for i in incidents if i["kind"] == "suspicious_client"]
    assert {i["subject"] for i in flagged} == {f"split-{k}" for k in range(8)}
    (channel,) = [i for i in incidents if i["subject"] == "channel"]
    details = channel["details"]
    split_share = sum(v for k, v in details["client_shares"].items() if k.startswith("split-"))
    assert split_share < settings.causes.min_client_share  # the share of all events: too small
    assert details["unusual_events"] >= attribution.MIN_UNUSUAL
    unusual = details["unusual_client_shares"]
    # Only theirs, every sender named (flagged yet or not): they add up to all of them.
    assert unusual and all(k.startswith("split-") for k in unusual)
    assert sum(unusual.values()) == pytest.approx(1, abs=1e-3)
    # The drift opened hours before the keys were flagged: within the span of their pattern.
    root = by_id[channel["parent_id"]]
    assert root["kind"] == "suspicious_client" and root["parent_id"] is None
    assert channel["first_seen"] < root["first_seen"] - settings.causes.window
    assert root["details"]["pattern_began"] <= channel["first_seen"]
    assert "of its values the reference never had came from client" in details["cause"]["rule"]


def test_a_split_client_is_the_cause_of_the_values_only_it_sends() -> None:
    """Eight linked keys send 2% of a feature's events, every one of its values the reference
    never had: the drift those values make goes under them. Where benign keys send most of
    the unusual values too, it stays a root of its own."""
    settings = CauseSettings()
    keys = [f"split-{i}" for i in range(8)]
    split = [
        incident(
            "suspicious_client", key, 1000 + i, 5000, linked_group=[k for k in keys if k != key]
        )
        for i, key in enumerate(keys)
    ]
    few = {key: 0.0025 for key in keys} | {"key-1": 0.05}
    theirs = {key: 0.125 for key in keys}
    drift = incident(
        "feature_drift", "p00", 1500, 4000, client_shares=few, unusual_client_shares=theirs
    )
    shared = {key: 0.04 for key in keys} | {"key-1": 0.6}
    other = incident(
        "feature_drift", "p07", 1500, 4000, client_shares=few, unusual_client_shares=shared
    )
    links = causes.link_incidents([*split, drift, other], settings)
    assert drift.parent_id == split[0].id and other.parent_id is None
    assert drift.id in {link.child.id for link in links}
    rule = drift.details["cause"]["rule"]
    assert rule == (
        "100% of its values the reference never had came from client split-0 and 7 keys "
        "linked to it"
    )


def test_values_the_reference_never_had() -> None:
    """Levels of a few-level numeric feature, the range of a continuous one, categories; a
    missing value is never unusual."""
    pixel = attribution.KnownValues(np.array([0.0] * 50 + [np.nan]))
    assert pixel.unusual(np.array([0.0, 1.83, np.nan, -0.5])).tolist() == [False, True, False, True]
    levels = attribution.KnownValues(np.array([1.0, 2.0, 3.0] * 10))
    assert levels.unusual(np.array([2.0, 2.5, 3.0])).tolist() == [False, True, False]
    rng = np.random.default_rng(0)
    amount = attribution.KnownValues(rng.normal(size=1000))
    assert amount.unusual(np.array([0.1, 10.0, -10.0, np.inf])).tolist() == [
        False,
        True,
        True,
        True,
    ]
    channel = attribution.KnownValues(np.array(["web", "app", None], dtype=object))
    unusual = channel.unusual(np.array(["web", "debug", None], dtype=object))
    assert unusual.tolist() == [False, True, False]


def test_shares_name_the_busiest_clients_and_every_flagged_one() -> None:
    """A client split over many keys sends a little from each: a finding's shares name the
    flagged ones however small, so that the cause rule can add the linked keys up."""
    clients = [f"split-{i}" for i in range(8) for _ in range(3)] + [f"k{i}" for i in range(8)] * 10
    flagged = {f"split-{i}" for i in range(8)}
    assert attribution.client_shares(clients) == {f"k{i}": round(10 / 104, 4) for i in range(3)}
    shares = attribution.client_shares(clients, flagged=flagged)
    assert set(shares) == {"k0", "k1", "k2"} | flagged
    assert shares["split-5"] == round(3 / 104, 4)
    shares = attribution.client_shares(clients, str.upper, {"SPLIT-0"})  # as incidents name
    assert set(shares) == {"K0", "K1", "K2", "SPLIT-0"}


def test_a_feature_drift_explains_only_what_it_can_within_its_span() -> None:
    settings = CauseSettings(window=600)
    amount = incident("feature_drift", "amount", 10_000, 12_000, effect_size=1.2)
    age = incident("feature_drift", "age", 10_100, 12_000, effect_size=0.3)
    attributed = {"shares": {"age": 0.8, "amount": 0.1}}
    score = incident("prediction_drift", "score", 10_050, attribution=attributed)
    classes = incident("prediction_drift", "class_proportions", 10_070)
    range_ = incident("data_quality", "amount", 10_200, statistic="out_of_range_rate")
    range_other = incident("data_quality", "tenure", 10_200, statistic="out_of_range_rate")
    anomaly = incident("input_anomaly", "*", 10_300, share_by_feature={"amount": 0.2})
    anomaly_elsewhere = incident("input_anomaly", "*", 10_300, share_by_feature={"tenure": 0.2})
    late = incident("prediction_drift", "prediction", 12_601)  # past last_seen + window
    early = incident("accuracy_drop", "estimated_accuracy", 9_500)  # within the window before
    loss = incident("accuracy_drop", "estimated_mae", 10_500)  # a regressor's, from its inputs
    measured = incident("accuracy_drop", "mae", 10_500)  # labels: a root whatever the inputs
    joint = incident("multivariate_drift", "*", 10_400, contributors=[{"feature": "amount"}])
    joint_elsewhere = incident(
        "multivariate_drift", "*", 10_400, contributors=[{"feature": "tenure"}]
    )
    # Began 1,100 s after amount, within its span but not with it: a change of its own.
    tenure = incident("feature_drift", "tenure", 11_100, 12_000, effect_size=0.5)
    items = [amount, age, score, classes, range_, range_other, anomaly, anomaly_elsewhere]
    items += [late, early, joint, joint_elsewhere, loss, measured, tenure]

    causes.link_incidents(items, settings)

    # age began to drift 100 s after amount: one change, one root.
    assert age.parent_id == amount.id
    assert age.details["cause"]["rule"] == "age began to drift with amount: one change moved both"
    # Measured attribution beats the larger effect size: the score follows age, whose drift
    # is under amount's.
    assert score.parent_id == amount.id
    assert [f["feature"] for f in score.details["cause"]["features"]] == ["age", "amount"]
    assert "age's drift is attributed to feature_drift amount" in score.details["cause"]["rule"]
    assert classes.parent_id == amount.id  # no attribution: the larger effect size
    assert range_.parent_id == amount.id
    assert anomaly.parent_id == amount.id
    assert early.parent_id == amount.id
    assert loss.parent_id == amount.id
    assert joint.parent_id == amount.id
    for root in (amount, tenure, range_other, anomaly_elsewhere, late, joint_elsewhere, measured):
        assert root.parent_id is None


def test_a_small_measured_share_does_not_outrank_a_categorical_drift() -> None:
    """The surrogate sees numeric features only: a numeric feature reproducing a tenth of the
    score's shift is not its cause when a categorical feature drifted more."""
    country = incident("feature_drift", "country", 100, 900, effect_size=0.45)  # PSI
    age = incident("feature_drift", "age", 100, 900, effect_size=0.3)
    score = incident("prediction_drift", "score", 150, attribution={"shares": {"age": 0.1}})
    causes.link_incidents([country, age, score], CauseSettings())
    assert score.parent_id == country.id
    assert [f["feature"] for f in score.details["cause"]["features"]] == ["country", "age"]


def test_a_root_explained_later_takes_its_related_incidents_along() -> None:
    """A feature drift with its prediction drift, then the client making both is flagged:
    everything ends under the client, one level deep."""
    settings = CauseSettings()
    shares = {"zoo": 0.6}
    feature = incident("feature_drift", "x3", 100, 900, client_shares=shares, effect_size=2.0)
    score = incident("prediction_drift", "score", 120)
    causes.link_incidents([feature, score], settings)
    assert score.parent_id == feature.id

    client = incident("suspicious_client", "zoo", 50, 1000)
    causes.link_incidents([feature, score, client], settings)
    assert feature.parent_id == client.id
    assert score.parent_id == client.id
    assert score.details["cause"]["via"]["incident_id"] == feature.id
    assert sorted(i.id for i in client.related) == [feature.id, score.id]


def test_headlines_say_what_changed_in_plain_words() -> None:
    numeric = {
        "subject": "utilization",
        "first_seen": START + 3 * 3600 + 22 * 60,
        "details": {
            "statistic": "cusum_mean_shift",
            "reference": {"mean": 0.2812, "std": 0.17},
            "current": {"mean": 0.4991, "std": 0.18},
        },
    }
    assert (
        headline(numeric) == "utilization: mean 0.28 -> 0.50 (+1.3 std) since 2026-01-01 03:22 UTC"
    )
    spread = {
        "subject": "sqft",
        "details": {
            "statistic": "cusum_scale_change",
            "reference": {"mean": 900.0, "std": 250.0},
            "current": {"mean": 905.0, "std": 500.0},
        },
    }
    assert headline(spread) == "sqft: std 250 -> 500 (x2.00)"
    now = {"mean": 1200.0, "std": 125.0}  # the mean moved too
    moved = {"subject": "sqft", "details": {**spread["details"], "current": now}}
    assert headline(moved) == "sqft: std 250 -> 125 (x0.50), mean 900 -> 1,200 (+1.2 std)"
    shares = {
        "subject": "country",
        "details": {
            "psi": 0.421,
            "reference": {"shares": {"DE": 0.6, "FR": 0.3, "IT": 0.1}},
            "current": {"shares": {"DE": 0.3, "FR": 0.3, "IT": 0.4}},
        },
    }
    assert headline(shares) == "country: DE 60% -> 30%, IT 10% -> 40% (PSI 0.42)"
    quality = {
        "subject": "amount",
        "details": {
            "statistic": "out_of_range_rate",
            "reference": {"rate": 0.003},
            "current": {"rate": 0.31},
        },
    }
    assert headline(quality) == "amount: outside the reference range 0.3% -> 31% of values"
    assert headline({"subject": "m", "title": "stream stalled", "details": {}}) == "stream stalled"


def test_migration_0007_adds_parent_id_and_keeps_one_open_incident_per_key(db_url: str) -> None:
    """Down to 0006 and up again: SQLite rebuilds the table for the foreign key, and the
    partial unique index must come back with its WHERE clause."""
    database = Database(db_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = database.engine
    command.downgrade(config, "0006_reference_learned_until")
    assert "parent_id" not in {c["name"] for c in inspect(database.engine).get_columns("incidents")}
    command.upgrade(config, "head")
    assert "parent_id" in {c["name"] for c in inspect(database.engine).get_columns("incidents")}

    def add(status: str) -> None:
        with database.session() as session:
            session.add(
                Incident(
                    model="m",
                    kind="feature_drift",
                    subject="x",
                    severity="warning",
                    status=status,
                    title="t",
                    first_seen=1.0,
                    last_seen=1.0,
                    count=1,
                    details={},
                )
            )

    add("resolved")
    add("resolved")  # resolved ones may repeat
    add("open")
    with pytest.raises(IntegrityError):
        add("acknowledged")  # a second unresolved incident for the key
    database.dispose()


def test_an_incident_attached_to_a_notified_root_is_listed_on_its_next_notification(
    sqlite_url: str, receivers: dict[str, Receiver]
) -> None:
    """The root has paged; a prediction drift it explains opens later: no page of its own
    (its waiting trigger is held back with the reason), and the root's repeat lists it."""
    database = Database(sqlite_url)
    database.upgrade()
    slack = receivers["slack"]
    alerts = alert_settings({"slack": slack}, repeat_interval=3600, group_wait=0)
    clock = Clock()
    dispatcher = Dispatcher(database, alerts, clock=clock)
    drift = finding(subject="utilization", ts=START + 100)
    drift = replace(
        drift,
        details={"reference": {"mean": 0.28, "std": 0.17}, "current": {"mean": 0.5}},
    )
    record_linked(database, alerts, [drift], clock.now)
    dispatcher.run_once()
    assert len(slack.accepted) == 1

    score = replace(
        finding(kind="prediction_drift", subject="score", ts=START + 400), title="score: up"
    )
    (change,) = record_linked(database, alerts, [score], clock.now)
    dispatcher.run_once()
    assert len(slack.accepted) == 1  # the related incident does not page
    assert [n for n in outbox(database) if n.incident_id == change.incident.id] == []

    clock.advance(3700)
    dispatcher.run_once()
    assert len(slack.accepted) == 2
    repeat = orjson.dumps(slack.accepted[-1].body).decode()
    assert "Still open" in repeat and "Related (1)" in repeat and "prediction_drift" in repeat
    dispatcher.close()
    database.dispose()


def test_a_waiting_notification_of_an_incident_attributed_later_is_held_back(
    sqlite_url: str, receivers: dict[str, Receiver]
) -> None:
    """The prediction drift opens first and waits out group_wait; its cause opens before it
    is sent: one message, the root's, listing it."""
    database = Database(sqlite_url)
    database.upgrade()
    slack = receivers["slack"]
    alerts = alert_settings({"slack": slack}, group_wait=30)
    clock = Clock()
    dispatcher = Dispatcher(database, alerts, clock=clock)
    score = finding(kind="prediction_drift", subject="score", ts=START + 100)
    (first,) = record_linked(database, alerts, [score], clock.now)
    dispatcher.run_once()
    clock.advance(10)
    drift = finding(subject="utilization", ts=START + 160)
    (root,) = record_linked(database, alerts, [drift], clock.now)
    clock.advance(31)
    dispatcher.run_once()
    (message,) = slack.accepted
    text = orjson.dumps(message.body).decode()
    assert f"#{root.incident.id} " in text and "Related (1)" in text
    (held,) = [n for n in outbox(database) if n.incident_id == first.incident.id]
    assert held.state == "silenced"
    assert held.last_error.startswith(f"related to incident #{root.incident.id}: ")
    dispatcher.close()
    database.dispose()


def test_a_root_and_its_related_incidents_change_status_together(
    sqlite_url: str, receivers: dict[str, Receiver]
) -> None:
    """Acknowledge, resolve and reopen of a root reach its related incidents where their
    status allows it, with a note naming the root; only the root notifies; a related
    incident whose key opened again stays resolved when the root is reopened."""
    database = Database(sqlite_url)
    database.upgrade()
    alerts = alert_settings({"slack": receivers["slack"]}, group_wait=0)
    now = time.time()
    drift = finding(subject="utilization", ts=START + 100)
    score = finding(kind="prediction_drift", subject="score", ts=START + 120)
    classes = finding(kind="prediction_drift", subject="class_proportions", ts=START + 130)
    changes = record_linked(database, alerts, [drift, score, classes], now)
    root, *related = (c.incident.id for c in changes)
    repository = Repository(database)

    def statuses() -> list[str]:
        return [repository.get_incident(i).status for i in (root, *related)]  # type: ignore[union-attr]

    def notified() -> list[tuple[int | None, str, str]]:
        return [(n.incident_id, n.action, n.reason) for n in outbox(database)]

    assert [repository.get_incident(i).parent_id for i in related] == [root, root]  # type: ignore[union-attr]
    assert notified() == [(root, "trigger", "opened")]

    lifecycle.set_status(database, alerts, related[0], "acknowledged", "alice", now)
    lifecycle.set_status(database, alerts, root, "acknowledged", "alice", now)
    assert statuses() == ["acknowledged"] * 3  # the acknowledged one is left as it was
    lifecycle.change_status(database, alerts, root, lifecycle.RESOLVE, "alice", "rolled back")
    assert statuses() == ["resolved"] * 3
    notes = [n.text for n in repository.notes_of(related[1])]
    assert notes == [
        f"acknowledged with its root #{root}",
        f"resolved with its root #{root}: rolled back",
    ]
    # The related incidents were never announced: their changes tell nobody.
    assert notified()[1:] == [(root, "acknowledge", "acknowledged"), (root, "resolve", "resolved")]

    # The score drifts again while its root is resolved: a new incident, a root of its own.
    later = finding(kind="prediction_drift", subject="score", ts=START + 9000)
    (again,) = record_linked(database, alerts, [later], now)
    assert again.incident.parent_id is None and again.incident.id not in related
    lifecycle.set_status(database, alerts, root, "open", "bob", now)
    assert statuses() == ["open", "resolved", "open"]
    assert notified()[3:] == [
        (again.incident.id, "trigger", "opened"),
        (root, "trigger", "reopened"),
    ]

    # Changing a related incident alone leaves its root as it is.
    lifecycle.set_status(database, alerts, related[1], "resolved", "bob", now)
    assert statuses() == ["open", "resolved", "resolved"]
    database.dispose()


def record_linked(database: Database, alerts: Any, findings: list, now: float) -> list:
    """What the pipeline's transaction does: incidents, causes, outbox."""
    with database.session() as session:
        writer = UnitOfWork(session)
        changes = IncidentManager().apply(writer, findings)
        links = causes.link(writer, {c.incident.model for c in changes}, CauseSettings())
        enqueue_changes(writer, alerts, changes, now, links=links)
        return changes


def test_a_shape_change_is_told_by_its_quartiles_and_a_mean_shift_by_its_mean() -> None:
    def quartiles(p25: float, p50: float, p75: float) -> dict[str, float]:
        return {"p25": p25, "p50": p50, "p75": p75}

    def ks_incident(current_mean: float) -> dict[str, Any]:
        return {
            "subject": "km",
            "details": {
                "statistic": "ks_distance",
                "effect_size": 0.12,
                "reference": {"mean": 50.0, "std": 10.0, "quantiles": quartiles(43, 50, 57)},
                "current": {"mean": current_mean, "std": 10.0, "quantiles": quartiles(40, 50, 60)},
            },
        }

    assert headline(ks_incident(50.5)) == (
        "km: distribution shape changed, p25 / p50 / p75 43/50/57 -> 40/50/60 (KS 0.12)"
    )
    assert headline(ks_incident(60.0)) == "km: mean 50 -> 60 (+1.0 std)"
