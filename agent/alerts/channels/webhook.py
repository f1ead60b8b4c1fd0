"""The generic webhook: a versioned JSON body, signed with HMAC-SHA256 when the channel has a
secret, with an Idempotency-Key so receivers can drop retries."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import httpx

from agent.alerts.channels.base import Message, Outcome, Result, classify
from agent.alerts.wording import headline
from agent.config import ChannelSettings


def send(client: httpx.Client, settings: ChannelSettings, message: Message) -> Result:
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
