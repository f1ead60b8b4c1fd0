"""Channels: one integration per module (`slack`, `pagerduty`, `webhook`), each rendering one
group of notifications for its receiver and classifying the answer; `base` holds what they
share. `send` picks the integration by the channel's type.

The HTTP client is made in `base` and nowhere else. Secrets (URLs, routing keys, HMAC keys)
come from the settings at send time and are scrubbed from every result `send` returns.
"""

from __future__ import annotations

import httpx

from agent.alerts.channels import pagerduty, slack, webhook
from agent.alerts.channels.base import Message, Outcome, Result, Sender, scrub, secrets_of
from agent.config import ChannelSettings

SENDERS: dict[str, Sender] = {
    "slack": slack.send,
    "pagerduty": pagerduty.send,
    "webhook": webhook.send,
}


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
        result = SENDERS[settings.type](client, settings, message)
    except httpx.TimeoutException as exc:
        result = Result(Outcome.RETRY, f"timeout ({type(exc).__name__})")
    except httpx.HTTPError as exc:
        result = Result(Outcome.RETRY, f"{type(exc).__name__}: {exc}")
    return Result(
        result.outcome, scrub(result.detail, secrets), result.retry_after, result.delivered_ids
    )
