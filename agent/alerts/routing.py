"""Routing: which channels hear about an incident."""

from __future__ import annotations

from agent.config import AlertSettings


def channels_for(alerts: AlertSettings, model: str, kind: str, severity: str) -> list[str]:
    """Channels of every matching route (an empty list in a route matches anything); with no
    routes configured, every channel. Sorted, so outbox rows come out in a stable order."""
    if not alerts.routes:
        return sorted(alerts.channels)
    chosen: set[str] = set()
    for route in alerts.routes:
        if (
            (not route.models or model in route.models)
            and (not route.kinds or kind in route.kinds)
            and (not route.severities or severity in route.severities)
        ):
            chosen.update(route.channels)
    return sorted(chosen)
