"""Configuration: one validated model, loaded from a TOML file and the environment.

Precedence: defaults < config file < environment variables (the contract's `BULWARK_*`) <
command-line options. An invalid value fails at start with a message naming the key.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)

from detectors.settings import DetectorSettings
from streams.decode import Limits
from streams.kafka_settings import KafkaSettings
from streams.watermark import StreamClocks


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


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: object) -> float:
    """Seconds from a number or a string like `500ms`, `30s`, `5m`, `2h`, `7d`."""
    if isinstance(value, bool):
        raise ValueError("a duration must be seconds or a string like 30s, 5m, 2h")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"not a duration (seconds, or like 30s, 5m, 2h): {value!r}")
        seconds = float(match[1]) * _DURATION_SECONDS[match[2]]
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


# Seconds, from a number or a string like "30s", "6h"; 0 disables what it configures.
Duration = Annotated[float, BeforeValidator(parse_duration)]


def _comma_list(value: Any) -> Any:
    """Environment variables carry lists as comma-separated strings."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


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


PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"


class ChannelSettings(BaseModel):
    """One notification channel. Secrets are `SecretStr`: they never show in repr or errors,
    and only the channel's *name* is ever stored in the outbox."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["slack", "pagerduty", "webhook"]
    url: SecretStr | None = None  # Slack/webhook: required; PagerDuty: the Events API URL
    routing_key: SecretStr | None = None  # PagerDuty only
    secret: SecretStr | None = None  # webhook only: HMAC-SHA256 key for X-Bulwark-Signature

    @model_validator(mode="after")
    def _complete(self) -> ChannelSettings:
        if self.type == "pagerduty":
            if self.routing_key is None or not self.routing_key.get_secret_value():
                raise ValueError("a pagerduty channel needs routing_key")
            if self.secret is not None:
                raise ValueError("secret is for webhook channels only")
        else:
            if self.url is None or not self.url.get_secret_value():
                raise ValueError(f"a {self.type} channel needs url")
            if self.routing_key is not None:
                raise ValueError("routing_key is for pagerduty channels only")
            if self.type == "slack" and self.secret is not None:
                raise ValueError("secret is for webhook channels only")
        return self

    def endpoint(self) -> str:
        if self.url is not None and self.url.get_secret_value():
            return self.url.get_secret_value()
        return PAGERDUTY_EVENTS_URL


class RouteSettings(BaseModel):
    """Sends incidents matching every given list (empty: any) to `channels`."""

    model_config = ConfigDict(extra="forbid")

    models: list[str] = Field(default_factory=list)
    kinds: list[str] = Field(default_factory=list)
    severities: list[Literal["info", "warning", "critical"]] = Field(default_factory=list)
    channels: list[str] = Field(min_length=1)


class AlertSettings(BaseModel):
    """Notification channels, routing, grouping and delivery (see docs/alerts.md)."""

    model_config = ConfigDict(extra="forbid")

    channels: dict[str, ChannelSettings] = Field(default_factory=dict)
    # No routes: every channel gets every incident.
    routes: list[RouteSettings] = Field(default_factory=list)
    # Notifications of one model within group_wait go out as one message.
    group_wait: Duration = Field(30.0, le=3600)
    # An incident still open (not acknowledged) is notified again after this long.
    repeat_interval: Duration = Field(4 * 3600.0, ge=60)
    # Retries stop, and the notification is marked failed, this long after it was queued.
    give_up_after: Duration = Field(6 * 3600.0, gt=0)
    # Retry delays double from backoff_initial up to backoff_max, so a receiver that comes
    # back hears from us at most backoff_max later (a Retry-After answer overrides them).
    backoff_initial: Duration = Field(1.0, gt=0)
    backoff_max: Duration = Field(60.0, gt=0, le=3600)
    timeout: Duration = Field(10.0, gt=0)  # per HTTP request
    poll_interval: Duration = Field(1.0, gt=0)  # how often the dispatcher looks at the outbox
    # `replay --alerts` waits at most this long for its notifications to settle.
    replay_wait: Duration = Field(120.0, ge=0)
    # Link to an incident in messages; `{id}` is replaced, e.g. https://bulwark.example/incidents/{id}
    incident_url: str | None = None
    # Events per minute sent to one PagerDuty channel (PagerDuty allows about 120 per
    # routing key and answers 429 beyond): the rest wait their turn, in order.
    pagerduty_per_minute: int = Field(100, ge=1, le=1000)
    # Incidents listed one by one in a grouped Slack message; the rest are counted.
    max_listed: int = Field(10, ge=1, le=40)

    @model_validator(mode="after")
    def _consistent(self) -> AlertSettings:
        for i, route in enumerate(self.routes):
            for name in route.channels:
                if name not in self.channels:
                    raise ValueError(f"routes[{i}] names unknown channel {name!r}")
        if self.incident_url is not None and "{id}" not in self.incident_url:
            raise ValueError("incident_url must contain {id}")
        return self


class CauseSettings(BaseModel):
    """`[causes]`: when one incident is taken as the cause of another
    (agent/incidents/causes.py)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    # Event-time slack around a root's evidence span: detectors see one change at different
    # delays (blocks of 50 values, windows of 1,000 events, labels hours later).
    window: Duration = Field(3600.0, ge=0)
    # Share of an incident's recent events that must come from a flagged client for the
    # client to be its cause.
    min_client_share: float = Field(0.1, gt=0, le=1)
    # Or the share of its events with values the reference never had (a few keys sending
    # values nobody else sends move a feature with a small share of its events).
    min_unusual_share: float = Field(0.5, gt=0, le=1)
    # Once a client is flagged (an open `suspicious_client` incident), its later predictions
    # feed only the query-pattern detector: they no longer move the population's statistics.
    exclude_flagged_clients: bool = True


class DaemonSettings(BaseModel):
    """`[daemon]`: how often `bulwark run` makes progress durable, and how fast it stops."""

    model_config = ConfigDict(extra="forbid")

    # Seconds between checkpoints (detector state + positions, then the Kafka commit). Shorter
    # means less re-processing after a crash, longer means fewer snapshot writes: a checkpoint
    # writes every advanced partition's state (about 15 MB and 0.1 s per model and partition
    # with 200 active clients), which at 5 s cost the daemon about a tenth of its time.
    checkpoint_interval: float = Field(15.0, gt=0, le=3600)
    shutdown_timeout: float = Field(10.0, gt=0, le=600)  # SIGTERM -> exit, at most
    retry_max_delay: float = Field(30.0, ge=1, le=600)  # cap of the broker-outage backoff


class IngestSettings(BaseModel):
    """`[ingest]`: what a plausible record is; a record outside becomes a dead letter with
    the reason (docs/contract.md lists them)."""

    model_config = ConfigDict(extra="forbid")

    # Event times outside these are a producer's bug (epoch milliseconds, a zeroed clock).
    min_event_time: AwareDatetime = datetime(2000, 1, 1, tzinfo=UTC)
    max_event_time: AwareDatetime = datetime(2100, 1, 1, tzinfo=UTC)
    # A record this far ahead of its stream's latest event time is rejected, until
    # `jump_confirmations` records in a row agree that the stream jumped; 0 disables.
    max_future_skew: Duration = 86400.0
    jump_confirmations: int = Field(3, ge=1, le=1000)
    # The daemon: a record this far ahead of the wall clock is rejected; 0 disables.
    max_clock_skew: Duration = 3600.0
    # Largest |value| of a numeric feature, prediction, label or latency.
    max_magnitude: float = Field(1e15, gt=0)
    # `scores` of two classes or more are class probabilities summing to 1 (within the
    # tolerance); false for multi-label or top-k scores.
    scores_sum_to_one: bool = True
    scores_sum_tolerance: float = Field(0.02, ge=0, lt=1)

    @model_validator(mode="after")
    def _ordered(self) -> IngestSettings:
        if self.min_event_time >= self.max_event_time:
            raise ValueError("min_event_time must be before max_event_time")
        return self

    def limits(self) -> Limits:
        return Limits(
            min_ts=self.min_event_time.timestamp(),
            max_ts=self.max_event_time.timestamp(),
            max_magnitude=self.max_magnitude,
            scores_sum_to_one=self.scores_sum_to_one,
            scores_sum_tolerance=self.scores_sum_tolerance,
        )

    def clocks(self) -> StreamClocks:
        return StreamClocks(self.max_future_skew, self.max_clock_skew, self.jump_confirmations)


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    database_url: str | None = None  # None: the SQLite file in the user's data directory
    batch_size: int = Field(2000, ge=1, le=100_000)
    max_record_bytes: int = Field(1_000_000, ge=1024)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    detectors: DetectorSettings = Field(default_factory=DetectorSettings)
    models: dict[str, ModelSettings] = Field(default_factory=dict)
    reference: ReferenceSettings = Field(default_factory=ReferenceSettings)
    reports: ReportSettings = Field(default_factory=ReportSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    daemon: DaemonSettings = Field(default_factory=DaemonSettings)
    causes: CauseSettings = Field(default_factory=CauseSettings)

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
    "BULWARK_CLIENT_ID_KEY": "detectors.query_patterns.client_id_key",
    "BULWARK_KAFKA_BOOTSTRAP": "kafka.bootstrap_servers",
    "BULWARK_KAFKA_TOPICS": "kafka.topics",
    "BULWARK_KAFKA_GROUP": "kafka.group_id",
    "BULWARK_KAFKA_API_VERSION": "kafka.api_version",
}

# Environment variable -> (channel name, channel type, field): each defines (or overrides a
# field of) the channel of that name; with no routes configured it receives every incident.
CHANNEL_ENVIRONMENT = {
    "BULWARK_SLACK_WEBHOOK_URL": ("slack", "slack", "url"),
    "BULWARK_PAGERDUTY_ROUTING_KEY": ("pagerduty", "pagerduty", "routing_key"),
    "BULWARK_PAGERDUTY_URL": ("pagerduty", "pagerduty", "url"),
    "BULWARK_WEBHOOK_URL": ("webhook", "webhook", "url"),
    "BULWARK_WEBHOOK_SECRET": ("webhook", "webhook", "secret"),
}
# Variables whose empty value means something (probe the broker) rather than "unset".
EMPTY_IS_A_VALUE = {"BULWARK_KAFKA_API_VERSION"}


def load_settings(
    path: str | Path | None = None, environ: Mapping[str, str] | None = None
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
    env: Mapping[str, str] = os.environ if environ is None else environ
    for variable, key in ENVIRONMENT.items():
        value = env.get(variable)
        if value or (value == "" and variable in EMPTY_IS_A_VALUE):
            _set_dotted(data, key, value)
    _channels_from_environment(data, env)
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    for model in settings.models:
        settings.detectors_for(model)  # validate overrides now, not at the first event
    return settings


def _channels_from_environment(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    for variable, (name, kind, key) in CHANNEL_ENVIRONMENT.items():
        value = environ.get(variable)
        if not value:
            continue
        alerts = data.setdefault("alerts", {})
        if not isinstance(alerts, dict) or not isinstance(alerts.setdefault("channels", {}), dict):
            continue  # let validation report the malformed section
        channel = alerts["channels"].setdefault(name, {"type": kind})
        if isinstance(channel, dict):
            channel[key] = value
    # BULWARK_PAGERDUTY_URL alone defines no channel: it only points the key at an endpoint.
    channels = (
        data.get("alerts", {}).get("channels", {}) if isinstance(data.get("alerts"), dict) else {}
    )
    pd = channels.get("pagerduty") if isinstance(channels, dict) else None
    if isinstance(pd, dict) and set(pd) == {"type", "url"} and "BULWARK_PAGERDUTY_URL" in environ:
        del channels["pagerduty"]


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
