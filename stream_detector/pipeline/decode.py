"""Step 2, decode: raw record values → validated event dicts, or rejections with a reason.

Guarantees: never raises on data; every input index ends up either in ``events`` or in
``rejected`` (exactly once); the rules are those of ``schema.Event`` (a unit test checks it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from ..schema import SUPPORTED_SCHEMA_VERSIONS, RejectReason, parse_timestamp_ms

_NESTED = (dict, list)


@dataclass(frozen=True, slots=True)
class Rejected:
    """One record that cannot be scored: its index in the batch, the reason and a human message."""

    index: int
    reason: RejectReason
    message: str


@dataclass(slots=True)
class Decoded:
    """Valid events (in input order) with their batch indices, plus the rejections."""

    events: list[dict[str, Any]]
    indices: list[int]
    rejected: list[Rejected]


def decode_batch(values: Sequence[bytes | None], max_bytes: int, first_index: int = 0) -> Decoded:
    """Decode and validate a batch of Kafka record values; indices count from ``first_index``
    (the position of ``values[0]`` in its batch, when a chunk of one is decoded)."""
    events: list[dict[str, Any]] = []
    indices: list[int] = []
    rejected: list[Rejected] = []
    for i, raw in enumerate(values, first_index):
        if raw is None:
            rejected.append(Rejected(i, RejectReason.INVALID_JSON, "empty record value (tombstone)"))
            continue
        if len(raw) > max_bytes:
            rejected.append(Rejected(i, RejectReason.OVERSIZE, f"{len(raw)} bytes > limit {max_bytes}"))
            continue
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            rejected.append(_classify_parse_error(i, raw, exc))
            continue
        problem = validate_event(obj, finite_floats=True)
        if problem is None and _may_repeat_keys(raw, obj):
            problem = _duplicate_key(raw)
        if problem is None:
            events.append(obj)
            indices.append(i)
        else:
            rejected.append(Rejected(i, problem[0], problem[1]))
    return Decoded(events, indices, rejected)


def validate_event(obj: object, finite_floats: bool = False) -> tuple[RejectReason, str] | None:
    """Check one parsed JSON value against the event contract; ``None`` when valid.

    ``finite_floats=True`` says the object comes from orjson, which rejects NaN, Infinity and
    out-of-range numbers itself, so the per-value finiteness scan is skipped and nested values
    are found from the set of value types (one C-level pass) — same verdicts, about 3× faster.
    """
    if not isinstance(obj, dict):
        return RejectReason.NOT_AN_OBJECT, f"expected a JSON object, got {type(obj).__name__}"
    event_id = obj.get("event_id")
    if event_id is None or event_id == "":
        return RejectReason.MISSING_EVENT_ID, "event_id is required"
    if not isinstance(event_id, str):
        return RejectReason.WRONG_TYPE, f"event_id must be a string, got {type(event_id).__name__}"
    if len(event_id) > 512:
        return RejectReason.WRONG_TYPE, "event_id is longer than 512 characters"
    account = obj.get("account_id")
    if account is not None and (isinstance(account, bool) or not isinstance(account, (str, int))):
        return RejectReason.WRONG_TYPE, f"account_id must be a string or integer, got {type(account).__name__}"
    version = obj.get("schema_version")
    if version is not None and (
        isinstance(version, bool) or not isinstance(version, int) or version not in SUPPORTED_SCHEMA_VERSIONS
    ):
        return RejectReason.UNKNOWN_SCHEMA, f"unknown schema_version {version!r}"
    if not finite_floats or not set(map(type, obj.values())).isdisjoint(_NESTED):
        for name, value in obj.items():
            if isinstance(value, float):
                if not math.isfinite(value):
                    return RejectReason.NON_FINITE_NUMBER, f"field {name!r} is not finite"
            elif isinstance(value, _NESTED):
                return RejectReason.WRONG_TYPE, f"field {name!r}: nested values are not supported"
    ts = obj.get("timestamp")
    if ts is not None:
        try:
            parse_timestamp_ms(ts)
        except (ValueError, TypeError, OverflowError):
            return RejectReason.INVALID_TIMESTAMP, f"timestamp is neither RFC 3339 nor epoch ms ({type(ts).__name__})"
    return None


def _may_repeat_keys(raw: bytes, obj: dict[str, Any]) -> bool:
    """Cheap pre-check (two C-level scans): more key-like ``":`` than keys means a repeated key
    (JSON parsers keep the last one silently, so ``amount`` could be read two ways) — or merely a
    string value containing ``":``, which the exact check below tells apart."""
    keys = len(obj)
    if raw.count(b":") <= keys:  # one scan: every key needs a colon, so no room for a repeat
        return False
    return raw.count(b'":') + raw.count(b'" :') > keys


def _duplicate_key(raw: bytes) -> tuple[RejectReason, str] | None:
    seen: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        names = [k for k, _ in items]
        if len(set(names)) != len(names):
            seen.extend(sorted({k for k in names if names.count(k) > 1}))
        return dict(items)

    try:
        json.loads(raw, object_pairs_hook=pairs)
    except (ValueError, RecursionError):
        return None
    if seen:
        return RejectReason.DUPLICATE_KEY, f"repeated key(s): {', '.join(repr(k) for k in seen[:5])}"
    return None


def _classify_parse_error(index: int, raw: bytes, exc: Exception) -> Rejected:
    """Tell non-finite numbers (NaN, Infinity, 1e400) apart from other invalid JSON."""
    message = str(exc)
    if "infinity" in message.lower():
        return Rejected(index, RejectReason.NON_FINITE_NUMBER, message[:200])
    if b"NaN" in raw or b"Infinity" in raw:
        try:  # the stdlib accepts these non-standard literals; if it parses, that was the only problem
            json.loads(raw)
            return Rejected(index, RejectReason.NON_FINITE_NUMBER, "NaN or Infinity is not a valid number")
        except (ValueError, RecursionError):
            pass
    return Rejected(index, RejectReason.INVALID_JSON, message[:200])
