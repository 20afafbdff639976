"""The worker's side of the control plane as protocols: what ``Worker`` needs, whatever holds it.

``WorkerView`` (Redis) implements them for production; ``store.memory.MemoryControl`` holds the
same in process for unit tests of the worker's logic (swap, hold, decide) without Redis.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..entity.labels import LabelStore
from ..entity.replay_log import FeatureLog
from ..entity.state import StateStore
from ..model.bundle import Bundle
from ..transport.base import EndOffsets
from .base import Snapshot


class TelemetrySink(Protocol):
    """Best-effort telemetry writes and the change-notice subscription."""

    def add_score_summary(self, fields: dict[str, str], maxlen: int) -> None: ...
    def add_feed_entry(self, fields: dict[str, str], maxlen: int) -> None: ...
    def add_shadow_counts(self, version: str, counts: dict[str, int]) -> None: ...
    def subscribe(self) -> Any: ...  # ``get_message(timeout=...)`` → message or None; ``close()``


class ControlView(Protocol):
    """Read-only for thresholds and models; raises as ``WorkerView`` documents."""

    @property
    def telemetry(self) -> TelemetrySink: ...
    def snapshot(self) -> Snapshot: ...
    def fetch_bundle(self, version: str) -> Bundle: ...
    def active_bundle(self) -> Bundle: ...
    def entity_state(self, copies: int = 0) -> StateStore: ...
    def label_store(self) -> LabelStore: ...
    def replay_log(self, topic: str, store: StateStore) -> FeatureLog: ...
    def watermarks(self, group: str, topic: str, grace_ms: int, stale_ms: int, partitions: int) -> Watermarks: ...


class Watermarks(Protocol):
    """The consumer group's shared event-time watermarks (``store/watermarks.py``; the worker's
    ``pipeline.align.Peers``)."""

    partitions: int  # the topic's partition count (0: unknown)

    def publish(self, heads: dict[int, tuple[float, bool]], ends: dict[int, int] | None = None) -> None: ...
    def bound(self, own: set[int], ends: EndOffsets | None = None) -> float: ...
