"""Entity state on a Redis Cluster against a single Redis: per-batch cost, same run
(``python -m benchmarks entity-cluster``).

Starts a single Redis (with Kafka, unused here) and a three-primary Redis Cluster through
``deploy/services.sh`` on free ports. The workload is ``entity_speed.workload`` (raw transactions
with terminals; keys ``account_id`` and ``terminal_id``, windows 1h/1d/7d/30d, two distinct
fields). Both stores are warmed with the first 75 % of the events. Then every remaining batch is
enriched through ``Enricher.features`` on each store, alternating single, cluster, single,
cluster … so machine noise hits both alike. Reported: wall ms per batch (median, p90), the
store's share (the read and the write: network and Redis; records stay bytes), and round trips
per batch (socket writes, counted per node).
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import redis
from redis.cluster import ClusterNode, RedisCluster

from stream_detector.entity import Enricher, RedisClusterState, RedisState

from . import entity_speed, harness
from .results import write_section

SPEC = entity_speed.SPEC


def _free_pair() -> int:
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
    raise RuntimeError("no free port pair")


class _Timed:
    """Wraps a store: wall time of its reads and writes (the Redis calls; the records stay bytes)."""

    def __init__(self, inner: Any, sent: Counter[int]) -> None:
        self.inner, self.sent = inner, sent
        self.last: dict[Any, bytes] = {}  # the records of the last write
        self.round_trips = 0
        self.store_s = 0.0

    def load_raw(self, spec: Any, keys: Any) -> Any:
        t = time.perf_counter()
        try:
            return self.inner.load_raw(spec, keys)
        finally:
            self.store_s += time.perf_counter() - t

    def reload_raw(self, spec: Any, keys: Any) -> Any:
        return self.load_raw(spec, keys)

    def log_sink(self) -> Any:
        return self.inner.log_sink()

    def save_raw(self, spec: Any, records: Any, expected: Any = None) -> Any:
        t = time.perf_counter()
        self.last = records
        try:
            return self.inner.save_raw(spec, records, expected)
        finally:
            self.store_s += time.perf_counter() - t

    def load(self, spec: Any, keys: Any) -> Any:
        return self.inner.load(spec, keys)

    def save(self, spec: Any, records: Any) -> None:
        self.inner.save(spec, records)


def measure(single_url: str, nodes: list[int], n: int, batch: int) -> dict[str, Any]:
    events = entity_speed.workload(n, max(500, n // 40), seed=0)
    cut = int(0.75 * n) // batch * batch
    sent: Counter[int] = Counter()
    send = redis.Connection.send_packed_command

    def counting(self: redis.Connection, command: Any, check_health: bool = True) -> None:
        sent[self.port] += 1
        send(self, command, check_health)  # type: ignore[no-untyped-call]
    redis.Connection.send_packed_command = counting  # type: ignore[method-assign,assignment]
    single = redis.Redis.from_url(single_url)
    single.flushall()
    cluster = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", nodes[0])])  # type: ignore[no-untyped-call]
    for node in cluster.get_primaries():  # type: ignore[no-untyped-call]
        node.redis_connection.flushall()
    stores = {"single Redis": _Timed(RedisState(single, "bench"), sent),
              "Redis Cluster (3 primaries)": _Timed(RedisClusterState(cluster, "bench"), sent)}
    enrichers = {name: Enricher(store) for name, store in stores.items()}
    for start in range(0, cut, batch):
        for enricher in enrichers.values():
            enricher.features(SPEC, events[start:start + batch], [(0, start + j) for j in range(batch)])
    wall: dict[str, list[float]] = {name: [] for name in stores}
    store_s: dict[str, list[float]] = {name: [] for name in stores}
    trips: dict[str, list[int]] = {name: [] for name in stores}
    writes: dict[str, dict[str, list[float]]] = {name: {"plain": [], "cas": []} for name in stores}
    entities: list[int] = []
    for start in range(cut, n - batch + 1, batch):
        part = events[start:start + batch]
        entities.append(len({e["account_id"] for e in part}) + len({e["terminal_id"] for e in part}))
        for name, enricher in enrichers.items():
            store = stores[name]
            before, sent_before = store.store_s, sum(sent.values())
            t = time.perf_counter()
            enricher.features(SPEC, part, [(0, start + j) for j in range(batch)])
            wall[name].append(time.perf_counter() - t)
            store_s[name].append(store.store_s - before)
            trips[name].append(sum(sent.values()) - sent_before)
            # The batch's write again, both ways, same bytes (state unchanged): a plain pipeline of
            # SETs (the write before compare-and-set) against the compare-and-set script.
            records = dict(store.last)
            for how in (("plain", "cas") if len(entities) % 2 else ("cas", "plain")):
                t = time.perf_counter()
                lost = store.inner.save_raw(SPEC, records, records if how == "cas" else None)
                writes[name][how].append(time.perf_counter() - t)
                assert not lost
    redis.Connection.send_packed_command = send  # type: ignore[method-assign]
    return {"events": n, "batch": batch, "batches": len(entities), "entities": statistics.mean(entities),
            "wall": wall, "store": store_s, "trips": trips, "writes": writes}


def markdown(r: dict[str, Any], load: str) -> str:
    lines = [f"Enrich (`Enricher.features`) of {r['batches']} batches of {r['batch']:,} events "
             f"(about {r['entities']:,.0f} entities touched per batch: accounts + terminals) after warming "
             f"both stores with 75 % of {r['events']:,} events; alternating stores, same process.", "",
             "| store | ms per batch, median | p90 | of which the read + the write (Redis), median ms | round trips per batch |",
             "|---|---|---|---|---|"]
    for name in r["wall"]:
        w = np.array(r["wall"][name]) * 1000
        s = np.array(r["store"][name]) * 1000
        lines.append(f"| {name} | {np.median(w):.1f} | {np.percentile(w, 90):.1f} | {np.median(s):.1f} | "
                     f"{statistics.median(r['trips'][name]):.0f} |")
    lines += ["", "Round trips are socket writes: 2 on a single Redis (one `MGET`, one compare-and-set script "
              "call), 2 per node on the cluster (one pipeline of per-slot `MGET`s and one of per-record "
              "compare-and-set calls per node).", "",
              "The write alone, each measured batch's records written again both ways (same bytes, alternating "
              "order): the compare-and-set (`CAS_SCRIPT`, which makes several workers lose no update) against "
              "the plain pipeline of `SET … PX` it replaced:", "",
              "| store | plain SET pipeline, median ms | compare-and-set, median ms | ratio |", "|---|---|---|---|"]
    for name, w in r["writes"].items():
        plain, cas = statistics.median(w["plain"]) * 1000, statistics.median(w["cas"]) * 1000
        lines.append(f"| {name} | {plain:.1f} | {cas:.1f} | {cas / plain:.2f}× |")
    lines += ["", load]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks entity-cluster", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=80_000, help="simulated events (default 80,000)")
    p.add_argument("--batch", type=int, default=2048, help="events per enriched batch (default 2,048)")
    p.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = p.parse_args(argv)
    before = os.getloadavg()
    ports = [_free_pair() for _ in range(3)]
    with harness.services(print) as svc:
        env = dict(os.environ, SD_REDIS_CLUSTER_PORTS=",".join(map(str, ports)),
                   SD_SERVICES_DIR=f"/tmp/sd-bench-cluster-{ports[0]}")
        script = str(harness.ROOT / "deploy" / "services.sh")
        subprocess.run([script, "redis-cluster-up"], env=env, check=True, capture_output=True, timeout=300)
        try:
            r = measure(svc.redis, ports, args.events, args.batch)
        finally:
            subprocess.run([script, "redis-cluster-down"], env=env, capture_output=True, timeout=300, check=False)
    after = os.getloadavg()
    load = (f"Load average (1/5/15 min) before: {before[0]:.2f}/{before[1]:.2f}/{before[2]:.2f}, after: "
            f"{after[0]:.2f}/{after[1]:.2f}/{after[2]:.2f}; {os.cpu_count()} cores, every Redis node on this machine.")
    body = markdown(r, load)
    print(body)
    if not args.no_write:
        write_section("entity-cluster", "Entity state: Redis Cluster vs single Redis (`python -m benchmarks "
                      "entity-cluster`)", body)
    return 0
