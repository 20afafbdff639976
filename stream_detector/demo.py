"""``make demo``: the whole product on local services in about a minute.

Simulate a week of normal card traffic → train → publish → run a worker while live traffic with
injected fraud flows → read the alerts back → print events/s, alerts, precision and recall
against the injected labels (overall and per fraud pattern).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson

from .events_io import write_csv
from .kafka_util import read_all, wait_for_zero_lag
from .model.bundle import build_bundle, save_bundle
from .model.train import TrainConfig, train
from .producer import EventProducer
from .settings import Settings
from .simulate import Simulator
from .store import ControlPlane
from .worker import Worker


def run_demo(settings: Settings, duration_s: float, rate: float, fraud_rate: float, workdir: Path,
             progress: Callable[[str], None]) -> int:
    run_id = f"demo{int(time.time())}"
    workdir.mkdir(parents=True, exist_ok=True)
    progress(f"[1/5] simulating 20,000 normal transactions (7 days) → {workdir / 'train.csv'}")
    history, _ = Simulator(seed=1, run_id=f"{run_id}-train").batch(20_000, 0.0, span_ms=7 * 86_400_000)
    write_csv(workdir / "train.csv", history)

    progress("[2/5] training the autoencoder on normal traffic")
    result = train(history, TrainConfig(threshold_method="quantile", target_fpr=0.002, seed=0), progress=progress)
    bundle = build_bundle(result, {"training_input": "demo simulation"})
    save_bundle(bundle, workdir / "model")

    progress(f"[3/5] publishing model {bundle.version} (threshold {bundle.threshold:.4g}) to Redis")
    ControlPlane.from_settings(settings).publish(bundle, set_by="demo")

    progress(f"[4/5] worker running; {duration_s:.0f}s of live traffic at {rate:.0f}/s with {fraud_rate:.1%} fraud")
    worker = Worker(settings)
    worker.start()
    thread = threading.Thread(target=worker.run, name="worker", daemon=True)
    thread.start()
    sim = Simulator(seed=2, run_id=run_id)
    labels: dict[str, str] = {}
    started = time.monotonic()
    with EventProducer(settings, settings.input_topic) as producer:
        producer.simulate(sim, int(rate * duration_s), rate, fraud_rate, progress=progress, labels_out=labels)
    drained = wait_for_zero_lag(settings, settings.group_id, settings.input_topic, timeout_s=120)
    elapsed = time.monotonic() - started
    worker.stop()
    thread.join(timeout=60)

    progress("[5/5] reading the alerts back")
    alerts = [orjson.loads(r.value) for r in read_all(settings, settings.alerts_topic)]
    mine = {a["event_id"]: a for a in alerts if str(a["event_id"]).startswith(f"{run_id}-")}
    fraud_ids = {eid for eid, lab in labels.items() if lab != "legit"}
    tp = len(fraud_ids & mine.keys())
    precision = tp / len(mine) if mine else 0.0
    recall = tp / len(fraud_ids) if fraud_ids else 0.0
    per_pattern = Counter(labels[e] for e in fraud_ids & mine.keys())
    totals = Counter(lab for lab in labels.values() if lab != "legit")
    stats = worker.stats
    lines = [
        "",
        "stream-detector demo summary",
        f"  model               {bundle.version} (threshold {bundle.threshold:.4g})",
        f"  events              {len(labels)} sent, {stats.events} consumed by the worker"
        f"{'' if drained else ' (NOT fully drained!)'}",
        f"  throughput          {stats.events / max(elapsed, 1e-9):.0f} events/s over {elapsed:.1f}s "
        f"(offered {rate:.0f}/s)",
        f"  alerts              {len(mine)} ({len(mine) / max(1, len(labels)):.2%} of events)",
        f"  injected fraud      {len(fraud_ids)}",
        f"  precision           {precision:.3f}",
        f"  recall              {recall:.3f}",
    ]
    for pattern, total in sorted(totals.items()):
        lines.append(f"    {pattern:<26}{per_pattern[pattern]}/{total} caught")
    if mine:
        example = next(iter(mine.values()))
        lines.append("  example alert       " + orjson.dumps({k: example[k] for k in (
            "event_id", "score", "threshold", "threshold_version", "model_version", "top_features")}).decode())
    print("\n".join(lines))
    (workdir / "summary.json").write_bytes(orjson.dumps({
        "model_version": bundle.version, "events": len(labels), "alerts": len(mine), "fraud": len(fraud_ids),
        "precision": precision, "recall": recall, "events_per_s": stats.events / max(elapsed, 1e-9),
        "per_pattern": {p: [per_pattern[p], totals[p]] for p in totals}, "drained": drained,
    }, option=orjson.OPT_INDENT_2))
    return 0 if drained else 1
