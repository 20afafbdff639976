"""``transport.base.Batch``: what a batch commits."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from stream_detector.transport.base import Batch, TopicPartition


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 10**6)), max_size=40), st.integers(0, 40))
def test_next_offsets_is_one_past_each_partitions_largest_offset_also_after_records_are_added(
        records: list[tuple[int, int]], cut: int) -> None:
    """Per partition the largest offset + 1, whatever the order; asked again after records were
    appended (a batch being filled), the answer includes them (it is worked out once per batch
    and kept)."""
    def want(rs: list[tuple[int, int]]) -> dict[TopicPartition, int]:
        ends: dict[TopicPartition, int] = {}
        for p, o in rs:
            tp = TopicPartition("t", p)
            ends[tp] = max(ends.get(tp, 0), o + 1)
        return ends

    first, rest = records[:cut], records[cut:]
    batch = Batch("t", [p for p, _ in first], [o for _, o in first])
    assert batch.next_offsets() == want(first)
    assert batch.next_offsets() == want(first)  # asked again: the same, from the kept answer
    for p, o in rest:
        batch.partitions.append(p)
        batch.offsets.append(o)
    assert batch.next_offsets() == want(records)
