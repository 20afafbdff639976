"""``make demo``'s default path (``demo.run_demo``) on the real services, on a small world: two
deployments replay the history from Kafka and stream the live week; the figures it prints are
the alerts the workers published, and those equal offline scoring of the same events with the
same labels (point in time), for both models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson

from stream_detector.demo import DemoConfig, run_demo
from stream_detector.feedback import Label, parse_label
from stream_detector.kafka_util import read_all
from stream_detector.model.bundle import load_bundle
from stream_detector.offline import score_events
from stream_detector.settings import Settings


def test_the_demo_streams_history_and_labels_and_reports_what_the_workers_alerted(
        settings: Settings, tmp_path: Path) -> None:
    lines: list[str] = []
    rc = run_demo(settings, DemoConfig(cards=300, terminals=600, rate=0, epochs=2), tmp_path, lines.append)
    assert rc == 0, "\n".join(lines)
    report = orjson.loads((tmp_path / "summary.json").read_bytes())
    events = [orjson.loads(line) for line in (tmp_path / "events.jsonl").read_bytes().splitlines()]
    labels = [lab for lab in (parse_label(orjson.loads(line))
                              for line in (tmp_path / "feedback.jsonl").read_bytes().splitlines())
              if isinstance(lab, Label)]
    assert report["drained"] and report["events"] == len(events) and report["labels"] == len(labels) > 0
    live_from = events[-report["live_events"]]["timestamp"]
    assert all(e["timestamp"] < live_from for e in events[:-report["live_events"]])  # the last week is live

    deps = report["deployments"]
    assert set(deps) == {"history", "labels"}
    assert deps["history"]["redis_prefix"] != deps["labels"]["redis_prefix"]
    assert deps["history"]["head_threshold"] is None and deps["labels"]["head_threshold"] is not None
    for name, dep in deps.items():
        assert dep["worker_events"] == len(events), name  # each worker read the backlog and the live week
        bundle = load_bundle(tmp_path / f"model-{name}")
        assert bundle.version == dep["model_version"]
        # what the worker alerted = offline scoring of the same events in file order, labels as known then
        offline = score_events(bundle, events, labels=labels if bundle.entity and bundle.entity.label_keys else ())
        flagged = offline.flagged(bundle.threshold, bundle.head_threshold)
        near = np.isclose(offline.scores, bundle.threshold, rtol=1e-5)  # float32 GEMM across batch shapes
        if offline.probability is not None:
            near |= np.isclose(offline.probability, bundle.head_threshold, rtol=1e-5)
        live_idx = range(len(events) - report["live_events"], len(events))
        expected = {events[i]["event_id"] for i in live_idx if flagged[i] and not near[i]}
        s = settings.model_copy(update={"alerts_topic": dep["alerts_topic"]})
        published = {a["event_id"]: a for a in (orjson.loads(r.value) for r in read_all(s, s.alerts_topic))}
        live_alerts = {i for i in published if i in {events[j]["event_id"] for j in live_idx}}
        undecided = {events[i]["event_id"] for i in live_idx if near[i]}
        assert live_alerts - undecided == expected, name
        assert dep["alerts"] == len(live_alerts)
        truth = {line.split(",")[0] for line in (tmp_path / "ground_truth.csv").read_text().splitlines()[1:]
                 if not line.endswith(",legit")}
        assert dep["true_alerts"] == len(live_alerts & truth)
        if name == "labels":
            assert all(a["fired"] and a["probability"] is not None for a in published.values())
            # why the head said fraud: its fields, largest positive contribution first
            why = [a["head_top_features"] for a in published.values() if "supervised" in a["fired"]]
            assert why and all(w and w[0]["contribution"] >= w[-1]["contribution"] > 0 for w in why)
            assert sum(n for _, n in dep["fired"].values()) == dep["alerts"]
