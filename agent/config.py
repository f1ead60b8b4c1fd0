"""Configuration: one validated model, loaded from a TOML file and the environment.

Precedence: defaults < config file < environment variables (the contract's `BULWARK_*`) <
command-line options. An invalid value fails at start with a message naming the key.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from detectors.registry import DetectorSettings
from streams.kafka import KafkaSettings


class ConfigError(ValueError):
    """Bad configuration; the message names the key."""


class ModelSettings(BaseModel):
    """Per-model overrides: `[models.fraud.detectors.numeric_drift] min_effect_size = 0.3`."""

    model_config = ConfigDict(extra="forbid")

    detectors: dict[str, dict[str, Any]] = Field(default_factory=dict)


class DaemonSettings(BaseModel):
    """`[daemon]`: how often `bulwark run` makes progress durable, and how fast it stops."""

    model_config = ConfigDict(extra="forbid")

    # Seconds between checkpoints (detector state + positions, then the Kafka commit). Shorter
    # means less re-processing after a crash, longer means fewer snapshot writes.
    checkpoint_interval: float = Field(5.0, gt=0, le=3600)
    shutdown_timeout: float = Field(10.0, gt=0, le=600)  # SIGTERM -> exit, at most
    retry_max_delay: float = Field(30.0, ge=1, le=600)  # cap of the broker-outage backoff


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    database_url: str | None = None  # None: the SQLite file in the user's data directory
    batch_size: int = Field(2000, ge=1, le=100_000)
    max_record_bytes: int = Field(1_000_000, ge=1024)
    detectors: DetectorSettings = Field(default_factory=DetectorSettings)
    models: dict[str, ModelSettings] = Field(default_factory=dict)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    daemon: DaemonSettings = Field(default_factory=DaemonSettings)

    def detectors_for(self, model: str) -> DetectorSettings:
        overrides = self.models.get(model)
        if overrides is None or not overrides.detectors:
            return self.detectors
        try:
            return self.detectors.merged(overrides.detectors)
        except ValidationError as exc:
            raise ConfigError(_describe(exc, prefix=f"models.{model}.detectors")) from None


# Environment variable -> dotted config key; lists are comma-separated.
ENVIRONMENT = {
    "BULWARK_DB_URL": "database_url",
    "BULWARK_KAFKA_BOOTSTRAP": "kafka.bootstrap_servers",
    "BULWARK_KAFKA_TOPICS": "kafka.topics",
    "BULWARK_KAFKA_GROUP": "kafka.group_id",
    "BULWARK_KAFKA_API_VERSION": "kafka.api_version",
}
# Variables whose empty value means something (probe the broker) rather than "unset".
EMPTY_IS_A_VALUE = {"BULWARK_KAFKA_API_VERSION"}


def load_settings(
    path: str | Path | None = None, environ: dict[str, str] | None = None
) -> Settings:
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    environ = os.environ if environ is None else environ
    for variable, key in ENVIRONMENT.items():
        value = environ.get(variable)
        if value or (value == "" and variable in EMPTY_IS_A_VALUE):
            _set_dotted(data, key, value)
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    for model in settings.models:
        settings.detectors_for(model)  # validate overrides now, not at the first event
    return settings


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for part in parents:
        data = data.setdefault(part, {})
    data[last] = value


def _describe(exc: ValidationError, prefix: str = "") -> str:
    error = exc.errors()[0]
    key = ".".join(str(p) for p in error["loc"])
    if prefix:
        key = f"{prefix}.{key}" if key else prefix
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"invalid config key '{key}': {error['msg']}{more}"
