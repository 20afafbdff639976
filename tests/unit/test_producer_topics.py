"""``EventProducer`` asks the broker about a topic once, not once per chunk of a paced run."""

from __future__ import annotations

import pytest

from stream_detector import producer
from stream_detector.settings import Settings


def test_each_topic_is_made_ready_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A live run sends its labels chunk by chunk (``send_records``), and each call used to ask the
    broker for the feedback topic (an admin round trip): `simulate --rate 100` sent ~55 events/s."""
    asked: list[list[str]] = []
    monkeypatch.setattr(producer, "ensure_topics", lambda _s, topics: asked.append(list(topics)) or [])
    events = producer.EventProducer(Settings(create_topics=True), "events")
    for topic in ("events", "feedback", "feedback", "events", "feedback"):
        events._ready(topic)
    assert asked == [["events"], ["feedback"]]
