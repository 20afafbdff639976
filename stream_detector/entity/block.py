"""The state of the entities one key touches in a batch, as the kernel's arrays.

``Block.of`` lays the records' cores (``compute.Core``: the reference's shape, which the stores
load and save) into arrays, ``Block.from_buffer`` does the same from the cores' bytes; the kept
values and the batch's labels are their codes (``compute.label_code``), the same in every batch,
so nothing is recoded. ``Block.run`` calls the kernel; ``Block.cores`` / ``core_buffer`` read the
state back. Extra rows (``extra``) start empty: keyless events, each on its own row, whose state
is dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..compiled import jit
from ..entity_spec import EntitySpec
from . import kernel
from .columns import Columns, grouping
from .compute import Core


class Block:
    """Arrays of E entities (+ extra empty rows); see ``kernel`` for shapes and dtypes."""

    def __init__(self, spec: EntitySpec, fields: tuple[str, ...], rows: int, codes: np.ndarray) -> None:
        w, f, k = len(spec.windows), len(fields), spec.max_distinct
        self.fields = fields
        self.codes = codes  # int64[F, N], the batch's events
        self.t = np.full(rows, np.nan)
        self.w = np.zeros((rows, w, 3))
        self.n = np.zeros((rows, f), dtype=np.int64)
        self.dt = np.zeros((rows, f, k + 1))
        self.dc = np.zeros((rows, f, k + 1), dtype=np.int64)
        self.late = 0  # the last run's applied events earlier than their entity's last time
        self.late_rows = np.zeros(0, dtype=np.bool_)  # which of the last run's events: ``late`` of them

    @classmethod
    def of(cls, spec: EntitySpec, fields: tuple[str, ...], cores: Sequence[Core], extra: int,
           cols: Columns) -> Block:
        """A block of ``cores`` (in order) plus ``extra`` empty rows, for the events of ``cols``."""
        block = cls(spec, fields, len(cores) + extra, _codes(fields, cols))
        if cores:
            block.t[:len(cores)] = [np.nan if c["t"] is None else c["t"] for c in cores]
            block.w[:len(cores)] = [c["w"] for c in cores]
        at: tuple[list[int], list[int], list[int]] = ([], [], [])  # (entity, field, slot) of each kept value
        times: list[float] = []
        codes_kept: list[int] = []
        for i, f in enumerate(fields):
            for e, core in enumerate(cores):
                seen = core["d"][f]
                if seen:
                    m = len(seen)
                    at[0].extend([e] * m)
                    at[1].extend([i] * m)
                    at[2].extend(range(m))
                    times.extend(seen.values())
                    codes_kept.extend(seen)
        if times:  # one scatter per array instead of one numpy call per entity and field
            block.dt[at] = times
            block.dc[at] = codes_kept
            np.add.at(block.n, (at[0], at[1]), 1)
        return block

    @classmethod
    def from_buffer(cls, spec: EntitySpec, fields: tuple[str, ...], buf: np.ndarray, starts: np.ndarray,
                    extra: int, cols: Columns) -> Block:
        """``of`` for E cores as bytes (``binary.py``'s version-3 core layout) that lie in ``buf``
        (uint8) at ``starts`` (int64[E], byte positions; each core's end follows from its counts),
        without a Python dict or a Python step per entity: one compiled pass (``_read_cores``) fills
        the kernel's arrays (the enricher reads a batch's cores where ``records.parse`` found them,
        without slicing each record). Equal to ``of`` on the decoded cores (unit-tested)."""
        e_count = starts.size
        block = cls(spec, fields, e_count + extra, _codes(fields, cols))
        if e_count:
            bad = _read_cores(buf, np.ascontiguousarray(starts, dtype=np.int64), len(fields), block.t, block.w,
                              block.n, block.dt, block.dc)
            if bad >= 0:  # a record the spec cannot have written: refused before anything is read past it
                raise ValueError(f"entity record: a core keeps more than {block.dt.shape[2]} values of a field "
                                 f"(max_distinct {spec.max_distinct}); not written with this spec")
        return block

    def core_buffer(self, rows: int) -> tuple[bytes, np.ndarray]:
        """The first ``rows`` rows' state as core bytes (``binary.py``'s version-3 layout; kept values
        in slot order, as ``cores`` gives them: what ``binary._core`` writes for ``cores(rows)``), one
        core after another (one compiled pass, ``_write_cores``), and their bounds (int64[rows + 1],
        byte positions: row e's core is ``data[bounds[e]:bounds[e + 1]]``)."""
        n = self.n[:rows]
        sizes = n.shape[1] + 8 * (1 + 3 * self.w.shape[1] + 2 * n.sum(axis=1))  # counts, doubles, codes
        bounds = np.zeros(rows + 1, dtype=np.int64)
        np.cumsum(sizes, out=bounds[1:])
        out = np.empty(int(bounds[-1]), dtype=np.uint8)
        if rows:
            _write_cores(out, bounds, self.t, self.w, self.n, self.dt, self.dc)
        return out.tobytes(), bounds

    def run(self, spec: EntitySpec, state_row: np.ndarray, apply: np.ndarray, ts: np.ndarray,
            amount: np.ndarray, codes: np.ndarray | None = None) -> np.ndarray:
        """Features float64[N, len(spec.fields_for(key))] of the events; the block's state advances;
        ``late``: how many applied events were earlier than their entity's last time (clamped).
        ``state_row`` int64[N] is each event's row here, ``apply`` bool[N] whether it is applied,
        ``codes`` int64[F, N] their label codes, C-contiguous (default: the batch's, from ``of``); other
        layouts would compile a second kernel specialisation on first use."""
        order, starts, grow = grouping(state_row)
        codes = self.codes if codes is None else codes
        out = np.empty((ts.size, len(spec.windows) * (5 + len(self.fields)) + 1 + len(self.fields)))
        late = np.empty(ts.size, dtype=np.bool_)
        kernel.run(order, starts, grow, apply, ts, amount, codes, windows_ms(spec),
                   float(spec.windows[-1]), float(spec.horizon_ms), spec.max_distinct,
                   self.t, self.w, self.n, self.dt, self.dc, out, late)
        self.late = int(np.count_nonzero(late))
        self.late_rows = late
        return out

    def clear(self, rows: slice) -> None:
        """Rows back to empty state (keyless scratch rows between offline chunks)."""
        self.t[rows] = np.nan
        self.w[rows] = 0.0
        self.n[rows] = 0

    def cores(self, rows: int) -> list[Core]:
        """The first ``rows`` rows' state in the reference's shape (distinct values in insertion
        order); the arrays are converted to Python once, not per entity."""
        ts, ws, ns = self.t[:rows].tolist(), self.w[:rows].tolist(), self.n[:rows].tolist()
        dts, dcs = self.dt[:rows].tolist(), self.dc[:rows].tolist()
        out: list[Core] = []
        for e in range(rows):
            d: dict[str, dict[int, float]] = {}
            for i, f in enumerate(self.fields):
                m = ns[e][i]
                d[f] = dict(zip(dcs[e][i][:m], dts[e][i][:m], strict=True))
            t = ts[e]
            out.append({"t": None if t != t else t, "w": ws[e], "d": d})
        return out


def _codes(fields: tuple[str, ...], cols: Columns) -> np.ndarray:
    """int64[F, N]: the batch's label codes of ``fields``, C-contiguous."""
    if not fields:
        return np.zeros((0, cols.ts.size), dtype=np.int64)
    return np.stack([cols.codes[f] for f in fields])


@jit
def _read_cores(buf: np.ndarray, starts: np.ndarray, f_count: int, t: np.ndarray, w: np.ndarray, n: np.ndarray,
                dt: np.ndarray, dc: np.ndarray) -> int:  # pragma: no cover (compiled)
    """Rows 0..E-1 of the block's arrays from the cores at ``starts`` in ``buf``: each core's
    doubles and codes are copied to an aligned scratch buffer and read through its float64 and
    int64 views (the cores sit at any byte position). Returns -1, or the first core that keeps
    more values of a field than ``dt`` has slots (nothing of it is read: compiled code does not
    check bounds)."""
    windows = w.shape[1]
    head = 1 + 3 * windows
    slots = dt.shape[2]
    scratch = np.empty(8 * (head + 2 * f_count * slots), dtype=np.uint8)
    doubles = scratch.view(np.float64)
    longs = scratch.view(np.int64)
    for e in range(starts.size):
        s = starts[e]
        kept = 0
        for f in range(f_count):
            if buf[s + f] > slots:
                return e
            n[e, f] = buf[s + f]
            kept += buf[s + f]
        size = 8 * (head + 2 * kept)
        at = s + f_count
        for b in range(size):
            scratch[b] = buf[at + b]
        t[e] = doubles[0]
        for i in range(windows):
            for j in range(3):
                w[e, i, j] = doubles[1 + 3 * i + j]
        k = 0
        for f in range(f_count):
            for slot in range(n[e, f]):
                dt[e, f, slot] = doubles[head + k]
                dc[e, f, slot] = longs[head + kept + k]
                k += 1
    return -1


@jit
def _write_cores(out: np.ndarray, bounds: np.ndarray, t: np.ndarray, w: np.ndarray, n: np.ndarray,
                 dt: np.ndarray, dc: np.ndarray) -> None:  # pragma: no cover (compiled)
    """``_read_cores`` reversed: rows 0..len(bounds)-2 written as cores into ``out`` at ``bounds``."""
    windows = w.shape[1]
    f_count = n.shape[1]
    head = 1 + 3 * windows
    scratch = np.empty(8 * (head + 2 * f_count * dt.shape[2]), dtype=np.uint8)
    doubles = scratch.view(np.float64)
    longs = scratch.view(np.int64)
    for e in range(bounds.size - 1):
        s = bounds[e]
        kept = 0
        for f in range(f_count):
            out[s + f] = n[e, f]
            kept += n[e, f]
        doubles[0] = t[e]
        for i in range(windows):
            for j in range(3):
                doubles[1 + 3 * i + j] = w[e, i, j]
        k = 0
        for f in range(f_count):
            for slot in range(n[e, f]):
                doubles[head + k] = dt[e, f, slot]
                longs[head + kept + k] = dc[e, f, slot]
                k += 1
        at = s + f_count
        for b in range(8 * (head + 2 * kept)):
            out[at + b] = scratch[b]


def warm() -> None:
    """Compile (or load from numba's on-disk cache) ``_read_cores`` and ``_write_cores`` for the
    enricher's dtypes, so the first batch does not pay it. Idempotent."""
    if _WARM:
        return
    block_t, block_w, block_n = np.full(1, np.nan), np.zeros((1, 1, 3)), np.zeros((1, 1), dtype=np.int64)
    block_dt, block_dc = np.zeros((1, 1, 2)), np.zeros((1, 1, 2), dtype=np.int64)
    out = np.zeros(1 + 8 * 4, dtype=np.uint8)
    _write_cores(out, np.array([0, out.size], dtype=np.int64), block_t, block_w, block_n, block_dt, block_dc)
    # read-only, as the enricher's buffers are (``np.frombuffer`` of bytes): numba compiles one
    # specialisation per writability, and the first batch would otherwise pay the second
    _read_cores(np.frombuffer(out.tobytes(), dtype=np.uint8), np.zeros(1, dtype=np.int64), 1, block_t, block_w,
                block_n, block_dt, block_dc)
    _WARM.append(True)


_WARM: list[bool] = []


def windows_ms(spec: EntitySpec) -> np.ndarray:
    return np.array([s * 1000.0 for s in spec.windows], dtype=np.float64)
