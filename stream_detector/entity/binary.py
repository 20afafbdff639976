"""Entity records as compact bytes (the Redis value), format version 2; version 1 (JSON) is read too.

Layout, little-endian; the fields of a core are fixed by the spec (windows W, the key's distinct
fields F in ``spec.distinct_for(key)`` order), so nothing names them::

    record := u8 version=2 | u8 flags (bit 0: undo snapshot present)
              | u16 P | P × (i32 partition, i64 last applied offset)
              | core
              | [undo: u16 Q | Q × (i32 partition, i64 first offset of the last write) | core]
    core   := u8[F] m_f (values kept per field, ≤ max_distinct)
              | f64[1 + 3W + Σ m_f]: t (NaN: no event yet), decayed (n, Σamount, Σamount²) per
                window, then each field's last-seen ms per kept value (insertion order)
              | u32 L | L bytes: the kept labels, a JSON array of one string array per field

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

from ..entity_spec import EntitySpec
from .compute import Core

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
    kept = [core["d"][f] for f in fields]
    numbers = [math.nan if t is None else t]
    for window in core["w"]:
        numbers += window
    for seen in kept:
        numbers += seen.values()
    labels = orjson.dumps([list(seen) for seen in kept])
    parts += [bytes(len(seen) for seen in kept), struct.pack(f"<{len(numbers)}d", *numbers),
              _LONG.pack(len(labels)), labels]


def _pairs(raw: bytes, at: int, count: int) -> tuple[dict[str, int], int]:
    out = {}
    for _ in range(count):
        p, o = _PAIR.unpack_from(raw, at)
        out[str(p)] = o
        at += _PAIR.size
    return out, at


def _read_core(raw: bytes, at: int, windows: int, fields: tuple[str, ...]) -> tuple[Core, int]:
    counts = raw[at:at + len(fields)]
    at += len(fields)
    size = 1 + 3 * windows + sum(counts)
    numbers = struct.unpack_from(f"<{size}d", raw, at)
    at += 8 * size
    (length,) = _LONG.unpack_from(raw, at)
    at += _LONG.size
    labels = orjson.loads(raw[at:at + length])
    at += length
    t = numbers[0]
    w = [list(numbers[1 + 3 * i:4 + 3 * i]) for i in range(windows)]
    d: dict[str, dict[str, float]] = {}
    start = 1 + 3 * windows
    for field, m, names in zip(fields, counts, labels, strict=True):
        d[field] = dict(zip(names, numbers[start:start + m], strict=True))
        start += m
    return {"t": None if math.isnan(t) else t, "w": w, "d": d}, at
