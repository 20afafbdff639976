"""The replay log's trim on the real Redis (``entity/replay_log.py``, ``TRIM_SCRIPT``): it drops
what the reference rule drops (the head entries wholly below the committed offset:
``InMemoryFeatureLog.drop``) whatever the history of the list — written with tops, by a release
before them, or left with tops that do not match its entries — and, where the tops match, without
reading the entries it drops."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import redis

from stream_detector.entity import EntitySpec
from stream_detector.entity.replay_log import InMemoryFeatureLog, RedisFeatureLog, encode
from stream_detector.settings import Settings

pytestmark = pytest.mark.integration

SPEC = EntitySpec(windows=(3600,), max_distinct=4, keys=("account_id", "terminal_id"))
KEY = "terminal_id"
WIDTH = len(SPEC.fields_for(KEY))


def _batches(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """``n`` batches' offsets of one partition: mostly ascending, some read again (a crash's replay)."""
    out, at = [], 0
    for _ in range(n):
        if out and rng.random() < 0.2:
            start = int(rng.integers(max(0, at - 30), at))  # read again from an earlier offset
        else:
            start = at
        size = int(rng.integers(1, 12))
        out.append(np.arange(start, start + size, dtype=np.int64))
        at = max(at, start + size)
    return out


def _append(logs: tuple[RedisFeatureLog, InMemoryFeatureLog], offsets: np.ndarray, rng: np.random.Generator) -> None:
    values = rng.normal(size=(offsets.size, WIDTH))
    for log in logs:
        log.append(SPEC, KEY, np.zeros(offsets.size, dtype=np.int64), offsets, values)


def _drop(logs: tuple[Any, InMemoryFeatureLog], committed: dict[int, int]) -> None:
    logs[0].drop(committed)
    logs[1].drop(committed)


def _lindex(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_lindex", {}).get("calls", 0))


@pytest.mark.parametrize("seed", range(6))
def test_a_trim_drops_what_the_reference_rule_drops_without_reading_the_entries(settings: Settings, seed: int) -> None:
    rng = np.random.default_rng(seed)
    client = redis.Redis.from_url(settings.redis_url)
    logs: tuple[Any, InMemoryFeatureLog] = (RedisFeatureLog(client, settings.redis_prefix, settings.input_topic),
                                            InMemoryFeatureLog())
    for round_ in range(8):
        for offsets in _batches(rng, int(rng.integers(1, 10))):
            _append(logs, offsets + 40 * round_, rng)
        committed = {0: int(rng.integers(0, 40 * (round_ + 1) + 15))}
        before = _lindex(client)
        _drop(logs, committed)
        assert client.lrange(logs[0].name(0), 0, -1) == logs[1].lists.get(0, [])
        assert client.llen(logs[0].tops_name(0)) == client.llen(logs[0].name(0))
        assert _lindex(client) - before <= 2  # the boundary's two entries at most, not every entry dropped


def test_a_list_written_before_the_tops_is_trimmed_by_the_same_rule(settings: Settings) -> None:
    rng = np.random.default_rng(7)
    client = redis.Redis.from_url(settings.redis_url)
    logs: tuple[Any, InMemoryFeatureLog] = (RedisFeatureLog(client, settings.redis_prefix, settings.input_topic),
                                            InMemoryFeatureLog())
    name = logs[0].name(0)
    for offsets in _batches(rng, 6):  # as the release before 2026-12-06 wrote them: entries only
        entry = encode(SPEC, KEY, offsets, rng.normal(size=(offsets.size, WIDTH)))
        client.rpush(name, entry)
        logs[1].lists.setdefault(0, []).append(entry)
    for offsets in _batches(rng, 5):
        _append(logs, offsets + 30, rng)
    for committed in (3, 20, 45, 80):
        _drop(logs, {0: committed})
        assert client.lrange(name, 0, -1) == logs[1].lists.get(0, [])


@pytest.mark.parametrize("damage", ["an entry without its top", "a top without its entry", "tops of another list",
                                    "tops lost"])
def test_tops_that_do_not_match_the_entries_never_make_a_trim_drop_more(settings: Settings, damage: str) -> None:
    """A cluster appends entries and tops in one pipeline, not one transaction, and the two lists
    expire apart: whatever the tops say, the trim drops no entry the reference rule keeps."""
    rng = np.random.default_rng(11)
    client = redis.Redis.from_url(settings.redis_url)
    logs: tuple[Any, InMemoryFeatureLog] = (RedisFeatureLog(client, settings.redis_prefix, settings.input_topic),
                                            InMemoryFeatureLog())
    name, tops = logs[0].name(0), logs[0].tops_name(0)
    for offsets in _batches(rng, 5):
        _append(logs, offsets, rng)
    if damage == "an entry without its top":
        extra = np.arange(60, 64, dtype=np.int64)
        entry = encode(SPEC, KEY, extra, rng.normal(size=(4, WIDTH)))
        client.rpush(name, entry)
        logs[1].lists[0].append(entry)
    elif damage == "a top without its entry":
        client.rpush(tops, 99)
    elif damage == "tops of another list":
        client.delete(tops)
        client.rpush(tops, *[5 * i for i in range(client.llen(name))])
    else:
        client.delete(tops)
    for offsets in _batches(rng, 4):
        _append(logs, offsets + 70, rng)
    for committed in (5, 30, 66, 75, 200):
        _drop(logs, {0: committed})
        assert client.lrange(name, 0, -1) == logs[1].lists.get(0, []), committed


def test_entries_of_the_next_window_are_trimmed_by_its_own_commit(settings: Settings) -> None:
    """With the window written on the writer thread, the next window's batches are logged before the
    last one's commit trims: that trim keeps them, and the next commit, with nothing logged after
    it, still trims them (before 2026-12-06 it was skipped, and they stayed until the horizon)."""
    rng = np.random.default_rng(3)
    client = redis.Redis.from_url(settings.redis_url)
    logs: tuple[Any, InMemoryFeatureLog] = (RedisFeatureLog(client, settings.redis_prefix, settings.input_topic),
                                            InMemoryFeatureLog())
    _append(logs, np.arange(0, 10, dtype=np.int64), rng)  # window 1
    _append(logs, np.arange(10, 20, dtype=np.int64), rng)  # window 2, read while window 1 was written
    _drop(logs, {0: 10})  # window 1 committed
    assert client.llen(logs[0].name(0)) == 1
    trims = logs[0].trims
    _drop(logs, {0: 20})  # window 2 committed, nothing logged since
    assert logs[0].trims == trims + 1
    assert client.llen(logs[0].name(0)) == 0 and client.llen(logs[0].tops_name(0)) == 0
    _drop(logs, {0: 30})  # nothing left of this log's: no round trip
    assert logs[0].trims == trims + 1
