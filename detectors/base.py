"""The detector interface: a columnar batch in, findings out, state that can be saved.

A detector owns its statistics and calibration and nothing else: no I/O, no alerts, no
database, no wall clock. Time is the events' time. The incident manager turns findings into
incidents; detectors never deduplicate across batches beyond their own state.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import BaseModel, SecretBytes, SecretStr, ValidationError

from detectors import state_codec
from detectors.baseline import Baseline
from detectors.state_codec import StateError
from streams.batch import ModelBatch
from streams.events import Position


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}


class Kind(StrEnum):
    FEATURE_DRIFT = "feature_drift"
    PREDICTION_DRIFT = "prediction_drift"
    MULTIVARIATE_DRIFT = "multivariate_drift"
    ACCURACY_DROP = "accuracy_drop"
    INPUT_ANOMALY = "input_anomaly"
    SUSPICIOUS_CLIENT = "suspicious_client"
    DATA_QUALITY = "data_quality"
    STREAM_STALLED = "stream_stalled"


@dataclass(frozen=True, slots=True)
class Finding:
    """One piece of evidence: what fired, how strongly, on how much data, and when.

    `ts` is the event time of the event at which the detection happened, and `position` that
    event's source position (the key that makes storing the finding idempotent).
    """

    model: str
    kind: Kind
    subject: str
    severity: Severity
    ts: float
    position: Position
    detector: str
    statistic: str
    value: float
    threshold: float
    effect_size: float | None
    support: int
    title: str
    details: dict[str, Any] = field(default_factory=dict)
    # The condition is over (a stalled stream's events returned): the finding is recorded on
    # the unresolved incident of its key, which it then resolves.
    resolves: bool = False


def event_at(batch: ModelBatch, index: int) -> tuple[float, Position]:
    """The event time and source position of a batch's `index`-th event: where a finding is."""
    return float(batch.ts[index]), batch.position(index)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a test's alarm means, before it is placed at an event: a finding in waiting.

    Monitors shared by several detectors (numeric, categorical) return verdicts; the detector
    using them supplies the kind, subject and event."""

    statistic: str
    value: float
    threshold: float
    effect_size: float
    severity: Severity
    support: int
    title: str
    details: dict[str, Any]

    def finding(
        self, detector: str, kind: Kind, subject: str, batch: ModelBatch, index: int
    ) -> Finding:
        ts, position = event_at(batch, index)
        return Finding(
            model=batch.model,
            kind=kind,
            subject=subject,
            severity=self.severity,
            ts=ts,
            position=position,
            detector=detector,
            statistic=self.statistic,
            value=self.value,
            threshold=self.threshold,
            effect_size=self.effect_size,
            support=self.support,
            title=self.title,
            details=self.details,
        )


@dataclass(frozen=True, slots=True)
class MetricPoint:
    """One performance value of one model version over one event-time window.

    Not evidence of a problem, so not a Finding: the pipeline drains these with
    `Detector.metrics` and stores them as the model's performance history. A window's point is
    emitted again, with the new value, whenever late labels change it; storage keeps the latest.
    """

    model: str
    model_version: str  # "" when the events carry none
    source: str
    partition: int
    window_start: float  # event time, epoch seconds
    window_end: float
    metric: str
    value: float
    ci_low: float | None
    ci_high: float | None
    n: int  # events supporting the value (labelled events, or predictions if estimated)
    estimated: bool

    @property
    def row(self) -> tuple[object, ...]:
        """What identifies its stored row: a later point with the same row replaces it."""
        return (
            self.model,
            self.model_version,
            self.source,
            self.partition,
            self.window_start,
            self.metric,
            self.estimated,
        )


class Detector(ABC):
    """Per-model, per-partition state; `update` is called with each batch, in arrival order."""

    name: ClassVar[str]
    model: str
    # What it judges against, and so whether the pipeline hands it the model's reference
    # (`detectors.baseline`): declared, never inferred.
    baseline: ClassVar[Baseline] = Baseline.NONE
    # The attributes holding what the detector was configured with. Its statistics,
    # thresholds and array shapes follow from them, so a checkpointed state built with
    # other values is not resumed (see `restore`).
    configuration: ClassVar[tuple[str, ...]] = ("settings",)

    @abstractmethod
    def update(self, batch: ModelBatch) -> list[Finding]: ...

    def set_reference(  # noqa: B027 - optional hook
        self, reference: ModelBatch, learned: bool = False
    ) -> None:
        """Use this reference instead of learning one from the first events, replacing all
        that was built on an earlier one. A `Baseline.REFERENCE` detector implements it; the
        others judge against no reference and ignore it. `learned`: the pipeline learned it
        from the stream's first events, so it is the same traffic the detector judges, not
        a view apart from it (a stored one); only a detector that anchors on such a view
        needs to know."""

    def metrics(self) -> list[MetricPoint]:
        """Performance points computed since the last call (most detectors have none)."""
        return []

    # The layout of `state()`: bump it when what `state()` returns changes meaning, so a
    # checkpoint written by an older layout is not misread (the detector starts afresh).
    state_version: ClassVar[int] = 1

    @abstractmethod
    def state(self) -> dict[str, Any]:
        """Everything the detector learned and counted, as plain data (`state_codec`): no
        objects, only what `load_state` needs to rebuild them. Caches are left out."""

    @abstractmethod
    def load_state(self, state: dict[str, Any]) -> None:
        """Rebuilds what `state()` described, on a detector constructed with the same
        configuration (`restore` checks that first)."""

    def snapshot(self) -> bytes:
        """The detector's whole state as data-only bytes (`state_codec`), never a pickle:
        its name, state layout version, configuration (as plain data) and `state()`."""
        return state_codec.encode(
            {
                "detector": self.name,
                "version": self.state_version,
                "configuration": {name: _plain(getattr(self, name)) for name in self.configuration},
                "state": self.state(),
            }
        )

    def restore(self, data: bytes) -> bool:
        """Resumes a checkpointed state if it was built with this detector's configuration
        and returns True. Otherwise (the config changed since, or the state's layout) the
        detector starts afresh as constructed, keeping only what `keep_on_reconfigure`
        carries over, and returns False: new settings take effect at a restart.

        Raises `StateError` on bytes that are not this detector's data-only checkpoint (an
        old pickle is refused unread), or whose state does not fit its schema; the detector
        is then in no defined state and must be built afresh."""
        envelope = state_codec.decode(data)
        if not isinstance(envelope, dict) or envelope.get("detector") != self.name:
            raise StateError(f"not a checkpoint of the {self.name} detector")
        if envelope.get("version") != self.state_version:
            return False  # a layout this code does not read: nothing is carried over
        try:
            checkpointed, state = envelope["configuration"], envelope["state"]
            if all(_same(checkpointed.get(n), getattr(self, n)) for n in self.configuration):
                self.load_state(state)
                return True
            self.keep_on_reconfigure(state)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            # Encoded, but not in this detector's schema (forged, or a layout bug): the
            # detector may be half-restored, so the caller must build it afresh.
            raise StateError(f"{self.name} state does not fit its schema: {exc!r}") from exc
        return False

    def keep_on_reconfigure(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """What a detector keeps of a state built with another configuration (nothing)."""


def _plain(value: object, secret: Callable[[Any], str | None] | None = None) -> object:
    """A configured value as plain data: a settings model as its field values, each secret
    as a digest of it (`secret` says how), so no checkpoint holds a key."""
    if not isinstance(value, BaseModel):
        return value
    return _without_secrets(value.model_dump(), secret or _digest)


def _without_secrets(data: object, secret: Callable[[Any], str | None]) -> object:
    if isinstance(data, dict):
        return {key: _without_secrets(item, secret) for key, item in data.items()}
    if isinstance(data, list | tuple):
        return [_without_secrets(item, secret) for item in data]
    if isinstance(data, SecretStr | SecretBytes):
        return secret(data)
    return data


def _digest(secret: SecretStr | SecretBytes) -> str:
    raw = secret.get_secret_value()
    return "sha256:" + hashlib.sha256(raw if isinstance(raw, bytes) else raw.encode()).hexdigest()


def _stored(secret: SecretStr | SecretBytes) -> str | None:
    """A secret field of settings validated from a checkpoint holds the digest itself."""
    raw = secret.get_secret_value()
    return raw.decode() if isinstance(raw, bytes) else raw


def _same(checkpointed: object, configured: object) -> bool:
    """Whether a checkpointed setting is the configured one. Settings are validated again
    by today's model first: a checkpoint written before a field existed lacks it, and gets
    its default; one that no longer validates is another configuration."""
    if isinstance(configured, BaseModel):
        if not isinstance(checkpointed, dict):
            return False
        try:
            revalidated = type(configured).model_validate(checkpointed)
        except ValidationError:
            return False
        # Values, nothing else; secrets compared by their digests.
        return _plain(revalidated, _stored) == _plain(configured)
    return checkpointed == configured
