"""PagerDuty Events API v2: one event per incident change, keyed by the incident's
dedup_key so acknowledge and resolve close what trigger opened."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx

from agent.alerts.channels.base import (
    Item,
    Message,
    Outcome,
    Result,
    classify,
    cut,
    iso,
    summary_line,
)
from agent.config import ChannelSettings

PAGERDUTY_SEVERITY = {"critical": "critical", "warning": "warning", "info": "info"}


def send(client: httpx.Client, settings: ChannelSettings, message: Message) -> Result:
    """Sends the message's events in order; on a failure, says which items went through."""
    assert settings.routing_key is not None
    key = settings.routing_key.get_secret_value()
    done: set[int] = set()
    for item, covered in _collapse_for_pagerduty(message.items):
        response = client.post(settings.endpoint(), json=pagerduty_event(key, item))
        if response.status_code != 202:
            result = classify(response)
            return Result(result.outcome, result.detail, result.retry_after, frozenset(done))
        done.update(covered)
    return Result(Outcome.DELIVERED)


def pagerduty_event(routing_key: str, item: Item) -> dict[str, Any]:
    """An Events API v2 event; acknowledge/resolve need only the key and dedup_key."""
    event: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": item.action,
        "dedup_key": item.dedup_key,
    }
    if item.action != "trigger":
        return event
    i = item.incident
    details = {**i, "reason": item.reason}
    if item.link:
        details["link"] = item.link
    event["payload"] = {
        "summary": cut(summary_line(item), 1024),
        "source": f"bulwark:{i.get('model', 'bulwark')}",
        "severity": PAGERDUTY_SEVERITY.get(str(i.get("severity")), "warning"),
        "timestamp": iso(i.get("last_seen")) or datetime.now(UTC).isoformat(),
        "custom_details": details,
    }
    for name, key in (("component", "subject"), ("group", "model"), ("class", "kind")):
        if i.get(key):  # optional fields: absent rather than empty
            event["payload"][name] = str(i[key])
    event["client"] = "Bulwark"
    if item.link:
        event["client_url"] = item.link
        event["links"] = [{"href": item.link, "text": f"Bulwark incident #{i.get('id')}"}]
    return event


def _collapse_for_pagerduty(items: list[Item]) -> list[tuple[Item, list[int]]]:
    """Each event to send, with the ids it covers: an item is folded into the next one for
    the same incident when both have the same action (two triggers in a row say the same
    thing to PagerDuty). Order is kept."""
    out: list[tuple[Item, list[int]]] = []
    folded: dict[str | None, list[int]] = {}
    for k, item in enumerate(items):
        later = [j for j in items[k + 1 :] if j.dedup_key == item.dedup_key]
        ids = [*folded.pop(item.dedup_key, []), item.id]
        if later and later[0].action == item.action:
            folded[item.dedup_key] = ids
            continue
        out.append((item, ids))
    return out
