"""What changed, in plain words: one line per incident for Slack, PagerDuty and webhooks.

Built from the incident's `details` (its latest evidence: the detectors' reference and
current summaries), e.g. "utilization: mean 0.28 -> 0.50 (+1.3 std) since 2026-01-01 03:22
UTC". An incident whose details carry no such summary falls back to its title.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

MEAN_WORTH_SAYING = 0.2  # reference std: numeric drift's default min_effect_size


def headline(incident: dict[str, Any]) -> str:
    """The incident's change in words and numbers, with when it started (event time)."""
    details = incident.get("details") or {}
    subject = str(incident.get("subject", ""))
    what = _numeric(subject, details) or _shares(subject, details) or _rate(subject, details)
    what = what or _anomaly(details) or str(incident.get("title") or subject)
    since = since_words(incident.get("first_seen"))
    return f"{what} {since}" if since else what


def since_words(epoch: Any) -> str:
    if not isinstance(epoch, int | float):
        return ""
    return "since " + datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _numeric(subject: str, d: dict[str, Any]) -> str | None:
    """Numeric drift (features, scores, regression outputs)."""
    ref, cur = d.get("reference") or {}, d.get("current") or {}
    before, after, std = _number(ref.get("mean")), _number(cur.get("mean")), _number(ref.get("std"))
    if before is None or after is None or std is None:
        return None
    shift = (after - before) / std if std else 0.0
    mean = f"mean {_n(before, std)} -> {_n(after, std)} ({shift:+.1f} std)"
    cur_std = _number(cur.get("std"))
    if d.get("statistic") == "cusum_scale_change" and cur_std is not None:
        ratio = cur_std / std if std else float("inf")
        spread = f"{subject}: std {_n(std, std)} -> {_n(cur_std, std)} (x{ratio:.2f})"
        # A spread that changed with the mean (a mean shift seen in a short window often
        # fires both tests at one event): the mean too, from the drift tests' default floor.
        return f"{spread}, {mean}" if abs(shift) >= MEAN_WORTH_SAYING else spread
    if d.get("statistic") == "ks_distance" and abs(shift) < MEAN_WORTH_SAYING:
        # A shape test's alarm whose mean hardly moved: told by its quartiles.
        return _shape(subject, ref, cur, std, d.get("effect_size") or d.get("value"))
    return f"{subject}: {mean}"


def _shape(subject: str, ref: dict[str, Any], cur: dict[str, Any], std: float, ks: Any) -> str:
    """A distribution whose shape changed more than its mean: its quartiles before and after."""
    rq, cq = ref.get("quantiles") or {}, cur.get("quantiles") or {}
    keys = [k for k in ("p25", "p50", "p75") if k in rq and k in cq]
    where = " / ".join(keys)
    before = "/".join(_n(rq[k], std) for k in keys)
    after = "/".join(_n(cq[k], std) for k in keys)
    ks_words = f" (KS {ks:.2f})" if isinstance(ks, int | float) else ""
    if not keys:
        return f"{subject}: distribution shape changed{ks_words}"
    return f"{subject}: distribution shape changed, {where} {before} -> {after}{ks_words}"


def _shares(subject: str, d: dict[str, Any]) -> str | None:
    """Categorical drift: the categories whose share moved most."""
    ref = (d.get("reference") or {}).get("shares")
    cur = (d.get("current") or {}).get("shares")
    if not isinstance(ref, dict) or not isinstance(cur, dict):
        return None
    moves = sorted(
        ((c, ref.get(c, 0.0), cur.get(c, 0.0)) for c in {*ref, *cur}),
        key=lambda m: (-round(abs(m[2] - m[1]), 4), m[0]),
    )[:2]
    parts = ", ".join(f"{c} {_pct(a)} -> {_pct(b)}" for c, a, b in moves)
    psi = d.get("psi")
    return f"{subject}: {parts}" + (f" (PSI {psi:.2f})" if isinstance(psi, int | float) else "")


_RATE_WORDS = {
    "missing_rate": "missing",
    "field_vanished": "missing",
    "type_violation_rate": "of the wrong type",
    "out_of_range_rate": "outside the reference range",
    "new_field_rate": "a new field",
}


def _rate(subject: str, d: dict[str, Any]) -> str | None:
    """Data quality: the rate of bad values, reference -> current."""
    words = _RATE_WORDS.get(str(d.get("statistic")))
    ref, cur = d.get("reference") or {}, d.get("current") or {}
    after = _number(cur.get("rate"))
    if words is None or after is None:
        return None
    before = _number(ref.get("rate"))
    return f"{subject}: {words} {_pct(before or 0.0)} -> {_pct(after)} of values"


def _anomaly(d: dict[str, Any]) -> str | None:
    """Input anomalies: the share of events with an input out of its reference range."""
    share, usual = d.get("anomalous_share"), d.get("reference_share")
    if not isinstance(share, int | float) or not isinstance(usual, int | float):
        return None
    top = d.get("share_by_feature") or {}
    lead = f" (most: {', '.join(list(top)[:3])})" if top else ""
    return f"inputs out of reference range: {_pct(usual)} -> {_pct(share)} of events{lead}"


def _number(v: Any) -> float | None:
    """`v` if it is a number (JSON details may carry anything), else None."""
    return v if isinstance(v, int | float) else None


def _n(x: float, scale: float) -> str:
    """A value with as many decimals as show two significant digits of `scale` (its
    distribution's std): 0.28 for a std of 0.17, 1,150 for a std of 250."""
    decimals = max(0, 1 - math.floor(math.log10(abs(scale)))) if scale else 3
    return f"{x:,.{min(decimals, 6)}f}"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%" if x < 0.1 else f"{100 * x:.0f}%"
