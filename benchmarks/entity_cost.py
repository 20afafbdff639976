"""Per-batch cost of the entity path with Redis state, new vs the per-event reference in the same
run, and bytes per entity (part of ``python -m benchmarks entity --speed``).

Both enrichers warm their own Redis prefix with the first 75 % of the workload (reference: JSON
records, version 1; new: binary records, version 3), then every test batch is timed through:
features + score without entity features; enrich with each enricher (Redis) and the new one in
memory; features + score with the entity features (interleaved, so machine noise hits all alike).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import orjson
import redis

from stream_detector.entity import Enricher, EntitySpec, InMemoryState, RedisState, enrich_history
from stream_detector.entity.reference import ReferenceEnricher
from stream_detector.entity.state import EntityKey, Record, record_bytes
from stream_detector.model.bundle import Bundle, build_bundle
from stream_detector.model.train import TrainConfig, train
from stream_detector.pipeline.score import Scorer, scores_of

from . import harness


class JsonRedisState(RedisState):
    """The former Redis store (version-1 JSON records): the reference's state, for the baseline."""

    def load(self, spec: EntitySpec, keys: Sequence[EntityKey]) -> dict[EntityKey, Record | None]:
        self.round_trips += 1
        raw = self.r.mget([self.key(spec, k) for k in keys]) if keys else []
        return {k: (_coded(orjson.loads(v)) if v is not None else None) for k, v in zip(keys, raw, strict=True)}

    def save(self, spec: EntitySpec, records: dict[EntityKey, Record]) -> None:
        self.round_trips += 1
        pipe = self.r.pipeline(transaction=False)
        for k, record in records.items():
            pipe.set(self.key(spec, k), orjson.dumps(record, option=orjson.OPT_NON_STR_KEYS), px=spec.horizon_ms)
        pipe.execute()


def _coded(record: Record) -> Record:
    """The kept values' codes back to ints (JSON keys are text)."""
    for core in (record["c"], (record.get("u") or {}).get("s")):
        if core is not None:
            core["d"] = {f: {int(code): ms for code, ms in seen.items()} for f, seen in core["d"].items()}
    return record


@contextmanager
def _timed(wall: list[float], cpu: list[float]) -> Iterator[None]:
    """Wall time and this thread's CPU time (scoring threads excluded: torch runs 1 thread here)."""
    w, c = time.perf_counter(), time.thread_time()
    yield
    wall.append(time.perf_counter() - w)
    cpu.append(time.thread_time() - c)


def bundles(events: list[dict[str, Any]], spec: EntitySpec) -> dict[str, Bundle]:
    """Two small models (2 epochs: cost, not quality) without and with the entity features."""
    enriched = enrich_history(spec, events)
    return {"without": build_bundle(train(events, TrainConfig(epochs=2, seed=0))),
            "with": build_bundle(train(enriched, TrainConfig(epochs=2, seed=0), entity=spec))}


def cost(events: list[dict[str, Any]], spec: EntitySpec, models: dict[str, Bundle], batch: int,
         url: str) -> dict[str, float]:
    cut = int(0.75 * len(events)) // batch * batch
    client = redis.Redis.from_url(url)
    # fresh prefixes, not FLUSHDB: the Redis named may hold other things
    tag = uuid.uuid4().hex[:8]
    ref, new = (harness.run_prefix(url, f"bench-{name}-{tag}") for name in ("ref", "new"))
    stores: dict[str, Any] = {"reference": JsonRedisState(client, ref), "redis": RedisState(client, new),
                              "memory": InMemoryState()}
    enrichers: dict[str, Any] = {"reference": ReferenceEnricher(stores["reference"]),
                                 "redis": Enricher(stores["redis"]), "memory": Enricher(stores["memory"])}
    for start in range(0, cut, batch):
        for enricher in enrichers.values():
            enricher.enrich(spec, events[start:start + batch], [(0, start + j) for j in range(batch)])
    scorers = {name: Scorer(b) for name, b in models.items()}
    for name, scorer in scorers.items():  # TorchScript's first calls profile and optimise: not timed
        rows = enrich_history(spec, events[:batch]) if name == "with" else events[:batch]
        for _ in range(3):
            scores_of(scorer.errors(models[name].spec.transform(rows)[0]))
    names = ("without", "reference", "redis", "memory", "with_features")
    times: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[float]] = {k: [] for k in names}
    trips = stores["redis"].round_trips
    starts = range(cut, len(events) - batch + 1, batch)
    for start in starts:
        part, positions = events[start:start + batch], [(0, start + j) for j in range(batch)]
        with _timed(times["without"], cpu["without"]):
            scores_of(scorers["without"].errors(models["without"].spec.transform(part)[0]))
        outs = {}
        for name, enricher in enrichers.items():
            with _timed(times[name], cpu[name]):
                outs[name] = enricher.enrich(spec, part, positions)
        assert outs["redis"] == outs["reference"] == outs["memory"], "new enrichment differs from the reference"
        with _timed(times["with_features"], cpu["with_features"]):
            scores_of(scorers["with"].errors(models["with"].spec.transform(outs["redis"])[0]))
    out = {k: float(np.median(v) * 1000) for k, v in times.items()}
    out.update({f"cpu_{k}": float(np.median(v) * 1000) for k, v in cpu.items()})
    out.update(batches=float(len(starts)), batch=float(batch),
               round_trips=(stores["redis"].round_trips - trips) / max(1, len(starts)))
    for prefix, name in ((ref, "json"), (new, "binary")):
        keys = list(client.scan_iter(match=f"{prefix}:entity:*", count=1000))
        out[f"redis_bytes_{name}"] = float(np.mean([client.memory_usage(k) for k in keys]))
        out[f"value_bytes_{name}"] = float(np.mean([client.strlen(k) for k in keys]))
    records = stores["memory"].records
    out["entities"] = float(len(records))
    out["record_bytes_binary"] = float(np.mean([record_bytes(r, spec, k[1][0]) for k, r in records.items()]))
    return out
