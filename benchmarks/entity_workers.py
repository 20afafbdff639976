"""Four workers with account and terminal history on real Kafka and Redis: events/s, agreement
with offline scoring, lost updates (``python -m benchmarks entity-workers``; issue 16's "four
workers on four partitions with terminal features: events/s, and zero lost updates").

Starts its own Kafka + Redis (``deploy/services.sh``) unless ``--kafka/--redis`` name running
ones. The workload is ``entity_worker``'s (raw card transactions with a terminal per event, keyed
by account, 4 partitions) with its event times spread at ``--density`` events per second of
event time, as a replayed stretch of live traffic would be. One model with account and terminal
history (state in Redis). Each drain is a fresh consumer group and Redis prefix (state starts
empty):

* **1 worker, aligned**: the exact reference (one worker orders its four partitions itself);
* **4 workers, no alignment** (``SD_ALIGN_EVENT_TIME=off``): the order across workers is their pace;
* **4 workers, aligned, grace G** (``SD_ALIGN_PEER_GRACE_MS``, each value of ``--graces``): shared
  partition heads in Redis;
* **k + k workers, two stages** (each value of ``--stages``; ``SD_STAGE``): k stage-1 workers
  forward the backlog with the account features through a repartition topic of 12 buckets, k
  stage-2 workers compute the terminal history; both stages at once, and stage 2 started only
  once stage 1 has forwarded everything.

Per drain: events/s over the busy window, the alerted set's agreement with offline scoring of
the time-ordered file (|A∩B| / |A∪B|), the terminal records equal to offline enrichment's
final state (bit for bit; a lost update or an out-of-order application changes a record), and the
terminals whose records counted every event (``events_counted``: a lost update or a double
application changes the count, an out-of-order application does not).
Results: the ``entity-workers`` section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import math
import time
import uuid
from collections.abc import Sequence
from typing import Any

import orjson
import redis as redis_lib
import torch

from stream_detector.entity import InMemoryState, enrich_history
from stream_detector.entity.binary import decode
from stream_detector.entity.state import RedisState
from stream_detector.kafka_util import read_all, wait_for_zero_lag
from stream_detector.offline import score_events
from stream_detector.pipeline.repartition import rest_spec
from stream_detector.store import ControlPlane
from stream_detector.topics import ensure_topics

from . import entity_speed, harness
from .entity_worker import models
from .results import write_section
from .throughput import base_settings, say

SPEC = entity_speed.SPEC


def replay(settings: Any, k: int, n: int) -> dict[str, Any]:
    """``k`` worker processes replay the backlog until the group's lag is 0 (re-deliveries after
    rebalances are not progress, so no event count ends it); events/s = backlog / wall time from
    the first batch handled to lag 0, rebalances included, as an operator would see it. The
    workers join the group with their partitions paused and start together (``WorkerPool(gate=
    True)``): before 2026-12-04 they started as they joined, and on this backlog the first one
    drained 101,000 of the 101,002 events alone before the others had partitions, so the
    "4 workers" rows measured one."""
    pool = harness.WorkerPool(settings, k, 1 << 60, idle_stop_s=1e9, deadline_s=900, gate=True)
    pool.start()
    pool.go.set()
    drained = wait_for_zero_lag(settings, settings.group_id, settings.input_topic, timeout_s=900)
    ended = time.time()
    pool.done.set()
    reports = pool.finish()
    first = min((r.timeline[0][0] for r in reports if r.timeline), default=ended)
    return {"rate": n / max(ended - first, 1e-9), "wall": ended - first, "drained": drained,
            "handled": sum(r.events for r in reports),
            "split": sorted((r.events for r in reports), reverse=True)}


def replay_stages(settings: Any, k1: int, k2: int, n: int, after: bool = False) -> dict[str, Any]:
    """Two stages through a repartition topic (``SD_STAGE``, ``pipeline/repartition.py``): ``k1``
    stage-1 processes (exactly once) and ``k2`` stage-2 processes, all gated as in ``replay``;
    events/s = backlog / wall time from the first batch handled (either stage) until stage 1's lag
    is 0 and then stage 2 has committed every record of the repartition topic. ``after``: stage 2
    starts once stage 1 has forwarded the whole backlog (the two stages one after the other)."""
    first_stage = settings.model_copy(update={"stage": "repartition", "delivery": "exactly_once"})
    second_stage = settings.model_copy(update={"stage": "repartitioned"})
    pools = [harness.WorkerPool(second_stage, k2, 1 << 60, idle_stop_s=1e9, deadline_s=900, gate=True),
             harness.WorkerPool(first_stage, k1, 1 << 60, idle_stop_s=1e9, deadline_s=900, gate=True)]
    if after:
        pools.reverse()
        pools[0].start()
        pools[0].go.set()
        drained = wait_for_zero_lag(settings, settings.stage_1_group, settings.input_topic, timeout_s=900)
        pools[1].start()
        pools[1].go.set()
    else:
        for pool in pools:  # stage 2 first: its range assignment settles while stage 1 joins
            pool.start()
        for pool in pools:
            pool.go.set()
        drained = wait_for_zero_lag(settings, settings.stage_1_group, settings.input_topic,
                                    timeout_s=900)
    deadline = time.monotonic() + 900
    while drained and not harness.settled(settings, settings.group_id, settings.repartition_topic_name):
        if time.monotonic() > deadline:
            drained = False
            break
        time.sleep(0.2)
    ended = time.time()
    reports = []
    for pool in pools:
        pool.done.set()
        reports.append(pool.finish())
    starts = [r.timeline[0][0] for rs in reports for r in rs if r.timeline]
    first = min(starts, default=ended)
    return {"rate": n / max(ended - first, 1e-9), "wall": ended - first, "drained": drained,
            "handled": sum(r.events for r in reports[1 if after else 0]),
            "split": sorted((r.events for r in reports[1 if after else 0]), reverse=True)}


def events_counted(core: dict[str, Any], at_ms: float) -> float:
    """The events a terminal's record has applied, as its longest window's decayed count brought
    to ``at_ms``: over a backlog much shorter than that window (minutes against 30 days) each
    event weighs 1 within ~2e-4 whatever order it was applied in (the late-event clamp moves an
    event later by at most the backlog's span), so a lost update shows as one event missing and a
    double application as one too many — unlike the record's bits, which any reordering changes."""
    if core["t"] is None:
        return 0.0
    tau = SPEC.windows[-1] * 1000.0
    return float(core["w"][-1][0] * math.exp(-(at_ms - core["t"]) / tau))


def run(kafka: str, redis: str, n: int, density: float, graces: Sequence[int],
        stages: Sequence[int] = (2, 4)) -> dict[str, Any]:
    torch.set_num_threads(1)
    tag = uuid.uuid4().hex[:8]
    events = entity_speed.workload(n, max(500, n // 100), seed=0)
    n = len(events)  # the workload adds its injected frauds to the n legit events
    t0 = events[0]["timestamp"]
    for i, e in enumerate(events):  # time-ordered, `density` events per second of event time
        e["timestamp"] = t0 + int(i * 1000 / density)
    say(f"training the entity model on {min(n, 40_000):,} events")
    bundle = models(events[:40_000])["entity"]
    raw = [orjson.dumps(e) for e in events]
    keys: list[bytes | None] = [str(e["account_id"]).encode() for e in events]
    topic = f"ews-in-{tag}"
    ensure_topics(base_settings(kafka, redis, tag, input_topic=topic), [topic])
    say(f"producing {n:,} events")
    harness.produce(kafka, topic, raw, keys)
    scores = score_events(bundle, events).scores
    offline_alerts = {e["event_id"] for e, s in zip(events, scores, strict=True) if s > bundle.threshold}
    state = InMemoryState()
    enrich_history(SPEC, events, store=state)
    offline_terminals = {k[1][1]: r["c"] for k, r in state.records.items() if k[1][0] == "terminal_id"}
    end = float(max(e["timestamp"] for e in events))
    plans: list[tuple[str, int, dict[str, Any]]] = [("1 worker, aligned", 1, {"align_event_time": "on"}),
                                                    ("4 workers, no alignment", 4, {"align_event_time": "off"})]
    plans += [(f"4 workers, aligned, grace {g:,} ms", 4, {"align_event_time": "on", "align_peer_grace_ms": g})
              for g in graces]
    plans += [(f"{k} + {k} workers, two stages (repartition topic){', stage 2 after stage 1' if after else ''}", k,
               {"stage": "after" if after else "two", "repartition_key": "terminal_id", "repartition_buckets": 12,
                "repartition_topic": f"ews-rekeyed{k}{'a' if after else ''}-{tag}"})  # one topic per run
              for after in (False, True) for k in stages]
    out: dict[str, Any] = {"events": n, "density": density, "offline_alerts": len(offline_alerts),
                           "terminals": len(offline_terminals), "runs": []}
    for i, (name, k, overrides) in enumerate(plans):
        stage = overrides.pop("stage", None)
        two = stage in ("two", "after")
        s = base_settings(kafka, redis, f"ews{i}-{tag}", input_topic=topic, **overrides)
        ControlPlane.from_url(redis, s.redis_prefix).publish(bundle, set_by="bench")
        r = replay_stages(s, k, k, n, after=stage == "after") if two else replay(s, k, n)
        spec = rest_spec(SPEC, "account_id") if two else SPEC  # stage 2 keeps the terminals under its own spec
        alerts = {orjson.loads(m.value)["event_id"] for m in read_all(s, s.alerts_topic, timeout_s=60)}
        union = alerts | offline_alerts
        client = redis_lib.Redis.from_url(redis)
        store = RedisState(client, s.redis_prefix)
        names = list(offline_terminals)
        got = store.load_raw(spec, [("terminal_id", t) for t in names])
        cores = {t: decode(spec, "terminal_id", v)["c"] for t, v in zip(names, got, strict=True) if v is not None}
        equal = sum(1 for t, c in cores.items() if c == offline_terminals[t])
        counted = {t: events_counted(c, end) for t, c in cores.items()}
        off_counted = {t: events_counted(c, end) for t, c in offline_terminals.items()}
        whole = sum(1 for t in names if abs(counted.get(t, 0.0) - off_counted[t]) < 0.5)
        row = {"name": name, "workers": k, "rate": r["rate"], "drained": r["drained"], "alerts": len(alerts),
               "handled": r["handled"], "split": r["split"],
               "agreement": len(alerts & offline_alerts) / len(union) if union else 1.0,
               "terminals_equal": equal, "terminals_counted": whole,
               "counted": sum(counted.values()), "offline_counted": sum(off_counted.values())}
        out["runs"].append(row)
        say(f"{name}: {r['rate']:,.0f} events/s ({r['handled']:,} handled: {' + '.join(f'{x:,}' for x in r['split'])}), {len(alerts):,} alerts (agreement {row['agreement']:.3f}), "
            f"{equal:,}/{len(names):,} terminal records equal offline, {whole:,}/{len(names):,} terminals "
            f"counted every event ({row['counted']:,.1f} / {row['offline_counted']:,.1f}), drained={r['drained']}")
    return out


def markdown(ctx: dict[str, Any]) -> str:
    lines = [f"{ctx['events']:,} raw events keyed by account on 4 partitions, event times "
             f"{ctx['density']:,.0f} per second (time-ordered), {ctx['terminals']:,} terminals; model with account "
             "and terminal history (1h/1d/7d/30d); worker processes of one consumer group, batches of 8,192, "
             "`torch_threads=1`, entity state in Redis (empty at the start of each drain). Offline scoring of the "
             f"time-ordered file: {ctx['offline_alerts']:,} alerts.", "",
             "Events/s = the backlog over the wall time from the first batch handled to lag 0 (rebalances "
             "included; lag is polled every 0.2 s or so); handled counts re-deliveries after rebalances too, "
             "and is split by worker process (most first: whether the four shared the work).", "",
             "Lost updates: each terminal's events counted = its 30-day window's decayed count brought to the "
             "last event time (`events_counted`: each event weighs 1 within ~2e-4 over this backlog, whatever "
             "the order), against offline enrichment's; a terminal counts every event when the two are within "
             "0.5 (a lost update is one event missing, a double application one too many).", "",
             "| run | events/s | handled | alerts | agreement with offline | terminal records equal to offline "
             "| terminals counting every event | events counted on terminals (offline) | drained |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in ctx["runs"]:
        split = " + ".join(f"{x:,}" for x in r.get("split", []))
        lines.append(f"| {r['name']} | {r['rate']:,.0f} | {r['handled']:,} ({split}) | {r['alerts']:,} "
                     f"| {r['agreement']:.3f} "
                     f"| {r['terminals_equal']:,} / {ctx['terminals']:,} "
                     f"| {r['terminals_counted']:,} / {ctx['terminals']:,} "
                     f"| {r['counted']:,.1f} ({r['offline_counted']:,.1f}) | {r['drained']} |")
    lines += ["", ctx["load"]]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks entity-workers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=100_000, help="pre-produced events (default 100,000)")
    p.add_argument("--density", type=float, default=200.0,
                   help="events per second of event time (default 200: about 0.4 per second per terminal)")
    p.add_argument("--graces", default="2000,200", help="SD_ALIGN_PEER_GRACE_MS values to run (default 2000,200)")
    p.add_argument("--stages", default="2,4", help="two-stage runs: workers per stage, each value (default 2,4; "
                   "'' for none)")
    p.add_argument("--kafka", default=None, help="use this running broker instead of starting one")
    p.add_argument("--redis", default=None, help="use this running Redis (with --kafka)")
    p.add_argument("--write", action="store_true", help="also write the section of benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    graces = [int(x) for x in args.graces.split(",") if x]
    ctx, load = harness.on_services(
        args.kafka, args.redis, lambda kafka, redis: run(kafka, redis, args.events, args.density, graces,
                                        [int(x) for x in args.stages.split(",") if x]), say,
        "the broker and Redis")
    ctx["load"] = load
    body = markdown(ctx)
    print(body)
    if args.write:
        write_section("entity-workers", "Several workers with terminal history: real Kafka and Redis", body)
    return 0
