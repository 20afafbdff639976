"""``kafka_util``'s lag under live traffic, without a broker: the reads it makes are scripted."""

from __future__ import annotations

from typing import Any

import pytest
from kafka import TopicPartition

from stream_detector import kafka_util
from stream_detector.settings import Settings


def test_a_commit_landing_between_the_reads_never_shows_past_the_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every read lets traffic go on: 10 more records arrive and the worker commits all it has
    read. Whatever lands between the committed-offset read and the end read, the committed offset
    is at most the end (read the other way round, it was 10 past it, and ``group_lag`` took the
    topic for recreated)."""
    tp = TopicPartition("tx", 0)
    state = {"end": 100, "committed": 100}

    def traffic() -> None:
        state["end"] += 10
        state["committed"] = state["end"]

    def ends(settings: Any, topic: str) -> dict[TopicPartition, int]:
        traffic()
        return {tp: state["end"]}

    def committed(settings: Any, group: str, topic: str) -> dict[TopicPartition, int]:
        traffic()
        return {tp: state["committed"]}

    monkeypatch.setattr(kafka_util, "end_offsets", ends)
    monkeypatch.setattr(kafka_util, "committed_offsets", committed)
    for _ in range(3):
        [(partition, end, done, behind)] = kafka_util._partition_lags(Settings(), "g", "tx")
        assert partition == 0 and done is not None and done <= end and behind == end - done == 10
