"""What the supervised head costs a worker end to end (``python -m benchmarks labels-worker``;
issue 17: "worker throughput with the head ≥ 90 % of the autoencoder-only worker in the same run").

Starts its own Kafka + Redis (``deploy/services.sh``) unless ``--kafka/--redis`` name running ones.
Data: ``HandbookSimulator`` raw card events over 35 days and their delayed labels (the labels due by
the end are on a feedback topic). One autoencoder is trained with account and terminal history and
label features (terminal, account; windows 1d/7d/30d); the **baseline** bundle is that autoencoder
alone, the **head** bundle is the same autoencoder plus the supervised head trained on the labels
(so both compute the same features and the same reconstruction errors; only step 4's extra output
and the union decision differ). Per transport, one worker process drains the pre-produced topic with
each bundle, alternating baseline, head, baseline, head … (``--repeats``), a fresh consumer group and
Redis prefix per drain (entity and label state start empty; the label ingester's start-up catch-up
is before the first batch, outside the measured window). Events/s over the busy window, best of the
repeats. Results: the ``labels-worker`` section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
import torch

from stream_detector.entity import EntitySpec, enrich_history
from stream_detector.feedback import Label, Verdicts, parse_label
from stream_detector.model.bundle import Bundle, build_bundle
from stream_detector.model.supervised import HeadConfig, rows_for_head, train_head
from stream_detector.model.train import TrainConfig, train
from stream_detector.simulate import HandbookSimulator, Scenarios
from stream_detector.store import ControlPlane
from stream_detector.topics import ensure_topics

from . import harness
from .results import write_section
from .throughput import base_settings, drain, say, transports

DAY = 86_400_000
END = 1_790_000_000_000 // DAY * DAY
SPEC = EntitySpec(keys=("account_id", "terminal_id"), windows=(86_400, 7 * 86_400, 30 * 86_400), distinct_fields=(),
                  label_keys=("terminal_id", "account_id"))


def workload(cards: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """35 days of raw events of ``cards`` cards (twice as many terminals) and the label records due by the end."""
    sim = HandbookSimulator(seed=0, customers=cards, terminals=2 * cards, run_id="lw",
                            scenarios=Scenarios(terminals_per_day=max(1, round(cards / 2500)),
                                                cards_per_day=max(1, round(3 * cards / 5000))))
    world = sim.generate(cards * 70, now_ms=END, span_ms=35 * DAY)
    return world.events(), [r for r in world.labels() if int(str(r["labelled_at"])) <= END]


def models(events: list[dict[str, Any]], labels: list[Label], seed: int = 0) -> dict[str, Bundle]:
    """The autoencoder (trained on the fourth week's rows not known as fraud) alone, and with the head
    trained on that week's labels as known at the end; ``seed`` of both trainings."""
    rows = enrich_history(SPEC, events, labels=labels)
    verdicts = Verdicts(labels)
    t = np.array([e["timestamp"] for e in events])
    week = np.flatnonzero((t >= END - 14 * DAY) & (t < END - 7 * DAY))
    fraud = [bool(verdicts.verdict(events[i]["event_id"], END)) for i in week]
    normal = [rows[i] for i, f in zip(week.tolist(), fraud, strict=True) if not f]
    result = train(normal, TrainConfig(epochs=5, seed=seed, threshold_method="quantile", target_fpr=0.005),
                   entity=SPEC)
    baseline = build_bundle(result)
    x, y = rows_for_head(result.spec, result.schema, [rows[i] for i in week], fraud)
    result.head, result.calibration["supervised"] = train_head(result.head, x, y,
                                                               HeadConfig(target_fpr=0.005, seed=seed), say)
    return {"autoencoder": baseline, "autoencoder + head": build_bundle(result)}


def run(kafka: str, redis: str, cards: int, repeats: int) -> dict[str, Any]:
    torch.set_num_threads(1)
    tag = uuid.uuid4().hex[:8]
    events, records = workload(cards)
    labels = [lab for lab in map(parse_label, records) if isinstance(lab, Label)]
    say(f"{len(events):,} events, {len(labels):,} labels; training")
    bundles = models(events, labels)
    topic, feedback = f"lw-in-{tag}", f"lw-fb-{tag}"
    setup = base_settings(kafka, redis, tag, input_topic=topic, feedback_topic=feedback)
    ensure_topics(setup, [topic, feedback])
    say(f"producing {len(events):,} events and {len(records):,} labels")
    harness.produce(kafka, topic, [orjson.dumps(e) for e in events], [str(e["account_id"]).encode() for e in events])
    harness.produce(kafka, feedback, [orjson.dumps(r) for r in records], [str(r["event_id"]).encode() for r in records])
    out: dict[str, Any] = {"events": len(events), "labels": len(labels), "cards": cards,
                           "head": bundles["autoencoder + head"].supervised, "runs": {}}
    for transport in transports():
        short = "kp" if transport == "kafka-python" else "rd"
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in bundles}
        for rep in range(repeats):
            for i, (name, bundle) in enumerate(bundles.items()):
                s = base_settings(kafka, redis, f"{short}-{i}-{rep}-{tag}", input_topic=topic, feedback_topic=feedback,
                                  transport=transport)
                ControlPlane.from_url(redis, s.redis_prefix).publish(bundle, set_by="bench")
                r = drain(s, 1, len(events))
                runs[name].append(r)
                say(f"[{transport}] {name} drain {rep + 1}: {r['rate']:,.0f} events/s, {r['alerts']:,} alerts, "
                    f"drained={r['drained']}")
        out["runs"][transport] = {name: _best(rs) for name, rs in runs.items()}
    return out


def _best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"best": max(runs, key=lambda r: float(r["rate"])), "rates": [r["rate"] for r in runs]}


def markdown(ctx: dict[str, Any]) -> str:
    lines = [f"{ctx['events']:,} raw events (`HandbookSimulator`, {ctx['cards']:,} cards, 35 days) keyed by account on "
             f"4 partitions, {ctx['labels']:,} labels on the feedback topic; model: account and terminal history + "
             "label features (60 feature columns); one worker process, batches of 8,192, `torch_threads=1`, entity "
             "and label state in Redis (empty at the start of each drain). Both bundles share the autoencoder; the "
             "second adds the supervised head (one TorchScript call returns errors and probability).", "",
             "| transport | autoencoder events/s | autoencoder + head events/s | head / autoencoder | runs "
             "(autoencoder; + head) | alerts (autoencoder; + head) |", "|---|---|---|---|---|---|"]
    for transport, r in ctx["runs"].items():
        a, b = r["autoencoder"], r["autoencoder + head"]
        runs = ", ".join(f"{x:,.0f}" for x in a["rates"]) + "; " + ", ".join(f"{x:,.0f}" for x in b["rates"])
        lines.append(f"| {transport} | {a['best']['rate']:,.0f} | {b['best']['rate']:,.0f} | "
                     f"{b['best']['rate'] / a['best']['rate']:.0%} | {runs} | {a['best']['alerts']:,}; "
                     f"{b['best']['alerts']:,} |")
    ratios = [r["autoencoder + head"]["best"]["rate"] / r["autoencoder"]["best"]["rate"] for r in ctx["runs"].values()]
    lines += ["", f"Against issue 17's target (≥ 90 % of the autoencoder-only worker): "
              f"{', '.join(f'{x:.0%}' for x in ratios)} ({'met' if min(ratios) >= 0.9 else 'not met'}). "
              "The head adds alerts (the union rule), and alerts cost publish time.", "", ctx["load"]]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks labels-worker", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cards", type=int, default=2000, help="cards (default 2000: 140,000 events)")
    p.add_argument("--repeats", type=int, default=2, help="drains per bundle and transport (default 2)")
    p.add_argument("--kafka", default=None, help="use this running broker instead of starting one")
    p.add_argument("--redis", default=None, help="use this running Redis (with --kafka)")
    p.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = p.parse_args(argv)
    ctx, load = harness.on_services(args.kafka, args.redis, lambda k, r: run(k, r, args.cards, args.repeats), say,
                                    "the broker and Redis")
    ctx["load"] = load
    body = markdown(ctx)
    print(body)
    if not args.no_write:
        write_section("labels-worker", "The supervised head in the worker: real Kafka and Redis", body)
    return 0
