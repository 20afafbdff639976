"""Where entity state lives: in memory (training, offline scoring, tests) or in Redis (workers).

One record per entity, the same shape in both stores (Redis holds it as bytes, ``binary.py``)::

    {"c": core state (see compute.py),
     "a": {partition: last applied offset},            # idempotency: events at or below are applied
     "u": {"s": core before the last write, "f": {partition: first offset of that write}} | null}

Redis layout: ``{prefix}:entity:{spec fingerprint[:12]}:{key}:{value}`` → the record as version-2
binary (``binary.py``: fixed layout per spec, a format version byte first; version-1 JSON records
written by earlier releases are read and rewritten as version 2 on the entity's next write), with a
TTL of the spec's horizon (``horizon_factor`` × longest window) refreshed on every write.
A model whose entity spec changes therefore starts from empty state instead of misreading old
records, and a retrained model with the same spec keeps the history.

Per batch the worker makes exactly **two round trips**: one ``MGET`` of every entity the batch
touches and one non-transactional pipeline of ``SET … PX`` — ``round_trips`` counts them.
Records are bounded: ``3·W + 1`` floats, at most ``max_distinct`` values per distinct field, twice
(current and undo); docs/entity-features.md gives the measured bytes per entity.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import orjson
import redis

from ..entity_spec import EntitySpec
from ..errors import EntityStateUnavailable
from .binary import decode, encode

Record = dict[str, Any]
EntityKey = tuple[str, str]  # (key field, entity value)


class StateStore(Protocol):
    """Batch-granular state access: one read and one write per batch."""

    round_trips: int

    def load(self, spec: EntitySpec, keys: Sequence[EntityKey]) -> dict[EntityKey, Record | None]: ...

    def save(self, spec: EntitySpec, records: dict[EntityKey, Record]) -> None: ...


class InMemoryState:
    """A dict of records (no copies: the enricher owns them between load and save)."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, EntityKey], Record] = {}
        self.round_trips = 0

    def load(self, spec: EntitySpec, keys: Sequence[EntityKey]) -> dict[EntityKey, Record | None]:
        ns = spec.fingerprint[:12]
        return {k: self.records.get((ns, k)) for k in keys}

    def save(self, spec: EntitySpec, records: dict[EntityKey, Record]) -> None:
        ns = spec.fingerprint[:12]
        for k, record in records.items():
            self.records[(ns, k)] = record


class RedisState:
    """Records in Redis; ``load`` is one MGET, ``save`` one pipeline. Redis errors become
    ``EntityStateUnavailable`` (retriable: the worker holds the batch and retries it, and the
    idempotency record makes the retry apply each event once)."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.r = client
        self.prefix = prefix
        self.round_trips = 0

    def key(self, spec: EntitySpec, entity: EntityKey) -> str:
        return f"{self.prefix}:entity:{spec.fingerprint[:12]}:{entity[0]}:{entity[1]}"

    def load(self, spec: EntitySpec, keys: Sequence[EntityKey]) -> dict[EntityKey, Record | None]:
        if not keys:
            return {}
        ns = f"{self.prefix}:entity:{spec.fingerprint[:12]}"
        try:
            raw = self.r.mget([f"{ns}:{k[0]}:{k[1]}" for k in keys])
        except redis.RedisError as exc:
            raise EntityStateUnavailable(f"entity state read failed: {exc}") from exc
        finally:
            self.round_trips += 1
        return {k: (decode(spec, k[0], v if isinstance(v, bytes) else v.encode()) if v is not None else None)
                for k, v in zip(keys, raw, strict=True)}

    def save(self, spec: EntitySpec, records: dict[EntityKey, Record]) -> None:
        if not records:
            return
        pipe = self.r.pipeline(transaction=False)
        ns, ttl = f"{self.prefix}:entity:{spec.fingerprint[:12]}", spec.horizon_ms
        for k, record in records.items():
            pipe.set(f"{ns}:{k[0]}:{k[1]}", encode(spec, k[0], record), px=ttl)
        try:
            pipe.execute()
        except redis.RedisError as exc:
            raise EntityStateUnavailable(f"entity state write failed: {exc}") from exc
        finally:
            self.round_trips += 1


def record_bytes(record: Record, spec: EntitySpec | None = None, key: str | None = None) -> int:
    """Size of one record as the Redis value: version-2 binary with ``spec`` and ``key``, else the
    former version-1 JSON (for comparison). Redis adds ~60-90 bytes of key and overhead."""
    if spec is not None and key is not None:
        return len(encode(spec, key, record))
    return len(orjson.dumps(record))
