"""Entity records as compact bytes (the Redis value), format version 2; version 1 (JSON) is read too.

Layout, little-endian; the fields of a core are fixed by the spec (windows W, the key's distinct
fields F in ``spec.distinct_for(key)`` order), so nothing names them::

    record := u8 version=2 | u8 flags (bit 0: undo snapshot present)
              | u16 P | P × (i32 partition, i64 last applied offset)
              | core
              | [undo: u16 Q | Q × (i32 partition, i64 first offset of the last write) | core]
    core   := f64 t (NaN: no event yet) | f64[W × 3] decayed (n, Σamount, Σamount²) per window
              | F × (u8 m | f64[m] last-seen ms | m × label)    (m ≤ max_distinct, insertion order)
    label  := u8 length L < 255 | L bytes UTF-8       or   u8 255 | u32 length | bytes

Floats are stored as IEEE doubles, so a record decodes to exactly the floats it was encoded from
(the worker's state equals the offline state bit for bit). A record that starts with ``{`` is a
version-1 JSON record, written before this format: it is read (migrated on read) and rewritten as
version 2 by the next write of that entity; nothing else about it changes. Any other first byte
raises ``ValueError``.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import orjson

from .compute import Core
from .spec import EntitySpec

VERSION = 2
_HEAD = struct.Struct("<BBH")
_COUNT = struct.Struct("<H")
_PAIR = struct.Struct("<iq")
_LONG = struct.Struct("<I")
Record = dict[str, Any]


def encode(spec: EntitySpec, key: str, record: Record) -> bytes:
    """One record (``{"c": core, "a": {partition: offset}, "u": undo | None}``) as version-2 bytes."""
    undo = record.get("u")
    parts = [_HEAD.pack(VERSION, 1 if undo else 0, len(record["a"]))]
    parts += [_PAIR.pack(int(p), o) for p, o in record["a"].items()]
    _core(parts, spec.distinct_for(key), record["c"])
    if undo:
        parts.append(_COUNT.pack(len(undo["f"])))
        parts += [_PAIR.pack(int(p), o) for p, o in undo["f"].items()]
        _core(parts, spec.distinct_for(key), undo["s"])
    return b"".join(parts)


def decode(spec: EntitySpec, key: str, raw: bytes) -> Record:
    """Bytes (version 2, or version-1 JSON) → the record; ``ValueError`` for anything else."""
    if raw[:1] == b"{":
        record: Record = orjson.loads(raw)
        return record
    if not raw or raw[0] != VERSION:
        raise ValueError(f"entity record: unknown format version {raw[:1]!r}")
    _, flags, count = _HEAD.unpack_from(raw, 0)
    at = _HEAD.size
    applied, at = _pairs(raw, at, count)
    fields = spec.distinct_for(key)
    core, at = _read_core(raw, at, len(spec.windows), fields)
    undo = None
    if flags & 1:
        (count,) = _COUNT.unpack_from(raw, at)
        firsts, at = _pairs(raw, at + _COUNT.size, count)
        snapshot, at = _read_core(raw, at, len(spec.windows), fields)
        undo = {"s": snapshot, "f": firsts}
    if at != len(raw):
        raise ValueError(f"entity record: {len(raw) - at} trailing bytes")
    return {"c": core, "a": applied, "u": undo}


def _core(parts: list[bytes], fields: tuple[str, ...], core: Core) -> None:
    t = core["t"]
    flat = [x for window in core["w"] for x in window]
    parts.append(struct.pack(f"<{1 + len(flat)}d", math.nan if t is None else t, *flat))
    for field in fields:
        seen: dict[str, float] = core["d"][field]
        parts.append(struct.pack(f"<B{len(seen)}d", len(seen), *seen.values()))
        for label in seen:
            data = label.encode()
            parts.append(bytes((len(data),)) + data if len(data) < 255 else b"\xff" + _LONG.pack(len(data)) + data)


def _pairs(raw: bytes, at: int, count: int) -> tuple[dict[str, int], int]:
    out = {}
    for _ in range(count):
        p, o = _PAIR.unpack_from(raw, at)
        out[str(p)] = o
        at += _PAIR.size
    return out, at


def _read_core(raw: bytes, at: int, windows: int, fields: tuple[str, ...]) -> tuple[Core, int]:
    values = struct.unpack_from(f"<{1 + 3 * windows}d", raw, at)
    at += 8 * len(values)
    t = values[0]
    w = [list(values[1 + 3 * i:4 + 3 * i]) for i in range(windows)]
    d: dict[str, dict[str, float]] = {}
    for field in fields:
        m = raw[at]
        times = struct.unpack_from(f"<{m}d", raw, at + 1)
        at += 1 + 8 * m
        labels = []
        for _ in range(m):
            size = raw[at]
            at += 1
            if size == 255:
                (size,) = _LONG.unpack_from(raw, at)
                at += _LONG.size
            labels.append(raw[at:at + size].decode())
            at += size
        d[field] = dict(zip(labels, times, strict=True))
    return {"t": None if math.isnan(t) else t, "w": w, "d": d}, at
