"""``make demo``: the product's main job on local services, in two to three minutes.

``run_demo`` (the default, ``--profile handbook``) is the path fraud teams run: raw card events
(``HandbookSimulator``: compromised terminals, compromised cards, large amounts), per-account and
per-terminal history, and delayed labels (analyst verdicts after hours, chargebacks after days) on
the feedback topic. Five weeks are simulated; the Handbook's protocol (Le Borgne et al., ch. 5.2)
splits them: two weeks of history, a training week, a delay week, and a last week streamed live.
Two deployments (each its own Redis prefix, consumer group and alerts topic) read the same input
topic, so the figures are the same events with and without labels:

* **history**: autoencoder on the raw fields + account and terminal history;
* **labels**: + label-derived features (each terminal's and card's known frauds, point in time) and
  the supervised head (``model/supervised.py``), alerting when either part crosses its threshold.

Both workers first replay the four weeks of history (their entity and label state), then the last
week streams at ``rate`` events/s. The summary gives, per deployment, on the live week: alerts,
precision and recall against the simulator's ground truth, frauds caught per scenario, and for the
labelled model which part fired.

``run_velocity_demo`` (``--profile velocity``) is the former demo: the stateless path on the
velocity simulator, whose events carry precomputed history fields.
"""

from __future__ import annotations

import logging
import shutil
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from .entity import EntitySpec, enrich_history
from .errors import TrainingError
from .events_io import write_csv
from .feedback import Label, Verdicts, parse_label
from .kafka_util import read_all, wait_for_zero_lag
from .model.bundle import Bundle, build_bundle, save_bundle
from .model.supervised import HeadConfig, rows_for_head, train_head
from .model.train import TrainConfig, train
from .producer import EventProducer
from .settings import Settings
from .simulate import HANDBOOK_PATTERNS, HandbookSimulator, LabelDelays, Scenarios, Simulator
from .store import ControlPlane
from .topics import ensure_topics
from .worker import Worker

DAY_MS = 86_400_000


@dataclass(frozen=True)
class DemoConfig:
    """The simulated world and the training settings of ``run_demo``.

    ``cards`` and ``terminals``: the Handbook's world scaled down (its own: 5,000 and 10,000; the
    compromises per day scale with them, ``scenarios``); ``rate``: events/s of the live week;
    ``target_fpr``: the alert budget of each threshold on legit traffic (both parts)."""

    cards: int = 2000
    terminals: int = 4000
    rate: float = 2000.0
    epochs: int = 8
    target_fpr: float = 0.005
    seed: int = 0

    def scenarios(self) -> Scenarios:
        return Scenarios(terminals_per_day=max(1, round(2 * self.terminals / 10_000)),
                         cards_per_day=max(1, round(3 * self.cards / 5_000)))


def run_demo(settings: Settings, config: DemoConfig, workdir: Path, progress: Callable[[str], None]) -> int:
    """The realistic path end to end (module docstring). Writes to ``workdir``: ``summary.json``,
    the two bundles (``model-history``, ``model-labels``), and the simulated data to try the CLI by
    hand: ``events.jsonl`` (raw events), ``feedback.jsonl`` (the labels due by the end) and
    ``ground_truth.csv`` (``event_id,pattern``). Returns 0 when both workers drained every event,
    else 1. Raises what the services raise when Kafka or Redis cannot be reached."""
    run_id = f"demo{int(time.time())}{uuid.uuid4().hex[:4]}"  # topics, groups and prefixes of this run
    workdir.mkdir(parents=True, exist_ok=True)
    # kafka-python 3 warns of every slow task on its network thread; two workers and a trainer on a
    # small machine trip it constantly, and the warnings bury the demo's own lines
    logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)
    end = int(time.time() * 1000)
    train_from, live_from = end - 21 * DAY_MS, end - 7 * DAY_MS
    sim = HandbookSimulator(seed=config.seed, customers=config.cards, terminals=config.terminals, run_id=run_id,
                            scenarios=config.scenarios())
    n = config.cards * 2 * 35  # the Handbook's mean of U(0, 4) payments per card and day
    progress(f"[1/6] simulating 35 days of card payments ({config.cards:,} cards, {config.terminals:,} terminals, "
             f"about {n:,} events) and their delayed labels")
    world = sim.generate(n, now_ms=end, span_ms=35 * DAY_MS)
    events: list[dict[str, Any]] = world.events()
    patterns = world.patterns()
    due = world.label_columns(LabelDelays())[3] <= end  # the labels due by now (the rest come later)
    records = [r for r, d in zip(world.labels(), due.tolist(), strict=True) if d]
    labels = [lab for lab in map(parse_label, records) if isinstance(lab, Label)]
    times = world.timestamp
    live = times >= live_from
    training_week = (times >= train_from) & (times < train_from + 7 * DAY_MS)
    verdicts = Verdicts(labels)
    known = np.array([bool(verdicts.verdict(e["event_id"], live_from)) for e in events])  # as of the live week
    _write_jsonl(workdir / "events.jsonl", events)
    _write_jsonl(workdir / "feedback.jsonl", records)
    with open(workdir / "ground_truth.csv", "w") as fh:  # the simulator's truth, for evaluating by hand
        fh.write("event_id,pattern\n")
        fh.writelines(f"{e['event_id']},{p}\n" for e, p in zip(events, patterns, strict=True))
    progress(f"      {len(events):,} events, {int(world.fraud.sum()):,} frauds, {len(records):,} labels due by now "
             f"(chargebacks 1-7 days after each fraud, analyst verdicts 1-12 h after 5 % of events); "
             f"the live week: {int(live.sum()):,} events, {int(world.fraud[live].sum()):,} frauds")

    # 1 d and 7 d windows: a decayed window fills over about three times its length, and 35 days
    # fill a 7-day one by the training week (days 15-21: 88-95 %) but not a 30-day one (39-50 %, and
    # 62-69 % in the live week). With 30 d (before 2026-12-07) the live week's counts and sums ran
    # past the training week's and the history model alerted on 2.2-3.0 % of legit events against
    # its 0.5 % budget (a new-user trial: 985 alerts, precision 0.081); with 1 d and 7 d, 0.5-0.6 %.
    base: dict[str, Any] = dict(keys=("account_id", "terminal_id"), windows=(86_400, 7 * 86_400),
                                distinct_fields=())
    deployments = {"history": EntitySpec(**base),
                   "labels": EntitySpec(**base, label_keys=("terminal_id", "account_id"))}
    bundles: dict[str, Bundle] = {}
    for step, (name, spec) in enumerate(deployments.items()):
        progress(f"[2/6] training '{name}' ({step + 1}/2) on the training week (days 15-21), history point in time")
        rows = enrich_history(spec, events, labels=labels if spec.label_keys else ())
        normal = [r for r, t, k in zip(rows, training_week.tolist(), known.tolist(), strict=True) if t and not k]
        result = train(normal, TrainConfig(epochs=config.epochs, seed=config.seed, threshold_method="quantile",
                                           target_fpr=config.target_fpr), progress=progress, entity=spec)
        if spec.label_keys:  # the head: every training-week row, labelled as known at the start of the live week
            week = np.flatnonzero(training_week)
            x, y = rows_for_head(result.spec, result.schema, [rows[i] for i in week], known[week].tolist())
            try:
                result.head, result.calibration["supervised"] = train_head(
                    result.head, x, y, HeadConfig(target_fpr=config.target_fpr, seed=config.seed), progress)
            except TrainingError as exc:
                progress(f"      no supervised head ({exc})")
        bundles[name] = build_bundle(result, {"training_input": f"demo {run_id}: {name}"})
        save_bundle(bundles[name], workdir / f"model-{name}")

    topics = {"input": f"{run_id}.transactions", "feedback": f"{run_id}.feedback"}
    dep_settings = {name: settings.model_copy(update={
        "input_topic": topics["input"], "feedback_topic": topics["feedback"],
        "alerts_topic": f"{run_id}-{name}.alerts", "dlq_topic": f"{run_id}-{name}.dlq",
        "group_id": f"{run_id}-{name}", "redis_prefix": f"{settings.redis_prefix}:{run_id}-{name}"})
        for name in deployments}
    for name, bundle in bundles.items():
        s = dep_settings[name]
        ControlPlane.from_settings(s).publish(bundle, set_by="demo")
        head = f", head threshold {bundle.head_threshold:.3g}" if bundle.head_threshold is not None else ""
        progress(f"[3/6] published '{name}' = model {bundle.version} (threshold {bundle.threshold:.4g}{head}) "
                 f"under Redis prefix {s.redis_prefix}")

    history = int((~live).sum())
    progress(f"[4/6] the backlog: {history:,} events of four weeks → {topics['input']}, {len(records):,} labels → "
             f"{topics['feedback']}")
    ensure_topics(settings, [topics["input"], topics["feedback"]])
    with EventProducer(settings, topics["input"]) as producer:
        producer.send(events[:history])
        producer.send_records(topics["feedback"], records)
    workers = {name: Worker(s) for name, s in dep_settings.items()}
    threads = []
    for name, worker in workers.items():
        worker.start()
        threads.append(threading.Thread(target=worker.run, name=f"worker-{name}", daemon=True))
        threads[-1].start()
    started = time.monotonic()
    drained = all(wait_for_zero_lag(s, s.group_id, s.input_topic, timeout_s=600) for s in dep_settings.values())
    replay_s = time.monotonic() - started
    progress(f"      both workers replayed the backlog in {replay_s:.1f} s ({2 * history / max(replay_s, 1e-9):,.0f} "
             f"events/s together)")

    progress(f"[5/6] the live week: {len(events) - history:,} events at {config.rate:,.0f}/s")
    started = time.monotonic()
    with EventProducer(settings, topics["input"]) as producer:
        producer.send_paced(events[history:], None, config.rate, progress=progress)
    drained = drained and all(wait_for_zero_lag(s, s.group_id, s.input_topic, timeout_s=300)
                              for s in dep_settings.values())
    live_s = time.monotonic() - started
    for worker in workers.values():
        worker.stop()
    for thread in threads:
        thread.join(timeout=60)

    progress("[6/6] reading the alerts back")
    live_ids = {e["event_id"]: p for e, p, is_live in zip(events, patterns, live.tolist(), strict=True) if is_live}
    report: dict[str, Any] = {"run_id": run_id, "workdir": str(workdir), "events": len(events),
                              "live_events": len(live_ids),
                              "live_frauds": sum(p != "legit" for p in live_ids.values()), "labels": len(records),
                              "drained": drained, "replay_seconds": replay_s, "live_seconds": live_s,
                              "target_fpr": config.target_fpr, "topics": sorted({*topics.values(), *(
                                  t for s in dep_settings.values() for t in (s.alerts_topic, s.dlq_topic))}),
                              "deployments": {}}
    for name, s in dep_settings.items():
        alerts = {a["event_id"]: a for a in (orjson.loads(r.value) for r in read_all(s, s.alerts_topic))
                  if a["event_id"] in live_ids}
        report["deployments"][name] = _figures(bundles[name], alerts, live_ids, workers[name], s)
    print(_summary(report))
    (workdir / "summary.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    return 0 if drained else 1


def _figures(bundle: Bundle, alerts: dict[str, dict[str, Any]], live: dict[str, str], worker: Worker,
             settings: Settings) -> dict[str, Any]:
    """One deployment's live-week figures against the simulator's ground truth ``live`` (id → pattern)."""
    frauds = {i for i, p in live.items() if p != "legit"}
    caught = frauds & alerts.keys()
    fired = Counter("+".join(a.get("fired") or ["autoencoder"]) for a in alerts.values())
    fired_tp = Counter("+".join(a.get("fired") or ["autoencoder"]) for i, a in alerts.items() if i in frauds)
    return {
        "model_version": bundle.version, "threshold": bundle.threshold, "head_threshold": bundle.head_threshold,
        "redis_prefix": settings.redis_prefix, "alerts_topic": settings.alerts_topic,
        "alerts": len(alerts), "true_alerts": len(caught),
        # against the alert budget, which is a share of legit events (a trial read 0.65 % of all events as it)
        "legit_alert_rate": (len(alerts) - len(caught)) / max(1, len(live) - len(frauds)),
        "precision": len(caught) / len(alerts) if alerts else 0.0,
        "recall": len(caught) / len(frauds) if frauds else 0.0,
        "per_scenario": {p: [sum(live[i] == p for i in caught), sum(v == p for v in live.values())]
                         for p in HANDBOOK_PATTERNS if p != "legit"},
        "fired": {k: [fired_tp[k], v] for k, v in sorted(fired.items())},
        "worker_events": worker.stats.events,
        "example": next(iter(alerts.values()), None),
    }


def _summary(r: dict[str, Any]) -> str:
    lines = ["", "stream-detector demo summary (the live week; ground truth from the simulator)",
             f"  events          {r['events']:,} in 35 days; live week {r['live_events']:,} with {r['live_frauds']:,} "
             f"frauds; {r['labels']:,} labels on the feedback topic{'' if r['drained'] else '  (NOT fully drained!)'}",
             f"  time            backlog replay {r['replay_seconds']:.1f} s, live week {r['live_seconds']:.1f} s"]
    deps = r["deployments"]
    lines.append(f"  {'':<22}" + "".join(f"{name:>26}" for name in deps))
    def row(title: str, fn: Callable[[dict[str, Any]], str]) -> None:
        lines.append(f"  {title:<22}" + "".join(f"{fn(d):>26}" for d in deps.values()))
    row("model", lambda d: str(d["model_version"]))
    row("alerts", lambda d: f"{d['alerts']:,}")
    row(f"  legit (budget {r['target_fpr']:.1%})",
        lambda d: f"{d['alerts'] - d['true_alerts']:,} ({d['legit_alert_rate']:.2%})")
    row("precision", lambda d: f"{d['precision']:.3f}")
    row("recall", lambda d: f"{d['recall']:.3f}")
    for scenario in next(iter(deps.values()))["per_scenario"]:
        row(f"  {scenario}", partial(_caught, scenario))
    for name, d in deps.items():
        if d["head_threshold"] is not None:
            lines.append(f"  '{name}': which part fired (frauds/alerts): " + ", ".join(
                f"{k} {tp}/{n}" for k, (tp, n) in d["fired"].items()))
    for name, d in deps.items():
        if d["example"] is not None:
            keep = ("event_id", "score", "threshold", "fired", "probability", "head_threshold", "model_version",
                    "top_features", "head_top_features")
            lines.append(f"  example alert ({name}): " + orjson.dumps({k: d["example"].get(k) for k in keep}).decode())
    first = next(iter(deps.values()))
    sd = _command_name()
    lines += ["", "  try it by hand: the labelled model's features, label keys and alert budget, trained on the",
              "  demo's files (on every day and every label in the file, where the demo trains on the third week",
              "  with the labels known when the live week starts: its figures on the input differ from the demo's):",
              f"    {sd} train --input {r['workdir']}/events.jsonl --feedback {r['workdir']}/feedback.jsonl \\",
              "      --entity-key account_id --entity-key terminal_id --entity-windows 1d,7d \\",
              "      --entity-distinct '' --label-key terminal_id --label-key account_id --supervised \\",
              f"      --threshold-method quantile --target-fpr {r['target_fpr']} --out my-model",
              f"    SD_REDIS_PREFIX={first['redis_prefix']} {sd} console   # one deployment's console",
              "", f"  left in place for a look: topics {', '.join(r['topics'])}; Redis keys under "
              + ", ".join(f"{d['redis_prefix']}:*" for d in deps.values())
              + " (each run uses new names; on the demo's own local services, `make services-down` and "
              "removing .cache/services clear them — and everything else those services hold)"]
    return "\n".join(lines)


def _command_name() -> str:
    """How the user reaches this CLI from the current folder: ``.venv/bin/stream-detector`` after
    ``make install`` (not on PATH), plain ``stream-detector`` when it is on PATH."""
    argv0 = Path(sys.argv[0])
    if argv0.name == "stream-detector" and shutil.which("stream-detector") != str(argv0.resolve()):
        try:
            return str(argv0.resolve().relative_to(Path.cwd()))
        except ValueError:
            return str(argv0)
    return "stream-detector"


def _caught(scenario: str, deployment: dict[str, Any]) -> str:
    caught, total = deployment["per_scenario"][scenario]
    return f"{caught}/{total} caught"


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "wb") as fh:
        for row in rows:
            fh.write(orjson.dumps(row) + b"\n")


def run_velocity_demo(settings: Settings, duration_s: float, rate: float, fraud_rate: float, workdir: Path,
             progress: Callable[[str], None]) -> int:
    run_id = f"demo{int(time.time())}"
    # its own deployment, as the handbook demo's: a user's active model, topics and group are untouched
    settings = settings.model_copy(update={
        "input_topic": f"{run_id}-velocity.transactions", "alerts_topic": f"{run_id}-velocity.alerts",
        "dlq_topic": f"{run_id}-velocity.dlq", "group_id": f"{run_id}-velocity",
        "redis_prefix": f"{settings.redis_prefix}:{run_id}-velocity"})
    ensure_topics(settings, [settings.input_topic])
    workdir.mkdir(parents=True, exist_ok=True)
    progress(f"[1/5] simulating 20,000 normal transactions (7 days) → {workdir / 'train.csv'}")
    history, _ = Simulator(seed=1, run_id=f"{run_id}-train").batch(20_000, 0.0, span_ms=7 * 86_400_000)
    write_csv(workdir / "train.csv", history)

    progress("[2/5] training the autoencoder on normal traffic")
    result = train(history, TrainConfig(threshold_method="quantile", target_fpr=0.002, seed=0), progress=progress)
    bundle = build_bundle(result, {"training_input": "demo simulation"})
    save_bundle(bundle, workdir / "model")

    progress(f"[3/5] publishing model {bundle.version} (threshold {bundle.threshold:.4g}) under Redis prefix "
             f"{settings.redis_prefix}; topics {settings.input_topic} → {settings.alerts_topic}")
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
