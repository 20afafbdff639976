"""Entity state on a real Redis Cluster (three primaries started by ``deploy/services.sh
redis-cluster-up``): the same features and state as offline enrichment, spread over every node,
with one round trip per node for each batch's read and write."""

from __future__ import annotations

import random
import socket
from collections import Counter
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster

from stream_detector.entity import Enricher, RedisClusterState, enrich_history
from stream_detector.entity.binary import decode
from stream_detector.entity.replay_log import RedisFeatureLog
from stream_detector.entity.state import unwrap
from stream_detector.errors import EntityStateUnavailable
from stream_detector.kafka_util import lag, read_all
from stream_detector.model.bundle import Bundle
from stream_detector.offline import score_events
from stream_detector.producer import EventProducer
from stream_detector.settings import Settings
from stream_detector.store import ControlPlane
from stream_detector.worker import Worker
from tests.helpers import wait_until
from tests.integration import test_entity
from tests.integration.test_entity import SPEC, _Collector, _offline_state, _publish, _raw, _small_batches
from tests.services import Services

entity_bundle = test_entity.entity_bundle  # the same fixtures as the single-Redis tests
run_worker = test_entity.run_worker


def _free_cluster_port() -> int:
    """A port that is free together with its cluster bus port (port + 10000)."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20_000, 50_000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10_000))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair for a Redis Cluster node")


@pytest.fixture(scope="module")
def cluster(services: Services) -> Iterator[str]:
    """Three Redis Cluster primaries on free ports; yields ``host:port,host:port,host:port``."""
    ports = [_free_cluster_port() for _ in range(3)]
    env = dict(services.env, SD_REDIS_CLUSTER_PORTS=",".join(map(str, ports)))
    running = Services(services.kafka, services.redis, env)
    running.run("redis-cluster-up")
    try:
        yield ",".join(f"127.0.0.1:{p}" for p in ports)
    finally:
        running.run("redis-cluster-down")


def _client(nodes: str) -> RedisCluster:
    host, _, port = nodes.split(",")[0].rpartition(":")
    return RedisCluster(startup_nodes=[ClusterNode(host, int(port))])  # type: ignore[no-untyped-call]


def _cluster_state(client: RedisCluster, prefix: str) -> tuple[dict[str, Any], Counter[str]]:
    """Every entity record under ``prefix`` (decoded) and how many keys each node holds."""
    records: dict[str, Any] = {}
    per_node: Counter[str] = Counter()
    for node in client.get_primaries():
        conn: redis.Redis = node.redis_connection  # type: ignore[assignment]
        for key in conn.scan_iter(match=f"{prefix}:entity:*", count=1000):
            raw: bytes = conn.get(key)  # type: ignore[assignment]
            records[key.decode().rsplit(":", 1)[1]] = decode(SPEC, "account_id", unwrap(raw))["c"]
            per_node[node.name] += 1
    return records, per_node


def test_worker_on_a_redis_cluster_equals_offline_enrichment(settings: Settings, cluster: str,
                                                             entity_bundle: Bundle, run_worker: Any) -> None:
    settings = _small_batches(settings).model_copy(update={"entity_redis_cluster": cluster})
    _publish(settings, entity_bundle)
    events = _raw(1200, seed=31, accounts=60)
    worker = run_worker(Worker(settings))
    assert worker.enricher is not None and worker.behind is not None  # write-behind for the accounts, over the cluster
    assert isinstance(worker.behind.inner, RedisClusterState)
    seen = _Collector()
    worker.enricher.on_enriched = seen
    with EventProducer(settings, settings.input_topic) as producer:
        producer.send(events)
    wait_until(lambda: lag(settings, settings.group_id, settings.input_topic) == 0, message="drained")

    online = seen.by_id()
    assert len(online) == len(events) and len(seen.batches) > 1
    for expected in enrich_history(SPEC, events):
        assert online[expected["event_id"]] == expected  # bit for bit, as with a single Redis
    records, per_node = _cluster_state(_client(cluster), settings.redis_prefix)
    assert records == _offline_state(events)
    assert len(per_node) == 3 and min(per_node.values()) > 0  # spread over every primary
    assert not redis.Redis.from_url(settings.redis_url).keys(f"{settings.redis_prefix}:entity:*")  # none beside
    scores = score_events(entity_bundle, events).scores
    expected_alerts = {e["event_id"] for e, s in zip(events, scores, strict=True) if s > entity_bundle.threshold}
    alerts = [orjson.loads(r.value) for r in read_all(settings, settings.alerts_topic)]
    assert expected_alerts and {a["event_id"] for a in alerts} == expected_alerts


def test_one_round_trip_per_node_for_each_read_and_write(cluster: str, monkeypatch: pytest.MonkeyPatch) -> None:
    client = _client(cluster)
    store = RedisClusterState(client, "rt-per-node")
    enricher = Enricher(store)
    events = _raw(600, seed=32, accounts=200)
    enricher.enrich(SPEC, events[:100], [(0, i) for i in range(100)])  # connections made (handshakes) first
    sent: Counter[int] = Counter()
    send = redis.Connection.send_packed_command

    def counting(self: redis.Connection, command: Any, check_health: bool = True) -> None:
        sent[self.port] += 1  # observes every write to a socket; the send itself is unchanged
        send(self, command, check_health)
    monkeypatch.setattr(redis.Connection, "send_packed_command", counting)
    for start in range(100, 600, 250):
        sent.clear()
        enricher.enrich(SPEC, events[start:start + 250], [(0, i) for i in range(start, start + 250)])
        assert len(sent) == 3 and set(sent.values()) == {2}  # per node: one read, one write
    monkeypatch.undo()
    assert _cluster_state(client, "rt-per-node")[0] == _offline_state(events)


def test_a_cluster_that_cannot_be_reached_is_a_retriable_outage(settings: Settings) -> None:
    """A configured cluster that is down when the worker starts does not stop the start: the
    first batch's read raises ``EntityStateUnavailable`` (retriable: the worker holds the batch and
    pauses its partitions, as for a single Redis outage)."""
    down = settings.model_copy(update={"entity_redis_cluster": f"127.0.0.1:{_free_cluster_port()}"})
    store = ControlPlane.from_settings(down).worker_view().entity_state()  # no connection yet
    assert isinstance(store, RedisClusterState)
    for call in (lambda: store.load(SPEC, [("account_id", "a")]), lambda: store.save_raw(SPEC, {("account_id", "a"): b"x"})):
        with pytest.raises(EntityStateUnavailable) as info:
            call()
        assert info.value.retriable


def test_check_config_reports_the_entity_cluster(settings: Settings, cluster: str) -> None:
    from stream_detector.checks import run_checks

    ok = {c.name: c for c in run_checks(settings.model_copy(update={"entity_redis_cluster": cluster}))}
    assert ok["entity cluster"].status == "ok" and "3 primaries" in ok["entity cluster"].detail
    gone = f"127.0.0.1:{_free_cluster_port()}"
    bad = {c.name: c for c in run_checks(settings.model_copy(update={"entity_redis_cluster": gone}))}
    assert bad["entity cluster"].status == "fail" and gone in bad["entity cluster"].detail
    no_redis = settings.model_copy(update={"entity_redis_cluster": cluster,
                                           "redis_url": f"redis://127.0.0.1:{_free_cluster_port()}/0"})
    checks = {c.name: c for c in run_checks(no_redis)}  # the control plane's Redis down: still reported
    assert checks["redis"].status == "fail" and checks["entity cluster"].status == "ok"


@pytest.mark.parametrize("where", ["redis", "cluster"])
def test_the_replay_log_keeps_logged_features_until_their_offsets_are_committed(
        settings: Settings, cluster: str, where: str) -> None:
    """``entity/replay_log.py`` on a single Redis and on the cluster (its lists spread over the
    slots; the trim's script called per list): what is appended is found bit for bit, an offset
    logged twice takes the last entry, and a trim drops only entries wholly below the committed
    offsets."""
    import numpy as np

    from tests.integration.test_entity import TWO_KEYS

    client: redis.Redis | RedisCluster = (redis.Redis.from_url(settings.redis_url) if where == "redis"
                                          else _client(cluster))
    log = RedisFeatureLog(client, settings.redis_prefix, settings.input_topic)
    width = len(TWO_KEYS.fields_for("merchant_category"))
    values = np.random.default_rng(0).normal(size=(6, width))
    parts, offsets = np.array([0, 1, 2, 0, 1, 2]), np.array([10, 10, 10, 11, 11, 11])
    log.append(TWO_KEYS, "merchant_category", parts, offsets, values)
    log.append(TWO_KEYS, "merchant_category", np.array([0, 0]), np.array([11, 12]), values[:2] * 2)
    found, got = log.find(TWO_KEYS, "merchant_category", np.array([2, 1, 0, 0, 0]), np.array([11, 10, 11, 12, 13]), width)
    assert found.tolist() == [True, True, True, True, False]
    assert np.array_equal(got[:4], np.vstack([values[5], values[1], values[0] * 2, values[1] * 2]))
    log.drop({0: 12, 1: 12, 2: 11})
    found, _ = log.find(TWO_KEYS, "merchant_category", np.array([0, 0, 1, 2]), np.array([10, 12, 11, 11]), width)
    assert found.tolist() == [False, True, False, True]  # partition 0's first entry and partition 1's went
    assert log.trims == 1
    log.drop({0: 99})  # entries found since the last trim: trimmed
    log.drop({0: 99})  # nothing appended or found since: no round trip
    assert log.trims == 2
    found, _ = log.find(TWO_KEYS, "merchant_category", np.array([0, 1]), np.array([12, 11]), width)
    assert found.tolist() == [False, False]
