"""Entity records as compact bytes (the Redis value), format version 3; versions 2 and 1 (JSON) are read too.

Layout, little-endian; the fields of a core are fixed by the spec (windows W, the key's distinct
fields F in ``spec.distinct_for(key)`` order), so nothing names them::

    record := u8 version=3 | u8 flags (bit 0: undo snapshot present)
              | u16 P | P × (i32 partition, i64 last applied offset)
              | core
              | [undo: u16 Q | Q × (i32 partition, i64 first offset of the last write) | core]
    core   := u8[F] m_f (values kept per field, ≤ max_distinct)
              | f64[1 + 3W + Σ m_f]: t (NaN: no event yet), decayed (n, Σamount, Σamount²) per
                window, then each field's last-seen ms per kept value (insertion order)
              | i64[Σ m_f]: each field's kept value codes (``compute.label_code``), same order

Floats are stored as IEEE doubles, so a record decodes to exactly the floats it was encoded from
(the worker's state equals the offline state bit for bit). Older records are read and migrated:
version 2 (the same layout with the kept values as labels, ``u32 L | L bytes`` of a JSON array of
one string array per field, in place of the codes) and version 1 (JSON, starting with ``{``) have
their labels replaced by their codes; the next write of the entity stores version 3. Any other
first byte raises ``ValueError``. A version-2 record re-encoded as version 3 is equal to what a
worker of this version would have written from the same events, except where two values last seen
at the same millisecond competed for the last kept slot (the older release broke that tie by label).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import orjson

from ..entity_spec import EntitySpec
from .compute import Core, label_code

VERSION = 3
_HEAD = struct.Struct("<BBH")
_COUNT = struct.Struct("<H")
_PAIR = struct.Struct("<iq")
_LONG = struct.Struct("<I")
Record = dict[str, Any]


def encode(spec: EntitySpec, key: str, record: Record) -> bytes:
    """One record (``{"c": core, "a": {partition: offset}, "u": undo | None}``) as version-3 bytes."""
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
    """Bytes (version 3, 2, or version-1 JSON) → the record, kept values as codes; ``ValueError``
    for anything else."""
    if raw[:1] == b"{":
        record: Record = orjson.loads(raw)
        _coded(record["c"])
        if record.get("u"):
            _coded(record["u"]["s"])
        return record
    if not raw or raw[0] not in (VERSION, 2):
        raise ValueError(f"entity record: unknown format version {raw[:1]!r}")
    version = raw[0]
    _, flags, count = _HEAD.unpack_from(raw, 0)
    at = _HEAD.size
    applied, at = _pairs(raw, at, count)
    fields = spec.distinct_for(key)
    core, at = _read_core(raw, at, len(spec.windows), fields, version)
    undo = None
    if flags & 1:
        (count,) = _COUNT.unpack_from(raw, at)
        firsts, at = _pairs(raw, at + _COUNT.size, count)
        snapshot, at = _read_core(raw, at, len(spec.windows), fields, version)
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
    codes = [code for seen in kept for code in seen]
    parts += [bytes(len(seen) for seen in kept), struct.pack(f"<{len(numbers)}d", *numbers),
              struct.pack(f"<{len(codes)}q", *codes)]


def _coded(core: Core) -> None:
    """A version-1 core's kept labels replaced by their codes, in place (order kept)."""
    core["d"] = {f: {label_code(label): ms for label, ms in seen.items()} for f, seen in core["d"].items()}


def _pairs(raw: bytes, at: int, count: int) -> tuple[dict[str, int], int]:
    """``count`` × (i32 partition, i64 offset) from ``at`` → ({str(partition): offset}, end)."""
    values = struct.unpack_from("<" + "iq" * count, raw, at)
    return {str(values[i]): values[i + 1] for i in range(0, 2 * count, 2)}, at + _PAIR.size * count


def _read_core(raw: bytes, at: int, windows: int, fields: tuple[str, ...],
               version: int = VERSION) -> tuple[Core, int]:
    counts = raw[at:at + len(fields)]
    at += len(fields)
    size = 1 + 3 * windows + sum(counts)
    numbers = struct.unpack_from(f"<{size}d", raw, at)
    at += 8 * size
    codes: list[list[int]] = []
    if version == 2:  # the kept labels as JSON, coded here
        (length,) = _LONG.unpack_from(raw, at)
        at += _LONG.size
        codes = [[label_code(label) for label in names] for names in orjson.loads(raw[at:at + length])]
        at += length
    else:
        flat = struct.unpack_from(f"<{sum(counts)}q", raw, at)
        at += 8 * len(flat)
        start = 0
        for m in counts:
            codes.append(list(flat[start:start + m]))
            start += m
    t = numbers[0]
    w = [list(numbers[1 + 3 * i:4 + 3 * i]) for i in range(windows)]
    d: dict[str, dict[int, float]] = {}
    start = 1 + 3 * windows
    for field, m, names in zip(fields, counts, codes, strict=True):
        d[field] = dict(zip(names, numbers[start:start + m], strict=True))
        start += m
    return {"t": None if math.isnan(t) else t, "w": w, "d": d}, at


# ---- the record as bytes, without decoding its cores (the enricher's path) ------------------

@dataclass(slots=True)
class Parsed:
    """A version-3 record split at its sections, cores left as bytes: ``applied`` offsets,
    ``core`` (the current core's bytes), and the undo section (``u16 Q | pairs | core``) verbatim
    with its first offsets and core bytes; both None without one."""

    applied: dict[str, int]
    core: bytes
    undo: bytes | None
    undo_firsts: dict[str, int] | None
    undo_core: bytes | None


def parse(spec: EntitySpec, key: str, raw: bytes, fields: int | None = None) -> Parsed:
    """Bytes (version 3, or an older version, which is decoded and re-encoded first) → ``Parsed``;
    only the headers and offsets are read. ``fields``: ``len(spec.distinct_for(key))`` when the
    caller has it. ``ValueError`` for anything else."""
    if raw[:1] == b"{" or raw[:1] == b"\x02":
        raw = encode(spec, key, decode(spec, key, raw))
    if not raw or raw[0] != VERSION:
        raise ValueError(f"entity record: unknown format version {raw[:1]!r}")
    _, flags, count = _HEAD.unpack_from(raw, 0)
    applied, at = _pairs(raw, _HEAD.size, count)
    windows = len(spec.windows)
    if fields is None:
        fields = len(spec.distinct_for(key))
    end = core_end(raw, at, windows, fields)
    core = raw[at:end]
    if not flags & 1:
        if end != len(raw):
            raise ValueError(f"entity record: {len(raw) - end} trailing bytes")
        return Parsed(applied, core, None, None, None)
    (q,) = _COUNT.unpack_from(raw, end)
    firsts, at = _pairs(raw, end + _COUNT.size, q)
    if core_end(raw, at, windows, fields) != len(raw):
        raise ValueError("entity record: malformed undo section")
    return Parsed(applied, core, raw[end:], firsts, raw[at:])


def core_end(raw: bytes, at: int, windows: int, fields: int) -> int:
    """Where the core starting at ``at`` ends (``u8[F] | f64[1 + 3W + Σm] | i64[Σm]``)."""
    kept = sum(raw[at:at + fields])
    return at + fields + 8 * (1 + 3 * windows + kept) + 8 * kept


def split_undo(raw: bytes, windows: int, fields: int) -> tuple[bytes, bytes | None]:
    """A version-3 record → (its bytes up to the end of the current core, its undo section or
    None), by slicing (no decoding): what write-behind splices (``behind.py``)."""
    count = raw[2] | raw[3] << 8
    end = core_end(raw, _HEAD.size + _PAIR.size * count, windows, fields)
    return raw[:end], raw[end:] if raw[1] & 1 else None


def with_undo(raw: bytes, undo_from: bytes, windows: int, fields: int) -> bytes:
    """Version-3 record ``raw`` with the undo section of record ``undo_from`` (same spec and key)."""
    head, _ = split_undo(raw, windows, fields)
    _, undo = split_undo(undo_from, windows, fields)
    return b"".join([head[:1], b"\x01" if undo else b"\x00", head[2:], undo or b""])


def empty_core(spec: EntitySpec, key: str) -> bytes:
    """The bytes of a core with no history (what a new entity starts from)."""
    from .compute import empty_core as empty

    parts: list[bytes] = []
    _core(parts, spec.distinct_for(key), empty(spec, key))
    return b"".join(parts)


def undo_section(firsts: dict[str, int], core: bytes) -> bytes:
    """``u16 Q | Q × (i32 partition, i64 first offset) | core``: the undo snapshot of a write."""
    return b"".join([_COUNT.pack(len(firsts)), *(_PAIR.pack(int(p), o) for p, o in firsts.items()), core])


def assemble(applied: dict[str, int], core: bytes, undo: bytes | None) -> bytes:
    """A version-3 record from its parts (``undo``: an ``undo_section`` or None)."""
    head = _HEAD.pack(VERSION, 1 if undo else 0, len(applied))
    return b"".join([head, *(_PAIR.pack(int(p), o) for p, o in applied.items()), core, undo or b""])
