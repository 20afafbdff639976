"""Step 5, decide: compare scores with the threshold from Redis (versioned, cached).

``Decision`` is the step's one result: the batch's scores, the threshold and the rows above it,
all of ONE model version: it cannot be built from scores of one model and a threshold of another
(``ModelMismatch``), so an alert can never carry a version or threshold its score did not come from.

``ThresholdCache`` turns the control plane's snapshots into the threshold that belongs to the
model the worker is using. It refreshes at most every ``refresh_s``; while Redis is unreachable
it keeps the last value for ``max_staleness_s`` and then raises ``ThresholdUnavailable`` (the
worker then holds its batch and pauses rather than deciding against an unknown threshold).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import redis

from ..errors import ThresholdUnavailable
from ..store import Snapshot, Threshold
from ..store.base import threshold_problem


def decide(scores: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean mask of anomalies: score strictly above the threshold."""
    return scores > threshold


class ModelMismatch(ThresholdUnavailable):
    """The threshold belongs to another model version than the scores (a swap is under way):
    the batch must be scored again by the threshold's model, never decided across versions."""

    def __init__(self, scored_by: str, threshold: Threshold) -> None:
        super().__init__(f"threshold v{threshold.version} belongs to model {threshold.model_version}, "
                         f"the scores to {scored_by}")
        self.scored_by = scored_by
        self.threshold = threshold


@dataclass(frozen=True, slots=True)
class Decision:
    """Step 5's result for one batch, all from one model version.

    ``scores``: float64, shape (n,), one per scored event (reconstruction error, the mean of the
    per-feature errors); ``rows``: int64, shape (k,), the positions in ``scores`` strictly above
    ``threshold.value``, ascending; ``model_version`` equals ``threshold.model_version``.
    """

    model_version: str
    threshold: Threshold
    scores: np.ndarray
    rows: np.ndarray
    probability: np.ndarray | None = None  # the supervised head's (n,), float64; None without a head

    @classmethod
    def of(cls, scores: np.ndarray, model_version: str, threshold: Threshold,
           probability: np.ndarray | None = None) -> Decision:
        """Decide ``scores`` of ``model_version`` against ``threshold``: a row is flagged when its
        score is above ``threshold.value`` or, with a supervised head (``probability`` and
        ``threshold.head``), its probability is above ``threshold.head``. Raises ``ModelMismatch``
        when the threshold belongs to another version."""
        if threshold.model_version != model_version:
            raise ModelMismatch(model_version, threshold)
        flagged = decide(scores, threshold.value)
        if probability is not None and threshold.head is not None:
            flagged = flagged | (probability > threshold.head)
        return cls(model_version, threshold, scores, np.flatnonzero(flagged), probability)

    def fired(self, row: int) -> list[str]:
        """Which parts flagged ``row``: ``autoencoder`` and/or ``supervised``."""
        out = ["autoencoder"] if self.scores[row] > self.threshold.value else []
        head, probability = self.threshold.head, self.probability
        if probability is not None and head is not None and probability[row] > head:
            out.append("supervised")
        return out


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

    def fresh(self) -> bool:
        """A threshold is known and was read within ``max_staleness_s`` (the staleness rule)."""
        snap = self.snapshot
        return (snap is not None and snap.threshold is not None
                and threshold_problem(snap.threshold.value, snap.threshold.head) is None
                and self.clock() - self.fetched_at <= self.max_staleness_s)

    def current(self, model_version: str) -> Threshold:
        """The threshold for ``model_version``. Raises ``ThresholdUnavailable`` when none is known or
        it is stale, ``ModelMismatch`` (a subclass) when it belongs to another model version."""
        self.refresh()
        snap = self.snapshot
        if snap is None or snap.threshold is None:
            raise ThresholdUnavailable("no threshold in Redis yet")
        problem = threshold_problem(snap.threshold.value, snap.threshold.head)
        if problem is not None:  # written around the checks (by hand, or by a release without them)
            raise ThresholdUnavailable(f"threshold version {snap.threshold.version} in Redis is unusable: {problem}; "
                                       "set a new one (stream-detector threshold set)")
        if not self.fresh():
            raise ThresholdUnavailable(f"threshold not refreshed for over {self.max_staleness_s:.0f}s")
        if snap.threshold.model_version != model_version:
            raise ModelMismatch(model_version, snap.threshold)
        return snap.threshold
