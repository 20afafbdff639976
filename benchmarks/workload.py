"""Seeded workload and pure helpers of the throughput benchmark (unit-tested, no I/O).

Events are the simulator's card transactions (13 fields, ~290 bytes of JSON) widened with
seeded context fields — numeric (scores, amounts, counters) and categorical (small vocabularies)
— to about 30 fields and ~700 bytes, the size of a typical enriched authorisation record.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from stream_detector.simulate import Simulator

EXTRA_NUMERIC = 12
EXTRA_CATEGORICAL = 5
VOCAB = 12


def _numeric_names() -> list[str]:
    return [f"ctx_signal_{i:02d}" for i in range(EXTRA_NUMERIC)]


def _categorical_names() -> list[str]:
    return [f"ctx_attribute_{i:02d}" for i in range(EXTRA_CATEGORICAL)]


def pad_events(events: list[dict[str, Any]], rng: np.random.Generator) -> list[dict[str, Any]]:
    """Add ``EXTRA_NUMERIC`` numeric and ``EXTRA_CATEGORICAL`` categorical fields to each event (in place)."""
    n = len(events)
    if n == 0:
        return events
    # mixed shapes: lognormal amounts, bounded scores, small counters
    numeric = np.empty((EXTRA_NUMERIC, n), dtype=np.float64)
    for j in range(EXTRA_NUMERIC):
        kind = j % 3
        if kind == 0:
            numeric[j] = np.round(rng.lognormal(4.0, 1.0, n), 4)
        elif kind == 1:
            numeric[j] = np.round(rng.random(n), 6)
        else:
            numeric[j] = rng.poisson(3.0, n)
    codes = rng.integers(0, VOCAB, (EXTRA_CATEGORICAL, n))
    num_names, cat_names = _numeric_names(), _categorical_names()
    num_cols = [col.tolist() for col in numeric]
    for j in range(EXTRA_NUMERIC):
        if j % 3 == 2:
            num_cols[j] = [int(v) for v in num_cols[j]]
    cat_cols = [[f"s{j}-value-{c:02d}" for c in row.tolist()] for j, row in enumerate(codes)]
    for i, event in enumerate(events):
        for j, name in enumerate(num_names):
            event[name] = num_cols[j][i]
        for j, name in enumerate(cat_names):
            event[name] = cat_cols[j][i]
    return events


def make_events(n: int, seed: int, fraud_rate: float = 0.01, run_id: str = "bench",
                span_ms: int = 0) -> tuple[list[dict[str, Any]], list[str]]:
    """``n`` padded events (~30 fields, ~700 bytes) and their labels; same seed, same events."""
    sim = Simulator(seed=seed, accounts=2000, run_id=run_id)
    events, labels = sim.batch(n, fraud_rate, now_ms=1_790_000_000_000, span_ms=span_ms)
    return pad_events(events, np.random.default_rng(seed + 7)), labels


def drifted(events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events as producers' events drift from what a model was trained on (new dicts): every
    event carries a key the model's schema does not name (``merchant_name``), and one in 20 leaves
    out a feature field (``ctx_signal_01``: read as null, as a producer that omits nulls sends it)."""
    left_out = _numeric_names()[1]
    out = []
    for i, event in enumerate(events):
        new = {k: v for k, v in event.items() if not (i % 20 == 0 and k == left_out)}
        new["merchant_name"] = f"shop-{i % 50:02d}"
        out.append(new)
    return out


def encode(events: Sequence[dict[str, Any]]) -> list[bytes]:
    return [orjson.dumps(e) for e in events]


def percentiles(samples: Sequence[float], qs: Sequence[float] = (50, 95, 99)) -> dict[str, float]:
    """Nearest-rank percentiles (``p50`` …) of ``samples``; NaN for an empty sample."""
    if not len(samples):
        return {f"p{q:g}": math.nan for q in qs}
    ordered = sorted(samples)
    out = {}
    for q in qs:
        rank = max(1, math.ceil(q / 100.0 * len(ordered)))
        out[f"p{q:g}"] = float(ordered[rank - 1])
    return out


def ratio(value: float, base: float) -> str:
    """``value / base`` as ``"12.3×"``; ``"n/a"`` when either is missing or the base is zero."""
    if not (math.isfinite(value) and math.isfinite(base)) or base <= 0:
        return "n/a"
    return f"{value / base:.1f}×" if value / base < 100 else f"{value / base:.0f}×"


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table (also readable as plain text)."""
    def cell(v: object) -> str:
        if isinstance(v, float):
            if not math.isfinite(v):
                return "n/a"
            return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}"
        return str(v)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _events_at(timeline: Sequence[tuple[float, int]], t: float) -> int:
    """Cumulative events of one worker at time ``t`` (step function of its batch timeline)."""
    done = 0
    for when, cumulative in timeline:
        if when > t:
            break
        done = cumulative
    return done


def window_rate(timelines: Sequence[Sequence[tuple[float, int]]]) -> float:
    """Aggregate events/s of several workers while *all* of them were busy.

    Each timeline is ``[(time after batch, cumulative events), ...]``. The window runs from the
    latest first batch to the earliest last batch, so start-up, rebalances and the tail where
    some workers already ran dry are left out. Falls back to total events over the whole span
    when the window is empty (one batch each, or no overlap).
    """
    lines = [t for t in timelines if t]
    if not lines:
        return math.nan
    t0 = max(t[0][0] for t in lines)
    t1 = min(t[-1][0] for t in lines)
    if t1 > t0:
        return sum(_events_at(t, t1) - _events_at(t, t0) for t in lines) / (t1 - t0)
    span = max(t[-1][0] for t in lines) - min(t[0][0] for t in lines)
    total = sum(t[-1][1] for t in lines)
    return total / span if span > 0 else math.nan
