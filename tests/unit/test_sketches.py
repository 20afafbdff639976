"""big/sketches.py: the spec fitted from mergeable stats against ``fit_spec`` on the same rows.

Exact mode (at most ``KLL_K`` finite values per field, at most 3072 distinct categories): equal
to ``fit_spec`` (scale through the std fallback: to rounding; categories: but for ties at the
``max_categories`` cut). Estimation mode: the exact parts equal, quantiles within the KLL's stated
rank error. ``python tests/unit/test_sketches.py`` prints the update speeds and sizes.
"""

from __future__ import annotations

import math
import pickle
import time
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_detector.big.sketches import (
    FREQ_EXACT_DISTINCT,
    KLL_K,
    KLL_RANK_ERROR,
    CategoricalStats,
    NumericStats,
    SpecStats,
    combine,
    fit_spec_from_stats,
    signed_log1p,
)
from stream_detector.features import FeatureSpec, fit_spec
from stream_detector.fieldschema import FieldRule, FieldSchema, FieldType

NUMBER, CATEGORY = FieldType.NUMBER, FieldType.CATEGORY
# the schema's order interleaves the types (fit_spec's `dropped` follows it)
FIELDS = [("amount", NUMBER), ("country", CATEGORY), ("score", NUMBER), ("nothing", CATEGORY), ("count", NUMBER),
          ("empty", NUMBER), ("channel", CATEGORY), ("flag", FieldType.BOOLEAN), ("spiky", NUMBER)]
NUMERIC = [n for n, t in FIELDS if t is not CATEGORY]
CATEGORICAL = [n for n, t in FIELDS if t is CATEGORY]
ORDER = [n for n, _ in FIELDS]
SCHEMA = FieldSchema(tuple(FieldRule(n, t) for n, t in FIELDS) + (FieldRule("timestamp", FieldType.TIMESTAMP),))


def _columns(n: int, seed: int, ts_share: float = 0.7) -> tuple[dict[str, np.ndarray], dict[str, list[Any]], np.ndarray]:
    """Numeric columns (NaN = missing), categorical columns (None / "" = missing), has-timestamp mask."""
    rng = np.random.default_rng(seed)

    def holes(x: np.ndarray, share: float) -> np.ndarray:
        return np.where(rng.random(n) < share, np.nan, x)

    later = np.arange(n) > 0  # row 0 of spiky is finite: a field of only ±inf is an error (fit_spec's too)

    num = {
        "amount": holes(rng.lognormal(3.0, 1.5, n), 0.1),  # heavy tail: log
        "score": rng.normal(50.0, 10.0, n),  # symmetric: no log
        "count": rng.poisson(0.1, n).astype(np.float64),  # IQR 0: the std fallback
        "empty": np.full(n, np.nan),  # dropped
        "flag": (rng.random(n) < 0.3).astype(np.float64),
        "spiky": np.where(later & (rng.random(n) < 0.05), np.nan,  # ±inf present
                          np.where(later & (rng.random(n) < 0.01), np.inf, rng.standard_t(3, n))),
    }
    vocab = [f"c{i}" for i in range(60)]
    weights = 1.0 / np.arange(1, 61) ** 1.2
    country = np.asarray(vocab, dtype=object)[rng.choice(60, n, p=weights / weights.sum())]
    country[rng.random(n) < 0.05] = None
    country[rng.random(n) < 0.02] = ""
    cat = {"country": country.tolist(), "channel": rng.choice(["web", "app", "pos"], n).tolist(),
           "nothing": [None] * n}
    return num, cat, rng.random(n) < ts_share


def _events(num: dict[str, np.ndarray], cat: dict[str, list[Any]], ts: np.ndarray) -> list[dict[str, Any]]:
    n = len(ts)
    cols: dict[str, list[Any]] = {k: [None if math.isnan(v) else v for v in x.tolist()] for k, x in num.items()}
    cols["flag"] = [None if v is None else bool(v) for v in cols["flag"]]
    cols.update(cat)
    cols["timestamp"] = [1_790_000_000_000 + i if t else None for i, t in enumerate(ts.tolist())]
    return [{k: cols[k][i] for k in cols} for i in range(n)]


def _stats(num: dict[str, np.ndarray], cat: dict[str, list[Any]], ts: np.ndarray, bounds: list[int]) -> SpecStats:
    """Stats updated chunk by chunk, rows [bounds[i], bounds[i+1])."""
    stats = SpecStats(NUMERIC, CATEGORICAL)
    for a, b in zip(bounds, bounds[1:], strict=False):
        stats.update(b - a, {k: x[a:b] for k, x in num.items()},
                     {k: (pa.array(v[a:b], pa.string()) if k == "country" else v[a:b]) for k, v in cat.items()},
                     with_timestamp=int(ts[a:b].sum()))
    return stats


def _fit(stats: SpecStats, **kw: Any) -> FeatureSpec:
    return fit_spec_from_stats(stats, numeric=NUMERIC, categorical=CATEGORICAL, order=ORDER, **kw)


def _assert_categories(ours: FeatureSpec, ref: FeatureSpec, cat: dict[str, list[Any]], max_categories: int,
                       min_count: int) -> None:
    """Equal, but for values tied at the max_categories cut (fit_spec keeps the first seen, we the smaller)."""
    assert [c.name for c in ours.categorical] == [c.name for c in ref.categorical]
    for a, b in zip(ours.categorical, ref.categorical, strict=True):
        counts = Counter(v for v in cat[a.name] if v not in (None, ""))
        ranked = sorted(counts.values(), reverse=True)
        if a.categories != b.categories:
            cut = ranked[max_categories - 1]
            assert len(ranked) > max_categories and ranked[max_categories] == cut >= min_count, (a, b)
            assert all(counts[v] == cut for v in set(a.categories) ^ set(b.categories))


def _assert_same(ours: FeatureSpec, ref: FeatureSpec) -> None:
    """Everything but categories equal; scale to rounding (moments merged in another order than numpy's)."""
    assert ours.dropped == ref.dropped
    assert ours.time_of_day == ref.time_of_day
    assert len(ours.numeric) == len(ref.numeric)
    for a, b in zip(ours.numeric, ref.numeric, strict=True):
        assert (a.name, a.median, a.center, a.log, a.missing_indicator) == (b.name, b.median, b.center, b.log,
                                                                            b.missing_indicator)
        assert math.isclose(a.scale, b.scale, rel_tol=1e-9), (a, b)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, KLL_K), seed=st.integers(0, 2**32 - 1), shards=st.integers(1, 4), chunks=st.integers(1, 3),
       max_categories=st.sampled_from([2, 5, 32]), min_count=st.sampled_from([1, 5]), tod=st.booleans(),
       ts_share=st.sampled_from([0.0, 0.5, 0.9]))
def test_exact_mode_equals_fit_spec(n: int, seed: int, shards: int, chunks: int, max_categories: int,
                                    min_count: int, tod: bool, ts_share: float) -> None:
    num, cat, ts = _columns(n, seed, ts_share)
    ref = fit_spec(_events(num, cat, ts), schema=SCHEMA, max_categories=max_categories,
                   min_category_count=min_count, time_of_day=tod)
    cuts = np.linspace(0, n, shards * chunks + 1).astype(int).tolist()
    parts = [_stats(num, cat, ts, cuts[i * chunks:(i + 1) * chunks + 1]) for i in range(shards)]
    merged = combine(pickle.loads(pickle.dumps(p)) for p in parts)
    ours = _fit(merged, max_categories=max_categories, min_category_count=min_count, time_of_day=tod)
    _assert_same(ours, ref)
    _assert_categories(ours, ref, cat, max_categories, min_count)


def _bracket(x: np.ndarray, q: float, eps: float) -> tuple[float, float]:
    """The exact quantiles at rank q ± eps (one order statistic wider: the interpolation)."""
    xs = np.sort(x)
    n = len(xs)
    lo = xs[max(0, math.ceil((q - eps) * n) - 2)]
    hi = xs[min(n - 1, math.ceil((q + eps) * n))]
    return float(lo), float(hi)


@pytest.fixture(scope="module")
def big() -> dict[str, Any]:
    n = 200_000
    num, cat, ts = _columns(n, seed=7)
    whole = _stats(num, cat, ts, [0, n])
    cuts = np.linspace(0, n, 4 * 3 + 1).astype(int).tolist()  # 4 shards of 3 chunks
    merged = combine(_stats(num, cat, ts, cuts[i * 3:i * 3 + 4]) for i in range(4))
    return {"n": n, "num": num, "cat": cat, "ts": ts, "whole": whole, "merged": merged}


def test_merged_shards_equal_the_whole(big: dict[str, Any]) -> None:
    whole, merged = big["whole"], big["merged"]
    assert (merged.rows, merged.with_timestamp) == (whole.rows, whole.with_timestamp) == (big["n"], big["ts"].sum())
    for name in NUMERIC:
        a, b = whole.numeric[name], merged.numeric[name]
        assert (a.rows, a.present, a.nonfinite, a.raw.n, a.sketch.n) == (b.rows, b.present, b.nonfinite, b.raw.n,
                                                                       b.sketch.n)
        for m in ("mean", "m2", "m3"):
            assert math.isclose(getattr(a.raw, m), getattr(b.raw, m), rel_tol=1e-9, abs_tol=1e-9)
            assert math.isclose(getattr(a.logged, m), getattr(b.logged, m), rel_tol=1e-9, abs_tol=1e-9)
        x = big["num"][name]
        x = x[np.isfinite(x)]
        for stats in (a, b) if len(x) else ():
            for q in (0.25, 0.5, 0.75):
                lo, hi = _bracket(x, q, KLL_RANK_ERROR)
                assert lo <= stats.percentile(q) <= hi, (name, q)
    for name in CATEGORICAL:
        a_cat, b_cat = whole.categorical[name], merged.categorical[name]
        assert a_cat.exact and b_cat.exact
        assert (a_cat.rows, a_cat.present, a_cat.counts()) == (b_cat.rows, b_cat.present, b_cat.counts())
        assert dict(a_cat.counts()) == Counter(v for v in big["cat"][name] if v not in (None, ""))


def test_big_spec_against_fit_spec(big: dict[str, Any]) -> None:
    """200k rows: the exact parts equal, quantiles in the rank-error bracket; transform outputs close."""
    events = _events(big["num"], big["cat"], big["ts"])
    ref = fit_spec(events, schema=SCHEMA, time_of_day=True)
    ours = _fit(big["merged"], time_of_day=True)
    assert ours.dropped == ref.dropped == ("nothing", "empty")
    assert ours.time_of_day and ref.time_of_day
    assert [(c.name, c.log, c.missing_indicator) for c in ours.numeric] == [
        (c.name, c.log, c.missing_indicator) for c in ref.numeric]
    assert {c.name: c.log for c in ours.numeric} == {"amount": True, "score": False, "count": True, "flag": False,
                                                     "spiky": False}
    assert ours.categorical == ref.categorical
    eps = KLL_RANK_ERROR
    for col in ours.numeric:
        x = big["num"][col.name]
        x = x[np.isfinite(x)]
        t = signed_log1p(x) if col.log else x
        assert _bracket(x, 0.5, eps)[0] <= col.median <= _bracket(x, 0.5, eps)[1]
        assert _bracket(t, 0.5, eps)[0] <= col.center <= _bracket(t, 0.5, eps)[1]
        q25, q75 = _bracket(t, 0.25, eps), _bracket(t, 0.75, eps)
        iqr_lo, iqr_hi = (q75[0] - q25[1]) / 1.349, (q75[1] - q25[0]) / 1.349
        ref_col = next(c for c in ref.numeric if c.name == col.name)
        if iqr_hi > 0:
            assert iqr_lo <= col.scale <= iqr_hi, col
        else:  # both fell back to the std
            assert math.isclose(col.scale, ref_col.scale, rel_tol=1e-9)
    x_ours, bad_ours = ours.transform(events[:50_000])
    x_ref, bad_ref = ref.transform(events[:50_000])
    assert bad_ours.keys() == bad_ref.keys()
    ok = np.setdiff1d(np.arange(len(x_ref)), list(bad_ref))
    diff = np.abs(x_ours[ok] - x_ref[ok])
    rel = diff / (1.0 + np.abs(x_ref[ok]))
    print(f"\ntransform, {len(ok)} rows: max |difference| {diff.max():.4g}, max |difference| / (1 + |fit_spec's|) "
          f"{rel.max():.4g}; per column: {dict(zip(ours.columns, np.round(diff.max(axis=0), 4).tolist(), strict=True))}")
    assert rel.max() < 0.02  # a center off by ≲ 0.01 of the scale, a scale off by ≲ 1 %


def test_chunked_update_equals_one_update() -> None:
    num, cat, ts = _columns(20_000, seed=3)
    one, chunked = _stats(num, cat, ts, [0, 20_000]), _stats(num, cat, ts, [0, 1, 700, 7000, 13_001, 20_000])
    assert (one.rows, one.with_timestamp) == (chunked.rows, chunked.with_timestamp)
    for name in NUMERIC:
        a, b = one.numeric[name], chunked.numeric[name]
        assert (a.rows, a.present, a.nonfinite, a.sketch.n) == (b.rows, b.present, b.nonfinite, b.sketch.n)
        assert math.isclose(a.raw.std, b.raw.std, rel_tol=1e-9) or a.present == 0
        assert math.isclose(a.raw.skew, b.raw.skew, rel_tol=1e-6, abs_tol=1e-9) or a.present == 0
    for name in CATEGORICAL:
        assert one.categorical[name].counts() == chunked.categorical[name].counts()


def test_pickle_round_trip(big: dict[str, Any]) -> None:
    merged = big["merged"]
    again = pickle.loads(pickle.dumps(merged))
    assert _fit(again, time_of_day=True) == _fit(merged, time_of_day=True)
    for name in NUMERIC:
        assert again.numeric[name].sketch.serialize() == merged.numeric[name].sketch.serialize()
        assert again.numeric[name].raw == merged.numeric[name].raw
    assert again.categorical["country"].counts() == merged.categorical["country"].counts()


def test_beyond_the_exact_limit_the_heavy_values_still_win() -> None:
    cat = CategoricalStats()
    rare = [f"id{i}" for i in range(2 * FREQ_EXACT_DISTINCT)]
    heavy = [f"h{i}" for i in range(10) for _ in range(500 + 10 * i)]
    values = np.random.default_rng(0).permutation(np.asarray(rare * 2 + heavy, dtype=object)).tolist()
    for i in range(0, len(values), 1000):
        cat.update(values[i:i + 1000])
    assert not cat.exact
    assert [v for v, _ in cat.counts()[:10]] == [f"h{i}" for i in reversed(range(10))]


def test_errors() -> None:
    stats = SpecStats(["a"], ["c"])
    with pytest.raises(ValueError, match="zero events"):
        fit_spec_from_stats(stats, numeric=["a"], categorical=["c"])
    with pytest.raises(ValueError, match="unknown fields"):
        stats.update(2, {"b": np.zeros(2)})
    with pytest.raises(ValueError, match="not 2 rows long"):
        stats.update(2, {"a": np.zeros(3)})
    with pytest.raises(ValueError, match="with_timestamp"):
        stats.update(2, with_timestamp=3)
    assert stats.rows == 0  # nothing was added
    stats.update(2, {"a": np.array([np.inf, np.nan])}, {"c": ["x", None]})
    with pytest.raises(ValueError, match="none finite"):
        fit_spec_from_stats(stats, numeric=["a"], categorical=["c"])
    with pytest.raises(ValueError, match="no \\['z'\\]"):
        fit_spec_from_stats(stats, numeric=["z"], categorical=[])
    with pytest.raises(ValueError, match="order"):
        fit_spec_from_stats(stats, numeric=["a"], categorical=["c"], order=["a"])
    with pytest.raises(ValueError, match="cannot merge"):
        stats.merge(SpecStats(["a"]))
    with pytest.raises(ValueError, match="cannot join"):
        stats.join(SpecStats(["b"]))
    with pytest.raises(ValueError, match="1-D"):
        NumericStats().update(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="named twice"):
        SpecStats(["a"], ["a"])


def test_join_of_entity_stats_and_update_numeric() -> None:
    raw = SpecStats(["a"])
    raw.update(3, {"a": np.array([1.0, 2.0, np.nan])}, with_timestamp=3)
    keys = [SpecStats.empty(["e1", "e2"]) for _ in range(2)] + [SpecStats.empty(["f"])]
    keys[0].update_numeric(np.array([[1.0, 5.0], [2.0, 6.0]]))
    keys[1].update_numeric(np.array([[3.0, np.nan]]))
    keys[2].update_numeric(np.array([[0.0], [1.0], [2.0]]))
    stats = combine([raw, *keys])
    spec = fit_spec_from_stats(stats, numeric=["a", "e1", "e2", "f"], categorical=[], time_of_day=True)
    assert [(c.name, c.median, c.missing_indicator) for c in spec.numeric] == [
        ("a", 1.5, True), ("e1", 2.0, False), ("e2", 5.5, True), ("f", 1.0, False)]
    assert spec.time_of_day


def _measure() -> None:
    """Update speeds (rows/s) and sizes; not a test."""
    rng = np.random.default_rng(0)
    n = 1_000_000
    x = rng.lognormal(3, 1.5, n)
    x[rng.random(n) < 0.1] = np.nan
    st_num = NumericStats()
    t = time.perf_counter()
    for i in range(0, n, 65_536):
        st_num.update(x[i:i + 65_536])
    print(f"numeric: {n / (time.perf_counter() - t):,.0f} rows/s; pickled {len(pickle.dumps(st_num)):,} bytes")
    for distinct in (50, 3000, 100_000):
        values = [f"v{i}" for i in rng.zipf(1.3, n) % distinct]
        for form in ("list", "arrow"):
            col: Any = values if form == "list" else pa.array(values, pa.string())
            cs = CategoricalStats()
            t = time.perf_counter()
            for i in range(0, n, 65_536):
                cs.update(col[i:i + 65_536])
            print(f"categorical, {distinct} distinct, {form}: {n / (time.perf_counter() - t):,.0f} rows/s; "
                  f"pickled {len(pickle.dumps(cs)):,} bytes; exact={cs.exact}")


if __name__ == "__main__":
    _measure()


def test_the_row_sample_makes_quantiles_independent_of_chunks_shards_and_merge_order() -> None:
    from stream_detector.big.sketches import SAMPLE_K

    rng = np.random.default_rng(7)
    values = rng.lognormal(size=3 * SAMPLE_K)
    rows = np.arange(len(values))
    whole = NumericStats()
    whole.update(values, rows)
    parts = [NumericStats() for _ in range(4)]
    shard = rows % 4
    for i, part in enumerate(parts):
        for start in range(0, len(values), 50_000):  # chunks within each shard
            take = (shard == i) & (rows >= start) & (rows < start + 50_000)
            part.update(values[take], rows[take])
    merged = parts[3]
    for part in (parts[1], parts[0], parts[2]):
        merged.merge(part)
    assert merged.sampled and whole.sampled
    for q in (0.25, 0.5, 0.75):
        assert merged.percentile(q) == whole.percentile(q)
        assert merged.percentile(q, log=True) == whole.percentile(q, log=True)
    assert merged.median() == whole.median()
    exact = np.percentile(values, 50)
    assert abs(np.mean(values <= whole.median()) - 0.5) < 0.005  # a uniform sample: rank within 0.5 %
    small = NumericStats()
    small.update(values[:1000], rows[:1000])  # fewer rows than the sample holds: numpy's figures exactly
    assert small.median() == np.median(values[:1000]) and exact > 0


def test_keyed_updates_keep_no_kll_sketch_and_refuse_to_mix() -> None:
    """With row numbers the row sample decides: the KLL sketch and log moments are not kept (they
    would go unused), and a chunk without row numbers afterwards is refused rather than half-counted."""
    from stream_detector.big.sketches import NumericStats

    rng = np.random.default_rng(1)
    keyed = NumericStats()
    keyed.update(rng.normal(size=1000), rows=np.arange(1000))
    assert keyed.sketch.n == 0 and keyed.logged.n == 0 and keyed.raw.n == 1000 and keyed.sampled
    with pytest.raises(ValueError, match="row numbers"):
        keyed.update(rng.normal(size=10))
    plain = NumericStats()
    plain.update(rng.normal(size=10))
    with pytest.raises(ValueError, match="cannot merge"):
        keyed.merge(plain)
    with pytest.raises(ValueError, match="cannot merge"):
        plain.merge(keyed)
    other = NumericStats()
    other.update(rng.normal(size=500), rows=np.arange(1000, 1500))
    keyed.merge(other)
    assert keyed.rows == 1500 and keyed.sampled and keyed.sketch.n == 0
