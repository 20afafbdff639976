"""One worker end to end with and without entity features, on real Kafka and Redis, in one run
(``python -m benchmarks entity-worker``; issue 16's "≥ 60 % of the same worker without entity
features, on both transports; p99 event→alert at 20k events/s offered").

Starts its own Kafka + Redis (``deploy/services.sh``) unless ``--kafka/--redis`` name running
ones. The workload is raw simulated card transactions with a terminal per event
(``entity_speed.workload``: no precomputed history fields), keyed by account, on a 4-partition
topic. Two models are trained on the same events: *stateless* (the raw fields) and *entity*
(plus account and terminal history: windows 1h/1d/7d/30d, distinct merchant category and
country; state in Redis). Then, per transport:

* **drain**: one worker process drains the pre-produced topic with each model (the stateless
  one's Redis threshold set so that it flags the entity model's share of the events: both publish
  the same number of alerts), the entity model a second time with the write-behind window written
  on the worker's thread (``SD_ENTITY_FLUSH_ASYNC=false``: the worker before 2026-12-06), and a
  third as it ran before the replay log (*entity, batch commits*: ``SD_ENTITY_REPLAY_LOG=false``,
  every record read and written and the offsets committed with every batch; the default keeps the
  accounts in a write-behind window and logs the terminals' features: ``entity/replay_log.py``;
  the one worker holds every partition, so the terminals are in its window too, and a fourth
  variant, *entity, terminals every batch*, turns that off: ``SD_ENTITY_SOLE_OWNER=false``),
  alternating the variants (``--repeats``), a fresh consumer group and Redis prefix
  per run (entity state starts empty, as for a new deployment); events/s over the busy window,
  best of the repeats, and the per-step wall time of the entity runs;
* **latency**: one worker process and a paced producer process at each offered rate, with each
  entity variant and, as the baseline in the same run, the stateless one (its Redis threshold set
  so that it flags the same share of the events as the entity model, for a sample of the same
  size); event→alert latency (alert Kafka timestamp − input produce timestamp). A run sends each
  event once, so it lasts at most events / rate; a rate gets as many runs as ``--seconds`` of
  offered load need (``runs_for``: three at 20,000/s), their alerts pooled. Each run then offers
  ``TAIL_S`` more of untimed events (``tail``), so that the timed ones end under load, not at the
  stream's end, where the alignment holds each partition's newest records for ``SD_ALIGN_IDLE_MS``.

``--alert-share``: both models' thresholds flag that share of the events instead (an alert budget;
the entity model's own threshold flags ~5 % of this workload, and each alert's explanation costs).

Results: the ``entity-worker`` section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import math
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
import torch

from stream_detector.entity import enrich_history
from stream_detector.model.bundle import Bundle, build_bundle
from stream_detector.model.train import TrainConfig, train
from stream_detector.offline import score_events
from stream_detector.store import ControlPlane
from stream_detector.topics import ensure_topics

from . import entity_speed, harness
from .results import write_section
from .throughput import base_settings, drain, latency, pooled, say, transports

SPEC = entity_speed.SPEC
SYNC = "entity, window written on the worker's thread"
EVERY = "entity, terminals every batch"
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {  # name → (model, settings)
    "stateless": ("stateless", {}), "entity": ("entity", {}), EVERY: ("entity", {"entity_sole_owner": False}),
    SYNC: ("entity", {"entity_flush_async": False}), "entity, batch commits": ("entity", {"entity_replay_log": False})}
CODES = {"stateless": "", "entity": "", EVERY: "-ev", SYNC: "-sync", "entity, batch commits": "-pb"}  # run tags
TWO_STAGES = "entity, two stages (1 + 1)"  # latency only (--two-stages): a stage-1 and a stage-2 worker process
STEPS = ("source", "decode", "enrich", "features", "explain", "publish", "flush", "commit")  # flush: write-behind
# (entity/behind.py); explain: the alerts' why (Scorer.why, occlusion), on the worker's thread since 2026-12-07


def models(events: list[dict[str, Any]]) -> dict[str, Bundle]:
    """Both models on the same events (quantile threshold at 0.2 %: some alerts to time)."""
    config = TrainConfig(epochs=5, seed=0, threshold_method="quantile", target_fpr=0.002)
    return {"stateless": build_bundle(train(events, config)),
            "entity": build_bundle(train(enrich_history(SPEC, events), config, entity=SPEC))}


TAIL_S = 1.0  # untimed load offered after each latency run's events (``tail``)


def tail(events: list[dict[str, Any]], count: int) -> tuple[list[bytes], list[bytes | None]]:
    """``count`` untimed events to offer after ``events`` (``throughput.latency``'s ``tail``): the
    first ``count`` events again under new ids (``tail-N``), moved in event time to follow the last
    event at the workload's own spacing, so every partition gets records newer than the timed
    ones and the alignment releases those under load, not by its idle rule at the stream's end."""
    picked = events[:count]
    times = np.array([e["timestamp"] for e in events], dtype=np.int64)
    gap = int(np.median(np.diff(times))) if times.size > 1 else 1
    shift = int(times.max()) + gap - int(picked[0]["timestamp"])
    moved = [{**e, "event_id": f"tail-{i}", "timestamp": int(e["timestamp"]) + shift} for i, e in enumerate(picked)]
    return [orjson.dumps(e) for e in moved], [str(e["account_id"]).encode() for e in moved]


def runs_for(seconds: float, run_s: float) -> int:
    """Latency runs of at most ``run_s`` seconds each (the backlog sent once at the rate) that it
    takes to cover ``seconds`` of offered load: 1 at 5,000/s and 3 at 20,000/s for 100,000 events
    and 15 s. One 5-s run's p99 is the top 1 % of ~4 s of alerts, which one pause of the worker
    moves: five such runs before 2026-12-05 spread 62-243 ms."""
    return max(1, math.ceil(seconds / run_s - 1e-9))


def run(kafka: str, redis: str, n: int, repeats: int, rates: Sequence[int], seconds: float,
        accounts: int | None = None, two_stages: bool = False, alert_share: float | None = None) -> dict[str, Any]:
    torch.set_num_threads(1)
    tag = uuid.uuid4().hex[:8]
    events = entity_speed.workload(n, accounts or max(500, n // 100), seed=0)
    timed = n  # events/s over the first n events: the backlog's tail waits for the alignment's idle release
    n = len(events)  # the workload adds its injected frauds: every event is drained (a drain stopping at the
    # requested count left the last ones unread, and the kafka-python drains ended "drained=False")
    say(f"training both models on {min(n, 40_000):,} events")
    bundles = models(events[:40_000])
    raw = [orjson.dumps(e) for e in events]
    keys: list[bytes | None] = [str(e["account_id"]).encode() for e in events]
    topic = f"ew-in-{tag}"
    setup = base_settings(kafka, redis, tag, input_topic=topic)
    ensure_topics(setup, [topic])
    say(f"producing {n:,} events")
    harness.produce(kafka, topic, raw, keys)
    scores = {name: score_events(b, events).scores for name, b in bundles.items()}
    offline = {name: int((scores[name] > b.threshold).sum()) for name, b in bundles.items()}
    # the stateless baseline (drains and latency) flags the entity model's share of events: the same
    # alerts to build and publish (drains before 2026-12-02 evening compared 247 alerts with 5,402)
    share = offline["entity"] / n
    entity_threshold = None  # --alert-share: both models flag that share of the workload's events
    if alert_share is not None:
        share = alert_share
        entity_threshold = float(np.quantile(scores["entity"], 1.0 - share))
        offline = {name: int((scores[name] > float(np.quantile(scores[name], 1.0 - share))).sum()) for name in scores}
    baseline_threshold = float(np.quantile(scores["stateless"], 1.0 - share))
    out: dict[str, Any] = {"offline_alerts": offline, "events": n, "alert_share": alert_share, "seconds": seconds, "timed": timed, "entities": {"accounts": len({e["account_id"] for e in events}),
                                                     "terminals": len({e["terminal_id"] for e in events})},
                           "bytes": sum(map(len, raw)) / n, "runs": {}}
    for transport in transports():
        short = "kp" if transport == "kafka-python" else "rd"
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in VARIANTS}
        for rep in range(repeats):
            for name, (model, overrides) in VARIANTS.items():
                bundle = bundles[model]
                run_tag = f"{short}-{model}{CODES[name]}-{rep}-{tag}"
                s = base_settings(kafka, redis, run_tag, input_topic=topic, transport=transport, **overrides)
                control = ControlPlane.from_url(redis, s.redis_prefix)
                control.publish(bundle, set_by="bench")
                if name == "stateless":  # the same alerts to publish: the ratio compares entity features alone
                    control.set_threshold(baseline_threshold, bundle.version, "bench",
                                          "drain baseline: the entity model's alert share")
                elif entity_threshold is not None:
                    control.set_threshold(entity_threshold, bundle.version, "bench", "--alert-share")
                r = drain(s, 1, n, rate_until=timed)
                runs[name].append(r)
                say(f"[{transport}] {name} drain {rep + 1}: {r['rate']:,.0f} events/s, drained={r['drained']}")
        result: dict[str, Any] = {name: max(rs, key=lambda r: r["rate"]) for name, rs in runs.items() if rs}
        result["all"] = {name: [r["rate"] for r in rs] for name, rs in runs.items()}
        result["latency"] = []
        timed_variants = dict(VARIANTS)
        if two_stages:
            timed_variants[TWO_STAGES] = ("entity", {"repartition_key": "terminal_id"})
        for rate in rates:
            # every event once per run (sent again, the history would run backwards in event time), so
            # a run lasts at most n / rate: as many runs as --seconds needs, their alerts pooled
            each_s = min(seconds, n / rate)
            after = tail(events[:min(n, int(rate * each_s))], int(rate * TAIL_S))
            for name, (model, overrides) in timed_variants.items():
                stages = 1 if name == TWO_STAGES else 0
                suffix = "-2s" if stages else CODES[name]
                laps = []
                for lap in range(runs_for(seconds, n / rate)):
                    run_tag = f"{short}-lat-{model}{suffix}-{rate}-{lap}-{tag}"
                    s = base_settings(kafka, redis, run_tag, transport=transport, **overrides)
                    control = ControlPlane.from_url(redis, s.redis_prefix)
                    control.publish(bundles[model], set_by="bench")
                    if name == "stateless":
                        control.set_threshold(baseline_threshold, bundles[model].version, "bench",
                                              "latency baseline: the entity model's alert share")
                    elif entity_threshold is not None:
                        control.set_threshold(entity_threshold, bundles[model].version, "bench", "--alert-share")
                    laps.append(latency(s, raw, keys, rate, each_s, append_time=True, stages=stages, tail=after))
                r = dict(pooled(laps), model=name, seconds=each_s)
                del r["timed_ms"]
                result["latency"].append(r)
                say(f"[{transport}] {name} model at {rate:,}/s offered: achieved {r['achieved']:,.0f}/s, "
                    f"p50 {r['p50']:.0f} p99 {r['p99']:.0f} ms ({r['samples']} alerts of {len(laps)} run(s) of "
                    f"{each_s:.0f} s; p99 per run {', '.join(f'{x:.0f}' for x in r['p99_runs'])}; broker → alert "
                    f"p99 {r['broker_p99']:.0f} ms), drained={r['drained']}")
        out["runs"][transport] = result
    return out


def markdown(ctx: dict[str, Any]) -> str:
    lines = [f"{ctx['events']:,} raw events ({ctx['bytes']:.0f} bytes each; {ctx['entities']['accounts']:,} accounts, "
             f"{ctx['entities']['terminals']:,} terminals), keyed by account on 4 partitions; one worker process, "
             "batches of 8,192, `torch_threads=1`; entity state in Redis (empty at the start of each drain). "
             f"Events/s over the first {ctx['timed']:,} events of each drain; every event is drained (the "
             "alignment releases a backlog's last events once no partition has had a newer one for "
             "`SD_ALIGN_IDLE_MS`, 2 s: the end of a finite backlog, not throughput).", "",
             "*entity* is the default (the accounts in a write-behind window committed every `SD_ENTITY_FLUSH_MS`, "
             "the window's write on a writer thread while the next batches are computed; the one worker holds every "
             "partition, so the terminals are in its window too, their features in the replay log, written by the "
             f"window's write before the records: `SD_ENTITY_SOLE_OWNER`); *{SYNC}* the same with "
             "`SD_ENTITY_FLUSH_ASYNC=false` (the batch in hand waits for the window's write: the worker before "
             "2026-12-06); *entity, batch commits* the same model with `SD_ENTITY_REPLAY_LOG=false` (every record "
             "read and written, and the offsets committed, with every batch: the worker before the replay log); "
             f"*{EVERY}* the default with `SD_ENTITY_SOLE_OWNER=false` (the terminals read, logged and written with "
             "every batch, as a worker holding some of the partitions does; the default before 2026-12-07: a worker "
             "holding every partition keeps them in its window too).",
             "", "| transport | variant | events/s | / stateless | runs | alerts |", "|---|---|---|---|---|---|"]
    drained = {t: r for t, r in ctx["runs"].items() if "stateless" in r}  # none with --repeats 0
    for transport, r in drained.items():
        base = r["stateless"]["rate"]
        for name in VARIANTS:
            rate = r[name]["rate"]
            lines.append(f"| {transport} | {name} | {rate:,.0f} | {rate / base:.0%} | "
                         f"{', '.join(f'{x:,.0f}' for x in r['all'][name])} | {r[name]['alerts']:,} |")
    lines += ["", "Where the entity worker's time goes (its best drain; wall seconds per step on the worker's thread):",
              "", "| transport | variant | " + " | ".join(STEPS) + " | scoring thread |",
              "|---|---|" + "---|" * (len(STEPS) + 1)]
    for transport, r in drained.items():
        for name in [v for v in VARIANTS if v != "stateless"]:
            st = r[name]["stage_s"]
            lines.append(f"| {transport} | {name} | " + " | ".join(f"{st.get(k, 0.0):.2f}" for k in STEPS)
                         + f" | {st.get('scoring thread', 0.0):.2f} |")
    thresholds = ("Each model's threshold is its training quantile at 0.2 %; in the drains and the latency runs the "
                  "stateless model's threshold is set to flag the entity model's share of the events, so both publish "
                  "about as many alerts.")
    if ctx.get("alert_share") is not None:
        thresholds = (f"`--alert-share {ctx['alert_share']}`: in the drains and the latency runs both models' "
                      f"thresholds are set to flag {ctx['alert_share']:.1%} of the workload's events (offline), an "
                      "alert budget; each model's own training quantile at 0.2 % flags ~5 % of this workload.")
    lines += ["", f"Offline scoring of the same events in file order: {ctx['offline_alerts']['stateless']:,} alerts "
              f"(stateless), {ctx['offline_alerts']['entity']:,} (entity). {thresholds}",
              "", "Event → alert latency (one worker process, paced producer process; each event offered once per "
              "run, so a run lasts at most events / rate, and a rate gets as many runs, each with a fresh group, "
              f"topic and Redis prefix, as {ctx.get('seconds', 15):.0f} s of offered load need; the percentiles are "
              "those of the runs' alerts together, and *p99 per run* each run's own): the alert's Kafka timestamp − the time the producer handed the "
              f"event to its client. After its timed events each run offers {TAIL_S:.0f} s more of untimed ones "
              "(`tail`: ids `tail-N`, event times after the timed ones), so the timed events end under load: "
              "without them the stream's last records wait for the alignment's idle rule (`SD_ALIGN_IDLE_MS`, 2 s) at "
              "the stream's end, a lull rather than the offered load, which put runs of the same code at p99 49-381 ms "
              "by how many of their alerts fell in that last fetch (runs before 2026-12-06 21:00 UTC had no tail). The input topic stamps records with the broker's append time "
              "(`LogAppendTime`), which splits it: broker → alert (the worker's part) and produce → broker (the "
              "load generator's and the broker's queueing, on the two cores the worker shares). The stateless "
              "model is the baseline of the same run, its threshold set to flag the entity model's share of the "
              "events:", "",
              "| transport | model | offered/s | runs × s | achieved/s | alerts timed | p50 ms | p95 ms | p99 ms "
              "| p99 per run ms | broker → alert p50 / p99 ms | produce → broker p50 / p99 ms | lag drained |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for transport, r in ctx["runs"].items():
        for x in r["latency"]:
            split = (f"{x['broker_p50']:.0f} / {x['broker_p99']:.0f} | {x['producer_p50']:.0f} / "
                     f"{x['producer_p99']:.0f}" if "broker_p50" in x else "n/a | n/a")
            per_run = x.get("p99_runs", [x["p99"]])
            lines.append(f"| {transport} | {x.get('model', 'entity')} | {x['offered']:,} | {len(per_run)} × "
                         f"{x.get('seconds', 0):.0f} | {x['achieved']:,.0f} | {x['samples']:,} | {x['p50']:.0f} "
                         f"| {x['p95']:.0f} | {x['p99']:.0f} | {', '.join(f'{v:.0f}' for v in per_run)} | {split} "
                         f"| {x['drained']} |")
    steps = STEPS
    lines += ["", "The latency runs per batch (the worker takes what has arrived, so the batch size is set by the "
              "offered load and the time the previous batch took): mean events per batch, and the worker thread's "
              "wall ms per batch by step (`source` includes waiting for records to arrive; `busy`: the whole "
              "loop, all steps):", "",
              "| transport | model | offered/s | batches | events per batch | " + " | ".join(steps)
              + " | scoring thread | busy |", "|---|---|---|---|---|" + "---|" * (len(steps) + 2)]
    for transport, r in ctx["runs"].items():
        for x in r["latency"]:
            n, st = max(1, x.get("batches", 0)), x.get("stage_s", {})
            lines.append(f"| {transport} | {x.get('model', 'entity')} | {x['offered']:,} | {x.get('batches', 0):,} "
                         f"| {x.get('events', 0) / n:,.0f} | "
                         + " | ".join(f"{1000 * st.get(k, 0.0) / n:.1f}" for k in steps)
                         + f" | {1000 * st.get('scoring thread', 0.0) / n:.1f} | {1000 * st.get('busy', 0.0) / n:.1f} |")
    lines += ["", ctx["load"]]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks entity-worker", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=100_000, help="pre-produced events (default 100,000: the models train on the "
                   "first 40,000, and a longer file runs its history windows past the training span)")
    p.add_argument("--repeats", type=int, default=2, help="drains per model and transport (default 2)")
    p.add_argument("--rates", default="5000,20000", help="offered loads for the latency runs (default 5000,20000)")
    p.add_argument("--seconds", type=float, default=15.0, help="seconds of offered load per latency run")
    p.add_argument("--accounts", type=int, default=None,
                   help="accounts in the workload (default events / 100, at least 500; terminals: half as many): "
                        "more accounts, more entities touched per batch (the state's cost is per entity)")
    p.add_argument("--section", default="entity-worker",
                   help="RESULTS.md section to write (default entity-worker; e.g. entity-worker-many for a run "
                        "with --accounts)")
    p.add_argument("--kafka", default=None, help="use this running broker instead of starting one")
    p.add_argument("--redis", default=None, help="use this running Redis (with --kafka)")
    p.add_argument("--two-stages", action="store_true",
                   help="also time the entity model in two stages (SD_STAGE: one stage-1 and one stage-2 worker "
                        "process, through a repartition topic keyed by terminal_id) in the latency runs")
    p.add_argument("--alert-share", type=float, default=None,
                   help="set both models' thresholds to flag this share of the workload's events (e.g. 0.005: an "
                        "alert budget of 0.5 %%, what a fraud team runs); default: the entity model's training "
                        "threshold, which flags ~5 %% of this workload (its history windows fill past the training "
                        "span), and the stateless model set to the same share")
    p.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = p.parse_args(argv)
    rates = [int(x) for x in args.rates.split(",") if x]
    ctx, load = harness.on_services(
        args.kafka, args.redis, lambda kafka, redis: run(kafka, redis, args.events, args.repeats, rates, args.seconds,
                                                         args.accounts, args.two_stages, args.alert_share), say,
        "the broker, Redis and the load producer")
    ctx["load"] = load
    body = markdown(ctx)
    print(body)
    if not args.no_write:
        title = "Entity features end to end: one worker, real Kafka and Redis"
        if args.section != "entity-worker":
            title += f" ({ctx['entities']['accounts']:,} accounts)"
        write_section(args.section, title, body)
    return 0
