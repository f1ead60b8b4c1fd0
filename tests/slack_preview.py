"""A static HTML look-alike of a Slack message, from the Block Kit payload Bulwark sends: what
the README's screenshot of a Slack message is rendered from (tests/test_slack_preview.py).

Only what `agent.alerts.channels.slack.slack_payload` uses is drawn: `header`, `section` (mrkdwn
text and fields) and `context` blocks; in mrkdwn, `*bold*`, `` `code` ``, `<url|text>` links,
the severity emoji and line breaks. The payload's text is already escaped for Slack (`&amp;`,
`&lt;`, `&gt;`), which HTML reads the same way.
"""

from __future__ import annotations

import html
import re
from typing import Any

EMOJI_COLOURS = {
    "red_circle": "#e01e5a",
    "large_orange_circle": "#f2952f",
    "large_blue_circle": "#1d9bd1",
}

STYLE = """
body { margin: 0; background: #fff; font: 15px/1.47 "Liberation Sans", "DejaVu Sans", sans-serif;
       color: #1d1c1d; }
.message { display: flex; gap: 10px; padding: 14px 20px; width: 760px; }
.avatar { flex: none; width: 36px; height: 36px; border-radius: 6px; background: #4a154b;
          color: #fff; font-weight: bold; font-size: 20px; text-align: center; line-height: 36px; }
.name { font-weight: 900; }
.badge { font-size: 10px; background: #e8e8e8; color: #616061; border-radius: 3px;
         padding: 1px 3px; margin: 0 4px; font-weight: bold; vertical-align: 2px; }
.time { color: #616061; font-size: 12px; }
.header { font-size: 18px; font-weight: 900; margin: 4px 0 6px; }
.section { margin: 4px 0 8px; }
.fields { display: grid; grid-template-columns: 1fr 1fr; gap: 8px 16px; margin-top: 8px; }
.context { color: #616061; font-size: 13px; }
a { color: #1264a3; text-decoration: none; }
code { font: 12px "DejaVu Sans Mono", monospace; color: #e01e5a; background: #f6f6f6;
       border: 1px solid #e0e0e0; border-radius: 3px; padding: 1px 3px; }
.emoji { display: inline-block; width: 14px; height: 14px; border-radius: 50%;
         vertical-align: -2px; }
"""


def mrkdwn(text: str) -> str:
    """Slack mrkdwn (already Slack-escaped) as HTML."""
    parts = re.split(r"(<[^<>]+>)", text)  # links are the only raw angle brackets
    out = []
    for part in parts:
        link = re.fullmatch(r"<([^|<>]+)(?:\|([^<>]+))?>", part)
        if link:
            url, label = link[1], link[2] or link[1]
            href = html.escape(html.unescape(url), quote=True)
            out.append(f'<a href="{href}">{_inline(label)}</a>')
        else:
            out.append(_inline(part))
    return "".join(out).replace("\n", "<br>")


def _inline(text: str) -> str:
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"(?<![\w*])\*([^*\n]+)\*(?![\w*])", r"<b>\1</b>", text)
    return re.sub(r":([a-z_]+):", _emoji, text)


def _emoji(match: re.Match[str]) -> str:
    colour = EMOJI_COLOURS.get(match[1])
    if colour is None:
        return match[0]
    return f'<span class="emoji" title=":{match[1]}:" style="background:{colour}"></span>'


def block_html(block: dict[str, Any]) -> str:
    kind = block["type"]
    if kind == "header":
        return f'<div class="header">{html.escape(block["text"]["text"])}</div>'
    if kind == "section":
        fields = "".join(f"<div>{mrkdwn(f['text'])}</div>" for f in block.get("fields", []))
        text = mrkdwn(block["text"]["text"]) if "text" in block else ""
        grid = f'<div class="fields">{fields}</div>' if fields else ""
        return f'<div class="section">{text}{grid}</div>'
    if kind == "context":
        texts = " ".join(mrkdwn(e["text"]) for e in block["elements"])
        return f'<div class="context">{texts}</div>'
    raise ValueError(f"block type {kind!r} is not drawn here")


def message_html(payload: dict[str, Any], sent_at: str) -> str:
    """The whole page: one message of the Bulwark app, posted at `sent_at` (e.g. "03:41")."""
    blocks = "".join(block_html(b) for b in payload["blocks"])
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><style>{STYLE}</style></head>"
        '<body><div class="message"><div class="avatar">B</div><div>'
        f'<span class="name">Bulwark</span><span class="badge">APP</span>'
        f'<span class="time">{html.escape(sent_at)}</span>{blocks}</div></div></body></html>'
    )
