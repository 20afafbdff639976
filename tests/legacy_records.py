"""Entity records as releases before format version 3 wrote them (the kept values as labels), for
the migration tests: version 1 (JSON) and version 2 (binary, the labels as JSON after each core)."""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable
from typing import Any

import orjson

from stream_detector.entity.compute import label_code
from stream_detector.entity_spec import EntitySpec


def labelled(record: dict[str, Any], labels: Iterable[str]) -> dict[str, Any]:
    """``record`` (kept values as codes) with each code replaced by the label it codes, from ``labels``."""
    names = {label_code(label): label for label in labels}

    def core(c: dict[str, Any]) -> dict[str, Any]:
        return {**c, "d": {f: {names[code]: ms for code, ms in seen.items()} for f, seen in c["d"].items()}}

    return {**record, "c": core(record["c"]), "u": record["u"] and {**record["u"], "s": core(record["u"]["s"])}}


def version_1(record: dict[str, Any]) -> bytes:
    """A labelled record as the JSON release stored it."""
    return orjson.dumps(record)


def version_2(spec: EntitySpec, key: str, record: dict[str, Any]) -> bytes:
    """A labelled record in the version-2 layout (``u32 L | L bytes`` of JSON labels after each core's doubles)."""
    def core(c: dict[str, Any]) -> bytes:
        kept = [c["d"][f] for f in spec.distinct_for(key)]
        numbers = [math.nan if c["t"] is None else c["t"], *(x for w in c["w"] for x in w),
                   *(ms for seen in kept for ms in seen.values())]
        names = orjson.dumps([list(seen) for seen in kept])
        return (bytes(len(seen) for seen in kept) + struct.pack(f"<{len(numbers)}d", *numbers)
                + struct.pack("<I", len(names)) + names)

    def pairs(d: dict[str, int]) -> bytes:
        return b"".join(struct.pack("<iq", int(p), o) for p, o in d.items())

    undo = record["u"]
    out = struct.pack("<BBH", 2, 1 if undo else 0, len(record["a"])) + pairs(record["a"]) + core(record["c"])
    if undo:
        out += struct.pack("<H", len(undo["f"])) + pairs(undo["f"]) + core(undo["s"])
    return out
