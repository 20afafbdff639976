"""The worker's background link to the control plane: change notices in, score summaries out.

* **Notices.** A daemon thread subscribes to the Redis channel ``{p}:events``; every message (a
  threshold or active-model change) sets a flag that the loop takes between batches to refresh
  its snapshot at once instead of at the next ``SD_THRESHOLD_REFRESH_S`` poll. Polling stays:
  a missed message (Redis restart, dropped subscription) costs at most one poll interval, and
  after any reconnect the flag is set so the loop re-reads right away.
* **Shadow figures.** ``observe_shadow`` sums a challenger's per-batch counts
  (``pipeline/shadow.py``); each flush adds them to its figures in Redis (``HINCRBY``), and a
  closing worker flushes what is left.
* **Score summaries.** ``observe`` bins one batch's scores against the model's drift reference
  (one ``searchsorted`` + ``bincount``; no per-event Python) into a per-version count vector; the
  thread appends the counts to the stream ``{p}:score-summaries`` every
  ``SD_SCORE_SUMMARY_INTERVAL_S`` (bounded by ``SD_SCORE_SUMMARIES_MAX``). Summaries are
  telemetry: if Redis is down they are dropped, and the hot path never waits on Redis for them.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

import numpy as np
import orjson

from ..model.reference import bin_counts, reference_bins
from ..settings import WorkerSettings
from ..store import TelemetrySink
from .score import Scorer

log = logging.getLogger("stream_detector.worker")


class ControlLink:
    def __init__(self, telemetry: TelemetrySink, settings: WorkerSettings) -> None:
        self.telemetry = telemetry
        self.settings = settings
        self._notice = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._edges: dict[str, np.ndarray] = {}
        self._counts: dict[str, np.ndarray] = {}
        self._shadow: dict[str, dict[str, int]] = {}  # challenger version → counts since the last flush
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="control-link", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
            self.flush_now()

    def take_notice(self) -> bool:
        """True once after each change notice (or reconnect) since the last call."""
        if self._notice.is_set():
            self._notice.clear()
            return True
        return False

    def observe(self, scorer: Scorer, scores: np.ndarray) -> None:
        """Add one batch's scores to the summary of the scorer's model version (hot path)."""
        edges = self._edges.get(scorer.version)
        if edges is None:
            try:
                edges = reference_bins(scorer.bundle.calibration)[0]
            except (KeyError, TypeError, ValueError, IndexError):
                edges = np.zeros(0)
            self._edges[scorer.version] = edges
        if not edges.size or not scores.size:
            return
        counts = bin_counts(scores, edges)
        with self._lock:
            total = self._counts.get(scorer.version)
            self._counts[scorer.version] = counts if total is None else total + counts

    def observe_shadow(self, version: str, counts: dict[str, int]) -> None:
        """Add one batch's shadow counts (``pipeline/shadow.shadow_counts``) of challenger ``version``."""
        with self._lock:
            total = self._shadow.setdefault(version, {})
            for name, n in counts.items():
                total[name] = total.get(name, 0) + n

    def flush_now(self) -> None:
        """Write what is pending at once (tests, and ``close``: a stopping worker's last figures)."""
        try:
            self._flush()
        except Exception as exc:  # noqa: BLE001 — telemetry: dropped when Redis is unreachable
            log.debug("control link: final flush: %s", exc)

    # ---- background thread ---------------------------------------------------------------------
    def _run(self) -> None:
        pubsub: Any = None
        next_flush = time.monotonic() + self.settings.score_summary_interval_s
        while not self._stop.is_set():
            try:
                if pubsub is None:
                    pubsub = self.telemetry.subscribe()
                    self._notice.set()  # anything may have changed while we were not listening
                if pubsub.get_message(timeout=0.2) is not None:
                    self._notice.set()
                if time.monotonic() >= next_flush:
                    next_flush = time.monotonic() + self.settings.score_summary_interval_s
                    self._flush()
            except Exception as exc:  # noqa: BLE001 — the thread must survive any Redis trouble
                log.debug("control link: %s; reconnecting", exc)
                _close(pubsub)
                pubsub = None
                self._stop.wait(1.0)
        _close(pubsub)

    def _flush(self) -> None:
        with self._lock:
            pending, self._counts = self._counts, {}
            shadow, self._shadow = self._shadow, {}
        for challenger, shadow_counts in shadow.items():
            self.telemetry.add_shadow_counts(challenger, shadow_counts)
        for version, counts in pending.items():
            self.telemetry.add_score_summary({
                "worker_id": self.settings.worker_id or socket.gethostname(), "model_version": version,
                "edges": orjson.dumps(self._edges[version].tolist()).decode(),
                "counts": orjson.dumps(counts.tolist()).decode(), "at": repr(time.time())},
                self.settings.score_summaries_max)


def _close(pubsub: Any) -> None:
    """Close a subscription (closing a broken connection may fail: nothing to do then)."""
    if pubsub is not None:
        try:
            pubsub.close()
        except Exception as exc:  # noqa: BLE001
            log.debug("control link: closing the subscription: %s", exc)
