"""`[kafka]` settings: pydantic only, so the configuration loads without kafka-python."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

_VERSION = re.compile(r"^\d+(\.\d+){1,2}$")


def _comma_list(value: Any) -> Any:
    """Accepts `"a,b"` (environment variables) as well as a TOML list."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class KafkaSettings(BaseModel):
    """`[kafka]` in the config file; security options are passed to kafka-python unchanged."""

    model_config = ConfigDict(extra="forbid")

    bootstrap_servers: list[str] = Field(default_factory=lambda: ["localhost:9092"], min_length=1)
    topics: list[str] = Field(default_factory=list)
    group_id: str = Field("bulwark", min_length=1)
    client_id: str = "bulwark"
    api_version: str | None = None  # "0.9", "2.8.1"; None or "": probe the broker
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    dead_letter_topic: str | None = None
    poll_timeout_ms: int = Field(500, ge=10, le=10_000)
    session_timeout_ms: int = Field(30_000, ge=1000)
    heartbeat_interval_ms: int = Field(3000, ge=100)
    request_timeout_ms: int = Field(40_000, ge=1000)
    # Sizes. A message larger than max_partition_fetch_bytes cannot be fetched from a broker
    # before 0.10.1: the daemon turns it into a dead letter at its offset and goes on. Newer
    # brokers return it anyway, and `max_record_bytes` (top level) decides.
    max_partition_fetch_bytes: int = Field(1_048_576, ge=1024)
    fetch_max_bytes: int = Field(52_428_800, ge=1024)  # per fetch request (brokers >= 0.10.1)
    max_request_size: int = Field(1_048_576, ge=1024)  # the producer's largest message
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_password: str | None = None
    ssl_crlfile: str | None = None
    ssl_check_hostname: bool = True
    sasl_mechanism: (
        Literal["PLAIN", "GSSAPI", "OAUTHBEARER", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None
    ) = None
    sasl_plain_username: str | None = None
    sasl_plain_password: str | None = None
    sasl_kerberos_service_name: str = "kafka"
    sasl_kerberos_domain_name: str | None = None

    _split = field_validator("bootstrap_servers", "topics", mode="before")(_comma_list)

    @field_validator("api_version")
    @classmethod
    def _version(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        if not _VERSION.match(value.strip()):
            raise ValueError(f"must look like '0.9' or '2.8.1' (empty: probe), not {value!r}")
        return value.strip()

    @field_validator("topics")
    @classmethod
    def _topics(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("lists a topic twice")
        return value

    def version_tuple(self) -> tuple[int, ...] | None:
        return None if self.api_version is None else tuple(map(int, self.api_version.split(".")))

    @property
    def state_source(self) -> str:
        """The source part of the detector-state key, shared by all subscribed topics."""
        return f"kafka:{self.group_id}"

    def state_key(self, source: str, partition: int) -> tuple[str, int]:
        return (self.state_source, partition)

    def connection(self) -> dict[str, Any]:
        """Options common to consumer and producer: servers, version, security."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": self.client_id,
            "api_version": self.version_tuple(),
            "request_timeout_ms": self.request_timeout_ms,
            "security_protocol": self.security_protocol,
            "ssl_check_hostname": self.ssl_check_hostname,
            "sasl_kerberos_service_name": self.sasl_kerberos_service_name,
        }
        for name in (
            "ssl_cafile",
            "ssl_certfile",
            "ssl_keyfile",
            "ssl_password",
            "ssl_crlfile",
            "sasl_mechanism",
            "sasl_plain_username",
            "sasl_plain_password",
            "sasl_kerberos_domain_name",
        ):
            value = getattr(self, name)
            if value is not None:
                options[name] = value
        return options
