"""Key naming and the small value types of the control plane."""

from __future__ import annotations

import math
from dataclasses import dataclass

HISTORY_LIMIT = 1000


@dataclass(frozen=True)
class Keys:
    """Every key is ``{prefix}:part:part`` (``SD_REDIS_PREFIX``)."""

    prefix: str

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    @property
    def events_channel(self) -> str:
        """The pub/sub channel announcing every threshold / active-model change."""
        return self.key("events")


@dataclass(frozen=True)
class Threshold:
    """One threshold version: ``value`` (reconstruction-error units of ``model_version``)."""

    value: float
    version: int
    model_version: str
    head: float | None = None  # the supervised head's probability threshold (model/supervised.py)


@dataclass(frozen=True)
class Snapshot:
    """What a worker reads each refresh, in one round trip."""

    threshold: Threshold | None
    active_model: str | None
    challenger: str | None = None  # the model in shadow beside the active one (store/shadow.py)


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def parse_threshold(raw: dict[bytes, bytes]) -> Threshold | None:
    if not raw:
        return None
    head = raw.get(b"head")
    return Threshold(float(raw[b"value"]), int(raw[b"version"]), raw[b"model_version"].decode(),
                     float(head) if head else None)


def threshold_problem(value: float, head: float | None = None) -> str | None:
    """Why ``value`` (a reconstruction-error threshold: errors are means of squares, never
    negative) or ``head`` (a probability threshold) cannot be a threshold; None when both can.
    NaN would flag nothing and +inf nothing either, without a word: both are refused."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        return f"threshold must be a finite number >= 0 (reconstruction errors are never negative), got {value!r}"
    if head is not None and not (isinstance(head, (int, float)) and math.isfinite(head) and 0.0 <= head <= 1.0):
        return f"the head threshold must be a probability in [0, 1], got {head!r}"
    return None
