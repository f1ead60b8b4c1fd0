"""The Slack message of the demo's root incident, as Slack would show it: the Block Kit
payload Bulwark posts (received by a local stand-in for Slack) drawn by a static look-alike
(tests/slack_preview.py) in headless Chromium. With BULWARK_UPDATE_DOC_SCREENSHOTS set, the
screenshot replaces docs/img/slack-message.png (the README's walkthrough shows it)."""

from __future__ import annotations

import html
import os
import re
import shutil
import time
from pathlib import Path

from agent.alerts.dispatcher import Dispatcher
from agent.demo import demo_scenario
from agent.runtime.pipeline import Pipeline
from agent.runtime.replay import memory_batches, replay_batches
from storage.db import Database
from tests.alerts_helpers import Clock, alert_settings
from tests.api_helpers import api_settings
from tests.receivers import Receiver
from tests.slack_preview import message_html, mrkdwn
from tests.test_web_page import DOCS_IMG, chromium, pytestmark  # noqa: F401 - skip without it


def test_mrkdwn_is_drawn_as_slack_does() -> None:
    text = "*Opened*: amount &lt; 5 &amp; `x`\n<https://b.example/i/1?a=1&amp;b=2|#1 amount>"
    assert mrkdwn(text) == (
        "<b>Opened</b>: amount &lt; 5 &amp; <code>x</code><br>"
        '<a href="https://b.example/i/1?a=1&amp;b=2">#1 amount</a>'
    )
    assert mrkdwn("feature_drift: *a*b* :red_circle:").startswith("feature_drift: *a*b* <span")


def test_the_demo_root_incidents_slack_message(sqlite_url: str, tmp_path: Path) -> None:
    slack = Receiver("slack")
    try:
        settings = api_settings(sqlite_url)
        settings.alerts = alert_settings({"slack": slack}, group_wait=0)
        db = Database(sqlite_url)
        db.upgrade()
        scenario = demo_scenario()  # what `bulwark demo` replays
        pipeline = Pipeline(settings, db, consumer="demo", notify=True)  # as `replay --alerts`
        replay_batches(pipeline, memory_batches(scenario.lines, "demo", settings.batch_size))
        clock = Clock()
        clock.advance(60)
        dispatcher = Dispatcher(db, settings.alerts, clock=clock)
        dispatcher.run_once()
        dispatcher.close()
        db.dispose()
    finally:
        slack.close()
    assert slack.invalid == []
    (payload,) = [
        m.body for m in slack.accepted if m.body["blocks"][0]["text"]["text"].startswith("fraud:")
    ]
    header = payload["blocks"][0]["text"]["text"]
    assert header.startswith("fraud: amount: ") and " -> " in header  # what changed, in words
    section = payload["blocks"][1]["text"]["text"]
    assert "Related (" in section  # what it explains is listed, not paged

    page = tmp_path / "slack-message.html"
    page.write_text(message_html(payload, time.strftime("%H:%M")), encoding="utf-8")
    dom = chromium("--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    shown = html.unescape(re.sub(r"<[^>]+>", " ", dom.stdout))
    words = " ".join(shown.split())
    for block in payload["blocks"]:
        texts = [block["text"]["text"]] if "text" in block else []
        texts += [f["text"] for f in block.get("fields", [])]
        texts += [e["text"] for e in block.get("elements", [])]
        for text in texts:  # every word Slack would show is on the page
            plain = re.sub(r"<([^|<>]+)\|([^<>]+)>", r"\2", text)
            plain = html.unescape(re.sub(r"[*`]|:[a-z_]+:", " ", plain))
            for word in plain.split():
                assert word in words, word

    shot = tmp_path / "slack-message.png"
    screenshot = chromium(f"--screenshot={shot}", "--window-size=800,470", page.as_uri())
    assert screenshot.returncode == 0, screenshot.stderr[-2000:]
    assert shot.stat().st_size > 10_000
    print(f"\nslack message screenshot: {shot}")
    if os.environ.get("BULWARK_UPDATE_DOC_SCREENSHOTS"):
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, DOCS_IMG / "slack-message.png")
