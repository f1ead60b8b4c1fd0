"""Local stand-ins for Slack incoming webhooks, PagerDuty's Events API v2 and a generic
webhook: they check every payload as the services document it and answer like them.

Slack: POST JSON with `text` and/or Block Kit `blocks`; 200 "ok"; 400 "invalid_payload" or
"no_text"; 403/404 "no_service"; 410 "channel_is_archived"; 429 with Retry-After.
PagerDuty: POST /v2/enqueue with routing_key, event_action trigger|acknowledge|resolve,
dedup_key (<= 255 chars), and for triggers payload{summary <= 1024, source, severity
critical|error|warning|info, timestamp ISO 8601, component, group, class, custom_details};
202 {"status": "success", "message": "Event processed", "dedup_key": ...}; 400
{"status": "invalid event", "message": ..., "errors": [...]}; 429; 5xx.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    status: int
    body: str | dict[str, Any] = ""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering (to provoke client timeouts)


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    raw: bytes


class Receiver:
    """One fake service on 127.0.0.1. `accepted` holds the payloads it answered with success;
    `scripted` replies are used first, in order; `down` answers 503 to everything."""

    def __init__(self, kind: str, routing_key: str = "", secret: str = "") -> None:
        self.kind = kind
        self.routing_key = routing_key
        self.secret = secret
        self.accepted: list[Received] = []
        self.requests = 0
        self.invalid: list[str] = []  # payload problems found (a test asserts it stays empty)
        self.scripted: list[Reply] = []
        self.down = False
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                reply = receiver.handle(self.path, dict(self.headers.items()), raw)
                if reply.delay:
                    time.sleep(reply.delay)
                body = reply.body if isinstance(reply.body, str) else json.dumps(reply.body)
                data = body.encode()
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        path = {"slack": "/services/T000/B000/XXXXSECRETXXXX", "pagerduty": "/v2/enqueue"}
        return f"http://{host}:{port}{path.get(self.kind, '/hook')}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def handle(self, path: str, headers: dict[str, str], raw: bytes) -> Reply:
        with self.lock:
            self.requests += 1
            if self.scripted:
                return self.scripted.pop(0)
            if self.down:
                return Reply(503, "service unavailable")
            try:
                body = json.loads(raw)
            except ValueError:
                return self._invalid("body is not JSON")
            if self.kind == "slack":
                problems = _check_slack(body)
            elif self.kind == "pagerduty":
                problems = self._check_pd(body)
            else:
                problems = self._check_hook(headers, raw, body)
            if problems:
                return self._invalid("; ".join(problems))
            self.accepted.append(Received(path, headers, body, raw))
            if self.kind == "slack":
                return Reply(200, "ok")
            if self.kind == "pagerduty":
                return Reply(
                    202,
                    {
                        "status": "success",
                        "message": "Event processed",
                        "dedup_key": body["dedup_key"],
                    },
                )
            return Reply(200, {"ok": True})

    def _invalid(self, problem: str) -> Reply:
        self.invalid.append(problem)
        if self.kind == "slack":
            return Reply(400, "invalid_payload")
        if self.kind == "pagerduty":
            return Reply(
                400,
                {
                    "status": "invalid event",
                    "message": "Event object is invalid",
                    "errors": [problem],
                },
            )
        return Reply(400, {"error": problem})

    def _check_pd(self, event: dict[str, Any]) -> list[str]:
        problems = []
        if event.get("routing_key") != self.routing_key:
            problems.append("routing_key is invalid")
        action = event.get("event_action")
        if action not in ("trigger", "acknowledge", "resolve"):
            problems.append("event_action must be trigger, acknowledge or resolve")
        key = event.get("dedup_key")
        if action != "trigger" and not key:
            problems.append("dedup_key is required for acknowledge and resolve")
        if key is not None and (not isinstance(key, str) or len(key) > 255):
            problems.append("dedup_key must be a string of at most 255 characters")
        if action == "trigger":
            payload = event.get("payload")
            if not isinstance(payload, dict):
                return [*problems, "payload is required for trigger"]
            summary = payload.get("summary")
            if not isinstance(summary, str) or not summary or len(summary) > 1024:
                problems.append("payload.summary must be 1..1024 characters")
            if not isinstance(payload.get("source"), str) or not payload["source"]:
                problems.append("payload.source is required")
            if payload.get("severity") not in ("critical", "error", "warning", "info"):
                problems.append("payload.severity is invalid")
            if "timestamp" in payload:
                try:
                    datetime.fromisoformat(payload["timestamp"])
                except (TypeError, ValueError):
                    problems.append("payload.timestamp must be ISO 8601")
            for name in ("component", "group", "class"):
                if name in payload and not isinstance(payload[name], str):
                    problems.append(f"payload.{name} must be a string")
            if "custom_details" in payload and not isinstance(payload["custom_details"], dict):
                problems.append("payload.custom_details must be an object")
        return problems

    def _check_hook(self, headers: dict[str, str], raw: bytes, body: dict[str, Any]) -> list[str]:
        problems = []
        lower = {k.lower(): v for k, v in headers.items()}
        if self.secret:
            ts = lower.get("x-bulwark-timestamp", "")
            mac = hmac.new(self.secret.encode(), ts.encode() + b"." + raw, hashlib.sha256)
            if lower.get("x-bulwark-signature") != "sha256=" + mac.hexdigest():
                problems.append("bad signature")
        if not lower.get("idempotency-key"):
            problems.append("no Idempotency-Key")
        if body.get("version") != 1 or not isinstance(body.get("notifications"), list):
            problems.append("not a bulwark notification")
        return problems


def _check_slack(body: dict[str, Any]) -> list[str]:
    problems = []
    text, blocks = body.get("text"), body.get("blocks")
    if not text and not blocks:
        return ["no_text"]
    if text is not None and not isinstance(text, str):
        problems.append("text must be a string")
    if blocks is not None:
        if not isinstance(blocks, list) or len(blocks) > 50:
            return ["blocks must be a list of at most 50"]
        for block in blocks:
            problems.extend(_check_block(block))
    return problems


def _check_block(block: dict[str, Any]) -> list[str]:
    kind = block.get("type")
    if kind == "header":
        t = block.get("text", {})
        if t.get("type") != "plain_text" or not 0 < len(t.get("text", "")) <= 150:
            return ["header needs plain_text of 1..150 characters"]
        return []
    if kind == "section":
        problems = []
        t = block.get("text")
        if t is not None and (
            t.get("type") not in ("mrkdwn", "plain_text") or not 0 < len(t.get("text", "")) <= 3000
        ):
            problems.append("section text must be 1..3000 characters")
        fields = block.get("fields")
        if fields is not None:
            if len(fields) > 10:
                problems.append("at most 10 fields")
            for f in fields:
                if (
                    f.get("type") not in ("mrkdwn", "plain_text")
                    or not 0 < len(f.get("text", "")) <= 2000
                ):
                    problems.append("field text must be 1..2000 characters")
        if t is None and fields is None:
            problems.append("section needs text or fields")
        return problems
    if kind == "context":
        elements = block.get("elements")
        if not isinstance(elements, list) or not 0 < len(elements) <= 10:
            return ["context needs 1..10 elements"]
        return []
    if kind == "divider":
        return []
    return [f"unknown block type {kind!r}"]
