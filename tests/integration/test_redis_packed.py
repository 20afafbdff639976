"""``redis_client.packed_call``: the entity state's big commands packed by hiredis in one call, on
the real Redis — the same replies as redis-py's own methods, a dropped connection retried by the
client's policy, a script the server lost loaded again, and redis-py's path where it must stay."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from stream_detector.entity import EntitySpec, RedisState
from stream_detector.entity.state import CAS_SCRIPT
from stream_detector.errors import EntityStateUnavailable
from stream_detector.redis_client import HIREDIS_PACK, packed_call
from stream_detector.settings import Settings

pytestmark = pytest.mark.integration

SPEC = EntitySpec(windows=(3600,), max_distinct=4)


def _calls(client: redis.Redis, before: dict[str, Any], name: str) -> int:
    after = client.info("commandstats")
    return int(after.get(f"cmdstat_{name}", {}).get("calls", 0)) - int(before.get(f"cmdstat_{name}", {}).get("calls", 0))


def _nowhere() -> str:
    """A Redis URL where nothing listens (a port bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


def test_hiredis_packs_here() -> None:
    assert HIREDIS_PACK, "hiredis (a dependency) without pack_command: the entity state falls back to redis-py's packer"


def test_an_mget_of_thousands_of_names_answers_as_redis_pys(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    names = [f"{settings.redis_prefix}:k:{i}" for i in range(5000)]
    values = {name: bytes([i % 256]) * (i % 300) + b"\x00\xfe\r\n" for i, name in enumerate(names) if i % 3}
    client.mset(values)
    mixed: list[str | bytes] = [n.encode() if i % 2 else n for i, n in enumerate(names)]  # str and bytes names
    before = client.info("commandstats")
    got = packed_call(client, "MGET", *mixed)
    assert _calls(client, before, "mget") == 1  # one command, one round trip
    assert got == client.mget(names)
    assert got[0] is None and got[1] == values[names[1]]


def test_a_server_that_does_not_answer_fails_it_as_redis_pys_own_commands(settings: Settings) -> None:
    down = redis.Redis.from_url(_nowhere(), retry=Retry(NoBackoff(), 1), socket_connect_timeout=1)
    with pytest.raises(redis.ConnectionError):
        down.mget(["a", "b"])
    with pytest.raises(redis.ConnectionError):
        packed_call(down, "MGET", "a", "b")


def test_the_entity_stores_round_trips_fail_as_retriable_outages(settings: Settings) -> None:
    store = RedisState(redis.Redis.from_url(_nowhere(), retry=Retry(NoBackoff(), 0), socket_connect_timeout=1),
                       settings.redis_prefix)
    a = ("account_id", "a")
    with pytest.raises(EntityStateUnavailable, match="read failed"):
        store.load_raw(SPEC, [a])
    with pytest.raises(EntityStateUnavailable, match="write failed"):
        store.save_raw(SPEC, {a: b"r2"}, {a: b"r1"})


def test_a_compare_and_set_after_the_server_lost_its_script_loads_it_again(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    store = RedisState(client, settings.redis_prefix)
    a, b = ("account_id", "a"), ("account_id", "b")
    store.save_raw(SPEC, {a: b"r1"})
    assert store.load_raw(SPEC, [a, b]) == [b"r1", None]
    client.script_flush()  # as a restarted Redis, or a failover to a replica that never ran it
    assert store.save_raw(SPEC, {a: b"r2", b: b"s1"}, {a: b"r1", b: None}) == []
    assert client.script_exists(store._cas.sha if store._cas is not None else "") == [True]
    assert store.load_raw(SPEC, [a, b]) == [b"r2", b"s1"]
    assert store.save_raw(SPEC, {a: b"r3"}, {a: b"r1"}) == [a]  # still compared: stale bytes lose
    assert store.load_raw(SPEC, [a]) == [b"r2"]
    client.script_load(CAS_SCRIPT)


def test_clients_it_cannot_pack_for_go_through_redis_py(settings: Settings) -> None:
    class Counting(redis.Redis):  # a subclass may override how commands run: left to it
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.seen: list[Any] = []

        def execute_command(self, *args: Any, **options: Any) -> Any:
            self.seen.append(args[0])
            return super().execute_command(*args, **options)

    counting = Counting.from_url(settings.redis_url)
    assert packed_call(counting, "MGET", "x", "y") == [None, None]
    assert counting.seen == ["MGET"]
    single = redis.Redis.from_url(settings.redis_url, single_connection_client=True)  # its one locked connection
    assert packed_call(single, "MGET", "x") == [None]
