"""What a challenger in shadow costs a worker end to end (``python -m benchmarks shadow-worker``;
issue 18: "throughput cost of shadow scoring measured").

Starts its own Kafka + Redis (``deploy/services.sh``) unless ``--kafka/--redis`` name running ones.
Two workloads, each drained by one worker process per transport with the champion alone
(**baseline**) and with a challenger in shadow beside it (**shadow**), alternating baseline,
shadow, baseline, shadow … (``--repeats``), a fresh consumer group and Redis prefix per drain:

* **stateless**: the velocity simulator's padded events (~30 fields), autoencoder-only models
  (the champion and a challenger trained with another seed);
* **entity + labels + head**: ``HandbookSimulator`` raw card events over 35 days with their labels
  on a feedback topic; account and terminal history + label features + the supervised head (the
  model fraud teams run; the challenger: the same spec trained with another seed), entity and
  label state in Redis, empty at the start of each drain.

Events/s over the busy window, best of the repeats; the shadow drains' figures in Redis are
checked to cover every event. Results: the ``shadow-worker`` section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Sequence
from typing import Any

import orjson
import torch

from stream_detector.feedback import Label, parse_label
from stream_detector.model.bundle import Bundle
from stream_detector.store import ControlPlane
from stream_detector.topics import ensure_topics

from . import harness
from .labels_worker import models, workload
from .results import write_section
from .throughput import base_settings, drain, keys_of, say, trained_bundle, transports
from .workload import make_events


def measure(kafka: str, redis: str, tag: str, name: str, champion: Bundle, challenger: Bundle, total: int,
            repeats: int, **topics: str) -> dict[str, Any]:
    """Per transport: drains with the champion alone and with the challenger in shadow, alternating."""
    out: dict[str, Any] = {}
    for transport in transports():
        short = "kp" if transport == "kafka-python" else "rd"
        runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "shadow": []}
        for rep in range(repeats):
            for mode in runs:
                t = f"{name[:3]}-{short}-{mode[:2]}-{rep}-{tag}"
                s = base_settings(kafka, redis, t, transport=transport, shadow_topic=f"sw-shadow-{t}", **topics)
                control = ControlPlane.from_url(redis, s.redis_prefix)
                control.publish(champion, set_by="bench")
                if mode == "shadow":
                    ensure_topics(s, [s.shadow_topic])
                    control.start_shadow(challenger, "bench", min_events=total, max_seconds=86_400)
                r = drain(s, 1, total)
                if mode == "shadow":
                    figures = control.shadow_figures() or {}
                    r["shadow_events"] = int(figures.get("events", 0))
                    r["shadow_alerts"] = int(figures.get("challenger_alerts", 0))
                runs[mode].append(r)
                say(f"[{name} {transport}] {mode} drain {rep + 1}: {r['rate']:,.0f} events/s, {r['alerts']:,} alerts"
                    + (f", shadow-scored {r['shadow_events']:,} ({r['shadow_alerts']:,} would-be alerts)"
                       if mode == "shadow" else "") + f", drained={r['drained']}")
        out[transport] = {mode: {"best": max(rs, key=lambda r: float(r["rate"])), "rates": [r["rate"] for r in rs]}
                          for mode, rs in runs.items()}
    return out


def run(kafka: str, redis: str, cards: int, stateless_events: int, repeats: int) -> dict[str, Any]:
    torch.set_num_threads(1)
    tag = uuid.uuid4().hex[:8]
    ctx: dict[str, Any] = {"cards": cards, "stateless_events": stateless_events, "runs": {}}

    say(f"stateless: {stateless_events:,} events; training champion and challenger")
    events, _ = make_events(stateless_events, 5)
    champion, challenger = trained_bundle(0), trained_bundle(1)
    topic = f"sw-st-in-{tag}"
    ensure_topics(base_settings(kafka, redis, tag, input_topic=topic), [topic])
    harness.produce(kafka, topic, [orjson.dumps(e) for e in events], keys_of(events))
    ctx["runs"]["stateless"] = measure(kafka, redis, tag, "stateless", champion, challenger, len(events), repeats,
                                       input_topic=topic)

    events, records = workload(cards)
    labels = [lab for lab in map(parse_label, records) if isinstance(lab, Label)]
    say(f"entity + labels + head: {len(events):,} events, {len(labels):,} labels; training champion and challenger")
    # champion and challenger: the same spec (history + label features + head), seeds 0 and 1 (the
    # challenger is what a retraining of the champion produces)
    champion, challenger = (models(events, labels, seed)["autoencoder + head"] for seed in (0, 1))
    topic, feedback = f"sw-en-in-{tag}", f"sw-en-fb-{tag}"
    ensure_topics(base_settings(kafka, redis, tag, input_topic=topic), [topic, feedback])
    harness.produce(kafka, topic, [orjson.dumps(e) for e in events], [str(e["account_id"]).encode() for e in events])
    harness.produce(kafka, feedback, [orjson.dumps(r) for r in records], [str(r["event_id"]).encode() for r in records])
    ctx["entity_events"], ctx["labels"] = len(events), len(labels)
    ctx["runs"]["entity + labels + head"] = measure(kafka, redis, tag, "entity", champion, challenger, len(events),
                                                    repeats, input_topic=topic, feedback_topic=feedback)
    return ctx


def markdown(ctx: dict[str, Any]) -> str:
    lines = ["One worker process per drain, batches of 8,192, `torch_threads=1`, 4 partitions. **Stateless**: "
             f"{ctx['stateless_events']:,} padded velocity-simulator events (~30 fields), autoencoder-only models. "
             f"**Entity + labels + head**: {ctx['entity_events']:,} raw `HandbookSimulator` events ({ctx['cards']:,} "
             f"cards, 35 days), {ctx['labels']:,} labels on the feedback topic; account and terminal history + label "
             "features + the supervised head, entity and label state in Redis. The challenger has the champion's "
             "spec and another training seed. **shadow** = the same drain with the challenger in shadow: a second "
             "featurisation and TorchScript call per batch on the same decoded events and entity features, shadow "
             "records published with the batch, counts flushed to Redis in the background.", "",
             "| workload | transport | baseline events/s | with a challenger in shadow events/s | shadow / baseline "
             "| runs (baseline; shadow) | events shadow-scored | alerts; would-be alerts of the challenger |",
             "|---|---|---|---|---|---|---|---|"]
    ratios = []
    for workload_name, by_transport in ctx["runs"].items():
        for transport, r in by_transport.items():
            a, b = r["baseline"], r["shadow"]
            ratio = b["best"]["rate"] / a["best"]["rate"]
            ratios.append(ratio)
            runs = ", ".join(f"{x:,.0f}" for x in a["rates"]) + "; " + ", ".join(f"{x:,.0f}" for x in b["rates"])
            lines.append(f"| {workload_name} | {transport} | {a['best']['rate']:,.0f} | {b['best']['rate']:,.0f} | "
                         f"{ratio:.0%} | {runs} | {b['best'].get('shadow_events', 0):,} | "
                         f"{b['best']['alerts']:,}; {b['best'].get('shadow_alerts', 0):,} |")
    lines += ["", "Shadow scoring is on only while a challenger is named (a shadow period); the rest of the time "
              "the worker does exactly what the baseline does.", "", ctx["load"]]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks shadow-worker", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cards", type=int, default=1000, help="entity workload: cards (default 1000: 70,000 events)")
    p.add_argument("--stateless-events", type=int, default=200_000, help="stateless workload events (default 200000)")
    p.add_argument("--repeats", type=int, default=2, help="drains per mode, workload and transport (default 2)")
    p.add_argument("--kafka", default=None, help="use this running broker instead of starting one")
    p.add_argument("--redis", default=None, help="use this running Redis (with --kafka)")
    p.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = p.parse_args(argv)
    started = time.monotonic()
    ctx, load = harness.on_services(args.kafka, args.redis,
                                    lambda k, r: run(k, r, args.cards, args.stateless_events, args.repeats), say,
                                    "the broker and Redis")
    ctx["load"] = load
    body = markdown(ctx)
    print(body)
    say(f"done in {time.monotonic() - started:.0f}s")
    if not args.no_write:
        write_section("shadow-worker", "A challenger in shadow: what it costs a worker (real Kafka and Redis)", body)
    return 0
