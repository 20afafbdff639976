"""FeatureSpec: fit rules, transform shape and robustness, serialisation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_detector.features import OTHER, FeatureSpec, fit_spec
from stream_detector.schema import RejectReason


def _events(n: int = 200) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        out.append({
            "event_id": f"e{i}", "account_id": f"a{i % 7}", "timestamp": 1_790_000_000_000 + i,
            "amount": float(rng.lognormal(3, 1.5)), "age": int(rng.integers(18, 90)),
            "country": ["US", "GB", "DE"][i % 3], "flag": bool(i % 2),
            "tx_ref": f"ref-{i}", "maybe": None if i % 4 == 0 else float(i), "label": "x",
        })
    return out


def test_fit_classifies_fields_and_skips_reserved_and_id_like():
    spec = fit_spec(_events(), exclude=["label"])
    assert [c.name for c in spec.numeric] == ["amount", "age", "flag", "maybe"]
    assert [c.name for c in spec.categorical] == ["country"]
    assert spec.categorical[0].categories == ("DE", "GB", "US")
    assert "tx_ref" in spec.dropped
    amount = spec.numeric[0]
    assert amount.log, "heavy-tailed amounts get log scaling"
    assert spec.numeric[3].missing_indicator and not spec.numeric[1].missing_indicator
    assert not spec.time_of_day
    assert spec.columns[-1] == f"country={OTHER}"
    assert len(spec.columns) == len(spec.sources) == spec.width


def test_transform_is_float32_centered_and_handles_unseen_and_missing():
    events = _events()
    spec = fit_spec(events, exclude=["label"])
    x, bad = spec.transform(events)
    assert x.dtype == np.float32 and x.shape == (len(events), spec.width) and not bad
    assert abs(float(np.median(x[:, 0]))) < 0.1, "robust scaling centres the median"
    odd = [{"event_id": "z", "country": "FR", "amount": None}, {"event_id": "y"}]
    x2, bad2 = spec.transform(odd)
    other = spec.columns.index(f"country={OTHER}")
    assert not bad2 and x2[0, other] == 1.0  # an unseen value: novel
    assert x2[1, spec.columns.index("country=GB")] == 1.0 and x2[1, other] == 0.0  # missing: the mode (tie: GB < US)
    assert np.isfinite(x2).all()


def test_a_missing_category_reads_as_its_most_frequent_value_when_training_never_saw_it_missing() -> None:
    """A new-user trial left ``channel`` out of one event in 20 (or sent it null): every such event
    went to ``channel=__other__``, a column the autoencoder never saw on, and scored thousands of
    times the threshold. A missing category is now imputed as a number is (its median): by the
    field's most frequent training value when training never saw the field missing; null, absent
    and empty alike, from dicts and from a pyarrow column. A field training saw missing keeps
    ``__other__`` for it (training learned that column), and an unseen value stays novel."""
    import pyarrow as pa

    from stream_detector.features import SPEC_FORMAT, SPEC_FORMAT_IMPUTE, SPEC_FORMAT_SHARES

    events = [{"event_id": str(i), "amount": float(i % 13), "channel": ["pos", "pos", "web"][i % 3],
               "device": None if i % 10 == 0 else ["a", "b"][i % 2]} for i in range(300)]
    spec = fit_spec(events)
    channel, device = spec.categorical
    assert (channel.name, channel.impute, device.name, device.impute) == ("channel", "pos", "device", None)
    assert channel.other_share == device.other_share == 0.0  # every present value kept (missing is not "other")
    rare = fit_spec([{"event_id": str(i), "c": "x" if i < 90 else f"r{i}"} for i in range(100)]).categorical[0]
    assert rare.categories == ("x",) and rare.other_share == pytest.approx(0.10)  # values seen < 5 times
    rows = [{"event_id": "m1", "amount": 3.0}, {"event_id": "m2", "amount": 3.0, "channel": None},
            {"event_id": "m3", "amount": 3.0, "channel": ""}, {"event_id": "m4", "amount": 3.0, "channel": "pos"},
            {"event_id": "m5", "amount": 3.0, "channel": "mobile"}]
    x, bad = spec.transform(rows)
    assert not bad
    assert (x[:3] == x[3]).all()  # missing reads as the mode
    assert x[4, spec.columns.index(f"channel={OTHER}")] == 1.0 and x[4, spec.columns.index("channel=pos")] == 0.0
    assert (x[:, spec.columns.index(f"device={OTHER}")] == 1.0).all()  # seen missing in training: __other__
    column = pa.array([r.get("channel") for r in rows], pa.string())
    got, _ = spec.transform([{k: v for k, v in r.items() if k != "channel"} for r in rows], columns={"channel": column})
    np.testing.assert_array_equal(got, x)
    data = spec.to_dict()
    assert data["format"] == SPEC_FORMAT_SHARES and data["categorical"][0]["impute"] == "pos"
    assert FeatureSpec.from_dict(data) == spec
    assert (channel.missing_share, device.missing_share, spec.numeric[0].missing_share) == (0.0, 0.1, 0.0)
    two = {**data, "format": SPEC_FORMAT_IMPUTE, "numeric": [{k: v for k, v in c.items() if k != "missing_share"}
                                                             for c in data["numeric"]],
           "categorical": [{k: v for k, v in c.items() if k != "missing_share"} for c in data["categorical"]]}
    assert FeatureSpec.from_dict(two).to_dict() == two  # a spec of 2026-12-05: no shares, written as it was
    old = {**data, "format": SPEC_FORMAT,  # a spec of an earlier release: missing went to __other__
           "categorical": [{k: v for k, v in c.items() if k != "impute"} for c in data["categorical"]]}
    x_old, _ = FeatureSpec.from_dict(old).transform(rows[:1])
    assert x_old[0, spec.columns.index(f"channel={OTHER}")] == 1.0
    assert fit_spec([{"event_id": "1", "c": "y"}] * 6 + [{"event_id": "2", "c": "x"}] * 6).categorical[0].impute == \
        "x"  # a tie: the smaller value
    with pytest.raises(ValueError, match="not one of its categories"):
        FeatureSpec.from_dict({**data, "categorical": [{**data["categorical"][0], "impute": "nope"}]})
    with pytest.raises(ValueError, match="unsupported feature spec format"):
        FeatureSpec.from_dict({**data, "format": SPEC_FORMAT_SHARES + 1})


def test_wrong_type_rejects_only_that_row():
    spec = fit_spec(_events(), exclude=["label"])
    rows = [{"event_id": "ok", "amount": 5.0}, {"event_id": "bad", "amount": "lots"}, {"event_id": "ok2", "age": 30}]
    x, bad = spec.transform(rows)
    assert list(bad) == [1] and bad[1][0] is RejectReason.WRONG_TYPE and "numeric" in bad[1][1]
    assert x.shape[0] == 3


def test_huge_values_are_clipped_not_infinite():
    spec = fit_spec(_events(), exclude=["label"])
    x, bad = spec.transform([{"event_id": "h", "amount": 1e300, "age": -1e300}])
    assert not bad and np.isfinite(x).all() and np.abs(x).max() <= spec.clip


def test_spec_round_trips_through_json_with_a_stable_fingerprint():
    spec = fit_spec(_events(), exclude=["label"], time_of_day=True)
    again = FeatureSpec.from_json(spec.to_json())
    assert again == spec and again.fingerprint == spec.fingerprint and again.time_of_day
    x1, _ = spec.transform(_events(20))
    x2, _ = again.transform(_events(20))
    assert np.array_equal(x1, x2)


def test_fit_refuses_empty_input():
    with pytest.raises(ValueError):
        fit_spec([])


def test_categories_and_times_given_as_columns_give_the_events_matrix() -> None:
    """``transform(columns=)`` (train --streamed's pass 3: no dict per row) equals the events path."""
    import pyarrow as pa

    rng = np.random.default_rng(3)
    n = 500
    events = [{"event_id": str(i), "amount": float(rng.gamma(2.0, 30.0)),
               "channel": [None, "pos", "web", "atm", "rare"][int(rng.integers(0, 5))],
               "timestamp": None if i % 7 == 0 else 1.7e12 + float(rng.integers(0, 10**9))} for i in range(n)]
    spec = fit_spec(events[:400], time_of_day=True)
    assert [c.name for c in spec.categorical] == ["channel"] and spec.time_of_day
    expected, bad = spec.transform(events)
    amounts = np.array([[e["amount"]] for e in events])
    times = np.array([np.nan if e["timestamp"] is None else e["timestamp"] for e in events])
    for channel in (pa.array([e["channel"] for e in events], pa.string()), [e["channel"] for e in events]):
        got, got_bad = spec.transform([{}] * n, (["amount"], amounts), {"channel": channel, "timestamp": times})
        assert got_bad == bad == {}
        np.testing.assert_array_equal(got, expected)


def _column_by_column(spec: FeatureSpec, values: np.ndarray) -> tuple[np.ndarray, dict[int, tuple[RejectReason, str]]]:
    """The numeric part of ``transform`` written out one column at a time (the definition)."""
    out = np.zeros((values.shape[0], spec.width), dtype=np.float32)
    bad: dict[int, tuple[RejectReason, str]] = {}
    col = 0
    for j, num in enumerate(spec.numeric):
        v = values[:, j].copy()
        for i in np.flatnonzero(np.isinf(v)):
            bad.setdefault(int(i), (RejectReason.NON_FINITE_NUMBER, f"field {num.name!r} is not finite"))
        v[np.isinf(v)] = np.nan
        missing = np.isnan(v)
        v = np.where(missing, num.median, v)
        if num.log:
            v = np.sign(v) * np.log1p(np.abs(v))
        with np.errstate(over="ignore"):  # near the float maximum, a scale below 1 overflows to ±inf: clipped
            out[:, col] = np.clip((v - num.center) / num.scale, -spec.clip, spec.clip)
        col += 1
        if num.missing_indicator:
            out[:, col] = missing
            col += 1
    return out, bad


@given(st.data())
@settings(max_examples=60, deadline=None)
def test_numeric_columns_equal_the_column_by_column_definition(data: st.DataObject) -> None:
    """``transform``'s numeric columns equal the column-by-column definition: the same float32
    values and the same rejected rows and messages (the first problem of a row wins, columns in
    order), for values from the events and from ``extra`` columns (the entity features), with NaN,
    ±inf, log and missing-indicator columns."""
    from stream_detector.features import NumericColumn

    m = data.draw(st.integers(1, 6))
    n = data.draw(st.integers(0, 12))
    cols = tuple(NumericColumn(f"f{j}", data.draw(st.floats(-5, 5)), data.draw(st.floats(-5, 5)),
                               data.draw(st.floats(0.1, 10)), data.draw(st.booleans()), data.draw(st.booleans()))
                 for j in range(m))
    spec = FeatureSpec(numeric=cols, categorical=(), time_of_day=False, clip=data.draw(st.sampled_from([3.0, 1000.0])))
    cell = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64), st.integers(-10**6, 10**6))
    values = np.array([[float(data.draw(cell)) for _ in range(m)] for _ in range(n)], dtype=np.float64).reshape(n, m)
    as_extra = sorted(data.draw(st.sets(st.integers(0, m - 1))))
    events = [{f"f{j}": values[i, j] for j in range(m) if j not in as_extra} for i in range(n)]
    extra = ([f"f{j}" for j in as_extra], values[:, as_extra].copy()) if as_extra else None
    got, bad = spec.transform(events, extra)
    want, want_bad = _column_by_column(spec, values)
    np.testing.assert_array_equal(got, want)
    assert bad == want_bad


@pytest.mark.parametrize("n", [1, 7, 682, 1024, 1029])
def test_entity_feature_columns_as_one_block_equal_the_same_values_in_the_events(n: int) -> None:
    """Step 3a's columns (``extra``) are scaled as one block; on chunk sizes whose vector loops
    leave a tail, with log columns, NaNs and missing indicators, the matrix equals the one from the
    same values carried in the events, to the bit; an infinite value is still refused by name."""
    from stream_detector.features import NumericColumn

    rng = np.random.default_rng(n)
    m = 9
    cols = tuple(NumericColumn(f"f{j}", float(rng.normal()), float(rng.normal()), float(rng.uniform(0.1, 10)),
                               bool(j % 2), bool(j % 3 == 0)) for j in range(m))
    spec = FeatureSpec(numeric=cols, categorical=(), time_of_day=False, clip=1000.0)
    values = rng.lognormal(0, 3, (n, m)) * rng.choice([-1.0, 1.0], (n, m))
    values[rng.random((n, m)) < 0.05] = np.nan
    as_extra = [0, 2, 3, 5, 6, 8]
    events = [{f"f{j}": float(values[i, j]) for j in range(m)} for i in range(n)]
    stripped = [{k: v for k, v in e.items() if int(k[1:]) not in as_extra} for e in events]
    got, bad = spec.transform(stripped, ([f"f{j}" for j in as_extra], values[:, as_extra].copy()))
    want, want_bad = spec.transform(events)
    np.testing.assert_array_equal(got, want)
    assert bad == want_bad == {}
    values[n - 1, 3] = np.inf
    _, bad = spec.transform(stripped, ([f"f{j}" for j in as_extra], values[:, as_extra].copy()))
    assert bad == {n - 1: (RejectReason.NON_FINITE_NUMBER, "field 'f3' is not finite")}


def test_a_value_scaled_past_the_float_range_is_clipped_without_a_warning() -> None:
    """A finite value near the float maximum over a scale below 1 overflows to ±inf in numpy: it is
    clipped like any large value, and the overflow warning (an error under the test settings) is
    not raised (a case hypothesis found in the property test above, 2026-12-02)."""
    from stream_detector.features import NumericColumn

    spec = FeatureSpec(numeric=(NumericColumn("f", 0.0, 0.0, 0.5, False, False),), categorical=(), time_of_day=False,
                       clip=3.0)
    got, bad = spec.transform([{"f": 8.98846567431158e307}, {"f": -8.98846567431158e307}, {"f": 1.0}])
    assert bad == {}
    np.testing.assert_array_equal(got[:, 0], np.array([3.0, -3.0, 2.0], dtype=np.float32))
