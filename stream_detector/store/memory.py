"""An in-process control plane (``ControlView``) for unit tests of the worker's logic.

Thresholds and the active model change only through ``publish``/``set_threshold``, like the
Redis one: a threshold always names its model version, versions only grow. Telemetry is kept in
lists; change notices are queued for ``subscribe().get_message``.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

from ..entity.labels import InMemoryLabels
from ..entity.replay_log import InMemoryFeatureLog
from ..entity.state import InMemoryState, StateStore
from ..errors import ConfigError, NoActiveModel
from ..model.bundle import Bundle
from .base import Snapshot, Threshold, threshold_problem
from .watermarks import MemoryWatermarks


class _Subscription:
    def __init__(self, notices: queue.Queue[dict[str, Any]]) -> None:
        self._notices = notices

    def get_message(self, timeout: float = 0.0) -> dict[str, Any] | None:
        try:
            return self._notices.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        return None


class MemoryTelemetry:
    def __init__(self) -> None:
        self.summaries: list[dict[str, str]] = []
        self.feed: list[dict[str, str]] = []
        self.shadow: dict[str, dict[str, int]] = {}
        self.notices: queue.Queue[dict[str, Any]] = queue.Queue()

    def add_score_summary(self, fields: dict[str, str], maxlen: int) -> None:
        self.summaries.append(fields)

    def add_feed_entry(self, fields: dict[str, str], maxlen: int) -> None:
        self.feed.append(fields)

    def add_shadow_counts(self, version: str, counts: dict[str, int]) -> None:
        total = self.shadow.setdefault(version, {})
        for name, n in counts.items():
            total[name] = total.get(name, 0) + n

    def subscribe(self) -> _Subscription:
        return _Subscription(self.notices)


class MemoryControl:
    """Thresholds, bundles and entity state of one test, in memory (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bundles: dict[str, Bundle] = {}
        self._active: str | None = None
        self._threshold: Threshold | None = None
        self.challenger: str | None = None  # a test sets it: the model in shadow
        self._state = InMemoryState()
        self._replay_logs: dict[str, InMemoryFeatureLog] = {}
        self._labels = InMemoryLabels(())
        self._watermarks: dict[tuple[str, str], MemoryWatermarks] = {}
        self.telemetry = MemoryTelemetry()
        self.unreachable = False  # a test sets it: reads raise OSError, as a Redis outage does

    def snapshot(self) -> Snapshot:
        if self.unreachable:
            raise OSError("control plane unreachable")
        with self._lock:
            return Snapshot(self._threshold, self._active, self.challenger)

    def fetch_bundle(self, version: str) -> Bundle:
        with self._lock:
            if version not in self._bundles:
                raise NoActiveModel(f"model {version} is not in the registry")
            return self._bundles[version]

    def active_bundle(self) -> Bundle:
        active = self.snapshot().active_model
        if active is None:
            raise NoActiveModel("no active model")
        return self.fetch_bundle(active)

    def entity_state(self, copies: int = 0) -> StateStore:  # in memory already: nothing to copy
        return self._state

    def replay_log(self, topic: str, store: StateStore) -> InMemoryFeatureLog:
        """One replay log per topic, shared by every worker of this control plane (as its state)."""
        with self._lock:
            return self._replay_logs.setdefault(topic, InMemoryFeatureLog())

    def label_store(self) -> InMemoryLabels:
        """No feedback in memory: label features are 0 (the memory transport's tests)."""
        return self._labels

    def watermarks(self, group: str, topic: str, grace_ms: int, stale_ms: int, partitions: int) -> MemoryWatermarks:
        """One shared ``MemoryWatermarks`` per (group, topic): every worker of this control plane sees it."""
        with self._lock:
            return self._watermarks.setdefault((group, topic), MemoryWatermarks(grace_ms, stale_ms, partitions))

    def publish(self, bundle: Bundle, threshold: float | None = None) -> int:
        """Store ``bundle`` and flip the active model and its threshold together; a notice follows."""
        with self._lock:
            self._bundles[bundle.version] = bundle
        return self.set_threshold(bundle.threshold if threshold is None else threshold, bundle.version,
                                  activate=True, head=bundle.head_threshold)

    def shadow(self, bundle: Bundle | None) -> None:
        """Store ``bundle`` and make it the challenger in shadow (None: no challenger); a notice follows."""
        with self._lock:
            if bundle is not None:
                self._bundles[bundle.version] = bundle
            self.challenger = None if bundle is None else bundle.version
        self.telemetry.notices.put({"type": "challenger"})

    def set_threshold(self, value: float, model_version: str, activate: bool = False,
                      head: float | None = None) -> int:
        """A new threshold version, refused (``ConfigError``) as the Redis store refuses it."""
        problem = threshold_problem(value, head)
        if problem is not None:
            raise ConfigError(problem)
        with self._lock:
            version = 1 if self._threshold is None else self._threshold.version + 1
            self._threshold = Threshold(float(value), version, model_version, head)
            if activate:
                self._active = model_version
        self.telemetry.notices.put({"type": "threshold", "threshold_version": version})
        return version
