"""Slack: an incoming-webhook message, Block Kit sections, one line per incident."""

from __future__ import annotations

from typing import Any

import httpx

from agent.alerts.channels.base import (
    Item,
    Message,
    Outcome,
    Result,
    action_word,
    classify,
    cut,
    iso,
    summary_line,
)
from agent.alerts.wording import headline
from agent.config import ChannelSettings

MAX_RELATED_LINES = 10  # related incidents listed under a root in a Slack section
SLACK_EMOJI = {
    "critical": ":red_circle:",
    "warning": ":large_orange_circle:",
    "info": ":large_blue_circle:",
}


def send(client: httpx.Client, settings: ChannelSettings, message: Message) -> Result:
    response = client.post(settings.endpoint(), json=slack_payload(message))
    if response.status_code == 200:
        return Result(Outcome.DELIVERED)
    return classify(response)


def slack_payload(message: Message) -> dict[str, Any]:
    """An incoming-webhook message: `text` (notification fallback) and Block Kit `blocks`."""
    items = _latest_per_incident(message.items)
    listed = items[: message.max_listed]
    first = items[0]
    fallback = summary_line(first)
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
        {"type": "header", "text": {"type": "plain_text", "text": cut(header, 150)}}
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
    return {"text": cut(fallback, 3000), "blocks": blocks}


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
    text = f"{emoji} *{action_word(item)}*: {_esc(headline(i))}\n{title_md}"
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
        ("Evidence", f"{i.get('count')} since {iso(i.get('first_seen'))}"),
    ]
    numbers = key_numbers(i.get("details") or {})
    if numbers:
        fields.append(("Key numbers", numbers))
    return {
        "type": "section",
        "text": {"type": "mrkdwn", "text": cut(text, 3000)},
        "fields": [
            {"type": "mrkdwn", "text": cut(f"*{name}*\n{_esc(value)}", 2000)}
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


def _latest_per_incident(items: list[Item]) -> list[Item]:
    """One line per incident in a chat message: its latest news, in first-seen order."""
    latest: dict[Any, Item] = {}
    for item in items:
        latest[item.incident.get("id", item.id)] = item
    return list(latest.values())


def _esc(text: str) -> str:
    """Slack mrkdwn control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
