"""CPU vs CUDA scoring, in one run on one machine (``python -m benchmarks cuda``).

Made for the GPU machine a session is sometimes lent (``--out FILE`` writes the markdown there;
``--write`` puts it in ``benchmarks/RESULTS.md``); it needs no Kafka or Redis, so it runs where
neither is installed. Everything is trained and generated in the run (seeded), and every CUDA
figure has its CPU baseline from the same process:

1. **Step 4 alone** — ``Scorer.errors`` (the worker's scorer: pinned host memory, an async copy,
   one TorchScript call, the copy back) in rows/s per batch size, for a stateless model and for a
   model with account + terminal entity features (wider input). Median of ``--repeats`` timed
   calls after warm-up calls (TorchScript profiles and optimises on its first calls).
2. **The worker end to end** on the in-memory transport and control plane
   (``transport/memory.py``, ``store/memory.py``: the same ``Worker.run_once`` loop as in
   production, no network): events/s draining a pre-filled topic, and per batch the time from
   poll to commit (p50, p99), stateless and with entity features (in-memory state), ``device=cpu``
   against ``device=cuda``. The CPU arms use ``--threads`` intra-op threads (default: one per
   core) and, for the worker, also its own default of one (``SD_TORCH_THREADS`` unset).

Every run checks that CUDA's per-feature errors equal the CPU's within float32 rounding
(max |Δ| relative to the row's largest error, and a count of non-finite errors), so a fast wrong answer cannot pass as a result.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch

from stream_detector.entity import enrich_history
from stream_detector.model.bundle import Bundle, build_bundle
from stream_detector.model.train import TrainConfig, train
from stream_detector.pipeline.score import Scorer
from stream_detector.settings import Settings
from stream_detector.store.memory import MemoryControl
from stream_detector.transport.memory import MemoryBroker, MemoryPublisher, MemorySource
from stream_detector.worker import Worker

from . import entity_speed
from .results import write_section

SPEC = entity_speed.SPEC  # keys account_id + terminal_id, windows 1h/1d/7d/30d, two distinct fields
BATCHES = (256, 1024, 4096, 16384)


def models(events: list[dict[str, Any]]) -> dict[str, Bundle]:
    """A stateless model and an entity model (2 epochs: speed is measured, not quality)."""
    enriched = enrich_history(SPEC, events)
    return {"stateless": build_bundle(train(events, TrainConfig(epochs=2, seed=0))),
            "entity": build_bundle(train(enriched, TrainConfig(epochs=2, seed=0), entity=SPEC))}


def step4(bundle: Bundle, rows: list[dict[str, Any]], devices: Sequence[str], repeats: int,
          threads: int) -> dict[Any, Any]:
    """rows/s of ``Scorer.errors`` per device and batch size (``threads`` intra-op threads), and the
    largest CPU/CUDA difference."""
    torch.set_num_threads(threads)
    x_all = bundle.spec.transform(rows)[0]
    out: dict[Any, Any] = {"width": int(x_all.shape[1])}
    reference: np.ndarray | None = None
    for device in devices:
        scorer = Scorer(bundle, device)
        for batch in BATCHES:
            x = np.ascontiguousarray(np.resize(x_all, (batch, x_all.shape[1])))
            for _ in range(10):  # TorchScript's profiling executor specialises per shape on early calls
                scorer.errors(x)
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                scorer.errors(x)  # returns host memory: the copy back is inside the timing
                times.append(time.perf_counter() - t)
            out[(device, batch)] = batch / statistics.median(times)
        errors = scorer.errors(x_all[:4096]).astype(np.float64)
        out[("nonfinite", device)] = int((~np.isfinite(errors)).sum())
        if reference is None:
            reference = errors
        else:  # relative to the largest error of the row: float32 rounding, not a wrong answer
            scale = np.maximum(np.abs(reference).max(axis=1, keepdims=True), 1e-12)
            out["max_rel_diff"] = float(np.nanmax(np.abs(errors - reference) / scale))
    return out


def drain(bundle: Bundle, payloads: list[bytes], device: str, batch_size: int, threads: int
          ) -> dict[str, float]:
    """One worker draining ``payloads`` from the in-memory broker: events/s and batch latency
    (``threads``: the worker's ``SD_TORCH_THREADS``)."""
    broker = MemoryBroker()
    for topic in ("tx", "alerts", "dlq"):
        broker.create_topic(topic)
    broker.produce("tx", payloads)
    control = MemoryControl()
    control.publish(bundle)
    values: dict[str, Any] = {"input_topic": "tx", "alerts_topic": "alerts", "dlq_topic": "dlq",
                              "group_id": f"g-{device}", "create_topics": False, "metrics_port": 0,
                              "score_feed_sample": 0, "worker_id": "w", "device": device, "batch_size": batch_size, "torch_threads": threads}
    settings = Settings(**values)
    worker = Worker(settings, control, MemorySource(broker, "tx", settings.group_id, batch_size),
                    MemoryPublisher(broker))
    steps: dict[str, float] = {}
    worker.steps.listeners.append(lambda step, seconds: steps.__setitem__(step, steps.get(step, 0.0) + seconds))
    worker.start()
    try:
        latencies: list[float] = []
        t0 = time.perf_counter()
        while worker.stats.events < len(payloads):
            t = time.perf_counter()
            if not worker.run_once():
                break
            latencies.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - t0
        events = worker.stats.events
    finally:
        worker.close()
    return {**{f"step:{k}": v / elapsed for k, v in steps.items()}, "events_per_s": events / elapsed, "p50_ms": 1000 * float(np.percentile(latencies, 50)),
            "p99_ms": 1000 * float(np.percentile(latencies, 99)), "events": float(events)}


def machine_line() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{gpu}; {cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, torch {torch.__version__}"
            f", numpy {np.__version__}")


def markdown(s4: dict[str, dict[Any, Any]], ends: dict[tuple[str, str], dict[str, float]],
             devices: Sequence[str], n_events: int, batch_size: int, threads: int) -> str:
    lines = [f"Machine: {machine_line()}.", "",
             "### Step 4 alone: `Scorer.errors`, rows/s (median of timed calls; host → device → host included;"
             f" torch intra-op threads {threads})",
             "", "| model (input width) | batch | " + " | ".join(devices)
             + (" | CUDA / CPU |" if len(devices) > 1 else " |"),
             "|---|---|" + "---|" * len(devices) + ("---|" if len(devices) > 1 else "")]
    for name, r in s4.items():
        for batch in BATCHES:
            cells = [f"{r[(d, batch)]:,.0f}" for d in devices]
            ratio = f" | {r[(devices[1], batch)] / r[(devices[0], batch)]:.1f}×" if len(devices) > 1 else ""
            lines.append(f"| {name} ({r['width']}) | {batch:,} | " + " | ".join(cells) + ratio + " |")
    diffs = ", ".join(f"{name} {r['max_rel_diff']:.1e}" for name, r in s4.items() if "max_rel_diff" in r)
    if diffs:
        lines += ["", "CUDA's per-feature errors against the CPU's over 4,096 rows, max |Δ| relative to the "
                  f"row's largest error: {diffs}; non-finite errors: "
                  + ", ".join(f"{name} {d} {r[('nonfinite', d)]}" for name, r in s4.items() for d in devices) + "."]
    lines += ["", f"### The worker end to end (in-memory transport and control plane; {n_events:,} events, "
              f"batches of {batch_size:,}; entity state in memory)", "",
              "| model | device | events/s | batch poll→commit p50 ms | p99 ms | share of wall time per step |",
              "|---|---|---|---|---|---|"]
    for (name, device), r in ends.items():
        shares = ", ".join(f"{k[5:]} {v:.0%}" for k, v in sorted(r.items(), key=lambda kv: -kv[1])
                           if k.startswith("step:") and v >= 0.01)
        lines.append(f"| {name} | {device} | {r['events_per_s']:,.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
                     f"| {shares} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks cuda", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=60_000, help="simulated events (default 60,000)")
    p.add_argument("--repeats", type=int, default=20, help="timed calls per batch size (default 20)")
    p.add_argument("--batch-size", type=int, default=8192, help="the worker's batch size (default 8,192)")
    p.add_argument("--devices", default="cpu,cuda", help="comma-separated torch devices (default cpu,cuda)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch intra-op threads of the CPU arms (default: one per core); the worker's CPU arm "
                        "also runs at its own default, 1")
    p.add_argument("--out", type=Path, help="write the markdown to this file")
    p.add_argument("--write", action="store_true", help="write the section of benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error("--threads must be at least 1")
    devices = [d for d in args.devices.split(",") if d]
    if any(d.startswith("cuda") for d in devices) and not torch.cuda.is_available():
        print("benchmarks cuda: no CUDA device here; run with --devices cpu, or on the GPU machine")
        return 2
    t0 = time.perf_counter()
    events = entity_speed.workload(args.events, max(200, args.events // 40), seed=0)
    bundles = models(events[: min(len(events), 20_000)])
    print(f"[{time.perf_counter() - t0:.0f}s] trained the stateless and entity models", flush=True)
    rows = {"stateless": events[:16384], "entity": enrich_history(SPEC, events)[:16384]}
    s4 = {name: step4(bundles[name], rows[name], devices, args.repeats, args.threads) for name in bundles}
    print(f"[{time.perf_counter() - t0:.0f}s] step 4 measured", flush=True)
    payloads = [orjson.dumps(e) for e in events]
    ends: dict[tuple[str, str], dict[str, float]] = {}
    arms = [(d, n) for d in devices for n in ([args.threads, 1] if d == "cpu" and args.threads != 1 else [args.threads])]
    for name in bundles:
        for device, threads in arms:
            label = f"{device} ({threads} thread{'s' if threads != 1 else ''})" if device == "cpu" else device
            drain(bundles[name], payloads[: 2 * args.batch_size], device, args.batch_size, threads)  # warm-up
            ends[(name, label)] = drain(bundles[name], payloads, device, args.batch_size, threads)
            print(f"[{time.perf_counter() - t0:.0f}s] {name} on {label}: "
                  f"{ends[(name, label)]['events_per_s']:,.0f} events/s", flush=True)
    body = markdown(s4, ends, devices, len(payloads), args.batch_size, args.threads)
    print(body)
    if args.out:
        args.out.write_text(body)
    if args.write:
        write_section("cuda", "CPU vs CUDA scoring (`python -m benchmarks cuda`)", body)
    return 0
