"""Mergeable one-pass statistics of the feature inputs: fit a ``FeatureSpec`` on histories that do not fit in memory.

``fit_spec`` (``features.py``) needs every training value at once. Here each chunk (and each
shard, in any process) updates a ``SpecStats``; stats of disjoint rows ``merge``, stats of the
same rows but other fields ``join`` (``combine`` does both), and ``fit_spec_from_stats`` applies
``fit_spec``'s rules for a typed schema to the result. What is exact and what is estimated:

* exact: rows, present and non-finite counts (→ ``dropped``, ``missing_indicator``), the rows with
  a timestamp (→ ``time_of_day``), mean / std / skew (→ ``log``) from central moments merged by
  the pairwise update of Chan, Golub & LeVeque (1979) and Pébay (2008, "Formulas for robust,
  one-pass parallel computation of covariances and arbitrary-order statistical moments",
  SAND2008-6212), equal to numpy's up to rounding;
* quantiles (``median``, ``center``, ``scale``): with row numbers (``update(values, rows)``, as the big-history
  path gives them), every numeric figure comes from a deterministic row sample (``row_keys``,
  ``SAMPLE_K``) with ``fit_spec``'s own code; without, from a KLL sketch (Karnin, Lang & Liberty 2016,
  "Optimal quantile approximation in streams", FOCS; ``datasketches.kll_doubles_sketch``) with
  ``k = KLL_K``: exact while a field has at most ``k`` finite values, else each quantile's rank is
  within ``KLL_RANK_ERROR`` (0.28 %, DataSketches' "single-sided" epsilon, 99 % confidence) of the
  asked rank (at 200k values we saw at most 0.16 % in 900 queries).
  ``np.percentile`` interpolates linearly between the order statistics at index ``q·(n-1)`` and
  ``np.median`` averages the two middle ones; we query the sketch for those same order statistics
  (rank ``(j + ½)/n``) and interpolate identically, so in exact mode the numbers are ``fit_spec``'s
  bit for bit; the log case transforms the two order statistics first (signed ``log1p`` is monotonic).
  The sketch's own ``get_quantile(q)`` would not interpolate: inclusive it is numpy's
  ``inverted_cdf`` (``x[⌈qn⌉-1]``), exclusive ``x[⌊qn⌋]`` — one order statistic off at most;
* categories from a frequent-items sketch (Misra & Gries 1982; DataSketches' frequent items,
  https://datasketches.apache.org/docs/Frequency/FrequentItemsOverview.html) with
  ``lg_max_map_size = FREQ_LG_MAX_MAP_SIZE``: counts are exact while a field has at most
  ``FREQ_EXACT_DISTINCT`` (3072) distinct values; above, the map is purged and each count is an
  upper bound too high by at most ``FREQ_EPSILON`` (3.5/4096 ≈ 0.085 %) of the field's present
  values — the chosen categories are then the top estimates, and ``min_category_count`` is compared
  with an estimate. Ties at the ``max_categories`` cut go to the smaller string (``fit_spec``: to
  the value seen first).

Cost (one core): ≈ 10 M numeric values/s per field (the KLL update is most of it); categorical
5–6 M/s from Python lists, 8–30 M/s from Arrow arrays (fewer distinct values: faster).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasketches import frequent_items_error_type, frequent_strings_sketch, kll_doubles_sketch

from ..features import CategoricalColumn, FeatureSpec, NumericColumn, _fit_numeric, mode_of

KLL_K = 1000
KLL_RANK_ERROR: float = kll_doubles_sketch.get_normalized_rank_error(KLL_K, False)  # ≈ 0.00278
FREQ_LG_MAX_MAP_SIZE = 12
FREQ_EXACT_DISTINCT = 3 * (1 << FREQ_LG_MAX_MAP_SIZE) // 4  # 3072
FREQ_EPSILON: float = frequent_strings_sketch.get_epsilon_for_lg_size(FREQ_LG_MAX_MAP_SIZE)  # 3.5 / 4096


SAMPLE_K = 100_000  # rows kept per numeric field when row numbers are given


def row_keys(rows: np.ndarray) -> np.ndarray:
    """uint64 keys of row numbers (splitmix64's finaliser, a bijection: distinct rows, distinct keys).
    The ``SAMPLE_K`` rows with the smallest keys are a uniform sample of the rows that is the same
    however the rows were split into chunks, shards and processes, and in whatever order merged —
    unlike KLL, whose compaction is random and takes no seed, so the spec and the model would
    differ from run to run and between shard counts (measured: benchmarks/RESULTS.md)."""
    z = rows.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return np.asarray(z ^ (z >> np.uint64(31)))


def signed_log1p(x: np.ndarray) -> np.ndarray:
    """``sign(x)·log1p(|x|)``, the transform of a heavy-tailed field (as in ``FeatureSpec.transform``)."""
    return np.asarray(np.sign(x) * np.log1p(np.abs(x)))


@dataclass
class Moments:
    """Count, mean and the 2nd and 3rd central sums ``Σ(x-mean)^p`` of a set of values, mergeable."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    m3: float = 0.0

    @classmethod
    def of(cls, x: np.ndarray) -> Moments:
        if len(x) == 0:
            return cls()
        mean = float(x.mean())
        d = x - mean
        d2 = d * d
        return cls(len(x), mean, float(d2.sum()), float((d2 * d).sum()))

    def merge(self, o: Moments) -> None:
        """Pébay (2008) eq. 2.1/2.3: the moments of the union of two disjoint sets."""
        if o.n == 0:
            return
        if self.n == 0:
            self.n, self.mean, self.m2, self.m3 = o.n, o.mean, o.m2, o.m3
            return
        na, nb = float(self.n), float(o.n)
        n = na + nb
        delta = o.mean - self.mean
        self.m3 += o.m3 + delta**3 * na * nb * (na - nb) / n**2 + 3.0 * delta * (na * o.m2 - nb * self.m2) / n
        self.m2 += o.m2 + delta**2 * na * nb / n
        self.mean += delta * nb / n
        self.n += o.n

    @property
    def std(self) -> float:
        """Population standard deviation (numpy's ``std()``, ddof 0); NaN when empty."""
        return math.sqrt(max(self.m2, 0.0) / self.n) if self.n else math.nan

    @property
    def skew(self) -> float:
        """``mean((x-mean)^3) / std^3`` (``fit_spec``'s), 0 when the std is 0."""
        std = self.std
        return self.m3 / self.n / std**3 if std > 0 else 0.0


class _Pickled:
    """Pickling through the sketch's ``serialize()`` / ``deserialize()`` (the sketches do not pickle)."""

    sketch: Any
    _sketch_type: Any

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "sketch": self.sketch.serialize()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, sketch=self._sketch_type.deserialize(state["sketch"]))


class NumericStats(_Pickled):
    """One numeric field: rows, present (not NaN), non-finite present (±inf) values, the moments of
    the finite values and of their signed ``log1p``, and a KLL sketch of the finite values.
    Picklable: ≈ 24 KB pickled, 37 KB in memory once estimating."""

    _sketch_type = kll_doubles_sketch

    def __init__(self, k: int = KLL_K) -> None:
        self.rows = 0
        self.present = 0
        self.nonfinite = 0
        self.raw = Moments()
        self.logged = Moments()
        self.sketch = kll_doubles_sketch(k)
        self.keyed = True  # every value came with its row number: the row sample decides the quantiles
        self.skipped = False  # keyed values were left out of the KLL sketch and the log moments (unused then)
        self.sample_keys = np.zeros(0, dtype=np.uint64)
        self.sample = np.zeros(0)

    def update(self, values: np.ndarray, rows: np.ndarray | None = None) -> None:
        """Add a chunk: float64[n] (other real dtypes are converted), NaN = missing (None), ±inf =
        present but not finite (counts as present, like an infinite value in ``fit_spec``; left out of
        the median, moments and quantiles). A present NaN cannot be told from a missing value (the
        schema's converter never lets one through).

        With ``rows`` (int64[n], each value's row number) the row sample decides the quantiles, and
        while every update has them the KLL sketch and the log moments are not kept (they would go
        unused; they were half of a big-history shard task's time). Raises ``ValueError`` unless
        1-D, and for a chunk without row numbers after chunks with them (give them always or never)."""
        x = np.asarray(values, dtype=np.float64)
        if x.ndim != 1:
            raise ValueError(f"a numeric column must be 1-D, got shape {x.shape}")
        finite = x[np.isfinite(x)]
        present = len(x) - int(np.isnan(x).sum())
        if rows is None and self.skipped:
            raise ValueError("earlier chunks of this field came with row numbers (no KLL sketch kept): "
                             "give row numbers with every chunk or with none")
        self.rows += len(x)
        self.present += present
        self.nonfinite += present - len(finite)
        self.raw.merge(Moments.of(finite))
        if rows is not None and self.keyed:
            self.skipped = self.skipped or len(finite) > 0
        else:
            self.logged.merge(Moments.of(signed_log1p(finite)))
            if len(finite):
                self.sketch.update(np.ascontiguousarray(finite))
        if rows is None:
            self.keyed = False
        elif len(finite):
            self._keep(row_keys(np.asarray(rows)[np.isfinite(x)]), finite)

    def _keep(self, keys: np.ndarray, values: np.ndarray) -> None:
        """The values of the ``SAMPLE_K`` rows with the smallest keys, of these and the kept ones."""
        k, v = np.concatenate([self.sample_keys, keys]), np.concatenate([self.sample, values])
        if len(k) > SAMPLE_K:
            keep = np.argpartition(k, SAMPLE_K - 1)[:SAMPLE_K]
            k, v = k[keep], v[keep]
        self.sample_keys, self.sample = k, v

    def merge(self, other: NumericStats) -> None:
        """Add ``other``'s values. Raises ``ValueError`` when one side kept no KLL sketch (keyed
        values) and the other has values without row numbers: the merged quantiles would miss some."""
        if (self.skipped and not other.keyed) or (other.skipped and not self.keyed):
            raise ValueError("cannot merge statistics with row numbers (no KLL sketch kept) and without")
        self.skipped = self.skipped or other.skipped
        self.rows += other.rows
        self.present += other.present
        self.nonfinite += other.nonfinite
        self.raw.merge(other.raw)
        self.logged.merge(other.logged)
        self.sketch.merge(other.sketch)
        self.keyed = self.keyed and other.keyed
        self._keep(other.sample_keys, other.sample)

    @property
    def sampled(self) -> bool:
        """Whether the quantiles come from the row sample (every update had row numbers)."""
        return self.keyed and len(self.sample) > 0

    def order_statistic(self, j: int) -> float:
        """≈ the ``j``-th smallest finite value (0-based; exact while ``sketch.n <= k``)."""
        return float(self.sketch.get_quantile((j + 0.5) / self.sketch.n, False))

    def median(self) -> float:
        """``np.median`` of the finite values: the middle one, or the mean of the two middle ones."""
        if self.sampled:
            return float(np.median(self.sample))
        n = int(self.sketch.n)
        if n % 2:
            return self.order_statistic(n // 2)
        return float(np.mean([self.order_statistic(n // 2 - 1), self.order_statistic(n // 2)]))

    def percentile(self, q: float, log: bool = False) -> float:
        """``np.percentile(v, 100·q)`` (linear) of the finite values, or of their signed ``log1p``."""
        if self.sampled:
            return float(np.percentile(signed_log1p(self.sample) if log else self.sample, 100 * q))
        n = int(self.sketch.n)
        h = q * (n - 1)  # numpy's virtual index, exact for q in {¼, ½, ¾}
        lo = math.floor(h)
        ab = np.array([self.order_statistic(lo), self.order_statistic(min(lo + 1, n - 1))])
        if log:
            ab = signed_log1p(ab)
        a, b = float(ab[0]), float(ab[1])
        t = h - lo
        diff = b - a
        return b - diff * (1.0 - t) if t >= 0.5 else a + diff * t  # numpy's _lerp



class CategoricalStats(_Pickled):
    """One categorical field: rows, present values (not None, not ``""``) and a frequent-items
    sketch of them. Picklable; grows with the distinct values: at 3000 short strings ≈ 50 KB pickled,
    200 KB in memory."""

    _sketch_type = frequent_strings_sketch

    def __init__(self, lg_max_map_size: int = FREQ_LG_MAX_MAP_SIZE) -> None:
        self.rows = 0
        self.present = 0
        self.sketch = frequent_strings_sketch(lg_max_map_size)

    def update(self, values: Sequence[str | None] | pa.Array | pa.ChunkedArray) -> None:
        """Add a chunk: ``str | None`` values, or a pyarrow (string) array; None and ``""`` are missing,
        another value counts as ``str(value)`` (as in ``fit_spec``). One sketch update per distinct value."""
        if isinstance(values, (pa.Array, pa.ChunkedArray)):
            vc = pc.value_counts(values)
            pairs: Iterable[tuple[Any, int]] = zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist(),
                                                   strict=True)
        else:
            pairs = Counter(values).items()
        self.rows += len(values)
        for value, count in pairs:
            if value is None or value == "":
                continue
            self.present += count
            self.sketch.update(value if isinstance(value, str) else str(value), count)

    def merge(self, other: CategoricalStats) -> None:
        self.rows += other.rows
        self.present += other.present
        self.sketch.merge(other.sketch)

    def counts(self) -> list[tuple[str, int]]:
        """(value, estimated count) of the tracked values, most frequent first (ties: smaller value first)."""
        items = self.sketch.get_frequent_items(frequent_items_error_type.NO_FALSE_NEGATIVES)
        return sorted(((str(it[0]), int(it[1])) for it in items), key=lambda vc: (-vc[1], vc[0]))

    @property
    def exact(self) -> bool:
        """Whether every count is exact (the sketch never purged: at most ``FREQ_EXACT_DISTINCT`` values)."""
        items = self.sketch.get_frequent_items(frequent_items_error_type.NO_FALSE_NEGATIVES)
        return sum(int(it[2]) for it in items) == int(self.sketch.total_weight)


class SpecStats:
    """The statistics ``fit_spec_from_stats`` needs: per-field stats, rows, rows with a timestamp.

    ``numeric`` / ``categorical``: the field names (disjoint; ``ValueError`` otherwise), kept in order.
    """

    def __init__(self, numeric: Sequence[str] = (), categorical: Sequence[str] = ()) -> None:
        if len({*numeric, *categorical}) != len(numeric) + len(categorical):
            raise ValueError("a field is named twice")
        self.rows = 0
        self.with_timestamp = 0
        self.numeric = {name: NumericStats() for name in numeric}
        self.categorical = {name: CategoricalStats() for name in categorical}

    @classmethod
    def empty(cls, numeric: Sequence[str], categorical: Sequence[str] = ()) -> SpecStats:
        return cls(numeric, categorical)

    @property
    def fields(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    def update(self, rows: int, numeric: Mapping[str, np.ndarray] | None = None,
               categorical: Mapping[str, Sequence[str | None] | pa.Array | pa.ChunkedArray] | None = None,
               with_timestamp: int = 0, rows_of: np.ndarray | None = None) -> None:
        """Add a chunk of ``rows`` rows given as columns (see ``NumericStats.update`` and
        ``CategoricalStats.update``), each of length ``rows``; a field without a column is missing in
        every row. ``with_timestamp``: how many of the rows have a timestamp (not None). Raises
        ``ValueError`` (nothing added) for an unknown field, a column of another length, or
        ``with_timestamp`` outside 0..rows."""
        numeric, categorical = numeric or {}, categorical or {}
        unknown = (set(numeric) - set(self.numeric)) | (set(categorical) - set(self.categorical))
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}")
        wrong = [name for name, col in [*numeric.items(), *categorical.items()] if len(col) != rows]
        if wrong or not 0 <= with_timestamp <= rows:
            raise ValueError(f"columns {wrong} are not {rows} rows long" if wrong else
                             f"with_timestamp={with_timestamp} is outside 0..{rows}")
        self.rows += rows
        self.with_timestamp += with_timestamp
        for name, st in self.numeric.items():
            st.update(numeric[name] if name in numeric else np.full(rows, np.nan), rows_of)
        for name, cat in self.categorical.items():
            cat.update(categorical.get(name, pa.nulls(rows, pa.string())))

    def update_numeric(self, values: np.ndarray, rows_of: np.ndarray | None = None) -> None:
        """Add rows of numeric fields only: float64[n, len(self.numeric)], columns in field order;
        ``rows_of`` int64[n], their row numbers (the deterministic quantile sample, ``row_keys``)."""
        if values.ndim != 2 or values.shape[1] != len(self.numeric):
            raise ValueError(f"expected n × {len(self.numeric)} values, got shape {values.shape}")
        self.update(len(values), {name: values[:, j] for j, name in enumerate(self.numeric)}, rows_of=rows_of)

    def merge(self, other: SpecStats) -> SpecStats:
        """Add the stats of other rows (another chunk, shard or process) of the same fields; returns self.
        Raises ``ValueError`` when the fields differ."""
        if self.fields != other.fields:
            raise ValueError(f"cannot merge stats of fields {other.fields} into {self.fields}")
        self.rows += other.rows
        self.with_timestamp += other.with_timestamp
        for name, st in self.numeric.items():
            st.merge(other.numeric[name])
        for name, cat in self.categorical.items():
            cat.merge(other.categorical[name])
        return self

    def join(self, other: SpecStats) -> SpecStats:
        """Add other fields of the same rows (e.g. the entity features of every training row); returns
        self. Raises ``ValueError`` unless the fields are disjoint and the row counts equal; the rows
        with a timestamp are whichever side counted them (the larger)."""
        if set(self.fields) & set(other.fields) or self.rows != other.rows:
            raise ValueError(f"cannot join stats of fields {other.fields} ({other.rows} rows) "
                             f"to {self.fields} ({self.rows} rows)")
        self.numeric.update(other.numeric)
        self.categorical.update(other.categorical)
        self.with_timestamp = max(self.with_timestamp, other.with_timestamp)
        return self


def numeric_stats(fields: Sequence[str]) -> SpecStats:
    """Empty stats of numeric fields only (a picklable factory for shard tasks)."""
    return SpecStats(fields)


def combine(parts: Iterable[SpecStats]) -> SpecStats:
    """``merge`` the parts with the same fields, then ``join`` those groups (e.g. the shards of every
    entity key). Raises ``ValueError`` for no parts, or groups whose fields overlap."""
    groups: dict[tuple[str, ...], SpecStats] = {}
    for part in parts:
        key = tuple(part.fields)
        groups[key] = groups[key].merge(part) if key in groups else part
    if not groups:
        raise ValueError("no stats to combine")
    first, *rest = groups.values()
    for group in rest:
        first.join(group)
    return first


def fit_spec_from_stats(stats: SpecStats, *, numeric: Sequence[str], categorical: Sequence[str],
                        max_categories: int = 32, min_category_count: int = 5, time_of_day: bool = False,
                        order: Sequence[str] | None = None) -> FeatureSpec:
    """``fit_spec(events, schema=...)``'s rules on merged stats (module docstring: what is exact).

    ``numeric`` / ``categorical``: the feature fields by type; ``order``: all of them in the schema's
    order (``fit_spec``'s order of ``dropped``), default numeric then categorical. A field without a
    present value is dropped. Raises ``ValueError`` for zero rows, a field the stats lack or listed
    twice, an ``order`` that is not those fields, a field counted over other rows than the stats, or a
    numeric field whose present values are all infinite (``fit_spec`` fails there too).
    """
    if stats.rows == 0:
        raise ValueError("cannot fit features on zero events")
    names = list(order) if order is not None else [*numeric, *categorical]
    if sorted(names) != sorted({*numeric, *categorical}) or len(names) != len(numeric) + len(categorical):
        raise ValueError(f"order {names} is not the fields {[*numeric, *categorical]} each once")
    lacking = [n for n in numeric if n not in stats.numeric] + [c for c in categorical if c not in stats.categorical]
    if lacking:
        raise ValueError(f"the stats have no {lacking}")
    kinds = set(numeric)
    columns: list[NumericColumn] = []
    cats: list[CategoricalColumn] = []
    dropped: list[str] = []
    for name in names:
        st: NumericStats | CategoricalStats = stats.numeric[name] if name in kinds else stats.categorical[name]
        if st.rows != stats.rows:
            raise ValueError(f"field {name!r} was counted over {st.rows} rows, the stats over {stats.rows}")
        if st.present == 0:
            dropped.append(name)
        elif isinstance(st, NumericStats):
            columns.append(_numeric_column(name, st))
        else:
            top = dict(st.counts()[:max_categories])
            kept = [v for v, k in top.items() if k >= min_category_count]
            cats.append(CategoricalColumn(name, tuple(sorted(kept)),
                                          mode_of(kept, top) if st.present == st.rows else None,
                                          (st.present - sum(top[c] for c in kept)) / st.rows,
                                          (st.rows - st.present) / st.rows))
    return FeatureSpec(numeric=tuple(columns), categorical=tuple(cats), dropped=tuple(dropped),
                       time_of_day=time_of_day and stats.with_timestamp >= 0.5 * stats.rows)


def _numeric_column(name: str, st: NumericStats) -> NumericColumn:
    """``features._fit_numeric`` from the stats: on the row sample when there is one (every figure
    from the same rows, in key order, so the column is the same however the rows were sharded),
    else from the KLL sketch and the moments."""
    if st.raw.n == 0:
        raise ValueError(f"numeric field {name!r}: {st.present} present values, none finite")
    if st.sampled:
        return _fit_numeric(name, st.sample[np.argsort(st.sample_keys, kind="stable")], st.present < st.rows,
                            (st.rows - st.raw.n) / st.rows)
    log = abs(st.raw.skew) > 2.0
    q25, center, q75 = (st.percentile(q, log) for q in (0.25, 0.5, 0.75))
    scale = (q75 - q25) / 1.349
    if not scale > 0:
        scale = (st.logged if log else st.raw).std
    if not scale > 0 or not math.isfinite(scale):
        scale = 1.0
    return NumericColumn(name, st.median(), center, scale, log, st.present < st.rows, (st.rows - st.raw.n) / st.rows)
