"""Data-only checkpoints for the reference-based detectors written after the codec existed.

Such a detector says what it built as plain data (`built_state`) and rebuilds it from that
(`load_built`); this mixin wraps them in a `state_codec` envelope with the detector's name and
configuration, so nothing is ever unpickled and a changed configuration starts afresh. It is
the same envelope and the same two hooks as the data-only `Detector.snapshot`/`restore` being
written for every detector; once that is in, this mixin is redundant and can go.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

from pydantic import BaseModel, ValidationError

from detectors import state_codec
from detectors.reference import ReferenceDetector
from detectors.state_codec import StateError

STATE_VERSION = 1


class DataCheckpoint(ReferenceDetector):
    """A reference-based detector whose checkpoint is plain data (see the module docstring).

    The reference still being learned is not kept: in the pipeline the reference is handed to
    detectors through `set_reference` (they are fed nothing before), so a detector checkpointed
    before it has one is simply given it again."""

    @abstractmethod
    def built_state(self) -> dict[str, Any]:
        """What `build` made and `monitor` updated since, as plain data."""

    @abstractmethod
    def load_built(self, state: dict[str, Any]) -> None:
        """Rebuilds the monitors `built_state` described."""

    def snapshot(self) -> bytes:
        return state_codec.encode(
            {
                "detector": self.name,
                "version": STATE_VERSION,
                "configuration": {n: _plain(getattr(self, n)) for n in self.configuration},
                "state": {"ready": self.ready, "built": self.built_state() if self.ready else None},
            }
        )

    def restore(self, data: bytes) -> bool:
        envelope = state_codec.decode(data)
        if not isinstance(envelope, dict) or envelope.get("detector") != self.name:
            raise StateError(f"not a checkpoint of the {self.name} detector")
        if envelope.get("version") != STATE_VERSION:
            return False
        checkpointed = envelope.get("configuration") or {}
        if not all(_same(checkpointed.get(n), getattr(self, n)) for n in self.configuration):
            return False
        state = envelope["state"]
        self.pending, self.pending_count = [], 0
        self.ready = bool(state["ready"])
        if self.ready:
            self.load_built(state["built"])
        return True


def _plain(value: object) -> object:
    return value.model_dump() if isinstance(value, BaseModel) else value


def _same(checkpointed: object, configured: object) -> bool:
    """Whether a checkpointed setting is the configured one (settings validated again first,
    so a field added since gets its default)."""
    if isinstance(configured, BaseModel):
        if not isinstance(checkpointed, dict):
            return False
        try:
            revalidated = type(configured).model_validate(checkpointed)
        except ValidationError:
            return False
        return revalidated.model_dump() == configured.model_dump()
    return checkpointed == configured
