"""The retrainer's metrics endpoint: names, counts and health answers (a local HTTP server, no Kafka)."""

from __future__ import annotations

import pytest

from stream_detector.retrain.metrics import RetrainerMetrics
from tests.helpers import http_get


def test_retrainer_metrics_are_served_and_count():
    metrics = RetrainerMetrics()
    port = metrics.serve(0, "127.0.0.1")
    try:
        assert http_get(port, "/healthz")[0] == 200
        assert http_get(port, "/readyz")[0] == 503
        metrics.ready = True
        assert http_get(port, "/readyz")[0] == 200
        metrics.run_finished("promoted", 12.0)
        metrics.run_finished("rejected", 3.0)
        metrics.ingested.inc(500)
        metrics.window.set(480)
        metrics.drift_judged(0.31, 0.12, "v7")
        status, body = http_get(port, "/metrics")
        text = body.decode()
        assert status == 200
        for line in ('stream_detector_retrain_runs_total{outcome="promoted"} 1.0',
                     'stream_detector_retrain_runs_total{outcome="failed"} 0.0',
                     "stream_detector_retrain_duration_seconds_count 2.0",
                     "stream_detector_retrain_ingested_events_total 500.0",
                     "stream_detector_retrain_window_events 480.0",
                     "stream_detector_retrain_drift_psi 0.31",
                     'stream_detector_retrain_active_model_info{version="v7"} 1.0'):
            assert line in text, line
    finally:
        metrics.close()
    with pytest.raises(OSError):
        http_get(port, "/healthz")
