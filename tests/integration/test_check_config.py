"""``stream-detector check-config`` against the real broker and Redis."""

from __future__ import annotations

import subprocess
import sys

import pytest

from stream_detector.checks import run_checks
from stream_detector.settings import Settings

pytestmark = pytest.mark.integration


def test_a_ready_deployment_passes_with_topic_partitions_in_the_report(settings: Settings, published, bundle,
                                                                        env_for):
    done = subprocess.run([sys.executable, "-m", "stream_detector.cli", "check-config"], env=env_for(settings),
                          check=False,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert f"input {settings.input_topic}: 4 partitions" in out
    assert f"dead letters {settings.dlq_topic}: 4 partitions" in out
    assert f"feedback {settings.feedback_topic}: missing" in out  # a warning: labels are optional
    assert f"shadow {settings.shadow_topic}: not created yet (`model shadow` creates it)" in out
    assert f"{bundle.version} loads and scores on cpu" in out
    assert "FAIL" not in out and "result: OK" in out


def test_missing_model_topics_and_unreachable_services_fail(settings: Settings):
    s = settings.model_copy(update={"create_topics": False})
    checks = {(c.name, c.status): c.detail for c in run_checks(s)}
    assert ("kafka", "ok") in checks and ("redis", "ok") in checks
    assert any("missing and SD_CREATE_TOPICS=false" in d for (n, st), d in checks.items() if n == "topic")
    assert checks[("topic", "warn")].startswith(f"shadow {s.shadow_topic}: missing and SD_CREATE_TOPICS=false")
    assert "no active model" in checks[("model", "fail")]
    assert ("threshold", "fail") in checks

    dead = Settings(kafka_bootstrap="127.0.0.1:1", redis_url="redis://127.0.0.1:1/0")
    statuses = {c.name: c.status for c in run_checks(dead, timeout_ms=500)}
    assert statuses["kafka"] == "fail" and statuses["redis"] == "fail"
    assert "model" not in statuses, "nothing is checked behind an unreachable service"
