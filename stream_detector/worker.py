"""The worker: orchestration only. Read the loop in ``run_once`` top to bottom — it is the design.

    1 source   poll a batch (size or deadline)
    2 decode   bytes → validated events; bad ones → Rejected(reason)
    3a enrich  per-entity history features of the model's EntitySpec (state in Redis: 2 round trips)
    3 features the shared FeatureSpec of the active model
    4 score    TorchScript per-feature errors
    5 decide   score vs the Redis threshold for that model
    6 publish  alerts + dead letters, wait for every acknowledgement
    7 commit   offsets, only after 6 succeeded

Steps 2-4 run over chunks of the batch, each chunk scored on a scoring thread while the next is
decoded (``pipeline/compute.py``); steps 5-7 see the whole batch at once.

Between batches the worker refreshes the threshold and, when the active model changed, loads and
warms the new one in a background thread and swaps the reference; if loading fails the old model
stays. On SIGTERM/SIGINT the current batch is finished, delivered and committed before exit.
A batch that cannot be decided (Redis gone past the staleness bound) is held, the partitions are
paused while polling continues (group membership stays), and processing resumes on its own.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .entity import Enricher, RedisState
from .errors import DeliveryError, EntityStateUnavailable, ModelError, StreamDetectorError, ThresholdUnavailable
from .metrics import WorkerMetrics, batch_context
from .pipeline.compute import ChunkedCompute, Enrich
from .pipeline.control_link import ControlLink
from .pipeline.decode import Rejected
from .pipeline.publish import build_alerts, build_dead_letters
from .pipeline.score import Scorer, scores_of
from .pipeline.score_feed import ScoreFeed
from .pipeline.threshold import ThresholdCache, decide
from .settings import Settings
from .store import ControlPlane, Threshold
from .topics import ensure_topics
from .transport.base import Batch, Publisher, Source
from .transport.factory import make_sink, make_source

log = logging.getLogger("stream_detector.worker")
REFUSED_RETRY_S = 30.0  # a refused model version is not reloaded on every poll


def _freeze_long_lived() -> None:
    """What is alive now (torch, the model, clients) lives as long as the worker: collect once, then
    move it out of the cyclic GC's reach, so the collections a batch's allocations trigger no longer
    walk it (45k → 58k events/s with kafka-python, 68k → 85k with confluent; RESULTS.md). Called at
    start and after a model swap (one full collection, ~0.1 s, frees the model swapped out)."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


@dataclass
class WorkerStats:
    batches: int = 0
    events: int = 0
    scored: int = 0
    alerts: int = 0
    rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    swaps: int = 0
    swap_failures: int = 0
    delivery_failures: int = 0
    held_batches: int = 0
    abandoned_batches: int = 0
    started_at: float = field(default_factory=time.monotonic)


class Worker:
    def __init__(self, settings: Settings, control: ControlPlane | None = None,
                 source: Source | None = None, publisher: Publisher | None = None) -> None:
        self.settings = settings
        self.control = control or ControlPlane.from_settings(settings)
        self.source = source or make_source(settings)  # SD_TRANSPORT: kafka-python or confluent
        self.publisher = publisher or make_sink(settings)
        self.metrics = WorkerMetrics(settings)  # /metrics, /healthz, /readyz (docs/operations.md)
        self.thresholds = ThresholdCache(self.metrics.watch_redis(self.control.snapshot),
                                         settings.threshold_refresh_s, settings.threshold_max_staleness_s)
        self.link = ControlLink(self.control, settings)  # change notices in, score summaries out
        self.feed = ScoreFeed(self.control, settings)  # sampled scores for the console (docs/console.md)
        self.stats = WorkerStats()
        self.scorer: Scorer | None = None
        self.stop_event = threading.Event()
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-loader")
        self._pending: tuple[str, Future[Scorer]] | None = None
        self._refused: tuple[str, float] | None = None  # retried on a change notice or after REFUSED_RETRY_S
        self._held: Batch | None = None
        self._in_doubt = False  # the held batch's transaction failed at commit: it may have committed
        self.compute = ChunkedCompute(settings.compute_chunk, settings.torch_threads)  # steps 2-4
        self.enricher: Enricher | None = None  # step 3a, created in start()

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self.metrics.attach(self)
        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)
        if self.settings.create_topics:
            ensure_topics(self.settings, [self.settings.input_topic, self.settings.alerts_topic,
                                          self.settings.dlq_topic])
        self.scorer = self._load(self.control.active_bundle().version)
        self.enricher = Enricher(RedisState(self.control.r, self.settings.redis_prefix))
        self.thresholds.refresh(force=True)
        self.link.start()
        self.feed.start()
        self.publisher.start()
        self.source.start()
        _freeze_long_lived()
        log.info("worker started: model %s, topic %s, group %s", self.scorer.version,
                 self.settings.input_topic, self.settings.group_id,
                 extra={"model_version": self.scorer.version, "topic": self.settings.input_topic,
                        "group": self.settings.group_id})

    def run(self, max_idle_polls: int | None = None) -> WorkerStats:
        """Loop until ``stop()``; ``max_idle_polls`` ends it after that many empty polls (tests, demo)."""
        idle = 0
        try:
            while not self.stop_event.is_set():
                handled = self.run_once()
                idle = 0 if handled else idle + 1
                if max_idle_polls is not None and idle >= max_idle_polls:
                    break
        finally:
            self.close()
        return self.stats

    def stop(self) -> None:
        self.stop_event.set()

    def close(self) -> None:
        self.source.close()
        self.publisher.close()
        self.compute.close()
        self._loader.shutdown(wait=False, cancel_futures=True)
        self.link.close()
        self.feed.close()
        self.metrics.close()
        gc.unfreeze()

    # ---- the loop --------------------------------------------------------------------------
    def run_once(self) -> int:
        """Handle one batch (or retry a held one); returns the number of events handled."""
        self._maybe_swap()
        if self._held is not None and self._in_doubt:
            self._settle_in_doubt(self._held)
            return 0
        batch = self._retry_held() if self._held is not None else self.source.poll_batch()  # 1 source
        if not len(batch):
            if self._held is not None:  # every held partition moved to another worker
                self._release_hold()
            return 0
        try:
            self.handle(batch)
        except (ThresholdUnavailable, DeliveryError, EntityStateUnavailable) as exc:
            self._hold(batch, exc)
            return 0
        if self._held is not None:
            self._release_hold()
        return len(batch)

    def handle(self, batch: Batch) -> None:
        scorer = self._require_scorer()
        # 2 decode, 3a enrich, 3 features, 4 score: chunk by chunk, scoring overlapped (pipeline/compute.py)
        done = self.compute.run(scorer, batch.values, self.settings.max_event_bytes, self._enrich_for(scorer, batch))
        events, indices, rejected, per_feature = done.events, done.indices, done.rejected, done.per_feature
        scores = scores_of(per_feature)
        self.link.observe(scorer, scores)  # drift summaries: one bincount per batch
        threshold = self._threshold_for(scorer)  # 5 decide
        rows = np.flatnonzero(decide(scores, threshold.value))
        self.feed.observe(events, scores, rows, threshold, batch.timestamps, indices)  # bounded sample
        field_errors = scorer.field_errors(per_feature[rows])
        alerts = build_alerts(batch, events, indices, rows, scores, field_errors, scorer.fields, threshold,
                              self.settings.top_features, self.settings.alerts_topic, self.settings.redacted_fields)
        self.metrics.decided(batch, indices, rows)
        dead = build_dead_letters(batch, rejected, self.settings.dlq_topic)
        try:
            self.publisher.publish(alerts + dead)  # 6 publish (every ack / inside the transaction)
            if not self.source.still_member(batch):  # evicted meanwhile: a zombie must not commit
                self._abandon(batch)
                return
            self._in_doubt = self.publisher.transactional  # until the commit returns
            self.publisher.commit(self.source, batch.next_offsets(), batch.group)  # 7 commit, after 6
            self._in_doubt = False
        except DeliveryError:
            self.stats.delivery_failures += 1
            self.metrics.delivery_failed()
            self.publisher.reset()
            raise
        self._count(batch, len(events), len(alerts), rejected)

    # ---- helpers ---------------------------------------------------------------------------
    def _require_scorer(self) -> Scorer:
        if self.scorer is None:
            raise RuntimeError("worker not started")
        return self.scorer

    def _enrich_for(self, scorer: Scorer, batch: Batch) -> Enrich | None:
        """Step 3a for ``batch``: entity features (on copies; alerts keep the events as received),
        or ``None`` when the model has no EntitySpec."""
        spec, enricher = scorer.bundle.entity, self.enricher
        if spec is None or enricher is None:
            return None

        def enrich(events: list[dict[str, Any]], indices: list[int]) -> list[dict[str, Any]]:
            positions = [(batch.partitions[i], batch.offsets[i]) for i in indices]
            return enricher.enrich(spec, events, positions)
        return enrich

    def _threshold_for(self, scorer: Scorer) -> Threshold:
        try:
            return self.thresholds.current(scorer.version)
        except ThresholdUnavailable:
            snap = self.thresholds.snapshot
            if snap is not None and snap.active_model not in (None, scorer.version) and self._finish_swap(wait=True):
                return self.thresholds.current(self._require_scorer().version)
            raise

    def _abandon(self, batch: Batch) -> None:
        log.warning("group generation changed while a batch of %d events was in flight (evicted?); "
                    "not committing it, rewinding to the group's committed offsets", len(batch))
        self.stats.abandoned_batches += 1
        self.publisher.abandon()
        self.source.rewind_to_committed(batch)

    def _retry_held(self) -> Batch:
        """The held batch, less partitions revoked meanwhile (their new owner reprocesses them)."""
        assert self._held is not None
        owned = {tp.partition for tp in self.source.assignment() if tp.topic == self._held.topic}
        return self._held.only(owned)

    def _hold(self, batch: Batch, exc: StreamDetectorError) -> None:
        if self._held is None:
            ctx = batch_context(batch, self.scorer)
            log.warning("holding batch of %d events (%s) and pausing partitions: %s", len(batch), ctx["where"], exc,
                        extra=ctx)
            self.source.pause_all()
        self._held = batch
        self.stats.held_batches += 1
        self.metrics.held(exc)
        # keep group membership without consuming; back off before the next attempt
        self.source.poll_while_paused(int(min(1.0, self.settings.threshold_refresh_s) * 1000))

    def _settle_in_doubt(self, held: Batch) -> None:
        """A transaction that failed at its commit (e.g. ``commit_transaction`` timed out while the
        brokers were below ``min.insync.replicas``) may still commit: the coordinator completes a
        prepared commit. Retrying the held batch would then publish its alerts twice (the failover
        tier's "two brokers down" scenario found that). So a fresh producer first settles it
        (``init_transactions`` returns once the old transaction is committed or aborted), then the
        batch's partitions are rewound to the group's committed offsets and the held copy dropped:
        the batch is read again only if it did not commit. Until that works the batch stays held."""
        try:
            self.publisher.reset()
            self.publisher.start()
            self.source.rewind_to_committed(held)
        except Exception as exc:  # noqa: BLE001 - any failure here means: still in doubt, keep holding
            self.publisher.reset()
            self._hold(held, DeliveryError(f"settling a transaction that failed at commit: {exc!r}"))
            return
        log.info("settled a transaction that failed at commit; re-reading from the committed offsets")
        self._in_doubt = False
        self._release_hold()

    def _release_hold(self) -> None:
        log.info("resuming after %d held attempt(s)", self.stats.held_batches)
        self._held = None
        self.source.resume_all()

    def _load(self, version: str) -> Scorer:
        scorer = Scorer(self.control.fetch_bundle(version), self.settings.device)
        scorer.warm()
        return scorer

    def _maybe_swap(self) -> None:
        notice = self.link.take_notice()
        snap = self.thresholds.refresh(force=notice)  # pub/sub notice, else polling
        wanted = snap.active_model if snap is not None else None
        if wanted and wanted != self._require_scorer().version and self._worth_loading(wanted, notice):
            log.info("active model changed to %s; loading in background", wanted, extra={"model_version": wanted})
            self._pending = (wanted, self._loader.submit(self._load, wanted))
        self._finish_swap(wait=False)

    def _worth_loading(self, version: str, notice: bool) -> bool:
        """Not already loading it, and not refused just now (unless a change notice came since)."""
        if self._pending is not None and self._pending[0] == version:
            return False
        refused = self._refused
        return notice or refused is None or refused[0] != version or time.monotonic() - refused[1] > REFUSED_RETRY_S

    def _finish_swap(self, wait: bool) -> bool:
        if self._pending is None or (not wait and not self._pending[1].done()):
            return False
        version, future = self._pending
        self._pending = None
        try:
            new = future.result(timeout=self.settings.delivery_timeout_s)
        except (ModelError, StreamDetectorError, RuntimeError, OSError) as exc:
            self.stats.swap_failures += 1
            self._refused = (version, time.monotonic())
            self.metrics.swapped(False)
            log.error("model %s failed to load, keeping %s: %s", version, self._require_scorer().version, exc,
                      extra={"model_version": self._require_scorer().version, "failed_model_version": version})
            return False
        old = self._require_scorer().version
        self.scorer = new
        _freeze_long_lived()  # the old model may sit in the frozen generation: collected here, once
        self.stats.swaps += 1
        self.metrics.swapped(True)
        log.info("swapped model %s -> %s", old, version, extra={"model_version": version,
                                                                 "previous_model_version": old})
        return True

    def _count(self, batch: Batch, scored: int, alerts: int, rejected: list[Rejected]) -> None:
        s = self.stats
        s.batches += 1
        s.events += len(batch)
        s.scored += scored
        s.alerts += alerts
        s.rejected += len(rejected)
        for r in rejected:
            s.rejected_by_reason[r.reason.value] = s.rejected_by_reason.get(r.reason.value, 0) + 1
        self.metrics.batch_done(batch, scored, alerts, rejected)

