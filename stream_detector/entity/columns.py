"""A batch of event dicts as the kernel's columns, and the kernel's output back onto the dicts.

The only per-event Python left on the entity path is here: one pass that reads each event's
timestamp, amount, key values and distinct-field labels (with the reference's rules for missing,
late, non-finite and odd-typed values: ``compute.event_time``, ``compute.amount_of``), and one
pass that adds the feature row to a copy of each event.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..entity_spec import EntitySpec
from ..fieldschema import float_array
from ..schema import parse_timestamp_ms
from .compute import amount_value, label_code

NAN = float("nan")
Fields = Mapping[str, Sequence[Any]]  # fields of a list of events, read out: {name: one value per event}


def entity_value(value: object) -> str | None:
    """The entity id of a key field's value; None (no state, empty history) when unusable."""
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        return None
    return str(value)


def entity_codes(events: Sequence[dict[str, Any]], key: str, keyed: Sequence[bool] | None = None,
                 fields: Fields | None = None) -> tuple[list[str], np.ndarray]:
    """The entities of ``key`` in a batch: their ids (``entity_value``) in order of first
    appearance, and each event's entity as int64[N] codes into that list (-1: no usable value,
    or ``keyed[row]`` False). Equal to calling ``entity_value`` per event; the common batch (every
    value a str or an int) is grouped by dict and ``map`` at C speed, anything else per event.
    ``fields``: fields of ``events`` already read out (``read``)."""
    raw = read(events, key, fields)
    n = len(raw)
    kinds = set(map(type, raw))
    names: list[str]
    if kinds <= {str, int}:
        ids: list[str] = [v if type(v) is str else str(v) for v in raw] if int in kinds else raw
        first = dict.fromkeys(ids, -1)
        first.pop("", None)
        names = list(first)
        index = {name: i for i, name in enumerate(names)}
        index[""] = -1
        codes = np.fromiter(map(index.__getitem__, ids), np.int64, n)
    else:
        values = [entity_value(v) for v in raw]
        found: dict[str | None, int] = {}
        for v in values:
            if v is not None and v not in found:
                found[v] = len(found)
        names = [str(v) for v in found]
        found[None] = -1
        codes = np.fromiter(map(found.__getitem__, values), np.int64, n)
    if keyed is not None and not all(keyed):
        codes[~np.asarray(keyed, dtype=np.bool_)] = -1
        used = np.unique(codes[codes >= 0])
        if used.size < len(names):  # entities only unkeyed rows named: renumber the rest in order
            remap = np.full(len(names) + 1, -1, dtype=np.int64)
            remap[used] = np.arange(used.size)
            codes = remap[codes]  # -1 indexes the last slot, which stays -1
            names = [names[i] for i in used.tolist()]
    return names, codes


def timestamp_value(value: object) -> float:
    """Event time in epoch ms; NaN when missing or unusable (the reference's ``None``)."""
    if type(value) is float:
        return value if value - value == 0.0 else NAN
    if value is None:
        return NAN
    try:
        return parse_timestamp_ms(value)
    except (TypeError, ValueError, OverflowError):
        return NAN


LATE_SHARE_WARNED = 0.01  # more rows than this out of time order: a file not sorted by time (``unsorted_warning``)
LATE_SHARE_REFUSED = 0.2  # more than this: another order than time altogether (``unsorted_error``; --file-order)


def late_rows(times: np.ndarray, latest: float = -math.inf) -> tuple[int, float]:
    """How many of ``times`` (float64[n] epoch ms, NaN: none) are earlier than a time before them,
    counting from ``latest`` (the largest time of the rows before these), and the new largest time.
    Rows without a time neither count nor move it."""
    if not len(times):
        return 0, latest
    before = np.fmax.accumulate(np.concatenate(([latest], times)))[:-1]
    return int((times < before).sum()), float(np.fmax(before[-1], times[-1]))


def late_in_entities(times: np.ndarray, codes: Sequence[np.ndarray]) -> np.ndarray:
    """bool[N]: the rows (``times`` float64 epoch ms in file order, NaN: none) earlier than an earlier
    row of their own entity for any key (``codes``: one int64[N] per key, -1: no entity), i.e. the
    rows history features apply late (clamped to the entity's last time, as the kernel does). The
    measure of a file's order for history features: a file grouped by account, each account in time
    order, is in order for an account model (a trial: refused as "100 % late" by a file-wide running
    maximum), and one mistyped far-future row makes only its own entities' later rows late (the same
    trial: 9,999 of 10,000 rows "late" after one row a month ahead)."""
    late = np.zeros(times.size, dtype=np.bool_)
    for code in codes:
        idx = np.flatnonzero((code >= 0) & ~np.isnan(times))
        if idx.size < 2:
            continue
        order = idx[np.argsort(code[idx], kind="stable")]  # each entity's rows together, in file order
        c, t = code[order], times[order]
        first = np.empty(c.size, dtype=np.bool_)
        first[0], first[1:] = True, c[1:] != c[:-1]
        t0 = float(t.min())
        span = int(t.max() - t0) + 1
        # one running maximum per entity: entity k's times lifted by k·span, so the maximum never
        # carries over from the entity before (int64: up to ~10^6 entities over ~10 years of ms)
        lifted = (np.cumsum(first) - 1).astype(np.int64) * span + (t - t0).astype(np.int64)
        before = np.maximum.accumulate(lifted)
        behind = np.zeros(c.size, dtype=np.bool_)
        behind[1:] = ~first[1:] & (lifted[1:] < before[:-1])
        late[order[behind]] = True
    return late


def _late_what(keys: Sequence[str] | None) -> str:
    """How ``unsorted_warning`` and ``unsorted_error`` name a late row: by its own entities' earlier
    rows (``late_in_entities``, ``keys``), or by the file's (a streamed read's running maximum)."""
    return (f"earlier than an earlier row of the same {' or '.join(keys)}" if keys
            else "earlier than a row before them")


def unsorted_warning(late: int, total: int, keys: Sequence[str] | None = None) -> str | None:
    """The warning for a file whose rows are out of time order (``late`` of ``total`` earlier than
    a row before them, more than ``LATE_SHARE_WARNED``), else None: history features apply rows in
    file order, a late row at its entity's last time (as a worker applies a late event), so an
    unsorted file gets features unlike the stream's. A new-user trial: a shuffled copy of the
    simulator's file scored 89 % of its rows above the threshold, with no warning."""
    if not total or late <= LATE_SHARE_WARNED * total:
        return None
    return (f"warning: {late:,} of {total:,} rows ({late / total:.1%}) are {_late_what(keys)}: history "
            "features apply the rows in file order, a late row at its entity's last time, so a file not sorted by "
            "timestamp gets features (and scores) unlike the live stream's. Sort it by timestamp first "
            "(docs/entity-features.md)")


def unsorted_error(late: int, total: int, keys: Sequence[str] | None = None) -> str | None:
    """The refusal (``ConfigError``, exit 2) for a file with history features whose rows are in
    another order than time altogether (``late`` of ``total`` earlier than a row before them, more
    than ``LATE_SHARE_REFUSED``), else None. A new-user trial (2026-12-07): a shuffled copy of the
    Handbook simulator's file, 29,987 of 30,000 rows late, was warned about and then scored (82.8 %
    of its rows above the threshold, exit 0) and trained on. An arrival log with some late events
    stays a warning (``unsorted_warning``); ``--file-order`` applies such a file as it is."""
    if not total or late <= LATE_SHARE_REFUSED * total:
        return None
    return (f"{late:,} of {total:,} rows ({late / total:.1%}) are {_late_what(keys)}: history features "
            "apply the rows in file order, so a file in another order than time (a shuffled export, a query "
            "without ORDER BY) gets features and scores unlike the live stream's. Sort it by timestamp first, or "
            "pass --file-order to apply it as it is (docs/entity-features.md)")


FILLING_SHARE_WARNED = 0.5  # more rows than this with under 2 windows of history: ``filling_warning``


def filling_warning(times: np.ndarray, longest_s: int, name: str) -> str | None:
    """The warning for a history too short for its longest window (``longest_s`` seconds, named
    ``name``), else None: more than ``FILLING_SHARE_WARNED`` of the rows (``times``, float64 epoch
    ms, NaN: none; in file order) have less than two windows of the file before them. A decayed
    window (time constant = its length) is 63 % full after one length of history, 86 % after two,
    95 % after three; live traffic, with months of history, has full windows, hence larger counts
    and sums than such rows, and a model trained on them alerts above its budget there. A new-user
    trial (2026-12-07) found it in the demo: 30-day windows over 35 days, the live week's legit
    alert rate 2.2-3.0 % against a 0.5 % budget (0.5-0.6 % with 1 d and 7 d windows)."""
    timed = times[~np.isnan(times)]
    if timed.size == 0:
        return None
    young = float(np.mean(timed - timed.min() < 2 * longest_s * 1000.0))
    if young <= FILLING_SHARE_WARNED:
        return None
    span_days = (timed.max() - timed.min()) / 86_400_000
    return (f"warning: {young:.0%} of the rows have less than two {name} windows of history before them in this "
            f"file ({span_days:.1f} days in all): a decayed window fills over about three times its length, so live "
            f"traffic, with a longer history, gets larger counts and sums than these rows and the model alerts above "
            f"its budget there. Train on a history of at least {4 * longest_s / 86_400:g} days (most rows then have "
            "two windows behind them), or use shorter windows (docs/entity-features.md)")


def label_value(value: object) -> str | None:
    """A distinct field's value as the reference's label (``str(value)``); None when absent, null,
    empty (``""``: missing, as null) or nested."""
    if type(value) is str:
        return value or None
    if value is None or isinstance(value, (dict, list)):
        return None
    return str(value)


def label_codes(labels: Sequence[str | None]) -> np.ndarray:
    """int64[N]: ``label_code`` of each label, -1 for None (no usable value)."""
    index: dict[str | None, int] = {label: label_code(label) for label in set(labels) if label is not None}
    index[None] = -1
    return np.fromiter(map(index.__getitem__, labels), np.int64, len(labels))


@dataclass
class Columns:
    """Per-event inputs of every key: ``ts`` and ``amount`` float64[N]; per distinct field the
    labels (``label_value``; None: no value) and their codes int64[N] (``label_code``; -1: no value)."""

    ts: np.ndarray
    amount: np.ndarray
    labels: dict[str, list[str | None]]
    codes: dict[str, np.ndarray]

    @classmethod
    def of(cls, spec: EntitySpec, events: Sequence[dict[str, Any]], fields: Fields | None = None) -> Columns:
        """The columns of ``events``; ``fields``: some of their fields already read out (``read``)."""
        ts = numbers(read(events, "timestamp", fields), timestamp_value, math.nan)
        amount = numbers(read(events, spec.amount_field, fields), amount_value, math.nan)
        labels = {f: label_values(read(events, f, fields)) for f in spec.distinct_fields}
        return cls(ts, amount, labels, {f: label_codes(v) for f, v in labels.items()})


def read(events: Sequence[dict[str, Any]], name: str, fields: Fields | None) -> list[Any]:
    """``[e.get(name) for e in events]``, from ``fields[name]`` when there (the decode step's
    ``Decoded.columns``: the same values, already read out of the dicts)."""
    column = fields.get(name) if fields is not None else None
    if column is not None:
        return column if type(column) is list else list(column)
    return [e.get(name) for e in events]


def numbers(raw: list[Any], one: Callable[[object], float], bad: float) -> np.ndarray:
    """float64[N] of ``one`` applied to each value, where ``one`` reads an int or float as itself
    and a non-finite one as ``bad`` (``timestamp_value`` and ``amount_value``: NaN). A batch of
    ints and floats only is converted in one ``fromiter`` (C speed); anything else, or an int past
    the float range, goes value by value through ``one``."""
    out = float_array(raw)
    if out is not None:
        out[~np.isfinite(out)] = bad
        return out
    return np.fromiter(map(one, raw), np.float64, len(raw))


def label_values(raw: list[Any]) -> list[str | None]:
    """``label_value`` of each value; a batch of strings only is returned as it is."""
    if set(map(type, raw)) <= {str} and "" not in raw:
        return raw
    return [label_value(v) for v in raw]


def grouping(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``ids`` int64[N] (state row per event) → (order, starts, state row per group) for the kernel:
    events grouped by row, batch order kept inside each group."""
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    if ids.size == 0:
        return order, np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int64)
    cut = np.flatnonzero(sorted_ids[1:] != sorted_ids[:-1]) + 1
    starts = np.concatenate(([0], cut, [ids.size])).astype(np.int64)
    return order.astype(np.int64), starts, sorted_ids[starts[:-1]].astype(np.int64)


def attach(events: Sequence[dict[str, Any]], names: list[str], values: np.ndarray) -> list[dict[str, Any]]:
    """New dicts: each event plus its row of ``values`` (float64[N, len(names)]) under ``names``."""
    out: list[dict[str, Any]] = []
    append = out.append
    for event, row in zip(events, values.tolist(), strict=True):
        d = dict(event)
        d.update(zip(names, row, strict=True))
        append(d)
    return out


@contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off for one batch (restored after, as it was). A batch
    allocates a few containers per event and per entity and makes no reference cycles, so
    reference counting frees everything; with the collector on, its passes over every live object
    (an offline store holds millions) took half of the enrich step's CPU (benchmarks/RESULTS.md)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
