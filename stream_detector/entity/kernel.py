"""The compiled entity recurrences: every event of a batch against its entity's state, in one call.

Numba (``@njit(cache=True)``), chosen by measurement over a numpy formulation
(``python -m benchmarks entity --speed``, ``benchmarks/RESULTS.md``, *Entity features: speed and
state size*). The recurrences are sequential per entity — the clamped time, the decay since the
previous event, the horizon reset and the capped distinct sets all depend on the event before —
so numpy can only vectorise *across* entities, one round per event rank (296 rounds for the
busiest terminal of the benchmark's 40k events). On the decayed windows alone numba ran 2.3-3.7×
faster than that numpy form in four runs (1.3-2.3 M vs 0.41-0.68 M events/s, one shared core),
and the distinct sets (cap, expiry, eviction) have no round-free numpy form at all.

The arithmetic is the per-event reference's (``compute.py``) operation for operation, without
fast-math, so results are equal to the last bit (``tests/unit/test_entity_kernel.py`` compares them
on random streams). Distinct values arrive as their labels' codes (``compute.label_code``, 63-bit
hashes; the eviction tie-break of the reference compares codes too).

Arrays (E entities, N events, W windows, F distinct fields, K = ``max_distinct``)::

    order   int64[N]      event rows grouped by entity, batch order inside a group
    starts  int64[G+1]    group g's events are order[starts[g]:starts[g+1]]
    grow    int64[G]      state row of group g
    apply   bool[N]       False: features against the state, state unchanged (already applied)
    ts      float64[N]    event time, epoch ms; NaN when missing or unusable
    amount  float64[N]    NaN: none (counted at the entity's mean, ``compute.py``)
    codes   int64[F, N]   label code per distinct field (``compute.label_code``); -1: no usable value
    st_t    float64[E]    last event time (NaN: no state)
    st_w    float64[E, W, 3]   decayed n, Σamount, Σamount² as of st_t
    st_n    int64[E, F]   values kept per field (≤ K)
    st_dt   float64[E, F, K+1] last-seen ms per kept value (one spare slot for the insert-then-evict)
    st_dc   int64[E, F, K+1]   code per kept value
    out     float64[N, 5W + FW + 1 + F]  in ``EntitySpec.fields_for`` order
    late    bool[N]       out: an applied event earlier than its entity's last time (clamped to it)
"""

from __future__ import annotations

import math

import numpy as np

from ..compiled import jit


@jit
def run(order: np.ndarray, starts: np.ndarray, grow: np.ndarray, apply: np.ndarray, ts: np.ndarray,
        amount: np.ndarray, codes: np.ndarray, windows_ms: np.ndarray, longest_s: float,
        horizon_ms: float, k: int, st_t: np.ndarray, st_w: np.ndarray, st_n: np.ndarray,
        st_dt: np.ndarray, st_dc: np.ndarray, out: np.ndarray,
        late: np.ndarray) -> None:  # pragma: no cover (compiled)
    """Features of every event (``out``) and the state after them (``st_*``, in place); ``late``:
    which applied events came earlier in event time than their entity's last one (the late-event
    rule applies them at that time: counted by the worker, ``Enricher.last_late``)."""
    for g in range(starts.shape[0] - 1):
        e = grow[g]
        for j in range(starts[g], starts[g + 1]):
            i = order[j]
            late[i] = apply[i] and ts[i] < st_t[e]  # False where either is NaN
            _event(i, e, apply[i], ts[i], amount[i], codes, windows_ms, longest_s, horizon_ms, k,
                   st_t, st_w, st_n, st_dt, st_dc, out)


@jit
def _event(i: int, e: int, apply: bool, tv: float, amt: float, codes: np.ndarray, windows_ms: np.ndarray,
           longest_s: float, horizon_ms: float, k: int, st_t: np.ndarray, st_w: np.ndarray, st_n: np.ndarray,
           st_dt: np.ndarray, st_dc: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover (compiled)
    last = st_t[e]
    has_last = not math.isnan(last)
    if math.isnan(tv):
        t = last if has_last else 0.0
    else:
        t = tv if (not has_last or tv > last) else last
    reset = has_last and t - last >= horizon_ms
    if reset:
        has_last = False
        if apply:
            st_w[e, :, :] = 0.0
            st_n[e, :] = 0
    nw = windows_ms.shape[0]
    nf = codes.shape[0]
    per = 5 + nf
    for w in range(nw):
        if reset:
            n = 0.0
            s = 0.0
            ss = 0.0
        else:
            n = st_w[e, w, 0]
            s = st_w[e, w, 1]
            ss = st_w[e, w, 2]
        if has_last and t > last:
            f = math.exp(-(t - last) / windows_ms[w])
            n = n * f
            s = s * f
            ss = ss * f
        base = w * per
        out[i, base] = n
        out[i, base + 1] = s
        if n > 1e-9:
            mean = s / n
            sd = math.sqrt(max(ss / n - mean * mean, 0.0))
            out[i, base + 2] = mean
            out[i, base + 3] = amt / mean if mean > 1e-9 else 1.0
            out[i, base + 4] = (amt - mean) / max(sd, 0.1 * abs(mean), 0.01)
        else:
            out[i, base + 2] = 0.0
            out[i, base + 3] = 1.0
            out[i, base + 4] = 0.0
        if apply:
            if not math.isnan(amt):
                st_w[e, w, 0] = n + 1.0
                st_w[e, w, 1] = s + amt
                st_w[e, w, 2] = ss + amt * amt
            elif n > 1e-9:  # no amount: counted at the mean so far, as the reference
                a = s / n
                st_w[e, w, 0] = n + 1.0
                st_w[e, w, 1] = s + a
                st_w[e, w, 2] = ss + a * a
            else:  # no amount, no history in this window: not counted (the decayed state kept)
                st_w[e, w, 0] = n
                st_w[e, w, 1] = s
                st_w[e, w, 2] = ss
    tail = nw * per
    out[i, tail] = longest_s if not has_last else min((t - last) / 1000.0, longest_s)
    longest = windows_ms[nw - 1]
    for fi in range(nf):
        kept = 0 if reset else st_n[e, fi]
        for w in range(nw):
            c = 0
            for j in range(kept):
                if t - st_dt[e, fi, j] < windows_ms[w]:
                    c += 1
            out[i, w * per + 5 + fi] = float(c)
        code = codes[fi, i]
        if code < 0:
            out[i, tail + 1 + fi] = 0.0
            continue
        at = -1
        for j in range(kept):
            if st_dc[e, fi, j] == code:
                at = j
                break
        out[i, tail + 1 + fi] = 1.0 if at < 0 or t - st_dt[e, fi, at] >= longest else 0.0
        if apply:
            _insert(e, fi, code, t, at, kept, longest, k, st_n, st_dt, st_dc)
    if apply:
        st_t[e] = t


@jit
def _insert(e: int, fi: int, code: int, t: float, at: int, kept: int, longest: float, k: int,
            st_n: np.ndarray, st_dt: np.ndarray, st_dc: np.ndarray) -> None:  # pragma: no cover (compiled)
    """``seen[label] = t``, drop values older than the longest window, evict the oldest over the cap."""
    if at >= 0:
        st_dt[e, fi, at] = t
    else:
        st_dt[e, fi, kept] = t
        st_dc[e, fi, kept] = code
        kept += 1
    m = 0
    for j in range(kept):  # drop stale values, keeping insertion order
        if not t - st_dt[e, fi, j] >= longest:
            st_dt[e, fi, m] = st_dt[e, fi, j]
            st_dc[e, fi, m] = st_dc[e, fi, j]
            m += 1
    while m > k:  # evict min (time, code), as the reference
        low = 0
        for j in range(1, m):
            if (st_dt[e, fi, j] < st_dt[e, fi, low]
                    or (st_dt[e, fi, j] == st_dt[e, fi, low] and st_dc[e, fi, j] < st_dc[e, fi, low])):
                low = j
        for j in range(low, m - 1):
            st_dt[e, fi, j] = st_dt[e, fi, j + 1]
            st_dc[e, fi, j] = st_dc[e, fi, j + 1]
        m -= 1
    st_n[e, fi] = m


def warm() -> None:
    """Compile (or load from numba's on-disk cache) the kernel for the dtypes the enricher uses, so
    the first batch does not pay it. Idempotent and cheap after the first call."""
    if _WARM:
        return
    one = np.zeros(1, dtype=np.int64)
    run(one, np.array([0, 1], dtype=np.int64), one, np.ones(1, dtype=np.bool_), np.zeros(1), np.zeros(1),
        np.full((1, 1), -1, dtype=np.int64), np.array([3.6e6]), 3600.0, 1.08e7, 1, np.full(1, np.nan),
        np.zeros((1, 1, 3)), np.zeros((1, 1), dtype=np.int64), np.zeros((1, 1, 2)),
        np.zeros((1, 1, 2), dtype=np.int64), np.zeros((1, 8)), np.zeros(1, dtype=np.bool_))
    _WARM.append(True)


_WARM: list[bool] = []
