"""The alerting contract as a user meets it: `replay` pages nobody unless `--alerts`, which
waits for delivery; the outbox survives SIGKILL; silences, tests and status changes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.cli import main
from agent.demo import demo_scenario
from storage.db import Database
from tests.alerts_helpers import outbox
from tests.conftest import ROOT, run_cli
from tests.receivers import Receiver, Reply

ROUTING_KEY = "cli-routing-key-0123456789abcdef"


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Ran]:
    """Runs `bulwark ARGS` in this process (main() with its error handling): the commands
    that need no separate process, without paying the CLI's start-up time each time."""

    def run(*args: str, env: dict[str, str] | None = None) -> Ran:
        capsys.readouterr()
        with monkeypatch.context() as m:
            m.setattr(sys, "argv", ["bulwark", *args])
            for name, value in (env or {}).items():
                m.setenv(name, value)
            try:
                main()
                code = 0
            except SystemExit as exc:
                code = int(exc.code or 0)
        captured = capsys.readouterr()
        return Ran(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="module")
def events_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("events") / "events.jsonl"
    path.write_bytes(b"\n".join(demo_scenario(events_per_model=5000).lines) + b"\n")
    return path


@pytest.fixture
def receivers() -> Iterator[tuple[Receiver, Receiver]]:
    slack, pd = Receiver("slack"), Receiver("pagerduty", routing_key=ROUTING_KEY)
    yield slack, pd
    slack.close()
    pd.close()


def env_for(slack: Receiver, pd: Receiver) -> dict[str, str]:
    return {
        "BULWARK_SLACK_WEBHOOK_URL": slack.url,
        "BULWARK_PAGERDUTY_ROUTING_KEY": ROUTING_KEY,
        "BULWARK_PAGERDUTY_URL": pd.url,
    }


def config(tmp_path: Path, **alerts: str) -> str:
    path = tmp_path / "bulwark.toml"
    lines = ["[alerts]", *(f'{k} = "{v}"' for k, v in alerts.items())]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_replay_pages_nobody_without_alerts(
    sqlite_url: str, events_file: Path, receivers: tuple[Receiver, Receiver], tmp_path: Path
) -> None:
    slack, pd = receivers
    cfg = config(tmp_path, group_wait="0s", poll_interval="0.05s")
    result = run_cli(
        "replay", str(events_file), "--db", sqlite_url, "--config", cfg, env=env_for(slack, pd)
    )
    assert result.returncode == 0, result.stderr
    assert "incidents opened" in result.stdout
    assert slack.requests == pd.requests == 0
    assert outbox(Database(sqlite_url)) == []  # nothing for a later daemon to send either


def test_replay_with_alerts_waits_until_delivered(
    sqlite_url: str, events_file: Path, receivers: tuple[Receiver, Receiver], tmp_path: Path
) -> None:
    slack, pd = receivers
    cfg = config(tmp_path, group_wait="1s", poll_interval="0.05s", backoff_initial="0.2s")
    pd.scripted.append(Reply(500, "temporary"))  # one retry on the way
    result = run_cli(
        "replay",
        str(events_file),
        "--alerts",
        "--db",
        sqlite_url,
        "--config",
        cfg,
        env=env_for(slack, pd),
    )
    assert result.returncode == 0, result.stderr
    rows = outbox(Database(sqlite_url))
    incidents = {r.incident_id for r in rows}
    assert rows and {r.state for r in rows} == {"delivered"}
    assert f"{len(rows)} delivered, 0 failed" in result.stdout
    assert len(pd.accepted) == len(incidents)
    assert len({r.body["dedup_key"] for r in pd.accepted}) == len(incidents)
    models = {r.group_key for r in rows}
    assert len(slack.accepted) == len(models)  # grouped: one message per model
    assert slack.invalid == [] and pd.invalid == []


def test_sigkill_between_commit_and_delivery_delivers_after_restart(
    sqlite_url: str, events_file: Path, receivers: tuple[Receiver, Receiver], tmp_path: Path
) -> None:
    slack, pd = receivers
    cfg = config(tmp_path, group_wait="8s", poll_interval="0.05s")
    env = {**os.environ, "PYTHONPATH": str(ROOT), **env_for(slack, pd)}
    args = ["replay", str(events_file), "--alerts", "--db", sqlite_url, "--config", cfg]
    process = subprocess.Popen(
        [sys.executable, "-m", "agent", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    database = Database(sqlite_url)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            if _count_rows(database):
                break
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
    committed = outbox(database)
    assert committed and {r.state for r in committed} == {"pending"}
    assert slack.requests == pd.requests == 0  # killed before anything went out

    result = run_cli("alerts", "flush", "--db", sqlite_url, "--config", cfg, env=env_for(slack, pd))
    assert result.returncode == 0, result.stderr
    rows = outbox(database)
    assert {r.state for r in rows} == {"delivered"}
    keys = [r.body["dedup_key"] for r in pd.accepted]
    assert len(keys) == len({r.incident_id for r in rows if r.channel == "pagerduty"})
    assert len(keys) == len(set(keys))


def _count_rows(database: Database) -> int:
    try:
        return len(outbox(database))
    except Exception:  # the schema may not exist yet while the subprocess migrates
        return 0


def test_silence_commands(sqlite_url: str, cli: Callable[..., Ran]) -> None:
    added = cli(
        "silence", "add", "--model", "fraud", "--kind", "feature_drift", "--for", "2h",
        "--reason", "retraining", "--db", sqlite_url,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    listed = cli("silence", "list", "--format", "json", "--db", sqlite_url)
    (silence,) = json.loads(listed.stdout)
    assert silence["model"] == "fraud" and silence["kind"] == "feature_drift"
    assert silence["ends_at"] - silence["starts_at"] == pytest.approx(7200)
    expired = cli("silence", "expire", str(silence["id"]), "--db", sqlite_url)
    assert expired.returncode == 0, expired.stderr
    assert json.loads(cli("silence", "list", "--format", "json", "--db", sqlite_url).stdout) == []
    every = cli("silence", "list", "--all", "--format", "json", "--db", sqlite_url)
    assert len(json.loads(every.stdout)) == 1
    table = cli("silence", "list", "--all", "--db", sqlite_url)
    assert table.returncode == 0 and "retraining" in table.stdout
    bad = cli(
        "silence", "add", "--for", "soon", "--model", "m", "--reason", "x", "--db", sqlite_url
    )
    assert bad.returncode == 2 and "--for" in bad.stderr and "Traceback" not in bad.stderr
    unmatched = cli("silence", "add", "--for", "1h", "--reason", "x", "--db", sqlite_url)
    assert unmatched.returncode == 2 and "at least one of" in unmatched.stderr


def test_alerts_test_and_list(
    sqlite_url: str, receivers: tuple[Receiver, Receiver], cli: Callable[..., Ran]
) -> None:
    slack, pd = receivers
    env = env_for(slack, pd)
    ok = cli("alerts", "test", "slack", "--db", sqlite_url, env=env)
    assert ok.returncode == 0, ok.stderr
    assert "delivered" in ok.stdout and len(slack.accepted) == 1
    ok = cli("alerts", "test", "pagerduty", "--db", sqlite_url, env=env)
    assert ok.returncode == 0, ok.stderr
    test_events = [(r.body["event_action"], r.body["dedup_key"]) for r in pd.accepted]
    assert [a for a, _ in test_events] == ["trigger", "resolve"]  # leaves no alert open
    assert test_events[0][1] == test_events[1][1] and pd.invalid == []
    slack.scripted.append(Reply(410, "channel_is_archived"))
    gone = cli("alerts", "test", "slack", "--db", sqlite_url, env=env)
    assert gone.returncode == 2 and "channel_is_archived" in gone.stderr
    unknown = cli("alerts", "test", "teams", "--db", sqlite_url, env=env)
    assert unknown.returncode == 2 and "unknown channel 'teams'" in unknown.stderr
    listed = cli("alerts", "list", "--format", "json", "--db", sqlite_url)
    rows = json.loads(listed.stdout)
    assert [(r["channel"], r["action"], r["state"]) for r in rows] == [
        ("slack", "trigger", "failed"),
        ("pagerduty", "resolve", "delivered"),
        ("pagerduty", "trigger", "delivered"),
        ("slack", "trigger", "delivered"),
    ]
    assert rows[0]["last_error"] == "HTTP 410: channel_is_archived"
    table = cli("alerts", "list", "--db", sqlite_url)
    assert table.returncode == 0 and "notifications (4)" in table.stdout
    for text in (gone.stderr, listed.stdout, table.stdout):
        assert "XXXXSECRETXXXX" not in text and ROUTING_KEY not in text


def test_resolving_from_the_cli_notifies(
    sqlite_url: str,
    events_file: Path,
    receivers: tuple[Receiver, Receiver],
    tmp_path: Path,
    cli: Callable[..., Ran],
) -> None:
    slack, pd = receivers
    env = env_for(slack, pd)
    cfg = config(tmp_path, group_wait="0s", poll_interval="0.05s")
    replayed = cli(
        "replay", str(events_file), "--alerts", "--db", sqlite_url, "--config", cfg, env=env
    )
    assert replayed.returncode == 0, replayed.stderr
    incident_id = next(r.incident_id for r in outbox(Database(sqlite_url)))
    resolved = cli(
        "incidents", "resolve", str(incident_id), "--format", "json", "--db", sqlite_url, env=env
    )
    assert resolved.returncode == 0, resolved.stderr
    assert json.loads(resolved.stdout)["status"] == "resolved"
    flushed = cli("alerts", "flush", "--db", sqlite_url, "--config", cfg, env=env)
    assert flushed.returncode == 0, flushed.stderr
    events = [(r.body["event_action"], r.body["dedup_key"]) for r in pd.accepted]
    resolves = [k for a, k in events if a == "resolve"]
    assert len(resolves) == 1
    assert [k for a, k in events if a == "trigger"].count(resolves[0]) == 1
    missing = cli("incidents", "resolve", "999999", "--db", sqlite_url)
    assert missing.returncode == 2 and "no incident" in missing.stderr
