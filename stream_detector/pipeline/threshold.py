"""Step 5, decide: compare scores with the threshold from Redis (versioned, cached).

``ThresholdCache`` turns the control plane's snapshots into the threshold that belongs to the
model the worker is using. It refreshes at most every ``refresh_s``; while Redis is unreachable
it keeps the last value for ``max_staleness_s`` and then raises ``ThresholdUnavailable`` (the
worker then holds its batch and pauses rather than deciding against an unknown threshold).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import redis

from ..errors import ThresholdUnavailable
from ..store import Snapshot, Threshold


def decide(scores: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean mask of anomalies: score strictly above the threshold."""
    return scores > threshold


class ThresholdCache:
    def __init__(self, read: Callable[[], Snapshot], refresh_s: float, max_staleness_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.read = read
        self.refresh_s = refresh_s
        self.max_staleness_s = max_staleness_s
        self.clock = clock
        self.snapshot: Snapshot | None = None
        self.fetched_at = -float("inf")
        self.attempted_at = -float("inf")

    def refresh(self, force: bool = False) -> Snapshot | None:
        """Re-read Redis if due; return the latest snapshot (possibly cached)."""
        now = self.clock()
        if force or now - self.attempted_at >= self.refresh_s:
            self.attempted_at = now
            try:
                self.snapshot = self.read()
                self.fetched_at = now
            except (redis.RedisError, OSError):
                pass
        return self.snapshot

    def current(self, model_version: str) -> Threshold:
        """The threshold for ``model_version``; raises when unknown or stale."""
        self.refresh()
        snap = self.snapshot
        if snap is None or snap.threshold is None:
            raise ThresholdUnavailable("no threshold in Redis yet")
        if self.clock() - self.fetched_at > self.max_staleness_s:
            raise ThresholdUnavailable(f"threshold not refreshed for over {self.max_staleness_s:.0f}s")
        if snap.threshold.model_version != model_version:
            raise ThresholdUnavailable(
                f"threshold v{snap.threshold.version} belongs to model {snap.threshold.model_version}, "
                f"worker runs {model_version}"
            )
        return snap.threshold
