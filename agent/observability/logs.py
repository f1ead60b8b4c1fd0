"""Structured logs: one JSON object per line when `api.json_logs` is on, for log shippers."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(json_logs: bool, level: int = logging.INFO) -> None:
    """Sets the root logger's level and, with `json_logs`, its format, for a long-running
    command (serve, run); uvicorn's loggers propagate to it."""
    root = logging.getLogger()
    root.setLevel(min(root.level, level) if root.handlers else level)
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    if json_logs:
        for handler in root.handlers:
            handler.setFormatter(JsonFormatter())
