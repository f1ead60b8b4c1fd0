"""The web page in headless Chromium: it shows the incidents and one incident's evidence;
on a replayed drift, what changed, the distributions, the statistic's history, the report
link, and an admin acknowledges from the page (driven over the DevTools protocol)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from agent.demo import demo_scenario
from agent.reports import build_report
from agent.runtime.pipeline import Pipeline
from agent.runtime.replay import memory_batches, replay_batches
from detectors.base import Kind, Severity
from storage.db import Database
from tests.api_helpers import ADMIN, READER, T0, api_settings, finding, record, serving

DOCS_IMG = Path(__file__).resolve().parents[1] / "docs" / "img"

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Debian's chromium is not installed (apt-get install -y chromium) - web page untested",
)


def chromium(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    profile = tempfile.mkdtemp(prefix="bulwark-chromium-")
    try:
        return subprocess.run(
            [
                str(CHROMIUM),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=10000",  # let the page's fetches finish first
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def error_box(html: str) -> str:
    match = re.search(r'<div id="error"[^>]*>(.*?)</div>', html)
    assert match, "the page has no error box"
    return match[1]


def test_web_page_shows_incidents_and_evidence(sqlite_url: str, tmp_path: Path) -> None:
    db = Database(sqlite_url)
    findings = [
        finding("fraud", Kind.FEATURE_DRIFT, "amount", T0 + 600 * k, k, value=4.5 + k)
        for k in range(6)
    ]
    findings += [
        finding("churn", Kind.PREDICTION_DRIFT, "prediction", T0 + 1800, 10, Severity.CRITICAL),
        finding("price", Kind.DATA_QUALITY, "sqft", T0 + 5400, 11, Severity.INFO),
    ]
    record(db, findings)
    with serving(api_settings(sqlite_url), db) as api:
        fraud = api.reader.get("/api/incidents", params={"model": "fraud"}).json()["items"][0]
        url = f"{api.url}/ui#token={READER}&incident={fraud['id']}"
        dom = chromium("--dump-dom", url)
        assert dom.returncode == 0, dom.stderr[-2000:]
        html = dom.stdout
        # Every incident is listed, and drawn on the timeline.
        for incident in api.reader.get("/api/incidents").json()["items"]:
            assert f'data-incident="{incident["id"]}"' in html
            assert incident["title"] in html
        assert html.count('<tr class="incident') == 3
        assert html.count("<rect") >= 3 + 3  # lanes + bars
        # The selected incident's evidence: six rows and six points on its chart.
        assert f"Incident #{fraud['id']}" in html
        assert html.count('<tr class="evidence">') == 6
        assert html.count('class="evidence-point"') == 6
        assert error_box(html) == ""

        shot = tmp_path / "bulwark-web-page.png"
        screenshot = chromium(f"--screenshot={shot}", "--window-size=1400,1300", url)
        assert screenshot.returncode == 0, screenshot.stderr[-2000:]
        assert shot.stat().st_size > 10_000
        print(f"\nweb page screenshot: {shot}")

        # Without a valid token the page says so instead of showing data.
        refused = chromium("--dump-dom", f"{api.url}/ui#token=wrong").stdout
        assert error_box(refused).startswith("The API refused the token")
        assert 'data-incident="' not in refused
    db.dispose()


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe:
    JSON messages separated by NUL on file descriptors 3 and 4), so the test needs no
    WebDriver and no websocket client."""

    def __init__(self, width: int = 1400, height: int = 1000) -> None:
        self.profile = tempfile.mkdtemp(prefix="bulwark-chromium-")
        to_chrome_r, self.to_chrome = os.pipe()
        self.from_chrome, from_chrome_w = os.pipe()

        def map_fds() -> None:  # in the child, before exec: the protocol's fds 3 and 4
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        self.process = subprocess.Popen(
            [
                str(CHROMIUM),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--remote-debugging-pipe",
                f"--user-data-dir={self.profile}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=map_fds,  # maps two fds in the child; nothing else runs there
            close_fds=False,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self.buffer = b""
        self.next_id = 0
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
        self.call("Emulation.setDeviceMetricsOverride", metrics, session=True)

    def call(self, method: str, params: dict[str, Any], session: bool = False) -> dict[str, Any]:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self.to_chrome, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self.buffer:
                chunk = os.read(self.from_chrome, 1 << 20)
                assert chunk, "Chromium closed the DevTools pipe"
                self.buffer += chunk
            raw, self.buffer = self.buffer.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self.next_id:  # events and other answers are skipped
                assert "error" not in answer, answer["error"]
                return answer["result"]

    def open(self, url: str) -> None:
        self.call("Page.navigate", {"url": url}, session=True)

    def evaluate(self, expression: str) -> Any:
        result = self.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            session=True,
        )
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60) -> Any:
        """Polls until the expression is truthy (the page loads its data asynchronously)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            assert time.monotonic() < deadline, f"the page never satisfied: {expression}"
            time.sleep(0.2)

    def screenshot(self, path: Path) -> None:
        size = self.call("Page.getLayoutMetrics", {}, session=True)["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = self.call(
            "Page.captureScreenshot",
            {"format": "png", "captureBeyondViewport": True, "clip": clip},
            session=True,
        )
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)
        os.close(self.to_chrome)
        os.close(self.from_chrome)
        shutil.rmtree(self.profile, ignore_errors=True)


def test_an_incident_page_on_a_replayed_drift(sqlite_url: str, tmp_path: Path) -> None:
    settings = api_settings(sqlite_url)
    db = Database(sqlite_url)
    db.upgrade()
    scenario = demo_scenario(events_per_model=8_000)
    pipeline = Pipeline(settings, db, consumer="demo")
    replay_batches(pipeline, memory_batches(scenario.lines, "demo", settings.batch_size))
    report = build_report(settings, db, "fraud").report  # what the scheduled job would do
    with serving(settings, db) as api:
        listed = api.reader.get(
            "/api/incidents", params={"model": "fraud", "kind": "feature_drift"}
        ).json()["items"]
        (incident,) = [i for i in listed if i["subject"] == "amount"]
        reference, current = incident["details"]["reference"], incident["details"]["current"]
        browser = Browser()
        try:
            browser.open(f"{api.url}/ui#token={ADMIN}&incident={incident['id']}")
            browser.wait_for(
                "document.querySelectorAll('#distribution-chart .dist-bar').length > 0 && "
                "document.querySelectorAll('#history-chart .history-point').length > 0"
            )
            assert browser.evaluate("document.getElementById('error').textContent") == ""
            # What changed, in words and numbers: the reference and current means.
            headline = browser.evaluate("document.getElementById('headline').textContent")
            assert headline.startswith("amount: mean ") and " UTC" in headline
            rows = browser.evaluate(
                "[...document.querySelectorAll('#what-changed tr.change-row')].map("
                "r => [...r.cells].map(c => c.textContent))"
            )
            by_measure = {r[0]: r for r in rows}
            assert float(by_measure["mean"][1]) == pytest.approx(reference["mean"], rel=1e-3)
            assert float(by_measure["mean"][2]) == pytest.approx(current["mean"], rel=1e-3)
            assert f"{float(by_measure['mean'][1]):g}" in headline
            # The distribution: reference and recent histograms on the same 20 bins.
            bars = browser.evaluate(
                "[...document.querySelectorAll('#distribution-chart .dist-bar')].map("
                "b => b.classList[1])"
            )
            assert bars.count("reference") == bars.count("recent") == 20
            distribution = api.reader.get(
                "/api/models/fraud/distribution", params={"feature": "amount"}
            ).json()
            assert (
                distribution["recent"]["summary"]["mean"]
                > distribution["reference"]["summary"]["mean"]
                + 0.5 * distribution["reference"]["summary"]["std"]
            )  # the injected shift
            # The statistic's history over the recent window, beyond its alarms.
            points = browser.evaluate(
                "document.querySelectorAll('#history-chart .history-point').length"
            )
            assert points == len(distribution["history"]) > incident["count"]
            assert (
                browser.evaluate("document.querySelectorAll('#history-chart .alarm-mark').length")
                == incident["count"]
            )
            # The Evidently report, served over HTTP behind the token.
            href = browser.evaluate("document.querySelector('a.report-link').getAttribute('href')")
            assert href == f"/api/reports/{report.id}/html"
            assert api.anonymous.get(href).status_code == 401
            served = api.reader.get(href)
            assert served.status_code == 200 and served.headers["content-type"].startswith(
                "text/html"
            )
            assert served.content == Path(report.html_path).read_bytes()
            # Performance over time (fraud is the model with labels and scores), dead letters.
            browser.wait_for("document.querySelectorAll('.performance-point').length > 0")
            accuracy = api.reader.get(
                "/api/models/fraud/performance", params={"metric": "accuracy"}
            ).json()["items"]
            for estimated, cls in ((False, "measured"), (True, "estimated")):
                drawn = browser.evaluate(
                    f"document.querySelectorAll('.performance-point.{cls}').length"
                )
                assert drawn == sum(p["estimated"] is estimated for p in accuracy), cls
            assert (
                browser.evaluate("document.querySelectorAll('.performance-point.measured').length")
                > 0
            )
            browser.wait_for("document.querySelectorAll('tr.dead-letter').length > 0")
            assert browser.evaluate("document.querySelectorAll('tr.dead-letter').length") == (
                scenario.malformed
            )

            shot = tmp_path / "bulwark-incident.png"
            browser.screenshot(shot)
            assert shot.stat().st_size > 20_000
            print(f"\nincident page screenshot: {shot}")
            if os.environ.get("BULWARK_UPDATE_DOC_SCREENSHOTS"):
                DOCS_IMG.mkdir(parents=True, exist_ok=True)
                shutil.copy(shot, DOCS_IMG / "web-incident.png")

            # An admin acknowledges from the page, with a note.
            browser.evaluate("document.getElementById('note-text').value = 'looking at amount'")
            browser.evaluate(
                "document.querySelector('#actions button[data-action=acknowledge]').click()"
            )
            browser.wait_for(
                "document.getElementById('detail-status').textContent === 'acknowledged'"
            )
            after = api.reader.get(f"/api/incidents/{incident['id']}").json()
            assert after["status"] == "acknowledged"
            assert [(n["action"], n["author"], n["text"]) for n in after["notes"]] == [
                ("acknowledged", "web page", "looking at amount")
            ]
            assert browser.evaluate(
                "document.querySelector('#actions button[data-action=acknowledge]').disabled"
            )

            # The filters: kind, severity and event time (UTC) reach the API.
            everything = api.reader.get("/api/incidents").json()["items"]

            def shown_after(script: str, want: list[int]) -> None:
                browser.evaluate(script + "; load()")
                browser.wait_for(
                    "JSON.stringify([...document.querySelectorAll('tr.incident')]"
                    f".map(r => +r.dataset.incident).sort((a, b) => a - b)) === '{want}'".replace(
                        ", ", ","
                    )
                )

            for kind in sorted({i["kind"] for i in everything}):
                want = sorted(i["id"] for i in everything if i["kind"] == kind)
                shown_after(f"$('f-kind').value = '{kind}'", want)
            critical = sorted(i["id"] for i in everything if i["severity"] == "critical")
            shown_after("$('f-kind').value = ''; $('f-severity').value = 'critical'", critical)
            cut = sorted(i["last_seen"] for i in everything)[len(everything) // 2]
            local = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(cut))  # the input's UTC text
            later = sorted(i["id"] for i in everything if i["last_seen"] >= cut)
            shown_after(f"$('f-severity').value = ''; $('f-since').value = '{local}'", later)
            assert 0 < len(later) < len(everything)
        finally:
            browser.close()

        # A read-only token sees the same page without the buttons.
        dom = chromium("--dump-dom", f"{api.url}/ui#token={READER}&incident={incident['id']}")
        assert re.search(r'<div class="actions" id="actions" hidden=""', dom.stdout)
        assert "read-only token" in dom.stdout
    db.dispose()


def test_the_page_lists_every_incident_kind() -> None:
    """The kind filter offers the contract's kinds (the page keeps its own list)."""
    page = (Path(__file__).resolve().parents[1] / "agent" / "web" / "index.html").read_text()
    match = re.search(r"const KINDS = \[(.*?)\];", page, re.S)
    assert match
    assert re.findall(r'"(\w+)"', match[1]) == [k.value for k in Kind]


@pytest.mark.parametrize(
    ("details", "headline"),
    [
        (  # categorical drift
            {
                "psi": 0.31,
                "reference": {"size": 3000, "shares": {"DE": 0.5, "FR": 0.5}},
                "current": {"size": 500, "shares": {"DE": 0.8, "FR": 0.2}},
            },
            "country: DE 50.0% → 80.0% (PSI 0.31) since 2026-01-01 00:00:00 UTC",
        ),
        (  # data quality
            {"reference": {"rate": 0.001, "count": 3}, "current": {"rate": 0.065, "count": 65}},
            "country: rate 0.1% → 6.5% since 2026-01-01 00:00:00 UTC",
        ),
        (  # accuracy drop, estimated
            {
                "estimated": True,
                "before": {"value": 0.91, "ci95": [0.9, 0.92], "n": 5000},
                "after": {"value": 0.84, "ci95": [0.82, 0.86], "n": 800},
            },
            "country: 0.91 → 0.84 (estimated) since 2026-01-01 00:00:00 UTC",
        ),
        (  # input anomaly
            {"reference_share": 0.0234, "anomalous_share": 0.245},
            "inputs out of reference range: 2.3% → 24.5% since 2026-01-01 00:00:00 UTC",
        ),
        ({"client": "key-1"}, "the title, as nothing states a reference"),
    ],
)
def test_what_changed_reads_every_detectors_details(
    sqlite_url: str, details: dict[str, Any], headline: str
) -> None:
    db = Database(sqlite_url)
    db.upgrade()
    with serving(api_settings(sqlite_url), db) as api:
        browser = Browser()
        try:
            browser.open(f"{api.url}/ui")
            browser.wait_for("typeof whatChanged === 'function'")
            incident = {
                "subject": "country",
                "first_seen": T0,
                "title": "the title, as nothing states a reference",
                "details": details,
            }
            change = browser.evaluate(f"whatChanged({json.dumps(incident)})")
        finally:
            browser.close()
    db.dispose()
    assert change["headline"] == headline
    if "reference" in details:  # every reference and current value has its row
        measures = {row[0] for row in change["rows"]}
        assert measures >= set(details["reference"]) - {"shares"}


def test_related_incidents_are_linked_when_the_incident_names_them(sqlite_url: str) -> None:
    """`parent_id` / `related_ids` (root-cause grouping) and `previous_id` become links;
    an incident without them shows none."""
    db = Database(sqlite_url)
    db.upgrade()
    with serving(api_settings(sqlite_url), db) as api:
        browser = Browser()
        try:
            browser.open(f"{api.url}/ui")
            browser.wait_for("typeof renderRelated === 'function'")
            read = (
                "[...document.querySelectorAll('#related a.related-link')]"
                ".map(a => [a.parentNode.textContent.split(' #')[0], +a.dataset.incidentLink])"
            )
            browser.evaluate("renderRelated({parent_id: 3, related_ids: [5, 6], previous_id: 2})")
            linked = browser.evaluate(read)
            browser.evaluate("renderRelated({previous_id: null})")
            empty = browser.evaluate("document.getElementById('related').textContent")
        finally:
            browser.close()
    db.dispose()
    assert linked == [
        ["caused by (root)", 3],
        ["related", 5],
        ["related", 6],
        ["follows the resolved", 2],
    ]
    assert empty == "none"
