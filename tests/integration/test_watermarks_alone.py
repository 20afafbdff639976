"""``store/watermarks.RedisWatermarks.bound`` on the real Redis: a worker that owns every partition
of the topic reads the shared heads once per ``ALONE_RECHECK_S``, not on every release, and still
sees a partition added to the topic (owned by another worker) and a share of the partitions."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from stream_detector.settings import Settings
from stream_detector.store.watermarks import ALONE_RECHECK_S, INF, RedisWatermarks

pytestmark = pytest.mark.integration


class _Counting(redis.Redis):
    """The real client, counting its HGETALLs (the server's commandstats would count other clients')."""

    hgetalls = 0

    def hgetall(self, name: Any) -> Any:
        self.hgetalls += 1
        return super().hgetall(name)


def _marks(settings: Settings, now: list[float]) -> tuple[_Counting, RedisWatermarks]:
    client = _Counting.from_url(settings.redis_url)
    marks = RedisWatermarks(client, settings.redis_prefix, "group", "topic", grace_ms=0, stale_ms=60_000,
                            partitions=4, clock=lambda: now[0])
    return client, marks


def test_a_worker_owning_every_partition_reads_the_heads_once_per_recheck(settings: Settings) -> None:
    now = [1_000.0]
    client, marks = _marks(settings, now)
    marks.publish({p: (5_000.0, False) for p in range(4)})
    assert marks.bound({0, 1, 2, 3}) == INF
    for _ in range(50):  # releases within the recheck: no round trip
        now[0] += ALONE_RECHECK_S / 100
        assert marks.bound({0, 1, 2, 3}) == INF
    assert client.hgetalls == 1
    now[0] += ALONE_RECHECK_S
    assert marks.bound({0, 1, 2, 3}) == INF
    assert client.hgetalls == 2


def test_a_partition_added_and_owned_by_another_worker_is_waited_for(settings: Settings) -> None:
    """Partition 4 of a topic that had 4 when the worker started: its owner's head holds the
    release, on every call (not once per recheck)."""
    now = [1_000.0]
    client, marks = _marks(settings, now)
    other = RedisWatermarks(client, settings.redis_prefix, "group", "topic", grace_ms=0, stale_ms=60_000,
                            partitions=5, clock=lambda: now[0])
    other.publish({4: (7_000.0, False)})
    assert marks.bound({0, 1, 2, 3}) == 7_000.0
    now[0] += ALONE_RECHECK_S / 10
    other.publish({4: (9_000.0, False)})
    assert marks.bound({0, 1, 2, 3}) == 9_000.0  # read again at once: the head moved
    assert client.hgetalls == 2


def test_a_share_of_the_partitions_reads_the_heads_on_every_release(settings: Settings) -> None:
    now = [1_000.0]
    client, marks = _marks(settings, now)
    marks.publish({2: (3_000.0, False), 3: (4_000.0, False)})
    for _ in range(5):
        assert marks.bound({0, 1}) == 3_000.0
    assert client.hgetalls == 5
