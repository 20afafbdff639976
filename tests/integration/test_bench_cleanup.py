"""``python -m benchmarks`` deletes its runs' Redis keys when a suite ends (``harness.drop_run_keys``):
only the keys under the prefixes it noted, plain and hash-tagged, never another prefix's — on the
real Redis, where the benchmarks run on a developer's running services."""

from __future__ import annotations

import uuid

import pytest
import redis

from benchmarks import harness
from benchmarks.throughput import base_settings
from tests.services import Services

pytestmark = pytest.mark.integration


def test_a_suite_deletes_its_runs_keys_and_nothing_else(services: Services) -> None:
    client = redis.Redis.from_url(services.redis)
    tag = uuid.uuid4().hex[:8]
    noted = base_settings(services.kafka, services.redis, tag).redis_prefix
    other = harness.run_prefix(services.redis, f"bench-entity-{tag}")
    kept = f"bench-{tag}x"  # starts like a noted prefix, but is not one
    mine = [f"{noted}:entity:k:account_id:a{i}" for i in range(2500)]  # more than one UNLINK batch
    mine += [f"{noted}:model:active", f"{{{noted}:entity-log:t}}:0", f"{other}:entity:k:terminal_id:t"]
    theirs = [f"{kept}:entity:k:account_id:a", f"{kept}:model:active", f"{{{kept}:entity-log:t}}:0", noted]
    with client.pipeline(transaction=False) as pipe:
        for key in mine + theirs:
            pipe.set(key, b"x")
        pipe.execute()

    dropped = harness.drop_run_keys(log=lambda _line: None)

    assert dropped == len(mine)
    assert client.exists(*mine) == 0
    assert client.exists(*theirs) == len(theirs)
    assert harness.drop_run_keys(log=lambda _line: None) == 0  # forgotten once dropped
    client.delete(*theirs)


def test_a_redis_already_gone_is_skipped() -> None:
    harness.run_prefix("redis://127.0.0.1:1/0", "bench-gone")
    assert harness.drop_run_keys(log=lambda _line: None) == 0
