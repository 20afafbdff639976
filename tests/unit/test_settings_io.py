"""Settings from the environment, file reading (CSV == JSON Lines), the simulator, threshold cache."""

from __future__ import annotations

import gzip

import numpy as np
import orjson
import pytest
import redis

from stream_detector.errors import ConfigError, InputError, ThresholdUnavailable
from stream_detector.inputs import load_events
from stream_detector.pipeline.threshold import ThresholdCache, decide
from stream_detector.settings import load_settings
from stream_detector.simulate import PATTERNS, Simulator
from stream_detector.store import Snapshot, Threshold


def test_documented_defaults_and_env_overrides(monkeypatch):
    s = load_settings()
    assert (s.kafka_bootstrap, s.input_topic, s.alerts_topic, s.dlq_topic, s.group_id, s.redis_url,
            s.redis_prefix) == ("localhost:9092", "transactions", "alerts", "transactions.dlq", "stream-detector",
                                "redis://localhost:6379/0", "stream-detector")
    monkeypatch.setenv("SD_INPUT_TOPIC", "tx2")
    monkeypatch.setenv("SD_BATCH_SIZE", "64")
    monkeypatch.setenv("SD_LOG_LEVEL", "warn")
    assert load_settings().log_level == "WARNING"
    monkeypatch.setenv("SD_LOG_LEVEL", "debug")
    monkeypatch.setenv("SD_DEVICE", "cuda:1")
    s = load_settings()
    assert s.input_topic == "tx2" and s.batch_size == 64 and s.log_level == "DEBUG" and s.device == "cuda:1"


@pytest.mark.parametrize(("var", "value"), [("SD_BATCH_SIZE", "lots"), ("SD_KAFKA_BOOTSTRAP", "nohost"),
                                            ("SD_REDIS_URL", "http://x"), ("SD_AUTO_OFFSET_RESET", "middle"),
                                            # a new-user trial: these stopped later, with a traceback (exit 1)
                                            ("SD_DEVICE", "gpu"), ("SD_LOG_LEVEL", "LOUD"), ("SD_INPUT_TOPIC", ""),
                                            ("SD_ALERTS_TOPIC", "a/b"), ("SD_FEEDBACK_TOPIC", "."),
                                            ("SD_REDIS_PREFIX", ""), ("SD_GROUP_ID", " "),
                                            ("SD_ALERTS_TOPIC", "transactions")])  # the input topic
def test_invalid_settings_give_one_clear_error(monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=var):
        load_settings()


def test_check_config_json_reports_invalid_settings_as_a_failed_check(monkeypatch, capsys):
    """A trial: `SD_BATCH_SIZE=0 check-config --json` printed nothing on stdout (exit 2)."""
    import orjson

    from stream_detector.cli import main

    monkeypatch.setenv("SD_BATCH_SIZE", "0")
    assert main(["check-config", "--json"]) == 2
    out, err = capsys.readouterr()
    checks = orjson.loads(out)
    assert [(c["status"], c["name"]) for c in checks] == [("fail", "settings")] and "SD_BATCH_SIZE" in checks[0]["detail"]
    assert "check-config: error: invalid settings: SD_BATCH_SIZE" in err
    assert main(["check-config"]) == 2 and capsys.readouterr().out == ""  # without --json: the stderr line alone


def test_csv_row_and_json_object_are_the_same_event(tmp_path):
    rows = [{"event_id": "1", "account_id": "007", "amount": 12.5, "n": 3, "country": "US", "empty": None}]
    (tmp_path / "a.csv").write_text("event_id,account_id,amount,n,country,empty,label\n1,007,12.5,3,US,,0\n")
    with gzip.open(tmp_path / "a.jsonl.gz", "wb") as f:
        f.write(orjson.dumps({**rows[0], "label": 0}) + b"\n")
    from_csv = load_events(tmp_path / "a.csv", label_column="label")
    from_json = load_events(tmp_path / "a.jsonl.gz", label_column="label")
    assert from_csv.schema == from_json.schema
    assert from_csv.events == from_json.events == [{**rows[0], "amount": 12.5, "n": 3.0}]
    assert from_csv.labels == from_json.labels == ["0"]


def test_id_column_generated_ids_and_bad_rows(tmp_path):
    (tmp_path / "b.csv").write_text("tx,amount\nT-9,1\n,2\n")
    data = load_events(tmp_path / "b.csv", id_column="tx")  # a file with ids: a row without one is rejected
    assert [e["event_id"] for e in data.events] == ["T-9"] and "tx" not in data.events[0]
    assert [(r.index, r.reason.value) for r in data.rejected] == [(1, "missing_event_id")]
    (tmp_path / "n.csv").write_text("amount\n1\n2\n")  # a file without ids: generated, rows counted from 1
    assert [e["event_id"] for e in load_events(tmp_path / "n.csv").events] == ["n-1", "n-2"]
    with pytest.raises(InputError):
        load_events(tmp_path / "missing.csv")
    (tmp_path / "c.jsonl").write_text('{oops\n{"event_id": "ok", "amount": 1}\n')
    data = load_events(tmp_path / "c.jsonl")  # a bad line is that row's rejection, as in a worker
    assert [e["event_id"] for e in data.events] == ["ok"]
    assert [(r.index, r.reason.value) for r in data.rejected] == [(0, "invalid_json")]


def test_simulator_is_seeded_and_injects_each_pattern():
    a, la = Simulator(seed=3).batch(5000, 0.05)
    b, lb = Simulator(seed=3).batch(5000, 0.05)
    assert [e["amount"] for e in a] == [e["amount"] for e in b] and la == lb
    frauds = [lab for lab in la if lab != "legit"]
    assert 0.03 < len(frauds) / len(la) < 0.07 and set(frauds) == set(PATTERNS)
    testing = [e for e, lab in zip(a, la, strict=True) if lab == "card_testing"]
    assert all(e["amount"] <= 3.0 and e["channel"] == "online" for e in testing)


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_threshold_cache_refreshes_tolerates_outage_then_refuses():
    clock, calls = _Clock(), []
    state = {"fail": False, "value": 1.0}

    def read() -> Snapshot:
        calls.append(clock.t)
        if state["fail"]:
            raise redis.ConnectionError("down")
        return Snapshot(Threshold(state["value"], 1, "m1"), "m1")

    cache = ThresholdCache(read, refresh_s=1.0, max_staleness_s=10.0, clock=clock)
    assert cache.current("m1").value == 1.0
    clock.t = 0.5
    state["value"] = 2.0
    assert cache.current("m1").value == 1.0 and len(calls) == 1, "no Redis call before refresh_s"
    clock.t = 1.0
    assert cache.current("m1").value == 2.0
    state["fail"] = True
    clock.t = 9.0
    assert cache.current("m1").value == 2.0, "stale but within bound"
    clock.t = 11.5
    with pytest.raises(ThresholdUnavailable):
        cache.current("m1")
    state["fail"] = False
    clock.t = 13.0
    assert cache.current("m1").value == 2.0, "recovers on its own once Redis answers"
    with pytest.raises(ThresholdUnavailable, match="belongs to model"):
        cache.current("m2")


def test_decide_is_strictly_greater():
    assert decide(np.array([0.5, 1.0, 1.5]), 1.0).tolist() == [False, False, True]


def test_settings_groups_partition_every_sd_variable() -> None:
    """Settings are composed of groups (Kafka, Redis, worker, retrain, console, security): each
    variable belongs to exactly one group, and a group read alone sees the same SD_ value."""
    import os

    from stream_detector import settings as sm

    groups = [sm.KafkaSettings, sm.RedisSettings, sm.WorkerSettings, sm.RetrainSettings, sm.ConsoleSettings,
              sm.SecuritySettings]
    owned = [name for g in groups for name in g.model_fields]
    assert sorted(owned) == sorted(sm.Settings.model_fields), "every field in exactly one group"
    assert len(owned) == len(set(owned))
    before = os.environ.get("SD_BATCH_SIZE")
    os.environ["SD_BATCH_SIZE"] = "123"
    try:
        assert sm.WorkerSettings().batch_size == 123 == sm.Settings().batch_size
    finally:
        if before is None:
            del os.environ["SD_BATCH_SIZE"]
        else:
            os.environ["SD_BATCH_SIZE"] = before
