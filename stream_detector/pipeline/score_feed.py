"""A bounded, weighted sample of scored traffic for the operator console (telemetry, off the hot path).

Per batch the worker hands over its scores (step 4) and the decision (step 5); ``observe`` keeps at
most ``SD_SCORE_FEED_SAMPLE`` of them, chosen uniformly, each carrying a **weight**: how many
scored events it stands for (``n / k`` for ``k`` kept of ``n``). Only the kept rows touch Python,
and their event ids are read at the flush, for the rows the entry keeps: a batch read flat
(``decode.LazyEvents``) is not parsed for a sample most of which the flush thins away (with small
batches, at 20,000 events/s, that was about 200 parses per batch of about 400 events).
A daemon thread appends the pool every ``SD_SCORE_FEED_INTERVAL_S`` to the Redis stream
``{p}:recent-scores`` (``MAXLEN ~ SD_SCORE_FEED_MAX`` entries), one entry per worker, model version
and threshold version::

    worker, model_version, threshold_version, threshold   who scored, with which decision rule
    since, at                                             epoch seconds the entry covers
    n, alerts                                             scored events and alerts in that span
    samples                                               JSON {ids, scores, weights, flagged, ts[, probs]}

``probs`` (same order as ``scores``) is there only when the model has a supervised head
(``model/supervised.py``): each kept event's calibrated fraud probability, so the console's what-if
can apply the decision rule with both thresholds. Entries of models without a head (and entries
written before it existed) have no ``probs``.

The sum of the weights of an entry is ``n``, so "events above t per hour" is
``Σ weight[score > t] / hours covered`` — the console's threshold what-if. If the pool is over the
cap when flushed it is thinned uniformly again and the kept weights rescaled to sum to ``n``
again (a ratio estimate: totals stay exact, shares above a threshold are unbiased estimates).
Like the score summaries this is telemetry: if Redis is down entries are dropped and the hot
path never waits on Redis for them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from ..settings import WorkerSettings
from ..store import TelemetrySink, Threshold
from .decode import LazyEvents

log = logging.getLogger("stream_detector.worker")



@dataclass
class _Pool:
    since: float
    n: int = 0
    alerts: int = 0
    threshold: float = 0.0
    events: list[Sequence[dict[str, Any]]] = field(default_factory=list)  # per batch: its kept rows' events
    scores: list[np.ndarray] = field(default_factory=list)
    weights: list[np.ndarray] = field(default_factory=list)
    flagged: list[np.ndarray] = field(default_factory=list)
    ts: list[np.ndarray] = field(default_factory=list)
    probs: list[np.ndarray] = field(default_factory=list)  # one per batch when the model has a head


class ScoreFeed:
    def __init__(self, telemetry: TelemetrySink, settings: WorkerSettings, seed: int | None = None) -> None:
        self.telemetry = telemetry
        self.cap = settings.score_feed_sample
        self.interval_s = settings.score_feed_interval_s
        self.maxlen = settings.score_feed_max
        self.worker_id = settings.worker_id
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._pools: dict[tuple[str, int], _Pool] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.cap > 0:
            self._thread = threading.Thread(target=self._run, name="score-feed", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.flush()

    def observe(self, events: Sequence[dict[str, Any]], scores: np.ndarray, flagged_rows: np.ndarray,
                threshold: Threshold, timestamps: Sequence[int], indices: Sequence[int],
                probability: np.ndarray | None = None) -> None:
        """Sample one batch (hot path: one ``choice`` and at most ``cap`` rows of Python).

        ``scores``: float64, shape (n,), one per scored event; ``flagged_rows``: int, the positions
        the decision alerted; ``timestamps`` and ``indices``: the batch's record timestamps (epoch
        ms) and each scored event's position in the batch; ``probability``: the supervised head's
        fraud probability, float64 in [0, 1], shape (n,), or None for a model without a head.
        """
        n = int(scores.size)
        if self.cap <= 0 or n == 0:
            return
        rows = np.arange(n) if n <= self.cap else np.sort(self._rng.choice(n, self.cap, replace=False))
        flagged = np.zeros(n, dtype=bool)
        flagged[flagged_rows] = True
        picked = rows.tolist()
        with self._lock:
            pool = self._pools.setdefault((threshold.model_version, threshold.version), _Pool(time.time()))
            pool.n += n
            pool.alerts += int(flagged_rows.size)
            pool.threshold = threshold.value
            # the kept rows' events, unparsed where the batch was read flat (their ids: read at the flush)
            pool.events.append(events.take(picked) if isinstance(events, LazyEvents) else [events[r] for r in picked])
            pool.scores.append(scores[rows])
            pool.weights.append(np.full(rows.size, n / rows.size))
            pool.flagged.append(flagged[rows])
            pool.ts.append(np.asarray([timestamps[indices[r]] for r in picked], dtype=np.int64))
            if probability is not None:
                pool.probs.append(np.asarray(probability, dtype=np.float64)[rows])

    def flush(self) -> None:
        with self._lock:
            pools, self._pools = self._pools, {}
        now = time.time()
        for (model, version), pool in pools.items():
            try:  # the ids are read here: a sampled event without a readable one is a bug, said at WARNING
                entry = self._entry(model, version, pool, now)
            except Exception as exc:  # noqa: BLE001 — telemetry: never raised into the worker's threads
                log.warning("score feed: the sample of %d scored events (model %s) dropped: %s", pool.n, model, exc)
                continue
            try:
                self.telemetry.add_feed_entry(entry, self.maxlen)
            except Exception as exc:  # noqa: BLE001 — telemetry: never let Redis trouble reach the worker
                log.debug("score feed entry dropped: %s", exc)

    def _entry(self, model: str, version: int, pool: _Pool, now: float) -> dict[str, str]:
        scores = np.concatenate(pool.scores)
        weights = np.concatenate(pool.weights)
        flagged = np.concatenate(pool.flagged)
        ts = np.concatenate(pool.ts)
        # one model version per pool: every batch has a probability, or none has
        probs = np.concatenate(pool.probs) if pool.probs and len(pool.probs) == len(pool.scores) else None
        keep = np.arange(scores.size)
        if scores.size > self.cap:  # thin uniformly again; rescale so the weights still sum to n
            keep = np.sort(self._rng.choice(scores.size, self.cap, replace=False))
            weights = weights[keep] * (pool.n / float(weights[keep].sum()))
            scores, flagged, ts = scores[keep], flagged[keep], ts[keep]
            probs = probs[keep] if probs is not None else None
        ids = _ids(pool.events, keep)
        samples: dict[str, Any] = {"ids": ids, "scores": scores.tolist(), "weights": weights.tolist(),
                                   "flagged": flagged.astype(np.int8).tolist(), "ts": ts.tolist()}
        if probs is not None:
            samples["probs"] = probs.tolist()
        return {"worker": self.worker_id, "model_version": model, "threshold_version": str(version),
                "threshold": repr(pool.threshold), "since": repr(pool.since), "at": repr(now),
                "n": str(pool.n), "alerts": str(pool.alerts), "samples": orjson.dumps(samples).decode()}

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.flush()


def _ids(parts: Sequence[Sequence[dict[str, Any]]], rows: np.ndarray) -> list[str]:
    """The ``event_id`` of each of ``rows`` (int, ascending positions in the parts joined), as text.
    A part that is a ``LazyEvents`` is this pool's own (``take``), so parsing it here, on the flush
    thread, does not touch the worker's copy of the batch."""
    lengths = np.asarray([len(part) for part in parts], dtype=np.int64)
    ends = np.cumsum(lengths)
    which = np.searchsorted(ends, rows, side="right")
    starts = ends - lengths
    return [str(parts[p][r - int(starts[p])]["event_id"]) for p, r in zip(which.tolist(), rows.tolist(), strict=True)]
