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


def test_two_stages_are_checked_as_the_worker_would_refuse_them(settings: Settings, published, bundle) -> None:
    """``SD_STAGE``: stage 1 without exactly-once, a repartition topic of another size than
    buckets × the input's partitions, and a model without both entity keys each FAIL (a new-user
    trial found check-config passing them); the right setup passes."""
    from stream_detector.topics import ensure_topics

    s1 = settings.model_copy(update={"stage": "repartition", "repartition_key": "terminal_id",
                                     "entity_partition_key": "account_id", "repartition_buckets": 3})
    checks = run_checks(s1)
    assert any(c.status == "fail" and c.name == "stage" and "SD_DELIVERY=exactly_once" in c.detail for c in checks)
    assert any(c.status == "warn" and f"repartition {s1.repartition_topic_name}: missing" in c.detail
               and "12 partitions" in c.detail for c in checks)
    assert any(c.status == "fail" and c.name == "stage" and "cannot run in two stages" in c.detail
               for c in checks)  # the fixture's model has no entity features
    ensure_topics(s1, [s1.repartition_topic_name], partitions=5)
    s2 = s1.model_copy(update={"stage": "repartitioned"})
    bad = [c for c in run_checks(s2) if c.status == "fail" and c.name == "topic"]
    assert len(bad) == 1 and "5 partitions, not 12" in bad[0].detail
    right = s2.model_copy(update={"repartition_topic": f"{s2.input_topic}.stage2"})
    ensure_topics(right, [right.repartition_topic_name], partitions=12)
    ok = {c.detail for c in run_checks(right) if c.status == "ok"}
    assert f"repartition {right.repartition_topic_name}: 12 partitions (4 x 3 buckets)" in ok
    assert any(d.startswith("stage 2:") and "divides 3" in d for d in ok)


def test_a_worker_refuses_to_start_on_a_missing_topic_it_may_not_create(settings: Settings, published,
                                                                         env_for) -> None:
    """A new-user trial: ``SD_CREATE_TOPICS=false`` and a missing input topic gave kafka-python's
    "Topic not found" ERROR nine times a second and exit 0. The worker says which topics are
    missing in one line and exits 2, as ``check-config`` FAILs it."""
    s = settings.model_copy(update={"create_topics": False, "input_topic": f"{settings.input_topic}-nosuch"})
    done = subprocess.run([sys.executable, "-m", "stream_detector.cli", "worker", "--max-idle-polls", "3"],
                          env=env_for(s), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last == (f"stream-detector worker: error: {s.input_topic} (the input topic, with as many partitions as "
                    "workers are to share it): does not exist and SD_CREATE_TOPICS=false: create it (`stream-detector "
                    "topics` with the same settings does) or set SD_CREATE_TOPICS=true")
    # two stages: the repartition topic's own hint (a second trial: it got the input topic's), and `topics` makes it
    from stream_detector.topics import topic_partitions

    two = settings.model_copy(update={"create_topics": False, "stage": "repartitioned", "repartition_buckets": 3,
                                      "repartition_key": "terminal_id", "entity_partition_key": "account_id"})
    done = subprocess.run([sys.executable, "-m", "stream_detector.cli", "worker", "--max-idle-polls", "3"],
                          env=env_for(two), capture_output=True, text=True, timeout=120)
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2 and f"{two.repartition_topic_name} (the repartition topic, with " \
        "SD_REPARTITION_BUCKETS=3 x the input topic's partitions): does not exist" in last, done.stderr
    unstaged = subprocess.run([sys.executable, "-m", "stream_detector.cli", "topics"],  # a trial: "all exist"
                              env=env_for(two.model_copy(update={"stage": "whole"})), capture_output=True, text=True,
                              timeout=120)
    assert unstaged.returncode == 0 and two.repartition_topic_name not in unstaged.stdout, unstaged.stdout
    assert f"note: the repartition topic {two.repartition_topic_name} is made only with SD_STAGE set" \
        in unstaged.stderr, unstaged.stderr
    made = subprocess.run([sys.executable, "-m", "stream_detector.cli", "topics"], env=env_for(two),
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0 and two.repartition_topic_name in made.stdout, made.stdout + made.stderr
    assert topic_partitions(two, two.repartition_topic_name) == 3 * topic_partitions(two, two.input_topic)
