"""The hot path's fast paths give the same verdicts and matrices as the straightforward code."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from benchmarks.workload import make_events
from stream_detector import features
from stream_detector.features import fit_spec
from stream_detector.pipeline.decode import _may_repeat_keys, decode_batch
from stream_detector.schema import validate_event

RAWS = [
    b'{"event_id":"a","amount":1.5,"country":"US"}',
    b'{"event_id":"a","nested":{"x":1},"amount":2.0}',
    b'{"event_id":"a","amount":1.0,"list":[1,2]}',
    b'{"amount":1.0}',
    b'{"event_id":7}',
    b'{"event_id":"a","account_id":true}',
    b'{"event_id":"a","schema_version":2}',
    b'{"event_id":"a","timestamp":"yesterday"}',
    b'{"event_id":"a","timestamp":"2026-01-01T10:00:00Z","note":"a:b:c"}',
    b'{"event_id":"a","amount":1,"amount":2}',
    b'{"event_id":"a","note":"x\\":1","amount":2}',
    b'{"event_id":"a", "amount" :1, "amount" :2}',
    b'[1,2]',
]


@pytest.mark.parametrize("raw", RAWS)
def test_orjson_fast_validation_agrees_with_the_full_scan(raw: bytes) -> None:
    obj = orjson.loads(raw)
    assert validate_event(obj, finite_floats=True) == validate_event(obj)


@pytest.mark.parametrize("raw", RAWS)
def test_repeated_key_prefilter_agrees_with_the_two_scan_check(raw: bytes) -> None:
    obj = orjson.loads(raw)
    if isinstance(obj, dict):
        assert _may_repeat_keys(raw, len(obj)) == (raw.count(b'":') + raw.count(b'" :') > len(obj))


def test_decode_batch_verdicts_unchanged_by_the_fast_path() -> None:
    decoded = decode_batch(RAWS, 65536)
    reasons = {r.index: r.reason.value for r in decoded.rejected}
    assert decoded.indices == [0, 8, 10]
    assert reasons == {1: "wrong_type", 2: "wrong_type", 3: "missing_event_id", 4: "wrong_type",
                       5: "wrong_type", 6: "unknown_schema", 7: "invalid_timestamp", 9: "duplicate_key",
                       11: "duplicate_key", 12: "not_an_object"}


def _tricky(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = [dict(e) for e in events]
    out[0]["amount"] = None
    out[1]["amount"] = "12.5"  # numeric string
    out[2]["tx_count_1h"] = True
    out[3]["ctx_signal_00"] = float("inf")
    out[4]["merchant_category"] = "never-seen"
    out[5]["country"] = None
    return out


def _both_paths(spec: features.FeatureSpec, events: list[dict[str, Any]],
                monkeypatch: pytest.MonkeyPatch) -> tuple[tuple[np.ndarray, dict[int, str]], ...]:
    fast = spec.transform(events)
    with monkeypatch.context() as m:
        m.setattr(features, "_field_columns", lambda _events, _names: None)
        slow = spec.transform(events)
    return fast, slow


@pytest.mark.parametrize("case", ["clean", "tricky", "wrong_type", "missing_field"])
def test_feature_fast_path_matches_per_field_path(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    train, _ = make_events(600, seed=1, fraud_rate=0.0)
    spec = fit_spec(train)
    events, _ = make_events(300, seed=2)
    if case != "clean":
        events = _tricky(events)
    if case == "wrong_type":
        events[6]["amount"] = "lots"
    if case == "missing_field":
        del events[7]["ctx_attribute_01"]
    (x_fast, bad_fast), (x_slow, bad_slow) = _both_paths(spec, events, monkeypatch)
    assert x_fast.dtype == x_slow.dtype == np.float32
    assert np.array_equal(x_fast, x_slow)
    assert bad_fast == bad_slow
    if case != "clean":
        assert 3 in bad_fast  # the infinite value is rejected on both paths


def test_feature_fast_path_handles_empty_and_single_field_specs() -> None:
    train, _ = make_events(200, seed=1, fraud_rate=0.0)
    spec = fit_spec(train)
    x, bad = spec.transform([])
    assert x.shape == (0, spec.width) and bad == {}
    one = fit_spec([{"event_id": str(i), "amount": float(i)} for i in range(50)])
    x, bad = one.transform([{"event_id": "z", "amount": 3.0}, {"event_id": "y"}])
    assert x.shape == (2, one.width) and bad == {}
