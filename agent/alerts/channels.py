"""Channels: how one group of notifications is rendered and sent to Slack, PagerDuty or a
generic webhook, and how each receiver's answer is classified (done, retry, rejected).

The HTTP client is made here and nowhere else. Secrets (URLs, routing keys, HMAC keys) come
from the settings at send time and are scrubbed from every message this module returns.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import httpx

from agent.alerts.wording import headline
from agent.config import ChannelSettings

# httpx logs every request URL at INFO, and a Slack URL is a secret: keep those quiet.
for _name in ("httpx", "httpcore"):
    logging.getLogger(_name).setLevel(logging.WARNING)

USER_AGENT = "bulwark-alerts/1"
MAX_RELATED_LINES = 10  # related incidents listed under a root in a Slack section
# Answers that mean "this request will never succeed": no retry, the reason is recorded.
PERMANENT_STATUSES = frozenset({400, 401, 403, 404, 405, 410, 413, 422})
PAGERDUTY_SEVERITY = {"critical": "critical", "warning": "warning", "info": "info"}
SLACK_EMOJI = {
    "critical": ":red_circle:",
    "warning": ":large_orange_circle:",
    "info": ":large_blue_circle:",
}
ACTION_WORDS = {
    "opened": "Opened",
    "escalated": "Escalated",
    "repeat": "Still open",
    "acknowledged": "Acknowledged",
    "resolved": "Resolved",
    "reopened": "Reopened",
    "test": "Test",
}


def make_client(timeout: float) -> httpx.Client:
    """The one HTTP client factory of the alerting code."""
    return httpx.Client(
        timeout=httpx.Timeout(timeout),
        follow_redirects=False,
        headers={"User-Agent": USER_AGENT},
    )


class Outcome(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"  # transient: try again later
    REJECTED = "rejected"  # the receiver refuses it for good


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    detail: str = ""
    retry_after: float | None = None  # seconds, from a 429's or 503's Retry-After
    # Items that went through before a failure (PagerDuty takes one event per item, so a
    # failure can come after some successes).
    delivered_ids: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class Item:
    """One notification as a channel sees it."""

    id: int
    action: str  # trigger | acknowledge | resolve
    reason: str  # opened | escalated | repeat | acknowledged | resolved | reopened | test
    incident: dict[str, Any]  # the contract's incident JSON, as of the change
    dedup_key: str | None
    link: str | None = None


@dataclass(frozen=True, slots=True)
class Message:
    channel: str
    group: str  # the model
    items: list[Item]
    max_listed: int = 10
    extra: dict[str, Any] = field(default_factory=dict)


def send(
    client: httpx.Client,
    settings: ChannelSettings,
    message: Message,
    secrets: list[str] | None = None,
) -> Result:
    """Sends one grouped message; never raises for network or receiver trouble. `secrets`
    (default: the channel's own) are scrubbed from the result's detail."""
    secrets = secrets_of([settings]) if secrets is None else secrets
    try:
        if settings.type == "slack":
            result = _send_slack(client, settings, message)
        elif settings.type == "pagerduty":
            result = _send_pagerduty(client, settings, message)
        else:
            result = _send_webhook(client, settings, message)
    except httpx.TimeoutException as exc:
        result = Result(Outcome.RETRY, f"timeout ({type(exc).__name__})")
    except httpx.HTTPError as exc:
        result = Result(Outcome.RETRY, f"{type(exc).__name__}: {exc}")
    return Result(
        result.outcome, scrub(result.detail, secrets), result.retry_after, result.delivered_ids
    )


# Slack ------------------------------------------------------------------------------------


def slack_payload(message: Message) -> dict[str, Any]:
    """An incoming-webhook message: `text` (notification fallback) and Block Kit `blocks`."""
    items = _latest_per_incident(message.items)
    listed = items[: message.max_listed]
    first = items[0]
    fallback = _headline(first)
    if len(items) > 1:
        fallback += f" (+{len(items) - 1} more on {message.group})"
    header = (
        f"Bulwark: {len(items)} incident updates on {message.group}"
        if len(items) > 1
        else f"{first.incident.get('model')}: {headline(first.incident)}"
        if first.reason != "test"
        else "Bulwark: test notification"
    )
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _cut(header, 150)}}
    ]
    for item in listed:
        blocks.append(_slack_section(item))
    if len(items) > len(listed):
        blocks.append(
            {
                "type": "context",
                "elements": [
                    {
                        "type": "mrkdwn",
                        "text": f"…and {len(items) - len(listed)} more on "
                        f"{_esc(message.group)} (`bulwark incidents list --model "
                        f"{_esc(message.group)}`)",
                    }
                ],
            }
        )
    return {"text": _cut(fallback, 3000), "blocks": blocks}


def _slack_section(item: Item) -> dict[str, Any]:
    i = item.incident
    if item.reason == "test":
        return {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": "Test notification from Bulwark: this channel works.",
            },
        }
    title = f"#{i.get('id')} {i.get('title', '')}"
    title_md = f"<{item.link}|{_esc(title)}>" if item.link else _esc(title)
    emoji = SLACK_EMOJI.get(str(i.get("severity")), "")
    text = f"{emoji} *{_word(item)}*: {_esc(headline(i))}\n{title_md}"
    related = i.get("related") or []
    if related:
        text += f"\n*Related ({len(related)})*, attributed to this one, not paged:"
        for r in related[:MAX_RELATED_LINES]:
            text += f"\n• #{r.get('id')} {r.get('kind')}: {_esc(str(r.get('headline')))}"
        if len(related) > MAX_RELATED_LINES:
            text += f"\n…and {len(related) - MAX_RELATED_LINES} more"
    if item.link:
        text += f"\n<{item.link}|Open incident #{i.get('id')}>"
    fields = [
        ("Severity", str(i.get("severity"))),
        ("Model", str(i.get("model"))),
        ("Kind", str(i.get("kind"))),
        ("Subject", str(i.get("subject"))),
        ("Status", str(i.get("status"))),
        ("Evidence", f"{i.get('count')} since {_iso(i.get('first_seen'))}"),
    ]
    numbers = key_numbers(i.get("details") or {})
    if numbers:
        fields.append(("Key numbers", numbers))
    return {
        "type": "section",
        "text": {"type": "mrkdwn", "text": _cut(text, 3000)},
        "fields": [
            {"type": "mrkdwn", "text": _cut(f"*{name}*\n{_esc(value)}", 2000)}
            for name, value in fields
        ],
    }


def key_numbers(details: dict[str, Any]) -> str:
    parts = []
    stat, value, threshold = (
        details.get("statistic"),
        details.get("value"),
        details.get("threshold"),
    )
    if stat is not None and isinstance(value, int | float):
        line = f"{stat} = {value:.4g}"
        if isinstance(threshold, int | float):
            line += f" (threshold {threshold:.4g})"
        parts.append(line)
    if isinstance(details.get("effect_size"), int | float):
        parts.append(f"effect size {details['effect_size']:.3g}")
    if details.get("support") is not None:
        parts.append(f"support {details['support']}")
    return ", ".join(parts)


def _send_slack(client: httpx.Client, settings: ChannelSettings, message: Message) -> Result:
    response = client.post(settings.endpoint(), json=slack_payload(message))
    if response.status_code == 200:
        return Result(Outcome.DELIVERED)
    return classify(response)


# PagerDuty --------------------------------------------------------------------------------


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
        "summary": _cut(_headline(item), 1024),
        "source": f"bulwark:{i.get('model', 'bulwark')}",
        "severity": PAGERDUTY_SEVERITY.get(str(i.get("severity")), "warning"),
        "timestamp": _iso(i.get("last_seen")) or datetime.now(UTC).isoformat(),
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


def _send_pagerduty(client: httpx.Client, settings: ChannelSettings, message: Message) -> Result:
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


# Generic webhook --------------------------------------------------------------------------


def webhook_body(message: Message) -> dict[str, Any]:
    return {
        "version": 1,
        "source": "bulwark",
        "channel": message.channel,
        "group": message.group,
        "notifications": [
            {
                "id": item.id,
                "action": item.action,
                "reason": item.reason,
                "dedup_key": item.dedup_key,
                "headline": headline(item.incident) if item.reason != "test" else None,
                "related": item.incident.get("related") or [],
                "link": item.link,
                "incident": {k: v for k, v in item.incident.items() if k != "related"},
            }
            for item in message.items
        ],
    }


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>` of HMAC-SHA256 over `timestamp.body`: receivers recompute it, and
    reject old timestamps to stop replays."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def _send_webhook(client: httpx.Client, settings: ChannelSettings, message: Message) -> Result:
    body = json.dumps(webhook_body(message), separators=(",", ":"), default=str).encode()
    timestamp = str(int(time.time()))
    ids = ",".join(str(i.id) for i in message.items)
    headers = {
        "Content-Type": "application/json",
        "X-Bulwark-Timestamp": timestamp,
        # The same notifications always carry the same key: receivers can drop retries.
        "Idempotency-Key": hashlib.sha256(ids.encode()).hexdigest()[:32],
    }
    if settings.secret is not None:
        headers["X-Bulwark-Signature"] = sign(settings.secret.get_secret_value(), timestamp, body)
    response = client.post(settings.endpoint(), content=body, headers=headers)
    if 200 <= response.status_code < 300:
        return Result(Outcome.DELIVERED)
    return classify(response)


# Shared -----------------------------------------------------------------------------------


# Answers whose Retry-After says when to come back (RFC 9110 15.6.4, RFC 6585 4).
RETRY_AFTER_STATUSES = frozenset({429, 503})


def classify(response: httpx.Response) -> Result:
    """A non-success answer: 429 and 503 wait for their Retry-After (backoff without one),
    permanent statuses are not retried, anything else (5xx, 408, ...) is retried with
    backoff."""
    status = response.status_code
    detail = f"HTTP {status}: {_body_excerpt(response)}"
    if status in RETRY_AFTER_STATUSES:
        return Result(Outcome.RETRY, detail, retry_after=retry_after(response.headers))
    if status in PERMANENT_STATUSES:
        return Result(Outcome.REJECTED, detail)
    return Result(Outcome.RETRY, detail)


def retry_after(headers: httpx.Headers, now: Callable[[], float] = time.time) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now())
    except (TypeError, ValueError):
        return None


def scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def secrets_of(settings: list[ChannelSettings]) -> list[str]:
    """Every secret of the given channels, longest first (so a URL goes before its path)."""
    values: set[str] = set()
    for channel in settings:
        for secret in (channel.url, channel.routing_key, channel.secret):
            if secret is not None and secret.get_secret_value():
                values.add(secret.get_secret_value())
        if channel.url is not None:
            path = urlsplit(channel.url.get_secret_value()).path
            if len(path) > 8:  # Slack's secret is the path: hide it even without the host
                values.add(path)
    return sorted(values, key=len, reverse=True)


def _body_excerpt(response: httpx.Response) -> str:
    text = response.text.strip().replace("\n", " ")
    return _cut(text, 300) if text else response.reason_phrase


def _latest_per_incident(items: list[Item]) -> list[Item]:
    """One line per incident in a chat message: its latest news, in first-seen order."""
    latest: dict[Any, Item] = {}
    for item in items:
        latest[item.incident.get("id", item.id)] = item
    return list(latest.values())


def _headline(item: Item) -> str:
    i = item.incident
    if item.reason == "test":
        return "Bulwark test notification"
    related = i.get("related") or []
    more = f" (+{len(related)} related)" if related else ""
    return (
        f"[{str(i.get('severity', '')).upper()}] {_word(item)}: {i.get('model')} "
        f"{i.get('kind')}: {headline(i)}{more}"
    )


def _word(item: Item) -> str:
    return ACTION_WORDS.get(item.reason, item.reason)


def _iso(epoch: Any) -> str:
    if not isinstance(epoch, int | float):
        return ""
    return datetime.fromtimestamp(epoch, UTC).isoformat()


def _esc(text: str) -> str:
    """Slack mrkdwn control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
