"""`simulate` live (the Handbook profile) against the real broker: raw events on the input topic,
their delayed labels on the feedback topic as they come due."""

from __future__ import annotations

import subprocess
import sys
import uuid

import orjson
import pytest

from stream_detector.kafka_util import read_all

pytestmark = pytest.mark.integration
CLI = [sys.executable, "-m", "stream_detector.cli"]


def test_simulate_live_publishes_raw_events_and_due_labels(settings, env_for) -> None:
    s = settings.model_copy(update={"feedback_topic": f"fb-{uuid.uuid4().hex[:8]}"})
    # a small world (many compromised terminals per customer) and delays scaled to milliseconds:
    # chargebacks 1-7 days → 86-605 ms, analyst verdicts 1-12 h → 4-43 ms
    done = subprocess.run(CLI + ["simulate", "--rate", "1000", "--duration", "3", "--accounts", "300",
                                 "--terminals", "300", "--seed", "1", "--label-delay-scale", "0.000001"],
                          env=env_for(s), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "delayed labels published to " + s.feedback_topic in done.stderr

    records = read_all(s, s.input_topic)
    events = [orjson.loads(r.value) for r in records]
    assert len(events) == 3000
    assert not any(r.headers for r in records), "raw events: no label header"
    assert set(events[0]) == {"event_id", "account_id", "terminal_id", "timestamp", "amount",
                              "merchant_category", "channel", "card_present"}
    ids = {e["event_id"] for e in events}
    assert len(ids) == 3000 and all(i.startswith("live-") for i in ids)  # never a history file's "sim-<n>"

    labels = [orjson.loads(r.value) for r in read_all(s, s.feedback_topic)]
    assert labels and all(label["event_id"] in ids for label in labels)
    assert all(set(label) == {"event_id", "label", "source", "labelled_at"} for label in labels)
    assert {label["source"] for label in labels} == {"analyst", "chargeback"}
    assert all(label["label"] == "fraud" for label in labels if label["source"] == "chargeback")
    at = {e["event_id"]: e["timestamp"] for e in events}
    assert all(label["labelled_at"] >= at[label["event_id"]] for label in labels)
