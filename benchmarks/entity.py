"""Entity features, measured: ``python -m benchmarks entity [--quick]``.

On seeded raw transactions with fraud that is only visible against each account's history
(``entity_data``), train the same autoencoder twice on the first 75 % of the time span (normal
rows only) — without and with entity features (``--entity-key account_id``) — and score the last
25 %. Entity features are computed once over the whole history in arrival order (point in time),
so the test rows see exactly the state a worker would have. Reports AUC-PR, AUC-ROC, recall at a
1 % alert budget (overall and per scenario), then the cost per batch of the hot path (enrich +
features + score) with in-memory and with Redis state, the Redis round trips per batch, and the
bytes per entity. A full run rewrites the ``entity`` section of ``benchmarks/RESULTS.md``;
``--quick`` only prints.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from stream_detector.entity import (
    Enricher,
    EntitySpec,
    InMemoryState,
    RedisState,
    enrich_history,
    parse_windows,
)
from stream_detector.entity.state import record_bytes
from stream_detector.model.bundle import Bundle, build_bundle
from stream_detector.model.train import TrainConfig, train
from stream_detector.pipeline.score import Scorer, scores_of
from stream_detector.report import evaluate

from . import entity_data, harness
from .quality import ALERT_BUDGET, recall_at_budget


@dataclass
class Split:
    events: list[dict[str, Any]]
    enriched: list[dict[str, Any]]
    labels: list[str]
    cut: int  # first test row

    def train_rows(self, enriched: bool) -> list[dict[str, Any]]:
        rows = self.enriched if enriched else self.events
        return [rows[i] for i in range(self.cut) if self.labels[i] == "legit"]

    def test(self, enriched: bool) -> list[dict[str, Any]]:
        return (self.enriched if enriched else self.events)[self.cut:]


def make_split(args: argparse.Namespace, seed: int, spec: EntitySpec) -> tuple[Split, float]:
    events, labels = entity_data.make(args.events, args.accounts, args.span_days, args.fraud, seed)
    t0, t1 = events[0]["timestamp"], events[-1]["timestamp"]
    cut = next(i for i, e in enumerate(events) if e["timestamp"] >= t0 + 0.75 * (t1 - t0))
    started = time.perf_counter()
    enriched = enrich_history(spec, events)
    return Split(events, enriched, labels, cut), len(events) / (time.perf_counter() - started)


def scores(bundle: Bundle, rows: list[dict[str, Any]]) -> np.ndarray:
    x, bad = bundle.spec.transform(rows)
    assert not bad, f"{len(bad)} rows rejected"
    return scores_of(Scorer(bundle).errors(x))


def quality(split: Split, seed: int, epochs: int | None, spec: EntitySpec
            ) -> tuple[dict[str, dict[str, float]], dict[str, Bundle]]:
    y = np.array([lab != "legit" for lab in split.labels[split.cut:]])
    kinds = np.array(split.labels[split.cut:])
    out: dict[str, dict[str, float]] = {}
    bundles: dict[str, Bundle] = {}
    for name, with_entity in (("without", False), ("with", True)):
        result = train(split.train_rows(with_entity), TrainConfig(epochs=epochs, seed=seed),
                       entity=spec if with_entity else None)
        bundles[name] = build_bundle(result)
        s = scores(bundles[name], split.test(with_entity))
        row = {k: float(v) for k, v in evaluate(s, y, result.threshold).items() if isinstance(v, (int, float))}
        row["recall_at_budget"] = recall_at_budget(s, y)
        k = max(1, int(np.ceil(ALERT_BUDGET * y.size)))
        top = np.zeros(y.size, dtype=bool)
        top[np.argsort(-s, kind="stable")[:k]] = True
        for scenario in entity_data.SCENARIOS:
            mask = kinds == scenario
            row[f"recall_{scenario}"] = float(top[mask].mean()) if mask.any() else float("nan")
        row["width"] = float(result.spec.width)
        out[name] = row
    return out, bundles


# ---- cost per batch --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def local_redis() -> Iterator[str]:
    """A throwaway ``redis-server`` (no persistence) on a free port; stopped by its own pid."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server not found (deploy/services.sh installs it); or pass --redis-url")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="sd-entity-") as tmp:
        proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL)
        try:
            import redis
            client = redis.Redis(port=port)
            deadline = time.monotonic() + 20
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(timeout=20)


def cost(split: Split, spec: EntitySpec, bundles: dict[str, Bundle], batch: int, redis_url: str) -> dict[str, float]:
    import redis

    test = split.events[split.cut:]
    batches = [test[i:i + batch] for i in range(0, len(test), batch)]
    positions = [[(0, split.cut + i + j) for j in range(len(b))] for i, b in zip(range(0, len(test), batch),
                                                                                 batches, strict=True)]
    client = redis.Redis.from_url(redis_url)
    # a fresh prefix, not FLUSHDB: --redis-url may name a Redis that holds other things
    prefix = harness.run_prefix(redis_url, f"bench-entity-{uuid.uuid4().hex[:8]}")
    stores: dict[str, Any] = {"memory": InMemoryState(), "redis": RedisState(client, prefix)}
    for store in stores.values():  # warm state: the training history, as a worker would have it
        _warm(store, spec, split, batch)
    enrichers = {name: Enricher(store) for name, store in stores.items()}
    scorers = {name: Scorer(b) for name, b in bundles.items()}
    trips = stores["redis"].round_trips
    times: dict[str, list[float]] = {"without": [], "enrich_memory": [], "enrich_redis": [], "with_features": []}
    for b, p in zip(batches, positions, strict=True):  # interleaved, so machine noise hits every path alike
        started = time.perf_counter()
        scores_of(scorers["without"].errors(bundles["without"].spec.transform(b)[0]))
        times["without"].append(time.perf_counter() - started)
        for name in ("memory", "redis"):
            started = time.perf_counter()
            enriched = enrichers[name].enrich(spec, b, p)
            times[f"enrich_{name}"].append(time.perf_counter() - started)
        started = time.perf_counter()
        scores_of(scorers["with"].errors(bundles["with"].spec.transform(enriched)[0]))
        times["with_features"].append(time.perf_counter() - started)
    out = {k: float(np.median(v) * 1000) for k, v in times.items()}
    out.update(batches=float(len(batches)), batch=float(batch),
               round_trips_redis=(stores["redis"].round_trips - trips) / len(batches))
    keys = list(itertools.islice(client.scan_iter(match=f"{prefix}:entity:*", count=1000), 200))
    out["redis_bytes_per_entity"] = float(np.mean([client.memory_usage(k) for k in keys]))
    out["record_bytes"] = float(np.mean([record_bytes(r, spec, k[1][0]) for k, r in stores["memory"].records.items()]))
    out["entities"] = float(len(stores["memory"].records))
    return out


def _warm(store: Any, spec: EntitySpec, split: Split, batch: int) -> None:
    enricher = Enricher(store)
    for i in range(0, split.cut, batch):
        part = split.events[i:min(i + batch, split.cut)]
        enricher.enrich(spec, part, [(0, i + j) for j in range(len(part))])


# ---- report ----------------------------------------------------------------------------------


def markdown(args: argparse.Namespace, runs: list[dict[str, dict[str, float]]], c: dict[str, float],
             offline_rate: float, spec: EntitySpec) -> str:
    def cell(name: str, key: str) -> str:
        values = [r[name][key] for r in runs]
        return f"{np.mean(values):.3f}" + (f" ± {np.std(values):.3f}" if len(values) > 1 else "")

    lines = [
        (f"{args.events} raw transactions of {args.accounts} accounts over {args.span_days:g} days "
        f"(`Simulator(raw=True)`: no precomputed velocity fields) plus {args.fraud:.0%} injected fraud events "
        f"that are only visible against the account's history (`benchmarks/entity_data.py`: card-testing "
        f"bursts, account takeover, amount spikes). Train on normal rows of the first 75 % of the span, test "
        f"on the last 25 %; seeds {args.seeds}; entity spec: key `account_id`, windows {args.windows}, "
        f"distinct `merchant_category`, `country`."),
        "",
        ("| features | columns | AUC-PR | AUC-ROC | recall @ 1 % budget | card testing | account takeover "
        "| amount spike |"),
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, label in (("without", "raw fields only"), ("with", "raw + entity features")):
        lines.append(f"| {label} | {runs[0][name]['width']:.0f} | {cell(name, 'auc_pr')} | {cell(name, 'auc_roc')} "
                     f"| {cell(name, 'recall_at_budget')} | {cell(name, 'recall_card_testing')} "
                     f"| {cell(name, 'recall_account_takeover')} | {cell(name, 'recall_amount_spike')} |")
    b = int(c["batch"])

    def rate(ms: float) -> str:
        return f"{b / ms * 1000:,.0f}"
    with_mem = c["enrich_memory"] + c["with_features"]
    with_redis = c["enrich_redis"] + c["with_features"]
    lines += [
        "",
        (f"Cost per batch of {b} events (median over {int(c['batches'])} test batches, warm state of "
        f"{int(c['entities'])} accounts; features + TorchScript scoring on CPU, decode/Kafka/publish not "
        "included — see the throughput section for those):"),
        "",
        "| path | ms / batch | events/s | Redis round trips / batch |",
        "|---|---|---|---|",
        f"| features + score, no entity features | {c['without']:.1f} | {rate(c['without'])} | 0 |",
        f"| enrich (in-memory state) + features + score | {with_mem:.1f} | {rate(with_mem)} | 0 |",
        (f"| enrich (Redis state) + features + score | {with_redis:.1f} | {rate(with_redis)} "
        f"| {c['round_trips_redis']:.0f} |"),
        f"| of which enrich alone (in-memory / Redis) | {c['enrich_memory']:.1f} / {c['enrich_redis']:.1f} | | |",
        "",
        (f"State per entity: {c['record_bytes']:.0f} bytes of binary record (version 3; current state + undo snapshot), "
        f"{c['redis_bytes_per_entity']:.0f} bytes in Redis (`MEMORY USAGE`, key and overhead included). "
        f"Offline enrichment (training, `score`): {offline_rate:,.0f} events/s on one core."),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks entity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--span-days", type=float, default=28)
    parser.add_argument("--fraud", type=float, default=0.01, help="share of injected fraud events")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--epochs", type=int, help="training epochs (default: derived from the row count)")
    parser.add_argument("--windows", default="1h,1d,7d")
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--redis-url", help="Redis for the state cost (default: a throwaway redis-server)")
    parser.add_argument("--quick", action="store_true", help="small data, one seed, print only")
    parser.add_argument("--speed", action="store_true",
                        help="only the speed/state-size suite (entity_speed.py: new vs reference, same run)")
    parser.add_argument("--repeats", type=int, default=3, help="--speed: timed repeats per path (best is kept)")
    args = parser.parse_args(list(argv))
    if args.speed:
        from .entity_speed import main_speed

        return main_speed(args.events, args.accounts, args.repeats, args.batch, args.redis_url, not args.quick)
    if args.quick:
        args.events, args.accounts, args.seeds, args.epochs = 12_000, 300, "0", args.epochs or 20
    spec = EntitySpec(windows=parse_windows(args.windows))
    runs: list[dict[str, dict[str, float]]] = []
    split0: Split | None = None
    offline_rate, bundles0 = 0.0, {}
    for seed in (int(s) for s in args.seeds.split(",")):
        split, rate = make_split(args, seed, spec)
        result, bundles = quality(split, seed, args.epochs, spec)
        runs.append(result)
        print(f"seed {seed}: " + "; ".join(f"{n}: AUC-PR {r['auc_pr']:.3f}, recall@1% {r['recall_at_budget']:.3f}"
                                           for n, r in result.items()), flush=True)
        if split0 is None:
            split0, offline_rate, bundles0 = split, rate, bundles
    assert split0 is not None
    if args.redis_url:
        c = cost(split0, spec, bundles0, args.batch, args.redis_url)
    else:
        with local_redis() as url:
            c = cost(split0, spec, bundles0, args.batch, url)
    body = markdown(args, runs, c, offline_rate, spec)
    print(body)
    if not args.quick:
        from .results import write_section

        print(f"wrote {write_section('entity', 'Entity features', body)}")
    return 0
