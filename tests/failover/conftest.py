"""The failover tier's services: a three-node KRaft cluster (replication factor 3,
``min.insync.replicas=2`` everywhere) and Redis with a replica and three Sentinels, both started by
``deploy/services.sh`` on free loopback ports, once per session. Scenarios kill nodes; the
``cluster`` fixture brings every node back and waits for full in-sync replica sets before each
test, so one scenario's damage never leaks into the next."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.chaos.proxy import TcpProxy
from tests.helpers import wait_until
from tests.services import SCRIPT, free_port

MASTER = "sd-failover"


@dataclass(frozen=True)
class Cluster:
    kafka: str  # bootstrap: all three nodes
    redis: str  # the URL part Sentinel clients use (database number)
    sentinels: str
    env: dict[str, str]

    def run(self, *args: str) -> str:
        done = subprocess.run([SCRIPT, *args], env=self.env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"services.sh {' '.join(args)} failed:\n{done.stderr[-4000:]}")
        return done.stdout.strip()

    def heal(self) -> None:
        """Every node running, Sentinels agreeing on a primary with a replica, every replica in sync."""
        self.run("cluster-up")
        self.run("start-redis-nodes")
        self.run("sentinel-up")
        wait_until(lambda: full_isr(self.kafka), timeout_s=180, interval_s=0.5,
                   message="every partition's replicas back in sync")


def full_isr(bootstrap: str) -> bool:
    """True when every partition of every topic (internal ones included) has 3 in-sync replicas."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","), request_timeout_ms=5000)
    except KafkaError:
        return False
    try:
        topics = admin.list_topics()
        return all(len(p["isr_nodes"]) == 3 for t in admin.describe_topics(topics) for p in t["partitions"])
    except KafkaError:
        return False
    finally:
        admin.close()


def start_cluster(state: Path, **extra_env: str) -> Cluster:
    ports = [free_port() for _ in range(6)]
    redis_ports = [free_port() for _ in range(2)]
    sentinel_ports = [free_port() for _ in range(3)]
    env = dict(os.environ, SD_SERVICES_DIR=str(state), SD_CLUSTER_PORTS=",".join(map(str, ports[:3])),
               SD_CLUSTER_CONTROLLER_PORTS=",".join(map(str, ports[3:])),
               SD_SENTINEL_REDIS_PORTS=",".join(map(str, redis_ports)),
               SD_SENTINEL_PORTS=",".join(map(str, sentinel_ports)), SD_REDIS_SENTINEL_MASTER=MASTER)
    env.update(extra_env)  # a test's own ports and proxies
    advertised = env.get("SD_CLUSTER_ADVERTISED_PORTS", env["SD_CLUSTER_PORTS"])
    cluster = Cluster(",".join(f"127.0.0.1:{p}" for p in advertised.split(",")), "redis://127.0.0.1:1/0",
                      ",".join(f"127.0.0.1:{p}" for p in sentinel_ports), env)
    try:
        cluster.run("cluster-up")
        cluster.run("sentinel-up")
    except RuntimeError:
        stop_cluster(cluster)  # what did start must not outlive the failed start
        raise
    return cluster


def stop_cluster(cluster: Cluster) -> None:
    """SIGKILL, as the ``services`` fixture stops its broker: the nodes' data dies with the temporary
    folder, so there is no graceful shutdown to wait for (three KRaft nodes' took ~20 s at the end of
    every test run, shown as the teardown of the session's last test)."""
    for node in ("1", "2", "3"):
        cluster.run("kill-broker", node)
    cluster.run("sentinel-down")


@pytest.fixture
def partitionable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, list[TcpProxy]]]:
    """A cluster of its own whose node 3 talks to everyone through loopback TCP proxies: its client
    listener (clients and followers fetching from it), its controller listener (the other voters'
    Raft traffic to it) and its own way to the other controllers (its Raft traffic and broker
    heartbeats). Cutting the four proxies partitions node 3 from the clients and the quorum; what
    stays is node 3's own follower fetches, which cannot make it a leader again."""
    ports, ctrl = [free_port() for _ in range(3)], [free_port() for _ in range(3)]
    client3, ctrl3_in, out31, out32 = (free_port() for _ in range(4))
    proxies = [TcpProxy(client3, ports[2]), TcpProxy(ctrl3_in, ctrl[2]), TcpProxy(out31, ctrl[0]),
               TcpProxy(out32, ctrl[1])]
    others = f"1@127.0.0.1:{ctrl[0]},2@127.0.0.1:{ctrl[1]},3@127.0.0.1:{ctrl3_in}"
    env = {"SD_CLUSTER_PORTS": ",".join(map(str, ports)), "SD_CLUSTER_CONTROLLER_PORTS": ",".join(map(str, ctrl)),
           "SD_CLUSTER_ADVERTISED_PORTS": f"{ports[0]},{ports[1]},{client3}",
           "SD_CLUSTER_VOTERS_1": others, "SD_CLUSTER_VOTERS_2": others,
           "SD_CLUSTER_VOTERS_3": f"1@127.0.0.1:{out31},2@127.0.0.1:{out32},3@127.0.0.1:{ctrl[2]}"}
    running = None
    try:
        running = start_cluster(tmp_path_factory.mktemp("partition"), **env)
        wait_until(lambda: full_isr(running.kafka), timeout_s=120, interval_s=0.5, message="cluster in sync")
        yield running, proxies
    finally:
        if running is not None:
            stop_cluster(running)
        for proxy in proxies:
            proxy.close()


@pytest.fixture(scope="session")
def cluster_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    try:
        running = start_cluster(tmp_path_factory.mktemp("failover"))
    except RuntimeError as exc:
        pytest.fail(f"could not start the cluster: {exc}")
    try:
        yield running
    finally:
        stop_cluster(running)


@pytest.fixture
def cluster(cluster_session: Cluster) -> Cluster:
    cluster_session.heal()
    return cluster_session


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Same report as the chaos tier (one file, both tables) when ``SD_RELIABILITY_REPORT`` is set."""
    from tests.chaos.conftest import pytest_sessionfinish as write

    write(session, exitstatus)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Scenarios outside this tier (``SD_FAILOVER_TIER``: smoke by default, ``make
    test-failover-smoke``) are deselected, not skipped: a run reports only what it ran (their tiers
    are ``make test-failover`` and ``make reliability``)."""
    outside = [item for item in items if "tests/failover/" in item.nodeid and any(
        mark.name == "skip" and "empty parameter set" in str(mark.kwargs.get("reason", ""))
        or mark.name == "skipif" and mark.args and mark.args[0] is True
        for mark in item.iter_markers())]
    if outside:
        config.hook.pytest_deselected(items=outside)
        items[:] = [item for item in items if item not in outside]
