"""Causes: which incident explains which, so that one problem pages once.

Alertmanager's inhibition rules, done on incidents. A *root* is an incident no other open
incident explains; an incident a root explains gets `parent_id` = the root's id, is listed
on the root's notifications and never pages on its own. This module is the only place that
decides it:

- a `suspicious_client` explains the later `suspicious_client` incidents of the clients it
  is linked to by shared queries (`linked_group`: one attacker split over several keys pages
  once), and the population-level incidents of its model (feature drift, prediction drift,
  input anomalies, out-of-range values, label-free estimates) that its own queries and its
  linked keys' make: at least `min_client_share` of the events behind the incident's latest
  evidence came from them together (`client_shares`, measured by the pipeline), or at least
  `min_unusual_share` of those events whose value the reference never had
  (`unusual_client_shares`: a few keys sending values nobody else sends move a feature
  while a small share of its events);
- a `feature_drift` on feature f explains the drifts of other features that began with it
  (their first evidence within `window` of its own: one change moves several features, and
  pages once, under the first; a drift beginning later is a root of its own however long f
  stays open), a `prediction_drift`, an `input_anomaly` whose
  out-of-range inputs include f, a `multivariate_drift` naming f among its top contributors,
  an out-of-range `data_quality` on f and a label-free estimate's change
  (`estimated_accuracy`, `estimated_mae`, `estimated_mae_improved`);
- always within one event-time span: the explained incident's first evidence lies within
  `window` seconds of the root's evidence span [first_seen, last_seen]; a
  `suspicious_client`'s span begins where its pattern began (`pattern_began`: its queries
  from then on are what moved the population, a slow attacker's hours before its flag).

Everything else stays a root, notably a measured accuracy drop (labels say the model is
wrong, whatever the inputs do), missing values and type errors, and any incident with no
open explaining incident in its span: a later real cause stays a root of its own.

A prediction drift explained by several drifted features goes under the one that accounts
for most of it: the share of the output's shift its own change reproduces (`attribution`,
measured by the pipeline on the data) when that share is at least `MIN_SHARE`, else its
effect size. The
features are named on both sides (`cause` on the explained incident, `explains` on the root).

Links only grow: an attached incident stays attached (to the root of its root when that root
is in turn explained), and only unresolved incidents are linked.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from agent.config import CauseSettings
from detectors.base import Kind
from storage.enums import OPEN_STATUSES
from storage.models import Incident
from storage.unit_of_work import UnitOfWork

# Keys of an incident's `details` that belong to its links, not to its latest evidence: kept
# when new evidence replaces the rest.
CAUSE_KEY = "cause"
EXPLAINS_KEY = "explains"
LINK_KEYS = (CAUSE_KEY, EXPLAINS_KEY)
MAX_EXPLAINS = 50  # entries a root's `explains` keeps (the ids are all in related_ids)
MIN_SHARE = 0.25  # a measured share of an output's shift that names its main cause
# Label-free performance estimates: they follow the traffic (scores, or inputs for DLE).
ESTIMATED = ("estimated_accuracy", "estimated_mae", "estimated_mae_improved")
MAX_CONTRIBUTORS = 3  # a multivariate drift is explained by a drift of one of its first three


@dataclass(frozen=True, slots=True)
class Link:
    """`child` was attributed to `root` by `rule` (plain words)."""

    child: Incident
    root: Incident
    rule: str


def population_level(kind: str, subject: str, statistic: object) -> bool:
    """Whether a finding describes the whole traffic of a model (which a heavy client can
    move): drift of inputs or outputs, input anomalies, out-of-range values, and the accuracy
    estimated from the scores."""
    if kind in (
        Kind.FEATURE_DRIFT,
        Kind.PREDICTION_DRIFT,
        Kind.INPUT_ANOMALY,
        Kind.MULTIVARIATE_DRIFT,
    ):
        return True
    if kind == Kind.DATA_QUALITY:
        return statistic == "out_of_range_rate"
    return kind == Kind.ACCURACY_DROP and subject in ESTIMATED


def is_population_level(incident: Incident) -> bool:
    statistic = (incident.details or {}).get("statistic")
    return population_level(incident.kind, incident.subject, statistic)


def in_span(root: Incident, other: Incident, window: float) -> bool:
    return span_start(root) - window <= other.first_seen <= root.last_seen + window


def span_start(incident: Incident) -> float:
    """Where an incident's evidence span begins: its first evidence, or for a suspicious
    client the first query of the pattern that flagged it, when earlier."""
    began = (incident.details or {}).get("pattern_began")
    if incident.kind == Kind.SUSPICIOUS_CLIENT and isinstance(began, int | float):
        return min(incident.first_seen, float(began))
    return incident.first_seen


def rule(
    root: Incident, other: Incident, settings: CauseSettings, keys: Sequence[str] = ()
) -> str | None:
    """Why `root` is the cause of `other`, or None when it is not. `keys`: for a
    `suspicious_client` root, the client keys it stands for (itself and the linked keys
    attached to it; default itself)."""
    if root.id == other.id or root.model != other.model:
        return None
    if not in_span(root, other, settings.window):
        return None
    details = other.details or {}
    if root.kind == Kind.SUSPICIOUS_CLIENT:
        if other.kind == Kind.SUSPICIOUS_CLIENT:
            if other.subject in linked(root) or root.subject in linked(other):
                return (
                    f"client {other.subject} shares queries with client {root.subject} "
                    "(one client over several keys)"
                )
            return None
        if not is_population_level(other):
            return None
        keys = keys or (root.subject,)
        share = sum(client_share(other, key) for key in keys)
        unusual = sum(client_share(other, key, "unusual_client_shares") for key in keys)
        if share >= settings.min_client_share:
            what = "the events behind it"
        elif unusual >= settings.min_unusual_share:
            share, what = unusual, "its values the reference never had"
        else:
            return None
        if len(keys) == 1:
            return f"{share:.0%} of {what} came from client {root.subject}"
        others = len(keys) - 1
        return (
            f"{share:.0%} of {what} came from client {root.subject} and "
            f"{others} key{'s' if others > 1 else ''} linked to it"
        )
    if root.kind != Kind.FEATURE_DRIFT:
        return None
    feature = root.subject
    if other.kind == Kind.FEATURE_DRIFT:
        if other.subject == feature or abs(other.first_seen - root.first_seen) > settings.window:
            return None
        return f"{other.subject} began to drift with {feature}: one change moved both"
    if other.kind == Kind.PREDICTION_DRIFT:
        return f"the model's {other.subject} moved with its input {feature}"
    if other.kind == Kind.INPUT_ANOMALY and feature in (details.get("share_by_feature") or {}):
        return f"the out-of-range inputs include {feature}, whose distribution moved"
    if other.kind == Kind.MULTIVARIATE_DRIFT and feature in _top_contributors(details):
        return f"{feature} is among the features that moved the joint distribution"
    if (
        other.kind == Kind.DATA_QUALITY
        and other.subject == feature
        and details.get("statistic") == "out_of_range_rate"
    ):
        return f"values of {feature} left the reference range because its distribution moved"
    if other.kind == Kind.ACCURACY_DROP and other.subject == "estimated_accuracy":
        return f"the estimate follows the scores, which moved with {feature}"
    if other.kind == Kind.ACCURACY_DROP and other.subject in ESTIMATED:
        return f"the estimate follows the inputs, among them {feature}"
    return None


def _top_contributors(details: dict[str, Any]) -> list[str]:
    """The features a multivariate drift names first (its details' `contributors`)."""
    return [c.get("feature") for c in (details.get("contributors") or [])[:MAX_CONTRIBUTORS]]


def linked(incident: Incident) -> list[str]:
    """The clients a `suspicious_client` incident is linked to by shared queries (its
    `linked_group`: directly or through others)."""
    group = (incident.details or {}).get("linked_group") or []
    return [name for name in group if isinstance(name, str)]


def client_share(incident: Incident, client: str, key: str = "client_shares") -> float:
    """A client's share measured on an incident's events (`key`: of all of them, or of the
    unusual ones, agent/incidents/attribution.py); 0 when not measured."""
    shares = (incident.details or {}).get(key) or {}
    value = shares.get(client)
    return float(value) if isinstance(value, int | float) else 0.0


def _weight(feature: Incident, other: Incident) -> tuple[float, float]:
    """How much of `other` the drift of `feature` accounts for (larger: more): a measured
    share of the output's shift first, when it is a substantial one (the surrogate sees
    numeric features only, so a small measured share must not outrank a categorical
    feature's drift), then the feature's effect size."""
    attribution = (other.details or {}).get("attribution") or {}
    share = (attribution.get("shares") or {}).get(feature.subject)
    measured = float(share) if isinstance(share, int | float) and share >= MIN_SHARE else 0.0
    effect = abs(float((feature.details or {}).get("effect_size") or 0.0))
    return measured, effect


def link(uow: UnitOfWork, models: Iterable[str], settings: CauseSettings) -> list[Link]:
    """Links the unresolved incidents of `models` to their causes (inside the unit of work's
    transaction); returns the links made now."""
    if not settings.enabled:
        return []
    links: list[Link] = []
    for model in sorted(set(models)):
        links.extend(link_incidents(uow.incidents.unresolved_incidents(model), settings))
    return links


def link_incidents(incidents: list[Incident], settings: CauseSettings) -> list[Link]:
    """The decisions, on one model's unresolved incidents (oldest first)."""
    unresolved = [i for i in incidents if i.status in OPEN_STATUSES]
    by_id = {i.id: i for i in unresolved}
    links: list[Link] = []
    # Linked clients first: a later key of a split client goes under the earliest one's root.
    flagged = sorted(
        (i for i in unresolved if i.kind == Kind.SUSPICIOUS_CLIENT), key=lambda i: i.id
    )
    for position, other in enumerate(flagged):
        if other.parent_id is not None:
            continue
        for earlier in flagged[:position]:
            why = rule(earlier, other, settings)
            if why is None:
                continue
            root = by_id.get(earlier.parent_id, earlier) if earlier.parent_id else earlier
            if root.id != earlier.id:
                why = f"{why}, whose incident is under client {root.subject}'s"
            links.append(_attach(other, root, why, [], by_id))
            break
    clients = [i for i in flagged if i.parent_id is None]
    # The client keys each root stands for: itself and the linked keys under it.
    keys = {c.id: [c.subject] for c in clients}
    for i in flagged:
        if i.parent_id in keys:
            keys[i.parent_id].append(i.subject)

    def cause_among(roots: list[Incident], other: Incident) -> tuple[Incident, str] | None:
        ranked = [
            (r, why) for r in roots if (why := rule(r, other, settings, keys[r.id])) is not None
        ]
        if not ranked:
            return None
        return max(
            ranked,
            key=lambda pair: (
                sum(client_share(other, key) for key in keys[pair[0].id]),
                -pair[0].id,
            ),
        )

    # Feature drifts first, by when they began: a client's drift then takes the drifts' own
    # dependants along, and a drift goes under the first of those that began with it.
    drifts = [i for i in unresolved if i.kind == Kind.FEATURE_DRIFT]
    order = sorted(
        unresolved,
        key=lambda i: (
            i.kind != Kind.FEATURE_DRIFT,
            i.first_seen if i.kind == Kind.FEATURE_DRIFT else 0,
            i.id,
        ),
    )
    for other in order:
        if other.parent_id is not None or other.kind == Kind.SUSPICIOUS_CLIENT:
            continue
        found = cause_among(clients, other)
        if found is not None:
            links.append(_attach(other, found[0], found[1], [], by_id))
            continue
        if other.kind == Kind.FEATURE_DRIFT:
            # Under the first root drift that began with it (earlier first evidence).
            began = [
                (f, why)
                for f in drifts
                if f.parent_id is None
                and (f.first_seen, f.id) < (other.first_seen, other.id)
                and (why := rule(f, other, settings)) is not None
            ]
            if began:
                first, why = min(began, key=lambda pair: (pair[0].first_seen, pair[0].id))
                links.append(_attach(other, first, why, [], by_id))
            continue
        explaining = [(f, why) for f in drifts if (why := rule(f, other, settings)) is not None]
        if not explaining:
            continue
        explaining.sort(key=lambda pair: (_weight(pair[0], other), -pair[0].id), reverse=True)
        feature, why = explaining[0]
        root = by_id.get(feature.parent_id, feature) if feature.parent_id else feature
        if root.id != feature.id:
            why = f"{why}; {feature.subject}'s drift is attributed to {root.kind} {root.subject}"
        named = [_feature_entry(f, other) for f, _ in explaining]
        links.append(_attach(other, root, why, named, by_id))
    return links


def _feature_entry(feature: Incident, other: Incident) -> dict[str, Any]:
    entry: dict[str, Any] = {"feature": feature.subject, "incident_id": feature.id}
    shares = ((other.details or {}).get("attribution") or {}).get("shares") or {}
    if feature.subject in shares:
        entry["share_of_shift"] = shares[feature.subject]
    effect = (feature.details or {}).get("effect_size")
    if effect is not None:
        entry["effect_size"] = effect
    return entry


def _attach(
    child: Incident,
    root: Incident,
    why: str,
    features: list[dict[str, Any]],
    by_id: dict[int, Incident],
) -> Link:
    """Makes `root` the parent of `child` and of whatever `child` was the root of."""
    moved = [i for i in by_id.values() if i.parent_id == child.id]
    for incident in [child, *moved]:
        incident.parent_id = root.id
        if incident not in root.related:
            root.related.append(incident)
    for incident in moved:
        moved_cause = {**(incident.details or {}).get(CAUSE_KEY, {}), "incident_id": root.id}
        moved_cause["via"] = {"incident_id": child.id, "kind": child.kind, "subject": child.subject}
        incident.details = {**(incident.details or {}), CAUSE_KEY: moved_cause}
    cause: dict[str, Any] = {"incident_id": root.id, "kind": root.kind, "subject": root.subject}
    cause["rule"] = why
    if features:
        cause["features"] = features
    child.details = {**(child.details or {}), CAUSE_KEY: cause}
    entry: dict[str, Any] = {
        "incident_id": child.id,
        "kind": child.kind,
        "subject": child.subject,
        "rule": why,
    }
    if features:
        entry["features"] = [f["feature"] for f in features]
    explains = [e for e in (root.details or {}).get(EXPLAINS_KEY, []) if e.get("incident_id")]
    root.details = {**(root.details or {}), EXPLAINS_KEY: [*explains, entry][-MAX_EXPLAINS:]}
    return Link(child, root, why)


def kept_link_details(details: dict[str, Any] | None) -> dict[str, Any]:
    """The link keys of an incident's details, to carry over when its evidence is replaced."""
    return {k: v for k, v in (details or {}).items() if k in LINK_KEYS}
