"""Operations: Prometheus metrics and the health endpoints of one worker.

Every worker owns a ``WorkerMetrics`` with its own ``CollectorRegistry``, so several workers in one
process (tests, benchmarks) never collide. ``/metrics``, ``/healthz`` and ``/readyz`` share one
HTTP port (``SD_METRICS_PORT``; 0 = no server, production uses 9400).

The worker calls a few hooks between batches; nothing here runs per event in Python: the record
latencies of a batch enter their histograms with one numpy call, and consumer lag is computed at
each batch from the consumer's cached highwater marks (no broker round trip). Values that
already live on the worker (model version, threshold, assignment) are read at scrape time.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import orjson
import redis
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .errors import EntityStateUnavailable, ThresholdUnavailable, TransportError
from .schema import RejectReason
from .settings import Settings

if TYPE_CHECKING:
    from .pipeline.decode import Rejected
    from .pipeline.score import Scorer
    from .transport.base import Batch

log = logging.getLogger("stream_detector.metrics")

PREFIX = "stream_detector"
DEFAULT_PORT = 9400  # documented production port (docs/operations.md, deploy/)
LAG_REFRESH_S = 1.0
RECORD_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
BATCH_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_SIZE_BUCKETS = (1, 8, 32, 128, 512, 1024, 2048, 4096, 8192, 16384, 65536)

T = TypeVar("T")


class BulkHistogram:
    """A Prometheus histogram fed a whole array at a time (one ``searchsorted`` per batch)."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = np.asarray(buckets, dtype=np.float64)
        self._counts = np.zeros(len(buckets) + 1, dtype=np.int64)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe_many(self, values: np.ndarray) -> None:
        if not values.size:
            return
        slots = np.searchsorted(self.bounds, values, side="left")  # v <= bounds[slot]: Prometheus "le"
        counts = np.bincount(slots, minlength=len(self._counts))
        with self._lock:
            self._counts += counts
            self._sum += float(values.sum())

    def family(self) -> HistogramMetricFamily:
        with self._lock:
            cumulative = self._counts.cumsum().tolist()
            total = self._sum
        labels = [floatToGoString(b) for b in self.bounds.tolist()] + ["+Inf"]  # type: ignore[no-untyped-call]
        return HistogramMetricFamily(self.name, self.documentation, sum_value=total,
                                     buckets=list(zip(labels, cumulative, strict=True)))


@dataclass(frozen=True)
class WorkerStatus:
    """A worker's state as the metrics and health checks see it, read at scrape time.

    ``assigned_partitions`` is ``None`` when the consumer cannot say (not started, closed,
    rebalancing); ``threshold_age_s`` is seconds since the last successful Redis read.
    """

    running: bool
    model_version: str | None
    assigned_partitions: int | None
    threshold_value: float | None = None
    threshold_version: int | None = None
    threshold_age_s: float | None = None
    threshold_fresh: bool = False


def readiness(status: WorkerStatus | None) -> dict[str, bool]:
    """What ``/readyz`` checks: partitions assigned, model loaded, threshold fresh, not stopping."""
    if status is None:
        return {"partitions_assigned": False, "model_loaded": False, "threshold_fresh": False}
    return {"partitions_assigned": bool(status.assigned_partitions), "model_loaded": status.model_version is not None,
            "threshold_fresh": status.threshold_fresh, "running": status.running}


def batch_context(batch: Batch, scorer: Scorer | None = None) -> dict[str, Any]:
    """Log fields of a notable event about a batch: topic, partitions, offset range per partition,
    model version; ``where`` is the same in one short string for text logs (``tx[0@10-50 1@3-9]``)."""
    ranges: dict[int, list[int]] = {}
    for partition, offset in zip(batch.partitions, batch.offsets, strict=True):
        span = ranges.setdefault(partition, [offset, offset])
        span[0], span[1] = min(span[0], offset), max(span[1], offset)
    where = " ".join(f"{p}@{a}-{b}" for p, (a, b) in sorted(ranges.items()))
    return {"topic": batch.topic, "partition": sorted(ranges), "offset": {str(p): r for p, r in ranges.items()},
            "model_version": None if scorer is None else scorer.version, "where": f"{batch.topic}[{where}]"}


class StepTimer:
    """The worker's step-time hook: each step's wall time goes to every listener (the worker's
    Prometheus counter ``stream_detector_step_seconds_total{step}``; benchmarks add their own).

    Steps: ``source``, ``decode``, ``enrich``, ``features``, ``compute`` (steps 2-4 on the worker
    thread, including the wait for scoring), ``scoring thread`` (the scoring thread's own time),
    ``publish``, ``commit``. One ``perf_counter`` pair per step per batch (per chunk inside
    compute). Listeners may be called from the scoring thread."""

    def __init__(self) -> None:
        self.listeners: list[Callable[[str, float], None]] = []

    def __call__(self, step: str, seconds: float) -> None:
        for listener in self.listeners:
            listener(step, seconds)

    @contextmanager
    def time(self, step: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self(step, time.perf_counter() - t)


class WorkerMetrics:
    """The metrics of one worker, and the HTTP server that exposes them with the health checks."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = CollectorRegistry()
        r, p = self.registry, PREFIX
        self.events = Counter(f"{p}_events_consumed", "Records consumed and handled (offsets committed).",
                              registry=r)
        self.scored = Counter(f"{p}_events_scored", "Events scored by the model.", registry=r)
        self.alerts = Counter(f"{p}_alerts", "Alerts published.", registry=r)
        self.rejected = Counter(f"{p}_events_rejected", "Records sent to the dead-letter topic, by reason.",
                                ["reason"], registry=r)
        self.batches = Counter(f"{p}_batches", "Batches handled (offsets committed).", registry=r)
        self.batch_latency = Histogram(f"{p}_batch_latency_seconds", "First record polled to offsets "
                                       "committed, per batch.", buckets=BATCH_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram(f"{p}_batch_size_events", "Records per handled batch.",
                                    buckets=BATCH_SIZE_BUCKETS, registry=r)
        self.swaps = Counter(f"{p}_model_swaps", "Hot swaps of the model, by result.", ["result"], registry=r)
        self.redis_errors = Counter(f"{p}_redis_errors", "Failed Redis calls, by operation.", ["operation"],
                                    registry=r)
        self.kafka_errors = Counter(f"{p}_kafka_errors", "Failed Kafka calls, by operation.", ["operation"],
                                    registry=r)
        self.delivery_failures = Counter(f"{p}_delivery_failures", "Batches whose alerts, dead letters or "
                                         "offsets were not acknowledged (batch redelivered).", registry=r)
        self.step_seconds = Counter(f"{p}_step_seconds", "Wall time per pipeline step (scoring thread: its own "
                                    "time; compute: steps 2-4 on the worker thread).", ["step"], registry=r)
        self.held_batches = Counter(f"{p}_held_batches", "Attempts on a held batch (partitions paused), by cause.",
                            ["cause"], registry=r)
        self.entity_conflicts = Counter(f"{p}_entity_conflicts", "Entity records another worker wrote between a "
                                        "batch's read and its compare-and-set write (re-read and recomputed).",
                                        registry=r)
        self.align_peer_wait = Counter(f"{p}_align_peer_wait_seconds", "Seconds this worker waited for other "
                                       "workers' partitions to catch up in event time (event-time alignment with "
                                       "several workers: docs/operations.md, 'Partitions and workers').",
                                       registry=r)
        self.entity_untimed = Counter(f"{p}_entity_untimed_events", "Events enriched with entity features that "
                                      "had no usable timestamp: applied at their entity's last time "
                                      "(docs/entity-features.md, 'Time, late and out-of-order events').", registry=r)
        self.entity_late = Counter(f"{p}_entity_late_events", "Events enriched with entity features that came "
                                   "earlier in event time than their entity's last event, per entity key: applied "
                                   "at that time, so their features differ from offline scoring of the time-ordered "
                                   "events (docs/entity-features.md, 'Time, late and out-of-order events').",
                                   ["key"], registry=r)
        self.idle_marks = Counter(f"{p}_repartition_idle_marks", "Stage 1 (SD_STAGE=repartition): idle marks sent "
                                  "to stage 2 for an input partition with nothing left on the broker's word (a promise "
                                  "that nothing older comes from it, so stage 2 may run ahead of it in event time), "
                                  "by input partition (docs/operations.md, 'Two stages').", ["partition"], registry=r)
        self.shadow_events = Counter(f"{p}_shadow_events", "Events a challenger in shadow scored beside the "
                                     "active model, in committed batches (docs/retraining.md).", registry=r)
        self.shadow_alerts = Counter(f"{p}_shadow_alerts", "Events a challenger in shadow would have alerted "
                                     "(shadow records, not alerts).", registry=r)
        self.shadow_refused = Counter(f"{p}_shadow_refused", "Challengers this worker refused to shadow-score "
                                      "(failed to load, another schema or entity spec, no shadow topic).",
                                      registry=r)
        self.feedback_labels = Counter(f"{p}_feedback_labels", "Feedback records read by the label ingester, by "
                                       "outcome: attached (to their event's entities), waiting (their event not "
                                       "scored yet), attached_later (a waiting one, attached when a worker scored "
                                       "its event), dead_lettered (docs/feedback.md).", ["outcome"], registry=r)
        self.record_latency = BulkHistogram(f"{p}_event_latency_seconds", "Kafka record timestamp to "
                                            "decision, every handled record.", RECORD_LATENCY_BUCKETS)
        self.alert_latency = BulkHistogram(f"{p}_event_to_alert_latency_seconds", "Kafka record timestamp "
                                           "to decision, alerted records.", RECORD_LATENCY_BUCKETS)
        for reason in RejectReason:
            self.rejected.labels(reason.value)
        for label in ("success", "failure"):
            self.swaps.labels(label)
        for cause in ("threshold", "entity_state", "delivery"):
            self.held_batches.labels(cause)
        self.redis_errors.labels("snapshot")
        self.kafka_errors.labels("deliver")
        self.kafka_errors.labels("lag")
        self._status: Callable[[], WorkerStatus] | None = None
        self._highwaters: Callable[[], dict[int, int | None]] | None = None
        self._next: dict[int, int] = {}  # partition → next offset to handle
        self._lag: dict[int, int] = {}  # partition → records behind the highwater mark
        self._lag_at = -math.inf
        self._decided: tuple[np.ndarray, np.ndarray] | None = None
        self._server: ThreadingHTTPServer | None = None
        self.port: int | None = None
        r.register(_WorkerCollector(self))

    # ---- hooks the worker calls ----------------------------------------------------------------
    def attach(self, status: Callable[[], WorkerStatus], highwaters: Callable[[], dict[int, int | None]]) -> None:
        """Start of ``Worker.start``: how to read the worker's status (called from the HTTP thread:
        it must only read references the worker thread replaces whole) and its partitions' cached
        highwater marks (worker thread); serve HTTP when a port is configured."""
        self._status, self._highwaters = status, highwaters
        if self.settings.metrics_port and self._server is None:
            self.serve(self.settings.metrics_port, self.settings.metrics_addr)

    def watch_redis(self, read: Callable[[], T]) -> Callable[[], T]:
        """Wrap the threshold snapshot read so that Redis failures are counted (then re-raised)."""
        def counted() -> T:
            try:
                return read()
            except (redis.RedisError, OSError):
                self.redis_errors.labels("snapshot").inc()
                raise
        return counted

    def decided(self, batch: Batch, indices: Sequence[int], rows: np.ndarray) -> None:
        """Step 5 done: record → decision latencies, kept until the batch is committed."""
        ts = np.asarray(batch.timestamps, dtype=np.float64)
        latency = np.maximum(time.time() * 1000.0 - ts, 0.0) / 1000.0
        alerted = np.asarray(indices, dtype=np.int64)[rows] if len(rows) else np.zeros(0, dtype=np.int64)
        valid = ts >= 0  # -1: the producer set no timestamp
        self._decided = (latency[valid], latency[alerted][valid[alerted]])

    def batch_done(self, batch: Batch, scored: int, alerts: int, rejected: Sequence[Rejected]) -> None:
        """Step 7 done: count the batch and refresh lag from the cached highwater marks."""
        self.batches.inc()
        self.events.inc(len(batch))
        self.scored.inc(scored)
        self.alerts.inc(alerts)
        for r in rejected:
            self.rejected.labels(r.reason.value).inc()
        self.batch_size.observe(len(batch))
        if batch.polled_at:
            self.batch_latency.observe(max(0.0, time.monotonic() - batch.polled_at))
        if self._decided is not None:
            self.record_latency.observe_many(self._decided[0])
            self.alert_latency.observe_many(self._decided[1])
            self._decided = None
        for tp, offset in batch.next_offsets().items():
            self._next[tp.partition] = offset
        self.refresh_lag(force=True)  # O(partitions) dict lookups: after every batch, so a drained
        # partition never keeps showing the lag of its second-to-last batch while idle

    def labels_ingested(self, outcome: str, n: int) -> None:
        """The label ingester's counts (called from its thread; prometheus counters are thread-safe)."""
        self.feedback_labels.labels(outcome).inc(n)

    def held(self, exc: Exception) -> None:
        self._decided = None
        cause = ("threshold" if isinstance(exc, ThresholdUnavailable)
                 else "entity_state" if isinstance(exc, EntityStateUnavailable) else "delivery")
        self.held_batches.labels(cause).inc()
        self.refresh_lag()

    def delivery_failed(self) -> None:
        self._decided = None
        self.delivery_failures.inc()
        self.kafka_errors.labels("deliver").inc()

    def step_time(self, step: str, seconds: float) -> None:
        """A ``StepTimer`` listener (may run on the scoring thread; prometheus_client locks)."""
        self.step_seconds.labels(step).inc(seconds)

    def shadowed(self, events: int, alerts: int) -> None:
        self.shadow_events.inc(events)
        self.shadow_alerts.inc(alerts)

    def swapped(self, ok: bool) -> None:
        self.swaps.labels("success" if ok else "failure").inc()

    def refresh_lag(self, force: bool = False) -> None:
        """Per partition: highwater (from the last fetch response) minus the next offset to handle."""
        now = time.monotonic()
        if self._highwaters is None or (not force and now - self._lag_at < LAG_REFRESH_S):
            return
        self._lag_at = now
        try:
            lag: dict[int, int] = {}
            for partition, high in self._highwaters().items():  # cached: no broker round trip
                done = self._next.get(partition)
                if high is not None and done is not None:
                    lag[partition] = max(0, high - done)
        except (TransportError, RuntimeError) as exc:
            self.kafka_errors.labels("lag").inc()
            log.debug("lag not refreshed: %s", exc)
            return
        self._lag = lag  # replaced whole: the HTTP thread reads it without a lock

    # ---- HTTP ------------------------------------------------------------------------------
    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Serve /metrics, /healthz and /readyz in a daemon thread; returns the bound port."""
        server = serve_http(addr, port, self.exposition, self._ready, "metrics-http")
        self._server = server
        self.port = int(server.server_address[1])
        log.info("metrics and health on http://%s:%d/metrics, /healthz, /readyz", addr, self.port)
        return self.port

    def status(self) -> WorkerStatus | None:
        return None if self._status is None else self._status()

    def _ready(self) -> tuple[bool, dict[str, Any]]:
        checks = readiness(self.status())
        ok = all(checks.values())
        return ok, {"status": "ready" if ok else "not ready", "checks": checks}

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _WorkerCollector(Collector):
    """Gauges read from the worker at scrape time, plus the bulk histograms."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        p, status = PREFIX, self.m.status()
        model = InfoMetricFamily(f"{p}_model", "Model version the worker scores with.")
        threshold = GaugeMetricFamily(f"{p}_threshold", "Threshold value in use (Redis, cached).")
        version = GaugeMetricFamily(f"{p}_threshold_version", "Version of the threshold in use.")
        age = GaugeMetricFamily(f"{p}_threshold_age_seconds", "Time since the last successful Redis read.")
        assigned = GaugeMetricFamily(f"{p}_assigned_partitions", "Input partitions assigned to this worker.")
        lag = GaugeMetricFamily(f"{p}_consumer_lag_records", "Records behind the partition's highwater mark "
                                "(as of the last fetch), per partition.", labels=["topic", "partition"])
        ready = GaugeMetricFamily(f"{p}_ready", "1 when /readyz answers 200.")
        checks = readiness(status)
        ready.add_metric([], float(all(checks.values())))
        if status is not None:
            if status.model_version is not None:
                model.add_metric([], {"version": status.model_version})
            if status.threshold_value is not None and status.threshold_version is not None:
                threshold.add_metric([], status.threshold_value)
                version.add_metric([], status.threshold_version)
            if status.threshold_age_s is not None:
                age.add_metric([], status.threshold_age_s)
            if status.assigned_partitions is not None:
                assigned.add_metric([], status.assigned_partitions)
            topic = self.m.settings.input_topic
            for partition, behind in sorted(self.m._lag.items()):
                lag.add_metric([topic, str(partition)], behind)
        yield from (model, threshold, version, age, assigned, lag, ready)
        yield self.m.record_latency.family()
        yield self.m.alert_latency.family()


def serve_http(addr: str, port: int, exposition: Callable[[], bytes],
               ready: Callable[[], tuple[bool, dict[str, Any]]], name: str) -> ThreadingHTTPServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` in a daemon thread (shared by workers and the
    retrainer). ``ready()`` returns (ok, JSON body); ``/readyz`` answers 200 or 503 with it."""
    server = ThreadingHTTPServer((addr, port), _handler(exposition, ready))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
    return server


def _handler(exposition: Callable[[], bytes],
             ready: Callable[[], tuple[bool, dict[str, Any]]]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # the http.server API names it
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, exposition(), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self._json(200, {"status": "ok"})
            elif path == "/readyz":
                ok, body = ready()
                self._json(200 if ok else 503, body)
            else:
                self._json(404, {"status": "not found", "paths": ["/metrics", "/healthz", "/readyz"]})

        def _json(self, code: int, body: dict[str, Any]) -> None:
            self._send(code, orjson.dumps(body), "application/json")

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # scrapes are not news
            pass

    return Handler
