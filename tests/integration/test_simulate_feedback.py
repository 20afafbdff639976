"""`simulate` live (the Handbook profile) against the real broker: raw events on the input topic,
their delayed labels on the feedback topic as they come due."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid

import orjson
import pytest

from stream_detector.kafka_util import end_offsets, read_all
from stream_detector.simulate import HandbookSimulator
from tests.helpers import wait_until

pytestmark = pytest.mark.integration
CLI = [sys.executable, "-m", "stream_detector.cli"]


@pytest.mark.parametrize("clock", ["world", "wall"])
def test_simulate_live_publishes_raw_events_and_due_labels(clock: str, settings, env_for) -> None:
    s = settings.model_copy(update={"feedback_topic": f"fb-{uuid.uuid4().hex[:8]}"})
    # a small world (many compromised terminals per customer). On the world's clock the 3,000 events
    # span ~5 simulated days, so labels 1-12 h (analyst) and 1-7 days (chargeback) after their events
    # come due within the run; on the wall clock the delays are scaled to milliseconds:
    # chargebacks 1-7 days → 86-605 ms, analyst verdicts 1-12 h → 4-43 ms
    scale = ["--label-delay-scale", "0.000001"] if clock == "wall" else []
    started = time.time() * 1000
    done = subprocess.run(CLI + ["simulate", "--rate", "1000", "--duration", "3", "--accounts", "300",
                                 "--terminals", "300", "--seed", "1", "--clock", clock, *scale],
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
    times = sorted(at.values())
    if clock == "wall":  # stamped as sent
        assert started - 1_000 <= times[0] and times[-1] - times[0] < 60_000
    else:  # the world's pace, ending when the run does: never ahead of the clock of the machine
        span = HandbookSimulator(seed=1, customers=300, terminals=300).world_span_ms(3000)
        assert span > 3 * 86_400_000 and times[-1] <= time.time() * 1000
        assert 0.9 * span < times[-1] - times[0] <= span
        assert all(label["labelled_at"] <= times[-1] for label in labels)  # published as the run's clock passed them


def test_a_second_world_clock_run_warns_of_the_overlap_and_ctrl_c_says_how_far_it_got(settings, env_for) -> None:
    """A new-user trial: a second live run against the same worker doubled its alert share, its
    events older than the cards' last payments (the world's clock ends each run when it ends), and
    nothing said why; Ctrl-C said "interrupted" and nothing of what was sent."""
    s = settings.model_copy(update={"feedback_topic": f"fb-{uuid.uuid4().hex[:8]}"})
    world = ["--accounts", "300", "--terminals", "300", "--seed", "1"]
    first = subprocess.run(CLI + ["simulate", "--rate", "0", "--count", "500", *world], env=env_for(s),
                           capture_output=True, text=True, timeout=120)
    assert first.returncode == 0 and "already holds events" not in first.stderr, first.stderr
    run = subprocess.Popen(CLI + ["simulate", "--rate", "200", "--duration", "60", *world], env=env_for(s),
                           stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: sum(end_offsets(s, s.input_topic).values()) > 600, message="the second run sending")
        run.send_signal(signal.SIGINT)
        _, err = run.communicate(timeout=60)
    finally:
        run.kill()
    assert run.returncode == 130, err
    assert f"warning: {s.input_topic} already holds events up to " in err  # said before its first event
    interrupted = next(line for line in err.splitlines() if line.startswith("interrupted: "))
    sent = int(interrupted.split()[1].replace(",", ""))
    assert 100 <= sent < 12_000 and "records acknowledged" in interrupted
    assert 500 < sum(end_offsets(s, s.input_topic).values()) <= 500 + sent  # no more than it says it sent
