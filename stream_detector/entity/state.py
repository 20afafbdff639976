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

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import orjson
import redis
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException

from ..entity_spec import EntitySpec
from ..errors import EntityStateUnavailable
from .binary import decode, encode

Record = dict[str, Any]
REDIS_ERRORS = (redis.RedisError, RedisClusterException)  # the cluster client's own errors are not RedisErrors
EntityKey = tuple[str, str]  # (key field, entity value)


class StateStore(Protocol):
    """Batch-granular state access: one read and one write per batch. The enricher uses the
    record bytes (``load_raw``/``save_raw``, ``binary.py``'s version-2 layout); ``load``/``save``
    give the same records decoded (the per-event reference, tests and tools)."""

    round_trips: int

    def load_raw(self, spec: EntitySpec, keys: Sequence[EntityKey]) -> list[bytes | None]: ...

    def save_raw(self, spec: EntitySpec, records: dict[EntityKey, bytes]) -> None: ...

    def load(self, spec: EntitySpec, keys: Sequence[EntityKey]) -> dict[EntityKey, Record | None]: ...

    def save(self, spec: EntitySpec, records: dict[EntityKey, Record]) -> None: ...


class InMemoryState:
    """Record bytes in a dict, exactly as Redis holds them (training, offline scoring, tests).
    ``records`` decodes them all (for tests and tools)."""

    def __init__(self) -> None:
        self.raw: dict[tuple[str, EntityKey], bytes] = {}
        self._specs: dict[str, EntitySpec] = {}
        self.round_trips = 0

    @property
    def records(self) -> dict[tuple[str, EntityKey], Record]:
        return {(ns, k): decode(self._specs[ns], k[0], v) for (ns, k), v in self.raw.items()}

    def load_raw(self, spec: EntitySpec, keys: Sequence[EntityKey]) -> list[bytes | None]:
        ns = spec.fingerprint[:12]
        return [self.raw.get((ns, k)) for k in keys]

    def save_raw(self, spec: EntitySpec, records: dict[EntityKey, bytes]) -> None:
        ns = spec.fingerprint[:12]
        self._specs[ns] = spec
        for k, value in records.items():
            self.raw[(ns, k)] = value

    def load(self, spec: EntitySpec, keys: Sequence[EntityKey]) -> dict[EntityKey, Record | None]:
        return {k: None if v is None else decode(spec, k[0], v)
                for k, v in zip(keys, self.load_raw(spec, keys), strict=True)}

    def save(self, spec: EntitySpec, records: dict[EntityKey, Record]) -> None:
        self.save_raw(spec, {k: encode(spec, k[0], r) for k, r in records.items()})


class RedisState:
    """Records in Redis; ``load`` is one MGET, ``save`` one pipeline. Redis errors become
    ``EntityStateUnavailable`` (retriable: the worker holds the batch and retries it, and the
    idempotency record makes the retry apply each event once)."""

    def __init__(self, client: redis.Redis | RedisCluster, prefix: str) -> None:
        self.r = client
        self.prefix = prefix
        self.round_trips = 0

    def key(self, spec: EntitySpec, entity: EntityKey) -> str:
        return f"{self.prefix}:entity:{spec.fingerprint[:12]}:{entity[0]}:{entity[1]}"

    def client(self) -> redis.Redis | RedisCluster:
        return self.r

    def _mget(self, names: list[str]) -> list[Any]:
        return list(self.r.mget(names))

    def load_raw(self, spec: EntitySpec, keys: Sequence[EntityKey]) -> list[bytes | None]:
        if not keys:
            return []
        ns = f"{self.prefix}:entity:{spec.fingerprint[:12]}"
        try:
            raw = self._mget([f"{ns}:{k[0]}:{k[1]}" for k in keys])
        except REDIS_ERRORS as exc:
            raise EntityStateUnavailable(f"entity state read failed: {exc}") from exc
        finally:
            self.round_trips += 1
        return [v if v is None or isinstance(v, bytes) else v.encode() for v in raw]

    def load(self, spec: EntitySpec, keys: Sequence[EntityKey]) -> dict[EntityKey, Record | None]:
        return {k: None if v is None else decode(spec, k[0], v)
                for k, v in zip(keys, self.load_raw(spec, keys), strict=True)}

    def save(self, spec: EntitySpec, records: dict[EntityKey, Record]) -> None:
        self.save_raw(spec, {k: encode(spec, k[0], r) for k, r in records.items()})

    def save_raw(self, spec: EntitySpec, records: dict[EntityKey, bytes]) -> None:
        if not records:
            return
        ns, ttl = f"{self.prefix}:entity:{spec.fingerprint[:12]}", spec.horizon_ms
        try:
            pipe = self.client().pipeline(transaction=False)
            for k, value in records.items():
                pipe.set(f"{ns}:{k[0]}:{k[1]}", value, px=ttl)
            pipe.execute()
        except REDIS_ERRORS as exc:
            raise EntityStateUnavailable(f"entity state write failed: {exc}") from exc
        finally:
            self.round_trips += 1


class RedisClusterState(RedisState):
    """Records on a Redis Cluster (``SD_ENTITY_REDIS_CLUSTER``): the same keys and values as
    ``RedisState``, each key in the slot its name hashes to, so entities spread over every node.
    Still two store operations per batch, each **one round trip per node**: ``load`` sends one
    ``MGET`` per slot the batch touches and ``save`` one ``SET … PX`` per entity, both as one
    cluster pipeline, which redis-py groups by node (all nodes' commands written, then all
    replies read). A node that is down or a cluster that lost slots raises
    ``EntityStateUnavailable`` (retriable) like a single Redis outage; slot moves (MOVED/ASK) are
    followed by the client. Given a ``connect`` callable instead of a client, it connects on first
    use, so a cluster that is down when the worker starts is an outage of the first batches (held,
    retried), not a failed start."""

    def __init__(self, client: RedisCluster | Callable[[], RedisCluster], prefix: str) -> None:
        self.prefix = prefix
        self.round_trips = 0
        self._cluster = client if isinstance(client, RedisCluster) else None
        self._connect = None if isinstance(client, RedisCluster) else client

    def client(self) -> RedisCluster:
        if self._cluster is None:
            assert self._connect is not None
            try:
                self._cluster = self._connect()
            except REDIS_ERRORS as exc:
                raise EntityStateUnavailable(f"entity state cluster unreachable: {exc}") from exc
        return self._cluster

    def _mget(self, names: list[str]) -> list[Any]:
        return list(self.client().mget_nonatomic(names))


def record_bytes(record: Record, spec: EntitySpec | None = None, key: str | None = None) -> int:
    """Size of one record as the Redis value: version-2 binary with ``spec`` and ``key``, else the
    former version-1 JSON (for comparison). Redis adds ~60-90 bytes of key and overhead."""
    if spec is not None and key is not None:
        return len(encode(spec, key, record))
    return len(orjson.dumps(record))
