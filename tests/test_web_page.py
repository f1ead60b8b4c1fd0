"""The web page in headless Chromium: it shows the incidents and one incident's evidence."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from detectors.base import Kind, Severity
from storage.db import Database
from tests.api_helpers import READER, T0, api_settings, finding, record, serving

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
