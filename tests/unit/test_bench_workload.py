"""Pure helpers of the throughput benchmark: padded events, percentiles, window rates (no timing)."""

from __future__ import annotations

import math

import orjson

from benchmarks.workload import make_events, percentiles, ratio, table, window_rate
from stream_detector.pipeline.decode import decode_batch


def test_padded_events_have_about_30_fields_and_700_bytes_and_decode_cleanly() -> None:
    events, labels = make_events(2000, seed=3)
    sizes = [len(orjson.dumps(e)) for e in events]
    assert all(len(e) == 30 for e in events)
    assert 650 <= sum(sizes) / len(sizes) <= 800
    assert len(labels) == 2000 and 0 < sum(lab != "legit" for lab in labels) < 60
    decoded = decode_batch([orjson.dumps(e) for e in events], 65536)
    assert not decoded.rejected and len(decoded.events) == 2000


def test_padded_events_are_seeded() -> None:
    a, _ = make_events(50, seed=9)
    b, _ = make_events(50, seed=9)
    c, _ = make_events(50, seed=10)
    assert a == b
    assert a != c


def test_percentiles_nearest_rank() -> None:
    samples = [float(x) for x in range(1, 101)]  # 1..100
    assert percentiles(samples) == {"p50": 50.0, "p95": 95.0, "p99": 99.0}
    assert percentiles([7.0]) == {"p50": 7.0, "p95": 7.0, "p99": 7.0}
    assert percentiles([3.0, 1.0, 2.0], qs=(100,)) == {"p100": 3.0}
    assert all(math.isnan(v) for v in percentiles([]).values())


def test_window_rate_counts_only_the_all_busy_window() -> None:
    # worker A busy from t=0 to t=10 at 100/s; worker B joins at t=5 and runs to t=12 at 50/s
    a = [(float(t), 100 * t) for t in range(11)]
    b = [(float(t), 50 * (t - 5)) for t in range(5, 13)]
    assert window_rate([a, b]) == 150.0
    assert window_rate([a]) == 100.0


def test_window_rate_falls_back_without_overlap_and_handles_empty() -> None:
    a = [(0.0, 10)]
    b = [(2.0, 30)]
    assert window_rate([a, b]) == 20.0  # 40 events over the 2 s span
    assert math.isnan(window_rate([]))
    assert math.isnan(window_rate([[], []]))


def test_ratio_and_table_formatting() -> None:
    assert ratio(50.0, 10.0) == "5.0×"
    assert ratio(5000.0, 10.0) == "500×"
    assert ratio(1.0, 0.0) == "n/a"
    assert ratio(math.nan, 1.0) == "n/a"
    text = table(["a", "b"], [[1, 1234.5], ["x", math.nan]])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| 1 | 1,234 |", "| x | n/a |"]


def test_a_paced_latency_sample_is_timed_from_its_own_lap_not_the_first() -> None:
    """The paced producer goes round its values (100,000 values at 20,000/s for 15 s: three laps).
    A run of 2026-12-04 timed every alert from its value's first hand-over and reported p50 5 s,
    p99 10 s at 20,000/s; each record belongs to the last hand-over at or before its timestamp."""
    from benchmarks.throughput import handed_over

    laps = [1_000.4, 6_000.7, 11_000.2]
    assert handed_over(laps, 1_000.0) == 1_000.4  # CreateTime: whole ms, taken just after the stamp
    assert handed_over(laps, 6_000.0) == 6_000.7
    assert handed_over(laps, 6_040.0) == 6_000.7  # appended 40 ms later: still the second lap
    assert handed_over(laps, 11_003.0) == 11_000.2
    assert handed_over(laps, 999.0) == 1_000.4  # before every hand-over (clock skew): the first
