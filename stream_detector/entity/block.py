"""The state of the entities one key touches in a batch, as the kernel's arrays.

``Block.of`` lays the records' cores (``compute.Core``: the reference's shape, which the stores
load and save) into arrays, ``Block.from_bytes`` does the same from the cores' bytes; the kept
values and the batch's labels are their codes (``compute.label_code``), the same in every batch,
so nothing is recoded. ``Block.run`` calls the kernel; ``Block.cores`` / ``core_bytes`` read the
state back. Extra rows (``extra``) start empty: keyless events, each on its own row, whose state
is dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

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
    def from_bytes(cls, spec: EntitySpec, fields: tuple[str, ...], cores: Sequence[bytes], extra: int,
                   cols: Columns) -> Block:
        """``of`` for cores as bytes (``binary.py``'s version-3 core layout), without a Python dict
        per entity: one ``frombuffer`` for every core's doubles and one for their codes, and numpy
        scatters. Equal to ``of`` on the decoded cores (unit-tested)."""
        e_count, f_count, w = len(cores), len(fields), len(spec.windows)
        head = 1 + 3 * w
        kept: list[bytes] = []
        chunks: list[bytes] = []
        coded: list[bytes] = []
        for core in cores:
            m = core[:f_count]
            end = f_count + 8 * (head + sum(m))
            kept.append(m)
            chunks.append(core[f_count:end])
            coded.append(core[end:])
        counts = np.frombuffer(b"".join(kept), dtype=np.uint8).reshape(e_count, f_count).astype(np.int64)
        flat = np.frombuffer(b"".join(chunks), dtype="<f8")
        codes_kept = np.frombuffer(b"".join(coded), dtype="<i8")
        sizes = head + counts.sum(axis=1)
        offs = np.zeros(e_count, dtype=np.int64)
        if e_count:
            np.cumsum(sizes[:-1], out=offs[1:])
        kept_per = counts.sum(axis=1)
        total = int(kept_per.sum())
        e_rep = np.repeat(np.arange(e_count), kept_per)
        f_rep = np.repeat(np.tile(np.arange(f_count), e_count), counts.ravel())
        start_e = np.concatenate(([0], np.cumsum(kept_per)[:-1])) if e_count else np.zeros(0, dtype=np.int64)
        within_e = np.arange(total) - start_e[e_rep]  # rank among the entity's kept values (field-major)
        field_start = np.concatenate((np.zeros((e_count, 1), dtype=np.int64), np.cumsum(counts, axis=1)[:, :-1]),
                                     axis=1) if f_count else np.zeros((e_count, 0), dtype=np.int64)
        slot = within_e - field_start[e_rep, f_rep]
        block = cls(spec, fields, e_count + extra, _codes(fields, cols))
        if e_count:
            block.t[:e_count] = flat[offs]
            block.w[:e_count] = flat[offs[:, None] + 1 + np.arange(3 * w)].reshape(e_count, w, 3)
            block.n[:e_count] = counts
        if total:
            block.dt[e_rep, f_rep, slot] = flat[offs[e_rep] + head + within_e]
            block.dc[e_rep, f_rep, slot] = codes_kept
        return block

    def core_bytes(self, rows: int) -> list[bytes]:
        """The first ``rows`` rows' state as core bytes (``binary.py``'s version-3 layout; kept values
        in slot order, as ``cores`` gives them): what ``binary._core`` writes for ``cores(rows)``."""
        w = self.w.shape[1]
        head = 1 + 3 * w
        n = self.n[:rows]
        mask = np.arange(self.dt.shape[2])[None, None, :] < n[:, :, None]
        kept_dt = self.dt[:rows][mask]
        kept_per = n.sum(axis=1)
        sizes = head + kept_per
        offs = np.zeros(rows + 1, dtype=np.int64)
        np.cumsum(sizes, out=offs[1:])
        flat = np.empty(int(offs[-1]), dtype="<f8")
        base = offs[:-1]
        heads = np.concatenate((self.t[:rows, None], self.w[:rows].reshape(rows, 3 * w)), axis=1)
        flat[base[:, None] + np.arange(head)] = heads
        e_rep = np.repeat(np.arange(rows), kept_per)
        start_e = np.concatenate(([0], np.cumsum(kept_per)[:-1])) if rows else np.zeros(0, dtype=np.int64)
        flat[base[e_rep] + head + (np.arange(kept_dt.size) - start_e[e_rep])] = kept_dt
        doubles = flat.tobytes()
        codes = self.dc[:rows][mask].astype("<i8").tobytes()
        counts = n.astype(np.uint8).tobytes()
        f_count = n.shape[1]
        k_offs = np.zeros(rows + 1, dtype=np.int64)
        np.cumsum(kept_per, out=k_offs[1:])
        offs_list, k_list = (8 * offs).tolist(), (8 * k_offs).tolist()
        return [b"".join((counts[e * f_count:(e + 1) * f_count], doubles[offs_list[e]:offs_list[e + 1]],
                          codes[k_list[e]:k_list[e + 1]])) for e in range(rows)]

    def run(self, spec: EntitySpec, state_row: np.ndarray, apply: np.ndarray, ts: np.ndarray,
            amount: np.ndarray, codes: np.ndarray | None = None) -> np.ndarray:
        """Features float64[N, len(spec.fields_for(key))] of the events; the block's state advances.
        ``state_row`` int64[N] is each event's row here, ``apply`` bool[N] whether it is applied,
        ``codes`` int64[F, N] their label codes, C-contiguous (default: the batch's, from ``of``); other
        layouts would compile a second kernel specialisation on first use."""
        order, starts, grow = grouping(state_row)
        codes = self.codes if codes is None else codes
        out = np.empty((ts.size, len(spec.windows) * (5 + len(self.fields)) + 1 + len(self.fields)))
        kernel.run(order, starts, grow, apply, ts, amount, codes, windows_ms(spec),
                   float(spec.windows[-1]), float(spec.horizon_ms), spec.max_distinct,
                   self.t, self.w, self.n, self.dt, self.dc, out)
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


def windows_ms(spec: EntitySpec) -> np.ndarray:
    return np.array([s * 1000.0 for s in spec.windows], dtype=np.float64)
