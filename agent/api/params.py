"""Checks on what a request carries: bounded text without NUL, event times, ids, and the
opaque page cursors this API hands out."""

import base64
import binascii
import json
import math
from typing import Any

from litestar.exceptions import NotFoundException, ValidationException

from streams.decode import InvalidEvent, parse_ts

MAX_ID = 2**31 - 1  # larger ids cannot exist (and overflow the database's integer)
MAX_TEXT = 500  # longest filter value worth looking up


def text(name: str, value: str | None, limit: int = MAX_TEXT) -> str | None:
    """A query or body string: bounded, and without NUL (PostgreSQL text cannot hold it)."""
    if value is None:
        return None
    if "\x00" in value:
        raise ValidationException(detail=f"{name} must not contain NUL characters")
    if len(value) > limit:
        raise ValidationException(detail=f"{name} is longer than {limit} characters")
    return value


def event_time(name: str, value: str | None) -> float | None:
    """Epoch seconds or ISO-8601 with a zone, like event `ts`."""
    if value is None or value == "":
        return None
    try:
        ts = float(value)
    except ValueError:
        try:
            ts = parse_ts(value)
        except InvalidEvent:
            raise ValidationException(
                detail=f"{name} must be epoch seconds or ISO-8601 with a zone, not {value!r:.60}"
            ) from None
    if not math.isfinite(ts):
        raise ValidationException(detail=f"{name} must be a finite number")
    return ts


def encode_cursor(*parts: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(parts).encode()).decode().rstrip("=")


def decode_cursor(value: str | None, shape: tuple[type, ...]) -> list[Any] | None:
    """The parts of a cursor `encode_cursor` made, checked against their types."""
    if value is None or value == "":
        return None
    try:
        padded = value + "=" * (-len(value) % 4)
        parts = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        ok = isinstance(parts, list) and len(parts) == len(shape)
        ok = ok and all(
            isinstance(p, t) and not isinstance(p, bool) for p, t in zip(parts, shape, strict=False)
        )
        if ok and all(math.isfinite(p) for p in parts):
            return parts
    except (ValueError, UnicodeError, binascii.Error, TypeError, OverflowError):
        pass
    raise ValidationException(detail="cursor is not one this API returned")


def valid_id(value: int) -> int:
    """An incident id that can exist; larger ones are not found without a query."""
    if not 1 <= value <= MAX_ID:
        raise NotFoundException(detail=f"no incident with id {value}")
    return value
