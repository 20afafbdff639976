"""A batch's entity records read and written in compiled code (``binary.py``'s version-3 layout).

The enricher's normal case per entity — no event of the batch at or below the record's applied
offsets — needs from each record only its applied ``(partition, offset)`` pairs and where its
current core lies, and writes a new record from fixed-layout parts::

    u8 3 | u8 1 | u16 P' | P' × (i32 partition, i64 last applied offset)   (old pairs, updated,
                                                                             then new partitions)
    | new core | u16 Q | Q × (i32 partition, i64 first offset of this write) | old core  (undo)

``parse`` finds the sections of every record of a key's batch in one numba call, ``normal``
decides the normal case for all of them with numpy (per (entity, partition) span: its smallest
offset above the applied one), and ``assemble`` writes every normal entity's new record in one
numba call. Everything else — a record of another format version, a malformed one, an entity
with an event already applied (a redelivery) — goes through ``enrich.plan_bytes`` and
``binary.assemble`` per entity, as before. The bytes are equal to that per-entity path's
(``tests/unit/test_entity_kernel.py::test_compiled_records_equal_the_per_entity_path_byte_for_byte``
on random deliveries with retries and redeliveries). Measured (``benchmarks/RESULTS.md``): per
batch of 2,048 events with Redis state the enrich step 109 → 62 ms (*Entity features: speed and
state size*, two runs); in the worker, with this session's other enrich changes, 1.33-1.36 →
0.91-0.97 s per 100k events (*Before/after (same run): the entity worker's enrich ...*).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..compiled import jit

VERSION = 3  # binary.VERSION
PAIR = 12  # bytes per (i32 partition, i64 offset)


@dataclass(slots=True)
class Parsed:
    """Sections of E records joined in ``buf`` (uint8): ``ok`` bool[E] (a well-formed version-3
    record), and per record the count of applied pairs, where they start, and where its current
    core starts and ends (byte positions in ``buf``; absent records: 0 pairs, an empty core
    appended to ``buf``)."""

    data: bytes
    buf: np.ndarray
    ok: np.ndarray
    pairs: np.ndarray
    pairs_at: np.ndarray
    core_start: np.ndarray
    core_end: np.ndarray


@jit
def _core_end(buf: np.ndarray, at: int, end: int, fields: int, windows: int) -> int:  # pragma: no cover
    """Where the core at ``at`` ends (``u8[F] | f64[1+3W+Σm] | i64[Σm]``); -1 past ``end``."""
    if at + fields > end:
        return -1
    kept = 0
    for i in range(fields):
        kept += int(buf[at + i])
    at += fields + 8 * (1 + 3 * windows + kept) + 8 * kept
    return at if at <= end else -1


@jit
def _parse(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, fields: int, windows: int,
           out: np.ndarray) -> None:  # pragma: no cover (compiled)
    """out int64[E, 5]: ok, P, pairs_at, core_start, core_end per record (ok 0: not version 3 or
    malformed; the per-entity path then decides, and raises where it must)."""
    for e in range(starts.size):
        s, end = starts[e], ends[e]
        out[e, 0] = 0
        if end - s < 4 or buf[s] != VERSION:
            continue
        flags = buf[s + 1]
        count = np.int64(buf[s + 2]) | (np.int64(buf[s + 3]) << 8)
        at = s + 4 + PAIR * count
        core_end = _core_end(buf, at, end, fields, windows)
        if core_end < 0:
            continue
        if flags & 1:
            if core_end + 2 > end:
                continue
            q = np.int64(buf[core_end]) | (np.int64(buf[core_end + 1]) << 8)
            if _core_end(buf, core_end + 2 + PAIR * q, end, fields, windows) != end:
                continue
        elif core_end != end:
            continue
        out[e, 0] = 1
        out[e, 1] = count
        out[e, 2] = s + 4
        out[e, 3] = at
        out[e, 4] = core_end


def parse(raws: Sequence[bytes | None], empty: bytes, fields: int, windows: int) -> Parsed:
    """The sections of ``raws`` (a key's records, None: absent). ``empty``: the key's empty core."""
    lengths = np.fromiter((0 if r is None else len(r) for r in raws), np.int64, len(raws))
    starts = np.zeros(len(raws), dtype=np.int64)
    if len(raws) > 1:
        np.cumsum(lengths[:-1], out=starts[1:])
    total = int(lengths.sum())
    data = b"".join([r for r in raws if r is not None]) + empty
    buf = np.frombuffer(data, dtype=np.uint8)
    out = np.zeros((len(raws), 5), dtype=np.int64)
    _parse(buf, starts, starts + lengths, fields, windows, out)
    absent = np.fromiter((r is None for r in raws), np.bool_, len(raws))
    out[absent] = (1, 0, 0, total, total + len(empty))
    return Parsed(data, buf, out[:, 0].astype(np.bool_), out[:, 1], out[:, 2], out[:, 3], out[:, 4])


def _pairs_of(buf: np.ndarray, at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (i32 partition, i64 offset) pairs starting at positions ``at`` of ``buf``."""
    raw = np.ascontiguousarray(buf[at[:, None] + np.arange(PAIR)])
    return raw[:, :4].copy().view("<i4").ravel().astype(np.int64), raw[:, 4:].copy().view("<i8").ravel()


@dataclass(slots=True)
class Spans:
    """Per (entity, partition) of a key's batch, ordered by entity then first appearance:
    entity (int64, index into the key's entities), partition, the offset of its first event, its
    smallest and largest offset."""

    entity: np.ndarray
    partition: np.ndarray
    first: np.ndarray
    low: np.ndarray
    high: np.ndarray


@dataclass(slots=True)
class Plan:
    """``normal`` bool[E]: the entities the compiled path writes; for those, the applied pairs
    after the batch (entity-grouped, old pairs in record order first) as flat arrays."""

    normal: np.ndarray
    pair_entity: np.ndarray
    pair_partition: np.ndarray
    pair_offset: np.ndarray


def normal(parsed: Parsed, spans: Spans) -> Plan:
    """The normal case per entity: a well-formed record and no span whose smallest offset is at or
    below the record's applied offset for that partition; and the applied pairs after the batch."""
    e_count = parsed.ok.size
    counts = np.where(parsed.ok, parsed.pairs, 0)
    pair_entity = np.repeat(np.arange(e_count, dtype=np.int64), counts)
    within = np.arange(pair_entity.size) - np.repeat(np.cumsum(counts) - counts, counts)
    partition, offset = _pairs_of(parsed.buf, np.repeat(parsed.pairs_at, counts) + PAIR * within)
    key_pairs = (pair_entity << 32) | partition
    key_spans = (spans.entity << 32) | spans.partition
    order = np.argsort(key_pairs, kind="stable")
    ordered = key_pairs[order]
    at = np.minimum(np.searchsorted(ordered, key_spans), max(ordered.size - 1, 0))
    matched = (ordered[at] == key_spans) if ordered.size else np.zeros(key_spans.size, dtype=np.bool_)
    applied = np.where(matched, offset[order[at]] if ordered.size else -1, -1)
    done = np.zeros(e_count, dtype=np.bool_)
    done[spans.entity[spans.low <= applied]] = True
    ok = parsed.ok & ~done
    # the pairs after the batch: each old pair with its span's largest offset (if any), then the
    # spans of partitions new to the record, in order of first appearance
    new_offset = offset.copy()
    if key_spans.size and key_pairs.size:
        span_order = np.argsort(key_spans, kind="stable")
        ks = key_spans[span_order]
        hit = np.minimum(np.searchsorted(ks, key_pairs), ks.size - 1)
        has = ks[hit] == key_pairs
        new_offset[has] = spans.high[span_order[hit[has]]]
    fresh = ~matched
    entity = np.concatenate((pair_entity, spans.entity[fresh]))
    part = np.concatenate((partition, spans.partition[fresh]))
    off = np.concatenate((new_offset, spans.high[fresh]))
    keep = ok[entity]
    entity, part, off = entity[keep], part[keep], off[keep]
    by = np.argsort(entity, kind="stable")
    return Plan(ok, entity[by], part[by], off[by])


@jit
def _fill(out: np.ndarray, starts: np.ndarray, rows: np.ndarray, pair_start: np.ndarray, pair_part: np.ndarray,
          pair_off: np.ndarray, cores: np.ndarray, core_lo: np.ndarray, core_hi: np.ndarray, span_start: np.ndarray,
          span_part: np.ndarray, span_first: np.ndarray, old: np.ndarray, old_start: np.ndarray,
          old_end: np.ndarray) -> None:  # pragma: no cover (compiled)
    for j in range(rows.size):
        e = rows[j]
        w = starts[j]
        out[w] = VERSION
        out[w + 1] = 1
        count = pair_start[j + 1] - pair_start[j]
        out[w + 2] = count & 0xFF
        out[w + 3] = (count >> 8) & 0xFF
        w += 4
        for k in range(pair_start[j], pair_start[j + 1]):
            w = _put_pair(out, w, pair_part[k], pair_off[k])
        for k in range(core_lo[j], core_hi[j]):
            out[w] = cores[k]
            w += 1
        q = span_start[e + 1] - span_start[e]
        out[w] = q & 0xFF
        out[w + 1] = (q >> 8) & 0xFF
        w += 2
        for k in range(span_start[e], span_start[e + 1]):
            w = _put_pair(out, w, span_part[k], span_first[k])
        for k in range(old_start[j], old_end[j]):
            out[w] = old[k]
            w += 1


@jit
def _put_pair(out: np.ndarray, w: int, partition: int, offset: int) -> int:  # pragma: no cover (compiled)
    for b in range(4):
        out[w + b] = (partition >> (8 * b)) & 0xFF
    for b in range(8):
        out[w + 4 + b] = (offset >> (8 * b)) & 0xFF
    return w + PAIR


def assemble(parsed: Parsed, plan: Plan, spans: Spans, cores: bytes, bounds: np.ndarray) -> list[bytes]:
    """The new records of the normal entities (in entity order). ``cores``: every entity's core
    after the batch, one after another (``Block.core_buffer``), entity e's at
    ``cores[bounds[e]:bounds[e + 1]]``; only the normal entities' are read."""
    rows = np.flatnonzero(plan.normal)
    if not rows.size:
        return []
    pair_count = np.bincount(plan.pair_entity, minlength=plan.normal.size)[rows]
    pair_start = np.concatenate(([0], np.cumsum(pair_count)))
    core_lo, core_hi = bounds[rows], bounds[rows + 1]
    core_len = core_hi - core_lo
    span_count = np.bincount(spans.entity, minlength=plan.normal.size)
    span_start = np.concatenate(([0], np.cumsum(span_count)))
    old_len = parsed.core_end[rows] - parsed.core_start[rows]
    sizes = 4 + PAIR * pair_count + core_len + 2 + PAIR * span_count[rows] + old_len
    starts = np.concatenate(([0], np.cumsum(sizes)))
    out = np.empty(int(starts[-1]), dtype=np.uint8)
    _fill(out, starts[:-1], rows, pair_start, plan.pair_partition, plan.pair_offset,
          np.frombuffer(cores, dtype=np.uint8), core_lo, core_hi, span_start, spans.partition, spans.first,
          parsed.buf, parsed.core_start[rows], parsed.core_end[rows])
    data = out.tobytes()
    cut = starts.tolist()
    return [data[cut[i]:cut[i + 1]] for i in range(rows.size)]


def warm() -> None:
    """Compile (or load from numba's cache) ``_parse`` and ``_fill`` for the enricher's dtypes."""
    if _WARM:
        return
    z = np.zeros(1, dtype=np.int64)
    data = np.frombuffer(bytes(8), dtype=np.uint8)  # read-only, as the enricher's (one specialisation each)
    _parse(data, z, z, 1, 1, np.zeros((1, 5), dtype=np.int64))
    _fill(np.zeros(64, dtype=np.uint8), z, z, np.zeros(2, dtype=np.int64), z, z, data, z, z,
          np.zeros(2, dtype=np.int64), z, z, data, z, z)
    _WARM.append(True)


_WARM: list[bool] = []
