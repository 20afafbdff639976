"""The model registry on real Redis (+ Kafka for the workers): promote, rollback with thresholds,
retention, the directory artifact store, refusal of tampered artifacts, hot swap by pub/sub."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import redis

from stream_detector.cli import main as cli_main
from stream_detector.errors import ConfigError, ModelError
from stream_detector.kafka_util import committed_offsets, end_offsets, lag, read_all
from stream_detector.model.artifacts import DirArtifacts
from stream_detector.model.bundle import (
    CALIBRATION_FILE,
    METADATA_FILE,
    MODEL_FILE,
    Bundle,
    _digest,
    _overall,
    bundle_from_files,
)
from stream_detector.producer import EventProducer
from stream_detector.settings import Settings
from stream_detector.simulate import Simulator
from stream_detector.store import ControlPlane
from tests.helpers import anomaly, wait_until

pytestmark = pytest.mark.integration


def variant(bundle: Bundle, n: int) -> Bundle:
    """The same model with threshold × (1 + n/100): a distinct, valid version without training."""
    calibration = {**bundle.calibration, "threshold": bundle.threshold * (1 + n / 100)}
    files = {**bundle.files, CALIBRATION_FILE: orjson.dumps(calibration)}
    digests = _digest(files)
    sha = _overall(digests)
    meta = {**bundle.metadata, "files": digests, "sha256": sha, "version": f"{bundle.version[:16]}-v{n:02d}-{sha[:8]}"}
    return bundle_from_files({**files, METADATA_FILE: orjson.dumps(meta)})


def test_rollback_restores_the_previous_version_and_its_own_threshold(published, bundle):
    v1, v2, v3 = bundle, variant(bundle, 1), variant(bundle, 2)
    published.set_threshold(0.123, v1.version, "pytest", note="operator tuned v1")
    published.publish(v2, set_by="pytest")
    published.publish(v3, set_by="pytest")
    assert published.active_model() == v3.version and published.previous_model() == v2.version

    assert published.rollback("pytest") == v2.version
    assert published.active_model() == v2.version
    assert published.threshold().value == pytest.approx(v2.threshold)  # type: ignore[union-attr]
    assert published.rollback("pytest") == v1.version, "a second rollback walks further back"
    current = published.threshold()
    assert current is not None and current.model_version == v1.version
    assert current.value == pytest.approx(0.123), "the threshold that v1 last ran with comes back"
    with pytest.raises(ConfigError, match="nothing to roll back"):
        published.rollback("pytest")
    notes = [line["note"] for line in published.threshold_history(3)]
    assert notes[0] == f"rollback {v2.version} -> {v1.version}"

    published.activate(v3.version, "pytest")  # promote by hand: back on the stack
    assert published.active_model() == v3.version and published.previous_model() == v1.version


def test_retention_keeps_the_newest_plus_active_and_previous(published, bundle, settings, monkeypatch, capsys):
    versions = [bundle.version]
    for n in range(1, 7):
        b = variant(bundle, n)
        published.publish(b, set_by="pytest")
        versions.append(b.version)
    published.rollback("pytest")
    published.rollback("pytest")  # active v4, previous v3 (both older than the newest three)
    active, previous = versions[4], versions[3]
    assert published.active_model() == active and published.previous_model() == previous
    removed = published.prune(keep=3)
    kept = set(published.model_versions())
    assert kept == {active, previous, versions[6]}, "two protected + the newest one make three"
    assert set(removed) == set(versions) - kept
    raw = redis.Redis.from_url(settings.redis_url)  # what is left in Redis itself
    for gone in removed:
        assert not raw.exists(published.key("model", gone))
        assert raw.get(published.key("model", gone, "threshold")) is None
        with pytest.raises(ModelError):
            published.fetch_bundle(gone)
    with pytest.raises(ConfigError):
        published.delete_version(active)
    newer = variant(bundle, 9)
    published.store(newer)
    monkeypatch.setenv("SD_REDIS_URL", settings.redis_url)
    monkeypatch.setenv("SD_REDIS_PREFIX", settings.redis_prefix)
    assert cli_main(["model", "prune", "--keep", "0"]) == 0  # 0 was read as "the default", 10, and kept it
    assert set(published.model_versions()) == {active, previous}
    assert cli_main(["model", "prune", "--keep", "-1"]) == 2  # was a ValueError, exit 1
    assert "--keep must be >= 0" in capsys.readouterr().err


def test_directory_store_keeps_bytes_on_disk_and_refuses_tampered_ones(settings: Settings, bundle, tmp_path: Path):
    control = ControlPlane.from_url(settings.redis_url, settings.redis_prefix, artifacts=DirArtifacts(tmp_path))
    control.publish(bundle, set_by="pytest")
    stored = redis.Redis.from_url(settings.redis_url).hgetall(control.key("model", bundle.version))
    assert set(stored) == {b"metadata.json", b"_location"}, "only the index entry lives in Redis"
    on_disk = tmp_path / bundle.version / MODEL_FILE
    assert on_disk.read_bytes() == bundle.files[MODEL_FILE]
    reader = ControlPlane.from_url(settings.redis_url, settings.redis_prefix)  # no store settings
    assert reader.active_bundle().sha256 == bundle.sha256
    assert reader.model_info(bundle.version)["store"] == "dir"

    data = bytearray(on_disk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    on_disk.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256 mismatch in model.pt"):
        reader.fetch_bundle(bundle.version)
    newer = variant(bundle, 1)
    control.publish(newer, set_by="pytest")
    with pytest.raises(ConfigError):  # the previous version is protected
        control.delete_version(bundle.version)
    newest = variant(bundle, 2)
    control.publish(newest, set_by="pytest")
    assert control.prune(keep=2) == [bundle.version]
    assert not (tmp_path / bundle.version).exists(), "pruning removes the directory too"


def _mixed(n: int, seed: int, n_bad: int, tag: str) -> tuple[list[dict[str, object]], set[str]]:
    events, _ = Simulator(seed=seed, accounts=300, run_id=f"{tag}{seed}").batch(n, 0.0)
    bad = [anomaly(f"{tag}-bad-{seed}-{i}", f"acct-{i:05d}") for i in range(n_bad)]
    return events[: n // 2] + bad + events[n // 2:], {str(e["event_id"]) for e in bad}


def _alerts(settings: Settings) -> list[dict[str, object]]:
    return [orjson.loads(r.value) for r in read_all(settings, settings.alerts_topic)]


def _produce(settings: Settings, events: list[dict[str, object]]) -> None:
    with EventProducer(settings, settings.input_topic) as producer:
        producer.send(events)


def _drained(settings: Settings) -> bool:
    return lag(settings, settings.group_id, settings.input_topic) == 0


def test_worker_swaps_on_a_pubsub_notice_before_its_next_poll(settings, bundle, start_worker):
    slow = settings.model_copy(update={"threshold_refresh_s": 600.0, "threshold_max_staleness_s": 1200.0})
    control = ControlPlane.from_url(slow.redis_url, slow.redis_prefix)
    control.publish(bundle, set_by="pytest")
    first, first_bad = _mixed(400, 21, 3, "a")
    _produce(slow, first)
    running = start_worker(slow)
    wait_until(lambda: _drained(slow), message="first wave committed")
    newer = variant(bundle, 3)
    control.store(newer)
    control.activate(newer.version, "pytest")  # polling would notice in 10 minutes; pub/sub now
    wait_until(lambda: running.worker.scorer.version == newer.version, timeout_s=30, message="swap")
    second, second_bad = _mixed(400, 22, 3, "b")
    _produce(slow, second)
    wait_until(lambda: _drained(slow), message="second wave committed")
    running.stop()
    alerts = _alerts(slow)
    by_version = {str(a["event_id"]): a["model_version"] for a in alerts}
    assert first_bad <= set(by_version) and second_bad <= set(by_version), "every anomaly alerted"
    assert {by_version[i] for i in first_bad} == {bundle.version}
    assert {by_version[str(e["event_id"])] for e in second if str(e["event_id"]) in by_version} == {newer.version}
    assert len(alerts) == len(by_version), "no duplicates"
    assert committed_offsets(slow, slow.group_id, slow.input_topic) == end_offsets(slow, slow.input_topic)
    assert running.worker.stats.events == len(first) + len(second) and running.worker.stats.swaps == 1


def test_a_tampered_artifact_is_refused_and_the_worker_keeps_its_model(published, settings, bundle, start_worker,
                                                                       caplog):
    caplog.set_level(logging.ERROR, logger="stream_detector.worker")
    running = start_worker(settings)
    first, first_bad = _mixed(300, 31, 2, "c")
    _produce(settings, first)
    wait_until(lambda: _drained(settings), message="first wave committed")
    bad = variant(bundle, 4)
    published.store(bad)
    model = bytearray(bad.files[MODEL_FILE])
    model[len(model) // 2] ^= 0xFF
    redis.Redis.from_url(settings.redis_url).hset(published.key("model", bad.version), MODEL_FILE, bytes(model))
    with pytest.raises(ModelError, match="sha256 mismatch"):
        published.activate(bad.version, "pytest")  # the registry verifies before it flips
    published.set_threshold(bad.threshold, bad.version, "pytest", activate_model=bad.version)  # forced flip
    wait_until(lambda: running.worker.stats.swap_failures >= 1, message="refused load")
    assert running.worker.scorer.version == bundle.version
    assert any(bad.version in r.getMessage() and "keeping" in r.getMessage() for r in caplog.records)
    second, second_bad = _mixed(300, 32, 2, "d")
    _produce(settings, second)
    wait_until(lambda: running.worker.stats.held_batches >= 1, message="batch held: no threshold for the kept model")
    assert published.rollback("pytest") == bundle.version
    wait_until(lambda: _drained(settings), message="second wave committed after rollback")
    running.stop()
    alerts = _alerts(settings)
    assert first_bad | second_bad <= {a["event_id"] for a in alerts}
    assert {a["model_version"] for a in alerts} == {bundle.version}
    assert running.worker.scorer.version == bundle.version and running.worker.stats.swaps == 0
    assert running.worker.stats.swap_failures == 1, "a refused version is not reloaded on every poll"
    assert running.worker.stats.events == len(first) + len(second)


def test_model_cli_lists_shows_promotes_and_rolls_back(published, settings, bundle, env_for):
    newer = variant(bundle, 5)
    published.store(newer)
    env = env_for(settings)

    def cli(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "stream_detector.cli", "model", *args], check=False, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    # a shadow period that ended as stopped leaves a gate record with no verdict ("passed"): `model
    # list` failed on it with KeyError: 'passed' for every version (a new-user trial)
    published.registry.attach_shadow_decision(newer.version, {"outcome": "stopped", "reasons": ["stopped by hand"]})
    stored = cli("list").splitlines()  # newer is stored, never active: its bundle's calibrated threshold
    assert stored[0] == (f"{newer.version}            threshold={newer.threshold:.6g} (calibrated; never active)  "
                         "store=redis  gate=no-verdict"), stored
    assert stored[1].startswith(f"{bundle.version}  active    threshold={bundle.threshold:.6g}  "), stored
    assert stored[1].endswith("gate=none"), stored  # published by hand: no gate (it printed gate=None)
    assert f"model {newer.version} is active" in cli("promote", newer.version)
    listing = cli("list").splitlines()
    assert listing[0].startswith(f"{newer.version}  active") and listing[1].startswith(f"{bundle.version}  previous")
    # the previous version made the challenger: both marks, and it is not stored anew (its stored_at
    # moved, so `model list`, newest first, put the older model first; a new-user trial)
    stored_at = published.model_info(bundle.version)["stored_at"]
    assert "is the challenger in shadow" in cli("shadow", bundle.version)
    listing = cli("list").splitlines()
    assert listing[1].startswith(f"{bundle.version}  previous+shadow"), listing
    assert published.model_info(bundle.version)["stored_at"] == stored_at
    assert "shadow period ended" in cli("shadow-stop")
    shown = orjson.loads(cli("show", newer.version))
    assert shown["metadata"]["sha256"] == newer.sha256
    # the model's input fields, where the missing- and new-value warnings send a user (a trial: none listed)
    fields = {f["name"]: f for f in shown["fields"]}
    assert list(fields) == list(newer.schema.input_fields)
    amount = next(c for c in newer.spec.numeric if c.name == "amount")
    assert fields["amount"]["feature"] == "number" and fields["amount"]["missing_share"] == amount.missing_share
    assert f"rolled back to {bundle.version}" in cli("rollback")
    assert published.active_model() == bundle.version
    assert published.threshold().value == pytest.approx(bundle.threshold)  # type: ignore[union-attr]


def test_a_batch_in_flight_during_a_swap_is_decided_by_one_model(settings, bundle, start_worker):
    """The swap race (issue 15): the new model's threshold is visible while the new model is still
    loading. A batch scored by the old model must not be decided against the new threshold or
    labelled with the new version: the worker finishes the swap and scores the batch again.

    Deterministic: the new model's load is held at a gate until the worker waits on it inside a
    batch, so the race is exercised every run (``rescored_batches``), not by chance. Every alert,
    before and after, must agree with offline scoring by the model it names."""
    import threading

    import numpy as np

    from stream_detector.offline import score_events
    from tests.helpers import small_bundle

    control = ControlPlane.from_url(settings.redis_url, settings.redis_prefix)
    control.publish(bundle, set_by="pytest")
    other = small_bundle(seed=7, epochs=5)  # a different model: its scores are on another scale
    assert other.version != bundle.version
    first, first_bad = _mixed(300, 31, 3, "a")
    _produce(settings, first)
    running = start_worker(settings)
    wait_until(lambda: _drained(settings), message="first wave committed")

    gate, waiting = threading.Event(), threading.Event()
    worker = running.worker
    load, finish = worker.models._load, worker.models.finish

    def gated_load(version: str):  # noqa: ANN202 - test hook
        if version == other.version:
            assert gate.wait(60), "gate never opened"
        return load(version)

    def watched_finish(wait: bool) -> bool:
        if wait:
            waiting.set()  # a batch is waiting for the new model: open the gate now
        return finish(wait)

    worker.models._load, worker.models.finish = gated_load, watched_finish  # type: ignore[method-assign]
    control.store(other)
    control.activate(other.version, "pytest")  # B's threshold is live; B is still loading
    wait_until(lambda: worker.models.pending_version == other.version,
               message="the worker saw B's threshold and is loading B")  # else wave 2 is A's, rightly
    second, second_bad = _mixed(300, 32, 3, "b")
    _produce(settings, second)
    assert waiting.wait(60), "no batch met the new threshold while the new model loaded"
    gate.set()
    wait_until(lambda: _drained(settings), message="second wave committed")
    running.stop()

    assert worker.stats.rescored_batches >= 1 and worker.stats.swaps == 1
    alerts = _alerts(settings)
    ids = {str(a["event_id"]) for a in alerts}
    assert first_bad | second_bad <= ids, "every anomaly alerted"
    assert {a["model_version"] for a in alerts if a["event_id"] in second_bad} == {other.version}
    models = {bundle.version: bundle, other.version: other}
    thresholds = {version: model.threshold for version, model in models.items()}  # publish/activate set these
    for version in {a["model_version"] for a in alerts}:
        mine = [a for a in alerts if a["model_version"] == version]
        offline = score_events(models[version], [a["event"] for a in mine]).scores
        live = np.array([a["score"] for a in mine])
        assert np.allclose(live, offline, rtol=1e-4, atol=1e-6), f"alerts of {version} carry another model's scores"
        assert all(a["threshold"] == pytest.approx(thresholds[version]) for a in mine)
        assert all(a["score"] > a["threshold"] for a in mine)


@pytest.mark.parametrize("value", ["nan", "inf", "1e309", "-1"])
def test_an_unusable_threshold_is_refused_and_nothing_is_written(published, bundle, settings, env_for, value):
    """``threshold set nan`` used to fail half way: the script had bumped the version and written
    the value before its audit line failed to encode NaN, and workers then flagged nothing without
    a word. Refused now on every path — the CLI (one line, exit 2), ``ControlPlane.set_threshold``,
    and the Lua script itself before its first write — and a worker refuses such a value in Redis."""
    before = published.threshold()
    history = published.threshold_history(5)
    got = subprocess.run([sys.executable, "-m", "stream_detector", "threshold", "set", value],
                         env=env_for(settings), capture_output=True, text=True, timeout=120)
    assert got.returncode == 2, got.stderr
    lines = got.stderr.strip().splitlines()
    assert len(lines) == 1 and "finite number >= 0" in lines[0], got.stderr
    with pytest.raises(ConfigError, match="finite number >= 0"):
        published.set_threshold(float(value), bundle.version, "pytest")
    store = published.thresholds  # the script alone, as a caller without the Python check would run it
    k = store.keys.key
    with pytest.raises(redis.ResponseError, match="INVALID"):
        store._set_threshold(keys=[k("threshold"), k("threshold", "seq"), k("threshold", "history"),
                                   k("model", "active"), k("model", bundle.version, "threshold"), k("model", "history"),
                                   k("model", bundle.version, "head_threshold")],
                             args=[value, bundle.version, "now", "pytest", "", "", "", 1000, "x", "push", "", ""])
    assert published.threshold() == before and published.threshold_history(5) == history


def test_a_worker_refuses_an_unusable_threshold_found_in_redis(published, bundle, settings):
    """A NaN written around the checks (by hand, or by an older release) is not "flag nothing": the
    threshold cache reports it unusable, so readiness fails and batches are held, not scored."""
    from stream_detector.errors import ThresholdUnavailable
    from stream_detector.pipeline.threshold import ThresholdCache

    r = redis.Redis.from_url(settings.redis_url)
    r.hset(published.thresholds.keys.key("threshold"), "value", "nan")
    cache = ThresholdCache(published.worker_view().snapshot, 1.0, 60.0)
    cache.refresh(force=True)
    assert not cache.fresh()
    with pytest.raises(ThresholdUnavailable, match="unusable"):
        cache.current(bundle.version)
