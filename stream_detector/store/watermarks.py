"""Shared event-time watermarks: the next record of each partition of a consumer group's input.

Several workers of one consumer group align their partitions against each other through these
(``pipeline/align.py``, *several workers*). Each worker publishes, per partition it owns, its
**head**: the event-time sort key of the first record it has not committed yet (buffered or in
flight), or of the last one it committed when none is known (every record still to be applied
from that partition has a key at least this), and whether the partition is **idle** (at its
end and quiet for the alignment's ``idle_ms``, ``pipeline/align.py``). A worker then releases a record only while
its key is at most ``grace_ms`` past every other partition's head; idle partitions and
entries older than ``stale_ms`` (a dead worker's, until its partitions' new owner publishes) do
not count, and a partition of the topic with no entry yet holds everything back for ``stale_ms``
(workers starting one after another on a backlog: the first must not run ahead of the rest).

With ``grace_ms`` 0 a shared entity's events are applied in event-time order exactly (ties
aside), the workers taking turns; with a grace, at most ``grace_ms`` out of order, in steps of
up to the grace (``tests/unit/test_align.py``).

An idle claim carries the partition's **end offset** as its owner saw it. A worker about to
release past an idle partition asks the broker for that partition's end (``ends``, one round
trip): if records were appended since, the partition is not idle any more, whatever its owner
has published so far, and holds at its head. Without the check, two workers idle on a quiet
topic and then sent a burst applied it out of order in one trial run of five (312 alerts where
offline scoring raises 163): the burst reached one worker's partitions before the other had
published its own partitions' new heads (a heartbeat every 0.5 s, or its next commit).

Redis layout: ``{prefix}:align:{group}:{topic}``, a hash ``partition → "head_ms idle wall_ms
end"`` (``end`` -1: unknown; entries of releases before 2026-12-04 have no ``end``), with no
TTL (a few dozen bytes per partition; rewritten on every commit and heartbeat).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import redis

from ..transport.base import EndOffsets

INF = float("inf")
NEG_INF = float("-inf")
ALONE_RECHECK_S = 1.0  # ``RedisWatermarks.bound``: how often a worker owning every partition reads the hash anyway


Entry = tuple[float, bool, float, int]  # (head_ms, idle, wall_ms, end offset when idle; -1 unknown)


def peer_bound(entries: dict[int, Entry], own: set[int], grace_ms: float, stale_ms: float,
               now_ms: float, partitions: int = 0, missing: dict[int, float] | None = None,
               ends: EndOffsets | None = None) -> float:
    """The release bound the other partitions allow: min over their live, not idle entries
    ``(head_ms, idle, wall_ms, end)`` of ``head_ms + grace_ms``; +inf when none holds. An idle
    entry with a known ``end`` counts as not idle when ``ends`` (asked once, for all such
    partitions) says records were appended since (module docstring); a failed ask trusts the
    claim. A partition below ``partitions`` with no entry yet (its owner has read nothing from it
    so far) holds everything back (-inf) for ``stale_ms`` from when ``missing`` (updated here)
    first saw it."""
    live = {p: e for p, e in entries.items() if p not in own and now_ms - e[2] <= stale_ms}
    bound = min((e[0] + grace_ms for e in live.values() if not e[1]), default=INF)
    # only claims that would lower the bound are worth a round trip (a worker waiting for a peer
    # looks at the heads every 5 ms)
    claimed = {p for p, e in live.items() if e[1] and e[3] >= 0 and e[0] + grace_ms < bound}
    if claimed and ends is not None:
        try:
            now_ends = ends(claimed)
        except Exception:  # noqa: BLE001 - the broker did not answer: trust the idle claims, as before
            now_ends = {}
        for p in claimed:
            if now_ends.get(p, -1) > live[p][3]:  # appended since the claim: holds at its head
                bound = min(bound, live[p][0] + grace_ms)
    if missing is not None:
        for p in range(partitions):
            if p in entries or p in own:
                missing.pop(p, None)
            elif now_ms - missing.setdefault(p, now_ms) <= stale_ms:
                bound = NEG_INF
    return bound


class RedisWatermarks:
    """``pipeline.align.Peers`` in Redis (module docstring). A read or write that fails keeps the
    last bound read (the worker's own Redis outage handling holds batches meanwhile)."""

    def __init__(self, client: redis.Redis, prefix: str, group: str, topic: str, grace_ms: int,
                 stale_ms: int, partitions: int = 0, clock: Callable[[], float] = time.time) -> None:
        self.r = client
        self.partitions = partitions
        self._missing: dict[int, float] = {}
        self.key = f"{prefix}:align:{group}:{topic}"
        self.grace_ms = grace_ms
        self.stale_ms = stale_ms
        self.clock = clock
        self._last = NEG_INF
        self._alone_at = NEG_INF  # when a read last found no other partition's entry while this worker owned all

    def publish(self, heads: dict[int, tuple[float, bool]], ends: dict[int, int] | None = None) -> None:
        """Per partition its head and idle flag, with ``ends`` the end offsets of the idle ones."""
        if not heads:
            return
        wall = self.clock() * 1000.0
        known = ends or {}
        try:
            self.r.hset(self.key, mapping={str(p): f"{t!r} {int(c)} {wall!r} {known.get(p, -1)}"
                                           for p, (t, c) in heads.items()})
        except (redis.RedisError, OSError):
            pass  # the next commit or heartbeat publishes again; peers see the entry age meanwhile

    def bound(self, own: set[int], ends: EndOffsets | None = None) -> float:
        """As ``peer_bound`` over the entries read from Redis. A worker that owns every partition of
        the topic has no peer to wait for: the hash is read again only every ``ALONE_RECHECK_S``
        while that holds and the last read found no other partition's entry (partitions added to
        the topic since the worker started, owned by another worker), not on every release (one
        round trip each: 6 % of an entity worker's thread at 20,000 events/s in a py-spy profile,
        2026-12-06)."""
        now = self.clock()
        whole = self.partitions > 0 and own.issuperset(range(self.partitions))
        if whole and now - self._alone_at < ALONE_RECHECK_S:
            self._last = INF
            return INF
        try:
            raw = self.r.hgetall(self.key)
        except (redis.RedisError, OSError):
            return self._last
        entries: dict[int, Entry] = {}
        for p, value in raw.items():
            t, c, w, *end = value.split()
            entries[int(p)] = (float(t), c == b"1", float(w), int(end[0]) if end else -1)
        self._last = peer_bound(entries, own, self.grace_ms, self.stale_ms, now * 1000.0,
                                self.partitions, self._missing, ends)
        alone = whole and all(p in own for p in entries)
        self._alone_at = now if alone else NEG_INF
        return self._last


class MemoryWatermarks:
    """``pipeline.align.Peers`` in process memory (the in-memory control plane's workers, tests):
    one ``entries`` dict shared by every worker given the same object."""

    def __init__(self, grace_ms: int, stale_ms: int, partitions: int = 0,
                 clock: Callable[[], float] = time.time) -> None:
        self.entries: dict[int, Entry] = {}
        self.partitions = partitions
        self._missing: dict[int, float] = {}
        self.grace_ms = grace_ms
        self.stale_ms = stale_ms
        self.clock = clock
        self._lock = threading.Lock()

    def publish(self, heads: dict[int, tuple[float, bool]], ends: dict[int, int] | None = None) -> None:
        wall = self.clock() * 1000.0
        known = ends or {}
        with self._lock:
            self.entries.update({p: (t, c, wall, known.get(p, -1)) for p, (t, c) in heads.items()})

    def bound(self, own: set[int], ends: EndOffsets | None = None) -> float:
        with self._lock:
            return peer_bound(dict(self.entries), own, self.grace_ms, self.stale_ms, self.clock() * 1000.0,
                              self.partitions, self._missing, ends)
