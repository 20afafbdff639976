"""One event, one meaning, on the real broker: the README's session by hand (train on the
simulator's CSV, stream its JSON), and every record a real producer writes — batches compressed
with each of Kafka's codecs, and tombstones — on both transports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from kafka import KafkaProducer

from stream_detector.kafka_util import committed_offsets, end_offsets, lag, read_all
from stream_detector.model.bundle import Bundle, load_bundle
from stream_detector.offline import score_events
from stream_detector.producer import EventProducer
from stream_detector.schema import DeadLetterHeaders
from stream_detector.settings import Settings
from stream_detector.simulate import Simulator
from tests.fixtures import TRANSPORTS
from tests.helpers import anomaly, wait_until

pytestmark = pytest.mark.integration
CLI = [sys.executable, "-m", "stream_detector.cli"]
CODECS = ("gzip", "snappy", "lz4", "zstd")


def _drained(settings: Settings) -> bool:
    return lag(settings, settings.group_id, settings.input_topic) == 0


def test_readme_session_by_hand_flags_about_the_calibrated_share(settings, env_for, tmp_path: Path,
                                                                 start_worker) -> None:
    """``simulate --out history.csv`` → ``train`` → ``publish`` → JSON events through a worker:
    the share of normal live events flagged is near the share the model flags of its own
    validation rows (was 100 %: CSV booleans learnt as text, JSON booleans unseen categories)."""
    env = env_for(settings)
    history = tmp_path / "history.csv"
    for args in (["simulate", "--profile", "velocity", "--out", str(history), "--count", "3000", "--fraud-rate", "0.01",
                  "--seed", "3"],
                 ["train", "--input", str(history), "--out", str(tmp_path / "v1"), "--label-column", "label",
                  "--normal-label", "legit", "--exclude", "pattern", "--epochs", "20"],
                 ["publish", str(tmp_path / "v1")]):
        done = subprocess.run(CLI + args, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    bundle = load_bundle(tmp_path / "v1")
    calibrated = float(bundle.calibration["validation_flag_rate"])
    live, _ = Simulator(seed=9, run_id="live").batch(2000, 0.0)  # what `simulate` sends: JSON values
    with EventProducer(settings, settings.input_topic) as producer:
        producer.send(live)
    worker = start_worker(settings)
    wait_until(lambda: _drained(settings), message="all offsets committed")
    worker.stop()
    flagged = len(read_all(settings, settings.alerts_topic)) / len(live)
    assert flagged <= 2 * calibrated + 0.03, (flagged, calibrated)
    assert not read_all(settings, settings.dlq_topic), "every live event is typed and scored"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_every_codec_is_read_and_a_tombstone_is_dead_lettered_with_its_key(settings, published, bundle: Bundle,
                                                                           start_worker) -> None:
    events, _ = Simulator(seed=41, accounts=300, run_id=f"codec-{settings.transport}").batch(800, 0.0)
    events[100] = anomaly("codec-bad-1")
    events[700] = anomaly("codec-bad-2")
    for k, codec in enumerate(CODECS):  # one producer per codec: each batch written compressed with it
        producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, compression_type=codec, linger_ms=5)
        try:
            for event in events[k * 200:(k + 1) * 200]:
                producer.send(settings.input_topic, value=orjson.dumps(event), key=str(event["account_id"]).encode())
            if k == 1:
                producer.send(settings.input_topic, value=None, key=b"acct-tombstone")
            producer.flush(timeout=30)
        finally:
            producer.close(timeout=10)
    from confluent_kafka import Producer  # kafka-python cannot write a record with neither key nor value

    keyless = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    keyless.produce(settings.input_topic, value=None, key=None)
    assert keyless.flush(30) == 0
    scores = score_events(bundle, events).scores
    expected = {str(e["event_id"]) for e, s in zip(events, scores, strict=True) if s > bundle.threshold}
    assert {"codec-bad-1", "codec-bad-2"} <= expected

    worker = start_worker(settings)
    wait_until(lambda: _drained(settings), message="all offsets committed")
    worker.stop()
    assert worker.worker.stats.events == len(events) + 2  # the worker was not stopped by any batch
    assert {orjson.loads(r.value)["event_id"] for r in read_all(settings, settings.alerts_topic)} == expected
    dead = sorted(read_all(settings, settings.dlq_topic), key=lambda r: r.key or b"")
    assert [(r.key, r.value) for r in dead] == [(None, b""), (b"acct-tombstone", None)], \
        "a keyed tombstone stays null; one with neither key nor value gets an empty value (else unsendable)"
    assert {dict(r.headers)[DeadLetterHeaders.REASON] for r in dead} == {b"tombstone"}
    assert committed_offsets(settings, settings.group_id, settings.input_topic) == end_offsets(
        settings, settings.input_topic)


@pytest.mark.parametrize("transport", ["kafka-python"])
def test_a_record_the_client_cannot_read_is_dead_lettered_not_a_crash_loop(settings, published, start_worker,
                                                                           monkeypatch) -> None:
    """kafka-python raises from ``poll`` at the same offset forever when it cannot read a batch
    (here: its zstd library made unavailable to the worker's process). Each of that batch's offsets
    becomes an ``unreadable_record`` dead letter; the records around it are scored; all committed."""
    import kafka.codec

    events, _ = Simulator(seed=43, accounts=300, run_id="unreadable").batch(105, 0.0)
    plain = KafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    packed = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, compression_type="zstd", linger_ms=200)
    try:
        for group, producer in ((events[:50], plain), (events[50:55], packed), (events[55:], plain)):
            for event in group:  # one key: every record on one partition, in this order
                producer.send(settings.input_topic, value=orjson.dumps(event), key=b"acct-one")
            producer.flush(timeout=30)
    finally:
        plain.close(timeout=10)
        packed.close(timeout=10)
    monkeypatch.setattr(kafka.codec, "has_zstd", lambda: False)
    worker = start_worker(settings)
    wait_until(lambda: _drained(settings), message="all offsets committed")
    worker.stop()
    dead = read_all(settings, settings.dlq_topic)
    assert sorted(int(dict(r.headers)[DeadLetterHeaders.OFFSET]) for r in dead) == list(range(50, 55))
    assert {dict(r.headers)[DeadLetterHeaders.REASON] for r in dead} == {b"unreadable_record"}
    assert b"zstd" in dict(dead[0].headers)[DeadLetterHeaders.MESSAGE]
    assert worker.worker.stats.scored == 100 and worker.worker.stats.rejected == 5


def test_produce_sends_one_event_alike_from_csv_json_lines_and_parquet(settings, env_for, tmp_path: Path) -> None:
    """``produce --input`` of the same events as CSV, JSON Lines and Parquet: the records on the
    topic are equal, and the timestamps integers from every format (a CSV's went out as
    ``1792567621113.0``; a new-user trial), and every number of the same JSON type as the file
    wrote it (a CSV's integer cells went out as ``3.0``)."""
    from stream_detector.events_io import write_csv, write_jsonl

    events, _ = Simulator(seed=12, accounts=50, run_id="pp").batch(60, 0.0)
    write_csv(tmp_path / "e.csv", events)
    write_jsonl(tmp_path / "e.jsonl", events)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(events), tmp_path / "e.parquet")
    sent: dict[str, list[dict[str, object]]] = {}
    for kind in ("csv", "jsonl", "parquet"):
        topic = f"{settings.input_topic}-{kind}"
        done = subprocess.run(CLI + ["produce", "--input", str(tmp_path / f"e.{kind}"), "--topic", topic],
                              env=env_for(settings), capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        sent[kind] = sorted((orjson.loads(r.value) for r in read_all(settings, topic)), key=lambda e: str(e["event_id"]))

    def timed(e: dict[str, object]) -> tuple[str, object]:
        return type(e["timestamp"]).__name__, e["timestamp"]

    assert len(sent["jsonl"]) == 60 and all(type(e["timestamp"]) is int for e in sent["jsonl"])
    for kind in ("csv", "parquet"):
        assert sent[kind] == sent["jsonl"]  # every value equal
        assert [timed(e) for e in sent[kind]] == [timed(e) for e in sent["jsonl"]]  # epoch ms: an integer
        assert [{k: type(v).__name__ for k, v in e.items()} for e in sent[kind]] == \
            [{k: type(v).__name__ for k, v in e.items()} for e in sent["jsonl"]], kind  # 3, not 3.0
