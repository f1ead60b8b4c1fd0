"""`bulwark serve` as a user runs it: refuses to start without a token, serves with one."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import ROOT, run_cli


def test_serve_needs_a_token(sqlite_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "BULWARK_API_TOKEN"}
    result = subprocess.run(
        [sys.executable, "-m", "agent", "serve", "--db", sqlite_url],
        capture_output=True, text=True, env={**env, "PYTHONPATH": str(ROOT)}, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "no API token configured" in result.stderr and "Traceback" not in result.stderr


def test_serve_answers_and_logs_json(sqlite_url: str, tmp_path: Path) -> None:
    assert run_cli("demo", "--db", sqlite_url, "--events", "5000").returncode == 0
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = tmp_path / "bulwark.toml"
    config.write_text('[api]\njson_logs = true\n[api.tokens]\nread_only = ["reader-1"]\n')
    token = "serve-admin-secret"
    process = subprocess.Popen(
        [sys.executable, "-m", "agent", "serve", "--db", sqlite_url, "--port", str(port),
         "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "BULWARK_API_TOKEN": token},
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "serve did not come up"
            time.sleep(0.2)
        items = httpx.get(
            f"{base}/api/incidents", headers={"Authorization": "Bearer reader-1"}
        ).json()["items"]
        assert {i["model"] for i in items} >= {"fraud"}  # the demo's injected drift
        admin = {"Authorization": f"Bearer {token}"}
        changed = httpx.post(f"{base}/api/incidents/{items[0]['id']}/acknowledge", headers=admin)
        assert changed.json()["status"] == "acknowledged"
    finally:
        process.send_signal(signal.SIGINT)
        _out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any("Uvicorn running" in entry["message"] for entry in lines)
    assert all({"ts", "level", "logger", "message"} <= entry.keys() for entry in lines)
    assert token not in err and "reader-1" not in err
