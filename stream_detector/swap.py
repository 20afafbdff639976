"""Model hot swap: load new, swap one reference, drop old (MLServer's ``_reload_model`` shape).

The worker asks for the version the control plane names active (``want``); the bundle is fetched,
verified and warmed on a background thread, so the hot path never waits for it. ``finish`` swaps
the reference between batches once the load is done, or keeps the old model when it failed. A
refused version is not reloaded on every poll: only after a change notice or ``retry_after_s``.

The swap is one reference: a batch reads ``current`` once and is scored, decided and labelled
with that model only (``pipeline/threshold.Decision`` refuses a threshold of another model; the
worker then scores the batch again with the model the threshold belongs to).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from .errors import ModelError, StreamDetectorError
from .model.registry import shadow_incompatibility
from .pipeline.score import Scorer

log = logging.getLogger("stream_detector.worker")
REFUSED_RETRY_S = 30.0  # a refused model version is not reloaded on every poll


class ModelSwap:
    """Holds the worker's current ``Scorer`` and loads the next one off the hot path.

    ``load(version)`` fetches, verifies and warms a bundle (raises ``ModelError`` / any
    ``StreamDetectorError``, ``RuntimeError`` or ``OSError`` when it cannot); ``on_swap(ok)`` is
    called after each finished attempt, once ``current`` is the new model when ``ok`` (metrics,
    stats, the worker's GC re-freeze). ``timeout_s`` bounds ``finish(wait=True)``.
    """

    def __init__(self, load: Callable[[str], Scorer], timeout_s: float,
                 on_swap: Callable[[bool], None] = lambda ok: None,
                 clock: Callable[[], float] = time.monotonic, retry_after_s: float = REFUSED_RETRY_S) -> None:
        self._load = load
        self.timeout_s = timeout_s
        self.on_swap = on_swap
        self.clock = clock
        self.retry_after_s = retry_after_s
        self.current: Scorer | None = None
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-loader")
        self._pending: tuple[str, Future[Scorer]] | None = None
        self._refused: tuple[str, float] | None = None

    def start(self, version: str) -> Scorer:
        """Load ``version`` synchronously (worker start); raises what ``load`` raises."""
        self.current = self._load(version)
        return self.current

    def require(self) -> Scorer:
        """The current scorer; ``RuntimeError`` before ``start``."""
        if self.current is None:
            raise RuntimeError("worker not started")
        return self.current

    @property
    def pending_version(self) -> str | None:
        return None if self._pending is None else self._pending[0]

    def want(self, version: str | None, notice: bool = False) -> None:
        """Start loading ``version`` in the background unless it is current, already loading, or
        was refused less than ``retry_after_s`` ago (a change notice overrides that)."""
        if not version or version == self.require().version or self.pending_version == version:
            return
        refused = self._refused
        if not notice and refused is not None and refused[0] == version \
                and self.clock() - refused[1] <= self.retry_after_s:
            return
        log.info("active model changed to %s; loading in background", version, extra={"model_version": version})
        self._pending = (version, self._loader.submit(self._load, version))

    def finish(self, wait: bool) -> bool:
        """Swap to the loaded model if its load is done (or, with ``wait``, once it is); True when
        the current model changed. A failed load keeps the current model and is logged."""
        if self._pending is None or (not wait and not self._pending[1].done()):
            return False
        version, future = self._pending
        self._pending = None
        old = self.require().version
        try:
            new = future.result(timeout=self.timeout_s)
        except (ModelError, StreamDetectorError, RuntimeError, OSError, TimeoutError) as exc:
            self._refused = (version, self.clock())
            log.error("model %s failed to load, keeping %s: %s", version, old, exc,
                      extra={"model_version": old, "failed_model_version": version})
            self.on_swap(False)  # counted after its line is out: a reader of the counter then finds the line
            return False
        self.current = new
        log.info("swapped model %s -> %s", old, version, extra={"model_version": version,
                                                                 "previous_model_version": old})
        self.on_swap(True)
        return True

    def close(self) -> None:
        self._loader.shutdown(wait=False, cancel_futures=True)


class ShadowSlot:
    """The challenger in shadow beside the worker's current model (``pipeline/shadow.py``): loaded
    on its own background thread when the control plane names one, dropped when it names none or
    names the active model (promoted). A challenger that fails to load, or whose field schema or
    entity spec differs from the champion's (it would need its own entity state), is not scored;
    that is logged once per version and counted in ``refused``."""

    def __init__(self, load: Callable[[str], Scorer], on_refuse: Callable[[], None] = lambda: None) -> None:
        self._load = load
        self._on_refuse = on_refuse
        self.current: Scorer | None = None
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="challenger-loader")
        self._pending: tuple[str, Future[Scorer]] | None = None
        self._refused: set[str] = set()
        self.refused = 0

    def start(self, version: str | None, champion: str) -> None:
        """Load ``version`` synchronously (worker start: its first batch is shadow-scored too); a
        failed load is refused and logged, the worker starts anyway."""
        if version is None or version == champion:
            return
        try:
            self.current = self._load(version)
        except (ModelError, StreamDetectorError, RuntimeError, OSError) as exc:
            self._refuse(version, f"failed to load: {exc}")

    def want(self, version: str | None, champion: str | None) -> None:
        """Load ``version`` in the background (None, or the champion itself: no challenger)."""
        if version is None or version == champion:
            self.current, self._pending = None, None
            return
        self._collect()
        if (self.current is not None and self.current.version == version) or version in self._refused \
                or (self._pending is not None and self._pending[0] == version):
            return
        log.info("challenger %s named; loading it in background for shadow scoring", version,
                 extra={"challenger_version": version})
        self.current = None
        self._pending = (version, self._loader.submit(self._load, version))

    def _collect(self) -> None:
        """Take a finished background load (or its failure)."""
        if self._pending is not None and self._pending[1].done():
            version, future = self._pending
            self._pending = None
            try:
                self.current = future.result()
                log.info("challenger %s loaded: shadow-scoring every batch beside the active model", version,
                         extra={"challenger_version": version})
            except (ModelError, StreamDetectorError, RuntimeError, OSError) as exc:
                self._refuse(version, f"failed to load: {exc}")

    def ready(self, champion: Scorer) -> Scorer | None:
        """The challenger to score the next batch with beside ``champion``, or None."""
        self._collect()
        current = self.current
        if current is None or current.version == champion.version:  # promoted mid-batch: no shadow of itself
            return None
        problem = incompatible(champion, current)
        if problem:
            self._refuse(current.version, problem)
            self.current = None
            return None
        return current

    def _refuse(self, version: str, why: str) -> None:
        self._refused.add(version)
        self.refused += 1
        self._on_refuse()
        log.error("challenger %s is not shadow-scored: %s", version, why, extra={"challenger_version": version})

    def close(self) -> None:
        self._loader.shutdown(wait=False, cancel_futures=True)


def incompatible(champion: Scorer, challenger: Scorer) -> str | None:
    """Why ``challenger`` cannot be scored from the champion's decoded events and entity features
    (None when it can): ``model.registry.shadow_incompatibility``."""
    return shadow_incompatibility(champion.bundle, challenger.bundle)
