"""Soak: hours at a steady offered rate with the entity path on, one worker process per partition.

    python -m tests.soak --minutes 60 --rate 20000 [--partitions 4] [--window-s 300] [--report docs/RELIABILITY.md]

Starts its own Kafka + Redis (``deploy/services.sh`` on free ports), trains a small model with
entity features, publishes it, starts one ``stream-detector worker`` per partition (through
``tests/soak/gc_worker.py``, which records GC pauses), feeds raw simulated traffic at ``--rate``
and samples every 10 s: each worker's resident memory (``/proc``), the group's lag, and every alert's
event→alert latency (the alert record's Kafka timestamp minus the input record's, ``event_time_ms``).
The report: RSS slope (least squares after a warm-up, MB/hour), p99 latency per window, lag trend,
GC pauses — written into the report file's soak section, with the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from kafka import KafkaConsumer

from stream_detector.kafka_util import lag
from stream_detector.producer import EventProducer
from stream_detector.settings import Settings
from stream_detector.simulate import Simulator
from stream_detector.store import ControlPlane
from stream_detector.topics import ensure_topics
from tests.chaos.report import KEEP_MARKER
from tests.services import start_services

# Each account makes one event per ACCOUNT_PERIOD_S on average, in training and live alike (live
# traffic uses rate × period accounts), and the entity windows are short, so the live per-account
# history reaches the trained range within minutes instead of drifting for the whole run (a model
# that alerts on everything would measure the alerts topic, not the worker).
ACCOUNT_PERIOD_S = 30


def _bundle() -> Any:
    from stream_detector.entity import EntitySpec, enrich_history
    from stream_detector.model.bundle import build_bundle
    from stream_detector.model.train import TrainConfig, train

    spec = EntitySpec(windows=(60, 600), max_distinct=8)
    accounts, n = 300, 6000
    raw, _ = Simulator(seed=3, accounts=accounts, run_id="soak-train", raw=True).batch(
        n, 0.0, span_ms=n * ACCOUNT_PERIOD_S * 1000 // accounts)
    return build_bundle(train(enrich_history(spec, raw), TrainConfig(epochs=10, seed=0, threshold_method="quantile",
                                                                      target_fpr=0.001), entity=spec))


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class AlertLatency(threading.Thread):
    """Reads the alerts topic; keeps (alert time, latency ms) for every alert."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()
        self.consumer = KafkaConsumer(settings.alerts_topic, bootstrap_servers=settings.bootstrap_servers,
                                      auto_offset_reset="earliest", enable_auto_commit=False,
                                      group_id=f"soak-reader-{uuid.uuid4().hex[:6]}")

    def run(self) -> None:
        while not self.stop.is_set():
            for records in self.consumer.poll(timeout_ms=500).values():
                for r in records:
                    self.samples.append((r.timestamp / 1000, r.timestamp - orjson.loads(r.value)["event_time_ms"]))
        self.consumer.close()


def soak(minutes: float, rate: float, partitions: int, window_s: float, state: Path) -> dict[str, Any]:
    services = start_services(state / "services")
    tag = uuid.uuid4().hex[:8]
    settings = Settings(kafka_bootstrap=services.kafka, redis_url=services.redis, redis_prefix=f"soak-{tag}",
                        input_topic=f"tx-{tag}", alerts_topic=f"alerts-{tag}", dlq_topic=f"dlq-{tag}",
                        group_id=f"soak-{tag}", topic_partitions=partitions)
    gc_file = state / "gc.jsonl"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ControlPlane.from_settings(settings).publish(_bundle(), set_by="soak")
        ensure_topics(settings, [settings.input_topic, settings.alerts_topic, settings.dlq_topic])
        env = dict(os.environ, **{f"SD_{k.upper()}": str(v) for k, v in settings.model_dump().items()
                                  if isinstance(v, (str, int, float)) and not isinstance(v, bool)},
                   SD_SOAK_GC_FILE=str(gc_file))
        for i in range(partitions):
            with open(state / f"worker-{i}.log", "ab") as log:
                procs.append(subprocess.Popen([sys.executable, "-m", "tests.soak.gc_worker"],
                                              env=dict(env, SD_WORKER_ID=f"soak-{i}"), stdout=subprocess.DEVNULL,
                                              stderr=log))
        reader = AlertLatency(settings)
        reader.start()
        total = int(rate * minutes * 60)
        sent: list[int] = []

        def feed() -> None:
            with EventProducer(settings, settings.input_topic) as producer:
                sim = Simulator(seed=11, accounts=max(300, int(rate * ACCOUNT_PERIOD_S)), run_id=f"soak-{tag}",
                                raw=True)
                sent.append(producer.simulate(sim, total, rate, fraud_rate=0.002)[0])

        feeder = threading.Thread(target=feed, daemon=True)
        started = time.time()
        feeder.start()
        samples: list[dict[str, Any]] = []
        while feeder.is_alive():
            feeder.join(timeout=10.0)  # the sampling period
            samples.append({"t": time.time() - started, "rss": [_rss_mb(p.pid) for p in procs],
                            "lag": lag(settings, settings.group_id, settings.input_topic),
                            "dead": sum(p.poll() is not None for p in procs)})
        offered_s = time.time() - started
        deadline = time.time() + 120
        while lag(settings, settings.group_id, settings.input_topic) > 0 and time.time() < deadline:
            time.sleep(1.0)  # bounded drain after the offered load ended
        reader.stop.set()
        reader.join(timeout=30)
        return _summarise(samples, reader.samples, started, offered_s, sent[0] if sent else 0, window_s,
                          gc_file, partitions, rate, minutes)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        services.run("down")


def _summarise(samples: list[dict[str, Any]], latency: list[tuple[float, float]], started: float,
               offered_s: float, sent: int, window_s: float, gc_file: Path, partitions: int, rate: float,
               minutes: float) -> dict[str, Any]:
    t = np.array([s["t"] for s in samples])
    rss = np.array([sum(s["rss"]) for s in samples])
    warm = t >= min(120.0, t[-1] / 3) if len(t) else t
    slope = float(np.polyfit(t[warm] / 3600, rss[warm], 1)[0]) if warm.sum() >= 3 else float("nan")
    lags = np.array([s["lag"] for s in samples])
    lag_slope = float(np.polyfit(t[warm] / 60, lags[warm], 1)[0]) if warm.sum() >= 3 else float("nan")
    windows: list[dict[str, Any]] = []
    for lo in np.arange(0, offered_s, window_s):
        lat = [ms for at, ms in latency if lo <= at - started < lo + window_s]
        windows.append({"from_s": int(lo), "alerts": len(lat),
                        "p50_ms": round(float(np.percentile(lat, 50)), 1) if lat else None,
                        "p99_ms": round(float(np.percentile(lat, 99)), 1) if lat else None})
    pauses = [(g, s) for line in gc_file.read_text().splitlines() for g, s in json.loads(line)["pauses"]] \
        if gc_file.exists() else []
    secs = np.array([s for _, s in pauses]) * 1000 if pauses else np.zeros(1)
    return {"minutes": minutes, "rate_offered": rate, "alerts": len(latency), "partitions": partitions, "events_sent": sent,
            "achieved_rate": round(sent / offered_s, 1), "rss_start_mb": round(float(rss[0]), 1) if len(rss) else None,
            "rss_end_mb": round(float(rss[-1]), 1) if len(rss) else None, "rss_slope_mb_per_h": round(slope, 1),
            "lag_max": int(lags.max()) if len(lags) else None, "lag_end_of_offer": int(lags[-1]) if len(lags) else None,
            "lag_slope_per_min": round(lag_slope, 1), "workers_died": max((s["dead"] for s in samples), default=0),
            "windows": windows, "gc_collections": len(pauses),
            "gc_pause_p99_ms": round(float(np.percentile(secs, 99)), 2), "gc_pause_max_ms": round(float(secs.max()), 2),
            "gc_gen2": sum(1 for g, _ in pauses if g == 2), "samples": len(samples)}


def markdown(result: dict[str, Any], note: str) -> str:
    load = os.getloadavg()
    lines = [
        "## Soak (`make soak`, `tests/soak`)",
        "",
        f"_Run on {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, {platform.node()} ({os.cpu_count()} CPUs, "
        f"load average at the end {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}); {note}_",
        "",
        f"- {result['minutes']} min offered at {result['rate_offered']:.0f} events/s, entity path on, "
        f"{result['partitions']} partitions and one worker process per partition: {result['events_sent']} events "
        f"sent ({result['achieved_rate']} events/s achieved by the producer), {result['alerts']} alerts.",
        f"- Resident memory of all workers: {result['rss_start_mb']} MB → {result['rss_end_mb']} MB; slope after "
        f"warm-up {result['rss_slope_mb_per_h']} MB/hour.",
        f"- Lag: max {result['lag_max']}, at the end of the offered load {result['lag_end_of_offer']}, trend "
        f"{result['lag_slope_per_min']} events/minute. Workers that died: {result['workers_died']}.",
        f"- GC: {result['gc_collections']} collections ({result['gc_gen2']} of generation 2), pause p99 "
        f"{result['gc_pause_p99_ms']} ms, max {result['gc_pause_max_ms']} ms.",
        "",
        "| window from (s) | alerts | p50 event→alert (ms) | p99 event→alert (ms) |",
        "|---|---|---|---|",
        *[f"| {w['from_s']} | {w['alerts']} | {w['p50_ms']} | {w['p99_ms']} |" for w in result["windows"]],
        "",
    ]
    return "\n".join(lines)


def write_section(report: Path, text: str) -> None:
    """Replace the soak section (everything after the marker) of ``report``; keep the rest."""
    head = report.read_text().partition(KEEP_MARKER)[0].rstrip("\n") if report.exists() else ""
    report.write_text(f"{head}\n\n{KEEP_MARKER}\n{text}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak")
    parser.add_argument("--minutes", type=float, default=float(os.environ.get("SD_SOAK_MINUTES", "60")))
    parser.add_argument("--rate", type=float, default=float(os.environ.get("SD_SOAK_RATE", "20000")))
    parser.add_argument("--partitions", type=int, default=int(os.environ.get("SD_SOAK_PARTITIONS", "4")))
    parser.add_argument("--window-s", type=float, default=300.0)
    parser.add_argument("--report", default="")
    parser.add_argument("--note", default="")
    parser.add_argument("--state", default="")
    args = parser.parse_args(argv)
    import tempfile

    state = Path(args.state or tempfile.mkdtemp(prefix="soak-"))
    state.mkdir(parents=True, exist_ok=True)
    result = soak(args.minutes, args.rate, args.partitions, args.window_s, state)
    print(json.dumps(result, indent=1))
    if args.report:
        write_section(Path(args.report), markdown(result, args.note))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
