"""The replay log: the features a batch computed from keys shared across partitions, kept until
the batch's offsets are committed, so that a crash between the two replays them exactly.

Why. With write-behind (``behind.py``) a worker commits its offsets once per window of batches.
The records of the topic's own key (the account) are written at the window's end with the
window's undo snapshot, so whatever is read again after a crash is replayed from it exactly. A
key shared across partitions (a terminal) is different: its records are written on every batch,
other workers write them too, and each keeps the undo snapshot of its last write only — an event
of the window that a terminal record already holds cannot be taken out of it again (other
workers' events came after it), and features computed from the record's current state are ahead
in time (a trial on 2026-12-03: 4.4x offline's alerts after a SIGKILL). So the worker writes,
**before** every compare-and-set of the shared records, the features it computed for the batch's
events from those keys; an event found already applied when read again gets its features from
here (``enrich.py``), the ones it got the first time. (Kafka Streams solves the same problem by
re-keying through a repartition topic, so each terminal has one writer; here every writer of a
shared record is a worker of one group, and the record's per-partition offsets say which events
it holds.)

Layout: one Redis list per input partition, ``{prefix}:entity-log:{topic}:{partition}``; one
element per (batch, shared key) — ``encode``: magic ``SDL1``, the largest offset it holds (20
ASCII digits, for the trim below), the spec fingerprint (12 ASCII bytes), the key's name, then
the batch's offsets from that partition (int64) and their features (float64, the key's
``EntitySpec.fields_for`` columns, bit for bit). Written with the batch's
state (per partition one ``RPUSH`` of the entry and one of its largest offset to the list's tops,
``tops_name``, with their ``PEXPIRE``s: one ``MULTI``/``EXEC`` on a single Redis, a pipeline on a
cluster; before the compare-and-set: an entry
whose write never happened is ignored, because only events a record holds are looked up);
when an event is in several entries, the **last** one holds its features (a batch read again
after a crash found the event applied and logged the features it got from an earlier entry, or
computed it anew and applied it). Once a partition's offsets are committed, its entries holding
only offsets below the committed one are dropped from the head of the list (``drop``:
``TRIM_SCRIPT``, which reads the tops, not the entries; entries of a window read again after a
crash sit behind older ones and go when the commits pass them); a list expires with the spec's
horizon otherwise. Size: 8 bytes per event and feature of the shared keys, held for one commit
window (``SD_ENTITY_FLUSH_MS``), and a few bytes per entry for its top.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

import numpy as np
import redis
from redis.cluster import RedisCluster

from ..entity_spec import EntitySpec
from ..errors import EntityStateUnavailable
from .state import REDIS_ERRORS

MAGIC = b"SDL1"
_HEAD = struct.Struct("<4s20s12sH")  # magic, largest offset (ASCII), spec fingerprint[:12], length of the key's name
# KEYS[1]: a partition's list; KEYS[2]: its tops list (``tops_name``: each entry's largest offset, ASCII,
# appended with the entry); ARGV[1]: the committed offset (the next to read). Drops entries from the head
# while every offset they hold is below it; returns how many. The tops are read, not the entries: an entry
# is ~100-300 events x (8 + 8 x features) bytes, and reading each into the script to look at its first 24
# bytes (LINDEX, then LPOP, before 2026-12-06) took 4 ms for 45 entries of 27 KB on an idle Redis and
# 18-26 ms in a worker's latency run at 20,000/s (Redis's slowlog), every SD_ENTITY_FLUSH_MS, with the
# worker's own reads and writes queued behind it. Head entries without a top (written by a release before
# the tops list, or a tops list lost to expiry or a failed write) are looked at one by one as before; the
# entries at the boundary are checked against the tops, and on any mismatch the tops list is dropped and
# the whole list looked at one by one (the tops then start again with the next entries appended).
TRIM_SCRIPT = """
local committed = tonumber(ARGV[1])
local function top_of(entry)
  return tonumber(string.sub(entry, 5, 24))
end
local n = 0
local count = redis.call('LLEN', KEYS[1])
local tops = redis.call('LRANGE', KEYS[2], 0, -1)
local untopped = count - #tops
if untopped < 0 then
  redis.call('DEL', KEYS[2])
  tops, untopped = {}, count
end
local function one_by_one(limit)
  while limit > 0 do
    local head = redis.call('LINDEX', KEYS[1], 0)
    if not head then return false end
    local top = top_of(head)
    if top == nil or top >= committed then return false end
    redis.call('LPOP', KEYS[1])
    n = n + 1
    limit = limit - 1
  end
  return true
end
if not one_by_one(untopped) then
  return n
end
local c = 0
for i = 1, #tops do
  local top = tonumber(tops[i])
  if top == nil or top >= committed then break end
  c = c + 1
end
if c == 0 then
  return n
end
local last = redis.call('LINDEX', KEYS[1], c - 1)
local next_one = redis.call('LINDEX', KEYS[1], c)
if (not last) or top_of(last) ~= tonumber(tops[c])
    or (next_one and (tops[c + 1] == nil or top_of(next_one) ~= tonumber(tops[c + 1]))) then
  redis.call('DEL', KEYS[2])
  one_by_one(count)
  return n
end
redis.call('LTRIM', KEYS[1], c, -1)
redis.call('LTRIM', KEYS[2], c, -1)
return n + c
"""
_SIZE = struct.Struct("<II")  # events, features per event

__all__ = ["FeatureLog", "InMemoryFeatureLog", "RedisFeatureLog", "decode", "encode", "lookup"]


def top_of(offsets: np.ndarray) -> int:
    """An entry's largest offset (int64[n] → int; -1 when empty): in its head and in the tops list."""
    return int(offsets.max()) if offsets.size else -1


def entry_top(entry: bytes) -> int | None:
    """The largest offset in an entry's head (``TRIM_SCRIPT``'s ``top_of``); None when it is not one."""
    if entry[:4] != MAGIC or len(entry) < 24:
        return None
    try:
        return int(entry[4:24])
    except ValueError:
        return None


def encode(spec: EntitySpec, key: str, offsets: np.ndarray, values: np.ndarray) -> bytes:
    """One entry: ``offsets`` int64[n] (one partition's) and ``values`` float64[n, k] (the features
    of ``key`` for those events), with the spec and key they belong to."""
    name = key.encode()
    offsets = np.ascontiguousarray(offsets, dtype="<i8").reshape(-1)
    values = np.ascontiguousarray(values, dtype="<f8")
    if values.ndim != 2 or values.shape[0] != offsets.size:
        raise ValueError(f"replay log: {offsets.size} offsets need values of shape ({offsets.size}, k), "
                         f"not {values.shape}")
    top = top_of(offsets)
    return b"".join((_HEAD.pack(MAGIC, b"%020d" % top, spec.fingerprint[:12].encode(), len(name)), name,
                     _SIZE.pack(offsets.size, values.shape[1]), offsets.tobytes(), values.tobytes()))


def decode(entry: bytes) -> tuple[str, str, np.ndarray, np.ndarray] | None:
    """An entry → (spec fingerprint[:12], key, offsets int64[n], values float64[n, k]); None when
    it is not one (another format: ignored, as a missing entry)."""
    if len(entry) < _HEAD.size or entry[:4] != MAGIC:
        return None
    _magic, _top, fingerprint, length = _HEAD.unpack_from(entry)
    at = _HEAD.size
    key = entry[at:at + length].decode()
    at += length
    n, k = _SIZE.unpack_from(entry, at)
    at += _SIZE.size
    offsets = np.frombuffer(entry, dtype="<i8", count=n, offset=at)
    values = np.frombuffer(entry, dtype="<f8", count=n * k, offset=at + 8 * n).reshape(n, k)
    return fingerprint.decode(), key, offsets, values


def lookup(entries: Iterable[bytes], spec: EntitySpec, key: str, offsets: np.ndarray,
           width: int) -> tuple[np.ndarray, np.ndarray]:
    """``offsets`` (int64[m], one partition's) looked up in its ``entries`` (oldest first): (found
    bool[m], values float64[m, width]); an offset in several entries takes the last one's."""
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1)
    found = np.zeros(offsets.size, dtype=np.bool_)
    values = np.zeros((offsets.size, width), dtype=np.float64)
    mine = spec.fingerprint[:12]
    for entry in entries:
        parsed = decode(entry)
        if parsed is None or parsed[0] != mine or parsed[1] != key or parsed[3].shape[1] != width:
            continue
        logged, logged_values = parsed[2], parsed[3]
        if not logged.size:
            continue
        order = np.argsort(logged, kind="stable")
        at = np.searchsorted(logged[order], offsets)
        inside = at < logged.size
        hit = np.zeros(offsets.size, dtype=np.bool_)
        hit[inside] = logged[order][at[inside]] == offsets[inside]
        values[hit] = logged_values[order[at[hit]]]
        found |= hit
    return found, values


class FeatureLog(Protocol):
    """Where the replay log lives (the module docstring)."""

    def append(self, spec: EntitySpec, key: str, partitions: np.ndarray, offsets: np.ndarray,
               values: np.ndarray) -> None:
        """Log ``values`` (float64[n, k]: ``key``'s features) of the events at ``partitions`` /
        ``offsets`` (int64[n] each). Raises ``EntityStateUnavailable`` (retriable) when it cannot."""
        ...

    def find(self, spec: EntitySpec, key: str, partitions: np.ndarray, offsets: np.ndarray,
             width: int) -> tuple[np.ndarray, np.ndarray]:
        """The logged features of the events at ``partitions`` / ``offsets`` (int64[m] each): (found
        bool[m], float64[m, width]). Raises ``EntityStateUnavailable`` when it cannot read."""
        ...

    def drop(self, committed: Mapping[int, int]) -> None:
        """``committed``: partition → its committed offset (the next to read). Drops the entries at
        the head of each partition's list that hold only offsets below it."""
        ...


def _by_partition(partitions: np.ndarray, offsets: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(partition, rows) per distinct partition, in partition order."""
    partitions = np.asarray(partitions, dtype=np.int64).reshape(-1)
    return [(int(p), np.flatnonzero(partitions == p)) for p in np.unique(partitions).tolist()]


class InMemoryFeatureLog:
    """The replay log in a dict of lists (tests; a worker's is ``RedisFeatureLog``)."""

    def __init__(self) -> None:
        self.lists: dict[int, list[bytes]] = {}
        self.appends = 0
        self.trims = 0

    def append(self, spec: EntitySpec, key: str, partitions: np.ndarray, offsets: np.ndarray,
               values: np.ndarray) -> None:
        offsets = np.asarray(offsets, dtype=np.int64).reshape(-1)
        for p, rows in _by_partition(partitions, offsets):
            self.lists.setdefault(p, []).append(encode(spec, key, offsets[rows], values[rows]))
        self.appends += 1

    def find(self, spec: EntitySpec, key: str, partitions: np.ndarray, offsets: np.ndarray,
             width: int) -> tuple[np.ndarray, np.ndarray]:
        offsets = np.asarray(offsets, dtype=np.int64).reshape(-1)
        found = np.zeros(offsets.size, dtype=np.bool_)
        values = np.zeros((offsets.size, width), dtype=np.float64)
        for p, rows in _by_partition(partitions, offsets):
            f, v = lookup(self.lists.get(p, []), spec, key, offsets[rows], width)
            found[rows], values[rows] = f, v
        return found, values

    def drop(self, committed: Mapping[int, int]) -> None:
        self.trims += 1
        for p, offset in committed.items():
            entries = self.lists.get(int(p), [])
            while entries and (top := entry_top(entries[0])) is not None and top < offset:  # TRIM_SCRIPT's rule
                entries.pop(0)


class RedisFeatureLog:
    """The replay log in Redis or a Redis Cluster (one list per partition: each in the slot its
    name hashes to). ``append`` is one pipelined round trip (one per node on a cluster). ``client``
    may be a callable that connects on first use (``RedisClusterState.client``: a cluster that is
    down is an outage of a batch, retriable, not a failed start)."""

    def __init__(self, client: redis.Redis | RedisCluster | Callable[[], redis.Redis | RedisCluster],
                 prefix: str, topic: str) -> None:
        self._client = client
        self.prefix = prefix
        self.topic = topic
        self.appends = 0
        self.trims = 0
        # partition → the largest offset of the entries this log appended or found there that no trim
        # has passed yet: none (a model without a shared key, a worker past what its predecessor logged)
        # → nothing to trim, no round trip. Before 2026-12-06 one flag, cleared by every trim, also
        # cleared it for entries appended after the window being committed (the next window, read
        # while the last one was written): their own commit then skipped the trim, and they stayed
        # until the horizon (a new-user trial found one such entry left in a drained list).
        self._left: dict[int, int] = {}

    @property
    def r(self) -> redis.Redis | RedisCluster:
        client = self._client
        return client if isinstance(client, (redis.Redis, RedisCluster)) else client()

    def name(self, partition: int) -> str:
        return f"{self.prefix}:entity-log:{self.topic}:{partition}"

    def tops_name(self, partition: int) -> str:
        """The list of the largest offset of each entry of ``name(partition)`` (ASCII), appended with
        it, which the trim reads instead of the entries (``TRIM_SCRIPT``). In the same cluster slot:
        braced around the list's name, or after it where that name has a hash tag of its own."""
        name = self.name(partition)
        opened = name.find("{")
        if opened >= 0 and name.find("}", opened + 1) > opened + 1:
            return f"{name}:tops"
        return f"{{{name}}}:tops"

    def append(self, spec: EntitySpec, key: str, partitions: np.ndarray, offsets: np.ndarray,
               values: np.ndarray) -> None:
        offsets = np.asarray(offsets, dtype=np.int64).reshape(-1)
        client = self.r
        # a single Redis: entries and tops in one MULTI/EXEC (never one without the other); a cluster's
        # lists are on several nodes, and the trim checks the tops against the entries it drops
        pipe = client.pipeline(transaction=not isinstance(client, RedisCluster))
        for p, rows in _by_partition(partitions, offsets):
            name, tops = self.name(p), self.tops_name(p)
            mine = offsets[rows]
            top = top_of(mine)
            pipe.rpush(name, encode(spec, key, mine, values[rows]))
            pipe.rpush(tops, top)
            pipe.pexpire(name, spec.horizon_ms)
            pipe.pexpire(tops, spec.horizon_ms)
            self._keep(p, top)  # before: a write that failed may have landed
        try:
            pipe.execute()
        except REDIS_ERRORS as exc:
            raise EntityStateUnavailable(f"entity replay log write failed: {exc}") from exc
        self.appends += 1

    def find(self, spec: EntitySpec, key: str, partitions: np.ndarray, offsets: np.ndarray,
             width: int) -> tuple[np.ndarray, np.ndarray]:
        offsets = np.asarray(offsets, dtype=np.int64).reshape(-1)
        groups = _by_partition(partitions, offsets)
        pipe = self.r.pipeline(transaction=False)
        for p, _rows in groups:
            pipe.lrange(self.name(p), 0, -1)
        try:
            lists: Sequence[list[bytes]] = pipe.execute()
        except REDIS_ERRORS as exc:
            raise EntityStateUnavailable(f"entity replay log read failed: {exc}") from exc
        found = np.zeros(offsets.size, dtype=np.bool_)
        values = np.zeros((offsets.size, width), dtype=np.float64)
        for (_p, rows), entries in zip(groups, lists, strict=True):
            f, v = lookup(entries, spec, key, offsets[rows], width)
            found[rows], values[rows] = f, v
        for (p, _rows), entries in zip(groups, lists, strict=True):
            for entry in entries:  # a predecessor's: trimmed with this worker's commits of the partition
                top = entry_top(entry)
                self._keep(p, -1 if top is None else top)
        return found, values

    def _keep(self, partition: int, top: int) -> None:
        self._left[partition] = max(self._left.get(partition, -1), top)

    def drop(self, committed: Mapping[int, int]) -> None:
        """As ``FeatureLog.drop``; nothing to do (no round trip) unless some partition of
        ``committed`` has entries this log appended or found that no trim has passed (a model without
        a shared key, a worker without a predecessor's log: none). Every partition of ``committed``
        is trimmed in that round trip."""
        if not committed or not any(int(p) in self._left for p in committed):
            return
        self.trims += 1
        client = self.r
        try:
            if isinstance(client, RedisCluster):  # its pipeline refuses EVAL: one call per list (once per commit)
                for p, offset in committed.items():
                    client.eval(TRIM_SCRIPT, 2, self.name(int(p)), self.tops_name(int(p)), int(offset))
            else:
                pipe = client.pipeline(transaction=False)
                for p, offset in committed.items():
                    pipe.eval(TRIM_SCRIPT, 2, self.name(int(p)), self.tops_name(int(p)), int(offset))
                pipe.execute()
        except REDIS_ERRORS as exc:
            raise EntityStateUnavailable(f"entity replay log trim failed: {exc}") from exc
        for p, offset in committed.items():  # the trim passed every entry below the commit (the prefix rule)
            if int(p) in self._left and self._left[int(p)] < int(offset):
                del self._left[int(p)]
