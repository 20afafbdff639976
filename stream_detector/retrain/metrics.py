"""The retrainer's Prometheus metrics and health endpoints (``SD_METRICS_PORT``, as for workers).

Exported: ``stream_detector_retrain_runs_total{outcome}`` (promoted / rejected / skipped / failed),
``stream_detector_retrain_duration_seconds`` (histogram), ``stream_detector_retrain_ingested_events_total``,
``stream_detector_retrain_window_events``, ``stream_detector_retrain_excluded_ids``,
``stream_detector_retrain_drift_checks_total``, ``stream_detector_retrain_drift_psi`` and
``stream_detector_retrain_drift_ks`` (last judged), ``stream_detector_retrain_active_model_info``,
``stream_detector_retrain_history_events`` (events read from the input topic by time for the last
run of a model with entity features, ``retrain/history.py``).
``/healthz`` answers 200 while the process runs; ``/readyz`` 200 once the consumers are started.
"""

from __future__ import annotations

import logging
from http.server import ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

from ..metrics import serve_http

log = logging.getLogger("stream_detector.retrain.metrics")


class RetrainerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.runs = Counter("stream_detector_retrain_runs", "Retraining runs by outcome.", ["outcome"], registry=r)
        for outcome in ("promoted", "rejected", "skipped", "failed"):
            self.runs.labels(outcome)
        self.duration = Histogram("stream_detector_retrain_duration_seconds", "Wall time of one retraining run.",
                                  buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600), registry=r)
        self.ingested = Counter("stream_detector_retrain_ingested_events",
                                "Events added to the training window.", registry=r)
        self.window = Gauge("stream_detector_retrain_window_events", "Events in the training window.", registry=r)
        self.excluded = Gauge("stream_detector_retrain_excluded_ids",
                              "Alerted or fraud-labelled event ids remembered for exclusion.", registry=r)
        self.feedback_rejected = Counter("stream_detector_retrain_feedback_rejected",
                                         "Feedback records that break the contract (docs/feedback.md), by reason.",
                                         ["reason"], registry=r)
        self.input_rejected = Counter("stream_detector_retrain_input_rejected",
                                      "Input events left out of the training window because a worker dead-letters "
                                      "them (the active model's field schema), by reason.", ["reason"], registry=r)
        self.drift_checks = Counter("stream_detector_retrain_drift_checks",
                                    "Drift judgements of the active model's live scores.", registry=r)
        self.psi = Gauge("stream_detector_retrain_drift_psi", "PSI of the last drift judgement.", registry=r)
        self.ks = Gauge("stream_detector_retrain_drift_ks", "KS statistic of the last drift judgement.", registry=r)
        self.active = Info("stream_detector_retrain_active_model", "Model the retrainer compares against.",
                           registry=r)
        self.history_events = Gauge("stream_detector_retrain_history_events",
                                    "Input events read by time for the last entity-model run.", registry=r)
        self.shadow_decisions = Counter("stream_detector_retrain_shadow_decisions",
                                        "Judgements of a challenger in shadow by outcome (promoted, refused, "
                                        "extended).", ["outcome"], registry=r)
        self.ready = False
        self._server: ThreadingHTTPServer | None = None
        self.port = 0

    def shadow_decided(self, outcome: str) -> None:
        self.shadow_decisions.labels(outcome).inc()

    def run_finished(self, outcome: str, seconds: float) -> None:
        self.runs.labels(outcome).inc()
        self.duration.observe(seconds)

    def drift_judged(self, psi: float, ks: float, model_version: str) -> None:
        self.drift_checks.inc()
        self.psi.set(psi)
        self.ks.set(ks)
        self.active.info({"version": model_version})

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        def ready() -> tuple[bool, dict[str, Any]]:
            return self.ready, {"status": "ready" if self.ready else "not ready"}

        self._server = serve_http(addr, port, self.exposition, ready, "retrain-metrics-http")
        self.port = int(self._server.server_address[1])
        log.info("retrainer metrics and health on http://%s:%d/metrics, /healthz, /readyz", addr, self.port)
        return self.port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

