"""What every channel shares: the notification as a channel sees it (`Item`, `Message`), the
outcome of a send (`Result`), the one HTTP client factory, how a receiver's refusal is
classified (done, retry, rejected), and the scrubbing of secrets from what is recorded."""

from __future__ import annotations

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
# Answers that mean "this request will never succeed": no retry, the reason is recorded.
PERMANENT_STATUSES = frozenset({400, 401, 403, 404, 405, 410, 413, 422})
# Answers whose Retry-After says when to come back (RFC 9110 15.6.4, RFC 6585 4).
RETRY_AFTER_STATUSES = frozenset({429, 503})
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


# A channel's send: one grouped message to the receiver; may raise httpx errors.
Sender = Callable[[httpx.Client, ChannelSettings, Message], Result]


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


def summary_line(item: Item) -> str:
    """One line for a notification (Slack's fallback text, PagerDuty's summary)."""
    i = item.incident
    if item.reason == "test":
        return "Bulwark test notification"
    related = i.get("related") or []
    more = f" (+{len(related)} related)" if related else ""
    return (
        f"[{str(i.get('severity', '')).upper()}] {action_word(item)}: {i.get('model')} "
        f"{i.get('kind')}: {headline(i)}{more}"
    )


def action_word(item: Item) -> str:
    return ACTION_WORDS.get(item.reason, item.reason)


def iso(epoch: Any) -> str:
    if not isinstance(epoch, int | float):
        return ""
    return datetime.fromtimestamp(epoch, UTC).isoformat()


def cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _body_excerpt(response: httpx.Response) -> str:
    text = response.text.strip().replace("\n", " ")
    return cut(text, 300) if text else response.reason_phrase
