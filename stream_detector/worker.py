"""The worker: orchestration only. Read the loop in ``run_once`` top to bottom — it is the design.

    1 source   poll a batch (size or deadline); with entity features keyed by a field other than
               the topic's key, the partitions are released in event-time order (pipeline/align.py)
    2 decode   bytes → validated events; bad ones → Rejected(reason)
    3a enrich  per-entity history features of the model's EntitySpec (state in Redis: 2 round trips;
               with write-behind, records held in memory and written once per window: entity/behind.py)
    3 features the shared FeatureSpec of the active model
    4 score    TorchScript per-feature errors
    5 decide   score vs the Redis threshold for that model
    6 publish  alerts + dead letters, wait for every acknowledgement
    7 commit   offsets, only after 6 succeeded (with write-behind entity state, a window of batches
               at a time, after the state is written: entity/behind.py)

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
from collections import Counter
from collections.abc import Callable, Collection, Container, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Concatenate, ParamSpec, TypeVar

import numpy as np
import torch

from .entity import Enricher
from .entity.behind import Flush, WriteBehind, WriteBehindConflict
from .entity.columns import read as read_field
from .entity.labels import InMemoryLabels, LabelStore, RedisLabels, label_values
from .entity.replay_log import FeatureLog
from .entity_spec import EntitySpec
from .errors import ConfigError, DeliveryError, EntityStateUnavailable, StreamDetectorError, TransportError
from .features import CategoricalColumn
from .fieldschema import EventTime
from .hold import BatchHold
from .inputs import DriftCounts, novel_fields
from .label_ingest import LabelIngester
from .metrics import StepTimer, WorkerMetrics, WorkerStatus, batch_context
from .model.bundle import Bundle, watched_fields
from .pipeline.align import AlignedSource
from .pipeline.compute import ChunkedCompute, Computed, Deferred, Enrich, Fields, enrich_reads_columns
from .pipeline.control_link import ControlLink
from .pipeline.decode import Rejected, decode_batch
from .pipeline.publish import build_alerts, build_dead_letters
from .pipeline.repartition import (
    IdleMarks,
    carried_spec,
    forwards,
    idle_marks,
    is_idle_mark,
    marked_rows,
    origin,
    read_carried,
    rest_spec,
    split_buckets,
    stage_problem,
    stage_settings,
    time_marks,
)
from .pipeline.score import Scorer, scores_of
from .pipeline.score_feed import ScoreFeed
from .pipeline.shadow import ModelVerdicts, build_shadow_records, shadow_counts
from .pipeline.threshold import Decision, ModelMismatch, ThresholdCache
from .schema import RESERVED_FIELDS, RejectReason
from .settings import Settings
from .store import ControlPlane, ControlView
from .store.control import WorkerView
from .swap import ModelSwap, ShadowSlot
from .topics import RecordPurge, ensure_topics, missing_topics, topic_exists, topic_partitions
from .transport.base import Batch, Membership, Offsets, OutMessage, Publisher, Source, TopicPartition
from .transport.factory import make_sink, make_source

log = logging.getLogger("stream_detector.worker")
SHARING_CHECK_S = 10.0  # how often a worker under alignment looks whether it shares the topic (_check_sharing)


def _freeze_long_lived() -> None:
    """What is alive now (torch, the model, clients) lives as long as the worker: collect once, then
    move it out of the cyclic GC's reach, so the collections a batch's allocations trigger no longer
    walk it (45k → 58k events/s with kafka-python, 68k → 85k with confluent; RESULTS.md). Called at
    start and after a model swap (one full collection, ~0.1 s, frees the model swapped out)."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class _WindowDropped(Exception):  # noqa: N818 - a signal inside the worker, not an error
    """Writing the open window before a batch could be handled failed, and the window was dropped and
    rewound to the committed offsets: the batch in hand, read after it, is read again too."""


class _Overtaken(Exception):  # noqa: N818 - a signal inside the worker, not an error
    """The consumer group has committed past the batch in hand: another worker handled its events
    (this one was evicted: frozen past its session timeout). The batch and the open window are
    given up unpublished and uncommitted (``Worker._overtaken``)."""


class _AlignFirst(Exception):  # noqa: N818 - a signal inside the worker, not an error
    """A batch polled without event-time alignment met a model that needs it (the threshold's
    model, swapped in to score it): the batch is read again through the alignment step."""


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
    state_flushes: int = 0  # write-behind entity state written, offsets committed after (entity/behind.py)
    sole_owner_batches: int = 0  # batches enriched holding every partition, shared records in the window too
    state_conflicts: int = 0  # flushes that found a record changed by another writer (window read again)
    late_events: dict[str, int] = field(default_factory=dict)  # per entity key: applied late (entity/kernel.py)
    started_at: float = field(default_factory=time.monotonic)
    busy_s: float = 0.0  # seconds in the loop's steps that handled events (``run``; empty polls left out)


def sharing_warning(owned: int, partitions: int, grace_ms: int) -> str | None:
    """The WARNING a worker logs when it aligns in event time with other workers: ``owned`` of the
    input topic's ``partitions`` are its own (others own the rest). At grace 0 (the default) the
    workers take turns about one event at a time (four drained 248 events/s where one drains
    27.9k); above 0 a shared entity's events apply up to the grace out of order and the late-event
    rule clamps them (four at 2 s raised 8,432 alerts where offline scoring raised 2,463;
    ``docs/entity-features.md``, *Several workers*). None when it owns them all or the count is
    unknown (0)."""
    if partitions <= 0 or not 0 < owned < partitions:
        return None
    if grace_ms <= 0:
        return (f"this worker owns {owned} of the input topic's {partitions} partitions, under a model with history "
                "keyed by a field other than the topic's key: the workers apply a shared entity's events in "
                "event-time order by taking turns, about one event per turn (measured: four workers 248 events/s, "
                "one worker 27.9k); run one worker per group for such a model, or two stages through a repartition "
                "topic (SD_STAGE; docs/operations.md, 'Partitions and workers')")
    return (f"this worker owns {owned} of the input topic's {partitions} partitions, under a model with history "
            f"keyed by a field other than the topic's key: with SD_ALIGN_PEER_GRACE_MS={grace_ms} an entity shared "
            "with the other workers' partitions sees its events up to that far out of order, the late-event rule "
            "clamps them, and its features and alerts differ from offline scoring, the more the denser its events "
            "(measured: four workers at 2000 ms raised 3.4 times offline's alerts on a dense backlog); run one worker "
            "per group for such a model, two stages through a repartition topic (SD_STAGE), or "
            "SD_ALIGN_PEER_GRACE_MS=0 (exact, about one event per turn) (docs/operations.md, "
            "'Partitions and workers')")


class _OncePerModel:
    """What ``AbsentFields``, ``NovelValues`` and ``MissingShares`` share: a warning decided once per
    model from the first events it scores (``wants`` until decided; ``_new_model`` when another
    model scores)."""

    def __init__(self) -> None:
        self._version: str | None = None
        self._looked = 0
        self._done = True

    def wants(self, version: str) -> bool:
        """Whether ``observe`` still looks at model ``version``'s events (False once it decided)."""
        return version != self._version or not self._done

    def _new_model(self, version: str, watching: bool) -> None:
        self._version, self._looked, self._done = version, 0, not watching


class AbsentFields(_OncePerModel):
    """Says once per model when some of its input fields are absent from the events it scores:
    events of another producer or schema. A new-user trial streamed the Handbook's raw card events
    to a model trained with velocity fields: every event alerted and nothing said why (each absent
    field is scored as a missing value: the training median, or the most frequent category, which a model that
    rarely or never saw it missing can read as unusual).

    ``observe`` looks at up to ``LOOK`` scored events of each batch (one key lookup per field
    each) and keeps the fields absent from all of them; once ``ENOUGH`` events have been looked
    at (one batch of a backlog, or many small live ones) it returns the warning when some are
    still absent, and stops looking either way. The worker watches the model's input fields
    except those it was trained to see missing (``watched_fields``): a field a training set often
    left out is no sign of another producer (a second trial)."""

    LOOK, ENOUGH = 64, 32

    def __init__(self) -> None:
        super().__init__()
        self._absent: set[str] = set()

    def observe(self, version: str, fields: Sequence[str], events: Sequence[dict[str, Any]],
                known: Collection[str] = (), trained_time: str | None = None) -> str | None:
        """The warning, once, for model ``version`` watching input ``fields``, given a batch's
        scored ``events``; ``known``: every field of the model's schema (the hint names the first
        event's other fields, those the model does not know); ``trained_time``: the column ``train``
        read the event time from (``--timestamp-column``, the bundle's ``training_timestamp_column``),
        named when ``timestamp`` is absent and the events carry it."""
        if version != self._version:
            self._new_model(version, bool(fields))
            self._absent = set(fields)
        if self._done or not len(events):
            return None
        for k in range(min(self.LOOK, len(events))):
            event = events[k]
            self._absent = {name for name in self._absent if name not in event}
            self._looked += 1
        if self._absent and self._looked < self.ENOUGH:
            return None
        self._done = True
        if not self._absent:
            return None
        names = sorted(self._absent)
        shown = ", ".join(repr(name) for name in names[:7]) + (f" and {len(names) - 7} more" if len(names) > 7 else "")
        verb = "is" if len(names) == 1 else "are"
        # what they carry instead (a trial: camelCase); a trial saw the hint name fields the model knows
        own = sorted(set(events[0]) - set(fields) - set(known) - RESERVED_FIELDS)
        theirs = (f" (the first carries {', '.join(repr(name) for name in own[:7])}"
                  f"{', ...' if len(own) > 7 else ''})" if own else "")
        return (f"model {version}: {len(names)} of its input fields {verb} absent from every one of the first "
                f"{self._looked} events it scored: {shown}{theirs}. Each is scored as a missing value (the training "
                "median, or the most frequent category): the field no longer tells anything, so its part of an anomaly "
                "goes unseen (fewer alerts), and a model that rarely or never saw it missing can read the rest as "
                "unusual (more alerts): alerts are not what the threshold was calibrated for. Are these events of the "
                f"model's own producer and schema? (`stream-detector model show {version}` lists the model's "
                "fields; train on events of this stream's shape)" + (
                    f" The model was trained with --timestamp-column {trained_time}, which these events carry: send "
                    f"it as timestamp (stream-detector produce --timestamp-column {trained_time} does)"
                    if trained_time and "timestamp" in self._absent and trained_time in events[0] else ""))


class NovelValues(_OncePerModel):
    """Says once per model when a category field's values are, far more often than in training,
    values training did not keep (``CategoricalColumn.categories``): a producer's new value (a new
    ``channel``), which each event carrying it is scored as (the ``__other__`` column) and which
    the model may read as very unusual (``inputs.novel_values_warning``: the rule, and the trials
    that found it; ``inputs.novel_fields``: the fields watched).

    ``observe`` looks at up to ``LOOK`` scored events of each batch until ``ENOUGH`` (one batch of
    a backlog, or many small live ones), then says the warning or nothing, and stops looking.
    ``score`` says the same of a file (``inputs.file_warnings``)."""

    LOOK = ENOUGH = 1024

    def __init__(self) -> None:
        super().__init__()
        self._counts = DriftCounts()

    def observe(self, version: str, columns: Sequence[CategoricalColumn], events: Sequence[dict[str, Any]],
                redacted: Container[str] = ()) -> str | None:
        """The warning, once, for model ``version`` with category ``columns``, given a batch's
        scored ``events``; ``redacted``: fields whose values are never shown."""
        if version != self._version:
            self._counts = DriftCounts(columns=novel_fields(columns))
            self._new_model(version, bool(self._counts.columns))
        if self._done or not len(events):
            return None
        self._counts.add(events[k] for k in range(min(self.LOOK, len(events))))
        if self._counts.looked < self.ENOUGH:
            return None
        self._done = True
        return self._counts.novel_warning(f"the first {self._counts.looked:,} events model {version} scored",
                                          redacted)


class MissingShares(_OncePerModel):
    """Says once per model when its input fields are missing (absent, null, empty) in the first
    ``ENOUGH`` events it scores far more often than in its training
    (``inputs.missing_share_warning``: the rule and why), leaving out the fields missing from every
    one of them that ``AbsentFields`` watches (it says those). Only a spec of format 3 or later records
    training's shares; an older one is not watched."""

    LOOK = ENOUGH = 1024

    def __init__(self) -> None:
        super().__init__()
        self._counts = DriftCounts()
        self._absent_said: frozenset[str] = frozenset()

    def observe(self, bundle: Bundle, events: Sequence[dict[str, Any]]) -> str | None:
        """The warning, once, for ``bundle``'s model, given a batch's scored ``events``."""
        if bundle.version != self._version:
            self._counts = DriftCounts.of(bundle.spec, bundle.schema, novel=False)
            self._absent_said = frozenset(watched_fields(bundle))
            self._new_model(bundle.version, bool(self._counts.fields))
        if self._done or not len(events):
            return None
        counts = self._counts
        counts.add(events[k] for k in range(min(self.LOOK, self.ENOUGH - counts.looked, len(events))))
        if counts.looked < self.ENOUGH:
            return None
        self._done = True
        return counts.missing_warning(f"the first {counts.looked:,} events model {self._version} scored",
                                      counts.everywhere() & self._absent_said,
                                      f"`stream-detector model show {self._version}`")


class MostlyDeadLetters(_OncePerModel):
    """Says once per model when at least half of the first ``ENOUGH`` events it received were dead
    letters: events of another contract (no ``event_id``, another format), each with its reason on
    the dead-letter topic, which an operator tailing the log did not see (trial O: raw Handbook
    events without ``event_id``, all 500 dead-lettered, no log line). The warning gives the counts
    per reason and the first one's message, and names ``train``'s ``--id-column``
    (``training_id_column``) when ``event_id`` is what is missing."""

    ENOUGH = 256

    def __init__(self) -> None:
        super().__init__()
        self._reasons: Counter[str] = Counter()
        self._first = ""

    def observe(self, bundle: Bundle, events: int, rejected: Sequence[Rejected]) -> str | None:
        """The warning, once, for ``bundle``'s model, given a batch of ``events`` received and its
        ``rejected`` ones."""
        if bundle.version != self._version:
            self._reasons, self._first = Counter(), ""
            self._new_model(bundle.version, True)
        if self._done or not events:
            return None
        self._looked += events
        self._reasons.update(r.reason.value for r in rejected)
        if rejected and not self._first:
            self._first = rejected[0].message
        if self._looked < self.ENOUGH:
            return None
        self._done = True
        dead = sum(self._reasons.values())
        if 2 * dead < self._looked:
            return None
        counts = ", ".join(f"{reason} {n:,}" for reason, n in self._reasons.most_common())
        trained = bundle.metadata.get("training_id_column")
        hint = (f". The model was trained with --id-column {trained}: send it as event_id (stream-detector produce "
                f"--id-column {trained} does)" if isinstance(trained, str) and self._reasons["missing_event_id"]
                else "")
        return (f"model {self._version}: {dead:,} of the first {self._looked:,} events received were dead letters "
                f"({counts}; each with its reason on the dead-letter topic); the first: {self._first}{hint}")


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
    LATE_SHARE = 0.01  # a period's late events (per key) above this share of its events: warned

    def __init__(self, stats: WorkerStats, every_s: float, peer_wait: Callable[[], float] = lambda: 0.0,
                 peer_cut: Callable[[], int] = lambda: 0, forwards: bool = False,
                 waiting: Callable[[], str | None] = lambda: None,
                 labels: Callable[[], int | None] = lambda: None) -> None:
        self.stats, self.every_s, self.peer_wait, self.peer_cut = stats, every_s, peer_wait, peer_cut
        # the label ingester's records read so far (None: no ingester): a trial saw labels taken
        # only by asking `lag feedback`, the log said "caught up: 0 labels" at the start and no more
        self.labels = labels
        self.labels_seen = labels() or 0
        self.forwards = forwards  # stage 1 (SD_STAGE=repartition): it forwards events, it never alerts
        self.waiting = waiting  # stage 2: what it holds records for, said when a period handled none
        self.since = time.monotonic()
        self.seen = (0, 0, 0, 0)
        self.waited, self.cut = peer_wait(), peer_cut()
        self.late: dict[str, int] = {}  # stats.late_events at the last line

    def maybe_log(self, now: float) -> None:
        if not self.every_s or now - self.since < self.every_s:
            return
        s = self.stats
        events, alerts, rejected = s.events - self.seen[0], s.alerts - self.seen[1], s.rejected - self.seen[2]
        batches = s.batches - self.seen[3]
        period = now - self.since
        # a wait that began in the last period is counted when it ends: at most this period's length
        # (a trial read "waited 11 of the last 10 s")
        waited = min(self.peer_wait() - self.waited, period)
        cut = self.peer_cut() - self.cut
        if events and self.forwards:
            log.info("forwarded %d events to the repartition topic in the last %.0f s (%.0f/s), %d dead letters; "
                     "since start %d events, %d dead letters", events, period, events / period, rejected, s.events,
                     s.rejected)
        labels_now = self.labels()
        new_labels = 0 if labels_now is None else labels_now - self.labels_seen
        read = "" if labels_now is None else (f"{new_labels} labels read from the feedback topic "
                                              f"({labels_now} since start)")
        self.labels_seen = labels_now or 0
        if events and not self.forwards:
            log.info("handled %d events in the last %.0f s (%.0f/s): %d alerts, %d dead letters; since start %d "
                     "events, %d alerts, %d dead letters%s", events, period, events / period,
                     alerts, rejected, s.events, s.alerts, s.rejected, f"; {read}" if read else "")
        elif new_labels:  # labels arrived in a period with no event
            log.info("%s in the last %.0f s", read, period)
        why = self.waiting() if not events else None
        if why:
            log.info(why)
        small_turns = (batches >= self.TURN_BATCHES and cut > batches / 2
                       and events < self.SMALL_BATCH * batches)
        if waited > 0.5 * period or small_turns:  # several workers taking turns in event time
            how = (f"waited {waited:.0f} of the last {period:.0f} s for other workers' partitions to catch up "
                   "in event time" if waited > 0.5 * period else
                   f"{cut} of the last {batches} batches ({events / batches:.1f} events each) stopped at other "
                   "workers' partitions in event time")
            log.warning("%s: workers sharing entity state take turns in event time, so fewer workers drain it "
                        "faster, one per group fastest and exact (a larger SD_ALIGN_PEER_GRACE_MS is faster but "
                        "gives features and alerts that differ from offline scoring); a worker that stopped "
                        "responding holds the others until the group drops it, ~10 s (docs/operations.md, "
                        "'Partitions and workers')", how)
        late = {k: n - self.late.get(k, 0) for k, n in s.late_events.items()}
        many = {k: n for k, n in late.items() if events and n > self.LATE_SHARE * events}
        if many:
            log.warning("%s of the %d events of the last %.0f s came earlier in event time than their entity's last "
                        "event and were applied at its time (late), so their history features are not the ones "
                        "offline scoring of the time-ordered events gives; with several workers or two stages this "
                        "is the event-time alignment letting a partition fall behind (docs/entity-features.md, "
                        "'Time, late and out-of-order events'; metric stream_detector_entity_late_events_total)",
                        ", ".join(f"{n} of {k}" for k, n in sorted(many.items())), events, period)
        self.since, self.seen = now, (s.events, s.alerts, s.rejected, s.batches)
        self.waited, self.cut = self.peer_wait(), self.peer_cut()
        self.late = dict(s.late_events)


P = ParamSpec("P")
R = TypeVar("R")


def _windowed(method: Callable[Concatenate[Worker, P], R]) -> Callable[Concatenate[Worker, P], R]:
    """Run a method that changes the open write-behind window under the worker's ``_window_lock``
    (the rebalance hook ``Worker._revoking`` may run on the Kafka client's thread)."""
    def locked(self: Worker, /, *args: P.args, **kwargs: P.kwargs) -> R:
        with self._window_lock:
            return method(self, *args, **kwargs)
    locked.__doc__, locked.__name__ = method.__doc__, method.__name__
    return locked


def _positions(batch: Batch, rows: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ``(partitions, offsets)`` of ``batch``'s records ``rows`` as two int64 arrays: the entity
    step's event ids (``entity.enrich.Positions``), without a tuple per event."""
    at = np.asarray(rows, dtype=np.int64)
    return np.asarray(batch.partitions, dtype=np.int64)[at], np.asarray(batch.offsets, dtype=np.int64)[at]


@dataclass(slots=True)
class _InFlight:
    """A write-behind window being written on the worker's writer thread: the flush, the window's
    offsets (committed once it has landed) and the membership they were read under."""

    flush: Flush
    offsets: Offsets
    group: Membership | None


class Worker:
    """One consumer-group member running steps 1-7 (``run_once``) until stopped.

    Collaborators (each replaceable, e.g. by the in-memory ones in unit tests): ``control`` the
    read-only control-plane view (default: Redis from ``settings``), ``source`` and ``publisher``
    the transport (default: ``SD_TRANSPORT``/``SD_DELIVERY``). Raises from ``run``/``run_once``
    only what is not retriable; retriable failures hold the batch (``hold.py``).
    """

    def __init__(self, settings: Settings, control: ControlView | None = None,
                 source: Source | None = None, publisher: Publisher | None = None) -> None:
        self.carried_key = settings.entity_partition_key  # two stages (SD_STAGE): stage 1 computes it, 2 reads it
        self.source_topic = settings.input_topic  # ... and the topic stage 1 reads
        self._assignment = settings.assignment  # as configured: the label ingester's (stage 2's source is eager)
        self.settings = settings = stage_settings(settings)  # stage 1: its own group; 2: the repartition topic
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
        self._align_checked = ""  # the model version alignment was last decided for (_check_alignment)
        self._sharing_at = float("-inf")  # when _check_sharing last looked at the assignment
        self._sharing_warned = False
        self._sharing_assigned = False  # whether _check_sharing's last look found partitions assigned
        self._delivered_by = ""  # the model version that scored the last batch delivered (_first_delivered)
        self._entity_spec = ""  # the entity spec fingerprint of the model alignment was last decided for
        self.ingester: LabelIngester | None = None  # feedback topic → label store, started in start()
        self.labels: LabelStore = InMemoryLabels(())  # the label store (start(): the control plane's)
        self._counted: dict[str, int] = {}  # running totals of the enricher and label store, as counted in metrics
        self._untimed = 0  # the current batch's events without a usable timestamp (its last enrich attempt)
        self._late: dict[str, int] = {}  # the current batch's late events per key (its last enrich attempt)
        self._shadow_counts: tuple[str, dict[str, int]] | None = None  # the batch in hand's, until committed
        self.behind: WriteBehind | None = None  # write-behind entity state (SD_ENTITY_PARTITION_KEY), start()
        self._sole_assigned: frozenset[int] = frozenset()  # the assignment ``_holds_every_partition`` last saw
        self._sole_total = 0  # ... and the input topic's partition count then
        self.replay_log: FeatureLog | None = None  # a shared key's features until committed, read always
        self._log_writes = False  # and written by this worker (write-behind with SD_ENTITY_REPLAY_LOG)
        self._pending: Offsets = {}  # with write-behind: offsets delivered, not committed yet (the window)
        self._pending_group: Membership | None = None
        self._behind_group: Membership | None = None  # the membership of the last batch accepted into the window
        self._flushed_at = time.monotonic()
        self._flush_failed_at = -1e9
        # the open window (_pending, the write-behind records) is changed under this lock: the rebalance
        # hook may run on the client's thread while this one computes (kafka-python 3's listeners)
        self._window_lock = threading.RLock()
        self._taken = False  # partitions were revoked or lost with the window uncommitted (_revoking)
        self._flush: _InFlight | None = None  # a window being written on the writer thread (_start_flush)
        self._inflight_done: _InFlight | None = None  # ... written, its commit in hand (_land_flush)
        self._writer: ThreadPoolExecutor | None = None  # that thread (SD_ENTITY_FLUSH_ASYNC), started with the first
        self._drops = 0  # windows dropped and read again (_drop_window)
        self._specs: dict[tuple[str, str], EntitySpec | None] = {}  # per (model version, stage): _spec_of
        self._upstream = 0  # two stages: the input topic's partitions (the repartition topic has buckets × these)
        self._idle_marks = IdleMarks(settings.align_idle_ms / 1000.0)  # stage 1: partitions owed an idle mark
        self._purge: RecordPurge | None = None  # stage 2: deletes the repartition topic's consumed records
        self._standby_said = False  # the progress line said that no partition is assigned (_idle_reason)
        self._absent = AbsentFields()  # warns once per model when its input fields are absent from the events
        self._novel = NovelValues()  # ... and when its category fields carry values training did not keep
        self._missing = MissingShares()  # ... and when its input fields are missing far more often than in training
        self._dead = MostlyDeadLetters()  # ... and when most of the events it receives are dead letters
        self._asked_ends = float("-inf")  # stage 1: when the broker was last asked for the input's ends
        self._carried: tuple[list[str], np.ndarray] | None = None  # stage 2: the batch's carried features

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
        from .model.bundle import device_problem

        problem = device_problem(self.settings.device)  # a trial: torch's RuntimeError loading the model, exit 1
        if problem is not None:
            raise ConfigError(f"SD_DEVICE={self.settings.device}: {problem}")
        self.metrics.attach(self.status, self.source.highwaters)
        if self.settings.scoring_threads:
            torch.set_num_threads(self.settings.scoring_threads)
        if not self.settings.create_topics and isinstance(self.control, WorkerView):
            self._check_topics()
        if self.settings.stage != "whole":
            self._start_stage()  # the repartition topic first: stage 2's input, made with its partition count
        if self.settings.create_topics:
            ensure_topics(self.settings, [self.settings.input_topic, self.settings.alerts_topic,
                                          self.settings.dlq_topic])
        scorer = self.models.start(self.control.active_bundle().version)
        self.shadow.start(self.control.snapshot().challenger, scorer.version)  # a challenger in shadow, if any
        entity = self._spec_of(scorer.bundle)
        self._check_alignment(scorer.bundle, at_start=True)  # 1½ align (pipeline/align.py)
        store = inner = self.control.entity_state(self.settings.entity_copies)
        key = self.settings.entity_partition_key
        # read whatever the settings: a predecessor that crashed with its window uncommitted logged what
        # this worker reads again (a trial: a successor restarted with the log off raised 2.7x the alerts)
        self.replay_log = self.control.replay_log(self.settings.input_topic, inner)
        if key and self.settings.entity_flush_ms > 0 and not self.publisher.transactional:
            store = self.behind = WriteBehind(inner, key, max(self.settings.entity_copies, 100_000))
            self._log_writes = self.settings.entity_replay_log
            if entity is not None and key in entity.keys and entity.shared_keys(key) and not self._log_writes:
                log.info("entity state: %s (the input topic's key) and %s read and written with every batch, "
                         "offsets committed after every batch (history shared across partitions and "
                         "SD_ENTITY_REPLAY_LOG=false: no write-behind window, so a crash replays one batch exactly)",
                         key, ", ".join(entity.shared_keys(key)))
            elif entity is not None and key in entity.keys and entity.shared_keys(key):
                log.info("entity state: write-behind for %s (the input topic's key), written and committed every "
                         "%d ms%s; %s written with every batch, its features logged until the commit so that a crash "
                         "replays the window exactly (SD_ENTITY_REPLAY_LOG)", key, self.settings.entity_flush_ms,
                         self._how_written(), ", ".join(entity.shared_keys(key)))
            elif entity is not None and key in entity.keys:
                log.info("entity state: write-behind for %s (the input topic's key), written and committed every "
                         "%d ms%s (SD_ENTITY_PARTITION_KEY, SD_ENTITY_FLUSH_MS)", key, self.settings.entity_flush_ms,
                         self._how_written())
            elif entity is not None:
                log.info("entity state: the model's history is keyed by %s, not by the topic's key %s "
                         "(SD_ENTITY_PARTITION_KEY): its records are shared across partitions, so they are written "
                         "on every batch (no write-behind; nothing to change)", ", ".join(entity.keys), key)
        elif key and entity is not None and self.settings.entity_flush_ms > 0:
            log.info("entity state: written on every batch (write-behind is off with SD_DELIVERY=exactly_once)")
        self.enricher = Enricher(store)
        self.enricher.defer_miss_warnings = True  # said once _overtaken has kept the batch (``_enrich_for``)
        self.enricher.keep_replay_log(self.replay_log, key or None, write=False)  # written in windows: _enrich_for
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
        if self.behind is not None:
            self.source.on_revoke = self._revoking
            self.source.on_revoke_done = self._revoke_done
        self.source.start()
        _freeze_long_lived()
        log.info("worker started: model %s, topic %s, group %s", scorer.version,
                 self.settings.input_topic, self.settings.group_id,
                 extra={"model_version": scorer.version, "topic": self.settings.input_topic,
                        "group": self.settings.group_id})

    def _check_sharing(self, now: float) -> None:
        """``sharing_warning`` once each time this worker comes to share its topic with others
        under alignment, or (stage 2) holds part of a bucket: looked at every ``SHARING_CHECK_S`` at
        most (the assignment call is cheap, not free), every second while nothing is assigned yet
        (a trial's short run ended before the first look that found its partitions)."""
        source = self.source
        stage2 = self.settings.stage == "repartitioned"
        every = SHARING_CHECK_S if self._sharing_assigned else 1.0  # not joined yet: look again soon
        if not isinstance(source, AlignedSource) or (source.peers is None and not stage2) \
                or now - self._sharing_at < every:
            return
        self._sharing_at = now
        assigned = source.assignment()
        self._sharing_assigned = bool(assigned)
        if stage2:
            warning = self._split_warning(assigned)
        else:
            warning = sharing_warning(len(assigned), getattr(source.peers, "partitions", 0),
                                      self.settings.align_peer_grace_ms)
        if warning and not self._sharing_warned:
            log.warning(warning)
        self._sharing_warned = warning is not None

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
                             lambda: self.source.peer_cut_batches if isinstance(self.source, AlignedSource) else 0,
                             forwards=self.settings.stage == "repartition", waiting=self._idle_reason,
                             labels=lambda: None if self.ingester is None else self.ingester.stats.labels)
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
        if self._window_open():  # the delivered batches' state and offsets, as on every flush
            try:
                self._flush_and_commit(idle=True)
            except Exception:  # noqa: BLE001 - closing anyway: the window is read again by whoever owns it next
                log.warning("closing with a window of batches uncommitted: they will be read again", exc_info=True)
        if self._writer is not None:
            self._writer.shutdown(wait=True)
        self.source.close()
        self.publisher.close()
        if self._purge is not None:
            self._purge.close()
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

    def _check_alignment(self, bundle: Bundle, at_start: bool = False) -> None:
        """Step 1½, event-time alignment (pipeline/align.py), for the active model: ``on`` turns it on
        at start; ``auto`` turns it on at start or at the hot swap to a model whose history has a
        key other than the one the topic is keyed by (``EntitySpec.shared_keys``: such an entity's events
        come from several partitions, so its features would depend on how they interleave). Once
        on, it stays on until the worker restarts (a swap back only logs it). ``off`` with such a
        model logs a WARNING."""
        effective = self._spec_of(bundle)
        spec = effective.fingerprint if effective is not None else ""
        if not at_start and spec and self._entity_spec and spec != self._entity_spec:  # a trial compared whole files
            log.info("model %s has another entity spec than the model before it: its history is the state kept "
                     "for that spec (empty unless a worker ran a model with the same spec), not the history built "
                     "so far (docs/entity-features.md)", bundle.version)
        self._entity_spec = spec
        mode = self.settings.align_event_time
        shared = self._shared_keys(bundle)
        if isinstance(self.source, AlignedSource):
            self._align_to(bundle)
            self._align_checked = bundle.version
            if not shared and mode == "auto":
                log.info("event-time alignment stays on until the worker restarts (model %s has no history "
                         "keyed by a field other than the topic's key)", bundle.version)
            return
        if not self._needs_aligning(bundle):
            self._align_checked = bundle.version
            if shared:
                log.warning("SD_ALIGN_EVENT_TIME=off with model %s, whose history is keyed by %s: those entities' "
                            "events come from several partitions, so their features depend on how the partitions "
                            "interleave and differ from offline scoring (docs/entity-features.md"
                            "#event-time-alignment)", bundle.version, ", ".join(shared))
            return
        if not at_start and self.hold.active:
            if self.hold.in_doubt:  # settled first (read again from the committed offsets), turned on after
                return
            assert self.hold.batch is not None
            self._read_again_aligned(self.hold.batch, "held at the swap to", bundle.version)
        peers = None if self.settings.stage == "repartitioned" else self.control.watermarks(  # stage 2: whole buckets
            self.settings.group_id, self.settings.input_topic, self.settings.align_peer_grace_ms,
            self.settings.align_peer_stale_ms, self._input_partitions())
        self.source = AlignedSource(self.source, self.settings.batch_size, self.settings.align_idle_ms,
                                    self.settings.align_max_buffered or None, peers=peers,
                                    max_jump_ms=self.settings.align_max_jump_ms,
                                    idle_mark=is_idle_mark if self.settings.stage == "repartitioned" else None)
        self.source.enabled = True
        self._align_to(bundle)
        self.hold.source = self.source
        self._align_checked = bundle.version
        if self.settings.stage == "repartitioned":
            log.info("event-time alignment on (stage 2): each bucket's %d partitions merged in event time, each "
                     "waiting for stage 1's marks (a quiet partition is idle only on its idle mark); max jump %d ms",
                     self._upstream, self.settings.align_max_jump_ms)
            return
        why = "SD_ALIGN_EVENT_TIME=on" if mode == "on" else (
            f"auto: model {bundle.version} has history keyed by {', '.join(shared)}, not only by the topic's key "
            f"{self.settings.entity_partition_key or '(none set: SD_ENTITY_PARTITION_KEY)'}")
        log.info("event-time alignment on (%s%s): idle %d ms, max jump %d ms, across workers grace %d ms, "
                 "stale %d ms", why, "" if at_start else ", turned on at the model swap", self.settings.align_idle_ms,
                 self.settings.align_max_jump_ms, self.settings.align_peer_grace_ms, self.settings.align_peer_stale_ms)

    def _first_delivered(self, version: str, batch: Batch) -> None:
        """Log where a model's first delivered batch starts, per partition (where a swap took effect:
        a trial could not tell which events the new model scored)."""
        starts: dict[int, int] = {}
        for p, o in zip(batch.partitions, batch.offsets, strict=True):
            if o < starts.get(p, o + 1):
                starts[p] = o
        if not starts:  # stage 2: a batch of stage 1's marks alone
            return
        log.info("model %s: first batch %s and delivered, %s from %s", version,
                 "forwarded" if self.settings.stage == "repartition" else "scored", batch.topic,
                 " ".join(f"{p}@{o}" for p, o in sorted(starts.items())))
        self._delivered_by = version

    def _shared_keys(self, bundle: Bundle) -> tuple[str, ...]:
        entity = self._spec_of(bundle)
        if self.settings.stage == "repartitioned":
            return ()  # every entity of its keys is in whole buckets, which this worker aligns itself
        # a topic found not keyed by SD_ENTITY_PARTITION_KEY: that key's entities are shared across partitions too
        key = "" if self.behind is not None and self.behind.unkeyed else self.settings.entity_partition_key
        return entity.shared_keys(key) if entity is not None else ()

    def _needs_aligning(self, bundle: Bundle) -> bool:
        """True when ``bundle`` needs event-time alignment (``_check_alignment``) and it is not on yet."""
        mode = self.settings.align_event_time
        return not isinstance(self.source, AlignedSource) and (
            mode == "on" or (mode == "auto" and bool(self._shared_keys(bundle))))

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
        if self._align_checked != self.models.require().version:  # swapped to this model
            self._check_alignment(self.models.require().bundle)
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
        self._check_sharing(time.monotonic())  # also while it receives nothing (its peers may drain it all)
        if not len(batch):
            if self.hold.active:  # every held partition moved to another worker
                self.hold.release()
            elif self._window_open():
                self._flush_and_commit(due_only=True, idle=True)  # a quiet stream still commits its last window
            elif self.settings.stage == "repartition":
                self._mark_idle()
            return 0
        try:
            self.handle(batch)
        except StreamDetectorError as exc:
            if not exc.retriable:
                raise
            self.hold.hold(batch, exc)  # retry by flag: pause, keep membership, try again later
            return 0
        except _WindowDropped:
            self.stats.abandoned_batches += 1
            self._read_again(batch)
            return 0
        except _Overtaken as exc:  # not this worker's any more: nothing of it written, published or committed
            self.stats.abandoned_batches += 1
            self.publisher.abandon()
            self.source.rewind_to_committed(self._drop_window(batch))
            self._rejoin(exc.args[0])
            return 0
        except _AlignFirst:
            self._read_again_aligned(batch, "met", self.models.require().version)
            self._check_alignment(self.models.require().bundle)
            return 0
        if self.hold.active:
            self.hold.release()
        return len(batch)

    def handle(self, batch: Batch) -> None:
        if self.behind is not None and self._window_moved(batch):
            return
        if self.settings.stage == "repartition":
            self._forward(batch)
            return
        if self.settings.stage == "repartitioned":
            marks = marked_rows(batch.headers)  # stage 1's marks: read by the alignment, committed, not events
            batch = batch.without(marks)
            if not len(batch):
                self._deliver(batch, self.models.require(), [])
                return
        scorer, done, decision = self._score_and_decide(batch)  # 2 decode … 5 decide, one model
        events, indices, rejected = done.events, done.indices, done.rejected
        self.link.observe(scorer, decision.scores)  # drift summaries: one bincount per batch
        rows = decision.rows
        shown = origin(batch) if self.settings.stage == "repartitioned" else batch  # where the events came from
        self.feed.observe(events, decision.scores, rows, decision.threshold, shown.timestamps, indices,
                          decision.probability)  # sample (with the head's probability when there is one)
        if self._absent.wants(scorer.version):
            schema = scorer.bundle.schema
            trained_time = scorer.bundle.metadata.get("training_timestamp_column")
            absent = self._absent.observe(scorer.version, watched_fields(scorer.bundle), events,
                                          [rule.name for rule in schema.fields] if schema is not None else (),
                                          trained_time if isinstance(trained_time, str) else None)
            if absent:
                log.warning("%s", absent)
        if self._novel.wants(scorer.version):
            novel = self._novel.observe(scorer.version, scorer.bundle.spec.categorical, events,
                                        self.settings.redacted_fields)
            if novel:
                log.warning("%s", novel)
        if self._dead.wants(scorer.version):
            mostly = self._dead.observe(scorer.bundle, len(batch), rejected)
            if mostly:
                log.warning("%s", mostly)
        if self._missing.wants(scorer.version):
            missing = self._missing.observe(scorer.bundle, events)
            if missing:
                log.warning("%s", missing)
        with self.steps.time("explain"):  # the alerts' top_features and head_top_features
            per_column = done.per_feature[rows]
            field_errors = scorer.field_errors(per_column)
            alerted_x = done.feature_rows(rows) if len(rows) else None  # the alerted rows' features
            head_names, head = (scorer.head_attributions(alerted_x)  # why the head said fraud
                                if scorer.supervised and alerted_x is not None else (None, None))
            why = (scorer.why(alerted_x, decision.scores[rows], decision.threshold.value, self.settings.top_features,
                              per_column, self.settings.why_candidates)
                   if alerted_x is not None and self.settings.why_candidates else None)
        alerts = build_alerts(shown, events, indices, decision, field_errors, scorer.fields,
                              self.settings.top_features, self.settings.alerts_topic, self.settings.redacted_fields,
                              head, why, head_names)
        self.metrics.decided(shown, indices, rows)  # latency from the record in the input topic
        dead = build_dead_letters(batch, rejected, self.settings.dlq_topic)
        shadow = self._shadow(shown, done, decision)  # a challenger's would-be alerts: shadow records
        if self._deliver(batch, scorer, alerts + dead + shadow):
            self._count(batch, len(events), len(alerts), rejected)
            self._shadow_counted()

    def _forward(self, batch: Batch) -> None:
        """Stage 1 (``SD_STAGE=repartition``, ``pipeline/repartition.py``) in place of steps 3-5:
        decode, the input key's history, and every valid event forwarded to the repartition topic
        with those features; rejections to the dead-letter topic; then steps 6-7 as ever (one
        transaction)."""
        scorer = self.models.require()
        spec = self._spec_of(scorer.bundle)
        assert spec is not None and self.enricher is not None  # _start_stage refused the model otherwise
        with self.steps.time("decode"):
            decoded = decode_batch(batch.values, self.settings.max_event_bytes, 0, scorer.bundle.schema)
        if spec.label_keys and self.ingester is None:
            self._start_ingester()
        with self.steps.time("enrich"):
            values = self.enricher.features(spec, decoded.events, _positions(batch, decoded.indices), decoded.columns)
            self.enricher.warn_misses()  # stage 1 keeps every batch it enriches: said at once (no _overtaken here)
            if spec.label_keys:  # the input key's label features travel with its history (``spec.all_fields``)
                values = np.hstack([values, label_values(spec, self.labels, decoded.events, values,
                                                         scorer.bundle.entity)])
        self._untimed = self.enricher.last_untimed
        self._late = dict(self.enricher.last_late)
        s = self.settings
        out = forwards(batch, decoded.indices, read_field(decoded.events, s.repartition_key, decoded.columns), values,
                       spec.fingerprint, s.repartition_topic_name, self._upstream, s.repartition_buckets)
        now = time.monotonic()
        self._idle_marks.seen(set(batch.partitions), now)
        idle = self._idle_due(now)
        marks = time_marks(out, s.repartition_topic_name, self._upstream, s.repartition_buckets) + \
            idle_marks(idle, s.repartition_topic_name, self._upstream, s.repartition_buckets)
        if self._deliver(batch, scorer, out + marks + build_dead_letters(batch, decoded.rejected, s.dlq_topic)):
            self._idle_marks.sent(idle, now)
            self._marked(idle)
            self._count(batch, len(out), 0, decoded.rejected)

    def _idle_reason(self) -> str | None:
        """For the progress line of a period that handled nothing: why, when the worker knows —
        stage 2 waiting for a stage-1 worker's marks (``_waiting_for_marks``), or no partition
        assigned (said once until partitions come and go again: a worker that joins a group with
        as many members as partitions, e.g. a third stage-1 worker on a two-partition topic, said
        nothing but "assigned" lines of others; a new-user trial)."""
        marks = self._waiting_for_marks()
        if marks:
            return marks
        if self.source.assignment():
            self._standby_said = False
            return None
        if self._standby_said:
            return None
        self._standby_said = True
        s = self.settings
        count = ""
        if isinstance(self.control, WorkerView):  # the real broker: one metadata call, once per standby
            try:
                count = f" ({topic_partitions(s, s.input_topic)})"
            except Exception:  # noqa: BLE001 - the line says it without the count
                count = ""
        # both causes: the broker does not say which (a trial, 2026-12-06: every restart after a kill -9 read
        # as "too many workers" for the seconds the dead member's session still held the partitions)
        return (f"no partition of {s.input_topic} is assigned to this worker: either its consumer group "
                f"{s.group_id} is still rebalancing (a member that stopped without leaving, e.g. killed, keeps its "
                "partitions until its session times out, 10 s), or the group has at least as many members as the "
                f"topic has partitions{count}, and this one stands by until a member leaves or the topic gets more "
                "partitions")

    def _waiting_for_marks(self) -> str | None:
        """Stage 2, for the progress line of a period that handled nothing: the records it holds in
        event-time order and the partition of the repartition topic they wait for (its stage-1
        worker behind or down: a new-user trial's worker sat silent); None when it holds none."""
        source = self.source
        if self.settings.stage != "repartitioned" or not isinstance(source, AlignedSource) \
                or not source.held_back or source.holding is None or not self._upstream:
            return None
        p = source.holding
        return (f"stage 2 holds {source.held_back} records in event-time order, waiting for partition {p} of "
                f"{self.settings.input_topic} (bucket {p // self._upstream}, input partition {p % self._upstream} "
                f"of {self.source_topic}): its stage-1 worker is behind or down, and stage 2 waits for its marks "
                "(docs/entity-features.md, 'Marks')")

    def _idle_due(self, now: float) -> list[int]:
        """Stage 1: the assigned partitions owed an idle mark now (``IdleMarks``). A mark is a promise
        that nothing older will come from the partition, so it is made only on the broker's word:
        its ends are asked with the backlog (kafka-python's cached high watermark of a partition it
        has not handed out lately can be far behind: trial Q's stage 2 got marks for partitions with
        thousands of records left, ran ahead of them in event time, and alerted on 2,376 events
        offline did not), at most once per ``SD_ALIGN_IDLE_MS``; between asks, no mark is due."""
        def backlog() -> dict[int, int | None]:
            if now - self._asked_ends < self.settings.align_idle_ms / 1000.0:
                return {}  # no fresh ends: nothing is due now
            self._asked_ends = now
            return self.source.backlog(ask=True)
        assigned = {tp.partition for tp in self.source.assignment() if tp.topic == self.settings.input_topic}
        return self._idle_marks.due(assigned, backlog, now)

    def _mark_idle(self) -> None:
        """Stage 1 between batches: the idle marks owed (``IdleMarks``) in a transaction of their own,
        with those partitions' offsets at their ends (committed already: nothing is left of them),
        so that a worker evicted meanwhile is fenced (KIP-447) rather than marking a partition its
        successor is forwarding. A failure is logged and tried again at the next empty poll."""
        now = time.monotonic()
        if self.hold.active:
            return
        due = self._idle_due(now)
        ends = self.source.highwaters()
        due = [p for p in due if ends.get(p) is not None]
        if not due:
            return
        s = self.settings
        group = self.source.membership()
        try:
            self.publisher.publish(idle_marks(due, s.repartition_topic_name, self._upstream, s.repartition_buckets))
            at_end = {TopicPartition(s.input_topic, p): int(ends[p] or 0) for p in due}
            self.publisher.commit(self.source, at_end, group)
        except DeliveryError as exc:
            log.info("stage 1: idle marks for partitions %s not written (%s); trying again", due, exc)
            self.publisher.reset()  # a fresh producer at the next transaction
            return
        self._idle_marks.sent(due, now)
        self._marked(due)

    def _marked(self, partitions: Sequence[int]) -> None:
        """Stage 1: idle marks for ``partitions`` delivered: counted per input partition
        (``stream_detector_repartition_idle_marks_total``) and logged at DEBUG (trial R could see them
        only by reading the repartition topic with the purge off)."""
        for partition in partitions:
            self.metrics.idle_marks.labels(partition=str(partition)).inc()
        if partitions:
            log.debug("stage 1: idle marks sent for input partitions %s (nothing left on the broker's word)",
                      sorted(partitions))

    def _deliver(self, batch: Batch, scorer: Scorer, messages: list[OutMessage]) -> bool:
        """Steps 6 and 7 for ``batch``: ``messages`` published, then its offsets committed (or, with
        write-behind, its window's). False when the worker left the group meanwhile (the batch is
        abandoned: its new owner reads it). Raises ``DeliveryError`` (the batch is held)."""
        try:
            with self.steps.time("publish"):
                self.publisher.publish(messages)  # 6 publish (every ack / inside the transaction)
            if not self.source.still_member(batch):  # evicted meanwhile: a zombie must not commit
                self._abandon(batch)
                return False
            defer = self._defers(scorer)
            if defer or self._window_open():
                self._defer(batch, defer)  # 7 commit: the window's, after its entity state is written
            else:
                self.hold.in_doubt = self.publisher.transactional  # until the commit returns
                with self.steps.time("commit"):
                    committed = self.publisher.commit(self.source, batch.next_offsets(), batch.group)  # 7, after 6
                self.hold.in_doubt = False
                self._trim_replay_log(batch.next_offsets(), committed)
                if committed and self._purge is not None:  # stage 2: the records below go (Kafka Streams' purge)
                    self._purge.committed({tp.partition: o for tp, o in batch.next_offsets().items()})
                if isinstance(self.source, AlignedSource):
                    self.source.settled(batch.next_offsets())  # several workers: peers may release up to here
            if scorer.version != self._delivered_by:
                self._first_delivered(scorer.version, batch)
        except DeliveryError:
            self.stats.delivery_failures += 1
            self.metrics.delivery_failed()
            self.publisher.reset()
            raise
        return True

    def _shadow_counted(self) -> None:
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
            values, refused = self._carried_of(scorer, batch)
            # 2 decode, 3a enrich, 3 features, 4 score: chunk by chunk, overlapped (pipeline/compute.py)
            with self.steps.time("compute"):
                done = self.compute.run(scorer, values, self.settings.max_event_bytes,
                                        self._enrich_for(scorer, batch), self.shadow.ready(scorer),
                                        enrich_reads_columns(self._spec_of(scorer.bundle), scorer.bundle.schema))
            if refused:
                done.rejected = [Rejected(r.index, RejectReason.NO_CARRIED_FEATURES, refused[r.index])
                                 if r.index in refused else r for r in done.rejected]
            try:
                threshold = self.thresholds.current(scorer.version)  # 5 decide
            except ModelMismatch:
                if self.models.finish(wait=True):  # the threshold's model was loading: score again with it
                    if self._needs_aligning(self.models.require().bundle):  # not with a batch polled unaligned
                        raise _AlignFirst from None
                    self.stats.rescored_batches += 1
                    continue
                raise
            return scorer, done, Decision.of(scores_of(done.per_feature), scorer.version, threshold,
                                             done.probability)

    # ---- helpers ---------------------------------------------------------------------------
    def _carried_of(self, scorer: Scorer, batch: Batch) -> tuple[list[bytes | None], dict[int, str]]:
        """Stage 2: the batch's carried features (``self._carried``, from the records' headers), and
        the values to decode with the records without a usable block left out (decoded as nothing,
        then dead-lettered with ``{index: why}``); elsewhere the values as they are."""
        self._carried = None
        entity = scorer.bundle.entity
        if self.settings.stage != "repartitioned" or entity is None:
            return batch.values, {}
        carried = self._spec_of(scorer.bundle, carried=True)
        assert carried is not None
        matrix, refused = read_carried(batch.headers, len(carried.all_fields), carried.fingerprint)
        self._carried = (carried.all_fields, matrix)
        if not refused:
            return batch.values, {}
        return [None if i in refused else v for i, v in enumerate(batch.values)], refused

    def _spec_of(self, bundle: Bundle, carried: bool = False) -> EntitySpec | None:
        """The entity spec this worker computes for ``bundle``: all of it (``SD_STAGE=whole``), the
        input topic's key alone (stage 1) or the other keys (stage 2; ``pipeline/repartition.py``);
        ``carried``: the input topic's key alone, whatever the stage (what stage 2 reads from stage
        1). Derived once per model version (and its fingerprint with it), not per batch."""
        stage = "repartition" if carried else self.settings.stage
        if (bundle.version, stage) not in self._specs:
            spec = bundle.entity
            if spec is not None and stage != "whole":
                spec = (carried_spec if stage == "repartition" else rest_spec)(spec, self.carried_key)
            self._specs[(bundle.version, stage)] = spec
        return self._specs[(bundle.version, stage)]

    def _start_stage(self) -> None:
        """Two stages (``SD_STAGE``): stage 1 needs exactly-once delivery (the repartition topic must
        hold each event once) and makes the repartition topic, buckets × the input topic's partitions
        (or checks it); stage 2 learns that partition count. Raises ``ConfigError``."""
        s = self.settings
        if s.stage == "repartition" and not self.publisher.transactional:
            raise ConfigError("SD_STAGE=repartition needs SD_DELIVERY=exactly_once: a batch forwarded twice "
                              "(a crash before its commit) would apply its events twice in stage 2")
        self._upstream = s.topic_partitions  # the memory transport's (tests)
        if isinstance(self.control, WorkerView):
            if s.create_topics:
                ensure_topics(s, [self.source_topic])
            self._upstream = topic_partitions(s, self.source_topic)
            want = self._upstream * s.repartition_buckets
            if s.create_topics:
                ensure_topics(s, [s.repartition_topic_name], partitions=want)
            have = topic_partitions(s, s.repartition_topic_name)
            if have != want:
                raise ConfigError(f"repartition topic {s.repartition_topic_name} has {have} partitions, not {want} "
                                  f"({self._upstream} of {self.source_topic} x SD_REPARTITION_BUCKETS="
                                  f"{s.repartition_buckets}): delete it, or set SD_REPARTITION_TOPIC")
            if s.stage == "repartitioned" and s.repartition_purge_ms > 0:
                self._purge = RecordPurge(s, s.repartition_topic_name, s.repartition_purge_ms)
        if s.stage == "repartition":
            log.info("two stages: stage 1, %s (keyed by %s) → %s, %d buckets of %s", s.input_topic, self.carried_key,
                     s.repartition_topic_name, s.repartition_buckets, s.repartition_key)
        else:
            purge = (f"its records below the committed offsets deleted every {s.repartition_purge_ms / 1000:g} s"
                     if self._purge is not None else "its records kept until the topic's retention deletes them")
            log.info("two stages: stage 2, %s: %d buckets of %s, each %d partitions (one per partition of %s); %s",
                     s.input_topic, s.repartition_buckets, s.repartition_key, self._upstream, self.source_topic, purge)

    def _check_topics(self) -> None:
        """With ``SD_CREATE_TOPICS=false``: the topics this worker reads and writes exist, or a
        ``ConfigError`` names the missing ones (a new-user trial's worker on a missing input topic
        logged kafka-python's "Topic not found" ERROR nine times a second and exited 0 on
        ``--max-idle-polls``; ``check-config`` said it, the worker did not)."""
        s = self.settings
        names = {self.source_topic: "the input topic, with as many partitions as workers are to share it",
                 s.dlq_topic: "the dead-letter topic"}
        if s.stage != "repartition":
            names[s.alerts_topic] = "the alerts topic"
        if s.stage != "whole":
            names[s.repartition_topic_name] = (f"the repartition topic, with SD_REPARTITION_BUCKETS="
                                               f"{s.repartition_buckets} x the input topic's partitions")
        missing = missing_topics(s, names)
        if missing:
            raise ConfigError(f"{'; '.join(f'{t} ({names[t]})' for t in missing)}: "
                              f"{'do' if len(missing) > 1 else 'does'} not exist and SD_CREATE_TOPICS=false: create "
                              f"{'them' if len(missing) > 1 else 'it'} (`stream-detector topics` with the same "
                              "settings does) or set SD_CREATE_TOPICS=true")

    def _split_warning(self, assigned: set[TopicPartition]) -> str | None:
        """Stage 2: a WARNING when this worker holds part of a bucket (its entities' events are merged
        by two workers: not exact, ``split_buckets``)."""
        if not self._upstream:
            return None
        split = split_buckets((tp.partition for tp in assigned), self._upstream)
        if not split:
            return None
        return (f"stage 2 holds part of bucket(s) {', '.join(map(str, split[:8]))} of the repartition topic: their "
                f"entities' events are merged by two workers, so their features depend on timing. Run a number of "
                f"stage-2 workers that divides SD_REPARTITION_BUCKETS={self.settings.repartition_buckets}")

    def _enrich_for(self, scorer: Scorer, batch: Batch) -> Enrich | None:
        """Step 3a for ``batch``: entity features as columns for step 3 (the events themselves are
        not changed: alerts keep them as received), or ``None`` when the model has no EntitySpec."""
        spec, enricher = self._spec_of(scorer.bundle), self.enricher
        if spec is None or enricher is None:
            return None
        if spec.label_keys and self.ingester is None:
            self._start_ingester()
        topic = batch.topic or self.settings.input_topic  # a replay undoes only partitions this worker reads again
        enricher.held = frozenset(str(tp.partition) for tp in self.source.assignment() if tp.topic == topic)
        if self.behind is not None:
            defers = self._defers(scorer)  # a window: its shared keys' features logged until its commit
            enricher.keep_replay_log(self.replay_log, self.behind.key, write=defers and self._log_writes)
            passing = bool(spec.shared_keys(self.behind.key)) and not self._log_writes
            if passing and not self.behind.passing and (self._window_open() or self.behind.pending):
                drops = self._drops
                self._flush_and_commit(idle=True)  # the window of the model before: written and committed first
                if self._drops != drops:  # its write failed: read again from the commit, this batch too
                    raise _WindowDropped
                if self.behind.pending:
                    raise EntityStateUnavailable("entity state: the previous model's window is not written yet")
            self.behind.pass_through(passing)
            self._own_all(spec, defers and self._log_writes and not passing)
            self.stats.sole_owner_batches += self.behind.sole

        model = scorer.bundle.entity  # the whole spec: every event is indexed under all its label keys

        def enrich(events: Sequence[dict[str, Any]], indices: list[int], fields: Fields) -> Deferred:
            rows = np.asarray(indices, dtype=np.int64)
            misses = enricher.log_misses
            pending = enricher.begin(spec, events, _positions(batch, rows), fields)  # the state is written by ``write``
            overtaken = self._overtaken(batch) if enricher.log_misses > misses else None
            if overtaken:
                raise _Overtaken(overtaken)
            enricher.warn_misses()  # approximate features of a batch this worker keeps (said after the check)
            self._untimed = enricher.last_untimed  # a held batch enriched again: its last attempt counts
            self._late = dict(enricher.last_late)
            # stage 2: the input key's features (and label features) from stage 1 first, then this stage's
            carried = None if self._carried is None else self._carried[1][rows]
            names = [*(self._carried[0] if self._carried is not None else ()), *spec.all_fields]

            def joined(matrix: np.ndarray) -> np.ndarray:
                return matrix if carried is None else np.hstack([carried, matrix])
            if not spec.label_keys:
                def write() -> tuple[np.ndarray, np.ndarray]:
                    changed = pending.write()
                    return changed, joined(pending.values)
                return Deferred((names, joined(pending.values)), write)
            labels = label_values(spec, self.labels, events, pending.values, model)  # entity/labels.py

            def write_labelled() -> tuple[np.ndarray, np.ndarray]:
                rows = pending.write()
                if not rows.size:
                    return rows, matrix
                # another writer's update changed some rows' history, whose counts the label shares read:
                # those rows again (the others keep the values they were scored with)
                again = joined(np.hstack([pending.values, label_values(spec, self.labels, events, pending.values,
                                                                       model)]))
                out = matrix.copy()
                out[rows] = again[rows]
                return rows, out
            matrix = joined(np.hstack([pending.values, labels]))
            return Deferred((names, matrix), write_labelled)
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
        elif missing_topics(self.settings, [self.settings.feedback_topic]):  # a trial: ~1 min of retries, then rc 1
            raise ConfigError(f"{self.settings.feedback_topic} (the feedback topic, where this model's label features "
                              "come from) does not exist and SD_CREATE_TOPICS=false: create it (`stream-detector "
                              "topics` with the same settings does), set SD_CREATE_TOPICS=true, or SD_LABEL_INGEST="
                              "false (label features from what the store holds)")
        # the configured rebalance protocol, not stage 2's eager one: a whole worker's ingester and stage 2's
        # share the group SD_GROUP_ID-labels (while a deployment switches stages), and two protocols in one
        # group are refused (a trial: InconsistentGroupProtocolError, 18,800 log lines in 20 s)
        self.ingester = LabelIngester(self.settings.model_copy(update={"assignment": self._assignment}), store,
                                      self.metrics.labels_ingested)
        self.ingester.start()
        log.info("label ingester started: topic %s, group %s", self.settings.feedback_topic, self.ingester.group)

    @_windowed
    def _abandon(self, batch: Batch) -> None:
        log.warning("the consumer group rebalanced while a batch of %d events was in flight (a worker joined or "
                    "left, or this one was evicted); not committing it, rewinding to the group's committed offsets",
                    len(batch))
        self.stats.abandoned_batches += 1
        self._read_again(batch)

    def _read_again_aligned(self, batch: Batch, how: str, version: str) -> None:
        """``batch`` was polled unaligned (fetch order, partition by partition) and model ``version``
        needs event-time alignment: give it up (and the hold, if it is the held one) and read it again
        through the alignment step, or the model's shared-key history would be built from it out of
        event-time order (a trial, 2026-12-03: 6 extra alerts, scores 4-9 where offline's were 0.5-1)."""
        log.info("a batch of %d events %s model %s, which needs event-time alignment: read again from the "
                 "committed offsets through the alignment step", len(batch), how, version)
        if self.hold.active:
            self.hold.release()
        self._read_again(batch)

    @_windowed
    def _read_again(self, batch: Batch) -> None:
        """Give ``batch`` up uncommitted and rewind its partitions to the group's committed offsets
        (an open write-behind window that is still this worker's is written and committed first, so
        only ``batch`` is read again)."""
        self.publisher.abandon()
        if self._window_open() and not self._taken:  # the window is still this worker's
            self._flush_and_commit(idle=True)  # written and committed, so the rewind below re-reads this batch only
        self.source.rewind_to_committed(self._drop_window(batch) if self._window_open() else batch)

    def _rejoin(self, committed: Offsets) -> None:
        """After ``_Overtaken``: commit the group's own committed offsets again (``committed``, a no-op
        for a member), so that an evicted worker's client learns it now (the coordinator refuses an
        unknown member) and rejoins at its next poll, instead of handling batches of partitions that
        are no longer its own until its window's commit, up to ``SD_ENTITY_FLUSH_MS`` later (trial W,
        2026-12-07: their terminal writes made another worker's features differ)."""
        try:
            self.source.commit(committed)
        except Exception as exc:  # noqa: BLE001 - the refusal is what this is for; never stop the worker here
            log.info("this worker is no longer a member of its group (%s): it rejoins at its next poll", exc)
        else:
            log.info("the group's committed offsets committed again: this worker is still a member")

    def _overtaken(self, batch: Batch) -> Offsets | None:
        """The batch found events already applied that the replay log does not hold (their features
        would come from the current state: ``Enricher._apply``). Where the group has committed one
        of its partitions past the batch's first offset there, another worker handled these events:
        this one was evicted without knowing it yet (frozen past its session timeout; a trial on
        2026-12-07 resumed such a worker with SIGCONT and it published 117 alerts offline scoring
        does not raise, from terminal features computed off the other worker's state). A worker
        that still owns its partitions reads from their committed offsets on, never before them.
        One round trip, only on such a batch; a coordinator that does not answer keeps the old
        behaviour (the features are logged as approximate). Returns the group's committed offsets
        when it has moved past the batch (``_rejoin`` commits them again), else None."""
        firsts: dict[int, int] = {}
        for p, o in zip(batch.partitions, batch.offsets, strict=True):
            if o < firsts.get(p, o + 1):
                firsts[p] = o
        try:
            committed = self.source.committed_offsets(firsts)
        except TransportError as exc:
            log.warning("could not ask the group's committed offsets of a batch with already-applied events: %s", exc)
            return None
        ahead = sorted(p for p, o in committed.items() if p in firsts and o > firsts[p])
        if not ahead:
            return None
        log.warning("the consumer group has committed partition(s) %s past this batch (first offsets %s, committed "
                    "%s): another worker has handled these events, so this one is no longer their owner (evicted: "
                    "frozen past its session timeout?); the batch and its open window are given up unpublished and "
                    "uncommitted", ahead, {p: firsts[p] for p in ahead}, {p: committed[p] for p in ahead})
        topic = batch.topic or self.settings.input_topic
        return {TopicPartition(topic, p): o for p, o in committed.items()}

    # ---- write-behind entity state (entity/behind.py) ------------------------------------------
    def _own_all(self, spec: EntitySpec, eligible: bool) -> None:
        """Before a batch is enriched: while this worker holds every partition of the input topic
        (and ``SD_ENTITY_SOLE_OWNER``), the shared keys' records are held in the window too
        (``WriteBehind.own_all``); once it holds fewer, they are read and written with every batch
        again. A rebalance that takes a partition has written and committed the window in its hook,
        or the next batch dropped it (``_window_moved``); whatever is still unwritten is written and
        committed here first."""
        behind = self.behind
        assert behind is not None
        sole = (eligible and self.settings.entity_sole_owner and bool(spec.shared_keys(behind.key))
                and self._holds_every_partition())
        if sole == behind.sole:
            return
        if not sole and behind.shared_pending:
            drops = self._drops
            self._flush_and_commit(idle=True)
            if self._drops != drops:  # its write failed: read again from the commit, this batch too
                raise _WindowDropped
            if behind.shared_pending:
                raise EntityStateUnavailable("entity state: the window of the shared keys' records is not written yet")
        assert self.replay_log is not None
        behind.own_all(sole, self.replay_log.append if sole else None)
        shared = ", ".join(spec.shared_keys(behind.key))
        if sole:
            log.info("entity state: this worker holds all %d partitions of %s, so it is the only writer of %s: those "
                     "records are kept in its write-behind window too and written every %d ms with their replay-log "
                     "entries first (SD_ENTITY_SOLE_OWNER)", self._sole_total, self.settings.input_topic, shared,
                     self.settings.entity_flush_ms)
        else:
            log.info("entity state: this worker holds %d of the partitions of %s: %s read and written with every "
                     "batch again", len(self._sole_assigned), self.settings.input_topic, shared)

    def _holds_every_partition(self) -> bool:
        """This worker's assignment is every partition of the input topic (the partition count asked
        again whenever the assignment changes: partitions added to the topic come with a rebalance)."""
        assigned = frozenset(tp.partition for tp in self.source.assignment() if tp.topic == self.settings.input_topic)
        if assigned != self._sole_assigned:
            self._sole_assigned = assigned
            if not assigned:
                self._sole_total = 0
            elif isinstance(self.control, WorkerView):
                self._sole_total = self._input_partitions()
            else:  # an in-process control plane (tests): the memory transport's topic
                self._sole_total = self.settings.topic_partitions
        return bool(assigned) and len(assigned) == self._sole_total

    def _defers(self, scorer: Scorer) -> bool:
        """Whether batches scored by ``scorer`` commit as a window (write-behind): its entity spec has
        the partition key, and the topic has not turned out to be keyed otherwise. A key shared
        across partitions (a terminal) is written on every batch, and each record keeps the undo
        snapshot of its last write only; what lets a successor after a crash replay a window of
        several batches exactly is the replay log of its features (``entity/replay_log.py``,
        ``SD_ENTITY_REPLAY_LOG``; a trial on 2026-12-03 without it: 4.4x offline's alerts after a
        SIGKILL). Without the log such a model's records all pass through
        (``WriteBehind.pass_through``: the batch's one read and one compare-and-set, overlapped with
        scoring), and its batches commit one by one."""
        spec, behind = self._spec_of(scorer.bundle), self.behind
        return (behind is not None and not behind.disabled and spec is not None and behind.key in spec.keys
                and (not spec.shared_keys(behind.key) or self._log_writes))

    @_windowed
    def _defer(self, batch: Batch, defer: bool = True) -> None:
        """Step 7 with write-behind: the delivered batch's entity records become the worker's state,
        its offsets join the window, its shared entities (written already) let peers move on; every
        ``SD_ENTITY_FLUSH_MS`` the window's records are written, then its offsets committed.
        ``defer`` False (a model without the partition key took over): the window is closed now."""
        assert self.behind is not None
        was_keyed = not self.behind.unkeyed
        must = self.behind.accept() or not defer
        if was_keyed and self.behind.unkeyed:
            # trial E: the ERROR alone, and the worker went on computing the key's history in fetch order
            # (3,245 alerts of 6,000 against 31 offline): decided again before the next batch, as at a swap
            self._align_checked = ""
        offsets = batch.next_offsets()
        self._pending.update(offsets)
        self._pending_group = self._behind_group = batch.group
        if isinstance(self.source, AlignedSource) and not self.behind.sole:
            # its shared entities are written (the partition key's are not shared); a sole owner's are in
            # the window: its heads move on once the window is written and committed (_window_committed)
            self.source.settled(offsets)
        self._flush_and_commit(due_only=not must and not self.stop_event.is_set(),
                               wait=must or self.stop_event.is_set() or not self.settings.entity_flush_async)

    @_windowed
    def _window_moved(self, batch: Batch) -> bool:
        """Before ``batch`` is enriched: True when the group rebalanced since the last batch accepted
        into the open window *and* took partitions from this worker without the window being
        committed (the rebalance hook could not write it, or they were lost: ``_revoking``) — a
        partition may have been handed back with its position reset to the committed offset, so
        the records held no longer match what is read. The window and ``batch`` are then dropped
        unwritten and uncommitted and read again from the committed offsets against the stored
        state (at most ``SD_ENTITY_FLUSH_MS`` of events read twice). A rebalance that only added
        partitions leaves the window open; with no window open, the records held are forgotten."""
        assert self.behind is not None
        group = self._behind_group
        if group is None or self.source.still_member(Batch(topic=batch.topic, group=group)):
            return False
        self._behind_group = None
        if not self._join_flush():  # the window in flight failed: records forgotten, read again below
            self._taken = True
        taken, self._taken = self._taken, False
        if not self._pending or not taken:  # nothing open, or a rebalance that took nothing from this worker
            if not self._pending:
                self.behind.forget()  # flushed records of a partition that moved and came back may be stale
            else:
                self._behind_group = batch.group  # the window goes on under the new membership
                self._pending_group = batch.group
            return False
        log.warning("the consumer group rebalanced with a window of batches uncommitted: its entity records are "
                    "dropped and it is read again from the committed offsets")
        self.stats.abandoned_batches += 1
        self.source.rewind_to_committed(self._drop_window(batch))
        return True

    def _revoking(self, partitions: set[TopicPartition], lost: bool = False) -> Offsets:
        """The consumer's rebalance hook (inside its poll, ``base.Source.on_revoke``): before
        ``partitions`` go to another worker, the open window's entity records are written and its
        offsets returned for the consumer to commit (as Kafka Streams commits in
        ``onPartitionsRevoked``), so their new owner starts after them rather than reading up to
        ``SD_ENTITY_FLUSH_MS`` of events again. It commits the whole window, kept partitions too
        (docs/entity-features.md, *Write-behind*: why not only the revoked ones). If the write
        fails the window stays open (nothing to commit): the next batch finds the group moved and
        reads the window again. Called while the worker thread is changing the window
        (``_window_lock`` taken: kafka-python 3 calls listeners on its I/O thread, which must not
        block) it leaves the window alone. Whatever it does not commit marks the window as taken:
        the next batch reads it again (``_window_moved``); ``lost`` partitions (evicted) cannot be
        committed at all.

        The consumer then says whether their commit went through (``_revoke_done``, on the same
        thread). Before 2026-12-05 the hook never learned it: a refused commit (cooperative
        rebalance, the kept partitions read on at their positions) left the written window
        uncommitted while the next batch forgot its undo snapshots, and a crash after the next
        window's write stranded its events outside any undo (431 of 600 events with approximate
        account features in ``tests/unit/test_entity_window.py``). Until it is told, the hook
        keeps ``_window_lock``: both clients call it inside the worker thread's poll (kafka-python
        3 on its I/O thread while the worker thread waits in ``poll``), so no batch can be
        delivered meanwhile; the lock makes sure of it."""
        behind = self.behind
        if not (self._window_open() or self._inflight_done is not None) or behind is None:
            return {}
        if lost or not self._window_lock.acquire(blocking=False):  # evicted, or the window is being changed
            self._taken = True
            return {}
        offsets: Offsets = {}
        try:
            offsets = self._commit_on_revoke(partitions)
            return offsets
        finally:
            if not offsets:  # else held until _revoke_done
                self._window_lock.release()

    def _commit_on_revoke(self, partitions: set[TopicPartition]) -> Offsets:
        behind = self.behind
        assert behind is not None
        try:
            if not self._join_flush():  # the window in flight failed (records forgotten): read again
                self._taken = True
                return {}
            self._write_window(behind)
        except Exception:  # noqa: BLE001 - inside the client's poll: never raise there
            log.warning("could not write the open window before partitions %s were revoked",
                        sorted(tp.partition for tp in partitions), exc_info=True)
            self._taken = True
            return {}
        offsets, self._pending = self._pending, {}
        return offsets

    def _revoke_done(self, offsets: Offsets, committed: bool) -> None:
        """``base.Source.on_revoke_done`` for what ``_revoking`` returned: committed, the window's
        records start undo snapshots of their own from the next batch (``WriteBehind.committed``;
        the replay log's entries below the offsets are left to the next commit's trim, or to
        expire: no more Redis calls on the client's thread than before); not committed, the window
        is open again and taken (written, uncommitted: the next batch drops it and reads it again
        from the committed offsets against the stored records, which keep its undo). Releases the
        ``_window_lock`` the hook kept. Never raises (inside the client's poll)."""
        try:
            if committed:
                self._window_committed(offsets, publish=False)  # inside the client's poll: no client call
            else:
                self._reopen(offsets)
                self._taken = True
        except Exception:  # noqa: BLE001 - inside the client's poll: never raise there
            log.warning("after the commit in the rebalance hook", exc_info=True)
            self._taken = True
        finally:
            try:
                self._window_lock.release()
            except RuntimeError:  # not held by this thread (a listener finished elsewhere at shutdown)
                log.warning("the rebalance hook's window lock was not held by the thread that finished it")

    @_windowed
    def _flush_and_commit(self, due_only: bool = False, idle: bool = False, wait: bool = True) -> None:
        """Write the window's entity records, then commit its offsets (only those of partitions still
        assigned: a revoked partition's records are dropped unwritten and its offsets uncommitted, so
        its new owner starts from the stored state of the committed offsets). ``due_only``: only once
        ``SD_ENTITY_FLUSH_MS`` has passed since the last flush. A store or a commit that fails leaves
        the window open (tried again with the next flush; a refusal by a rebalance is not a failure:
        the partitions are read again); a conflict abandons it (read again from the committed
        offsets). ``idle``: no batch in hand (a failed commit is not counted as a delivery failure).
        ``wait`` False (a batch accepted, SD_ENTITY_FLUSH_ASYNC): the records are written by the writer
        thread while the next batches are computed (``_start_flush``), and the offsets committed by a
        later call once the write has landed (``_land_flush``); True: the window in flight lands first,
        then this one is written and committed here."""
        behind = self.behind
        if behind is None:
            return
        if self._flush is not None:
            if not wait and not self._flush.flush.done():
                return  # the last window is still being written: this one grows until it lands
            if not self._land_flush(idle):
                return
        if not (self._pending or behind.pending):
            return
        now = time.monotonic()
        if due_only and now - self._flushed_at < self.settings.entity_flush_ms / 1000.0:
            return
        if idle and now - self._flush_failed_at < 1.0:
            return
        assigned = self.source.assignment()
        gone = {tp for tp in self._pending if tp not in assigned}
        if gone and behind.shared_pending:  # records of every partition (``own_all``): the window is all or nothing
            log.info("partitions %s revoked with a window of shared records open: read again from the committed "
                     "offsets", sorted(tp.partition for tp in gone))
            self._taken = True
        if self._taken:  # partitions revoked or lost with the window uncommitted: not this worker's to commit
            log.warning("the consumer group rebalanced with a window of batches uncommitted: read again")
            self.stats.abandoned_batches += 1
            self._behind_group = None
            self._taken = False
            self.source.rewind_to_committed(self._drop_window(None))
            return
        if gone:
            dropped = behind.drop_partitions({tp.partition for tp in gone if tp.topic == self.settings.input_topic})
            for tp in gone:
                del self._pending[tp]
            log.info("partitions %s revoked with a window open: %d entity records and their offsets left to the "
                     "new owner", sorted(tp.partition for tp in gone), dropped)
        if not wait and self._start_flush(behind):
            return
        try:
            self._write_window(behind)
        except WriteBehindConflict as exc:
            self.stats.state_conflicts += 1
            log.warning("%s", exc)
            self.publisher.abandon()
            self.source.rewind_to_committed(self._drop_window(None))
            return
        except EntityStateUnavailable as exc:
            self._flush_failed_at = now
            log.warning("entity state write-behind failed, offsets not committed; trying again: %s", exc)
            return
        if not self._pending:
            return
        try:
            with self.steps.time("commit"):
                done = self.publisher.commit(self.source, dict(self._pending), self._pending_group)
        except DeliveryError as exc:
            # The window is written and the batch in hand delivered: only the commit is missing, so
            # the window stays open and the next flush commits it (as a failed write is tried again).
            # Raised, the batch was held and handled again against records that already held it:
            # its already-applied account events got features from the current state unless it was
            # the window's first batch (a review, 2026-12-04). Whatever is read again after a crash
            # meanwhile replays from the first uncommitted window's undo (``WriteBehind.pinned``).
            self._commit_failed(exc, idle, now)
            return
        pending, self._pending = self._pending, {}
        if done:  # the next window's records start undo snapshots of their own (entity/behind.py)
            self._window_committed(pending)
        self._trim_replay_log(pending, done)

    def _window_committed(self, offsets: Offsets, publish: bool = True) -> None:
        """A window written and its ``offsets`` committed: its records start undo snapshots of their
        own from the next batch (``WriteBehind.committed``), and a sole owner's partition heads move
        on (``AlignedSource.settled``; its shared records were in the window until now, the other
        workers' heads moved at delivery). ``publish`` False: from the rebalance hook, inside the
        client's poll (the heads are published at the source's next turn)."""
        assert self.behind is not None
        self.behind.committed({tp.partition for tp in offsets if tp.topic == self.settings.input_topic})
        if self.behind.sole and isinstance(self.source, AlignedSource):
            self.source.settled(offsets, publish)

    def _trim_replay_log(self, offsets: Offsets, done: bool) -> None:
        """After a commit of ``offsets`` (``done``: True when it was committed; not when a rebalance
        refused it: read again), the replay log's entries below them go (``FeatureLog.drop``: no
        round trip when this worker neither wrote nor found any since the last trim)."""
        if self.replay_log is None or done is not True:
            return
        committed = {tp.partition: offset for tp, offset in offsets.items() if tp.topic == self.settings.input_topic}
        try:
            self.replay_log.drop(committed)
        except EntityStateUnavailable as exc:  # left to expire (the spec's horizon), or trimmed by the next commit
            log.warning("could not trim the replay log of the committed offsets: %s", exc)

    def _window_open(self) -> bool:
        """Offsets delivered and not committed: the open window's, or a window's being written."""
        return bool(self._pending) or self._flush is not None

    def _reopen(self, offsets: Offsets) -> None:
        """``offsets`` (an older window's) back into the open window: committed with it, or read again."""
        self._pending = {**offsets, **self._pending}

    def _commit_failed(self, exc: DeliveryError, idle: bool, now: float) -> None:
        """A window's offset commit failed after its write: the window stays open and the next flush
        commits it (counted as a delivery failure with a batch in hand)."""
        self._flush_failed_at = now
        if not idle:
            self.stats.delivery_failures += 1
            self.metrics.delivery_failed()
        log.warning("offset commit failed; the window stays open and its commit is tried again: %s", exc)

    def _how_written(self) -> str:
        """For the start-up line: where the write-behind window's write runs."""
        return (", the write on a thread of its own while the next batches are read (SD_ENTITY_FLUSH_ASYNC)"
                if self.settings.entity_flush_async else ", the batch in hand waiting for the write")

    def _start_flush(self, behind: WriteBehind) -> bool:
        """The open window handed to the writer thread (``WriteBehind.start_flush``): its records
        written there while this thread goes on, its offsets kept with it until ``_land_flush``.
        False when there is nothing to write (the caller commits at once) or the store wrote it here."""
        with self.steps.time("flush"):
            flush = behind.start_flush()
        if flush is None:
            return False
        self._flush = _InFlight(flush, self._pending, self._pending_group)
        self._pending = {}
        try:
            if self._writer is None:
                self._writer = ThreadPoolExecutor(1, thread_name_prefix="sd-state-writer")
            self._writer.submit(flush.send)
        except RuntimeError:  # no thread to be had (the interpreter exiting, or none left): written here
            flush.send()
        self._flushed_at = time.monotonic()
        self.stats.state_flushes += 1
        return True

    def _land_flush(self, idle: bool) -> bool:
        """The window in flight, once written, committed (the offsets of partitions still assigned;
        a commit that fails puts them back in the open window, committed with the next flush, its
        records' undo pinned meanwhile). A write that failed or lost a record to another writer, or a
        commit refused by a rebalance, drops everything since the last commit and reads it again;
        returns False then."""
        now = time.monotonic()
        if not self._join_flush(keep=False):
            self.publisher.abandon()
            self.source.rewind_to_committed(self._drop_window(None))
            return False
        inflight = self._inflight_done  # kept there until committed: the rebalance hook sees a window open
        assert inflight is not None and self.behind is not None
        try:
            assigned = self.source.assignment()
            offsets = {tp: o for tp, o in inflight.offsets.items() if tp in assigned}
            gone = {tp.partition for tp in inflight.offsets
                    if tp not in assigned and tp.topic == self.settings.input_topic}
            if gone:  # revoked meanwhile: written, not committed; the new owner replays them from their undo
                self.behind.drop_partitions(gone)
            if not offsets:
                return True
            with self.steps.time("commit"):
                done = self.publisher.commit(self.source, offsets, inflight.group)
        except DeliveryError as exc:
            self._reopen(inflight.offsets)
            self._commit_failed(exc, idle, now)
            return True
        except BaseException:
            self._reopen(inflight.offsets)  # committed, or read again, later
            raise
        finally:
            self._inflight_done = None
        self._trim_replay_log(offsets, done)
        if not done:
            # refused by a rebalance: the window's partitions were rewound to the committed offsets, and
            # the records held have the batches read since applied with their own undo (the window's is
            # spliced in only when written): drop them and read everything since the last commit again
            # against the store, whose records carry the window's undo
            self.source.rewind_to_committed(self._drop_window(None))
            return False
        self._window_committed(offsets)
        return True

    def _join_flush(self, keep: bool = True) -> bool:
        """Wait for the window in flight, if any, to land (``WriteBehind.finish_flush``). Written:
        with ``keep`` its offsets go back to the open window (written, uncommitted: committed with it),
        else they wait in ``_inflight_done`` for ``_land_flush``. Failed (the store, or a record another
        writer changed): the records held are forgotten, the offsets go back to the open window (what
        is read again), and False is returned."""
        inflight, self._flush = self._flush, None
        if inflight is None:
            return True
        assert self.behind is not None
        try:
            with self.steps.time("flush"):
                self.behind.finish_flush(inflight.flush)
        except (WriteBehindConflict, EntityStateUnavailable) as exc:
            if isinstance(exc, WriteBehindConflict):
                self.stats.state_conflicts += 1
            log.warning("entity state write-behind failed, the batches since the last commit are read again: %s", exc)
            self._reopen(inflight.offsets)
            return False
        except BaseException:  # anything else: nothing held can be trusted; read again, never committed
            self._reopen(inflight.offsets)
            self._taken = True
            raise
        if keep:
            self._reopen(inflight.offsets)
        else:
            self._inflight_done = inflight
        return True

    def _write_window(self, behind: WriteBehind) -> None:
        """The window's entity records written (``WriteBehind.flush``: its errors propagate), timed
        as the ``flush`` step and counted."""
        with self.steps.time("flush"):
            behind.flush()
        self._flushed_at = time.monotonic()
        self.stats.state_flushes += 1

    def _drop_window(self, batch: Batch | None) -> Batch:
        """Forget the open window (write-behind records, uncommitted offsets); the batch to rewind:
        ``batch``'s partitions and the window's."""
        self._join_flush()  # its offsets join the window's (read again), whatever happened to it
        self._drops += 1
        topic = batch.topic if batch is not None and batch.topic else self.settings.input_topic
        parts = set(batch.partitions) if batch is not None else set()
        parts |= {tp.partition for tp in self._pending if tp.topic == topic}
        self._pending.clear()
        if self.behind is not None:
            self.behind.forget()
        if batch is not None and parts == set(batch.partitions):
            return batch
        return Batch.naming(topic, parts)

    def _held(self, batch: Batch, exc: StreamDetectorError, first: bool) -> None:
        if first:
            ctx = batch_context(batch, self.scorer)
            log.warning("holding batch of %d events (%s) and pausing partitions: %s", len(batch), ctx["where"], exc,
                        extra=ctx)
        self.stats.held_batches += 1
        self.metrics.held(exc)

    def _load(self, version: str) -> Scorer:
        bundle = self.control.fetch_bundle(version)
        if self.settings.stage != "whole":
            problem = stage_problem(bundle.entity, self.carried_key, self.settings.repartition_key)
            if problem:
                raise ConfigError(f"model {version} cannot run in two stages (SD_STAGE={self.settings.stage}): "
                                  f"{problem}")
        scorer = Scorer(bundle, self.settings.device)
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
        for key, n in self._late.items():
            if n:
                s.late_events[key] = s.late_events.get(key, 0) + n
                self.metrics.entity_late.labels(key).inc(n)
        self._late = {}
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
