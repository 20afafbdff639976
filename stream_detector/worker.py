"""The worker: orchestration only. Read the loop in ``run_once`` top to bottom — it is the design.

    1 source   poll a batch (size or deadline); with entity features over several keys, the
               partitions are released in event-time order (pipeline/align.py)
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
warms the new one in a background thread and swaps the reference (``swap.py``); if loading fails
the old model stays. A batch is scored, decided and labelled by one model: when the threshold
already belongs to the model being loaded, the swap is finished and the batch scored again
(``pipeline/threshold.Decision`` cannot be built across versions). On SIGTERM/SIGINT the current
batch is finished, delivered and committed before exit. A batch that fails with a *retriable*
error (Redis gone past the staleness bound, delivery refused) is held (``hold.py``): the
partitions are paused while polling continues (group membership stays), and processing resumes
on its own.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .entity import Enricher
from .entity.labels import InMemoryLabels, LabelStore, RedisLabels, label_values
from .errors import ConfigError, DeliveryError, StreamDetectorError
from .features import Extra
from .fieldschema import EventTime
from .hold import BatchHold
from .label_ingest import LabelIngester
from .metrics import StepTimer, WorkerMetrics, WorkerStatus, batch_context
from .model.bundle import Bundle
from .pipeline.align import AlignedSource
from .pipeline.compute import ChunkedCompute, Computed, Enrich, Fields
from .pipeline.control_link import ControlLink
from .pipeline.decode import Rejected
from .pipeline.publish import build_alerts, build_dead_letters
from .pipeline.score import Scorer, scores_of
from .pipeline.score_feed import ScoreFeed
from .pipeline.shadow import ModelVerdicts, build_shadow_records, shadow_counts
from .pipeline.threshold import Decision, ModelMismatch, ThresholdCache
from .settings import Settings
from .store import ControlPlane, ControlView
from .store.control import WorkerView
from .swap import ModelSwap, ShadowSlot
from .topics import ensure_topics, topic_exists, topic_partitions
from .transport.base import Batch, OutMessage, Publisher, Source
from .transport.factory import make_sink, make_source

log = logging.getLogger("stream_detector.worker")


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
    rescored_batches: int = 0  # scored again because the threshold already belonged to a new model
    delivery_failures: int = 0
    held_batches: int = 0
    abandoned_batches: int = 0
    shadow_events: int = 0  # scored by a challenger in shadow too (pipeline/shadow.py)
    shadow_alerts: int = 0  # the challenger's would-be alerts
    started_at: float = field(default_factory=time.monotonic)
    busy_s: float = 0.0  # seconds in the loop's steps that handled events (``run``; empty polls left out)


class _Progress:
    """The worker's INFO line every ``every_s`` while it handles events (``SD_LOG_PROGRESS_S``): what
    it did since the last line, so an operator tailing the log sees it work (it said nothing per
    batch at INFO; found by a new-user trial). Nothing is logged for a quiet period.

    Several workers taking turns in event time (``pipeline/align.py``) get one WARNING per period
    naming the cause and the remedies, when either the alignment waited more than half the period
    for other workers' partitions (``peer_wait``, seconds), or most of the period's batches (at
    least ``TURN_BATCHES``) stopped at another worker's head (``peer_cut``, batches) with fewer
    than ``SMALL_BATCH`` events each: on a backlog sparse in event time a turn is an event or two,
    and the worker spends its time on tiny batches rather than waiting (a new-user trial: two
    workers drained a 7-day file at ~120 events/s while the wait warning stayed silent)."""

    TURN_BATCHES = 20
    SMALL_BATCH = 64

    def __init__(self, stats: WorkerStats, every_s: float, peer_wait: Callable[[], float] = lambda: 0.0,
                 peer_cut: Callable[[], int] = lambda: 0) -> None:
        self.stats, self.every_s, self.peer_wait, self.peer_cut = stats, every_s, peer_wait, peer_cut
        self.since = time.monotonic()
        self.seen = (0, 0, 0, 0)
        self.waited, self.cut = peer_wait(), peer_cut()

    def maybe_log(self, now: float) -> None:
        if not self.every_s or now - self.since < self.every_s:
            return
        s = self.stats
        events, alerts, rejected = s.events - self.seen[0], s.alerts - self.seen[1], s.rejected - self.seen[2]
        batches = s.batches - self.seen[3]
        period = now - self.since
        waited = self.peer_wait() - self.waited
        cut = self.peer_cut() - self.cut
        if events:
            log.info("handled %d events in the last %.0f s (%.0f/s): %d alerts, %d dead letters; since start %d "
                     "events, %d alerts, %d dead letters", events, period, events / period,
                     alerts, rejected, s.events, s.alerts, s.rejected)
        small_turns = (batches >= self.TURN_BATCHES and cut > batches / 2
                       and events < self.SMALL_BATCH * batches)
        if waited > 0.5 * period or small_turns:  # several workers taking turns in event time
            how = (f"waited {waited:.0f} of the last {period:.0f} s for other workers' partitions to catch up "
                   "in event time" if waited > 0.5 * period else
                   f"{cut} of the last {batches} batches ({events / batches:.1f} events each) stopped at other "
                   "workers' partitions in event time")
            log.warning("%s: on a backlog whose events "
                        "are sparse in event time, workers sharing entity state take turns, so fewer workers (or a "
                        "larger SD_ALIGN_PEER_GRACE_MS, less exact) drain it faster (docs/operations.md, "
                        "'Partitions and workers')", how)
        self.since, self.seen = now, (s.events, s.alerts, s.rejected, s.batches)
        self.waited, self.cut = self.peer_wait(), self.peer_cut()


class Worker:
    """One consumer-group member running steps 1-7 (``run_once``) until stopped.

    Collaborators (each replaceable, e.g. by the in-memory ones in unit tests): ``control`` the
    read-only control-plane view (default: Redis from ``settings``), ``source`` and ``publisher``
    the transport (default: ``SD_TRANSPORT``/``SD_DELIVERY``). Raises from ``run``/``run_once``
    only what is not retriable; retriable failures hold the batch (``hold.py``).
    """

    def __init__(self, settings: Settings, control: ControlView | None = None,
                 source: Source | None = None, publisher: Publisher | None = None) -> None:
        self.settings = settings
        self.control = control or ControlPlane.from_settings(settings).worker_view()  # read-only
        self.source = source or make_source(settings)  # SD_TRANSPORT: kafka-python or confluent
        self.publisher = publisher or make_sink(settings)
        self.metrics = WorkerMetrics(settings)  # /metrics, /healthz, /readyz (docs/operations.md)
        self.thresholds = ThresholdCache(self.metrics.watch_redis(self.control.snapshot),
                                         settings.threshold_refresh_s, settings.threshold_max_staleness_s)
        self.link = ControlLink(self.control.telemetry, settings)  # change notices in, score summaries out
        self.feed = ScoreFeed(self.control.telemetry, settings)  # sampled scores for the console (docs/console.md)
        self.stats = WorkerStats()
        self.stop_event = threading.Event()
        self.models = ModelSwap(self._load, settings.delivery_timeout_s, self._swapped)
        self.shadow = ShadowSlot(self._load_challenger, self.metrics.shadow_refused.inc)  # challenger in shadow
        self.hold = BatchHold(self.source, self.publisher, int(min(1.0, settings.threshold_refresh_s) * 1000),
                              self._held)
        self.steps = StepTimer()  # per-step wall time → Prometheus (+ any listener: benchmarks)
        self.steps.listeners.append(self.metrics.step_time)
        self.compute = ChunkedCompute(settings.compute_chunk, settings.scoring_threads, self.steps)  # steps 2-4
        self.enricher: Enricher | None = None  # step 3a, created in start()
        self._aligned_for = ""  # the model version whose timestamp rule the alignment step uses
        self.ingester: LabelIngester | None = None  # feedback topic → label store, started in start()
        self.labels: LabelStore = InMemoryLabels(())  # the label store (start(): the control plane's)
        self._counted: dict[str, int] = {}  # running totals of the enricher and label store, as counted in metrics
        self._untimed = 0  # the current batch's events without a usable timestamp (its last enrich attempt)
        self._shadow_counts: tuple[str, dict[str, int]] | None = None  # the batch in hand's, until committed

    @property
    def scorer(self) -> Scorer | None:
        """The model the next batch is scored with (``None`` before ``start``)."""
        return self.models.current

    # ---- lifecycle -------------------------------------------------------------------------
    def status(self) -> WorkerStatus:
        """A snapshot for metrics and health checks; safe from another thread (reads references the
        worker thread replaces whole) and never raises."""
        try:
            assigned: int | None = len(self.source.assignment())
        except Exception:  # noqa: BLE001 - not started / closed / rebalancing: unknown, not an error
            assigned = None
        cache = self.thresholds
        snap = cache.snapshot
        current = snap.threshold if snap is not None else None
        scorer = self.models.current
        return WorkerStatus(
            running=not self.stop_event.is_set(), model_version=None if scorer is None else scorer.version,
            assigned_partitions=assigned, threshold_value=None if current is None else current.value,
            threshold_version=None if current is None else current.version,
            threshold_age_s=None if current is None else max(0.0, cache.clock() - cache.fetched_at),
            threshold_fresh=cache.fresh())

    def start(self) -> None:
        self.metrics.attach(self.status, self.source.highwaters)
        if self.settings.scoring_threads:
            torch.set_num_threads(self.settings.scoring_threads)
        if self.settings.create_topics:
            ensure_topics(self.settings, [self.settings.input_topic, self.settings.alerts_topic,
                                          self.settings.dlq_topic])
        scorer = self.models.start(self.control.active_bundle().version)
        self.shadow.start(self.control.snapshot().challenger, scorer.version)  # a challenger in shadow, if any
        entity = scorer.bundle.entity
        mode = self.settings.align_event_time
        if mode == "on" or (mode == "auto" and entity is not None and len(entity.keys) > 1):
            # 1½ align: partitions released in event-time order (pipeline/align.py); decided once per start
            peers = self.control.watermarks(self.settings.group_id, self.settings.input_topic,
                                            self.settings.align_peer_grace_ms, self.settings.align_peer_stale_ms,
                                            self._input_partitions())
            self.source = AlignedSource(self.source, self.settings.batch_size, self.settings.align_idle_ms,
                                        self.settings.align_max_buffered or None, peers=peers,
                                        max_jump_ms=self.settings.align_max_jump_ms)
            self.source.enabled = True
            self._align_to(scorer.bundle)
            self.hold.source = self.source
            log.info("event-time alignment on (%s): idle %d ms, max jump %d ms, across workers grace %d ms, "
                     "stale %d ms", mode, self.settings.align_idle_ms, self.settings.align_max_jump_ms,
                     self.settings.align_peer_grace_ms, self.settings.align_peer_stale_ms)
        self.enricher = Enricher(self.control.entity_state(self.settings.entity_copies))
        if self.settings.entity_copies:
            log.info("entity state: copies of up to %d written records kept in memory (SD_ENTITY_COPIES)",
                     self.settings.entity_copies)
        self.labels = self.control.label_store()
        if entity is not None and entity.label_keys:
            # before the source polls: the catch-up (seconds) must not stall a polled batch, or
            # event-time alignment takes the unpolled partitions for idle (its grace is wall time)
            self._start_ingester()
        self.thresholds.refresh(force=True)
        self.link.start()
        self.feed.start()
        self.publisher.start()
        self.source.start()
        _freeze_long_lived()
        log.info("worker started: model %s, topic %s, group %s", scorer.version,
                 self.settings.input_topic, self.settings.group_id,
                 extra={"model_version": scorer.version, "topic": self.settings.input_topic,
                        "group": self.settings.group_id})

    def _input_partitions(self) -> int:
        """The input topic's partition count (the peers' watermarks wait for every partition); 0
        when the broker cannot say (then a partition nobody published holds nothing back)."""
        if not isinstance(self.control, WorkerView):
            return 0  # an in-process control plane (tests): the memory transport
        try:
            return topic_partitions(self.settings, self.settings.input_topic)
        except Exception:  # noqa: BLE001 - metadata unavailable: degrade, as documented
            log.warning("input topic's partition count unknown; alignment across workers starts without it")
            return 0

    def run(self, max_idle_polls: int | None = None) -> WorkerStats:
        """Loop until ``stop()``; ``max_idle_polls`` ends it after that many empty polls (tests, demo)."""
        idle = 0
        progress = _Progress(self.stats, self.settings.log_progress_s, self.peer_wait_s,
                             lambda: self.source.peer_cut_batches if isinstance(self.source, AlignedSource) else 0)
        try:
            while not self.stop_event.is_set():
                began = time.monotonic()
                handled = self.run_once()
                if handled:
                    self.stats.busy_s += time.monotonic() - began
                progress.maybe_log(began)
                idle = 0 if handled else idle + 1
                if max_idle_polls is not None and idle >= max_idle_polls:
                    break
        finally:
            self.close()
        return self.stats

    def stop(self) -> None:
        self.stop_event.set()

    def close(self) -> None:
        if self.ingester is not None:
            self.ingester.stop()
        self.source.close()
        self.publisher.close()
        self.compute.close()
        self.models.close()
        self.shadow.close()
        self.link.close()
        self.feed.close()
        self.metrics.close()
        gc.unfreeze()

    # ---- the loop --------------------------------------------------------------------------
    def peer_wait_s(self) -> float:
        """Seconds this worker's alignment has waited for other workers' partitions (0 without it)."""
        return self.source.peer_wait_s if isinstance(self.source, AlignedSource) else 0.0

    def _align_to(self, bundle: Bundle) -> None:
        """The alignment step reads timestamps with the active model's rule (``fieldschema.EventTime``)."""
        assert isinstance(self.source, AlignedSource)
        if self._aligned_for != bundle.version:
            self.source.event_time, self._aligned_for = EventTime.of(bundle.schema), bundle.version

    def run_once(self) -> int:
        """Handle one batch (or retry a held one); returns the number of events handled."""
        notice = self.link.take_notice()
        snap = self.thresholds.refresh(force=notice)  # pub/sub notice, else polling
        self.models.want(snap.active_model if snap is not None else None, notice)
        self.models.finish(wait=False)  # between batches: swap if the new model is ready
        self.shadow.want(snap.challenger if snap is not None else None, self.models.require().version)
        if isinstance(self.source, AlignedSource):
            self._align_to(self.models.require().bundle)
        if self.hold.active and self.hold.in_doubt:
            self.hold.settle()
            return 0
        if self.hold.active:
            batch = self.hold.retry()
        else:
            with self.steps.time("source"):
                waited = self.peer_wait_s()
                batch = self.source.poll_batch()  # 1 source
                waited = self.peer_wait_s() - waited
                if waited > 0:
                    self.metrics.align_peer_wait.inc(waited)
        if not len(batch):
            if self.hold.active:  # every held partition moved to another worker
                self.hold.release()
            return 0
        try:
            self.handle(batch)
        except StreamDetectorError as exc:
            if not exc.retriable:
                raise
            self.hold.hold(batch, exc)  # retry by flag: pause, keep membership, try again later
            return 0
        if self.hold.active:
            self.hold.release()
        return len(batch)

    def handle(self, batch: Batch) -> None:
        scorer, done, decision = self._score_and_decide(batch)  # 2 decode … 5 decide, one model
        events, indices, rejected = done.events, done.indices, done.rejected
        self.link.observe(scorer, decision.scores)  # drift summaries: one bincount per batch
        rows = decision.rows
        self.feed.observe(events, decision.scores, rows, decision.threshold, batch.timestamps, indices,
                          decision.probability)  # sample (with the head's probability when there is one)
        field_errors = scorer.field_errors(done.per_feature[rows])
        head = (scorer.head_attributions(done.features[rows])  # why the head said fraud, alerted rows only
                if done.features is not None and len(rows) else None)
        alerts = build_alerts(batch, events, indices, decision, field_errors, scorer.fields,
                              self.settings.top_features, self.settings.alerts_topic, self.settings.redacted_fields,
                              head)
        self.metrics.decided(batch, indices, rows)
        dead = build_dead_letters(batch, rejected, self.settings.dlq_topic)
        shadow = self._shadow(batch, done, decision)  # a challenger's would-be alerts: shadow records
        try:
            with self.steps.time("publish"):
                self.publisher.publish(alerts + dead + shadow)  # 6 publish (every ack / inside the transaction)
            if not self.source.still_member(batch):  # evicted meanwhile: a zombie must not commit
                self._abandon(batch)
                return
            self.hold.in_doubt = self.publisher.transactional  # until the commit returns
            with self.steps.time("commit"):
                self.publisher.commit(self.source, batch.next_offsets(), batch.group)  # 7 commit, after 6
            self.hold.in_doubt = False
            if isinstance(self.source, AlignedSource):
                self.source.settled(batch.next_offsets())  # several workers: peers may release up to here
        except DeliveryError:
            self.stats.delivery_failures += 1
            self.metrics.delivery_failed()
            self.publisher.reset()
            raise
        self._count(batch, len(events), len(alerts), rejected)
        if self._shadow_counts is not None:  # the batch is committed: its shadow counts go in once
            version, counts = self._shadow_counts
            self._shadow_counts = None
            self.link.observe_shadow(version, counts)
            self.stats.shadow_events += counts["events"]
            self.stats.shadow_alerts += counts["challenger_alerts"]
            self.metrics.shadowed(counts["events"], counts["challenger_alerts"])

    def _shadow(self, batch: Batch, done: Computed, decision: Decision) -> list[OutMessage]:
        """A challenger's verdicts on the batch beside the champion's (``pipeline/shadow.py``): the
        shadow records to publish with the alerts, and the counts for its figures (telemetry)."""
        self._shadow_counts = None
        if done.shadow_scores is None or self.shadow.current is None:
            return []
        challenger = self.shadow.current
        t = decision.threshold
        champ = ModelVerdicts.of(decision.model_version, decision.scores, decision.probability, t.value, t.head)
        chall = ModelVerdicts.of(challenger.version, done.shadow_scores, done.shadow_probability,
                                 challenger.bundle.threshold, challenger.bundle.head_threshold)
        self._shadow_counts = (challenger.version, shadow_counts(champ, chall))  # added once committed
        return build_shadow_records(batch, done.events, done.indices, champ, chall, self.settings.shadow_topic,
                                    self.settings.redacted_fields)

    def _score_and_decide(self, batch: Batch) -> tuple[Scorer, Computed, Decision]:
        """Steps 2-5 with ONE model: the scorer is read once; if the threshold already belongs to
        the model being loaded, the swap is finished and the batch scored again by it (at most
        once more: a second pass needs another successful swap). Raises ``ThresholdUnavailable``
        (retriable) when no usable threshold exists for the model in hand."""
        while True:
            scorer = self.models.require()
            # 2 decode, 3a enrich, 3 features, 4 score: chunk by chunk, overlapped (pipeline/compute.py)
            with self.steps.time("compute"):
                done = self.compute.run(scorer, batch.values, self.settings.max_event_bytes,
                                        self._enrich_for(scorer, batch), self.shadow.ready(scorer))
            try:
                threshold = self.thresholds.current(scorer.version)  # 5 decide
            except ModelMismatch:
                if self.models.finish(wait=True):  # the threshold's model was loading: score again with it
                    self.stats.rescored_batches += 1
                    continue
                raise
            return scorer, done, Decision.of(scores_of(done.per_feature), scorer.version, threshold,
                                             done.probability)

    # ---- helpers ---------------------------------------------------------------------------
    def _enrich_for(self, scorer: Scorer, batch: Batch) -> Enrich | None:
        """Step 3a for ``batch``: entity features as columns for step 3 (the events themselves are
        not changed: alerts keep them as received), or ``None`` when the model has no EntitySpec."""
        spec, enricher = scorer.bundle.entity, self.enricher
        if spec is None or enricher is None:
            return None
        if spec.label_keys and self.ingester is None:
            self._start_ingester()

        def enrich(events: list[dict[str, Any]], indices: list[int], fields: Fields) -> Extra:
            positions = [(batch.partitions[i], batch.offsets[i]) for i in indices]
            values = enricher.features(spec, events, positions, fields)
            self._untimed = enricher.last_untimed  # a held batch enriched again: its last attempt counts
            if not spec.label_keys:
                return spec.output_fields, values
            labels = label_values(spec, self.labels, events, values)  # entity/labels.py
            return spec.all_fields, np.hstack([values, labels])
        return enrich

    def _start_ingester(self) -> None:
        """The label ingester (feedback topic → label store, docs/feedback.md), started with the first
        model that has label features: at start (before the source polls), or on a swap to one (its
        catch-up then stalls that batch: with event-time alignment, whose idle grace is wall time,
        a stall longer than SD_ALIGN_IDLE_MS can release partitions out of order once); labels
        published before are read too (its consumer group starts at the earliest offset)."""
        store = self.labels
        if not self.settings.label_ingest or not isinstance(store, RedisLabels):
            return
        if self.settings.create_topics:
            ensure_topics(self.settings, [self.settings.feedback_topic])
        self.ingester = LabelIngester(self.settings, store, self.metrics.labels_ingested)
        self.ingester.start()
        log.info("label ingester started: topic %s, group %s", self.settings.feedback_topic, self.ingester.group)

    def _abandon(self, batch: Batch) -> None:
        log.warning("group generation changed while a batch of %d events was in flight (evicted?); "
                    "not committing it, rewinding to the group's committed offsets", len(batch))
        self.stats.abandoned_batches += 1
        self.publisher.abandon()
        self.source.rewind_to_committed(batch)

    def _held(self, batch: Batch, exc: StreamDetectorError, first: bool) -> None:
        if first:
            ctx = batch_context(batch, self.scorer)
            log.warning("holding batch of %d events (%s) and pausing partitions: %s", len(batch), ctx["where"], exc,
                        extra=ctx)
        self.stats.held_batches += 1
        self.metrics.held(exc)

    def _load(self, version: str) -> Scorer:
        scorer = Scorer(self.control.fetch_bundle(version), self.settings.device)
        scorer.warm()
        return scorer

    def _load_challenger(self, version: str) -> Scorer:
        """A challenger's scorer; its shadow topic is made first (``SD_CREATE_TOPICS``), else it must
        exist: a challenger whose records could not be delivered would hold the live batches, so it
        is refused instead (``ConfigError``, logged by the shadow slot)."""
        if isinstance(self.control, WorkerView):
            s = self.settings
            if s.create_topics:
                ensure_topics(s, [s.shadow_topic])
            elif not topic_exists(s, s.shadow_topic):
                raise ConfigError(f"shadow topic {s.shadow_topic} does not exist (SD_CREATE_TOPICS=false): "
                                  "create it with `stream-detector topics`")
        return self._load(version)

    def _swapped(self, ok: bool) -> None:
        if ok:
            _freeze_long_lived()  # the old model may sit in the frozen generation: collected here, once
            self.stats.swaps += 1
        else:
            self.stats.swap_failures += 1
        self.metrics.swapped(ok)

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
        if self._untimed:
            self.metrics.entity_untimed.inc(self._untimed)
            self._untimed = 0
        if isinstance(self.labels, RedisLabels):
            self._count_growth("attached_later", self.labels.attached_later,
                               lambda n: self.metrics.labels_ingested("attached_later", n))
        if self.enricher is not None:
            self._count_growth("conflicts", self.enricher.conflicts, self.metrics.entity_conflicts.inc)

    def _count_growth(self, name: str, total: int, add: Callable[[int], None]) -> None:
        """Give ``add`` what a running ``total`` (the enricher's, the label store's) grew by since the
        last time ``name`` was counted."""
        grown = total - self._counted.get(name, 0)
        if grown > 0:
            add(grown)
            self._counted[name] = total
