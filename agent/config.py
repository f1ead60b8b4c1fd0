"""Configuration: one validated model, loaded from a TOML file and the environment.

Precedence: defaults < config file < environment variables (the contract's `BULWARK_*`) <
command-line options. An invalid value fails at start with a message naming the key.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, ValidationError

from detectors.registry import DetectorSettings


class ConfigError(ValueError):
    """Bad configuration; the message names the key."""


class ModelSettings(BaseModel):
    """Per-model overrides: `[models.fraud.detectors.numeric_drift] min_effect_size = 0.3`."""

    model_config = ConfigDict(extra="forbid")

    detectors: dict[str, Any] = Field(default_factory=dict)


class ReferenceSettings(BaseModel):
    """`[reference]`: how reference data is learned and kept (see docs/reference-data.md)."""

    model_config = ConfigDict(extra="forbid")

    # Rows kept from a reference file (a seeded uniform sample of larger files).
    max_rows: int = Field(5000, ge=200, le=100_000)
    # Most recent predictions kept per model and partition for reports.
    recent_events: int = Field(5000, ge=100, le=100_000)


class ReportSettings(BaseModel):
    """`[reports]`: the scheduled Evidently reports (reference vs the recent window)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    interval_minutes: float = Field(60.0, gt=0)
    dir: Path | None = None  # None: `reports/` next to the SQLite file, else in the data dir


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any) -> Any:
    """Seconds as a number, or a string like "90s", "30m", "6h", "7d"; other input is left for
    pydantic to reject with the key's name."""
    if isinstance(value, str) and (match := _DURATION.match(value)):
        return float(match[1]) * _UNIT_SECONDS[match[2]]
    return value


def _comma_list(value: Any) -> Any:
    """Environment variables carry lists as comma-separated strings."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


# A duration in seconds; 0 disables what it configures.
Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]
Tokens = Annotated[list[SecretStr], BeforeValidator(_comma_list)]


class ApiTokens(BaseModel):
    """Bearer tokens of the HTTP API. Admin tokens may change incidents; read-only ones may
    only read. SecretStr keeps them out of reprs and logs."""

    model_config = ConfigDict(extra="forbid")

    admin: Tokens = Field(default_factory=list)
    read_only: Tokens = Field(default_factory=list)


class RetentionSettings(BaseModel):
    """How long to keep what piles up; 0 keeps forever. Open incidents are never pruned."""

    model_config = ConfigDict(extra="forbid")

    evidence: Duration = 90 * 86400.0  # evidence of resolved incidents
    dead_letters: Duration = 30 * 86400.0
    reports: Duration = 90 * 86400.0
    interval: Duration = Field(3600.0, gt=0)  # how often the retention job runs


class ApiSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    tokens: ApiTokens = Field(default_factory=ApiTokens)
    # Resolve an incident once its model has seen this much event time without new evidence.
    auto_resolve_after: Duration = 86400.0
    auto_resolve_interval: Duration = Field(60.0, gt=0)  # how often that check runs
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    json_logs: bool = False  # one JSON object per log line, for log shippers
    max_page: int = Field(500, ge=1, le=10_000)  # largest `limit` a list request may ask for


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    database_url: str | None = None  # None: the SQLite file in the user's data directory
    batch_size: int = Field(2000, ge=1, le=100_000)
    max_record_bytes: int = Field(1_000_000, ge=1024)
    detectors: DetectorSettings = Field(default_factory=DetectorSettings)
    models: dict[str, ModelSettings] = Field(default_factory=dict)
    reference: ReferenceSettings = Field(default_factory=ReferenceSettings)
    reports: ReportSettings = Field(default_factory=ReportSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)

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
    "BULWARK_API_TOKEN": "api.tokens.admin",
}


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
        if value:
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
