"""Where entity state lives: in memory (training, offline scoring, tests) or in Redis (workers).

One record per entity, the same shape in both stores (Redis holds it as bytes, ``binary.py``)::

    {"c": core state (see compute.py),
     "a": {partition: last applied offset},            # idempotency: events at or below are applied
     "u": {"s": core before the last write, "f": {partition: first offset of that write}} | null}

Redis layout: ``{prefix}:entity:{spec fingerprint[:12]}:{key}:{value}`` → an **envelope**: the byte
0xFE, a 16-byte write token (random, new on every write), then the record as version-3 binary
(``binary.py``: fixed layout per spec, a format version byte first; version-1 JSON and version-2
records written by earlier releases, with or without the envelope, are read and rewritten in the
current form on the entity's next write), with a TTL of the spec's horizon (``horizon_factor`` ×
longest window) refreshed on every write. A model whose entity spec changes therefore starts from
empty state instead of misreading old records, and a retrained model with the same spec keeps the
history.

Per batch the worker makes at most **two round trips**: one ``MGET`` of the entities the batch
touches and one compare-and-set write — ``round_trips`` counts them. With ``copies`` (``_Copies``,
``SD_ENTITY_COPIES``) the records this store wrote last are read from memory, so a batch whose
entities were all in recent batches makes one (the write, which still decides). The write is a Lua script
(``CAS_SCRIPT``) that sets each record only if it still has the write token the batch read (17 bytes
sent back per record, compared with ``GETRANGE``, instead of the whole record: measured by hand,
1,500 records of ~600 bytes, 16-18 → 9-12 ms per call including the client's packing), and returns
the entities another writer changed in between, so two workers sharing an entity (a terminal seen
from several partitions) never lose an update: the enricher re-reads those entities and recomputes
only their events (``enrich.py``), a third round trip that happens only on a conflict. A token is
never reused, so a record rewritten with equal bytes in between also counts as changed (safe: the
batch is recomputed from what it reads again).
Records are bounded: ``3·W + 1`` floats, at most ``max_distinct`` values per distinct field, twice
(current and undo); docs/entity-features.md gives the measured bytes per entity.
"""

from __future__ import annotations

import os
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any, Protocol, runtime_checkable

import numpy as np
import orjson
import redis
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException

from ..entity_spec import EntitySpec
from ..errors import EntityStateUnavailable
from ..redis_client import packed_call
from .binary import decode, encode

Record = dict[str, Any]
Expected = Mapping[Any, bytes | None]  # entity → the record bytes a batch read (None: absent)
REDIS_ERRORS = (redis.RedisError, RedisClusterException)  # the cluster client's own errors are not RedisErrors
EntityKey = tuple[str, str]  # (key field, entity value)
# a replay-log entry's writer (``FeatureLog.append``'s arguments): spec, key, partitions and offsets (int64[n] each),
# features float64[n, k] (``StateStore.log_sink``)
LogSink = Callable[[EntitySpec, str, np.ndarray, np.ndarray, np.ndarray], None]

# KEYS: record names; ARGV[1]: TTL in ms; then per key i: ARGV[2i] what the batch read, ARGV[2i+1] the new
# value (envelope and record). What the batch read is one of: '' (the record was absent; a stored value is
# never empty); the 17-byte envelope head (0xFE + write token: compared with the value's first 17 bytes);
# or a whole record (a value written before the envelope, or bytes the caller did not get from this store's
# read: compared with the stored record, envelope stripped). Sets the records that are unchanged, returns
# the 1-based indices of the others (changed, created or expired since the read). Lua compares equal
# strings by pointer (its strings are interned), so the comparisons cost nothing per byte.
CAS_SCRIPT = """
local ttl = ARGV[1]
local lost = {}
for i, name in ipairs(KEYS) do
  local want = ARGV[2 * i]
  local same
  if want == '' then
    same = redis.call('GETRANGE', name, 0, 0) == ''
  elseif #want == 17 and string.byte(want, 1) == 254 then
    same = redis.call('GETRANGE', name, 0, 16) == want
  else
    local now = redis.call('GET', name)
    if now and string.byte(now, 1) == 254 then
      now = string.sub(now, 18)
    end
    same = now == want
  end
  if same then
    redis.call('SET', name, ARGV[2 * i + 1], 'PX', ttl)
  else
    lost[#lost + 1] = i
  end
end
return lost
"""
ENVELOPE = 0xFE  # first byte of a stored value: a write token follows, then the record
TOKEN_BYTES = 16
HEAD_BYTES = 1 + TOKEN_BYTES
_MARK = bytes([ENVELOPE])


def wrap(records: Sequence[bytes]) -> list[bytes]:
    """Each record as the value stored in Redis: 0xFE, a new random 16-byte write token, the record."""
    tokens = os.urandom(TOKEN_BYTES * len(records))
    return [b"".join((_MARK, tokens[TOKEN_BYTES * i:TOKEN_BYTES * (i + 1)], r)) for i, r in enumerate(records)]


def split(value: bytes) -> tuple[bytes | None, bytes]:
    """A stored value → (its envelope head, 0xFE and the write token; the record). A value written
    before the envelope has no head (None) and is the record itself."""
    if value[:1] == _MARK:
        return value[:HEAD_BYTES], value[HEAD_BYTES:]
    return None, value


def unwrap(value: bytes) -> bytes:
    """The record inside a stored value (the value itself when it was written before the envelope)."""
    return split(value)[1]


@dataclass(slots=True)
class CasWrite:
    """A compare-and-set prepared by ``RedisState.prepare_save`` (or ``InMemoryState``'s): the
    entities, their Redis names, what each is compared against, the values to store (envelope and
    record), the records themselves, and the TTL in ms."""

    keys: list[EntityKey]
    names: list[str]
    wants: list[bytes]
    values: list[bytes]
    records: dict[EntityKey, bytes]
    ttl: int


@runtime_checkable
class SplitWrites(Protocol):
    """A store whose compare-and-set can be split in three (``RedisState.prepare_save``,
    ``send_save``, ``finish_save``): the middle one may run on another thread."""

    def prepare_save(self, spec: EntitySpec, records: dict[EntityKey, bytes], expected: Expected) -> CasWrite: ...

    def send_save(self, write: CasWrite) -> list[int]: ...

    def finish_save(self, write: CasWrite, lost: list[int] | None) -> list[EntityKey]: ...


class StateStore(Protocol):
    """Batch-granular state access: one read and one write per batch. The enricher uses the
    record bytes (``load_raw``/``save_raw``, ``binary.py``'s version-3 layout); ``load``/``save``
    give the same records decoded (the per-event reference, tests and tools)."""

    round_trips: int

    def load_raw(self, spec: EntitySpec, keys: Sequence[EntityKey]) -> list[bytes | None]: ...

    def reload_raw(self, spec: EntitySpec, keys: Sequence[EntityKey]) -> list[bytes | None]:
        """``load_raw`` within a batch: the records its compare-and-set lost to another writer, read
        again (``Enricher._redo``). A store that stages a batch's writes (``behind.WriteBehind``)
        keeps them; the others read as ``load_raw`` does."""
        ...

    def save_raw(self, spec: EntitySpec, records: dict[EntityKey, bytes],
                 expected: Expected | None = None) -> list[EntityKey]:
        """Write ``records``. With ``expected`` (the bytes the batch read, per entity), a
        compare-and-set: only records still holding those bytes are written, and the entities
        that changed in between are returned (not written). Without it, a plain write (``[]``)."""
        ...

    def log_sink(self) -> LogSink | None:
        """Where the enricher puts a batch's replay-log entries (``Enricher._log``, ``FeatureLog.append``'s
        arguments): a store that holds the batch's records in a window and writes them later
        (``behind.WriteBehind`` while its worker owns every partition) keeps the entries with them,
        to write them first; None: the log's own ``append``, before the batch's compare-and-set."""
        ...

    def load(self, spec: EntitySpec, keys: Sequence[EntityKey]) -> dict[EntityKey, Record | None]: ...

    def save(self, spec: EntitySpec, records: dict[EntityKey, Record]) -> None: ...


class InMemoryState:
    """Record bytes in a dict, exactly as Redis holds them (training, offline scoring, tests).
    ``records`` decodes them all (for tests and tools)."""

    def __init__(self) -> None:
        self.raw: dict[tuple[str, EntityKey], bytes] = {}
        self._specs: dict[str, EntitySpec] = {}
        self.round_trips = 0
        self._lock = threading.Lock()  # ``send_save`` may run on another thread (``behind.WriteBehind.start_flush``)

    @property
    def records(self) -> dict[tuple[str, EntityKey], Record]:
        return {(ns, k): decode(self._specs[ns], k[0], v) for (ns, k), v in self.raw.items()}

    def load_raw(self, spec: EntitySpec, keys: Sequence[EntityKey]) -> list[bytes | None]:
        ns = spec.fingerprint[:12]
        return [self.raw.get((ns, k)) for k in keys]

    def reload_raw(self, spec: EntitySpec, keys: Sequence[EntityKey]) -> list[bytes | None]:
        return self.load_raw(spec, keys)

    def log_sink(self) -> LogSink | None:
        """None: every write here is the batch's own (``StateStore.log_sink``)."""
        return None

    def save_raw(self, spec: EntitySpec, records: dict[EntityKey, bytes],
                 expected: Expected | None = None) -> list[EntityKey]:
        ns = spec.fingerprint[:12]
        with self._lock:
            self._specs[ns] = spec
            lost = [k for k in records if expected is not None and self.raw.get((ns, k)) != expected.get(k)]
            skip = set(lost)
            for k, value in records.items():
                if k not in skip:
                    self.raw[(ns, k)] = value
        return lost

    def prepare_save(self, spec: EntitySpec, records: dict[EntityKey, bytes], expected: Expected) -> CasWrite:
        """As ``RedisState.prepare_save`` (the names are the dict's, ``wants`` the bytes expected)."""
        keys = list(records)
        with self._lock:
            self._specs[spec.fingerprint[:12]] = spec
        return CasWrite(keys, [spec.fingerprint[:12]] * len(keys), [expected.get(k) or b"" for k in keys],
                        [records[k] for k in keys], records, spec.horizon_ms)

    def send_save(self, write: CasWrite) -> list[int]:
        """As ``RedisState.send_save``: the compare-and-set, atomic against every other write here."""
        with self._lock:
            raw = self.raw
            lost = [i for i, (ns, k, want) in enumerate(zip(write.names, write.keys, write.wants, strict=True), start=1)
                    if raw.get((ns, k), b"") != want]
            skip = set(lost)
            for i, (ns, k, value) in enumerate(zip(write.names, write.keys, write.values, strict=True), start=1):
                if i not in skip:
                    raw[(ns, k)] = value
            return lost

    def finish_save(self, write: CasWrite, lost: list[int] | None) -> list[EntityKey]:
        return [] if lost is None else [write.keys[i - 1] for i in lost]

    def load(self, spec: EntitySpec, keys: Sequence[EntityKey]) -> dict[EntityKey, Record | None]:
        return {k: None if v is None else decode(spec, k[0], v)
                for k, v in zip(keys, self.load_raw(spec, keys), strict=True)}

    def save(self, spec: EntitySpec, records: dict[EntityKey, Record]) -> None:
        self.save_raw(spec, {k: encode(spec, k[0], r) for k, r in records.items()})


class RedisState:
    """Records in Redis; ``load`` is one MGET, ``save`` one pipeline. Redis errors become
    ``EntityStateUnavailable`` (retriable: the worker holds the batch and retries it, and the
    idempotency record makes the retry apply each event once)."""

    def __init__(self, client: redis.Redis | RedisCluster, prefix: str, copies: int = 0) -> None:
        self.r = client
        self.prefix = prefix
        self.round_trips = 0
        self._cas = client.register_script(CAS_SCRIPT) if isinstance(client, redis.Redis) else None
        self._heads: dict[str, tuple[bytes, bytes]] = {}  # name → (envelope head, record) of the last read
        self.copies = _Copies(copies)
        self._kept: OrderedDict[str, tuple[bytes, bytes]] = OrderedDict()  # keep_heads: name → (head, record)
        self._kept_field: str | None = None
        self._kept_every = False  # keep_heads(every=True): the tokens of every key's records
        self._kept_size = 0

    def keep_heads(self, field: str | None, size: int, every: bool = False) -> None:
        """Remember the write token of the last ``size`` records of key ``field`` this store read or
        wrote, so that a later compare-and-set against those record bytes sends the 17-byte token,
        not the record (write-behind: ``behind.py`` writes a record many batches after reading it).
        ``None``: remember none (records passed through are written with the tokens of the batch's
        own read: an ordered-dict update per record per batch saved, ~4 % of an entity worker's
        thread in a py-spy profile of a drain). ``every``: the records of every key (a worker that owns
        all the input topic's partitions keeps its shared keys' records in the window too:
        ``behind.WriteBehind.own_all``)."""
        self._kept_field, self._kept_size = field, size
        self._kept_every = every and field is not None
        if field is None:
            self._kept.clear()

    def _keep(self, name: str, head: bytes, record: bytes) -> None:
        kept = self._kept
        kept[name] = (head, record)
        kept.move_to_end(name)
        if len(kept) > self._kept_size:
            kept.popitem(last=False)

    def key(self, spec: EntitySpec, entity: EntityKey) -> str:
        return self._names(spec, [entity])[0]

    def _names(self, spec: EntitySpec, keys: Sequence[EntityKey]) -> list[str]:
        """The Redis names of ``keys``' records (the module docstring's layout)."""
        ns = f"{self.prefix}:entity:{spec.fingerprint[:12]}"
        return [f"{ns}:{k[0]}:{k[1]}" for k in keys]

    def client(self) -> redis.Redis | RedisCluster:
        return self.r

    def _mget(self, names: list[str]) -> list[Any]:
        """One MGET, packed by hiredis (``redis_client.packed_call``)."""
        if isinstance(self.r, redis.Redis):
            return list(packed_call(self.r, "MGET", *names))
        return list(self.r.mget(names))

    def load_raw(self, spec: EntitySpec, keys: Sequence[EntityKey]) -> list[bytes | None]:
        """The records of ``keys`` (None: absent): those this store wrote last and still holds
        (``_Copies``) from memory, the others with one MGET."""
        if not keys:
            return []
        names = self._names(spec, keys)
        self._heads.clear()  # only the last read's tokens are kept (the write that follows it uses them)
        out: list[bytes | None] = [None] * len(names)
        wanted = self.copies.read(names, keys, self._heads, out)
        if not wanted:
            return out
        asked = names if len(wanted) == len(names) else [names[i] for i in wanted]
        try:
            raw = self._mget(asked)
        except REDIS_ERRORS as exc:
            raise EntityStateUnavailable(f"entity state read failed: {exc}") from exc
        finally:
            self.round_trips += 1
        field = self._kept_field
        for i, name, v in zip(wanted, asked, raw, strict=True):
            if v is None:
                continue
            head, record = split(v if isinstance(v, bytes) else v.encode())
            if head is not None:
                self._heads[name] = (head, record)
                if field is not None and (keys[i][0] == field or self._kept_every):
                    self._keep(name, head, record)
            out[i] = record
        return out

    def reload_raw(self, spec: EntitySpec, keys: Sequence[EntityKey]) -> list[bytes | None]:
        """As ``load_raw`` (nothing staged here: a lost record's new write token comes with it)."""
        return self.load_raw(spec, keys)

    def log_sink(self) -> LogSink | None:
        """None: every write here is the batch's own (``StateStore.log_sink``)."""
        return None

    def load(self, spec: EntitySpec, keys: Sequence[EntityKey]) -> dict[EntityKey, Record | None]:
        return {k: None if v is None else decode(spec, k[0], v)
                for k, v in zip(keys, self.load_raw(spec, keys), strict=True)}

    def save(self, spec: EntitySpec, records: dict[EntityKey, Record]) -> None:
        self.save_raw(spec, {k: encode(spec, k[0], r) for k, r in records.items()})

    def save_raw(self, spec: EntitySpec, records: dict[EntityKey, bytes],
                 expected: Expected | None = None) -> list[EntityKey]:
        if not records:
            return []
        if expected is not None:
            write = self.prepare_save(spec, records, expected)
            try:
                lost = self.send_save(write)
            except EntityStateUnavailable:
                self.finish_save(write, None)
                raise
            return self.finish_save(write, lost)
        ttl = spec.horizon_ms
        keys = list(records)
        names = self._names(spec, keys)
        values = wrap([records[k] for k in keys])
        try:
            self.copies.forget(names)
            pipe = self.client().pipeline(transaction=False)
            for name, value in zip(names, values, strict=True):
                pipe.set(name, value, px=ttl)
            pipe.execute()
        except REDIS_ERRORS as exc:
            raise EntityStateUnavailable(f"entity state write failed: {exc}") from exc
        finally:
            self.round_trips += 1
        self._kept_written(names, keys, values, records, set())
        return []

    # ---- a compare-and-set in three steps, so that its round trip can leave the caller's thread ----
    def prepare_save(self, spec: EntitySpec, records: dict[EntityKey, bytes], expected: Expected) -> CasWrite:
        """``save_raw(spec, records, expected)``'s first step, on the thread that reads this store:
        the stored values (``wrap``: new write tokens) and what each is compared against (``_want``)."""
        keys = list(records)
        names = self._names(spec, keys)
        values = wrap([records[k] for k in keys])
        wants = [self._want(name, expected.get(k)) for name, k in zip(names, keys, strict=True)]
        return CasWrite(keys, names, wants, values, records, spec.horizon_ms)

    def send_save(self, write: CasWrite) -> list[int]:
        """The compare-and-set itself: one round trip (one per node on a cluster), touching nothing
        of this store but the client (thread-safe: ``behind.WriteBehind.start_flush`` runs it on
        another thread while batches are read and written here). Returns the 1-based indices of
        the records another writer changed (not written). Raises ``EntityStateUnavailable``."""
        try:
            return self._compare_and_set(write.names, write.wants, write.values, write.ttl)
        except REDIS_ERRORS as exc:
            raise EntityStateUnavailable(f"entity state write failed: {exc}") from exc

    def finish_save(self, write: CasWrite, lost: list[int] | None) -> list[EntityKey]:
        """The last step, on the reading thread again: the copies and write tokens of what was
        written; ``lost`` None: the write failed (written or not: unknown; the copies are dropped).
        Returns the entities lost to another writer."""
        self.round_trips += 1
        if lost is None:
            self.copies.forget(write.names)
            return []
        keys, values = write.keys, write.values
        self.copies.wrote(write.names, keys, values, [write.records[k] for k in keys], lost)
        self._kept_written(write.names, keys, values, write.records, {i - 1 for i in lost})
        return [keys[i - 1] for i in lost]

    def _kept_written(self, names: list[str], keys: list[EntityKey], values: list[bytes],
                      records: dict[EntityKey, bytes], lost: set[int]) -> None:
        field = self._kept_field
        if field is None:
            return
        every = self._kept_every
        for j, (name, k, value) in enumerate(zip(names, keys, values, strict=True)):
            if k[0] == field or every:
                if j in lost:
                    self._kept.pop(name, None)
                else:
                    self._keep(name, value[:HEAD_BYTES], records[k])

    def _want(self, name: str, read: bytes | None) -> bytes:
        """What ``CAS_SCRIPT`` compares ``name`` against: the write token of the last read when
        ``read`` is the record that read returned, else the record bytes themselves."""
        if read is None:
            return b""
        head = self._heads.pop(name, None)
        if head is not None and (head[1] is read or head[1] == read):
            return head[0]
        kept = self._kept.get(name) if self._kept_field is not None else None
        if kept is not None and (kept[1] is read or kept[1] == read):
            return kept[0]
        return read

    def _compare_and_set(self, names: list[str], wants: list[bytes], values: list[bytes], ttl: int) -> list[int]:
        """One ``CAS_SCRIPT`` call over every record (EVALSHA, packed by hiredis: ``redis_client.packed_call``;
        the script loaded on NOSCRIPT, as redis-py's ``Script`` does)."""
        cas = self._cas
        assert cas is not None and isinstance(self.r, redis.Redis)
        pairs: list[bytes] = [b""] * (2 * len(values))
        pairs[0::2], pairs[1::2] = wants, values
        try:
            lost = packed_call(self.r, "EVALSHA", cas.sha, len(names), *names, ttl, *pairs)
        except redis.exceptions.NoScriptError:  # a restarted or other server: load it, once (as redis-py's Script)
            cas.sha = self.r.script_load(CAS_SCRIPT)
            lost = packed_call(self.r, "EVALSHA", cas.sha, len(names), *names, ttl, *pairs)
        return [int(i) for i in lost]


class _Copies:
    """The records this worker wrote last, kept in memory so that its next batch need not read them
    again (``SD_ENTITY_COPIES``: how many, least recently written dropped first; 0: none). A copy is
    only a guess at what Redis holds: the batch's write is the compare-and-set on its write token,
    so if another writer changed the record meanwhile (a terminal shared with another worker's
    partitions, a partition that moved, the TTL), the write loses for that entity, the copy is
    dropped, and the enricher reads the record again and recomputes its events
    (``Enricher._redo``) — the features are those of an enricher without copies, always.

    Entities of a key that other workers write too would lose that way on most batches (a third
    round trip and a recomputation each time), so a key whose copies lose often — at least
    ``STALE_MIN`` and more than ``STALE_SHARE`` of those it used, counted over its last writes
    until ``TALLY`` copies were used (batches can be small: several workers taking turns release a
    few events at a time) — is read from Redis for the next ``REST_BATCHES`` batches, then tried
    again; set aside again at once, for twice as long each time (up to ``MAX_REST``), until a
    tally passes. The partition key (the account, when the topic is keyed by account) keeps its
    copies."""

    STALE_MIN = 8
    STALE_SHARE = 0.1
    TALLY = 64
    REST_BATCHES = 100
    MAX_REST = 100_000

    def __init__(self, size: int) -> None:
        self.size = size
        self.records: dict[str, tuple[bytes, bytes]] = {}  # name → (envelope head, record), oldest write first
        self.resting: dict[str, int] = {}  # key field → batches left without copies
        self.rest_for: dict[str, int] = {}  # key field → how long it is set aside next time
        self.used: dict[str, str] = {}  # name → its key field, for the copies the last read used
        self.tally: dict[str, list[int]] = {}  # key field → [copies used, of those stale] since its last decision
        self.hits = 0  # copies used (metrics, tests)
        self.stale = 0  # of those, found changed by another writer

    def read(self, names: list[str], keys: Sequence[EntityKey], heads: dict[str, tuple[bytes, bytes]],
             out: list[bytes | None]) -> list[int]:
        """Fill ``out`` (and ``heads``) from the copies; the indices of the names left to read."""
        self.used.clear()
        if not self.size or not self.records:
            return list(range(len(names)))
        for field in list(self.resting):
            self.resting[field] -= 1
            if self.resting[field] <= 0:
                del self.resting[field]
        left: list[int] = []
        records, resting = self.records, self.resting
        for i, (name, key) in enumerate(zip(names, keys, strict=True)):
            copy = records.get(name) if key[0] not in resting else None
            if copy is None:
                left.append(i)
                continue
            heads[name] = copy
            out[i] = copy[1]
            self.used[name] = key[0]
        self.hits += len(self.used)
        return left

    def wrote(self, names: list[str], keys: Sequence[EntityKey], values: list[bytes], written: list[bytes],
              lost: list[int]) -> None:
        """After a compare-and-set of ``values`` (the stored values of the records ``written``): the
        records written become the copies (their write tokens are what Redis holds now); the lost
        ones are dropped, and counted against their key."""
        if not self.size:
            return
        records = self.records
        used = Counter(self.used.values())
        stale: Counter[str] = Counter()
        gone = {i - 1 for i in lost}
        for j, (name, value, record) in enumerate(zip(names, values, written, strict=True)):
            records.pop(name, None)
            if j in gone:
                if name in self.used:
                    stale[keys[j][0]] += 1
                continue
            records[name] = (value[:HEAD_BYTES], record)
        self.used.clear()
        for field, n in used.items():
            lost_n = stale[field]
            self.stale += lost_n
            tally = self.tally.setdefault(field, [0, 0])
            tally[0] += n
            tally[1] += lost_n
            if tally[1] >= self.STALE_MIN and tally[1] > self.STALE_SHARE * tally[0]:
                rest = self.rest_for.get(field, self.REST_BATCHES)
                self.resting[field] = rest
                self.rest_for[field] = min(2 * rest, self.MAX_REST)
                tally[0] = tally[1] = 0
            elif tally[0] >= self.TALLY:
                tally[0] = tally[1] = 0
                self.rest_for.pop(field, None)
        over = len(records) - self.size
        if over > 0:
            for name in list(islice(records, over)):
                del records[name]

    def forget(self, names: Sequence[str]) -> None:
        for name in names:
            self.records.pop(name, None)
        self.used.clear()


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

    def __init__(self, client: RedisCluster | Callable[[], RedisCluster], prefix: str, copies: int = 0) -> None:
        self.prefix = prefix
        self.round_trips = 0
        self._cluster = client if isinstance(client, RedisCluster) else None
        self._connect = None if isinstance(client, RedisCluster) else client
        self._cas = None
        self._sha: str | None = None
        self._heads: dict[str, tuple[bytes, bytes]] = {}
        self.copies = _Copies(copies)
        self._kept = OrderedDict()
        self._kept_field = None
        self._kept_every = False
        self._kept_size = 0

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

    def _compare_and_set(self, names: list[str], wants: list[bytes], values: list[bytes], ttl: int) -> list[int]:
        """A script's keys must share a slot, so one ``CAS_SCRIPT`` call per record, all in one
        cluster pipeline (one round trip per node; redis-py's cluster pipeline refuses its
        ``evalsha`` method, the command itself is accepted). The script is loaded on every primary first
        (once per client); a node that lost it (restarted, failed over) makes the write fail with
        NOSCRIPT, which is retriable, and the next attempt loads it again."""
        cluster = self.client()
        if self._sha is None:
            self._sha = str(cluster.script_load(CAS_SCRIPT))  # sent to every primary
        pipe = cluster.pipeline()  # type: ignore[no-untyped-call]
        for name, want, value in zip(names, wants, values, strict=True):
            # The node named here: left to redis-py, an EVALSHA costs a COMMAND GETKEYS round trip
            # to the default node each (redis-py 8.1 has no routing policy for it); MOVED still redirects.
            pipe.execute_command("EVALSHA", self._sha, 1, name, ttl, want, value,
                                 target_nodes=cluster.get_node_from_key(name))  # type: ignore[no-untyped-call]
        try:
            replies = pipe.execute()
        except redis.exceptions.NoScriptError:
            self._sha = None
            raise
        return [i for i, lost in enumerate(replies, start=1) if lost]


def record_bytes(record: Record, spec: EntitySpec | None = None, key: str | None = None) -> int:
    """Size of one record as the Redis value: version-3 binary with ``spec`` and ``key``, else the
    former version-1 JSON (for comparison). Redis adds ~60-90 bytes of key and overhead."""
    if spec is not None and key is not None:
        return len(encode(spec, key, record))
    return len(orjson.dumps(record, option=orjson.OPT_NON_STR_KEYS))
