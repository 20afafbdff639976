"""Step 3, features: the ONE feature code, shared by training, offline scoring and the workers.

A ``FeatureSpec`` is fitted on training events (a list of flat dicts) and then turns any batch of
events into a float32 matrix. With a field schema (``fieldschema.py``, how ``train`` fits it) the
field types are the schema's and the events arrive typed by it; without one (direct API callers
of ``fit_spec``) the value-guessing rules below decide. Rules applied at fit time (README):

* reserved fields (``event_id``, ``account_id``, ``timestamp``, ``schema_version``) and fields the
  caller excludes (labels) are not features;
* a field whose non-null values are all numbers/booleans (or numeric strings, ≥ 98 %) is numeric:
  missing values are imputed with the training median (plus a ``field__missing`` indicator column
  when training saw any; an event missing every input field never gets here: the field schema
  rejects it as ``no_features``, ``fieldschema.py``), heavy-tailed fields (|skew| > 2) get a
  signed ``log1p``, then robust scaling ``(x - median) / (IQR / 1.349)`` (falling back to std,
  then 1), clipped to ±``clip``;
* a string field is categorical: the ``max_categories`` most frequent values seen at least
  ``min_category_count`` times get a one-hot column, everything else (unseen values included)
  goes to ``field=__other__``; id-like fields (more than half the values unique) are dropped. A
  missing value (null, absent or empty) is imputed as numbers are: when training never saw the
  field missing it reads as the field's most frequent category (``CategoricalColumn.impute``;
  ties: the smaller value), like a number's median; when training saw it missing it stays
  ``__other__``, which training then learned. (Before 2026-12-05 a missing value always went to
  ``__other__``: a new-user trial left ``channel`` out of one event in 20, and every one of them
  scored thousands of times the threshold, since the autoencoder had never seen that column on.)
  A value never seen in training still goes to ``__other__``: that is novelty, which the model
  is there to flag;
* with ``time_of_day`` (off by default: on most traffic the hour is noise the autoencoder
  spends capacity on) and timestamps on most training events, hour-of-day is added as sin/cos (UTC).

``transform`` is vectorised per column (one list comprehension per field, then numpy). A value
of the wrong type for its column (text in a numeric field) rejects that event, never the batch.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import itemgetter
from typing import Any

import numpy as np
import orjson

from .fieldschema import FieldSchema, FieldType
from .schema import RESERVED_FIELDS, Problem, RejectReason, json_type, parse_timestamp_ms

SPEC_FORMAT = 1
SPEC_FORMAT_IMPUTE = 2  # a spec with a categorical imputation: a release that cannot impute refuses it
SPEC_FORMAT_SHARES = 3  # a spec with each field's missing share in training: a release that cannot read it refuses it
Extra = tuple[Sequence[str], np.ndarray]  # (field names, float64 values n × len(names)): see transform
OTHER = "__other__"


@dataclass(frozen=True)
class NumericColumn:
    """A numeric field: missing (null, absent, empty, non-finite) reads as ``median``, a column of
    its own says so where ``missing_indicator``; then log1p where ``log``, ``(x - center) / scale``.
    ``missing_share``: the share of training rows without a finite value (None in specs of
    format 1-2), against which the worker compares the stream's (``worker.MissingShares``)."""

    name: str
    median: float
    center: float
    scale: float
    log: bool
    missing_indicator: bool
    missing_share: float | None = None


@dataclass(frozen=True)
class CategoricalColumn:
    """A one-hot field: ``categories`` get a column each, anything else ``__other__``; a missing
    value (null, absent, empty) reads as ``impute`` (a category of the field; None: ``__other__``).
    ``other_share``: the share of training rows with a value that is not one of ``categories``
    (rare ones: what ``__other__`` held in training; None in specs before 2026-12-05), against
    which the worker compares the stream's (``worker.NovelValues``); ``missing_share`` the share
    of training rows where it is missing (None in specs of format 1-2: ``worker.MissingShares``)."""

    name: str
    categories: tuple[str, ...]
    impute: str | None = None
    other_share: float | None = None
    missing_share: float | None = None


@dataclass(frozen=True)
class FeatureSpec:
    """Fitted, immutable feature transformation; serialisable to JSON and versioned by content."""

    numeric: tuple[NumericColumn, ...]
    categorical: tuple[CategoricalColumn, ...]
    time_of_day: bool
    clip: float = 1000.0
    dropped: tuple[str, ...] = ()
    _index: dict[str, dict[str, int]] = field(default_factory=dict, compare=False, repr=False)
    _blocks: dict[tuple[str, ...], _Block | None] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for col in self.categorical:
            index: dict[Any, int] = {c: i for i, c in enumerate(col.categories)}
            if col.impute is not None:
                if col.impute not in index:
                    raise ValueError(f"categorical field {col.name!r}: impute {col.impute!r} is not one of its "
                                     "categories")
                index[None] = index[""] = index[col.impute]  # missing reads as the imputed category
            self._index[col.name] = index

    # ---- shape -------------------------------------------------------------------------
    @property
    def columns(self) -> list[str]:
        """Output column names, in matrix order."""
        names: list[str] = []
        for num in self.numeric:
            names.append(num.name)
            if num.missing_indicator:
                names.append(f"{num.name}__missing")
        for cat in self.categorical:
            names.extend(f"{cat.name}={c}" for c in cat.categories)
            names.append(f"{cat.name}={OTHER}")
        if self.time_of_day:
            names += ["timestamp__hour_sin", "timestamp__hour_cos"]
        return names

    @property
    def sources(self) -> list[str]:
        """For each output column, the input field it comes from (used to explain alerts)."""
        out: list[str] = []
        for num in self.numeric:
            out.append(num.name)
            if num.missing_indicator:
                out.append(num.name)
        for cat in self.categorical:
            out.extend([cat.name] * (len(cat.categories) + 1))
        if self.time_of_day:
            out += ["timestamp", "timestamp"]
        return out

    @property
    def width(self) -> int:
        return len(self.columns)

    @property
    def fingerprint(self) -> str:
        """sha256 of the canonical JSON: two specs with equal fingerprints transform identically."""
        return hashlib.sha256(self.to_json()).hexdigest()

    # ---- transform -----------------------------------------------------------------------
    def transform(self, events: Sequence[dict[str, Any]], extra: Extra | None = None,
                  columns: Mapping[str, Any] | None = None, fields: Mapping[str, Sequence[Any]] | None = None,
                  ) -> tuple[np.ndarray, dict[int, Problem]]:
        """Events → (float32 matrix n × width, {row: (RejectReason, message)} for rows that must be
        rejected).

        ``extra`` = (names, values float64[n, len(names)]): numeric fields given as columns instead
        of dict entries (the entity features straight from the kernel, ``Enricher.features``); a
        field there is read from its column and never from the events, with the same rules (NaN
        is missing, ±inf is rejected), so the matrix equals that of events carrying those values.
        ``columns``: categorical fields given as columns (a pyarrow string array, or a sequence of
        ``str | None``), and ``"timestamp"`` as float64[n] epoch ms (NaN: none) — typed values, as
        ``train --streamed``'s pass 3 has them; ``events`` may then be ``[{}] * n``.
        ``fields``: some of the events' fields already read out, {name: n values, each what
        ``events[i].get(name)`` is} (the decode step's ``Decoded.columns``); a field there is read
        from it instead of the dicts, with the same rules, so the matrix is the same.
        Rows with a problem still get a (meaningless) row in the matrix so indices stay aligned;
        callers drop them before deciding.
        """
        n = len(events)
        out = np.zeros((n, self.width), dtype=np.float32)
        bad: dict[int, Problem] = {}
        given = {name: j for j, name in enumerate(extra[0])} if extra is not None else {}
        cols = columns or {}
        from_events = [c.name for c in self.numeric if c.name not in given]
        cats = [c.name for c in self.categorical if c.name not in cols]
        wanted = from_events + cats
        if fields is not None and wanted and all(name in fields for name in wanted):
            read: list[Sequence[Any]] | None = [fields[name] for name in wanted]
        else:
            read = _field_columns(events, wanted)
        numbers = _float_rows(read[:len(from_events)]) if read is not None and from_events else None
        block = self._block(tuple(extra[0])) if extra is not None else None
        if block is not None and extra is not None and not block.put(extra[1], out, self.clip):
            block = None  # an infinite value: the column-by-column path below names its field
        col = 0
        k = 0  # the next row of ``numbers``
        for num in self.numeric:
            if block is not None and num.name in given:  # written by ``block.put``
                col += 2 if num.missing_indicator else 1
                continue
            if extra is not None and num.name in given:
                values, missing = _finite_or_missing(extra[1][:, given[num.name]].astype(np.float64), num.name, bad)
            elif numbers is not None:
                values, missing = _finite_or_missing(numbers[k], num.name, bad)
                k += 1
            else:
                values, missing = _numeric_column(events, num.name, bad)
            values = np.where(missing, num.median, values)
            if num.log:
                values = np.sign(values) * np.log1p(np.abs(values))
            with np.errstate(over="ignore"):  # a finite value scaled past the float range is ±inf: clipped
                out[:, col] = np.clip((values - num.center) / num.scale, -self.clip, self.clip)
            col += 1
            if num.missing_indicator:
                out[:, col] = missing
                col += 1
        for cat in self.categorical:
            index = self._index[cat.name]
            other = len(cat.categories)
            name = cat.name
            if name in cols:
                codes = _category_codes(cols[name], index, other, n)
            else:
                column = read[len(from_events) + cats.index(name)] if read is not None else \
                    [e.get(name) for e in events]
                codes = np.fromiter(map(index.get, column, repeat(other, n)), dtype=np.int64, count=n)
            out[np.arange(n), col + codes] = 1.0
            col += other + 1
        if self.time_of_day:
            if "timestamp" in cols:  # typed epoch ms: parse_timestamp_ms(t) is t
                ts = np.asarray(cols["timestamp"], dtype=np.float64)
                hours = np.where(np.isnan(ts), 0.0, np.mod(ts / 3_600_000.0, 24.0))
            else:
                hours = _hour_of_day(events, bad)
            out[:, col] = np.sin(2 * np.pi * hours / 24.0)
            out[:, col + 1] = np.cos(2 * np.pi * hours / 24.0)
        return out, bad

    def _block(self, names: tuple[str, ...]) -> _Block | None:
        """The numeric columns an ``extra`` with these field names gives, as one block (cached per
        names); None when it gives none."""
        if names not in self._blocks:
            given = {name: j for j, name in enumerate(names)}
            rows: list[tuple[int, int, NumericColumn]] = []  # (extra column, output column, column)
            col = 0
            for num in self.numeric:
                if num.name in given:
                    rows.append((given[num.name], col, num))
                col += 2 if num.missing_indicator else 1
            self._blocks[names] = _Block.of(rows) if rows else None
        return self._blocks[names]

    # ---- persistence ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self._format(),
            "numeric": [{k: v for k, v in vars(c).items() if k != "missing_share" or v is not None}
                        for c in self.numeric],
            "categorical": [{"name": c.name, "categories": list(c.categories),
                             **({"impute": c.impute} if c.impute is not None else {}),
                             **({"other_share": c.other_share} if c.other_share is not None else {}),
                             **({"missing_share": c.missing_share} if c.missing_share is not None else {})}
                            for c in self.categorical],
            "time_of_day": self.time_of_day,
            "clip": self.clip,
            "dropped": list(self.dropped),
        }

    def missing_shares(self) -> dict[str, float]:
        """Field → the share of training rows it was missing in (``missing_share``), for the fields
        whose spec records it (none in a spec of format 1-2)."""
        shares = {c.name: c.missing_share for c in self.numeric if c.missing_share is not None}
        shares.update({c.name: c.missing_share for c in self.categorical if c.missing_share is not None})
        return shares

    def _format(self) -> int:
        """The oldest format that holds this spec (an older release reads it unchanged)."""
        if self.missing_shares():
            return SPEC_FORMAT_SHARES
        if any(c.impute is not None or c.other_share is not None for c in self.categorical):
            return SPEC_FORMAT_IMPUTE
        return SPEC_FORMAT

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict(), option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        if data.get("format") not in (SPEC_FORMAT, SPEC_FORMAT_IMPUTE, SPEC_FORMAT_SHARES):
            raise ValueError(f"unsupported feature spec format {data.get('format')!r} (this release reads "
                             f"{SPEC_FORMAT}-{SPEC_FORMAT_SHARES}: a newer stream-detector wrote it?)")
        return cls(
            numeric=tuple(NumericColumn(**c) for c in data["numeric"]),
            categorical=tuple(CategoricalColumn(c["name"], tuple(c["categories"]), c.get("impute"),
                                                c.get("other_share"), c.get("missing_share"))
                              for c in data["categorical"]),
            time_of_day=bool(data["time_of_day"]),
            clip=float(data["clip"]),
            dropped=tuple(data.get("dropped", ())),
        )

    @classmethod
    def from_json(cls, raw: bytes) -> FeatureSpec:
        return cls.from_dict(orjson.loads(raw))


# ---- fitting --------------------------------------------------------------------------------


def fit_spec(
    events: Sequence[dict[str, Any]],
    exclude: Sequence[str] = (),
    max_categories: int = 32,
    min_category_count: int = 5,
    time_of_day: bool = False,
    schema: FieldSchema | None = None,
    numeric_extra: Sequence[str] = (),
) -> FeatureSpec:
    """Learn a ``FeatureSpec`` from training events (see the module docstring for the rules).

    With ``schema`` (``fieldschema.py``; events already converted by it) the field types are the
    schema's: number and boolean fields are numeric, category fields categorical, every other
    field is not a feature; the value-guessing rules below apply only without one.
    ``numeric_extra``: fields computed by the product itself (entity features), always numeric.
    """
    if not events:
        raise ValueError("cannot fit features on zero events")
    skip = set(RESERVED_FIELDS) | set(exclude)
    names: dict[str, None] = {}
    typed: dict[str, FieldType] = {}
    if schema is not None:
        typed = {r.name: r.type for r in schema.feature_fields if r.name not in skip}
        typed.update({name: FieldType.NUMBER for name in numeric_extra})
        names = dict.fromkeys(typed)
    else:
        for event in events:
            for name in event:
                if name not in skip:
                    names.setdefault(name, None)
    numeric: list[NumericColumn] = []
    categorical: list[CategoricalColumn] = []
    dropped: list[str] = []
    for name in names:
        values = [e.get(name) for e in events]
        present = [v for v in values if v is not None and v != ""]
        if not present:
            dropped.append(name)
            continue
        as_numbers = _as_numbers(present) if typed.get(name, FieldType.NUMBER) is not FieldType.CATEGORY else None
        if as_numbers is not None:
            numeric.append(_fit_numeric(name, as_numbers, missing=len(present) < len(values),
                                        share=(len(values) - len(as_numbers)) / len(values)))
            continue
        counts = Counter(str(v) for v in present)
        if not typed and len(counts) > 0.5 * len(present) and len(counts) > max_categories:
            dropped.append(name)  # id-like: one-hot would only memorise
            continue
        kept = [c for c, k in counts.most_common(max_categories) if k >= min_category_count]
        categorical.append(CategoricalColumn(name, tuple(sorted(kept)),
                                             mode_of(kept, counts) if len(present) == len(values) else None,
                                             (len(present) - sum(counts[c] for c in kept)) / len(values),
                                             (len(values) - len(present)) / len(values)))
    with_ts = sum(1 for e in events if e.get("timestamp") is not None)
    return FeatureSpec(
        numeric=tuple(numeric),
        categorical=tuple(categorical),
        time_of_day=time_of_day and with_ts >= 0.5 * len(events),
        dropped=tuple(dropped),
    )


def mode_of(kept: Sequence[str], counts: Mapping[str, int]) -> str | None:
    """The category a missing value of a field training never saw missing reads as
    (``CategoricalColumn.impute``): the most frequent of ``kept``, ties to the smaller value;
    None when nothing is kept."""
    return min(kept, key=lambda c: (-counts[c], c)) if kept else None


def _as_numbers(present: list[Any]) -> np.ndarray | None:
    parsed: list[float] = []
    failures = 0
    for v in present:
        if isinstance(v, (int, float)):
            parsed.append(float(v))
            continue
        try:
            parsed.append(float(v))
        except (TypeError, ValueError):
            failures += 1
    if failures > 0.02 * len(present):
        return None
    arr = np.asarray(parsed, dtype=np.float64)
    return arr[np.isfinite(arr)]


def _fit_numeric(name: str, values: np.ndarray, missing: bool, share: float | None = None) -> NumericColumn:
    median = float(np.median(values))
    std = float(values.std())
    skew = float(((values - values.mean()) ** 3).mean() / std**3) if std > 0 else 0.0
    log = abs(skew) > 2.0
    if log:
        values = np.sign(values) * np.log1p(np.abs(values))
    q25, center, q75 = (float(q) for q in np.percentile(values, [25, 50, 75]))
    scale = (q75 - q25) / 1.349
    if not scale > 0:
        scale = float(values.std())
    if not scale > 0 or not math.isfinite(scale):
        scale = 1.0
    return NumericColumn(name, median, center, scale, log, missing, share)


# ---- column extraction ------------------------------------------------------------------------


def _field_columns(events: Sequence[dict[str, Any]], names: list[str]) -> list[Sequence[Any]] | None:
    """Fast path: one ``itemgetter`` call per event and a C-level transpose give one tuple of
    values per field. ``None`` (use the per-field ``.get`` path) when an event lacks a field."""
    if len(names) < 2 or not events:
        return None
    try:
        rows = list(map(itemgetter(*names), events))
    except KeyError:
        return None
    return list(zip(*rows, strict=True))


def _float_rows(columns: Sequence[Sequence[Any]]) -> np.ndarray | None:
    """All numeric fields in one conversion (fields × events, each row contiguous); ``None`` when
    a value does not convert, and the per-field path then finds (and rejects) it."""
    try:
        return np.array(columns, dtype=np.float64)
    except (TypeError, ValueError):
        return None


def _numeric_column(
    events: Sequence[dict[str, Any]], name: str, bad: dict[int, Problem]
) -> tuple[np.ndarray, np.ndarray]:
    raw = [e.get(name) for e in events]
    try:  # fast path: numbers, booleans and None (→ nan) convert in one call
        values = np.array(raw, dtype=np.float64)
    except (TypeError, ValueError):
        values = np.empty(len(raw), dtype=np.float64)
        for i, v in enumerate(raw):
            if v is None or v == "":
                values[i] = np.nan
                continue
            try:
                values[i] = float(v)
            except (TypeError, ValueError):
                values[i] = np.nan
                bad.setdefault(i, (RejectReason.WRONG_TYPE, f"field {name!r} must be numeric, "
                                   f"got {json_type(v)}"))
    return _finite_or_missing(values, name, bad)


@dataclass(frozen=True)
class _Block:
    """Numeric columns given as one float64 block (step 3a's entity features): the same rules as
    the column-by-column path of ``FeatureSpec.transform`` (NaN missing → median, log1p, robust
    scaling, clip), applied to every column at once. The log runs column by column on contiguous
    copies, as that path runs it (numpy's vectorised log1p may round a strided or differently
    aligned element otherwise), so the matrix is the same to the bit."""

    source: np.ndarray  # int64[k]: the columns of ``extra``'s values
    target: np.ndarray  # int64[k]: their output columns
    median: np.ndarray  # float64[k]
    center: np.ndarray
    scale: np.ndarray
    logged: tuple[int, ...]  # positions in 0..k-1 of the log-scaled columns
    indicator: np.ndarray  # int64: positions in 0..k-1 of the columns with a missing indicator
    indicator_target: np.ndarray  # int64: their indicators' output columns

    @classmethod
    def of(cls, rows: list[tuple[int, int, NumericColumn]]) -> _Block:
        def floats(get: Callable[[NumericColumn], float]) -> np.ndarray:
            return np.array([get(num) for _, _, num in rows], dtype=np.float64)
        with_indicator = [i for i, (_, _, num) in enumerate(rows) if num.missing_indicator]
        return cls(np.array([r[0] for r in rows], dtype=np.int64), np.array([r[1] for r in rows], dtype=np.int64),
                   floats(lambda c: c.median), floats(lambda c: c.center), floats(lambda c: c.scale),
                   tuple(i for i, (_, _, num) in enumerate(rows) if num.log),
                   np.array(with_indicator, dtype=np.int64),
                   np.array([rows[i][1] + 1 for i in with_indicator], dtype=np.int64))

    def put(self, values: np.ndarray, out: np.ndarray, clip: float) -> bool:
        """Write the block's columns of ``values`` (float64 n × len(names)) into ``out``; False
        (nothing written) when one is infinite (a rejected row: the caller's path names the field)."""
        v = np.asarray(values, dtype=np.float64)[:, self.source]  # a copy, C-contiguous: changed in place
        missing = np.isnan(v)
        if not np.isfinite(v).all() and np.isinf(v).any():
            return False
        np.copyto(v, np.broadcast_to(self.median, v.shape), where=missing)
        for j in self.logged:
            c = np.ascontiguousarray(v[:, j])
            v[:, j] = np.sign(c) * np.log1p(np.abs(c))
        with np.errstate(over="ignore"):  # a finite value scaled past the float range is ±inf: clipped
            v -= self.center
            v /= self.scale
            np.clip(v, -clip, clip, out=v)
        out[:, self.target] = v
        if self.indicator.size:
            out[:, self.indicator_target] = missing[:, self.indicator]
        return True


def _finite_or_missing(values: np.ndarray, name: str, bad: dict[int, Problem]) -> tuple[np.ndarray, np.ndarray]:
    """Reject infinite values (→ NaN) and mark NaNs (missing) — shared by both extraction paths."""
    nonfinite = np.isinf(values)
    if nonfinite.any():
        for i in np.flatnonzero(nonfinite):
            bad.setdefault(int(i), (RejectReason.NON_FINITE_NUMBER, f"field {name!r} is not finite"))
        values[nonfinite] = np.nan
    missing = np.isnan(values)
    return values, missing


def _category_codes(column: Any, index: dict[Any, int], other: int, n: int) -> np.ndarray:
    """int64[n]: each value's category code (``other``: not a category; missing: ``index[None]``,
    the imputed category's, else ``other``), from a pyarrow array (one lookup per distinct value)
    or a sequence."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(column, (pa.Array, pa.ChunkedArray)):
        encoded = pc.dictionary_encode(column)
        if isinstance(encoded, pa.ChunkedArray):
            encoded = encoded.combine_chunks()
        per = np.array([index.get(v, other) for v in encoded.dictionary.to_pylist()] + [index.get(None, other)],
                       dtype=np.int64)
        return np.asarray(per[pc.fill_null(encoded.indices, len(per) - 1).to_numpy(zero_copy_only=False)])
    return np.fromiter(map(index.get, column, repeat(other, n)), dtype=np.int64, count=n)


def _hour_of_day(events: Sequence[dict[str, Any]], bad: dict[int, Problem]) -> np.ndarray:
    hours = np.zeros(len(events), dtype=np.float64)
    for i, e in enumerate(events):
        ts = e.get("timestamp")
        if ts is None:
            continue
        try:
            hours[i] = (parse_timestamp_ms(ts) / 3_600_000.0) % 24.0
        except (TypeError, ValueError, OverflowError):
            bad.setdefault(i, (RejectReason.INVALID_TIMESTAMP, "timestamp is neither RFC 3339 nor epoch ms"))
    return hours
